#!/bin/bash
# ViT-L-14 from open_clip's openai weights, DesignCLIP recipe, DeepSpeed ZeRO-1 bf16, one task per GPU,
# shards and checkpoints in S3. Submit from the patentclip checkout (site values as sbatch options):
#
#   sbatch -p gpu -A myproject -N 4 slurm/train_vitl.sh
#
# Configuration: environment variables documented in slurm/launch.sh; PATENTCLIP_EXTRA_ARGS overrides any
# training flag (e.g. "--epochs 20 --batch-size 48").
#
# Compute nodes read the openai weights from the model-hub cache only (HF_HUB_OFFLINE=1). Fetch them once on a
# login node, with the same HF_HOME (a shared filesystem) as the jobs:
#
#   python -c "import open_clip; open_clip.create_model_and_transforms('ViT-L-14', pretrained='openai')"
#   (or: hf download timm/vit_large_patch14_clip_224.openai open_clip_model.safetensors)
#
# The openai weights were trained with QuickGELU: the run takes it over (--force-quick-gelu, in params.txt).
#SBATCH --job-name=patentclip-vitl
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=USR1@600
#SBATCH --output=slurm-%x-%j.out
TRAIN_ARGS=(--model ViT-L-14 --pretrained openai --recipe designclip --precision bf16 --zero-stage 1
            --batch-size "${PATENTCLIP_BATCH_SIZE:-64}" --epochs "${PATENTCLIP_EPOCHS:-10}"
            --lr "${PATENTCLIP_LR:-1e-5}" --warmup "${PATENTCLIP_WARMUP:-1000}" --wd 0.2
            --workers "${PATENTCLIP_WORKERS:-6}" --save-every-n-steps "${PATENTCLIP_SAVE_EVERY:-1000}"
            --keep-checkpoints "${PATENTCLIP_KEEP:-3}" --gather-with-grad --local-loss)
source "${PATENTCLIP_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/launch.sh"
