"""Fast chunked RBD against the materialised reference, FPD, SGD, and replay equality."""
import pytest
import torch

from rbd_hpc.bases import Basis, BasisConfig
from rbd_hpc.comm import SingleProcess
from rbd_hpc.compartments import build_compartments
from rbd_hpc.methods import SGD, FixedProjectionDescent, RandomBasesDescent
from rbd_hpc.methods.reference import reference_rbd_step

SIZES = [("a.weight", 600), ("a.bias", 20), ("b.weight", 300), ("b.bias", 3)]
D = sum(n for _, n in SIZES)


def quadratic_grad(theta, target):
    return theta - target  # gradient of ½‖θ − target‖²


@pytest.mark.parametrize("dist", ["gaussian", "rademacher", "uniform", "srht"])
@pytest.mark.parametrize("scheme", ["network", "layer", "block:256"])
def test_fast_path_matches_reference_over_many_steps(dist, scheme):
    comps = build_compartments(SIZES, scheme, d_total=24)
    basis = Basis(BasisConfig(dist), 9)
    fast = RandomBasesDescent(comps, basis, SingleProcess(), chunk_size=5)
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(D, generator=gen)
    theta = torch.randn(D, generator=gen)
    ref = theta.double().clone()
    start_distance = (theta - target).norm()
    for step in range(30):
        c = fast.step(theta, quadratic_grad(theta, target), step, 0.5).coefficients
        ref, c_ref = reference_rbd_step(ref, quadratic_grad(ref, target.double()), basis, comps,
                                        step, 0.5, fast.directions_per_compartment)
        assert torch.allclose(c.double(), c_ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(theta.double(), ref, rtol=1e-4, atol=1e-5)
    # and it descends: RBD makes progress on a quadratic
    assert (theta - target).norm() < start_distance


def test_chunk_size_changes_order_not_values():
    comps = build_compartments(SIZES, "network", d_total=20)
    basis = Basis(BasisConfig("gaussian"), 1)
    g = torch.randn(D)
    thetas = []
    for chunk in (3, 20):
        theta = torch.zeros(D)
        m = RandomBasesDescent(comps, basis, SingleProcess(), chunk_size=chunk)
        thetas.append((theta, m.step(theta, g, 0, 1.0).coefficients))
    # the same directions; only BLAS summation order differs
    assert torch.allclose(thetas[0][1], thetas[1][1], rtol=1e-5, atol=1e-6)
    assert torch.allclose(thetas[0][0], thetas[1][0], atol=1e-6)


def test_replay_step_is_bitwise_the_training_step():
    comps = build_compartments(SIZES, "layer", d_total=16)
    m = RandomBasesDescent(comps, Basis(BasisConfig("gaussian"), 2), SingleProcess(), chunk_size=4)
    theta = torch.randn(D)
    theta0 = theta.clone()
    logs = []
    for step in range(10):
        logs.append(m.step(theta, torch.sin(theta * (step + 1)), step, 0.3).coefficients)
    replayed = theta0.clone()
    for step, c in enumerate(logs):
        m.replay_step(replayed, step, 0.3, c)
    assert torch.equal(replayed, theta)


def test_fpd_uses_the_same_directions_every_step_and_rbd_does_not():
    comps = build_compartments(SIZES, "network", d_total=8)
    basis = Basis(BasisConfig("gaussian"), 3)
    g = torch.randn(D)
    fpd = FixedProjectionDescent(comps, basis, SingleProcess())
    rbd = RandomBasesDescent(comps, basis, SingleProcess())
    assert torch.equal(fpd.step(torch.zeros(D), g, 0, 1.0).coefficients,
                       fpd.step(torch.zeros(D), g, 57, 1.0).coefficients)
    assert not torch.equal(rbd.step(torch.zeros(D), g, 0, 1.0).coefficients,
                           rbd.step(torch.zeros(D), g, 1, 1.0).coefficients)


def test_redraw_every_n_steps():
    comps = build_compartments(SIZES, "network", d_total=8)
    m = RandomBasesDescent(comps, Basis(BasisConfig("gaussian"), 3), SingleProcess(), redraw_every=4)
    g = torch.randn(D)
    c = [m.step(torch.zeros(D), g, s, 1.0).coefficients for s in range(8)]
    assert all(torch.equal(c[0], c[i]) for i in range(4))
    assert not torch.equal(c[3], c[4])


def test_update_stays_inside_the_compartments_span():
    comps = build_compartments(SIZES, "layer", d_total=6)
    m = RandomBasesDescent(comps, Basis(BasisConfig("gaussian"), 3), SingleProcess())
    theta = torch.zeros(D)
    m.step(theta, torch.randn(D), 0, 1.0)
    # the update lies in the span of the 6 directions: rank 6 at most
    P = torch.cat([torch.nn.functional.pad(
        m.basis.matrix(0, c.index, c.size, range(c.d)), (c.start, D - c.stop)) for c in comps])
    sol = torch.linalg.lstsq(P.T.double(), theta.double().unsqueeze(1)).solution
    assert torch.allclose((P.T.double() @ sol).squeeze(1), theta.double(), atol=1e-6)


def test_sgd_with_momentum():
    theta = torch.ones(4)
    sgd = SGD(SingleProcess(), momentum=0.9)
    g = torch.ones(4)
    sgd.step(theta, g, 0, 0.1)
    sgd.step(theta, g, 1, 0.1)
    assert torch.allclose(theta, torch.full((4,), 1 - 0.1 - 0.1 * 1.9))


@pytest.mark.parametrize("mode", ["shared", "per-rank"])
def test_rbd_momentum_is_heavy_ball_over_the_logged_directions(mode):
    comps = build_compartments(SIZES, "layer", d_total=16)
    basis = Basis(BasisConfig("srht"), 5)
    mom = RandomBasesDescent(comps, basis, SingleProcess(), mode=mode, chunk_size=4, momentum=0.8)
    plain = RandomBasesDescent(comps, basis, SingleProcess(), mode=mode, chunk_size=4)
    theta = torch.linspace(-1, 1, D)
    theta0 = theta.clone()
    expected, v = theta0.double().clone(), torch.zeros(D, dtype=torch.float64)
    without = theta0.double().clone()  # the same updates u without the velocity
    logs = []
    for step in range(8):
        c = mom.step(theta, torch.sin(3 * theta + step), step, 0.1).coefficients
        logs.append(c)
        u = torch.zeros(D)  # Σ c φ of the same step: the plain update with η = −1 from zero
        plain.replay_step(u, step, -1.0, c)
        v = 0.8 * v + u.double()
        expected -= 0.1 * v
        without -= 0.1 * u.double()
    assert torch.allclose(theta.double(), expected, atol=1e-5)
    assert (theta.double() - without).abs().max() > 1e-2
    # replay from θ0 with a fresh method is bitwise; so is continuing from a saved velocity
    again = RandomBasesDescent(comps, basis, SingleProcess(), mode=mode, chunk_size=4, momentum=0.8)
    replayed = theta0.clone()
    for step, c in enumerate(logs[:5]):
        again.replay_step(replayed, step, 0.1, c)
    saved = again.state_vector(D)
    assert saved.shape == (D,)
    resumed = RandomBasesDescent(comps, basis, SingleProcess(), mode=mode, chunk_size=4,
                                 momentum=0.8)
    resumed.load_state_vector(saved, "cpu")
    for step, c in enumerate(logs[5:], start=5):
        resumed.replay_step(replayed, step, 0.1, c)
    assert torch.equal(replayed, theta)
    assert plain.state_size(D) == 0 and mom.state_size(D) == D


def test_sgd_weight_decay_is_decoupled():
    theta = torch.full((4,), 2.0)
    sgd = SGD(SingleProcess(), momentum=0.5, weight_decay=0.25)
    g = torch.ones(4)
    sgd.step(theta, g, 0, 0.1)   # θ = 2 · (1 − 0.025) − 0.1 · 1
    sgd.step(theta, g, 1, 0.1)   # θ = θ · 0.975 − 0.1 · 1.5
    assert torch.allclose(theta, torch.full((4,), (2 * 0.975 - 0.1) * 0.975 - 0.15), atol=1e-6)
    assert not torch.allclose(theta, torch.full((4,), 2 - 0.1 - 0.15), atol=1e-2)


@pytest.mark.parametrize("momentum", [0.0, 0.8])
@pytest.mark.parametrize("mode", ["shared", "per-rank"])
def test_rbd_weight_decay_scales_theta_then_steps_and_replays_bitwise(mode, momentum):
    comps = build_compartments(SIZES, "layer", d_total=16)
    basis = Basis(BasisConfig("srht"), 5)
    kw = dict(mode=mode, chunk_size=4, momentum=momentum)
    wd = RandomBasesDescent(comps, basis, SingleProcess(), weight_decay=0.5, **kw)
    plain = RandomBasesDescent(comps, basis, SingleProcess(), mode=mode, chunk_size=4)
    theta = torch.linspace(-1, 1, D)
    theta0 = theta.clone()
    expected, v = theta0.double().clone(), torch.zeros(D, dtype=torch.float64)
    logs, lrs = [], [0.1, 0.1, 0.05, 0.02, 0.2, 0.1]
    for step, lr in enumerate(lrs):
        c = wd.step(theta, torch.sin(3 * theta + step), step, lr).coefficients
        logs.append(c)
        u = torch.zeros(D)  # Σ c φ of the same step
        plain.replay_step(u, step, -1.0, c)
        v = momentum * v + u.double()
        expected = (1 - lr * 0.5) * expected - lr * v
    assert torch.allclose(theta.double(), expected, atol=1e-5)
    # the decay is what moved θ this far from the undecayed trajectory of the same steps
    without = theta0.double().clone()
    v = torch.zeros(D, dtype=torch.float64)
    for step, (lr, c) in enumerate(zip(lrs, logs)):
        u = torch.zeros(D)
        plain.replay_step(u, step, -1.0, c)
        v = momentum * v + u.double()
        without -= lr * v
    assert (theta.double() - without).abs().max() > 0.1
    again = RandomBasesDescent(comps, basis, SingleProcess(), weight_decay=0.5, **kw)
    replayed = theta0.clone()
    for step, (lr, c) in enumerate(zip(lrs, logs)):
        again.replay_step(replayed, step, lr, c)
    assert torch.equal(replayed, theta)


@pytest.mark.parametrize("cls,redraw", [(FixedProjectionDescent, 1), (RandomBasesDescent, 3)])
def test_keep_in_memory_is_bitwise_the_same(cls, redraw):
    comps = build_compartments(SIZES, "layer", d_total=12)
    basis = Basis(BasisConfig("gaussian"), 4)
    thetas = []
    for keep in (False, True):
        m = cls(comps, basis, SingleProcess(), chunk_size=5, redraw_every=redraw, keep_in_memory=keep)
        theta = torch.linspace(-1, 1, D)
        for step in range(7):
            m.step(theta, torch.cos(theta * 3), step, 0.2)
        thetas.append(theta)
    assert torch.equal(thetas[0], thetas[1])
