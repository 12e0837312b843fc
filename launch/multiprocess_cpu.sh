#!/usr/bin/env bash
# The multi-host path on one machine: N CPU processes, each with DEVICES fake devices,
# joined by jax.distributed over a loopback coordinator (gloo collectives).
#   launch/multiprocess_cpu.sh [--dry-run] [-n 2] [-d 4] [-p 12355] ENTRY [args...]
#   launch/multiprocess_cpu.sh -n 2 -d 4 train --gin_file=gin/runs/reference.gin --workdir=/tmp/mh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
procs=2 devices=4 port=12355
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    -n) procs=$2; shift 2 ;;
    -d) devices=$2; shift 2 ;;
    -p) port=$2; shift 2 ;;
    *) break ;;
  esac
done
if [ $# -lt 1 ]; then
  echo "usage: launch/multiprocess_cpu.sh [--dry-run] [-n N] [-d DEVICES] [-p PORT] ENTRY [args...]" >&2
  exit 2
fi
entry=$1
shift
cd "$here/.."
pids=()
for ((i = 0; i < procs; i++)); do
  cmd=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$devices"
       "DOREMI_COORDINATOR=127.0.0.1:$port" "DOREMI_NUM_PROCESSES=$procs" "DOREMI_PROCESS_ID=$i"
       python -m "doremi_jax.$entry" "$@")
  if [ "${DRY_RUN:-0}" = "1" ]; then
    run_cmd "${cmd[@]}"
  else
    "${cmd[@]}" &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
exit $status
