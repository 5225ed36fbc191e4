#!/bin/bash
# Session 6, call (nvidia-h200-x2): the backward's home hop over NCCL (DISTATTN_RING_HOME_HOP=nccl) against the copy
# engine (ce, the default). test_ring_gpu with nccl (and the default), test_ce_exchange_gpu; A/B interleaved: ring
# fwd+bwd causal 32K / 64K, three rounds.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=/tmp/s6h; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf "$HERE/bins.tar.xz" -C $W || { echo "untar failed"; exit 1; }
B=$W/stage
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-280}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s6h.tgz" -C $W logs'
export DISTATTN_COMM_TIMEOUT_S=60 DISTATTN_GIT_COMMIT=${C:-unknown} NCCL_NVLS_ENABLE=0
MPI="mpirun --allow-run-as-root --bind-to none -np 2 -x NCCL_NVLS_ENABLE -x DISTATTN_COMM_TIMEOUT_S -x DISTATTN_GIT_COMMIT"
step ring_gpu 120 $MPI $B/distattn_mpi_test_ring_gpu
step ring_gpu_nccl_home 90 $MPI -x DISTATTN_RING_HOME_HOP=nccl $B/distattn_mpi_test_ring_gpu --gtest_filter='RingGpu.*:Layouts/*'
step ce_gpu 40 $MPI $B/distattn_mpi_test_ce_exchange_gpu
FB="-o ring --pass fwdbwd -b 32K -e 64K -f 2 --causal -n 5 -w 2 -c 0"
for r in 1 2 3; do
  for h in ce nccl; do
    step fb_${h}_$r 40 $MPI -x DISTATTN_RING_HOME_HOP=$h $B/distattn_bench $FB -J $L/fb_${h}_$r.probe.jsonl
  done
done
step fb_nccl_check 40 $MPI -x DISTATTN_RING_HOME_HOP=nccl $B/distattn_bench -o ring --pass fwdbwd -b 4K -e 4K --causal -c 1 -n 2 -w 1
echo "total $(steps_elapsed)s status $steps_status"
