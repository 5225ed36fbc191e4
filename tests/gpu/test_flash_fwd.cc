// CUDA forward attention engine (flash_attention_forward) against the host engine.
//
// Rule (flash-attention's): on the same bf16/fp16 inputs, the GPU's error against the fp64 host
// reference must be at most 2x the error of the host engine in kRoundIntermediates (a naive
// same-precision implementation) plus 1e-4 absolute slack, for O (rel_l2 and max_abs) and for LSE.
// Every output is poisoned with NaN before each run, so an unwritten element fails.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_fwd_check.h"
#include "hand_block_list.h"
#include "test_util.h"
// Internal switches of the forward (the ALiBi cutoff on / off); not part of the public headers.
#include "../../sparse/src/flash_fwd_options.h"

namespace distattn {
namespace {

using testing::DeviceArray;
using testing::DeviceTensor;
using testing::ErrorStats;
using testing::HandBlockList;
using testing::HostTensor;

constexpr double kSlack = testing::kFwdSlack;
const float kNegInf = -std::numeric_limits<float>::infinity();

struct Case {
  std::string name;
  DType dtype = DType::kBFloat16;
  int64_t B = 1, Sq = 64, Skv = 64, Hq = 2, Hkv = 2, D = 64;
  Mask mask;
  bool alibi = false;
  float slope_scale = 1.f;    // multiplies every ALiBi slope
  PositionMap q_pos, kv_pos;  // default: contiguous from 0
  int64_t head_pad = 0, row_pad = 0;
  HandBlockList* blocks = nullptr;
  float softmax_scale = 0.f;
  double qk_stddev = 1.0;  // standard deviation of q and k (v: 1)
};

std::vector<float> make_slopes(int64_t H, float scale = 1.f) {
  std::vector<float> s(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; ++h)
    s[static_cast<size_t>(h)] = scale * std::pow(2.0f, -8.0f * (h + 1) / static_cast<float>(H));
  return s;
}

// Builds the host AttnParams (inputs on the host) of a case; o and lse supplied by the caller.
AttnParams host_params(const Case& c, const HostTensor& q, const HostTensor& k, const HostTensor& v, TensorView o,
                       float* lse, const std::vector<float>& slopes) {
  AttnParams p;
  p.q = q.view;
  p.k = k.view;
  p.v = v.view;
  p.o = o;
  p.lse = lse;
  p.q_pos = c.q_pos.num_chunks ? c.q_pos : PositionMap::contiguous(0, c.Sq);
  p.kv_pos = c.kv_pos.num_chunks ? c.kv_pos : PositionMap::contiguous(0, c.Skv);
  p.mask = c.mask;
  if (c.blocks) p.mask.blocks = &c.blocks->host_view;
  p.alibi_slopes = c.alibi ? slopes.data() : nullptr;
  p.softmax_scale = c.softmax_scale;
  return p;
}

using Outputs = testing::FwdOutputs;
using Inputs = testing::FwdInputs;

uint64_t case_seed(const Case& c) { return testing::test_seed() + std::hash<std::string>()(c.name) % 100000; }

// Random q, k (stddev c.qk_stddev) and v (stddev 1) with the case's shapes and padding.
Inputs make_inputs(const Case& c, uint64_t seed) {
  return testing::make_fwd_inputs(c.dtype, c.B, c.Sq, c.Skv, c.Hq, c.Hkv, c.D, c.head_pad, c.row_pad, seed,
                                  c.qk_stddev);
}

// The case on the GPU with explicit forward options; o and lse poisoned with NaN before the run.
Outputs run_gpu(const Case& c, const Inputs& in, const detail::FlashFwdOptions& options) {
  const std::vector<float> slopes = make_slopes(c.Hq, c.slope_scale);
  const int64_t lse_n = c.B * c.Hq * c.Sq;
  DeviceTensor dq(in.q), dk(in.k), dv(in.v);
  HostTensor o_gpu(c.dtype, c.B, c.Sq, c.Hq, c.D, c.head_pad, c.row_pad);
  testing::fill_nan(o_gpu);
  DeviceTensor d_o(o_gpu);
  DeviceArray<float> d_lse(std::vector<float>(static_cast<size_t>(lse_n), std::nanf("")));
  DeviceArray<float> d_slopes(slopes);
  AttnParams p = host_params(c, in.q, in.k, in.v, d_o.view(), d_lse.ptr, slopes);
  p.q = dq.view();
  p.k = dk.view();
  p.v = dv.view();
  p.alibi_slopes = c.alibi ? d_slopes.ptr : nullptr;
  if (c.blocks) p.mask.blocks = &c.blocks->device_view;
  detail::flash_attention_forward(p, options, nullptr);
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  d_o.download(o_gpu);
  return Outputs{std::move(o_gpu), d_lse.download()};
}

// Runs the case on the GPU (poisoned outputs) and on the host in fp64 and kRoundIntermediates; checks
// the 2x rule. Returns the GPU outputs for extra checks.
Outputs run_and_check(const Case& c) {
  const uint64_t seed = case_seed(c);
  SCOPED_TRACE("case " + c.name + " seed " + std::to_string(seed));
  const Inputs in = make_inputs(c, seed);
  const std::vector<float> slopes = make_slopes(c.Hq, c.slope_scale);

  // fp64 reference (computed in double, stored as fp32: the host engine writes q's dtype or fp32) and the
  // same-precision naive baseline.
  const testing::FwdReference r =
      testing::host_forward_reference(host_params(c, in.q, in.k, in.v, TensorView(), nullptr, slopes), c.dtype);
  const std::vector<float>& lse64 = r.lse64;

  // The GPU twice, outputs poisoned each time (o with the same padded strides as the inputs): with the default
  // options (the Hopper kernel where it applies, the ALiBi cutoff where it applies) and with the mma.sync kernel
  // forced, so both kernels meet every case on a Hopper GPU. Both must pass the 2x rule on their own.
  detail::FlashFwdOptions mma_only;
  mma_only.allow_hopper = false;
  Outputs out = run_gpu(c, in, detail::FlashFwdOptions{});
  const Outputs out_mma = run_gpu(c, in, mma_only);
  const Outputs* const runs[] = {&out, &out_mma};
  for (const Outputs* g : runs) {
    SCOPED_TRACE(g == &out ? "default kernel choice" : "mma.sync kernel forced");
    testing::expect_fwd_within_2x_naive(g->o.view, g->lse, r, /*o_rel_l2=*/true, /*lse_rel_l2=*/true, "gpu");
  }
  // The reference must not be trivially empty: some LSE must be finite.
  int64_t finite = 0;
  for (float x : lse64) finite += std::isfinite(x) ? 1 : 0;
  EXPECT_GT(finite, 0);
  return out;
}

TEST(FlashForward, DenseNonCausalBf16D128) {
  DISTATTN_REQUIRE_GPU();
  Case c;
  c.name = "dense_bf16_d128";
  c.B = 2, c.Sq = 200, c.Skv = 200, c.Hq = 3, c.Hkv = 3, c.D = 128;
  run_and_check(c);
}

TEST(FlashForward, OddSizesFp16D64) {
  DISTATTN_REQUIRE_GPU();
  Case c;
  c.name = "odd_fp16_d64";
  c.dtype = DType::kFloat16;
  c.B = 1, c.Sq = 37, c.Skv = 1000, c.Hq = 2, c.Hkv = 2, c.D = 64;
  run_and_check(c);
  c.name = "odd_fp16_d64_short_kv";
  c.Sq = 1000, c.Skv = 37;
  run_and_check(c);
}

// Runs `shape` (which sets the rest of the case) causal for bf16 and fp16 and head dims 64 and 128, named
// "<prefix><dtype>_<D>".
void run_causal_dtypes_and_dims(const std::string& prefix, const std::function<void(Case&)>& shape) {
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    for (int64_t D : {64, 128}) {
      Case c;
      c.name = prefix + dtype_name(dt) + "_" + std::to_string(D);
      c.dtype = dt;
      c.D = D;
      shape(c);
      c.mask = Mask::make_causal();
      run_and_check(c);
    }
  }
}

TEST(FlashForward, SingleQueryRowCausal) {
  DISTATTN_REQUIRE_GPU();
  run_causal_dtypes_and_dims("sq1_", [](Case& c) {
    c.Sq = 1, c.Skv = 1000, c.Hq = 2, c.Hkv = 1;
    c.q_pos = PositionMap::contiguous(999, 1);  // the last row of a 1000-token causal sequence
  });
}

TEST(FlashForward, CausalGqa) {
  DISTATTN_REQUIRE_GPU();
  run_causal_dtypes_and_dims("causal_gqa_", [](Case& c) { c.Sq = 1000, c.Skv = 1000, c.Hq = 8, c.Hkv = 2; });
}

TEST(FlashForward, MqaWindowNonCausalWithOffset) {
  DISTATTN_REQUIRE_GPU();
  Case c;
  c.name = "mqa_window";
  c.dtype = DType::kFloat16;
  c.Sq = 200, c.Skv = 333, c.Hq = 4, c.Hkv = 1, c.D = 128;
  c.q_pos = PositionMap::contiguous(100, 200);
  c.mask = Mask::make_window(50);
  run_and_check(c);
}

TEST(FlashForward, CausalWindow) {
  DISTATTN_REQUIRE_GPU();
  Case c;
  c.name = "causal_window";
  c.Sq = 500, c.Skv = 500, c.Hq = 2, c.Hkv = 2, c.D = 128;
  c.mask = Mask::make_causal(100);
  run_and_check(c);
}

TEST(FlashForward, AlibiWithOffsets) {
  DISTATTN_REQUIRE_GPU();
  Case c;
  c.name = "alibi_noncausal";
  c.Sq = 200, c.Skv = 300, c.Hq = 4, c.Hkv = 2, c.D = 128;
  c.q_pos = PositionMap::contiguous(1000, 200);
  c.kv_pos = PositionMap::contiguous(700, 300);
  c.alibi = true;
  run_and_check(c);
  c.name = "alibi_causal_fp16_d64";
  c.dtype = DType::kFloat16;
  c.D = 64;
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(1100, 200);
  c.kv_pos = PositionMap::contiguous(1000, 300);
  run_and_check(c);
  // Far apart (|pos_q - pos_k| above 2^24): the exact per-element path. Slopes scaled down so the bias
  // stays O(1): with full slopes a bias of ~1e7 has an fp32 ulp of ~1 in ANY fp32 engine (the fp32 LSE
  // contract cannot resolve it), which would test the format, not the kernel.
  c.name = "alibi_far";
  c.slope_scale = 1e-7f;
  c.mask = Mask::none();
  c.q_pos = PositionMap::contiguous(40000000, 200);
  c.kv_pos = PositionMap::contiguous(100, 300);
  run_and_check(c);
}

TEST(FlashForward, ZigzagAndStrided) {
  DISTATTN_REQUIRE_GPU();
  // Zigzag over 2 ranks, chunks of 150: rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2.
  for (bool alibi : {false, true}) {
    Case c;
    c.name = std::string("zigzag") + (alibi ? "_alibi" : "");
    c.Sq = 300, c.Skv = 300, c.Hq = 2, c.Hkv = 2, c.D = 128;
    c.q_pos = PositionMap::contiguous(0, 150);
    c.q_pos.add_chunk(450, 1, 150);
    c.kv_pos = PositionMap::contiguous(150, 150);
    c.kv_pos.add_chunk(300, 1, 150);
    c.mask = Mask::make_causal();
    c.alibi = alibi;
    run_and_check(c);
  }
  Case c;
  c.name = "strided3";
  c.dtype = DType::kFloat16;
  c.Sq = 200, c.Skv = 250, c.Hq = 2, c.Hkv = 1, c.D = 64;
  c.q_pos = PositionMap::strided(1, 3, 200);
  c.kv_pos = PositionMap::strided(0, 3, 250);
  c.mask = Mask::make_causal();
  c.alibi = true;
  run_and_check(c);
}

// ALiBi tile forms: the kernel splits the bias into a row and a column part on tiles where every
// pos_q - pos_k has one sign and |pos_q - pos_k| < 2^24, and computes it per element elsewhere (tiles that
// straddle pos_q == pos_k, multi-chunk tiles, far tiles). Non-causal cases with both signs, a negative
// sign only, a kv stride of 3 (column step 3), and a q range whose tiles cross |pos_q - pos_k| = 2^24; causal
// cases for the column form (kAlibiMode 2) across 2^24 and with a kv stride and a two-chunk q map.
TEST(FlashForward, AlibiTileForms) {
  DISTATTN_REQUIRE_GPU();
  Case c;
  c.name = "alibi_both_signs";
  c.Sq = 333, c.Skv = 333, c.Hq = 4, c.Hkv = 2, c.D = 128;
  c.alibi = true;
  run_and_check(c);
  c.name = "alibi_negative_sign_fp16_d64";
  c.dtype = DType::kFloat16;
  c.D = 64;
  c.Sq = 200, c.Skv = 300;
  c.q_pos = PositionMap::contiguous(0, 200);
  c.kv_pos = PositionMap::contiguous(500, 300);
  run_and_check(c);
  c.name = "alibi_kv_stride3";
  c.dtype = DType::kBFloat16;
  c.D = 128;
  c.q_pos = PositionMap::contiguous(300, 200);
  c.kv_pos = PositionMap::strided(0, 3, 300);
  run_and_check(c);
  // kv tiles 0..4 have |pos_q - pos_k| up to >= 2^24 (per element), tiles 5 and 6 below (row/column form).
  // Slopes scaled down so the bias stays O(1) (see alibi_far).
  c.name = "alibi_across_2p24";
  c.slope_scale = 1e-7f;
  c.Skv = 400;
  c.q_pos = PositionMap::contiguous(16777300, 200);
  c.kv_pos = PositionMap::contiguous(0, 400);
  run_and_check(c);
  // Causal (the column form: bias = slope * (pos_k - base), base = the CTA's first q position, the row part
  // added to the LSE at the end): |base - pos_k| >= 2^24 on kv tiles 0..4 (per element), below on 5 and 6.
  c.name = "alibi_causal_across_2p24";
  c.mask = Mask::make_causal();
  run_and_check(c);
  // Causal column form with a kv stride of 7 and a q map of two chunks (CTA 0 spans both).
  c.name = "alibi_causal_stride7_two_chunks";
  c.slope_scale = 1.f;
  c.q_pos = PositionMap::contiguous(1000, 60);
  c.q_pos.add_chunk(2000, 1, 140);
  c.kv_pos = PositionMap::strided(0, 7, 400);
  run_and_check(c);
}

// ALiBi cutoff (flash_fwd_kernel.cuh): q_pos == kv_pos as one chunk. Far kv tiles whose exp2 is exactly 0 are
// skipped, so O and LSE must be BIT-identical to the same walk with nothing skipped (options alibi_cutoff_skip =
// false; causal: also to the kernel with the cutoff off, which walks the same tiles in the same order), and
// pass the fp64 rule. `cut`: 1 if tile 0 and the last kv tile must be skipped for the rows checked below, 0 if
// they must be visited (large norms: the bound leaves nothing to cut), -1 not checked. Checked by putting NaN
// into those V rows: a visited tile carries NaN into O (0 * NaN), a skipped one cannot. Rows checked: q rows
// in CTAs >= 1 (128-row CTAs; tile 0 = kv rows 0..63); non-causal: of those, the CTAs whose rows end at least
// 65 rows before the last kv tile (the bound needs <= 65 rows of distance in the steep cases).
void check_alibi_cutoff(const Case& c, int cut) {
  ASSERT_TRUE(c.alibi && c.blocks == nullptr && c.Sq == c.Skv);
  run_and_check(c);
  const uint64_t seed = case_seed(c) + 7;
  SCOPED_TRACE("cutoff case " + c.name + " seed " + std::to_string(seed));
  Inputs in = make_inputs(c, seed);
  // The mma.sync kernel's cutoff (allow_hopper off: up to 8192 keys the dispatcher sends these calls to the Hopper
  // kernel, which has no cutoff).
  const detail::FlashFwdOptions kOn{true, true, false}, kReference{true, false, false}, kOff{false, true, false};
  using testing::expect_same_bits;
  const Outputs on = run_gpu(c, in, kOn);
  expect_same_bits(on, run_gpu(c, in, kReference), "cutoff vs nothing skipped");
  if (c.mask.causal) expect_same_bits(on, run_gpu(c, in, kOff), "cutoff vs cutoff off");
  int64_t non_finite = 0;
  for (float x : on.lse) non_finite += std::isfinite(x) ? 0 : 1;
  EXPECT_EQ(non_finite, 0);  // every row sees its own key
  if (cut < 0) return;

  const int64_t last_tile = (c.Skv - 1) / 64;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hkv; ++h)
      for (int64_t d = 0; d < c.D; ++d) {
        for (int64_t j = 0; j < 64; ++j) in.v.set(b, j, h, d, std::nan(""));
        if (!c.mask.causal)
          for (int64_t j = last_tile * 64; j < c.Skv; ++j) in.v.set(b, j, h, d, std::nan(""));
      }
  const Outputs on_nan = run_gpu(c, in, kOn);
  const Outputs ref_nan = run_gpu(c, in, kReference);
  int64_t rows = 0, nan_on = 0, nan_ref = 0;
  for (int64_t i = 128; i < c.Sq; ++i) {
    if (!c.mask.causal && (i / 128) * 128 + 127 + 65 > last_tile * 64) continue;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.Hq; ++h) {
        ++rows;
        nan_on += std::isnan(on_nan.o.get(b, i, h, 0)) ? 1 : 0;
        nan_ref += std::isnan(ref_nan.o.get(b, i, h, 0)) ? 1 : 0;
      }
  }
  EXPECT_GT(rows, 0);
  EXPECT_EQ(nan_ref, rows) << "with nothing skipped every checked row reads the NaN V rows";
  EXPECT_EQ(nan_on, cut ? 0 : rows) << (cut ? "a far tile was visited" : "a tile was skipped");
}

