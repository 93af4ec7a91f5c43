#!/bin/bash
# Submit one of this folder's sbatch scripts after checking that Slurm can ever run the
# request; the job and its log are named after the preset (rbd-PRESET-JOBID.out).
#   bash slurm/submit.sh slurm/rbd_resnet.sh [sbatch options…]
#   RBD_PRESET=cnn-fmnist bash slurm/submit.sh slurm/rbd_fmnist.sh --ntasks=4
# A request no node of the partition can satisfy (too many tasks or CPUs, a missing
# partition) would pend forever; here it is refused with Slurm's reason and what the
# partitions offer, and nothing is submitted. Prints the job id.
set -uo pipefail
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "rbd-hpc: error: usage: bash slurm/submit.sh SCRIPT [sbatch options]; got '${1:-}'" >&2
  exit 2
fi
script="$1"; shift
preset="${RBD_PRESET:-$(sed -n 's/^export RBD_PRESET="\${RBD_PRESET:-\(.*\)}"$/\1/p' "$script")}"
name="rbd-${preset:-run}"
if ! why=$(sbatch --test-only -J "$name" "$@" "$script" 2>&1); then
  offer=$(sinfo -h -o "%P %D nodes × %c CPUs" 2>/dev/null | paste -sd ';' | sed 's/;/; /g')
  echo "rbd-hpc: error: Slurm cannot run $script ${*:+with $* }as requested: ${why##*: }; the partitions offer: ${offer:-nothing (is Slurm reachable?)}" >&2
  exit 2
fi
exec sbatch --parsable -J "$name" --output="$name-%j.out" "$@" "$script"
