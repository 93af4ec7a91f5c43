"""SVRG-corrected projections (--svrg-every): the anchor gradient, rank shares, replay, resume,
MPI."""
from __future__ import annotations

import copy
import json
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import assert_user_error, final_theta, run_cli, synthetic_images, venv_bin
from rbd_hpc.comm import SingleProcess
from rbd_hpc.config import TrainConfig
from rbd_hpc.data import Split, to_tensor
from rbd_hpc.models import FlatParameters, build_model
from rbd_hpc.runlog import RunFile
from rbd_hpc.svrg import Anchor, anchor_share, anchor_step
from rbd_hpc.train import train as train_in_process
from test_mpi import DRIVER, coefficients, mpiexec, train_mpi
from test_runfile import copy as copy_file
from test_runfile import train

pytestmark = pytest.mark.timeout(600)


def split(n: int, seed: int) -> Split:
    x, y = synthetic_images(n, 28, 1, seed)
    return Split(x, y)


def batch_gradient(model, flat, x, y, reduction="mean") -> torch.Tensor:
    flat.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y, reduction=reduction).backward()
    return flat.gradient()


@pytest.fixture()
def fc():
    torch.manual_seed(0)
    model = build_model("fc", (1, 28, 28), torch.Generator().manual_seed(3))
    return model, FlatParameters(model)


def test_anchor_mu_is_the_training_set_gradient(fc):
    model, flat = fc
    data = split(2300, 5)  # 18 pass batches of 128, the last one short
    anchor = Anchor(model, "cpu")
    anchor.refresh(flat.theta.detach(), data, (0, 2300), 1.0 / 2300)
    ref = copy.deepcopy(model).double()
    ref_flat = FlatParameters(ref)
    want = batch_gradient(ref, ref_flat, to_tensor(data.x).double(), torch.from_numpy(data.y))
    assert anchor.mu.dtype == torch.float32
    np.testing.assert_allclose(anchor.mu.numpy(), want.numpy(), rtol=1e-4, atol=1e-7)
    assert float(anchor.mu.norm()) > 1e-3


def test_the_correction_is_mu_at_the_anchor_and_unbiased_away_from_it(fc):
    model, flat = fc
    data = split(320, 6)
    anchor = Anchor(model, "cpu")
    anchor.refresh(flat.theta.detach(), data, (0, 320), 1.0 / 320)
    x, y = to_tensor(data.x[:32]), torch.from_numpy(data.y[:32])
    # at θ = θ̃ the two batch gradients cancel bit for bit: the step projects μ̃ itself
    assert torch.equal(anchor.correct(batch_gradient(model, flat, x, y), x, y), anchor.mu)
    with torch.no_grad():
        flat.theta.add_(0.05 * torch.randn(flat.dim, generator=torch.Generator().manual_seed(1)))
    # away from θ̃, averaged over the ten batches that make up the set: the full gradient at θ
    mean = torch.zeros(flat.dim, dtype=torch.float64)
    plain = []
    for lo in range(0, 320, 32):
        x, y = to_tensor(data.x[lo:lo + 32]), torch.from_numpy(data.y[lo:lo + 32])
        g = batch_gradient(model, flat, x, y)
        corrected = anchor.correct(g, x, y)
        mean += corrected.double() / 10
        plain.append(float((g - corrected).norm()))
    full = batch_gradient(model, flat, to_tensor(data.x), torch.from_numpy(data.y))
    np.testing.assert_allclose(mean.numpy(), full.double().numpy(), rtol=1e-3, atol=2e-6)
    assert min(plain) > 1e-3  # the correction changed every batch's gradient


def test_an_interrupted_pass_leaves_no_anchor_and_a_later_one_is_whole(fc):
    model, flat = fc
    data = split(2300, 5)
    anchor = Anchor(model, "cpu")
    asked = []
    assert not anchor.refresh(flat.theta.detach(), data, (0, 2300), 1.0 / 2300,
                              interrupted=lambda: asked.append(1) or len(asked) > 1)
    assert len(asked) == 2 and anchor.mu is None  # asked before each batch; stopped at the second
    assert anchor.refresh(flat.theta.detach(), data, (0, 2300), 1.0 / 2300,
                          interrupted=lambda: False)
    whole = Anchor(model, "cpu")
    whole.refresh(flat.theta.detach(), data, (0, 2300), 1.0 / 2300)
    assert torch.equal(anchor.mu, whole.mu)


