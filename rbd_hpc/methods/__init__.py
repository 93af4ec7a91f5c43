"""Training methods: pure torch, one file each, no files written, no mpi4py.

The names here are the only definition of which methods, modes and sparsity distributions
exist; the config validates against them and ``build.build_method`` constructs them.
"""
from .base import Method, StepResult
from .fpd import FixedProjectionDescent
from .nes import NES
from .rbd import MODES, RandomBasesDescent
from .rigl import SPARSE_METHODS, SPARSITY_DISTRIBUTIONS, SparseTraining
from .sgd import SGD

METHODS = ("rbd", "fpd", "nes", "sgd") + SPARSE_METHODS
# methods that step along the full gradient (no coefficients logged, not replayable)
GRADIENT_METHODS = ("sgd",) + SPARSE_METHODS
SVRG_METHODS = ("rbd", "fpd")  # methods that project a gradient onto random directions
MOMENTUM_METHODS = ("rbd", "fpd", *GRADIENT_METHODS)  # NES steps are shaped ranks

__all__ = ["FixedProjectionDescent", "GRADIENT_METHODS", "METHODS", "MODES", "MOMENTUM_METHODS",
           "Method", "NES", "RandomBasesDescent", "SGD", "SPARSE_METHODS",
           "SPARSITY_DISTRIBUTIONS", "SVRG_METHODS", "SparseTraining", "StepResult"]
