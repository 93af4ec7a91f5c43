"""SVRG control variate for the gradient that RBD and FPD project (Johnson & Zhang 2013).

At step t the projected gradient is g_b(θ_t) − g_b(θ̃) + μ̃ instead of g_b(θ_t): θ̃ is θ at
the last anchor step (every N steps, ``--svrg-every N``) and μ̃ the training-set gradient
there. It is still an unbiased estimate of the full gradient, with far less mini-batch noise
while θ stays near θ̃. A random-bases step Σ <φ, g> φ has mean (d/D)·ḡ but a size that
grows with all of ‖g‖², noise included; at batch 32 the noise is most of it, and RBD runs
are optimisation-limited, so the noise is what caps the usable rate.

Nothing new crosses the network per step: every rank corrects its own gradient before the
projection, so the coefficients stay d floats. In shared mode rank r's μ̃_r covers its share of
the training set, scaled so that the ranks' mean is the full-set gradient. The anchor pass is
a function of θ̃ and the data, so training stays bitwise reproducible and resume rebuilds θ̃ by
replaying the run file. Replay needs no data: the coefficients are logged as usual.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .data import Inputs, Split
from .models import FlatParameters
from .partition import share

# samples per forward/backward in the anchor pass: 128 takes 0.36–0.67 ms a sample on one CNN
# thread here, 1000 took 0.64–0.76 (its 86 MB activations are fresh mmaps, page-faulted each
# batch); python docs/pass_batch.py times both
_PASS_BATCH = 128


def anchor_step(step: int, every: int) -> int:
    """The anchor that step ``step`` uses: the last multiple of ``every`` at or before it."""
    return step - step % every


class Anchor:
    """θ̃ and μ̃ on a private copy of the model (the training model and its state stay put)."""

    def __init__(self, model: nn.Module, device, inputs: Inputs = Inputs()):
        self.model = copy.deepcopy(model)
        self.flat = FlatParameters(self.model)
        self.device = device
        self.inputs = inputs
        self.mu: torch.Tensor | None = None
        self.loss_fn = nn.CrossEntropyLoss()

    def refresh(self, theta: torch.Tensor, split: Split, share: tuple[int, int], scale: float,
                interrupted: Callable[[], bool] | None = None) -> bool:
        """θ̃ ← θ; μ̃ ← ``scale`` × Σ_i ∇ℓ_i(θ̃) over samples [lo, hi) of ``split``.

        ``interrupted`` is asked before each pass batch; when it says yes the pass is abandoned
        (μ̃ unset) and False returned, so a preemption signal is acted on within one batch
        rather than after a pass over the whole share."""
        lo, hi = share
        self.mu = None
        with torch.no_grad():
            self.flat.theta.copy_(theta)
        total = torch.zeros(self.flat.dim, dtype=torch.float64, device=theta.device)
        sum_loss = nn.CrossEntropyLoss(reduction="sum")
        for i in range(lo, hi, _PASS_BATCH):
            if interrupted is not None and interrupted():
                return False
            j = slice(i, min(i + _PASS_BATCH, hi))
            x = self.inputs.tensor(split.x[j], self.device)
            y = torch.from_numpy(split.y[j]).to(self.device)
            self.flat.zero_grad()
            sum_loss(self.model(x), y).backward()
            total += self.flat.gradient()
        self.mu = (total * scale).to(theta.dtype)
        return True

    def correct(self, grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """g_b(θ) − g_b(θ̃) + μ̃ for the batch (x, y) whose gradient at θ is ``grad``."""
        self.flat.zero_grad()
        self.loss_fn(self.model(x), y).backward()
        return grad - self.flat.gradient() + self.mu


def anchor_share(n: int, rank: int, size: int, per_rank_data: bool) -> tuple[tuple[int, int], float]:
    """(sample range, scale) of a rank's anchor pass: its share of the training set when ranks
    see different data (the ranks' mean of μ̃_r is then the full gradient), the whole set
    otherwise."""
    if not per_rank_data:
        return (0, n), 1.0 / n
    mine = share(n, rank, size)
    return (mine.start, mine.stop), size / n
