#!/bin/bash
# Session 7, call 4 (nvidia-h200-x2): where the ring's fwd+bwd time goes at 32K on main with the library scratch pool
# (DISTATTN_RING_TRACE=1: CUDA-event marks per rank; the trace synchronises, which no longer re-maps scratch).
set -u
ROOT=$(pwd)
W=/tmp/s7c4; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s7/bins3.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-150}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s7c4.tgz" -C $W logs'
S=$W/stage
MPI=("$ROOT/launch/mpirun.sh" -n 2)
STEP_SUMMARY='bwd|fwd' step trace32k 40 env DISTATTN_RING_TRACE=1 "${MPI[@]}" $S/distattn_bench -o ring -b 32K -e 32K -H 32 -d 128 --causal --layout zigzag --pass fwdbwd -n 2 -w 1 -c 0
STEP_SUMMARY='bwd|fwd' step trace64k 60 env DISTATTN_RING_TRACE=1 "${MPI[@]}" $S/distattn_bench -o ring -b 64K -e 64K -H 32 -d 128 --causal --layout zigzag --pass fwdbwd -n 2 -w 1 -c 0
for r in 1 2; do
  step ring32k_$r 40 "${MPI[@]}" $S/distattn_bench -o ring -b 32K -e 64K -f 2 -H 32 -d 128 --causal --layout zigzag --pass fwdbwd -n 8 -w 2 -c 0 -J $L/runs/ring_fwdbwd_$r.json
done
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
