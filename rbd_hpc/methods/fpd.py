"""Fixed Projection Descent (Li et al. 2018): RBD with the directions frozen for the run."""
from __future__ import annotations

from .rbd import RandomBasesDescent


class FixedProjectionDescent(RandomBasesDescent):
    """The same directions at every step: the seed key's step index is frozen at 0."""

    name = "fpd"

    def key_step(self, step: int) -> int:
        return 0
