"""Natural Evolution Strategies (Salimans et al. 2017) on RBD's seed schedule.

Antithetic pairs (φ, −φ) from the same keyed basis; every offspring is evaluated on the
same mini-batch; fitness is the loss, shaped into centred ranks; the step is
θ ← θ − η Σ_i c_i φ_i with c_i = rank_i / (n σ) — coefficients times regenerable
directions, so NES runs log and replay exactly like RBD (the update function is shared).
Under MPI the offspring are split over ranks (contiguous pairs); the n losses are
gathered and every rank computes the same ranks and applies the same update.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..partition import share
from .base import StepResult
from .rbd import RandomBasesDescent


def centred_ranks(losses: torch.Tensor) -> torch.Tensor:
    """Ranks scaled to [−0.5, 0.5]; ties broken by index (stable sort) so every rank agrees."""
    order = torch.sort(losses, stable=True).indices
    ranks = torch.empty_like(losses)
    ranks[order] = torch.arange(losses.numel(), dtype=losses.dtype)
    n = losses.numel()
    return ranks / max(n - 1, 1) - 0.5


def pair_share(n: int, rank: int, ranks: int) -> range:
    """Rank ``rank``'s share of n directions: whole antithetic pairs, contiguous."""
    pairs = share(n // 2, rank, ranks)
    return range(2 * pairs.start, 2 * pairs.stop)


class NES(RandomBasesDescent):
    """Always direction-parallel: every rank scores its share of the offspring on the whole
    batch (the modes of RBD do not apply)."""

    name = "nes"
    direction_parallel = True

    def __init__(self, *args, sigma: float = 0.01, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.basis.config.antithetic:
            raise ValueError("NES needs an antithetic basis")
        if any(n % 2 for n in self.directions_per_compartment):
            raise ValueError("NES needs an even number of directions per compartment")
        self.sigma = sigma

    def step(self, theta: torch.Tensor, grad: torch.Tensor, step: int, lr: float,
             loss_at: Callable[[], float] | None = None) -> StepResult:
        if loss_at is None:
            raise ValueError("NES needs a loss closure")
        own_losses = []
        for comp, n in zip(self.compartments, self.directions_per_compartment):
            mine = pair_share(n, self.comm.rank, self.comm.size)
            span = slice(comp.start, comp.stop)
            saved = theta[span].clone()
            for chunk in self.basis.chunks(self.key_step(step), comp.index, comp.size, mine,
                                           self.chunk_size):
                for phi in _rows(chunk):
                    theta[span].add_(phi, alpha=self.sigma)   # offspring θ + σ φ_i
                    own_losses.append(loss_at())
                    theta[span].copy_(saved)                  # restore bitwise
        losses = self._gather(torch.tensor(own_losses, dtype=torch.float32))
        coefficients = (centred_ranks(losses) / (losses.numel() * self.sigma)).to(torch.float32)
        return StepResult(self.replay_step(theta, step, lr, coefficients))

    def _gather(self, own: torch.Tensor) -> torch.Tensor:
        """All offspring losses in direction-index order (shares differ by at most a pair)."""
        R = self.comm.size
        sizes = [sum(len(pair_share(n, r, R)) for n in self.directions_per_compartment)
                 for r in range(R)]
        padded = torch.zeros(max(sizes), dtype=torch.float32)
        padded[:own.numel()] = own
        table = self.comm.allgather(padded)
        # per rank: its losses compartment by compartment; reassemble per compartment
        parts = []
        cursors = [0] * R
        for n in self.directions_per_compartment:
            for r in range(R):
                k = len(pair_share(n, r, R))
                parts.append(table[r, cursors[r]:cursors[r] + k])
                cursors[r] += k
        return torch.cat(parts)


def _rows(chunk):
    """The directions of a chunk as vectors (dense: its rows; structured: φ = combine(e_i))."""
    if hasattr(chunk, "phi"):
        yield from chunk.phi
        return
    eye = torch.eye(chunk.n_coefficients)
    for e in eye:
        yield chunk.combine(e)
