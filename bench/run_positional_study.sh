#!/usr/bin/env bash
# Positional-encoding overhead study, one command on a GPU machine (builds nothing): distattn_bench -o dense
# without positional encoding ("none"), with --rope (the fused RoPE kernel on q, k before the attention forward,
# its backward on dq, dk after the attention backward) and with --alibi, for every pass (fwd, fwdbwd), mask
# (causal, non-causal) and S (2K..128K), B=1, H=32, D=128, bf16; with OPS="dense ring" also -o ring over the
# node's GPUs (global S; the rope variant only when the ring op accepts --rope). The variants of one (S, pass,
# mask, op) run back to back, in an order that rotates from one group to the next, so that clock or thermal drift
# hits every variant alike; with ROUNDS=R that group runs R times over (its order rotating each round) and the table
# takes the median of the R times of each variant (one process per run: a single process's time can sit several %
# off, bench/results/2026-11-23_h200_s10_positional). Writes OUT_DIR/positional_study.json (one report: every run's rows and command line; format in
# bench/study_lib.py), OUT_DIR/study.log (every run's output) and OUT_DIR/overhead.txt (the overhead table:
# time(variant) / time(none) - 1, computed by bench/compare.py --positional), printed last; also
# OUT_DIR/positional_overhead.png when matplotlib is installed.
#
#   DISTATTN_BENCH=build/bench/distattn_bench bench/run_positional_study.sh [OUT_DIR]
#
# Environment (defaults in brackets):
#   DISTATTN_BENCH  the binary [build/bench/distattn_bench, else build-bench/dev/distattn_bench]
#   PYTHON [python3]   SIZES ["2K 4K 8K 16K 32K 64K 128K"]   PASSES ["fwd fwdbwd"]   MASKS ["causal full"]
#   VARIANTS ["none rope alibi"]   SHAPE ["-B 1 -H 32 -d 128 --dtype bf16"]
#   OPS ["dense"; "dense ring" adds the ring]   RING_LAUNCH [launch/mpirun.sh, i.e. one rank per GPU of the node;
#   e.g. "launch/mpirun.sh -n 2"]   LAYOUT [zigzag]: the ring's shard layout
#   ITERS / WARMUP  one -n / -w for every S [by S: <= 8K 40/10, 16K 20/3, 32K 10/2, 64K 5/1, larger 3/1]
#   WARMUP_MS [300]: distattn_bench --warmup-ms, the warm-up goes on until this many ms have passed, so that every
#   variant is timed at the clock the GPU keeps under load (an H200 drops from its 1980 MHz boost to ~1800-1845 MHz
#   within ~60-100 ms once its power cap applies: bench/results/2026-11-23_h200_s11_clocks); 0: -w only
#   CHECK [1] with CHECK_MAX_SEQ [2K]: -c 1 checks every variant against the fp64 host engine at S <= 2K
#   ROUNDS [1]: runs of each variant per (S, pass, mask, op), interleaved; the table uses their median time
#   MAX_SECONDS [0: none]: launch no run after this many seconds (the rest is recorded as skipped)
#   DISTATTN_GIT_COMMIT  the commit reported in the JSON (the binary's configure-time commit otherwise)
# Exit code: 0 every run OK; 1 a run failed, a check found wrong values, or runs were skipped; 2 usage error.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/study_common.sh
source "$ROOT/bench/study_common.sh"
find_bench run_positional_study build-bench
PY=${PYTHON:-python3}
OUT=${1:-$ROOT/bench/results/positional_$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT" || exit 2
SIZES=${SIZES:-"2K 4K 8K 16K 32K 64K 128K"}
PASSES=${PASSES:-"fwd fwdbwd"}
MASKS=${MASKS:-"causal full"}
VARIANTS=${VARIANTS:-"none rope alibi"}
OPS=${OPS:-dense}
RING_LAUNCH=${RING_LAUNCH:-$ROOT/launch/mpirun.sh}
LAYOUT=${LAYOUT:-zigzag}
SHAPE=${SHAPE:-"-B 1 -H 32 -d 128 --dtype bf16"}
CHECK=${CHECK:-1}
CHECK_MAX_SEQ=${CHECK_MAX_SEQ:-2K}
MAX_SECONDS=${MAX_SECONDS:-0}
ROUNDS=${ROUNDS:-1}
if ! [[ $ROUNDS =~ ^[1-9][0-9]*$ ]]; then
  echo "run_positional_study: ROUNDS must be a positive integer, got '$ROUNDS'" >&2
  exit 2
fi
read_warmup_ms run_positional_study 300
# A singleton MPI init as root (device machines) needs these with Open MPI; harmless elsewhere.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# seq_of 2K -> 2048 (K/M suffixes, as distattn_bench reads them).
seq_of() {
  local s=${1^^}
  case $s in
    *K) echo $((${s%K} * 1024)) ;;
    *M) echo $((${s%M} * 1048576)) ;;
    *) echo $((s)) ;;
  esac
}
# timing_of SEQ -> "-n N -w W": fewer iterations where one iteration takes long (128K fwd+bwd: seconds).
timing_of() {
  local s=$1 n w
  if ((s <= 8192)); then n=40 w=10
  elif ((s <= 16384)); then n=20 w=3
  elif ((s <= 32768)); then n=10 w=2
  elif ((s <= 65536)); then n=5 w=1
  else n=3 w=1
  fi
  echo "-n ${ITERS:-$n} -w ${WARMUP:-$w} --warmup-ms $WARMUP_MS"
}

read -r -a variants <<<"$VARIANTS"
for v in "${variants[@]}"; do
  case $v in none | rope | alibi) ;; *) echo "run_positional_study: unknown variant '$v'" >&2; exit 2 ;; esac
