"""Random directions, regenerated from seeds and never stored.

A *direction* φ is a vector the size of one compartment. Directions are produced in
*chunks* (consecutive direction indices of one compartment) that expose two linear maps:

    project(g)  -> c = Φ g          (the coordinate gradients, one per direction)
    combine(c)  -> Σ_i c_i φ_i      (the step in weight space)

Every direction is a pure function of (root seed, stream, step, compartment, direction
index) — see seeds.py — so chunking changes summation order, never values.

Scaling: E‖φ‖² = 1 (the paper's 1/√D normalisation, with D the compartment size), or
exactly ‖φ‖ = 1 with ``normalize="exact"``.

``smooth:σ`` is a structured basis for fully connected layers fed by the image: on such a
layer (weight out × C·H·W, then bias) direction j is the rank-1 matrix u_j a_jᵀ, with u_j
Gaussian over the outputs and a_j a Gaussian image blurred by a Gaussian of σ pixels
(the bias taken as one more, unblurred input), so ‖φ‖ = 1 exactly. The gradient of such
a layer is Σ_b δ_b x_bᵀ and natural images are smooth, so these directions catch far more
of it than unstructured ones; every other compartment uses ``srht``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterator

import numpy as np
import torch

from .errors import UserError, require_choice
from .kernels import (CURRENT, KERNELS, combine_in_order, compiled_can_take, fold,
                      fwht_butterfly, fwht_inplace, fwht_radix16, gaussian_rows, row_norms,
                      scatter_folded, srht_rows, srht_signed_scales, sum_in_order)
from .seeds import Stream, derive_seeds, root_key

DISTRIBUTIONS = ("gaussian", "rademacher", "uniform", "srht", "smooth:SIGMA")
NORMALIZATIONS = ("expected", "exact")
_SQRT3 = math.sqrt(3.0)


def smooth_sigma(dist: str) -> float | None:
    """σ (pixels) of a ``smooth:σ`` distribution, None for the others; a bad σ is a UserError."""
    if not dist.startswith("smooth:"):
        return None
    try:
        sigma = float(dist[len("smooth:"):])
    except ValueError:
        sigma = math.nan
    if not (math.isfinite(sigma) and 0 < sigma <= 16):
        raise UserError(f"--dist {dist!r}: σ must be a number of pixels in (0, 16], e.g. smooth:2")
    return sigma


@dataclasses.dataclass(frozen=True)
class BasisConfig:
    dist: str = "gaussian"
    normalize: str = "expected"
    antithetic: bool = False
    kernels: int = CURRENT     # the arithmetic's generation (kernels.py): a run file's own

    def __post_init__(self):
        if smooth_sigma(self.dist) is None:
            require_choice("--dist", self.dist, DISTRIBUTIONS)
        require_choice("--normalize", self.normalize, NORMALIZATIONS)
        require_choice("kernels", self.kernels, KERNELS)

    @property
    def structured(self) -> bool:
        """Chunks are transforms, not stored matrices (srht, and smooth's srht part)."""
        return self.dist == "srht" or smooth_sigma(self.dist) is not None


def _key_and_sign(indices: range, antithetic: bool):
    """Antithetic pairs (φ, −φ): direction 2p is +φ_p and 2p+1 is −φ_p."""
    idx = torch.arange(indices.start, indices.stop)
    if not antithetic:
        return idx, None
    return idx // 2, 1.0 - 2.0 * (idx % 2).to(torch.float32)


def fill_direction(dist: str, gen: torch.Generator, out: torch.Tensor,
                   kernels: int = CURRENT) -> None:
    """Fill ``out`` (1-D) with one direction of zero mean and unit variance per entry."""
    n = out.numel()
    if dist == "gaussian":
        torch.randn(n, generator=gen, out=out, dtype=out.dtype, device=out.device)
    elif dist == "uniform" and kernels >= 3:
        # U(−√3, √3) as 2√3·u − √3 in two rounded steps: torch's uniform_(a, b) computes
        # u·(b − a) + a, which its AVX2 kernels fuse into one multiply-add and its baseline
        # kernels do not; u·1 + 0 is exact either way
        out.uniform_(0.0, 1.0, generator=gen)
        out.mul_(2.0 * _SQRT3).sub_(_SQRT3)
    elif dist == "uniform":
        # U(−√3, √3): zero mean, unit variance
        out.uniform_(-_SQRT3, _SQRT3, generator=gen)
    elif dist == "rademacher":
        # 32 random bits per generator draw, unpacked: ~10× cheaper than one draw per entry
        words = torch.empty((n + 31) // 32, dtype=torch.int64, device=out.device)
        words.random_(0, 2**32, generator=gen)
        if compiled_can_take(out):
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
    """Directions of indices ``indices`` of one compartment, held as a matrix Φ (m × size).

    ``in_order`` (generation 3): combine adds c_i φ_i in direction order, the same bits on
    every CPU (kernels.combine_in_order); otherwise (generations 1 and 2) through BLAS.
    Coefficients that require a gradient (the coordinates-as-parameters path) always go
    through the matrix product, which autograd differentiates."""

    def __init__(self, compartment: int, indices: range, phi: torch.Tensor,
                 in_order: bool = False):
        self.compartment = compartment
        self.indices = indices
        self.phi = phi
        self.in_order = in_order

    @property
    def n_coefficients(self) -> int:
        return len(self.indices)

    def project(self, g: torch.Tensor) -> torch.Tensor:
        return self.phi @ g

    def combine(self, c: torch.Tensor) -> torch.Tensor:
        if self.in_order and not c.requires_grad:
            return combine_in_order(c, self.phi)
        return c @ self.phi


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

    Generation 2 arithmetic (kernels.py): project is c = Σ_b gather_b(FWHT(g ⊙ s/√S)) over
    the blocks in order (no leading zero); combine is FWHT(scatter(c)) ⊙ s/√S, with the
    coefficients of a shared row summed in direction order (antithetic pairs, then
    ``fold``). On the CPU in float32 each transform runs in place in one NumPy buffer through
    the fast kernel; elsewhere, and where autograd differentiates through the chunk (the
    coordinates-as-parameters formulation), through the reference butterflies; both give the
    same bits (tests/test_kernels.py). One transform per block and compartment serves all
    directions.
    """

    def __init__(self, first: int, count: int, size: int, indices: range, root_seed: int,
                 key_step: int, antithetic: bool, device, dtype):
        self.compartment, self.count, self.size, self.indices = first, count, size, indices
        self.blocks = power_of_two_blocks(size)
        self.scale = 1.0 / math.sqrt(size)
        self.m = len(indices)
        key_idx, self.dir_sign = _key_and_sign(indices, antithetic)
        # ±1/√S per parameter: the signs (compiled Philox, the words ``random_words`` gives)
        k0, k1 = root_key(root_seed)
        signed_scale = np.empty((count, size), dtype=np.float32)
        srht_signed_scales(k0, k1, int(Stream.SRHT), key_step, first, self.scale, signed_scale)
        self.signed_scale = torch.from_numpy(signed_scale).to(device, dtype)
        # directions share a key in antithetic pairs, and keys share a Hadamard row of an
        # n-row block when they agree mod n: rows are computed per key (compiled Philox, the
        # words ``random_words`` gives for counters _ROW_WORD + block), and combine sums the
        # coefficients of a row in direction order (pairs first, then ``fold``)
        j = key_idx.numpy().astype(np.int64)
        self.first_key = int(j[0]) if self.m else 0
        n_keys = int(j[-1]) + 1 - self.first_key if self.m else 0
        lengths = np.array([length for _, length in self.blocks], dtype=np.int64)
        key_rows = np.empty((count, len(self.blocks), n_keys), dtype=np.int64)
        srht_rows(k0, k1, int(Stream.SRHT), key_step, first, _ROW_WORD, lengths, self.first_key,
                  key_rows)
        self.key_rows = key_rows.transpose(1, 0, 2).copy()                # (blocks, K, keys)
        self._lengths = lengths
        self._direction_rows = (key_rows if not antithetic
                                else key_rows[:, :, j - self.first_key]).transpose(1, 0, 2)
        self.device = self.signed_scale.device
        # the in-place NumPy path: CPU float32; columns of every block's rows in the buffer
        self.fast = self.device.type == "cpu" and dtype == torch.float32
        offsets = np.array([off for off, _ in self.blocks], dtype=np.int64)
        self._offsets = offsets
        self._columns = self._direction_rows + offsets[:, None, None]   # (blocks, K, m)
        self._compartment_axis = np.arange(count)[:, None]

    @functools.cached_property
    def rows(self) -> list[torch.Tensor]:
        """Per block, the (K, m) Hadamard rows of the chunk's directions."""
        return [torch.from_numpy(np.ascontiguousarray(r)).to(self.device)
                for r in self._direction_rows]

    @property
    def signs(self) -> torch.Tensor:
        """s (±1 per parameter), for references and tests."""
        return torch.sign(self.signed_scale)

    @property
    def n_coefficients(self) -> int:
        """One coefficient per direction of each of the ``count`` compartments."""
        return self.count * self.m

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """Coefficients, compartment-major: (K·m,)."""
        if self.fast and not g.requires_grad:   # autograd (coordinates.py) takes the reference
            X = np.multiply(g.reshape(self.count, self.size).numpy(), self.signed_scale.numpy())
            fwht = fwht_inplace()
            for off, n in self.blocks:
                for k in range(self.count):
                    fwht(X[k, off:off + n])
            # (blocks, K, m) gathered at once, then summed block by block in order
            gathered = X[self._compartment_axis, self._columns].reshape(1, len(self.blocks), -1)
            c = torch.from_numpy(sum_in_order(gathered).reshape(self.count, self.m))
        else:
            X = g.reshape(self.count, self.size) * self.signed_scale
            c = None
            for (off, n), rows in zip(self.blocks, self.rows):
                part = torch.gather(fwht_butterfly(X[:, off:off + n]), 1, rows)
                c = part if c is None else c + part
            if c is None:
                c = torch.zeros((self.count, 0), dtype=g.dtype, device=g.device)
        if self.dir_sign is not None:
            c = c * self.dir_sign.to(c.device)
        return c.reshape(-1)

    def per_key(self, c: torch.Tensor) -> torch.Tensor:
        """(K, m) signed coefficients → (K, keys): the two directions of an antithetic pair
        added, even index first (a key with one direction in the chunk adds an exact 0)."""
        if self.dir_sign is None:
            return c
        n_keys = self.key_rows.shape[2]
        slots = torch.zeros((self.count, 2 * n_keys), dtype=c.dtype, device=c.device)
        slots[:, torch.arange(self.indices.start, self.indices.stop) - 2 * self.first_key] = c
        return slots[:, 0::2] + slots[:, 1::2]

    def combine(self, c: torch.Tensor) -> torch.Tensor:
        c = c.reshape(self.count, self.m)
        if self.dir_sign is not None:
            c = c * self.dir_sign.to(c.device)
        c = self.per_key(c)
        if self.fast and not c.requires_grad:
            out = np.zeros((self.count, self.size), dtype=np.float32)
            scatter_folded(c.numpy(), self._offsets, self._lengths, self.key_rows, out)
            fwht = fwht_inplace()
            for off, n in self.blocks:
                for k in range(self.count):
                    fwht(out[k, off:off + n])
            out *= self.signed_scale.numpy()
            return torch.from_numpy(out).reshape(-1)
        out = torch.empty((self.count, self.size), dtype=c.dtype, device=c.device)
        for (off, n), rows in zip(self.blocks, self.key_rows):
            folded = fold(c, n)
            z = torch.zeros((self.count, n), dtype=c.dtype, device=c.device)
            z.scatter_(1, torch.from_numpy(rows[:, :folded.shape[1]]).to(c.device), folded)
            out[:, off:off + n] = fwht_butterfly(z)
        out *= self.signed_scale
        return out.reshape(-1)


class SRHTChunkV1(SRHTChunk):
    """Generation-1 arithmetic (run files of format 2): radix-16 transforms, the scale applied
    to the coefficients and the scatter-added step; the same directions up to rounding."""

    def __init__(self, *args):
        super().__init__(*args)
        self.fast = False
        self._signs = torch.sign(self.signed_scale)

    @property
    def signs(self) -> torch.Tensor:
        return self._signs

    def project(self, g: torch.Tensor) -> torch.Tensor:
        X = g.reshape(self.count, self.size) * self.signs
        c = torch.zeros((self.count, self.m), dtype=g.dtype, device=g.device)
        for (off, n), rows in zip(self.blocks, self.rows):
            c += torch.gather(fwht_radix16(X[:, off:off + n]), 1, rows)
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
            out[:, off:off + n] = fwht_radix16(z)
        out *= self.signs
        out *= self.scale
        return out.reshape(-1)


@dataclasses.dataclass(frozen=True)
class ImageLayer:
    """A compartment that is one fully connected layer fed by the image: weight (out, C·H·W)
    in row-major order, then bias (out,)."""

    out: int
    channels: int
    height: int
    width: int

    @property
    def inputs(self) -> int:
        return self.channels * self.height * self.width

    @property
    def size(self) -> int:
        return self.out * (self.inputs + 1)


def image_layers(compartments, named_shapes: list[tuple[str, tuple]],
                 channels: int) -> dict[int, ImageLayer]:
    """{compartment index: ImageLayer} for the compartment that is exactly the network's
    first layer, when that layer is fully connected on the flattened square image of
    ``channels`` channels (weight (out, C·H·W) then bias (out,)); else {}."""
    if len(named_shapes) < 2:
        return {}
    (_, wshape), (_, bshape) = named_shapes[:2]
    if len(wshape) != 2 or tuple(bshape) != (wshape[0],):
        return {}
    out, n_in = (int(x) for x in wshape)
    side = math.isqrt(n_in // channels)
    if side * side * channels != n_in:
        return {}
    layer = ImageLayer(out, channels, side, side)
    return {c.index: layer for c in compartments if c.start == 0 and c.stop == layer.size}


def smooth_image_layers(dist: str, compartments, named_shapes: list[tuple[str, tuple]],
                        channels: int | None, here: str) -> dict[int, ImageLayer]:
    """The ``image_layers`` a basis of ``dist`` needs: {} unless ``smooth:σ``, which must find
    one (a UserError naming ``here``, e.g. "cnn, --compartments layer", otherwise)."""
    if smooth_sigma(dist) is None:
        return {}
    if channels is None:
        raise UserError(f"--dist {dist} blurs image directions: it needs a built-in image data "
                        f"set (here {here})")
    image = image_layers(compartments, named_shapes, channels)
    if not image:
        raise UserError(f"--dist {dist} gives smooth directions to a fully connected first "
                        f"layer in its own compartment: use an fc preset with --compartments "
                        f"layer (here {here})")
    return image


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The 1-D Gaussian of σ (float64, radius ⌈3σ⌉, sum 1)."""
    r = math.ceil(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-x * x / (2 * sigma * sigma))
    return k / k.sum()


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(n, C, H, W) blurred by a separable Gaussian of σ pixels (zero padding), rescaled so
    that white noise keeps unit variance per pixel away from the border.

    A sum of shifted copies, tap by tap: every output value is the same sequence of float
    operations whatever n is, so a direction does not depend on the chunk it is drawn in
    (a convolution routine may pick another algorithm for another batch size)."""
    k = gaussian_kernel(sigma)
    r = (k.numel() - 1) // 2
    x = images
    for dim in (2, 3):
        n = x.shape[dim]
        padded = torch.nn.functional.pad(x, (0, 0, r, r) if dim == 2 else (r, r))
        out = torch.zeros_like(x)
        for t, w in enumerate(k.tolist()):
            out += w * padded.narrow(dim, t, n)
        x = out
    return x / float(k.square().sum())


class SmoothRank1Chunk:
    """Directions φ_j = u_j a_jᵀ of an ``ImageLayer`` (see the module docstring).

    u_j ~ N(0, I_out) and a_j = (blur_σ(z_j), s_j) with z_j ~ N(0, I_{C·H·W}), s_j ~ N(0, 1),
    drawn from one generator per direction key (stream DIRECTIONS, step, compartment,
    index), each normalised to 1, so ‖φ_j‖ = 1 and a direction does not depend on the chunk.
    project and combine cost O(m · out · C·H·W) as two small matrix products.
    """

    def __init__(self, compartment: int, indices: range, layer: ImageLayer, sigma: float,
                 root_seed: int, key_step: int, antithetic: bool, device, dtype):
        self.compartment, self.indices, self.layer = compartment, indices, layer
        key_idx, self.dir_sign = _key_and_sign(indices, antithetic)
        seeds = derive_seeds(root_seed, Stream.DIRECTIONS, key_step, compartment, key_idx.numpy())
        m, n_in = len(indices), layer.inputs
        u = torch.empty((m, layer.out), dtype=dtype)
        z = torch.empty((m, n_in + 1), dtype=dtype)
        gen = torch.Generator()
        for row, seed in enumerate(seeds):
            gen.manual_seed(int(seed))
            torch.randn(layer.out, generator=gen, out=u[row])
            torch.randn(n_in + 1, generator=gen, out=z[row])
        images = z[:, :n_in].reshape(m, layer.channels, layer.height, layer.width)
        a = torch.cat([blur(images, sigma).reshape(m, n_in), z[:, n_in:]], dim=1)
        self.u = (u / u.norm(dim=1, keepdim=True)).to(device)
        self.a = (a / a.norm(dim=1, keepdim=True)).to(device)

    @property
    def n_coefficients(self) -> int:
        return len(self.indices)

    def _matrix(self, g: torch.Tensor) -> torch.Tensor:
        """A compartment vector as the (out × (C·H·W + 1)) matrix [W | b]."""
        L = self.layer
        return torch.cat([g[:L.out * L.inputs].reshape(L.out, L.inputs),
                          g[L.out * L.inputs:].reshape(L.out, 1)], dim=1)

    def project(self, g: torch.Tensor) -> torch.Tensor:
        c = ((self.u @ self._matrix(g)) * self.a).sum(dim=1)   # c_j = u_jᵀ [W | b] a_j
        if self.dir_sign is not None:
            c = c * self.dir_sign.to(c.device)
        return c

    def combine(self, c: torch.Tensor) -> torch.Tensor:
        if self.dir_sign is not None:
            c = c * self.dir_sign.to(c.device)
        M = (self.u * c.unsqueeze(1)).T @ self.a                # Σ_j c_j u_j a_jᵀ
        L = self.layer
        return torch.cat([M[:, :L.inputs].reshape(-1), M[:, L.inputs]])


class Basis:
    """Generates the chunks of directions for (step, compartment, index range)."""

    def __init__(self, config: BasisConfig, root_seed: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32,
                 image_layers: dict[int, ImageLayer] | None = None):
        """``image_layers``: the compartments (by index) that ``smooth:σ`` gives rank-1
        smooth directions; its other compartments use srht."""
        self.config = config
        self.sigma = smooth_sigma(config.dist)
        self.image_layers = dict(image_layers or {})
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
        if self.sigma is not None and compartment in self.image_layers:
            layer = self.image_layers[compartment]
            if count != 1 or size != layer.size:
                raise ValueError(f"compartment {compartment}: {count} × {size} parameters, "
                                 f"image layer of {layer.size}")
            yield SmoothRank1Chunk(compartment, indices, layer, self.sigma, self.root_seed,
                                   key_step, self.config.antithetic, self.device, self.dtype)
            return
        if self.config.structured:
            if self.sigma is not None and any(k in self.image_layers
                                              for k in range(compartment, compartment + count)):
                raise ValueError("an image layer cannot be batched with other compartments")
            yield self.srht_chunk(key_step, compartment, size, indices, count)
            return
        if count != 1:
            raise ValueError("dense chunks cover one compartment")
        # one scratch buffer per shape, reused chunk after chunk: a fresh 20 MB tensor per
        # chunk costs thousands of page faults (the CPU allocator returns it to the OS)
        for lo in range(indices.start, indices.stop, chunk_size):
            sub = range(lo, min(lo + chunk_size, indices.stop))
            buf = self._scratch(len(sub), size) if reuse else None
            yield DenseChunk(compartment, sub, self.dense(key_step, compartment, size, sub, out=buf),
                             in_order=self.config.kernels >= 3)

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
        if cfg.dist == "gaussian" and cfg.kernels >= 2 and compiled_can_take(phi):
            # compiled Philox + ziggurat (kernels.py), E‖φ‖² = 1 folded into the sampler:
            # the row is written once
            exact = cfg.normalize == "exact"
            gaussian_rows(phi.numpy(), seeds, 1.0 if exact else 1.0 / math.sqrt(size))
            if exact:
                phi /= self._norms(phi)
        else:
            gen = torch.Generator(device=self.device)
            for row, seed in enumerate(seeds):
                gen.manual_seed(int(seed))
                fill_direction(cfg.dist, gen, phi[row], cfg.kernels)
            if cfg.normalize == "exact":
                phi /= self._norms(phi)
            else:
                phi *= 1.0 / math.sqrt(size)
        if sign is not None:
            phi *= sign.to(phi.device, phi.dtype).unsqueeze(1)
        return phi

    def _norms(self, phi: torch.Tensor) -> torch.Tensor:
        """‖φ_i‖ as a column: in index order from generation 3 on (kernels.row_norms)."""
        norms = row_norms(phi) if self.config.kernels >= 3 else phi.norm(dim=1)
        return norms.unsqueeze(1)

    def srht_chunk(self, key_step: int, compartment: int, size: int, indices: range,
                   count: int = 1) -> SRHTChunk:
        cls = SRHTChunkV1 if self.config.kernels == 1 else SRHTChunk
        return cls(compartment, count, size, indices, self.root_seed, key_step,
                   self.config.antithetic, self.device, self.dtype)

    def matrix(self, key_step: int, compartment: int, size: int, indices: range) -> torch.Tensor:
        """Materialised Φ (m × size) for any distribution — for references and tests."""
        if not self.config.structured:
            return self.dense(key_step, compartment, size, indices)
        chunk, = self.chunks(key_step, compartment, size, indices, len(indices))
        eye = torch.eye(len(indices), dtype=self.dtype, device=self.device)
        return torch.stack([chunk.combine(e) for e in eye])
