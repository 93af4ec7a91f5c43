#!/usr/bin/env python
"""Sweep d as a job array (Slurm) or a batch of local jobs; print accuracy against d.

    python jobs/sweep_d.py --preset fc-fmnist --d 50 100 250 500 --epochs 1 --out runs/sweep-d
    python jobs/sweep_d.py --backend slurm --tasks 2 --partition cpu ...

Each d gets its own run file (resumed if it exists: re-running the sweep after a crash
finishes only what is missing) and metrics file; the table at the end reads them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rbd_hpc.cli import count
from rbd_hpc.config import TrainConfig
from rbd_hpc.errors import UserError
from rbd_hpc.launch import submit_array


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fc-fmnist")
    p.add_argument("--method", default="rbd")
    p.add_argument("--d", type=int, nargs="+", default=[50, 100, 250, 500])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int)
    p.add_argument("--dist", default="gaussian")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="runs/sweep-d")
    p.add_argument("--backend", default="slurm", choices=["slurm", "local"],
                   help="slurm (default; refused when no Slurm answers) or local (this machine)")
    p.add_argument("--tasks", type=count, default=1)
    p.add_argument("--partition")
    p.add_argument("--time-min", type=count, default=120)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        cfgs = [TrainConfig.from_preset(args.preset, method=args.method, d=d, dist=args.dist,
                                        epochs=None if args.steps else args.epochs,
                                        steps=args.steps, data_dir=args.data_dir)
                for d in args.d]
        slurm = {"slurm_partition": args.partition} if args.partition else {}
        jobs = submit_array(cfgs, [str(out / f"d{d}.h5") for d in args.d], backend=args.backend,
                            tasks_per_node=args.tasks, timeout_min=args.time_min,
                            name="rbd-sweep-d", folder=str(out / "logs"), **slurm,
                            metrics=[str(out / f"d{d}.jsonl") for d in args.d])
    except UserError as e:  # one line and exit 2, like rbd-hpc
        print(f"sweep_d: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for job in jobs:
        job.results()
    print(f"# {args.preset} {args.method} {args.dist}: test accuracy against d")
    print(f"{'d':>6} {'test_acc':>9} {'ms/step':>8}")
    for d in args.d:
        last = json.loads((out / f"d{d}.jsonl").read_text().splitlines()[-1])
        print(f"{d:>6} {last['test_acc']:>9.4f} {last['ms_per_step']:>8.2f}")


if __name__ == "__main__":
    main()
