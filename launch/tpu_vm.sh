#!/usr/bin/env bash
# Cloud TPU VMs (single host or pod slice) through `gcloud compute tpus tpu-vm`.
#
#   launch/tpu_vm.sh [--dry-run] create
#   launch/tpu_vm.sh [--dry-run] setup                      # copy this checkout, install on every host
#   launch/tpu_vm.sh [--dry-run] run ENTRY RUN_NAME [gin args...]
#   launch/tpu_vm.sh [--dry-run] sweep ENTRY RUN_NAME 'NAME=v1,v2' ['NAME=...' ...] -- [gin args...]
#   launch/tpu_vm.sh [--dry-run] logs RUN_NAME
#   launch/tpu_vm.sh [--dry-run] delete
#
# Settings from the environment (or flags --name/--zone/--type/--workdir_root):
#   TPU_NAME (doremi), ZONE (us-central2-b), ACCELERATOR_TYPE (v4-8),
#   RUNTIME_VERSION (tpu-ubuntu2204-base), WORKDIR_ROOT ($HOME/doremi_runs: a local folder
#   on every host, or a gcsfuse mount of your bucket), JAX_TPU_SPEC (jax[tpu]).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"

TPU_NAME=${TPU_NAME:-doremi}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-8}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
WORKDIR_ROOT=${WORKDIR_ROOT:-'$HOME/doremi_runs'}
JAX_TPU_SPEC=${JAX_TPU_SPEC:-jax[tpu]}
REMOTE_DIR=doremi_jax  # relative to the home folder, where scp and ssh start

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --name) TPU_NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --type) ACCELERATOR_TYPE=$2; shift 2 ;;
    --workdir_root) WORKDIR_ROOT=$2; shift 2 ;;
    *) break ;;
  esac
done

usage() { sed -n '2,16p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
command=$1
shift

tpu() { run_cmd gcloud compute tpus tpu-vm "$@" --zone="$ZONE"; }
on_all_hosts() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }
check_entry() {
  [[ "$1" =~ ^[a-z_.]+$ ]] || { echo "error: entry '$1' is not a doremi_jax module name" >&2; exit 2; }
}

# One remote command line for an entry; every host runs it, jax.distributed finds the
# others on its own on TPU (DOREMI_DISTRIBUTED=1), process 0 writes the reports.
# The run's folder name is shell-quoted; WORKDIR_ROOT is left to the remote shell to
# expand (its default names $HOME there).
remote_entry() {
  local entry=$1 name=$2
  shift 2
  local args workdir
  args=$(printf '%q ' "$@")
  workdir="$WORKDIR_ROOT/$(printf '%q' "$name")"
  echo "cd $REMOTE_DIR && mkdir -p $workdir && DOREMI_DISTRIBUTED=1 nohup python -m doremi_jax.$entry ${args}--workdir=$workdir > $workdir/log.txt 2>&1 &"
}

case "$command" in
  create)
    tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
    ;;
  setup)
    tpu scp --recurse "$here/.." "$TPU_NAME:$REMOTE_DIR" --worker=all
    on_all_hosts "cd $REMOTE_DIR && pip install -U pip && pip install '$JAX_TPU_SPEC' && pip install -e ."
    ;;
  run)
    [ $# -ge 2 ] || usage
    entry=$1 name=$2
    check_entry "$entry"
    shift 2
    on_all_hosts "$(remote_entry "$entry" "$name" "$@")"
    ;;
  sweep)
    [ $# -ge 3 ] || usage
    entry=$1 name=$2
    check_entry "$entry"
    shift 2
    axes=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do axes+=("$1"); shift; done
    [ "${1:-}" = "--" ] && shift
    while IFS= read -r point; do
      read -ra overrides <<< "$point"
      on_all_hosts "$(remote_entry "$entry" "$name/$(sweep_slug "$point")" "$@" "${overrides[@]}")"
    done < <(expand_grid "${axes[@]}")
    ;;
  logs)
    [ $# -ge 1 ] || usage
    tpu ssh "$TPU_NAME" --worker=0 --command="tail -n 100 $WORKDIR_ROOT/$(printf '%q' "$1")/log.txt"
    ;;
  delete)
    tpu delete "$TPU_NAME" --quiet
    ;;
  *)
    usage
    ;;
esac
