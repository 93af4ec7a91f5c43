"""One preemption protocol for every way a run is launched (docs/design.md, "Preemption").

1. A preemption signal reaches every rank: SIGUSR1 (the sbatch scripts forward theirs),
   SIGUSR2 (submitit's default) or SIGTERM (scancel, or Slurm at the time limit).
2. ``StopRequest`` records it; the training loop asks once per step (and before each batch
   of an SVRG anchor pass), the ranks agree on the step to stop after, and rank 0 commits
   the run file with a snapshot there.
3. The process reports the stop: the CLI exits with EXIT_PREEMPTED (3), on which
   slurm/launch.sh requeues the job; a submitit job hands the signal on to the handler
   submitit had installed (``StopRequest.pass_on``), which checkpoints and requeues.
4. The requeued job finds the run file and resumes it bitwise.
"""
from __future__ import annotations

import signal

PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
EXIT_PREEMPTED = 3


class StopRequest:
    """A flag set by a preemption signal, installed for the duration of a ``with`` block;
    calling it answers "stop now?" (the ``should_stop`` of train.train)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:  # finish the current step, then stop
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def pass_on(self) -> None:
        """After the run file is committed: deliver the signal again to the handler that was
        installed before ours, if it was a Python one (submitit's checkpoint-and-requeue)."""
        previous = self._previous.get(self.signum)
        self.__exit__()
        if self.signum is not None and callable(previous):
            signal.raise_signal(self.signum)
