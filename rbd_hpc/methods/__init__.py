"""Training methods: pure torch, one file each, no files written, no mpi4py."""
from .fpd import FixedProjectionDescent
from .nes import NES
from .rbd import MODES, RandomBasesDescent, StepResult
from .rigl import SPARSE_METHODS, SPARSITY_DISTRIBUTIONS, SparseTraining
from .sgd import SGD

METHODS = ("rbd", "fpd", "nes", "sgd") + SPARSE_METHODS

__all__ = ["FixedProjectionDescent", "MODES", "METHODS", "NES", "RandomBasesDescent", "SGD",
           "SPARSE_METHODS", "SPARSITY_DISTRIBUTIONS", "SparseTraining", "StepResult"]
