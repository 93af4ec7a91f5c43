# Sourced by the sbatch scripts in this folder: launch rbd-hpc over the job's tasks, resume
# after a requeue, and turn a preemption signal into a committed run file plus a requeue.
#
# Inputs (environment; every one can be set at submission: sbatch --export=ALL,RBD_OUT=… …):
#   RBD_PRESET    preset name                          (the calling script sets its default)
#   RBD_OUT       the run file; if it exists, the job resumes it
#                 (default runs/$RBD_PRESET-$SLURM_JOB_ID.h5)
#   RBD_METRICS   per-epoch metrics, JSON lines        (default: RBD_OUT with .jsonl)
#   RBD_DATA      data directory (exported: rbd-hpc reads $RBD_DATA); default by the preset's
#                 data set: fmnist the Debian package's, mnist $HOME/data/mnist,
#                 cifar10 $HOME/data/cifar10          (SITE)
#   RBD_DEFAULT_ARGS  the calling script's train options (e.g. "--epochs 100 --augment")
#   RBD_ARGS      options appended after the script's: a later option overrides an earlier
#                 one (--no-augment undoes --augment; --steps N replaces the script's --epochs)
#   RBD_BIN       the rbd-hpc executable            (default: $RBD_HOME/.venv/bin/rbd-hpc, else PATH)
#   RBD_LAUNCHER  srun | mpiexec | auto              (default auto: srun --mpi=pmi2 if it forms
#                 one MPI world, else mpiexec inside the allocation)
#   RBD_SRUN_MPI  the srun --mpi plugin              (default pmi2; some sites need pmix)
set -uo pipefail

RBD_HOME="${RBD_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
case "${RBD_PRESET##*-}" in  # the data set a preset names is after its last dash
  fmnist)  DEFAULT_DATA=/usr/share/datasets/fashion-mnist ;;
  mnist)   DEFAULT_DATA="$HOME/data/mnist" ;;             # SITE
  cifar10) DEFAULT_DATA="$HOME/data/cifar10" ;;           # SITE
  *) echo "rbd-hpc: error: RBD_PRESET=$RBD_PRESET names no known data set; valid presets: rbd-hpc train --help" >&2; exit 2 ;;
esac
export RBD_DATA="${RBD_DATA-$DEFAULT_DATA}"
export RBD_OUT="${RBD_OUT:-runs/${RBD_PRESET}-${SLURM_JOB_ID:-local}.h5}"
RBD_METRICS="${RBD_METRICS:-${RBD_OUT%.h5}.jsonl}"
# the job is named after the preset (a plain sbatch took the script's name; slurm/submit.sh
# names the log too)
if [ -n "${SLURM_JOB_ID:-}" ] && [ "${SLURM_JOB_NAME:-}" != "rbd-$RBD_PRESET" ]; then
  scontrol update JobId="$SLURM_JOB_ID" JobName="rbd-$RBD_PRESET" >/dev/null 2>&1 || true
fi
if [ -z "${RBD_BIN:-}" ]; then
  if [ -x "$RBD_HOME/.venv/bin/rbd-hpc" ]; then RBD_BIN="$RBD_HOME/.venv/bin/rbd-hpc"; else RBD_BIN=rbd-hpc; fi
fi
BIN_DIR="$(dirname "$(command -v "$RBD_BIN")")"
RBD_LAUNCHER="${RBD_LAUNCHER:-auto}"
RBD_SRUN_MPI="${RBD_SRUN_MPI:-pmi2}"
NTASKS="${SLURM_NTASKS:-1}"
export RBD_DATA="${RBD_DATA:-}"
[ -n "$RBD_DATA" ] || unset RBD_DATA
mkdir -p "$(dirname "$RBD_OUT")"

# srun --mpi=pmi2 needs an MPI whose PMI client speaks to Slurm; check once, cheaply
if [ "$RBD_LAUNCHER" = auto ]; then
  if srun --mpi="$RBD_SRUN_MPI" -n "$NTASKS" "$RBD_BIN" mpi-check --expect "$NTASKS" >/dev/null 2>&1; then
    RBD_LAUNCHER=srun
  else
    RBD_LAUNCHER=mpiexec
  fi
fi
case "$RBD_LAUNCHER" in
  srun)    LAUNCH=(srun --mpi="$RBD_SRUN_MPI" -n "$NTASKS" --kill-on-bad-exit=1) ;;
  mpiexec) MPIEXEC="$BIN_DIR/mpiexec"; [ -x "$MPIEXEC" ] || MPIEXEC=mpiexec
           LAUNCH=("$MPIEXEC" -n "$NTASKS") ;;
  *) echo "rbd-hpc: error: RBD_LAUNCHER=$RBD_LAUNCHER is not valid; use srun, mpiexec or auto" >&2; exit 2 ;;
esac

# shellcheck disable=SC2206  # the option strings are meant to be word-split
DEFAULTS=(${RBD_DEFAULT_ARGS:-} --threads "${SLURM_CPUS_PER_TASK:-1}")
EXTRA=(${RBD_ARGS:-})
if [[ " ${EXTRA[*]} " == *" --steps "* ]]; then  # the run length is one setting: RBD_ARGS wins
  KEPT=(); SKIP=0
  for word in "${DEFAULTS[@]}"; do
    if [ "$SKIP" = 1 ]; then SKIP=0; continue; fi
    if [ "$word" = --epochs ]; then SKIP=1; continue; fi
    KEPT+=("$word")
  done
  DEFAULTS=("${KEPT[@]}")
fi
if [ -f "$RBD_OUT" ]; then
  echo "rbd-hpc: resuming $RBD_OUT (job ${SLURM_JOB_ID:-local}, restart ${SLURM_RESTART_COUNT:-0})"
  CMD=("$RBD_BIN" train --preset "$RBD_PRESET" "${DEFAULTS[@]}" "${EXTRA[@]}" --resume "$RBD_OUT")
else
  CMD=("$RBD_BIN" train --preset "$RBD_PRESET" "${DEFAULTS[@]}" "${EXTRA[@]}" --out "$RBD_OUT")
fi
CMD+=(--metrics "$RBD_METRICS")
echo "rbd-hpc: preset $RBD_PRESET, data ${RBD_DATA:-(none: rbd-hpc decides)}, run file $RBD_OUT, metrics $RBD_METRICS"
echo "rbd-hpc: ${LAUNCH[*]} ${CMD[*]}"

# Preemption (the one protocol of docs/design.md, "Preemption"): Slurm signals this shell
# (--signal=B:USR1@T); pass it to every rank, which finishes its step, commits the run file
# and exits with code 3; then we requeue ourselves. Once a signal was forwarded, any failing
# exit of the launcher (srun may report its own code) also counts as preempted.
forward() { RBD_PREEMPTED=1; [ -n "${PID:-}" ] && kill -USR1 "$PID" 2>/dev/null; }
trap forward USR1 TERM
"${LAUNCH[@]}" "${CMD[@]}" &
PID=$!
while true; do
  wait "$PID"; RC=$?
  # wait returns >128 when a trapped signal interrupts it while the step still runs
  if [ "$RC" -gt 128 ] && kill -0 "$PID" 2>/dev/null; then continue; fi
  break
done
if [ "$RC" -eq 3 ] || { [ "$RC" -ne 0 ] && [ -n "${RBD_PREEMPTED:-}" ]; }; then
  echo "rbd-hpc: preempted; requeueing job ${SLURM_JOB_ID:-?}"
  [ -n "${SLURM_JOB_ID:-}" ] && scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$RC"
