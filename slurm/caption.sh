#!/bin/bash
# Captions of every drawing with a captioner and a language model (patentclip-caption, docs/captioning.md), as a
# SLURM job array: each array task is one worker with one GPU. The tasks split the drawings into parts, help each
# other with the parts left over, and the last one to finish writes $PATENTCLIP_CAPTION_OUT/captions.jsonl (the
# file `patentclip-shards build --captions` joins) and caption_report.txt. Submit from the patentclip checkout,
# site values as sbatch options, the array size as you like:
#
#   PATENTCLIP_CAPTION_INPUT=/data/dp2/manifest.jsonl PATENTCLIP_CAPTION_OUT=/shared/captions/v1 \
#   PATENTCLIP_CAPTIONER_MODEL=/models/llava-1.5-7b-hf PATENTCLIP_LLM_MODEL=/models/Qwen2.5-7B-Instruct \
#   sbatch -p gpu -A myproject --array=0-15 slurm/caption.sh
#
# Configuration (environment; nothing in this script needs editing):
#   PATENTCLIP_HOME             checkout with .venv (default: the submit directory)
#   PATENTCLIP_PYTHON           python of the environment (default: $PATENTCLIP_HOME/.venv/bin/python); the vllm
#                               engine needs an environment with vLLM installed
#   PATENTCLIP_CAPTION_INPUT    input file (required); several: PATENTCLIP_CAPTION_ARGS="--input a --input b"
#   PATENTCLIP_CAPTION_FORMAT   manifest (default), deeppatent2, deeppatent, csv
#   PATENTCLIP_CAPTION_OUT      run folder on a filesystem every node sees (required)
#   PATENTCLIP_CAPTION_ENGINE   engine of both stages: vllm (default), transformers, http
#   PATENTCLIP_CAPTIONER_MODEL  the vision-language model; "none": no captioner
#   PATENTCLIP_LLM_MODEL        the language model; "none": the captioner's description is the caption
#   PATENTCLIP_CAPTION_URL      http engine: the endpoint's OpenAI base URL (both stages)
#   PATENTCLIP_CAPTION_ARGS     more patentclip-caption run flags, appended last (they override the defaults), e.g.
#                               "--num-captions 20 --batch-size 256 --llm-arg gpu_memory_utilization=0.45"
#   OPENAI_API_KEY              http engine: the API key, if the endpoint wants one (never written anywhere)
#
# Worker i of n comes from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT. On the warning signal (#SBATCH --signal),
# on SIGTERM (preemption) or scancel --signal=USR1 the worker finishes its batch, journals it and exits with 3;
# this script then requeues the array task, which continues where it stopped. A killed task (SIGKILL, node
# failure) loses at most its current batch: resubmit, or let the other tasks take its parts.
#SBATCH --job-name=patentclip-caption
#SBATCH --array=0-3
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=USR1@120
#SBATCH --output=slurm-%x-%A_%a.out
set -uo pipefail

PATENTCLIP_HOME="${PATENTCLIP_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
PATENTCLIP_PYTHON="${PATENTCLIP_PYTHON:-$PATENTCLIP_HOME/.venv/bin/python}"
: "${PATENTCLIP_CAPTION_INPUT:?set PATENTCLIP_CAPTION_INPUT to the manifest (or importer input) to caption}"
: "${PATENTCLIP_CAPTION_OUT:?set PATENTCLIP_CAPTION_OUT to a run folder on a shared filesystem}"
ENGINE="${PATENTCLIP_CAPTION_ENGINE:-vllm}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"

STAGES=()
for stage in CAPTIONER LLM; do
    flag=$(echo "$stage" | tr 'A-Z' 'a-z')
    var="PATENTCLIP_${stage}_MODEL"
    model="${!var:-}"
    if [ "$model" = "none" ]; then
        STAGES+=("--$flag-engine" none)
    elif [ -n "$model" ]; then
        STAGES+=("--$flag-engine" "$ENGINE" "--$flag-model" "$model")
        if [ -n "${PATENTCLIP_CAPTION_URL:-}" ]; then STAGES+=("--$flag-url" "$PATENTCLIP_CAPTION_URL"); fi
    else
        echo "[patentclip-caption] set $var (a model, or none)" >&2
        exit 2
    fi
done
# shellcheck disable=SC2206
EXTRA=(${PATENTCLIP_CAPTION_ARGS:-})

echo "[patentclip-caption] array task ${SLURM_ARRAY_TASK_ID:-?} of ${SLURM_ARRAY_TASK_COUNT:-?} (job ${SLURM_JOB_ID:-?}, restart ${SLURM_RESTART_COUNT:-0}) on $(hostname): $ENGINE, out $PATENTCLIP_CAPTION_OUT"

srun --kill-on-bad-exit=1 "$PATENTCLIP_PYTHON" -u -m patentclip.shards.captioning.cli run \
    --format "${PATENTCLIP_CAPTION_FORMAT:-manifest}" --input "$PATENTCLIP_CAPTION_INPUT" \
    --out "$PATENTCLIP_CAPTION_OUT" "${STAGES[@]}" "${EXTRA[@]}" &
SRUN_PID=$!
wait "$SRUN_PID"
rc=$?
if [ "$rc" -eq 3 ]; then
    echo "[patentclip-caption] stopped after a complete batch: requeueing ${SLURM_JOB_ID}"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
echo "[patentclip-caption] worker exited with code $rc"
exit "$rc"
