"""Random directions, regenerated from seeds and never stored.

A *direction* φ is a vector the size of one compartment. Directions are produced in
*chunks* (consecutive direction indices of one compartment) that expose two linear maps:

    project(g)  -> c = Φ g          (the coordinate gradients, one per direction)
    combine(c)  -> Σ_i c_i φ_i      (the step in weight space)

Every direction is a pure function of (root seed, stream, step, compartment, direction
index) — see seeds.py — so chunking changes summation order, never values.

Scaling: E‖φ‖² = 1 (the paper's 1/√D normalisation, with D the compartment size), or
exactly ‖φ‖ = 1 with ``normalize="exact"``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import torch

from .errors import UserError
from .seeds import Stream, derive_seeds, torch_generator

DISTRIBUTIONS = ("gaussian", "rademacher", "uniform", "srht")
NORMALIZATIONS = ("expected", "exact")
_SQRT3 = math.sqrt(3.0)


@dataclasses.dataclass(frozen=True)
class BasisConfig:
    dist: str = "gaussian"
    normalize: str = "expected"
    antithetic: bool = False

    def __post_init__(self):
        if self.dist not in DISTRIBUTIONS:
            raise UserError(f"--dist {self.dist!r} is not valid; choose one of: "
                            + ", ".join(DISTRIBUTIONS))
        if self.normalize not in NORMALIZATIONS:
            raise UserError(f"--normalize {self.normalize!r} is not valid; choose one of: "
                            + ", ".join(NORMALIZATIONS))


def _key_and_sign(indices: range, antithetic: bool):
    """Antithetic pairs (φ, −φ): direction 2p is +φ_p and 2p+1 is −φ_p."""
    idx = torch.arange(indices.start, indices.stop)
    if not antithetic:
        return idx, None
    return idx // 2, 1.0 - 2.0 * (idx % 2).to(torch.float32)


def fill_direction(dist: str, gen: torch.Generator, out: torch.Tensor) -> None:
    """Fill ``out`` (1-D) with one direction of zero mean and unit variance per entry."""
    n = out.numel()
    if dist == "gaussian":
        torch.randn(n, generator=gen, out=out, dtype=out.dtype, device=out.device)
    elif dist == "uniform":
        # U(−√3, √3): zero mean, unit variance
        out.uniform_(-_SQRT3, _SQRT3, generator=gen)
    elif dist == "rademacher":
        # 32 random bits per draw, unpacked: 32× fewer generator calls than one per entry
        words = torch.empty((n + 31) // 32, dtype=torch.int64, device=out.device)
        words.random_(0, 2**32, generator=gen)
        shifts = torch.arange(32, dtype=torch.int64, device=out.device)
        bits = ((words.unsqueeze(1) >> shifts) & 1).reshape(-1)[:n]
        torch.mul(bits, 2, out=out)  # {0, 2}
        out.sub_(1.0)                # {−1, +1}, zero mean
    else:  # pragma: no cover - validated by BasisConfig
        raise ValueError(dist)


class DenseChunk:
    """Directions of indices ``indices`` of one compartment, held as a matrix Φ (m × size)."""

    def __init__(self, compartment: int, indices: range, phi: torch.Tensor):
        self.compartment = compartment
        self.indices = indices
        self.phi = phi

    def project(self, g: torch.Tensor) -> torch.Tensor:
        return self.phi @ g

    def combine(self, c: torch.Tensor) -> torch.Tensor:
        return c @ self.phi


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh–Hadamard transform along the last axis (Sylvester order)."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    lead = x.shape[:-1]
    y = x
    h = 1
    while h < n:
        y = y.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return y.reshape(x.shape)


def power_of_two_blocks(size: int) -> list[tuple[int, int]]:
    """Split ``size`` into power-of-two blocks (offset, length), largest first."""
    blocks, offset = [], 0
    for bit in reversed(range(size.bit_length())):
        n = 1 << bit
        if size & n:
            blocks.append((offset, n))
            offset += n
    return blocks


class SRHTChunk:
    """Structured orthogonal directions from a subsampled randomized Hadamard transform.

    The compartment (size D_k) is split into power-of-two blocks B_b. Direction j is,
    on block b, row ``rows_b[j]`` of the Hadamard matrix H_{n_b} times random signs s_b,
    scaled by 1/√D_k — so ‖φ_j‖ = 1 exactly. Within a block the rows of distinct
    directions are distinct while the block has at least as many rows as directions,
    making the directions orthonormal up to the blocks smaller than the number of
    directions: |<φ_a, φ_b>| ≤ Σ_{n_b < m} n_b / D_k < 2m / D_k. When D_k is a power
    of two and m ≤ D_k they are exactly orthonormal.

    project and combine cost O(D_k log D_k) for all directions at once.
    """

    def __init__(self, compartment: int, indices: range, size: int, signs: torch.Tensor,
                 perms: list[torch.Tensor], sign_of_direction: torch.Tensor | None):
        self.compartment = compartment
        self.indices = indices
        self.size = size
        self.signs = signs
        self.blocks = power_of_two_blocks(size)
        key_idx, _ = _key_and_sign(indices, sign_of_direction is not None)
        self.rows = [perm[key_idx.to(perm.device) % n] for (_, n), perm in zip(self.blocks, perms)]
        self.dir_sign = sign_of_direction
        self.scale = 1.0 / math.sqrt(size)

    def project(self, g: torch.Tensor) -> torch.Tensor:
        c = torch.zeros(len(self.indices), dtype=g.dtype, device=g.device)
        for (off, n), rows in zip(self.blocks, self.rows):
            t = fwht(self.signs[off:off + n] * g[off:off + n])
            c += t[rows]
        c *= self.scale
        if self.dir_sign is not None:
            c *= self.dir_sign.to(c.device)
        return c

    def combine(self, c: torch.Tensor) -> torch.Tensor:
        if self.dir_sign is not None:
            c = c * self.dir_sign.to(c.device)
        out = torch.empty(self.size, dtype=c.dtype, device=c.device)
        for (off, n), rows in zip(self.blocks, self.rows):
            z = torch.zeros(n, dtype=c.dtype, device=c.device)
            z.index_add_(0, rows, c)
            out[off:off + n] = self.signs[off:off + n] * fwht(z)
        out *= self.scale
        return out


class Basis:
    """Generates the chunks of directions for (step, compartment, index range)."""

    def __init__(self, config: BasisConfig, root_seed: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.config = config
        self.root_seed = int(root_seed)
        self.device = torch.device(device)
        self.dtype = dtype

    def chunks(self, key_step: int, compartment: int, size: int, indices: range,
               chunk_size: int) -> Iterator[DenseChunk | SRHTChunk]:
        if len(indices) == 0:
            return
        if self.config.dist == "srht":
            # one transform covers every direction: chunking would only repeat it
            yield self.srht_chunk(key_step, compartment, size, indices)
            return
        for lo in range(indices.start, indices.stop, chunk_size):
            sub = range(lo, min(lo + chunk_size, indices.stop))
            yield DenseChunk(compartment, sub, self.dense(key_step, compartment, size, sub))

    def dense(self, key_step: int, compartment: int, size: int, indices: range,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """Φ for ``indices`` (rows) of a compartment of ``size`` parameters."""
        cfg = self.config
        key_idx, sign = _key_and_sign(indices, cfg.antithetic)
        seeds = derive_seeds(self.root_seed, Stream.DIRECTIONS, key_step, compartment,
                             key_idx.numpy())
        phi = out if out is not None else torch.empty(
            (len(indices), size), dtype=self.dtype, device=self.device)
        gen = torch.Generator(device=self.device)
        for row, seed in enumerate(seeds):
            gen.manual_seed(int(seed))
            fill_direction(cfg.dist, gen, phi[row])
        if cfg.normalize == "exact":
            phi /= phi.norm(dim=1, keepdim=True)
        else:
            phi *= 1.0 / math.sqrt(size)
        if sign is not None:
            phi *= sign.to(phi.device, phi.dtype).unsqueeze(1)
        return phi

    def srht_chunk(self, key_step: int, compartment: int, size: int, indices: range) -> SRHTChunk:
        seed = int(derive_seeds(self.root_seed, Stream.SRHT, key_step, compartment, [0])[0])
        gen = torch_generator(seed, self.device)
        signs = torch.empty(size, dtype=self.dtype, device=self.device)
        fill_direction("rademacher", gen, signs)
        perms = [torch.randperm(n, generator=gen, device=self.device)
                 for _, n in power_of_two_blocks(size)]
        _, dir_sign = _key_and_sign(indices, self.config.antithetic)
        return SRHTChunk(compartment, indices, size, signs, perms, dir_sign)

    def matrix(self, key_step: int, compartment: int, size: int, indices: range) -> torch.Tensor:
        """Materialised Φ (m × size) for any distribution — for references and tests."""
        if self.config.dist != "srht":
            return self.dense(key_step, compartment, size, indices)
        chunk = self.srht_chunk(key_step, compartment, size, indices)
        eye = torch.eye(len(indices), dtype=self.dtype, device=self.device)
        return torch.stack([chunk.combine(e) for e in eye])
