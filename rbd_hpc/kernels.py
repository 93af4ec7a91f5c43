"""The numerical kernels that directions are made of, by *generation*.

A run's directions must be the same bits at every replay, so the arithmetic that makes them
is versioned: a run file records the generation it was trained with (config field
``kernels``; format-1 and -2 files predate it and are generation 1) and replays with it.
The keys, signs, Hadamard rows and seeds are the same in both; only the arithmetic differs.

Generation 1 (rbd-hpc 0.1 run files):
  * srht: radix-16 transform passes, each a batched matmul by H_16; the scale 1/√S applied to
    the coefficients; coefficients scatter-added onto their Hadamard rows.
  * gaussian: torch's CPU generator seeded per direction, then scaled by 1/√S.
Generation 2:
  * srht: radix-2 butterflies (a + b, a − b), levels in ascending order (h = 1, 2, 4, …) —
    the textbook FWHT. Every output is a fixed sequence of IEEE float32 additions, so a
    vectorised kernel that keeps the level order gives the bits of the plain reference
    ``fwht_butterfly``; ``fwht_inplace`` uses fht_cpu (MIT, FFHT's AVX code) after checking
    exactly that on this machine. The gradient is multiplied by ±1/√S before the transform;
    a Hadamard row shared by several coefficients gets their sum in direction order
    (``fold``, ``sum_in_order``) instead of a scatter-add, so CPU and CUDA agree.
  * gaussian (CPU): a Philox4x32-10 counter stream per direction turned into normals by a
    256-layer ziggurat, scaled as each is drawn (``gaussian_rows``, compiled with numba in
    _jit.py); about twice torch's sampler.
  * signs and row maps come from the compiled Philox (the words seeds.random_words gives).
Generation 3 (current): generation 2, except that dense directions (gaussian, rademacher,
uniform) are combined and normalised in a fixed order that no CPU feature changes:
  * Σ_i c_i φ_i adds the products in direction order, each product and each sum rounded to
    float32 (``combine_in_order``), where generation 2 called BLAS (``c @ Φ``), whose
    blocking follows the CPU's vector width: a generation-2 gaussian run trained on an
    AVX-512 node fails ``replay --verify`` on an AVX2 node, a generation-3 run does not
    (tests/test_platform.py replays one under other MKL and ATen instruction sets).
  * ``--normalize exact`` divides by √(Σ φ²) summed in float64 in index order (``row_norms``)
    instead of ATen's vectorised norm; uniform directions are 2√3·u − √3 in two rounded steps.
  * every method's step θ − η·x rounds η·x before the add (methods/update.add_scaled_): ATen
    fuses it into one multiply-add in its AVX2 and AVX-512 kernels only. So ranks on mixed
    nodes stay bitwise identical (SGD and the sparse methods too).
  srht's transforms are generation 2's (butterflies and in-order folds already are).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

KERNELS = (1, 2, 3)
CURRENT = 3


# ---- Walsh–Hadamard transforms ------------------------------------------------------------

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


def _power_of_two(n: int) -> None:
    if n & (n - 1) or n == 0:
        raise ValueError(f"fwht needs a power-of-two length, got {n}")


def fwht_radix16(x: torch.Tensor) -> torch.Tensor:
    """Generation 1: unnormalised FWHT along the last axis (Sylvester order) in radix-16
    passes, each multiplying one 4-bit digit of the index by H_16 (a batched matmul).
    H_n is the Kronecker product of the per-digit factors, which act on different index
    bits and therefore commute."""
    n = x.shape[-1]
    _power_of_two(n)
    y, h = x, 1
    while h < n:
        r = min(16, n // h)
        y = torch.matmul(hadamard(r, x.dtype, x.device), y.reshape(-1, r, h))
        h *= r
    return y.reshape(x.shape)


def fwht_butterfly(x: torch.Tensor) -> torch.Tensor:
    """Generation 2, plain reference (any device): radix-2 butterflies along the last axis,
    levels h = 1, 2, 4, … in ascending order; returns a new tensor."""
    n = x.shape[-1]
    _power_of_two(n)
    y, h = x.reshape(-1, n), 1
    while h < n:
        v = y.reshape(y.shape[0], n // (2 * h), 2, h)
        a, b = v[:, :, 0], v[:, :, 1]
        y = torch.stack([a + b, a - b], dim=2).reshape(-1, n)
        h *= 2
    return y.reshape(x.shape)


@functools.cache
def _fht_cpu():
    """fht_cpu's in-place float32 transform when it is installed and gives the reference
    butterflies' bits here (checked once, on every length up to 2^12); else None."""
    try:
        from fht_cpu import _core
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    for log_n in range(13):
        x = rng.standard_normal(1 << log_n).astype(np.float32)
        fast = x.copy()
        _core.fht_1d_f32(fast)
        if not np.array_equal(fast, fwht_butterfly(torch.from_numpy(x)).numpy()):
            return None
    return _core.fht_1d_f32


