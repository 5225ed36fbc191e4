#!/bin/bash
# Session 11, call 7 (one H200): issue 4's one-GPU figures at the settled clock (--warmup-ms 300): LongNet dilated
# attention (default patterns) against the dense forward at 16K / 64K, causal (three interleaved rounds) and
# non-causal; block-sparse against FlexAttention (compiled), both tools with --warmup-ms 300.
set -u
W=/tmp/s11c7; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsE.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench
export DISTATTN_GIT_COMMIT=997dfd8
source bench/device_steps.sh
steps_begin $L 560
STEP_AFTER='tar czf $OUT/s11c7.tgz -C $W logs 2>/dev/null'
T="-c 0 -n 10 -w 3 --warmup-ms 300"
for r in 1 2 3; do
  step dense_c_$r 40 $B -o dense -b 16K -e 64K -f 4 --causal $T -J $L/dense_causal_$r.json
  step dilated_c_$r 50 $B -o dilated -b 16K -e 64K -f 4 --causal $T -J $L/dilated_causal_$r.json
done
step dense_nc 40 $B -o dense -b 16K -e 64K -f 4 $T -J $L/dense_nc.json
step dilated_nc 50 $B -o dilated -b 16K -e 64K -f 4 $T -J $L/dilated_nc.json
sparse() { DISTATTN_BENCH=$B WARMUP_MS=300 CHECK=0 bash bench/run_sparse_side_by_side.sh $L/sparse_flex_w300; }
export B L; export -f sparse
STEP_SUMMARY='x\)|ratio|flex|^ +[0-9]+ ' step sparse 280 bash -c sparse