def test_rank_shares_partition_the_set_and_average_to_the_mean():
    assert [anchor_share(10, r, 3, True) for r in range(3)] == [((0, 3), 0.3), ((3, 6), 0.3),
                                                           ((6, 10), 0.3)]
    assert anchor_share(10, 1, 3, False) == ((0, 10), 0.1)  # per-rank mode: the whole set
    values = np.arange(10.0) ** 2
    means = [scale * values[lo:hi].sum() for (lo, hi), scale in
             (anchor_share(10, r, 3, True) for r in range(3))]
    assert np.mean(means) == pytest.approx(values.mean(), rel=1e-12)
    assert [anchor_step(s, 10) for s in (0, 9, 10, 23)] == [0, 0, 10, 20]


SVRG = ["--steps", "40", "--d", "24", "--snapshot-every", "15", "--lr", "0.2", "--svrg-every", "10"]


def test_svrg_run_replays_resumes_inside_a_period_and_changes_the_steps(idx_dir, tmp_path):
    ref = tmp_path / "svrg.h5"
    train(idx_dir, ref, *SVRG)
    proc = run_cli("replay", ref, "--verify")
    assert "verify: OK over 40 steps, 4 snapshots, max |diff| 0 (1 thread)" in proc.stdout, proc.stdout
    assert "svrg every 10 steps" in run_cli("inspect", ref).stdout
    plain = tmp_path / "plain.h5"
    train(idx_dir, plain, *SVRG[:-2])
    with RunFile(ref) as run, RunFile(plain) as other:
        a, b = run.steps(0, 40)["coefficients"], other.steps(0, 40)["coefficients"]
    assert not np.allclose(a[0], b[0], rtol=0.1)  # step 0 projects μ̃, not the batch gradient
    for cut_at in (23, 20):  # inside a period (θ̃ replayed from the file), and at an anchor
        cut = copy_file(ref, tmp_path / f"cut{cut_at}.h5")
        with h5py.File(cut, "r+") as f:
            f["commit"][...] = [cut_at, 2]  # the steps before cut_at and the snapshots 0 and 15
        train(idx_dir, cut, "--resume", cut)
        assert np.array_equal(final_theta(cut), final_theta(ref)), cut_at


