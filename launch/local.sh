#!/usr/bin/env bash
# Run an entry on this machine: launch/local.sh [--dry-run] ENTRY WORKDIR [gin args...]
#   launch/local.sh pipeline runs/demo --gin_file=gin/experiments/demo.gin
#   launch/local.sh train runs/ref --gin_file=gin/runs/reference.gin --gin.TRAIN_STEPS=100
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
if [ $# -lt 2 ]; then
  echo "usage: launch/local.sh [--dry-run] ENTRY WORKDIR [gin args...]" >&2
  exit 2
fi
entry=$1 workdir=$2
shift 2
cd "$here/.."
run_cmd python -m "doremi_jax.$entry" "$@" "--workdir=$workdir"
