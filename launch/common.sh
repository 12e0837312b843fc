# Shared by the launch scripts: dry-run aware execution and sweep expansion.
# DRY_RUN=1 (or --dry-run) prints each command, shell-quoted, instead of running it.

run_cmd() {
  if [ "${DRY_RUN:-0}" = "1" ]; then
    printf '%q ' "$@" | sed 's/ $//'
    printf '\n'
  else
    "$@"
  fi
}

# expand_grid 'A=1,2' 'B=x,y' -> one line per point of the grid:
#   --gin.A=1 --gin.B=x
#   --gin.A=1 --gin.B=y  ...
expand_grid() {
  local points=("")
  local axis name values value point
  for axis in "$@"; do
    name=${axis%%=*}
    values=${axis#*=}
    local next=()
    IFS=',' read -ra vals <<< "$values"
    for point in "${points[@]}"; do
      for value in "${vals[@]}"; do
        next+=("${point:+$point }--gin.$name=$value")
      done
    done
    points=("${next[@]}")
  done
  printf '%s\n' "${points[@]}"
}

# A folder-safe name for one sweep point: "--gin.DoReMi.smoothing=1e-3" -> "smoothing_1e-3".
sweep_slug() {
  echo "$1" | sed -E 's/--gin\.([A-Za-z_]+\.)?//g; s/[^A-Za-z0-9.+-]+/_/g; s/^_+|_+$//g'
}
