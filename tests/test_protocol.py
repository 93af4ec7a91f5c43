"""--protocol paper: the paper's Table 1 settings, NES and RigL as published, deviations listed."""
import math

import numpy as np
import pytest
import torch

from conftest import FMNIST_DIR, needs_fmnist, run_cli
from rbd_hpc.bases import Basis, BasisConfig
from rbd_hpc.comm import SingleProcess
from rbd_hpc.compartments import build_compartments
from rbd_hpc.config import TrainConfig
from rbd_hpc.data import epoch_order
from rbd_hpc.errors import UserError
from rbd_hpc.methods import NES, SparseTraining
from rbd_hpc.methods.build import build_method
from rbd_hpc.models import FlatParameters, build_model
from rbd_hpc.runlog import RunFile
from rbd_hpc.train import loss_probe, set_up, step_batch


def paper(preset="fc-fmnist", **fields) -> TrainConfig:
    return TrainConfig.from_preset(preset, protocol="paper", **fields)


def test_paper_protocol_sets_every_official_setting():
    cfg = paper(method="rbd")
    assert (cfg.epochs, cfg.batch_size, cfg.val_size, cfg.augment) == (100, 32, 10000, True)
    assert (cfg.dist, cfg.normalize, cfg.compartments, cfg.antithetic) == (
        "gaussian", "expected", "network", False)
    assert (cfg.schedule, cfg.momentum, cfg.weight_decay, cfg.svrg_every) == ("constant", 0, 0, 0)
    assert cfg.lr == 2**-6 * 32 and cfg.d == 250  # the official FC-FMNIST rate and dimension
    assert paper(method="sgd").lr == 2**-7 * 32
    assert paper("cnn-fmnist", method="rbd").lr == 2**-8 * 32
    nes = paper(method="nes")
    assert (nes.nes, nes.sigma) == ("paper", 0.01)  # the official noise_std
    assert paper(method="rigl").mask_update == "published"
    assert cfg.deviations() == [] and nes.deviations() == []


def test_custom_protocol_keeps_rbd_hpc_defaults_and_lists_no_deviation():
    cfg = TrainConfig.from_preset("fc-fmnist", method="nes")
    assert (cfg.protocol, cfg.val_size, cfg.augment, cfg.nes, cfg.sigma) == (
        "custom", 5000, False, "same-batch", 0.05)
    assert cfg.deviations() == []


def test_every_deviation_from_the_paper_is_listed():
    cfg = paper(method="rbd", dist="srht", lr=1.0, schedule="cosine", lr_min=0.1, steps=40,
                val_size=5000)
    assert cfg.deviations() == [
        "--steps 40 (paper: 100 epochs)", "--val-size 5000 (paper: 10000)",
        "--schedule cosine (paper: constant)", "--lr-min 0.1 (paper: 0)",
        "--dist srht (paper: gaussian)",
        "--lr 1 (paper: 0.5)"]
    assert paper(method="rbd", compartments="layer", lr_scale="fc1=3").deviations() == [
        "--compartments layer (paper: network)", "--lr-scale fc1=3 (paper: one rate for the network)"]
    assert paper(method="nes", nes="same-batch").deviations() == [
        "--nes same-batch (paper: paper)"]
    # how d is split over compartments, where it is split and not set per compartment
    assert paper(method="rbd", compartments="layer", allocate="equal").deviations() == [
        "--compartments layer (paper: network)", "--allocate equal (paper: one compartment)"]
    assert paper(method="rbd", compartments="layer", allocate="equal",
                 d_per_compartment=50).deviations()[-1] == (
        "--d-per-compartment 50 (paper: one d for the network)")
    # what a method does not read is no deviation: SGD has no directions
    assert paper(method="sgd", dist="srht").deviations() == []


def test_paper_protocol_refuses_a_model_of_the_users_own():
    with pytest.raises(UserError, match="--protocol paper is the paper's protocol"):
        TrainConfig.from_dict({"protocol": "paper", "model": "mymod:make", "lr": 0.1})


@needs_fmnist()
def test_paper_protocol_split_and_nes_budget_on_real_fashion_mnist():
    proc = run_cli("train", "--preset", "fc-fmnist", "--protocol", "paper", "--method", "nes",
                   "--dry-run")
    assert proc.returncode == 0, proc.stderr
    # the official split (50,000 / 10,000) and the official NES budget: 100 epochs of images
    # over all 250 offspring of batch 32 is ⌈100 · 1562 / 250⌉ = 625 updates
    assert "50000/10000/10000 train/val/test samples" in proc.stdout, proc.stdout
    assert "625 steps (6.248 per epoch)" in proc.stdout, proc.stdout


