#!/bin/bash
# A job array sweeping d (the paper's accuracy-against-d experiment): one run file per d.
#   sbatch slurm/sweep_d.sh
#   sbatch --array=0-3 --export=ALL,RBD_D_VALUES="50 100 250 500" slurm/sweep_d.sh
#SBATCH --job-name=rbd-sweep-d
#SBATCH --array=0-4
#SBATCH --ntasks=1                 # SITE: ranks per array task
#SBATCH --cpus-per-task=1
#SBATCH --time=12:00:00            # SITE
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=rbd-sweep-d-%A_%a.out

read -r -a D_VALUES <<< "${RBD_D_VALUES:-50 100 250 500 1000}"
D="${D_VALUES[${SLURM_ARRAY_TASK_ID:-0}]:?array index beyond RBD_D_VALUES}"
export RBD_PRESET="${RBD_PRESET:-fc-fmnist}"
export RBD_OUT="${RBD_OUT_DIR:-runs/sweep-d}/d${D}.h5"
export RBD_DEFAULT_ARGS="--method rbd --epochs 10"
export RBD_ARGS="${RBD_ARGS:-} --d $D"
source "${RBD_HOME:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh"
