"""The HDF5 run file: θ0, seed schedule (config), coefficient history, snapshots.

Layout (format version 7; see docs/runfile.md):

  /                       attrs: format_version, config (JSON), root_seed, package_version,
                          torch_version, device_type, world_size, mode, method,
                          param_layout (JSON), buffer_layout (JSON), n_coefficients,
                          replayable, created, header_crc32 (over the attributes replay
                          depends on), platforms (JSON [[first step, CPU kind], …]; format 5)
  /theta0                 (D,) float32, attrs crc32
  /steps/step             (n,) int64          one row per training step
  /steps/lr               (n,) float64        the learning rate applied
  /steps/loss             (n,) float32        rank 0's mini-batch loss
  /steps/coefficients     (n, d_total) float32, the values applied after the allreduce
                          (Fletcher-32, not compressed), only for replayable methods
  /steps/crc32            (n,) uint32         CRC-32 of each row: step, lr, loss, coefficients
  /snapshots/step         (m,) int64
  /snapshots/theta        (m, D) float32      full θ after that step (step −1: θ0)
  /snapshots/buffers      (m, B) float64      model buffers (BatchNorm statistics)
  /snapshots/state        (m, S) float32      method state (e.g. SGD momentum)
  /snapshots/crc32        (m,) uint32         CRC-32 over the snapshot's step, θ, buffers, state
  /metrics/table          (e, len(METRIC_COLUMNS)) float64, one row per evaluation
  /commit                 (2,) int64: [committed steps, committed snapshots] — written last

Crash safety: the file is written in HDF5's SWMR mode (libver "latest"). SWMR orders
metadata flushes so that the file on disk is always a valid HDF5 file, also when the
writer is killed. Rows are appended and flushed first; only then is /commit advanced
and flushed again. A reader trusts rows [0, commit[0]) and snapshots [0, commit[1]) and
ignores anything past them. A resume copies the committed content into a fresh file
and renames it over the old one (atomic on POSIX), so a crash during resume leaves the
old file intact.

Readers open defensively: a plain open first (it checks the end-of-file address, so a
truncated file fails at once); only a file whose writer is live or was killed (HDF5's "open
for write" flag) is opened in SWMR mode, after the end-of-file check is done here. The commit
marker and every length are checked against the data present. Format 1 files (checksums over
the coefficients and θ only) are read and resumed; a resume writes format 5. Formats 3 to 5
differ from 2 only in their config: format 3 names the kernel generation of its directions
(``kernels``, kernels.py; a format-1 or -2 file is generation 1), format 4 the protocol and
the NES, RigL and FPD variants (``protocol``, ``nes``, ``mask_update``, ``fpd``; a file of
format 3 or older is ``custom``, ``same-batch``, ``rbd-hpc-0.1`` and ``li``), format 5 may
hold kernel generation 3 and records the CPU kind of every stretch of steps (``platforms``,
absent from older files). An old file keeps its settings on resume.

One writer per run file: ``RunLock`` holds an exclusive flock on ``RUN.h5.lock`` for as long
as a process writes the run file (a new run, or a resume).

No pickle anywhere: configuration and layouts are JSON strings, arrays are numbers.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import platform
import re
import socket
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import torch

from . import __version__
from .config import TrainConfig
from .errors import UserError

FORMAT_VERSION = 7
# the attributes that replay and resume read, covered by header_crc32 (format 2)
HEADER_ATTRS = ("config", "param_layout", "buffer_layout", "world_size", "mode", "method",
                "n_coefficients", "replayable")
METRIC_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc",
                  "ms_per_step", "cos_grad", "bytes_per_step", "recv_bytes_per_step",
                  "calls_per_step")
# a table names its columns (attribute "columns"); files before the traffic columns hold these
_LEGACY_METRIC_COLUMNS = METRIC_COLUMNS[:10]
_ROW_CHUNK = 64
_COPY_BLOCK = 4096  # rows per read when a resume copies a run file


def crc32(*arrays: np.ndarray) -> int:
    value = 0
    for a in arrays:
        value = zlib.crc32(np.ascontiguousarray(a).tobytes(), value)
    return value


def row_crc(step: int, lr: float, loss: float, coefficients: np.ndarray | None) -> int:
    """Format 2: everything replay and resume read from a row."""
    parts = [np.int64(step), np.float64(lr), np.float32(loss)]
    return crc32(*parts, *([] if coefficients is None else [coefficients.astype(np.float32)]))


def snapshot_crc(step: int, theta, buffers, state) -> int:
    """Format 2: the snapshot's step label too (a changed label would resume the wrong θ)."""
    return crc32(np.int64(step), theta, buffers, state)


