#!/bin/bash

# Parameters
#SBATCH --job-name=exp
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=<TMP>/logs/exp/submitit/%j/%j_0_log.out
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --time=60

# setup
export SUBMITIT_PREEMPT_SIGNAL=USR1
# manifest: <TMP>/logs/exp/manifest.json
# task 0: cool-name_2024.01.02_03.04: singularity exec --bind <TMP>/logs,/data --pwd <TMP>/logs/exp/cool-name_2024.01.02_03.04/code /img/hmsa.sif python train.py --x 1

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <TMP>/logs/exp/submitit/%j/%j_%t_log.out --kill-on-bad-exit=1 <PYTHON> -u -m submitit.core._submit <TMP>/logs/exp/submitit/%j
