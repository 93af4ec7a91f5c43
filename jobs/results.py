#!/usr/bin/env python
"""Results tables generated from committed metrics, never typed: docs/results.md and README.

    python jobs/results.py collect RUNDIR [NAME ...]   # run files → docs/metrics/paper/
    python jobs/results.py tables                      # docs/results.yaml → the tables

``collect`` copies each run's per-epoch metrics (NAME.jsonl) and writes its config
(NAME.config.json, from the run file) into docs/metrics/paper/, so every figure outlives the
machine and its run file. ``tables`` reads the manifest docs/results.yaml and rewrites the
text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in docs/results.md
(tables A and B) and README.md (the summary):

  Table A — the paper's Table 1 cells under --protocol paper. One row per setting: its runs
            (seeds), every deviation from the paper's protocol (TrainConfig.deviations, from
            the stored config), final-epoch validation and test accuracy as mean ± std over
            seeds (and validation averaged over each run's last ten epochs, which a constant
            learning rate makes noisy from one epoch to the next), the paper's figure and its
            ±, and how far the validation mean lies from it in the paper's standard deviations.
  Cells     — each of the paper's eight cells against its figure, in the paper's σ: the
            row under the paper's protocol and the row without augmentation, each read at
            the final epoch, over the last ten epochs and at each run's best epoch, and the
            manifest's reading of the cell (which names the measured reason where it misses).
  Agreement — srht against Gaussian directions at the last epoch all their runs reached.
  Table B — extensions. Candidates are grouped; in each group the candidate with the highest
            mean final validation accuracy is chosen, and test accuracy is printed for the
            chosen one only (the others show validation alone).
  Screening — short runs (a few epochs) that decide which setting is worth 100 epochs: each
            run read at the group's one epoch, its training loss and validation accuracy
            only (test accuracy is never printed for a screening run).
  Kernels   — every run the manifest names, grouped by the kernel generation (the arithmetic
            that made its directions and applied its steps) read from its stored config.

A run that has not reached the manifest's epochs is shown with the epoch it reached and
marked unfinished; a cell without runs stays empty. Standard deviations are over seeds with
ddof = 1 ("—" for one seed).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
METRICS = ROOT / "docs" / "metrics" / "paper"
LEGACY = ROOT / "docs" / "table1_100epochs.csv"  # rbd-hpc 0.1's runs: final test, best val
MANIFEST = ROOT / "docs" / "results.yaml"

# Table 1 of the paper (Fashion-MNIST rows): mean and ± in %, 100 epochs
PAPER = {
    ("fc", "nes"): (45.0, 6.0), ("fc", "fpd"): (77.3, 0.29), ("fc", "rbd"): (85.65, 0.2),
    ("fc", "sgd"): (87.32, 0.21),
    ("cnn", "nes"): (37.0, 4.0), ("cnn", "fpd"): (77.8, 1.6), ("cnn", "rbd"): (85.56, 0.1),
    ("cnn", "sgd"): (91.95, 0.18),
}


def fail(message: str) -> None:
    print(f"results: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# -- reading runs ---------------------------------------------------------------------------

def committed(path: Path, name: str) -> Path:
    if not path.is_file():
        fail(f"run {name}: {path} is missing (python jobs/results.py collect RUNDIR {name})")
    return path


def stored_config(name: str, metrics_dir: Path = METRICS) -> dict:
    """A run's config as ``collect`` stored it (NAME.config.json)."""
    path = committed(metrics_dir / f"{name}.config.json", name)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fail(f"run {name}: {path} is not valid JSON ({e.msg}, line {e.lineno}); collect it again "
             f"from its run file: python jobs/results.py collect RUNDIR {name}")


def run_record(name: str, metrics_dir: Path = METRICS) -> dict:
    """A run's metrics rows by epoch, its last row and its config, from the committed files."""
    rows = epoch_rows(name, metrics_dir)
    if not rows:
        fail(f"run {name}: {metrics_dir / name}.jsonl holds no epoch yet")
    return {"name": name, "rows": rows, "last": rows[max(rows)],
            "config": stored_config(name, metrics_dir)}


