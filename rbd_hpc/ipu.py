"""IPU path: the coordinates-as-parameters model under poptorch, behind the same interface.

poptorch is not installable everywhere (it ships with Graphcore's Poplar SDK); this
module imports it lazily. ``CoordinateModel`` is an ordinary nn.Module whose forward
returns the loss at θ_t + P·c for trainable coordinates c — the form poptorch compiles —
and is tested on CPU against the gradient-projection path; ``ipu_coordinate_step`` runs
it through poptorch when poptorch is present.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .coordinates import coordinate_gradients, perturbed_parameters


def poptorch_available() -> bool:
    try:
        import poptorch  # noqa: F401
    except ImportError:
        return False
    return True


class CoordinateModel(nn.Module):
    """forward(x, y) → loss at θ_t + Σ c φ; ``coordinates`` are the only parameters."""

    def __init__(self, model: nn.Module, flat, chunks: list):
        super().__init__()
        self.model, self.flat, self.chunks = model, flat, chunks
        self.coordinates = nn.ParameterList(
            nn.Parameter(torch.zeros(ch.n_coefficients)) for _, ch, _ in chunks)

    def forward(self, x, y):
        params = perturbed_parameters(self.flat, self.chunks, list(self.coordinates))
        out = functional_call(self.model, {**params, **dict(self.model.named_buffers())}, (x,))
        return nn.functional.cross_entropy(out, y)


def ipu_coordinate_step(model: nn.Module, flat, chunks: list, x, y):
    """(loss, coefficients): on an IPU through poptorch, else the same math on this device."""
    if not poptorch_available():
        return coordinate_gradients(model, flat, chunks, x, y)
    import poptorch  # pragma: no cover - needs Graphcore hardware and SDK

    wrapped = CoordinateModel(model, flat, chunks)  # pragma: no cover
    opts = poptorch.Options()  # pragma: no cover
    loss = poptorch.inferenceModel(_LossAndGrad(wrapped), opts)(x, y)  # pragma: no cover
    return loss[0], loss[1]  # pragma: no cover


class _LossAndGrad(nn.Module):  # pragma: no cover - poptorch only
    def __init__(self, wrapped: CoordinateModel):
        super().__init__()
        self.wrapped = wrapped

    def forward(self, x, y):
        loss = self.wrapped(x, y)
        grads = torch.autograd.grad(loss, list(self.wrapped.coordinates))
        return loss, torch.cat(grads)