TEST(FlashForward, AlibiCutoffBitIdentical) {
  DISTATTN_REQUIRE_GPU();
  for (bool causal : {true, false}) {
    const std::string tag = causal ? "causal_" : "noncausal_";
    Case c;
    c.alibi = true;
    c.mask = causal ? Mask::make_causal() : Mask::none();
    // Steep slopes (1024x the 4-head rule: 256, 64, 16, 4): everything beyond the diagonal tiles is cut (the
    // bound needs ~25 rows of distance at slope 4); GQA 2, two batches.
    c.name = "cutoff_steep_" + tag;
    c.B = 2, c.Sq = 1000, c.Skv = 1000, c.Hq = 4, c.Hkv = 2, c.D = 128;
    c.slope_scale = 1024.f;
    check_alibi_cutoff(c, 1);
    // 8x the rule (2 .. 0.03): part of the rows is cut for the steeper heads.
    c.name = "cutoff_medium_" + tag;
    c.slope_scale = 8.f;
    check_alibi_cutoff(c, -1);
    // The plain slope rule at an odd length: only the steep heads' far tiles go.
    c.name = "cutoff_shallow_" + tag;
    c.B = 1, c.Sq = 1531, c.Skv = 1531, c.Hq = 4, c.Hkv = 4;
    c.slope_scale = 1.f;
    check_alibi_cutoff(c, -1);
    // Large q and k (stddev 30; slopes 0.5, 0.03): |q.k| may reach the bias of every distance here, so nothing
    // may be cut.
    c.name = "cutoff_large_norms_" + tag;
    c.Sq = 777, c.Skv = 777, c.Hq = 2, c.Hkv = 2;
    c.slope_scale = 8.f;
    c.qk_stddev = 30.0;
    check_alibi_cutoff(c, 0);
    // A strided map starting at 5 (one chunk, the same for q and kv), a window, fp16, D = 64.
    c.name = "cutoff_strided_window_fp16_d64_" + tag;
    c.dtype = DType::kFloat16;
    c.D = 64;
    c.qk_stddev = 1.0;
    c.Sq = 900, c.Skv = 900, c.Hq = 2, c.Hkv = 1;
    c.q_pos = PositionMap::strided(5, 3, 900);
    c.kv_pos = PositionMap::strided(5, 3, 900);
    c.mask = causal ? Mask::make_causal(1000) : Mask::make_window(700);
    c.slope_scale = 2.f;
    check_alibi_cutoff(c, -1);
    // Padded strides and a single short CTA (S < 128: nothing beyond the diagonal tiles to cut).
    c.name = "cutoff_padded_short_" + tag;
    c.dtype = DType::kBFloat16;
    c.D = 128;
    c.Sq = 100, c.Skv = 100;
    c.q_pos = PositionMap::contiguous(3, 100);
    c.kv_pos = PositionMap::contiguous(3, 100);
    c.mask = causal ? Mask::make_causal() : Mask::none();
    c.head_pad = 8, c.row_pad = 16;
    check_alibi_cutoff(c, -1);
  }
}

