#!/bin/bash
# ViT-B-32 from open_clip's openai weights, DesignCLIP recipe, DeepSpeed ZeRO-1 bf16, one task per GPU,
# shards and checkpoints in S3:   sbatch -p gpu -A myproject -N 2 slurm/train_vitb.sh
# Configuration: environment variables documented in slurm/launch.sh. Fetch the weights first on a login node
# (compute nodes are offline, HF_HUB_OFFLINE=1), with the jobs' HF_HOME:
#   python -c "import open_clip; open_clip.create_model_and_transforms('ViT-B-32', pretrained='openai')"
#SBATCH --job-name=patentclip-vitb
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=USR1@300
#SBATCH --output=slurm-%x-%j.out
TRAIN_ARGS=(--model ViT-B-32 --pretrained openai --recipe designclip --precision bf16 --zero-stage 1
            --batch-size "${PATENTCLIP_BATCH_SIZE:-128}" --epochs "${PATENTCLIP_EPOCHS:-10}"
            --lr "${PATENTCLIP_LR:-5e-6}" --warmup "${PATENTCLIP_WARMUP:-500}" --wd 0.2
            --workers "${PATENTCLIP_WORKERS:-6}" --save-every-n-steps "${PATENTCLIP_SAVE_EVERY:-1000}"
            --keep-checkpoints "${PATENTCLIP_KEEP:-3}" --gather-with-grad --local-loss)
source "${PATENTCLIP_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/launch.sh"
