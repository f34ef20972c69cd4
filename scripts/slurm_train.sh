#!/usr/bin/env bash
# Multi-node training under SLURM: one torchrun per node, rendezvous on the first node.
#
#   sbatch --nodes=2 scripts/slurm_train.sh config/voc2012/pspnet50_teacher.yaml [key=value ...]
#
# SLURM sends SIGTERM before killing a job (see --signal); train.py then writes model/last.pth and exits, and
# resubmitting the same command continues the run: train.resume=auto is on from the first launch (overrides after
# the config may set it otherwise). tools.launch is torchrun with a store per restart round, one-line rendezvous
# errors and workers that stop with it (docs/RELIABILITY.md, "Several processes and nodes"); MAX_RESTARTS=N restarts
# the group after a failed worker.
#SBATCH --job-name=segkd
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --signal=TERM@120
#SBATCH --output=slurm-%j.out
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: sbatch scripts/slurm_train.sh CONFIG [key=value ...]" >&2
  exit 2
fi
CONFIG=$1
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAX_RESTARTS=${MAX_RESTARTS:-0}
PYTHON=${PYTHON:-python}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PORT:-29500}

# srun starts one task per node; each runs tools.launch (torchrun), which starts GPUS_PER_NODE training processes.
srun --kill-on-bad-exit=1 "$PYTHON" -m tools.launch \
  --nnodes="$SLURM_JOB_NUM_NODES" --nproc_per_node="$GPUS_PER_NODE" --max-restarts="$MAX_RESTARTS" \
  --rdzv-id="$SLURM_JOB_ID" --rdzv-backend=c10d --rdzv-endpoint="$HEAD_NODE:$PORT" \
  train.py --config "$CONFIG" train.resume=auto "$@"