TEST(FlashForward, RowsWithoutKeys) {
  DISTATTN_REQUIRE_GPU();
  Case c;
  c.name = "no_keys";
  c.Sq = 200, c.Skv = 200, c.Hq = 2, c.Hkv = 2, c.D = 128;
  c.kv_pos = PositionMap::contiguous(100, 200);  // q rows 0..99 see no key under causal
  c.mask = Mask::make_causal();
  c.alibi = true;
  const Outputs out = run_and_check(c);
  for (int64_t h = 0; h < c.Hq; ++h)
    for (int64_t i = 0; i < 100; ++i) {
      EXPECT_EQ(out.lse[static_cast<size_t>(h * c.Sq + i)], kNegInf) << "h " << h << " row " << i;
      for (int64_t d = 0; d < c.D; ++d) ASSERT_EQ(out.o.get(0, i, h, d), 0.0) << "h " << h << " row " << i;
    }
  EXPECT_TRUE(std::isfinite(out.lse[100]));
}

TEST(FlashForward, PaddedStrides) {
  DISTATTN_REQUIRE_GPU();
  Case c;
  c.name = "padded";
  c.B = 2, c.Sq = 150, c.Skv = 170, c.Hq = 4, c.Hkv = 2, c.D = 64;
  c.head_pad = 8, c.row_pad = 16;  // 16 and 32 bytes: rows stay 16-byte aligned
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(20, 150);
  run_and_check(c);
}

