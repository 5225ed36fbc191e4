// Hopper (sm_90a wgmma) backward kernel (sparse/src/hopper/flash_bwd_hopper_kernel.cuh) against the fp64 host
// engine, through the public dispatcher (flash_bwd_api.cu) with options.allow_hopper on and off: every case runs
// both the Hopper kernel and the mma.sync kernel on the same inputs, and each must meet the bound on its own.
//
// Each case draws q, k, v, dO in bf16/fp16 (seeds printed), computes O and LSE with the fp64 host forward (O rounded
// to the dtype), and compares the GPU's dQ, dK, dV with the fp64 host backward on the same rounded inputs. Bound
// (as in test_flash_bwd.cc): max and RMS error at most twice those of the host's kRoundIntermediates backward plus a
// small slack relative to the gradient's RMS. Outputs are poisoned with NaN first (accumulate mode: random
// pre-fill, the expected value is pre-fill + gradient). On a device where flash_bwd_hopper_supported() is false
// (not compute capability 9.0, or a build without sm_90a) the Hopper half of each case is skipped, and the test
// asserts that it is true on an H100 / H200 for every case here, so the Hopper path cannot silently fall back.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "../../sparse/src/flash_bwd_options.h"
#include "../../sparse/src/hopper/flash_bwd_hopper.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/host_engine.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_bwd_check.h"
#include "hand_block_list.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

struct HCase {
  DType dtype = DType::kBFloat16;
  int64_t B = 1, Sq = 300, Skv = 300, Hq = 2, Hkv = 2;
  Mask mask;
  PositionMap q_pos, kv_pos;  // num_chunks == 0: contiguous from 0
  int64_t head_pad = 0, row_pad = 0;
  bool accumulate = false;               // dq/dk/dv fp32, pre-filled at random, gradients added
  bool grads_fp32 = false;               // plain mode with fp32 gradients
  bool given_delta = false;              // the caller passes rowsum(dO * O)
  double scale = 0;                      // 0: 1/sqrt(D)
  std::vector<std::vector<int>> blocks;  // non-empty: hand-built block list (0 absent, 1 partial, 2 full)
};

constexpr int64_t kD = 128;

// Runs the case through the Hopper kernel (when supported here) and through the mma.sync kernel; checks both.
void run_case(const HCase& c, uint64_t seed) {
  const DType gdt = (c.accumulate || c.grads_fp32) ? DType::kFloat32 : c.dtype;
  const BwdShape shape{c.dtype, c.dtype, c.B, c.Sq, c.Skv, c.Hq, c.Hkv, kD, c.head_pad, c.row_pad};
  std::unique_ptr<HandBlockList> blocks;  // block states: 0 absent, 1 partial, 2 full
  if (!c.blocks.empty()) blocks = std::make_unique<HandBlockList>(HandBlockList::from_states(c.blocks));
  AttnParams setup = case_setup(c.q_pos, c.kv_pos, c.Sq, c.Skv, c.mask);
  setup.softmax_scale = static_cast<float>(c.scale);
  if (blocks) setup.mask.blocks = &blocks->host_view;
  BwdHostCase h;
  make_bwd_host_case(h, shape, setup, c.given_delta, seed);
  HostTensor expect[3], nexpect[3];
  for (int i = 0; i < 3; ++i) {
    expect[i] = c.accumulate ? sum_f64(h.pre[i], h.ref[i]) : h.ref[i];
    nexpect[i] = c.accumulate ? sum_f64(h.pre[i], h.nai[i]) : h.nai[i];
  }

  const BwdDeviceInputs d(h);
  const bool hopper_here = on_hopper_device();
  for (int pass = 0; pass < 2; ++pass) {
    const bool allow_hopper = pass == 0;
    const char* kernel = allow_hopper ? "hopper" : "mma.sync";
    HostTensor out[3];
    make_grad_outputs(out, h, shape, gdt, c.accumulate);
    DeviceTensor dgrad[3] = {DeviceTensor(out[0]), DeviceTensor(out[1]), DeviceTensor(out[2])};
    AttnBwdParams gb = d.params(h, dgrad, c.accumulate);
    if (blocks) gb.fwd.mask.blocks = &blocks->device_view;
    // On an H100 / H200 with the sm_90a build every case of this file must take the Hopper kernel.
    if (allow_hopper && !hopper_bwd_takes(gb, hopper_here, "  [hopper] not supported on this device: skipped\n"))
      continue;
    detail::FlashBwdOptions opt;
    opt.allow_hopper = allow_hopper;
    detail::flash_attention_backward(gb, opt, 0);
    DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
    const char* names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i) {
      dgrad[i].download(out[i]);
      const std::string label = std::string(kernel) + " " + names[i];
      const std::string print_label = std::string("[") + kernel + "] " + names[i];
      expect_grad_within_2x_naive(label + " gpu", print_label.c_str(), "gpu ", compare(out[i].view, expect[i].view),
                                  compare(nexpect[i].view, expect[i].view), rms_of(h.ref[i]));
    }
  }
}

