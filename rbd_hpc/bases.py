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

import numpy as np
import torch

from .errors import require_choice
from .seeds import Stream, derive_seeds, random_words

DISTRIBUTIONS = ("gaussian", "rademacher", "uniform", "srht")
NORMALIZATIONS = ("expected", "exact")
_SQRT3 = math.sqrt(3.0)


@dataclasses.dataclass(frozen=True)
class BasisConfig:
    dist: str = "gaussian"
    normalize: str = "expected"
    antithetic: bool = False

    def __post_init__(self):
        require_choice("--dist", self.dist, DISTRIBUTIONS)
        require_choice("--normalize", self.normalize, NORMALIZATIONS)


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
        # 32 random bits per generator draw, unpacked: ~10× cheaper than one draw per entry
        words = torch.empty((n + 31) // 32, dtype=torch.int64, device=out.device)
        words.random_(0, 2**32, generator=gen)
        if out.device.type == "cpu" and out.dtype == torch.float32 and out.is_contiguous():
            # NumPy's unpackbits is far faster than torch's integer shifts on the CPU
            bits = np.unpackbits(words.numpy().astype("<u4").view(np.uint8), bitorder="little")
            o = out.numpy()
            np.multiply(bits[:n], 2, out=o, casting="unsafe")
            o -= 1                                   # {−1, +1}, zero mean
        else:
            shifts = torch.arange(32, dtype=torch.int64, device=out.device)
            bits = ((words.unsqueeze(1) >> shifts) & 1).reshape(-1)[:n]
            torch.mul(bits, 2, out=out)
            out.sub_(1.0)
    else:  # pragma: no cover - validated by BasisConfig
        raise ValueError(dist)


class DenseChunk:
    """Directions of indices ``indices`` of one compartment, held as a matrix Φ (m × size)."""

    def __init__(self, compartment: int, indices: range, phi: torch.Tensor):
        self.compartment = compartment
        self.indices = indices
        self.phi = phi

    @property
    def n_coefficients(self) -> int:
        return len(self.indices)

    def project(self, g: torch.Tensor) -> torch.Tensor:
        return self.phi @ g

    def combine(self, c: torch.Tensor) -> torch.Tensor:
        return c @ self.phi


_HADAMARD: dict[tuple, torch.Tensor] = {}


def hadamard(n: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Sylvester Hadamard matrix H_n (entries ±1), cached."""
    key = (n, dtype, str(device))
    if key not in _HADAMARD:
        H = torch.ones((1, 1), dtype=dtype)
        while H.shape[0] < n:
            H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
        _HADAMARD[key] = H.to(device)
    return _HADAMARD[key]


def fwht(x: torch.Tensor, radix: int = 16) -> torch.Tensor:
    """Unnormalised fast Walsh–Hadamard transform along the last axis (Sylvester order).

    Radix-16 passes: each pass multiplies one 4-bit digit of the index by H_16 (a batched
    matmul), so log16(n) passes instead of log2(n) — H_n is the Kronecker product of the
    per-digit factors, which act on different index bits and therefore commute.
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    y = x
    h = 1
    while h < n:
        r = min(radix, n // h)
        y = torch.matmul(hadamard(r, x.dtype, x.device), y.reshape(-1, r, h))
        h *= r
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


_ROW_WORD = 2**31  # SRHT counters: index < 2**31 → sign bits, 2**31 + block → row map


class SRHTChunk:
    """Structured orthogonal directions for K adjacent compartments of equal size S.

    Each compartment is split into power-of-two blocks B_b. Direction j of compartment k
    is, on block b, row r_{k,b}(j) of the Hadamard matrix H_{n_b} times random signs s_k,
    scaled by 1/√S — so ‖φ‖ = 1 exactly. The row map r(j) = ((j mod n_b) ⊕ β)·α mod n_b
    (α odd, β random per step, compartment and block) is a bijection, so directions are
    distinct rows while a block has at least as many rows as directions: the directions
    are orthonormal up to the blocks smaller than the number of directions m,
    |<φ_a, φ_b>| ≤ Σ_{n_b < m} n_b / S < 2m/S; exactly orthonormal when S is a power of
    two ≥ m. Signs and row maps come from Philox counters (stream SRHT, step, compartment,
    word), so a direction is a pure function of its key on every device.

    project and combine cost O(S log S) per compartment for all its directions, batched
    over the K compartments.
    """

    def __init__(self, first: int, count: int, size: int, indices: range, root_seed: int,
                 key_step: int, antithetic: bool, device, dtype):
        self.compartment, self.count, self.size, self.indices = first, count, size, indices
        self.blocks = power_of_two_blocks(size)
        comps = np.arange(first, first + count)
        words = (size + 127) // 128
        bits = random_words(root_seed, Stream.SRHT, key_step, comps, np.arange(words))
        signs = np.unpackbits(bits.view(np.uint8).reshape(count, -1), axis=1,
                              bitorder="little")[:, :size]
        self.signs = torch.from_numpy(signs.astype(np.float32) * 2 - 1).to(device, dtype)
        rowkeys = random_words(root_seed, Stream.SRHT, key_step, comps,
                               _ROW_WORD + np.arange(len(self.blocks))).astype(np.int64)
        key_idx, self.dir_sign = _key_and_sign(indices, antithetic)
        j = key_idx.numpy().astype(np.int64)
        self.rows = []
        for b, (_, n) in enumerate(self.blocks):
            alpha = (rowkeys[:, b, 0] % n) | 1
            beta = rowkeys[:, b, 1] % n
            rows = (((j[None, :] % n) ^ beta[:, None]) * alpha[:, None]) % n
            self.rows.append(torch.from_numpy(rows).to(device))
        self.scale = 1.0 / math.sqrt(size)
        self.m = len(indices)

    @property
    def n_coefficients(self) -> int:
        """One coefficient per direction of each of the ``count`` compartments."""
        return self.count * self.m

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """Coefficients, compartment-major: (K·m,)."""
        X = g.reshape(self.count, self.size) * self.signs
        c = torch.zeros((self.count, self.m), dtype=g.dtype, device=g.device)
        for (off, n), rows in zip(self.blocks, self.rows):
            c += torch.gather(fwht(X[:, off:off + n]), 1, rows)
        c *= self.scale
        if self.dir_sign is not None:
            c *= self.dir_sign.to(c.device)
        return c.reshape(-1)

    def combine(self, c: torch.Tensor) -> torch.Tensor:
        c = c.reshape(self.count, self.m)
        if self.dir_sign is not None:
            c = c * self.dir_sign.to(c.device)
        out = torch.empty((self.count, self.size), dtype=c.dtype, device=c.device)
        for (off, n), rows in zip(self.blocks, self.rows):
            z = torch.zeros((self.count, n), dtype=c.dtype, device=c.device)
            z.scatter_add_(1, rows, c)
            out[:, off:off + n] = fwht(z)
        out *= self.signs
        out *= self.scale
        return out.reshape(-1)


class Basis:
    """Generates the chunks of directions for (step, compartment, index range)."""

    def __init__(self, config: BasisConfig, root_seed: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.config = config
        self.root_seed = int(root_seed)
        self.device = torch.device(device)
        self.dtype = dtype
        self._buffers: dict[tuple[int, int], torch.Tensor] = {}

    def chunks(self, key_step: int, compartment: int, size: int, indices: range,
               chunk_size: int, count: int = 1, reuse: bool = True) -> Iterator[DenseChunk | SRHTChunk]:
        """Chunks for ``indices`` of ``count`` adjacent compartments of ``size`` (count > 1
        only for srht, whose one batched transform covers every direction at once).

        With ``reuse`` a dense chunk lives in a scratch buffer that the next chunk of the
        same shape overwrites: consume chunks one at a time (as apply_step does), or pass
        reuse=False to keep them all."""
        if len(indices) == 0:
            return
        if self.config.dist == "srht":
            yield self.srht_chunk(key_step, compartment, size, indices, count)
            return
        if count != 1:
            raise ValueError("dense chunks cover one compartment")
        # one scratch buffer per shape, reused chunk after chunk: a fresh 20 MB tensor per
        # chunk costs thousands of page faults (the CPU allocator returns it to the OS)
        for lo in range(indices.start, indices.stop, chunk_size):
            sub = range(lo, min(lo + chunk_size, indices.stop))
            buf = self._scratch(len(sub), size) if reuse else None
            yield DenseChunk(compartment, sub, self.dense(key_step, compartment, size, sub, out=buf))

    def _scratch(self, rows: int, size: int) -> torch.Tensor:
        """A reusable (rows × size) buffer; valid until the next chunk is generated."""
        key = (rows, size)
        if key not in self._buffers:
            if len(self._buffers) > 8:
                self._buffers.clear()
            self._buffers[key] = torch.empty(key, dtype=self.dtype, device=self.device)
        return self._buffers[key]

    def dense(self, key_step: int, compartment: int, size: int, indices: range,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """Φ for ``indices`` (rows) of a compartment of ``size`` parameters."""
        cfg = self.config
        key_idx, sign = _key_and_sign(indices, cfg.antithetic)
        seeds = derive_seeds(self.root_seed, Stream.DIRECTIONS, key_step, compartment,
                             key_idx.numpy())
        phi = out if out is not None else torch.empty(
            (len(indices), size), dtype=self.dtype, device=self.device)
        # One generator per row: a direction depends on its key only, never on the chunk.
        # (Filling rows from Python threads was measured: torch's CPU normal sampler does
        # not scale with them and NumPy's bit unpacking contends for the GIL.)
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

    def srht_chunk(self, key_step: int, compartment: int, size: int, indices: range,
                   count: int = 1) -> SRHTChunk:
        return SRHTChunk(compartment, count, size, indices, self.root_seed, key_step,
                         self.config.antithetic, self.device, self.dtype)

    def matrix(self, key_step: int, compartment: int, size: int, indices: range) -> torch.Tensor:
        """Materialised Φ (m × size) for any distribution — for references and tests."""
        if self.config.dist != "srht":
            return self.dense(key_step, compartment, size, indices)
        chunk = self.srht_chunk(key_step, compartment, size, indices)
        eye = torch.eye(len(indices), dtype=self.dtype, device=self.device)
        return torch.stack([chunk.combine(e) for e in eye])
