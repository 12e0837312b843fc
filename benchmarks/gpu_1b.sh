#!/usr/bin/env bash
# The accelerator target of issue #9: the 1B model in bfloat16 on one GPU, a few
# variants in one go, most important first. Each variant is its own process (a failed
# compile or an out-of-memory does not take the others with it) and writes its JSON to
# $OUT (default: ./out/gpu_1b) as soon as it ends.
#
#   bash benchmarks/gpu_1b.sh            # needs jax with CUDA, flax, optax, orbax, gin
#
# Variant names: <attention>_<remat>_b<batch>.
set -u
OUT=${OUT:-out/gpu_1b}
PER_RUN=${PER_RUN:-160}   # seconds one variant may take (two compiles of the 1B model)
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 | tee "$OUT/nvidia_smi.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee "$OUT/versions.txt"

run() {
  local name=$1; shift
  echo "=== $name"
  timeout "$PER_RUN" python3 -m doremi_jax.bench --gin_file=gin/bench_gpu_1b.gin "$@" \
    --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  echo "exit $?"
  tail -n 12 "$OUT/$name.log"
}

run cudnn_dots_b16
run cudnn_none_b16 --gin.TransformerConfig.remat_policy="'none'"
run xla_dots_b16 --gin.TransformerConfig.attention_implementation="'xla'"
