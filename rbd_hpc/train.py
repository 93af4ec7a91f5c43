"""The training loop, one named unit per idea:

  set_up      data, model, θ0 broadcast once, the method, the batch stream, the SVRG anchor
  restore     a resume's state, read by rank 0 and broadcast once (resume.py says which)
  take_step   batch shard → loss, gradient → method step (the only per-step traffic)
  Recorder    run file rows, snapshots, metrics, commit policy, progress (recorder.py)
  evaluate    per-epoch validation and test scores, each rank scoring its share
  train       the loop that ties them together

Only rank 0 writes files (docs/design.md, invariant 4). A stop (preemption) is asked of
``should_stop`` once per step and before each batch of an anchor pass; the ranks agree on
it (comm.agree_to_stop) so that all stop after the same step (docs/design.md, "Preemption").
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .comm import agree_to_stop, average, check_divergence, on_every_rank, on_root
from .config import TrainConfig
from .data import BatchStream, Dataset, Inputs, Split, load_dataset
from .errors import UserError
from .methods import Method
from .methods.build import build_method
from .models import FlatParameters, buffers_vector, build_model, load_buffers
from .partition import share
from .recorder import Recorder, StepStats
from .resume import ResumePoint, check_resume, resume_point
from .runlog import RunFile, RunLock, check_writable, refuse_aliases, refuse_existing
from .seeds import Stream, derive_seed, torch_generator
from .svrg import Anchor, anchor_share
from .usercode import is_spec


def resolve_device(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
        return torch.device("cuda")
    if name == "ipu":
        raise UserError("--device ipu needs poptorch, which is not installed; use --device cpu")
    return torch.device("cpu")


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "cosine":
        floor = cfg.lr_min
        return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * step / total))
    return cfg.lr


@dataclasses.dataclass
class Session:
    """Everything a run needs, set up identically on every rank."""

    cfg: TrainConfig
    comm: object
    device: torch.device
    data: Dataset
    model: nn.Module
    flat: FlatParameters
    method: Method
    compartments: list
    stream: BatchStream
    total: int                    # steps of the whole run
    theta0: np.ndarray            # θ after set-up (rank 0's, masked for sparse methods)
    has_buffers: bool             # BatchNorm statistics: resume from snapshots only
    anchor: Anchor | None         # SVRG anchor θ̃, μ̃ (--svrg-every)
    anchor_share: tuple = ()      # (sample range, scale) of this rank's anchor pass
    loss_fn: nn.Module = dataclasses.field(default_factory=nn.CrossEntropyLoss)

    @property
    def state_size(self) -> int:
        return self.method.state_size(self.flat.dim)


def set_up(cfg: TrainConfig, comm) -> Session:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    # each rank reads its own copy: a rank that cannot is named by rank 0, and all exit 2
    data = on_every_rank(comm, lambda: load_dataset(cfg.dataset, cfg.data_dir, cfg.seed,
                                                    cfg.val_size))
    model = build_model(cfg.model, data.shape,
                        torch_generator(derive_seed(cfg.seed, Stream.INIT))).to(device)
    if is_spec(cfg.model) or is_spec(cfg.dataset):
        check_fit(model, data, device, cfg)
    flat = FlatParameters(model)
    flat.theta.copy_(comm.broadcast(flat.theta))  # every rank starts from rank 0's θ0
    steps_per_epoch = len(data.train.y) // cfg.batch_size
    # the paper's NES takes n batches a step: its --epochs count images over all offspring
    per_step = cfg.d if cfg.method == "nes" and cfg.nes == "paper" else 1
    total = cfg.steps if cfg.steps else -(-cfg.epochs * steps_per_epoch // per_step)
    method, compartments = build_method(cfg, list(zip(flat.names, flat.shapes)), comm, device,
                                        total_steps=total)
    method.prepare(flat.theta)  # RigL: θ0 is stored masked
    # direction-parallel methods see the whole batch on every rank; the others split it
    per_rank_data = not method.direction_parallel
    if per_rank_data and cfg.batch_size % comm.size:
        raise UserError(f"--batch-size {cfg.batch_size} is not divisible by the {comm.size} ranks; "
                        f"use a multiple of {comm.size}")
    stream = BatchStream(data.train, cfg.seed, cfg.batch_size, comm.rank, comm.size, cfg.augment,
                         cfg.dataset, per_rank_data=per_rank_data)
    stream.consume(method.batches_per_step)
    if not cfg.steps and stream.steps_for(cfg.epochs) != total:
        raise ValueError(f"run length {total} steps, the stream's {stream.steps_for(cfg.epochs)}")
    if stream.steps_per_epoch == 0:
        raise UserError(f"--batch-size {cfg.batch_size} exceeds the {len(data.train.y)} training "
                        "samples")
    has_buffers = any(True for _ in model.buffers())
    anchor, share_ = None, ()
    if cfg.svrg_every:
        if has_buffers:
            raise UserError(f"--svrg-every needs a model without BatchNorm (fc or cnn), not "
                            f"{cfg.model}: BatchNorm makes a sample's gradient depend on its batch")
        anchor = Anchor(model, device, data.inputs)
        share_ = anchor_share(len(data.train.y), comm.rank, comm.size, per_rank_data)
    return Session(cfg, comm, device, data, model, flat, method, compartments, stream, total,
                   flat.theta.detach().cpu().numpy().copy(), has_buffers, anchor,
                   share_)


def check_fit(model: nn.Module, data: Dataset, device, cfg: TrainConfig) -> None:
    """A model or data set of the user's own: one forward pass on two samples gives
    (2, classes) scores and every label is a class (one clear line otherwise)."""
    pair = f"--model {cfg.model} on --dataset {cfg.dataset}"
    x = data.inputs.tensor(data.train.x[:2], device)
    model.eval()  # scores only: BatchNorm statistics stay as initialised
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise UserError(f"{pair}: the forward pass on input {tuple(x.shape)} failed: "
                        f"{type(e).__name__}: {e}") from None
    finally:
        model.train()
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(x):
        raise UserError(f"{pair}: the model must return class scores of shape (batch, classes); "
                        f"got {getattr(out, 'shape', type(out).__name__)} for input "
                        f"{tuple(x.shape)}")
    top = max(int(split.y.max()) for split in (data.train, data.val, data.test) if len(split.y))
    if top >= out.shape[1]:
        raise UserError(f"{pair}: label {top} but the model scores {out.shape[1]} classes")


def restore(s: Session, path: str) -> ResumePoint:
    """Rank 0 reads the resume point from the run file; every rank receives it once."""
    def read() -> ResumePoint:
        with RunFile(path) as run:
            if run.committed > s.total:  # was taken, printing "resuming at step 4/2"
                raise UserError(f"--resume {path}: the run has {run.committed} steps committed, "
                                f"more than the {s.total} this config runs; a run is not "
                                "shortened (rbd-hpc replay --step N gives θ after N steps)")
            return resume_point(run, s.method, s.has_buffers, s.stream.period,
                                s.cfg.svrg_every)
    point = on_root(s.comm, read)
    s.flat.theta.copy_(torch.from_numpy(point.theta))
    if point.buffers.size:
        load_buffers(s.model, point.buffers)
    if s.state_size and point.state.size:
        s.method.load_state_vector(point.state[:s.state_size], s.device)
    return point


def loss_probe(s: Session, step: int, x: torch.Tensor, y: torch.Tensor) -> Callable[[int], float]:
    """``loss_at(i)``: the loss at θ as it stands on offspring i's mini-batch, for methods that
    score perturbed θ (NES): the step's batch (x, y), or with several batches per step the
    step's i-th. BatchNorm statistics are put back after each call: scoring must not move them."""
    saved = []  # the buffers as they were before the first call

    def loss_at(i: int) -> float:
        xi, yi = (x, y) if s.stream.batches_per_step == 1 else step_batch(s, step, i)
        if s.has_buffers and not saved:
            saved.append(buffers_vector(s.model))
        with torch.no_grad():
            value = float(s.loss_fn(s.model(xi), yi))
        if saved:
            load_buffers(s.model, saved[0])
        return value
    return loss_at


