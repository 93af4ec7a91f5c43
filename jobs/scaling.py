#!/usr/bin/env python
"""Rank scaling: the same run on 1, 2, 4 … MPI ranks through the launcher; wall-clock and bytes.

    python jobs/scaling.py --preset fc-fmnist --ranks 1 2 --steps 300 --mode shared

Uses Slurm when it is reachable (one job per rank count, tasks = ranks), else local mpiexec.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from rbd_hpc.config import TrainConfig
from rbd_hpc.errors import UserError
from rbd_hpc.launch import Cluster, submit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fc-fmnist")
    p.add_argument("--method", default="rbd")
    p.add_argument("--mode", default="shared")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--dist", default="gaussian")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="runs/scaling")
    p.add_argument("--backend", default="auto", choices=["auto", "slurm", "local"])
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in args.ranks:
        try:
            cfg = TrainConfig.from_preset(args.preset, method=args.method, mode=args.mode,
                                          steps=args.steps, dist=args.dist, threads=1,
                                          data_dir=args.data_dir)
            run = out / f"{args.mode}-r{r}.h5"
            run.unlink(missing_ok=True)
            t0 = time.perf_counter()
            job = submit(cfg, str(run), Cluster(tasks=r, backend=args.backend, name="rbd-scaling"),
                         folder=str(out / "logs"), metrics=str(out / f"{args.mode}-r{r}.jsonl"))
            res = job.results()[0]
        except UserError as e:
            raise SystemExit(f"scaling: error: {e}")
        rows.append((r, time.perf_counter() - t0, res["ms_per_step"], res["bytes_per_step"],
                     res["test_acc"]))
    print(f"# {args.preset} {args.method} --mode {args.mode}, {args.steps} steps, 1 thread per rank")
    print(f"{'ranks':>5} {'wall s':>8} {'ms/step':>8} {'speed-up':>8} {'B/step':>7} {'test_acc':>8}")
    for r, wall, ms, b, acc in rows:
        print(f"{r:>5} {wall:>8.1f} {ms:>8.2f} {rows[0][2] / ms:>8.2f} {b:>7.0f} {acc:>8.4f}")


if __name__ == "__main__":
    main()