def header_crc(attrs: dict) -> int:
    return zlib.crc32("\x00".join(str(attrs[k]) for k in HEADER_ATTRS).encode())


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
        self.f = None
        # θ0, and on a resume a copy of the committed content beside the old file
        ensure_space(self.path, 2 * theta0.nbytes + (existing.size_on_disk() if existing else 0))
        try:
            self._create(tmp, attrs, theta0, n_coefficients, buffers_size, state_size, existing,
                         resume_at)
            os.replace(tmp, self.path)  # atomic: the old file stays whole until this moment
        except (OSError, RuntimeError) as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write run file {self.path}: {_first_line(e)}"
                            + ("; the previous file is unchanged" if existing else "")) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.f = open_for_append(self.path)
        self.committed = int(self.f["commit"][0])
        self.committed_snapshots = int(self.f["commit"][1])

    @staticmethod
    def _create(tmp: Path, attrs, theta0, n_coef, buffers_size, state_size, existing, resume_at):
        with h5py.File(tmp, "w", libver="latest") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["header_crc32"] = header_crc(attrs)
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
        """Write buffered rows (and a snapshot / metrics row), flush, then advance /commit.
        An I/O error (a full disk) ends the run with one line; what was committed before
        stays committed, because /commit is written only after everything else is flushed."""
        if self.f is None:
            raise UserError(f"run file {self.path} is closed after an earlier write error")
        committed = self.committed
        ensure_space(self.path, 2 * self._pending_bytes(snapshot), committed)
        try:
            self._commit(snapshot, metrics)
        except (OSError, RuntimeError, ValueError) as e:
            self.committed = committed
            WRITE_FAILED.append(str(self.path))
            self._abandon()
            raise UserError(f"cannot write run file {self.path}: {_first_line(e)}; it holds the "
                            f"{committed} steps committed before") from None

    def _pending_bytes(self, snapshot) -> int:
        """What a commit writes, uncompressed: the buffered rows and the snapshot."""
        row = 8 + 8 + 4 + 4 + 4 * self.n_coefficients
        snap = sum(np.asarray(a).nbytes for a in snapshot[1:]) if snapshot is not None else 0
        return len(self._rows) * row + snap + 4096

    def _abandon(self) -> None:
        """Drop the handle after a failed write without flushing again (HDF5 would retry the
        write that failed); the committed content is already on disk."""
        f, self.f = self.f, None
        try:
            f.close()
        except (OSError, RuntimeError, ValueError):
            pass

    def _commit(self, snapshot, metrics) -> None:
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
            f["steps/crc32"][n0:] = [row_crc(*r[:3], c) for r, c in zip(
                self._rows, coef if self.n_coefficients else [None] * k)]
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
            _write_snapshot(sn, m, step, theta, buffers, state)
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
            try:
                self.f.close()
            except (OSError, RuntimeError) as e:
                raise UserError(f"cannot close run file {self.path}: {_first_line(e)}; it holds "
                                f"the {self.committed} steps committed before") from None
            finally:
                self.f = None


def _write_snapshot(sn: h5py.Group, i: int, step: int, theta, buffers, state) -> None:
    """Row ``i`` of the (already resized) snapshot datasets, with its format-2 checksum."""
    theta = np.asarray(theta, dtype=np.float32)
    buffers = _pad(np.asarray(buffers, dtype=np.float64), sn["buffers"].shape[1])
    state = _pad(np.asarray(state, dtype=np.float32), sn["state"].shape[1])
    sn["step"][i] = step
    sn["theta"][i] = theta
    sn["buffers"][i] = buffers
    sn["state"][i] = state
    sn["crc32"][i] = snapshot_crc(step, theta, buffers, state)


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros(width, dtype=a.dtype)
    out[:a.size] = a.reshape(-1)
    return out


