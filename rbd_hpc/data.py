"""Data sets from standard files in a data directory, keyed order and augmentation.

Formats:
  IDX (MNIST, Fashion-MNIST): train-images-idx3-ubyte, train-labels-idx1-ubyte,
      t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte — raw or with a .gz suffix.
  CIFAR-10 python batches: data_batch_1..5 and test_batch, in the directory or in its
      cifar-10-batches-py/ subdirectory. They are pickles; we unpickle them with a
      loader that admits only the NumPy array types the format uses, so a crafted
      file cannot run code.

Data order is keyed by (root seed, epoch) and rank r takes a fixed slice of each
global batch (docs/design.md, invariant 6). Augmentation is keyed by (root seed, epoch,
global batch index) and drawn for the whole global batch, so it does not depend on the
number of ranks either.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, require_choice
from .partition import share
from .seeds import Stream, derive_seed, numpy_rng
from .usercode import call_factory, is_spec, load_factory

DATASETS = ("mnist", "fmnist", "cifar10")
SHAPES = {"mnist": (1, 28, 28), "fmnist": (1, 28, 28), "cifar10": (3, 32, 32)}  # (C, H, W)
DEFAULT_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass
class Split:
    x: np.ndarray  # built-in sets: uint8 images (N, H, W, C); a user's: float32 (N, ...) as given
    y: np.ndarray  # int64, (N,)


@dataclasses.dataclass(frozen=True)
class Inputs:
    """How stored samples become the model's input tensor.

    Built-in sets hold NHWC images (uint8, or augmented floats in [0, 1]) that become NCHW
    floats x/255, with CIFAR-10's per-image standardisation when ``standardize``. A user's
    data set (``images=False``) is passed to the model exactly as stored, as float32."""

    images: bool = True
    standardize: bool = False

    def tensor(self, x: np.ndarray, device="cpu") -> torch.Tensor:
        if not self.images:
            return torch.from_numpy(np.array(x, dtype=np.float32, copy=True)).to(device)
        return to_tensor(x, device, self.standardize)


@dataclasses.dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    inputs: Inputs = Inputs()

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's shape as the model sees it: (C, H, W) for the built-in image sets."""
        if not self.inputs.images:
            return tuple(self.train.x.shape[1:])
        _, h, w, c = self.train.x.shape
        return c, h, w


