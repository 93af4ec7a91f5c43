#!/bin/bash
# Fashion-MNIST runs of the paper's Table 1 (FC or CNN; RBD by default).
#   sbatch slurm/rbd_fmnist.sh                                  # FC, RBD, d=250, 100 epochs
#   sbatch --export=ALL,RBD_PRESET=cnn-fmnist,RBD_ARGS="--method fpd" slurm/rbd_fmnist.sh
#   bash slurm/submit.sh slurm/rbd_fmnist.sh --ntasks=4   (checks the request, names job and log)
# RBD_ARGS are appended to the script's options (slurm/launch.sh lists every input).
#SBATCH --job-name=rbd
#SBATCH --ntasks=2                 # SITE: MPI ranks
#SBATCH --cpus-per-task=1
#SBATCH --time=12:00:00            # SITE
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out        # the job is renamed rbd-$RBD_PRESET at start; slurm/submit.sh names the log so too

export RBD_PRESET="${RBD_PRESET:-fc-fmnist}"
export RBD_DEFAULT_ARGS="--method rbd --epochs 100 --augment"   # RBD_ARGS are appended to these
source "${RBD_HOME:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh"