TEST(FlashForward, BlockListFullAndPartial) {
  DISTATTN_REQUIRE_GPU();
  for (int64_t D : {64, 128}) {
    // 600 rows = 5 blocks of 128 (the last one 88 rows). q block i lists: kv block 0 (full), the
    // diagonal block i (partial: causal inside), kv block i-2 (partial, so the window applies) and,
    // for q block 3, kv block 4 (partial: entirely masked by causal, must contribute nothing).
    std::vector<std::vector<std::pair<int32_t, bool>>> rows(5);  // (kv block, partial)
    for (int32_t i = 0; i < 5; ++i) {
      if (i > 0) rows[i].push_back({0, false});
      if (i >= 3) rows[i].push_back({i - 2, true});
      rows[i].push_back({i, true});
      if (i == 3) rows[i].push_back({4, true});
    }
    HandBlockList hb(rows, 5);
    Case c;
    c.name = "blocks_" + std::to_string(D);
    c.Sq = 600, c.Skv = 600, c.Hq = 2, c.Hkv = 1, c.D = D;
    c.mask = Mask::make_causal(300);
    c.blocks = &hb;
    c.alibi = D == 64;
    run_and_check(c);
  }
}

// A FULL block that crosses Skv, in a call whose band (a non-causal window) does NOT cover the block: FULL is the
// list's promise that every pair is visible, so only the Skv bound may mask it. The mma.sync kernel used to apply
// the band to such a tile (its per-element path served both the band and the Skv bound): max |O - fp64| 0.78.
TEST(FlashForward, FullBlockCrossingSkvIgnoresTheBand) {
  DISTATTN_REQUIRE_GPU();
  for (int64_t D : {64, 128}) {
    // Skv = 500: kv block 3 holds rows 384..499 (it crosses Skv). q block 4 (rows 512..599) lists kv block 0
    // partial (the window applies: distances >= 385, nothing visible) and kv block 3 FULL (distances 13..215,
    // mostly outside the window, all visible by the FULL promise). q blocks 0..3: their diagonal block, partial.
    std::vector<std::vector<std::pair<int32_t, bool>>> rows(5);  // (kv block, partial)
    for (int32_t i = 0; i < 4; ++i) rows[i].push_back({i, true});
    rows[4].push_back({0, true});
    rows[4].push_back({3, false});
    HandBlockList hb(rows, 4);
    Case c;
    c.name = "full_block_crossing_skv_" + std::to_string(D);
    c.Sq = 600, c.Skv = 500, c.Hq = 2, c.Hkv = 2, c.D = D;
    c.mask = Mask::make_window(100);
    c.blocks = &hb;
    run_and_check(c);
  }
}

