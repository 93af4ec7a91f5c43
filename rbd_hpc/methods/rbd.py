"""Random Bases Descent (Gressmann et al. 2020, Eq. 3–4): directions redrawn every step.

Pure torch: no files, no mpi4py. The communicator is passed in.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..bases import Basis
from ..compartments import Compartment
from .base import StepResult
from .update import Velocity, apply_step, step_chunks

MODES = ("shared", "per-rank")


class RandomBasesDescent(Velocity):
    """θ ← θ − η Σ_i <φ_i, g> φ_i with fresh directions every ``redraw_every`` steps.

    With ``momentum`` μ > 0 the step goes through a velocity, v ← μ v + Σ_i c_i φ_i and
    θ ← θ − η v: the same d coefficients per step are exchanged and logged, and replay
    rebuilds v from them (the velocity is D floats of memory, saved in snapshots).
    With ``weight_decay`` λ > 0, θ ← (1 − ηλ) θ before each step (decoupled weight decay).
    With ``rates`` (--lr-scale), compartment k steps at s_k·η; the decay stays at η.

    Modes (docs/design.md, "Two parallel modes"):
      shared   — every rank uses the same d directions on its own data shard; the
                 coordinates are averaged across ranks (d floats per step).
      per-rank — rank r owns direction indices [r·d_k, (r+1)·d_k) of compartment k;
                 all R·d coordinates are gathered and every rank applies them all.
    """

    name = "rbd"
    logs_coefficients = True

    def __init__(self, compartments: list[Compartment], basis: Basis, comm,
                 mode: str = "shared", chunk_size: int = 50, redraw_every: int = 1,
                 world_size: int | None = None, keep_in_memory: bool = False,
                 momentum: float = 0.0, weight_decay: float = 0.0,
                 rates: list[float] | None = None):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} not in {MODES}")
        self.compartments = compartments
        self.basis = basis
        self.comm = comm
        self.mode = mode
        self.chunk_size = chunk_size
        self.redraw_every = redraw_every
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.velocity = None
        # --lr-scale: each compartment's multiplier of η (None: 1 for all, the plain plan)
        self.rates = rates if rates and any(r != 1.0 for r in rates) else None
        # per-rank mode: R·d_k directions per compartment (R from the run file on replay)
        self.ranks = (world_size or comm.size) if mode == "per-rank" else 1
        self.directions_per_compartment = [c.d * self.ranks for c in compartments]
        self.n_coefficients = sum(self.directions_per_compartment)
        # keep-in-memory: hold the materialised chunks while the key step does not change
        # (FPD: the whole run; RBD with --redraw-every n: n steps). Costs 4·D·d bytes.
        self.keep_in_memory = keep_in_memory
        self._kept: tuple[int, list] | None = None

    @property
    def direction_parallel(self) -> bool:
        return self.mode == "per-rank"

    def key_step(self, step: int) -> int:
        return step // self.redraw_every

    @property
    def reuses_directions(self) -> bool:
        """Whether a step's directions serve later steps too (the key step repeats)."""
        return self.redraw_every > 1

    def _chunks(self, step: int, listed: bool = False):
        """The step's pieces (θ slice, chunk, rate): generated one at a time (dense chunks into a
        shared scratch buffer), or ``listed`` (structured chunks, or --keep-in-memory)."""
        key = self.key_step(step)
        if not self.keep_in_memory:
            chunks = step_chunks(self.basis, self.compartments, key,
                                 self.directions_per_compartment, self.chunk_size,
                                 rates=self.rates)
            return list(chunks) if listed else chunks
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, list(step_chunks(self.basis, self.compartments, key,
                                                self.directions_per_compartment, self.chunk_size,
                                                reuse=False, rates=self.rates)))
        return self._kept[1]

    def one_exchange(self) -> bool:
        """Whether a shared-mode step holds all its directions and exchanges its d coefficients
        at once (one reduce + broadcast): structured chunks are O(D) signs and indices, and
        --keep-in-memory holds dense ones anyway. Dense directions otherwise go chunk by chunk
        (generate, project, exchange, apply: 2 calls per chunk): holding all of a step's d·D
        floats instead was measured 25% slower per step (FC, gaussian, d = 250: median 203 ms
        against 161 ms at one thread, 4 interleaved rounds), because a 20 MB chunk is still in
        cache when it is applied and 100 MB are not, while the 8 calls it saves cost about
        5 µs each here (docs/scaling.md)."""
        return self.basis.config.structured or self.keep_in_memory

    def step(self, theta: torch.Tensor, grad: torch.Tensor, step: int, lr: float,
             loss_at: Callable[[int], float] | None = None) -> StepResult:
        if self.mode == "shared" and self.one_exchange():
            # project onto every direction, then the step's one exchange: d coordinates
            # averaged over ranks; then apply them chunk by chunk, as replay does
            chunks = self._chunks(step, listed=True)
            mean = self.comm.allreduce_mean(torch.cat([chunk.project(grad[span])
                                                       for span, chunk, _ in chunks]))
            return StepResult(self.replay_step(theta, step, lr, mean, chunks))
        if self.mode == "shared":
            def coefficients_for(span, chunk):
                # the only per-step traffic: this chunk's coordinates, averaged over ranks
                return self.comm.allreduce_mean(chunk.project(grad[span]))
            return StepResult(self._apply(theta, step, lr, coefficients_for))
        gathered = self._per_rank_coefficients(grad, step)
        return StepResult(self.replay_step(theta, step, lr, gathered))

    def _per_rank_coefficients(self, grad: torch.Tensor, step: int) -> torch.Tensor:
        """Project onto this rank's directions, gather all ranks' into direction order."""
        r = self.comm.rank
        own = []
        for comp in self.compartments:
            mine = range(r * comp.d, (r + 1) * comp.d)
            g = grad[comp.start:comp.stop]
            for chunk in self.basis.chunks(self.key_step(step), comp.index, comp.size, mine,
                                           self.chunk_size):
                own.append(chunk.project(g))
        table = self.comm.allgather(torch.cat(own).to(torch.float32))  # (R, Σ d_k)
        parts, offset = [], 0
        for comp in self.compartments:
            parts.append(table[:, offset:offset + comp.d].reshape(-1))  # rank-major = index order
            offset += comp.d
        return torch.cat(parts)

    def replay_step(self, theta: torch.Tensor, step: int, lr: float,
                    coefficients: torch.Tensor, chunks=None) -> torch.Tensor:
        """Apply logged coefficients (no data needed): the same update as training
        (``chunks``: the step's directions when the caller holds them already)."""
        cursor = [0]

        def coefficients_for(span, chunk):
            lo = cursor[0]
            cursor[0] += chunk.n_coefficients
            return coefficients[lo:cursor[0]]
        applied = self._apply(theta, step, lr, coefficients_for, chunks)
        if cursor[0] != coefficients.numel():
            raise ValueError(f"step {step}: {coefficients.numel()} coefficients logged, "
                             f"{cursor[0]} directions")
        return applied

    def _apply(self, theta: torch.Tensor, step: int, lr: float, coefficients_for,
               chunks=None, combined: torch.Tensor | None = None) -> torch.Tensor:
        """The step through the one update function, with this method's velocity if any
        (``combined``: see ``apply_step``)."""
        velocity = self.velocity_for(theta) if self.momentum else None
        return apply_step(theta, self._chunks(step) if chunks is None else chunks, lr,
                          coefficients_for, velocity, self.momentum, self.weight_decay, combined,
                          unfused=self.basis.config.kernels >= 3)
