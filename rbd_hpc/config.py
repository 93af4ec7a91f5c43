"""Run configuration: one validated dataclass, stored whole in the run file.

Every training option is declared once, as a field made by ``option(...)``: its default, its
help, its valid choices or range and whether a resume may change it. The ``rbd-hpc train``
flags, their help text, the validation and the resume rule are generated from these fields
(cli.add_config_options, TrainConfig.__post_init__, TrainConfig.resume_free). Rules that tie
two fields together are written out in ``__post_init__``.

Presets carry the paper's settings (official machinable.yaml): batch 32, no momentum, no
schedule, learning rate = base × batch size. The paper trained with augmentation for 100
epochs on a 50,000 / 10,000 split; by default here augmentation is opt-in (--augment) because
over short runs it costs accuracy (FC-FMNIST SGD, 1 epoch: 82.3% without, 72.9% with), and
--protocol paper sets every one of the paper's settings at once (PAPER_PROTOCOL).
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path

import yaml

from .bases import BasisConfig
from .kernels import CURRENT, KERNELS
from .compartments import allocation_weight, parse_rate_scales, segments
from .data import DATASETS
from .errors import UserError, choice_error, require_choice, require_positive
from .methods import (GRADIENT_METHODS, METHODS, MODES, MOMENTUM_METHODS, SPARSITY_DISTRIBUTIONS,
                      SVRG_METHODS)
from .models import MODELS
from .usercode import is_spec

SCHEDULES = ("constant", "cosine")
PROTOCOLS = ("custom", "paper")
NES_VARIANTS = ("paper", "same-batch")
MASK_UPDATES = ("published", "rbd-hpc-0.1")
FPD_VARIANTS = ("li", "official")

# --protocol paper: the official configuration of the paper's Table 1 runs (machinable.yaml
# of graphcore-research/random-bases); a field left unset takes this value, a field set to
# another value is a deviation, listed by paper_deviations. The learning rate is the preset's
# (the official base rate × batch size) unless --lr is given.
PAPER_PROTOCOL = {
    "epochs": 100, "batch_size": 32, "val_size": 10000, "augment": True,
    "dist": "gaussian", "normalize": "expected", "antithetic": False, "compartments": "network",
    "redraw_every": 1, "schedule": "constant", "lr_min": 0.0, "momentum": 0.0, "weight_decay": 0.0,
    "svrg_every": 0, "sigma": 0.01, "nes": "paper", "mask_update": "published",
    "fpd": "official",
}
# the fields each method reads, of those above (the others do not change its trajectory)
_DIRECTION_FIELDS = ("dist", "normalize", "compartments", "redraw_every")
PAPER_FIELDS_BY_METHOD = {
    "rbd": _DIRECTION_FIELDS + ("antithetic", "momentum", "weight_decay", "svrg_every"),
    "fpd": _DIRECTION_FIELDS + ("antithetic", "momentum", "weight_decay", "svrg_every", "fpd"),
    "nes": _DIRECTION_FIELDS + ("antithetic", "weight_decay", "sigma", "nes"),
    "sgd": ("momentum", "weight_decay"),
}
_SPARSE_FIELDS = ("mask_update", "momentum", "weight_decay")  # rigl, set, static
_COMMON_PAPER_FIELDS = ("epochs", "batch_size", "val_size", "augment", "schedule", "lr_min")
MAX_THREADS = 4096   # torch's thread count is a C int; beyond any node's cores anyway
MAX_LR = 1e30        # float32 overflows near 3.4e38: a step would turn θ into inf
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


def preset_fields(preset: str) -> dict:
    """The fields a preset sets: model, data set, d and its own name."""
    require_choice("--preset", preset, tuple(PRESETS))
    model, dataset, d = PRESETS[preset]
    return {"model": model, "dataset": dataset, "d": d, "preset": preset}


def base_lr(model: str, dataset: str, method: str) -> float:
    rates = BASE_LR.get((model, dataset), BASE_LR[("cnn", dataset)] if model != "fc"
                        else BASE_LR[("fc", dataset)])
    # FPD and NES use RBD's rate; the sparse methods are SGD on masked weights
    return rates["sgd" if method in GRADIENT_METHODS else "rbd"]


def option(default, help: str, *, choices: tuple | None = None, positive: bool = False,
           at_least: float | None = None, at_most: float | None = None, rule: str | None = None,
           resume_free: bool = False, cli: bool = True, factory: bool = False):
    """A config field and everything said about it: the flag --NAME (underscores → dashes),
    its help, its check (``choices``; ``positive``; ``at_least``, worded as ``rule``), and
    ``resume_free``: a resume may change it because it does not change the trajectory;
    ``factory``: a factory spec MODULE:NAME of the user's own is valid besides ``choices``."""
    return dataclasses.field(default=default, metadata=dict(
        help=help, choices=choices, positive=positive, at_least=at_least, at_most=at_most,
        rule=rule or (f"≥ {at_least:g}" if at_least is not None else None),
        resume_free=resume_free, cli=cli, factory=factory))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a run's trajectory (plus where its data lives)."""

    model: str = option("fc", "network (default: the preset's), or a factory of your own, "
                        "MODULE:NAME returning a torch.nn.Module", choices=MODELS, factory=True)
    dataset: str = option("fmnist", "data set (default: the preset's), or a factory of your own, "
                          "MODULE:NAME returning (train, test)", choices=DATASETS, factory=True)
    method: str = option("rbd", "training method", choices=METHODS)
    protocol: str = option("custom", "paper: the paper's Table 1 protocol (official split of "
                           "50,000 / 10,000, augmentation, Gaussian directions normalised by "
                           "√D of the network, batch 32, constant official rate, 100 epochs, "
                           "NES and RigL as published) for every field not given; a field "
                           "given is a deviation, recorded and listed (inspect); custom: "
                           "rbd-hpc's own defaults", choices=PROTOCOLS)
    preset: str | None = option("fc-fmnist", "model, data set, d and the paper's learning rate",
                                choices=tuple(PRESETS), cli=False)
    d: int = option(250, "directions per step (split over compartments by --allocate)",
                    positive=True)
    d_per_compartment: int | None = option(None, "directions per compartment instead of --d",
                                           positive=True)
    dist: str = option("gaussian", "direction distribution: gaussian, rademacher, uniform, srht or "
                       "smooth:σ (fc presets with --compartments layer: rank-1 directions, "
                       "blurred-image input side)")
    normalize: str = option("expected", "expected (E‖φ‖² = 1) or exact (‖φ‖ = 1)",
                            choices=("expected", "exact"))
    antithetic: bool = option(False, "directions in pairs (φ, −φ)")
    kernels: int = option(CURRENT, "the arithmetic that makes directions, by generation "
                          "(kernels.py): 3 sums dense directions and applies every method's "
                          "step in an order no CPU feature changes; 2 is the one before; 1 "
                          "reproduces run files of rbd-hpc 0.1 (format 2). A run file keeps its "
                          "generation on resume and replay", choices=KERNELS)
    compartments: str = option("network", "how θ is split: network, layer, tensor or block:N")
    allocate: str = option("size", "split --d over compartments: size (d_k ∝ D_k), sqrt, equal, "
                           "or power:P (d_k ∝ D_k^P)")
    redraw_every: int = option(1, "redraw directions every N steps (RBD)", positive=True)
    chunk: int = option(50, "directions generated per chunk", positive=True)
    epochs: int | None = option(1, "epochs to train", positive=True, resume_free=True)
    steps: int | None = option(None, "train this many steps instead of --epochs", positive=True,
                               resume_free=True)
    batch_size: int = option(32, "global batch size", positive=True)
    lr: float | None = option(None, "learning rate (default: the preset's base × batch size)",
                              at_least=0, rule="a positive finite number")
    momentum: float = option(0.0, "heavy-ball momentum μ in [0, 1) (rbd, fpd, sgd, rigl, set, "
                             "static)")
    weight_decay: float = option(0.0, "decoupled weight decay λ ≥ 0: θ ← (1 − ηλ) θ every step "
                                 "(all methods)", at_least=0, rule="a finite number ≥ 0")
    svrg_every: int = option(0, "SVRG: project g_b(θ) − g_b(θ̃) + μ̃, with θ̃ and the training-set "
                             "gradient μ̃ renewed every N steps (rbd, fpd; e.g. 1718, one "
                             "Fashion-MNIST epoch at batch 32); 0: off", at_least=0,
                             rule="a number of steps ≥ 1 (0: off)")
    schedule: str = option("constant", "learning-rate schedule", choices=SCHEDULES)
    lr_min: float = option(0.0, "cosine schedule: the rate falls from --lr to this floor instead "
                           "of to 0 (torch's CosineAnnealingLR eta_min); 0 ≤ it < --lr",
                           at_least=0, rule="a finite number ≥ 0")
    lr_scale: str | None = option(None, "per-compartment multipliers of the rate, NAME=X,… "
                                  "(rbd): compartment NAME steps at X·η, the others at η; the "
                                  "names are those --compartments makes (e.g. layer: fc1=3,fc2=4; "
                                  "rbd-hpc inspect lists them); weight decay stays at η")
    seed: int = option(0, "root seed of the seed schedule", at_least=0, rule="in [0, 2**63)")
    data_dir: str | None = option(None, "data directory (default $RBD_DATA, or the Debian "
                                  "Fashion-MNIST package)", resume_free=True)
    val_size: int = option(5000, "training samples held out for validation", at_least=0)
    augment: bool = option(False, "the paper's augmentation (random crop, brightness / flip)")
    mode: str = option("shared", "shared (data-parallel) or per-rank (direction-parallel)",
                       choices=MODES)
    snapshot_every: int = option(500, "full θ snapshot every N steps", positive=True)
    check_every: int = option(0, "compare θ hashes across ranks every N steps (0: never)",
                              at_least=0, resume_free=True)
    device: str = option("cpu", "where tensors live", choices=DEVICES)
    threads: int | None = option(None, "torch threads per rank", positive=True, at_most=MAX_THREADS,
                                 resume_free=True)
    keep_in_memory: bool | None = option(None, "keep directions in memory while they stay the "
                                         "same (FPD, --redraw-every N > 1); default: kept when "
                                         "they take at most 512 MiB (4·D·d bytes, ×R in per-rank "
                                         "mode), regenerated otherwise; no bit of the trajectory "
                                         "depends on it", resume_free=True)
    sigma: float | None = option(None, "NES perturbation scale σ (default: 0.01 with --nes paper, "
                                 "the official noise_std; 0.05 with --nes same-batch)")
    nes: str = option("same-batch", "NES variant. paper: offspring θ + σ·ε with ε ~ N(0, I) "
                      "unnormalised (σ·√D_k·φ), each offspring on its own mini-batch, no "
                      "antithetic pairs unless --antithetic, --epochs counted in images over "
                      "all offspring as the official code counts them; same-batch: antithetic "
                      "pairs θ ± σ·φ (‖φ‖ ≈ 1) all scored on the step's one batch (rbd-hpc "
                      "0.1's NES)", choices=NES_VARIANTS)
    fpd: str = option("li", "FPD variant. li: the gradient at θ (Li et al. 2018); official: as "
                      "the paper's code ran it, whose coordinates carry over between steps, so "
                      "the gradient of step t is taken at θ + Σ_i c_{t−1,i} φ_i",
                      choices=FPD_VARIANTS)
    sparsity: float = option(0.9, "RigL/SET/Static: fraction of weights kept at zero, in [0, 1)")
    sparsity_dist: str = option("uniform", "RigL/SET/Static: how sparsity is spread over layers",
                                choices=SPARSITY_DISTRIBUTIONS)
    mask_every: int = option(100, "RigL/SET: steps between mask updates (ΔT)", positive=True)
    drop_fraction: float = option(0.3, "RigL/SET: initial drop fraction α, in (0, 1)")
    mask_update: str = option("published", "RigL/SET mask update. published (Evci et al.'s "
                              "code): regrow among every connection inactive after the drop, "
                              "and no gradient step on a mask-update step; rbd-hpc-0.1: regrow "
                              "only among connections inactive before the drop, and take the "
                              "gradient step as well", choices=MASK_UPDATES)
    eval_batch_size: int = option(1000, "samples per forward pass in evaluation (memory only: "
                                  "the trajectory does not depend on it)", positive=True,
                                  resume_free=True)

    def __post_init__(self):
        if self.sigma is None:
            self.sigma = 0.01 if self.nes == "paper" else 0.05
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        BasisConfig(self.dist, self.normalize)  # validates --dist (incl. smooth:σ), --normalize
        segments([("x", 1)], self.compartments)  # validates the scheme's spelling
        allocation_weight(self.allocate)
        if self.epochs is None and self.steps is None:
            raise UserError("give --epochs N or --steps N")
        own = [flag(n) + " " + getattr(self, n) for n in ("model", "dataset")
               if is_spec(getattr(self, n))]
        if self.lr is None and own:
            raise UserError(f"{own[0]}: give --lr (the paper's learning rates are for its own "
                            "models and data sets)")
        if self.augment and is_spec(self.dataset):
            raise UserError(f"--augment is the paper's image augmentation of its data sets, not "
                            f"for --dataset {self.dataset}")
        if self.lr is None:
            self.lr = base_lr(self.model, self.dataset, self.method) * self.batch_size
        if not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LR):
            raise UserError(f"--lr {self.lr} must be a positive finite number (at most {MAX_LR:g})")
        if self.lr_min and self.schedule != "cosine":
            raise UserError(f"--lr-min {self.lr_min} is the floor of --schedule cosine; "
                            f"--schedule {self.schedule} has none")
        if not (math.isfinite(self.lr_min) and self.lr_min < self.lr):
            raise UserError(f"--lr-min {self.lr_min} must be a finite number below --lr {self.lr:g}")
        if self.lr_scale is not None:
            if self.method != "rbd":
                raise UserError(f"--lr-scale {self.lr_scale} scales the steps of rbd's "
                                f"compartments, not of --method {self.method}")
            top = max(parse_rate_scales(self.lr_scale).values())
            if self.lr * top > MAX_LR:
                raise UserError(f"--lr-scale {self.lr_scale} with --lr {self.lr:g} gives a rate "
                                f"above {MAX_LR:g}")
        if not 0.0 <= self.momentum < 1.0:
            raise UserError(f"--momentum {self.momentum} must be in [0, 1)")
        if self.momentum and self.method not in MOMENTUM_METHODS:
            applies = ", ".join(MOMENTUM_METHODS[:-1]) + " and " + MOMENTUM_METHODS[-1]
            raise UserError(f"--momentum {self.momentum} applies to {applies} only, not to "
                            f"--method {self.method}")
        if self.lr * self.weight_decay >= 1:
            raise UserError(f"--weight-decay {self.weight_decay} with --lr {self.lr} scales θ by "
                            f"1 − ηλ = {1 - self.lr * self.weight_decay:g} per step; "
                            f"ηλ must be below 1")
        if self.svrg_every and self.method not in SVRG_METHODS:
            raise UserError(f"--svrg-every corrects the gradient that rbd and fpd project, "
                            f"not --method {self.method}")
        if self.svrg_every and self.augment:
            raise UserError("--svrg-every with --augment: the anchor gradient is taken over the "
                            "unaugmented training set, so the correction would be biased; "
                            "drop one of them")
        if self.seed >= 2**63:  # the lower bound is the field's
            raise UserError(f"--seed {self.seed} must be in [0, 2**63)")
        if not 0.0 <= self.sparsity < 1.0:
            raise UserError(f"--sparsity {self.sparsity} must be in [0, 1)")
        if not 0.0 < self.drop_fraction < 1.0:
            raise UserError(f"--drop-fraction {self.drop_fraction} must be in (0, 1)")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise UserError(f"--sigma {self.sigma} must be a positive number")
        if self.protocol == "paper" and (is_spec(self.model) or is_spec(self.dataset)):
            raise UserError("--protocol paper is the paper's protocol for its own models and data "
                            "sets; drop it for a model or data set of your own")

    def deviations(self) -> list[str]:
        """Every setting of a --protocol paper run that differs from the paper's protocol, as
        'FLAG VALUE (paper: VALUE)'; [] for a run at the paper's settings or a custom run."""
        if self.protocol != "paper":
            return []
        out = []
        fields = _COMMON_PAPER_FIELDS + PAPER_FIELDS_BY_METHOD.get(self.method, _SPARSE_FIELDS)
        for name in fields:
            value, paper = getattr(self, name), PAPER_PROTOCOL[name]
            if name == "epochs" and self.steps is not None:
                out.append(f"--steps {self.steps} (paper: 100 epochs)")
            elif value != paper:
                out.append(f"{flag(name)} {_shown(value)} (paper: {_shown(paper)})")
        paper_lr = base_lr(self.model, self.dataset, self.method) * 32
        if self.lr != paper_lr:
            out.append(f"--lr {self.lr:g} (paper: {paper_lr:g})")
        paper_d = PRESETS[self.preset][2] if self.preset in PRESETS else None
        if self.method != "sgd" and paper_d is not None and self.d != paper_d:
            out.append(f"--d {self.d} (paper: {paper_d})")
        directions = "dist" in PAPER_FIELDS_BY_METHOD.get(self.method, ())  # rbd, fpd, nes
        if self.lr_scale is not None:
            out.append(f"--lr-scale {self.lr_scale} (paper: one rate for the network)")
        if self.d_per_compartment is not None:
            out.append(f"--d-per-compartment {self.d_per_compartment} (paper: one d for the "
                       "network)")
        elif directions and self.compartments != "network" and self.allocate != "size":
            out.append(f"--allocate {self.allocate} (paper: one compartment)")  # how d is split
        if self.kernels == 1 and directions:
            # generations 2 and 3 differ only in the order of one sum of dense directions;
            # rbd-hpc 0.1's generation 1 draws gaussian directions from another sampler
            out.append("--kernels 1 (rbd-hpc 0.1's arithmetic for the same directions)")
        return out

    @property
    def basis(self) -> BasisConfig:
        return BasisConfig(self.dist, self.normalize, self.antithetic, self.kernels)

    # -- the one way in: every config is built from a dict through from_dict ---------------
    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        """A config from field values; an unknown key is refused with the list of valid ones."""
        if not isinstance(values, dict):
            raise UserError(f"{source} must be a JSON object of config fields, not "
                            f"{type(values).__name__}")
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise UserError(f"{source} has unknown key(s) {unknown}; valid: "
                            + ", ".join(cls.field_names()))
        if values.get("protocol") == "paper":  # the paper's value for every field not given
            given = {k: v for k, v in values.items() if v is not None}
            if "steps" in given:
                given.setdefault("epochs", None)
            values = {**PAPER_PROTOCOL, **given}
        return cls(**values)

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> "TrainConfig":
        """The preset's model, data set and d, then ``overrides`` (None values are skipped)."""
        fields = preset_fields(preset)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(fields, "preset overrides")

    @classmethod
    def from_json(cls, text: str, source: str = "run file config") -> "TrainConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{source} is not valid JSON: {e}") from None
        return cls.from_dict(values, source)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def resume_free(cls) -> set[str]:
        """Fields a resume may change without changing the trajectory."""
        return {f.name for f in dataclasses.fields(cls) if f.metadata["resume_free"]}

    @classmethod
    def trajectory_fields(cls) -> set[str]:
        """Fields that shape the trajectory: every run file's config must hold them."""
        return set(cls.field_names()) - cls.resume_free()


