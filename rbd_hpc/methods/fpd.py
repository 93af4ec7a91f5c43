"""Fixed Projection Descent (Li et al. 2018): RBD with the directions frozen for the run.

``carry_coordinates`` reproduces the paper's official FPD (experiments/baseline/fpd.py sets
``reset_coordinates_each_step: False``): its coordinate variables keep the last step's
coordinate gradients c_{t−1}, and its network reads θ + Σ_i c_{t−1,i} φ_i, so the gradient of
step t is taken at that point, not at θ. The update is unchanged (θ ← θ − η Σ_i c_{t,i} φ_i),
so such runs replay from their coefficients like any other; a resume restores c_{t−1} from the
last committed row (or the snapshot's state).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .base import StepResult
from .rbd import RandomBasesDescent
from .update import apply_step


class FixedProjectionDescent(RandomBasesDescent):
    """The same directions at every step: the seed key's step index is frozen at 0."""

    name = "fpd"

    def __init__(self, *args, carry_coordinates: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.carry_coordinates = carry_coordinates
        self.previous: torch.Tensor | None = None  # c_{t−1}, with carry_coordinates
        # Σ_i c_{t−1,i} φ_i, summed by the last step from its own products (None: not held)
        self._shift: torch.Tensor | None = None

    def key_step(self, step: int) -> int:
        return 0

    reuses_directions = True  # the whole run's

    def forward_shift(self, theta: torch.Tensor) -> torch.Tensor | None:
        """Σ_i c_{t−1,i} φ_i, the displacement of the official FPD's forward pass (None: none)."""
        if not self.carry_coordinates or self.previous is None:
            return None
        if self._shift is not None:
            return self._shift
        shift = torch.zeros_like(theta)  # after a resume: from c_{t−1}, the same sums
        cursor = [0]

        def coefficients_for(span, chunk):
            lo = cursor[0]
            cursor[0] += chunk.n_coefficients
            return self.previous[lo:cursor[0]]
        apply_step(shift, self._chunks(0), -1.0, coefficients_for,
                   unfused=self.basis.config.kernels >= 3)
        self._shift = shift
        return shift

    def _apply(self, theta: torch.Tensor, step: int, lr: float, coefficients_for,
               chunks=None, combined: torch.Tensor | None = None) -> torch.Tensor:
        """The step; with carry_coordinates it also sums the next forward shift from the
        step's own products (one pass over the directions fewer than forming it again)."""
        if not self.carry_coordinates:
            return super()._apply(theta, step, lr, coefficients_for, chunks, combined)
        self._shift = None
        shift = torch.zeros_like(theta)
        applied = super()._apply(theta, step, lr, coefficients_for, chunks, shift)
        self._shift = shift
        return applied

    def step(self, theta: torch.Tensor, grad: torch.Tensor, step: int, lr: float,
             loss_at: Callable[[int], float] | None = None) -> StepResult:
        result = super().step(theta, grad, step, lr, loss_at)
        self._remember(result.coefficients)
        return result

    def replay_step(self, theta: torch.Tensor, step: int, lr: float,
                    coefficients: torch.Tensor, chunks=None) -> torch.Tensor:
        applied = super().replay_step(theta, step, lr, coefficients, chunks)
        self._remember(coefficients)
        return applied

    def _remember(self, coefficients: torch.Tensor) -> None:
        if self.carry_coordinates:
            self.previous = coefficients.detach().to(torch.float32).clone()

    # -- c_{t−1} travels with the snapshot state, after the velocity ------------------------
    def reset_state(self) -> None:
        super().reset_state()
        self.previous = None
        self._shift = None

    def state_size(self, dim: int) -> int:
        return super().state_size(dim) + (self.n_coefficients if self.carry_coordinates else 0)

    def state_vector(self, dim: int) -> np.ndarray:
        own = super().state_vector(dim)
        if not self.carry_coordinates:
            return own
        prev = (np.zeros(self.n_coefficients, dtype=np.float32) if self.previous is None
                else self.previous.cpu().numpy())
        return np.concatenate([own, prev]).astype(np.float32)

    def load_state_vector(self, vec: np.ndarray, device) -> None:
        if not self.carry_coordinates:
            return super().load_state_vector(vec, device)
        n = self.n_coefficients
        super().load_state_vector(vec[:-n], device)
        self.previous = torch.from_numpy(np.array(vec[-n:], dtype=np.float32)).to(device)
        self._shift = None
