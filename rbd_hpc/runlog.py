"""The HDF5 run file: θ0, seed schedule (config), coefficient history, snapshots.

Layout (format version 1; see docs/runfile.md):

  /                       attrs: format_version, config (JSON), root_seed, package_version,
                          torch_version, device_type, world_size, mode, method,
                          param_layout (JSON), buffer_layout (JSON), n_coefficients,
                          replayable, created
  /theta0                 (D,) float32, attrs crc32
  /steps/step             (n,) int64          one row per training step
  /steps/lr               (n,) float64        the learning rate applied
  /steps/loss             (n,) float32        rank 0's mini-batch loss
  /steps/coefficients     (n, d_total) float32, the values applied after the allreduce
                          (Fletcher-32, not compressed), only for replayable methods
  /steps/crc32            (n,) uint32         CRC-32 of each coefficient row
  /snapshots/step         (m,) int64
  /snapshots/theta        (m, D) float32      full θ after that step (step −1: θ0)
  /snapshots/buffers      (m, B) float64      model buffers (BatchNorm statistics)
  /snapshots/state        (m, S) float32      method state (e.g. SGD momentum)
  /snapshots/crc32        (m,) uint32         CRC-32 over the snapshot's θ, buffers and state
  /metrics/table          (e, len(METRIC_COLUMNS)) float64, one row per evaluation
  /commit                 (2,) int64: [committed steps, committed snapshots] — written last

Crash safety: the file is written in HDF5's SWMR mode (libver "latest"). SWMR orders
metadata flushes so that the file on disk is always a valid HDF5 file, also when the
writer is killed. Rows are appended and flushed first; only then is /commit advanced
and flushed again. A reader trusts rows [0, commit[0]) and snapshots [0, commit[1]) and
ignores anything past them. A resume copies the committed content into a fresh file
and renames it over the old one (atomic on POSIX), so a crash during resume leaves the
old file intact.

No pickle anywhere: configuration and layouts are JSON strings, arrays are numbers.
"""
from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import torch

from . import __version__
from .errors import UserError

FORMAT_VERSION = 1
METRIC_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc",
                  "ms_per_step", "cos_grad", "bytes_per_step")
_ROW_CHUNK = 64


def crc32(*arrays: np.ndarray) -> int:
    value = 0
    for a in arrays:
        value = zlib.crc32(np.ascontiguousarray(a).tobytes(), value)
    return value


