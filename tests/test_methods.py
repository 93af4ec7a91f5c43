"""Fast chunked RBD against the materialised reference, FPD, SGD, and replay equality."""
import math

import pytest
import torch

from rbd_hpc.bases import Basis, BasisConfig, smooth_image_layers
from rbd_hpc.comm import SingleProcess, run_threaded
from rbd_hpc.compartments import build_compartments
from rbd_hpc.methods import NES, SGD, FixedProjectionDescent, RandomBasesDescent
from rbd_hpc.methods.reference import direction_matrix, explicit_hadamard, reference_rbd_step

SIZES = [("a.weight", 600), ("a.bias", 20), ("b.weight", 300), ("b.bias", 3)]
D = sum(n for _, n in SIZES)


def quadratic_grad(theta, target):
    return theta - target  # gradient of ½‖θ − target‖²


def replayed(method, theta0, logs, lr):
    """θ0 with logged coefficients applied, step after step, by ``method.replay_step``."""
    theta = theta0.clone()
    for step, c in enumerate(logs):
        method.replay_step(theta, step, lr, c)
    return theta


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
    assert torch.equal(replayed(m, theta0, logs, 0.3), theta)


@pytest.mark.parametrize("dist", ["gaussian", "srht"])
def test_one_exchange_per_step_and_the_chunked_pipeline_give_the_same_bits(dist):
    """A shared-mode step whose directions are held (structured chunks, or --keep-in-memory)
    exchanges its d coefficients once; dense directions otherwise go chunk by chunk, one
    exchange each. Same θ, bit for bit."""
    comps = build_compartments(SIZES, "layer", d_total=24)
    results = {}
    for keep in (True, False):
        comm = SingleProcess()
        comm.traffic.phase = "step"
        m = RandomBasesDescent(comps, Basis(BasisConfig(dist), 4), comm, chunk_size=4,
                               keep_in_memory=keep)
        theta = torch.linspace(-1, 1, D)
        for step in range(6):
            m.step(theta, torch.cos(theta * (step + 2)), step, 0.2)
        results[keep] = (theta, comm.traffic.calls["step"] / 6)
    chunks = sum(-(-n // 4) for n in m.directions_per_compartment)  # chunks of 4 per layer
    assert [c.d for c in comps] == [16, 8] and chunks == 6
    assert torch.equal(results[True][0], results[False][0])
    assert results[True][1] == 1
    assert results[False][1] == (1 if dist == "srht" else 6)  # srht chunks are O(D): held


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


@pytest.mark.parametrize("dist,keep,momentum", [("gaussian", False, 0.0), ("gaussian", True, 0.5),
                                                 ("srht", False, 0.0)])
def test_official_fpd_holds_the_shift_it_would_form_from_the_carried_coordinates(dist, keep,
                                                                                momentum):
    """The official FPD sums its next forward shift Σ c_{t−1,i} φ_i while applying step t−1;
    a resume forms it again from c_{t−1} (the snapshot state): both are the same bits."""
    comps = build_compartments(SIZES, "layer", d_total=12)
    m = FixedProjectionDescent(comps, Basis(BasisConfig(dist), 4), SingleProcess(), chunk_size=5,
                               keep_in_memory=keep, momentum=momentum, carry_coordinates=True)
    theta = torch.linspace(-1, 1, D)
    assert m.forward_shift(theta) is None
    for step in range(5):
        shift = m.forward_shift(theta)
        m.step(theta, torch.cos((theta if shift is None else theta + shift) * 3), step, 0.2)
        held = m.forward_shift(theta).clone()
        m.load_state_vector(m.state_vector(D), "cpu")   # as a resume from a snapshot
        formed = m.forward_shift(theta)
        assert torch.equal(held, formed), step
        assert torch.count_nonzero(held) > 0


@pytest.mark.parametrize("fields,world,kept", [
    (dict(method="fpd"), 1, True),                       # FC: 4·250·101,770 B = 97 MiB
    (dict(method="fpd", mode="per-rank"), 6, False),     # ×6 ranks' directions: 582 MiB
    (dict(method="fpd", mode="per-rank"), 5, True),      # 485 MiB
    (dict(method="fpd", keep_in_memory=False), 1, False),
    (dict(method="rbd"), 1, False),                      # fresh directions every step
    (dict(method="rbd", redraw_every=3), 1, True),
    (dict(method="rbd", redraw_every=3, d=1400), 1, False),  # 543 MiB
    (dict(method="rbd", keep_in_memory=True), 1, True),
])
def test_directions_are_kept_by_default_when_reused_and_within_512_mib(fields, world, kept):
    from rbd_hpc.config import TrainConfig
    from rbd_hpc.methods.build import build_method
    from rbd_hpc.models import FlatParameters, build_model
    cfg = TrainConfig.from_preset("fc-fmnist", **fields)
    flat = FlatParameters(build_model("fc", (1, 28, 28), torch.Generator().manual_seed(0)))
    assert sum(s.numel() for s in flat.model.parameters()) == 101770
    method, _ = build_method(cfg, list(zip(flat.names, flat.shapes)), SingleProcess(), "cpu",
                             world_size=world)
    assert method.keep_in_memory is kept


# -- the fast path against the independent reference (explicit matrices) -------------------

@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("size", [8, 300, 777, 1024])
def test_srht_directions_equal_the_explicit_hadamard_rows(size, antithetic):
    basis = Basis(BasisConfig("srht", antithetic=antithetic), 11)
    explicit = direction_matrix(basis, 3, 2, size, 12)
    chunk, = basis.chunks(3, 2, size, range(12), 12)
    g = torch.randn(size, dtype=torch.float64)
    c = torch.randn(12, dtype=torch.float64)
    assert torch.allclose(chunk.project(g.float()).double(), explicit @ g, atol=1e-5)
    assert torch.allclose(chunk.combine(c.float()).double(), explicit.T @ c, atol=1e-5)
    # the Hadamard matrix itself: orthogonal rows of ±1, and the first row all ones
    H = explicit_hadamard(size if size & (size - 1) == 0 else 256)
    assert torch.equal(H @ H.T, H.shape[0] * torch.eye(H.shape[0], dtype=torch.float64))
    assert torch.equal(H[0], torch.ones(H.shape[0], dtype=torch.float64))


def smooth_setup():
    """An fc-shaped layout on 4×4 images: fc1 (8 × 16 + 8) is the image layer."""
    shapes = [("fc1.weight", (8, 16)), ("fc1.bias", (8,)), ("fc2.weight", (3, 8)), ("fc2.bias", (3,))]
    sizes = [(n, int(torch.tensor(s).prod())) for n, s in shapes]
    comps = build_compartments(sizes, "layer", d_total=12, allocate="equal")
    image = smooth_image_layers("smooth:1", comps, shapes, 1, "test")
    basis = Basis(BasisConfig("smooth:1"), 7, image_layers=image)
    return comps, basis


def test_smooth_directions_equal_explicit_outer_products():
    comps, basis = smooth_setup()
    fc1 = comps[0]
    chunk, = basis.chunks(2, fc1.index, fc1.size, range(6), 6)
    explicit = torch.stack([torch.cat([torch.outer(chunk.u[j], chunk.a[j])[:, :16].reshape(-1),
                                       torch.outer(chunk.u[j], chunk.a[j])[:, 16]])
                            for j in range(6)]).double()
    assert torch.allclose(direction_matrix(basis, 2, fc1.index, fc1.size, 6), explicit)
    g = torch.randn(fc1.size)
    assert torch.allclose(chunk.project(g).double(), explicit @ g.double(), atol=1e-5)


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_smooth_rbd_matches_the_reference(momentum):
    comps, basis = smooth_setup()
    dim = comps[-1].stop
    fast = RandomBasesDescent(comps, basis, SingleProcess(), chunk_size=4, momentum=momentum)
    theta = torch.linspace(-1, 1, dim)
    ref, v = theta.double().clone(), torch.zeros(dim, dtype=torch.float64)
    for step in range(6):
        fast.step(theta, torch.sin(3 * theta + step), step, 0.3)
        ref, _ = reference_rbd_step(ref, torch.sin(3 * ref + step), basis, comps, step, 0.3,
                                    fast.directions_per_compartment, v, momentum)
    assert torch.allclose(theta.double(), ref, atol=1e-5)


@pytest.mark.parametrize("dist", ["gaussian", "srht"])
@pytest.mark.parametrize("momentum", [0.0, 0.8])
def test_per_rank_mode_on_three_ranks_matches_the_reference(dist, momentum):
    """Rank r projects onto its own directions [r·d_k, (r+1)·d_k); the gathered 3·d
    coefficients, applied on every rank, equal the reference step over all 3·d directions."""
    comps = build_compartments(SIZES, "layer", d_total=12)
    basis = Basis(BasisConfig(dist), 13)
    target = torch.linspace(2, -2, D)

    def on_rank(comm):  # every rank its own Basis, as in its own process (scratch buffers)
        m = RandomBasesDescent(comps, Basis(BasisConfig(dist), 13), comm, mode="per-rank",
                               chunk_size=3, momentum=momentum)
        theta = torch.zeros(D)
        logs = [m.step(theta, quadratic_grad(theta, target), step, 0.2).coefficients
                for step in range(5)]
        return theta, logs, m.directions_per_compartment
    results = run_threaded(3, on_rank)
    theta, logs, per_comp = results[0]
    assert per_comp == [3 * c.d for c in comps]
    for other, other_logs, _ in results[1:]:  # identical θ on every rank (invariant 4)
        assert torch.equal(other, theta)
        assert all(torch.equal(a, b) for a, b in zip(logs, other_logs))
    ref, v = torch.zeros(D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64)
    for step in range(5):
        ref, c_ref = reference_rbd_step(ref, quadratic_grad(ref, target.double()), basis, comps,
                                        step, 0.2, per_comp, v, momentum)
        assert torch.allclose(logs[step].double(), c_ref, atol=1e-5)
    assert torch.allclose(theta.double(), ref, atol=1e-5)
    # a per-rank run replays in one process from the logged coefficients, bitwise
    single = RandomBasesDescent(comps, basis, SingleProcess(), mode="per-rank", chunk_size=3,
                                world_size=3, momentum=momentum)
    assert torch.equal(replayed(single, torch.zeros(D), logs, 0.2), theta)


def test_shared_mode_on_two_ranks_averages_the_coefficients():
    """Each rank projects its own gradient; the step is the reference step of the mean."""
    comps = build_compartments(SIZES, "network", d_total=10)
    basis = Basis(BasisConfig("rademacher"), 2)
    grads = [torch.linspace(-1, 1, D), torch.cos(torch.arange(D, dtype=torch.float32))]

    def on_rank(comm):
        m = RandomBasesDescent(comps, Basis(BasisConfig("rademacher"), 2), comm, chunk_size=4)
        theta = torch.zeros(D)
        c = m.step(theta, grads[comm.rank], 0, 0.5).coefficients
        return theta, c, comm.traffic.totals("setup")
    (t0, c0, traffic0), (t1, c1, traffic1) = run_threaded(2, on_rank)
    assert torch.equal(t0, t1) and torch.equal(c0, c1)
    # (sent, received, calls): d floats in, d floats back, a reduce and a broadcast for each
    # of the 3 dense chunks (4 + 4 + 2 directions); the root (rank 0) also sends the broadcast
    assert traffic0 == (2 * 4 * 10, 4 * 10, 6) and traffic1 == (4 * 10, 4 * 10, 6)
    ref, c_ref = reference_rbd_step(torch.zeros(D), (grads[0] + grads[1]).double() / 2, basis,
                                    comps, 0, 0.5, [10])
    assert torch.allclose(c0.double(), c_ref, atol=1e-5)
    assert torch.allclose(t0.double(), ref, atol=1e-6)


def test_nes_sharded_over_three_ranks_equals_one_process():
    """Three ranks score a third of the offspring each; the gathered losses, their ranks and
    so the step are bitwise those of one process scoring all of them."""
    comps = build_compartments([("w", 200)], "network", d_total=12)
    target = torch.linspace(-1, 1, 200)

    def run(comm):
        nes = NES(comps, Basis(BasisConfig("gaussian", antithetic=True), 4), comm, sigma=0.1)
        theta = torch.zeros(200)
        scored = []

        def loss_at(i):
            scored.append(1)
            return float(0.5 * (theta - target).pow(2).sum())
        cs = [nes.step(theta, None, step, 0.5, loss_at=loss_at).coefficients for step in range(4)]
        return theta, cs, len(scored)
    theta1, cs1, n1 = run(SingleProcess())
    results = run_threaded(3, run)
    assert n1 == 4 * 12 and [n for *_, n in results] == [4 * 4] * 3
    for theta, cs, _ in results:
        assert torch.equal(theta, theta1)
        assert all(torch.equal(a, b) for a, b in zip(cs, cs1))


def test_the_logged_step_cosine_is_the_textbook_one():
    # cos_grad's cosine (train.cosine): torch's cosine_similarity, at a quarter of its cost
    from rbd_hpc.train import cosine
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(100_000, generator=gen), torch.randn(100_000, generator=gen)
    assert cosine(a, b) == pytest.approx(float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
                                         abs=1e-5)
    assert 1 - 1e-6 <= cosine(a, 0.25 * a) <= 1 and -1 <= cosine(a, -a) <= -1 + 1e-6  # clipped
    assert cosine(torch.zeros(5), torch.ones(5)) == 0.0
    assert math.isnan(cosine(torch.tensor([1.0, float("nan")]), torch.ones(2)))  # divergence shows