def step_batch(s: Session, step: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch number ``offset`` of step ``step`` as tensors on the device."""
    xb, yb = s.stream.batch(*s.stream.position(step, offset))
    return s.data.inputs.tensor(xb, s.device), torch.from_numpy(yb).to(s.device)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) from one dot product and two norms (a quarter of the cost of torch's
    cosine_similarity on a 100,000-vector), clipped to [-1, 1] against float32 rounding;
    0 where either vector is 0, NaN where either holds a NaN (as torch's)."""
    norms = float(torch.linalg.vector_norm(a)) * float(torch.linalg.vector_norm(b))
    if norms == 0:
        return 0.0
    value = float(torch.dot(a, b)) / norms
    return value if math.isnan(value) else max(-1.0, min(1.0, value))


def take_step(s: Session, step: int) -> StepStats:
    """One training step from batch ``step`` (its first, when a step takes several), timed
    from here (an SVRG anchor pass before it is timed apart: ``Recorder.anchor_pass``)."""
    t0 = time.perf_counter()
    x, y = step_batch(s, step)
    shift = s.method.forward_shift(s.flat.theta)
    saved = None
    if shift is not None:  # the gradient at θ + shift; θ is put back bitwise
        saved = s.flat.theta.clone()
        s.flat.theta.add_(shift)
    s.flat.zero_grad()
    loss = s.loss_fn(s.model(x), y)
    loss.backward()
    grad = s.flat.gradient()
    if saved is not None:
        s.flat.theta.copy_(saved)
    projected = grad if s.anchor is None else s.anchor.correct(grad, x, y)
    lr = learning_rate(s.cfg, step, s.total)
    before = s.flat.theta.clone()
    t1, mpi0 = time.perf_counter(), s.comm.traffic.seconds.get("step", 0.0)
    result = s.method.step(s.flat.theta, projected, step, lr, loss_at=loss_probe(s, step, x, y))
    t2, mpi = time.perf_counter(), s.comm.traffic.seconds.get("step", 0.0) - mpi0
    delta = before.sub_(s.flat.theta)
    cos = cosine(delta, grad)
    # batch, forward, backward (and the SVRG anchor's); the method less its MPI time; MPI.
    # ("bookkeeping", added by the loop: the row, commits, the stop agreement, the progress bar)
    phases = {"forward_backward": (t1 - t0) * 1e3, "method": (t2 - t1 - mpi) * 1e3,
              "exchange": mpi * 1e3}
    return StepStats(lr, float(loss.detach()), cos, (time.perf_counter() - t0) * 1e3, result,
                     phases)


def anchor_pass(s: Session, theta_anchor: torch.Tensor, at: int,
                should_stop: Callable[[], bool] | None) -> bool:
    """θ̃ and μ̃ at step ``at``; False when the ranks agree to stop instead (a signal that
    arrives during the pass is acted on between two of its batches)."""
    complete = s.anchor.refresh(theta_anchor, s.data.train, *s.anchor_share,
                                interrupted=should_stop)
    with s.comm.traffic.during("control"):
        return not agree_to_stop(s.comm, not complete, at, every=1)


def evaluate(model: nn.Module, split: Split, comm, device, inputs: Inputs = Inputs(),
             batch: int = 1000) -> tuple[float, float]:
    """(mean loss, accuracy) over a split, each rank scoring its share."""
    mine = share(len(split.y), comm.rank, comm.size)
    model.eval()
    sums = np.zeros(3)
    with torch.no_grad():
        for i in range(mine.start, mine.stop, batch):
            j = slice(i, min(i + batch, mine.stop))
            x = inputs.tensor(split.x[j], device)
            y = torch.from_numpy(split.y[j]).to(device)
            out = model(x)
            sums += [nn.functional.cross_entropy(out, y, reduction="sum").item(),
                     (out.argmax(1) == y).sum().item(), len(y)]
    model.train()
    sums = comm.allreduce_sum_np(sums)
    return (sums[0] / sums[2], sums[1] / sums[2]) if sums[2] else (float("nan"), float("nan"))


def evaluate_epoch(s: Session) -> dict:
    """Validation and test scores at an epoch's end (after averaging BatchNorm statistics)."""
    with s.comm.traffic.during("eval"):
        def score(split: Split) -> tuple[float, float]:
            return evaluate(s.model, split, s.comm, s.device, s.data.inputs,
                            s.cfg.eval_batch_size)
        val_loss, val_acc = score(s.data.val) if len(s.data.val.y) else (math.nan, math.nan)
        test_loss, test_acc = score(s.data.test)
    return {"val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc}


def sync_buffers(s: Session) -> None:
    """Shared mode over several ranks: BatchNorm statistics came from different shards; every
    rank takes their mean. Done at each snapshot and epoch end, so a snapshot holds the buffers
    every rank has (a resume restores all ranks exactly) and scores use the common ones."""
    if s.cfg.mode == "shared" and s.has_buffers and s.comm.size > 1:
        with s.comm.traffic.during("eval"):
            load_buffers(s.model, average(s.comm, buffers_vector(s.model)))


def check_outputs(cfg: TrainConfig, world_size: int, out: str | None, metrics_path: str | None,
                  resume: bool, overwrite: bool, lock: contextlib.ExitStack | None = None) -> None:
    """Rank 0, before any work: outputs can be written and do not alias, a new run replaces no
    run file, a resume would continue its run bitwise. With ``lock``, the run file's lock is
    taken into it as soon as the path is known to be usable, before the file is looked at."""
    for flag_, path in (("--out", out), ("--metrics", metrics_path)):
        if path is not None and not str(path).strip():
            raise UserError(f"{flag_} '' is empty; give a file name")
    if out is not None:
        check_writable(Path(out), "--out")
        if lock is not None:  # one writer per run file, from here to the end of the run
            lock.enter_context(RunLock(Path(out)))
        if not resume and not overwrite:
            refuse_existing(Path(out))
    refuse_aliases(Path(out) if out is not None else None,
                   Path(metrics_path) if metrics_path is not None else None)
    if resume:
        if out is None:
            raise UserError("a resume needs the run file it continues")
        with RunFile(out) as run:
            check_resume(run, cfg, world_size)


def train(cfg: TrainConfig, comm, out: str | None = None, metrics_path: str | None = None,
          progress: bool = True, resume: bool = False,
          should_stop: Callable[[], bool] | None = None, overwrite: bool = False,
          tensorboard: str | None = None, hide_test: bool = False) -> dict:
    """Train per ``cfg``; returns the summary (identical θ on every rank). A new run refuses
    an existing run file unless ``overwrite``; ``resume`` continues the one at ``out``.
    ``tensorboard``: a directory for TensorBoard scalars (rank 0; needs tensorboard).
    ``hide_test``: the log lines and TensorBoard show no test scores (the run file, the
    metrics file and the summary keep them, for the setting that validation chooses)."""
    with contextlib.ExitStack() as held:
        if tensorboard is not None and not str(tensorboard).strip():
            raise UserError("--tensorboard '' is empty; give a directory")
        on_root(comm, lambda: check_outputs(cfg, comm.size, out, metrics_path, resume, overwrite,
                                            lock=held))
        return _train(cfg, comm, out, metrics_path, progress, resume, should_stop, tensorboard,
                      hide_test)


def dry_run(cfg: TrainConfig, comm, out: str | None = None, metrics_path: str | None = None,
            resume: bool = False, overwrite: bool = False) -> str:
    """Everything ``train`` checks before its first step, with nothing written: the outputs
    (and a resume's run file), the data, the model, the method and the world size."""
    on_root(comm, lambda: check_outputs(cfg, comm.size, out, metrics_path, resume, overwrite))
    s = set_up(cfg, comm)
    if resume:
        restore(s, out)
    return (f"dry run OK: {cfg.method} {cfg.model}-{cfg.dataset}, D = {s.flat.dim:,}, "
            f"{s.method.n_coefficients} coefficients per step, {s.total} steps "
            f"({s.stream.steps_per_epoch / s.stream.batches_per_step:g} per epoch), {comm.size} rank(s), "
            f"{len(s.data.train.y)}/{len(s.data.val.y)}/{len(s.data.test.y)} train/val/test "
            "samples; nothing written")


def _train(cfg: TrainConfig, comm, out: str | None, metrics_path: str | None, progress: bool,
           resume: bool, should_stop: Callable[[], bool] | None,
           tensorboard: str | None = None, hide_test: bool = False) -> dict:
    root = comm.rank == 0
    s = set_up(cfg, comm)
    point = restore(s, out) if resume else None
    start = point.steps_done if point else 0
    preempted, first_pass = False, None
    if point is not None and point.theta_anchor is not None:  # a resume inside an SVRG period
        t_anchor = time.perf_counter()
        preempted = not anchor_pass(s, torch.from_numpy(point.theta_anchor).to(s.device), start,
                                    should_stop)
        first_pass = time.perf_counter() - t_anchor
    comm.traffic.phase = "step"
    rec = Recorder(s, point, out if root else None, metrics_path if root else None,
                   progress and root, tensorboard if root else None, hide_test)
    if first_pass is not None:  # made before the recorder's clock started
        rec.anchor_pass(first_pass, on_the_clock=False)
    done = start
    for step in range(start, start if preempted else s.total):
        if s.anchor is not None and step % cfg.svrg_every == 0:
            t_anchor = time.perf_counter()
            complete = anchor_pass(s, s.flat.theta.detach(), step, should_stop)
            rec.anchor_pass(time.perf_counter() - t_anchor)
            if not complete:
                preempted = True  # stopped in the pass: step `step` not taken, θ as it is
                rec.commit_snapshot(step)
                break
        stats = take_step(s, step)
        t_rec = time.perf_counter()
        rec.add(step, stats)
        if not math.isfinite(stats.loss):
            raise UserError(f"loss became {stats.loss} at step {step}; lower --lr (now {cfg.lr})")
        done = step + 1
        with comm.traffic.during("control"):
            if cfg.check_every and done % cfg.check_every == 0:
                check_divergence(comm, s.flat.theta, done)
            stop_now = should_stop is not None and agree_to_stop(comm, should_stop(), done)
        epoch_end = done % s.stream.period == 0 or done == s.total
        snapshot_due = done % cfg.snapshot_every == 0 or done == s.total or stop_now
        if snapshot_due or epoch_end:
            sync_buffers(s)
        rec.commit_due(done, snapshot_due, epoch_end, stats.loss)
        rec.epoch_phases.setdefault("bookkeeping", []).append((time.perf_counter() - t_rec) * 1e3)
        if epoch_end:
            t_eval = time.perf_counter()
            scores = evaluate_epoch(s)
            rec.epoch(done, scores, time.perf_counter() - t_eval)
        if stop_now:
            preempted = done < s.total
            break
    rec.close()
    return {**rec.record, "rank": comm.rank, "world_size": comm.size, "steps_done": done, "total_steps": s.total, "preempted": preempted,
            "theta": s.flat.theta, "method": cfg.method, "traffic": dict(comm.traffic.bytes),
            "traffic_received": dict(comm.traffic.received),
            "traffic_calls": dict(comm.traffic.calls)}
