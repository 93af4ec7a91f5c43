"""The one update function (DESIGN.md invariant 2).

Training, resume and replay all apply a step through ``apply_step``: the same chunks,
in the same order, with the same arithmetic. Bitwise replay follows from that.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch

from ..bases import Basis
from ..compartments import Compartment


def groups(compartments: list[Compartment], directions: list[int], batched: bool) -> list:
    """Runs of compartments that one chunk may cover: (first, count, size, n, start, stop).

    With ``batched`` (structured bases), adjacent compartments of equal size and direction
    count form one group, transformed together; otherwise every compartment is its own.
    """
    out: list[list] = []
    for comp, n in zip(compartments, directions):
        last = out[-1] if out else None
        if (batched and last is not None and last[2] == comp.size and last[3] == n
                and last[5] == comp.start):
            last[1] += 1
            last[5] = comp.stop
        else:
            out.append([comp.index, 1, comp.size, n, comp.start, comp.stop])
    return [tuple(g) for g in out]


def step_chunks(basis: Basis, compartments: list[Compartment], key_step: int,
                directions_per_compartment: list[int], chunk_size: int,
                reuse: bool = True) -> Iterator:
    """(θ slice, chunk) for every direction of a step, in coefficient-log order.

    The plan depends only on the compartments, the direction counts and the chunk size,
    never on the rank or the number of ranks. With ``reuse`` (the default) dense chunks
    share scratch buffers: consume them one at a time, or pass reuse=False to list them.
    """
    batched = basis.config.dist == "srht"
    for first, count, size, n, start, stop in groups(compartments, directions_per_compartment,
                                                     batched):
        for chunk in basis.chunks(key_step, first, size, range(n), chunk_size, count, reuse):
            yield slice(start, stop), chunk


def apply_step(theta: torch.Tensor, chunks: Iterable, lr: float,
               coefficients_for: Callable[[slice, object], torch.Tensor]) -> torch.Tensor:
    """θ_k ← θ_k − η Σ_i c_i φ_i chunk by chunk; returns the coefficients applied (float32).

    ``coefficients_for(span, chunk)`` supplies the chunk's coefficients: in training it
    projects the gradient and reduces across ranks, in replay it reads them from the run
    file. Each chunk is generated once and applied at once, so no second pass regenerates
    directions (the paper's Eq. 2 with g^RB = Σ c_i φ_i).
    """
    applied = []
    for span, chunk in chunks:
        c = coefficients_for(span, chunk).to(torch.float32)
        theta[span].add_(chunk.combine(c), alpha=-lr)
        applied.append(c)
    if not applied:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat(applied)
