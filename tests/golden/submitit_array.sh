#!/bin/bash

# Parameters
#SBATCH --account=proj-42
#SBATCH --array=0-3%2
#SBATCH --chdir=<REPO>
#SBATCH --constraint='a100|h100'
#SBATCH --cpus-per-task=6
#SBATCH --error='<TMP>/out dir'"'"'s "q"/golden/submitit/slurm-20250101-000000-1/%A_%a_0_log.err'
#SBATCH --gpus-per-node=1
#SBATCH --job-name=cnnstress-golden
#SBATCH --mail-type=END
#SBATCH --mem=1536MB
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output='<TMP>/out dir'"'"'s "q"/golden/submitit/slurm-20250101-000000-1/%A_%a_0_log.out'
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --requeue
#SBATCH --reservation=res1
#SBATCH --signal=USR2@90
#SBATCH --time=90
#SBATCH --wckey=submitit

# setup
module load cuda/12.1
echo "hello $USER"

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output '<TMP>/out dir'"'"'s "q"/golden/submitit/slurm-20250101-000000-1/%A_%a_%t_log.out' --error '<TMP>/out dir'"'"'s "q"/golden/submitit/slurm-20250101-000000-1/%A_%a_%t_log.err' <PYTHON> -u -m submitit.core._submit '<TMP>/out dir'"'"'s "q"/golden/submitit/slurm-20250101-000000-1'
