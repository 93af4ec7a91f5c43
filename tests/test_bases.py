import math
import zlib

import pytest
import torch

from rbd_hpc.bases import Basis, BasisConfig, ImageLayer, blur, gaussian_kernel, image_layers, power_of_two_blocks
from rbd_hpc.kernels import fwht_butterfly, fwht_radix16
from rbd_hpc.compartments import build_compartments
from rbd_hpc.errors import UserError

DENSE = ("gaussian", "rademacher", "uniform")


@pytest.mark.parametrize("dist", DENSE)
def test_moments_and_scaling(dist):
    size = 4096
    phi = Basis(BasisConfig(dist), 11).dense(0, 0, size, range(64))
    entries = phi * math.sqrt(size)  # unit-variance entries before the 1/√D scaling
    assert abs(entries.mean().item()) < 0.01
    assert abs(entries.var().item() - 1.0) < 0.02
    sq = phi.pow(2).sum(1)
    assert abs(sq.mean().item() - 1.0) < 0.02  # E‖φ‖² = 1
    if dist == "rademacher":
        assert set(entries.round().unique().tolist()) == {-1.0, 1.0}
    if dist == "uniform":
        assert entries.abs().max().item() <= math.sqrt(3) + 1e-5


@pytest.mark.parametrize("dist", DENSE)
def test_exact_normalisation(dist):
    phi = Basis(BasisConfig(dist, normalize="exact"), 1).dense(0, 0, 1000, range(10))
    assert torch.allclose(phi.norm(dim=1), torch.ones(10), atol=1e-6)


@pytest.mark.parametrize("dist", DENSE + ("srht",))
def test_antithetic_pairs(dist):
    phi = Basis(BasisConfig(dist, antithetic=True), 3).matrix(0, 0, 512, range(8))
    assert torch.equal(phi[0::2], -phi[1::2])
    assert not torch.equal(phi[0], phi[2])


@pytest.mark.parametrize("dist", DENSE + ("srht",))
def test_deterministic_for_a_key_and_distinct_across_keys(dist):
    b = Basis(BasisConfig(dist), 5)
    a1 = b.matrix(3, 1, 300, range(6))
    assert torch.equal(a1, Basis(BasisConfig(dist), 5).matrix(3, 1, 300, range(6)))
    assert not torch.equal(a1, b.matrix(4, 1, 300, range(6)))      # step
    assert not torch.equal(a1, b.matrix(3, 2, 300, range(6)))      # compartment
    assert not torch.equal(a1, Basis(BasisConfig(dist), 6).matrix(3, 1, 300, range(6)))  # seed


def test_direction_depends_on_index_not_on_chunking():
    b = Basis(BasisConfig("gaussian"), 2)
    whole = b.dense(0, 0, 200, range(0, 10))
    assert torch.equal(whole[4:7], b.dense(0, 0, 200, range(4, 7)))


def test_fwht_matches_explicit_hadamard():
    H = torch.tensor([[1.0]])
    for _ in range(4):
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    x = torch.randn(3, 16, dtype=torch.float64)
    for fwht in (fwht_radix16, fwht_butterfly):
        assert torch.allclose(fwht(x), x @ H.double().T)


def test_power_of_two_blocks():
    assert power_of_two_blocks(101770) == [(0, 65536), (65536, 32768), (98304, 2048), (100352, 1024),
                                          (101376, 256), (101632, 128), (101760, 8), (101768, 2)]


def test_srht_orthonormal_for_power_of_two():
    phi = Basis(BasisConfig("srht"), 0).matrix(0, 0, 1024, range(100)).double()
    assert torch.allclose(phi @ phi.T, torch.eye(100, dtype=torch.float64), atol=1e-6)


def test_srht_near_orthogonal_bound_otherwise():
    size, m = 1000, 40  # blocks 512, 256, 128, 64, 32, 8: those below 40 rows may repeat
    phi = Basis(BasisConfig("srht"), 0).matrix(0, 0, size, range(m)).double()
    gram = phi @ phi.T
    assert torch.allclose(gram.diagonal(), torch.ones(m, dtype=torch.float64), atol=1e-6)
    off = (gram - torch.eye(m, dtype=torch.float64)).abs().max().item()
    assert off <= (32 + 8) / size + 1e-9


def test_srht_project_and_combine_are_adjoint():
    b = Basis(BasisConfig("srht"), 4)
    chunk = b.srht_chunk(0, 0, 777, range(30))
    P = b.matrix(0, 0, 777, range(30))
    g = torch.randn(777)
    assert torch.allclose(chunk.project(g), P @ g, atol=1e-5)
    c = torch.randn(30)
    assert torch.allclose(chunk.combine(c), c @ P, atol=1e-5)


