"""Training methods: pure torch, one file each, no files written, no mpi4py."""
from .fpd import FixedProjectionDescent
from .rbd import MODES, RandomBasesDescent, StepResult
from .sgd import SGD

METHODS = ("rbd", "fpd", "sgd")

__all__ = ["FixedProjectionDescent", "MODES", "METHODS", "RandomBasesDescent", "SGD",
           "StepResult"]
