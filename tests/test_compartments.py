import pytest

from rbd_hpc.compartments import (build_compartments, compartment_rates, parse_rate_scales, segments,
                                  split_d)
from rbd_hpc.errors import UserError
from rbd_hpc.methods.update import groups

FC = [("fc1.weight", 100352), ("fc1.bias", 128), ("fc2.weight", 1280), ("fc2.bias", 10)]


def test_split_d_sums_and_is_proportional():
    alloc = split_d([100480, 1290], 250)
    assert sum(alloc) == 250 and alloc == [246, 4]
    assert split_d([10, 10, 10], 3) == [1, 1, 1]


CNN_LAYERS = [320, 18496, 36928, 36928, 650]


def test_split_d_allocation_rules():
    assert split_d([100480, 1290], 250, "sqrt") == [224, 26]
    assert split_d([100480, 1290], 250, "equal") == [125, 125]
    assert split_d(CNN_LAYERS, 250) == [2, 49, 98, 98, 3]
    assert split_d(CNN_LAYERS, 250, "sqrt") == [9, 60, 85, 84, 12]
    assert split_d(CNN_LAYERS, 250, "equal") == [50] * 5
    # equal shares that do not fit a small compartment go to the largest ones
    assert split_d([3, 1000, 500], 30, "equal") == [3, 17, 10]
    with pytest.raises(UserError, match="--allocate 'even' is not valid; choose one of: size, sqrt, equal, "
                                        "power:P"):
        split_d([10, 10], 4, "even")


def test_split_d_power_rule():
    # the named rules are the exponents 1, 0.5 and 0
    for named, p in (("size", "1"), ("sqrt", "0.5"), ("equal", "0")):
        for sizes in (CNN_LAYERS, [100480, 1290]):
            assert split_d(sizes, 250, f"power:{p}") == split_d(sizes, 250, named)
    assert split_d(CNN_LAYERS, 250, "power:0.25") == [22, 60, 71, 71, 26]
    # negative P favours the small compartments (the 320-weight conv gets most)
    assert split_d(CNN_LAYERS, 250, "power:-0.5") == [123, 17, 12, 12, 86]
    for bad in ("power:", "power:x", "power:nan", "power:inf", "power:P"):
        with pytest.raises(UserError, match=f"--allocate '{bad}': P must be a finite number"):
            split_d(CNN_LAYERS, 250, bad)


def test_allocation_reaches_the_compartments():
    comps = build_compartments(FC, "layer", d_total=250, allocate="sqrt")
    assert [(c.name, c.d) for c in comps] == [("fc1", 224), ("fc2", 26)]


def test_split_d_caps_at_compartment_size():
    assert split_d([2, 1000], 500) == [2, 498]     # ∝ size would give the 2-vector 0.998 → 1
    assert split_d([2, 1000], 1002) == [2, 1000]   # every direction of both


def test_split_d_errors():
    with pytest.raises(UserError, match="smaller than the number of compartments"):
        split_d([5, 5, 5], 2)
    with pytest.raises(UserError, match="exceeds the number of parameters"):
        split_d([5, 5], 11)


def test_schemes():
    assert segments(FC, "network") == [("network", 0, 101770)]
    assert segments(FC, "layer") == [("fc1", 0, 100480), ("fc2", 100480, 101770)]
    assert segments(FC, "tensor") == [("fc1.weight", 0, 100352), ("fc1.bias", 100352, 100480),
                                      ("fc2.weight", 100480, 101760), ("fc2.bias", 101760, 101770)]
    blocks = segments(FC, "block:50000")
    assert [(s, e) for _, s, e in blocks] == [(0, 50000), (50000, 100000), (100000, 101770)]


def test_build_compartments_covers_theta_once():
    comps = build_compartments(FC, "block:30000", d_total=250)
    assert comps[0].start == 0 and comps[-1].stop == 101770
    assert all(a.stop == b.start for a, b in zip(comps, comps[1:]))
    assert sum(c.d for c in comps) == 250


def test_tensor_compartments_give_biases_their_own_directions():
    comps = build_compartments(FC, "tensor", d_total=250, allocate="equal")
    # 62 or 63 each, but fc2.bias has only 10 parameters: capped, the rest to the largest
    assert [(c.name, c.d) for c in comps] == [("fc1.weight", 115), ("fc1.bias", 63),
                                              ("fc2.weight", 62), ("fc2.bias", 10)]


def test_d_per_compartment():
    comps = build_compartments(FC, "layer", d_per_compartment=50)
    assert [c.d for c in comps] == [50, 50]
    with pytest.raises(UserError, match="larger than compartment 'fc2'"):
        build_compartments(FC, "layer", d_per_compartment=2000)


@pytest.mark.parametrize("bad,message", [
    ("layers", "--compartments 'layers' is not valid; choose one of: network, layer, tensor, block:N"),
    ("block:N", "--compartments 'block:N' is not valid"),  # the placeholder itself
    ("block:x", "--compartments 'block:x' is not valid"),
    ("block:0", "--compartments block:0: block size must be positive"),
])
def test_bad_scheme(bad, message):
    with pytest.raises(UserError, match=message):
        segments(FC, bad)


CNN = [("conv1.weight", 288), ("conv1.bias", 32), ("conv2.weight", 18432), ("conv2.bias", 64),
       ("conv3.weight", 36864), ("conv3.bias", 64), ("fc1.weight", 36864), ("fc1.bias", 64),
       ("fc2.weight", 640), ("fc2.bias", 10)]


def test_rate_multipliers_name_compartments_and_default_to_one():
    comps = build_compartments(CNN, "layer", 250, allocate="equal")
    assert parse_rate_scales("fc1=3, fc2=0.5") == {"fc1": 3.0, "fc2": 0.5}
    assert compartment_rates(comps, "fc1=3,fc2=0.5") == [1.0, 1.0, 1.0, 3.0, 0.5]
    assert compartment_rates(comps, None) == [1.0] * 5
    with pytest.raises(UserError, match="--lr-scale names 'fc3', which is not a compartment of this "
                                        "run; its compartments are conv1, conv2, conv3, fc1, fc2"):
        compartment_rates(comps, "fc3=2")
    for bad in ("fc1", "fc1=", "=2", "fc1=-1", "fc1=0", "fc1=inf", "fc1=x", "fc1=2,"):
        with pytest.raises(UserError, match="must be NAME=X with X a positive finite number"):
            parse_rate_scales(bad)


def test_compartments_of_different_rates_are_never_transformed_together():
    """conv3 and fc1 have the same size and d: srht batches them into one transform, unless
    --lr-scale gives them different rates (one chunk applies one multiplier)."""
    comps = build_compartments(CNN, "layer", 250, allocate="equal")
    ds = [c.d for c in comps]
    plain = [(g.first, g.count) for g in groups(comps, ds, batched=True)]
    assert plain == [(0, 1), (1, 1), (2, 2), (4, 1)]
    assert groups(comps, ds, batched=True, rates=[1, 1, 1, 1, 1]) == groups(comps, ds, batched=True)
    split = groups(comps, ds, batched=True, rates=[1, 1, 1, 3, 1])
    assert [(g.first, g.count, g.rate) for g in split] == [(0, 1, 1), (1, 1, 1), (2, 1, 1), (3, 1, 3),
                                                           (4, 1, 1)]
    both = groups(comps, ds, batched=True, rates=[1, 1, 2, 2, 1])
    assert [(g.first, g.count, g.rate) for g in both] == [(0, 1, 1), (1, 1, 1), (2, 2, 2), (4, 1, 1)]
