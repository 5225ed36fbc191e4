#!/bin/bash
# Session 10, call 8 (one H200): flash_attention_forward_rope fuses only from 8192 rows on (DISTATTN_ROPE_FWD=fused
# for any size); the tests force the fused path (detail::RopeFwdPath::kFused). Tests; the 2K / 4K / 8K causal A/B
# (auto / fused / separate / none); then the positional study twice (dense; 2K..128K).
set -u
ROOT=$(pwd)
W=/tmp/s10c8; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s10/binsG.tar.xz -C $W || exit 1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-540}"
S=$W/stage
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED' step tests_rope 150 $S/distattn_tests_gpu --gtest_brief=1 --gtest_filter='RopeFwdFused*:RopeGpu*:MhaGpu*:RopeBwd*'
for r in 1 2; do
  for v in none auto fused separate; do
    env=""; extra="--rope"
    [[ $v == none ]] && extra=""
    [[ $v == fused || $v == separate ]] && env="DISTATTN_ROPE_FWD=$v"
    for cfg in "-B 8 -b 2K -e 4K -f 2" "-B 1 -b 8K -e 8K"; do
      printf "%s %-8s %-22s " $r $v "$cfg" | tee -a $L/rope_ab.txt
      env $env $S/distattn_bench -o dense -H 32 -d 128 --dtype bf16 --pass fwd --causal -n 40 -w 10 -c 0 $cfg $extra 2>&1 |
        grep -E "^ +[0-9]+ " | awk '{printf "%s ", $0} END {print ""}' | tee -a $L/rope_ab.txt
    done
  done
done
for r in 1 2; do
  DISTATTN_GIT_COMMIT=${COMMIT:-unknown} DISTATTN_BENCH=$S/distattn_bench MAX_SECONDS=200 \
    bash bench/run_positional_study.sh $W/positional_$r > $L/positional_$r.log 2>&1
  echo "study $r rc=$?"
  grep -E "^#   (rope|alibi)" $W/positional_$r/overhead.txt
done
mkdir -p "$OUT" && tar czf "$OUT/s10c8.tgz" -C $W logs positional_1 positional_2
echo "total $(steps_elapsed)s"
