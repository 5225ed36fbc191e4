#!/bin/bash
# GPU verification of branch hopper-alibi-cutoff (exact ALiBi underflow cutoff in the Hopper forward; helper
# hopper-alibi-cutoff, session 4). One call, from the repo root of /work/main (any branch checked out):
#   run(kind "nvidia-h100-x1" (else "nvidia-h200"), carry ["build-hopper-cutoff"], timeout_s 300):
#     bash build-hopper-cutoff/run.sh
# Binaries here (stripped, sm_90a, gzipped: 12 MB; BUILD.txt): distattn_tests_gpu and distattn_bench of the branch,
# distattn_bench_old of main (no Hopper cutoff: self-ALiBi goes to the Hopper kernel up to 8192 keys, the mma.sync
# kernel with its cutoff beyond). Steps (each packs $OUT/hopper_cutoff.tgz again, so a timeout still returns the logs):
#   1. every GPU test (the new ones: FlashForwardHopper.AlibiCutoff*), ~90 s;
#   2. distattn_bench -o dense -b 4K -e 64K -f 2 [--causal] [--alibi] -c 0 -n 20 -w 5, old vs new interleaved, plus
#      the new binary with the Hopper cutoff off (DISTATTN_HOPPER_CUTOFF_MIN_KV=huge: the cutoff's own gain) and at
#      1K-4K with the cutoff from 0 keys (to settle the default 4096), and an fp64 check (-c 1) of ALiBi at 4K, ~80 s;
#   3. compute-sanitizer memcheck on the new GPU tests (LongBothSchedules left out: host-bound; its one-CTA-per-unit
#      launch is covered by PersistentGrids' grid 0), with the time left.
set -u
cd "$(dirname "$0")"
O=${OUT:-/tmp/hopper_cutoff_out}
R=$O/hopper_cutoff
mkdir -p "$R"
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
pack() { tar czf "$O/hopper_cutoff.tgz" -C "$O" hopper_cutoff 2>/dev/null; }
left() { echo $((285 - ($(date +%s) - T0))); }
B=/tmp/hopper_cutoff_bin
mkdir -p "$B"
for f in distattn_tests_gpu distattn_bench distattn_bench_old; do gunzip -c $f.gz > "$B/$f" && chmod +x "$B/$f"; done
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader | tee "$R/gpu.txt"
cat BUILD.txt 2>/dev/null | head -3

echo "== 1. GPU tests"
timeout 150 "$B/distattn_tests_gpu" > "$R/gpu_tests.log" 2>&1
echo "distattn_tests_gpu rc $? ($(($(date +%s) - T0)) s)"
grep -E "^\[==========\]|^\[  PASSED  \]|^\[  FAILED  \]|^\[  SKIPPED \] [0-9]" "$R/gpu_tests.log" | tail -20
grep -E "AlibiCutoff|HopperCutoff" "$R/gpu_tests.log" | grep -E "OK|FAILED" | head -12
grep -B2 -A8 "Failure" "$R/gpu_tests.log" | head -60
pack

echo "== 2. bench (ms; old = main, new = branch)"
bench() {  # name, binary, env, args...
  local name=$1 bin=$2 env=$3
  shift 3
  local t
  t=$(left)
  if [ "$t" -lt 50 ]; then
    echo "-- $name skipped (time)"
    return
  fi
  timeout $((t < 100 ? t - 30 : 60)) env $env "$bin" -o dense "$@" -J "$R/$name.json" > "$R/$name.txt" 2>&1
  echo "-- $name rc $?: $*"
  grep -vE "^#|^$" "$R/$name.txt" | grep -E "^ *[0-9]" | head -8
}
for m in none causal; do
  mk=""
  [ $m = causal ] && mk=--causal
  for a in noalibi alibi; do
    al=""
    [ $a = alibi ] && al=--alibi
    for b in old new; do
      bin="$B/distattn_bench"
      ev=DISTATTN_GIT_COMMIT=adbbbd3
      [ $b = old ] && bin="$B/distattn_bench_old" && ev=DISTATTN_GIT_COMMIT=3abc2c5
      bench "${m}_${a}_${b}" $bin "$ev" -b 4K -e 64K -f 2 $mk $al -c 0 -n 20 -w 5
    done
  done
  bench "${m}_alibi_new_nocut" "$B/distattn_bench" "DISTATTN_HOPPER_CUTOFF_MIN_KV=1000000000 DISTATTN_GIT_COMMIT=adbbbd3" -b 4K -e 64K -f 2 $mk \
    --alibi -c 0 -n 20 -w 5
  bench "${m}_alibi_new_cut0_short" "$B/distattn_bench" "DISTATTN_HOPPER_CUTOFF_MIN_KV=0 DISTATTN_GIT_COMMIT=adbbbd3" -b 1K -e 4K -f 2 $mk --alibi \
    -c 0 -n 30 -w 5
  bench "${m}_alibi_new_default_short" "$B/distattn_bench" "DISTATTN_GIT_COMMIT=adbbbd3" -b 1K -e 4K -f 2 $mk --alibi -c 0 -n 30 -w 5
  bench "${m}_noalibi_new_short" "$B/distattn_bench" "DISTATTN_GIT_COMMIT=adbbbd3" -b 1K -e 4K -f 2 $mk -c 0 -n 30 -w 5
  bench "${m}_alibi_new_check4K" "$B/distattn_bench" "DISTATTN_GIT_COMMIT=adbbbd3" -b 4K -e 4K $mk --alibi -c 1 -n 3 -w 1
  pack
done
echo "bench done ($(($(date +%s) - T0)) s)"

echo "== 3. memcheck on the new tests ($(left) s left)"
if [ "$(left)" -gt 30 ]; then
  timeout $(($(left) - 10)) compute-sanitizer --tool memcheck --error-exitcode 9 "$B/distattn_tests_gpu" \
    --gtest_filter='FlashForwardHopper.AlibiCutoffBitIdentical:FlashForwardHopper.AlibiCutoffPersistentGrids:FlashForwardHopper.AlibiCutoffArgumentsChecked' \
    > "$R/memcheck.log" 2>&1
  echo "memcheck rc $? (124: ran out of time; 9: errors)"
  grep -E "ERROR SUMMARY|^\[  (PASSED|FAILED) |^\[       OK \]" "$R/memcheck.log" | tail -8
fi
pack
echo "total $(($(date +%s) - T0)) s"
