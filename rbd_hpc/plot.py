"""``rbd-hpc plot``: PNGs from run files (.h5) or metrics files (.jsonl).

  curves.png             training and validation loss, and validation accuracy, against
                         epoch: one colour per run (paper Fig. 3)
  val_acc_vs_epoch.png   validation accuracy against epoch alone
  acc_vs_d.png           final test accuracy against d, one line per set of run files that
                         differ only in d and trained equally long (metrics files carry no
                         config and are left out)
  cost_per_step.png      median ms per step and bytes sent to MPI per step, one bar per run,
                         its value written on it

Labels come from ``--label`` (one per input, in order), else from the run's config (run
files) or the file name (metrics files); labels that still coincide get the file name added.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

from .errors import UserError, make_directory
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
    if cfg.get("lr_min"):
        label += f" to {cfg['lr_min']:g}"
    if cfg.get("lr_scale"):
        label += f" ×{cfg['lr_scale']}"
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


ROW_KEYS = ("step", "epoch", "train_loss", "val_acc", "test_acc", "ms_per_step")  # read below


def check_rows(path: Path, rows: list) -> None:
    """A metrics file's rows carry what the plots read (each was a KeyError otherwise)."""
    for i, row in enumerate(rows, 1):
        missing = [k for k in ROW_KEYS if k not in row] if isinstance(row, dict) else ROW_KEYS
        if missing:
            raise UserError(f"metrics file {path}: line {i} has no {', '.join(missing)}; plot "
                            "reads the rows rbd-hpc train writes with --metrics")


def load_runs(paths: list[str], labels: list[str] | None = None) -> list[dict]:
    if labels and len(labels) != len(paths):
        raise UserError(f"{len(labels)} --label value(s) for {len(paths)} input(s); give one "
                        "per input, in order, or none")
    runs = []
    for p in paths:
        path = Path(p)
        if path.suffix == ".jsonl":
            try:
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"cannot read metrics file {path}: {e}") from None
            check_rows(path, rows)
            runs.append({"label": path.stem, "rows": rows, "config": {}, "path": path})
        else:
            with RunFile(path) as run:
                cfg = dataclasses.asdict(run.config())
                rows = run.metrics()
                directions = int(run.attrs["n_coefficients"])  # all compartments and ranks
            runs.append({"label": run_label(cfg), "rows": rows, "config": cfg,
                         "directions": directions, "path": path})
        if not runs[-1]["rows"]:
            raise UserError(f"{path} holds no evaluated epochs yet")
    for run, label in zip(runs, labels or []):
        run["label"] = label
    base = [r["label"] for r in runs]
    for suffix in (lambda r: r["path"].name, lambda r: str(r["path"])):
        counts = Counter(r["label"] for r in runs)  # two runs never share a legend entry:
        for r, label in zip(runs, base):            # add the file name, else the path as given
            if counts[r["label"]] > 1:
                r["label"] = f"{label} ({suffix(r)})"
    return runs


def accuracy_against_d(runs: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Final test accuracy (%) by directions per step, one sorted list per set of runs that
    differ only in d and ended at the same step (a longer run is not a point of a shorter
    run's line). Gradient methods and metrics-only runs have no d and are left out."""
    groups: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in runs:
        c = r["config"]
        if c and c["method"] not in GRADIENT_METHODS:
            last = r["rows"][-1]
            groups.setdefault((run_label(c, with_d=False), int(last["step"])), []).append(
                (r["directions"], 100 * last["test_acc"]))
    lengths = Counter(key for key, _ in groups)
    return {(key if lengths[key] == 1 else f"{key}, {steps} steps"): sorted(pts)
            for (key, steps), pts in groups.items()}


def _save(fig, path: Path, written: list[Path]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    written.append(path)


def _curves(plt, runs: list[dict], out: Path, written: list[Path]) -> None:
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, r in enumerate(runs):
        colour = f"C{i % 10}"
        epochs = [row["epoch"] for row in r["rows"]]
        loss.plot(epochs, [row["train_loss"] for row in r["rows"]], color=colour,
                  label=f"{r['label']} (train)")
        if "val_loss" in r["rows"][0]:
            loss.plot(epochs, [row["val_loss"] for row in r["rows"]], color=colour,
                      linestyle="--", label=f"{r['label']} (val)")
        acc.plot(epochs, [100 * row["val_acc"] for row in r["rows"]], color=colour,
                 marker="o", markersize=3, label=r["label"])
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss (solid: train, dashed: val)")
    acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
    acc.legend(fontsize=7)
    _save(fig, out / "curves.png", written)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        ax.plot([row["epoch"] for row in r["rows"]], [100 * row["val_acc"] for row in r["rows"]],
                marker="o", markersize=3, label=r["label"])
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, out / "val_acc_vs_epoch.png", written)
    plt.close(fig)


def _accuracy_against_d(plt, runs: list[dict], out: Path, written: list[Path]) -> None:
    groups = accuracy_against_d(runs)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, pts in groups.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    ax.set(xlabel="d (directions per step)", ylabel="final test accuracy (%)", xscale="log",
           title="Accuracy against d")
    ax.grid(alpha=0.3)
    ds = sorted({p[0] for pts in groups.values() for p in pts})
    ax.set_xticks(ds, [str(d) for d in ds])  # the d values themselves, not powers of ten
    ax.minorticks_off()
    if groups:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no random-bases run files to compare", ha="center",
                transform=ax.transAxes)
    _save(fig, out / "acc_vs_d.png", written)
    plt.close(fig)


def _costs(plt, runs: list[dict], out: Path, written: list[Path]) -> None:
    labels = [r["label"] for r in runs]
    ms = [r["rows"][-1]["ms_per_step"] for r in runs]
    sent = [r["rows"][-1].get("bytes_per_step", 0.0) for r in runs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 0.9 + 0.45 * len(runs)), sharey=True)
    for ax, values, unit, title in ((a1, ms, "ms", "median time per step"),
                                    (a2, sent, "B", "bytes sent to MPI per step")):
        bars = ax.barh(range(len(runs)), values, color=[f"C{i % 10}" for i in range(len(runs))])
        ax.bar_label(bars, labels=[f"{v:,.2f} {unit}" if unit == "ms" else f"{v:,.0f} {unit}"
                                   for v in values], fontsize=7, padding=2)
        ax.set(title=title, xlim=(0, 1.3 * max(max(values), 1e-9)))
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}")
        ax.grid(axis="x", alpha=0.3)
    a1.set_yticks(range(len(runs)), labels, fontsize=7)
    a1.invert_yaxis()
    _save(fig, out / "cost_per_step.png", written)
    plt.close(fig)


def plot(paths: list[str], out_dir: str, labels: list[str] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(paths, labels)
    out = make_directory(out_dir, "--out")
    written: list[Path] = []
    _curves(plt, runs, out, written)
    _accuracy_against_d(plt, runs, out, written)
    _costs(plt, runs, out, written)
    return written
