"""The coordinates-as-parameters formulation (paper Eq. 3): the loss at θ_t + Σ_i c_i φ_i
with the coordinates c trainable, differentiated at c = 0.

dL/dc_i at c = 0 equals <φ_i, ∇L(θ_t)> — the coefficients the gradient-projection path
computes — but this form never materialises ∇L(θ) in weight space, which is how the paper
runs on IPUs (directions generated on the chip in the forward pass, regenerated in the
backward pass). It works on every device; ``ipu.py`` wraps it for poptorch.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .models import FlatParameters


def perturbed_parameters(flat: FlatParameters, chunks: list, coordinates: list[torch.Tensor]):
    """θ_t + Σ combine(c) as a name → tensor dict, differentiable in the coordinates."""
    theta = flat.theta.detach()
    steps: dict[tuple[int, int], torch.Tensor] = {}  # chunks of one compartment share its span
    for (span, chunk, _), c in zip(chunks, coordinates):
        key = (span.start, span.stop)
        steps[key] = steps[key] + chunk.combine(c) if key in steps else chunk.combine(c)
    pieces, cursor = [], 0
    for (start, stop), delta in sorted(steps.items()):
        if start > cursor:
            pieces.append(theta[cursor:start])
        pieces.append(theta[start:stop] + delta)
        cursor = stop
    if cursor < theta.numel():
        pieces.append(theta[cursor:])
    full = torch.cat(pieces)
    return {n: full[lo:hi].view(shape) for n, lo, hi, shape
            in zip(flat.names, flat.offsets, flat.offsets[1:], flat.shapes)}


def coordinate_gradients(model: nn.Module, flat: FlatParameters, chunks: list, x: torch.Tensor,
                         y: torch.Tensor, loss_fn=nn.functional.cross_entropy):
    """(loss, coefficients) with the coefficients as dL/dc at c = 0, in chunk order."""
    coords = [torch.zeros(chunk.n_coefficients, dtype=flat.theta.dtype,
                          device=flat.theta.device, requires_grad=True) for _, chunk, _ in chunks]
    params = perturbed_parameters(flat, chunks, coords)
    buffers = dict(model.named_buffers())
    loss = loss_fn(functional_call(model, {**params, **buffers}, (x,)), y)
    grads = torch.autograd.grad(loss, coords)
    return loss.detach(), torch.cat([g.detach() for g in grads])