// Accumulate mode: two calls over the two halves of the kv rows equal one call over all of them.
TEST(FlashForward, AccumulateTwoHalves) {
  DISTATTN_REQUIRE_GPU();
  for (int64_t D : {64, 128}) {
    const int64_t B = 1, Sq = 300, Skv = 410, H = 4, half = 160;
    const uint64_t seed = testing::test_seed() + 77 + D;
    SCOPED_TRACE("seed " + std::to_string(seed) + " D " + std::to_string(D));
    const Inputs in = testing::make_fwd_inputs(DType::kBFloat16, B, Sq, Skv, H, H, D, 0, 0, seed);
    const HostTensor &q = in.q, &k = in.k, &v = in.v;
    const std::vector<float> slopes = make_slopes(H);
    const PositionMap q_pos = PositionMap::contiguous(200, Sq);

    // Reference: one fp64 call over all kv rows.
    AttnParams ref;
    ref.q = q.view, ref.k = k.view, ref.v = v.view;
    ref.q_pos = q_pos, ref.kv_pos = PositionMap::contiguous(0, Skv), ref.mask = Mask::make_causal();
    ref.alibi_slopes = slopes.data();
    const testing::FwdReference r = testing::host_forward_reference(ref, DType::kBFloat16);

    DeviceArray<float> d_slopes(slopes);
    AttnParams setup;
    setup.q_pos = q_pos, setup.mask = Mask::make_causal(), setup.alibi_slopes = d_slopes.ptr;
    const HostTensor zeros(DType::kFloat32, B, Sq, H, D);  // the accumulator's start
    const Outputs acc = testing::accumulate_kv_parts(q, k, v, zeros, setup, {0, half, Skv}, {},
                                                     [](const AttnParams& p) { flash_attention_forward(p, nullptr); });
    testing::expect_fwd_within_2x_naive(acc.o.view, acc.lse, r, /*o_rel_l2=*/true, /*lse_rel_l2=*/false, "gpu");
  }
}

