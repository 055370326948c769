#!/bin/bash

# Parameters
#SBATCH --account=proj-42
#SBATCH --chdir=<REPO>
#SBATCH --cpus-per-task=3
#SBATCH --dependency=afterany:101:102
#SBATCH --error='<TMP>/out dir'"'"'s "q"/golden/submitit/slurm-20250101-000000-1/%j_0_log.err'
#SBATCH --job-name=cnnstress-golden-gather
#SBATCH --mail-type=END
#SBATCH --mem=4GB
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output='<TMP>/out dir'"'"'s "q"/golden/submitit/slurm-20250101-000000-1/%j_0_log.out'
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --reservation=res1
#SBATCH --signal=USR2@90
#SBATCH --time=20
#SBATCH --wckey=submitit

# setup
module load cuda/12.1
echo "hello $USER"

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output '<TMP>/out dir'"'"'s "q"/golden/submitit/slurm-20250101-000000-1/%j_%t_log.out' --error '<TMP>/out dir'"'"'s "q"/golden/submitit/slurm-20250101-000000-1/%j_%t_log.err' <PYTHON> -u -m submitit.core._submit '<TMP>/out dir'"'"'s "q"/golden/submitit/slurm-20250101-000000-1'
