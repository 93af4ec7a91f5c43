"""What a long command says while it runs: on a terminal a tqdm bar (rate and ETA) on stderr;
off a terminal (a Slurm log) a plain line on stdout every tenth of the work, so that a log is
never silent for long and is not flooded either, and stderr keeps only errors (one line).
Log lines (an epoch's scores, a resume) go to stdout, through tqdm when a bar is drawn so that
they do not tear it."""
from __future__ import annotations

import sys
import time
from typing import Callable

from tqdm import tqdm


def clock(seconds: float) -> str:
    """0:05:07 for 307 s (hours unbounded)."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class StepProgress:
    """Progress over ``total`` units of ``unit`` (e.g. steps), starting at ``initial``.

    Work between units that is not part of them (a training run's evaluations) is reported
    with ``aside``: the rate leaves it out, and ``pending(done)`` (seconds of such work still
    ahead after ``done`` units) is added to the ETA, so that a short window that holds one
    evaluation (the first epoch after a resume) does not inflate the estimate."""

    def __init__(self, total: int, label: str, enabled: bool = True, initial: int = 0,
                 unit: str = "step", pending: Callable[[int], float] | None = None):
        self.total, self.label, self.unit, self.enabled = total, label, unit, enabled
        self.initial = self.done = initial
        self.t0 = time.monotonic()
        self.set_aside = 0.0
        self.pending = pending
        self.tenth = int(10 * initial / total) if total else 10  # the first line after a tenth
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=label, unit=unit,
                            dynamic_ncols=True, leave=True, file=sys.stderr)

    def aside(self, seconds: float) -> None:
        """``seconds`` just spent on work outside the units: not counted in their rate."""
        self.set_aside += seconds

    def eta(self) -> float | None:
        """Seconds to go: the units left at this process's rate so far, plus ``pending``'s
        seconds (None before any work)."""
        if self.done <= self.initial:
            return None
        rate = (self.done - self.initial) / max(time.monotonic() - self.t0 - self.set_aside, 1e-9)
        return (self.total - self.done) / rate + (self.pending(self.done) if self.pending else 0.0)

    def update(self, done: int, **postfix) -> None:
        previous, self.done = self.done, done  # counted even when silent: eta() uses it
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(done - previous)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4f}" if isinstance(v, float) else v
                                      for k, v in postfix.items()}, refresh=False)
            return
        tenth = int(10 * done / self.total) if self.total else 10
        if tenth > self.tenth:
            self.tenth = tenth
            eta = self.eta()
            extra = "".join(f"  {k} {v:.4f}" if isinstance(v, float) else f"  {k} {v}"
                            for k, v in postfix.items())
            print(f"{self.label}: {done}/{self.total} {self.unit}s{extra}"
                  + (f"  ETA {clock(eta)}" if eta is not None else ""), flush=True)

    def log(self, line: str) -> None:
        """A line for the log (stdout), whatever ``enabled`` says."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
