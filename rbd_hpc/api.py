"""The Python API: train your own model on your own data, load and score the result.

    import rbd_hpc
    summary = rbd_hpc.fit("mypkg.nets:make_model", "mypkg.data:make_data",
                          method="rbd", d=64, dist="srht", lr=0.05, epochs=3, out="run.h5")
    model = rbd_hpc.load("run.h5")               # or a checkpoint written by replay --out
    scores = rbd_hpc.evaluate("run.h5")          # {"val_acc": …, "test_acc": …, …}

``fit`` is ``rbd-hpc train``: every method, the run file, resume, bitwise replay, and MPI
(launch the script under mpiexec/srun; every rank calls ``fit`` with the same arguments).
Model and data are factories (usercode.py says what they return), given as callables defined
at module level or as ``MODULE:NAME`` specs: the run file records the spec, so replay, eval
and resume rebuild the model in another process. Errors are raised as ``UserError`` with the
one-line message the CLI prints.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Callable

import numpy as np
import torch

from .checkpoint import Weights, load, model_for, weights_at
from .comm import SingleProcess, create_communicator
from .config import TrainConfig, check_option
from .data import Dataset, load_dataset
from .errors import UserError, require_choice
from .runlog import RunFile
from .train import evaluate as score_split, train
from .usercode import spec_of

__all__ = ["fit", "load", "evaluate", "scorer", "Scorer", "weights_at"]


def _spec(factory, what: str) -> str:
    spec = spec_of(factory)
    if spec is None:
        raise UserError(f"{what} {factory!r} has no importable name: define the factory at "
                        "module level (not a lambda or a nested function), or pass its "
                        "MODULE:NAME spec, so that other ranks, replay and eval can rebuild it")
    return spec


def fit(model: Callable | str, data: Callable | str, config: TrainConfig | dict | None = None, *,
        out: str | None = None, metrics: str | None = None, comm=None, resume: bool = False,
        overwrite: bool = False, progress: bool = False, hide_test: bool = False,
        should_stop: Callable[[], bool] | None = None, **options) -> dict:
    """Train ``model`` (a factory, a spec or a built-in name) on ``data`` (likewise); config
    fields come from ``config`` then ``options``. Returns the run's summary (final θ and
    scores). ``comm``: default MPI when launched under mpiexec/srun, else one process.
    ``hide_test``: the epoch lines show no test score (the summary keeps it)."""
    if not (config is None or isinstance(config, (TrainConfig, Mapping))):
        raise UserError(f"fit() config {config!r} is not valid; give a TrainConfig or a dict "
                        "of its fields")
    fields = dataclasses.asdict(config) if isinstance(config, TrainConfig) else dict(config or {})
    fields.update(options)
    fields.update(model=_spec(model, "model"), dataset=_spec(data, "data"), preset=None)
    cfg = TrainConfig.from_dict(fields, "fit() config")
    comm = comm if comm is not None else create_communicator()
    return train(cfg, comm, out=out, metrics_path=metrics, progress=progress, resume=resume,
                 should_stop=should_stop, overwrite=overwrite, hide_test=hide_test)


SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Scorer:
    """A run's configuration, its data set (splits as the run made them) and its network
    holding the run's weights at ``weights.step``; ``score`` rates those weights, or any θ
    of the same layout (an average of snapshots, a perturbed θ), on a split."""
    cfg: TrainConfig
    data: Dataset
    net: torch.nn.Module
    weights: Weights
    batch: int

    def refuse_buffers(self, what: str) -> None:
        """A UserError when the network has buffers (BatchNorm), which ``what`` (a θ the run
        never held) would need recomputed."""
        if self.weights.buffers.size:
            raise UserError(f"{self.weights.run_path}: the network has buffers (BatchNorm), "
                            f"which {what} would need recomputed")

    def score(self, split: str, theta: np.ndarray | None = None) -> tuple[float, float]:
        """(mean loss, accuracy) on ``split`` ("train", "val" or "test") of the run's weights,
        or of ``theta``, a vector of the run's layout, with the run's buffers."""
        require_choice("split", split, SPLITS)
        if theta is not None:
            self.refuse_buffers("another θ")
            try:
                theta = np.asarray(theta, np.float32)
            except (TypeError, ValueError):
                raise UserError(f"θ of type {type(theta).__name__} is not valid; give a vector "
                                "of floats in the run's layout") from None
        self.net.load_state_dict(self.weights.state_dict(theta), strict=True)
        return score_split(self.net, getattr(self.data, split), SingleProcess(), "cpu",
                           self.data.inputs, self.batch)


def scorer(run: str | RunFile, step: int | None = None, data_dir: str | None = None,
           batch: int | None = None) -> Scorer:
    """The run's network with its weights at ``step`` (default: its last) and its own data set
    and validation split, ready to score (``Scorer``); ``run``: a path, or a RunFile open
    already (its other contents read in the same pass)."""
    if batch is not None:
        check_option("eval_batch_size", batch)
    with contextlib.nullcontext(run) if isinstance(run, RunFile) else RunFile(run) as f:
        cfg = f.config()
        weights = weights_at(f, step)
    data = load_dataset(cfg.dataset, data_dir or cfg.data_dir, cfg.seed, cfg.val_size)
    net = model_for(cfg, data.shape)
    net.load_state_dict(weights.state_dict(), strict=True)
    return Scorer(cfg, data, net, weights, batch or cfg.eval_batch_size)


def evaluate(run_path: str, step: int | None = None, data_dir: str | None = None,
             batch: int | None = None) -> dict:
    """Validation and test loss and accuracy of a run's weights at ``step`` (default: its
    last), on the run's own data set and validation split; with the accuracy the run logged
    at that step, when it logged one."""
    with RunFile(run_path) as run:
        s = scorer(run, step, data_dir, batch)
        logged = [m for m in run.metrics() if int(m["step"]) == s.weights.step]
    scores = {"step": s.weights.step, "buffers_step": s.weights.buffers_step}
    for name in ("val", "test"):
        if len(getattr(s.data, name).y):
            scores[f"{name}_loss"], scores[f"{name}_acc"] = s.score(name)
    if logged:
        scores["logged_test_acc"] = logged[-1]["test_acc"]
        scores["logged_val_acc"] = logged[-1]["val_acc"]
    return scores