def _copy_committed(src: "RunFile", f: h5py.File, upto: int | None) -> list[int]:
    """Copy the committed rows and snapshots up to step ``upto``, and the metrics rows of the
    epochs they complete; returns the new /commit. Every row and snapshot is read through its
    checksum and written with a format-2 one (a format-1 file is upgraded on resume)."""
    n = src.committed if upto is None else min(src.committed, upto)
    m = int(np.searchsorted(src.snapshot_steps(), n, side="right"))  # snapshots at steps ≤ n
    for name in ("step", "lr", "loss", "crc32"):
        f[f"steps/{name}"].resize((n,))
    if "coefficients" in f["steps"]:
        f["steps/coefficients"].resize((n, f["steps/coefficients"].shape[1]))
    for lo in range(0, n, _COPY_BLOCK):
        hi = min(lo + _COPY_BLOCK, n)
        rows = src.steps(lo, hi)
        for name in ("step", "lr", "loss"):
            f[f"steps/{name}"][lo:hi] = rows[name]
        coef = rows.get("coefficients")
        if coef is not None:
            f["steps/coefficients"][lo:hi] = coef
        f["steps/crc32"][lo:hi] = [row_crc(rows["step"][i], rows["lr"][i], rows["loss"][i],
                                           None if coef is None else coef[i])
                                   for i in range(hi - lo)]
    for name in ("step", "crc32"):
        f[f"snapshots/{name}"].resize((m,))
    for name in ("theta", "buffers", "state"):
        f[f"snapshots/{name}"].resize((m, f[f"snapshots/{name}"].shape[1]))
    for i in range(m):
        _write_snapshot(f["snapshots"], i, *src.snapshot(i))
    t = src.metrics_table()
    t = t[t[:, src.metric_columns.index("step")] <= n]
    rows = np.full((len(t), len(METRIC_COLUMNS)), np.nan)  # by name: an older file lacks some
    for j, name in enumerate(src.metric_columns):
        if name in METRIC_COLUMNS:
            rows[:, METRIC_COLUMNS.index(name)] = t[:, j]
    f["metrics/table"].resize(rows.shape)
    f["metrics/table"][:] = rows
    return [n, m]


def _superblock_eof(path: Path) -> int | None:
    """The end-of-file address a version 2/3 superblock stores (the libver "latest" files
    written here), or None for other superblocks."""
    with open(path, "rb") as fh:
        head = fh.read(48)
    if len(head) < 48 or head[8] not in (2, 3) or head[9] != 8:
        return None
    base = int.from_bytes(head[12:20], "little")
    return base + int.from_bytes(head[28:36], "little")


def _open_h5(path: Path) -> h5py.File:
    """Open for reading without hanging on damage. A plain open checks the end-of-file
    address; HDF5 refuses it for a file marked open for write (a live or a killed writer),
    which is opened in SWMR mode after the same check is made here."""
    try:
        return h5py.File(path, "r", libver="latest")
    except OSError as e:
        if "already open for write" not in str(e):
            raise UserError(f"{path} cannot be opened as a run file (truncated or damaged): "
                            f"{_first_line(e)}") from None
    eof = _superblock_eof(path)
    if eof is not None and path.stat().st_size < eof:
        raise UserError(f"{path} is truncated: {path.stat().st_size} bytes of {eof}")
    try:
        return h5py.File(path, "r", libver="latest", swmr=True)
    except (OSError, RuntimeError) as e:
        raise UserError(f"{path} cannot be opened as a run file (truncated or damaged): "
                        f"{_first_line(e)}") from None


LOCK_WAIT = 10.0  # seconds a writer waits for a reader's HDF5 lock on the file it just made


