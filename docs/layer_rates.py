"""Which compartment could take a larger step: the best rate of each one, from the curvature.

    python docs/layer_rates.py RUN.h5 [STEP ...]   (an rbd run file; default: its second snapshot)

At θ_STEP (replayed from the run file), for each compartment k and mini-batches b of 32 training
images, with the run's own directions P_k at steps STEP, STEP+1, … and u_k = P_kᵀ P_k g_k (the
compartment's part of the random-bases step at rate 1; g is the projected gradient: g_b, or
g_b − g_b(θ̃) + μ̃ for a run with --svrg-every), the loss along −η u_k changes by

    −η A_k + η² B_k / 2,   A_k = E <ḡ_k, u_k>,   B_k = E u_kᵀ H_kk u_k

(ḡ: the gradient over 10,000 training images, H: the Hessian over 512 of them, by
Hessian-vector products). Each compartment on its own would descend fastest at η*_k = A_k / B_k.
The script prints η*_k next to the rate the run used at that step: a compartment whose η*_k is far
above it is held back by the others, since one rate serves them all. Cross-compartment terms of
the Hessian are left out (the compartments' directions are independent).
"""
import sys

import numpy as np
import torch

from rbd_hpc.config import TrainConfig
from rbd_hpc.data import BatchStream, Split, load_dataset, to_tensor
from rbd_hpc.methods.update import step_chunks
from rbd_hpc.models import FlatParameters, build_model
from rbd_hpc.replay import method_for, replay_to
from rbd_hpc.runlog import RunFile
from rbd_hpc.svrg import Anchor, anchor_step

BATCHES = 16
torch.set_num_threads(1)
run = RunFile(sys.argv[1])
cfg = TrainConfig.from_json(run.config_json)
steps = [int(s) for s in sys.argv[2:]] or [int(run.snapshot_steps()[1])]
data = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed, cfg.val_size)
model = build_model(cfg.model, data.shape, torch.Generator().manual_seed(0))
flat = FlatParameters(model)
method = method_for(run)
compartments = run.layout["compartments"]
rng = np.random.default_rng(0)
big = rng.choice(len(data.train.y), min(10000, len(data.train.y)), replace=False)
hess = big[:512]
stream = BatchStream(data.train, cfg.seed, cfg.batch_size, 0, 1, False, cfg.dataset)


def set_theta(theta) -> None:
    flat.theta.copy_(torch.as_tensor(np.asarray(theta, np.float32)))


def gradient(idx: np.ndarray) -> torch.Tensor:
    """The mean gradient at the current θ over training samples ``idx`` (an anchor pass)."""
    pass_ = Anchor(model, "cpu")
    pass_.refresh(flat.theta.detach(), Split(data.train.x[idx], data.train.y[idx]),
                  (0, len(idx)), 1.0 / len(idx))
    return pass_.mu


def curvature(v: torch.Tensor) -> float:
    """vᵀ H v over the Hessian samples (double backward, 256 at a time)."""
    params = [p for _, p in flat.params]
    total = 0.0
    for lo in range(0, len(hess), 256):
        j = hess[lo:lo + 256]
        loss = torch.nn.functional.cross_entropy(model(to_tensor(data.train.x[j])),
                                                 torch.from_numpy(data.train.y[j]),
                                                 reduction="sum")
        grads = torch.autograd.grad(loss, params, create_graph=True)
        flat_grad = torch.cat([g.reshape(-1) for g in grads])
        hv = torch.autograd.grad(flat_grad @ v, params)
        total += float(torch.cat([h.reshape(-1) for h in hv]) @ v)
    return total / len(hess)


for at in steps:
    lr = float(run.steps(at, at + 1)["lr"][0])
    anchor = None
    if cfg.svrg_every:  # θ̃ and μ̃ of the anchor that step `at` used, as in training
        anchor = Anchor(model, "cpu")
        anchor.refresh(torch.as_tensor(np.asarray(replay_to(run, anchor_step(at, cfg.svrg_every)),
                                                  np.float32)),
                       data.train, (0, len(data.train.y)), 1.0 / len(data.train.y))
    theta = replay_to(run, at)
    set_theta(theta)
    full = gradient(big)
    A = np.zeros(len(compartments))
    B = np.zeros(len(compartments))
    for k in range(BATCHES):
        epoch, i = divmod(at + k, stream.steps_per_epoch)
        xb, yb = stream.batch(epoch, i)
        x, y = to_tensor(xb), torch.from_numpy(yb)
        flat.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        g = flat.gradient() if anchor is None else anchor.correct(flat.gradient(), x, y)
        for span, chunk, _ in step_chunks(method.basis, method.compartments, method.key_step(at + k),
                                       method.directions_per_compartment, method.chunk_size,
                                       rates=method.rates):
            step_u = chunk.combine(chunk.project(g[span]))  # equal-size neighbours go together
            for c, comp in enumerate(compartments):
                if span.start <= comp["start"] < span.stop:
                    part = slice(comp["start"], comp["stop"])
                    u = torch.zeros(flat.dim)
                    u[part] = step_u[part.start - span.start:part.stop - span.start]
                    A[c] += float(full[part] @ u[part]) / BATCHES
                    B[c] += curvature(u) / BATCHES
    print(f"step {at} (rate {lr:.4g}{', svrg' if anchor else ''}):")
    for comp, a, b, s in zip(compartments, A, B, method.rates or [1.0] * len(compartments)):
        own = f" {lr * s:.4g}, --lr-scale {s:g}" if s != 1.0 else ""  # the compartment's own rate
        print(f"  {comp['name']:<8} D={comp['stop'] - comp['start']:>6} d={comp['d']:>3}  A={a:.3g}  B={b:.3g}  "
              f"η*={a / b:.3g} ({a / b / (lr * s):.2g}× the rate{own})", flush=True)
