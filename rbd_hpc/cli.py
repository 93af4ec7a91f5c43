"""``rbd-hpc``: train, replay, inspect, bench. A thin main(); user errors are one line, exit 2."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

from .bases import BasisConfig
from .bench import (format_table, fpd_ratio, kernel_table, memory_ratio, replay_ratio, run_bench,
                    unfused_cost)
from .comm import (create_communicator, install_abort_handler, launched_by_mpi, on_every_rank,
                   on_root)
from .compartments import segments
from . import __version__
from .config import (FIELDS, PRESETS, TrainConfig, check_option, field_kind, flag, parse_config_text,
                     preset_fields, read_config_file)
from .data import SHAPES
from .errors import AgreedError, UserError, require_choice
from .inspect_run import describe, describe_epochs
from .models import MODELS
from .plot import plot
from .preemption import EXIT_PREEMPTED, StopRequest
from .replay import method_for, verify
from .resume import resumed_config
from . import runlog
from .runlog import RunFile, platform_description, recorded_platforms
from .train import dry_run, train
from .api import evaluate as evaluate_run
from .checkpoint import check_checkpoint_path, save_checkpoint, weights_at
from .fetch import fetch
from .progress import StepProgress

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage too)
        raise UserError(message)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None


def count(text: str) -> int:
    """argparse type for a count that must be ≥ 1 (ranks, repeats, steps, tasks) in the job
    scripts, whose parsers otherwise take 0 or −1 and hang or fail later with a traceback."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a whole number ≥ 1")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rbd-hpc", description="Random Bases Descent on HPC clusters")
    p.add_argument("--version", action="version", version=f"rbd-hpc {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True

    _train_parser(sub)

    m = sub.add_parser("mpi-check", help="print this rank and the world size; fail if the world "
                       "is smaller than the Slurm step promises")
    m.add_argument("--expect", type=_int, help="also fail unless the world has exactly N ranks")

    r = sub.add_parser("replay", help="regenerate a run's weights from its seed log, without data")
    r.add_argument("run")
    r.add_argument("--step", type=_int, help="stop after N steps (default: all committed); with "
                                             "--verify, check the snapshots up to step N")
    r.add_argument("--out", help="write a checkpoint (.pt or .npz): parameters, buffers, the "
                   "config and the step; rbd_hpc.load(FILE) gives the model")
    r.add_argument("--verify", action="store_true", help="compare with every stored snapshot")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    r.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress (a bar on a terminal, a line every 10%% otherwise)")
    r.add_argument("--threads", type=_int, help="torch threads (default: the run's --threads, "
                   "so that BLAS sums in the same order as in training)")

    e = sub.add_parser("eval", help="validation and test accuracy of a run's weights (the "
                       "last step's, or a replayed step's)")
    e.add_argument("run", help="the run file (HDF5)")
    e.add_argument("--step", type=_int, help="score the weights after N steps (default: all "
                   "committed); methods without coefficients: a snapshot step")
    e.add_argument("--data-dir", help="where the run's data set is (default: the run's)")
    e.add_argument("--threads", type=_int, help="torch threads")
    e.add_argument("--json", action="store_true", help="print the scores as JSON")

    dl = sub.add_parser("data", help="download MNIST, Fashion-MNIST or CIFAR-10 in their "
                        "standard formats, each file checked against its published MD5")
    dl.add_argument("name", help="mnist, fmnist or cifar10")
    dl.add_argument("--dir", required=True, help="where to put the files (then --data-dir DIR)")
    dl.add_argument("--url", help="a mirror's base URL holding the same file names")
    dl.add_argument("--checksums", help="a JSON file {file name: MD5} replacing the built-in "
                    "table (a mirror of other files)")

    i = sub.add_parser("inspect", help="summarise a run file")
    i.add_argument("run")
    i.add_argument("--json", action="store_true")
    i.add_argument("--epochs", action="store_true", help="the per-epoch metrics as a table, with "
                   "the best validation epoch and the mean test accuracy of the last ten")
    i.add_argument("--hide-test", action="store_true", help="no test score (for a run whose "
                   "setting validation has not chosen); --epochs then ends with the mean "
                   "validation accuracy of the last ten")

    pl = sub.add_parser("plot", help="PNG plots from run files or metrics files")
    pl.add_argument("runs", nargs="+", help="RUN.h5 or METRICS.jsonl files")
    pl.add_argument("--out", default="plots", help="directory for the PNGs")
    pl.add_argument("--label", action="append", help="legend label of each input, in order "
                    "(repeat once per input)")

    _bench_parser(sub)
    return p


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train a network (under mpiexec/srun: one rank per process)")
    t.add_argument("--preset", choices=None, metavar="PRESET",
                   help=FIELDS["preset"].metadata["help"] + ": " + ", ".join(PRESETS) + " (default fc-fmnist)")
    add_config_options(t)
    t.add_argument("--out", help="the run file (HDF5) to write (an existing one is refused)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out run file")
    t.add_argument("--metrics", help="per-epoch metrics as JSON lines")
    t.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard scalars to DIR: "
                   "loss, learning rate and ms per step every step, scores every epoch "
                   "(needs the tensorboard extra)")
    t.add_argument("--resume", metavar="RUN.h5", help="continue the run in RUN.h5 from its last commit")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    t.add_argument("--hide-test", action="store_true", help="print no test score (epoch lines, "
                   "the last line, TensorBoard) while settings are chosen on validation; the "
                   "run file and --metrics keep them for the setting validation chooses")
    t.add_argument("--config", metavar="FILE", help="config fields from a TOML, YAML or JSON file "
                   "(a preset, then the file, then the other options, each overriding the last)")
    t.add_argument("--config-json", help="config fields as a JSON string (as stored in a run "
                   "file); the same as --config")
    t.add_argument("--print-config", action="store_true",
                   help="print the merged config as JSON (usable as --config FILE) and exit")
    t.add_argument("--dry-run", action="store_true", help="check the config, the outputs, the "
                   "data, the model and the world size; train nothing")


