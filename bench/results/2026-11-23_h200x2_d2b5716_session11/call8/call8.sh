#!/bin/bash
# Session 11, call 8 (nvidia-h200-x2): the ring's exposed communication when comp(ms) is also timed at the settled clock
# (6960e85: the compute-only and exchange-only loops take --warmup-ms): fwd and fwd+bwd causal, 32K..128K, with and
# without --warmup-ms 300, interleaved.
set -u
W=/tmp/s11c8; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s11/binsF.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench
export DISTATTN_GIT_COMMIT=6960e85
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
source bench/device_steps.sh
steps_begin $L 500
STEP_AFTER='tar czf $OUT/s11c8.tgz -C $W logs 2>/dev/null'
M="launch/mpirun.sh -n 2"
for r in 1 2; do
  step fb_w300_$r 90 $M $B -o ring --pass fwdbwd -b 32K -e 128K -f 2 --causal -c 0 -n 5 -w 2 --warmup-ms 300 -J $L/fb_w300_$r.json
  step fb_plain_$r 90 $M $B -o ring --pass fwdbwd -b 32K -e 128K -f 2 --causal -c 0 -n 5 -w 2 -J $L/fb_plain_$r.json
done
step f_w300 60 $M $B -o ring -b 32K -e 128K -f 2 --causal -c 0 -n 10 -w 2 --warmup-ms 300 -J $L/f_w300.json
step ring_check 60 $M $B -o ring --pass fwdbwd -b 4K -e 4K --causal -c 1 -n 2 -w 1 --warmup-ms 100
