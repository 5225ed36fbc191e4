#!/bin/bash
# Session 10, call 14 (one H200): after the review mend (pack2 / unpack2 shared from mma_primitives.cuh): the whole
# GPU suite.
set -u
W=/tmp/s10c14; mkdir -p $W && tar xJf build-s10/binsJ.tar.xz -C $W || exit 1
$W/stage/distattn_tests_gpu --gtest_brief=1 > $W/tests_gpu.log 2>&1; echo "rc=$?"
grep -E "PASSED|FAILED" $W/tests_gpu.log
mkdir -p "$OUT" && cp $W/tests_gpu.log "$OUT/"
