#!/usr/bin/env bash
# Strong-scaling study, one command on a multi-GPU node (builds nothing): the same global sequence lengths on 1, 2
# and 4 GPUs (NPS) for ring attention (one GPU: the dense op, the ring's reference) and LongNet dilated attention
# (one GPU: the single-device path), forward and fwd+bwd, causal. Every run writes its JSON under OUT_DIR; the
# strong-scaling table (bench/compare.py --scaling) is printed last and the plots (bench/plot.py --newest: TFLOPs per
# GPU against S, efficiency against N) are written next to the JSON when matplotlib is installed.
#
#   DISTATTN_BENCH=build/bench/distattn_bench bench/run_scaling_study.sh [OUT_DIR]
#
# Environment (defaults in brackets):
#   DISTATTN_BENCH  the binary [build/bench/distattn_bench]      PYTHON [python3]      MPIRUN [mpirun]
#   NPS ["1 2 4", capped at the GPUs nvidia-smi lists]           OPS ["ring dilated"]  PASSES ["fwd fwdbwd"]
#   MASK ["--causal"; "" for non-causal]                         SHAPE ["-B 1 -H 32 -d 128 --dtype bf16"]
#   RING_GROUPS ["2K:32K:5:2 64K:128K:3:1 256K:1M:1:1"]: sweeps "min:max:iters:warmup", each size x2 the last
#   DILATED_GROUPS ["64K:128K:3:1 256K:1M:1:1"]                  DILATED_ARGS [""; e.g. --dilated-segments ...]
#   ONE_GPU_MAX ["256K"]: largest S run on one GPU (a dense causal fwd+bwd at 1M takes ~50 s per iteration)
#   RUN_TIMEOUT [300]: seconds per run          MAX_SECONDS [0: none]: start no run after this many seconds
#   CHECK [0]: -c for every run (the fp64 check covers S <= --check-max-seq only)
#   WARMUP_MS [300]: --warmup-ms of every run, so 1, 2 and 4 GPUs are all timed at the clock the GPUs keep under load
#   (an H200 leaves its boost clock ~60-100 ms into a load: bench/README.md, "Clocks and warm-up"); 0: -w only
#   DISTATTN_GIT_COMMIT  the commit reported in the JSON
# Exit code: 0 every run OK; 1 a run failed or was skipped; 2 usage error (no binary).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/study_common.sh
source "$ROOT/bench/study_common.sh"
BENCH=${DISTATTN_BENCH:-$ROOT/build/bench/distattn_bench}
if [[ ! -x $BENCH ]]; then
  echo "run_scaling_study: distattn_bench not found at '$BENCH'; build it or set DISTATTN_BENCH" >&2
  exit 2
fi
PY=${PYTHON:-python3}
MPIRUN=${MPIRUN:-mpirun}
OUT=${1:-$ROOT/bench/results/scaling_study_$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/logs"
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
NPS=${NPS:-"1 2 4"}
OPS=${OPS:-"ring dilated"}
PASSES=${PASSES:-"fwd fwdbwd"}
MASK=${MASK---causal}
SHAPE=${SHAPE:-"-B 1 -H 32 -d 128 --dtype bf16"}
RING_GROUPS=${RING_GROUPS:-"2K:32K:5:2 64K:128K:3:1 256K:1M:1:1"}
DILATED_GROUPS=${DILATED_GROUPS:-"64K:128K:3:1 256K:1M:1:1"}
DILATED_ARGS=${DILATED_ARGS:-}
ONE_GPU_MAX=${ONE_GPU_MAX:-256K}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
MAX_SECONDS=${MAX_SECONDS:-0}
CHECK=${CHECK:-0}
read_warmup_ms run_scaling_study 300
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# tokens "32K" / "1M" / "512" -> integer
to_int() {
  local v=$1
  case $v in
    *K | *k) echo $((${v%?} * 1024)) ;;
    *M | *m) echo $((${v%?} * 1024 * 1024)) ;;
    *) echo "$v" ;;
  esac
}
one_gpu_max=$(to_int "$ONE_GPU_MAX")
start=$(date +%s)
status=0
runs=0

