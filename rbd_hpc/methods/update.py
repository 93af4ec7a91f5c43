"""The one update function (docs/design.md, invariant 2).

Training, resume and replay all apply a step through ``apply_step``: the same chunks,
in the same order, with the same arithmetic. Bitwise replay follows from that.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
import torch

from ..bases import Basis
from ..compartments import Compartment
from .base import Method


@dataclasses.dataclass
class Group:
    """A run of ``count`` adjacent compartments, from compartment ``first``, that one chunk may
    cover: each of ``size`` parameters with ``n`` directions, together θ[start:stop]."""

    first: int
    count: int
    size: int
    n: int
    start: int
    stop: int
    rate: float = 1.0


def groups(compartments: list[Compartment], directions: list[int], batched: bool,
           rates: list[float] | None = None) -> list[Group]:
    """With ``batched`` (structured bases), adjacent compartments of equal size, direction
    count and rate multiplier (``rates``, --lr-scale) form one group, transformed together;
    otherwise every compartment is its own."""
    out: list[Group] = []
    for comp, n, rate in zip(compartments, directions, rates or [1.0] * len(compartments)):
        last = out[-1] if out else None
        if (batched and last is not None and last.size == comp.size and last.n == n
                and last.stop == comp.start and last.rate == rate):
            last.count += 1
            last.stop = comp.stop
        else:
            out.append(Group(comp.index, 1, comp.size, n, comp.start, comp.stop, rate))
    return out


class Piece(NamedTuple):
    """One chunk of a step's directions: the θ slice it spans, the chunk, and the rate
    multiplier s_k (--lr-scale) of the compartments it covers."""

    span: slice
    chunk: object
    rate: float


def step_chunks(basis: Basis, compartments: list[Compartment], key_step: int,
                directions_per_compartment: list[int], chunk_size: int,
                reuse: bool = True, rates: list[float] | None = None) -> Iterator[Piece]:
    """A ``Piece`` (θ slice, chunk, rate) for every direction of a step, in coefficient-log
    order.

    The plan depends only on the compartments, the direction counts, the rate multipliers
    and the chunk size, never on the rank or the number of ranks. With ``reuse`` (the
    default) dense chunks share scratch buffers: consume them one at a time, or pass
    reuse=False to list them.
    """
    batched = basis.config.structured
    for g in groups(compartments, directions_per_compartment, batched, rates):
        for chunk in basis.chunks(key_step, g.first, g.size, range(g.n), chunk_size, g.count, reuse):
            yield Piece(slice(g.start, g.stop), chunk, g.rate)


def decay_(theta: torch.Tensor, lr: float, weight_decay: float) -> None:
    """Decoupled weight decay, θ ← (1 − ηλ) θ (Loshchilov & Hutter 2019), in place.

    A deterministic function of θ and the step's logged rate, so it costs no traffic and
    replays exactly; it is the restoring force that the random-walk part of a random-bases
    step (the components of Σ c_i φ_i orthogonal to the gradient) otherwise lacks.
    """
    if weight_decay:
        theta.mul_(1.0 - lr * weight_decay)


def add_scaled_(target: torch.Tensor, x: torch.Tensor, alpha: float, unfused: bool) -> None:
    """target += alpha · x. ``unfused`` (kernel generation 3) rounds the product before the
    sum: ATen's add_(x, alpha=a) is one fused multiply-add in its AVX2 and AVX-512 kernels
    and two rounded steps in its baseline kernel, so only the unfused form gives the same
    bits on every CPU (a rate that is a power of two rounds identically either way)."""
    if unfused:
        target.add_(x * alpha)
    else:
        target.add_(x, alpha=alpha)


def apply_step(theta: torch.Tensor, chunks: Iterable, lr: float,
               coefficients_for: Callable[[slice, object], torch.Tensor],
               velocity: torch.Tensor | None = None, momentum: float = 0.0,
               weight_decay: float = 0.0, combined: torch.Tensor | None = None,
               unfused: bool = False) -> torch.Tensor:
    """θ_k ← θ_k − η Σ_i c_i φ_i chunk by chunk; returns the coefficients applied (float32).

    ``coefficients_for(span, chunk)`` supplies the chunk's coefficients: in training it
    projects the gradient and reduces across ranks, in replay it reads them from the run
    file. Each chunk is generated once and applied at once, so no second pass regenerates
    directions (the paper's Eq. 2 with g^RB = Σ c_i φ_i).

    With a ``velocity`` (heavy-ball momentum μ): v ← μ v + Σ_i c_i φ_i, then θ ← θ − η v.
    v is still a sum of coefficient × regenerable direction, so the run replays from its
    coefficients alone; it lives only in memory and in snapshots.

    With ``weight_decay`` λ, θ is first scaled by 1 − ηλ (``decay_``).

    With ``combined`` (zeros of θ's shape), Σ_i c_i φ_i is also added into it, chunk by chunk
    from the same products: the official FPD's next forward shift, with no second pass.

    ``unfused``: every scaled add rounds its product first (``add_scaled_``; generation 3).

    ``chunks`` are ``Piece``s; a piece's rate multiplier s_k (--lr-scale; a group holds
    compartments of one multiplier) makes its coefficients enter the step as s_k·c_i, so the
    compartment steps at s_k·η, through the velocity too. The applied coefficients returned
    (and logged) are the c_i; a multiplier of 1 multiplies nothing.
    """
    decay_(theta, lr, weight_decay)
    if velocity is None:
        target, scale = theta, -lr
    else:
        target, scale = velocity.mul_(momentum), 1.0
    applied = []
    for span, chunk, rate in chunks:
        c = coefficients_for(span, chunk).to(torch.float32)
        direction = chunk.combine(c if rate == 1.0 else c * rate)
        add_scaled_(target[span], direction, scale, unfused)
        if combined is not None:
            combined[span].add_(direction)
        applied.append(c)
    if velocity is not None:
        add_scaled_(theta, velocity, -lr, unfused)
    if not applied:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat(applied)


class Velocity(Method):
    """A method with heavy-ball momentum: D floats kept between steps and stored in snapshots.

    ``velocity`` is None until the first step (a zero buffer).
    """

    momentum: float = 0.0
    velocity: torch.Tensor | None = None

    def velocity_for(self, theta: torch.Tensor) -> torch.Tensor:
        if self.velocity is None:
            self.velocity = torch.zeros_like(theta)
        return self.velocity

    def reset_state(self) -> None:
        self.velocity = None

    def state_size(self, dim: int) -> int:
        return dim if self.momentum else 0

    def state_vector(self, dim: int) -> np.ndarray:
        if not self.momentum:
            return np.zeros(0, dtype=np.float32)
        if self.velocity is None:
            return np.zeros(dim, dtype=np.float32)
        return self.velocity.detach().cpu().numpy().copy()

    def load_state_vector(self, vec: np.ndarray, device) -> None:
        if self.momentum and vec.size:
            self.velocity = torch.from_numpy(np.array(vec, dtype=np.float32)).to(device)
