#!/usr/bin/env bash
# Runs the same `jaxtok train` on every worker of a Cloud TPU VM slice.
#
# Usage:
#   tools/launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
# Example:
#   tools/launch/tpu_pod.sh my-v5e-64 us-west4-a configs/tokenizers/llamagen_vq16.py \
#       gs://my-bucket/runs/vq16 --config.train.batch_size=256
#
# Each worker needs jaxtok installed (set JAXTOK_SETUP to a command that does it, run on every
# worker first; default: `pip install -e .` in JAXTOK_DIR) and the repository at JAXTOK_DIR
# (default ~/jaxtok). On TPU VMs jax.distributed.initialize() needs no arguments: the
# coordinator, process count and index come from the TPU metadata, so every worker runs the
# identical command. WORKDIR must be shared by all workers (a gs:// bucket): Orbax writes the
# checkpoint from every process and the trainer auto-resumes from it after a preemption.
set -euo pipefail

if [[ $# -lt 4 ]]; then
  sed -n '2,15p' "$0" >&2
  exit 2
fi
tpu_name=$1 zone=$2 config=$3 workdir=$4
shift 4
dir=${JAXTOK_DIR:-~/jaxtok}
setup=${JAXTOK_SETUP:-"cd $dir && python3 -m pip install -q -e ."}
overrides=$(printf ' %q' "$@")

gcloud compute tpus tpu-vm ssh "$tpu_name" --zone "$zone" --worker=all --command "
  set -e
  $setup
  cd $dir
  python3 -m jaxtok.cli train --config $(printf %q "$config") --workdir $(printf %q "$workdir")$overrides
"
