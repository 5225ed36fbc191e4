#!/usr/bin/env bash
# Ring attention side by side: `mpirun -np N distattn_bench -o ring` and PyTorch's context_parallel
# (bench/peers/torch_cp.py, also under mpirun, one process per GPU) on the same GLOBAL shapes, in one command;
# merges both JSONs with bench/peers/merge_side_by_side.py and prints the comparison table last.
#
#   bench/run_ring_side_by_side.sh [OUT_DIR]
#
# Environment:
#   NP            ranks = GPUs (default: nvidia-smi -L | wc -l, else 1)
#   DISTATTN_BENCH  the binary (default: build/bench/distattn_bench, then build-ringbench/dev/distattn_bench)
#   PYTHON        python3;  MPIRUN  mpirun;  MPIRUN_ARGS  extra mpirun arguments
#   RING_SWEEP    "-b 32K -e 128K -f 2";  SHAPE  "-H 32 -d 128 --dtype bf16";  LAYOUT  zigzag
#   JOBS          default "fwd-causal fwd"; also "fwdbwd-causal fwdbwd bwd-causal"
#   ITERS (20), WARMUP (5), WARMUP_MS (0: --warmup-ms of both tools), CHECK (1: distattn checks S <=
#   --check-max-seq, i.e. nothing at 32K+)
#   DISTATTN_GIT_COMMIT  reported commit override
# Exit code non-zero if a check failed or a tool errored (a refused peer shape is a result, not an error).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/study_common.sh
source "$ROOT/bench/study_common.sh"
find_bench run_ring_side_by_side build-ringbench
PY=${PYTHON:-python3}
MPIRUN=${MPIRUN:-mpirun}
if [[ -z ${NP:-} ]]; then
  NP=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [[ $NP -ge 1 ]] || NP=1
fi
OUT=${1:-$ROOT/bench/results/ring_side_by_side_$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
CHECK=${CHECK:-1}
RING_SWEEP=${RING_SWEEP:-"-b 32K -e 128K -f 2"}
SHAPE=${SHAPE:-"-H 32 -d 128 --dtype bf16"}
LAYOUT=${LAYOUT:-zigzag}
JOBS=${JOBS:-"fwd-causal fwd"}

# Root on the device machines; NCCL's NVLink multicast (NVLS) stays off; the environment reaches every rank.
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export DISTATTN_GIT_COMMIT=${DISTATTN_GIT_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
export DISTATTN_COMM_TIMEOUT_S=${DISTATTN_COMM_TIMEOUT_S:-300} NCCL_DEBUG=${NCCL_DEBUG:-WARN}
MPI=("$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none -np "$NP" -x NCCL_NVLS_ENABLE -x PATH -x DISTATTN_GIT_COMMIT
     -x DISTATTN_COMM_TIMEOUT_S -x NCCL_DEBUG)
[[ -n ${LD_LIBRARY_PATH:-} ]] && MPI+=(-x LD_LIBRARY_PATH)
# shellcheck disable=SC2206
MPI+=(${MPIRUN_ARGS:-})

read_warmup_ms run_ring_side_by_side 0
# WARMUP_MS > 0: both tools warm up until that many ms have passed (--warmup-ms), so that both are timed at the clock
# the GPU keeps under load (bench/README.md, "Clocks and warm-up").
TIMING="-n $ITERS -w $WARMUP --warmup-ms $WARMUP_MS"
MERGE_ARGS=()
FAILED=0
echo "run_ring_side_by_side: $NP rank(s), bench $BENCH, out $OUT" >&2

# run_pair NAME TAG "PASS/MASK ARGS": both tools on the same global shapes; logs and JSON under $OUT.
run_pair() {
  local name=$1 tag=$2 args=$3
  echo "=== $name: mpirun -np $NP distattn_bench -o ring $RING_SWEEP $SHAPE $args --layout $LAYOUT" >&2
  # shellcheck disable=SC2086
  "${MPI[@]}" "$BENCH" -o ring $RING_SWEEP $SHAPE $args --layout "$LAYOUT" $TIMING -c "$CHECK" \
    -J "$OUT/$tag.ours.json" 2>&1 | tee "$OUT/$tag.ours.log"
  local rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 ]]; then
    echo "run_ring_side_by_side: distattn_bench exited $rc on $name (1: wrong results, 2: error)" >&2
    FAILED=1
  fi
  echo "=== $name: mpirun -np $NP torch_cp.py $RING_SWEEP $SHAPE $args" >&2
  # shellcheck disable=SC2086
  "${MPI[@]}" -x MASTER_ADDR=127.0.0.1 -x MASTER_PORT=$((29500 + RANDOM % 1000)) \
    "$PY" "$ROOT/bench/peers/torch_cp.py" $RING_SWEEP $SHAPE $args $TIMING -J "$OUT/$tag.peers.json" 2>&1 |
    tee "$OUT/$tag.peers.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "run_ring_side_by_side: torch_cp.py failed on $name" >&2; FAILED=1; }
  if [[ -f $OUT/$tag.ours.json ]]; then MERGE_ARGS+=("$name" "$OUT/$tag.ours.json" "$OUT/$tag.peers.json"); fi
}

for job in $JOBS; do
  case $job in
    fwd-causal) run_pair "ring fwd, causal, $NP GPUs" ring_fwd_causal "--pass fwd --causal" ;;
    fwd) run_pair "ring fwd, non-causal, $NP GPUs" ring_fwd "--pass fwd" ;;
    fwdbwd-causal) run_pair "ring fwd+bwd, causal, $NP GPUs" ring_fwdbwd_causal "--pass fwdbwd --causal" ;;
    fwdbwd) run_pair "ring fwd+bwd, non-causal, $NP GPUs" ring_fwdbwd "--pass fwdbwd" ;;
    bwd-causal) run_pair "ring bwd, causal, $NP GPUs" ring_bwd_causal "--pass bwd --causal" ;;
    *) echo "run_ring_side_by_side: unknown job '$job'" >&2; exit 2 ;;
  esac
done

if [[ ${#MERGE_ARGS[@]} -gt 0 ]]; then
  "$PY" "$ROOT/bench/peers/merge_side_by_side.py" "$OUT/side_by_side.json" "${MERGE_ARGS[@]}" | tee "$OUT/table.txt"
fi
exit $FAILED