def test_anchor_passes_are_timed_apart_from_the_steps(idx_dir, tmp_path):
    """An anchor pass (a pass over the training set) is no step: it was timed as part of the
    step after it, and the ETA spread it over every step left, so a resume whose first window
    held one pass showed 11 h for a 2 h remainder. Now each pass is reported on its own."""
    out, metrics = tmp_path / "svrg.h5", tmp_path / "svrg.jsonl"
    proc = train(idx_dir, out, *SVRG, "--metrics", metrics)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    # 18 steps an epoch, passes before steps 0, 10, 20 and 30: none in the last 4 steps
    assert [r["step"] for r in rows] == [18, 36, 40]
    assert [r.get("ms_anchor_pass", 0) > 0 for r in rows] == [True, True, False]
    epochs = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert [" ms/step + anchor passes of " in line for line in epochs] == [True, True, False]
    plain, plain_metrics = tmp_path / "plain.h5", tmp_path / "plain.jsonl"
    proc = train(idx_dir, plain, *SVRG[:-2], "--metrics", plain_metrics)
    assert "ms_anchor_pass" not in plain_metrics.read_text() and "anchor passes" not in proc.stdout
    # a resume inside a period makes its first pass before the recorder's clock starts; it is
    # counted all the same (at step 31 it is the last period's only pass: none in the loop)
    cut, cut_metrics = copy_file(out, tmp_path / "cut.h5"), tmp_path / "cut.jsonl"
    with h5py.File(cut, "r+") as f:
        f["commit"][...] = [31, 2]
    proc = train(idx_dir, cut, "--resume", cut, "--metrics", cut_metrics)
    rows = [json.loads(line) for line in cut_metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [36, 40]
    assert [r.get("ms_anchor_pass", 0) > 0 for r in rows] == [True, False]
    assert np.array_equal(final_theta(cut), final_theta(out))


@pytest.mark.parametrize("question,stop_at,snapshots", [
    (18, 10, [0, 10]),      # the stop writes θ at the anchor step
    (48, 30, [0, 15, 30]),  # one was written after step 29 already: not written twice
])
def test_a_stop_during_the_anchor_pass_commits_the_anchor_step_and_resumes_bitwise(
        question, stop_at, snapshots, idx_dir, tmp_path):
    ref = tmp_path / "ref.h5"
    train(idx_dir, ref, *SVRG)
    with RunFile(ref) as run:
        cfg = TrainConfig.from_json(run.config_json)
    # five pass batches (576 training samples): asked before each of them and after each step,
    # so the 18th question is the third of the pass at step 10 (16–20), the 48th of that at 30
    asked = []
    out = tmp_path / "stopped.h5"
    summary = train_in_process(cfg, SingleProcess(), out=str(out), progress=False,
                               should_stop=lambda: asked.append(1) or len(asked) >= question)
    assert summary["preempted"] and summary["steps_done"] == stop_at  # that step never taken
    with RunFile(out) as run:
        assert run.committed == stop_at
        assert list(run.snapshot_steps()) == snapshots
    train(idx_dir, out, "--resume", out)
    assert np.array_equal(final_theta(out), final_theta(ref))
    # stopped in the pass that a resume inside a period makes first: nothing is taken or lost
    cut = copy_file(ref, tmp_path / "cut.h5")
    with h5py.File(cut, "r+") as f:
        f["commit"][...] = [23, 2]
    summary = train_in_process(cfg, SingleProcess(), out=str(cut), progress=False, resume=True,
                               should_stop=lambda: True)
    assert summary["preempted"] and summary["steps_done"] == 23
    train(idx_dir, cut, "--resume", cut)
    assert np.array_equal(final_theta(cut), final_theta(ref))


def test_svrg_over_two_ranks_matches_one(idx_dir, tmp_path):
    args = ["--steps", "12", "--svrg-every", "5", "--lr", "0.2"]
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    train_mpi(1, one, idx_dir, *args)
    last = train_mpi(2, two, idx_dir, *args, "--check-every", "1")
    assert last["bytes_per_step"] == 2 * 4 * 20  # still d floats per step (and rank 0's broadcast)
    # each rank's μ̃ covers half the set, scaled so that their mean is the full gradient
    np.testing.assert_allclose(coefficients(two), coefficients(one), rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(final_theta(two), final_theta(one), rtol=0, atol=1e-5)
    per_rank = tmp_path / "pr.h5"
    train_mpi(2, per_rank, idx_dir, *args, "--mode", "per-rank", "--d", "10", "--check-every", "1")
    np.testing.assert_allclose(final_theta(per_rank), final_theta(one), rtol=0, atol=1e-5)


def test_a_stop_one_rank_sees_in_its_anchor_pass_stops_every_rank_there(idx_dir, tmp_path):
    ref, out = tmp_path / "ref.h5", tmp_path / "stop.h5"
    train_mpi(2, ref, idx_dir, *SVRG)
    proc = mpiexec(2, sys.executable, DRIVER, "svrg_stop", ref, out, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "preempted True after 10" in proc.stdout  # rank 0 finished its pass, then stopped
    with RunFile(out) as run:
        assert run.committed == 10 and list(run.snapshot_steps()) == [0, 10]
    proc = mpiexec(2, venv_bin("rbd-hpc"), "train", "--resume", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(final_theta(out), final_theta(ref))


@pytest.mark.parametrize("args,fragments", [
    (["--svrg-every", "-1"], ["--svrg-every -1 must be a number of steps ≥ 1 (0: off)"]),
    (["--svrg-every", "5", "--method", "sgd"],
     ["--svrg-every corrects the gradient that rbd and fpd project, not --method sgd"]),
    (["--svrg-every", "5", "--augment"], ["--svrg-every with --augment", "biased"]),
])
def test_bad_svrg_arguments(args, fragments, idx_dir):
    assert_user_error(run_cli("train", "--data-dir", idx_dir, "--val-size", "64", "--steps", "1",
                              *args), *fragments)


def test_svrg_refuses_batchnorm_models(cifar_dir):
    proc = run_cli("train", "--preset", "resnet8-cifar10", "--data-dir", cifar_dir, "--val-size",
                   "16", "--steps", "1", "--svrg-every", "5")
    assert_user_error(proc, "--svrg-every needs a model without BatchNorm (fc or cnn), not resnet8")
