"""Your own model and data set, trained by RBD through the Python API.

    python examples/own_model.py --out own.h5                  # one process
    mpiexec -n 2 python examples/own_model.py --out own.h5     # two ranks, same trajectory rules
    python examples/own_model.py --out own.h5 --resume         # continue after a kill
    rbd-hpc replay own.h5 --verify                             # bitwise, without the data
    rbd-hpc eval own.h5                                        # scores of the final weights

The same factories train from the command line, sbatch and submitit:

    rbd-hpc train --model examples/own_model.py:make_model \\
        --dataset examples/own_model.py:make_data --lr 0.05 --d 64 --dist srht --out own.h5

The run file records the two factories by name (this file's path, or ``module:name`` when the
file is importable as a module), so replay, eval and resume rebuild the model from them.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from torch import nn

CLASSES, FEATURES = 4, 16


def make_model() -> nn.Module:
    """A small MLP with BatchNorm (so its checkpoints carry buffers). rbd_hpc seeds torch's
    generator before calling this, so PyTorch's default initialisation is reproducible."""
    return nn.Sequential(nn.Linear(FEATURES, 64), nn.BatchNorm1d(64), nn.ReLU(),
                         nn.Linear(64, CLASSES))


def make_data():
    """(train, test) as (x, y) arrays: four classes on the corners of a square in two of the
    features, XOR-like so that no linear model separates them, plus 14 noise features."""
    rng = np.random.default_rng(20201206)

    def draw(n):
        y = rng.integers(0, CLASSES, n)
        corner = np.stack([y % 2, y // 2], 1) * 2.0 - 1.0
        signal = corner * np.where((y == 1) | (y == 2), -1.0, 1.0)[:, None]
        x = np.concatenate([signal + 0.45 * rng.standard_normal((n, 2)),
                            rng.standard_normal((n, FEATURES - 2))], 1)
        return x.astype(np.float32), y
    return draw(4096), draw(1024)


def main(argv=None) -> int:
    import rbd_hpc
    from rbd_hpc.errors import UserError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="own.h5")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--method", default="rbd")
    args = p.parse_args(argv)
    try:
        summary = rbd_hpc.fit(make_model, make_data, out=args.out, resume=args.resume,
                              method=args.method, d=64, dist="srht", lr=0.05,
                              epochs=args.epochs, batch_size=32, val_size=512, threads=1,
                              snapshot_every=50)
        if summary["rank"] == 0:
            scores = rbd_hpc.evaluate(args.out)
            print(f"{args.method}: {summary['steps_done']} steps, val_acc {scores['val_acc']:.4f}, "
                  f"test_acc {scores['test_acc']:.4f}", flush=True)
    except UserError as e:  # the CLI's one-line error, for a script
        print(f"own_model: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
