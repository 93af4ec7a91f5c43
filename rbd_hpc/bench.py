"""Per-step timing of RBD configurations against SGD on the same model and batch.

Configurations are interleaved (one step of each, round after round) so machine noise
hits them alike; we report medians and the ratio to the SGD median measured in the
same run. ``reference`` is the straightforward implementation that the paper-era timing used
(torch.randn chunks of 50 from one generator, normalised by √D, projection and update
in one pass per chunk).

With ``svrg_every`` N every RBD configuration also gets a "+svrg" row: its step adds the
anchor's forward and backward pass, plus one pass over a training set of the data set's size
(random images) timed once and spread over the N steps it serves.

Also measured here, each in the same run as its baseline:
  replay  — replaying N logged steps (no forward/backward, no projection) ÷ training them;
  memory  — peak resident memory of N training steps in a fresh process, RBD ÷ SGD.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

from .bases import Basis, BasisConfig, power_of_two_blocks, smooth_image_layers
from .comm import SingleProcess
from .compartments import build_compartments
from .data import SHAPES, Split
from .kernels import (combine_in_order, fwht_backend, fwht_butterfly, fwht_inplace, fwht_radix16,
                      gaussian_rows)
from .methods import SGD, FixedProjectionDescent, RandomBasesDescent
from .methods.update import add_scaled_
from .models import FlatParameters, build_model
from .svrg import Anchor

# training samples after the default 5,000-image validation split: what one anchor pass covers
TRAIN_SAMPLES = {"mnist": 55000, "fmnist": 55000, "cifar10": 45000}


def reference_step(theta: torch.Tensor, grad: torch.Tensor, d: int, lr: float, chunk: int = 50):
    """The baseline path: generate each chunk, project, then apply (no seed keying)."""
    D = theta.numel()
    for lo in range(0, d, chunk):
        phi = torch.randn(min(chunk, d - lo), D) / math.sqrt(D)
        theta.add_((phi @ grad) @ phi, alpha=-lr)


class Harness:
    """A model, a fixed batch and a gradient function: everything a step needs but data."""

    def __init__(self, model: str, dataset: str, batch_size: int = 32, device: str = "cpu"):
        gen = torch.Generator().manual_seed(0)
        self.model_name = model
        self.model = build_model(model, SHAPES[dataset], gen).to(device)
        self.flat = FlatParameters(self.model)
        self.x = torch.rand((batch_size,) + SHAPES[dataset], generator=gen).to(device)
        self.y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
        self.device = device

    def grad(self) -> torch.Tensor:
        self.flat.zero_grad()
        nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        return self.flat.gradient()

    def rbd(self, d: int, dist: str, compartments: str, chunk: int = 50,
            method=RandomBasesDescent, **options) -> RandomBasesDescent:
        comps = build_compartments(self.flat.named_sizes(), compartments, d)
        image = smooth_image_layers(dist, comps, list(zip(self.flat.names, self.flat.shapes)),
                                    self.x.shape[1], f"{self.model_name}, --compartments {compartments}")
        basis = Basis(BasisConfig(dist), 0, self.device, image_layers=image)
        return method(comps, basis, SingleProcess(), chunk_size=chunk, **options)


def label(dist: str, compartments: str) -> str:
    return f"rbd-{dist}" + ("" if compartments == "network" else f"@{compartments}")


def ceiling_steppers(h: Harness, m: RandomBasesDescent, name: str) -> dict:
    """The direction work of ``m``'s step without the forward and backward pass: the whole of it
    ("directions only": make, project, exchange, apply, on a fixed gradient), and its floor —
    making the directions alone (srht: signs and rows, then the two transforms of every block;
    dense: sampling every chunk)."""
    g = h.grad()
    out = {f"{name}: directions only": lambda t: m.step(h.flat.theta, g, t, 1e-4)}

    def make(t):
        return [piece.chunk for piece in m._chunks(t)]
    if m.basis.config.structured:
        blocks = [(c.start + off, n) for c in m.compartments
                  for off, n in power_of_two_blocks(c.size)]
        buf = g.numpy().copy()

        def transforms(t):
            make(t)
            for _ in range(2):        # one to project, one to apply
                for start, n in blocks:
                    fwht_inplace()(buf[start:start + n])
        out[f"{name}: signs+rows+2 fwht"] = transforms
    else:
        out[f"{name}: sampling only"] = make
    return out


def run_bench(model_name: str = "fc", dataset: str = "fmnist", d: int = 250,
              dists: tuple[str, ...] = ("gaussian", "rademacher", "uniform", "srht"),
              compartments: tuple[str, ...] = ("network",), batch_size: int = 32, steps: int = 20,
              threads: int | None = None, device: str = "cpu", reference: bool = True,
              chunk: int = 50, svrg_every: int = 0, ceilings: bool = False) -> list[dict]:
    if threads:
        torch.set_num_threads(threads)
    h = Harness(model_name, dataset, batch_size, device)
    sgd = SGD(SingleProcess())
    steppers = {"sgd": lambda t: sgd.step(h.flat.theta, h.grad(), t, 1e-4)}
    for comp in compartments:
        for dist in dists:
            m = h.rbd(d, dist, comp, chunk)
            steppers[label(dist, comp)] = (lambda m: lambda t: m.step(h.flat.theta, h.grad(), t, 1e-4))(m)
            if ceilings:
                own = h.rbd(d, dist, comp, chunk)
                steppers.update(ceiling_steppers(h, own, label(dist, comp)))
    pass_ms = 0.0
    if svrg_every:
        anchor = Anchor(h.model, device)
        c, hh, w = SHAPES[dataset]
        gen = torch.Generator().manual_seed(1)
        n = TRAIN_SAMPLES[dataset]
        train = Split(torch.randint(0, 256, (n, hh, w, c), generator=gen, dtype=torch.uint8).numpy(),
                      torch.randint(0, 10, (n,), generator=gen).numpy())
        t0 = time.perf_counter()
        anchor.refresh(h.flat.theta.detach(), train, (0, n), 1.0 / n)
        pass_ms = (time.perf_counter() - t0) * 1e3
        for comp in compartments:
            for dist in dists:
                m = h.rbd(d, dist, comp, chunk)
                steppers[f"{label(dist, comp)}+svrg"] = (lambda m: lambda t: m.step(
                    h.flat.theta, anchor.correct(h.grad(), h.x, h.y), t, 1e-4))(m)
    if reference:
        steppers["rbd-reference"] = lambda t: reference_step(h.flat.theta, h.grad(), d, 1e-4)
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for t in range(steps + 2):
        for name, fn in steppers.items():
            t0 = time.perf_counter()
            fn(t)
            if device == "cuda":
                torch.cuda.synchronize()
            if t >= 2:  # two warm-up rounds
                times[name].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times["sgd"])
    ref = statistics.median(times["rbd-reference"]) if reference else float("nan")
    spread = {k: pass_ms / svrg_every if k.endswith("+svrg") else 0.0 for k in times}
    return [{"config": k, "ms_per_step": statistics.median(v) + spread[k],
             "ratio_to_sgd": (statistics.median(v) + spread[k]) / base,
             "ratio_to_reference": (statistics.median(v) + spread[k]) / ref,
             "anchor_pass_ms": pass_ms if spread[k] else None}
            for k, v in times.items()]


def replay_ratio(model_name: str, dataset: str, d: int, dist: str, compartments: str,
                 steps: int = 30, device: str = "cpu") -> dict:
    """Train ``steps`` steps (forward, backward, RBD step), then replay them from the
    coefficients alone; both from the same θ0, and the replay is checked bitwise."""
    h = Harness(model_name, dataset, device=device)
    m = h.rbd(d, dist, compartments)
    theta0 = h.flat.theta.clone()
    logged = []
    t0 = time.perf_counter()
    for t in range(steps):
        logged.append(m.step(h.flat.theta, h.grad(), t, 1e-3).coefficients)
    train_s = time.perf_counter() - t0
    theta = theta0.clone()
    t0 = time.perf_counter()
    for t, c in enumerate(logged):
        m.replay_step(theta, t, 1e-3, c)
    replay_s = time.perf_counter() - t0
    return {"config": label(dist, compartments), "train_s": train_s, "replay_s": replay_s,
            "ratio": replay_s / train_s, "bitwise": bool(torch.equal(theta, h.flat.theta))}


def unfused_cost(model_name: str, dataset: str, d: int, dist: str, compartments: str,
                 chunk: int = 50, steps: int = 30, device: str = "cpu",
                 with_sgd: bool = True) -> list[dict]:
    """What kernel generation 3's unfused scaled add (``add_scaled_``: the rate × step rounded,
    into a temporary, before its add) costs against ATen's fused ``add_(x, alpha=a)``: the adds
    one step makes (SGD: one over D; RBD: one per chunk over its span, from the method's own
    chunk plan), timed both ways in turn, next to a whole step (forward, backward, step) of
    the same method (SGD's row only ``with_sgd``). Medians of interleaved repeats."""
    h = Harness(model_name, dataset, device=device)
    m = h.rbd(d, dist, compartments, chunk)
    D = h.flat.theta.numel()
    plans = {"sgd": [D]} if with_sgd else {}
    plans[label(dist, compartments)] = [p.span.stop - p.span.start for p in m._chunks(0, listed=True)]
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(D, generator=gen).to(device)
    x = torch.randn(D, generator=gen).to(device)
    sgd = SGD(SingleProcess())
    steppers = {"sgd": lambda t: sgd.step(h.flat.theta, h.grad(), t, 1e-4),
                label(dist, compartments): lambda t: m.step(h.flat.theta, h.grad(), t, 1e-4)}
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(steps + 2):
        for name, sizes in plans.items():
            for how in ("fused", "unfused", "step"):
                t0 = time.perf_counter()
                if how == "step":
                    steppers[name](r)
                else:
                    for n in sizes:
                        add_scaled_(target[:n], x[:n], -1e-4, how == "unfused")
                if device == "cuda":
                    torch.cuda.synchronize()
                if r >= 2:
                    times.setdefault((name, how), []).append((time.perf_counter() - t0) * 1e3)
    rows = []
    for name, sizes in plans.items():
        ms = {how: statistics.median(times[(name, how)]) for how in ("fused", "unfused", "step")}
        rows.append({"config": name, "adds": len(sizes), "elements": sum(sizes),
                     "fused_ms": ms["fused"], "unfused_ms": ms["unfused"], "step_ms": ms["step"],
                     "extra_share": (ms["unfused"] - ms["fused"]) / ms["step"]})
    return rows


def fpd_ratio(model_name: str, dataset: str, d: int, dist: str, steps: int = 20,
              device: str = "cpu") -> dict:
    """The official FPD's whole step (its forward shift Σ_i c_{t−1,i} φ_i, the forward and
    backward pass, the step) ÷ Li's FPD step (the same without the shift), directions held in
    memory (the default); and Li's step with its directions regenerated every step
    (--no-keep-in-memory) ÷ held. One step of each in turn, medians."""
    h = Harness(model_name, dataset, device=device)
    methods = {name: h.rbd(d, dist, "network", method=FixedProjectionDescent,
                           keep_in_memory=name != "regenerated", carry_coordinates=name == "official")
               for name in ("li", "official", "regenerated")}
    theta0 = h.flat.theta.clone()
    thetas = {name: theta0.clone() for name in methods}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for t in range(steps + 1):                  # step 0 generates the kept directions: not timed
        for name, m in methods.items():
            t0 = time.perf_counter()
            shift = m.forward_shift(thetas[name])
            h.flat.theta.copy_(thetas[name] if shift is None else thetas[name] + shift)
            m.step(thetas[name], h.grad(), t, 1e-3)
            if t:
                times[name].append(time.perf_counter() - t0)
    li, official, regenerated = (statistics.median(times[k]) * 1e3 for k in methods)
    return {"config": f"fpd-{dist}", "li_ms": li, "official_ms": official, "ratio": official / li,
            "regenerated_ms": regenerated, "regenerated_ratio": regenerated / li}


_MEMORY_CHILD = """
import json, sys, torch
from rbd_hpc.bench import Harness
from rbd_hpc.methods import SGD
from rbd_hpc.comm import SingleProcess
model, dataset, method, d, dist, comp, steps = json.loads(sys.argv[1])
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
h = Harness(model, dataset)
h.grad()
base = rss("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark: import spikes out
    f.write("5")
m = SGD(SingleProcess()) if method == "sgd" else h.rbd(d, dist, comp)
for t in range(steps):
    m.step(h.flat.theta, h.grad(), t, 1e-4)
print(json.dumps({"peak_kb": rss("VmHWM:"), "setup_kb": base}))
"""


def memory_ratio(model_name: str, dataset: str, d: int, dist: str, compartments: str,
                 steps: int = 5, threads: int | None = None) -> dict:
    """Peak RSS while training (high-water mark reset after set-up), each in a fresh process."""
    out = {}
    for method in ("sgd", "rbd"):
        arg = json.dumps([model_name, dataset, method, d, dist, compartments, steps])
        env = None
        if threads:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, arg], capture_output=True,
                              text=True, env=env, check=True)
        out[method] = json.loads(proc.stdout)
    return {"config": label(dist, compartments), "sgd_peak_mb": out["sgd"]["peak_kb"] / 1024,
            "rbd_peak_mb": out["rbd"]["peak_kb"] / 1024,
            "ratio": out["rbd"]["peak_kb"] / out["sgd"]["peak_kb"],
            "rbd_extra_mb": (out["rbd"]["peak_kb"] - out["rbd"]["setup_kb"]) / 1024,
            "sgd_extra_mb": (out["sgd"]["peak_kb"] - out["sgd"]["setup_kb"]) / 1024}


