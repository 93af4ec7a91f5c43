#!/usr/bin/env python
"""Measure this machine's MPI latency α and inverse bandwidth β, then project the per-step
communication time of RBD and SGD from 1 to 4,096 ranks (docs/scaling.md).

    mpiexec -n 2 python jobs/mpi_scaling_model.py measure --out docs/metrics/mpi_alpha_beta.json
    python jobs/mpi_scaling_model.py project --measured docs/metrics/mpi_alpha_beta.json \\
        --plot docs/img/scaling_projection.png

measure: a ping-pong between ranks 0 and 1 over message sizes 8 B … 16 MB (median of
interleaved repeats), fitted to t(n) = α + n·β by least squares; and the time of the
exchange training does (MPI_Reduce + MPI_Bcast of 4·d bytes) for d = 250 and 2,000.

project: the textbook costs of the collectives (Thakur, Rabenseifner & Gropp 2005):
  RBD shared mode, reduce + broadcast of 4·d bytes on binomial trees:
      2 · ⌈log2 R⌉ · (α + 4d·β)
  SGD, a ring allreduce of the 4·D-byte gradient (what PyTorch DDP does):
      2 (R − 1) · (α + 4D/R · β)
for this machine's fitted α, β and for two stated interconnects, for the paper's models
and for 25M- and 124M-parameter models. Where RBD's exchange is cheaper by more than the
direction work it adds, an RBD step beats an SGD step; that crossover is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

SIZES = [2 ** k for k in range(3, 25)]          # 8 B … 16 MB
REPEATS = 15
LINKS = {  # (α seconds, bytes per second)
    "fast fabric (2 µs, 25 GB/s)": (2e-6, 25e9),
    "commodity Ethernet (50 µs, 1 GB/s)": (50e-6, 1e9),
}
MODELS = {  # D, parameters
    "FC (paper)": 101_770, "CNN (paper)": 93_322, "ResNet-8 (paper)": 78_330,
    "25M": 25_000_000, "124M": 124_000_000,
}
# direction work per RBD step with srht, measured here (docs: issue 23's table, 1 thread):
# about 24 ns per element per transform, two transforms (project, apply) over D padded to 2^k
NS_PER_ELEMENT_TRANSFORM = 24e-9


def measure(out: Path) -> None:
    from mpi4py import MPI  # this script runs under mpiexec by design

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size != 2:
        raise SystemExit("measure runs on exactly 2 ranks: mpiexec -n 2 …")
    times = {n: [] for n in SIZES}
    for _ in range(REPEATS):
        for n in SIZES:  # interleaved: each round covers every size
            buf = np.zeros(n, dtype=np.uint8)
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(4):
                if rank == 0:
                    comm.Send(buf, dest=1)
                    comm.Recv(buf, source=1)
                else:
                    comm.Recv(buf, source=0)
                    comm.Send(buf, dest=0)
            times[n].append((time.perf_counter() - t0) / 8)  # one way
    exchange = {}
    for d in (250, 2000):
        send = np.ones(d, dtype=np.float32)
        result = np.empty_like(send)
        samples = []
        for _ in range(200):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Reduce(send, result, op=MPI.SUM, root=0)
            comm.Bcast(result, root=0)
            samples.append(time.perf_counter() - t0)
        exchange[d] = statistics.median(samples)
    if rank == 0:
        n = np.array(SIZES, dtype=np.float64)
        t = np.array([statistics.median(times[k]) for k in SIZES])
        beta, alpha = np.polyfit(n, t, 1)
        small = statistics.median([statistics.median(times[k]) for k in SIZES[:4]])
        report = {"alpha_s": float(max(alpha, 0.0)), "beta_s_per_byte": float(beta),
                  "bandwidth_GBps": float(1 / beta / 1e9), "latency_small_s": small,
                  "one_way_s": {str(k): float(v) for k, v in zip(SIZES, t)},
                  "reduce_bcast_s": {str(k): v for k, v in exchange.items()},
                  "how": "mpiexec -n 2 on one node (MPICH shared memory), median of "
                         f"{REPEATS} interleaved rounds of 4 round trips"}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"α = {report['alpha_s'] * 1e6:.2f} µs (fit), {small * 1e6:.2f} µs (8–64 B), "
              f"bandwidth {report['bandwidth_GBps']:.2f} GB/s; reduce+bcast of 4·250 B "
              f"{exchange[250] * 1e6:.1f} µs, of 4·2000 B {exchange[2000] * 1e6:.1f} µs on 2 ranks")


def rbd_comm(ranks: int, d: int, alpha: float, beta: float) -> float:
    return 0.0 if ranks == 1 else 2 * math.ceil(math.log2(ranks)) * (alpha + 4 * d * beta)


def sgd_comm(ranks: int, dim: int, alpha: float, beta: float) -> float:
    return 0.0 if ranks == 1 else 2 * (ranks - 1) * (alpha + 4 * dim / ranks * beta)


def srht_work(dim: int) -> float:
    """Direction work of one srht step (project + apply), replicated on every rank."""
    padded = 1 << (dim - 1).bit_length()
    return 2 * padded * NS_PER_ELEMENT_TRANSFORM * math.log2(padded) / 17  # 17 levels at 2^17


def project(measured: Path | None, plot: Path | None, d: int) -> None:
    links = dict(LINKS)
    if measured is not None:
        m = json.loads(measured.read_text())
        links = {f"this machine, shared memory ({m['latency_small_s'] * 1e6:.1f} µs, "
                 f"{m['bandwidth_GBps']:.1f} GB/s)": (m["latency_small_s"],
                                                       1 / m["beta_s_per_byte"]), **links}
    ranks = [2 ** k for k in range(0, 13)]
    print(f"# per-step communication time, RBD (d = {d}, reduce + broadcast) and SGD (ring "
          "allreduce), ms")
    curves = {}
    for link, (alpha, bw) in links.items():
        beta = 1 / bw
        print(f"\n## {link}\n")
        print("| model | D | " + " | ".join(f"R={r}" for r in ranks[1::2])
              + " | exchange cheaper from | step cheaper from (CPU srht work) |")
        print("|---|---:|" + "---:|" * len(ranks[1::2]) + "---|---|")
        for name, dim in MODELS.items():
            cells, cheaper, ahead = [], None, None
            for r in ranks:
                rbd, sgd = rbd_comm(r, d, alpha, beta), sgd_comm(r, dim, alpha, beta)
                curves[(link, name)] = curves.get((link, name), []) + [(r, rbd, sgd)]
                if cheaper is None and r > 1 and sgd > rbd:
                    cheaper = r
                if ahead is None and r > 1 and sgd - rbd > srht_work(dim):
                    ahead = r
            for r, rbd, sgd in curves[(link, name)][1::2]:
                cells.append(f"{rbd * 1e3:.3g} / {sgd * 1e3:.3g}")
            work = f"{srht_work(dim) * 1e3:.3g} ms"
            print(f"| {name} | {dim:,} | " + " | ".join(cells)
                  + f" | {f'R = {cheaper}' if cheaper else 'never'} | "
                  + (f"R = {ahead} ({work})" if ahead else f"never to 4,096 ({work})") + " |")
    if plot is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(links), figsize=(5.2 * len(links), 4.2), sharey=True)
        for ax, link in zip(np.atleast_1d(axes), links):
            for name, dim in MODELS.items():
                rs, rbd, sgd = zip(*curves[(link, name)])
                ax.loglog(rs[1:], np.array(sgd[1:]) * 1e3, label=f"SGD {name}")
            rs, rbd, _ = zip(*curves[(link, "FC (paper)")])
            ax.loglog(rs[1:], np.array(rbd[1:]) * 1e3, "k--", lw=2, label=f"RBD, d = {d} (any D)")
            ax.set_title(link, fontsize=9)
            ax.set_xlabel("ranks R")
            ax.grid(True, which="both", alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel("communication per step (ms)")
        np.atleast_1d(axes)[0].legend(fontsize=7)
        fig.tight_layout()
        plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=110)
        print(f"\nplot: {plot}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--out", type=Path, default=Path("docs/metrics/mpi_alpha_beta.json"))
    pr = sub.add_parser("project")
    pr.add_argument("--measured", type=Path)
    pr.add_argument("--plot", type=Path)
    pr.add_argument("--d", type=int, default=250)
    args = p.parse_args()
    if args.cmd == "measure":
        measure(args.out)
    else:
        project(args.measured, args.plot, args.d)


if __name__ == "__main__":
    main()
