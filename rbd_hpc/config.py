"""Run configuration: a validated dataclass, stored whole in the run file.

Presets carry the paper's settings (DESIGN.md: official machinable.yaml): batch 32,
no momentum, no schedule, learning rate = base × batch size. The paper trained with
augmentation for 100 epochs; here it is opt-in (--augment) because over short runs it
costs accuracy (FC-FMNIST SGD, 1 epoch: 82.3% without, 72.9% with).
"""
from __future__ import annotations

import dataclasses
import json
import math

from .bases import BasisConfig
from .compartments import allocation_weight, segments
from .errors import UserError, require_choice, require_positive
from .svrg import require_every

METHODS = ("rbd", "fpd", "nes", "sgd", "rigl", "set", "static")
# methods that step along the full gradient (no coefficients logged, not replayable)
GRADIENT_METHODS = ("sgd", "rigl", "set", "static")
SVRG_METHODS = ("rbd", "fpd")  # methods that project a gradient onto random directions
MOMENTUM_METHODS = ("rbd", "fpd", *GRADIENT_METHODS)  # NES steps are shaped ranks
MODES = ("shared", "per-rank")
SCHEDULES = ("constant", "cosine")
DEVICES = ("cpu", "cuda", "ipu")

# base learning rates (× batch size) from the official code, per (model, data set)
BASE_LR = {
    ("fc", "mnist"): {"rbd": 2**-5, "sgd": 2**-8},
    ("fc", "fmnist"): {"rbd": 2**-6, "sgd": 2**-7},
    ("fc", "cifar10"): {"rbd": 2**-7, "sgd": 2**-12},
    ("cnn", "mnist"): {"rbd": 2**-9, "sgd": 2**-10},
    ("cnn", "fmnist"): {"rbd": 2**-8, "sgd": 2**-9},
    ("cnn", "cifar10"): {"rbd": 2**-8, "sgd": 2**-11},
    # not in the paper's table: CNN-CIFAR10 rates as a starting point
    ("resnet8", "cifar10"): {"rbd": 2**-8, "sgd": 2**-11},
    ("resnet20", "cifar10"): {"rbd": 2**-8, "sgd": 2**-11},
}

PRESETS = {
    "fc-mnist": ("fc", "mnist", 250),
    "fc-fmnist": ("fc", "fmnist", 250),
    "fc-cifar10": ("fc", "cifar10", 250),
    "cnn-mnist": ("cnn", "mnist", 250),
    "cnn-fmnist": ("cnn", "fmnist", 250),
    "cnn-cifar10": ("cnn", "cifar10", 250),
    "resnet8-cifar10": ("resnet8", "cifar10", 500),  # the paper's Figure 3 setting
}


