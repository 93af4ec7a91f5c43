#!/bin/bash
# Fashion-MNIST runs of the paper's Table 1 (FC or CNN; RBD by default).
#   sbatch slurm/rbd_fmnist.sh                                  # FC, RBD, d=250, 100 epochs
#   sbatch --export=ALL,RBD_PRESET=cnn-fmnist,RBD_ARGS="--method fpd --epochs 100" slurm/rbd_fmnist.sh
#SBATCH --job-name=rbd-fmnist
#SBATCH --ntasks=2                 # SITE: MPI ranks
#SBATCH --cpus-per-task=1
#SBATCH --time=12:00:00            # SITE
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=rbd-fmnist-%j.out

export RBD_PRESET="${RBD_PRESET:-fc-fmnist}"
export RBD_DATA="${RBD_DATA:-/usr/share/datasets/fashion-mnist}"  # SITE: IDX files
export RBD_OUT="${RBD_OUT:-runs/${RBD_PRESET}-${SLURM_JOB_ID:-local}.h5}"
export RBD_ARGS="${RBD_ARGS:---method rbd --epochs 100 --augment --threads ${SLURM_CPUS_PER_TASK:-1}}"
source "${RBD_HOME:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh"
