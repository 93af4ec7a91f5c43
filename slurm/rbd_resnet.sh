#!/bin/bash
# RBD on ResNet-8 / CIFAR-10, d=500: the paper's Figure 3 setting, over N MPI tasks.
#   sbatch slurm/rbd_resnet.sh                      (from the repository root)
#   sbatch --ntasks=8 --export=ALL,RBD_DATA=/scratch/cifar10 slurm/rbd_resnet.sh
# Site-specific lines are marked SITE; every input can be overridden by environment:
#   RBD_PRESET (resnet8-cifar10)  RBD_DATA  RBD_OUT  RBD_ARGS  RBD_BIN  RBD_LAUNCHER
#SBATCH --job-name=rbd-resnet8
#SBATCH --ntasks=4                 # SITE: MPI ranks (one per GPU, IPU or CPU socket)
#SBATCH --cpus-per-task=1          # SITE: torch threads per rank follow this
#SBATCH --time=24:00:00            # SITE: your partition's limit
##SBATCH --partition=gpu           # SITE: uncomment and name your partition
##SBATCH --gres=gpu:4              # SITE: accelerators, with RBD_ARGS="--device cuda"
#SBATCH --signal=B:USR1@300        # preemption warning to this script 5 min before the end
#SBATCH --requeue                  # allow scontrol requeue after preemption
#SBATCH --open-mode=append         # a requeued job appends to the same log
#SBATCH --output=rbd-resnet8-%j.out

export RBD_PRESET="${RBD_PRESET:-resnet8-cifar10}"
export RBD_DATA="${RBD_DATA:-$HOME/data/cifar10}"                 # SITE: CIFAR-10 python batches
export RBD_OUT="${RBD_OUT:-runs/rbd-resnet8-${SLURM_JOB_ID:-local}.h5}"
export RBD_ARGS="${RBD_ARGS:---method rbd --d 500 --epochs 100 --augment --threads ${SLURM_CPUS_PER_TASK:-1}}"
source "${RBD_HOME:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh"