// Plain mode with an fp32 output (allowed by the contract).
TEST(FlashForward, PlainFp32Output) {
  DISTATTN_REQUIRE_GPU();
  const int64_t Sq = 130, Skv = 90, H = 2, D = 64;
  const uint64_t seed = testing::test_seed() + 5;
  SCOPED_TRACE("seed " + std::to_string(seed));
  HostTensor q(DType::kFloat16, 1, Sq, H, D), k(DType::kFloat16, 1, Skv, H, D), v(DType::kFloat16, 1, Skv, H, D);
  testing::fill_normal(q, seed);
  testing::fill_normal(k, seed + 1);
  testing::fill_normal(v, seed + 2);
  AttnParams ref;
  HostTensor o64(DType::kFloat32, 1, Sq, H, D);
  ref.q = q.view, ref.k = k.view, ref.v = v.view, ref.o = o64.view;
  ref.q_pos = PositionMap::contiguous(0, Sq), ref.kv_pos = PositionMap::contiguous(0, Skv);
  host_attention_forward(ref, HostPrecision::kFloat64);
  DeviceTensor dq(q), dk(k), dv(v);
  HostTensor o(DType::kFloat32, 1, Sq, H, D);
  testing::fill_nan(o);
  DeviceTensor d_o(o);
  AttnParams p = ref;
  p.q = dq.view(), p.k = dk.view(), p.v = dv.view(), p.o = d_o.view();
  flash_attention_forward(p, nullptr);
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  d_o.download(o);
  const ErrorStats e = testing::compare(o.view, o64.view);
  EXPECT_EQ(e.non_finite, 0) << e.str();
  EXPECT_LT(e.rel_l2, 2e-3) << e.str();
}

