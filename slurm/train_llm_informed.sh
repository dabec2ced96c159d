#!/bin/bash
# The LLM-informed paper's setting: a timm image backbone from timm's ImageNet weights against OpenAI CLIP
# ViT-B-32's text tower, kept frozen (--recipe llm-informed), DeepSpeed ZeRO-1 bf16, one task per GPU:
#
#   sbatch -p gpu -A myproject -N 1 slurm/train_llm_informed.sh
#   PATENTCLIP_MODEL=patentclip-resnet50 sbatch ... slurm/train_llm_informed.sh
#
# PATENTCLIP_MODEL: patentclip-swinv2-b (default), patentclip-vit-b-32, patentclip-efficientnet-b0,
# patentclip-resnet50 (plugins/models.py). Other configuration: environment variables of slurm/launch.sh.
#
# Compute nodes read both towers' weights from the model-hub cache only (HF_HUB_OFFLINE=1). Fetch them once on a
# login node, with the jobs' HF_HOME (a shared filesystem):
#
#   python -c "import timm; timm.create_model('swinv2_base_window8_256', pretrained=True)"     # the backbone's
#   python -c "import open_clip; open_clip.create_model_and_transforms('ViT-B-32', pretrained='openai')"
#
# (a run with a weight missing stops at start and prints the exact command for it).
#SBATCH --job-name=patentclip-llm
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=USR1@600
#SBATCH --output=slurm-%x-%j.out
TRAIN_ARGS=(--model "${PATENTCLIP_MODEL:-patentclip-swinv2-b}" --pretrained-image --pretrained-text ViT-B-32:openai
            --recipe llm-informed --precision bf16 --zero-stage 1
            --batch-size "${PATENTCLIP_BATCH_SIZE:-128}" --epochs "${PATENTCLIP_EPOCHS:-10}"
            --lr "${PATENTCLIP_LR:-1e-4}" --warmup "${PATENTCLIP_WARMUP:-500}" --wd 0.05
            --workers "${PATENTCLIP_WORKERS:-6}" --save-every-n-steps "${PATENTCLIP_SAVE_EVERY:-1000}"
            --keep-checkpoints "${PATENTCLIP_KEEP:-3}" --gather-with-grad --local-loss)
source "${PATENTCLIP_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/launch.sh"
