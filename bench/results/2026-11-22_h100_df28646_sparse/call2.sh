#!/usr/bin/env bash
# Device call 2: ours vs FlexAttention side by side (16K, 64K), dense at the same S, block-list overhead probes, ncu.
set -u
D=build-bs/dev
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0 DISTATTN_GIT_COMMIT=df28646
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/device.txt 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" >> $OUT/device.txt 2>&1
echo "== side by side"
DISTATTN_BENCH=$D/distattn_bench ITERS=20 WARMUP=5 timeout 170 bench/run_sparse_side_by_side.sh $OUT/sbs > $OUT/sbs.log 2>&1
echo "sbs rc $?"; cat $OUT/sbs/table.txt
B="$D/distattn_bench -H 32 -d 128 --dtype bf16 -c 0"
echo "== probes: dense B=8/B=32 S=2K (same pairs as bdiag2048 at 16K/64K, no block list); fwdbwd 16K"
timeout 15 $B -o dense -B 8 -b 2K -e 2K -n 20 -w 5 -J $OUT/dense_b8_2k.json 2>&1 | grep -E "^ +2048"
timeout 15 $B -o dense -B 32 -b 2K -e 2K -n 20 -w 5 -J $OUT/dense_b32_2k.json 2>&1 | grep -E "^ +2048"
timeout 15 $B -o sparse --sparse-pattern block-diagonal -b 16K -e 16K --pass fwdbwd -n 10 -w 3 -J $OUT/bdiag_fwdbwd.json 2>&1 | grep -E "^ +16384"
timeout 15 $B -o sparse --sparse-pattern sliding-window --window 2048 --causal -b 16K -e 16K --pass fwdbwd -n 10 -w 3 -J $OUT/win_fwdbwd.json 2>&1 | grep -E "^ +16384"
timeout 15 $B -o dense -b 16K -e 16K --pass fwdbwd -n 5 -w 2 -J $OUT/dense_fwdbwd.json 2>&1 | grep -E "^ +16384"
echo "== ncu"
N="ncu --clock-control none -k regex:flash_fwd --launch-skip 3 --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats"
timeout 40 $N $B -o sparse --sparse-pattern block-diagonal -b 16K -e 16K -n 1 -w 3 > $OUT/ncu_bdiag16k.log 2>&1; echo "ncu rc $?"
timeout 40 $N $B -o dense -B 8 -b 2K -e 2K -n 1 -w 3 > $OUT/ncu_dense_b8_2k.log 2>&1; echo "ncu rc $?"
timeout 40 $N $B -o sparse --sparse-pattern sliding-window --window 2048 --causal -b 16K -e 16K -n 1 -w 3 > $OUT/ncu_win16k.log 2>&1; echo "ncu rc $?"
timeout 40 $N $B -o dense -b 16K -e 16K -n 1 -w 3 > $OUT/ncu_dense16k.log 2>&1; echo "ncu rc $?"
grep -E "^  [a-z_]|Duration|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Theoretical Occ|Issued Warp|No Eligible" $OUT/ncu_*.log | head -60
echo "== strided (ours vs flex)"
DISTATTN_BENCH=$D/distattn_bench ITERS=20 WARMUP=5 JOBS=strided timeout 60 bench/run_sparse_side_by_side.sh $OUT/sbs_strided > $OUT/sbs_strided.log 2>&1
echo "strided rc $?"; cat $OUT/sbs_strided/table.txt 2>/dev/null
