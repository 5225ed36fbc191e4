#!/bin/bash
# Session 11, call 5 (one H200): the whole GPU suite on this binary (RopeFwdFused now also runs the prerotated path);
# the fixed probe (the RoPE calls are timed now): plain / fused / separate / prerotated at the settled clock; dense
# against PyTorch SDPA (cuDNN, flash) at 16K and 128K, both tools with --warmup-ms 300.
set -u
W=/tmp/s11c5; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsD.tar.xz -C $W || exit 1
S=$W/stage; B=$S/distattn_bench; P=$S/distattn_probe_forward_spread
export DISTATTN_GIT_COMMIT=${GITC:-s11d}
source bench/device_steps.sh
steps_begin $L 570
STEP_AFTER='tar czf $OUT/s11c5.tgz -C $W logs 2>/dev/null'
step gpu_suite 150 $S/distattn_tests_gpu --gtest_brief=1
probe() {
  for r in 1 2; do
    echo "== plain r$r"; $P 8192 1 1 3 60 0 0 300
    for m in auto separate prerotated; do echo "== rope-$m r$r"; DISTATTN_ROPE_FWD=$m $P 8192 1 1 3 60 0 1 300; done
  done
}
sbs() {
  DISTATTN_BENCH=$B ITERS=10 WARMUP=2 WARMUP_MS=300 CHECK=0 DENSE_SWEEP="-b 16K -e 128K -f 8" \
    JOBS="dense-fwd dense-fwd-causal" bash bench/run_side_by_side.sh $L/sbs_w300
}
export B P L; export -f probe sbs
STEP_SUMMARY='^== |summary' step probe 120 bash -c probe
STEP_SUMMARY='ratio|cudnn|flash|ours' step sbs 250 bash -c sbs
