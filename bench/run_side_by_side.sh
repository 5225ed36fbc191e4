#!/usr/bin/env bash
# distattn_bench and the PyTorch peers (bench/peers/torch_peers.py) on the same shapes, on the same GPU,
# in one command; merges both JSONs into one side-by-side report with ratio columns (ours / peer) and
# prints the comparison table last. Usage: see bench/README.md.
#
#   bench/run_side_by_side.sh [OUT_DIR]
#
# Environment: DISTATTN_BENCH (the binary; default: build/bench/distattn_bench, then
# build-bench/dev/distattn_bench), PYTHON (python3), ITERS (20), WARMUP (5), WARMUP_MS (0: --warmup-ms of both
# tools), CHECK (1), DENSE_SWEEP ("-b 2K -e 32K -f 2"), JOBS (default "dense-fwd dense-fwd-causal rope"; also
# "dense-fwdbwd dense-fwdbwd-causal alibi"), DISTATTN_GIT_COMMIT (reported commit override).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/study_common.sh
source "$ROOT/bench/study_common.sh"
find_bench run_side_by_side build-bench
PY=${PYTHON:-python3}
OUT=${1:-$ROOT/bench/results/side_by_side_$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
CHECK=${CHECK:-1}
DENSE_SWEEP=${DENSE_SWEEP:-"-b 2K -e 32K -f 2"}
JOBS=${JOBS:-"dense-fwd dense-fwd-causal rope"}
# A singleton MPI init as root (device machines) needs these with Open MPI; harmless elsewhere.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

read_warmup_ms run_side_by_side 0
# WARMUP_MS > 0: both tools warm up until that many ms have passed (--warmup-ms), so that both are timed at the clock
# the GPU keeps under load (bench/README.md, "Clocks and warm-up").
TIMING="-n $ITERS -w $WARMUP --warmup-ms $WARMUP_MS"
MERGE_ARGS=()
FAILED=0

# run_pair NAME TAG "OURS ARGS" "PEER ARGS": both tools on the same shapes; logs and JSON under $OUT.
run_pair() {
  local name=$1 tag=$2 ours=$3 peer=$4
  echo "=== $name: distattn_bench $ours" >&2
  # shellcheck disable=SC2086
  "$BENCH" $ours $TIMING -c "$CHECK" -J "$OUT/$tag.ours.json" 2>&1 | tee "$OUT/$tag.ours.log"
  local rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 ]]; then
    echo "run_side_by_side: distattn_bench exited $rc on $name (1: wrong results, 2: error)" >&2
    FAILED=1
  fi
  echo "=== $name: torch_peers.py $peer" >&2
  # shellcheck disable=SC2086
  "$PY" "$ROOT/bench/peers/torch_peers.py" $peer $TIMING -J "$OUT/$tag.peers.json" 2>&1 | tee "$OUT/$tag.peers.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "run_side_by_side: torch_peers.py failed on $name" >&2; FAILED=1; }
  if [[ -f $OUT/$tag.ours.json ]]; then MERGE_ARGS+=("$name" "$OUT/$tag.ours.json" "$OUT/$tag.peers.json"); fi
}

SHAPE="-H 32 -d 128 --dtype bf16"
for job in $JOBS; do
  case $job in
    dense-fwd) run_pair "dense fwd, non-causal" dense_fwd "-o dense $DENSE_SWEEP $SHAPE --pass fwd" \
                        "-o dense $DENSE_SWEEP $SHAPE --pass fwd" ;;
    dense-fwd-causal) run_pair "dense fwd, causal" dense_fwd_causal "-o dense $DENSE_SWEEP $SHAPE --pass fwd --causal" \
                               "-o dense $DENSE_SWEEP $SHAPE --pass fwd --causal" ;;
    dense-fwdbwd) run_pair "dense fwd+bwd, non-causal" dense_fwdbwd "-o dense $DENSE_SWEEP $SHAPE --pass fwdbwd" \
                           "-o dense $DENSE_SWEEP $SHAPE --pass fwdbwd" ;;
    dense-fwdbwd-causal) run_pair "dense fwd+bwd, causal" dense_fwdbwd_causal \
                                  "-o dense $DENSE_SWEEP $SHAPE --pass fwdbwd --causal" \
                                  "-o dense $DENSE_SWEEP $SHAPE --pass fwdbwd --causal" ;;
    alibi) run_pair "dense fwd, causal + ALiBi (peers: bias tensor)" dense_alibi \
                    "-o dense -b 2K -e 8K -f 2 $SHAPE --pass fwd --causal --alibi" \
                    "-o dense -b 2K -e 8K -f 2 $SHAPE --pass fwd --causal --alibi" ;;
    rope)
      # (S, hidden, heads) = (2K,4096,32), (4K,5120,40), (4K,8192,64), (8K,8192,64); D = hidden / heads = 128.
      for cfg in 2K:32 4K:40 4K:64 8K:64; do
        s=${cfg%%:*} h=${cfg##*:}
        run_pair "rope S=$s hidden=$((h * 128)) heads=$h" "rope_${s}_${h}" \
                 "-o rope -b $s -e $s -H $h -d 128 --dtype bf16" "-o rope -b $s -e $s -H $h -d 128 --dtype bf16"
      done ;;
    *) echo "run_side_by_side: unknown job '$job'" >&2; exit 2 ;;
  esac
done

if [[ ${#MERGE_ARGS[@]} -gt 0 ]]; then
  "$PY" "$ROOT/bench/peers/merge_side_by_side.py" "$OUT/side_by_side.json" "${MERGE_ARGS[@]}" | tee "$OUT/table.txt"
fi
exit $FAILED
