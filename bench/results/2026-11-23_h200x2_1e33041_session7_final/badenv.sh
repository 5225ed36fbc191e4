#!/bin/bash
# Session 7: bad values of two formerly silent switches on paths that read them (each run must fail naming it).
set -u
ROOT=$(pwd); W=/tmp/s7b; rm -rf $W && mkdir -p $W && tar xJf build-s7/binsF.tar.xz -C $W
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=30
S=$W/stage
echo "== DISTATTN_RING_VEC=on, ring fwd+bwd"
timeout 60 env DISTATTN_RING_VEC=on "$ROOT/launch/mpirun.sh" -n 2 $S/distattn_bench -o ring -b 4K -e 4K --pass fwdbwd -n 1 -w 0 -c 0 2>&1 | grep -E "argument|rc|Error|^ +4096" | head -4; echo "rc ${PIPESTATUS[0]}"
echo "== DISTATTN_DILATED_SHARE_SMS=yes, dilated fwd"
timeout 60 env DISTATTN_DILATED_SHARE_SMS=yes $S/distattn_bench -o dilated -b 8K -e 8K -n 1 -w 0 -c 0 2>&1 | grep -E "argument|Error|^ +8192" | head -4; echo "rc ${PIPESTATUS[0]}"
echo "== control: DISTATTN_RING_VEC=0, ring fwd+bwd"
timeout 60 env DISTATTN_RING_VEC=0 "$ROOT/launch/mpirun.sh" -n 2 $S/distattn_bench -o ring -b 4K -e 4K --pass fwdbwd -n 1 -w 0 -c 1 2>&1 | grep -E "argument|Error|^ +4096|Out of" | head -4; echo "rc ${PIPESTATUS[0]}"
