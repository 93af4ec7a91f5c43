"""numba kernels of generations 2 and 3 (kernels.py documents them): the Philox4x32-10 cipher,
the ziggurat normal sampler, and the in-order sums of dense directions.

A module of its own, imported on first use, so that numba (0.5 s to import) loads only in
processes that draw gaussian or srht directions; module-level functions, so that numba's
on-disk cache (``cache=True``) holds them and a process compiles nothing that an earlier one
compiled.
"""
from __future__ import annotations

import numba
import numpy as np

from .kernels import ZIGGURAT_R, ziggurat_tables
from .seeds import PHILOX_M, PHILOX_W

M0, M1, W0, W1 = (np.uint64(v) for v in (*PHILOX_M, *PHILOX_W))
MASK = np.uint64(0xFFFFFFFF)
S32 = np.uint64(32)
K, X, F = ziggurat_tables()
U = X[:-1] / 2.0**23                       # a 23-bit magnitude's step in layer i
STEP = U.astype(np.float32)
R = ZIGGURAT_R


@numba.njit(cache=True, inline="always")
def philox_block(c0, c1, c2, c3, k0, k1):
    for _ in range(10):
        p0 = M0 * c0
        p1 = M1 * c2
        c0, c1, c2, c3 = ((p1 >> S32) ^ c1 ^ k0), p1 & MASK, ((p0 >> S32) ^ c3 ^ k1), p0 & MASK
        k0 = (k0 + W0) & MASK
        k1 = (k1 + W1) & MASK
    return c0, c1, c2, c3


