#!/bin/bash
# Session 6, mid check (nvidia-h200): the GPU suite and checked bench runs after the test / bench clean-ups
# (AttentionIo in dense and sparse, the wgmma macro wrappers, HandBlockList, host_reference).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=/tmp/s6m; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf "$HERE/bins.tar.xz" -C $W || { echo "untar failed"; exit 1; }
B=$W/stage
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-280}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s6m.tgz" -C $W logs'
export DISTATTN_GIT_COMMIT=${C:-unknown}
step tests_gpu 200 $B/distattn_tests_gpu --gtest_brief=1
step dense_check 30 $B/distattn_bench -o dense -b 2K -e 4K -f 2 --causal --pass fwdbwd --rope -c 1 -n 2 -w 1
step dense_check_alibi 30 $B/distattn_bench -o dense -b 2K -e 2K --pass fwdbwd --alibi --window 700 -c 1 -n 2 -w 1
step dense_bwd_check 30 $B/distattn_bench -o dense -b 2K -e 2K --causal --pass bwd -c 1 -n 2 -w 1
step sparse_check 30 $B/distattn_bench -o sparse -b 2K -e 4K -f 2 --sparse-pattern bigbird --pass fwdbwd -c 1 -n 2 -w 1
step sparse_check_c 30 $B/distattn_bench -o sparse -b 2K -e 2K --causal --pass bwd -c 1 -n 2 -w 1
echo "total $(steps_elapsed)s status $steps_status"