@needs_fmnist()
def test_paper_protocol_augments_and_nes_offspring_take_their_own_batches():
    cfg = paper(method="nes", d=4, steps=3, threads=1, data_dir=str(FMNIST_DIR))
    s = set_up(cfg, SingleProcess())
    assert s.stream.augment and s.stream.batches_per_step == 4
    x0, _ = s.stream.batch(0, 0)
    plain = s.data.train.x[epoch_order(cfg.seed, 0, len(s.data.train.y))[:32]] / 255.0
    assert x0.dtype == np.float32 and x0.shape == plain.shape
    assert np.abs(x0 - plain).max() > 0.1  # shifted and brightened, not the stored images
    # step 2, offspring 3 is the 2·4 + 3 = 11th batch of epoch 0
    x, y = step_batch(s, 2, 3)
    ex, ey = s.stream.batch(0, 11)
    assert torch.equal(y, torch.from_numpy(ey)) and torch.equal(x, s.data.inputs.tensor(ex))
    loss_at = loss_probe(s, 2, *step_batch(s, 2))
    with torch.no_grad():
        direct = [float(s.loss_fn(s.model(step_batch(s, 2, i)[0]), step_batch(s, 2, i)[1]))
                  for i in range(4)]
    assert [loss_at(i) for i in range(4)] == direct
    assert len(set(direct)) == 4  # four batches, four losses


def test_paper_directions_are_normalised_by_the_whole_network():
    """Gaussian φ = ε/√D with D the network's size: E‖φ‖² = 1 and entries of variance 1/D."""
    cfg = paper(method="rbd")
    flat = FlatParameters(build_model("fc", (1, 28, 28), torch.Generator().manual_seed(0)))
    method, comps = build_method(cfg, list(zip(flat.names, flat.shapes)), SingleProcess(), "cpu")
    D = 101_770
    assert [(c.start, c.stop, c.d) for c in comps] == [(0, D, 250)]
    phi = method.basis.matrix(0, 0, D, range(250))
    norms = phi.double().pow(2).sum(1)
    assert abs(float(norms.mean()) - 1) < 0.003  # 250 rows: std of the mean ≈ 0.0003
    assert abs(float((phi.double() * math.sqrt(D)).var()) - 1) < 0.003


def test_paper_nes_perturbs_by_sigma_times_unnormalised_noise():
    D, n, sigma = 20_000, 8, 0.01
    comps = build_compartments([("w", D)], "network", d_total=n)
    nes = NES(comps, Basis(BasisConfig("gaussian"), 5), SingleProcess(), sigma=sigma,
              variant="paper")
    assert nes.batches_per_step == n
    theta = torch.zeros(D)
    seen = {}

    def loss_at(i):
        seen[i] = theta.clone()
        return float(theta[:10].sum())
    c = nes.step(theta, None, 0, 0.5, loss_at=loss_at).coefficients
    assert sorted(seen) == list(range(n))  # every offspring scored once, on its own batch index
    phi = nes.basis.matrix(0, 0, D, range(n))
    for i, offspring in seen.items():
        # θ + σ·ε with ε ~ N(0, I): σ·√D·φ, entries of standard deviation σ (not σ/√D)
        assert torch.allclose(offspring, sigma * math.sqrt(D) * phi[i], rtol=1e-5, atol=1e-9)
        assert abs(float(offspring.std()) / sigma - 1) < 0.03
    assert not phi[1::2].equal(-phi[0::2])  # no antithetic pairs
    # the update: centred ranks over nσ along the normalised directions
    ranks = torch.tensor([float(seen[i][:10].sum()) for i in range(n)]).argsort().argsort()
    assert torch.allclose(c, (ranks / (n - 1) - 0.5) / (n * sigma))


def make_sparse(update):
    layers = [("a.weight", 0, 2000, (40, 50))]
    return SparseTraining("rigl", layers, SingleProcess(), seed=3, sparsity=0.9,
                          distribution="uniform", total_steps=400, update_every=10,
                          drop_fraction=0.3, update=update)


@pytest.mark.parametrize("update", ["published", "rbd-hpc-0.1"])
def test_rigl_published_regrows_after_the_drop_and_skips_the_gradient_step(update):
    m = make_sparse(update)
    theta = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    m.prepare(theta)
    active = torch.nonzero(m.mask).squeeze(1)
    weakest = active[theta[active].abs().argsort()[:3]]  # dropped first at the next update
    grad = torch.full((2000,), 1e-3)
    grad[weakest] = 100.0  # … and the largest gradients: RigL as published grows them back
    before = theta.clone()
    m.step(theta, grad, 10, 0.5)  # step 10: a mask update
    assert bool(m.mask[weakest].all()) == (update == "published")
    kept = m.mask & (theta != 0)  # kept through the update (grown ones start at zero)
    assert int(kept.sum()) > 100
    # published: no gradient step on a mask-update step, so kept weights have not moved
    step = 0.0 if update == "published" else 0.5
    assert torch.allclose(theta[kept], before[kept] - step * grad[kept], rtol=0, atol=1e-6)
    grown = m.mask & (before == 0)  # grown connections start at zero (then step, rbd-hpc-0.1)
    assert int(grown.sum()) > 10
    assert torch.allclose(theta[grown], -step * grad[grown], rtol=0, atol=1e-9)
    assert torch.all(theta[~m.mask] == 0)
    assert int(m.mask.sum()) == 200