#define RUN_CASE(c)     \
  DISTATTN_LINE_SEED(); \
  run_case(c, seed)

// Zigzag shard of a ring over `ranks` ranks: rank r holds chunks r and 2 ranks - 1 - r of length `chunk`.
PositionMap zigzag(int64_t chunk, int ranks, int rank) {
  PositionMap m;
  m.add_chunk(static_cast<int64_t>(rank) * chunk, 1, chunk);
  m.add_chunk(static_cast<int64_t>(2 * ranks - 1 - rank) * chunk, 1, chunk);
  return m;
}

TEST(FlashBwdHopper, Bf16NonCausal) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 300, c.Skv = 300;
  RUN_CASE(c);
}

TEST(FlashBwdHopper, Bf16Causal) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 517, c.Skv = 517;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

TEST(FlashBwdHopper, Bf16CausalWindow) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 450, c.Skv = 450;
  c.mask = Mask::make_causal(100);
  RUN_CASE(c);
}

TEST(FlashBwdHopper, Bf16SymmetricWindow) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 400, c.Skv = 420;
  c.mask = Mask::make_window(70);
  RUN_CASE(c);
}

TEST(FlashBwdHopper, Bf16GqaCausalBatch2) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.B = 2, c.Sq = 300, c.Skv = 300, c.Hq = 8, c.Hkv = 2;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

TEST(FlashBwdHopper, Bf16OddLengthsNonCausal) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 1000, c.Skv = 1333, c.Hq = 2, c.Hkv = 1;
  RUN_CASE(c);
}

TEST(FlashBwdHopper, Bf16OddLengthsCausalBottomAligned) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 1000, c.Skv = 1333, c.Hq = 2, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(333, 1000);
  RUN_CASE(c);
}

// Causal with q positions before most keys: kv tiles 2.. see no q row at all (dK = dV = 0 must be written).
TEST(FlashBwdHopper, Bf16CausalKvTilesWithoutQueries) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 200, c.Skv = 600;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

TEST(FlashBwdHopper, SingleQueryRow) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 1, c.Skv = 300, c.Hq = 4, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(150, 1);
  RUN_CASE(c);
}

// Ring step of a zigzag causal ring over 4 ranks (chunks of 256 rows): q of rank 1, k/v of rank 2, and the
// diagonal step (rank 0 with itself).
TEST(FlashBwdHopper, Bf16ZigzagRingStep) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 512, c.Skv = 512;
  c.mask = Mask::make_causal();
  c.q_pos = zigzag(256, 4, 1);
  c.kv_pos = zigzag(256, 4, 2);
  RUN_CASE(c);
}

TEST(FlashBwdHopper, Bf16ZigzagDiagonalStepAccumulate) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 512, c.Skv = 512, c.Hq = 4, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.q_pos = zigzag(256, 4, 0);
  c.kv_pos = zigzag(256, 4, 0);
  c.accumulate = true;
  RUN_CASE(c);
}

// Three chunks per side, boundaries on 128 rows, ragged last chunk, a stride-2 chunk, a window band.
TEST(FlashBwdHopper, Bf16ThreeChunksStridedWindow) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 128 + 256 + 100, c.Skv = 256 + 128 + 77;
  c.mask = Mask::make_causal(300);
  c.q_pos.add_chunk(0, 1, 128).add_chunk(1000, 2, 256).add_chunk(500, 1, 100);
  c.kv_pos.add_chunk(100, 1, 256).add_chunk(900, 1, 128).add_chunk(1300, 3, 77);
  RUN_CASE(c);
}

TEST(FlashBwdHopper, Bf16AccumulateCausalGqa) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 333, c.Skv = 333, c.Hq = 6, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.accumulate = true;
  RUN_CASE(c);
}

TEST(FlashBwdHopper, Fp16CausalGqa) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.dtype = DType::kFloat16;
  c.Sq = 390, c.Skv = 390, c.Hq = 4, c.Hkv = 1;
  c.mask = Mask::make_causal();
  RUN_CASE(c);
}

TEST(FlashBwdHopper, Fp16NonCausalOddGivenDeltaFp32Grads) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.dtype = DType::kFloat16;
  c.Sq = 1000, c.Skv = 1333, c.Hq = 2, c.Hkv = 2;
  c.given_delta = true;
  c.grads_fp32 = true;
  RUN_CASE(c);
}

