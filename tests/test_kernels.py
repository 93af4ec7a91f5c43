"""The kernels that make directions (rbd_hpc/kernels.py): each fast path gives the bits of its
plain reference, and the compiled sampler draws standard normals."""
import math

import numpy as np
import pytest
import torch

from rbd_hpc import kernels
from rbd_hpc.bases import Basis, BasisConfig
from rbd_hpc.methods.reference import explicit_hadamard
from rbd_hpc.seeds import Stream, philox4x32, random_words


def test_the_fast_transform_is_installed_and_gives_the_reference_butterflies_bits():
    # the set-up installs fht_cpu; were it missing or different here, srht would silently run
    # on the slow reference, so this machine must have it
    assert kernels.fwht_backend() == "fht_cpu (AVX butterflies)"
    rng = np.random.default_rng(3)
    for log_n in range(18):
        x = rng.standard_normal(1 << log_n).astype(np.float32)
        fast = x.copy()
        kernels.fwht_inplace()(fast)
        assert np.array_equal(fast, kernels.fwht_butterfly(torch.from_numpy(x)).numpy()), log_n
    H = explicit_hadamard(64)
    x = torch.randn(64, dtype=torch.float64)
    assert torch.allclose(kernels.fwht_butterfly(x), H @ x)


def test_fwht_refuses_a_length_that_is_not_a_power_of_two():
    for n in (0, 3, 12):
        with pytest.raises(ValueError, match="power-of-two"):
            kernels.fwht_butterfly(torch.zeros(n))


@pytest.mark.parametrize("size,count,indices,antithetic", [
    (101770, 1, range(250), False),      # FC: 8 blocks, the two smallest hold fewer rows than m
    (1000, 3, range(40), True),          # batched compartments, antithetic pairs
    (1000, 2, range(7, 48), True),       # a pair split at the chunk's start (per-rank ranges)
    (37, 2, range(50), False),           # every block smaller than m: rows fold
    (64, 1, range(64), False),           # one block, exactly orthonormal
    (4095, 1, range(1), False),          # 12 blocks summed for one coefficient
    (4095, 3, range(5, 6), True),        # one direction, the odd half of a pair
])
def test_srht_fast_path_gives_the_reference_bits(size, count, indices, antithetic):
    basis = Basis(BasisConfig("srht", antithetic=antithetic), 5)
    chunk = basis.srht_chunk(3, 0, size, indices, count)
    assert chunk.fast
    gen = torch.Generator().manual_seed(size)
    g = torch.randn(count * size, generator=gen)
    c = torch.randn(chunk.n_coefficients, generator=gen)
    fast = chunk.project(g), chunk.combine(c)
    chunk.fast = False
    slow = chunk.project(g), chunk.combine(c)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])
    # and both are Φ g and Φᵀ c of the explicit directions, compartment by compartment (to
    # float32 rounding: a coefficient sums 101,770 terms of order 1/√D, so 1e-5 was too tight)
    m = len(indices)
    for k in range(count):
        phi = basis.matrix(3, k, size, indices)
        part = slice(k * size, (k + 1) * size)
        assert torch.allclose(fast[0][k * m:(k + 1) * m], phi @ g[part], atol=1e-4)
        assert torch.allclose(fast[1][part], c[k * m:(k + 1) * m] @ phi, atol=1e-5)


