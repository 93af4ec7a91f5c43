"""Plain SGD baseline, optionally with heavy-ball momentum and decoupled weight decay.

Data-parallel under MPI.
"""
from __future__ import annotations

from typing import Callable

import torch

from .base import StepResult
from .update import Velocity, add_scaled_, decay_


class SGD(Velocity):
    name = "sgd"  # its steps are full D-dimensional gradients: no coefficients to log

    def __init__(self, comm, momentum: float = 0.0, weight_decay: float = 0.0,
                 unfused: bool = False):
        """``unfused`` (kernel generation 3): the rate × step rounded before its add, the same
        bits on every CPU kind (update.add_scaled_), so ranks on mixed nodes stay identical."""
        self.comm = comm
        self.unfused = unfused
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.velocity = None

    def step(self, theta: torch.Tensor, grad: torch.Tensor, step: int, lr: float,
             loss_at: Callable[[int], float] | None = None) -> StepResult:
        g = self.comm.allreduce_mean(grad)  # the baseline exchanges all D floats
        if self.momentum:
            g = self.velocity_for(theta).mul_(self.momentum).add_(g)
        decay_(theta, lr, self.weight_decay)
        add_scaled_(theta, g, -lr, self.unfused)
        return StepResult(torch.zeros(0, dtype=torch.float32))
