"""The HDF5 run file: replay, verify, resume, integrity, and SIGKILL at random moments."""
from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import assert_user_error, final_theta, run_cli, venv_bin, wait_for_commits
from rbd_hpc.config import TrainConfig
from rbd_hpc.errors import UserError
from rbd_hpc.runlog import RunFile, RunWriter, crc32, open_for_append, row_crc, run_attrs
from rbd_hpc.train import learning_rate

pytestmark = pytest.mark.timeout(600)
TINY = ["--val-size", "64", "--batch-size", "32", "--threads", "1", "--no-progress"]


def train(idx_dir, out, *extra, check=True):
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--out", out, *extra)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def rbd_run(idx_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "rbd.h5"
    train(idx_dir, out, "--steps", "45", "--d", "24", "--snapshot-every", "10",
          "--compartments", "layer", "--allocate", "sqrt")
    return out


def test_replay_reproduces_final_weights_bitwise(rbd_run, tmp_path):
    proc = run_cli("replay", rbd_run, "--verify", "--out", tmp_path / "w.npz")
    assert proc.returncode == 0, proc.stderr
    # replay takes the run's --threads 1 by default, so BLAS sums in the training order
    assert "verify: OK over 45 steps, 6 snapshots, max |diff| 0 (1 thread)" in proc.stdout
    with RunFile(rbd_run) as run:  # the sqrt rule, not the default by-size split (which is 23 / 1)
        assert [(c["name"], c["d"]) for c in run.layout["compartments"]] == [("fc1", 21), ("fc2", 3)]
    weights = np.load(tmp_path / "w.npz")
    assert sorted(weights.files) == ["__meta__", "fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    assert json.loads(str(weights["__meta__"]))["step"] == 45
    assert weights["fc1.weight"].shape == (128, 784)
    flat = np.concatenate([weights[n].reshape(-1) for n in ("fc1.weight", "fc1.bias", "fc2.weight",
                                                            "fc2.bias")])
    assert np.array_equal(flat, final_theta(rbd_run))


def test_replay_to_a_step_matches_the_snapshot_and_pt_output(rbd_run, tmp_path):
    import torch

    proc = run_cli("replay", rbd_run, "--step", "30", "--out", tmp_path / "w.pt")
    assert proc.returncode == 0, proc.stderr
    # --verify with --step checks the snapshots up to that step only
    proc = run_cli("replay", rbd_run, "--step", "30", "--verify")
    assert "verify: OK over 30 steps, 4 snapshots, max |diff| 0 (1 thread)" in proc.stdout, proc.stdout
    assert "step 40:" not in proc.stdout
    blob = torch.load(tmp_path / "w.pt")
    state = blob["state_dict"]
    assert (blob["step"], blob["buffers_step"], blob["format"]) == (30, None, "rbd_hpc checkpoint 1")
    with RunFile(rbd_run) as run:
        i = list(run.snapshot_steps()).index(30)
        assert np.array_equal(torch.cat([state[n].reshape(-1) for n in run.layout["names"]]).numpy(),
                              run.snapshot(i)[1])


def test_two_rank_run_replays_bitwise(idx_dir, tmp_path):
    out = tmp_path / "two.h5"
    proc = subprocess.run([venv_bin("mpiexec"), "-n", "2", venv_bin("rbd-hpc"), "train", "--data-dir",
                           str(idx_dir), *TINY, "--out", str(out), "--steps", "20", "--d", "16",
                           "--mode", "per-rank", "--snapshot-every", "7"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("replay", out, "--verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify: OK over 20 steps" in proc.stdout


def test_replay_threads_override_and_bad_value(rbd_run):
    # bitwise equality is promised only at the training thread count, so only the count is checked
    proc = run_cli("replay", rbd_run, "--verify", "--threads", "2")
    assert proc.stdout.strip().endswith("(2 threads)"), proc.stdout
    proc = run_cli("replay", rbd_run, "--threads", "0")
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "rbd-hpc: error: --threads 0 must be a positive number", proc.stderr


def test_inspect(rbd_run):
    proc = run_cli("inspect", rbd_run)
    assert proc.returncode == 0, proc.stderr
    assert "committed     45 steps" in proc.stdout
    assert "vs 407,080 for a full checkpoint" in proc.stdout
    assert "compartments  layer (sqrt): fc1 21/100,480, fc2 3/1,290\n" in proc.stdout
    assert "snapshots     6 at steps [0, 10, 20, 30, 40, 45]" in proc.stdout
    assert "test_acc" in proc.stdout


def test_inspect_epochs_lists_every_evaluation_and_the_best(rbd_run):
    proc = run_cli("inspect", rbd_run, "--epochs")
    assert proc.returncode == 0, proc.stderr
    head, *rows, summary = proc.stdout.strip().splitlines()
    assert head.split() == ["epoch", "step", "train_loss", "val_loss", "val_acc", "test_loss",
                            "test_acc", "ms_per_step", "sent_B", "recv_B", "calls"]
    with RunFile(rbd_run) as run:
        metrics = run.metrics()
    assert [float(r.split()[1]) for r in rows] == [18, 36, 45]  # two epochs and the partial third
    for row, m in zip(rows, metrics, strict=True):
        assert [float(v) for v in row.split()[2:7]] == [
            round(m[c], 4) for c in ("train_loss", "val_loss", "val_acc", "test_loss", "test_acc")]
        # rank 0's traffic per step, one process: 24 coefficients handed over in two exchanges
        # (gaussian directions go chunk by chunk: one chunk for fc1's 21, one for fc2's 3)
        assert [float(v) for v in row.split()[8:]] == [96, 0, 2]
    best = max(metrics, key=lambda m: m["val_acc"])
    tests = [m["test_acc"] for m in metrics]
    assert summary == (f"best val_acc {best['val_acc']:.4f} at epoch {best['epoch']:g} (test_acc "
                       f"there {best['test_acc']:.4f}); test_acc over the last 3: mean "
                       f"{sum(tests) / 3:.4f}, range {min(tests):.4f}–{max(tests):.4f}")


def test_inspect_hide_test_shows_validation_only(rbd_run):
    """For a run whose setting validation has not chosen: the same table and summary less
    every test score, the last ten epochs read on validation instead."""
    proc = run_cli("inspect", rbd_run, "--epochs", "--hide-test")
    assert proc.returncode == 0, proc.stderr
    head, *rows, summary = proc.stdout.strip().splitlines()
    assert head.split() == ["epoch", "step", "train_loss", "val_loss", "val_acc", "ms_per_step",
                            "sent_B", "recv_B", "calls"]
    with RunFile(rbd_run) as run:
        metrics = run.metrics()
    for row, m in zip(rows, metrics, strict=True):
        assert [float(v) for v in row.split()[:5]] == [
            round(m[c], 4) for c in ("epoch", "step", "train_loss", "val_loss", "val_acc")]
    best = max(metrics, key=lambda m: m["val_acc"])
    vals = [m["val_acc"] for m in metrics]
    assert summary == (f"best val_acc {best['val_acc']:.4f} at epoch {best['epoch']:g}; val_acc "
                       f"over the last 3: mean {sum(vals) / 3:.4f}, range {min(vals):.4f}–"
                       f"{max(vals):.4f}")
    described = run_cli("inspect", rbd_run, "--hide-test").stdout
    assert "final metrics " in described and "val_acc" in described
    assert "test_acc" not in described and "test_loss" not in described
    info = json.loads(run_cli("inspect", rbd_run, "--hide-test", "--json").stdout)
    assert info["final_metrics"] == {k: v for k, v in metrics[-1].items()
                                     if not k.startswith("test_")}


def copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def cut_and_resume(idx_dir, ref: Path, cut: Path, rows: int, snapshots: int) -> Path:
    """Copy ``ref`` to ``cut`` with only ``rows`` step rows and ``snapshots`` snapshots
    committed, as a killed writer leaves it, resume it, and require θ bitwise equal to ref's."""
    copy(ref, cut)
    with h5py.File(cut, "r+") as f:
        f["commit"][...] = [rows, snapshots]
    train(idx_dir, cut, "--resume", cut)
    assert np.array_equal(final_theta(cut), final_theta(ref))
    return cut


def test_a_changed_coefficient_is_caught(rbd_run, tmp_path):
    bad = copy(rbd_run, tmp_path / "bad.h5")
    with h5py.File(bad, "r+") as f:
        f["steps/coefficients"][17, 3] += 1e-3
    proc = run_cli("replay", bad, "--verify")
    assert proc.returncode == 2
    assert "coefficients of step 17 fail their checksum" in proc.stderr
    # a forger who also fixes the checksum is caught by the snapshots
    with h5py.File(bad, "r+") as f:
        s = f["steps"]
        s["crc32"][17] = row_crc(s["step"][17], s["lr"][17], s["loss"][17], s["coefficients"][17])
    proc = run_cli("replay", bad, "--verify")
    assert proc.returncode == 1
    assert "step 10: bitwise equal" in proc.stdout and "step 20: MISMATCH" in proc.stdout


def test_a_run_file_is_the_size_of_what_it_holds(tmp_path):
    """Rows committed a few at a time (as every 0.5 s in training) do not leave dead space."""
    path, d, rows = tmp_path / "grow.h5", 250, 3000
    layout = {"names": ["w"], "shapes": [[1000]], "offsets": [0, 1000], "compartments": []}
    attrs = run_attrs("{}", 0, 1, "shared", "rbd", "cpu", layout, {}, d, True)
    writer = RunWriter(path, attrs, np.zeros(1000, np.float32), d, 0, 0)
    coefficients = np.random.default_rng(0).standard_normal((rows, d)).astype(np.float32)
    for t in range(rows):
        writer.add_step(t, 0.1, 1.0, coefficients[t])
        if t % 20 == 19:
            writer.commit()
    writer.close()
    with RunFile(path) as run:
        assert run.committed == rows
        assert np.array_equal(run.steps(0, rows)["coefficients"], coefficients)
    held = rows * (4 * d + 8 + 8 + 4 + 4) + 4 * 1000  # coefficients, step, lr, loss, crc32; θ0
    assert path.stat().st_size < 1.1 * held + 100_000, (path.stat().st_size, held)


def test_a_changed_theta0_value_is_caught(rbd_run, tmp_path):
    bad = copy(rbd_run, tmp_path / "bad.h5")
    with h5py.File(bad, "r+") as f:
        f["theta0"][5] += 1e-4
    proc = run_cli("replay", bad, "--verify")
    assert proc.returncode == 2 and "theta0 fails its checksum" in proc.stderr
    with h5py.File(bad, "r+") as f:
        f["theta0"].attrs["crc32"] = crc32(f["theta0"][:])
    proc = run_cli("replay", bad, "--verify")
    assert proc.returncode == 1 and "step 0: MISMATCH" in proc.stdout


def test_bad_run_files(rbd_run, tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    for cmd in ("replay", "inspect"):
        assert_user_error(run_cli(cmd, text), "is not an HDF5 file")
    assert_user_error(run_cli("inspect", tmp_path / "absent.h5"), "does not exist")
    for cmd in ("replay", "inspect", "eval"):  # an empty path was named "." (Path("") is ".")
        assert_user_error(run_cli(cmd, ""), "run file '' is empty; give the path of a run file")
    checkpoint = tmp_path / "w.npz"
    assert run_cli("replay", rbd_run, "--step", "3", "--out", checkpoint).returncode == 0
    for cmd in ("eval", "inspect"):  # a checkpoint where a run file belongs: said so
        assert_user_error(run_cli(cmd, checkpoint), "w.npz is a checkpoint, not a run file",
                          "rbd_hpc.load")
    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes(rbd_run.read_bytes()[: rbd_run.stat().st_size // 3])
    proc = run_cli("replay", truncated, "--verify")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    newer = copy(rbd_run, tmp_path / "newer.h5")
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = 99
    assert_user_error(run_cli("inspect", newer), "format version 99")
    assert_user_error(run_cli("replay", rbd_run, "--step", "46"), "beyond the last committed step (45)")
    assert_user_error(run_cli("replay", rbd_run, "--step", "-1"), "--step -1 is negative; valid: 0..45")


def test_a_resume_does_not_shorten_a_run(rbd_run, idx_dir, tmp_path):
    """--steps below the committed count was taken ("resuming … at step 45/44") and did nothing."""
    shorter = copy(rbd_run, tmp_path / "shorter.h5")
    before = shorter.read_bytes()
    assert_user_error(train(idx_dir, shorter, "--resume", shorter, "--steps", "44", check=False),
                      "the run has 45 steps committed, more than the 44 this config runs",
                      "replay --step N")
    assert shorter.read_bytes() == before


def test_sgd_runs_are_not_replayable_but_resumable(idx_dir, tmp_path):
    out = tmp_path / "sgd.h5"
    train(idx_dir, out, "--method", "sgd", "--steps", "10")
    assert_user_error(run_cli("replay", out), "cannot be replayed")


def test_resume_with_a_different_config_is_refused(rbd_run, tmp_path):
    run = copy(rbd_run, tmp_path / "r.h5")
    proc = run_cli("train", "--resume", run, "--d", "30", "--lr", "0.1", "--no-progress")
    assert_user_error(proc, "config differs from the run file in d, lr")


def test_preempt_signal_commits_and_resume_is_bitwise(idx_dir, tmp_path):
    ref = tmp_path / "ref.h5"
    out = tmp_path / "pre.h5"
    cmd = [venv_bin("rbd-hpc"), "train", "--data-dir", str(idx_dir), *TINY, "--out", str(out),
           "--steps", "600", "--d", "100", "--method", "sgd", "--momentum", "0.9",
           "--snapshot-every", "25", "--lr", "0.25"]
    train(idx_dir, ref, "--steps", "600", "--d", "100", "--method", "sgd", "--momentum", "0.9",
          "--snapshot-every", "25", "--lr", "0.25")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_commits(out, 5)
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    assert "preempted after step" in stdout
    with RunFile(out) as run:
        assert 0 < run.committed < 600
        assert run.snapshot_steps()[-1] == run.committed  # the stop wrote a full snapshot
    train(idx_dir, out, "--resume", out)
    assert np.array_equal(final_theta(out), final_theta(ref))


EXACT_METRICS = ["epoch", "step", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc"]


def exact_metrics(rows) -> list[list[float]]:
    return [[r[k] for k in EXACT_METRICS] for r in rows]


def test_resume_before_the_last_row_rewrites_rows_and_metrics_once(idx_dir, tmp_path):
    # SGD cannot be replayed, so it resumes from its last snapshot (25), and a kill can leave
    # committed rows (to 33) and a metrics line past it; none may be kept twice
    args = ["--method", "sgd", "--momentum", "0.9", "--steps", "60", "--snapshot-every", "25",
            "--lr", "0.25"]
    ref, cut = tmp_path / "ref.h5", tmp_path / "cut.h5"
    train(idx_dir, ref, *args, "--metrics", tmp_path / "ref.jsonl")
    copy(ref, cut)
    with h5py.File(cut, "r+") as f:
        f["commit"][...] = [33, 2]  # rows 0..32, snapshots at 0 and 25; metrics at 18 and 36
    lines = (tmp_path / "ref.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "cut.jsonl").write_text("".join(lines[:2]) + lines[2][:25])  # torn by the kill
    train(idx_dir, cut, "--resume", cut, "--metrics", tmp_path / "cut.jsonl")
    with RunFile(ref) as a, RunFile(cut) as b:
        assert b.committed == 60 and b.n_snapshots == a.n_snapshots
        for name in ("step", "lr", "loss"):
            assert np.array_equal(a.steps()[name], b.steps()[name]), name
        assert np.array_equal(b.snapshot_steps(), a.snapshot_steps())
        assert exact_metrics(b.metrics()) == exact_metrics(a.metrics())  # 18, 36, 54, 60 once
    jsonl = [json.loads(line) for line in (tmp_path / "cut.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in lines]
    assert exact_metrics(jsonl) == exact_metrics(want)
    assert np.array_equal(final_theta(cut), final_theta(ref))


def test_rbd_momentum_replays_seeks_and_resumes_bitwise(idx_dir, tmp_path):
    import torch

    from rbd_hpc.replay import method_for, replay_to

    ref = tmp_path / "mom.h5"
    args = ["--steps", "45", "--d", "24", "--snapshot-every", "20", "--momentum", "0.9",
            "--lr", "0.05"]
    train(idx_dir, ref, *args)
    proc = run_cli("replay", ref, "--verify")
    assert "verify: OK over 45 steps, 4 snapshots, max |diff| 0 (1 thread)" in proc.stdout, proc.stdout
    assert ("fc-fmnist, seed 0, momentum 0.9 (velocity saved in snapshots)\n"
            in run_cli("inspect", ref).stdout)
    with RunFile(ref) as run:
        dim = run.theta0().size
        velocity_20 = run.snapshot(1)[3]
        assert velocity_20.shape == (dim,) and np.any(velocity_20 != 0)  # saved with θ
        # seeking from the step-20 snapshot (θ and velocity) lands where replay from θ0 does
        seek, full = method_for(run), method_for(run)
        theta_seek = replay_to(run, 33, method=seek)
        theta_full = replay_to(run, 33, method=full, start_from_theta0=True)
        assert np.array_equal(theta_seek, theta_full)
        assert np.array_equal(seek.state_vector(dim), full.state_vector(dim))
        # and the velocity is used: the same coefficients without it give other weights
        seek.reset_state()
        seek.load_state_vector(np.zeros(dim, dtype=np.float32), "cpu")
        theta_t = torch.from_numpy(run.snapshot(1)[1].copy())
        rows = run.steps(20, 21)
        seek.replay_step(theta_t, 20, float(rows["lr"][0]), torch.from_numpy(rows["coefficients"][0]))
        assert not np.array_equal(theta_t.numpy(), replay_to(run, 21, method=full))
    # a commit between snapshots: resume rebuilds θ and the velocity by replay, then continues
    # steps 0..32 and the snapshots at 0 and 20
    cut = cut_and_resume(idx_dir, ref, tmp_path / "cut.h5", 33, 2)
    with RunFile(ref) as a, RunFile(cut) as b:  # epoch 2 (steps 18..35) was cut at 33
        assert exact_metrics(b.metrics()) == exact_metrics(a.metrics())
    assert run_cli("replay", cut, "--verify").returncode == 0


def test_rbd_weight_decay_with_a_schedule_replays_and_resumes_bitwise(idx_dir, tmp_path):
    ref = tmp_path / "wd.h5"
    args = ["--steps", "40", "--d", "24", "--snapshot-every", "15", "--weight-decay", "0.5",
            "--lr", "0.2", "--schedule", "cosine"]
    train(idx_dir, ref, *args)
    proc = run_cli("replay", ref, "--verify")
    assert "verify: OK over 40 steps, 4 snapshots, max |diff| 0 (1 thread)" in proc.stdout, proc.stdout
    assert "fc-fmnist, seed 0, weight decay 0.5\n" in run_cli("inspect", ref).stdout
    plain = tmp_path / "plain.h5"
    train(idx_dir, plain, *args[:6], "--lr", "0.2", "--schedule", "cosine")
    with RunFile(ref) as run, RunFile(plain) as other:
        # the same logged coefficients for the first step; the decay is what separates θ
        assert np.array_equal(run.steps(0, 1)["coefficients"], other.steps(0, 1)["coefficients"])
        assert np.linalg.norm(final_theta(ref)) < 0.99 * np.linalg.norm(final_theta(plain))
    # steps 0..22 and the snapshots at 0 and 15
    cut_and_resume(idx_dir, ref, tmp_path / "cut.h5", 23, 2)


def test_the_cosine_floor_is_the_logged_rate_and_a_floored_run_replays_and_resumes_bitwise(
        idx_dir, tmp_path):
    total, lr, floor = 40, 0.3, 0.1
    ref = tmp_path / "floor.h5"
    args = ["--steps", str(total), "--d", "24", "--snapshot-every", "15", "--lr", str(lr),
            "--schedule", "cosine", "--lr-min", str(floor)]
    train(idx_dir, ref, *args)
    with RunFile(ref) as run:
        logged = run.steps(0, total)["lr"]
    expected = [floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t / total))
                for t in range(total)]
    assert logged.tolist() == expected  # float64, exactly the schedule
    assert logged[0] == lr and floor < logged[-1] < floor + 1e-3
    proc = run_cli("replay", ref, "--verify")
    assert "verify: OK over 40 steps, 4 snapshots, max |diff| 0 (1 thread)" in proc.stdout, proc.stdout
    # steps 0..22 and the snapshots at 0 and 15
    cut = cut_and_resume(idx_dir, ref, tmp_path / "cut.h5", 23, 2)
    # the floor changes the trajectory, so a resume may not change it
    assert_user_error(train(idx_dir, cut, "--resume", cut, "--lr-min", "0.05", check=False),
                      "config differs from the run file in lr_min")


def test_a_rate_multiplier_steps_its_compartment_at_the_multiplied_rate_and_replays_bitwise(
        idx_dir, tmp_path):
    """--lr-scale fc1=2 at rate η: after one step, fc1 is bitwise the run at rate 2η (a power of
    two scales every product exactly) and every other compartment the run at η; a multiplier
    of 1 is no multiplier. conv3 and fc1 are also the pair srht transforms together."""
    cnn = ["--model", "cnn", "--dist", "srht", "--compartments", "layer", "--allocate", "equal",
           "--d", "50", "--snapshot-every", "1"]
    one = {}
    for name, extra in [("eta", ["--lr", "0.25"]), ("two_eta", ["--lr", "0.5"]),
                        ("fc1x2", ["--lr", "0.25", "--lr-scale", "fc1=2"]),
                        ("ones", ["--lr", "0.25", "--lr-scale", "conv3=1,fc1=1"])]:
        train(idx_dir, tmp_path / f"{name}.h5", *cnn, "--steps", "1", *extra)
        one[name] = final_theta(tmp_path / f"{name}.h5")
    with RunFile(tmp_path / "fc1x2.h5") as run:
        spans = {c["name"]: slice(c["start"], c["stop"]) for c in run.layout["compartments"]}
        assert run.config().lr_scale == "fc1=2"
    assert list(spans) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    for name, span in spans.items():
        expected = one["two_eta" if name == "fc1" else "eta"][span]
        assert np.array_equal(one["fc1x2"][span], expected), name
    assert not np.array_equal(one["eta"][spans["fc1"]], one["two_eta"][spans["fc1"]])
    assert np.array_equal(one["ones"], one["eta"])
    # a longer run with momentum and a schedule replays and resumes bit for bit
    ref = tmp_path / "scaled.h5"
    args = [*cnn, "--steps", "30", "--snapshot-every", "10", "--lr", "0.2", "--momentum", "0.5",
            "--schedule", "cosine", "--lr-scale", "fc1=3,fc2=0.5"]
    train(idx_dir, ref, *args)
    proc = run_cli("replay", ref, "--verify")
    assert "verify: OK over 30 steps, 4 snapshots, max |diff| 0 (1 thread)" in proc.stdout, proc.stdout
    assert ("compartments  layer (equal): conv1 10/320, conv2 10/18,496, conv3 10/36,928, "
            "fc1 10/36,928 at 3η, fc2 10/650 at 0.5η\n") in run_cli("inspect", ref).stdout
    cut = copy(ref, tmp_path / "cut.h5")
    with h5py.File(cut, "r+") as f:
        f["commit"][...] = [17, 2]  # steps 0..16 and the snapshots at 0 and 10
    train(idx_dir, cut, "--resume", cut)
    assert np.array_equal(final_theta(cut), final_theta(ref))
    assert_user_error(train(idx_dir, cut, "--resume", cut, "--lr-scale", "fc1=2", check=False),
                      "config differs from the run file in lr_scale")


def test_a_cosine_schedule_without_a_floor_keeps_its_rates_bit_for_bit():
    """--lr-min 0 must leave every cosine run of earlier versions on its trajectory: their
    resume recomputes the rate, which was lr · 0.5 · (1 + cos(π t / T))."""
    cfg = TrainConfig.from_preset("cnn-fmnist", lr=0.25, schedule="cosine", epochs=100)
    total = 156200
    for t in range(0, total + 1, 7):
        assert learning_rate(cfg, t, total) == 0.25 * 0.5 * (1.0 + math.cos(math.pi * t / total))


def hold_open(path: Path, seconds: float) -> subprocess.Popen:
    """Another process reading ``path`` (HDF5's shared lock) for ``seconds``."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import h5py, time; f = h5py.File(%r, 'r', libver='latest', swmr=True); "
        "print('held', flush=True); time.sleep(%r)") % (str(path), seconds)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_the_writer_waits_for_a_reader_that_opened_its_fresh_file(rbd_run, tmp_path):
    """A reader polling for a new run file (test_sigkill's wait_for_commits, a user's inspect)
    can open it between its creation and the writer's own open: the writer waits for it."""
    path = copy(rbd_run, tmp_path / "fresh.h5")
    holder = hold_open(path, 1.0)
    t0 = time.monotonic()
    f = open_for_append(path)
    waited = time.monotonic() - t0
    f.close()
    holder.wait()
    assert 0.3 < waited < 5, waited
    holder = hold_open(path, 4.0)
    with pytest.raises(UserError, match=r"cannot write run file .*fresh\.h5: another process has held it "
                                        r"open for 0\.5 s; "):
        open_for_append(path, wait=0.5)
    holder.wait()


def test_sigkill_at_random_moments_then_resume_is_bitwise(idx_dir, tmp_path):
    args = ["--steps", "90", "--d", "120", "--snapshot-every", "20", "--compartments", "layer"]
    ref = tmp_path / "ref.h5"
    train(idx_dir, ref, *args)
    expected = final_theta(ref)
    rng = random.Random(1234)
    out = tmp_path / "killed.h5"
    cmd = [venv_bin("rbd-hpc"), "train", "--data-dir", str(idx_dir), *TINY, "--out", str(out), *args]
    kills = 0
    for attempt in range(12):
        out.unlink(missing_ok=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_commits(out, 1)
        time.sleep(rng.uniform(0.0, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        with RunFile(out) as run:  # the file opens and its committed rows are readable
            committed = run.committed
            assert 0 <= committed <= 90
            run.steps()
        assert run_cli("inspect", out).returncode == 0
        if attempt % 4 == 3:  # also kill a resume part-way, then resume again
            resume = subprocess.Popen([venv_bin("rbd-hpc"), "train", "--resume", str(out),
                                       "--no-progress"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(1.0, 3.0))
            resume.send_signal(signal.SIGKILL)
            resume.wait()
            assert run_cli("inspect", out).returncode == 0
        proc = run_cli("train", "--resume", out, "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert np.array_equal(final_theta(out), expected), f"attempt {attempt}, committed {committed}"
        assert run_cli("replay", out, "--verify").returncode == 0
    assert kills >= 10