def resolve_data_dir(dataset: str, data_dir: str | None) -> tuple[Path, str]:
    """The directory to read and where that choice came from (for error messages)."""
    if data_dir:
        return Path(data_dir), "--data-dir"
    if os.environ.get("RBD_DATA"):
        return Path(os.environ["RBD_DATA"]), "$RBD_DATA"
    if dataset == "fmnist":
        return Path(DEFAULT_FMNIST_DIR), "the default location"
    raise UserError(f"data set {dataset!r} has no default location; pass --data-dir DIR or set "
                    "RBD_DATA")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (raw or gzipped); errors name the file and what is wrong."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated (header incomplete)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    if len(raw) != expected:
        raise UserError(f"{path} is corrupt: {len(raw)} bytes, expected {expected} for shape {dims}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _labels(y: np.ndarray, what: str, classes: int | None = 10) -> np.ndarray:
    """Class labels as int64, refused unless integers in 0..classes−1 (≥ 0 when None)."""
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise UserError(f"{what} are {y.dtype} of shape {y.shape}, not integers of shape (N,)")
    if y.size and y.min() < 0:
        raise UserError(f"{what} hold a negative label {y.min()}")
    if y.size and classes is not None and y.max() >= classes:
        raise UserError(f"{what} are outside 0..{classes - 1}")
    return y.astype(np.int64)


def _find(directory: Path, stem: str, where: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise UserError(f"missing data file {stem}[.gz] in {directory} (from {where})")


def load_idx_dataset(directory: Path, where: str) -> tuple[Split, Split]:
    arrays = {k: read_idx(_find(directory, stem, where)) for k, stem in IDX_FILES.items()}
    out = []
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise UserError(f"{part} images {x.shape} and labels {y.shape} in {directory} do not match")
        if x.dtype != np.uint8:
            raise UserError(f"{part} images in {directory} are {x.dtype}; the IDX images read here "
                            "are unsigned bytes (type 0x08)")
        out.append(Split(np.ascontiguousarray(x[..., None]), _labels(y, f"{part} labels in {directory}")))
    return out[0], out[1]


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10 batches contain: dicts, lists, bytes and NumPy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        data = np.asarray(batch[b"data"] if b"data" in batch else batch["data"])
        labels = np.asarray(batch[b"labels"] if b"labels" in batch else batch["labels"])
    except (OSError, EOFError, KeyError, TypeError, ValueError, AttributeError,
            pickle.UnpicklingError) as e:
        raise UserError(f"{path} is not a valid CIFAR-10 batch: {e}") from None
    if data.dtype != np.uint8:
        raise UserError(f"{path}: images are {data.dtype}, not unsigned bytes")
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or data.shape[0] != labels.shape[0]:
        raise UserError(f"{path} is corrupt: data {data.shape}, labels {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), _labels(labels, f"{path}: labels")


def load_cifar10(directory: Path, where: str) -> tuple[Split, Split]:
    base = directory / "cifar-10-batches-py" if (directory / "cifar-10-batches-py").is_dir() else directory
    parts = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if not (base / name).is_file():
            raise UserError(f"missing data file {name} in {base} (from {where})")
        parts.append(_read_cifar_batch(base / name))
    train = Split(np.ascontiguousarray(np.concatenate([p[0] for p in parts[:5]])),
                  np.concatenate([p[1] for p in parts[:5]]))
    return train, Split(np.ascontiguousarray(parts[5][0]), parts[5][1])


def load_dataset(name: str, data_dir: str | None, seed: int, val_size: int = 5000) -> Dataset:
    """Load ``name`` (a built-in set, or a factory spec ``MODULE:NAME`` of the user's own) and
    hold out ``val_size`` training samples (a split keyed by seed)."""
    if is_spec(name):
        train, test = user_splits(name)
        return hold_out(name, train, test, seed, val_size, Inputs(images=False), name)
    require_choice("data set", name, DATASETS)
    directory, where = resolve_data_dir(name, data_dir)
    if not directory.is_dir():
        what = "is a file, not a directory" if directory.exists() else "does not exist"
        raise UserError(f"data directory {directory} (from {where}) {what}")
    train, test = (load_cifar10 if name == "cifar10" else load_idx_dataset)(directory, where)
    return hold_out(name, train, test, seed, val_size, Inputs(standardize=name == "cifar10"),
                    str(directory))


def hold_out(name: str, train: Split, test: Split, seed: int, val_size: int, inputs: Inputs,
             where: str) -> Dataset:
    """The data set with ``val_size`` training samples held out for validation."""
    if len(test.y) == 0:
        raise UserError(f"the test split in {where} is empty")
    if not 0 <= val_size < len(train.y):
        raise UserError(f"--val-size {val_size} must be in [0, {len(train.y)})")
    perm = numpy_rng(derive_seed(seed, Stream.SPLIT)).permutation(len(train.y))
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    return Dataset(name, Split(train.x[train_idx], train.y[train_idx]),
                   Split(train.x[val_idx], train.y[val_idx]), test, inputs)


def user_splits(spec: str) -> tuple[Split, Split]:
    """(train, test) from the user's data factory (usercode.py says what it may return)."""
    made = call_factory(load_factory(spec, "--dataset"), spec, "--dataset")
    if not (isinstance(made, (tuple, list)) and len(made) == 2):
        raise UserError(f"--dataset {spec}: the factory must return (train, test), got "
                        f"{type(made).__name__}")
    return tuple(as_split(part, f"--dataset {spec}: the {what} split")
                 for part, what in zip(made, ("train", "test")))


def as_split(part, what: str) -> Split:
    """A Split from (x, y) arrays or tensors, or from a map-style Dataset of (x, y) pairs."""
    if isinstance(part, (tuple, list)) and len(part) == 2:
        x, y = part
    elif hasattr(part, "__getitem__") and hasattr(part, "__len__"):
        pairs = [part[i] for i in range(len(part))]
        if not pairs:
            raise UserError(f"{what} is empty")
        x = np.stack([np.asarray(p[0]) for p in pairs])
        y = np.asarray([int(p[1]) for p in pairs])
    else:
        raise UserError(f"{what} must be (x, y) arrays or a torch Dataset of (x, y) pairs, not "
                        f"{type(part).__name__}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise UserError(f"{what}: x must be numbers of shape (N, ...), got {x.dtype} {x.shape}")
    if len(x) != len(y):
        raise UserError(f"{what}: {len(x)} samples but {len(y)} labels")
    if not np.all(np.isfinite(x)):
        raise UserError(f"{what}: x holds NaN or infinite values")
    return Split(np.ascontiguousarray(x, dtype=np.float32), _labels(y, f"{what}: labels", None))


# --- order, sharding, augmentation: pure functions of keys --------------------------------

def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of the training set for ``epoch`` (same on every rank)."""
    return numpy_rng(derive_seed(seed, Stream.DATA_ORDER, epoch)).permutation(n)


def augment_params(seed: int, epoch: int, batch: int, n: int, pad: int, flip: bool,
                   brightness: float) -> np.ndarray:
    """Per-sample (dy, dx, flip, brightness delta) for one global batch, keyed by (seed, epoch, batch)."""
    rng = numpy_rng(derive_seed(seed, Stream.AUGMENT, epoch, 0, batch))
    shifts = rng.integers(0, 2 * pad + 1, size=(n, 2)).astype(np.float64)
    flips = rng.integers(0, 2, size=(n, 1)) if flip else np.zeros((n, 1))
    delta = rng.uniform(-brightness, brightness, size=(n, 1)) if brightness else np.zeros((n, 1))
    return np.concatenate([shifts, flips, delta], axis=1)


def apply_augmentation(x: np.ndarray, params: np.ndarray, pad: int) -> np.ndarray:
    """The paper's augmentation: pad by ``pad``, random crop back (a translation with zero
    fill), optional horizontal flip, then a brightness delta (on [0, 1] floats, no clip)."""
    n, h, w, c = x.shape
    padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=x.dtype)
    padded[:, pad:pad + h, pad:pad + w] = x
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
    crops = windows[np.arange(n), params[:, 0].astype(np.intp), params[:, 1].astype(np.intp)]
    flipped = params[:, 2] > 0
    if flipped.any():
        crops[flipped] = crops[flipped][..., ::-1]
    crops = crops.transpose(0, 2, 3, 1)                                  # (n, c, h, w) → NHWC
    # one gather for the batch; per element the same float32 ops as image by image
    return crops / np.float32(255.0) + params[:, 3].astype(np.float32)[:, None, None, None]


def to_tensor(x: np.ndarray, device="cpu", standardize: bool = False) -> torch.Tensor:
    """NHWC (uint8, or floats already in [0, 1]) → float32 NCHW: the paper's x/255.

    ``standardize`` applies per-image standardisation (the official CIFAR-10 pipeline,
    TensorFlow's per_image_standardization) to train and test images alike.
    """
    t = torch.from_numpy(np.array(x, copy=True)).to(device).permute(0, 3, 1, 2).float()
    if x.dtype == np.uint8:
        t.div_(255.0)
    if standardize:
        flat = t.reshape(t.shape[0], -1)
        mean = flat.mean(1, keepdim=True)
        std = flat.std(1, unbiased=False, keepdim=True).clamp_min(1.0 / math.sqrt(flat.shape[1]))
        t = ((flat - mean) / std).reshape(t.shape)
    return t


class BatchStream:
    """Rank ``rank``'s shard of every global batch, in keyed order.

    ``batch(epoch, i)`` is a pure function of (seed, epoch, i, rank, size), so resume
    and any rank count see the same global samples.
    """

    def __init__(self, split: Split, seed: int, batch_size: int, rank: int, size: int,
                 augment: bool, dataset: str, per_rank_data: bool = True):
        self.split, self.seed, self.batch_size = split, seed, batch_size
        self.rank, self.size = rank, size
        self.per_rank_data = per_rank_data
        self.augment = augment
        # official pipeline: MNIST-like pad 3 + crop + brightness ±0.5; CIFAR pad 4 + crop + flip
        self.pad = 4 if dataset == "cifar10" else 3
        self.flip = dataset == "cifar10"
        self.brightness = 0.0 if dataset == "cifar10" else 0.5
        self.steps_per_epoch = len(split.y) // batch_size  # batches per epoch
        self.batches_per_step = 1
        self._order_epoch, self._order = -1, None

    def consume(self, batches_per_step: int) -> None:
        """A step takes ``batches_per_step`` consecutive batches (the paper's NES: one per
        offspring); epochs are then counted in batches seen, as the official code counts
        images, and an evaluation ``period`` is the whole steps in one epoch (at least 1)."""
        self.batches_per_step = batches_per_step

    @property
    def period(self) -> int:
        """Steps between epoch-end evaluations: an epoch of steps (NES-paper: its whole steps)."""
        return max(1, self.steps_per_epoch // self.batches_per_step)

    def steps_for(self, epochs: int) -> int:
        """Steps in ``epochs`` epochs: the official NES loop runs until it has seen them all."""
        return -(-epochs * self.steps_per_epoch // self.batches_per_step)

    def epochs_at(self, done: int) -> float:
        """Epochs of data seen after ``done`` steps."""
        return done * self.batches_per_step / self.steps_per_epoch

    def position(self, step: int, offset: int = 0) -> tuple[int, int]:
        """(epoch, batch index) of a step's batch number ``offset`` (its offspring's, NES)."""
        return divmod(step * self.batches_per_step + offset, self.steps_per_epoch)

    def batch(self, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._order_epoch != epoch:
            self._order = epoch_order(self.seed, epoch, len(self.split.y))
            self._order_epoch = epoch
        idx = self._order[i * self.batch_size:(i + 1) * self.batch_size]
        x = self.split.x[idx]
        if self.augment:
            x = apply_augmentation(x, augment_params(self.seed, epoch, i, len(idx), self.pad,
                                                     self.flip, self.brightness), self.pad)
        y = self.split.y[idx]
        if self.per_rank_data:
            mine = share(len(idx), self.rank, self.size)
            x, y = x[mine.start:mine.stop], y[mine.start:mine.stop]
        return x, y
