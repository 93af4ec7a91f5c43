"""Run under mpiexec by test_mpi.py: scenarios that need a real multi-rank job."""
from __future__ import annotations

import sys
import time

import torch

from rbd_hpc.comm import MPIComm, check_divergence, install_abort_handler
from rbd_hpc.config import TrainConfig
from rbd_hpc.errors import UserError
from rbd_hpc.runlog import RunFile
from rbd_hpc.train import train


def crash():
    """Rank 1 raises while rank 0 waits in a collective: the job must end, not hang."""
    comm = MPIComm()
    install_abort_handler(comm)
    if comm.rank == 1:
        time.sleep(0.5)
        raise RuntimeError("rank 1 failed on purpose")
    comm.allgather(torch.zeros(4))  # would block forever without the abort handler
    time.sleep(60)


def diverge():
    """The divergence check names the rank whose θ differs."""
    comm = MPIComm()
    theta = torch.arange(10, dtype=torch.float32)
    check_divergence(comm, theta, 1)  # identical: passes
    if comm.rank == comm.size - 1:
        theta[3] = torch.nextafter(theta[3], torch.tensor(100.0))  # one ulp
    try:
        check_divergence(comm, theta, 2)
    except UserError as e:
        if comm.rank == 0:
            print("caught:", e, flush=True)
        return
    raise SystemExit("divergence not detected")


def svrg_stop():
    """A stop that only rank 1 sees, inside its anchor pass at step 10 (its 15th question:
    one before each of the three batches of its 288 samples, and one per step): every rank stops there. argv: the reference run, the
    output file."""
    comm = MPIComm()
    with RunFile(sys.argv[2]) as run:
        cfg = TrainConfig.from_json(run.config_json)
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return comm.rank == 1 and len(asked) >= 15
    summary = train(cfg, comm, out=sys.argv[3], progress=False, should_stop=should_stop)
    if comm.rank == 0:
        print(f"preempted {summary['preempted']} after {summary['steps_done']}", flush=True)


if __name__ == "__main__":
    {"crash": crash, "diverge": diverge, "svrg_stop": svrg_stop}[sys.argv[1]]()
