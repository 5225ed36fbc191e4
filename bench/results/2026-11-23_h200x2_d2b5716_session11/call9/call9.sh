#!/bin/bash
# Session 11, call 9 (nvidia-h200-x2): bench/device_check_multi.sh as the next x4 call will run it (WARMUP_MS default
# 300 now in every benchmark step), ring stage only, up to 32K, at np 2.
set -u
W=/tmp/s11c9
rm -rf $W && mkdir -p $W
tar xJf build-s11/binsF.tar.xz -C $W || exit 1
NP=2 STAGES="ring" RING_MAX=32K BUDGET_S=200 DISTATTN_GIT_COMMIT=2a9e3b9 bash bench/device_check_multi.sh $W/stage $W/out
cp $W/out/results.tgz $OUT/ 2>/dev/null
