"""Communicators and the collectives built on them: the only module that imports mpi4py
(docs/design.md, invariant 5).

Methods and the trainer receive a communicator as an argument. ``SingleProcess`` needs
no MPI at all; ``MPIComm`` wraps ``MPI.COMM_WORLD``; ``ThreadComm`` runs R ranks as threads of
one process (the same collectives, no MPI), so multi-rank logic is testable without mpiexec.

The reduction (``allreduce_mean``, ``allreduce_sum_np``) is MPI_Reduce to rank 0 followed by
MPI_Bcast of rank 0's result. Why not MPI_Allreduce on floats: the MPI standard does not promise
that every rank gets the same bits from it (an algorithm may sum in a different order on
different ranks), and invariant 4 needs identical θ on every rank. Reduce + Bcast gives every
rank the root's bits by construction; the standard asks implementations for the same result
on the same arguments in the same order, so a resume reproduces it (MPICH does). Every rank
hands O(d) bytes to MPI whatever the rank count (the tree or ring inside MPI moves the data),
and no Python loop over ranks remains: the old Allgather made every rank receive R·d floats.
Cost: two collective calls per exchange instead of one. A non-finite result (a NaN or inf
coefficient on any rank) ends the run with one line on every rank.

Large vectors (from LARGE_REDUCTION_BYTES: SGD's and the sparse methods' D-float gradient) are
reduced the way a bandwidth-optimal allreduce (PyTorch DDP's ring, Rabenseifner's algorithm)
moves them: MPI_Reduce_scatter_block gives rank r the sum of block r, then MPI_Allgather hands
every rank every block. Each block is summed once, by MPI on behalf of its owner, and copied
to the others, so every rank holds the same bits again; each rank moves about 2·4·D·(R−1)/R
bytes instead of a reduce's and a broadcast's 4·D each through the root's tree.

``TrafficCounter`` counts, per phase, the bytes of the send buffers a rank hands to MPI, the
bytes of the receive buffers MPI fills, and the collective calls.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import time
from typing import Callable

import numpy as np
import torch

from .errors import AgreedError, UserError

LARGE_REDUCTION_BYTES = 64 * 1024  # from here on: reduce-scatter + allgather (see above)
# Before MPI_Abort, a rank waits this long: the launcher forwards what the rank printed
# asynchronously, and Hydra can kill the job before it has read the rank's last line.
ABORT_GRACE_S = 1.0


class TrafficCounter:
    """Per phase ("setup", "step", "control", "eval"): ``bytes`` sent (send buffers handed to
    MPI), ``received`` (receive buffers MPI filled) and collective ``calls``."""

    def __init__(self):
        self.phase = "setup"
        self.bytes: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}  # wall time inside MPI calls

    def timed(self, seconds: float) -> None:
        self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + seconds

    def add(self, sent: int, received: int = 0, calls: int = 1) -> None:
        for table, n in ((self.bytes, sent), (self.received, received), (self.calls, calls)):
            table[self.phase] = table.get(self.phase, 0) + int(n)

    def totals(self, phase: str) -> tuple[int, int, int]:
        """(sent, received, calls) so far in ``phase``."""
        return (self.bytes.get(phase, 0), self.received.get(phase, 0), self.calls.get(phase, 0))

    @contextlib.contextmanager
    def during(self, phase: str):
        """Count the bytes of a block under ``phase``, then go back to the phase before."""
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before


class SingleProcess:
    """One rank, no MPI. Every collective is the identity but still counts its bytes."""

    rank = 0
    size = 1

    def __init__(self):
        self.traffic = TrafficCounter()

    def allreduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        self.traffic.add(x.numel() * x.element_size())
        return x

    def allreduce_sum_np(self, x: np.ndarray) -> np.ndarray:
        self.traffic.add(x.nbytes)
        return np.array(x, copy=True)

    def allgather(self, x: torch.Tensor) -> torch.Tensor:
        self.traffic.add(x.numel() * x.element_size())
        return x.unsqueeze(0).clone()

    def broadcast(self, x: torch.Tensor, root: int = 0) -> torch.Tensor:
        return x

    def broadcast_object(self, obj, root: int = 0):
        return obj

    def abort(self, code: int = 1) -> None:
        sys.exit(code)


class MPIComm:
    """``MPI.COMM_WORLD`` behind the communicator interface."""

    def __init__(self, mpi_comm=None):
        # imported here, not at the top: importing mpi4py.MPI initialises MPI, and a
        # single-process run (SingleProcess) must not need an MPI library at all
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.traffic = TrafficCounter()

    def allreduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            self.traffic.add(x.numel() * x.element_size())
            return x
        send = np.ascontiguousarray(x.detach().cpu().numpy())
        out = (self._scatter_gather(send, divide=True) if send.nbytes >= LARGE_REDUCTION_BYTES
               else self._reduce_bcast(send, divide=True))
        return torch.from_numpy(out).to(x.device)

    def allreduce_sum_np(self, x: np.ndarray) -> np.ndarray:
        send = np.ascontiguousarray(x)
        if self.size == 1:
            self.traffic.add(send.nbytes)
            return send.copy()
        return self._reduce_bcast(send, divide=False)

    def _reduce_bcast(self, send: np.ndarray, divide: bool) -> np.ndarray:
        """Σ_r send_r (÷ R) computed once on rank 0, then rank 0's bits on every rank."""
        out = np.empty_like(send)
        t0 = time.perf_counter()
        self.comm.Reduce(send, out, op=self.MPI.SUM, root=0)
        if self.rank == 0 and divide:
            out /= send.dtype.type(self.size)
        self.comm.Bcast(out, root=0)
        self.traffic.timed(time.perf_counter() - t0)
        n = send.nbytes
        # rank 0: its contribution and the broadcast; the others: a contribution and the result
        self.traffic.add(2 * n if self.rank == 0 else n, n, calls=2)
        return require_finite(out)

    def _scatter_gather(self, send: np.ndarray, divide: bool) -> np.ndarray:
        """Σ_r send_r (÷ R): rank r sums block r (MPI_Reduce_scatter_block), then every rank
        gets every block (MPI_Allgather); padded to R equal blocks."""
        padded, block = blocks(send, self.size)
        mine = np.empty(block, dtype=send.dtype)
        out = np.empty_like(padded)
        t0 = time.perf_counter()
        self.comm.Reduce_scatter_block(padded, mine, op=self.MPI.SUM)
        if divide:
            mine /= send.dtype.type(self.size)
        self.comm.Allgather(mine, out)
        self.traffic.timed(time.perf_counter() - t0)
        self.traffic.add(padded.nbytes + mine.nbytes, mine.nbytes + out.nbytes, calls=2)
        return require_finite(out[:send.size].reshape(send.shape))

    def allgather(self, x: torch.Tensor) -> torch.Tensor:
        send = np.ascontiguousarray(x.detach().cpu().numpy())
        self.traffic.add(send.nbytes, send.nbytes * (self.size - 1))
        table = np.empty((self.size,) + send.shape, dtype=send.dtype)
        t0 = time.perf_counter()
        self.comm.Allgather(send, table)
        self.traffic.timed(time.perf_counter() - t0)
        return torch.from_numpy(table).to(x.device)

    def broadcast(self, x: torch.Tensor, root: int = 0) -> torch.Tensor:
        buf = np.ascontiguousarray(x.detach().cpu().numpy())
        self.traffic.add(buf.nbytes if self.rank == root else 0,
                         0 if self.rank == root else buf.nbytes)
        self.comm.Bcast(buf, root=root)
        return torch.from_numpy(buf).to(x.device)

    def broadcast_object(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)


