#!/bin/bash
# Session 12, call 3 (one H200): is the RoPE forward's cost at the power cap the cost of moving q and k once? 8K and
# 16K causal (B 1, H 32, D 128, bf16), blocks at the settled clock (500 ms warm-up): the plain forward, the fused path
# (auto), the separate path (rope kernel, then the forward), a plain device copy of the same bytes alone (probe mode
# 3: read q, k, write a scratch; what one pass over q and k costs), and two diagnostic variants of the fused path
# (binary of call 2, patch ../rope_diag.patch): DISTATTN_ROPE_DIAG=5 (helpers load and store back, no table, no
# arithmetic) and 16 (set-up launch with the table only, nothing rotated).
set -u
W=/tmp/s12c3; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s12/binsB.tar.xz -C $W || exit 1
P=$W/stage/distattn_probe_forward_spread
source bench/device_steps.sh
steps_begin $L 330
STEP_AFTER='tar czf $OUT/s12c3.tgz -C $W logs 2>/dev/null'
floor() {
  for r in 1 2; do
    for S in 8192 16384; do
      n=$((S == 8192 ? 3000 : 1000)); nc=$((S == 8192 ? 20000 : 10000))
      echo "== S$S plain r$r"; $P $S 1 1 2 $n 0 0 500
      echo "== S$S fused r$r"; DISTATTN_ROPE_FWD=auto $P $S 1 1 2 $n 0 1 500
      echo "== S$S separate r$r"; DISTATTN_ROPE_FWD=separate $P $S 1 1 2 $n 0 1 500
      echo "== S$S copy r$r"; $P $S 1 1 2 $nc 0 3 500
      echo "== S$S diag-5 r$r"; DISTATTN_ROPE_DIAG=5 $P $S 1 1 2 $n 0 1 500
      echo "== S$S diag-16 r$r"; DISTATTN_ROPE_DIAG=16 $P $S 1 1 2 $n 0 1 500
    done
  done
}
export P L; export -f floor
STEP_SUMMARY='^== |summary' step floor 320 bash -c floor
