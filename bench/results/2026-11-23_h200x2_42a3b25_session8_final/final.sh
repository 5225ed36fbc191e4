#!/bin/bash
# Session 8, final check (nvidia-h200-x2): binaries built here for 90a from main 42a3b25 (dedff18 + a README edit).
# The GPU suite, every gpu-mpi program at np 2, the bench ops' checked GPU runs after the bench dedupe (helper's list,
# -c 1: 0 wrong expected), and the Python peers end to end (dense SDPA, FlexAttention, context_parallel) on small sizes.
set -u
ROOT=$(pwd)
W=/tmp/s8f; L=$W/logs
rm -rf $W && mkdir -p $L/runs
tar xJf build-s8/binsF.tar.xz -C $W || { echo "untar failed"; exit 1; }
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DISTATTN_COMM_TIMEOUT_S=60
export DISTATTN_GIT_COMMIT=${COMMIT:-unknown} PYTHONUNBUFFERED=1
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-400}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s8f.tgz" -C $W logs'
S=$W/stage; B=$S/distattn_bench
MPI=("$ROOT/launch/mpirun.sh" -n 2)
STEP_SUMMARY='PASSED|FAILED' step tests_gpu 120 $S/distattn_tests_gpu --gtest_brief=1
for t in ring ring_sparse mha dilated_dist ce_exchange; do
  STEP_SUMMARY='PASSED|FAILED' step mpi_$t 90 "${MPI[@]}" $S/distattn_mpi_test_${t}_gpu --gtest_brief=1
done
STEP_SUMMARY='PASSED|FAILED' step mpi_nccl_comm 60 "${MPI[@]}" $S/distattn_mpi_test_nccl_comm --gtest_brief=1
C="-c 1 -n 3 -w 1"; D1="-b 1K -e 2K -H 8 -d 128"; SP="-b 2K -e 4K -H 8 -d 128"
step dense_gqa 30 $B -o dense $D1 --pass fwdbwd --causal --gqa 2 $C
step dense_alibi_win 30 $B -o dense $D1 --alibi --window 300 --pass fwdbwd $C
step dense_rope_gptj 30 $B -o dense $D1 --rope --pass fwdbwd --causal --rotary-dim 64 --style gptj $C
step dense_rope_sep 30 env DISTATTN_ROPE_BWD=separate $B -o dense $D1 --rope --pass fwdbwd $C -J $L/runs/rope_sep.json
step dense_rope_bwd 30 $B -o dense $D1 --rope --pass bwd $C -J $L/runs/rope_bwd.json
step sparse_bd 30 $B -o sparse $SP --sparse-pattern block-diagonal --sparse-block 512 --causal --pass fwdbwd $C
step sparse_sw_alibi 30 $B -o sparse $SP --sparse-pattern sliding-window --window 512 --alibi --pass bwd $C
step sparse_bigbird 30 $B -o sparse $SP --sparse-pattern bigbird --gqa 2 $C
step rope_op 30 $B -o rope -b 2K -e 4K -H 16 -d 128 --gqa 4 --rotary-dim 64 --style gptj $C -J $L/runs/rope_op.json
step dilated_alibi 30 $B -o dilated $SP --dilated-segments 512,1024 --dilated-rates 1,2 --pass fwdbwd --causal --alibi $C
step mha_dense 30 $B -o mha -b 1K -e 1K -H 4 -d 64 --core dense --pass fwdbwd --causal $C
step mha_sparse 30 $B -o mha -b 1K -e 1K -H 4 -d 64 --core sparse --sparse-pattern block-diagonal --sparse-block 256 --pass fwdbwd $C
R="-b 4K -e 8K -H 8 -d 128 $C"
step ring_rope 40 "${MPI[@]}" $B -o ring $R --causal --pass fwdbwd --rope --rotary-dim 64
step ring_bsparse 40 "${MPI[@]}" $B -o ring $R --layout contiguous --sparse-pattern block-diagonal --sparse-block 1024 --causal --pass fwdbwd
step ring_striped 40 "${MPI[@]}" $B -o ring $R --layout striped --alibi --window 1000 --gqa 2 --pass fwdbwd
step ring_heads 40 env DISTATTN_RING_BWD_OWN=heads "${MPI[@]}" $B -o ring $R --causal --pass fwdbwd --gqa 2
step dilated_dist 40 "${MPI[@]}" $B -o dilated $R --dilated-segments 1024,2048 --dilated-rates 1,2 --pass fwdbwd --causal
step mha_ring 40 "${MPI[@]}" $B -o mha -b 2K -e 2K -H 4 -d 64 $C --core ring --pass fwdbwd --causal
step bad_headdim 10 bash -c "$B -o dense -b 1K -e 1K -d 72 -c 1; test \$? -eq 2"
step peers_dense 90 env DISTATTN_BENCH=$B ITERS=3 WARMUP=1 CHECK=0 DENSE_SWEEP="-b 4K -e 8K -f 2" JOBS="dense-fwd-causal" bash bench/run_side_by_side.sh $L/peers_dense
step peers_flex 120 env DISTATTN_BENCH=$B ITERS=3 WARMUP=1 CHECK=0 SWEEP="-b 4K -e 8K -f 2" DENSE_TIMING="-n 3 -w 1" JOBS="bdiag window" bash bench/run_sparse_side_by_side.sh $L/peers_flex
step peers_cp 120 env NP=2 DISTATTN_BENCH=$B RING_SWEEP="-b 8K -e 8K" ITERS=3 WARMUP=1 CHECK=0 JOBS="fwd-causal" bash bench/run_ring_side_by_side.sh $L/peers_cp
grep -h "Out of bounds\|^ *[0-9].* [0-9]$" $L/*.log | grep -c "0 OK" > $L/checked_ok.txt
grep -l "Out of bounds values : [1-9]" $L/*.log > $L/checked_bad.txt
echo "checked runs OK: $(cat $L/checked_ok.txt); with wrong elements: $(wc -l < $L/checked_bad.txt)"
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
