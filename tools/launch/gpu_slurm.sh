#!/usr/bin/env bash
# Runs `jaxtok train` on a Slurm GPU cluster: one process per GPU, every node.
#
# Usage (submit with sbatch, or run inside an salloc allocation):
#   sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=8 \
#       tools/launch/gpu_slurm.sh CONFIG WORKDIR [--config.x=y ...]
#
# Each task is one JAX process owning one GPU. The first node's address becomes the
# coordinator (port JAXTOK_COORDINATOR_PORT, default 12345); process count and index come from
# Slurm (SLURM_NTASKS, SLURM_PROCID) and reach the trainer as JAX_NUM_PROCESSES / JAX_PROCESS_ID.
# WORKDIR must be on a file system every node sees. The environment (a venv with jaxtok and
# CUDA jax) must be active in the submitting shell, or set JAXTOK_PYTHON.
#SBATCH --job-name=jaxtok
#SBATCH --exclusive
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
python=${JAXTOK_PYTHON:-python3}
# The whole list is read (no `| head`): with pipefail, head's early exit would fail the script
# by SIGPIPE whenever scontrol is still writing.
nodes=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes%%$'\n'*}
export JAX_COORDINATOR_ADDRESS="$head_node:${JAXTOK_COORDINATOR_PORT:-12345}"

# One task per GPU: each sees only its own device, so jax numbers it 0 in every process.
srun --kill-on-bad-exit=1 bash -c '
  export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID
  export JAX_NUM_PROCESSES=$SLURM_NTASKS JAX_PROCESS_ID=$SLURM_PROCID
  exec "$0" -m jaxtok.cli train --config "$1" --workdir "$2" "${@:3}"
' "$python" "$config" "$workdir" "$@"
