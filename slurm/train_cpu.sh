#!/bin/bash
# The tiny model on CPU with 2 ranks over gloo: what the test suite submits to its single-node cluster, and a
# quick check of a new cluster setup:   sbatch slurm/train_cpu.sh
# Configuration: environment variables documented in slurm/launch.sh.
#SBATCH --job-name=patentclip-cpu
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=USR1@60
#SBATCH --output=slurm-%x-%j.out
TRAIN_ARGS=(--model patentclip-tiny --precision fp32 --zero-stage 1 --device cpu
            --batch-size "${PATENTCLIP_BATCH_SIZE:-8}" --epochs "${PATENTCLIP_EPOCHS:-2}"
            --lr "${PATENTCLIP_LR:-1e-3}" --warmup "${PATENTCLIP_WARMUP:-5}" --workers "${PATENTCLIP_WORKERS:-1}"
            --save-every-n-steps "${PATENTCLIP_SAVE_EVERY:-0}" --log-every-n-steps 5)
source "${PATENTCLIP_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/launch.sh"
