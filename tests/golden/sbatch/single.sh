#!/bin/bash

# Parameters
#SBATCH --cpus-per-task=2
#SBATCH --job-name=exp
#SBATCH --mem=4G
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=<TMP>/logs/exp/submitit/%j/%j_0_log.out
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --time=30

# setup
export SUBMITIT_PREEMPT_SIGNAL=USR1
# manifest: <TMP>/logs/exp/manifest.json
# task 0: cool-name_2024.01.02_03.04: python train.py --lr 0.01 --result_dir <TMP>/logs/exp/cool-name_2024.01.02_03.04

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <TMP>/logs/exp/submitit/%j/%j_%t_log.out --kill-on-bad-exit=1 <PYTHON> -u -m submitit.core._submit <TMP>/logs/exp/submitit/%j