@numba.njit(cache=True)
def philox_fill(words, k0, k1, block0, lane):
    """words[4b : 4b+4] = Philox4x32-10 of counter (block0 + b, lane, 0, 0) under (k0, k1)."""
    for b in range(words.shape[0] // 4):
        c0, c1, c2, c3 = philox_block(np.uint64(block0 + b), np.uint64(lane), np.uint64(0),
                                      np.uint64(0), k0, k1)
        words[4 * b] = np.uint32(c0)
        words[4 * b + 1] = np.uint32(c1)
        words[4 * b + 2] = np.uint32(c2)
        words[4 * b + 3] = np.uint32(c3)


@numba.njit(cache=True)
def philox_rows(counters, k0, k1, out):
    """out[i] = Philox4x32-10 of counters[i] under (k0, k1) (uint32 rows of 4)."""
    for i in range(counters.shape[0]):
        c0, c1, c2, c3 = philox_block(np.uint64(counters[i, 0]), np.uint64(counters[i, 1]),
                                      np.uint64(counters[i, 2]), np.uint64(counters[i, 3]),
                                      k0, k1)
        out[i, 0] = np.uint32(c0)
        out[i, 1] = np.uint32(c1)
        out[i, 2] = np.uint32(c2)
        out[i, 3] = np.uint32(c3)


@numba.njit(cache=True)
def draw(w, scale):
    """One ziggurat draw from a 32-bit word: the low 8 bits choose the layer, the high 24
    bits are a signed magnitude v (two's complement): ((v · STEP[layer]) · scale, layer,
    |v|, inside the layer's rectangle). Int32 arithmetic throughout, because int32 →
    float32 converts 8 lanes at a time (int64 → float32 has no AVX2 form), and the tables
    are constants, which the output cannot alias: the hot loop has no branch."""
    layer = np.int32(w & np.uint32(0xFF))
    v = np.int32(w) >> np.int32(8)
    u = np.abs(v)
    return np.float32(v) * STEP[layer] * scale, layer, u, u < K[layer]


@numba.njit(cache=True)
def uniform(w):
    """A uniform in (0, 1) from the top 24 bits of a word."""
    return (np.float64(w >> np.uint32(8)) + 0.5) / 16777216.0


@numba.njit(cache=True)
def second_test(x, layer, u, u1, u2, scale):
    """The rare test of a draw outside its layer's rectangle, in float64: the tail beyond r
    (layer 0, Marsaglia 1964) or the wedge between the layer and f. NaN: rejected."""
    if layer == 0:
        t = -np.log(u1) / R
        if -2.0 * np.log(u2) <= t * t:
            return np.float32(np.nan)
        return np.float32(R + t) * (scale if x > 0 else -scale)
    xd = u * U[layer]
    if F[layer] + u1 * (F[layer + 1] - F[layer]) >= np.exp(-0.5 * xd * xd):
        return np.float32(np.nan)
    return x


@numba.njit(cache=True)
def normal_row(out, seed, scale):
    """out ← scale × normals of ``seed``'s Philox stream. out[i] comes from word i
    (counter block i // 4, lane 0) when its layer's rectangle accepts it (≈ 98.8%); the
    others are finished afterwards, in index order, from a second stream (counters
    (b, 1, 0, 0)) by the wedge / tail test and, where that rejects, fresh draws. So the
    hot loop is a plain loop over words, with no data-dependent branch."""
    # scratch of its own (a few KB per row), so the compiler knows it cannot alias ``out``
    words = np.empty(1024, dtype=np.uint32)
    spare = np.empty(64, dtype=np.uint32)
    rejected = np.empty(1024, dtype=np.int64)
    accepted = np.empty(1024, dtype=np.bool_)
    k0, k1 = np.uint64(seed) & MASK, np.uint64(seed) >> S32
    tile, n = words.shape[0], out.shape[0]
    spare_block, spare_pos = 0, spare.shape[0]
    for lo in range(0, n, tile):
        philox_fill(words, k0, k1, lo // 4, 0)
        m = min(tile, n - lo)
        for t in range(m):
            x, layer, u, inside = draw(words[t], scale)
            out[lo + t] = x
            accepted[t] = inside
        count = 0
        for t in range(m):
            if not accepted[t]:
                rejected[count] = t
                count += 1
        for r in range(count):
            x, layer, u, inside = draw(words[rejected[r]], scale)
            while not inside:
                if spare_pos + 3 > spare.shape[0]:
                    philox_fill(spare, k0, k1, spare_block, 1)
                    spare_block += spare.shape[0] // 4
                    spare_pos = 0
                x = second_test(x, layer, u, uniform(spare[spare_pos]),
                                uniform(spare[spare_pos + 1]), scale)
                spare_pos += 2
                if x == x:
                    break
                x, layer, u, inside = draw(spare[spare_pos], scale)
                spare_pos += 1
            out[lo + rejected[r]] = x


@numba.njit(cache=True)
def normal_rows(out, seeds, scale):
    """normal_row for every row, one after the other (rows spread over two threads with
    numba's prange measured no faster on this 2-vCPU machine)."""
    for r in range(out.shape[0]):
        normal_row(out[r], seeds[r], scale)


@numba.njit(cache=True)
def signed_scales(k0, k1, stream, step, first, scale, out):
    """out[k, i] = ±scale, + where bit i of compartment first + k's sign stream is set: bit i
    is bit i % 32 of word (i // 32) % 4 of the Philox block of counter (stream, step,
    first + k, i // 128) — the bits NumPy's little-endian unpackbits reads from those words."""
    size = out.shape[1]
    for k in range(out.shape[0]):
        for w in range((size + 127) // 128):
            c = philox_block(np.uint64(stream), np.uint64(step), np.uint64(first + k),
                             np.uint64(w), k0, k1)
            for lane in range(4):
                word = c[lane]
                base = 128 * w + 32 * lane
                for bit in range(min(32, size - base)):
                    positive = (word >> np.uint64(bit)) & np.uint64(1)
                    out[k, base + bit] = scale if positive else -scale


@numba.njit(cache=True)
def sum_middle(a, out):
    """out[i, k] = a[i, 0, k] + a[i, 1, k] + … in that order (NumPy's reductions may add
    pairwise, which rounds differently from the reference path's loop)."""
    for i in range(a.shape[0]):
        for k in range(a.shape[2]):
            acc = a[i, 0, k]
            for j in range(1, a.shape[1]):
                acc += a[i, j, k]
            out[i, k] = acc


@numba.njit(cache=True)
def scatter_folded(c, offsets, lengths, key_rows, out):
    """out[k, offsets[b] + key_rows[b, k, r]] = c[k, r] + c[k, r + n] + … (n = lengths[b]),
    added in that order with the last group padded by +0: kernels.fold's sums, scattered
    into every block of ``out`` (zeros) in one call."""
    m = c.shape[1]
    for b in range(offsets.shape[0]):
        n = lengths[b]
        groups = (m + n - 1) // n
        for k in range(c.shape[0]):
            for r in range(min(n, m)):
                acc = c[k, r]
                for i in range(1, groups):
                    j = r + i * n
                    acc += c[k, j] if j < m else np.float32(0.0)
                out[k, offsets[b] + key_rows[b, k, r]] = acc


@numba.njit(cache=True)
def srht_rows(k0, k1, stream, step, first, row_word, lengths, first_key, out):
    """out[k, b, t] = the Hadamard row of key first_key + t in block b (of ``lengths[b]``
    rows) of compartment first + k: ((key mod n) ⊕ β)·α mod n, with α = (w₀ mod n) | 1 and
    β = w₁ mod n from the Philox block of counter (stream, step, first + k, row_word + b)."""
    for k in range(out.shape[0]):
        for b in range(out.shape[1]):
            c = philox_block(np.uint64(stream), np.uint64(step), np.uint64(first + k),
                             np.uint64(row_word + b), k0, k1)
            n = lengths[b]
            alpha = (np.int64(c[0]) % n) | 1
            beta = np.int64(c[1]) % n
            for t in range(out.shape[2]):
                out[k, b, t] = (((first_key + t) % n) ^ beta) * alpha % n


@numba.njit(cache=True)
def combine_rows(c, phi, out):
    """out = c[0]·phi[0] + c[1]·phi[1] + … (float32), added in direction order, every product
    and every sum rounded to float32 on its own: numba contracts nothing into a fused
    multiply-add without fastmath, so every SIMD width (SSE, AVX2, AVX-512) gives the bits of
    the scalar loop. A BLAS gemv (c @ Φ) blocks the sum by the CPU's vector width instead."""
    for j in range(out.shape[0]):
        out[j] = np.float32(0.0)
    for i in range(phi.shape[0]):
        ci = c[i]
        for j in range(phi.shape[1]):
            out[j] += ci * phi[i, j]


@numba.njit(cache=True)
def row_norms(phi, out):
    """out[i] = √(Σ_j phi[i, j]²) with the squares summed in float64 in index order, then
    rounded to float32 (ATen's norm reduces by vector width)."""
    for i in range(phi.shape[0]):
        acc = 0.0
        for j in range(phi.shape[1]):
            x = np.float64(phi[i, j])
            acc += x * x
        out[i] = np.float32(np.sqrt(acc))
