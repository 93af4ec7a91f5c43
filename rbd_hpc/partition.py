"""Which part of n items a rank takes: one pure rule for batches, evaluation, anchor passes
and NES offspring (docs/design.md, invariant 6)."""
from __future__ import annotations


def share(n: int, rank: int, size: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` items among ``size`` ranks; shares differ by
    at most one item and cover [0, n) in rank order."""
    return range(n * rank // size, n * (rank + 1) // size)
