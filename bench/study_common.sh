# shellcheck shell=bash
# Sourced by the bench/run_*side_by_side.sh and run_positional_study.sh study scripts (after they set ROOT, the
# repository root): what each of them does first.

# find_bench TOOL FALLBACK: sets BENCH to the distattn_bench binary the study runs: $DISTATTN_BENCH when set, else the
# first executable of $ROOT/build/bench/distattn_bench and $ROOT/FALLBACK/dev/distattn_bench (the folder a device run
# carried it in). Without one, says "TOOL: distattn_bench not found; build it or set DISTATTN_BENCH" on stderr and
# exits the script with 2 (usage error).
find_bench() {
  local tool=$1 fallback=$2 c
  BENCH=${DISTATTN_BENCH:-}
  if [[ -z $BENCH ]]; then
    for c in "$ROOT/build/bench/distattn_bench" "$ROOT/$fallback/dev/distattn_bench"; do
      if [[ -x $c ]]; then BENCH=$c; break; fi
    done
  fi
  if [[ -z $BENCH || ! -x $BENCH ]]; then
    echo "$tool: distattn_bench not found; build it or set DISTATTN_BENCH" >&2
    exit 2
  fi
}
