#!/bin/bash
# Session 9, call 8 (nvidia-h200-x2): check of main d467deb. The GPU suite, every gpu-mpi program at np 2 (the ring's
# engine delta, the dilated overwrite-first across ranks), checked bench runs (fused RoPE in dense and the mha layer,
# persistent 6K), then timings: ring fwd+bwd causal 32K / 64K on 2 GPUs (exposed communication), RoPE forward at 8K /
# 16K (none / fused / separate, three interleaved rounds, causal and not), dense 8K causal against cuDNN, LongNet
# fwd+bwd 64K on one GPU.
set -u
ROOT=$(pwd)
W=/tmp/s9f; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s9/binsH.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
export DISTATTN_GIT_COMMIT=${COMMIT:-d467deb} PYTHONUNBUFFERED=1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-540}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s9f.tgz" -C $W logs'
S=$W/stage; B=$S/distattn_bench
MPI=("$ROOT/launch/mpirun.sh" -n 2)
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='PASSED|FAILED' step tests_gpu 150 $S/distattn_tests_gpu --gtest_brief=1
for t in ring ring_sparse mha dilated_dist ce_exchange; do
  STEP_SUMMARY='PASSED|FAILED' step mpi_$t 90 "${MPI[@]}" $S/distattn_mpi_test_${t}_gpu --gtest_brief=1
done
STEP_SUMMARY='PASSED|FAILED' step mpi_nccl_comm 60 "${MPI[@]}" $S/distattn_mpi_test_nccl_comm --gtest_brief=1
C="-c 1 -n 3 -w 1"; D1="-b 1K -e 2K -H 8 -d 128"
step dense_rope_fused 30 $B -o dense $D1 --rope --pass fwdbwd --causal --gqa 2 $C -J $L/runs/rope_fused.json
step dense_rope_sep 30 env DISTATTN_ROPE_FWD=separate $B -o dense $D1 --rope --pass fwd $C
step dense_6k_persistent 60 $B -o dense -b 6K -e 6K -H 4 -d 128 --causal --pass fwd $C --check-max-seq 8K
step mha_dense_d128 40 $B -o mha -b 2K -e 2K -H 4 -d 128 --core dense --pass fwdbwd --causal $C
step dilated_b3 40 $B -o dilated --dilated-segments 1K,2K --dilated-rates 1,2 -b 4K -e 4K -B 3 -H 8 -d 128 --causal --pass fwdbwd $C
R="-b 4K -e 8K -H 8 -d 128 $C"
step ring_check 40 "${MPI[@]}" $B -o ring $R --causal --pass fwdbwd --gqa 2
step ring_rope 40 "${MPI[@]}" $B -o ring $R --causal --pass fwdbwd --rope
step dilated_dist 40 "${MPI[@]}" $B -o dilated $R --dilated-segments 1024,2048 --dilated-rates 1,2 --pass fwdbwd --causal
step ring_fwdbwd_32k_64k 120 "${MPI[@]}" $B -o ring -b 32K -e 64K -H 32 -d 128 --causal --pass fwdbwd -n 5 -w 2 -c 0 -J $L/runs/ring_fwdbwd.json
for r in 1 2 3; do
  for mask in causal full; do
    for v in none fused separate; do
      e="X=1"; a="--rope"
      [[ $v == none ]] && a=""
      [[ $v == separate ]] && e="DISTATTN_ROPE_FWD=separate"
      m=""; [[ $mask == causal ]] && m="--causal"
      printf "%s %-6s %-8s " $r $mask $v >> $L/rope.txt
      env $e $B -o dense -B 1 -H 32 -d 128 --dtype bf16 -b 8K -e 16K --pass fwd -n 40 -w 10 -c 0 $m $a 2>&1 | grep -E "^ +[0-9]+ " | awk '{printf "%s %s  ", $1, $7} END {print ""}' >> $L/rope.txt
    done
  done
done
cat $L/rope.txt
step peers_dense 120 env DISTATTN_BENCH=$B ITERS=20 WARMUP=5 CHECK=0 DENSE_SWEEP="-b 8K -e 16K -f 2" JOBS="dense-fwd-causal dense-fwd" bash bench/run_side_by_side.sh $L/peers_dense
step longnet_64k 60 $B -o dilated -H 32 -d 128 --dtype bf16 -c 0 -n 5 -w 2 -b 64K -e 64K --causal --pass fwdbwd
grep -l "Out of bounds values : [1-9]" $L/*.log > $L/checked_bad.txt
echo "checked runs with wrong elements: $(wc -l < $L/checked_bad.txt); OK lines: $(grep -h 'Out of bounds values : 0 OK' $L/*.log | wc -l)"
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
