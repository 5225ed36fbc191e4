// BlockSparseAttention on the CUDA engine against the same object on the host engine in fp64.
//
// Rule (flash-attention's, as tests/gpu/test_flash_fwd.cc and test_flash_bwd.cc): on the same bf16/fp16
// inputs, the GPU's error against fp64 must be at most 2x the error of the host's kRoundIntermediates run (a
// naive same-precision implementation) plus a small slack; forward O and LSE, backward dQ, dK, dV (the
// backward is fed the fp64 forward's O rounded to the dtype and its LSE, so it does not depend on the GPU
// forward). Every output is poisoned with NaN before each run. The host engine with a block list is itself
// checked against an independent dense reference in tests/cpu/test_block_sparse.cc.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/sparse/block_sparse_attention.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::DeviceArray;
using testing::DeviceTensor;
using testing::ErrorStats;
using testing::HostTensor;

using Factory = std::function<BlockSparseAttention(const BlockSparseConfig&, Device)>;

struct Case {
  std::string name;
  DType dtype = DType::kBFloat16;
  int64_t B = 1, Sq = 1000, Skv = 1000, Hq = 4, Hkv = 2, D = 64;
  bool alibi = false;
  Factory make;
  bool expect_empty_rows = false;
};

std::vector<float> slopes_for(int64_t H) {
  std::vector<float> s(H);
  for (int64_t h = 0; h < H; ++h) s[h] = std::pow(2.0f, -8.0f * (h + 1) / static_cast<float>(H));
  return s;
}

