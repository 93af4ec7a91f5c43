"""Communicators and the collectives built on them: the only module that imports mpi4py
(docs/design.md, invariant 5).

Methods and the trainer receive a communicator as an argument. ``SingleProcess`` needs
no MPI at all; ``MPIComm`` wraps ``MPI.COMM_WORLD``; ``ThreadComm`` runs R ranks as threads of
one process (the same collectives, no MPI), so multi-rank logic is testable without mpiexec.

Reductions are deterministic: ``allreduce_mean`` gathers every rank's vector and sums
in rank order on every rank, so all ranks get bitwise-identical results whatever
algorithm the MPI library picks (docs/design.md, invariant 4). For d floats this costs what an
allreduce costs; the bytes handed to MPI are the 4·d of the send buffer.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from typing import Callable

import numpy as np
import torch

from .errors import UserError


class TrafficCounter:
    """Bytes handed to MPI at the communicator boundary, by phase ("step", "setup", "eval")."""

    def __init__(self):
        self.phase = "setup"
        self.bytes: dict[str, int] = {}

    def add(self, n: int) -> None:
        self.bytes[self.phase] = self.bytes.get(self.phase, 0) + int(n)

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
        table = self.allgather(x)
        total = table[0].clone()
        for r in range(1, self.size):  # fixed rank order: bitwise identical on every rank
            total += table[r]
        return total / self.size

    def allreduce_sum_np(self, x: np.ndarray) -> np.ndarray:
        send = np.ascontiguousarray(x)
        self.traffic.add(send.nbytes)
        table = np.empty((self.size,) + send.shape, dtype=send.dtype)
        self.comm.Allgather(send, table)
        total = table[0].copy()
        for r in range(1, self.size):
            total += table[r]
        return total

    def allgather(self, x: torch.Tensor) -> torch.Tensor:
        send = np.ascontiguousarray(x.detach().cpu().numpy())
        self.traffic.add(send.nbytes)
        table = np.empty((self.size,) + send.shape, dtype=send.dtype)
        self.comm.Allgather(send, table)
        return torch.from_numpy(table).to(x.device)

    def broadcast(self, x: torch.Tensor, root: int = 0) -> torch.Tensor:
        buf = np.ascontiguousarray(x.detach().cpu().numpy())
        self.traffic.add(buf.nbytes)
        self.comm.Bcast(buf, root=root)
        return torch.from_numpy(buf).to(x.device)

    def broadcast_object(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def abort(self, code: int = 1) -> None:
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
        table = self.allgather(x)
        total = table[0].clone()
        for r in range(1, self.size):
            total += table[r]
        return total / self.size

    def allreduce_sum_np(self, x: np.ndarray) -> np.ndarray:
        self.traffic.add(x.nbytes)
        table = self._exchange(np.array(x, copy=True))
        total = table[0].copy()
        for r in range(1, self.size):
            total += table[r]
        return total

    def allgather(self, x: torch.Tensor) -> torch.Tensor:
        self.traffic.add(x.numel() * x.element_size())
        return torch.stack([t.to(x.device) for t in self._exchange(x.detach().cpu().clone())])

    def broadcast(self, x: torch.Tensor, root: int = 0) -> torch.Tensor:
        self.traffic.add(x.numel() * x.element_size())
        return self._exchange(x.detach().cpu().clone())[root].to(x.device)

    def broadcast_object(self, obj, root: int = 0):
        return self._exchange(obj)[root]

    def abort(self, code: int = 1) -> None:
        self._shared["barrier"].abort()
        raise SystemExit(code)


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


def check_divergence(comm, theta: torch.Tensor, done: int) -> None:
    """Stop with a clear error if ranks' θ differ (16 bytes per rank, every N steps)."""
    digest = np.frombuffer(theta_digest(theta), dtype=np.uint8).astype(np.float32)
    table = comm.allgather(torch.from_numpy(digest))
    differ = [r for r in range(comm.size) if not torch.equal(table[r], table[0])]
    if differ:
        raise UserError(f"ranks diverged after step {done}: θ on rank(s) {differ} differs from "
                        "rank 0 (check that all ranks run the same rbd-hpc, torch and thread count)")


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
        sys.stderr.flush()
        comm.abort(1)
    sys.excepthook = hook
