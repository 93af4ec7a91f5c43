"""Plain SGD baseline, optionally with heavy-ball momentum and decoupled weight decay.

Data-parallel under MPI.
"""
from __future__ import annotations

from typing import Callable

import torch

from .base import StepResult
from .update import Velocity, decay_


class SGD(Velocity):
    name = "sgd"  # its steps are full D-dimensional gradients: no coefficients to log

    def __init__(self, comm, momentum: float = 0.0, weight_decay: float = 0.0):
        self.comm = comm
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.velocity = None

    def step(self, theta: torch.Tensor, grad: torch.Tensor, step: int, lr: float,
             loss_at: Callable[[int], float] | None = None) -> StepResult:
        g = self.comm.allreduce_mean(grad)  # the baseline exchanges all D floats
        if self.momentum:
            g = self.velocity_for(theta).mul_(self.momentum).add_(g)
        decay_(theta, lr, self.weight_decay)
        theta.add_(g, alpha=-lr)
        return StepResult(torch.zeros(0, dtype=torch.float32))
