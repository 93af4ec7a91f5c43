#!/usr/bin/env python
"""Strong scaling on one node: the same work on 1 and 2 ranks, one thread per rank.

    python jobs/scaling.py                                  # FC and CNN; srht, gaussian, SGD
    python jobs/scaling.py --repeats 5 --ranks 1 2 --configs fc:srht cnn:sgd

Every configuration runs under mpiexec in shared mode with the same global batch (32) and
seed, so each rank count takes the same steps on the same samples. The runs are interleaved
(every configuration and rank count once per round), and each figure is the median over the
rounds of the run's own per-step median (from its metrics file). It reports ms per step,
the speed-up and parallel efficiency against 1 rank, and where a step's time goes on each
rank count: batch + forward + backward, the method's own work (generating, projecting and
applying directions, or the SGD update), the MPI exchange, and bookkeeping (the run-file
row, commits and the stop agreement).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rbd_hpc.cli import count

BIN = Path(sys.executable).parent
PHASES = ("forward_backward", "method", "exchange", "bookkeeping")
# steps per run: enough for a stable median, few enough for gaussian's ~100 ms and 200 ms steps
STEPS = {("fc", "srht"): 300, ("fc", "gaussian"): 40, ("fc", "sgd"): 300,
         ("cnn", "srht"): 80, ("cnn", "gaussian"): 20, ("cnn", "sgd"): 80}


def run_once(model: str, kind: str, ranks: int, data_dir: str | None, extra: list[str]) -> dict:
    method = ["--method", "sgd"] if kind == "sgd" else ["--method", "rbd", "--dist", kind]
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.jsonl"
        cmd = [str(BIN / "mpiexec"), "-n", str(ranks), str(BIN / "rbd-hpc"), "train",
               "--preset", f"{model}-fmnist", *method, "--threads", "1", "--no-progress",
               "--steps", str(STEPS[(model, kind)]), "--metrics", str(metrics), *extra]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"scaling: {model} {kind} on {ranks} rank(s) failed:\n{proc.stderr.strip()}")
        return json.loads(metrics.read_text().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=[f"{m}:{k}" for m, k in STEPS])
    p.add_argument("--ranks", type=count, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=count, default=3)
    p.add_argument("--data-dir")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more rbd-hpc train options")
    args = p.parse_args()
    configs = [tuple(c.split(":")) for c in args.configs]
    for c, config in zip(args.configs, configs):
        if config not in STEPS:
            p.error(f"--configs {c!r} is not valid; choose from: "
                    + ", ".join(f"{m}:{k}" for m, k in STEPS))
    extra = [a for a in args.extra if a != "--"]
    runs: dict[tuple, list[dict]] = {}
    for _ in range(args.repeats):
        for model, kind in configs:
            for r in args.ranks:
                runs.setdefault((model, kind, r), []).append(
                    run_once(model, kind, r, args.data_dir, extra))

    def med(model, kind, r, key):
        return statistics.median(row.get(key, 0.0) for row in runs[(model, kind, r)])
    base = args.ranks[0]
    print(f"# shared mode, global batch 32, 1 thread per rank; medians of {args.repeats} "
          "interleaved rounds of each run's per-step median (ms)")
    print("| model | directions | ranks | ms/step | speed-up | efficiency | fwd+bwd | method "
          "| exchange | bookkeeping | bytes sent / received per step |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for model, kind in configs:
        t1 = med(model, kind, base, "ms_per_step")
        for r in args.ranks:
            t = med(model, kind, r, "ms_per_step")
            phases = " | ".join(f"{med(model, kind, r, 'ms_' + ph):.2f}" for ph in PHASES)
            sent, recv = med(model, kind, r, "bytes_per_step"), med(model, kind, r, "recv_bytes_per_step")
            print(f"| {model.upper()} | {kind} | {r} | {t:.2f} | {t1 / t:.2f} | "
                  f"{t1 / t / (r / base):.0%} | {phases} | {sent:,.0f} / {recv:,.0f} |")


if __name__ == "__main__":
    main()
