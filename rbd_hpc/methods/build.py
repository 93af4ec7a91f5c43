"""The method factory: a config and a parameter layout → the method object.

Training, resume and replay all build their method here, so replay needs no part of the
training loop. ``cfg`` is a ``TrainConfig`` (only its fields are read).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..bases import Basis, smooth_image_layers
from ..compartments import Compartment, build_compartments, compartment_rates
from ..data import SHAPES
from ..errors import UserError
from .base import Method
from .fpd import FixedProjectionDescent
from .nes import NES
from .rbd import RandomBasesDescent
from .rigl import SPARSE_METHODS, SparseTraining
from .sgd import SGD


def build_method(cfg, named_shapes: list[tuple[str, tuple]], comm, device,
                 world_size: int | None = None,
                 total_steps: int | None = None) -> tuple[Method, list[Compartment]]:
    """(method, compartments) for ``cfg`` over parameters ``named_shapes``.

    ``world_size`` is the rank count the run was trained with (replay of a per-rank run
    rebuilds all R·d directions in one process); sparse methods need ``total_steps``."""
    if cfg.method == "sgd":
        return SGD(comm, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                   unfused=cfg.kernels >= 3), []
    if cfg.method in SPARSE_METHODS:
        return _sparse(cfg, named_shapes, comm, total_steps), []
    named_sizes = [(n, int(np.prod(s))) for n, s in named_shapes]
    compartments = build_compartments(named_sizes, cfg.compartments, cfg.d, cfg.d_per_compartment,
                                      cfg.allocate)
    image = smooth_image_layers(cfg.dist, compartments, named_shapes, SHAPES.get(cfg.dataset, (None,))[0],
                                f"{cfg.model}, --compartments {cfg.compartments}")
    if cfg.method == "nes":
        return _nes(cfg, compartments, comm, device, image), compartments
    basis = Basis(cfg.basis, cfg.seed, device, image_layers=image)
    common = dict(mode=cfg.mode, chunk_size=cfg.chunk, redraw_every=cfg.redraw_every,
                  world_size=world_size, keep_in_memory=bool(cfg.keep_in_memory),
                  momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.method == "fpd":
        method = FixedProjectionDescent(compartments, basis, comm, **common,
                                        carry_coordinates=cfg.fpd == "official")
    else:
        method = RandomBasesDescent(compartments, basis, comm, **common,
                                    rates=compartment_rates(compartments, cfg.lr_scale))
    if cfg.keep_in_memory is None:
        method.keep_in_memory = keeps_directions(method, sum(c.size for c in compartments))
    too_many = [c for c in compartments if c.d * method.ranks > c.size]
    if method.direction_parallel and too_many:
        c = too_many[0]
        raise UserError(f"per-rank mode: {method.ranks} ranks × d={c.d} directions exceed "
                        f"compartment {c.name!r} ({c.size} parameters)")
    return method, compartments


KEEP_BYTES = 512 * 2**20  # the directions --keep-in-memory holds by default, at most


def keeps_directions(method: RandomBasesDescent, dim: int) -> bool:
    """The default of --keep-in-memory: hold a step's directions when they serve more than one
    step (FPD: the run; --redraw-every N > 1: N steps) and their float32 matrix, every direction
    this process applies (R·d in per-rank mode) by θ's ``dim`` entries, fits in KEEP_BYTES.
    Held or regenerated, the directions and the trajectory are the same bits."""
    return method.reuses_directions and 4 * method.n_coefficients * dim <= KEEP_BYTES


def _sparse(cfg, named_shapes, comm, total_steps: int | None) -> SparseTraining:
    """RigL / SET / Static over every weight matrix or kernel (biases stay dense)."""
    if total_steps is None:
        raise ValueError("sparse methods need the run length")
    layers, offset = [], 0
    for name, shape in named_shapes:
        n = int(np.prod(shape))
        if name.endswith("weight") and len(shape) > 1:
            layers.append((name, offset, offset + n, tuple(shape)))
        offset += n
    return SparseTraining(cfg.method, layers, comm, cfg.seed, cfg.sparsity, cfg.sparsity_dist,
                          total_steps, cfg.momentum, cfg.mask_every, cfg.drop_fraction,
                          weight_decay=cfg.weight_decay, update=cfg.mask_update,
                          unfused=cfg.kernels >= 3)


def _nes(cfg, compartments, comm, device, image) -> NES:
    # same-batch NES always pairs its offspring; the paper's pairs them only with --antithetic
    antithetic = cfg.nes == "same-batch" or cfg.antithetic
    odd = [c for c in compartments if c.d % 2]
    if antithetic and odd:
        raise UserError(f"NES evaluates antithetic pairs: compartment {odd[0].name!r} got an odd "
                        f"d={odd[0].d}; use an even --d / --d-per-compartment")
    basis = Basis(dataclasses.replace(cfg.basis, antithetic=antithetic), cfg.seed, device,
                  image_layers=image)
    return NES(compartments, basis, comm, mode="shared", chunk_size=cfg.chunk,
               redraw_every=cfg.redraw_every, world_size=1, sigma=cfg.sigma,
               weight_decay=cfg.weight_decay, variant=cfg.nes)