def format_table(rows: list[dict], header: str) -> str:
    lines = [header, f"{'config':<28} {'ms/step (median)':>17} {'÷ SGD':>8} {'÷ reference':>12}"]
    for r in rows:
        lines.append(f"{r['config']:<28} {r['ms_per_step']:>17.3f} {r['ratio_to_sgd']:>8.2f} "
                     f"{r['ratio_to_reference']:>12.2f}")
    return "\n".join(lines)


def kernel_table(repeats: int = 30) -> list[tuple[str, float]]:
    """ns per element of the kernels directions are made of, next to what the memory allows:
    interleaved medians of a float32 copy in cache (2¹⁷ elements, 512 KB) and out of it (2²⁴,
    64 MB), the transforms of 2¹⁷ elements (in place: the fast one, generation 1's radix-16
    matmuls, the reference butterflies), the normal samplers (ours; generation 1's
    torch.randn per direction) and the two sums of 50 dense directions Σ c_i φ_i (generation
    3's in-order loop; BLAS's gemv, generations 1 and 2), per element of Φ, on the current
    thread count."""
    rng = np.random.default_rng(0)
    small = rng.standard_normal(1 << 17).astype(np.float32)
    large = rng.standard_normal(1 << 24).astype(np.float32)
    work, big = small.copy(), np.empty_like(large)
    rows = np.empty((4, 1 << 17), dtype=np.float32)
    seeds = np.arange(4, dtype=np.uint64) + 1
    gen = torch.Generator()
    torch_rows = torch.empty((4, 1 << 17))
    phi = torch.from_numpy(rng.standard_normal((50, 1 << 17)).astype(np.float32))
    coefficients = torch.from_numpy(rng.standard_normal(50).astype(np.float32))

    def torch_normals():
        for r in range(4):
            gen.manual_seed(r + 1)
            torch.randn(1 << 17, generator=gen, out=torch_rows[r])
    kernels = {
        "copy, in cache (512 KB)": (lambda: np.copyto(work, small), small.size),
        "copy, memory (64 MB)": (lambda: np.copyto(big, large), large.size),
        f"fwht 2^17, {fwht_backend()}": (lambda: fwht_inplace()(work), small.size),
        "fwht 2^17, radix-16 matmuls (gen. 1)": (lambda: fwht_radix16(torch.from_numpy(work)),
                                                 small.size),
        "fwht 2^17, torch butterflies": (lambda: fwht_butterfly(torch.from_numpy(work)),
                                         small.size),
        "normals, Philox+ziggurat (gen. 2)": (lambda: gaussian_rows(rows, seeds), rows.size),
        "normals, torch.randn (gen. 1)": (torch_normals, rows.size),
        "sum of 50 directions, in order (gen. 3)": (
            lambda: combine_in_order(coefficients, phi), phi.numel()),
        "sum of 50 directions, BLAS (gen. 1, 2)": (lambda: coefficients @ phi, phi.numel()),
    }
    times: dict[str, list[float]] = {k: [] for k in kernels}
    for r in range(repeats + 2):
        for name, (fn, _) in kernels.items():
            np.copyto(work, small)   # the transforms grow their input: start each from the same
            t0 = time.perf_counter()
            fn()
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
    return [(name, statistics.median(times[name]) / n * 1e9) for name, (_, n) in kernels.items()]