# run NAME NP ARGS...: one distattn_bench run (under mpirun when NP > 1, or when there is no GPU so that the
# host engine's multi-rank path is the one exercised), JSON OUT/NAME.json, log OUT/logs/NAME.log.
run() {
  local name=$1 np=$2
  shift 2
  local used=$(($(date +%s) - start))
  if ((MAX_SECONDS > 0 && used >= MAX_SECONDS)); then
    echo "=== $name: SKIPPED (MAX_SECONDS=$MAX_SECONDS reached at ${used}s)"
    status=1
    return
  fi
  local launch=()
  if ((np > 1)); then
    launch=("$MPIRUN" --bind-to none -np "$np" -x NCCL_NVLS_ENABLE)
    [[ -n ${DISTATTN_GIT_COMMIT:-} ]] && launch+=(-x DISTATTN_GIT_COMMIT)
    [[ $(id -u) == 0 ]] && launch+=(--allow-run-as-root)
    ((np > GPUS)) && launch+=(--oversubscribe)
  fi
  echo "=== $name (np $np, at ${used}s)"
  timeout "$RUN_TIMEOUT" "${launch[@]}" "$BENCH" "$@" -c "$CHECK" -J "$OUT/$name.json" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  grep -E "^ +[0-9]" "$OUT/logs/$name.log"
  ((rc == 0)) || {
    echo "=== $name: rc $rc (log: $OUT/logs/$name.log)"
    status=1
  }
  runs=$((runs + 1))
}

for np in $NPS; do
  if ((GPUS > 0 && np > GPUS)); then
    echo "=== np $np: SKIPPED (this node lists $GPUS GPUs)"
    status=1
    continue
  fi
  for pass in $PASSES; do
    for op in $OPS; do
      groups=$RING_GROUPS
      [[ $op == dilated ]] && groups=$DILATED_GROUPS
      for g in $groups; do
        IFS=: read -r b e n w <<< "$g"
        lo=$(to_int "$b")
        hi=$(to_int "$e")
        if ((np == 1)); then
          ((lo > one_gpu_max)) && continue
          ((hi > one_gpu_max)) && e=$ONE_GPU_MAX
        fi
        if [[ $op == ring ]]; then
          # One GPU: the dense op is the ring's reference (no exchange, no ring bookkeeping).
          if ((np == 1)); then
            run "dense_${pass}_np1_${b}-${e}" 1 -o dense -b "$b" -e "$e" -f 2 $SHAPE $MASK --pass "$pass" -n "$n" -w "$w" \
              --warmup-ms "$WARMUP_MS"
          else
            run "ring_${pass}_np${np}_${b}-${e}" "$np" -o ring -b "$b" -e "$e" -f 2 $SHAPE $MASK --pass "$pass" \
              -n "$n" -w "$w" --warmup-ms "$WARMUP_MS"
          fi
        else
          run "dilated_${pass}_np${np}_${b}-${e}" "$np" -o dilated -b "$b" -e "$e" -f 2 $SHAPE $MASK --pass "$pass" \
            $DILATED_ARGS -n "$n" -w "$w" --warmup-ms "$WARMUP_MS"
        fi
      done
    done
  done
done

echo "=== $runs run(s) in $(($(date +%s) - start))s; JSON and logs in $OUT"
"$PY" "$ROOT/bench/plot.py" "$OUT" --newest --only scaling,tflops --out "$OUT" > "$OUT/logs/plot.log" 2>&1 ||
  echo "(plots not written: $(tail -n 1 "$OUT/logs/plot.log"))"
"$PY" "$ROOT/bench/compare.py" --scaling "$OUT" || status=1
exit $status
