"""Would averaging a run's last weights (tail averaging, as SWA does) score higher?

    python docs/tail_average.py RUN.h5 [RUN.h5 ...]      (a run file of a built-in image data set)

A method that steps along random directions also takes a random walk across the directions
orthogonal to the gradient; averaging the iterates cancels part of that walk. The run file
holds a snapshot of θ every --snapshot-every steps, so the average of the snapshots taken over
a run's last K epochs is at hand without retraining. For each run file this prints the
validation loss and accuracy of its last weights and of those averages, K = 2, 5, 10, 20 and
30 (a network without BatchNorm: no buffers to recompute). It reads the validation split only:
an average that validation does not choose has no test accuracy.
"""
import sys

import numpy as np
import torch

from rbd_hpc.api import scorer
from rbd_hpc.errors import UserError
from rbd_hpc.runlog import RunFile

EPOCHS = (2, 5, 10, 20, 30)

torch.set_num_threads(1)
for path in sys.argv[1:]:
    try:
        with RunFile(path) as f:
            run = scorer(f)
            run.refuse_buffers("an average of θ")
            last = run.weights
            steps_per_epoch = len(run.data.train.y) // run.cfg.batch_size
            oldest = last.step - max(EPOCHS) * steps_per_epoch
            snaps = [f.snapshot(i)[:2] for i, s in enumerate(f.snapshot_steps())
                     if oldest < s <= last.step]
    except UserError as e:
        sys.exit(f"tail_average.py: {e}")

    def score(theta: np.ndarray | None = None) -> str:
        loss, acc = run.score("val", theta)
        return f"val loss {loss:.4f}, val acc {100 * acc:.2f}%"

    print(f"{path}: last weights (step {last.step}): {score()}")
    for k in EPOCHS:
        chosen = [theta for step, theta in snaps if step > last.step - k * steps_per_epoch]
        mean = np.mean(np.stack(chosen).astype(np.float64), axis=0)
        what = "the snapshot" if len(chosen) == 1 else f"the {len(chosen)} snapshots"
        print(f"  mean of {what} of the last {k} epochs: {score(mean)}")
