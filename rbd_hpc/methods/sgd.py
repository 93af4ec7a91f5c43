"""Plain SGD baseline, optionally with heavy-ball momentum. Data-parallel under MPI."""
from __future__ import annotations

import numpy as np
import torch

from .rbd import StepResult


class SGD:
    name = "sgd"
    replayable = False  # its steps are full D-dimensional gradients, not coefficients

    def __init__(self, comm, momentum: float = 0.0):
        self.comm = comm
        self.momentum = momentum
        self.buffer: torch.Tensor | None = None
        self.n_coefficients = 0

    def step(self, theta: torch.Tensor, grad: torch.Tensor, step: int, lr: float) -> StepResult:
        g = self.comm.allreduce_mean(grad)  # the baseline exchanges all D floats
        if self.momentum:
            if self.buffer is None:
                self.buffer = torch.zeros_like(theta)
            self.buffer.mul_(self.momentum).add_(g)
            g = self.buffer
        theta.add_(g, alpha=-lr)
        return StepResult(torch.zeros(0, dtype=torch.float32))

    def state_size(self, dim: int) -> int:
        return dim if self.momentum else 0

    def state_vector(self, dim: int) -> np.ndarray:
        if not self.momentum:
            return np.zeros(0, dtype=np.float32)
        if self.buffer is None:
            return np.zeros(dim, dtype=np.float32)
        return self.buffer.detach().cpu().numpy()

    def load_state_vector(self, vec: np.ndarray, device) -> None:
        if self.momentum and vec.size:
            self.buffer = torch.from_numpy(np.asarray(vec, dtype=np.float32)).to(device)
