import math

import pytest
import torch

from rbd_hpc.bases import Basis, BasisConfig, fwht, power_of_two_blocks
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
    g = Basis(BasisConfig("gaussian"), 0).dense(0, 0, 8, range(1))[0, :3]
    assert g.tolist() == pytest.approx([0.2058478742837906, -0.2782364785671234, -0.4471611976623535])
    s = Basis(BasisConfig("srht"), 0).matrix(0, 0, 8, range(2)) * math.sqrt(8)
    assert s.round().tolist() == GOLDEN_SRHT


GOLDEN_SRHT = [[1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0], [1.0, -1.0, -1.0, 1.0, -1.0, 1.0, -1.0, -1.0]]
