"""Plain SGD baseline, optionally with heavy-ball momentum. Data-parallel under MPI."""
from __future__ import annotations

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

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.buffer is None else {"momentum": self.buffer}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if "momentum" in state:
            self.buffer = state["momentum"].clone()
