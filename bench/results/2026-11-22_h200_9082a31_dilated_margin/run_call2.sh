#!/bin/bash
# Branch dilated-margin, call 2 on nvidia-h200: the whole 1-GPU test suite of the new build, then base (main fb23693)
# and new (dilated-margin) interleaved, ROUNDS rounds: dense causal, dilated causal (new also with
# DISTATTN_DILATED_CHAIN_LANES=0 and with DISTATTN_DILATED_STRIDED_LSE=0 as A/Bs in the same binary), dilated
# non-causal; dense non-causal twice each; one checked dilated run at 4K.
set -u
C=${C:-unknown}
HERE=$(cd "$(dirname "$0")" && pwd)
T0=$(date +%s)
W=/tmp/dm; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf "$HERE/bins.tar.xz" -C $W || { echo "untar failed"; exit 1; }
BASE=$W/stage/base; NEW=$W/stage/new
export NCCL_NVLS_ENABLE=0
CAP=${CAP:-270}
el() { echo $(( $(date +%s) - T0 )); }
pack() { mkdir -p "$OUT" && tar czf "$OUT/dm.tgz" -C $W logs; }
step() {
  local name=$1 to=$2; shift 2
  if [ "$(el)" -gt $((CAP - 10)) ]; then echo "== $name skipped (t=$(el)s)"; return; fi
  local left=$(( CAP - $(el) )); [ "$to" -gt "$left" ] && to=$left
  local s=$(date +%s)
  timeout "$to" "$@" > "$L/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - s ))s (t=$(el)s)"
  grep -hE "^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ " "$L/$name.log" | tr -s ' ' | cut -c1-110
}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader > $L/gpus.txt 2>&1; cat $L/gpus.txt
step tests_gpu 120 $NEW/distattn_tests_gpu
grep -E "^\[  PASSED|^\[  FAILED|FAILED  \]|tests ran" $L/tests_gpu.log | tail -12; pack
BENCH="-b 16K -e 64K -f 4 -c 0 -n 10 -w 3"
BN="env DISTATTN_GIT_COMMIT=$C $NEW/distattn_bench"
BB="env DISTATTN_GIT_COMMIT=fb23693 $BASE/distattn_bench"
AB="env DISTATTN_DILATED_STRIDED_LSE=0 DISTATTN_GIT_COMMIT=$C-strided_lse_off $NEW/distattn_bench"
CL="env DISTATTN_DILATED_CHAIN_LANES=0 DISTATTN_GIT_COMMIT=$C-chain_lanes_off $NEW/distattn_bench"
for r in $(seq 1 ${ROUNDS:-6}); do
  # base first in odd rounds, new first in even rounds
  if [ $((r % 2)) = 0 ]; then A=new; B=base; else A=base; B=new; fi
  for who in $A $B; do
    if [ $who = base ]; then X=$BB; else X=$BN; fi
    step ${who}_dense_c_$r 25 $X -o dense $BENCH --causal -J $L/${who}_dense_causal_$r.json
  done
  for who in $A $B; do
    if [ $who = base ]; then X=$BB; else X=$BN; fi
    step ${who}_dilated_c_$r 30 $X -o dilated $BENCH --causal -J $L/${who}_dilated_causal_$r.json
  done
  step cl_dilated_c_$r 30 $CL -o dilated $BENCH --causal -J $L/cl_dilated_causal_$r.json
  if [ $r -le 3 ]; then step ab_dilated_c_$r 30 $AB -o dilated $BENCH --causal -J $L/ab_dilated_causal_$r.json; fi
  for who in $A $B; do
    if [ $who = base ]; then X=$BB; else X=$BN; fi
    step ${who}_dilated_nc_$r 30 $X -o dilated $BENCH -J $L/${who}_dilated_nc_$r.json
  done
  pack
done
for r in 1 2; do
  step base_dense_nc_$r 25 $BB -o dense $BENCH -J $L/base_dense_nc_$r.json
  step new_dense_nc_$r 25 $BN -o dense $BENCH -J $L/new_dense_nc_$r.json
done
step new_dilated_check 40 $BN -o dilated -b 4K -e 4K --causal -c 1 -n 2 -w 1
grep -hE "max_err|Out of bounds" $L/new_dilated_check.log | tail -3
pack
echo "done t=$(el)s"