TEST(FlashBwdHopper, Bf16PaddedStridesLargeScale) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 260, c.Skv = 270, c.Hq = 3, c.Hkv = 1;
  c.head_pad = 8, c.row_pad = 16;
  c.scale = 0.3;  // sharper softmax than 1/sqrt(128)
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(10, 260);
  RUN_CASE(c);
}

// Accumulate mode with padded strides: the Hopper kernel reduces dQ straight into the fp32 dq (row stride Hq * 128 +
// the padding, not 128: no scratch, no conversion); the mma.sync kernel goes through its scratch.
TEST(FlashBwdHopper, Bf16AccumulatePaddedStridesDirectDq) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.B = 2, c.Sq = 200, c.Skv = 330, c.Hq = 4, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(130, 200);
  c.head_pad = 8, c.row_pad = 16;
  c.accumulate = true;
  RUN_CASE(c);
}

// Block lists (the kernel walks the listed q blocks of each kv tile's column, two 64-row q tiles per block): full
// blocks visible everywhere, partial ones under the band, absent ones skipped, and a last q block whose second tile
// lies past Sq (Sq = 300: block 2 holds rows 256..299, its second 64-row tile none).
TEST(FlashBwdHopper, Bf16BlockListFullPartialAbsentCausal) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.Sq = 300, c.Skv = 384, c.Hq = 4, c.Hkv = 2;
  c.mask = Mask::make_causal();
  c.q_pos = PositionMap::contiguous(84, 300);    // bottom-aligned: q row 0 sees the first 85 keys
  c.blocks = {{1, 1, 0}, {2, 2, 0}, {2, 0, 1}};  // kv block 2 is listed for q block 2 only, partial
  RUN_CASE(c);
}

// Non-causal window: full blocks ignore the band (the layout vouches for them), partial ones apply it; kv block 2
// (rows 256..259) is listed for no q block, so its dK, dV stay the pre-fill; fp16, fp32 gradients, accumulate mode.
TEST(FlashBwdHopper, Fp16BlockListWindowAccumulate) {
  DISTATTN_REQUIRE_GPU();
  HCase c;
  c.dtype = DType::kFloat16;
  c.Sq = 384, c.Skv = 260, c.Hq = 2, c.Hkv = 1;
  c.mask = Mask::make_window(100);
  c.blocks = {{1, 2, 0}, {0, 1, 0}, {2, 0, 0}};
  c.accumulate = true;
  RUN_CASE(c);
}

// What the dispatcher must leave on the mma.sync kernel (ALiBi, head dim 64, chunk boundaries off the 128-row
// tiles), and that a block list no longer sends a call there.
TEST(FlashBwdHopper, SupportedRefusesAlibiHdim64AndUnalignedChunksTakesBlockLists) {
  DISTATTN_REQUIRE_GPU();
  HostTensor q(DType::kBFloat16, 1, 256, 2, kD), k(DType::kBFloat16, 1, 256, 2, kD);
  DeviceTensor dq(q), dk(k), dv(k), ddo(q), dov(q), gq(q), gk(k), gv(k);
  DeviceArray<float> lse(static_cast<int64_t>(2 * 256));
  const AttnBwdParams p = contiguous_bwd_params(dq.view(), dk.view(), dv.view(), dov.view(), lse.ptr, ddo.view(),
                                                gq.view(), gk.view(), gv.view());
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  const bool base = flash_bwd_hopper_supported(p, device);
  EXPECT_EQ(base, on_hopper_device());
  AttnBwdParams a = p;
  DeviceArray<float> slopes(std::vector<float>{0.5f, 0.25f});
  a.fwd.alibi_slopes = slopes.ptr;
  EXPECT_FALSE(flash_bwd_hopper_supported(a, device));
  HandBlockList bl = HandBlockList::from_states({{1, 0}, {2, 1}});
  AttnBwdParams with_blocks = p;
  with_blocks.fwd.mask = Mask::make_causal();
  with_blocks.fwd.mask.blocks = &bl.device_view;
  EXPECT_EQ(flash_bwd_hopper_supported(with_blocks, device), base);
  AttnBwdParams u = p;
  u.fwd.q_pos = PositionMap();
  u.fwd.q_pos.add_chunk(0, 1, 100).add_chunk(500, 1, 156);  // boundary at row 100: not on a 128-row tile
  EXPECT_FALSE(flash_bwd_hopper_supported(u, device));
  HostTensor q64(DType::kBFloat16, 1, 256, 2, 64);
  DeviceTensor d64(q64);
  AttnBwdParams h = p;
  h.fwd.q = d64.view();
  EXPECT_FALSE(flash_bwd_hopper_supported(h, device));
}

}  // namespace
}  // namespace testing
}  // namespace distattn
