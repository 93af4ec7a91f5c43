"""What a run leaves behind: the run file's rows, snapshots and metrics, the JSON-lines metrics
file, the progress bar, and when to commit. Files are written by rank 0 only (docs/design.md,
invariant 4); every rank keeps the epoch statistics, so every rank returns the same summary.

Commit policy: buffered rows are committed at least every COMMIT_SECONDS, at every snapshot
(every --snapshot-every steps, the last step, a stop) and at every epoch end, so a kill
loses under half a second of steps and never a snapshot or an epoch's metrics.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from .errors import UserError
from .methods import StepResult
from .models import buffers_vector
from .progress import StepProgress, clock
from .runlog import (METRIC_COLUMNS, RunFile, RunWriter, platform_change_note, platforms_after,
                     run_attrs)

COMMIT_SECONDS = 0.5  # commit buffered rows at least this often: a kill loses < 0.5 s of work


@dataclasses.dataclass
class StepStats:
    """What one training step reports: the row it logs and the statistics of its epoch."""

    lr: float
    loss: float
    cos_grad: float   # cosine between the applied step and the gradient
    ms: float
    result: StepResult
    phases_ms: dict = dataclasses.field(default_factory=dict)  # where the step's time went


def layouts(flat, model, compartments) -> tuple[dict, dict]:
    """The parameter layout (names, shapes, offsets, compartments) and the buffer layout."""
    param_layout = {
        "names": flat.names, "shapes": [list(s) for s in flat.shapes], "offsets": flat.offsets,
        "compartments": [dataclasses.asdict(c) for c in compartments],
    }
    buffer_layout = {"names": [n for n, _ in model.named_buffers()],
                     "shapes": [list(b.shape) for _, b in model.named_buffers()]}
    return param_layout, buffer_layout


def evaluations_after(done: int, total: int, period: int) -> int:
    """How many evaluations a run of ``total`` steps still makes after ``done``: one at every
    multiple of ``period`` (an epoch's end) and one at ``total``."""
    return total // period - done // period + (total % period != 0 and done < total)


def anchors_after(done: int, total: int, every: int) -> int:
    """How many SVRG anchor passes a run of ``total`` steps still makes after ``done`` steps:
    one before every step whose index is a multiple of ``every`` (none without SVRG)."""
    return -(-total // every) - -(-done // every) if every else 0


def open_board(directory: str):
    """A TensorBoard writer (torch.utils.tensorboard; the optional ``tensorboard`` package).
    Scalars: train/loss, train/lr, train/ms_per_step every step; at an epoch's end
    train/epoch_loss, val/loss, val/acc, test/loss, test/acc and train/epoch;
    the x axis is the step count, wall time is TensorBoard's own."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install "
                        "'rbd_hpc[tensorboard]'") from None
    try:
        return SummaryWriter(log_dir=directory, flush_secs=10)
    except OSError as e:
        raise UserError(f"cannot write --tensorboard {directory}: {e.strerror or e}") from None


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


class Recorder:
    """The run's record from its start or from a resume ``point`` (None for a new run): the
    epoch losses already logged there, and its last metrics as the summary so far (a finished
    run resumed returns its own). ``out`` and ``metrics_path`` are None on every rank but 0."""

    def __init__(self, run, point, out: str | None, metrics_path: str | None, progress: bool,
                 tensorboard: str | None = None, hide_test: bool = False):
        self.run, self.hide_test = run, hide_test
        resume = point is not None
        start = point.steps_done if resume else 0
        self.epoch_losses = list(point.epoch_losses) if resume else []
        self.epoch_ms, self.epoch_cos = [], []
        self.epoch_phases: dict[str, list[float]] = {}
        self.start = start
        self.step_traffic0 = run.comm.traffic.totals("step")
        self.last_commit = time.monotonic()
        self.record: dict = dict(point.last_metrics) if resume else {}
        self.writer = self._open_writer(out, resume) if out else None
        try:
            self.metrics = (open_metrics(metrics_path, start if resume else None)
                            if metrics_path else None)
        except OSError as e:
            raise UserError(f"cannot write the metrics file {metrics_path}: {e.strerror or e}") from None
        self.root = run.comm.rank == 0
        cfg = run.cfg
        self.board = open_board(tensorboard) if tensorboard else None
        # the last evaluation's and the last anchor pass's seconds: the ETA counts one of each
        # still ahead (per epoch end; per SVRG period) instead of spreading them over the steps
        self.eval_seconds = self.anchor_seconds = 0.0
        self.bar = StepProgress(run.total, f"{cfg.method} {cfg.model}-{cfg.dataset}",
                                progress and self.root, initial=start,
                                pending=lambda done: self.eval_seconds * evaluations_after(
                                    done, run.total, run.stream.period)
                                + self.anchor_seconds * anchors_after(done, run.total,
                                                                      cfg.svrg_every))
        if resume and self.root:
            self.bar.log(f"resuming {out} at step {start}/{run.total} (epoch "
                         f"{run.stream.epochs_at(start):.2f}): "
                         + ("θ replayed from its rows" if point.replayed else
                            "θ from the snapshot of that step"))
            if self.writer is not None and len(self.platforms) > 1 and \
                    self.platforms[-1][0] == start:
                self.bar.log(platform_change_note(self.platforms, cfg.kernels))

    def _open_writer(self, out: str, resume: bool) -> RunWriter:
        run = self.run
        param_layout, buffer_layout = layouts(run.flat, run.model, run.compartments)
        attrs = run_attrs(run.cfg.to_json(), run.cfg.seed, run.comm.size, run.cfg.mode,
                          run.cfg.method, run.device.type, param_layout, buffer_layout,
                          run.method.n_coefficients, run.method.logs_coefficients)
        existing = RunFile(out) if resume else None
        theta0 = existing.theta0() if existing else run.theta0
        self.platforms = platforms_after(existing, self.start if resume else None)
        attrs["platforms"] = json.dumps(self.platforms)
        try:
            writer = RunWriter(out, attrs, theta0, run.method.n_coefficients,
                               buffers_vector(run.model).size, run.state_size, existing=existing,
                               resume_at=self.start if resume else None)
        finally:
            if existing is not None:
                existing.close()
        if writer.committed_snapshots == 0:  # θ0 is snapshot 0 (step count 0)
            writer.commit(snapshot=(0, theta0, buffers_vector(run.model),
                                    np.zeros(run.state_size)))
        return writer

    def snapshot(self, at: int) -> tuple:
        """What a snapshot after ``at`` steps holds: θ, the buffers, the method state."""
        run = self.run
        return (at, run.flat.theta.detach().cpu().numpy(), buffers_vector(run.model),
                run.method.state_vector(run.flat.dim))

    def commit_snapshot(self, at: int) -> None:
        """Commit θ as it stands after ``at`` steps (a stop before step ``at`` was taken)."""
        if self.writer is not None:
            self.writer.commit(snapshot=self.snapshot(at))

    def add(self, step: int, stats: StepStats) -> None:
        self.epoch_ms.append(stats.ms)
        for phase, ms in stats.phases_ms.items():
            self.epoch_phases.setdefault(phase, []).append(ms)
        self.epoch_losses.append(stats.loss)
        self.epoch_cos.append(stats.cos_grad)
        if self.board is not None:
            self.board.add_scalar("train/loss", stats.loss, step + 1)
            self.board.add_scalar("train/lr", stats.lr, step + 1)
            self.board.add_scalar("train/ms_per_step", stats.ms, step + 1)
        if self.writer is not None:
            c = stats.result.coefficients
            self.writer.add_step(step, stats.lr, stats.loss,
                                 c.cpu().numpy() if self.run.method.n_coefficients else None)

    def anchor_pass(self, seconds: float, on_the_clock: bool = True) -> None:
        """An SVRG anchor pass took ``seconds``: outside the step rate, in the epoch's
        ``ms_anchor_pass`` (median) and, once per pass still ahead, in the ETA. A pass made
        before the progress clock started (a resume's first) has nothing to set aside."""
        self.anchor_seconds = seconds
        if on_the_clock:
            self.bar.aside(seconds)
        self.epoch_phases.setdefault("anchor_pass", []).append(seconds * 1e3)

    def commit_due(self, done: int, snapshot_due: bool, epoch_end: bool, loss: float) -> None:
        if self.writer is not None and (snapshot_due or epoch_end or
                                        time.monotonic() - self.last_commit > COMMIT_SECONDS):
            self.writer.commit(snapshot=self.snapshot(done) if snapshot_due else None)
            self.last_commit = time.monotonic()
        self.bar.update(done, loss=loss)

    def epoch(self, done: int, scores: dict, eval_seconds: float) -> None:
        """Close an epoch, whose evaluation (``scores``) took ``eval_seconds``: its metrics row
        in the run file and a line in the metrics file."""
        self.eval_seconds = eval_seconds
        self.bar.aside(eval_seconds)
        steps_here = done - self.start
        self.record = {
            "epoch": round(self.run.stream.epochs_at(done), 4),
            "step": done, "train_loss": statistics.fmean(self.epoch_losses), **scores,
            "ms_per_step": statistics.median(self.epoch_ms),
            **{f"ms_{phase}": statistics.median(v) for phase, v in self.epoch_phases.items()},
            "cos_grad": statistics.fmean(self.epoch_cos),
        }
        now = self.run.comm.traffic.totals("step")  # this rank's (rank 0's): sent, received, calls
        for key, a, b in zip(("bytes_per_step", "recv_bytes_per_step", "calls_per_step"),
                             now, self.step_traffic0):
            self.record[key] = (a - b) / max(steps_here, 1)
        self.epoch_losses, self.epoch_ms, self.epoch_cos = [], [], []
        self.epoch_phases = {}
        if self.writer is not None:
            self.writer.commit(metrics=[float(self.record[c]) for c in METRIC_COLUMNS])
        if self.root:
            self.bar.log(self.epoch_line())
        if self.board is not None:
            for key, tag in (("train_loss", "train/epoch_loss"), ("val_loss", "val/loss"),
                             ("val_acc", "val/acc"), ("test_loss", "test/loss"),
                             ("test_acc", "test/acc")):
                if not (self.hide_test and key.startswith("test")):
                    self.board.add_scalar(tag, self.record[key], done)
            self.board.add_scalar("train/epoch", self.record["epoch"], done)
            self.board.flush()
        if self.metrics:
            try:
                self.metrics.write(json.dumps(self.record) + "\n")
                self.metrics.flush()
            except OSError as e:
                raise UserError(f"cannot write the metrics file {self.metrics.name}: "
                                f"{e.strerror or e}; the run file holds this epoch") from None

    def epoch_line(self) -> str:
        """One line per epoch for the log: where the run is, its scores (test accuracy unless
        ``hide_test``), its speed, its ETA."""
        r, total = self.record, self.run.total
        eta = self.bar.eta()
        epochs_at = self.run.stream.epochs_at  # the record's epoch is rounded to 4 decimals
        return (f"epoch {epochs_at(r['step']):.4g}/{epochs_at(total):.4g} step {r['step']}/{total}: train_loss "
                f"{r['train_loss']:.4f} val_acc {r['val_acc']:.4f}"
                + ("" if self.hide_test else f" test_acc {r['test_acc']:.4f}")
                + f", {r['ms_per_step']:.2f} ms/step"
                + (f" + anchor passes of {r['ms_anchor_pass'] / 1e3:.1f} s" if "ms_anchor_pass" in r
                   else "") + f", elapsed {clock(time.monotonic() - self.bar.t0)}"
                + (f", ETA {clock(eta)}" if eta is not None and r["step"] < total else ""))

    def close(self) -> None:
        self.bar.close()
        if self.board is not None:
            self.board.close()
        if self.writer is not None:
            self.writer.commit()
            self.writer.close()
        if self.metrics:
            self.metrics.close()
