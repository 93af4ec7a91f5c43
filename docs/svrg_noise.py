"""How much of a batch-32 gradient is sampling noise, and how much an SVRG anchor removes.

    python docs/svrg_noise.py RUN.h5 [STEP ...]     (an fc-fmnist or cnn-fmnist RBD run file)

At each STEP (default: the snapshots at 20000 and 100000) it takes that step's θ as the anchor
θ̃, replays the run file 100 and 1718 steps on (one epoch at batch 32), and prints, over 30
mini-batches b of 32 training images:

    signal  ‖ḡ(θ)‖²                           ḡ: the gradient over 20,000 training images
    plain   E‖g_b(θ) − ḡ(θ)‖²                  the noise a coefficient <φ, g_b> carries
    svrg    E‖g_b(θ) − g_b(θ̃) + ḡ(θ̃) − ḡ(θ)‖²   the noise left with --svrg-every

A random-bases step Σ_i <φ_i, g> φ_i has expected value (d/D)·ḡ, while its size grows with ‖g‖²
(signal plus noise), so the ratio plain/svrg is the factor by which the step's noise shrinks.
"""
import sys

import numpy as np
import torch

from rbd_hpc.config import TrainConfig
from rbd_hpc.data import load_dataset, to_tensor
from rbd_hpc.models import FlatParameters, build_model
from rbd_hpc.replay import replay_to
from rbd_hpc.runlog import RunFile

torch.set_num_threads(1)
run = RunFile(sys.argv[1])
anchors = [int(s) for s in sys.argv[2:]] or [20000, 100000]
cfg = TrainConfig.from_json(run.config_json)
data = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed, cfg.val_size)
model = build_model(cfg.model, data.shape, torch.Generator().manual_seed(0))
flat = FlatParameters(model)
rng = np.random.default_rng(0)


def gradient(theta: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    flat.theta.copy_(torch.from_numpy(np.asarray(theta, np.float32)))
    total = torch.zeros(flat.dim, dtype=torch.float64)
    for lo in range(0, len(idx), 1000):
        j = idx[lo:lo + 1000]
        flat.zero_grad()
        torch.nn.functional.cross_entropy(model(to_tensor(data.train.x[j])),
                                          torch.from_numpy(data.train.y[j]),
                                          reduction="sum").backward()
        total += flat.gradient()
    return total / len(idx)


big = rng.choice(len(data.train.y), 20000, replace=False)
for at in anchors:
    anchor = replay_to(run, at).copy()
    mu = gradient(anchor, big)
    for lag in (100, 1718):
        theta = replay_to(run, at + lag).copy()
        full = gradient(theta, big)
        plain, svrg = [], []
        for _ in range(30):
            b = rng.choice(len(data.train.y), 32, replace=False)
            g = gradient(theta, b)
            plain.append(float((g - full).square().sum()))
            svrg.append(float((g - gradient(anchor, b) + mu - full).square().sum()))
        print(f"anchor step {at}, {lag} steps on: signal {float(full.square().sum()):.3g}, "
              f"noise plain {np.mean(plain):.3g}, svrg {np.mean(svrg):.3g} "
              f"({np.mean(plain) / np.mean(svrg):.1f}× less); |θ − θ̃| "
              f"{np.linalg.norm(theta - anchor):.3g}", flush=True)
