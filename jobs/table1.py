#!/usr/bin/env python
"""The Fashion-MNIST rows of the paper's Table 1: FC and CNN × NES, FPD, RBD, SGD.

    python jobs/table1.py --epochs 100                 # the paper's length (days on 2 cores)
    python jobs/table1.py --epochs 1 --out runs/table1 --backend local  # docs/results.md

Runs go through the submitit launcher (one
thread each so that concurrent local jobs do not oversubscribe the cores) with
the paper's hyperparameters (presets: batch 32, lr = base × 32, d = 250, no momentum).
Existing run files are resumed, so re-running finishes only what is missing. Writes
results.csv and results.md (validation and test accuracy next to the paper's) into --out;
`--protocol paper` runs every cell under the paper's protocol. Choosing among variants is
jobs/results.py's job: by validation accuracy, with test read for the chosen one only;
--hide-test keeps test accuracy out of a variant's table and job logs until then.

    python jobs/table1.py --epochs 100 --methods rbd --set rbd.dist=srht \
        --set rbd.compartments=layer --set rbd.schedule=cosine --label rbd-srht-layer

The config mechanism is rbd-hpc train's: --config FILE (TOML, YAML or JSON) holds
TrainConfig fields for every cell, and a table named after a method holds that method's own
(``[rbd]`` / ``rbd:``); --set [METHOD.]KEY=VALUE then overrides one field for every cell (or one
method's cells), VALUE read as JSON when it parses (2, 0.5, true), else as a string. Each layer
overrides the last: preset, file, file's method table, --set. --label names the run files and
the method column so variants sit next to the paper-faithful rows.

    python jobs/table1.py --backend local --config variant.yaml --label v

Runs go to Slurm (--backend slurm, the default) or, when asked for, to this machine
(--backend local); with no Slurm answering, the slurm backend is refused, not replaced.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from rbd_hpc.cli import count
from rbd_hpc.config import TrainConfig, read_config_file
from rbd_hpc.errors import UserError
from rbd_hpc.launch import submit_array
from rbd_hpc.methods import METHODS
from results import PAPER as PAPER_SPREAD  # jobs/results.py, beside this script

FIELDS = TrainConfig.field_names()


def file_fields(path: str | None, methods: list[str]) -> dict[str, dict]:
    """Each method's fields from a config file: its common fields, then its method table."""
    out: dict[str, dict] = {m: {} for m in methods}
    if path is None:
        return out
    fields, source = read_config_file(path)
    tables = {k: v for k, v in fields.items() if isinstance(v, dict)}
    strange = sorted(set(tables) - set(METHODS))
    if strange:
        raise UserError(f"{source}: table(s) {strange} are not methods; valid: "
                        + ", ".join(METHODS))
    common = {k: v for k, v in fields.items() if k not in tables}
    for m in methods:
        out[m] = {**common, **tables.get(m, {})}
    return out


def parse_sets(items: list[str], methods: list[str]) -> dict[str, dict]:
    """['rbd.dist=srht', 'threads=2'] -> {'rbd': {'dist': 'srht', 'threads': 2}, 'sgd': {...}}."""
    out: dict[str, dict] = {m: {} for m in methods}
    for item in items:
        key, sep, text = item.partition("=")
        method, dot, field = key.rpartition(".")
        if not sep or not field:
            raise UserError(f"--set {item!r} is not [METHOD.]KEY=VALUE")
        if dot and method not in methods:
            raise UserError(f"--set {item!r}: method {method!r} is not one of " + ", ".join(methods))
        if field not in FIELDS:
            raise UserError(f"--set {item!r}: {field!r} is not a config field; valid: "
                            + ", ".join(sorted(FIELDS)))
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        for m in ([method] if dot else methods):
            out[m][field] = value
    return out


PAPER = {cell: mean for cell, (mean, _) in PAPER_SPREAD.items()}  # Table 1, 100 epochs (%)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--models", nargs="+", default=["fc", "cnn"])
    p.add_argument("--methods", nargs="+", default=["nes", "fpd", "rbd", "sgd"])
    p.add_argument("--nes-steps", type=count, help="cap NES runs at this many steps (NES costs d "
                   "forward passes per step)")
    p.add_argument("--augment", action="store_true", help="the paper's augmentation")
    p.add_argument("--protocol", choices=["custom", "paper"], default="custom",
                   help="paper: every cell under rbd-hpc train --protocol paper (the official "
                   "split, augmentation, directions, rates and NES; --epochs still applies)")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="runs/table1")
    p.add_argument("--backend", default="slurm", choices=["slurm", "local"],
                   help="slurm (default; refused when no Slurm answers) or local (this machine)")
    p.add_argument("--config", help="TrainConfig fields from a TOML, YAML or JSON file, with "
                   "per-method tables")
    p.add_argument("--tasks", type=count, default=1)
    p.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--label", help="suffix for run files and the method column of a variant")
    p.add_argument("--hide-test", action="store_true", help="for variants still being chosen "
                   "on validation: no test accuracy in results.csv/.md or the job logs (the "
                   "metrics files keep it, for the variant validation chooses)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = [(m, k) for m in args.models for k in args.methods]
    suffix = f"-{args.label}" if args.label else ""
    names = [f"{m}-{k}{suffix}" for m, k in cells]
    try:
        files = file_fields(args.config, args.methods)
        sets = parse_sets(args.set, args.methods)
        cfgs = []
        for model, method in cells:
            steps = args.nes_steps if (method == "nes" and args.nes_steps) else None
            fields = dict(method=method, epochs=None if steps else args.epochs, steps=steps,
                          augment=args.augment or None, data_dir=args.data_dir, threads=1,
                          protocol=args.protocol)
            fields.update(files[method])
            fields.update(sets[method])
            cfgs.append(TrainConfig.from_preset(f"{model}-fmnist", **fields))
        jobs = submit_array(cfgs, [str(out / f"{n}.h5") for n in names],
                            backend=args.backend, tasks_per_node=args.tasks, name="rbd-table1",
                            timeout_min=24 * 60, folder=str(out / "logs"),
                            metrics=[str(out / f"{n}.jsonl") for n in names],
                            hide_test=args.hide_test)
    except UserError as e:  # one line and exit 2, like rbd-hpc
        print(f"table1: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for job in jobs:
        job.results()
    rows = []
    for (model, method), name in zip(cells, names):
        last = json.loads((out / f"{name}.jsonl").read_text().splitlines()[-1])
        rows.append({"model": model.upper() + "-FMNIST", "method": method.upper() + suffix,
                     "epochs": last["epoch"], "val_acc": round(100 * last["val_acc"], 2),
                     **({} if args.hide_test else {"test_acc": round(100 * last["test_acc"], 2)}),
                     "paper": PAPER[(model, method)], "ms_per_step": round(last["ms_per_step"], 2)})
    with open(out / f"results{suffix}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    heads = {"model": "model", "method": "method", "epochs": "epochs", "val_acc": "val acc (%)",
             "test_acc": "test acc (%)", "paper": "paper, 100 epochs (%)", "ms_per_step": "ms/step"}
    formats = {"epochs": "{:g}", "val_acc": "{:.2f}", "test_acc": "{:.2f}", "paper": "{:.2f}",
               "ms_per_step": "{:.2f}"}
    lines = ["| " + " | ".join(heads[k] for k in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(formats.get(k, "{}").format(v) for k, v in r.items()) + " |"
              for r in rows]
    (out / f"results{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