def _bench_parser(sub) -> None:
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
    b.add_argument("--fpd", action="store_true",
                   help="also time the official FPD's step (carried coordinates) against Li's")
    b.add_argument("--memory", action="store_true",
                   help="also compare peak memory of RBD and SGD training (fresh processes)")
    b.add_argument("--ceilings", action="store_true",
                   help="also time each RBD row's direction work alone (no forward/backward) "
                        "and its floor: srht's signs, rows and two transforms; dense sampling")
    b.add_argument("--unfused", action="store_true",
                   help="also time kernel generation 3's unfused scaled adds (rate × step "
                        "rounded before the add) against ATen's fused add, per step")
    b.add_argument("--kernels", action="store_true",
                   help="also time the transform and the samplers alone, in ns per element, "
                        "next to a copy in and out of cache")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig option, with its help, choices and default from the field."""
    parse = {"int": _int, "float": _float, "str": str}
    for f in FIELDS.values():
        meta = f.metadata
        if not meta["cli"]:
            continue
        base, _ = field_kind(f)
        text = meta["help"] + (": " + ", ".join(map(str, meta["choices"])) if meta["choices"] else "")
        if base == "bool":  # --augment / --no-augment: a later flag can undo an earlier one
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction,
                                default=None, help=text + ("" if f.default is None else
                                                           f" (default {'on' if f.default else 'off'})"))
            continue
        if f.default is not None and not meta["factory"]:  # model, data set: the preset's
            text += f" (default {f.default})"
        names = (flag(f.name), "--data") if f.name == "dataset" else (flag(f.name),)
        parser.add_argument(*names, type=parse[base], default=None, dest=f.name,
                            metavar={"int": "N", "float": "X"}.get(base, f.name.upper()), help=text)


def config_overrides(args) -> dict:
    """The config options given on the command line."""
    return {f.name: getattr(args, f.name) for f in FIELDS.values()
            if f.metadata["cli"] and getattr(args, f.name) is not None}


def config_fields(args) -> tuple[dict, str]:
    """The fields of --config FILE (TOML, YAML or JSON) or --config-json TEXT, and their source."""
    if args.config is not None and args.config_json is not None:
        raise UserError("--config and --config-json both give config fields; give one of them")
    if args.config_json is not None:
        return parse_config_text(args.config_json, "JSON", "--config-json"), "--config-json"
    if args.config is not None:
        return read_config_file(args.config)
    return {}, "options"


def train_config(args, comm) -> tuple[TrainConfig, str | None]:
    """The config of ``rbd-hpc train`` and its run file: a resume's stored config, or a
    preset, then --config / --config-json, then the command line's options on top."""
    overrides = config_overrides(args)
    for name, value in overrides.items():  # each value on its own first, then how they combine
        check_option(name, value)
    if "epochs" in overrides and "steps" in overrides:
        raise UserError(f"--epochs {args.epochs} and --steps {args.steps} both set the run length; "
                        "give one of them")
    if args.resume:
        if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise UserError("--resume writes to the run file it resumes; drop --out")
        # one reader; every rank gets the config or the same error
        text = on_root(comm, lambda: resumed_config(args.resume, overrides, args.preset).to_json())
        return TrainConfig.from_json(text), args.resume
    fields, source = config_fields(args)
    preset = args.preset if args.preset is not None else fields.get("preset", "fc-fmnist")
    require_choice("--preset", preset, tuple(PRESETS))
    merged = {**preset_fields(preset), **fields}
    if args.preset is not None:  # the flag outranks the file
        merged.update(preset_fields(args.preset))
    if "epochs" in overrides:  # --epochs replaces the file's run length, whichever it was
        merged["steps"] = None
    return TrainConfig.from_dict({**merged, **overrides}, source), args.out


