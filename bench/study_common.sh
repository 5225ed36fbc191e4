# shellcheck shell=bash
# Sourced by the bench/run_*side_by_side.sh, run_positional_study.sh and run_scaling_study.sh study scripts (after they
# set ROOT, the repository root): what each of them does first.

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

# read_warmup_ms TOOL DEFAULT: sets WARMUP_MS from the environment (DEFAULT when unset): distattn_bench's and the peers'
# --warmup-ms, the warm-up that makes a run time the clock the GPU keeps under load (bench/README.md, "Clocks and
# warm-up"). Anything but a non-negative integer: says "TOOL: WARMUP_MS must be a non-negative integer, got '...'" on
# stderr and exits the script with 2 (usage error).
read_warmup_ms() {
  local tool=$1
  WARMUP_MS=${WARMUP_MS:-$2}
  if ! [[ $WARMUP_MS =~ ^[0-9]+$ ]]; then
    echo "$tool: WARMUP_MS must be a non-negative integer, got '$WARMUP_MS'" >&2
    exit 2
  fi
}
