"""Per-step timing of RBD (each distribution) against SGD on the same model and batch.

Configurations are interleaved (one step of each, round after round) so machine noise
hits them alike; we report medians and the ratio to the SGD median measured in the
same run. ``reference`` is the straightforward implementation DESIGN.md quotes
(torch.randn chunks of 50 from the global generator, normalised by √D).
"""
from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

from .bases import Basis, BasisConfig
from .comm import SingleProcess
from .compartments import build_compartments
from .methods import SGD, RandomBasesDescent
from .models import FlatParameters, build_model

SHAPES = {"mnist": (1, 28, 28), "fmnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def reference_step(theta: torch.Tensor, grad: torch.Tensor, d: int, lr: float, chunk: int = 50):
    """The baseline path: generate each chunk, project, then apply (no seed keying)."""
    D = theta.numel()
    for lo in range(0, d, chunk):
        phi = torch.randn(min(chunk, d - lo), D) / math.sqrt(D)
        theta.add_((phi @ grad) @ phi, alpha=-lr)


def run_bench(model_name: str = "fc", dataset: str = "fmnist", d: int = 250,
              dists: tuple[str, ...] = ("gaussian", "rademacher", "uniform", "srht"),
              compartments: str = "network", batch_size: int = 32, steps: int = 20,
              threads: int | None = None, device: str = "cpu", reference: bool = True,
              chunk: int = 50) -> list[dict]:
    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    model = build_model(model_name, SHAPES[dataset], gen).to(device)
    flat = FlatParameters(model)
    x = torch.rand((batch_size,) + SHAPES[dataset], generator=gen).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    comm = SingleProcess()
    comps = build_compartments(flat.named_sizes(), compartments, d)

    def grad_at():
        flat.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        return flat.gradient()

    steppers = {"sgd": lambda g, t: SGD(comm).step(flat.theta, g, t, 1e-4)}
    for dist in dists:
        m = RandomBasesDescent(comps, Basis(BasisConfig(dist), 0, device), comm, chunk_size=chunk)
        steppers[f"rbd-{dist}"] = (lambda m: lambda g, t: m.step(flat.theta, g, t, 1e-4))(m)
    if reference:
        steppers["rbd-reference"] = lambda g, t: reference_step(flat.theta, g, d, 1e-4)
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for t in range(steps + 2):
        for name, fn in steppers.items():
            t0 = time.perf_counter()
            fn(grad_at(), t)
            if device == "cuda":
                torch.cuda.synchronize()
            if t >= 2:  # two warm-up rounds
                times[name].append((time.perf_counter() - t0) * 1e3)
    sgd = statistics.median(times["sgd"])
    return [{"config": k, "ms_per_step": statistics.median(v),
             "ratio_to_sgd": statistics.median(v) / sgd} for k, v in times.items()]


def format_table(rows: list[dict], header: str) -> str:
    lines = [header, f"{'config':<18} {'ms/step (median)':>17} {'÷ SGD':>8}"]
    for r in rows:
        lines.append(f"{r['config']:<18} {r['ms_per_step']:>17.2f} {r['ratio_to_sgd']:>8.2f}")
    return "\n".join(lines)