def base_lr(model: str, dataset: str, method: str) -> float:
    rates = BASE_LR.get((model, dataset), BASE_LR[("cnn", dataset)] if model != "fc"
                        else BASE_LR[("fc", dataset)])
    # FPD and NES use RBD's rate; the sparse methods are SGD on masked weights
    return rates["sgd" if method in GRADIENT_METHODS else "rbd"]


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a run's trajectory (plus where its data lives)."""

    model: str = "fc"
    dataset: str = "fmnist"
    method: str = "rbd"
    preset: str | None = "fc-fmnist"
    d: int = 250
    d_per_compartment: int | None = None
    dist: str = "gaussian"
    normalize: str = "expected"
    antithetic: bool = False
    compartments: str = "network"
    allocate: str = "size"             # how --d is split over compartments: size, sqrt, equal, power:P
    redraw_every: int = 1
    chunk: int = 50
    epochs: int | None = 1
    steps: int | None = None
    batch_size: int = 32
    lr: float | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0          # decoupled: θ ← (1 − ηλ) θ every step
    svrg_every: int = 0                # SVRG anchor every N steps (rbd, fpd); 0: off
    schedule: str = "constant"
    seed: int = 0
    data_dir: str | None = None
    val_size: int = 5000
    augment: bool = False
    mode: str = "shared"
    snapshot_every: int = 500
    check_every: int = 0
    device: str = "cpu"
    threads: int | None = None
    keep_in_memory: bool = False       # hold directions while they do not change (FPD)
    sigma: float = 0.05                # NES noise scale
    sparsity: float = 0.9              # RigL / SET / Static
    sparsity_dist: str = "uniform"
    mask_every: int = 100
    drop_fraction: float = 0.3

    def __post_init__(self):
        from .data import DATASETS
        from .models import MODELS

        if self.preset is not None:
            require_choice("--preset", self.preset, tuple(PRESETS))
        require_choice("--model", self.model, MODELS)
        require_choice("--dataset", self.dataset, DATASETS)
        require_choice("--method", self.method, METHODS)
        BasisConfig(self.dist, self.normalize)  # validates --dist (incl. smooth:σ), --normalize
        require_choice("--mode", self.mode, MODES)
        require_choice("--schedule", self.schedule, SCHEDULES)
        require_choice("--device", self.device, DEVICES)
        segments([("x", 1)], self.compartments)  # validates the scheme's spelling
        allocation_weight(self.allocate)
        require_positive("--d", self.d)
        require_positive("--d-per-compartment", self.d_per_compartment, allow_none=True)
        require_positive("--redraw-every", self.redraw_every)
        require_positive("--chunk", self.chunk)
        require_positive("--batch-size", self.batch_size)
        require_positive("--snapshot-every", self.snapshot_every)
        require_positive("--threads", self.threads, allow_none=True)
        if self.epochs is None and self.steps is None:
            raise UserError("give --epochs N or --steps N")
        require_positive("--epochs", self.epochs, allow_none=True)
        require_positive("--steps", self.steps, allow_none=True)
        if self.lr is None:
            self.lr = base_lr(self.model, self.dataset, self.method) * self.batch_size
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr {self.lr} must be a positive finite number")
        if not 0.0 <= self.momentum < 1.0:
            raise UserError(f"--momentum {self.momentum} must be in [0, 1)")
        if self.momentum and self.method not in MOMENTUM_METHODS:
            applies = ", ".join(MOMENTUM_METHODS[:-1]) + " and " + MOMENTUM_METHODS[-1]
            raise UserError(f"--momentum {self.momentum} applies to {applies} only, not to "
                            f"--method {self.method}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"--weight-decay {self.weight_decay} must be a finite number ≥ 0")
        if self.lr * self.weight_decay >= 1:
            raise UserError(f"--weight-decay {self.weight_decay} with --lr {self.lr} scales θ by "
                            f"1 − ηλ = {1 - self.lr * self.weight_decay:g} per step; "
                            f"ηλ must be below 1")
        require_every(self.svrg_every)
        if self.svrg_every and self.method not in SVRG_METHODS:
            raise UserError(f"--svrg-every corrects the gradient that rbd and fpd project, "
                            f"not --method {self.method}")
        if self.svrg_every and self.augment:
            raise UserError("--svrg-every with --augment: the anchor gradient is taken over the "
                            "unaugmented training set, so the correction would be biased; "
                            "drop one of them")
        if not 0 <= self.seed < 2**63:
            raise UserError(f"--seed {self.seed} must be in [0, 2**63)")
        require_choice("--sparsity-dist", self.sparsity_dist, ("uniform", "erk"))
        if not 0.0 <= self.sparsity < 1.0:
            raise UserError(f"--sparsity {self.sparsity} must be in [0, 1)")
        if not 0.0 < self.drop_fraction < 1.0:
            raise UserError(f"--drop-fraction {self.drop_fraction} must be in (0, 1)")
        require_positive("--mask-every", self.mask_every)
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise UserError(f"--sigma {self.sigma} must be a positive number")
        if self.check_every < 0:
            raise UserError(f"--check-every {self.check_every} must be >= 0")

    @property
    def basis(self) -> BasisConfig:
        return BasisConfig(self.dist, self.normalize, self.antithetic)

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "TrainConfig":
        require_choice("--preset", preset, tuple(PRESETS))
        model, dataset, d = PRESETS[preset]
        fields = {"model": model, "dataset": dataset, "d": d, "preset": preset}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        data = json.loads(text)
        unknown = sorted(set(data) - cls.field_names())
        if unknown:
            raise UserError(f"run file config has unknown keys {unknown}; it was written by a "
                            "newer rbd-hpc")
        return cls(**data)

    # keys that may differ between a run and its resume without changing the trajectory
    RESUME_FREE = ("data_dir", "threads", "epochs", "steps", "check_every")