def fwht_backend() -> str:
    """Which generation-2 transform runs on the CPU: for the bench's and the README's record."""
    return "fht_cpu (AVX butterflies)" if _fht_cpu() is not None else "torch butterflies"


@functools.cache
def fwht_inplace():
    """The in-place generation-2 transform of a contiguous float32 vector whose length is a
    power of two, unchecked (the srht chunks call it block by block): fht_cpu, else the
    reference butterflies."""
    fast = _fht_cpu()
    if fast is not None:
        return fast

    def reference(a: np.ndarray) -> None:
        a[...] = fwht_butterfly(torch.from_numpy(a.copy())).numpy()
    return reference


def fold(c: torch.Tensor, n: int) -> torch.Tensor:
    """(K, m) → (K, min(n, m)): column r is c[:, r] + c[:, r + n] + c[:, r + 2n] + …, added in
    that order, the last group padded with +0 (the srht row of key j depends on j mod n only,
    so keys j and j + n share a Hadamard row of an n-row block). The CPU path's
    ``scatter_folded`` makes the same sums."""
    K, m = c.shape
    if m <= n:
        return c
    q = -(-m // n)
    padded = torch.zeros((K, q * n), dtype=c.dtype, device=c.device)
    padded[:, :m] = c
    groups = padded.reshape(K, q, n)
    out = groups[:, 0].clone()
    for i in range(1, q):
        out += groups[:, i]
    return out


# ---- Philox4x32-10 and the ziggurat, compiled -----------------------------------------------

ZIGGURAT_LAYERS = 256
ZIGGURAT_R = 3.6541528853610088    # x_1: where the tail starts (256 layers of equal area v)
_ZIGGURAT_V = 0.00492867323399


def ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k, x, f) for 256 layers of area v under f(x) = exp(−x²/2), x_0 = v / f(r) > x_1 = r >
    … > x_256 = 0 (layer i is [0, x_i] × [f(x_i), f(x_{i+1})], layer 0 the base strip with
    the tail): k_i = ⌊2²³ x_{i+1} / x_i⌋ (int32, the rectangle test of a 23-bit magnitude),
    x_i and f_i = f(x_i) (float64, 257 entries, x_256 = 0 and f_256 = 1)."""
    f = lambda x: np.exp(-0.5 * x * x)
    x = np.zeros(ZIGGURAT_LAYERS + 1)
    x[0], x[1] = _ZIGGURAT_V / f(ZIGGURAT_R), ZIGGURAT_R
    for i in range(2, ZIGGURAT_LAYERS):
        x[i] = np.sqrt(-2.0 * np.log(_ZIGGURAT_V / x[i - 1] + f(x[i - 1])))
    k = np.floor(2.0**23 * x[1:] / x[:-1]).astype(np.int32)
    return k, x, f(x)


@functools.cache
def _compiled():
    """The numba kernels (rbd_hpc/_jit.py), imported on first use."""
    from . import _jit
    return _jit


def gaussian_rows(out: np.ndarray, seeds, scale: float = 1.0) -> None:
    """Row r of ``out`` (float32, C-contiguous) ← ``scale`` × the standard normals of the
    Philox stream of seeds[r], multiplied in float32 as each normal is made, so a row is
    written once, already scaled."""
    _compiled().normal_rows(out, np.asarray(seeds, dtype=np.uint64), np.float32(scale))


def philox_stream(seed: int, n_blocks: int, lane: int = 0) -> np.ndarray:
    """The first 4·n_blocks words of lane ``lane`` of the Philox stream of ``seed`` (tests)."""
    words = np.empty(4 * n_blocks, dtype=np.uint32)
    _compiled().philox_fill(words, np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32), 0, lane)
    return words


def philox4x32_compiled(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """seeds.philox4x32 through the compiled cipher that srht signs, rows and gaussian streams
    use: tests/test_kernels.py holds the two to the same words."""
    out = np.empty(counters.shape, dtype=np.uint32)
    _compiled().philox_rows(np.ascontiguousarray(counters, dtype=np.uint32), np.uint64(key[0]),
                   np.uint64(key[1]), out)
    return out


def srht_signed_scales(k0: int, k1: int, stream: int, step: int, first: int, scale: float,
                       out: np.ndarray) -> None:
    """out[k] ← ±scale per parameter from compartment first + k's srht sign bits."""
    _compiled().signed_scales(np.uint64(k0), np.uint64(k1), int(stream), int(step), int(first),
                              np.float32(scale), out)


