#!/bin/bash
# The A/B loop of call1.sh (L and W from the environment).
set -u
BENCH=$W/stage/distattn_bench
SH="-B 1 -H 32 -d 128 --dtype bf16 --pass fwd -c 0"
one() {  # tag env... -- args
  local tag=$1; shift
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" $BENCH -o dense $SH "$@" -J $L/runs/$tag.json >> $L/bench.log 2>&1 || echo "FAIL $tag" >> $L/bench.log
}
ab() {
  for round in 1 2 3; do
    for S in 8K 4K 16K 2K 32K; do
      case $S in 2K|4K|8K) it="-n 40 -w 10";; 16K) it="-n 20 -w 3";; *) it="-n 10 -w 2";; esac
      for mask in causal full; do
        m=""; [[ $mask == causal ]] && m="--causal"
        one r${round}_${mask}_${S}_none X=1 -- -b $S -e $S $it $m
        one r${round}_${mask}_${S}_off DISTATTN_ROPE_OVERLAP=off -- -b $S -e $S $it $m --rope
        one r${round}_${mask}_${S}_on DISTATTN_ROPE_OVERLAP=on -- -b $S -e $S $it $m --rope
      done
    done
  done
  for round in 1 2; do
    for knob in "CTAS=8" "CTAS=16" "CTAS=24" "CTAS=48" "FIRST=1" "FIRST=2" "FIRST=8"; do
      one t${round}_causal_8K_${knob} DISTATTN_ROPE_OVERLAP=on DISTATTN_ROPE_OVERLAP_$knob -- -b 8K -e 8K -n 40 -w 10 --causal --rope
    done
    one t${round}_causal_8K_none X=1 -- -b 8K -e 8K -n 40 -w 10 --causal
  done
}
ab
