"""Resuming a run: which config it continues with, and the exact state it continues from.

A run file holds θ0, every committed coefficient row and periodic snapshots. A method that
logs coefficients resumes at the last committed step (θ replayed from the rows, bitwise the
state training had); any other run, and any model with BatchNorm buffers, resumes at its last
snapshot. Rows past the resume point are left behind by the writer (runlog.RunWriter).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .config import TrainConfig
from .errors import UserError
from .methods import SPARSE_METHODS
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
    last_metrics: dict                # the last epoch's metrics up to the resume point
    replayed: bool = False            # θ replayed to the last committed row (else a snapshot's)


def resumed_config(path: str, overrides: dict, preset: str | None) -> TrainConfig:
    """The stored config of ``path`` with ``overrides`` of resume-free fields applied; any
    other override that differs from the stored value is refused, naming the fields. A new
    --epochs replaces a stored --steps (the run length is one setting, given either way)."""
    with RunFile(path) as run:
        stored = dataclasses.asdict(run.config())
    free = TrainConfig.resume_free()
    differ = sorted(k for k, v in overrides.items()
                    if k not in free and stored.get(k) != v)
    if preset is not None and preset != stored.get("preset"):
        differ.insert(0, "preset")
    if differ:
        raise UserError(f"--resume {path}: config differs from the run file in "
                        f"{', '.join(differ)}; resume with the stored config")
    if "epochs" in overrides and "steps" not in overrides:
        stored["steps"] = None
    stored.update({k: v for k, v in overrides.items() if k in free})
    return TrainConfig.from_dict(stored, f"run file {path} config")


def check_resume(run: RunFile, cfg: TrainConfig, world_size: int) -> None:
    """Refuse a resume that would not continue the run bitwise, naming what differs: any field
    outside the resume-free set, the rank count, and the run length where the schedule depends
    on it (cosine, and the sparse methods' mask-update horizon). Every entry point resumes
    through train(), which calls this; launch.submit calls it before submitting."""
    stored = run.config()
    differ = sorted(k for k in TrainConfig.trajectory_fields()
                    if getattr(stored, k) != getattr(cfg, k))
    if cfg.schedule != "constant" or cfg.method in SPARSE_METHODS:
        differ += [k for k in ("epochs", "steps") if getattr(stored, k) != getattr(cfg, k)]
    if differ:
        raise UserError(f"resume {run.path}: config differs from the run file in "
                        f"{', '.join(differ)}" + (" (the learning rate or mask schedule "
                        "depends on the run length)" if {"epochs", "steps"} & set(differ) else "")
                        + "; resume with the stored config")
    trained_on = int(run.attrs["world_size"])
    if trained_on != world_size:
        why = ("the per-rank directions depend on it" if cfg.mode == "per-rank" or
               cfg.method == "nes" else "the rank order of the coefficient average changes its bits")
        raise UserError(f"resume {run.path} on {world_size} rank(s): the run was trained on "
                        f"{trained_on} and a resume must use the same number ({why})")


def resume_point(run: RunFile, method, has_buffers: bool, period: int,
                 svrg_every: int = 0) -> ResumePoint:
    """The last state known exactly: the committed step (by replay) or the last snapshot."""
    run.require_coefficients(method.n_coefficients)
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
    # a resume inside an epoch (``period`` steps): its train_loss still averages the whole epoch
    epoch_start = target - target % period
    losses = [float(v) for v in run.steps(epoch_start, target)["loss"]]
    # θ̃ of a resume inside an SVRG period: replayed from the file up to its anchor step
    theta_anchor = (replay_to(run, anchor_step(target, svrg_every))
                    if svrg_every and target % svrg_every else None)
    done = [m for m in run.metrics() if m["step"] <= target]
    return ResumePoint(target, theta, buffers, state, losses, theta_anchor,
                       {**done[-1], "step": int(done[-1]["step"])} if done else {}, exact_rows)
