#!/usr/bin/env bash
# Final device run (helper alibi): GPU tests, the timing program (random and adversarial inputs, cutoff on/off,
# interleaved), distattn_bench interleaved (none / ALiBi), PyTorch SDPA peers, memcheck on the cutoff test.
# Everything lands in $OUT/r/ and is packed into $OUT/results.tgz (the device returns few files).
set -u
D=build-al/dev
R=$OUT/r; mkdir -p $R
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export DISTATTN_GIT_COMMIT=${DISTATTN_GIT_COMMIT:-working-tree}
pack() { tar czf $OUT/results.tgz -C $OUT r; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/device.txt
echo "=== tests"
$D/distattn_tests_gpu --gtest_filter='Flash*:Rope*:BlockLayout*' > $R/tests.log 2>&1; echo "tests rc $?"
grep -E "^\[ *(FAILED|PASSED|SKIPPED) |Failure|tests ran" $R/tests.log | tail -20
echo "OK lines: $(grep -c '^\[       OK' $R/tests.log)"
pack
echo "=== timing program"
$D/fwd_timing $R/fwd_timing.json 1.0 > $R/fwd_timing.log 2>&1; echo "rc $?"
grep -E "^[0-9]|identical|spot|pre-pass" $R/fwd_timing.log | grep -v "none-adv\|nocut-adv" | head -80
pack
echo "=== distattn_bench, interleaved per rep: causal none, causal alibi, non-causal none, non-causal alibi"
for rep in 1 2 3; do
  chk=0; [ $rep = 1 ] && chk=1
  for m in causal nc; do
    mf=""; [ $m = causal ] && mf="--causal"
    for a in none alibi; do
      af=""; [ $a = alibi ] && af="--alibi"
      $D/distattn_bench -o dense -b 4K -e 32K -f 2 -H 32 -d 128 --dtype bf16 --pass fwd $mf $af -n 30 -w 5 -c $chk \
        -J $R/bench_${m}_${a}_r$rep.json > $R/bench_${m}_${a}_r$rep.log 2>&1
      echo "--- $m $a rep $rep rc $? $(grep -E '^ +[0-9]+ ' $R/bench_${m}_${a}_r$rep.log | awk '{printf "%s:%s ", $1, $7}') $(grep -o 'Out of bounds values : .*' $R/bench_${m}_${a}_r$rep.log)"
    done
  done
done
for a in none alibi; do
  af=""; [ $a = alibi ] && af="--alibi"
  $D/distattn_bench -o dense -b 128K -e 128K -H 32 -d 128 --dtype bf16 --pass fwd --causal $af -n 5 -w 1 -c 0 \
    -J $R/bench_causal_${a}_128K.json > $R/bench_causal_${a}_128K.log 2>&1
  echo "--- causal $a 128K rc $? $(grep -E '^ +[0-9]+ ' $R/bench_causal_${a}_128K.log | awk '{printf "%s:%s ", $1, $7}')"
done
pack
echo "=== PyTorch SDPA (flash, cudnn)"
for m in causal nc; do
  mf=""; [ $m = causal ] && mf="--causal"
  python3 bench/peers/torch_peers.py -o dense -b 4K -e 32K -f 2 -H 32 -d 128 --dtype bf16 --pass fwd $mf \
    --peers flash,cudnn -n 30 -w 5 -J $R/torch_${m}.json > $R/torch_${m}.log 2>&1
  echo "--- torch $m rc $?"; grep -vE "^#" $R/torch_${m}.log | tail -10
done
pack
echo "=== memcheck: ALiBi cutoff test"
timeout 60 compute-sanitizer --tool memcheck $D/distattn_tests_gpu --gtest_filter='FlashForward.AlibiCutoff*' > $R/memcheck.log 2>&1
echo "memcheck rc $?"; tail -4 $R/memcheck.log
pack
