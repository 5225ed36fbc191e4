#!/usr/bin/env bash
# One call on a GPU machine (build here for 90a, carry the binaries): the GPU tests, a compute-sanitizer
# spot check, the side-by-side benchmark with the PyTorch peers, and the ALiBi-overhead pair, all
# logged under OUT_DIR (JSON + logs packed into one tarball so the device tool can bring them back).
#
#   bench/device_check.sh BIN_DIR OUT_DIR
#     BIN_DIR holds distattn_tests_gpu and distattn_bench (and optionally distattn_example).
#   Environment: DENSE_SWEEP (default "-b 4K -e 16K -f 2"), JOBS (default: every dense job, alibi, rope),
#   WARMUP_MS (default 300: --warmup-ms of every benchmark, the peers' too: the clock the GPU keeps under load),
#   DISTATTN_GIT_COMMIT (the commit the binaries were built from; recorded in the JSON).
set -uo pipefail
bin=${1:?BIN_DIR}
out=${2:?OUT_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
status=0
WARMUP_MS=${WARMUP_MS:-300}

nvidia-smi -L | tee "$out/device.txt"

echo "=== GPU tests"
"$bin/distattn_tests_gpu" --gtest_brief=1 --gtest_output="json:$out/gpu_tests.json" > "$out/gpu_tests.log" 2>&1
rc=$?; echo "gpu tests rc=$rc"; tail -3 "$out/gpu_tests.log"; [ $rc -eq 0 ] || status=1

if command -v compute-sanitizer >/dev/null; then
  echo "=== compute-sanitizer memcheck (masks, block lists, accumulate, RoPE)"
  compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/distattn_tests_gpu" --gtest_brief=1 \
    --gtest_filter='FlashForward.ZigzagAndStrided:FlashForward.BlockListFullAndPartial:FlashForward.AccumulateTwoHalves:FlashBwd.HandBuiltBlockList*:FlashBwd.Accumulate*:RopeGpu.ScalarPathShapes' \
    > "$out/memcheck.log" 2>&1
  rc=$?; echo "memcheck rc=$rc"; grep -E "ERROR SUMMARY" "$out/memcheck.log" | tail -1; [ $rc -eq 0 ] || status=1
fi

if [ -x "$bin/distattn_example" ]; then
  echo "=== downstream example"
  "$bin/distattn_example" || status=1
fi

echo "=== ALiBi overhead: causal 16K with and without ALiBi (same binary, same run)"
for a in "" "--alibi"; do
  "$bin/distattn_bench" -o dense -b 16K -e 16K --causal $a -H 32 -d 128 -n 30 -w 5 --warmup-ms "$WARMUP_MS" -c 0 \
    -J "$out/alibi_pair${a:+_alibi}.json" 2>&1 | grep -vE "^# (rank|git|TFLOPs|sweep|check)"
done

echo "=== side by side"
WARMUP_MS=$WARMUP_MS DISTATTN_BENCH="$bin/distattn_bench" DENSE_SWEEP="${DENSE_SWEEP:--b 4K -e 16K -f 2}" \
  JOBS="${JOBS:-dense-fwd dense-fwd-causal dense-fwdbwd dense-fwdbwd-causal alibi rope}" \
  "$here/bench/run_side_by_side.sh" "$out/sbs" > "$out/sbs.log" 2>&1
rc=$?; echo "side by side rc=$rc"; [ $rc -eq 0 ] || status=1
tar czf "$out/results.tgz" -C "$out" sbs $(cd "$out" && ls alibi_pair*.json gpu_tests.json 2>/dev/null)
rm -rf "$out/sbs"
cat "$out/sbs.log" | sed -n '/^# side by side/,$p'
exit $status