def cmd_train(args, comm) -> int:
    cfg, out = on_every_rank(comm, lambda: train_config(args, comm))  # one line for a bad option
    if args.print_config:
        if comm.rank == 0:
            print(json.dumps(dataclasses.asdict(cfg), indent=1, sort_keys=True), flush=True)
        return 0
    if args.dry_run:
        report = dry_run(cfg, comm, out=out, metrics_path=args.metrics, resume=bool(args.resume),
                         overwrite=args.overwrite)
        if comm.rank == 0:
            print(report, flush=True)
        return 0
    with StopRequest() as stop:  # the preemption protocol: preemption.py
        summary = train(cfg, comm, out=out, metrics_path=args.metrics, progress=args.progress,
                        tensorboard=args.tensorboard, hide_test=args.hide_test,
                        resume=bool(args.resume), should_stop=stop, overwrite=args.overwrite)
    if comm.rank == 0:
        if summary["preempted"]:
            print(f"rbd-hpc: preempted after step {summary['steps_done']} of "
                  f"{summary['total_steps']}; run file committed: {out}", flush=True)
        else:
            acc = summary.get("test_acc", float("nan"))
            print(f"{cfg.method} {cfg.model}-{cfg.dataset}: {summary['steps_done']} steps, "
                  + ("" if args.hide_test else f"test_acc {acc:.4f}, ")
                  + f"val_acc {summary.get('val_acc', float('nan')):.4f}, "
                  f"{summary.get('ms_per_step', float('nan')):.2f} ms/step, "
                  f"{summary.get('bytes_per_step', 0):.0f} B/step over {comm.size} rank(s)"
                  + (f", run file {out}" if out else ""), flush=True)
    return EXIT_PREEMPTED if summary["preempted"] else 0


def cmd_replay(args) -> int:
    check_option("threads", args.threads)  # the rule train applies to --threads
    with RunFile(args.run) as run:
        if not run.replayable and (args.verify or args.out is None):
            method_for(run)  # says why a run without coefficients cannot be replayed
        if args.out is not None:  # before minutes of replay, not after
            check_checkpoint_path(args.out, args.overwrite)
        threads = args.threads or run.config().threads
        if threads:
            torch.set_num_threads(threads)
        target = run.committed if args.step is None else args.step
        if args.verify:
            bar = StepProgress(target, f"verify {args.run}", args.progress)
            ok, worst, lines = verify(run, target, on_step=lambda done, _: bar.update(done))
            bar.close()
            for line in lines:
                print(line)
            n = torch.get_num_threads()
            generation = run.config().kernels
            if not ok and generation < 3:
                trained = "; ".join(p for _, p in recorded_platforms(run))
                print(f"note: kernel generation {generation} replays bitwise only on the CPU kind "
                      f"that trained the run ({trained or 'not recorded'}); this node is "
                      f"{platform_description()}")
            print(f"verify: {'OK' if ok else 'MISMATCH'} over {target} steps, "
                  f"{len(lines)} snapshots, max |diff| {worst:.3g} ({n} thread{'s' * (n > 1)})")
            if not ok:
                return 1
        if args.out is not None or not args.verify:
            bar = StepProgress(target, f"replay {args.run}", args.progress)
            weights = weights_at(run, target, on_step=lambda done, _: bar.update(done))
            bar.close()
            if args.out is not None:
                save_checkpoint(weights, args.out, args.overwrite)
            print(f"replayed {target} steps of {args.run}"
                  + (f"; checkpoint written to {args.out}" if args.out is not None else "")
                  + (f" (buffers from the snapshot of step {weights.buffers_step})"
                     if args.out is not None and weights.buffers_step is not None else ""))
    return 0