def deviations(config: dict) -> list[str]:
    from rbd_hpc.config import TrainConfig  # the one definition of the paper's protocol
    return TrainConfig.from_dict(config, "stored config").deviations()


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def listed(devs: list[str]) -> str:
    """A run's deviations as one table cell ("" for none)."""
    return "; ".join(d.replace("|", "/") for d in devs)


def shown(values: list[float]) -> str:
    m, s = mean_std([100 * v for v in values])
    return f"{m:.2f} ± {s:.2f}" if s is not None else f"{m:.2f} ± —"


def sigma(values: list[float], cell: tuple[str, str]) -> float:
    """How far the mean of ``values`` (fractions) lies from the paper's figure for ``cell``, in
    the paper's standard deviations."""
    paper, pm = PAPER[cell]
    return (100 * statistics.fmean(values) - paper) / pm


def brief(devs: list[str]) -> str:
    """A row's deviations without their "(paper: …)" halves: "--dist srht, --augment off"."""
    return ", ".join(d.split(" (")[0] for d in devs)


def row_at(rows: dict[float, dict], epoch: float) -> dict:
    """A run's last row at or before ``epoch``."""
    return rows[max(e for e in rows if e <= epoch + 1e-9)]


def val_tail(rows: dict[float, dict], epoch: float) -> float:
    """A run's mean validation accuracy over its epochs in (epoch − 10, epoch], steadier than
    one epoch at a constant rate (its row at ``epoch`` alone where it has no other there)."""
    window = [row["val_acc"] for e, row in rows.items() if epoch - 10 < e <= epoch + 1e-9]
    return statistics.fmean(window or [row_at(rows, epoch)["val_acc"]])


def val_best(rows: dict[float, dict], epoch: float) -> float:
    """A run's highest validation accuracy at any epoch up to ``epoch``: what a paper that
    quoted each run's best epoch, not its last, would print."""
    return max(row["val_acc"] for e, row in rows.items() if e <= epoch + 1e-9)


def summarise(names: list[str], epochs: int, metrics_dir: Path = METRICS) -> dict:
    """Seeds, val/test lists, the epoch reached and the deviations shared by a row's runs."""
    runs = [run_record(n, metrics_dir) for n in names]
    devs = {n["name"]: deviations(n["config"]) for n in runs}
    first = next(iter(devs.values()))
    if any(d != first for d in devs.values()):
        fail(f"runs {names} do not share one setting: {devs}")
    reached = min(r["last"]["epoch"] for r in runs)
    # every run read at the last epoch all of them reached, so an unfinished seed is never
    # averaged with a finished one's final epoch
    at = [row_at(r["rows"], reached) for r in runs]
    return {"seeds": [r["config"]["seed"] for r in runs], "val": [row["val_acc"] for row in at],
            "val_tail": [val_tail(r["rows"], reached) for r in runs],
            "val_best": [val_best(r["rows"], reached) for r in runs],
            "test": [row["test_acc"] for row in at], "epoch": reached,
            "finished": reached >= epochs - 1e-9, "deviations": first}


def legacy_summary(model: str, method: str, settings: list[str], epochs: int,
                   csv_path: Path = LEGACY) -> dict:
    """A candidate from rbd-hpc 0.1's committed table (one row per seed, by its setting text):
    its final test accuracy and its best-epoch validation accuracy (the file holds no final
    validation), on that protocol (55,000 / 5,000, no augmentation, kernel generation 1)."""
    with open(csv_path, newline="") as f:
        table = {(r["model"], r["method"], r["setting"]): r for r in csv.DictReader(f)}
    rows = []
    for setting in settings:
        key = (f"{model.upper()}-FMNIST", method.upper(), setting)
        if key not in table:
            fail(f"{csv_path.name} has no row {key}")
        rows.append(table[key])
    reached = min(float(r["epochs"].split()[0]) for r in rows)
    seeds = [1 if re.search(r"seed 1\b", r["setting"]) else 0 for r in rows]  # 0: the default
    return {"seeds": seeds, "val": [float(r["best val (%)"]) / 100 for r in rows],
            "test": [float(r["test acc (%)"]) / 100 for r in rows], "epoch": reached,
            "finished": reached >= epochs, "deviations": []}


