"""Plain reference RBD with a materialised D_total × D projection matrix.

Slow and memory-hungry on purpose: the fast chunked path is tested against it.
"""
from __future__ import annotations

import torch

from ..bases import Basis
from ..compartments import Compartment


def projection_matrix(basis: Basis, compartments: list[Compartment], key_step: int,
                      directions_per_compartment: list[int], dim: int) -> torch.Tensor:
    """P with one row per direction, zero outside the direction's compartment."""
    rows = []
    for comp, n in zip(compartments, directions_per_compartment):
        block = torch.zeros((n, dim), dtype=torch.float64)
        block[:, comp.start:comp.stop] = basis.matrix(key_step, comp.index, comp.size,
                                                      range(n)).double()
        rows.append(block)
    return torch.cat(rows)


def reference_rbd_step(theta: torch.Tensor, grad: torch.Tensor, basis: Basis,
                       compartments: list[Compartment], key_step: int, lr: float,
                       directions_per_compartment: list[int]):
    """One RBD step in float64: c = P g, θ ← θ − η Pᵀ c. Returns (θ_new, c)."""
    P = projection_matrix(basis, compartments, key_step, directions_per_compartment,
                          theta.numel())
    c = P @ grad.double()
    return theta.double() - lr * (P.T @ c), c
