"""Natural Evolution Strategies (Salimans et al. 2017) on RBD's seed schedule.

Two variants (``variant``):
  paper       as the paper's official code ran it: offspring θ + σ·ε_i with ε_i ~ N(0, I)
              unnormalised — σ·√D_k·φ_i, φ_i the keyed direction of norm ≈ 1 — each offspring
              scored on its own mini-batch (``loss_at(i)`` gives offspring i its batch), no
              antithetic pairs unless the basis has them.
  same-batch  antithetic pairs θ ± σ·φ_i, all scored on the step's one mini-batch (rbd-hpc
              0.1's NES; close to the official ``rbd_nes`` model).
Fitness is the loss, shaped into centred ranks; the step is θ ← θ − η Σ_i c_i φ_i with
c_i = rank_i / (n σ) (the official update: the ranks over nσ along the normalised
directions) — coefficients times regenerable directions, so NES runs log and replay exactly
like RBD (the update function is shared). Under MPI the offspring are split over ranks
(contiguous, whole pairs when antithetic); the n losses are gathered and every rank computes
the same ranks and applies the same update.
"""
from __future__ import annotations

import math
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


VARIANTS = ("paper", "same-batch")


def pair_share(n: int, rank: int, ranks: int, unit: int = 2) -> range:
    """Rank ``rank``'s share of n directions, contiguous, in whole units (antithetic pairs: 2)."""
    pairs = share(n // unit, rank, ranks)
    return range(unit * pairs.start, unit * pairs.stop)


class NES(RandomBasesDescent):
    """Always direction-parallel: every rank scores its share of the offspring on the whole
    batch (the modes of RBD do not apply)."""

    name = "nes"
    direction_parallel = True

    def __init__(self, *args, sigma: float = 0.01, variant: str = "same-batch", **kwargs):
        super().__init__(*args, **kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"NES variant {variant!r} not in {VARIANTS}")
        self.unit = 2 if self.basis.config.antithetic else 1
        if variant == "same-batch" and self.unit != 2:
            raise ValueError("same-batch NES needs an antithetic basis")
        if any(n % self.unit for n in self.directions_per_compartment):
            raise ValueError("antithetic NES needs an even number of directions per compartment")
        self.sigma, self.variant = sigma, variant
        # the paper's variant: every offspring has its own batch, so a step uses n batches
        self.batches_per_step = self.n_coefficients if variant == "paper" else 1

    def scale(self, size: int) -> float:
        """The perturbation along φ: σ (same-batch) or σ·√D_k, i.e. σ·ε unnormalised (paper)."""
        return self.sigma * math.sqrt(size) if self.variant == "paper" else self.sigma

    def step(self, theta: torch.Tensor, grad: torch.Tensor, step: int, lr: float,
             loss_at: Callable[[int], float] | None = None) -> StepResult:
        if loss_at is None:
            raise ValueError("NES needs a loss closure")
        own_losses = []
        first = 0  # global index of the compartment's first offspring
        for comp, n in zip(self.compartments, self.directions_per_compartment):
            mine = pair_share(n, self.comm.rank, self.comm.size, self.unit)
            span = slice(comp.start, comp.stop)
            saved = theta[span].clone()
            alpha = self.scale(comp.size)
            index = first + mine.start
            for chunk in self.basis.chunks(self.key_step(step), comp.index, comp.size, mine,
                                           self.chunk_size):
                for phi in _rows(chunk):
                    theta[span].add_(phi, alpha=alpha)        # offspring θ + σ φ_i (σ√D_k φ_i)
                    own_losses.append(loss_at(index))
                    theta[span].copy_(saved)                  # restore bitwise
                    index += 1
            first += n
        losses = self._gather(torch.tensor(own_losses, dtype=torch.float32))
        coefficients = (centred_ranks(losses) / (losses.numel() * self.sigma)).to(torch.float32)
        return StepResult(self.replay_step(theta, step, lr, coefficients))

    def _gather(self, own: torch.Tensor) -> torch.Tensor:
        """All offspring losses in direction-index order (shares differ by at most a pair)."""
        R = self.comm.size
        sizes = [sum(len(pair_share(n, r, R, self.unit)) for n in self.directions_per_compartment)
                 for r in range(R)]
        padded = torch.zeros(max(sizes), dtype=torch.float32)
        padded[:own.numel()] = own
        table = self.comm.allgather(padded)
        # per rank: its losses compartment by compartment; reassemble per compartment
        parts = []
        cursors = [0] * R
        for n in self.directions_per_compartment:
            for r in range(R):
                k = len(pair_share(n, r, R, self.unit))
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