def test_format_3_and_older_run_files_keep_the_variants_they_were_trained_with():
    from conftest import ROOT
    with RunFile(ROOT / "tests" / "data" / "written_by_0.1.0.h5") as run:
        cfg = run.config()
    assert (cfg.protocol, cfg.nes, cfg.mask_update, cfg.kernels, cfg.lr_min) == (
        "custom", "same-batch", "rbd-hpc-0.1", 1, 0.0)


@pytest.mark.parametrize("method", ["rbd", "fpd", "nes"])
def test_paper_protocol_runs_replay_bitwise(idx_dir, tmp_path, method):
    out = tmp_path / f"{method}.h5"
    proc = run_cli("train", "--protocol", "paper", "--data-dir", idx_dir, "--val-size", "64",
                   "--method", method, "--d", "8", "--steps", "6", "--snapshot-every", "4",
                   "--out", out, "--no-progress", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("replay", out, "--verify")
    assert proc.returncode == 0 and "verify: OK over 6 steps" in proc.stdout, proc.stdout
    proc = run_cli("inspect", out)
    assert ("protocol      paper: deviations --steps 6 (paper: 100 epochs); --val-size 64 "
            "(paper: 10000); --d 8 (paper: 250)") in proc.stdout, proc.stdout


def test_official_fpd_takes_its_gradient_where_the_carried_coordinates_put_it(idx_dir):
    """The official FPD keeps c_{t−1}: step t's gradient is taken at θ + Σ c_{t−1,i} φ_i."""
    from rbd_hpc.train import take_step
    cfg = TrainConfig.from_preset("fc-fmnist", method="fpd", fpd="official", d=6, steps=3,
                                  data_dir=str(idx_dir), val_size=64, threads=1)
    s = set_up(cfg, SingleProcess())
    assert s.method.forward_shift(s.flat.theta) is None  # step 0: nothing carried yet
    c0 = take_step(s, 0).result.coefficients
    theta1 = s.flat.theta.clone()
    phi = torch.cat([p.chunk.phi for p in s.method._chunks(0, listed=True)])
    shift = s.method.forward_shift(s.flat.theta)
    assert torch.allclose(shift, c0 @ phi, rtol=1e-5, atol=1e-7)
    # the gradient at θ1 + shift on step 1's batch, projected on the fixed directions
    x, y = step_batch(s, 1)
    s.flat.theta.add_(shift)
    s.flat.zero_grad()
    s.loss_fn(s.model(x), y).backward()
    expected = phi @ s.flat.gradient()
    s.flat.theta.copy_(theta1)
    c1 = take_step(s, 1).result.coefficients
    assert torch.allclose(c1, expected, rtol=1e-5, atol=1e-7)
    # θ itself moves by c1 only: the carried shift is not part of the step
    assert torch.allclose(s.flat.theta, theta1 - cfg.lr * (c1 @ phi), rtol=0, atol=1e-6)


def test_official_fpd_resumes_and_replays_bitwise(idx_dir, tmp_path):
    import h5py
    args = ["--data-dir", idx_dir, "--val-size", "64", "--method", "fpd", "--fpd", "official",
            "--d", "8", "--snapshot-every", "1000", "--no-progress", "--threads", "1"]
    ref, part = tmp_path / "ref.h5", tmp_path / "part.h5"
    assert run_cli("train", *args, "--steps", "12", "--out", ref).returncode == 0
    assert run_cli("train", *args, "--steps", "12", "--out", part).returncode == 0
    with h5py.File(part, "r+") as f:  # a crash after step 7: the commit marker says 7 rows
        f["commit"][0] = 7
    proc = run_cli("train", "--resume", part, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    with RunFile(ref) as a, RunFile(part) as b:
        assert np.array_equal(a.steps(0, 12)["coefficients"], b.steps(0, 12)["coefficients"])
        assert np.array_equal(a.snapshot(len(a.snapshot_steps()) - 1)[1],
                              b.snapshot(len(b.snapshot_steps()) - 1)[1])
    proc = run_cli("replay", part, "--verify")
    assert proc.returncode == 0 and "verify: OK over 12 steps" in proc.stdout, proc.stdout
