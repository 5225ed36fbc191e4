#!/bin/bash
# Session 8, call 10 (nvidia-h200): delta = rowsum(dO * O) computed once per dilated backward
# (flash_attention_backward_delta) and handed to every call. GPU suite, then LongNet bwd / fwd+bwd A/B against call 9
# (direct dQ, delta computed by every call), interleaved.
set -u
ROOT=$(pwd)
W=/tmp/s8c10; L=$W/logs
rm -rf $W && mkdir -p $L/runs $W/old
tar xJf build-s8/bins10.tar.xz -C $W || { echo "untar failed"; exit 1; }
tar xJf build-s8/bins9.tar.xz -C $W/old stage/distattn_bench || { echo "untar old failed"; exit 1; }
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-300}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s8c10.tgz" -C $W logs'
S=$W/stage; O=$W/old/stage
step tests_gpu 200 $S/distattn_tests_gpu --gtest_brief=1
B="-H 32 -d 128 --dtype bf16 -c 0 -n 5 -w 2 -b 64K -e 128K -f 2 --causal"
for r in 1 2; do
  for v in new old; do
    X=$S; [[ $v == old ]] && X=$O
    step ${v}_longnet_bwd_$r 40 env DISTATTN_GIT_COMMIT=$v $X/distattn_bench -o dilated --pass bwd $B -J $L/runs/${v}_longnet-bwd_$r.json
    step ${v}_longnet_fb_$r 40 env DISTATTN_GIT_COMMIT=$v $X/distattn_bench -o dilated --pass fwdbwd $B -J $L/runs/${v}_longnet-fwdbwd_$r.json
  done
done
step check_dilated 60 $S/distattn_bench -o dilated --dilated-segments 1K,2K --dilated-rates 1,2 -b 4K -e 4K -H 8 -d 128 --causal --pass fwdbwd -n 2 -w 1 -c 1
python3 - $L/runs > $L/summary.txt 2>&1 <<'PY'
import json, os, sys, collections
d = sys.argv[1]; t = collections.defaultdict(list)
for f in sorted(os.listdir(d)):
    j = json.load(open(os.path.join(d, f))); v, what, r = f[:-5].split('_')
    for row in j['rows']: t[(what, row['seq'], v)].append((row['time_ms'], row.get('tflops')))
for k in sorted(t): print('%-16s %7d %-4s ' % k + '  '.join('%.3f ms %.1f TF' % x for x in t[k]))
PY
cat $L/summary.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
