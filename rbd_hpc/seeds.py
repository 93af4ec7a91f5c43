"""Seed schedule: a pure, collision-free map from a key to a generator seed.

A key is (root seed, stream, step, compartment, index). It never contains the rank
id or the number of ranks (docs/design.md, invariant 1).

The map is the Philox4x32-10 block cipher (Salmon et al. 2011, the generator behind
cuRAND and NumPy's ``Philox``): the root seed is the 64-bit cipher key and
(stream, step, compartment, index) is the 128-bit counter. For a fixed key the
cipher is a bijection of the counter, so two different keys of one run can never
map to the same 128-bit output: collision-free by construction, and never a sum of
integers (the official code's ``index + t + worker`` defect).

We use the low 64 bits of the output as the seed of a torch generator. The function
is vectorised over the index so a step's seeds cost one NumPy call.
"""
from __future__ import annotations

import enum

import numpy as np
import torch

PHILOX_M = (0xD2511F53, 0xCD9E8D57)   # Philox4x32 round multipliers and key increments
PHILOX_W = (0x9E3779B9, 0xBB67AE85)   # (also the compiled cipher's, kernels.py / _jit.py)
_M0, _M1 = (np.uint64(v) for v in PHILOX_M)
_W0, _W1 = (np.uint32(v) for v in PHILOX_W)
_MASK32 = np.uint64(0xFFFFFFFF)
_U32_MAX = 2**32 - 1


class Stream(enum.IntEnum):
    """Independent random streams of one run. Values are part of the file format."""

    DIRECTIONS = 1   # dense directions (gaussian, rademacher, uniform)
    SRHT = 2         # signs and row choices of structured orthogonal bases
    DATA_ORDER = 3   # permutation of the training set, keyed by epoch
    AUGMENT = 4      # per-sample augmentation, keyed by epoch and batch
    SPLIT = 5        # train/validation split
    INIT = 6         # initial weights
    MASK = 7         # sparse masks (RigL, SET, static)
    # 8 was reserved for NES perturbations, which use the DIRECTIONS keys: do not reuse it


def philox4x32(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of ``counter`` (shape (n, 4), uint32) under ``key`` (two uint32).

    Returns an (n, 4) uint32 array. Matches the Random123 known-answer vectors.
    """
    c = np.asarray(counter, dtype=np.uint32)
    if c.ndim != 2 or c.shape[1] != 4:
        raise ValueError(f"counter must have shape (n, 4), got {c.shape}")
    c0, c1, c2, c3 = (c[:, i].astype(np.uint64) for i in range(4))
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
        c0, c1, c2, c3 = (
            hi1 ^ c1 ^ np.uint64(k0),
            lo1,
            hi0 ^ c3 ^ np.uint64(k1),
            lo0,
        )
        with np.errstate(over="ignore"):
            k0 = np.uint32(k0 + _W0)
            k1 = np.uint32(k1 + _W1)
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def philox_block(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, ...]:
    """Philox4x32-10 of one counter in Python integers: ``philox4x32``'s bits for a single
    block in about 10 µs, against about 300 µs for the vectorised form's NumPy calls (one seed
    per batch, e.g. augmentation's, is the common call)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    m0, m1 = PHILOX_M
    w0, w1 = PHILOX_W
    for _ in range(10):
        p0, p1 = m0 * c0, m1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _U32_MAX, (p0 >> 32) ^ c3 ^ k1, p0 & _U32_MAX
        k0, k1 = (k0 + w0) & _U32_MAX, (k1 + w1) & _U32_MAX
    return c0, c1, c2, c3


def _key_fields(stream: Stream, step: int, compartment: int) -> tuple[int, int, int]:
    """The counter's first three words, each checked to fit 32 bits."""
    return (_check_field("stream", int(stream)), _check_field("step", step),
            _check_field("compartment", compartment))


def _check_field(name: str, value: int) -> int:
    value = int(value)
    if not 0 <= value <= _U32_MAX:
        raise ValueError(f"seed key field {name}={value} is outside [0, 2**32)")
    return value


def root_key(root_seed: int) -> tuple[int, int]:
    root_seed = int(root_seed)
    if not 0 <= root_seed < 2**64:
        raise ValueError(f"root seed {root_seed} is outside [0, 2**64)")
    return root_seed & _U32_MAX, root_seed >> 32


def derive_seeds(root_seed: int, stream: Stream, step: int, compartment: int,
                 indices) -> np.ndarray:
    """Seeds (uint64 array) for ``indices`` under (root seed, stream, step, compartment)."""
    idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
    if idx.size and (idx.min() < 0 or idx.max() > _U32_MAX):
        raise ValueError("direction index outside [0, 2**32)")
    counter = np.empty((idx.size, 4), dtype=np.uint32)
    counter[:, :3] = _key_fields(stream, step, compartment)
    counter[:, 3] = idx.astype(np.uint32)
    out = philox4x32(counter, root_key(root_seed)).astype(np.uint64)
    return out[:, 0] | (out[:, 1] << np.uint64(32))


def derive_seed(root_seed: int, stream: Stream, step: int = 0, compartment: int = 0,
                index: int = 0) -> int:
    """One seed as a Python int in [0, 2**64): ``derive_seeds``'s, computed in Python integers."""
    index = int(index)
    if not 0 <= index <= _U32_MAX:
        raise ValueError("direction index outside [0, 2**32)")
    out = philox_block((*_key_fields(stream, step, compartment), index), root_key(root_seed))
    return out[0] | (out[1] << 32)


def torch_generator(seed: int, device="cpu"):
    """A torch generator on ``device`` seeded with ``seed`` (64-bit)."""
    g = torch.Generator(device=device)
    # torch.manual_seed accepts [-2**63, 2**64); keep it in the unsigned range.
    g.manual_seed(int(seed) & (2**64 - 1))
    return g


def numpy_rng(seed: int) -> np.random.Generator:
    """A NumPy generator for host-side randomness (data order, masks)."""
    return np.random.Generator(np.random.Philox(key=int(seed) & (2**64 - 1)))


def random_words(root_seed: int, stream: Stream, step: int, compartments, indices) -> np.ndarray:
    """Raw Philox output for every (compartment, index) pair: shape (len(c), len(i), 4) uint32.

    Each 128-bit block is the cipher of the counter (stream, step, compartment, index), so
    any subset can be computed alone — the basis of the vectorised structured bases.
    """
    comps = np.asarray(compartments, dtype=np.int64)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() > _U32_MAX):
        raise ValueError("word index outside [0, 2**32)")
    counter = np.empty((comps.size, idx.size, 4), dtype=np.uint32)
    counter[..., 0] = _check_field("stream", int(stream))
    counter[..., 1] = _check_field("step", step)
    counter[..., 2] = comps.astype(np.uint32)[:, None]
    counter[..., 3] = idx.astype(np.uint32)[None, :]
    return philox4x32(counter.reshape(-1, 4), root_key(root_seed)).reshape(counter.shape)
