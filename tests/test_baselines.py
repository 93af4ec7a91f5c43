"""NES and the sparse baselines (RigL, SET, Static)."""
import numpy as np
import pytest
import torch

from conftest import run_cli
from rbd_hpc.bases import Basis, BasisConfig
from rbd_hpc.comm import SingleProcess
from rbd_hpc.compartments import build_compartments
from rbd_hpc.methods import NES, SparseTraining
from rbd_hpc.methods.nes import centred_ranks
from rbd_hpc.methods.rigl import erk_densities
from rbd_hpc.runlog import RunFile


def test_centred_ranks():
    r = centred_ranks(torch.tensor([3.0, 1.0, 2.0, 1.0]))
    assert r.tolist() == pytest.approx([0.5, -0.5, 1 / 6, -1 / 6])  # ties broken by index


def test_nes_descends_a_quadratic_and_is_antithetic():
    D = 300
    comps = build_compartments([("w", D)], "network", d_total=40)
    nes = NES(comps, Basis(BasisConfig("gaussian", antithetic=True), 1), SingleProcess(), sigma=0.05)
    target = torch.randn(D, generator=torch.Generator().manual_seed(0))
    theta = torch.zeros(D)
    start = (theta - target).norm().item()
    for step in range(150):
        before = theta.clone()
        offspring = []

        def loss_at(i):
            offspring.append(theta - before)  # the perturbation being scored
            return float(0.5 * (theta - target).pow(2).sum())
        c = nes.step(theta, None, step, 2.0, loss_at=loss_at).coefficients
        assert c.shape == (40,)
        # offspring 2p and 2p+1 are θ ± σ φ_p: the same direction with opposite signs
        phi = nes.basis.matrix(step, 0, D, range(40))
        assert torch.equal(phi[1::2], -phi[0::2])
        perturbations = torch.stack(offspring)
        assert torch.allclose(perturbations, 0.05 * phi, atol=1e-6)
        assert torch.allclose(perturbations[1::2], -perturbations[0::2], atol=1e-6)
    assert (theta - target).norm().item() < 0.9 * start


def test_nes_without_an_even_d_is_refused(idx_dir):
    proc = run_cli("train", "--data-dir", idx_dir, "--val-size", "64", "--steps", "1", "--method", "nes",
                   "--d", "21")
    assert proc.returncode == 2 and "odd d=21" in proc.stderr


def test_nes_run_replays_bitwise(idx_dir, tmp_path):
    out = tmp_path / "nes.h5"
    proc = run_cli("train", "--data-dir", idx_dir, "--val-size", "64", "--steps", "12", "--d", "16",
                   "--method", "nes", "--snapshot-every", "5", "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("replay", out, "--verify")
    assert proc.returncode == 0 and "verify: OK over 12 steps" in proc.stdout, proc.stdout


def test_erk_densities_hit_the_overall_density():
    shapes = [(128, 784), (10, 128), (64, 576)]
    dens = erk_densities(shapes, 0.1)
    sizes = [np.prod(s) for s in shapes]
    assert sum(d * n for d, n in zip(dens, sizes)) == pytest.approx(0.1 * sum(sizes))
    assert dens[1] > dens[0]  # small layers are kept denser
    assert all(0 < d <= 1 for d in dens)


def make_sparse(kind, momentum=0.0):
    layers = [("a.weight", 0, 2000, (40, 50)), ("b.weight", 2010, 2510, (10, 50))]
    return SparseTraining(kind, layers, SingleProcess(), seed=3, sparsity=0.9, distribution="uniform",
                          total_steps=400, momentum=momentum, update_every=10, drop_fraction=0.3)


@pytest.mark.parametrize("kind", ["rigl", "set", "static"])
def test_sparse_methods_keep_the_parameter_count(kind):
    m = make_sparse(kind)
    theta = torch.randn(2600, generator=torch.Generator().manual_seed(0))
    m.prepare(theta)
    mask0 = m.mask.clone()
    counts = [int(mask0[0:2000].sum()), int(mask0[2010:2510].sum())]
    assert counts == [200, 50]
    assert torch.equal(mask0[2000:2010], torch.ones(10, dtype=torch.bool))  # biases stay dense
    gen = torch.Generator().manual_seed(1)
    for step in range(60):
        m.step(theta, torch.randn(2600, generator=gen), step, 0.01)
        assert [int(m.mask[0:2000].sum()), int(m.mask[2010:2510].sum())] == counts
        assert torch.all(theta[~m.mask] == 0)
    changed = not torch.equal(m.mask, mask0)
    assert changed == (kind != "static")


def test_rigl_grows_where_the_gradient_is_largest():
    m = make_sparse("rigl")
    theta = torch.randn(2600, generator=torch.Generator().manual_seed(0))
    m.prepare(theta)
    grad = torch.zeros(2600)
    inactive = torch.nonzero(~m.mask[0:2000]).squeeze(1)
    hot = inactive[:5]
    grad[hot] = 100.0
    m.step(theta, grad, 10, 0.0)  # step 10: a mask update, lr 0 so only the mask moves
    assert torch.all(m.mask[hot])
    assert torch.all(theta[hot] == 0)  # grown connections start at zero


def test_drop_fraction_is_cosine_annealed_and_stops_at_75_percent():
    m = make_sparse("rigl")
    assert m.drop_fraction_at(0) == pytest.approx(0.3)
    assert m.drop_fraction_at(150) == pytest.approx(0.15)
    assert m.t_end == 300


def test_rigl_run_resumes_bitwise(idx_dir, tmp_path):
    args = ["--data-dir", idx_dir, "--val-size", "64", "--method", "rigl", "--mask-every", "5",
            "--momentum", "0.9", "--snapshot-every", "10", "--no-progress", "--threads", "1"]
    ref = tmp_path / "ref.h5"
    assert run_cli("train", *args, "--steps", "30", "--out", ref).returncode == 0
    part = tmp_path / "part.h5"
    # a run stopped after 20 steps is a run file whose last snapshot is step 20
    assert run_cli("train", *args, "--steps", "30", "--out", part).returncode == 0
    import h5py

    with h5py.File(part, "r+") as f:  # cut it back to its step-20 snapshot, as a crash would
        f["commit"][...] = [20, 3]
    proc = run_cli("train", "--resume", part, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    with RunFile(ref) as a, RunFile(part) as b:
        assert np.array_equal(a.snapshot(a.n_snapshots - 1)[1], b.snapshot(b.n_snapshots - 1)[1])
