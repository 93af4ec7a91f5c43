"""The Python API and user code: a model and data set of the user's own (examples/), trained
under MPI, resumed after a kill, replayed, exported, loaded and scored; complete checkpoints
of a built-in ResNet-8; the errors a factory spec can cause."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rbd_hpc
from conftest import assert_user_error, final_theta, run_cli, venv_bin, wait_for_commits
from rbd_hpc.errors import UserError
from rbd_hpc.runlog import RunFile

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_model.py"
MODEL, DATA = f"{EXAMPLE}:make_model", f"{EXAMPLE}:make_data"


def example(*args, ranks=2, wait=True):
    cmd = [venv_bin("mpiexec"), "-n", str(ranks), sys.executable, str(EXAMPLE), *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_example_two_ranks_killed_resumed_replayed_exported_and_scored(tmp_path):
    # 10 epochs (1,120 steps, a few seconds): the kill must land before the run ends, and on a
    # fast idle CPU 2 epochs (224 steps) were over before the poll saw 120 commits
    whole = tmp_path / "whole.h5"
    out = example("--out", whole, "--epochs", "10").stdout
    assert out.count("rbd: 1120 steps") == 1, out  # rank 0 alone reports
    with RunFile(whole) as run:  # the run file names the factories, so others can rebuild them
        cfg = run.config()
        assert (cfg.model, cfg.dataset, int(run.attrs["world_size"])) == (MODEL, DATA, 2)

    killed = tmp_path / "killed.h5"
    proc = example("--out", killed, "--epochs", "10", wait=False)
    wait_for_commits(killed, 120)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with RunFile(killed) as run:
        assert 120 <= run.committed < 1120, run.committed
    example("--out", killed, "--epochs", "10", "--resume")
    assert np.array_equal(final_theta(killed), final_theta(whole))  # bitwise, with BatchNorm
    with RunFile(killed) as a, RunFile(whole) as b:  # the ranks' common BatchNorm statistics too
        assert np.array_equal(a.snapshot(a.n_snapshots - 1)[2], b.snapshot(b.n_snapshots - 1)[2])

    proc = run_cli("replay", killed, "--verify", "--out", tmp_path / "own.pt")
    assert proc.returncode == 0, proc.stderr
    assert "verify: OK over 1120 steps" in proc.stdout
    model = rbd_hpc.load(str(tmp_path / "own.pt"))  # rebuilt from the recorded factory
    assert isinstance(model[1], torch.nn.BatchNorm1d)
    assert np.array_equal(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy(),
                          final_theta(whole))

    proc = run_cli("eval", killed, "--json")
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout)
    assert scores["step"] == 1120 and scores["buffers_step"] == 1120
    assert scores["test_acc"] == scores["logged_test_acc"] and scores["test_acc"] > 0.4


def test_cli_trains_user_factories_and_eval_scores_a_replayed_step(tmp_path):
    out = tmp_path / "cli.h5"
    proc = run_cli("train", "--model", MODEL, "--data", DATA, "--lr", "0.05", "--d", "32",
                   "--dist", "srht", "--steps", "60", "--val-size", "512", "--snapshot-every", "25",
                   "--threads", "1", "--no-progress", "--out", out)
    assert proc.returncode == 0, proc.stderr
    scores = rbd_hpc.evaluate(str(out), step=40)
    # θ is replayed to step 40; BatchNorm statistics come from the snapshot before it (step 25)
    assert (scores["step"], scores["buffers_step"]) == (40, 25)
    assert "logged_test_acc" not in scores  # no epoch ended at step 40
    model = rbd_hpc.load(str(out), step=40)
    with RunFile(out) as run:
        snap = dict(zip(map(int, run.snapshot_steps()), range(run.n_snapshots)))
        _, _, buffers, _ = run.snapshot(snap[25])
    assert np.array_equal(model[1].running_mean.numpy(), buffers[:64].astype(np.float32))


def test_fit_hide_test_prints_no_test_score_and_returns_it(tmp_path, idx_dir, capsys):
    summary = rbd_hpc.fit("fc", "fmnist", data_dir=str(idx_dir), val_size=64, d=20, steps=18,
                          threads=1, hide_test=True)
    printed = capsys.readouterr().out
    assert f"val_acc {summary['val_acc']:.4f}," in printed and "test" not in printed
    assert 0 <= summary["test_acc"] <= 1


def test_scorer_scores_the_run_weights_and_any_theta_of_its_layout(tmp_path, idx_dir):
    run = str(tmp_path / "fc.h5")
    rbd_hpc.fit("fc", "fmnist", data_dir=str(idx_dir), val_size=64, d=20, steps=18, threads=1,
                out=run)
    s = rbd_hpc.scorer(run)
    scores = rbd_hpc.evaluate(run)
    assert s.weights.step == 18 and np.array_equal(s.weights.theta, final_theta(run))
    with RunFile(run) as opened:  # a run file open already: read in the same pass
        assert rbd_hpc.scorer(opened).score("val") == (scores["val_loss"], scores["val_acc"])
    assert s.score("val") == (scores["val_loss"], scores["val_acc"])
    assert s.score("test") == (scores["test_loss"], scores["test_acc"])
    assert s.score("val", s.weights.theta.astype(np.float64)) == s.score("val")
    # θ = 0: every logit is 0, so the loss is ln 10 and argmax picks class 0
    loss, acc = s.score("val", np.zeros_like(s.weights.theta))
    assert loss == pytest.approx(np.log(10), rel=1e-6)
    assert acc == np.mean(s.data.val.y == 0) and len(s.data.val.y) == 64
    assert s.score("val") == (scores["val_loss"], scores["val_acc"])  # the run's θ again
    with pytest.raises(UserError, match=re.escape(
            "split 'valid' is not valid; choose one of: train, val, test")):
        s.score("valid")
    n = len(s.weights.theta)
    for theta, shape in [(np.zeros(5), "(5,)"), (np.zeros((1, n)), f"(1, {n})")]:
        with pytest.raises(UserError, match=re.escape(
                f"θ of shape {shape} does not fit {run}, whose network has {n} parameters")):
            s.score("val", theta)
    with pytest.raises(UserError, match="θ of type str is not valid; give a vector of floats"):
        s.score("val", "x")
    bn = str(tmp_path / "bn.h5")
    rbd_hpc.fit(MODEL, DATA, {"lr": 0.05, "steps": 2, "d": 8, "val_size": 64}, out=bn)
    with pytest.raises(UserError, match="has buffers \\(BatchNorm\\), which another θ"):
        rbd_hpc.scorer(bn).score("val", np.zeros(len(final_theta(bn))))
    assert rbd_hpc.scorer(bn).score("val") == tuple(
        rbd_hpc.evaluate(bn)[k] for k in ("val_loss", "val_acc"))


def test_fit_refuses_a_factory_nobody_else_can_import(tmp_path):
    with pytest.raises(UserError, match="has no importable name"):
        rbd_hpc.fit(lambda: torch.nn.Linear(16, 4), DATA, lr=0.1, steps=1,
                    out=str(tmp_path / "x.h5"))
    assert not (tmp_path / "x.h5").exists()


def test_api_arguments_of_the_wrong_kind_are_user_errors(tmp_path):
    """Were a TypeError each (an int config; a str step compared with the committed count)."""
    with pytest.raises(UserError, match="fit\\(\\) config 42 is not valid; give a TrainConfig"):
        rbd_hpc.fit(MODEL, DATA, 42, out=str(tmp_path / "x.h5"))
    assert not (tmp_path / "x.h5").exists()
    run = tmp_path / "r.h5"
    rbd_hpc.fit(MODEL, DATA, {"lr": 0.05, "steps": 2, "d": 8, "val_size": 64}, out=str(run))
    for kwargs, message in [({"step": "x"}, "--step 'x' is not valid; give a whole number"),
                            ({"step": True}, "--step True is not valid"),
                            ({"step": -1}, "--step -1 is negative; valid: 0..2"),
                            ({"batch": -1}, "--eval-batch-size -1 must be a positive number")]:
        with pytest.raises(UserError, match=re.escape(message)):
            rbd_hpc.evaluate(str(run), **kwargs)
    assert rbd_hpc.evaluate(str(run), step=np.int64(1))["step"] == 1
    with pytest.raises(UserError, match="--step 2.0 is not valid"):
        rbd_hpc.load(str(run), step=2.0)


@pytest.mark.parametrize("model, data, fragments", [
    (f"{EXAMPLE}:nope", DATA, ("has no attribute 'nope'",)),
    ("no_such_module:f", DATA, ("no module 'no_such_module'",)),
    ("missing/file.py:f", DATA, ("no file missing/file.py",)),
    (f"{EXAMPLE}:make_data", DATA, ("returned tuple, not a torch.nn.Module",)),
    (MODEL, f"{EXAMPLE}:make_model", ("must return (train, test)",)),
    ("cnn", DATA, ("model cnn needs image samples (C, H, W)", "(16,)")),
    (f"{EXAMPLE}:CLASSES", DATA, ("is not callable",)),
    ("torch.nn:Identity", DATA, ("the model has no parameters",)),
    ("foo", DATA, ("--model 'foo' is not valid", "MODULE:NAME")),
])
def test_bad_factories_get_one_line(tmp_path, model, data, fragments):
    proc = run_cli("train", "--model", model, "--data", data, "--lr", "0.1", "--steps", "2",
                   "--val-size", "64", "--out", tmp_path / "x.h5", "--no-progress")
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "x.h5").exists()


def test_user_model_needs_an_lr_and_a_fitting_output(tmp_path):
    proc = run_cli("train", "--model", MODEL, "--data", DATA, "--steps", "2", "--out",
                   tmp_path / "x.h5")
    assert_user_error(proc, "give --lr")
    mod = tmp_path / "three.py"  # scores 3 classes, but the data has 4
    mod.write_text("import torch\ndef make():\n    return torch.nn.Linear(16, 3)\n")
    proc = run_cli("train", "--model", f"{mod}:make", "--data", DATA, "--lr", "0.1", "--steps",
                   "2", "--val-size", "64", "--out", tmp_path / "x.h5")
    assert_user_error(proc, "label 3 but the model scores 3 classes")


def test_resnet8_checkpoint_loads_strictly_and_eval_reproduces_the_logged_accuracy(cifar_dir,
                                                                                  tmp_path):
    out = tmp_path / "r8.h5"
    proc = run_cli("train", "--preset", "resnet8-cifar10", "--data-dir", cifar_dir, "--d", "40",
                   "--dist", "srht", "--epochs", "1", "--batch-size", "20", "--val-size", "40",
                   "--threads", "1", "--no-progress", "--out", out)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("replay", out, "--out", tmp_path / "r8.pt")
    assert proc.returncode == 0, proc.stderr
    from rbd_hpc.models import build_model
    from rbd_hpc.seeds import torch_generator
    fresh = build_model("resnet8", (3, 32, 32), torch_generator(1))
    blob = torch.load(tmp_path / "r8.pt", weights_only=True)
    assert set(blob["state_dict"]) == set(fresh.state_dict())  # parameters and BN buffers
    fresh.load_state_dict(blob["state_dict"], strict=True)
    assert fresh.bn.num_batches_tracked.item() == 8  # 160 training samples / batch 20
    loaded = rbd_hpc.load(str(tmp_path / "r8.pt"))
    for (k, a), b in zip(loaded.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    proc = run_cli("eval", out, "--data-dir", cifar_dir, "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    with RunFile(out) as run:
        logged = run.metrics()[-1]["test_acc"]
    assert f"test_acc {logged:.4f}" in proc.stdout and f"logged test_acc {logged:.4f}" in proc.stdout


def test_careless_outputs_are_refused_before_any_work(tmp_path):
    run = tmp_path / "r.h5"
    proc = run_cli("train", "--model", MODEL, "--data", DATA, "--lr", "0.05", "--steps", "5",
                   "--d", "8", "--dist", "srht", "--val-size", "64", "--no-progress", "--out", run)
    assert proc.returncode == 0, proc.stderr
    assert_user_error(run_cli("replay", run, "--out", ""), "--out '' is empty")
    assert_user_error(run_cli("replay", run, "--out", tmp_path / "no" / "w.pt"),
                      "output directory", "does not exist")
    assert_user_error(run_cli("replay", run, "--out", tmp_path / "w.h5"), "use a .pt or .npz")
    first = tmp_path / "w.pt"
    assert run_cli("replay", run, "--out", first, "--no-progress").returncode == 0
    before = first.read_bytes()
    assert_user_error(run_cli("replay", run, "--out", first), "already exists", "--overwrite")
    assert first.read_bytes() == before  # the same output twice loses nothing
    assert run_cli("replay", run, "--out", first, "--overwrite", "--no-progress").returncode == 0
    assert not list(tmp_path.glob("*.part*"))
    assert_user_error(run_cli("data", "mnist", "--dir", ""), "--dir '' is empty")
    assert_user_error(run_cli("train", "--tensorboard", "", "--steps", "1", "--out",
                              tmp_path / "t.h5"), "--tensorboard '' is empty")
    assert not (tmp_path / "t.h5").exists()