def open_for_append(path: Path, wait: float = LOCK_WAIT) -> h5py.File:
    """The writer's handle on a complete run file, in SWMR mode. A reader that opens the file
    in the moment between its creation and this call (``inspect``, a monitor polling it)
    holds HDF5's shared file lock while it opens, which refuses the writer's exclusive one:
    retried for up to ``wait`` seconds, then one error line."""
    deadline = time.monotonic() + wait
    while True:
        f = None
        try:
            f = h5py.File(path, "r+", libver="latest")
            f.swmr_mode = True
            return f
        except (OSError, RuntimeError) as e:
            if f is not None:
                f.close()
            locked = "unable to lock file" in str(e)
            if not locked or time.monotonic() >= deadline:
                held = f"another process has held it open for {wait:g} s; " if locked else ""
                raise UserError(f"cannot write run file {path}: {held}{_first_line(e)}") from None
            time.sleep(0.05)


def _first_line(e: Exception) -> str:
    """One line for an error; HDF5's own errors carry the system's reason deeper inside."""
    text = str(e).strip()
    reason = re.search(r"error message = '([^']*)'", text)
    if reason:
        return reason.group(1)
    return text.splitlines()[0] if text else type(e).__name__


# Set when a write to a run file failed. HDF5 keeps the failed data in its cache and flushes
# it again when the library shuts down at exit, where a full disk makes it crash (SIGSEGV):
# cli.main leaves through os._exit after such a failure.
WRITE_FAILED = []
_SPACE_MARGIN = 64 * 1024  # bytes beyond a write's size kept free for HDF5's metadata


def ensure_space(path: Path, need: int, committed: int | None = None) -> None:
    """Refuse a write of about ``need`` bytes that the file system cannot hold, before any of
    it is attempted: a write that fails half way is what HDF5 does not survive."""
    st = os.statvfs(path.parent if str(path.parent) else Path("."))
    free = st.f_bavail * st.f_frsize
    if free < need + _SPACE_MARGIN:
        held = f"; it holds the {committed} steps committed before" if committed is not None else ""
        raise UserError(f"no space left for run file {path}: {free:,} bytes free, the next write "
                        f"needs about {need + _SPACE_MARGIN:,}{held}")