def candidate_summary(group: dict, cand: dict, epochs: int, metrics_dir: Path) -> dict:
    if "legacy" in cand:
        return legacy_summary(group["model"], group["method"], cand["legacy"], epochs)
    return summarise(cand["runs"], epochs, metrics_dir)


# -- tables ---------------------------------------------------------------------------------

def table_a(rows: list[dict], epochs: int, metrics_dir: Path = METRICS) -> str:
    out = ["| model | method | deviations from the paper's protocol | seeds | epochs | "
           "val acc (%) | val acc, mean of the last 10 epochs (%) | val acc, best epoch (%) | "
           "test acc (%) | paper (%) | val − paper, in paper σ |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        model, method = row["model"], row["method"]
        paper, pm = PAPER[(model, method)]
        head = f"| {model.upper()}-FMNIST | {method.upper()} | "
        if not row.get("runs"):
            out.append(head + f"{row.get('note', 'not run')} | — | — | — | — | — | — | "
                       f"{paper:g} ± {pm:g} | — |")
            continue
        s = summarise(row["runs"], epochs, metrics_dir)
        devs = listed(s["deviations"]) or "none"
        if row.get("note"):
            devs += f" ({row['note']})"
        ep = f"{s['epoch']:.4g}" + ("" if s["finished"] else " (unfinished)")
        # an unfinished row is not scored against the paper's 100-epoch figure
        z = (f"{sigma(s['val'], (model, method)):+.1f}" if s["finished"]
             else f"— (epoch {s['epoch']:.4g} of {epochs})")
        out.append(head + f"{devs} | {', '.join(map(str, s['seeds']))} | {ep} | "
                   f"{shown(s['val'])} | {shown(s['val_tail'])} | {shown(s['val_best'])} | "
                   f"{shown(s['test'])} | "
                   f"{paper:g} ± {pm:g} | {z} |")
    return "\n".join(out)


def seeds_needed(group: dict) -> int:
    """How many seeds a Table B group's candidate needs to be chosen (manifest ``seeds``)."""
    need = group.get("seeds", 1)
    if type(need) is not int or need < 1:
        fail(f"Table B group {group.get('name')!r}: seeds {need!r} is not a whole number ≥ 1")
    return need


def selected(group: dict, epochs: int, metrics_dir: Path) -> tuple[list, int | None]:
    """A Table B group's candidates as (candidate, summary, label) and the index of the one
    validation chooses: the highest mean validation accuracy among those whose runs all
    finished and that have the group's ``seeds`` (a screening run with fewer never wins)."""
    rows, need = [], seeds_needed(group)
    for cand in group["candidates"]:
        s = candidate_summary(group, cand, epochs, metrics_dir)
        label = cand.get("label") or listed(s["deviations"]) or "none (the paper's protocol)"
        if len(s["seeds"]) < need:
            label += f" ({len(s['seeds'])} of {need} seeds)"
        rows.append((cand, s, label))
    done = [i for i, (_, s, _) in enumerate(rows)  # only these compete
            if s["finished"] and len(s["seeds"]) >= need]
    return rows, max(done, key=lambda i: statistics.fmean(rows[i][1]["val"]), default=None)


def table_b(groups: list[dict], epochs: int, metrics_dir: Path = METRICS) -> str:
    out = ["| group | candidate (everything it changes) | seeds | epochs | val acc (%) | "
           "test acc (%) |", "|---|---|---|---:|---:|---:|"]
    for group in groups:
        rows, best = selected(group, epochs, metrics_dir)
        for i, (cand, s, text) in enumerate(rows):
            chosen = i == best
            ep = f"{s['epoch']:.4g}" + ("" if s["finished"] else " (unfinished)")
            test = f"**{shown(s['test'])}**" if chosen else "not read"
            label = f"**{text}** (chosen)" if chosen else text
            seeds = ", ".join(map(str, s["seeds"]))
            out.append(f"| {group['name']} | {label} | {seeds} | {ep} | "
                       f"{shown(s['val'])} | {test} |")
    return "\n".join(out)


def screening(groups: list[dict], metrics_dir: Path = METRICS) -> str:
    """Short runs, each read at its group's ``epoch``: what it changes, training loss and
    validation accuracy there. A run that ended before that epoch (e.g. its loss became NaN)
    shows the last epoch it finished, or none, with the manifest's note for it."""
    out = ["| screening | run | everything it changes | seed | epoch read | train loss | "
           "val acc (%) |", "|---|---|---|---:|---:|---:|---:|"]
    for group in groups:
        at, notes = group["epoch"], group.get("notes") or {}
        for i, name in enumerate(group["runs"]):
            config = stored_config(name, metrics_dir)
            rows = {e: r for e, r in epoch_rows(name, metrics_dir).items() if e <= at + 1e-9}
            if rows and max(rows) >= at - 1e-9:
                row = rows[max(rows)]
                loss = row.get("train_loss")  # absent where a metrics file logged none
                cells = [f"{at:g}", "—" if loss is None else f"{loss:.4f}",
                         f"{100 * row['val_acc']:.2f}"]
            else:
                cells = [f"— (last epoch finished: {max(rows):g})" if rows else
                         "— (no epoch finished)", "—", "—"]
            if name in notes:
                cells[0] += f" ({notes[name]})"
            out.append(f"| {group['name'] if i == 0 else ''} | {name} | "  # the group once
                       f"{listed(deviations(config)) or 'none'} | {config['seed']} | "
                       f"{' | '.join(cells)} |")
    return "\n".join(out)


def summary_b(groups: list[dict], epochs: int, metrics_dir: Path = METRICS) -> str:
    """The README's Table B lines: each group's chosen candidate, validation and test."""
    out = ["| Table B group | chosen on validation (everything it changes) | seeds | "
           "val acc (%) | test acc (%) |", "|---|---|---|---:|---:|"]
    for group in groups:
        rows, best = selected(group, epochs, metrics_dir)
        if best is None:
            need = seeds_needed(group)
            what = "none finished yet" if need == 1 else f"none finished with {need} seeds yet"
            out.append(f"| {group['name']} | {what} | — | — | — |")
            continue
        _, s, text = rows[best]
        out.append(f"| {group['name']} | {text} | {len(s['seeds'])} | {shown(s['val'])} | "
                   f"{shown(s['test'])} |")
    return "\n".join(out)


def cells(rows: list[dict], epochs: int, metrics_dir: Path = METRICS) -> str:
    """Each Table 1 cell against the paper's figure: its row under the paper's protocol (the
    one marked ``summary: true``, else its first) and its row marked ``without_augmentation:
    true``, each as validation − paper in the paper's σ at the final epoch, over the last ten
    epochs and at each run's best epoch (✓: within two σ as printed, to one decimal), and the
    cell's ``reading``."""
    out = ["| cell | paper (%) | paper's protocol: row, seeds | val − paper in σ: final / "
           "last 10 / best epoch | without augmentation: row, seeds | val − paper in σ: final / "
           "last 10 / best epoch | reading |", "|---|---:|---|---|---|---|---|"]

    def scored(row: dict | None, augment_off: bool) -> list[str]:
        if row is None:
            return ["not run", "—"]
        s = summarise(row["runs"], epochs, metrics_dir)
        if augment_off and not any(d.startswith("--augment off") for d in s["deviations"]):
            fail(f"table_a row {row['runs']}: marked without_augmentation, but its runs augment")
        n = len(s["seeds"])
        what = f"{brief(s['deviations']) or 'none'}, {n} seed{'s' if n > 1 else ''}"
        if not s["finished"]:
            return [what, f"— (epoch {s['epoch']:.4g} of {epochs})"]
        zs = (round(sigma(s[k], cell), 1) for k in ("val", "val_tail", "val_best"))
        return [what, " / ".join(f"{z:+.1f}" + (" ✓" if abs(z) <= 2 else "") for z in zs)]

    for cell in dict.fromkeys((r["model"], r["method"]) for r in rows):
        ran = [r for r in rows if (r["model"], r["method"]) == cell and r.get("runs")]
        exact = next((r for r in ran if r.get("summary")), ran[0] if ran else None)
        plain = next((r for r in ran if r.get("without_augmentation")), None)
        paper, pm = PAPER[cell]
        reading = (exact or {}).get("reading", "")
        out.append(f"| {cell[0].upper()}-FMNIST {cell[1].upper()} | {paper:g} ± {pm:g} | "
                   + " | ".join(scored(exact, False) + scored(plain, True)) + f" | {reading} |")
    return "\n".join(out)


def epoch_rows(name: str, metrics_dir: Path = METRICS) -> dict[float, dict]:
    """A run's metrics rows by epoch."""
    path = committed(metrics_dir / f"{name}.jsonl", name)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {round(r["epoch"], 4): r for r in rows}


def agreement(pairs: list[dict], metrics_dir: Path = METRICS) -> str:
    """srht against Gaussian directions, compared at the last epoch every run has reached:
    validation accuracy of each set of runs there (mean ± std over seeds), and the difference
    of their means over the ten epochs up to it (a single epoch moves by a point or more at a
    constant rate with augmentation)."""
    out = ["| cell | epoch compared | Gaussian: runs, val acc (%) | srht: runs, val acc (%) | "
           "srht − Gaussian (points) | srht − Gaussian, mean of the last 10 epochs (points) |",
           "|---|---:|---|---|---:|---:|"]
    for pair in pairs:
        if not pair.get("gaussian"):
            out.append(f"| {pair['label']} | — | {pair.get('note', 'not run yet')} | "
                       f"{len(pair['srht'])} run(s) | — | — |")
            continue
        sets = {k: [epoch_rows(n, metrics_dir) for n in pair[k]] for k in ("gaussian", "srht")}
        common = set.intersection(*(set(r) for runs in sets.values() for r in runs))
        if not common:
            out.append(f"| {pair['label']} | — | no common epoch yet | | | |")
            continue
        e = max(common)
        vals = {k: [r[e]["val_acc"] for r in runs] for k, runs in sets.items()}
        tails = {k: [val_tail(r, e) for r in runs] for k, runs in sets.items()}
        diff, diff_tail = (100 * (statistics.fmean(v["srht"]) - statistics.fmean(v["gaussian"]))
                           for v in (vals, tails))
        out.append(f"| {pair['label']} | {e:g} | {len(vals['gaussian'])}: "
                   f"{shown(vals['gaussian'])} | {len(vals['srht'])}: {shown(vals['srht'])} | "
                   f"{diff:+.2f} | {diff_tail:+.2f} |")
    return "\n".join(out)


def summary(rows: list[dict], epochs: int, metrics_dir: Path = METRICS) -> str:
    """The README's lines: the table-A rows marked ``summary: true`` (else each cell's first
    row), validation and test next to the paper."""
    out = ["| Table A cell (paper protocol) | seeds | val acc (%) | test acc (%) | paper (%) |",
           "|---|---|---:|---:|---:|"]
    seen = set()
    marked = [r for r in rows if r.get("summary")]
    for row in marked or rows:
        key = (row["model"], row["method"])
        if key in seen or not row.get("runs"):
            continue
        seen.add(key)
        s = summarise(row["runs"], epochs, metrics_dir)
        paper, pm = PAPER[key]
        devs = brief(s["deviations"])
        name = f"{key[0].upper()}-FMNIST {key[1].upper()}" + (f" ({devs})" if devs else "")
        ep = "" if s["finished"] else f", epoch {s['epoch']:g} of {epochs}"
        out.append(f"| {name} | {len(s['seeds'])}{ep} | {shown(s['val'])} | {shown(s['test'])} | "
                   f"{paper:g} ± {pm:g} |")
    return "\n".join(out)


def manifest_runs(spec: dict) -> list[str]:
    """Every run the manifest names (tables A and B, agreement, screening), each once, in the
    order of its first mention."""
    names = [n for row in spec["table_a"] for n in row.get("runs") or []]
    names += [n for group in spec.get("table_b") or [] for cand in group["candidates"]
              for n in cand.get("runs", [])]
    names += [n for pair in spec.get("agreement") or []
              for n in (pair.get("gaussian") or []) + pair["srht"]]
    names += [n for group in spec.get("screening") or [] for n in group["runs"]]
    return list(dict.fromkeys(names))


def kernel_generations(spec: dict, metrics_dir: Path = METRICS) -> str:
    """The runs of every table grouped by kernel generation, read from their stored configs
    (a run repeats bit for bit only in its own generation: docs/runfile.md)."""
    by: dict[int, list[str]] = {}
    for name in manifest_runs(spec):
        config = stored_config(name, metrics_dir)
        if "kernels" not in config:
            fail(f"run {name}: {metrics_dir / name}.config.json names no kernel generation "
                 f"(collect it again from its run file: python jobs/results.py collect RUNDIR {name})")
        by.setdefault(config["kernels"], []).append(name)
    out = ["| kernel generation | runs | run names |", "|---:|---:|---|"]
    legacy = dict.fromkeys(s for group in spec.get("table_b") or []
                           for cand in group["candidates"] for s in cand.get("legacy", []))
    if legacy:  # rbd-hpc 0.1 had generation 1 alone
        out.append(f"| 1 | {len(legacy)} | rbd-hpc 0.1's runs (Table B's `legacy` candidates, "
                   f"{LEGACY.name}) |")
    out += [f"| {gen} | {len(by[gen])} | {', '.join(by[gen])} |" for gen in sorted(by)]
    return "\n".join(out)


def replace_block(path: Path, name: str, text: str) -> None:
    """Rewrite the text between <!-- results:NAME --> and <!-- /results:NAME -->."""
    source = path.read_text()
    pattern = re.compile(rf"(<!-- results:{name} -->\n).*?(<!-- /results:{name} -->)", re.S)
    if not pattern.search(source):
        fail(f"{path} has no <!-- results:{name} --> … <!-- /results:{name} --> block")
    path.write_text(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), source))


