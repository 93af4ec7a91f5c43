"""``rbd-hpc plot``: PNGs from run files (.h5) or metrics files (.jsonl).

  val_acc_vs_epoch.png   validation accuracy against epoch, one line per run (paper Fig. 3)
  acc_vs_d.png           final test accuracy against d, one line per set of runs that
                         differ only in d
  cost_per_step.png      ms per step and bytes handed to MPI per step, per run
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .errors import UserError
from .methods import GRADIENT_METHODS
from .runlog import RunFile


def run_label(cfg: dict, with_d: bool = True) -> str:
    """A legend label that tells apart runs differing in method, basis or optimiser settings.

    ``with_d=False`` leaves the number of directions out: runs whose labels then agree are
    points of one line in the accuracy-against-d figure.
    """
    if cfg["method"] in GRADIENT_METHODS:
        label = f"{cfg['method']} {cfg['model']}"
        if cfg["method"] != "sgd":
            label += f" sparsity {cfg['sparsity']}"
    else:
        per_compartment = cfg.get("d_per_compartment")
        label = f"{cfg['method']} {cfg['model']}"
        if with_d:
            label += f" d={per_compartment}/compartment" if per_compartment else f" d={cfg['d']}"
        label += f" {cfg['dist']}"
        if cfg.get("compartments", "network") != "network":
            label += f" {cfg['compartments']}"
            if per_compartment and not with_d:
                label += " same d per compartment"
            elif cfg.get("allocate", "size") != "size" and not per_compartment:
                label += f" {cfg['allocate']}"
    label += f" lr {cfg['lr']:g}"
    if cfg.get("schedule", "constant") != "constant":
        label += f" {cfg['schedule']}"
    if cfg.get("momentum"):
        label += f" mom {cfg['momentum']:g}"
    if cfg.get("weight_decay"):
        label += f" wd {cfg['weight_decay']:g}"
    if cfg.get("svrg_every"):
        label += f" svrg {cfg['svrg_every']}"
    if cfg.get("augment"):
        label += " aug"
    if cfg.get("seed"):
        label += f" seed {cfg['seed']}"
    return label


def load_runs(paths: list[str]) -> list[dict]:
    runs = []
    for p in paths:
        path = Path(p)
        if path.suffix == ".jsonl":
            try:
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"cannot read metrics file {path}: {e}") from None
            runs.append({"label": path.stem, "rows": rows, "config": {}})
        else:
            with RunFile(path) as run:
                cfg = dataclasses.asdict(run.config())
                rows = run.metrics()
                directions = int(run.attrs["n_coefficients"])  # all compartments and ranks
            runs.append({"label": run_label(cfg), "rows": rows, "config": cfg, "directions": directions})
        if not runs[-1]["rows"]:
            raise UserError(f"{path} holds no evaluated epochs yet")
    return runs


def accuracy_against_d(runs: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Final test accuracy (%) by directions per step, one sorted list per set of runs that
    differ only in d. Gradient methods and metrics-only runs have no d and are left out."""
    groups: dict[str, list[tuple[int, float]]] = {}
    for r in runs:
        c = r["config"]
        if c and c["method"] not in GRADIENT_METHODS:
            groups.setdefault(run_label(c, with_d=False), []).append(
                (r["directions"], 100 * r["rows"][-1]["test_acc"]))
    return {key: sorted(pts) for key, pts in groups.items()}


def plot(paths: list[str], out_dir: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(paths)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror}") from None
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.plot([row["epoch"] for row in r["rows"]], [100 * row["val_acc"] for row in r["rows"]],
                marker="o", label=r["label"])
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "val_acc_vs_epoch.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    groups = accuracy_against_d(runs)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, pts in groups.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    ax.set(xlabel="d (directions per step)", ylabel="test accuracy (%)", xscale="log",
           title="Accuracy against d")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "acc_vs_d.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4))
    labels = [r["label"] for r in runs]
    a1.barh(labels, [r["rows"][-1]["ms_per_step"] for r in runs])
    a1.set(xlabel="ms per step (median)", xscale="log")
    a2.barh(labels, [max(r["rows"][-1].get("bytes_per_step", 0), 1) for r in runs])
    a2.set(xlabel="bytes to MPI per step", xscale="log")
    a2.set_yticklabels([])
    fig.tight_layout()
    written.append(out / "cost_per_step.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written
