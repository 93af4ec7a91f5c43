#!/bin/bash
# RBD on ResNet-8 / CIFAR-10, d=500: the paper's Figure 3 setting, over N MPI tasks.
#   bash slurm/submit.sh slurm/rbd_resnet.sh        (checks the request, names job and log)
#   sbatch slurm/rbd_resnet.sh                      (from the repository root)
#   sbatch --ntasks=8 --export=ALL,RBD_DATA=/scratch/cifar10,RBD_ARGS="--epochs 20" slurm/rbd_resnet.sh
# Site-specific lines are marked SITE; every input can be overridden by environment
# (slurm/launch.sh lists them): RBD_PRESET (resnet8-cifar10) RBD_DATA RBD_OUT RBD_METRICS
# RBD_ARGS (appended to the options below) RBD_BIN RBD_LAUNCHER
#SBATCH --job-name=rbd
#SBATCH --ntasks=4                 # SITE: MPI ranks (one per GPU, IPU or CPU socket)
#SBATCH --cpus-per-task=1          # SITE: torch threads per rank follow this
#SBATCH --time=24:00:00            # SITE: your partition's limit
##SBATCH --partition=gpu           # SITE: uncomment and name your partition
##SBATCH --gres=gpu:4              # SITE: accelerators, with RBD_ARGS="--device cuda"
#SBATCH --signal=B:USR1@300        # preemption warning to this script 5 min before the end
#SBATCH --requeue                  # allow scontrol requeue after preemption
#SBATCH --open-mode=append         # a requeued job appends to the same log
#SBATCH --output=%x-%j.out        # the job is renamed rbd-$RBD_PRESET at start; slurm/submit.sh names the log so too

export RBD_PRESET="${RBD_PRESET:-resnet8-cifar10}"
export RBD_DEFAULT_ARGS="--method rbd --epochs 100 --augment"   # RBD_ARGS are appended to these
source "${RBD_HOME:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh"
