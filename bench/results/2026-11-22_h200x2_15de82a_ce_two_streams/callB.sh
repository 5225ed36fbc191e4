#!/bin/bash
# Session 6, call B (nvidia-h200-x2): copy-engine pushes in two halves on two streams (DISTATTN_CE_STREAMS=2).
# Tests: test_ce_exchange_gpu (incl. TwoStreamPushesMatchNccl) and test_ring_gpu with DISTATTN_CE_STREAMS=2 at np 2;
# A/B interleaved: ring fwd+bwd causal 32K / 64K and ring fwd causal 32K-128K (exchange busbw), 1 vs 2 streams.
set -u
C=${C:-unknown}
HERE=$(cd "$(dirname "$0")" && pwd)
T0=$(date +%s)
W=/tmp/s6b; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf "$HERE/bins.tar.xz" -C $W || { echo "untar failed"; exit 1; }
B=$W/stage
export DISTATTN_COMM_TIMEOUT_S=60 DISTATTN_GIT_COMMIT=$C NCCL_NVLS_ENABLE=0
MPI="mpirun --allow-run-as-root --bind-to none -np 2 -x NCCL_NVLS_ENABLE -x DISTATTN_COMM_TIMEOUT_S -x DISTATTN_GIT_COMMIT"
CAP=${CAP:-300}
el() { echo $(( $(date +%s) - T0 )); }
pack() { mkdir -p "$OUT" && tar czf "$OUT/s6b.tgz" -C $W logs; }
step() {
  local name=$1 to=$2; shift 2
  if [ "$(el)" -gt $((CAP - 15)) ]; then echo "== $name skipped (t=$(el)s)"; return; fi
  local left=$(( CAP - $(el) )); [ "$to" -gt "$left" ] && to=$left
  local s=$(date +%s)
  timeout "$to" "$@" > "$L/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - s ))s (t=$(el)s)"
  grep -hE "^\S*\[  (PASSED|FAILED) |FAILED  \]|^ +[0-9]+ +[0-9]+ +[0-9]+ " "$L/$name.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -8
  pack
}
step ce_gpu 60 $MPI $B/distattn_mpi_test_ce_exchange_gpu
step ring_gpu_ce2 90 $MPI -x DISTATTN_CE_STREAMS=2 $B/distattn_mpi_test_ring_gpu
FB="-o ring --pass fwdbwd -b 32K -e 64K -f 2 --causal -n 5 -w 2 -c 0"
FW="-o ring --pass fwd -b 32K -e 128K -f 2 --causal -n 5 -w 2 -c 0"
for r in 1 2; do
  for s in 1 2; do
    step fb_ce${s}_$r 40 $MPI -x DISTATTN_CE_STREAMS=$s $B/distattn_bench $FB -J $L/fb_ce${s}_$r.probe.jsonl
  done
done
for s in 1 2; do step fw_ce$s 40 $MPI -x DISTATTN_CE_STREAMS=$s $B/distattn_bench $FW -J $L/fw_ce$s.probe.jsonl; done
echo "total $(el)s"; pack; ls -la "$OUT"