# the Python type each annotation admits, and its wording in an error
_KINDS = {"int": ((int,), "an integer"), "float": ((int, float), "a number"),
          "bool": ((bool,), "true or false"), "str": ((str,), "a string")}


def field_kind(f: dataclasses.Field) -> tuple[str, bool]:
    """(base type name, whether None is allowed) from an annotation like ``int | None``."""
    parts = [p.strip() for p in str(f.type).split("|")]
    return [p for p in parts if p != "None"][0], "None" in parts


def _check_field(f: dataclasses.Field, value) -> None:
    """The checks an ``option`` declares: type, choices, sign. One error line naming the flag."""
    name, meta = flag(f.name), f.metadata
    base, nullable = field_kind(f)
    if value is None:
        if nullable:
            return
        raise UserError(f"{name} must be set")
    types, wording = _KINDS[base]
    if not isinstance(value, types) or (base != "bool" and isinstance(value, bool)):
        raise UserError(f"{name} {value!r} must be {wording}")
    if base == "float" and not math.isfinite(value):
        raise UserError(f"{name} {value} must be {meta['rule'] or 'a finite number'}")
    if meta["choices"] is not None and value not in meta["choices"]:
        if not (meta["factory"] and is_spec(value)):
            raise choice_error(name, value, meta["choices"] + (("MODULE:NAME",) if meta["factory"] else ()))
    if meta["positive"]:
        require_positive(name, value)
    if meta["at_least"] is not None and value < meta["at_least"]:
        raise UserError(f"{name} {value} must be {meta['rule']}")
    if meta["at_most"] is not None and value > meta["at_most"]:
        raise UserError(f"{name} {value} must be at most {meta['at_most']:g}")
    if base == "str" and not value.strip():
        raise UserError(f"{name} must not be empty")


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_option(name: str, value) -> None:
    """Check one value against its field's declaration (bench takes a few training options)."""
    _check_field(FIELDS[name], value)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}  # name → its declaration
CONFIG_FORMATS = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}


def parse_config_text(text: str, kind: str, source: str) -> dict:
    """Config fields from TOML, YAML or JSON text: a mapping, or one clear error line."""
    try:
        if kind == "TOML":
            fields = tomllib.loads(text)
        elif kind == "YAML":
            fields = yaml.safe_load(text)
        else:
            fields = json.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as e:
        where = " ".join(str(e).split())  # PyYAML's message spans lines
        raise UserError(f"{source} is not valid {kind}: {where}") from None
    if not isinstance(fields, dict):
        raise UserError(f"{source} must be a mapping of config fields, not "
                        f"{type(fields).__name__}")
    return fields


def read_config_file(path: str) -> tuple[dict, str]:
    """(fields, source) of a config file; its suffix (.toml, .yaml/.yml, .json) is its format."""
    source = f"config file {path}"
    kind = CONFIG_FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise UserError(f"{source}: unknown format; name it .toml, .yaml, .yml or .json")
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {source}: {getattr(e, 'strerror', None) or e}") from None
    return parse_config_text(text, kind, source), source
