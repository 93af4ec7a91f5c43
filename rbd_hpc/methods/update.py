"""The one update function (DESIGN.md invariant 2).

Training, resume and replay all apply a step through ``apply_step``: the same chunks,
in the same order, with the same arithmetic. Bitwise replay follows from that.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch

from ..bases import Basis
from ..compartments import Compartment


def step_chunks(basis: Basis, compartments: list[Compartment], key_step: int,
                directions_per_compartment: list[int], chunk_size: int) -> Iterator:
    """(compartment, chunk) for every direction of a step, in direction-index order.

    The plan depends only on the compartments, the direction counts and the chunk size,
    never on the rank or the number of ranks.
    """
    for comp, n in zip(compartments, directions_per_compartment):
        for chunk in basis.chunks(key_step, comp.index, comp.size, range(n), chunk_size):
            yield comp, chunk


def apply_step(theta: torch.Tensor, chunks: Iterable, lr: float,
               coefficients_for: Callable[[Compartment, object], torch.Tensor]) -> torch.Tensor:
    """θ_k ← θ_k − η Σ_i c_i φ_i chunk by chunk; returns the coefficients applied (float32).

    ``coefficients_for(compartment, chunk)`` supplies the chunk's coefficients: in
    training it projects the gradient and reduces across ranks, in replay it reads them
    from the run file. Each chunk is generated once and applied at once, so no second
    pass regenerates directions (the paper's Eq. 2 with g^RB = Σ c_i φ_i).
    """
    applied = []
    for comp, chunk in chunks:
        c = coefficients_for(comp, chunk).to(torch.float32)
        theta[comp.start:comp.stop].add_(chunk.combine(c), alpha=-lr)
        applied.append(c)
    if not applied:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat(applied)