void run_case(const Case& c) {
  const uint64_t seed = testing::test_seed() + std::hash<std::string>()(c.name) % 100000;
  SCOPED_TRACE("case " + c.name + " seed " + std::to_string(seed));
  BlockSparseConfig cfg;
  cfg.q_heads = c.Hq, cfg.kv_heads = c.Hkv, cfg.head_dim = c.D;
  if (c.alibi) cfg.alibi_slopes = slopes_for(c.Hq);
  BlockSparseConfig naive_cfg = cfg;
  naive_cfg.host_precision = HostPrecision::kRoundIntermediates;
  BlockSparseAttention ref = c.make(cfg, Device::kHost);
  BlockSparseAttention naive = c.make(naive_cfg, Device::kHost);
  BlockSparseAttention gpu = c.make(cfg, Device::kCuda);
  ASSERT_TRUE(gpu.layout().uploaded()) << "the constructor uploads the layout";
  const BlockListView uploaded = const_cast<BlockLayout&>(gpu.layout()).device_view();
  std::printf("  %s: %s, visible pairs %lld\n", c.name.c_str(), gpu.layout().describe().c_str(),
              static_cast<long long>(gpu.visible_pairs(c.Sq, c.Skv)));

  HostTensor q(c.dtype, c.B, c.Sq, c.Hq, c.D), k(c.dtype, c.B, c.Skv, c.Hkv, c.D), v(c.dtype, c.B, c.Skv, c.Hkv, c.D),
      dout(c.dtype, c.B, c.Sq, c.Hq, c.D);
  testing::fill_normal(q, seed), testing::fill_normal(k, seed + 1), testing::fill_normal(v, seed + 2);
  testing::fill_normal(dout, seed + 3);
  const int64_t nl = c.B * c.Hq * c.Sq;

  // ---- forward
  HostTensor o64(DType::kFloat32, c.B, c.Sq, c.Hq, c.D), o_naive(c.dtype, c.B, c.Sq, c.Hq, c.D);
  std::vector<float> lse64(nl), lse_naive(nl);
  ref.forward(q.view, k.view, v.view, o64.view, lse64.data());
  naive.forward(q.view, k.view, v.view, o_naive.view, lse_naive.data());
  DeviceTensor dq_in(q), dk_in(k), dv_in(v);
  HostTensor o_gpu(c.dtype, c.B, c.Sq, c.Hq, c.D);
  testing::fill_nan(o_gpu);
  DeviceTensor d_o(o_gpu);
  DeviceArray<float> d_lse(std::vector<float>(nl, std::nanf("")));
  gpu.forward(dq_in.view(), dk_in.view(), dv_in.view(), d_o.view(), d_lse.ptr, nullptr);
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  d_o.download(o_gpu);
  const std::vector<float> lse_gpu = d_lse.download();
  {
    const ErrorStats e = testing::compare(o_gpu.view, o64.view), en = testing::compare(o_naive.view, o64.view);
    std::vector<double> lref(lse64.begin(), lse64.end());
    const ErrorStats l = testing::compare_flat(lse_gpu.data(), lref.data(), nl);
    const ErrorStats ln = testing::compare_flat(lse_naive.data(), lref.data(), nl);
    SCOPED_TRACE("fwd O gpu " + e.str() + " | naive " + en.str() + " || LSE gpu " + l.str() + " | naive " + ln.str());
    std::printf("  fwd O gpu max %.3g rel %.3g | naive max %.3g rel %.3g\n", e.max_abs, e.rel_l2, en.max_abs,
                en.rel_l2);
    EXPECT_EQ(e.non_finite, 0);
    EXPECT_EQ(l.non_finite, 0);
    EXPECT_LE(e.rel_l2, 2 * en.rel_l2 + 1e-4);
    EXPECT_LE(e.max_abs, 2 * en.max_abs + 1e-4);
    EXPECT_LE(l.rel_l2, 2 * ln.rel_l2 + 1e-4);
    EXPECT_LE(l.max_abs, 2 * ln.max_abs + 1e-4);
    int64_t empty = 0;
    for (float x : lse64) empty += std::isinf(x) ? 1 : 0;
    EXPECT_EQ(empty > 0, c.expect_empty_rows);
    EXPECT_LT(empty, nl) << "a case where no row sees a key tests nothing";
  }

  // ---- backward, fed the fp64 forward (O rounded to the dtype)
  HostTensor o_in = testing::convert(o64, c.dtype);
  HostTensor ref_g[3] = {HostTensor(DType::kFloat32, c.B, c.Sq, c.Hq, c.D),
                         HostTensor(DType::kFloat32, c.B, c.Skv, c.Hkv, c.D),
                         HostTensor(DType::kFloat32, c.B, c.Skv, c.Hkv, c.D)};
  HostTensor nai_g[3] = {HostTensor(DType::kFloat32, c.B, c.Sq, c.Hq, c.D),
                         HostTensor(DType::kFloat32, c.B, c.Skv, c.Hkv, c.D),
                         HostTensor(DType::kFloat32, c.B, c.Skv, c.Hkv, c.D)};
  ref.backward(q.view, k.view, v.view, o_in.view, lse64.data(), dout.view, ref_g[0].view, ref_g[1].view, ref_g[2].view);
  naive.backward(q.view, k.view, v.view, o_in.view, lse64.data(), dout.view, nai_g[0].view, nai_g[1].view,
                 nai_g[2].view);
  HostTensor got[3] = {HostTensor(c.dtype, c.B, c.Sq, c.Hq, c.D), HostTensor(c.dtype, c.B, c.Skv, c.Hkv, c.D),
                       HostTensor(c.dtype, c.B, c.Skv, c.Hkv, c.D)};
  for (auto& t : got) testing::fill_nan(t);
  DeviceTensor dgrad[3] = {DeviceTensor(got[0]), DeviceTensor(got[1]), DeviceTensor(got[2])};
  DeviceTensor d_oin(o_in), d_dout(dout);
  DeviceArray<float> d_lse64(lse64);
  gpu.backward(dq_in.view(), dk_in.view(), dv_in.view(), d_oin.view(), d_lse64.ptr, d_dout.view(), dgrad[0].view(),
               dgrad[1].view(), dgrad[2].view(), nullptr);
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  const char* names[3] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) {
    dgrad[i].download(got[i]);
    const ErrorStats e = testing::compare(got[i].view, ref_g[i].view);
    const ErrorStats en = testing::compare(nai_g[i].view, ref_g[i].view);
    const double r = rms_of(ref_g[i]);
    SCOPED_TRACE(std::string(names[i]) + " gpu " + e.str() + " | naive " + en.str() + " | ref rms " +
                 std::to_string(r));
    std::printf("  %s gpu max %.3g rmse %.3g | naive max %.3g rmse %.3g\n", names[i], e.max_abs, e.rmse, en.max_abs,
                en.rmse);
    EXPECT_EQ(e.non_finite, 0);
    EXPECT_LE(e.max_abs, 2 * en.max_abs + 1e-2 * r + 1e-6);
    EXPECT_LE(e.rmse, 2 * en.rmse + 2e-3 * r + 1e-7);
  }
  // The block list was uploaded once, by the constructor: the calls did not re-upload it.
  const BlockListView after = const_cast<BlockLayout&>(gpu.layout()).device_view();
  EXPECT_EQ(after.col_index, uploaded.col_index);
  EXPECT_EQ(after.row_offset, uploaded.row_offset);
}

std::string tag(DType dt, int64_t D) { return std::string(dtype_name(dt)) + "_d" + std::to_string(D); }

TEST(BlockSparseGpu, LocalWindowCausalGqaAlibi) {
  DISTATTN_REQUIRE_GPU();
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    for (int64_t D : {64, 128}) {
      Case c;
      c.name = "window_causal_" + tag(dt, D);
      c.dtype = dt, c.D = D, c.Sq = c.Skv = 1000, c.Hq = 4, c.Hkv = 2, c.alibi = true;
      c.make = [&](const BlockSparseConfig& cfg, Device dev) {
        return BlockSparseAttention::local_window(1000, 1000, 300, true, cfg, dev);
      };
      run_case(c);
    }
  }
}