def compiled_can_take(t: torch.Tensor) -> bool:
    """Whether the numba kernels can work on ``t`` in place: a contiguous float32 CPU tensor."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()


def combine_in_order(c: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Generation 3's Σ_i c_i φ_i for dense directions Φ (m × n): products added in direction
    order, each rounded to the dtype (the compiled loop on the CPU for float32, the
    reference otherwise; the two agree bit for bit)."""
    if compiled_can_take(phi) and c.device.type == "cpu":
        out = np.empty(phi.shape[1], dtype=np.float32)
        coefficients = np.ascontiguousarray(c.detach().numpy(), dtype=np.float32)
        _compiled().combine_rows(coefficients, phi.numpy(), out)
        return torch.from_numpy(out)
    return combine_in_order_reference(c, phi)


def combine_in_order_reference(c: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """The same sum as one elementwise multiply and one add per direction (any device)."""
    out = torch.zeros(phi.shape[1], dtype=phi.dtype, device=phi.device)
    for i in range(phi.shape[0]):
        out.add_(phi[i] * c[i].to(phi.device, phi.dtype))
    return out


def row_norms(phi: torch.Tensor) -> torch.Tensor:
    """‖φ_i‖ of every row, summed in float64 in index order (generation 3, CPU float32):
    the same bits on every CPU; other devices and dtypes use torch's norm."""
    if compiled_can_take(phi):
        out = np.empty(phi.shape[0], dtype=np.float32)
        _compiled().row_norms(phi.numpy(), out)
        return torch.from_numpy(out)
    return phi.norm(dim=1)


def sum_in_order(a: np.ndarray) -> np.ndarray:
    """(A, B, C) float32 → (A, C): the sum over the middle axis, one term after the other, as
    the reference loops add (NumPy's own reductions may add pairwise)."""
    out = np.empty((a.shape[0], a.shape[2]), dtype=a.dtype)
    _compiled().sum_middle(np.ascontiguousarray(a), out)
    return out


def scatter_folded(c: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                   key_rows: np.ndarray, out: np.ndarray) -> None:
    """For every block b of ``out`` (K, size; zeros): the coefficients ``c`` (K, keys, float32)
    folded onto the block's n_b rows (``fold``'s sums, bit for bit) and written at columns
    offsets[b] + key_rows[b] (blocks, K, keys) — one compiled call for all blocks."""
    _compiled().scatter_folded(np.ascontiguousarray(c), offsets, lengths,
                               np.ascontiguousarray(key_rows), out)


def srht_rows(k0: int, k1: int, stream: int, step: int, first: int, row_word: int,
              lengths: np.ndarray, first_key: int, out: np.ndarray) -> None:
    """out[k, b, t] ← the Hadamard row of key first_key + t in block b of compartment first + k
    (bases.SRHTChunk gives the map)."""
    _compiled().srht_rows(np.uint64(k0), np.uint64(k1), int(stream), int(step), int(first),
                          int(row_word), lengths, int(first_key), out)
