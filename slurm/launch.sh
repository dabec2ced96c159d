#!/bin/bash
# Shared body of the patentclip SLURM scripts (sourced by train_*.sh inside the allocation; not submitted itself).
#
# Every site-specific value comes from the environment (defaults below) or from sbatch options
# (sbatch -p PARTITION -A ACCOUNT -N NODES --time ...; or SBATCH_PARTITION / SBATCH_ACCOUNT variables).
# Nothing in the scripts needs editing.
#
#   PATENTCLIP_HOME          checkout with .venv (default: the submit directory)
#   PATENTCLIP_PYTHON        python of the environment (default: $PATENTCLIP_HOME/.venv/bin/python)
#   PATENTCLIP_BUCKET        object-store prefix (default: s3://patentclip)
#   PATENTCLIP_TRAIN_DATA    training shards (default: $PATENTCLIP_BUCKET/shards/train/train-{000000..000099}.tar)
#   PATENTCLIP_VAL_DATA      validation shards (default: none)
#   PATENTCLIP_NAME          run name (default: <job name>-<job id>: stable across requeues)
#   PATENTCLIP_LOGS          log folder on a shared filesystem (default: $PATENTCLIP_HOME/logs)
#   PATENTCLIP_CHECKPOINT_DIR  checkpoints (default: $PATENTCLIP_BUCKET/checkpoints/$PATENTCLIP_NAME)
#   PATENTCLIP_EXTRA_ARGS    more patentclip-train flags, appended last (they override the defaults)
#   AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION   object-store access
#   MASTER_PORT              rendezvous port (default: derived from the job id)
#   HF_HOME / HF_HUB_CACHE   model-hub cache with the starting weights, on a shared filesystem (default: ~/.cache/huggingface)
#   HF_HUB_OFFLINE           default 1: compute nodes read starting weights (--pretrained, --pretrained-image,
#                            --pretrained-text) from the cache only. Fetch them beforehand on a login node, e.g.
#                              python -c "import open_clip; open_clip.create_model_and_transforms('ViT-L-14', pretrained='openai')"
#                            A run whose weights are not cached stops at once and prints the exact command.
#
# The ranks stop at the next step boundary on the warning signal (#SBATCH --signal=USR1@...), on SIGTERM
# (preemption) or scancel --signal=USR1, write a checkpoint, leave the marker file <logs>/<name>/requeue and
# exit with code 3; this script then requeues the job (scontrol requeue), which starts again with the same job
# id and continues with --resume latest.
set -uo pipefail

PATENTCLIP_HOME="${PATENTCLIP_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
PATENTCLIP_PYTHON="${PATENTCLIP_PYTHON:-$PATENTCLIP_HOME/.venv/bin/python}"
PATENTCLIP_BUCKET="${PATENTCLIP_BUCKET:-s3://patentclip}"
DEFAULT_TRAIN_SHARDS='/shards/train/train-{000000..000099}.tar'  # quoted: a brace inside ${..:-..} ends it
PATENTCLIP_TRAIN_DATA="${PATENTCLIP_TRAIN_DATA:-$PATENTCLIP_BUCKET$DEFAULT_TRAIN_SHARDS}"
PATENTCLIP_NAME="${PATENTCLIP_NAME:-${SLURM_JOB_NAME:-patentclip}-${SLURM_JOB_ID:-0}}"
PATENTCLIP_LOGS="${PATENTCLIP_LOGS:-$PATENTCLIP_HOME/logs}"
PATENTCLIP_CHECKPOINT_DIR="${PATENTCLIP_CHECKPOINT_DIR:-$PATENTCLIP_BUCKET/checkpoints/$PATENTCLIP_NAME}"

export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export MASTER_PORT="${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # starting weights from the cache only (fetched on a login node)

VAL_ARGS=()
if [ -n "${PATENTCLIP_VAL_DATA:-}" ]; then VAL_ARGS=(--val-data "$PATENTCLIP_VAL_DATA"); fi
# shellcheck disable=SC2206
EXTRA=(${PATENTCLIP_EXTRA_ARGS:-})

echo "[patentclip] job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_NNODES:-1} node(s), ${SLURM_NTASKS:-1} task(s), master ${MASTER_ADDR}:${MASTER_PORT}, run ${PATENTCLIP_NAME}"

srun --kill-on-bad-exit=1 "$PATENTCLIP_PYTHON" -u -m patentclip.launch.train \
    --train-data "$PATENTCLIP_TRAIN_DATA" "${VAL_ARGS[@]}" \
    --logs "$PATENTCLIP_LOGS" --name "$PATENTCLIP_NAME" --checkpoint-dir "$PATENTCLIP_CHECKPOINT_DIR" \
    --resume latest "${TRAIN_ARGS[@]}" "${EXTRA[@]}" &
SRUN_PID=$!
wait "$SRUN_PID"
rc=$?
MARKER="$PATENTCLIP_LOGS/$PATENTCLIP_NAME/requeue"
if [ -f "$MARKER" ] || [ "$rc" -eq 3 ]; then
    echo "[patentclip] $(cat "$MARKER" 2>/dev/null || echo 'exit code 3')"
    rm -f "$MARKER"
    echo "[patentclip] stopped with a checkpoint: requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
echo "[patentclip] training exited with code $rc"
exit "$rc"