TEST(BlockSparseGpu, BlockDiagonal) {
  DISTATTN_REQUIRE_GPU();
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    for (int64_t D : {64, 128}) {
      for (bool causal : {false, true}) {
        Case c;
        c.name = "block_diagonal_" + std::string(causal ? "causal_" : "") + tag(dt, D);
        c.dtype = dt, c.D = D, c.B = 2, c.Sq = c.Skv = 1100, c.Hq = 2, c.Hkv = 2;
        c.make = [causal](const BlockSparseConfig& cfg, Device dev) {
          return BlockSparseAttention::block_diagonal(1100, 1100, 256, causal, cfg, dev);
        };
        run_case(c);
      }
    }
  }
}

TEST(BlockSparseGpu, StridedGlobalRandomBigBird) {
  DISTATTN_REQUIRE_GPU();
  struct P {
    const char* name;
    Factory make;
  };
  const int64_t S = 1300;  // 11 blocks, last one 20 rows
  const std::vector<P> patterns = {
      {"strided_causal", [&](const BlockSparseConfig& cfg,
                             Device dev) { return BlockSparseAttention::strided(S, S, 3, 1, true, cfg, dev); }},
      {"global", [&](const BlockSparseConfig& cfg,
                     Device dev) { return BlockSparseAttention::global_tokens(S, S, 1, false, cfg, dev); }},
      {"random_causal", [&](const BlockSparseConfig& cfg,
                            Device dev) { return BlockSparseAttention::random(S, S, 3, 11, true, cfg, dev); }},
      {"bigbird", [&](const BlockSparseConfig& cfg,
                      Device dev) { return BlockSparseAttention::bigbird(S, S, 1, 1, 2, 12, false, cfg, dev); }},
  };
  int i = 0;
  for (const P& p : patterns) {
    const DType dt = (i % 2) ? DType::kFloat16 : DType::kBFloat16;
    const int64_t D = (i / 2) % 2 ? 64 : 128;
    Case c;
    c.name = std::string(p.name) + "_" + tag(dt, D);
    c.dtype = dt, c.D = D, c.Sq = c.Skv = S, c.Hq = 4, c.Hkv = 1, c.alibi = (i == 1);
    c.make = p.make;
    run_case(c);
    ++i;
  }
}

TEST(BlockSparseGpu, UserMaskWithEmptyRowsAndShortKv) {
  DISTATTN_REQUIRE_GPU();
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    const uint8_t F = BlockLayout::kFull, P = BlockLayout::kPartial, A = BlockLayout::kAbsent;
    const std::vector<uint8_t> mask = {P, A, A,  //
                                       F, P, A,  //
                                       A, A, A,  // q block 2: no keys
                                       F, A, P};
    Case c;
    c.name = std::string("user_mask_") + tag(dt, 128);
    c.dtype = dt, c.D = 128, c.Sq = 500, c.Skv = 300, c.Hq = 2, c.Hkv = 2, c.alibi = true;
    c.expect_empty_rows = true;
    c.make = [mask](const BlockSparseConfig& cfg, Device dev) {
      return BlockSparseAttention::from_block_mask(4, 3, mask, Mask::make_causal(200), cfg, dev);
    };
    run_case(c);
  }
}

TEST(BlockSparseGpu, BadInputWritesNothing) {
  DISTATTN_REQUIRE_GPU();
  BlockSparseConfig cfg;
  cfg.q_heads = 2, cfg.head_dim = 64;
  auto attn = BlockSparseAttention::local_window(300, 300, 100, true, cfg, Device::kCuda);
  HostTensor q(DType::kBFloat16, 1, 300, 2, 64), o(DType::kBFloat16, 1, 300, 2, 64);
  testing::fill_normal(q, 1);
  testing::fill_nan(o);
  DeviceTensor dq(q), dk(q), dv(q), d_o(o);
  DeviceArray<float> lse(std::vector<float>(600, std::nanf("")));
  // Host memory handed to the CUDA object.
  EXPECT_ERROR_ARG(attn.forward(q.view, dk.view(), dv.view(), d_o.view(), lse.ptr), "q");
  // A view that claims CUDA but holds a host pointer.
  TensorView fake = q.view;
  fake.device = Device::kCuda;
  EXPECT_ERROR_ARG(attn.forward(dq.view(), fake, dv.view(), d_o.view(), lse.ptr), "k");
  // Layout block counts against the call.
  HostTensor q500(DType::kBFloat16, 1, 500, 2, 64);
  testing::fill_normal(q500, 2);
  DeviceTensor dq500(q500);
  EXPECT_ERROR_ARG(attn.forward(dq500.view(), dk.view(), dv.view(), d_o.view(), lse.ptr), "layout");
  // fp32 is a host-engine dtype only.
  HostTensor q32 = testing::convert(q, DType::kFloat32);
  DeviceTensor dq32(q32), dk32(q32), dv32(q32), do32(q32);
  EXPECT_ERROR_ARG(attn.forward(dq32.view(), dk32.view(), dv32.view(), do32.view(), lse.ptr), "q");
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  HostTensor after = o;
  d_o.download(after);
  EXPECT_EQ(after.storage, o.storage) << "o written on bad input";
  for (float x : lse.download()) ASSERT_TRUE(std::isnan(x)) << "lse written on bad input";
}

}  // namespace
}  // namespace distattn
