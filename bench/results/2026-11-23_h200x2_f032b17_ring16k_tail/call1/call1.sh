#!/bin/bash
# Session 8, call 1 (nvidia-h200-x2), binaries of f032b17. (a) The ring at S = 16K on 2 GPUs: the same per-step
# shapes as 4 GPUs at 32K (8K rows per rank, 134 MB K|V hops), the figure issue 3 still needs; exposed share, traces.
# (b) LongNet's configuration at 1M and 2M tokens on 2 GPUs, fwd+bwd (issue 6 asks 1M/2M on 8; memory S/N).
set -u
ROOT=$(pwd)
W=/tmp/s8c1; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s8/bins1.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=120
export DISTATTN_GIT_COMMIT=f032b17
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-420}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s8c1.tgz" -C $W logs'
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader > $L/gpu.txt
S=$W/stage
MPI=("$ROOT/launch/mpirun.sh" -n 2)
B="-H 32 -d 128 --dtype bf16 --layout zigzag -c 0"
for r in 1 2; do
  step ring_fwd_c_$r 40 "${MPI[@]}" $S/distattn_bench -o ring -b 8K -e 32K -f 2 $B --causal -n 10 -w 3 -J $L/runs/ring_fwd_c_$r.json
  step ring_fb_c_$r 60 "${MPI[@]}" $S/distattn_bench -o ring -b 8K -e 32K -f 2 $B --causal --pass fwdbwd -n 8 -w 2 -J $L/runs/ring_fb_c_$r.json
done
step ring_fwd_nc 40 "${MPI[@]}" $S/distattn_bench -o ring -b 8K -e 32K -f 2 $B -n 10 -w 3 -J $L/runs/ring_fwd_nc.json
step ring_fb_nc 60 "${MPI[@]}" $S/distattn_bench -o ring -b 8K -e 32K -f 2 $B --pass fwdbwd -n 8 -w 2 -J $L/runs/ring_fb_nc.json
STEP_SUMMARY='bwd|fwd' step trace16k 40 env DISTATTN_RING_TRACE=1 "${MPI[@]}" $S/distattn_bench -o ring -b 16K -e 16K $B --causal --pass fwdbwd -n 2 -w 1
step longnet_1m_2m 200 "${MPI[@]}" $S/distattn_bench -o dilated -b 1M -e 2M -f 2 -H 32 -d 128 --dtype bf16 --causal --pass fwdbwd -n 2 -w 1 -c 0 -J $L/runs/longnet_2gpu.json
python3 - $L/runs > $L/summary.txt 2>&1 <<'PY'
import json, os, sys
d = sys.argv[1]
for f in sorted(os.listdir(d)):
    try: j = json.load(open(os.path.join(d, f)))
    except Exception as e: print(f, 'unreadable', e); continue
    for r in j['rows']:
        print('%-22s %8s %-7s t %9.3f ms  exp%% %s  peakMiB %s' % (f[:-5], r.get('seq'), r.get('pass'), r.get('time_ms') or -1,
              r.get('exposed_comm_pct'), r.get('peak_mib', r.get('peak_memory_mib'))))
PY
cat $L/summary.txt
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
