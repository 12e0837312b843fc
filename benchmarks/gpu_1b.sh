#!/usr/bin/env bash
# The accelerator target of issue #9: the 1B model in bfloat16 on one GPU, a few
# variants in one go, most important first. Each variant is its own process (a failed
# compile or an out-of-memory does not take the others with it) and writes its JSON to
# $OUT (default: ./out/gpu_1b) as soon as it ends.
#
#   bash benchmarks/gpu_1b.sh [main|tune|large]   # needs jax with CUDA, flax, optax, orbax, gin
#
# Variant names: <attention>_<remat>_b<batch>[_<xla flags>]. `main` (the default):
# attention and remat at batch 16; `tune`: batch 32 and XLA's GPU flags; `large`: batch 48
# and cuBLASLt. Results of 2026-11-28 on one H200: benchmarks/results/h200_2026-11-28/.
set -u
OUT=${OUT:-out/gpu_1b}
PER_RUN=${PER_RUN:-160}   # seconds one variant may take (two compiles of the 1B model)
LOGS=${LOGS:-$OUT/logs}  # full logs; each variant's tail is printed
mkdir -p "$OUT" "$LOGS"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 | tee "$OUT/nvidia_smi.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee "$OUT/versions.txt"

run() {
  local name=$1; shift
  echo "=== $name ${XLA_FLAGS:-}"
  timeout "$PER_RUN" python3 -m doremi_jax.bench --gin_file=gin/bench_gpu_1b.gin "$@" \
    --json "$OUT/$name.json" > "$LOGS/$name.log" 2>&1
  echo "exit $?"
  tail -n 12 "$LOGS/$name.log"
}

case "${1:-main}" in
  main)
    run cudnn_dots_b16 --gin.BenchConfig.batch_size=16
    run cudnn_none_b16 --gin.BenchConfig.batch_size=16 --gin.TransformerConfig.remat_policy="'none'"
    run xla_dots_b16 --gin.BenchConfig.batch_size=16 --gin.TransformerConfig.attention_implementation="'xla'"
    ;;
  tune)
    run cudnn_dots_b32
    XLA_FLAGS=--xla_gpu_enable_triton_gemm=false run cudnn_dots_b16_notriton --gin.BenchConfig.batch_size=16
    XLA_FLAGS=--xla_gpu_enable_triton_gemm=false run cudnn_dots_b32_notriton
    XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true run cudnn_dots_b16_lhs --gin.BenchConfig.batch_size=16
    ;;
  large)
    run cudnn_dots_b48 --gin.BenchConfig.batch_size=48
    XLA_FLAGS=--xla_gpu_enable_cublaslt=true run cudnn_dots_b32_cublaslt
    ;;
  *) echo "unknown variant set ${1}: expected main, tune or large" >&2; exit 2 ;;
esac
