"""The training loop: one screen per idea, top to bottom.

set up (data, model, θ broadcast once) → resume point → for each step:
  batch shard → loss, gradient → method step (the only per-step traffic) → log row
  → periodic commit / snapshot / divergence check → per-epoch evaluation.
Only rank 0 writes files and shows progress (DESIGN.md invariant 4).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .bases import Basis, smooth_image_layers
from .comm import theta_digest
from .compartments import build_compartments
from .config import TrainConfig
from .data import SHAPES, BatchStream, Dataset, load_dataset, to_tensor
from .errors import UserError
from .methods import (NES, SGD, SPARSE_METHODS, FixedProjectionDescent, RandomBasesDescent,
                      SparseTraining)
from .models import FlatParameters, build_model
from .runlog import METRIC_COLUMNS, RunFile, RunWriter, run_attrs
from .seeds import Stream, derive_seed, torch_generator
from .svrg import Anchor, anchor_step, anchor_theta, share_of

COMMIT_SECONDS = 0.5  # commit buffered rows at least this often: a kill loses < 0.5 s of work


def resolve_device(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
        return torch.device("cuda")
    if name == "ipu":
        raise UserError("--device ipu needs poptorch, which is not installed; use --device cpu")
    return torch.device("cpu")


def build_method(cfg: TrainConfig, named_shapes: list[tuple[str, tuple]], comm, device,
                 world_size: int | None = None, total_steps: int | None = None):
    """The method object for a config over a parameter layout (shared by train and replay)."""
    named_sizes = [(n, int(np.prod(s))) for n, s in named_shapes]
    if cfg.method == "sgd":
        return SGD(comm, momentum=cfg.momentum, weight_decay=cfg.weight_decay), []
    if cfg.method in SPARSE_METHODS:
        if total_steps is None:
            raise ValueError("sparse methods need the run length")
        layers, offset = [], 0
        for name, shape in named_shapes:
            n = int(np.prod(shape))
            if name.endswith("weight") and len(shape) > 1:
                layers.append((name, offset, offset + n, tuple(shape)))
            offset += n
        return SparseTraining(cfg.method, layers, comm, cfg.seed, cfg.sparsity, cfg.sparsity_dist,
                              total_steps, cfg.momentum, cfg.mask_every, cfg.drop_fraction,
                              weight_decay=cfg.weight_decay), []
    compartments = build_compartments(named_sizes, cfg.compartments, cfg.d, cfg.d_per_compartment,
                                      cfg.allocate)
    image = smooth_image_layers(cfg.dist, compartments, named_shapes, SHAPES[cfg.dataset][0],
                                f"{cfg.model}, --compartments {cfg.compartments}")
    if cfg.method == "nes":
        odd = [c for c in compartments if c.d % 2]
        if odd:
            raise UserError(f"NES evaluates antithetic pairs: compartment {odd[0].name!r} got an odd "
                            f"d={odd[0].d}; use an even --d / --d-per-compartment")
        basis = Basis(dataclasses.replace(cfg.basis, antithetic=True), cfg.seed, device,
                      image_layers=image)
        return NES(compartments, basis, comm, mode="shared", chunk_size=cfg.chunk,
                   redraw_every=cfg.redraw_every, world_size=1, sigma=cfg.sigma,
                   weight_decay=cfg.weight_decay), compartments
    basis = Basis(cfg.basis, cfg.seed, device, image_layers=image)
    cls = FixedProjectionDescent if cfg.method == "fpd" else RandomBasesDescent
    method = cls(compartments, basis, comm, mode=cfg.mode, chunk_size=cfg.chunk,
                 redraw_every=cfg.redraw_every, world_size=world_size,
                 keep_in_memory=cfg.keep_in_memory, momentum=cfg.momentum,
                 weight_decay=cfg.weight_decay)
    if cfg.mode == "per-rank":
        too_many = [c for c in compartments if c.d * method.ranks > c.size]
        if too_many:
            c = too_many[0]
            raise UserError(f"per-rank mode: {method.ranks} ranks × d={c.d} directions exceed "
                            f"compartment {c.name!r} ({c.size} parameters)")
    return method, compartments


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    return cfg.lr


def buffers_vector(model: nn.Module) -> np.ndarray:
    bufs = [b.detach().reshape(-1).double().cpu() for _, b in model.named_buffers()]
    return torch.cat(bufs).numpy() if bufs else np.zeros(0)


def load_buffers(model: nn.Module, vec: np.ndarray) -> None:
    offset = 0
    for _, b in model.named_buffers():
        n = b.numel()
        b.copy_(torch.from_numpy(vec[offset:offset + n]).reshape(b.shape).to(b.dtype))
        offset += n


def layouts(flat: FlatParameters, model: nn.Module, compartments) -> tuple[dict, dict]:
    param_layout = {
        "names": flat.names, "shapes": [list(s) for s in flat.shapes], "offsets": flat.offsets,
        "compartments": [dataclasses.asdict(c) for c in compartments],
    }
    buffer_layout = {"names": [n for n, _ in model.named_buffers()],
                     "shapes": [list(b.shape) for _, b in model.named_buffers()]}
    return param_layout, buffer_layout


def evaluate(model: nn.Module, split, comm, device, standardize: bool = False,
             batch: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy) over a split, each rank taking a contiguous share."""
    n = len(split.y)
    lo, hi = n * comm.rank // comm.size, n * (comm.rank + 1) // comm.size
    model.eval()
    sums = np.zeros(3)
    with torch.no_grad():
        for i in range(lo, hi, batch):
            x = to_tensor(split.x[i:min(i + batch, hi)], device, standardize)
            y = torch.from_numpy(split.y[i:min(i + batch, hi)]).to(device)
            out = model(x)
            sums += [nn.functional.cross_entropy(out, y, reduction="sum").item(),
                     (out.argmax(1) == y).sum().item(), len(y)]
    model.train()
    sums = comm.allreduce_sum_np(sums)
    return (sums[0] / sums[2], sums[1] / sums[2]) if sums[2] else (float("nan"), float("nan"))