def test_bad_distribution_is_a_user_error():
    with pytest.raises(UserError, match="choose one of: gaussian, rademacher, uniform, srht"):
        BasisConfig("bernoulli")


def test_srht_batched_over_compartments_equals_one_at_a_time():
    b = Basis(BasisConfig("srht"), 8)
    group = b.srht_chunk(5, 3, 300, range(12), count=4)
    g = torch.randn(4 * 300)
    singles = [b.srht_chunk(5, 3 + k, 300, range(12)) for k in range(4)]
    assert torch.allclose(group.project(g),
                          torch.cat([s.project(g[300 * k:300 * (k + 1)]) for k, s in enumerate(singles)]),
                          atol=1e-5)
    c = torch.randn(48)
    assert torch.allclose(group.combine(c),
                          torch.cat([s.combine(c[12 * k:12 * (k + 1)]) for k, s in enumerate(singles)]),
                          atol=1e-5)


def test_srht_direction_depends_on_index_not_on_the_range_asked_for():
    b = Basis(BasisConfig("srht"), 8)
    full = b.matrix(2, 0, 700, range(0, 20))
    assert torch.equal(full[10:20], b.matrix(2, 0, 700, range(10, 20)))


def test_golden_directions_do_not_drift():
    # the first entries of fixed keys: changing them breaks replay of existing run files
    # generation 1 (format-2 run files): torch's CPU generator
    g = Basis(BasisConfig("gaussian", kernels=1), 0).dense(0, 0, 8, range(1))[0, :3]
    assert g.tolist() == pytest.approx([0.2058478742837906, -0.2782364785671234, -0.4471611976623535])
    # generation 2: our Philox + ziggurat, exact bits; the CRC covers 200,000 draws, so every
    # path of the sampler (rectangle, wedge, tail, fresh draws after a rejection) is in it
    g = Basis(BasisConfig("gaussian"), 0).dense(0, 0, 8, range(1))[0, :3]
    assert g.tolist() == [-0.3897465765476227, -0.46442916989326477, -0.11361068487167358]
    rows = Basis(BasisConfig("gaussian"), 0).dense(3, 1, 100000, range(2))
    assert zlib.crc32(rows.numpy().tobytes()) == 0x2d89c4b5
    s = Basis(BasisConfig("srht"), 0).matrix(0, 0, 8, range(2)) * math.sqrt(8)
    assert s.round().tolist() == GOLDEN_SRHT


GOLDEN_SRHT = [[1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0], [1.0, -1.0, -1.0, 1.0, -1.0, 1.0, -1.0, -1.0]]


def smooth_basis(sigma=2.0, side=16, out=6, seed=3):
    layer = ImageLayer(out, 1, side, side)
    return Basis(BasisConfig(f"smooth:{sigma}"), seed, image_layers={0: layer}), layer


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_smooth_directions_are_unit_rank1_and_as_smooth_as_their_blur(sigma):
    b, layer = smooth_basis(sigma)
    P = b.matrix(0, 0, layer.size, range(200)).double()
    assert torch.allclose(P.norm(dim=1), torch.ones(200, dtype=torch.float64), atol=1e-5)
    n_w = layer.out * layer.inputs
    for row in P[:20]:
        # [W | b] is u aᵀ: rank one
        s = torch.linalg.svdvals(torch.cat([row[:n_w].view(layer.out, -1),
                                            row[n_w:].view(layer.out, 1)], dim=1))
        assert s[1] < 1e-5 * s[0]
    # the image part of a: neighbouring pixels correlate as blurred white noise does,
    # Σ k_t k_{t+1} / Σ k_t² for the sampled kernel k (≈ exp(−1/(4σ²))), less a little at
    # the zero-padded border
    a = torch.stack([row[:n_w].view(layer.out, -1)[row[:n_w].view(layer.out, -1).norm(dim=1).argmax()]
                     for row in P]).view(-1, 16, 16)
    lag1 = float((a[:, :, 1:] * a[:, :, :-1]).sum() / (a * a).sum())
    k = gaussian_kernel(sigma)
    expected = float((k[1:] * k[:-1]).sum() / k.square().sum())
    assert expected - 0.05 < lag1 <= expected + 0.01


