"""Plain reference RBD with a materialised projection matrix, built independently of the
fast path: the directions are written out entry by entry from their definitions (dense rows
as generated; srht rows from an explicit Hadamard matrix H[i, j] = (−1)^popcount(i & j),
the keyed signs and the keyed row map; smooth rows as explicit outer products u_j a_jᵀ),
never through a chunk's ``project``/``combine``/``fwht``.

Slow and memory-hungry on purpose: the fast chunked path is tested against it.
"""
from __future__ import annotations

import torch

from ..bases import Basis, SmoothRank1Chunk, SRHTChunk
from ..compartments import Compartment


def explicit_hadamard(n: int) -> torch.Tensor:
    """H_n in Sylvester order from its closed form, in float64."""
    i = torch.arange(n)
    bits = (i[:, None] & i[None, :]).to(torch.int64)
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits >>= 1
    return 1.0 - 2.0 * parity.double()


def srht_rows(chunk: SRHTChunk) -> torch.Tensor:
    """The chunk's directions (K·m × S), compartment-major, from the explicit H."""
    rows = torch.zeros((chunk.count, chunk.m, chunk.size), dtype=torch.float64)
    signs = chunk.signs.double().cpu()
    for (off, n), chosen in zip(chunk.blocks, chunk.rows):
        H = explicit_hadamard(n)
        for k in range(chunk.count):
            rows[k, :, off:off + n] = H[chosen[k].cpu()] * signs[k, off:off + n]
    rows /= chunk.size ** 0.5
    if chunk.dir_sign is not None:
        rows *= chunk.dir_sign.double().cpu()[None, :, None]
    return rows.reshape(chunk.count * chunk.m, chunk.size)


def smooth_rows(chunk: SmoothRank1Chunk) -> torch.Tensor:
    """φ_j = u_j a_jᵀ as the flat [W | b] vector of the layer, one outer product each."""
    L = chunk.layer
    rows = []
    for j in range(len(chunk.indices)):
        M = torch.outer(chunk.u[j].double().cpu(), chunk.a[j].double().cpu())
        phi = torch.cat([M[:, :L.inputs].reshape(-1), M[:, L.inputs]])
        if chunk.dir_sign is not None:
            phi = phi * float(chunk.dir_sign[j])
        rows.append(phi)
    return torch.stack(rows)


def direction_matrix(basis: Basis, key_step: int, compartment: int, size: int,
                     n: int) -> torch.Tensor:
    """Φ (n × size, float64) of one compartment's first n directions."""
    if not basis.config.structured:
        return basis.dense(key_step, compartment, size, range(n)).double().cpu()
    chunk, = basis.chunks(key_step, compartment, size, range(n), n)
    return smooth_rows(chunk) if isinstance(chunk, SmoothRank1Chunk) else srht_rows(chunk)


def projection_matrix(basis: Basis, compartments: list[Compartment], key_step: int,
                      directions_per_compartment: list[int], dim: int) -> torch.Tensor:
    """P with one row per direction, zero outside the direction's compartment."""
    rows = []
    for comp, n in zip(compartments, directions_per_compartment):
        block = torch.zeros((n, dim), dtype=torch.float64)
        block[:, comp.start:comp.stop] = direction_matrix(basis, key_step, comp.index,
                                                          comp.size, n)
        rows.append(block)
    return torch.cat(rows)


def reference_rbd_step(theta: torch.Tensor, grad: torch.Tensor, basis: Basis,
                       compartments: list[Compartment], key_step: int, lr: float,
                       directions_per_compartment: list[int], velocity: torch.Tensor | None = None,
                       momentum: float = 0.0, weight_decay: float = 0.0):
    """One RBD step in float64: c = P g; with momentum v ← μ v + Pᵀ c, θ ← (1 − ηλ) θ − η v,
    else θ ← (1 − ηλ) θ − η Pᵀ c. Returns (θ_new, c), and updates ``velocity`` in place."""
    P = projection_matrix(basis, compartments, key_step, directions_per_compartment,
                          theta.numel())
    c = P @ grad.double()
    step = P.T @ c
    if velocity is not None:
        velocity.mul_(momentum).add_(step)
        step = velocity
    return theta.double() * (1.0 - lr * weight_decay) - lr * step, c
