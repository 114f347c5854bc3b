#!/bin/bash

# Parameters
#SBATCH --account=acc
#SBATCH --array=0-3%2
#SBATCH --constraint=a100
#SBATCH --dependency=afterok:1
#SBATCH --exclusive
#SBATCH --gpus-per-node=4
#SBATCH --job-name=exp
#SBATCH --mail-type=END
#SBATCH --mail-user=me@x.org
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=<TMP>/logs/exp/submitit/%A_%a/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --requeue
#SBATCH --reservation=r
#SBATCH --signal=USR1@300
#SBATCH --time=1-00:00:00

# setup
export SUBMITIT_PREEMPT_SIGNAL=USR1
# manifest: <TMP>/logs/exp/manifest.json
# task 0: cool-name_2024.01.02_03.04: python train.py --lr 0.01 --name 'a b'
# task 1: cool-name_2024.01.02_03.04: python train.py --lr 0.01 --name '$(x)'
# task 2: cool-name_2024.01.02_03.04: python train.py --lr 0.02 --name 'a b'
# task 3: cool-name_2024.01.02_03.04: python train.py --lr 0.02 --name '$(x)'

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <TMP>/logs/exp/submitit/%A_%a/%A_%a_%t_log.out --kill-on-bad-exit=1 <PYTHON> -u -m submitit.core._submit <TMP>/logs/exp/submitit/%j