class RunWriter:
    """Appends steps and snapshots to a run file. Only rank 0 creates one."""

    def __init__(self, path: str | Path, attrs: dict, theta0: np.ndarray, n_coefficients: int,
                 buffers_size: int, state_size: int, existing: "RunFile | None" = None,
                 resume_at: int | None = None):
        """A resume passes the run file it continues (``existing``) and the step it continues
        from: rows, snapshots and metrics past ``resume_at`` are left behind, because the
        resumed run writes them again (a run that cannot be replayed resumes from its last
        snapshot, which can be before the last committed row)."""
        self.path = Path(path)
        self.n_coefficients = n_coefficients
        self._rows: list[tuple[int, float, float, np.ndarray | None]] = []
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self._create(tmp, attrs, theta0, n_coefficients, buffers_size, state_size, existing,
                         resume_at)
            os.replace(tmp, self.path)  # atomic: the old file stays whole until this moment
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write run file {self.path}: {e.strerror or e}") from None
        self.f = h5py.File(self.path, "r+", libver="latest")
        self.f.swmr_mode = True
        self.committed = int(self.f["commit"][0])
        self.committed_snapshots = int(self.f["commit"][1])

    @staticmethod
    def _create(tmp: Path, attrs, theta0, n_coef, buffers_size, state_size, existing, resume_at):
        with h5py.File(tmp, "w", libver="latest") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["format_version"] = FORMAT_VERSION
            t0 = f.create_dataset("theta0", data=theta0.astype(np.float32))
            t0.attrs["crc32"] = crc32(theta0.astype(np.float32))
            D = theta0.size
            opts = dict(compression="gzip", shuffle=True, fletcher32=True)
            # Coefficient chunks are rewritten at every commit until full. Compressed, a chunk
            # grows and moves each time and the old space is not reused: CNN run files were
            # 3.7× their content. Coefficients compress by 13% anyway (float32 noise).
            rows = dict(fletcher32=True)
            s = f.create_group("steps")
            s.create_dataset("step", (0,), np.int64, maxshape=(None,), chunks=(_ROW_CHUNK * 16,))
            s.create_dataset("lr", (0,), np.float64, maxshape=(None,), chunks=(_ROW_CHUNK * 16,))
            s.create_dataset("loss", (0,), np.float32, maxshape=(None,), chunks=(_ROW_CHUNK * 16,))
            s.create_dataset("crc32", (0,), np.uint32, maxshape=(None,), chunks=(_ROW_CHUNK * 16,))
            if n_coef:
                s.create_dataset("coefficients", (0, n_coef), np.float32, maxshape=(None, n_coef),
                                 chunks=(_ROW_CHUNK, n_coef), **rows)
            sn = f.create_group("snapshots")
            sn.create_dataset("step", (0,), np.int64, maxshape=(None,), chunks=(64,))
            sn.create_dataset("crc32", (0,), np.uint32, maxshape=(None,), chunks=(64,))
            sn.create_dataset("theta", (0, D), np.float32, maxshape=(None, D), chunks=(1, D), **opts)
            for name, width, dt in (("buffers", buffers_size, np.float64),
                                    ("state", state_size, np.float32)):
                sn.create_dataset(name, (0, max(width, 1)), dt, maxshape=(None, max(width, 1)),
                                  chunks=(1, max(width, 1)), **opts)
            f.create_group("metrics").create_dataset(
                "table", (0, len(METRIC_COLUMNS)), np.float64, maxshape=(None, len(METRIC_COLUMNS)),
                chunks=(64, len(METRIC_COLUMNS)))
            f["metrics/table"].attrs["columns"] = json.dumps(METRIC_COLUMNS)
            commit = f.create_dataset("commit", data=np.zeros(2, dtype=np.int64))
            if existing is not None:
                commit[...] = _copy_committed(existing, f, resume_at)

    # -- appending -------------------------------------------------------------------
    def add_step(self, step: int, lr: float, loss: float, coefficients: np.ndarray | None) -> None:
        self._rows.append((step, lr, loss, coefficients))

    def commit(self, snapshot: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None,
               metrics: list[float] | None = None) -> None:
        """Write buffered rows (and a snapshot / metrics row), flush, then advance /commit."""
        f = self.f
        if self._rows:
            n0, k = f["steps/step"].shape[0], len(self._rows)
            n0 = min(n0, self.committed)  # overwrite anything past the last commit
            for name in ("step", "lr", "loss", "crc32"):
                f[f"steps/{name}"].resize((n0 + k,))
            f["steps/step"][n0:] = [r[0] for r in self._rows]
            f["steps/lr"][n0:] = [r[1] for r in self._rows]
            f["steps/loss"][n0:] = [r[2] for r in self._rows]
            if self.n_coefficients:
                coef = np.stack([r[3] for r in self._rows]).astype(np.float32)
                f["steps/coefficients"].resize((n0 + k, self.n_coefficients))
                f["steps/coefficients"][n0:] = coef
                f["steps/crc32"][n0:] = [crc32(c) for c in coef]
            else:
                f["steps/crc32"][n0:] = 0
            self.committed = n0 + k
            self._rows.clear()
        m, sn = self.committed_snapshots, f["snapshots"]
        if snapshot is not None and m and int(sn["step"][m - 1]) == snapshot[0]:
            snapshot = None  # already there: snapshot steps strictly increase
        if snapshot is not None:
            step, theta, buffers, state = snapshot
            for name in ("step", "crc32"):
                sn[name].resize((m + 1,))
            for name in ("theta", "buffers", "state"):
                sn[name].resize((m + 1, sn[name].shape[1]))
            theta = theta.astype(np.float32)
            buffers = _pad(buffers.astype(np.float64), sn["buffers"].shape[1])
            state = _pad(state.astype(np.float32), sn["state"].shape[1])
            sn["step"][m] = step
            sn["theta"][m] = theta
            sn["buffers"][m] = buffers
            sn["state"][m] = state
            sn["crc32"][m] = crc32(theta, buffers, state)
            self.committed_snapshots = m + 1
        if metrics is not None:
            t = f["metrics/table"]
            t.resize((t.shape[0] + 1, t.shape[1]))
            t[-1] = metrics
        f.flush()                      # rows reach the file before the marker does
        f["commit"][...] = [self.committed, self.committed_snapshots]
        f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()
            self.f = None


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros(width, dtype=a.dtype)
    out[:a.size] = a.reshape(-1)
    return out


def _copy_committed(src: "RunFile", f: h5py.File, upto: int | None) -> list[int]:
    """Copy the committed rows and snapshots up to step ``upto``, and the metrics rows of the
    epochs they complete; returns the new /commit."""
    n = src.committed if upto is None else min(src.committed, upto)
    m = int(np.searchsorted(src.snapshot_steps(), n, side="right"))  # snapshots at steps ≤ n
    s = src.f["steps"]
    for name in ("step", "lr", "loss", "crc32"):
        f[f"steps/{name}"].resize((n,))
        f[f"steps/{name}"][:] = s[name][:n]
    if "coefficients" in s:
        f["steps/coefficients"].resize((n, s["coefficients"].shape[1]))
        f["steps/coefficients"][:] = s["coefficients"][:n]
    for name in ("step", "crc32"):
        f[f"snapshots/{name}"].resize((m,))
        f[f"snapshots/{name}"][:] = src.f[f"snapshots/{name}"][:m]
    for name in ("theta", "buffers", "state"):
        d = src.f[f"snapshots/{name}"]
        f[f"snapshots/{name}"].resize((m, d.shape[1]))
        f[f"snapshots/{name}"][:] = d[:m]
    t = src.f["metrics/table"][:]
    t = t[t[:, METRIC_COLUMNS.index("step")] <= n]
    f["metrics/table"].resize(t.shape)
    f["metrics/table"][:] = t
    return [n, m]