done
for m in $MASKS; do
  case $m in causal | full) ;; *) echo "run_positional_study: unknown mask '$m' (causal, full)" >&2; exit 2 ;; esac
done
RING_ROPE=0
for op in $OPS; do
  case $op in
    dense) ;;
    ring)
      # The ring op takes --rope only once it implements it: its option check refuses the flag otherwise.
      if "$BENCH" -o ring --rope -h >/dev/null 2>&1; then RING_ROPE=1; fi ;;
    *) echo "run_positional_study: unknown op '$op' (dense, ring)" >&2; exit 2 ;;
  esac
done

RUNS=$(mktemp -d "${TMPDIR:-/tmp}/positional_study.XXXXXX") || exit 2
trap 'rm -rf "$RUNS"' EXIT
MANIFEST=$RUNS/manifest.tsv
: >"$MANIFEST"
LOG=$OUT/study.log
: >"$LOG"
{
  echo "# run_positional_study: $(date -u +%Y-%m-%dT%H:%M:%SZ), binary $BENCH"
  echo "# sizes $SIZES; passes $PASSES; masks $MASKS; variants $VARIANTS; ops $OPS; shape $SHAPE; check $CHECK (S <= $CHECK_MAX_SEQ); rounds $ROUNDS"
  [[ " $OPS " == *" ring "* ]] && echo "# ring: $RING_LAUNCH, layout $LAYOUT, rope variant $([[ $RING_ROPE == 1 ]] && echo yes || echo 'no (the ring op refuses --rope)')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv,noheader 2>/dev/null | sed 's/^/# gpu: /'
} | tee -a "$LOG"

FAILED=0
order=0
combo=0
start=$SECONDS
for size in $SIZES; do
  seq=$(seq_of "$size")
  timing=$(timing_of "$seq")
  for pass in $PASSES; do
    for mask in $MASKS; do
      for op in $OPS; do
        for ((round = 1; round <= ROUNDS; ++round)); do
          # Rotate the variant order per (S, pass, mask, op) and round: none rope alibi, rope alibi none, ...
          nv=${#variants[@]}
          for ((j = 0; j < nv; ++j)); do
            v=${variants[$(((combo + j) % nv))]}
            tag="${pass}_${mask}_${v}_${size}"
            ((ROUNDS > 1)) && tag+="_r$round"
            launch=()
            if [[ $op == ring ]]; then
              tag="ring_$tag"
              if [[ $v == rope && $RING_ROPE == 0 ]]; then continue; fi
              read -r -a launch <<<"$RING_LAUNCH"
            fi
            order=$((order + 1))
            if ((MAX_SECONDS > 0 && SECONDS - start >= MAX_SECONDS)); then
              printf '%d\t%s\t-1\t0\t\n' "$order" "$tag" >>"$MANIFEST"
              echo "=== [$order] $tag: skipped (MAX_SECONDS=$MAX_SECONDS reached)" | tee -a "$LOG" >&2
              FAILED=1
              continue
            fi
            args="-o $op -b $seq -e $seq $SHAPE --pass $pass $timing -c $CHECK --check-max-seq $CHECK_MAX_SEQ"
            [[ $op == ring ]] && args+=" --layout $LAYOUT"
            [[ $mask == causal ]] && args+=" --causal"
            [[ $v == rope ]] && args+=" --rope"
            [[ $v == alibi ]] && args+=" --alibi"
            echo "=== [$order] $tag: ${launch[*]}${launch[*]:+ }distattn_bench $args" | tee -a "$LOG" >&2
            t0=$SECONDS
            # shellcheck disable=SC2086
            "${launch[@]}" "$BENCH" $args -J "$RUNS/$tag.json" >>"$LOG" 2>&1
            rc=$?
            grep -v '^#' "$LOG" | tail -n 1 >&2
            if [[ $rc -ne 0 ]]; then
              echo "run_positional_study: $tag exited $rc (1: wrong values, 2: error; see $LOG)" >&2
              FAILED=1
            fi
            json=""
            [[ -f $RUNS/$tag.json ]] && json=$RUNS/$tag.json
            printf '%d\t%s\t%d\t%d\t%s\n' "$order" "$tag" "$rc" "$((SECONDS - t0))" "$json" >>"$MANIFEST"
          done
          combo=$((combo + 1))
        done
      done
    done
  done
done
echo "# runs took $((SECONDS - start)) s" | tee -a "$LOG"

STUDY=$OUT/positional_study.json
"$PY" "$ROOT/bench/study_lib.py" merge-positional "$MANIFEST" "$STUDY" "sizes=$SIZES" "passes=$PASSES" \
  "masks=$MASKS" "variants=$VARIANTS" "ops=$OPS" "shape=$SHAPE" "check=$CHECK" "check_max_seq=$CHECK_MAX_SEQ" \
  "iters=${ITERS:-by S}" "warmup=${WARMUP:-by S}" "warmup_ms=$WARMUP_MS" "rounds=$ROUNDS" "binary=$BENCH" || FAILED=1
if [[ -f $STUDY ]]; then
  if "$PY" -c "import matplotlib" 2>/dev/null; then
    "$PY" "$ROOT/bench/plot.py" "$STUDY" --out "$OUT" --only positional || FAILED=1
  else
    echo "# no matplotlib here: plot later with bench/plot.py $STUDY --out DIR --only positional"
  fi
  "$PY" "$ROOT/bench/compare.py" --positional "$STUDY" | tee "$OUT/overhead.txt"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || FAILED=1
else
  FAILED=1
fi
exit $FAILED