def test_smooth_project_and_combine_are_adjoint_and_keyed_by_index():
    b, layer = smooth_basis()
    P = b.matrix(4, 0, layer.size, range(30))
    chunk, = b.chunks(4, 0, layer.size, range(30), chunk_size=7)
    # φ_j laid out as θ holds the layer: W = u_j a_jᵀ (row-major, image inputs), then b = u_j · a_j[-1]
    explicit = torch.stack([torch.cat([torch.outer(u, a[:-1]).reshape(-1), u * a[-1]])
                            for u, a in zip(chunk.u, chunk.a)])
    assert torch.allclose(P, explicit, atol=1e-7)
    g = torch.randn(layer.size)
    assert torch.allclose(chunk.project(g), P @ g, atol=1e-5)
    c = torch.randn(30)
    assert torch.allclose(chunk.combine(c), c @ P, atol=1e-5)
    # a direction is a function of its key: the same bits in any range that contains it
    assert torch.equal(P[10:20], b.matrix(4, 0, layer.size, range(10, 20)))
    assert torch.equal(P[17:18], b.matrix(4, 0, layer.size, range(17, 18)))
    assert not torch.equal(P[:10], b.matrix(5, 0, layer.size, range(10)))
    # compartments that are not the image layer use srht
    assert torch.equal(b.matrix(4, 1, 300, range(5)), Basis(BasisConfig("srht"), 3).matrix(4, 1, 300, range(5)))


def test_smooth_directions_catch_more_of_an_image_gradient_than_srht():
    # a gradient Σ_b δ_b x_bᵀ over smooth "images": the rank-1 smooth directions capture a
    # far larger share of ‖g‖² than unstructured ones of the same norm
    b, layer = smooth_basis(2.0, side=16, out=8)
    gen = torch.Generator().manual_seed(0)
    x = blur(torch.randn(32, 1, 16, 16, generator=gen), 3.0).view(32, -1)
    x = torch.cat([x, torch.ones(32, 1)], dim=1)
    g = (torch.randn(32, 8, generator=gen).T @ x)            # [W | b]
    g = torch.cat([g[:, :-1].reshape(-1), g[:, -1]])
    share = lambda P: float((P @ g).square().sum() / g.square().sum())
    smooth = share(b.matrix(0, 0, layer.size, range(40)))
    srht = share(Basis(BasisConfig("srht"), 3).matrix(0, 0, layer.size, range(40)))
    assert smooth > 10 * srht


def test_image_layers_only_for_a_fully_connected_first_layer_of_its_own():
    fc = [("fc1.weight", (128, 784)), ("fc1.bias", (128,)), ("fc2.weight", (10, 128)), ("fc2.bias", (10,))]
    sizes = [(n, math.prod(s)) for n, s in fc]
    layer = build_compartments(sizes, "layer", d_total=20)
    assert image_layers(layer, fc, 1) == {0: ImageLayer(128, 1, 28, 28)}
    assert image_layers(build_compartments(sizes, "network", d_total=20), fc, 1) == {}
    assert image_layers(layer, fc, 3) == {}                    # 784 is not 3 · side²
    cnn = [("conv1.weight", (32, 1, 3, 3)), ("conv1.bias", (32,)), ("fc1.weight", (64, 576)),
           ("fc1.bias", (64,))]
    cnn_layers = build_compartments([(n, math.prod(s)) for n, s in cnn], "layer", d_total=20)
    assert image_layers(cnn_layers, cnn, 1) == {}               # 576 = 24² but not the input


@pytest.mark.parametrize("dist", ["smooth:0", "smooth:-1", "smooth:x", "smooth:17", "smooth:nan"])
def test_bad_smooth_sigma_is_a_user_error(dist):
    with pytest.raises(UserError, match=r"σ must be a number of pixels in \(0, 16\]"):
        BasisConfig(dist)


def test_blur_of_a_point_is_the_scaled_gaussian_and_keeps_white_noise_at_unit_variance():
    k = gaussian_kernel(1.5)
    img = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    img[0, 0, 10, 10] = 1.0
    r = (k.numel() - 1) // 2
    expected = torch.zeros(21, 21, dtype=torch.float64)
    expected[10 - r:11 + r, 10 - r:11 + r] = torch.outer(k, k) / k.square().sum()
    assert torch.allclose(blur(img, 1.5)[0, 0], expected, atol=1e-12)
    noise = blur(torch.randn(200, 1, 40, 40, generator=torch.Generator().manual_seed(1)), 1.5)
    assert abs(float(noise[:, :, 10:30, 10:30].var()) - 1.0) < 0.05