@pytest.mark.parametrize("antithetic,indices", [(False, range(250)), (True, range(3, 40))])
def test_compiled_srht_signs_and_rows_are_the_keyed_ones(antithetic, indices):
    """Signs and row maps from the compiled Philox equal those computed from ``random_words``
    (the reference cipher) as rbd-hpc 0.1 did, so format-2 run files keep their directions."""
    size, first, count, step, seed = 101770, 2, 3, 7, 5
    chunk = Basis(BasisConfig("srht", antithetic=antithetic), seed).srht_chunk(
        step, first, size, indices, count)
    comps = np.arange(first, first + count)
    bits = random_words(seed, Stream.SRHT, step, comps, np.arange((size + 127) // 128))
    signs = np.unpackbits(bits.view(np.uint8).reshape(count, -1), axis=1,
                          bitorder="little")[:, :size].astype(np.float32) * 2 - 1
    assert np.array_equal(chunk.signs.numpy(), signs)
    assert np.array_equal(chunk.signed_scale.numpy(), signs * np.float32(1 / math.sqrt(size)))
    rowkeys = random_words(seed, Stream.SRHT, step, comps,
                           2**31 + np.arange(len(chunk.blocks))).astype(np.int64)
    j = np.arange(indices.start, indices.stop) // (2 if antithetic else 1)
    for b, (_, n) in enumerate(chunk.blocks):
        alpha = (rowkeys[:, b, 0] % n) | 1
        beta = rowkeys[:, b, 1] % n
        want = (((j[None, :] % n) ^ beta[:, None]) * alpha[:, None]) % n
        assert np.array_equal(chunk.rows[b].numpy(), want), b


def test_fold_and_the_compiled_scatter_add_in_direction_order():
    rng = np.random.default_rng(1)
    for K, m, n in [(1, 250, 2), (3, 250, 8), (2, 17, 16), (1, 9, 1), (2, 5, 8)]:
        c = (rng.standard_normal((K, m)) * 10.0 ** rng.uniform(-4, 4, (K, m))).astype(np.float32)
        want = np.zeros((K, min(n, m)), dtype=np.float32)
        for j in range(m):                        # one term after the other
            want[:, j % n] += c[:, j]
        assert np.array_equal(kernels.fold(torch.from_numpy(c), n).numpy(), want)
        # the CPU path's one-call fold and scatter: block 0 of n rows at offset 3, rows reversed
        rows = np.broadcast_to(np.arange(m)[::-1] % n, (1, K, m)).copy()
        out = np.zeros((K, n + 3), dtype=np.float32)
        kernels.scatter_folded(c, np.array([3]), np.array([n]), rows, out)
        expect = np.zeros_like(out)
        expect[:, 3 + rows[0, 0, :min(n, m)]] = want
        assert np.array_equal(out, expect)


def test_generation_1_keeps_its_arithmetic():
    """Old run files replay with the radix-16 transform and scatter-add: same directions, other
    rounding."""
    g = torch.randn(101770)
    new = Basis(BasisConfig("srht"), 5).srht_chunk(3, 0, 101770, range(250))
    old = Basis(BasisConfig("srht", kernels=1), 5).srht_chunk(3, 0, 101770, range(250))
    assert type(old).__name__ == "SRHTChunkV1"
    assert all(torch.equal(a, b) for a, b in zip(new.rows, old.rows))
    assert torch.equal(new.signs, old.signs)
    a, b = new.project(g), old.project(g)
    assert torch.allclose(a, b, atol=1e-5) and not torch.equal(a, b)


def test_compiled_philox_gives_the_reference_words():
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, (1000, 4), dtype=np.uint64).astype(np.uint32)
    for key in [(0, 0), (123, 456), (2**32 - 1, 2**31)]:
        assert np.array_equal(kernels.philox4x32_compiled(counters, key), philox4x32(counters, key))
    seed = 0x0123456789ABCDEF
    for lane in (0, 1):
        want = philox4x32(np.array([[b, lane, 0, 0] for b in range(5)], np.uint32),
                          (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)
        assert np.array_equal(kernels.philox_stream(seed, 5, lane), want)


def normal_cdf(x):
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def test_the_ziggurat_draws_standard_normals():
    """10⁶ draws from 10 seeds: moments, tails and the Kolmogorov–Smirnov distance to N(0, 1),
    each bound at several standard errors (fixed seeds: the test cannot flake)."""
    n = 100_000
    out = np.empty((10, n), dtype=np.float32)
    kernels.gaussian_rows(out, np.arange(10, dtype=np.uint64) * 977 + 1)
    x = out.astype(np.float64).ravel()
    N = x.size
    assert abs(x.mean()) < 5 / math.sqrt(N)
    assert abs(x.var() - 1) < 5 * math.sqrt(2 / N)
    assert abs((x ** 3).mean()) < 5 * math.sqrt(15 / N)
    assert abs((x ** 4).mean() - 3) < 5 * math.sqrt(96 / N)
    for t in (1.0, 2.0, 3.0, 3.6541528853610088, 4.0):   # 3.654…: where the tail starts
        p = 2 * (1 - normal_cdf(np.array(t)))
        assert abs((np.abs(x) > t).mean() - p) < 5 * math.sqrt(p * (1 - p) / N) + 1e-7, t
    s = np.sort(x[::10])
    ks = np.abs(normal_cdf(s) - np.arange(1, s.size + 1) / s.size).max()
    assert ks < 1.63 / math.sqrt(s.size)    # the 1% critical value


def test_a_gaussian_direction_is_a_function_of_its_seed_only():
    seeds = np.array([5, 2**63 + 11, 7], dtype=np.uint64)
    together = np.empty((3, 5000), dtype=np.float32)
    kernels.gaussian_rows(together, seeds)
    alone = np.empty((1, 5000), dtype=np.float32)
    kernels.gaussian_rows(alone, seeds[1:2])
    assert np.array_equal(together[1], alone[0])
    shorter = np.empty((1, 1234), dtype=np.float32)
    kernels.gaussian_rows(shorter, seeds[1:2])
    assert np.array_equal(shorter[0], alone[0, :1234])   # a prefix: one stream per seed
    half = np.empty((3, 5000), dtype=np.float32)
    kernels.gaussian_rows(half, seeds, 0.5)
    assert np.array_equal(half, together * np.float32(0.5))   # the scale is applied per draw
    assert not np.array_equal(together[0], together[2])


def test_gaussian_rows_of_a_basis_are_scaled_as_the_normalisation_says():
    b = Basis(BasisConfig("gaussian"), 4)
    phi = b.dense(2, 1, 20000, range(6))
    assert phi.norm(dim=1).sub(1).abs().max() < 0.05           # E‖φ‖² = 1
    exact = Basis(BasisConfig("gaussian", normalize="exact"), 4).dense(2, 1, 20000, range(6))
    assert torch.allclose(exact.norm(dim=1), torch.ones(6))
    assert torch.allclose(exact, phi / phi.norm(dim=1, keepdim=True), atol=1e-6)