class RunFile:
    """Read-only view of a run file's committed content, with integrity checks."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"run file {self.path} does not exist")
        if not h5py.is_hdf5(self.path):
            raise UserError(f"{self.path} is not an HDF5 file (or it is truncated)")
        try:
            self.f = h5py.File(self.path, "r", libver="latest", swmr=True)
        except OSError as e:
            raise UserError(f"{self.path} cannot be opened as a run file (truncated or damaged): "
                            f"{e}") from None
        try:
            version = int(self.f.attrs["format_version"])
            self.commit = self.f["commit"][:]
        except (KeyError, OSError, ValueError) as e:
            self.close()
            raise UserError(f"{self.path} is not an rbd-hpc run file ({e})") from None
        if version > FORMAT_VERSION:
            self.close()
            raise UserError(f"{self.path} has format version {version}; this rbd-hpc "
                            f"({__version__}) reads up to version {FORMAT_VERSION} — upgrade rbd-hpc")
        self.version = version
        self.committed = int(self.commit[0])
        self.n_snapshots = int(self.commit[1])
        self.attrs = {k: self.f.attrs[k] for k in self.f.attrs}
        self.config_json = str(self.attrs["config"])
        self.layout = json.loads(str(self.attrs["param_layout"]))
        self.buffer_layout = json.loads(str(self.attrs["buffer_layout"]))
        self.replayable = bool(self.attrs["replayable"])

    def close(self) -> None:
        if getattr(self, "f", None) is not None:
            self.f.close()
            self.f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self, name: str, sl=slice(None)):
        try:
            return self.f[name][sl]
        except OSError as e:  # a failed fletcher32 check lands here
            raise UserError(f"{self.path}: {name} is corrupt ({e})") from None

    def theta0(self) -> np.ndarray:
        t = self._read("theta0")
        if crc32(t) != int(self.f["theta0"].attrs["crc32"]):
            raise UserError(f"{self.path}: theta0 fails its checksum (tampered or corrupt)")
        return t

    def steps(self, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        hi = self.committed if hi is None else min(hi, self.committed)
        out = {name: self._read(f"steps/{name}", slice(lo, hi))
               for name in ("step", "lr", "loss", "crc32")}
        if "coefficients" in self.f["steps"]:
            coef = self._read("steps/coefficients", slice(lo, hi))
            bad = [lo + i for i, c in enumerate(coef) if crc32(c) != int(out["crc32"][i])]
            if bad:
                raise UserError(f"{self.path}: coefficients of step {bad[0]} fail their checksum "
                                "(tampered or corrupt)")
            out["coefficients"] = coef
        return out

    def snapshot_steps(self) -> np.ndarray:
        return self._read("snapshots/step", slice(0, self.n_snapshots))

    def snapshot(self, i: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        sn = self.f["snapshots"]
        step = int(sn["step"][i])
        theta = self._read("snapshots/theta", i)
        buffers = self._read("snapshots/buffers", i)
        state = self._read("snapshots/state", i)
        if crc32(theta, buffers, state) != int(sn["crc32"][i]):
            raise UserError(f"{self.path}: snapshot of step {step} fails its checksum "
                            "(tampered or corrupt)")
        return step, theta, buffers, state

    def metrics(self) -> list[dict]:
        table = self._read("metrics/table")
        return [dict(zip(METRIC_COLUMNS, map(float, row))) for row in table]

    def size_on_disk(self) -> int:
        return self.path.stat().st_size


def run_attrs(config_json: str, root_seed: int, world_size: int, mode: str, method: str,
              device_type: str, param_layout: dict, buffer_layout: dict, n_coefficients: int,
              replayable: bool) -> dict:
    return {
        "config": config_json, "root_seed": str(root_seed), "package_version": __version__,
        "torch_version": str(torch.__version__), "device_type": device_type, "world_size": world_size,
        "mode": mode, "method": method, "param_layout": json.dumps(param_layout),
        "buffer_layout": json.dumps(buffer_layout), "n_coefficients": n_coefficients,
        "replayable": replayable, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- file policy: what may be written where ----------------------------------------------------

def check_writable(path: Path) -> None:
    """A clear error before any work if ``path`` cannot be created."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output directory {parent} is not writable")


def refuse_existing(path: Path) -> None:
    """A new run never replaces a run file: hours of a run are one repeated command away from
    being lost otherwise (--overwrite says so explicitly, --resume continues it)."""
    if not path.exists():
        return
    try:
        with RunFile(path) as run:
            held = f" ({run.committed} steps committed)"
    except (UserError, OSError):
        held = ""
    raise UserError(f"run file {path} already exists{held}; continue it with --resume {path}, "
                    "or replace it with --overwrite")
