"""``rbd-hpc``: train, replay, inspect, bench. A thin main(); user errors are one line, exit 2."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from .errors import UserError, require_choice, require_positive

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage too)
        raise UserError(message)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS

    p = _Parser(prog="rbd-hpc", description="Random Bases Descent on HPC clusters")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a network (under mpiexec/srun: one rank per process)")
    t.add_argument("--preset", default=None, help="one of: " + ", ".join(PRESETS) + " (default fc-fmnist)")
    t.add_argument("--method", help="rbd, fpd, nes, sgd, rigl, set or static")
    t.add_argument("--sigma", type=_float, help="NES noise scale")
    t.add_argument("--sparsity", type=_float, help="RigL/SET/Static: fraction of weights kept at zero")
    t.add_argument("--sparsity-dist", help="uniform or erk")
    t.add_argument("--mask-every", type=_int, help="RigL/SET: steps between mask updates (ΔT)")
    t.add_argument("--drop-fraction", type=_float, help="RigL/SET: initial drop fraction α")
    t.add_argument("--d", type=_int, help="directions per step (split over compartments by size)")
    t.add_argument("--d-per-compartment", type=_int, help="directions per compartment instead of --d")
    t.add_argument("--dist", help="gaussian, rademacher, uniform, srht or smooth:σ (fc presets with "
                                  "--compartments layer: rank-1 directions, blurred-image input side)")
    t.add_argument("--normalize", help="expected (E‖φ‖²=1, default) or exact (‖φ‖=1)")
    t.add_argument("--antithetic", action="store_true", default=None, help="directions in pairs (φ, −φ)")
    t.add_argument("--compartments", help="network, layer, tensor or block:N")
    t.add_argument("--allocate", help="split --d over compartments: size (default, d_k ∝ D_k), sqrt, "
                                      "equal, or power:P (d_k ∝ D_k^P)")
    t.add_argument("--redraw-every", type=_int, help="redraw directions every n steps (RBD)")
    t.add_argument("--chunk", type=_int, help="directions generated per chunk")
    t.add_argument("--keep-in-memory", action="store_true", default=None,
                   help="keep directions in memory while they stay the same (FPD, --redraw-every)")
    t.add_argument("--epochs", type=_int)
    t.add_argument("--steps", type=_int, help="train this many steps instead of --epochs")
    t.add_argument("--batch-size", type=_int, help="global batch size (default 32)")
    t.add_argument("--lr", type=_float, help="learning rate (default: the preset's base × batch size)")
    t.add_argument("--momentum", type=_float, help="heavy-ball momentum μ in [0, 1) (rbd, fpd, sgd, rigl, set, static)")
    t.add_argument("--weight-decay", type=_float,
                   help="decoupled weight decay λ ≥ 0: θ ← (1 − ηλ) θ every step (all methods)")
    t.add_argument("--svrg-every", type=_int,
                   help="SVRG: project g_b(θ) − g_b(θ̃) + μ̃, with θ̃ and the training-set "
                        "gradient μ̃ renewed every N steps (rbd, fpd; e.g. 1718, one "
                        "Fashion-MNIST epoch at batch 32)")
    t.add_argument("--schedule", help="constant or cosine")
    t.add_argument("--seed", type=_int, help="root seed of the seed schedule")
    t.add_argument("--data-dir", help="data directory (default $RBD_DATA or the Fashion-MNIST package)")
    t.add_argument("--val-size", type=_int, help="training samples held out for validation")
    t.add_argument("--augment", dest="augment", action="store_true", default=None,
                   help="the paper's augmentation (random crop, brightness / flip)")
    t.add_argument("--mode", help="shared (data-parallel, default) or per-rank (direction-parallel)")
    t.add_argument("--snapshot-every", type=_int, help="full θ snapshot every N steps")
    t.add_argument("--check-every", type=_int, help="compare θ hashes across ranks every N steps")
    t.add_argument("--device", help="cpu, cuda or ipu")
    t.add_argument("--threads", type=_int, help="torch threads per rank")
    t.add_argument("--out", help="the run file (HDF5) to write (an existing one is refused)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out run file")
    t.add_argument("--metrics", help="per-epoch metrics as JSON lines")
    t.add_argument("--resume", metavar="RUN.h5", help="continue the run in RUN.h5 from its last commit")
    t.add_argument("--no-progress", dest="progress", action="store_false")
    t.add_argument("--config-json", help="the full config as JSON (as stored in a run file); "
                   "other options override it")

    m = sub.add_parser("mpi-check", help="print this rank and the world size; fail if the world "
                       "is smaller than the Slurm step promises")
    m.add_argument("--expect", type=_int, help="also fail unless the world has exactly N ranks")

    r = sub.add_parser("replay", help="regenerate a run's weights from its seed log, without data")
    r.add_argument("run")
    r.add_argument("--step", type=_int, help="stop after N steps (default: all committed); with "
                                             "--verify, check the snapshots up to step N")
    r.add_argument("--out", help="write the weights to a .npz or .pt file")
    r.add_argument("--verify", action="store_true", help="compare with every stored snapshot")
    r.add_argument("--threads", type=_int, help="torch threads (default: the run's --threads, "
                   "so that BLAS sums in the same order as in training)")

    i = sub.add_parser("inspect", help="summarise a run file")
    i.add_argument("run")
    i.add_argument("--json", action="store_true")
    i.add_argument("--epochs", action="store_true", help="the per-epoch metrics as a table, with "
                   "the best validation epoch and the mean test accuracy of the last ten")

    pl = sub.add_parser("plot", help="PNG plots from run files or metrics files")
    pl.add_argument("runs", nargs="+", help="RUN.h5 or METRICS.jsonl files")
    pl.add_argument("--out", default="plots", help="directory for the PNGs")

    b = sub.add_parser("bench", help="time RBD steps against SGD steps")
    b.add_argument("--model", default="fc")
    b.add_argument("--dataset", default="fmnist")
    b.add_argument("--d", type=_int, default=250)
    b.add_argument("--dist", default="gaussian,rademacher,uniform,srht")
    b.add_argument("--compartments", default="network",
                   help="comma-separated schemes, e.g. network,block:4096")
    b.add_argument("--steps", type=_int, default=20)
    b.add_argument("--threads", type=_int, default=None)
    b.add_argument("--device", default="cpu")
    b.add_argument("--no-reference", dest="reference", action="store_false")
    b.add_argument("--chunk", type=_int, default=50)
    b.add_argument("--svrg-every", type=_int, default=0,
                   help="also time each RBD row with an SVRG anchor renewed every N steps")
    b.add_argument("--replay", action="store_true",
                   help="also time replaying the steps against training them")
    b.add_argument("--memory", action="store_true",
                   help="also compare peak memory of RBD and SGD training (fresh processes)")
    return p


TRAIN_KEYS = ("method", "d", "d_per_compartment", "dist", "normalize", "antithetic", "compartments",
              "allocate", "redraw_every", "chunk", "epochs", "steps", "batch_size", "lr", "momentum", "weight_decay",
              "svrg_every", "schedule",
              "seed", "data_dir", "val_size", "augment", "mode", "snapshot_every", "check_every",
              "device", "threads", "keep_in_memory", "sigma", "sparsity", "sparsity_dist", "mask_every", "drop_fraction")


def cmd_train(args, comm) -> int:
    from .config import TrainConfig
    from .train import train

    overrides = {k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k) is not None}
    if args.resume:
        from .runlog import RunFile

        if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise UserError("--resume writes to the run file it resumes; drop --out")
        if comm.rank == 0:
            with RunFile(args.resume) as run:
                stored = json.loads(run.config_json)
        else:
            stored = None
        stored = comm.broadcast_object(stored)
        free = set(TrainConfig.RESUME_FREE)
        differ = sorted(k for k, v in overrides.items() if k not in free and stored.get(k) != v)
        if args.preset and args.preset != stored.get("preset"):
            differ.insert(0, "preset")
        if differ:
            raise UserError(f"--resume {args.resume}: config differs from the run file in "
                            f"{', '.join(differ)}; resume with the stored config")
        stored.update({k: v for k, v in overrides.items() if k in free})
        cfg = TrainConfig(**stored)
        out = args.resume
    elif args.config_json:
        try:
            fields = json.loads(args.config_json)
        except json.JSONDecodeError as e:
            raise UserError(f"--config-json is not valid JSON: {e}") from None
        fields.update(overrides)
        cfg = TrainConfig(**fields)
        out = args.out
    else:
        cfg = TrainConfig.from_preset(args.preset or "fc-fmnist", **overrides)
        out = args.out

    stop = {"flag": False}

    def on_signal(signum, frame):  # finish the current step, commit, exit for requeue
        stop["flag"] = True
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, on_signal)

    summary = train(cfg, comm, out=out, metrics_path=args.metrics, progress=args.progress,
                    resume=bool(args.resume), should_stop=lambda: stop["flag"],
                    overwrite=args.overwrite)
    if comm.rank == 0:
        if summary["preempted"]:
            print(f"rbd-hpc: preempted after step {summary['steps_done']} of "
                  f"{summary['total_steps']}; run file committed: {out}", flush=True)
        else:
            acc = summary.get("test_acc", float("nan"))
            print(f"{cfg.method} {cfg.model}-{cfg.dataset}: {summary['steps_done']} steps, "
                  f"test_acc {acc:.4f}, val_acc {summary.get('val_acc', float('nan')):.4f}, "
                  f"{summary.get('ms_per_step', float('nan')):.2f} ms/step, "
                  f"{summary.get('bytes_per_step', 0):.0f} B/step over {comm.size} rank(s)"
                  + (f", run file {out}" if out else ""), flush=True)
    return EXIT_PREEMPTED if summary["preempted"] else 0


def cmd_replay(args) -> int:
    import torch

    from .config import TrainConfig
    from .replay import replay_to, save_weights, verify
    from .runlog import RunFile

    require_positive("--threads", args.threads, allow_none=True)  # the rule train applies to --threads
    with RunFile(args.run) as run:
        threads = args.threads or TrainConfig.from_json(run.config_json).threads
        if threads:
            torch.set_num_threads(threads)
        target = run.committed if args.step is None else args.step
        if args.verify:
            ok, worst, lines = verify(run, target)  # --step N: the snapshots up to step N
            for line in lines:
                print(line)
            n = torch.get_num_threads()
            print(f"verify: {'OK' if ok else 'MISMATCH'} over {target} steps, "
                  f"{len(lines)} snapshots, max |diff| {worst:.3g} ({n} thread{'s' * (n > 1)})")
            if not ok:
                return 1
        if args.out or not args.verify:
            theta = replay_to(run, target)
            if args.out:
                save_weights(run, theta, args.out)
            print(f"replayed {target} steps of {args.run}"
                  + (f"; weights written to {args.out}" if args.out else ""))
    return 0


def cmd_inspect(args) -> int:
    from .inspect_run import describe, describe_epochs

    if args.epochs:
        print(describe_epochs(args.run))
        return 0
    text, info = describe(args.run)
    print(json.dumps(info, indent=1, default=str) if args.json else text)
    return 0


def cmd_bench(args) -> int:
    import torch

    from .bases import BasisConfig
    from .bench import format_table, memory_ratio, replay_ratio, run_bench
    from .compartments import segments
    from .data import SHAPES
    from .models import MODELS
    from .svrg import require_every

    dists = tuple(x for x in args.dist.split(",") if x)
    comps = tuple(x for x in args.compartments.split(",") if x)
    for dist in dists:
        BasisConfig(dist)
    for comp in comps:
        segments([("x", 1)], comp)
    require_choice("--model", args.model, MODELS)
    require_choice("--dataset", args.dataset, tuple(SHAPES))
    require_every(args.svrg_every)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    rows = run_bench(args.model, args.dataset, args.d, dists, comps, steps=args.steps,
                     threads=args.threads, device=args.device, reference=args.reference,
                     chunk=args.chunk, svrg_every=args.svrg_every)
    print(format_table(rows, f"# {args.model}-{args.dataset}, d={args.d}, batch 32, "
                       f"{torch.get_num_threads()} threads, {args.steps} interleaved steps, "
                       f"{args.device}"))
    if args.svrg_every:
        pass_ms = next(r["anchor_pass_ms"] for r in rows if r["anchor_pass_ms"] is not None)
        print(f"(+svrg rows: one anchor pass over the training set took {pass_ms:.0f} ms, "
              f"{pass_ms / args.svrg_every:.3f} ms per step over {args.svrg_every} steps)")
    if args.replay:
        print("\n# replay of N steps ÷ training them (same θ0; bitwise check)")
        for comp in comps:
            for dist in dists:
                r = replay_ratio(args.model, args.dataset, args.d, dist, comp, args.steps, args.device)
                print(f"{r['config']:<28} train {r['train_s']:.3f} s  replay {r['replay_s']:.3f} s  "
                      f"ratio {r['ratio']:.2f}  bitwise {r['bitwise']}")
    if args.memory:
        print("\n# peak resident memory, fresh process each (extra = growth after set-up)")
        for comp in comps:
            for dist in dists:
                r = memory_ratio(args.model, args.dataset, args.d, dist, comp, threads=args.threads)
                print(f"{r['config']:<28} SGD {r['sgd_peak_mb']:.0f} MB (+{r['sgd_extra_mb']:.0f})  "
                      f"RBD {r['rbd_peak_mb']:.0f} MB (+{r['rbd_extra_mb']:.0f})  ratio {r['ratio']:.2f}")
    return 0


def main(argv=None) -> int:
    comm = None
    try:
        args = build_parser().parse_args(argv)
        if args.command == "train":
            from .comm import create_communicator, install_abort_handler

            comm = create_communicator()
            install_abort_handler(comm)
            return cmd_train(args, comm)
        if args.command == "mpi-check":
            from .comm import create_communicator

            comm = create_communicator()
            if args.expect is not None and comm.size != args.expect:
                raise UserError(f"MPI world size {comm.size}, expected {args.expect}")
            print(f"rank {comm.rank} of {comm.size}", flush=True)
            return 0
        if args.command == "replay":
            return cmd_replay(args)
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "plot":
            from .plot import plot

            for path in plot(args.runs, args.out):
                print(path)
            return 0
        return cmd_bench(args)
    except UserError as e:
        rank = f"[rank {comm.rank}] " if comm is not None and comm.size > 1 else ""
        print(f"rbd-hpc: error: {rank}{e}", file=sys.stderr, flush=True)
        if comm is not None and comm.size > 1:
            comm.abort(EXIT_USER_ERROR)  # the other ranks would wait forever in a collective
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
