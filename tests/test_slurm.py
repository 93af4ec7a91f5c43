"""Against a real single-node Slurm (tests/slurm_cluster.sh): sbatch, submitit, preemption."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import submitit

from conftest import ROOT, final_theta, needs_fmnist, run_cli, venv_bin, wait_for_commits
from rbd_hpc.config import TrainConfig
from rbd_hpc.launch import executor, sbatch_text, submit
from rbd_hpc.runlog import RunFile

pytestmark = pytest.mark.timeout(600)
CLUSTER_SCRIPT = ROOT / "tests" / "slurm_cluster.sh"
GOLDEN = ROOT / "tests" / "golden" / "submitit_sbatch.txt"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if not shutil.which("slurmctld"):
        if os.environ.get("CI"):
            pytest.fail("slurm-wlm is not installed: .ci/setup should have installed it")
        pytest.skip("slurm-wlm is not installed (bash .ci/setup installs it)")
    d = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "RBD_SLURM_DIR": str(d)}
    proc = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    conf = proc.stdout.strip().split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], env=env, timeout=60)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def sbatch(script: str, env: dict, *args) -> str:
    e = {**os.environ, **env}
    proc = subprocess.run(["sbatch", "--parsable", *args, str(ROOT / "slurm" / script)],
                          capture_output=True, text=True, env=e, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_field(job: str, field: str) -> str | None:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    m = re.search(rf"\b{field}=(\S+)", out)
    return m.group(1) if m else None


def wait_gone(job: str, timeout: float = 400, release_requeued: bool = True) -> None:
    t0 = time.monotonic()
    held_since = None
    while time.monotonic() - t0 < timeout:
        state = job_field(job, "JobState")
        if state in (None, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return
        if release_requeued and state == "PENDING" and job_field(job, "Reason") == "BeginTime":
            # Slurm holds a requeued job back for ~2 minutes; release it sooner, but only once
            # the previous incarnation's processes have had time to exit
            held_since = held_since or time.monotonic()
            old_step_alive = subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job}\."],
                                            capture_output=True).returncode == 0
            if time.monotonic() - held_since > 3 and not old_step_alive:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"],
                               capture_output=True)
        else:
            held_since = None
        time.sleep(0.5)
    raise AssertionError(f"job {job} still {job_field(job, 'JobState')} after {timeout}s")


def tiny_env(idx_dir, out: Path, args: str) -> dict:
    return {"RBD_PRESET": "fc-fmnist", "RBD_DATA": str(idx_dir), "RBD_OUT": str(out),
            "RBD_ARGS": f"--val-size 64 --threads 1 --no-augment {args}"}


def reference_run(idx_dir, ref: Path, args: str) -> Path:
    """The uninterrupted run on 2 ranks (mpiexec, no Slurm) that a preempted job must equal."""
    proc = subprocess.run([venv_bin("mpiexec"), "-n", "2", venv_bin("rbd-hpc"), "train", "--preset",
                           "fc-fmnist", "--data-dir", str(idx_dir), "--val-size", "64", "--threads",
                           "1", *args.split(), "--out", str(ref), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return ref


@pytest.mark.parametrize("launcher", ["auto", "mpiexec"])
def test_sbatch_rbd_resnet_script_with_small_overrides(slurm, idx_dir, tmp_path, launcher):
    out = tmp_path / "run.h5"
    env = {**tiny_env(idx_dir, out, "--steps 20 --d 20"), "RBD_LAUNCHER": launcher}
    job = sbatch("rbd_resnet.sh", env, "--ntasks=2", f"--output={tmp_path}/%j.out")
    wait_gone(job)
    log = (tmp_path / f"{job}.out").read_text()
    assert "20 steps" in log and "over 2 rank(s)" in log, log
    assert ("srun --mpi=pmi2" if launcher == "auto" else "mpiexec -n 2") in log
    with RunFile(out) as run:
        assert run.committed == 20 and int(run.attrs["world_size"]) == 2
    proc = run_cli("replay", out, "--verify")
    assert proc.returncode == 0 and "verify: OK over 20 steps" in proc.stdout, proc.stdout


@needs_fmnist()
def test_submit_script_follows_the_preset_and_logs_epochs_while_running(slurm, tmp_path):
    # rbd_resnet.sh asked for Fashion-MNIST: the data, job name and log follow the preset, and
    # RBD_ARGS add to the script's options (--steps replaces its --epochs, --no-augment undoes
    # its --augment, its --threads stays)
    env = {**os.environ, "RBD_PRESET": "fc-fmnist", "RBD_OUT": str(tmp_path / "run.h5"),
           "RBD_HOME": str(ROOT), "RBD_ARGS": "--val-size 55000 --steps 1500 --d 20 --dist srht "
                                              "--no-augment"}
    env.pop("RBD_DATA", None)
    script = str(ROOT / "slurm" / "rbd_resnet.sh")
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "submit.sh"), script, "--ntasks=1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    log = tmp_path / f"rbd-fc-fmnist-{job}.out"
    t0 = time.monotonic()
    while not (log.exists() and "epoch 1/" in log.read_text()):
        assert time.monotonic() - t0 < 120, log.read_text() if log.exists() else "no log"
        time.sleep(0.2)
    assert job_field(job, "JobState") == "RUNNING"  # the log speaks while the job runs
    assert job_field(job, "JobName") == "rbd-fc-fmnist"
    wait_gone(job)
    text = log.read_text()
    assert "data /usr/share/datasets/fashion-mnist" in text, text
    command = next(line for line in text.splitlines() if " train --preset fc-fmnist" in line)
    assert "--epochs" not in command and command.index("--augment") < command.index("--no-augment")
    assert "--threads 1" in command and f"--metrics {tmp_path / 'run.jsonl'}" in command
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 10 and "ETA" in epochs[0] and "ms/step" in epochs[0], text
    assert len((tmp_path / "run.jsonl").read_text().splitlines()) == 10


def test_submit_script_refuses_a_request_the_partition_cannot_run(slurm, tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "submit.sh"),
                           str(ROOT / "slurm" / "rbd_resnet.sh"), "--ntasks=64"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    line, = proc.stderr.strip().splitlines()
    assert line.startswith("rbd-hpc: error: Slurm cannot run") and "--ntasks=64" in line
    assert "Requested node configuration is not available" in line and "CPUs" in line
    assert not list(tmp_path.iterdir())


def test_user_model_through_sbatch_and_submitit(slurm, tmp_path):
    """examples/own_model.py's factories, trained by the sbatch script and by submitit on two
    ranks each: the same config gives the same bits either way."""
    example = ROOT / "examples" / "own_model.py"
    fields = {"model": f"{example}:make_model", "dataset": f"{example}:make_data", "lr": 0.05,
              "d": 32, "dist": "srht", "steps": 60, "val_size": 512, "threads": 1}
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in fields.items())
    out = tmp_path / "sbatch.h5"
    job = sbatch("rbd_fmnist.sh", {"RBD_OUT": str(out), "RBD_ARGS": f"{args} --no-augment"},
                 "--ntasks=2", f"--output={tmp_path}/%j.out")
    cfg = TrainConfig.from_dict({**fields, "preset": "fc-fmnist"})
    sub = submit(cfg, str(tmp_path / "submitit.h5"), tasks_per_node=2,
                 folder=str(tmp_path / "logs"))
    assert sub.result()["steps_done"] == 60 and sub.result()["world_size"] == 2
    wait_gone(job)
    assert "60 steps" in (tmp_path / f"{job}.out").read_text()
    with RunFile(out) as run:
        assert run.config().model == fields["model"]
    assert np.array_equal(final_theta(out), final_theta(tmp_path / "submitit.h5"))


def test_sweep_d_job_array(slurm, idx_dir, tmp_path):
    env = {"RBD_DATA": str(idx_dir), "RBD_OUT_DIR": str(tmp_path), "RBD_D_VALUES": "8 16",
           "RBD_ARGS": "--method rbd --steps 6 --val-size 64 --threads 1"}
    job = sbatch("sweep_d.sh", env, "--array=0-1", f"--output={tmp_path}/%A_%a.out")
    for task in ("0", "1"):
        wait_gone(f"{job}_{task}")
    for d in (8, 16):
        with RunFile(tmp_path / f"d{d}.h5") as run:
            assert run.committed == 6 and int(run.attrs["n_coefficients"]) == d


def test_srun_without_pmi_is_refused(slurm, idx_dir):
    proc = subprocess.run(["srun", "-n", "2", "--mpi=none", venv_bin("rbd-hpc"), "train", "--data-dir",
                           str(idx_dir), "--val-size", "64", "--steps", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "MPI world size 1 does not match SLURM_NTASKS=2" in proc.stderr


@pytest.mark.parametrize("how", ["warning-signal", "scontrol-requeue"])
def test_interrupted_job_requeues_and_resumes_bitwise(slurm, idx_dir, tmp_path, how):
    # the preemption warning (finish the step, commit, requeue) or an admin's hard requeue
    # (the step is killed; the requeued job resumes from the last commit)
    args = "--steps 160 --d 200" + (" --compartments layer" if how == "scontrol-requeue" else "")
    ref = reference_run(idx_dir, tmp_path / "ref.h5", args)
    out = tmp_path / "run.h5"
    job = sbatch("rbd_resnet.sh", tiny_env(idx_dir, out, args), "--ntasks=2",
                 f"--output={tmp_path}/%j.out")
    wait_for_commits(out, 30)
    interrupt = (["scancel", "--batch", "--signal=USR1", job] if how == "warning-signal"
                 else ["scontrol", "requeue", job])
    subprocess.run(interrupt, check=True)
    wait_gone(job)
    log = (tmp_path / f"{job}.out").read_text()
    if how == "warning-signal":
        assert "preempted after step" in log and "requeueing job" in log, log
    assert "resuming" in log and "160 steps" in log, log
    assert np.array_equal(final_theta(out), final_theta(ref))


def test_submitit_launch_forms_one_mpi_world(slurm, idx_dir, tmp_path):
    cfg = TrainConfig.from_preset("fc-fmnist", steps=10, d=20, val_size=64, threads=1,
                                  data_dir=str(idx_dir))
    job = submit(cfg, str(tmp_path / "sub.h5"), tasks_per_node=2, folder=str(tmp_path / "logs"))
    results = job.results()
    assert [r["world_size"] for r in results] == [2, 2]
    assert job.result() == results[0]  # rank 0's summary: result() works for a multi-task job
    assert results[0]["steps_done"] == 10
    with RunFile(tmp_path / "sub.h5") as run:
        assert int(run.attrs["world_size"]) == 2


def test_submitit_preemption_checkpoints_and_resumes(slurm, idx_dir, tmp_path):
    cfg = TrainConfig.from_preset("fc-fmnist", steps=160, d=200, val_size=64, threads=1,
                                  data_dir=str(idx_dir))
    out = tmp_path / "ck.h5"
    own = submitit.AutoExecutor(folder=str(tmp_path / "logs"), cluster="slurm")  # the user's own
    own.update_parameters(tasks_per_node=2, timeout_min=10)
    job = submit(cfg, str(out), own)
    wait_for_commits(out, 30)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)  # submitit's preempt signal
    t0 = time.monotonic()
    while job_field(job.job_id, "Restarts") in (None, "0") and time.monotonic() - t0 < 120:
        time.sleep(0.5)
    wait_gone(job.job_id)
    results = job.results()
    assert results[0]["steps_done"] == 160 and not results[0]["preempted"]
    ref = tmp_path / "ref.h5"
    proc = subprocess.run([venv_bin("mpiexec"), "-n", "2", venv_bin("rbd-hpc"), "train",
                           "--config-json", cfg.to_json(), "--out", str(ref), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(final_theta(out), final_theta(ref))


def test_local_backend_runs_mpi_without_slurm(idx_dir, tmp_path):
    cfg = TrainConfig.from_preset("fc-fmnist", steps=6, d=20, val_size=64, threads=1,
                                  data_dir=str(idx_dir))
    job = submit(cfg, str(tmp_path / "loc.h5"), backend="local", tasks_per_node=2,
                 folder=str(tmp_path / "logs"), hide_test=True)
    result = job.result()
    assert result["world_size"] == 2 and result["step"] == 6
    assert "over 2 rank(s)" in result["stdout"]
    # hide_test reaches the ranks' log (val_acc, no test_acc); the result keeps the test score
    assert "val_acc" in result["stdout"] and "test_acc" not in result["stdout"]
    assert 0 <= result["test_acc"] <= 1


def test_generated_sbatch_text_matches_golden_file(slurm):
    text = sbatch_text(executor("/FOLDER", tasks_per_node=2, nodes=2, timeout_min=90,
                                slurm_partition="gpu", name="rbd-golden"), "/FOLDER")
    if os.environ.get("RBD_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_unknown_executor_parameter_is_rejected(slurm):
    from rbd_hpc.errors import UserError

    with pytest.raises(UserError, match=r"'gpus' need to be prefixed.* Valid: cpus_per_task, "
                                        r"gpus_per_node, .*slurm_partition"):
        executor("/tmp/unused", gpus=4)


def test_no_silent_local_fallback(monkeypatch, tmp_path):
    from rbd_hpc.errors import UserError

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no sinfo: no Slurm answers
    with pytest.raises(UserError, match="no Slurm answers here.*backend='local'"):
        executor(str(tmp_path / "logs"), slurm_partition="cpu")
