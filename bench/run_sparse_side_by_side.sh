#!/usr/bin/env bash
# distattn_bench -o sparse and the FlexAttention peer (bench/peers/flex_peers.py) on the same patterns and
# shapes, on the same GPU, in one command; plus our dense forward at the same S (the 70% target's baseline).
# Merges everything with bench/peers/merge_side_by_side.py (ratio = our useful TFLOPs / flex's) and prints the
# table last.
#
#   bench/run_sparse_side_by_side.sh [OUT_DIR]
#
# Environment: DISTATTN_BENCH (the binary; default build/bench/distattn_bench, then build-bs/dev/distattn_bench),
# PYTHON (python3), ITERS (20), WARMUP (5), WARMUP_MS (0: --warmup-ms of both tools), CHECK (1: checks run at
# S <= --check-max-seq only, i.e. never at the default sizes; set SWEEP smaller to check), SWEEP ("-b 16K -e 64K
# -f 4"), PASS (fwd), SHAPE ("-H 32 -d 128 --dtype bf16"), DENSE_TIMING ("-n 10 -w 2": one dense forward at 64K
# takes ~0.19 s on an H100),
# JOBS (default "bdiag window dense"; also "strided", "bigbird", "random": ours only for the last two, flex does
# not reproduce their seeded draws).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/study_common.sh
source "$ROOT/bench/study_common.sh"
find_bench run_sparse_side_by_side build-bs
PY=${PYTHON:-python3}
OUT=${1:-$ROOT/bench/results/sparse_side_by_side_$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
CHECK=${CHECK:-1}
SWEEP=${SWEEP:-"-b 16K -e 64K -f 4"}
PASS=${PASS:-fwd}
SHAPE=${SHAPE:-"-H 32 -d 128 --dtype bf16"}
JOBS=${JOBS:-"bdiag window dense"}
DENSE_TIMING=${DENSE_TIMING:-"-n 10 -w 2"}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

read_warmup_ms run_sparse_side_by_side 0
# WARMUP_MS > 0: both tools warm up until that many ms have passed (--warmup-ms), so that both are timed at the clock
# the GPU keeps under load (bench/README.md, "Clocks and warm-up").
TIMING="-n $ITERS -w $WARMUP --warmup-ms $WARMUP_MS"
MERGE_ARGS=()
FAILED=0

# run_pair NAME TAG "ARGS" [PEER]: ours with `-o sparse ARGS` and flex with ARGS (PEER flex, the default);
# PEER none: ours only; PEER dense: ours with `-o dense ARGS` and DENSE_TIMING, no peer.
run_pair() {
  local name=$1 tag=$2 args=$3 peer=${4:-flex}
  local ours_args="-o sparse $args" timing=$TIMING
  [[ $peer == dense ]] && ours_args="-o dense $args" timing="$DENSE_TIMING --warmup-ms $WARMUP_MS"
  echo "=== $name: distattn_bench $ours_args" >&2
  # shellcheck disable=SC2086
  "$BENCH" $ours_args $SWEEP $SHAPE --pass "$PASS" $timing -c "$CHECK" -J "$OUT/$tag.ours.json" 2>&1 |
    tee "$OUT/$tag.ours.log"
  local rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 ]]; then
    echo "run_sparse_side_by_side: distattn_bench exited $rc on $name (1: wrong results, 2: error)" >&2
    FAILED=1
  fi
  if [[ $peer == flex ]]; then
    echo "=== $name: flex_peers.py $args" >&2
    # shellcheck disable=SC2086
    "$PY" "$ROOT/bench/peers/flex_peers.py" $args $SWEEP $SHAPE --pass "$PASS" $TIMING -J "$OUT/$tag.peers.json" 2>&1 |
      tee "$OUT/$tag.peers.log"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "run_sparse_side_by_side: flex_peers.py failed on $name" >&2; FAILED=1; }
  fi
  if [[ -f $OUT/$tag.ours.json ]]; then MERGE_ARGS+=("$name" "$OUT/$tag.ours.json" "$OUT/$tag.peers.json"); fi
}

for job in $JOBS; do
  case $job in
    bdiag) run_pair "block-diagonal 2048, $PASS" bdiag2048 "--sparse-pattern block-diagonal --sparse-block 2048" ;;
    window) run_pair "causal sliding window 2048, $PASS" window2048_causal \
                     "--sparse-pattern sliding-window --window 2048 --causal" ;;
    strided) run_pair "strided 2048 (+1 block band), causal, $PASS" strided2048_causal \
                      "--sparse-pattern strided --sparse-block 2048 --causal" ;;
    bigbird) run_pair "bigbird (1+1+3 blocks), $PASS" bigbird "--sparse-pattern bigbird --sparse-random 3" none ;;
    random) run_pair "random 8 blocks per row, $PASS" random8 "--sparse-pattern random --sparse-random 8" none ;;
    dense) run_pair "dense non-causal (ours), $PASS" dense "" dense ;;
    *) echo "run_sparse_side_by_side: unknown job '$job'" >&2; exit 2 ;;
  esac
done

if [[ ${#MERGE_ARGS[@]} -gt 0 ]]; then
  "$PY" "$ROOT/bench/peers/merge_side_by_side.py" "$OUT/side_by_side.json" "${MERGE_ARGS[@]}" | tee "$OUT/table.txt"
fi
exit $FAILED
