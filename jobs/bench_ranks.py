#!/usr/bin/env python
"""Epoch wall-clock of a shared-mode run on 1 and on N ranks (same global samples), and the ratio.

    python jobs/bench_ranks.py --preset fc-fmnist --method rbd --ranks 1 2 --threads-total 2

Each configuration runs under mpiexec with the same global batch and seed, so every rank
count sees the same samples; threads per rank = threads-total / ranks, so the machine is
used alike. Wall-clock is measured around the whole job (start-up included) and the
per-step median comes from the run's own metrics.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rbd_hpc.cli import count

BIN = Path(sys.executable).parent


def run(ranks: int, args, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.jsonl"
        cmd = [str(BIN / "mpiexec"), "-n", str(ranks), str(BIN / "rbd-hpc"), "train",
               "--preset", args.preset, "--method", args.method, "--mode", "shared",
               "--threads", str(max(1, args.threads_total // ranks)), "--metrics", str(metrics),
               "--no-progress", *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"ranks={ranks} failed:\n{proc.stderr}")
        last = json.loads(metrics.read_text().splitlines()[-1])
        return {"ranks": ranks, "wall_s": wall, "ms_per_step": last["ms_per_step"],
                "test_acc": last["test_acc"], "bytes_per_step": last["bytes_per_step"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fc-fmnist")
    p.add_argument("--method", default="rbd")
    p.add_argument("--ranks", type=count, nargs="+", default=[1, 2])
    p.add_argument("--threads-total", type=count, default=os.cpu_count() or 1)
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more rbd-hpc train options")
    args = p.parse_args()
    extra = [a for a in args.extra if a != "--"] or ["--epochs", "1"]
    rows = [run(r, args, extra) for r in args.ranks]
    base = rows[0]["wall_s"]
    print(f"# {args.preset} {args.method} shared mode, {' '.join(extra)}, "
          f"{args.threads_total} threads in total")
    print(f"{'ranks':>5} {'wall s':>8} {'ms/step':>8} {'÷ 1 rank':>9} {'B/step':>7} {'test_acc':>8}")
    for r in rows:
        print(f"{r['ranks']:>5} {r['wall_s']:>8.1f} {r['ms_per_step']:>8.2f} {r['wall_s'] / base:>9.2f} "
              f"{r['bytes_per_step']:>7.0f} {r['test_acc']:>8.4f}")


if __name__ == "__main__":
    main()
