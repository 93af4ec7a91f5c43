"""Shared fixtures: small data sets written in the real file formats, and helpers."""
from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rbd_hpc.runlog import RunFile

ROOT = Path(__file__).resolve().parents[1]
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    raw = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def synthetic_images(n: int, side: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: class k lights up a band of rows, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n).astype(np.uint8)
    x = rng.integers(0, 60, size=(n, side, side, channels)).astype(np.uint8)
    band = side // 10
    for i, k in enumerate(y):
        x[i, k * band:(k + 1) * band] += 150
    return x, y


def make_idx_dir(root: Path, n_train: int = 640, n_test: int = 200, gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    xtr, ytr = synthetic_images(n_train, 28, 1, 1)
    xte, yte = synthetic_images(n_test, 28, 1, 2)
    write_idx(root / "train-images-idx3-ubyte", xtr[..., 0], gz)
    write_idx(root / "train-labels-idx1-ubyte", ytr, gz)
    write_idx(root / "t10k-images-idx3-ubyte", xte[..., 0], gz)
    write_idx(root / "t10k-labels-idx1-ubyte", yte, gz)
    return root


def make_cifar_dir(root: Path, per_batch: int = 40) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        x, y = synthetic_images(per_batch, 32, 3, 10 + i)
        data = x.transpose(0, 3, 1, 2).reshape(per_batch, 3072)
        with open(base / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [int(v) for v in y]}, f)
    return root


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    return make_idx_dir(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    return make_cifar_dir(tmp_path_factory.mktemp("cifar"))


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run_cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([venv_bin("rbd-hpc"), *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=timeout, cwd=cwd)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: exit code 2 and one line ``rbd-hpc: error: …`` holding every fragment."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rbd-hpc: error: ")
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def final_theta(path: Path) -> np.ndarray:
    """θ of a run file's last committed snapshot (checksum verified)."""
    with RunFile(path) as run:
        return run.snapshot(run.n_snapshots - 1)[1]


def needs_fmnist():
    return pytest.mark.skipif(not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                              reason="Debian package dataset-fashion-mnist is not installed")


def wait_for_commits(path: Path, n: int, timeout: float = 120) -> None:
    """Poll a run file being written (SWMR read) until it has ``n`` committed steps."""
    import time

    import h5py

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists():
            try:
                with h5py.File(path, "r", swmr=True) as f:
                    if int(f["commit"][0]) >= n:
                        return
            except (OSError, KeyError):
                pass
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {n} committed steps")
