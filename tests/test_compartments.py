import pytest

from rbd_hpc.compartments import build_compartments, segments, split_d
from rbd_hpc.errors import UserError

FC = [("fc1.weight", 100352), ("fc1.bias", 128), ("fc2.weight", 1280), ("fc2.bias", 10)]


def test_split_d_sums_and_is_proportional():
    alloc = split_d([100480, 1290], 250)
    assert sum(alloc) == 250 and alloc == [246, 4]
    assert split_d([10, 10, 10], 3) == [1, 1, 1]


def test_split_d_caps_at_compartment_size():
    alloc = split_d([2, 1000], 500)
    assert alloc[0] <= 2 and sum(alloc) == 500


def test_split_d_errors():
    with pytest.raises(UserError, match="smaller than the number of compartments"):
        split_d([5, 5, 5], 2)
    with pytest.raises(UserError, match="exceeds the number of parameters"):
        split_d([5, 5], 11)


def test_schemes():
    assert segments(FC, "network") == [("network", 0, 101770)]
    assert segments(FC, "layer") == [("fc1", 0, 100480), ("fc2", 100480, 101770)]
    blocks = segments(FC, "block:50000")
    assert [(s, e) for _, s, e in blocks] == [(0, 50000), (50000, 100000), (100000, 101770)]


def test_build_compartments_covers_theta_once():
    comps = build_compartments(FC, "block:30000", d_total=250)
    assert comps[0].start == 0 and comps[-1].stop == 101770
    assert all(a.stop == b.start for a, b in zip(comps, comps[1:]))
    assert sum(c.d for c in comps) == 250


def test_d_per_compartment():
    comps = build_compartments(FC, "layer", d_per_compartment=50)
    assert [c.d for c in comps] == [50, 50]
    with pytest.raises(UserError, match="larger than compartment 'fc2'"):
        build_compartments(FC, "layer", d_per_compartment=2000)


@pytest.mark.parametrize("bad", ["layers", "block:0", "block:x"])
def test_bad_scheme(bad):
    with pytest.raises(UserError):
        segments(FC, bad)
