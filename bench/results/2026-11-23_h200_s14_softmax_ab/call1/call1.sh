#!/bin/bash
# Session 14, call 1 (one H200): the forward kernel's softmax knobs A/B (ab_variants.sh), then the GPU suite on the
# build with every knob on (F) and the forward tests on the 50%-polynomial build (G).
# Variants (compile flags of sparse/src/flash_fwd_hopper.cu, the rest of the library as on main):
#   base: none; A: SPLIT_CHAINS; B: MASK_EARLY; C: PACK_EARLY; D: A + POLY_EXP=1; E: A + B + C; F: E + POLY_EXP=1;
#   G: A + POLY_EXP=2; P: base with DISTATTN_HOPPER_GRID=132 (persistent grid at every size)
set -u
ROOT=$(pwd)
W=/tmp/s14c1; L=$W/logs
rm -rf $W && mkdir -p $L
tar xJf build-s14/bins1.tar.xz -C $W || { echo "untar failed"; exit 1; }
source "$ROOT/bench/device_steps.sh"
steps_begin "$L" "${CAP:-575}"
STEP_AFTER='mkdir -p "$OUT" && tar czf "$OUT/s14c1.tgz" -C $W logs'
AB=$ROOT/bench/results/2026-11-23_h200_s14_softmax_ab/ab_variants.sh
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw,power.limit --format=csv,noheader | tee $L/gpu.txt
STEP_SUMMARY='^(pass|fwd)|failed' step ab 400 env VARIANTS="base A B C D E F G P" ROUNDS=3 bash $AB $W/bins $L/ab
STEP_SUMMARY='PASSED|FAILED' step tests_F 120 $W/bins/tests_F --gtest_brief=1
STEP_SUMMARY='PASSED|FAILED' step tests_G 50 $W/bins/tests_G --gtest_brief=1 --gtest_filter='FlashForward*:Rope*:Dilated*:BlockSparse*:FinalAccumulate*'
eval "$STEP_AFTER"
echo "total $(steps_elapsed)s status $steps_status"
