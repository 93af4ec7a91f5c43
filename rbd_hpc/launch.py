"""Launching training from Python: submitit on Slurm, or a local backend without Slurm.

    from rbd_hpc.config import TrainConfig
    from rbd_hpc.launch import submit

    job = submit(TrainConfig.from_preset("fc-fmnist", epochs=1), "runs/fc.h5",
                 tasks_per_node=4, timeout_min=120, slurm_partition="cpu", folder="runs/logs")
    print(job.result()["test_acc"])        # rank 0's summary; job.results(): one per rank

Parameters are submitit's own (AutoExecutor.update_parameters); an executor you made
yourself works too: ``submit(cfg, out, my_executor)``. Local execution happens only when
asked for (``backend="local"``).

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

BACKENDS = ("slurm", "local")
# what MPI training needs of a Slurm job, in submitit's AutoExecutor names; a user's own
# parameters override each of these
DEFAULTS = {"name": "rbd-hpc", "timeout_min": 60, "nodes": 1, "tasks_per_node": 1,
            "cpus_per_task": 1, "slurm_signal_delay_s": 120}


def executor(folder: str | Path = "runs/logs", backend: str = "slurm",
             max_requeues: int = 3, mpi: str = "pmi2", **params) -> submitit.AutoExecutor:
    """submitit's ``AutoExecutor`` for MPI training. ``params`` are AutoExecutor's own
    parameters (``timeout_min``, ``nodes``, ``tasks_per_node``, ``cpus_per_task``,
    ``gpus_per_node``, ``mem_gb``, ``slurm_partition``, ``slurm_setup``,
    ``slurm_additional_parameters``, …) over DEFAULTS. ``backend="local"`` runs here (the
    tasks under mpiexec) and only when asked for: with ``"slurm"`` and no Slurm answering,
    this refuses instead of running on the login node."""
    require_choice("backend", backend, BACKENDS)
    if backend == "slurm" and not (shutil.which("sbatch") and _slurm_reachable()):
        raise UserError("backend 'slurm': no Slurm answers here (sinfo failed); submit from a "
                        "cluster's login node, or pass backend='local' to run on this machine")
    ex = submitit.AutoExecutor(folder=str(folder), cluster=backend,
                               slurm_max_num_timeout=max_requeues)
    try:
        ex.update_parameters(**{**DEFAULTS, **params})
    except (ValueError, TypeError, NameError) as e:  # an unknown or mistyped parameter
        valid = sorted(submitit.AutoExecutor._valid_parameters()) + [
            f"{backend}_{k}" for k in sorted(ex._executor._valid_parameters())]
        raise UserError(f"executor parameters: {str(e).splitlines()[0]} Valid: "
                        + ", ".join(valid)) from None
    return _for_mpi(ex, mpi)


def _slurm_reachable() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _for_mpi(ex, mpi: str = "pmi2"):
    """What every MPI training job needs, added to an executor (the user's own or ours): on
    Slurm, srun forms one MPI world (``--mpi``), a failing rank ends the step, and the job may
    be requeued after preemption."""
    inner = ex._executor if isinstance(ex, submitit.AutoExecutor) else ex
    if isinstance(inner, submitit.SlurmExecutor):
        srun = list(inner.parameters.get("srun_args") or [])
        if not any(a.startswith("--mpi") for a in srun):
            srun.append(f"--mpi={mpi}")
        if "--kill-on-bad-exit=1" not in srun:
            srun.append("--kill-on-bad-exit=1")
        extra = {"requeue": True, **(inner.parameters.get("additional_parameters") or {})}
        inner.update_parameters(srun_args=srun, additional_parameters=extra)
    return ex


def _tasks(ex) -> tuple[int, str]:
    """(MPI ranks per job, backend) of an executor. A local executor runs one process, which
    starts the ranks under mpiexec itself (local processes would not form one MPI world)."""
    inner = ex._executor if isinstance(ex, submitit.AutoExecutor) else ex
    p = inner.parameters
    if isinstance(inner, submitit.SlurmExecutor):
        return int(p.get("ntasks_per_node", 1)) * int(p.get("nodes", 1)), "slurm"
    if isinstance(inner, submitit.LocalExecutor):
        # asked of the executor once, kept on it: its own process count becomes 1
        if not hasattr(inner, "rbd_tasks"):
            inner.rbd_tasks = int(p.get("tasks_per_node", 1)) * int(p.get("nodes", 1))
            inner.update_parameters(tasks_per_node=1, nodes=1)
        return inner.rbd_tasks, "local"
    raise UserError(f"executor {type(inner).__name__}: use a submitit Slurm, Local or Auto "
                    "executor")


class TrainJob(submitit.helpers.Checkpointable):
    """One training run as a submitit job: resumes from its run file if it exists.
    ``hide_test``: its log shows no test score (train's ``hide_test``)."""

    def __init__(self, config: dict, out: str, metrics: str | None = None, tasks: int = 1,
                 backend: str = "slurm", hide_test: bool = False):
        self.config, self.out, self.metrics = config, out, metrics
        self.tasks, self.backend, self.hide_test = tasks, backend, hide_test

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
                            resume=Path(self.out).exists(), should_stop=stop,
                            hide_test=self.hide_test)
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
        cmd += ["--hide-test"] if self.hide_test else []
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
            TrainJob(self.config, self.out, self.metrics, self.tasks, self.backend,
                     self.hide_test))


