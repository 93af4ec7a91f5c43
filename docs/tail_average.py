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

from rbd_hpc.checkpoint import model_for, weights_at
from rbd_hpc.comm import SingleProcess
from rbd_hpc.data import load_dataset
from rbd_hpc.errors import UserError
from rbd_hpc.runlog import RunFile
from rbd_hpc.train import evaluate

EPOCHS = (2, 5, 10, 20, 30)

torch.set_num_threads(1)
for path in sys.argv[1:]:
    try:
        with RunFile(path) as run:
            cfg = run.config()
            data = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed, cfg.val_size)
            steps_per_epoch = len(data.train.y) // cfg.batch_size
            last = weights_at(run, None)
            oldest = last.step - max(EPOCHS) * steps_per_epoch
            snaps = [run.snapshot(i)[:2] for i, s in enumerate(run.snapshot_steps())
                     if oldest < s <= last.step]
    except UserError as e:
        sys.exit(f"tail_average.py: {e}")
    if last.buffers.size:
        sys.exit(f"tail_average.py: {path}: the network has buffers (BatchNorm); an average "
                 "of θ would need them recomputed")
    net = model_for(cfg, data.shape)

    def score(theta: np.ndarray) -> str:
        last.theta = theta.astype(np.float32)
        net.load_state_dict(last.state_dict(), strict=True)
        loss, acc = evaluate(net, data.val, SingleProcess(), "cpu", data.inputs,
                             cfg.eval_batch_size)
        return f"val loss {loss:.4f}, val acc {100 * acc:.2f}%"

    print(f"{path}: last weights (step {last.step}): {score(np.asarray(last.theta))}")
    for k in EPOCHS:
        chosen = [theta for step, theta in snaps if step > last.step - k * steps_per_epoch]
        mean = np.mean(np.stack(chosen).astype(np.float64), axis=0)
        what = "the snapshot" if len(chosen) == 1 else f"the {len(chosen)} snapshots"
        print(f"  mean of {what} of the last {k} epochs: {score(mean)}")
