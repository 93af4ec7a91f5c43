"""The method protocol: what the training loop, resume and replay may ask of a method.

A method is pure torch (no files, no mpi4py); the communicator is passed in. Capabilities
are flags, so the loop never asks which method it holds:

  logs_coefficients  every step is Σ c_i φ_i over regenerable directions and the c_i are
                     logged: the run replays from its coefficients without data
                     (docs/design.md, invariant 2).
  direction_parallel in per-rank mode (and for NES) ranks split the directions, not the data:
                     every rank sees the whole batch.
  batches_per_step   mini-batches one step consumes: 1, or n for the paper's NES, whose n
                     offspring each take their own batch (``loss_at(i)``: offspring i's).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch


@dataclasses.dataclass
class StepResult:
    coefficients: torch.Tensor  # float32, the values applied (after the reduction); empty if none


class Method:
    """Defaults for a method without state or coefficients (SGD-like)."""

    name = "method"
    logs_coefficients = False
    direction_parallel = False
    n_coefficients = 0
    batches_per_step = 1

    def prepare(self, theta: torch.Tensor) -> None:
        """Called once on θ0 before the first step (RigL masks it); most methods do nothing."""

    def forward_shift(self, theta: torch.Tensor) -> torch.Tensor | None:
        """A displacement of θ for the step's forward and backward pass (the official FPD's
        carried coordinates), or None: the gradient is taken at θ. θ itself is restored."""
        return None

    def step(self, theta: torch.Tensor, grad: torch.Tensor, step: int, lr: float,
             loss_at: Callable[[int], float] | None = None) -> StepResult:
        """Update θ in place from the gradient. ``loss_at(i)`` is the loss at θ as it stands on
        offspring i's mini-batch — the step's batch unless ``batches_per_step`` > 1 (NES
        scores its offspring with it); gradient methods ignore it."""
        raise NotImplementedError

    # -- state kept between steps, saved in snapshots (e.g. the momentum velocity) ----------
    def reset_state(self) -> None:
        """Back to the state before step 0 (replay from θ0)."""

    def state_size(self, dim: int) -> int:
        return 0

    def state_vector(self, dim: int) -> np.ndarray:
        return np.zeros(0, dtype=np.float32)

    def load_state_vector(self, vec: np.ndarray, device) -> None:
        """Restore what ``state_vector`` returned."""