def cmd_eval(args) -> int:
    check_option("threads", args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    scores = evaluate_run(args.run, args.step, args.data_dir)
    if args.json:
        print(json.dumps(scores))
        return 0
    parts = [f"step {scores['step']}"]
    for split in ("val", "test"):
        if f"{split}_acc" in scores:
            parts.append(f"{split}_acc {scores[f'{split}_acc']:.4f} {split}_loss "
                         f"{scores[f'{split}_loss']:.4f}")
    if "logged_test_acc" in scores:
        parts.append(f"logged test_acc {scores['logged_test_acc']:.4f}")
    if scores["buffers_step"] is not None and scores["buffers_step"] != scores["step"]:
        parts.append(f"buffers from step {scores['buffers_step']}")
    print(", ".join(parts))
    return 0


def cmd_inspect(args) -> int:
    if args.epochs:
        print(describe_epochs(args.run, args.hide_test))
        return 0
    text, info = describe(args.run, args.hide_test)
    print(json.dumps(info, indent=1, default=str) if args.json else text)
    return 0


def cmd_bench(args) -> int:
    dists = tuple(x for x in args.dist.split(",") if x)
    comps = tuple(x for x in args.compartments.split(",") if x)
    for dist in dists:
        BasisConfig(dist)
    for comp in comps:
        segments([("x", 1)], comp)
    require_choice("--model", args.model, MODELS)
    require_choice("--dataset", args.dataset, tuple(SHAPES))
    for name in ("d", "steps", "threads", "chunk", "svrg_every"):  # as train checks them
        check_option(name, getattr(args, name))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    rows = run_bench(args.model, args.dataset, args.d, dists, comps, steps=args.steps,
                     threads=args.threads, device=args.device, reference=args.reference,
                     chunk=args.chunk, svrg_every=args.svrg_every, ceilings=args.ceilings)
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
    if args.fpd:
        print("\n# the official FPD's step ÷ Li's (its forward shift added; directions held); "
              "Li's step regenerating its directions ÷ holding them")
        for dist in dists:
            r = fpd_ratio(args.model, args.dataset, args.d, dist, args.steps, args.device)
            print(f"{r['config']:<28} li {r['li_ms']:.2f} ms  official {r['official_ms']:.2f} ms  "
                  f"ratio {r['ratio']:.2f}  regenerated {r['regenerated_ms']:.2f} ms  "
                  f"ratio {r['regenerated_ratio']:.2f}")
    if args.unfused:
        print("\n# the scaled adds of one step: unfused (generation 3: a × x rounded into a "
              "temporary, then added) against ATen's fused add_(x, alpha=a); extra ÷ the whole "
              "step (forward, backward, step)")
        for i, (comp, dist) in enumerate((c, d) for c in comps for d in dists):
            for r in unfused_cost(args.model, args.dataset, args.d, dist, comp, args.chunk,
                                  args.steps, args.device, with_sgd=i == 0):
                print(f"{r['config']:<28} {r['adds']:>3} adds over {r['elements']:>9,} "
                      f"elements  fused {r['fused_ms']:.3f} ms  unfused {r['unfused_ms']:.3f} ms"
                      f"  step {r['step_ms']:.2f} ms  extra ÷ step {r['extra_share']:+.2%}")
    if args.kernels:
        print(f"\n# kernels alone, ns per element (medians of interleaved repeats, "
              f"{torch.get_num_threads()} threads)")
        for name, ns in kernel_table():
            print(f"{name:<40} {ns:>8.2f}")
    if args.memory:
        print("\n# peak resident memory, fresh process each (extra = growth after set-up)")
        for comp in comps:
            for dist in dists:
                r = memory_ratio(args.model, args.dataset, args.d, dist, comp, threads=args.threads)
                print(f"{r['config']:<28} SGD {r['sgd_peak_mb']:.0f} MB (+{r['sgd_extra_mb']:.0f})  "
                      f"RBD {r['rbd_peak_mb']:.0f} MB (+{r['rbd_extra_mb']:.0f})  ratio {r['ratio']:.2f}")
    return 0


def main(argv=None) -> int:
    code = _main(argv)
    if runlog.WRITE_FAILED:  # HDF5 would crash flushing the failed write at exit: skip that
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv=None) -> int:
    comm = None
    try:
        if launched_by_mpi():  # every rank parses the same line: a bad one is reported once
            comm = create_communicator()
            args = on_every_rank(comm, lambda: build_parser().parse_args(argv))
        else:
            args = build_parser().parse_args(argv)
        if args.command == "train":
            comm = comm or create_communicator()
            install_abort_handler(comm)
            return cmd_train(args, comm)
        if args.command == "mpi-check":
            comm = comm or create_communicator()
            if args.expect is not None and comm.size != args.expect:
                raise UserError(f"MPI world size {comm.size}, expected {args.expect}")
            print(f"rank {comm.rank} of {comm.size}", flush=True)
            return 0
        if args.command == "replay":
            return cmd_replay(args)
        if args.command == "data":
            for line in fetch(args.name, args.dir, args.url, args.checksums):
                print(line)
            return 0
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "plot":
            for path in plot(args.runs, args.out, args.label):
                print(path)
            return 0
        return cmd_bench(args)
    except AgreedError as e:  # every rank has it: one line from rank 0, a clean exit everywhere
        if comm is None or comm.rank == 0:
            print(f"rbd-hpc: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
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