def run_names(value, where: str) -> None:
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        fail(f"{where}: {value!r} is not a list of run names")


def check_cell(entry, where: str) -> None:
    """A Table A row or Table B group names one of the paper's Fashion-MNIST cells."""
    if not isinstance(entry, dict):
        fail(f"{where}: {entry!r} is not a mapping (model, method, runs …)")
    for key, valid in (("model", ("fc", "cnn")), ("method", ("nes", "fpd", "rbd", "sgd"))):
        if entry.get(key) not in valid:
            fail(f"{where}: {key} {entry.get(key)!r} is not valid; choose one of: "
                 + ", ".join(valid))


def read_manifest(manifest: Path) -> dict:
    """The manifest, every entry the tables read checked before any run is read, so that a
    mistake in it is one line naming the entry and nothing is rewritten."""
    try:
        spec = yaml.safe_load(manifest.read_text()) or {}
    except OSError as e:
        fail(f"cannot read the manifest {manifest}: {e.strerror or e}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        fail(f"{manifest} is not valid YAML: {getattr(e, 'problem', None) or e}"
             + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""))
    if not isinstance(spec, dict) or not isinstance(spec.get("table_a"), list):
        fail(f"{manifest}: no table_a list (the rows of the paper's Table 1) in the manifest")
    if type(spec.get("epochs", 100)) is not int or spec.get("epochs", 100) < 1:
        fail(f"{manifest}: epochs {spec['epochs']!r} is not a whole number ≥ 1")
    for key in ("table_b", "agreement", "screening"):
        if not isinstance(spec.get(key) or [], list):
            fail(f"{manifest}: {key} {spec[key]!r} is not a list")
    for i, row in enumerate(spec["table_a"], 1):
        check_cell(row, f"{manifest.name}: table_a row {i}")
        run_names(row.get("runs") or [], f"{manifest.name}: table_a row {i} runs")
        if not isinstance(row.get("reading", ""), str):
            fail(f"{manifest.name}: table_a row {i}: reading {row['reading']!r} is not text")
    marked = [(r["model"], r["method"]) for r in spec["table_a"] if r.get("without_augmentation")]
    for cell in {c for c in marked if marked.count(c) > 1}:
        fail(f"{manifest.name}: table_a marks {marked.count(cell)} {cell[0]} {cell[1]} rows "
             "without_augmentation; mark the one the cells table reads")
    for i, group in enumerate(spec.get("table_b") or [], 1):
        if not isinstance(group, dict) or not isinstance(group.get("name"), str):
            fail(f"{manifest.name}: table_b group {i} has no name")
        where = f"{manifest.name}: table_b group {group['name']!r}"
        check_cell(group, where)
        seeds_needed(group)
        candidates = group.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            fail(f"{where}: no candidates list")
        for j, cand in enumerate(candidates, 1):
            if not isinstance(cand, dict) or ("runs" in cand) == ("legacy" in cand):
                fail(f"{where}, candidate {j}: give either runs: [NAME, …] or legacy: [SETTING, …]")
            run_names(cand.get("runs", cand.get("legacy")), f"{where}, candidate {j}")
    for i, pair in enumerate(spec.get("agreement") or [], 1):
        where = f"{manifest.name}: agreement row {i}"
        if not isinstance(pair, dict) or not isinstance(pair.get("label"), str):
            fail(f"{where}: {pair!r} has no label")
        run_names(pair.get("srht"), where + " srht")
        run_names(pair.get("gaussian") or [], where + " gaussian")
    for i, group in enumerate(spec.get("screening") or [], 1):
        where = f"{manifest.name}: screening group {i}"
        if not isinstance(group, dict) or not isinstance(group.get("name"), str):
            fail(f"{where} has no name")
        at = group.get("epoch")
        if type(at) not in (int, float) or at <= 0:
            fail(f"{where}: epoch {at!r} is not a positive number (the epoch every run is read at)")
        run_names(group.get("runs"), where + " runs")
        if not isinstance(group.get("notes") or {}, dict):
            fail(f"{where}: notes {group['notes']!r} is not a mapping of run name to note")
    return spec


