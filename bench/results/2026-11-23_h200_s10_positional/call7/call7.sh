#!/bin/bash
# Session 10, call 7 (one H200): why the positional study (call 6) read the fused RoPE forward at 8K causal as +10%
# when the A/B runs of calls 1-3 read +4-5%. Same binary as call 6; the study's exact command line and variations of
# it (check flag, iteration counts, one size or two per process, longer warm-up), none vs rope, three rounds.
set -u
W=/tmp/s10c7; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s10/binsF.tar.xz -C $W || exit 1
B=$W/stage/distattn_bench
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
base="-o dense -H 32 -d 128 --dtype bf16 --pass fwd --causal"
for r in 1 2 3; do
  for cfg in "-B 1 -b 8192 -e 8192 -n 40 -w 10 -c 1 --check-max-seq 2K" "-B 1 -b 8192 -e 8192 -n 40 -w 10 -c 0" \
             "-B 1 -b 8K -e 16K -n 30 -w 10 -c 0" "-B 1 -b 8192 -e 8192 -n 40 -w 200 -c 0" "-b 2K -e 2K -B 8 -n 40 -w 10 -c 0"; do
    for v in none rope; do
      extra=""; [[ $v == rope ]] && extra="--rope"
      printf "%s %-4s %-52s " $r $v "$cfg" | tee -a $L/study_ab.txt
      $B $base $cfg $extra 2>&1 | grep -E "^ +[0-9]+ " | awk '{printf "%s ", $0} END {print ""}' | tee -a $L/study_ab.txt
    done
  done
done
mkdir -p "$OUT" && tar czf "$OUT/s10c7.tgz" -C $W logs
