"""Sparse training with a fixed parameter count: RigL (Evci et al. 2020), SET and Static.

Weights (not biases) of every layer are masked at a sparsity S, distributed uniformly or
by Erdős–Rényi-Kernel (ERK). Every ΔT steps until 75% of training, a fraction α_t of each
layer's active weights — α_t = α/2 (1 + cos(π t / T_end)) — is dropped by smallest
magnitude and as many inactive connections are grown: by largest gradient magnitude
(RigL) or at random (SET); grown weights start at zero. Static never changes its mask.
``update`` says which connections may grow and whether the step also moves θ:
  published    as Evci et al.'s code: the candidates are every connection inactive after the
               drop (a connection just dropped may come back), and a mask-update step makes
               no gradient step;
  rbd-hpc-0.1  candidates only among connections inactive before the drop, and the gradient
               step is taken on mask-update steps too (rbd-hpc 0.1; run files of format ≤ 3).
The optimiser is SGD (optional momentum and weight decay) on the masked weights. Under MPI it is
data-parallel: the dense gradient is averaged, so every rank grows the same connections.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..seeds import Stream, derive_seed, numpy_rng
from .base import StepResult
from .update import Velocity, add_scaled_, decay_

SPARSE_METHODS = ("rigl", "set", "static")
SPARSITY_DISTRIBUTIONS = ("uniform", "erk")
MASK_UPDATES = ("published", "rbd-hpc-0.1")


def erk_densities(shapes: list[tuple[int, ...]], density: float) -> list[float]:
    """ERK: density_l ∝ Σ dims / Π dims, scaled to the overall density, capped at 1."""
    sizes = np.array([np.prod(s) for s in shapes], dtype=np.float64)
    raw = np.array([np.sum(s) / np.prod(s) for s in shapes], dtype=np.float64)
    dense = np.zeros(len(shapes), dtype=bool)
    while True:
        budget = density * sizes.sum() - sizes[dense].sum()
        eps = budget / np.sum(raw[~dense] * sizes[~dense])
        dens = np.where(dense, 1.0, eps * raw)
        over = (dens > 1.0) & ~dense
        if not over.any():
            return [float(x) for x in dens]
        dense |= over


class SparseTraining(Velocity):

    def __init__(self, kind: str, layers: list[tuple[str, int, int, tuple]], comm, seed: int,
                 sparsity: float, distribution: str, total_steps: int, momentum: float = 0.0,
                 update_every: int = 100, drop_fraction: float = 0.3, end_fraction: float = 0.75,
                 weight_decay: float = 0.0, update: str = "published", unfused: bool = False):
        """``layers``: (name, start, stop, shape) of every weight tensor to sparsify;
        ``unfused``: as SGD's."""
        if update not in MASK_UPDATES:
            raise ValueError(f"mask update {update!r} not in {MASK_UPDATES}")
        self.update = update
        self.unfused = unfused
        self.name, self.kind, self.comm, self.seed = kind, kind, comm, seed
        self.layers = layers
        self.sparsity, self.momentum, self.weight_decay = sparsity, momentum, weight_decay
        self.update_every, self.drop_fraction = update_every, drop_fraction
        self.t_end = int(end_fraction * total_steps)
        density = 1.0 - sparsity
        shapes = [shape for *_, shape in layers]
        self.densities = (erk_densities(shapes, density) if distribution == "erk"
                          else [density] * len(layers))
        self.mask: torch.Tensor | None = None
        self.velocity = None

    def prepare(self, theta: torch.Tensor) -> None:
        """A random mask with each layer's exact density, keyed by (seed, MASK); θ masked."""
        mask = torch.ones_like(theta, dtype=torch.bool)
        for i, ((_, start, stop, _), dens) in enumerate(zip(self.layers, self.densities)):
            n = stop - start
            keep = int(round(dens * n))
            order = numpy_rng(derive_seed(self.seed, Stream.MASK, 0, i)).permutation(n)
            layer = torch.zeros(n, dtype=torch.bool)
            layer[torch.from_numpy(order[:keep])] = True
            mask[start:stop] = layer
        self.mask = mask.to(theta.device)
        theta.mul_(self.mask)

    def drop_fraction_at(self, step: int) -> float:
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * step / max(self.t_end, 1)))

    def step(self, theta: torch.Tensor, grad: torch.Tensor, step: int, lr: float,
             loss_at: Callable[[int], float] | None = None) -> StepResult:
        g = self.comm.allreduce_mean(grad)  # data-parallel, like SGD
        if (self.kind != "static" and step > 0 and step % self.update_every == 0
                and step < self.t_end):
            self._update_mask(theta, g, step)
            if self.update == "published":  # the published code steps the mask, not θ
                theta.mul_(self.mask)
                return StepResult(torch.zeros(0, dtype=torch.float32))
        upd = g * self.mask
        if self.momentum:
            upd = self.velocity_for(theta).mul_(self.momentum).add_(upd) * self.mask
        decay_(theta, lr, self.weight_decay)
        add_scaled_(theta, upd, -lr, self.unfused)
        theta.mul_(self.mask)
        return StepResult(torch.zeros(0, dtype=torch.float32))

    def _update_mask(self, theta: torch.Tensor, g: torch.Tensor, step: int) -> None:
        frac = self.drop_fraction_at(step)
        for i, (_, start, stop, _) in enumerate(self.layers):
            m = self.mask[start:stop]
            active = int(m.sum())
            k = int(frac * active)
            if k == 0:
                continue
            w = theta[start:stop]
            # drop: the k active weights of smallest magnitude
            score = torch.where(m, w.abs(), torch.full_like(w, float("inf")))
            drop = torch.sort(score, stable=True).indices[:k]
            # grow k connections by gradient magnitude (RigL) or at random (SET), among those
            # inactive after the drop (published) or before it (rbd-hpc-0.1)
            if self.update == "published":
                m[drop] = False
            if self.kind == "rigl":
                gs = torch.where(m, torch.full_like(w, -1.0), g[start:stop].abs())
                grow = torch.sort(gs, descending=True, stable=True).indices[:k]
            else:
                inactive = torch.nonzero(~m).squeeze(1).cpu().numpy()
                rng = numpy_rng(derive_seed(self.seed, Stream.MASK, step, i))
                grow = torch.from_numpy(rng.choice(inactive, size=k, replace=False)).to(w.device)
            m[drop] = False
            m[grow] = True
            w[grow] = 0.0  # grown connections start at zero
            if self.velocity is not None:
                self.velocity[start:stop][drop] = 0.0
                self.velocity[start:stop][grow] = 0.0

    def state_size(self, dim: int) -> int:
        return dim + super().state_size(dim)  # the mask (and the velocity)

    def state_vector(self, dim: int) -> np.ndarray:
        return np.concatenate([self.mask.float().cpu().numpy(), super().state_vector(dim)])

    def load_state_vector(self, vec: np.ndarray, device) -> None:
        dim = vec.size // (2 if self.momentum else 1)
        self.mask = torch.from_numpy(np.asarray(vec[:dim], dtype=np.float32)).to(device) > 0.5
        super().load_state_vector(vec[dim:], device)