def tables(manifest: Path = MANIFEST, metrics_dir: Path = METRICS,
           results_md: Path = ROOT / "docs" / "results.md",
           readme: Path = ROOT / "README.md") -> dict[str, str]:
    spec = read_manifest(manifest)
    epochs = spec.get("epochs", 100)
    made = {"table-a": table_a(spec["table_a"], epochs, metrics_dir),
            "table-b": table_b(spec.get("table_b") or [], epochs, metrics_dir),
            "cells": cells(spec["table_a"], epochs, metrics_dir),
            "agreement": agreement(spec.get("agreement") or [], metrics_dir),
            "screening": screening(spec.get("screening") or [], metrics_dir),
            "kernels": kernel_generations(spec, metrics_dir),
            "summary": summary(spec["table_a"], epochs, metrics_dir),
            "summary-b": summary_b(spec.get("table_b") or [], epochs, metrics_dir)}
    for name in ("table-a", "cells", "table-b", "agreement", "screening", "kernels"):
        replace_block(results_md, name, made[name])
    for name in ("summary", "summary-b"):
        replace_block(readme, name, made[name])
    return made


def collect(rundir: Path, names: list[str], metrics_dir: Path = METRICS) -> list[str]:
    from rbd_hpc.runlog import RunFile
    if not rundir.is_dir():
        fail(f"collect: {rundir} is not a directory of run files")
    names = names or sorted(p.stem for p in rundir.glob("*.h5"))
    if not names:
        fail(f"collect: {rundir} holds no run file (NAME.h5)")
    for name in names:  # every run checked before any file is copied
        if not (rundir / f"{name}.jsonl").is_file():
            fail(f"run {name}: {rundir / name}.jsonl is missing (collect copies the metrics a run "
                 f"wrote with --metrics {name}.jsonl)")
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        with RunFile(rundir / f"{name}.h5") as run:
            config = json.loads(run.config().to_json())
        shutil.copyfile(rundir / f"{name}.jsonl", metrics_dir / f"{name}.jsonl")
        (metrics_dir / f"{name}.config.json").write_text(json.dumps(config, indent=1,
                                                                    sort_keys=True) + "\n")
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="copy metrics and configs of run files into docs/metrics")
    c.add_argument("rundir", type=Path)
    c.add_argument("names", nargs="*", help="run names (default: every NAME.h5 in RUNDIR)")
    sub.add_parser("tables", help="rewrite the tables in docs/results.md and README.md")
    args = p.parse_args()
    from rbd_hpc.errors import UserError
    try:
        if args.command == "collect":
            for name in collect(args.rundir, args.names):
                print(f"collected {name}")
        else:
            made = tables()
            print(made["table-a"] + "\n\n" + made["table-b"])
    except UserError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
