#!/bin/bash
# Session 8, call 6 (nvidia-h200, one GPU): the Hopper backward with block lists (working tree on eb5b95c: main with
# the tests-dedupe2 merge) + the GPU suite of that tree; then block-sparse backward / fwd+bwd A/B against f032b17's
# bench (block lists on the mma.sync backward), interleaved; checked small runs.
set -u
ROOT=$(pwd)
W=/tmp/s8c6; L=$W/logs
rm -rf $W && mkdir -p $L/runs $W/old
tar xJf build-s8/bins6.tar.xz -C $W || { echo "untar failed"; exit 1; }
tar xJf build-s8/bins1.tar.xz -C $W/old stage/distattn_bench || { echo "untar old failed"; exit 1; }
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-420}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s8c6.tgz" -C $W logs'
S=$W/stage; O=$W/old/stage
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > $L/gpu.txt
step bwd_hopper 60 $S/distattn_tests_gpu --gtest_filter='FlashBwdHopper.*'
step tests_gpu 200 $S/distattn_tests_gpu --gtest_brief=1
B="-H 32 -d 128 --dtype bf16 -c 0 -n 10 -w 3 -b 16K -e 64K -f 4"
for r in 1 2; do
  for v in new old; do
    X=$S; [[ $v == old ]] && X=$O
    step ${v}_bd_$r 40 env DISTATTN_GIT_COMMIT=$v $X/distattn_bench -o sparse --sparse-pattern block-diagonal --causal --pass bwd $B -J $L/runs/${v}_bd_$r.json
    step ${v}_bb_$r 40 env DISTATTN_GIT_COMMIT=$v $X/distattn_bench -o sparse --sparse-pattern bigbird --pass fwdbwd $B -J $L/runs/${v}_bb_$r.json
    step ${v}_sw_$r 40 env DISTATTN_GIT_COMMIT=$v $X/distattn_bench -o sparse --sparse-pattern sliding-window --window 2048 --causal --pass bwd $B -J $L/runs/${v}_sw_$r.json
  done
done
step check_sparse 60 $S/distattn_bench -o sparse --sparse-pattern bigbird -b 2K -e 4K -f 2 -H 4 -d 128 --causal --pass fwdbwd -n 2 -w 1 -c 1
step check_sparse_bd 60 $S/distattn_bench -o sparse --sparse-pattern block-diagonal --sparse-block 1024 -b 2K -e 4K -f 2 -H 4 -d 128 --dtype fp16 --pass bwd -n 2 -w 1 -c 1
python3 - $L/runs > $L/summary.txt 2>&1 <<'PY'
import json, os, sys, collections
d = sys.argv[1]; t = collections.defaultdict(list)
for f in sorted(os.listdir(d)):
    j = json.load(open(os.path.join(d, f))); v, pat, r = f[:-5].split('_')
    for row in j['rows']: t[(pat, row['seq'], row['pass'], v)].append((row['time_ms'], row.get('tflops')))
for k in sorted(t): print('%-3s %6d %-7s %-4s ' % k + '  '.join('%.3f ms %.1f TF' % x for x in t[k]))
PY
cat $L/summary.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