// Bad input: the right argument named, nothing written.
TEST(FlashForward, BadInputThrowsAndWritesNothing) {
  DISTATTN_REQUIRE_GPU();
  const int64_t Sq = 64, Skv = 64, H = 2, D = 128;
  HostTensor q(DType::kBFloat16, 1, Sq, H, D), k(DType::kBFloat16, 1, Skv, H, D), v(DType::kBFloat16, 1, Skv, H, D);
  testing::fill_normal(q, 1);
  testing::fill_normal(k, 2);
  testing::fill_normal(v, 3);
  DeviceTensor dq(q), dk(k), dv(v);
  HostTensor o(DType::kBFloat16, 1, Sq, H, D);
  testing::fill_nan(o);
  DeviceTensor d_o(o);
  DeviceArray<float> d_lse(std::vector<float>(static_cast<size_t>(H * Sq), std::nanf("")));
  auto good = [&] {
    AttnParams p;
    p.q = dq.view(), p.k = dk.view(), p.v = dv.view(), p.o = d_o.view(), p.lse = d_lse.ptr;
    p.q_pos = PositionMap::contiguous(0, Sq), p.kv_pos = PositionMap::contiguous(0, Skv);
    return p;
  };
  auto expect_error = [&](const AttnParams& p, const std::string& arg, const char* what) {
    SCOPED_TRACE(what);
    try {
      flash_attention_forward(p, nullptr);
      ADD_FAILURE() << "no error thrown";
    } catch (const Error& e) {
      EXPECT_EQ(e.argument(), arg) << e.what();
    }
    DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
    HostTensor back(DType::kBFloat16, 1, Sq, H, D);
    d_o.download(back);
    for (int64_t i = 0; i < Sq; ++i)
      for (int64_t d = 0; d < D; ++d) ASSERT_TRUE(std::isnan(back.get(0, i, 1, d))) << "o written at row " << i;
    for (float x : d_lse.download()) ASSERT_TRUE(std::isnan(x)) << "lse written";
  };

  {  // host pointer for q (marked as CUDA)
    AttnParams p = good();
    p.q.data = q.view.data;
    expect_error(p, "q", "host pointer");
  }
  {  // misaligned base (2 bytes off)
    HostTensor big(DType::kBFloat16, 1, Sq + 1, H, D);
    testing::fill_normal(big, 4);
    DeviceTensor dbig(big);
    AttnParams p = good();
    p.q = dbig.view();
    p.q.shape[1] = Sq;
    p.q.data = static_cast<uint16_t*>(p.q.data) + 1;
    expect_error(p, "q", "misaligned");
  }
  {  // unsupported head dim 96
    HostTensor q96(DType::kBFloat16, 1, Sq, H, 96), k96(DType::kBFloat16, 1, Skv, H, 96),
        v96(DType::kBFloat16, 1, Skv, H, 96);
    testing::fill_normal(q96, 5);
    testing::fill_normal(k96, 6);
    testing::fill_normal(v96, 7);
    DeviceTensor dq96(q96), dk96(k96), dv96(v96);
    HostTensor o96(DType::kBFloat16, 1, Sq, H, 96);
    testing::fill_nan(o96);
    DeviceTensor d_o96(o96);
    AttnParams p = good();
    p.q = dq96.view(), p.k = dk96.view(), p.v = dv96.view(), p.o = d_o96.view();
    EXPECT_FALSE(flash_supports_head_dim(96));
    expect_error(p, "q", "head dim 96");
    d_o96.download(o96);
    for (int64_t i = 0; i < Sq; ++i) ASSERT_TRUE(std::isnan(o96.get(0, i, 0, 0)));
  }
  {  // wrong dtype (fp32 q)
    HostTensor q32(DType::kFloat32, 1, Sq, H, D);
    testing::fill_normal(q32, 8);
    DeviceTensor dq32(q32);
    AttnParams p = good();
    p.q = dq32.view();
    expect_error(p, "q", "fp32 q");
  }
  {  // host memory for lse
    std::vector<float> host_lse(static_cast<size_t>(H * Sq));
    AttnParams p = good();
    p.lse = host_lse.data();
    expect_error(p, "lse", "host lse");
  }
  {  // accumulate without lse
    AttnParams p = good();
    p.accumulate = true;
    p.lse = nullptr;
    expect_error(p, "o", "accumulate with bf16 o");
  }
  EXPECT_TRUE(flash_supports_head_dim(64));
  EXPECT_TRUE(flash_supports_head_dim(128));
}

}  // namespace
}  // namespace distattn
