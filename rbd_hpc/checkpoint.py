"""Complete checkpoints: a run's weights at a step, with the model's buffers, its factory and
its config, and the one call that loads them into a model (docs/api.md).

  weights_at(run, step)        θ at ``step`` (replayed, or a snapshot for methods that log no
                               coefficients) and the buffers of the nearest snapshot ≤ step
  save_checkpoint(run, path)   a .pt file (a dict; ``torch.load(path)["state_dict"]`` is a
                               strict state dict) or a .npz file (one array per entry)
  load(path)                   a ready nn.Module from a checkpoint or directly from a run file
  model_for(cfg, shape)        the run's network, built-in or the user's factory

BatchNorm running statistics are not a function of the coefficients: training updates them
from the batches. A checkpoint therefore carries those of the nearest snapshot at or before
its step, and says which (``buffers_step``); at a snapshot step (e.g. the run's last) they
are exact.
"""
from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .data import SHAPES
from .errors import UserError
from .models import build_model
from .replay import replay_to
from .runlog import RunFile, check_writable
from .seeds import Stream, derive_seed, torch_generator
from .usercode import is_spec

FORMAT = "rbd_hpc checkpoint 1"


class Weights:
    """θ at a step of a run, the buffers that go with it, and where both came from."""

    def __init__(self, run: RunFile, step: int, theta: np.ndarray, buffers: np.ndarray,
                 buffers_step: int | None):
        self.config_json, self.step, self.theta = run.config_json, step, theta
        self.buffers, self.buffers_step = buffers, buffers_step
        self.layout, self.buffer_layout = run.layout, run.buffer_layout
        self.run_path = str(run.path)

    def state_dict(self, theta: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Parameters and buffers by name: what ``model.state_dict()`` holds; the parameters
        from ``theta`` (a vector of this run's layout) instead of the run's, when given."""
        theta = self.theta if theta is None else theta
        if np.shape(theta) != (self.layout["offsets"][-1],):
            raise UserError(f"θ of shape {np.shape(theta)} does not fit {self.run_path}, whose "
                            f"network has {self.layout['offsets'][-1]} parameters")
        out = {}
        lay = self.layout
        for name, shape, lo, hi in zip(lay["names"], lay["shapes"], lay["offsets"],
                                       lay["offsets"][1:]):
            out[name] = torch.from_numpy(np.array(theta[lo:hi])).reshape(shape)
        offset = 0
        for name, shape in zip(self.buffer_layout["names"], self.buffer_layout["shapes"]):
            n = int(np.prod(shape))
            values = torch.from_numpy(np.array(self.buffers[offset:offset + n])).reshape(shape)
            offset += n
            # BatchNorm's batch counter is the one integer buffer torch's layers keep
            out[name] = values.long() if name.endswith("num_batches_tracked") else values.float()
        return out


def weights_at(run: RunFile, step: int | None = None,
               on_step: Callable[[int, torch.Tensor], None] | None = None) -> Weights:
    """θ after ``step`` steps (default: the last committed) with the nearest snapshot's buffers;
    ``on_step`` is called after every replayed step (replay_to)."""
    if step is None:
        step = run.committed
    elif isinstance(step, bool) or not isinstance(step, numbers.Integral):  # the Python API's
        raise UserError(f"--step {step!r} is not valid; give a whole number of steps")
    step = int(step)
    snaps = [int(s) for s in run.snapshot_steps()]
    if run.replayable:
        theta = replay_to(run, step, on_step=on_step)
    elif step in snaps:
        theta = run.snapshot(snaps.index(step))[1]
    else:
        raise UserError(f"{run.path}: method {run.config().method} logs no coefficients, so only "
                        f"its snapshot steps have weights: {snaps}; not --step {step}")
    buffers, buffers_step = np.zeros(0), None
    if run.buffer_layout["names"]:
        usable = [i for i, s in enumerate(snaps) if s <= step]
        if usable:
            buffers_step, _, buffers, _ = run.snapshot(usable[-1])
        else:
            raise UserError(f"{run.path}: no snapshot at or before step {step} holds the "
                            "model's buffers")
    return Weights(run, step, theta, buffers, buffers_step)


def check_checkpoint_path(path: str, overwrite: bool = False) -> None:
    """Before any replay: a .pt or .npz name in a writable directory, not an existing file
    (unless ``overwrite``)."""
    if not str(path).strip():
        raise UserError("--out '' is empty; give a .pt or .npz file name")
    if not str(path).endswith((".pt", ".npz")):
        raise UserError(f"--out {path}: use a .pt or .npz file name")
    check_writable(Path(path), "--out")
    if Path(path).exists() and not overwrite:
        raise UserError(f"--out {path} already exists; choose another name or pass --overwrite")


def save_checkpoint(weights: Weights, path: str, overwrite: bool = False) -> None:
    """``path``: .pt (torch) or .npz (NumPy); either holds the state dict, the config (with the
    model's factory) and the step. Written beside ``path`` and renamed into place, so a
    failed write leaves any earlier file whole."""
    check_checkpoint_path(path, overwrite)
    meta = {"format": FORMAT, "config": weights.config_json, "step": weights.step,
            "buffers_step": weights.buffers_step, "run": weights.run_path}
    state = weights.state_dict()
    tmp = Path(path).with_name(Path(path).name + ".part" + Path(path).suffix)
    try:
        if path.endswith(".pt"):
            torch.save({**meta, "state_dict": state}, tmp)
        else:
            np.savez(tmp, __meta__=np.array(json.dumps(meta)),
                     **{k: v.numpy() for k, v in state.items()})
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports I/O failures as RuntimeError
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}") from None


def read_checkpoint(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, state dict) of a checkpoint file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                state = {k: torch.from_numpy(z[k]) for k in z.files if k != "__meta__"}
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            meta = {k: v for k, v in blob.items() if k != "state_dict"}
            state = blob["state_dict"]
    except (OSError, ValueError, KeyError, RuntimeError, EOFError) as e:
        raise UserError(f"{path} is not an rbd-hpc checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an rbd-hpc checkpoint (format {meta.get('format')!r}, "
                        f"expected {FORMAT!r})")
    return meta, state


def model_for(cfg, shape: tuple | None = None) -> nn.Module:
    """The network of a run: the user's factory, or a built-in one for the data set's shape
    (``shape`` is needed only for a built-in network on a data set of the user's own)."""
    if shape is None and not is_spec(cfg.model):
        if cfg.dataset not in SHAPES:
            raise UserError(f"the built-in model {cfg.model} on --dataset {cfg.dataset}: give "
                            "the input shape (or load the run with its data)")
        shape = SHAPES[cfg.dataset]
    return build_model(cfg.model, shape, torch_generator(derive_seed(cfg.seed, Stream.INIT)))


def load(path: str, model: nn.Module | None = None, step: int | None = None) -> nn.Module:
    """A model holding the weights of a checkpoint (.pt/.npz) or of a run file (.h5, at
    ``step``, default its last): ``model`` if given, else one the run's model factory builds.
    Loading is strict: every parameter and buffer must match."""
    if str(path).endswith((".h5", ".hdf5")):
        with RunFile(path) as run:
            weights = weights_at(run, step)
        cfg_json, state = weights.config_json, weights.state_dict()
    else:
        if step is not None:
            raise UserError("step= selects a step of a run file; a checkpoint holds one step")
        meta, state = read_checkpoint(str(path))
        cfg_json = meta["config"]
    cfg = TrainConfig.from_json(cfg_json, f"{path} config")
    net = model if model is not None else model_for(cfg)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path} does not fit the model: {str(e).splitlines()[0]}") from None
    return net.eval()
