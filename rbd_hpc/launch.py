"""Launching training from Python: submitit on Slurm, or a local backend without Slurm.

    from rbd_hpc.config import TrainConfig
    from rbd_hpc.launch import Cluster, submit

    job = submit(TrainConfig.from_preset("fc-fmnist", epochs=1), "runs/fc.h5",
                 Cluster(tasks=4, time_min=120), folder="runs/logs")
    print(job.result()["test_acc"])

On Slurm each task is one MPI rank: submitit's srun gets ``--mpi=pmi2`` so the tasks form
one MPI world. Preemption follows the one protocol of preemption.py (docs/design.md,
"Preemption"): Slurm signals every task ``signal_delay_s`` before the limit, every rank
finishes its step, the ranks agree on the stop step, rank 0 commits a snapshot, and only then
is the signal handed on to submitit's handler, which calls ``TrainJob.checkpoint`` and
requeues. The requeued job resumes from the run file. The local backend runs the same job
under ``mpiexec`` (or in-process for one task).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import submitit

from .comm import create_communicator, install_abort_handler
from .config import TrainConfig
from .errors import UserError, require_choice
from .preemption import StopRequest
from .resume import check_resume
from .runlog import RunFile, check_writable
from .train import train

BACKENDS = ("auto", "slurm", "local")


@dataclasses.dataclass
class Cluster:
    """Where and how a job runs. Unknown keys are rejected with the list of valid ones."""

    name: str = "rbd-hpc"          # job name
    tasks: int = 1                 # MPI ranks (one per GPU/IPU/CPU node)
    nodes: int = 1
    cpus_per_task: int = 1
    time_min: int = 60
    partition: str | None = None
    mem_gb: int | None = None
    gpus_per_node: int | None = None
    signal_delay_s: int = 120      # preemption warning before the time limit
    max_requeues: int = 3
    mpi: str = "pmi2"              # srun --mpi=...
    backend: str = "auto"
    setup: tuple[str, ...] = ()    # shell lines before srun (module load …)
    extra: dict = dataclasses.field(default_factory=dict)  # more #SBATCH parameters

    def __post_init__(self):
        require_choice("backend", self.backend, BACKENDS)
        for name in ("tasks", "nodes", "cpus_per_task", "time_min"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name}={getattr(self, name)} must be positive")

    @classmethod
    def from_dict(cls, values: dict) -> "Cluster":
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"unknown cluster parameter(s) {unknown}; valid: {', '.join(known)}")
        return cls(**values)


def _executor(cluster: Cluster, folder: str | Path):
    backend = cluster.backend
    if backend == "auto":
        backend = "slurm" if shutil.which("sbatch") and _slurm_reachable() else "local"
    if backend == "slurm":
        ex = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=cluster.max_requeues)
        params = dict(job_name=cluster.name, ntasks_per_node=cluster.tasks // cluster.nodes, nodes=cluster.nodes,
                      cpus_per_task=cluster.cpus_per_task, time=cluster.time_min,
                      signal_delay_s=cluster.signal_delay_s, srun_args=[f"--mpi={cluster.mpi}", "--kill-on-bad-exit=1"],
                      setup=list(cluster.setup),
                      additional_parameters={"requeue": True, **cluster.extra})
        if cluster.tasks % cluster.nodes:
            raise UserError(f"tasks={cluster.tasks} is not a multiple of nodes={cluster.nodes}")
        if cluster.partition:
            params["partition"] = cluster.partition
        if cluster.mem_gb:
            params["mem"] = f"{cluster.mem_gb}GB"
        if cluster.gpus_per_node:
            params["gpus_per_node"] = cluster.gpus_per_node
        ex.update_parameters(**params)
        return ex, "slurm"
    ex = submitit.LocalExecutor(folder=str(folder))
    ex.update_parameters(timeout_min=cluster.time_min)
    return ex, "local"


def _slurm_reachable() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class TrainJob(submitit.helpers.Checkpointable):
    """One training run as a submitit job: resumes from its run file if it exists."""

    def __init__(self, config: dict, out: str, metrics: str | None = None, tasks: int = 1,
                 backend: str = "slurm"):
        self.config, self.out, self.metrics = config, out, metrics
        self.tasks, self.backend = tasks, backend

    def __call__(self) -> dict:
        if self.backend == "local" and self.tasks > 1:
            return self._local_mpi()
        cfg = TrainConfig.from_dict(self.config, "submitted config")
        comm = create_communicator()
        if comm.size != self.tasks:
            raise UserError(f"MPI world size {comm.size}, expected {self.tasks} tasks")
        install_abort_handler(comm)
        with StopRequest() as stop:  # the preemption protocol: preemption.py
            summary = train(cfg, comm, out=self.out, metrics_path=self.metrics, progress=False,
                            resume=Path(self.out).exists(), should_stop=stop)
            summary = {k: v for k, v in summary.items() if k != "theta"}
            summary["world_size"] = comm.size
            if summary["preempted"]:
                # the run file is committed: now submitit's own handler checkpoints and
                # requeues (rank 0 exits there; the other ranks return at once)
                stop.pass_on()
        return summary

    def _local_mpi(self) -> dict:
        mpiexec = Path(sys.executable).parent / "mpiexec"
        cmd = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(self.tasks),
               str(Path(sys.executable).parent / "rbd-hpc"), "train", "--no-progress",
               "--config-json", json.dumps(self.config)]
        cmd += ["--resume", self.out] if Path(self.out).exists() else ["--out", self.out]
        with tempfile.TemporaryDirectory() as tmp:
            metrics = self.metrics or str(Path(tmp) / "metrics.jsonl")
            proc = subprocess.run(cmd + ["--metrics", metrics], capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"local MPI job failed ({proc.returncode}): {proc.stderr.strip()}")
            last = json.loads(Path(metrics).read_text().splitlines()[-1])
        return {**last, "world_size": self.tasks, "stdout": proc.stdout.strip()}

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(
            TrainJob(self.config, self.out, self.metrics, self.tasks, self.backend))


def check_submission(cfg: TrainConfig, out: str, tasks: int) -> None:
    """Before anything is submitted: a run file already at ``out`` must be one this config
    continues bitwise (the check every resume passes, resume.check_resume)."""
    path = Path(out)
    check_writable(path, "out")
    if path.exists():
        with RunFile(path) as run:
            check_resume(run, cfg, tasks)


def submit(cfg: TrainConfig, out: str, cluster: Cluster | None = None, folder: str = "runs/logs",
           metrics: str | None = None):
    """Submit one training run; returns a submitit Job (``.result()`` is the summary). A run
    file already at ``out`` is resumed, and refused here if the config would not continue it."""
    cluster = cluster or Cluster()
    check_submission(cfg, out, cluster.tasks)
    ex, backend = _executor(cluster, folder)
    job = TrainJob(dataclasses.asdict(cfg), str(out), metrics, cluster.tasks, backend)
    return ex.submit(job)


def submit_array(cfgs: list[TrainConfig], outs: list[str], cluster: Cluster | None = None,
                 folder: str = "runs/logs", metrics: list[str] | None = None):
    """A job array (Slurm) or a batch of local jobs: one run per config."""
    if len(cfgs) != len(outs):
        raise UserError(f"{len(cfgs)} configs but {len(outs)} output files")
    cluster = cluster or Cluster()
    if len(set(map(str, outs))) != len(outs):
        raise UserError("two runs of the array share one output file")
    for cfg, out in zip(cfgs, outs):
        check_submission(cfg, out, cluster.tasks)
    ex, backend = _executor(cluster, folder)
    metrics = metrics or [None] * len(cfgs)
    jobs = [TrainJob(dataclasses.asdict(c), str(o), m, cluster.tasks, backend)
            for c, o, m in zip(cfgs, outs, metrics)]
    return ex.submit_array(jobs)


def sbatch_text(cluster: Cluster, folder: str | Path) -> str:
    """The sbatch script submitit would generate for ``cluster`` (for golden-file tests)."""
    ex, _ = _executor(dataclasses.replace(cluster, backend="slurm"), folder)
    return ex._make_submission_file_text("python -u -m submitit.core._submit " + str(folder), "uid")