class RunFile:
    """Read-only view of a run file's committed content, with integrity checks."""

    def __init__(self, path: str | Path):
        if not str(path).strip():  # Path("") is ".", which would be named instead
            raise UserError(f"run file {str(path)!r} is empty; give the path of a run file (.h5)")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"run file {self.path} does not exist" if not self.path.exists()
                            else f"run file {self.path} is not a file")
        if not h5py.is_hdf5(self.path):
            if self.path.suffix in (".pt", ".npz"):  # replay --out's checkpoints: one step only
                raise UserError(f"{self.path} is a checkpoint, not a run file: this command reads "
                                "the run file (.h5); rbd_hpc.load reads a checkpoint")
            raise UserError(f"{self.path} is not an HDF5 file (or it is truncated)")
        self.f = _open_h5(self.path)
        try:
            self._check_structure()
        except UserError:
            self.close()
            raise
        except (KeyError, OSError, ValueError, TypeError, RuntimeError) as e:
            self.close()
            raise UserError(f"{self.path} is not an rbd-hpc run file ({_first_line(e)})") from None

    def _check_structure(self) -> None:
        """Version, header checksum, and the commit marker against the rows present."""
        f = self.f
        version = int(f.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise UserError(f"{self.path} has format version {version}; this rbd-hpc "
                            f"({__version__}) reads up to version {FORMAT_VERSION} — upgrade rbd-hpc")
        self.version = version
        self.attrs = {k: f.attrs[k] for k in f.attrs}
        if version >= 2 and header_crc(self.attrs) != int(self.attrs["header_crc32"]):
            raise UserError(f"{self.path}: the run's configuration attributes fail their checksum "
                            "(tampered or corrupt)")
        self.commit = f["commit"][:]
        if self.commit.shape != (2,):
            raise UserError(f"{self.path}: the commit marker has shape {self.commit.shape}, not (2,)")
        self.committed, self.n_snapshots = int(self.commit[0]), int(self.commit[1])
        rows = min(f[f"steps/{n}"].shape[0] for n in ("step", "lr", "loss", "crc32"))
        if "coefficients" in f["steps"]:
            rows = min(rows, f["steps/coefficients"].shape[0])
        snaps = min(f[f"snapshots/{n}"].shape[0] for n in ("step", "crc32", "theta", "buffers", "state"))
        if not (0 <= self.committed <= rows and 0 <= self.n_snapshots <= snaps):
            raise UserError(f"{self.path}: the commit marker says {self.committed} steps and "
                            f"{self.n_snapshots} snapshots, but the file holds {rows} rows and "
                            f"{snaps} snapshots (tampered or corrupt)")
        self.config_json = str(self.attrs["config"])
        self.layout = _json_attr(self, "param_layout", dict)
        self.buffer_layout = _json_attr(self, "buffer_layout", dict)
        self.replayable = bool(self.attrs["replayable"])
        n_coef = int(self.attrs["n_coefficients"])
        width = f["steps/coefficients"].shape[1] if "coefficients" in f["steps"] else 0
        dim = int(self.layout["offsets"][-1])
        if width != n_coef or f["theta0"].shape != (dim,) or f["snapshots/theta"].shape[1] != dim:
            raise UserError(f"{self.path}: the layout ({dim} parameters, {n_coef} coefficients) "
                            f"does not match the data (θ0 {f['theta0'].shape}, coefficient rows "
                            f"of {width})")

    def config(self):
        """The stored config, through the one validating constructor; a key that a run file
        must hold (every field that shapes the trajectory) may not be missing."""
        from_file = f"run file {self.path} config"
        values = _json_attr(self, "config", dict, text=self.config_json)
        if self.version <= 2:
            # format 2 predates the kernel generations: its directions are generation 1's
            values.setdefault("kernels", 1)
        if self.version <= 3:
            # format 3 predates the protocol switch and the published NES and RigL variants
            values.setdefault("protocol", "custom")
            values.setdefault("nes", "same-batch")
            values.setdefault("mask_update", "rbd-hpc-0.1")
        if self.version <= 4:
            # files written before the FPD variants existed (format 3, and early format 4)
            values.setdefault("fpd", "li")
        if self.version <= 5:
            # format 6 added the floor of the cosine schedule (--lr-min); before it, none
            values.setdefault("lr_min", 0.0)
        if self.version <= 6:
            # format 7 added per-compartment rate multipliers (--lr-scale); before it, none
            values.setdefault("lr_scale", None)
        missing = sorted(TrainConfig.trajectory_fields() - set(values))
        if missing:
            raise UserError(f"{from_file} lacks key(s) {missing}")
        return TrainConfig.from_dict(values, from_file)

    def require_coefficients(self, n: int) -> None:
        """The config's method must make as many coefficients per step as the rows hold."""
        if n != int(self.attrs["n_coefficients"]):
            raise UserError(f"{self.path}: its config makes {n} coefficients per step but its "
                            f"rows hold {self.attrs['n_coefficients']} (tampered or corrupt)")

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
        except (OSError, RuntimeError) as e:  # a failed fletcher32 check lands here
            raise UserError(f"{self.path}: {name} is corrupt ({_first_line(e)})") from None

    def theta0(self) -> np.ndarray:
        t = self._read("theta0")
        if crc32(t) != int(self.f["theta0"].attrs["crc32"]):
            raise UserError(f"{self.path}: theta0 fails its checksum (tampered or corrupt)")
        return t

    def steps(self, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        hi = self.committed if hi is None else min(hi, self.committed)
        out = {name: self._read(f"steps/{name}", slice(lo, hi))
               for name in ("step", "lr", "loss", "crc32")}
        coef = (self._read("steps/coefficients", slice(lo, hi))
                if "coefficients" in self.f["steps"] else None)
        if self.version >= 2:
            bad = [lo + i for i in range(len(out["step"])) if row_crc(
                out["step"][i], out["lr"][i], out["loss"][i],
                None if coef is None else coef[i]) != int(out["crc32"][i])]
        else:  # format 1: the coefficients only
            bad = [lo + i for i, c in enumerate(coef if coef is not None else [])
                   if crc32(c) != int(out["crc32"][i])]
        if bad:
            raise UserError(f"{self.path}: coefficients of step {bad[0]} fail their checksum, "
                            "which covers the row's step index, rate and loss too (tampered or "
                            "corrupt)")
        if coef is not None:
            out["coefficients"] = coef
        return out

    def snapshot_steps(self) -> np.ndarray:
        return self._read("snapshots/step", slice(0, self.n_snapshots))

    def snapshot(self, i: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        step = int(self._read("snapshots/step", i))
        theta = self._read("snapshots/theta", i)
        buffers = self._read("snapshots/buffers", i)
        state = self._read("snapshots/state", i)
        expected = (snapshot_crc(step, theta, buffers, state) if self.version >= 2
                    else crc32(theta, buffers, state))
        if expected != int(self._read("snapshots/crc32", i)):
            raise UserError(f"{self.path}: snapshot of step {step} fails its checksum "
                            "(tampered or corrupt)")
        return step, theta, buffers, state

    def metrics_table(self) -> np.ndarray:
        return self._read("metrics/table")

    @property
    def metric_columns(self) -> tuple[str, ...]:
        names = self.f["metrics/table"].attrs.get("columns")
        return tuple(json.loads(names)) if names is not None else _LEGACY_METRIC_COLUMNS

    def metrics(self) -> list[dict]:
        """One dict per evaluation; a column this file's version did not write is NaN."""
        cols = self.metric_columns
        return [{**dict.fromkeys(METRIC_COLUMNS, math.nan), **dict(zip(cols, map(float, row)))}
                for row in self.metrics_table()]

    def size_on_disk(self) -> int:
        return self.path.stat().st_size


def _json_attr(run: RunFile, name: str, kind: type, text: str | None = None):
    try:
        value = json.loads(text if text is not None else str(run.attrs[name]))
    except json.JSONDecodeError as e:
        raise UserError(f"run file {run.path}: attribute {name} is not valid JSON ({e})") from None
    if not isinstance(value, kind):
        raise UserError(f"run file {run.path}: attribute {name} is a JSON "
                        f"{type(value).__name__}, not an object")
    return value


def platform_description() -> str:
    """The CPU kind that decides a training step's rounding: the architecture, the CPU model
    and the instruction set ATen dispatches to (oneDNN's convolutions and MKL's products follow
    the CPU too), and torch's version. Nodes with different descriptions may round a training
    step differently; a kernel-generation-3 run replays bitwise on any (docs/runfile.md)."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith(("model name", "Model name"))), model)
    except OSError:
        pass
    return (f"{platform.machine()} {model} ({torch.backends.cpu.get_cpu_capability()}), "
            f"torch {torch.__version__}")


def platforms_after(existing: "RunFile | None", resume_at: int | None) -> list:
    """The run file's record of where its steps were trained, [[first step, platform], …]:
    a new run's one entry, or the continued file's list with this node appended when it
    differs (a file written before the record existed starts with an unknown platform)."""
    here = platform_description()
    if existing is None or not resume_at:
        return [[0, here]]
    past = recorded_platforms(existing)
    past = [entry for entry in past if entry[0] < resume_at] or [[0, "unknown"]]
    return past if past[-1][1] == here else past + [[int(resume_at), here]]


def recorded_platforms(run: "RunFile") -> list:
    """The file's ``platforms`` list; [] where none is recorded or it is not a list of
    [step, text] pairs (a record only: nothing that replays depends on it)."""
    return platform_record(run)[0]


def platform_record(run: "RunFile") -> tuple[list, str]:
    """(``recorded_platforms``, why it is empty): "" for a readable record; otherwise whether
    the file predates the record (format < 5) or holds a damaged one, for ``inspect``."""
    text = run.attrs.get("platforms")
    if text is None:
        return [], ("not recorded (written before rbd-hpc recorded platforms)" if run.version < 5
                    else "not recorded (the platforms attribute is missing from this format-"
                    f"{run.version} file)")
    try:
        value = json.loads(str(text))
    except json.JSONDecodeError as e:
        return [], f"unreadable (the platforms attribute is damaged: not JSON, {e})"
    ok = isinstance(value, list) and all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], int) and isinstance(e[1], str)
        for e in value)
    if not ok or not value:
        return [], ("unreadable (the platforms attribute is damaged: not a non-empty list of "
                    "[first step, platform] pairs)")
    return value, ""


def platform_change_note(platforms: list, kernels: int) -> str:
    """The one line a resume on another kind of CPU prints (``platforms_after``'s list)."""
    (_, before), (at, here) = platforms[-2], platforms[-1]
    replay = ("replay --verify holds on any CPU (kernel generation 3)" if kernels >= 3 else
              f"replay --verify of this kernel-generation-{kernels} run may need the CPU kind "
              "it was trained on")
    if before == "unknown":
        return (f"note: where the steps before {at} were trained is not recorded (a file older "
                f"than format 5, or a damaged record); this node is {here}: on another kind of "
                "CPU the steps from here on continue the run validly, but not with the bits an "
                f"uninterrupted run would have taken; {replay}")
    return (f"note: the steps before {at} were trained on {before}; this node is {here}, whose "
            "kernels round differently: the steps from here on continue the run validly, but "
            f"not with the bits an uninterrupted run would have taken; {replay}")


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

def check_writable(path: Path, what: str = "output") -> None:
    """A clear error before any work if ``path`` cannot be created as a file."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        if not parent.is_dir():
            raise UserError(f"output directory {parent} does not exist")
        limit = os.pathconf(parent, "PC_NAME_MAX")
        if len((path.name + ".lock").encode()) > limit:
            raise UserError(f"{what} file name {path.name[:40]}… is too long for its file system "
                            f"({len(path.name.encode())} bytes; at most {limit - 5} here)")
        if path.is_dir():
            raise UserError(f"{what} path {path} is a directory; give a file name")
        if not os.access(parent, os.W_OK):
            raise UserError(f"output directory {parent} is not writable")
    except OSError as e:
        raise UserError(f"{what} path {path}: {e.strerror or e}") from None


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


def refuse_aliases(out: Path | None, metrics: Path | None) -> None:
    """The metrics file may be neither the run file nor any HDF5 file (it would be truncated)."""
    if metrics is None:
        return
    check_writable(metrics, "--metrics")
    if out is not None and (metrics.resolve() == out.resolve() or (
            metrics.exists() and out.exists() and metrics.samefile(out))):
        raise UserError(f"--metrics {metrics} is the run file itself; give a .jsonl path")
    if metrics.exists() and h5py.is_hdf5(metrics):
        raise UserError(f"--metrics {metrics} is an HDF5 file (a run file?); it would be "
                        "overwritten — give a .jsonl path")


class RunLock:
    """The one writer of a run file: an exclusive flock on ``RUN.h5.lock`` that names its
    holder (pid and host). Taken before the run file is checked or created, so that a check
    and the create that follows it cannot interleave with another process's."""

    def __init__(self, run_path: Path):
        self.run_path = Path(run_path)
        self.path = self.run_path.with_name(self.run_path.name + ".lock")
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # e.g. a folder that takes no new files (/proc, a full disk)
                raise UserError(f"cannot create the lock file {self.path} beside the run "
                                f"file: {e.strerror}; give --out a folder you can write "
                                "to") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise UserError(f"cannot lock {self.path}: {e.strerror}") from None
                raise UserError(f"run file {self.run_path} is being written by {holder} "
                                f"(lock {self.path}); wait for it to end or stop it") from None
            try:  # a holder that was releasing may have unlinked what we locked: lock anew
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still held: the next taker checks the inode
            os.close(self.fd)
            self.fd = None
