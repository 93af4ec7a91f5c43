#!/usr/bin/env python
"""RBD's training step against SGD's inside real training: ``rbd-hpc train``'s own ms/step.

    python jobs/train_ratio.py --preset cnn-fmnist --threads 2 --steps 400 --repeats 3

Runs ``rbd-hpc train`` for SGD and for every ``--config`` (extra train options, e.g. "--dist
srht"), alternating them round after round so machine noise hits all alike, each on the
same preset, seed, thread count and number of steps (evaluation is left out of ms/step by
the training loop itself). Prints, per configuration, the median over rounds of the run's
median ms/step and of its phases (forward+backward, method, bookkeeping), and the ratio to
SGD's median measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rbd_hpc.cli import count

BIN = Path(sys.executable).parent
PHASES = ("ms_forward_backward", "ms_method", "ms_bookkeeping")


def one_run(preset: str, threads: int, steps: int, extra: list[str], tmp: Path) -> dict:
    """The metrics line of a fresh run's only epoch (its steps' median ms and phases)."""
    metrics, out = tmp / "m.jsonl", tmp / "r.h5"
    for f in (metrics, out):
        f.unlink(missing_ok=True)
    cmd = [str(BIN / "rbd-hpc"), "train", "--preset", preset, "--steps", str(steps),
           "--threads", str(threads), "--out", str(out), "--metrics", str(metrics),
           "--no-progress", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{shlex.join(cmd)} failed:\n{proc.stderr}")
    return json.loads(metrics.read_text().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fc-fmnist")
    p.add_argument("--threads", type=count, default=1)
    p.add_argument("--steps", type=count, default=400)
    p.add_argument("--repeats", type=count, default=3)
    p.add_argument("--config", action="append", default=None,
                   help='train options of one RBD configuration (repeatable; default "--dist srht")')
    args = p.parse_args()
    configs = {"sgd": ["--method", "sgd"]}
    for text in args.config or ["--dist srht"]:
        configs[f"rbd {text}"] = shlex.split(text)
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, extra in configs.items():
                runs[name].append(one_run(args.preset, args.threads, args.steps, extra, Path(tmp)))
    sgd = statistics.median(r["ms_per_step"] for r in runs["sgd"])
    print(f"# rbd-hpc train --preset {args.preset} --steps {args.steps} --threads {args.threads}, "
          f"{args.repeats} alternated rounds: medians over rounds of each run's median")
    print(f"{'configuration':<34} {'ms/step':>8} {'÷ SGD':>6} {'fwd+bwd':>8} {'method':>7} "
          f"{'bookkeeping':>11}  per round")
    for name, rs in runs.items():
        ms = statistics.median(r["ms_per_step"] for r in rs)
        ph = [statistics.median(r.get(k, float("nan")) for r in rs) for k in PHASES]
        each = " ".join(f"{r['ms_per_step']:.2f}" for r in rs)
        print(f"{name:<34} {ms:>8.2f} {ms / sgd:>6.2f} {ph[0]:>8.2f} {ph[1]:>7.2f} {ph[2]:>11.2f}"
              f"  {each}")


if __name__ == "__main__":
    main()
