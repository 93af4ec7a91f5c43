"""Replay: regenerate the directions and apply the logged coefficients — no data needed.

Replay calls the method's ``replay_step``, which is the training update function with
the coefficients read from the file (docs/design.md, invariant 2): on the same platform and
thread count the result is bitwise identical to training. Nothing here imports the
training loop: the method comes from the factory in methods/build.py.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .comm import SingleProcess
from .errors import UserError
from .methods.build import build_method
from .runlog import RunFile

_BLOCK = 256  # coefficient rows read per HDF5 access


def method_for(run: RunFile):
    """The method object that produced a run, rebuilt from its config and layout."""
    cfg = run.config()
    if not run.replayable:
        raise UserError(f"{run.path}: method {cfg.method!r} logs no coefficients and cannot be "
                        "replayed; its snapshots hold the weights")
    named_shapes = [(n, tuple(s)) for n, s in zip(run.layout["names"], run.layout["shapes"])]
    method, _ = build_method(cfg, named_shapes, SingleProcess(), "cpu",
                             world_size=int(run.attrs["world_size"]))
    run.require_coefficients(method.n_coefficients)
    return method


def replay_to(run: RunFile, target: int, method=None,
              on_step: Callable[[int, torch.Tensor], None] | None = None,
              start_from_theta0: bool = False) -> np.ndarray:
    """θ after ``target`` steps: from the nearest snapshot (or θ0) through the logged steps.

    ``on_step(steps_done, theta)`` is called after every applied step.
    """
    if not 0 <= target <= run.committed:
        where = "is negative" if target < 0 else f"is beyond the last committed step ({run.committed})"
        raise UserError(f"--step {target} {where}; valid: 0..{run.committed}")
    method = method or method_for(run)
    start, theta, state = 0, run.theta0(), np.zeros(0)
    if not start_from_theta0:
        snaps = run.snapshot_steps()
        usable = np.nonzero(snaps <= target)[0]
        if len(usable):
            start, theta, _, state = run.snapshot(int(usable[-1]))
    method.reset_state()  # the momentum velocity, if any: zero at θ0, else the snapshot's
    if start:
        method.load_state_vector(state, "cpu")
    theta_t = torch.from_numpy(np.array(theta, dtype=np.float32))
    for lo in range(start, target, _BLOCK):
        rows = run.steps(lo, min(lo + _BLOCK, target))
        for k in range(len(rows["step"])):
            step = int(rows["step"][k])
            if step != lo + k:
                raise UserError(f"{run.path}: step rows are out of order at row {lo + k}")
            method.replay_step(theta_t, step, float(rows["lr"][k]),
                               torch.from_numpy(rows["coefficients"][k]))
            if on_step is not None:
                on_step(step + 1, theta_t)
    return theta_t.numpy()


def verify(run: RunFile, until: int | None = None,
           on_step: Callable[[int, torch.Tensor], None] | None = None
           ) -> tuple[bool, float, list[str]]:
    """Replay from θ0 to step ``until`` (default: the last committed) and compare with every
    stored snapshot on the way: (ok, max |diff|, report lines). ``on_step`` as in replay_to."""
    snaps = {int(s): i for i, s in enumerate(run.snapshot_steps())}
    worst, lines, ok = 0.0, [], True

    def compare(done: int, theta: torch.Tensor):
        nonlocal worst, ok
        if done in snaps:
            _, stored, _, _ = run.snapshot(snaps[done])
            diff = float(np.max(np.abs(stored - theta.numpy()))) if stored.size else 0.0
            worst = max(worst, diff)
            same = np.array_equal(stored, theta.numpy())
            ok &= same
            lines.append(f"step {done}: {'bitwise equal' if same else 'MISMATCH'} "
                         f"(max |diff| {diff:.3g})")
        if on_step is not None:
            on_step(done, theta)
    compare(0, torch.from_numpy(run.theta0()))
    replay_to(run, run.committed if until is None else until, on_step=compare,
              start_from_theta0=True)
    return ok, worst, lines
