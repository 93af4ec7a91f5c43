"""How θ is split into compartments and how the d directions are allocated.

Pure functions over parameter names and sizes: no torch, no MPI.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

from .errors import UserError, choice_error, require_positive

SCHEMES = ("network", "layer", "tensor", "block:N")
# how --d is split: d_k ∝ D_k, ∝ √D_k, the same for every compartment, or ∝ D_k^P
_WEIGHT = {"size": float, "sqrt": math.sqrt, "equal": lambda n: 1.0}
ALLOCATIONS = (*_WEIGHT, "power:P")


@dataclasses.dataclass(frozen=True)
class Compartment:
    """A contiguous slice [start, stop) of the flat parameter vector with d directions."""

    index: int
    start: int
    stop: int
    d: int
    name: str

    @property
    def size(self) -> int:
        return self.stop - self.start


def allocation_weight(allocate: str) -> Callable[[int], float]:
    """The weight w of an ``--allocate`` rule (d_k ∝ w(D_k)); a bad rule is a UserError.

    ``power:P`` is d_k ∝ D_k^P for any finite P: 1 is ``size``, 0.5 ``sqrt``, 0 ``equal``,
    and a negative P gives small compartments more directions than large ones.
    """
    if allocate in _WEIGHT:
        return _WEIGHT[allocate]
    m = re.fullmatch(r"power:(.*)", allocate)
    if m:
        try:
            p = float(m.group(1))
        except ValueError:
            p = math.nan
        if not math.isfinite(p):
            raise UserError(f"--allocate {allocate!r}: P must be a finite number, e.g. power:0.25")
        return lambda n: float(n) ** p
    raise choice_error("--allocate", allocate, ALLOCATIONS)


def _weights(sizes: list[int], allocate: str) -> list[float]:
    """w(D_k) for every compartment; where a large |P| overflows or underflows the plain
    powers, the same ratios from logarithms, scaled so that the largest weight is 1."""
    weight = allocation_weight(allocate)
    try:
        weights = [weight(n) for n in sizes]
        if all(math.isfinite(w) for w in weights) and sum(weights) > 0:
            return weights
    except OverflowError:
        pass
    p = float(allocate.partition(":")[2])
    logs = [p * math.log(n) for n in sizes]
    top = max(logs)
    return [math.exp(v - top) for v in logs]


def split_d(sizes: list[int], d_total: int, allocate: str = "size") -> list[int]:
    """Split ``d_total`` directions over compartments by a rule on their sizes.

    ``size``: in proportion to D_k (every parameter equally likely to be covered);
    ``sqrt``: in proportion to √D_k; ``equal``: the same number each; ``power:P``: in
    proportion to D_k^P. Small compartments get a larger share of their own dimensions
    under ``sqrt``, ``equal`` and P < 1, so a larger effective step (the step along
    compartment k scales with d_k / D_k).
    Largest-remainder rounding; every compartment gets at least one direction and at
    most its own size. The result sums to ``d_total`` exactly.
    """
    k = len(sizes)
    weights = _weights(sizes, allocate)
    if d_total < k:
        raise UserError(f"--d {d_total} is smaller than the number of compartments ({k}); "
                        f"use --d >= {k} or fewer compartments")
    if d_total > sum(sizes):
        raise UserError(f"--d {d_total} exceeds the number of parameters ({sum(sizes)})")
    total = sum(weights)
    # one direction each, the rest by weight (largest remainder)
    rest = d_total - k
    quotas = [rest * w / total for w in weights]
    alloc = [1 + int(q) for q in quotas]
    order = sorted(range(k), key=lambda i: (-(quotas[i] - int(quotas[i])), i))
    short = d_total - sum(alloc)
    for i in order[:short]:
        alloc[i] += 1
    # cap at the compartment size, handing the excess to those with room
    excess = 0
    for i, s in enumerate(sizes):
        if alloc[i] > s:
            excess += alloc[i] - s
            alloc[i] = s
    for i in sorted(range(k), key=lambda i: -sizes[i]):
        room = sizes[i] - alloc[i]
        take = min(room, excess)
        alloc[i] += take
        excess -= take
    assert sum(alloc) == d_total
    return alloc


def _layer_of(name: str) -> str:
    """'conv1.weight' -> 'conv1': parameters of one module form one layer."""
    return name.rsplit(".", 1)[0] if "." in name else name


def segments(param_sizes: list[tuple[str, int]], scheme: str) -> list[tuple[str, int, int]]:
    """Compartment boundaries (name, start, stop) for a scheme, before d is allocated."""
    total = sum(n for _, n in param_sizes)
    if scheme == "network":
        return [("network", 0, total)]
    if scheme == "layer":
        out: list[tuple[str, int, int]] = []
        offset = 0
        for name, n in param_sizes:
            layer = _layer_of(name)
            if out and out[-1][0] == layer:
                out[-1] = (layer, out[-1][1], offset + n)
            else:
                out.append((layer, offset, offset + n))
            offset += n
        return out
    if scheme == "tensor":  # every parameter tensor (a weight, a bias) on its own
        starts = [0]
        for _, n in param_sizes:
            starts.append(starts[-1] + n)
        return [(name, lo, hi) for (name, _), lo, hi in zip(param_sizes, starts, starts[1:])]
    m = re.fullmatch(r"block:(\d+)", scheme)
    if m:
        size = int(m.group(1))
        if size <= 0:
            raise UserError(f"--compartments {scheme}: block size must be positive")
        return [(f"block{i}", s, min(s + size, total))
                for i, s in enumerate(range(0, total, size))]
    raise choice_error("--compartments", scheme, SCHEMES)  # "block:N" itself too


def build_compartments(param_sizes: list[tuple[str, int]], scheme: str,
                       d_total: int | None = None,
                       d_per_compartment: int | None = None,
                       allocate: str = "size") -> list[Compartment]:
    """Compartments with their d: ``d_total`` split by ``allocate`` or ``d_per_compartment`` each."""
    segs = segments(param_sizes, scheme)
    sizes = [stop - start for _, start, stop in segs]
    if d_per_compartment is not None:
        require_positive("--d-per-compartment", d_per_compartment)
        small = [(n, s) for (n, _, _), s in zip(segs, sizes) if s < d_per_compartment]
        if small:
            raise UserError(f"--d-per-compartment {d_per_compartment} is larger than compartment "
                            f"{small[0][0]!r} ({small[0][1]} parameters)")
        ds = [d_per_compartment] * len(segs)
    else:
        require_positive("--d", d_total)
        ds = split_d(sizes, d_total, allocate)
    return [Compartment(i, start, stop, d, name)
            for i, ((name, start, stop), d) in enumerate(zip(segs, ds))]


def parse_rate_scales(text: str) -> dict[str, float]:
    """``--lr-scale NAME=X,NAME=X`` → {NAME: X}: each X a positive finite number, each NAME
    once. Which names exist is known only with the model (``compartment_rates``)."""
    scales: dict[str, float] = {}
    for item in text.split(","):
        name, eq, value = (part.strip() for part in item.partition("="))
        try:
            x = float(value) if eq and name else math.nan
        except ValueError:
            x = math.nan
        if not (math.isfinite(x) and x > 0):
            raise UserError(f"--lr-scale {text!r}: {item.strip()!r} must be NAME=X with X a positive "
                            f"finite number, e.g. fc1=3,fc2=4")
        if name in scales:
            raise UserError(f"--lr-scale {text!r} names compartment {name!r} twice")
        scales[name] = x
    return scales


def compartment_rates(compartments: list[Compartment], text: str | None) -> list[float]:
    """Each compartment's multiplier of the learning rate under ``--lr-scale`` (1 where the
    flag does not name it); a name that is no compartment is a UserError listing them."""
    scales = parse_rate_scales(text) if text is not None else {}
    names = [c.name for c in compartments]
    unknown = [n for n in scales if n not in names]
    if unknown:
        raise UserError(f"--lr-scale names {unknown[0]!r}, which is not a compartment of this run; "
                        f"its compartments are {', '.join(names)}")
    return [scales.get(n, 1.0) for n in names]