def check_submission(cfg: TrainConfig, out: str, tasks: int) -> None:
    """Before anything is submitted: a run file already at ``out`` must be one this config
    continues bitwise (the check every resume passes, resume.check_resume)."""
    path = Path(out)
    check_writable(path, "out")
    if path.exists():
        with RunFile(path) as run:
            check_resume(run, cfg, tasks)


class RunJob:
    """A submitit Job whose ``result()`` is rank 0's summary (every rank returns the same
    scores; ``results()`` still gives one per task). Everything else is the submitit Job's."""

    def __init__(self, job):
        self.job = job

    def result(self) -> dict:
        return self.job.results()[0]

    def __getattr__(self, name):
        return getattr(self.job, name)

    def __repr__(self) -> str:
        return f"RunJob({self.job!r})"


def _checked_executor(runs: list[tuple[TrainConfig, str]], executor_, folder: str,
                      params: dict) -> tuple[object, int, str]:
    """(executor, ranks per job, backend), after every run passed check_submission; nothing
    (not even the log folder) is created for a submission that is refused."""
    if executor_ is None:  # checked before the executor exists: it creates its log folder
        tasks = int(params.get("tasks_per_node", 1)) * int(params.get("nodes", 1))
        for cfg, out in runs:
            check_submission(cfg, out, tasks)
        executor_ = executor(folder, **params)
        return executor_, *_tasks(executor_)
    if params:
        executor_.update_parameters(**params)
    tasks, backend = _tasks(_for_mpi(executor_))
    for cfg, out in runs:
        check_submission(cfg, out, tasks)
    return executor_, tasks, backend


def submit(cfg: TrainConfig, out: str, executor_=None, *, folder: str = "runs/logs",
           metrics: str | None = None, hide_test: bool = False, **params) -> RunJob:
    """Submit one training run; ``executor_`` is a submitit executor of your own, else one is
    made by ``executor(folder, **params)``. A run file already at ``out`` is resumed, and
    refused here if the config would not continue it. ``hide_test``: the job's log shows no
    test score (its result and metrics keep them)."""
    ex, tasks, backend = _checked_executor([(cfg, out)], executor_, folder, params)
    return RunJob(ex.submit(TrainJob(dataclasses.asdict(cfg), str(out), metrics, tasks, backend,
                                     hide_test)))


def submit_array(cfgs: list[TrainConfig], outs: list[str], executor_=None, *,
                 folder: str = "runs/logs", metrics: list[str] | None = None,
                 hide_test: bool = False, **params) -> list[RunJob]:
    """A job array (Slurm) or a batch of local jobs: one run per config."""
    if len(cfgs) != len(outs):
        raise UserError(f"{len(cfgs)} configs but {len(outs)} output files")
    if len(set(map(str, outs))) != len(outs):
        raise UserError("two runs of the array share one output file")
    ex, tasks, backend = _checked_executor(list(zip(cfgs, outs)), executor_, folder, params)
    metrics = metrics or [None] * len(cfgs)
    jobs = [TrainJob(dataclasses.asdict(c), str(o), m, tasks, backend, hide_test)
            for c, o, m in zip(cfgs, outs, metrics)]
    return [RunJob(j) for j in ex.submit_array(jobs)]


def sbatch_text(ex, folder: str | Path) -> str:
    """The sbatch script submitit generates for a Slurm executor (for golden-file tests)."""
    inner = ex._executor if isinstance(ex, submitit.AutoExecutor) else ex
    return inner._make_submission_file_text("python -u -m submitit.core._submit " + str(folder),
                                            "uid")