class Progress:
    """A progress bar on stderr for rank 0: redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()
        self.last_decile = -1

    def update(self, done: int, loss: float) -> None:
        if not self.enabled or self.total == 0:
            return
        frac = done / self.total
        if self.tty:
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r[{bar:<30}] {done}/{self.total} steps  loss {loss:.4f}")
            if done == self.total:
                sys.stderr.write("\n")
        elif int(frac * 10) > self.last_decile:
            self.last_decile = int(frac * 10)
            sys.stderr.write(f"{int(frac * 100):3d}% {done}/{self.total} steps  loss {loss:.4f}\n")
        sys.stderr.flush()


@dataclasses.dataclass
class ResumePoint:
    steps_done: int
    theta: np.ndarray
    buffers: np.ndarray
    state: np.ndarray


def resume_point(run: RunFile, method, has_buffers: bool) -> ResumePoint:
    """The last state known exactly: the committed step (by replay) or the last snapshot."""
    from .replay import replay_to

    snaps = run.snapshot_steps()
    exact_rows = method.replayable and not has_buffers
    target = run.committed if exact_rows else (int(snaps[-1]) if len(snaps) else 0)
    theta = replay_to(run, target, method=method) if exact_rows else None
    buffers = state = np.zeros(0)
    usable = np.nonzero(snaps <= target)[0]
    if len(usable):  # buffers and method state come from the last snapshot at or before target
        _, snap_theta, buffers, state = run.snapshot(int(usable[-1]))
        if theta is None:
            theta = snap_theta
    if exact_rows and method.state_size(theta.size):
        state = method.state_vector(theta.size)  # replay rebuilt it up to the committed step
    if theta is None:
        theta = run.theta0()
    return ResumePoint(target, theta, buffers, state)


def train(cfg: TrainConfig, comm, out: str | None = None, metrics_path: str | None = None,
          progress: bool = True, resume: bool = False,
          should_stop: Callable[[], bool] | None = None, overwrite: bool = False) -> dict:
    """Train per ``cfg``; returns the summary (rank 0's view; identical θ on every rank).

    A new run refuses an existing run file unless ``overwrite``: hours of a run are one
    repeated command away from being lost otherwise."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    is_root = comm.rank == 0
    if cfg.batch_size % comm.size and (cfg.mode == "shared" or cfg.method == "sgd"):
        raise UserError(f"--batch-size {cfg.batch_size} is not divisible by the {comm.size} ranks; "
                        f"use a multiple of {comm.size}")
    out_path = Path(out) if out else None
    if is_root and out_path is not None:
        _check_writable(out_path)
        if not resume and not overwrite:
            _refuse_existing(out_path)
    if is_root and metrics_path:
        _check_writable(Path(metrics_path))

    # -- set-up: data, model, θ broadcast once -------------------------------------
    data: Dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed, cfg.val_size)
    model = build_model(cfg.model, data.shape,
                        torch_generator(derive_seed(cfg.seed, Stream.INIT))).to(device)
    flat = FlatParameters(model)
    flat.theta.copy_(comm.broadcast(flat.theta))  # every rank starts from rank 0's θ0
    steps_per_epoch = (len(data.train.y) // cfg.batch_size)
    total = cfg.steps if cfg.steps else cfg.epochs * steps_per_epoch
    method, compartments = build_method(cfg, list(zip(flat.names, flat.shapes)), comm, device,
                                        total_steps=total)
    if isinstance(method, SparseTraining):
        method.prepare(flat.theta)  # θ0 is stored masked
    # direction-parallel modes see the whole batch on every rank
    per_rank_data = not ((cfg.mode == "per-rank" and method.replayable) or isinstance(method, NES))
    stream = BatchStream(data.train, cfg.seed, cfg.batch_size, comm.rank, comm.size, cfg.augment,
                         cfg.dataset, per_rank_data=per_rank_data)
    if stream.steps_per_epoch == 0:
        raise UserError(f"--batch-size {cfg.batch_size} exceeds the {len(data.train.y)} training "
                        "samples")
    standardize = cfg.dataset == "cifar10"  # the official CIFAR-10 preprocessing
    has_buffers = any(True for _ in model.buffers())
    anchor = None
    if cfg.svrg_every:
        if has_buffers:
            raise UserError(f"--svrg-every needs a model without BatchNorm (fc or cnn), not "
                            f"{cfg.model}: BatchNorm makes a sample's gradient depend on its batch")
        anchor = Anchor(model, device, standardize)
        anchor_share = share_of(len(data.train.y), comm.rank, comm.size, per_rank_data)
    state_size = method.state_size(flat.dim)
    theta0 = flat.theta.detach().cpu().numpy().copy()

    # -- resume point (rank 0 reads, everyone receives it once) --------------------
    start = 0
    resume_anchor = None
    writer = None
    existing = None
    epoch_losses = []  # rank 0's losses of the epoch so far, as logged
    if resume:
        if is_root:
            existing = RunFile(out_path)
            point = resume_point(existing, method, has_buffers)
            theta0 = existing.theta0()
            # a resume inside an epoch: its train_loss still averages the whole epoch
            epoch_start = point.steps_done - point.steps_done % stream.steps_per_epoch
            epoch_losses = [float(v) for v in existing.steps(epoch_start, point.steps_done)["loss"]]
            # θ̃ of a resume inside an SVRG period: replayed from the file up to its anchor step
            theta_anchor = (anchor_theta(existing, anchor_step(point.steps_done, cfg.svrg_every))
                            if cfg.svrg_every and point.steps_done % cfg.svrg_every else None)
            payload = (point.steps_done, point.theta, point.buffers, point.state, theta_anchor)
        else:
            payload = None
        start, theta, buffers, state, resume_anchor = comm.broadcast_object(payload)
        flat.theta.copy_(torch.from_numpy(theta))
        if buffers.size:
            load_buffers(model, buffers)
        if state_size and state.size:
            method.load_state_vector(state[:state_size], device)
    if is_root and out_path is not None:
        param_layout, buffer_layout = layouts(flat, model, compartments)
        attrs = run_attrs(cfg.to_json(), cfg.seed, comm.size, cfg.mode, cfg.method, device.type,
                          param_layout, buffer_layout, method.n_coefficients, method.replayable)
        writer = RunWriter(out_path, attrs, theta0, method.n_coefficients,
                           buffers_vector(model).size, state_size, existing=existing,
                           resume_at=start if resume else None)
        if existing is not None:
            existing.close()
        if writer.committed_snapshots == 0:  # θ0 is snapshot 0 (step count 0)
            writer.commit(snapshot=(0, theta0, buffers_vector(model), np.zeros(state_size)))
    metrics_file = (open_metrics(metrics_path, start if resume else None)
                    if (is_root and metrics_path) else None)

    def anchor_pass(theta_anchor: torch.Tensor, at: int) -> bool:
        """θ̃ and μ̃ at step ``at``; False when the ranks agree to stop instead (a signal that
        arrives during the pass is acted on between two of its batches)."""
        complete = anchor.refresh(theta_anchor, data.train, *anchor_share,
                                  interrupted=should_stop)
        phase, comm.traffic.phase = comm.traffic.phase, "control"
        stop = _agree(comm, not complete, at, every=1)
        comm.traffic.phase = phase
        return not stop

    def snapshot(at: int) -> tuple:
        """What a snapshot after ``at`` steps holds: θ, the buffers, the method state."""
        return (at, flat.theta.detach().cpu().numpy(), buffers_vector(model),
                method.state_vector(flat.dim))

    preempted = False
    if resume_anchor is not None:  # a resume inside an SVRG period
        preempted = not anchor_pass(torch.from_numpy(resume_anchor).to(device), start)

    # -- the loop ------------------------------------------------------------------
    bar = Progress(total - start, progress and is_root)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    comm.traffic.phase = "step"
    step_bytes0 = comm.traffic.bytes.get("step", 0)
    epoch_ms, epoch_cos = [], []
    last_commit = time.monotonic()
    record = {}
    done = start
    for step in range(start, start if preempted else total):
        t0 = time.perf_counter()
        if anchor is not None and step % cfg.svrg_every == 0 and not anchor_pass(
                flat.theta.detach(), step):
            preempted = True  # stopped in the pass: step `step` not taken, θ snapshotted as is
            if writer is not None:
                writer.commit(snapshot=snapshot(step))
            break
        epoch, i = divmod(step, stream.steps_per_epoch)
        xb, yb = stream.batch(epoch, i)
        x, y = to_tensor(xb, device, standardize), torch.from_numpy(yb).to(device)
        flat.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        grad = flat.gradient()
        projected = grad if anchor is None else anchor.correct(grad, x, y)
        lr = learning_rate(cfg, step, total)
        before = flat.theta.clone()
        if isinstance(method, NES):
            saved = buffers_vector(model) if has_buffers else None

            def loss_at() -> float:  # one offspring's fitness on this batch
                with torch.no_grad():
                    return float(loss_fn(model(x), y))
            result = method.step(flat.theta, grad, step, lr, loss_at=loss_at)
            if saved is not None:
                load_buffers(model, saved)  # offspring evaluations must not move BN statistics
        else:
            result = method.step(flat.theta, projected, step, lr)  # the only per-step traffic
        delta = before.sub_(flat.theta)
        cos = float(torch.nn.functional.cosine_similarity(delta, grad, dim=0, eps=1e-30))
        loss = float(loss.detach())
        epoch_ms.append((time.perf_counter() - t0) * 1e3)
        epoch_losses.append(loss)
        epoch_cos.append(cos)
        if not math.isfinite(loss):
            raise UserError(f"loss became {loss} at step {step}; lower --lr (now {cfg.lr})")
        done = step + 1

        comm.traffic.phase = "control"
        if cfg.check_every and done % cfg.check_every == 0:
            check_divergence(flat.theta, comm, done)
        stop_now = should_stop is not None and _agree(comm, should_stop(), done)
        comm.traffic.phase = "step"

        snapshot_due = done % cfg.snapshot_every == 0 or done == total or stop_now
        epoch_end = done % stream.steps_per_epoch == 0 or done == total
        if writer is not None:
            writer.add_step(step, lr, loss, result.coefficients.cpu().numpy()
                            if method.n_coefficients else None)
            if snapshot_due or epoch_end or time.monotonic() - last_commit > COMMIT_SECONDS:
                writer.commit(snapshot=snapshot(done) if snapshot_due else None)
                last_commit = time.monotonic()
        bar.update(done - start, loss)

        if epoch_end:
            comm.traffic.phase = "eval"
            if cfg.mode == "shared" and has_buffers and comm.size > 1:
                _average_buffers(model, comm)  # BN statistics saw different shards
            val_loss, val_acc = evaluate(model, data.val, comm, device, standardize) if len(data.val.y) else (
                float("nan"), float("nan"))
            test_loss, test_acc = evaluate(model, data.test, comm, device, standardize)
            comm.traffic.phase = "step"
            steps_here = done - start
            record = {
                "epoch": round(done / stream.steps_per_epoch, 4),
                "step": done, "train_loss": statistics.fmean(epoch_losses),
                "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss,
                "test_acc": test_acc, "ms_per_step": statistics.median(epoch_ms),
                "cos_grad": statistics.fmean(epoch_cos),
                "bytes_per_step": (comm.traffic.bytes.get("step", 0) - step_bytes0) / max(steps_here, 1),
            }
            epoch_losses, epoch_ms, epoch_cos = [], [], []
            if writer is not None:
                writer.commit(metrics=[float(record[c]) for c in METRIC_COLUMNS])
            if metrics_file:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
        if stop_now:
            preempted = done < total
            break

    if writer is not None:
        writer.commit()
        writer.close()
    if metrics_file:
        metrics_file.close()
    return {**record, "steps_done": done, "total_steps": total,
            "preempted": preempted, "theta": flat.theta, "method": cfg.method,
            "traffic": dict(comm.traffic.bytes)}


def open_metrics(path: str, resume_at: int | None):
    """The JSON-lines metrics file, for appending. A resume keeps the epochs completed by step
    ``resume_at`` and drops later ones (the resumed run writes them again) and a line torn by a
    kill; a new run starts it empty."""
    if resume_at is None:
        return open(path, "w")
    kept = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= resume_at:
                        kept.append(line.rstrip("\n") + "\n")
                except (ValueError, KeyError, TypeError):
                    pass  # torn by a kill
    except FileNotFoundError:
        pass
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
    return open(path, "a")


def _agree(comm, flag: bool, done: int, every: int = 20) -> bool:
    """All ranks stop at the same step: the stop flag is OR-reduced every ``every`` steps."""
    if comm.size == 1:
        return bool(flag)
    if done % every:
        return False
    return bool(comm.allreduce_sum_np(np.array([1.0 if flag else 0.0]))[0] > 0)


def _average_buffers(model: nn.Module, comm) -> None:
    vec = buffers_vector(model)
    load_buffers(model, comm.allreduce_sum_np(vec) / comm.size)


def check_divergence(theta: torch.Tensor, comm, done: int) -> None:
    """Stop with a clear error if ranks' θ differ (16 bytes per rank, every N steps)."""
    digest = np.frombuffer(theta_digest(theta), dtype=np.uint8).astype(np.float32)
    table = comm.allgather(torch.from_numpy(digest))
    differ = [r for r in range(comm.size) if not torch.equal(table[r], table[0])]
    if differ:
        raise UserError(f"ranks diverged after step {done}: θ on rank(s) {differ} differs from "
                        "rank 0 (check that all ranks run the same rbd-hpc, torch and thread count)")


def _refuse_existing(path: Path) -> None:
    if not path.exists():
        return
    try:
        with RunFile(path) as run:
            held = f" ({run.committed} steps committed)"
    except (UserError, OSError):
        held = ""
    raise UserError(f"run file {path} already exists{held}; continue it with --resume {path}, "
                    "or replace it with --overwrite")


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output directory {parent} is not writable")
