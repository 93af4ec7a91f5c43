"""Resuming a run: which config it continues with, and the exact state it continues from.

A run file holds θ0, every committed coefficient row and periodic snapshots. A method that
logs coefficients resumes at the last committed step (θ replayed from the rows, bitwise the
state training had); any other run, and any model with BatchNorm buffers, resumes at its last
snapshot. Rows past the resume point are left behind by the writer (runlog.RunWriter).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from .config import TrainConfig
from .errors import UserError
from .replay import replay_to
from .runlog import RunFile
from .svrg import anchor_step


@dataclasses.dataclass
class ResumePoint:
    steps_done: int
    theta: np.ndarray
    buffers: np.ndarray
    state: np.ndarray            # the method's state vector (e.g. the momentum velocity)
    epoch_losses: list[float]    # the logged losses of the epoch the resume falls in
    theta_anchor: np.ndarray | None  # θ̃ of an SVRG period the resume falls inside


def resumed_config(path: str, overrides: dict, preset: str | None) -> TrainConfig:
    """The stored config of ``path`` with ``overrides`` of resume-free fields applied; any
    other override that differs from the stored value is refused, naming the fields."""
    with RunFile(path) as run:
        stored = json.loads(run.config_json)
    free = TrainConfig.resume_free()
    differ = sorted(k for k, v in overrides.items()
                    if k not in free and stored.get(k) != v)
    if preset and preset != stored.get("preset"):
        differ.insert(0, "preset")
    if differ:
        raise UserError(f"--resume {path}: config differs from the run file in "
                        f"{', '.join(differ)}; resume with the stored config")
    stored.update({k: v for k, v in overrides.items() if k in free})
    return TrainConfig.from_dict(stored, f"run file {path} config")


def resume_point(run: RunFile, method, has_buffers: bool, steps_per_epoch: int,
                 svrg_every: int = 0) -> ResumePoint:
    """The last state known exactly: the committed step (by replay) or the last snapshot."""
    snaps = run.snapshot_steps()
    exact_rows = method.logs_coefficients and not has_buffers
    target = run.committed if exact_rows else (int(snaps[-1]) if len(snaps) else 0)
    theta = replay_to(run, target, method=method) if exact_rows else None
    buffers = state = np.zeros(0)
    usable = np.nonzero(snaps <= target)[0]
    if len(usable):  # buffers and method state come from the last snapshot at or before target
        _, snap_theta, buffers, state = run.snapshot(int(usable[-1]))
        if theta is None:
            theta = snap_theta
    if exact_rows and method.state_size(theta.size):
        state = method.state_vector(theta.size)  # replay rebuilt it up to the committed step
    if theta is None:
        theta = run.theta0()
    # a resume inside an epoch: its train_loss still averages the whole epoch
    epoch_start = target - target % steps_per_epoch
    losses = [float(v) for v in run.steps(epoch_start, target)["loss"]]
    # θ̃ of a resume inside an SVRG period: replayed from the file up to its anchor step
    theta_anchor = (replay_to(run, anchor_step(target, svrg_every))
                    if svrg_every and target % svrg_every else None)
    return ResumePoint(target, theta, buffers, state, losses, theta_anchor)
