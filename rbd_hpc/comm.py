"""Communicators: the only module that imports mpi4py (DESIGN.md invariant 5).

Methods and the trainer receive a communicator as an argument. ``SingleProcess`` needs
no MPI at all; ``MPIComm`` wraps ``MPI.COMM_WORLD``.

Reductions are deterministic: ``allreduce_mean`` gathers every rank's vector and sums
in rank order on every rank, so all ranks get bitwise-identical results whatever
algorithm the MPI library picks (invariant 4). For d floats this costs what an
allreduce costs; the bytes handed to MPI are the 4·d of the send buffer.
"""
from __future__ import annotations

import hashlib
import os
import sys

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

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        sys.exit(code)


class MPIComm:
    """``MPI.COMM_WORLD`` behind the communicator interface."""

    def __init__(self, mpi_comm=None):
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

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


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