class ThreadComm:
    """Rank ``rank`` of ``size`` ranks that are threads of one process (``run_threaded``).

    The collectives have MPIComm's semantics and reduction order, so a rank's results are
    the bits it would get under mpiexec; no MPI is involved. For tests and dry runs."""

    def __init__(self, rank: int, size: int, shared: dict):
        self.rank, self.size = rank, size
        self.traffic = TrafficCounter()
        self._shared = shared

    def _exchange(self, value) -> list:
        """Every rank's ``value``, in rank order (two barriers: write, then read)."""
        slots, barrier = self._shared["slots"], self._shared["barrier"]
        slots[self.rank] = value
        barrier.wait()
        table = list(slots)
        barrier.wait()
        return table

    def allreduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        send = np.ascontiguousarray(x.detach().cpu().numpy())
        total = self._sum(send, divide=True)
        if send.nbytes >= LARGE_REDUCTION_BYTES:  # what MPIComm's scatter-gather hands over
            padded, block = blocks(send, self.size)
            mine = block * send.dtype.itemsize
            self.traffic.add(padded.nbytes + mine, mine + padded.nbytes, calls=2)
        else:
            self._count_reduce_bcast(send.nbytes)
        return torch.from_numpy(total).to(x.device)

    def allreduce_sum_np(self, x: np.ndarray) -> np.ndarray:
        send = np.ascontiguousarray(x)
        self._count_reduce_bcast(send.nbytes)
        return self._sum(send, divide=False)

    def _sum(self, send: np.ndarray, divide: bool) -> np.ndarray:
        """Σ_r send_r (÷ R), summed in rank order; every rank gets the same bits."""
        table = self._exchange(send.copy())
        total = table[0].copy()
        for r in range(1, self.size):
            total += table[r]
        if divide:
            total /= send.dtype.type(self.size)
        return require_finite(total)

    def _count_reduce_bcast(self, n: int) -> None:
        """MPIComm's reduce to rank 0 and broadcast: rank 0 also sends the broadcast."""
        self.traffic.add(2 * n if self.rank == 0 else n, n, calls=2)

    def allgather(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel() * x.element_size()
        self.traffic.add(n, n * (self.size - 1))
        return torch.stack([t.to(x.device) for t in self._exchange(x.detach().cpu().clone())])

    def broadcast(self, x: torch.Tensor, root: int = 0) -> torch.Tensor:
        n = x.numel() * x.element_size()
        self.traffic.add(n if self.rank == root else 0, 0 if self.rank == root else n)
        return self._exchange(x.detach().cpu().clone())[root].to(x.device)

    def broadcast_object(self, obj, root: int = 0):
        return self._exchange(obj)[root]

    def abort(self, code: int = 1) -> None:
        self._shared["barrier"].abort()
        raise SystemExit(code)


def blocks(send: np.ndarray, ranks: int) -> tuple[np.ndarray, int]:
    """``send`` flattened and zero-padded to ``ranks`` equal blocks, and the block length."""
    block = -(-send.size // ranks)
    padded = np.zeros(block * ranks, dtype=send.dtype)
    padded[:send.size] = send.ravel()
    return padded, block


def require_finite(values: np.ndarray) -> np.ndarray:
    """A reduced vector holds the same bits on every rank, so every rank stops here alike."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise AgreedError(f"the ranks' averaged coefficients (or gradient) hold {values[bad]} at "
                          f"index {bad}; the run diverged — lower --lr")
    return values


def run_threaded(size: int, fn: Callable[[object], object]) -> list:
    """``fn(comm)`` on ``size`` ThreadComm ranks at once; their return values in rank order.
    An exception on any rank breaks the others' barriers and is raised here."""
    shared = {"slots": [None] * size, "barrier": threading.Barrier(size, timeout=300)}
    results, errors = [None] * size, [None] * size

    def body(rank: int) -> None:
        try:
            results[rank] = fn(ThreadComm(rank, size, shared))
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            errors[rank] = e
            shared["barrier"].abort()
    threads = [threading.Thread(target=body, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = next((e for e in errors if e is not None and not isinstance(
        e, threading.BrokenBarrierError)), next((e for e in errors if e is not None), None))
    if first is not None:
        raise first
    return results


# -- collectives of the training loop (every rank calls them at the same steps) -------------

def agree_to_stop(comm, flag: bool, done: int, every: int = 20) -> bool:
    """All ranks stop at the same step: the stop flag is OR-reduced every ``every`` steps."""
    if comm.size == 1:
        return bool(flag)
    if done % every:
        return False
    return bool(comm.allreduce_sum_np(np.array([1.0 if flag else 0.0]))[0] > 0)


def on_root(comm, work: Callable[[], object]):
    """``work()`` on rank 0 only, its result broadcast to every rank. A UserError there is
    raised on every rank as an AgreedError, so all ranks exit 2 together without MPI_Abort."""
    outcome = None
    if comm.rank == 0:
        try:
            outcome = ("ok", work())
        except UserError as e:
            outcome = ("error", str(e))
    kind, value = comm.broadcast_object(outcome)
    if kind == "error":
        raise AgreedError(value)
    return value


def on_every_rank(comm, work: Callable[[], object]):
    """``work()`` on every rank (each reads its own copy of the data, or parses the same
    command line). A UserError on any rank is raised on every rank as an AgreedError, so all
    ranks exit 2 together and rank 0 prints the one line: no MPI_Abort, whose output a launcher
    may drop. The line names the lowest failing rank unless every rank failed alike (a bad
    option). An AgreedError inside ``work`` (from ``on_root``) is already raised on every rank
    and passes through unchanged. Costs one reduction of R floats and one broadcast, once."""
    if comm.size == 1:
        return work()
    outcome, failed = None, None
    try:
        outcome = work()
    except AgreedError:
        raise
    except UserError as e:
        failed = str(e)
    flags = np.zeros(comm.size)
    flags[comm.rank] = failed is not None
    bad = np.flatnonzero(comm.allreduce_sum_np(flags))
    if bad.size:
        first = int(bad[0])
        message = comm.broadcast_object(failed, root=first)
        alike = comm.allreduce_sum_np(np.array([float(failed == message)]))[0] == comm.size
        raise AgreedError(message if alike else f"[rank {first}] {message}")
    return outcome


def check_divergence(comm, theta: torch.Tensor, done: int) -> None:
    """Stop with a clear error if ranks' θ differ (16 bytes per rank, every N steps)."""
    digest = np.frombuffer(theta_digest(theta), dtype=np.uint8).astype(np.float32)
    table = comm.allgather(torch.from_numpy(digest))
    differ = [r for r in range(comm.size) if not torch.equal(table[r], table[0])]
    if differ:
        raise UserError(f"ranks diverged after step {done}: θ on rank(s) {differ} differs from "
                        "rank 0 (check that all ranks run the same rbd-hpc, torch and thread "
                        "count, and, for a run of kernel generation 1 or 2, the same kind of "
                        "CPU)")


def average(comm, vec: np.ndarray) -> np.ndarray:
    """The ranks' mean of a float64 vector (BatchNorm statistics after an epoch)."""
    return comm.allreduce_sum_np(vec) / comm.size


def theta_digest(theta: torch.Tensor) -> bytes:
    """A 16-byte digest of θ's bits, for the cross-rank divergence check."""
    return hashlib.blake2b(theta.detach().cpu().numpy().tobytes(), digest_size=16).digest()


def launched_by_mpi() -> bool:
    """True when a process manager started us (mpiexec/hydra, srun with PMI)."""
    env = os.environ
    return any(k in env for k in ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                                  "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD", "PMI_FD"))


def expected_world_size() -> int | None:
    """Ranks a Slurm job step promises (None outside a step, e.g. in the batch script)."""
    env = os.environ
    if "SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env:
        return None
    for key in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return None


def create_communicator(require_mpi: bool = False):
    """MPIComm when launched under MPI (or asked for), else SingleProcess.

    Under Slurm the world must hold at least the step's tasks: srun without a working PMI
    starts N separate one-rank runs, which would silently train N copies. (mpiexec inside an
    allocation starts its proxies as a smaller step, so a larger world is fine.)
    """
    comm = MPIComm() if (require_mpi or launched_by_mpi()) else SingleProcess()
    expected = expected_world_size()
    if expected is not None and comm.size < expected:
        raise UserError(f"MPI world size {comm.size} does not match SLURM_NTASKS={expected}; "
                        "launch with 'srun --mpi=pmi2' (or mpiexec inside the allocation) so "
                        "all tasks join one MPI job")
    return comm


def install_abort_handler(comm) -> None:
    """On an uncaught exception on any rank, print it and abort the whole MPI job.

    Without this, one rank dying leaves the others blocked in a collective forever.
    """
    if comm.size == 1:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        comm.abort(1)  # flushes and gives the launcher time to forward the traceback
    sys.excepthook = hook
