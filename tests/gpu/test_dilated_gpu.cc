// Dilated (LongNet) attention on the CUDA engine against the host path in fp64 (tests/cpu/test_dilated.cc
// checks the host path against a dense reference built from the pattern definition).
//
// Rule (flash-attention's, as in test_flash_fwd.cc / test_flash_bwd.cc): on the same bf16/fp16 inputs the
// GPU's error against the fp64 host path is at most 2x the error of the host path in kRoundIntermediates
// (a naive same-precision implementation) plus a small slack. The backward is fed the fp64 forward's O
// (rounded to the dtype) and LSE on both sides, so it does not depend on the GPU forward. Outputs are
// poisoned with NaN before each run.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/dilated/dilated_attention.h"
#include "flash_bwd_check.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::compare;
using testing::compare_flat;
using testing::DeviceArray;
using testing::DeviceTensor;
using testing::ErrorStats;
using testing::fill_nan;
using testing::fill_normal;
using testing::HostTensor;

struct GpuCase {
  std::string name;
  DType dtype = DType::kBFloat16;
  int64_t B = 1, S = 256, Hq = 4, Hkv = 4, D = 64;
  std::vector<DilatedPattern> patterns{{64, 1}, {128, 2}, {256, 4}};
  bool causal = false;
  bool alibi = false;
  int64_t head_pad = 0, row_pad = 0;  // padding in elements (kept a multiple of 8: 16-byte aligned rows)
  bool ragged = false;                // config.ragged_rates
  bool fold_classes = true;           // false: DilatedAttention::set_fold_classes(false) on the GPU
  bool concurrent = true;             // false: DilatedAttention::set_concurrent_calls(false) (one stream)
  bool fused = true;                  // false: DilatedAttention::set_fused_final(false) (rate-1 first, cast pass)
  bool head_chains = true;            // false: DilatedAttention::set_head_chains(false) (one chain of all heads)
};

// The random inputs of a case (seed printed by the caller's SCOPED_TRACE): q, k, v, dout with the case's padding.
struct CaseInputs {
  uint64_t seed;
  DilatedConfig cfg;  // patterns, causal, ragged rates (ALiBi slopes added by the callers that want them)
  HostTensor q, k, v, dout;
};

CaseInputs make_inputs(const GpuCase& c) {
  CaseInputs in{testing::test_seed() + std::hash<std::string>()(c.name) % 100000,
                DilatedConfig{},
                HostTensor(c.dtype, c.B, c.S, c.Hq, c.D, c.head_pad, c.row_pad),
                HostTensor(c.dtype, c.B, c.S, c.Hkv, c.D, c.head_pad, c.row_pad),
                HostTensor(c.dtype, c.B, c.S, c.Hkv, c.D, c.head_pad, c.row_pad),
                HostTensor(c.dtype, c.B, c.S, c.Hq, c.D, c.head_pad, c.row_pad)};
  in.cfg.patterns = c.patterns;
  in.cfg.causal = c.causal;
  in.cfg.ragged_rates = c.ragged;
  fill_normal(in.q, in.seed);
  fill_normal(in.k, in.seed + 1);
  fill_normal(in.v, in.seed + 2);
  fill_normal(in.dout, in.seed + 3);
  return in;
}

// ALiBi slopes 2^(-8 (h + 1) / Hq) into the inputs' config.
void add_alibi_slopes(CaseInputs& in, const GpuCase& c) {
  for (int64_t h = 0; h < c.Hq; ++h) in.cfg.alibi_slopes.push_back(std::pow(2.0f, -8.0f * (h + 1) / float(c.Hq)));
}

// gpu.forward on the device inputs into o (the case's dtype and padding) and lse [B, Hq, S], both poisoned with NaN
// first and downloaded after the device is synchronized.
void forward_poisoned(DilatedAttention& gpu, const GpuCase& c, const DeviceTensor& q, const DeviceTensor& k,
                      const DeviceTensor& v, HostTensor& o, std::vector<float>& lse) {
  o = HostTensor(c.dtype, c.B, c.S, c.Hq, c.D, c.head_pad, c.row_pad);
  fill_nan(o);
  DeviceTensor d_o(o);
  DeviceArray<float> d_lse(std::vector<float>(c.B * c.Hq * c.S, std::nanf("")));
  gpu.forward(q.view(), k.view(), v.view(), d_o.view(), d_lse.ptr, nullptr);
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  d_o.download(o);
  lse = d_lse.download();
}

// gpu.backward fed o_in and lse_in into dq, dk, dv (the case's dtype and padding), poisoned with NaN first and
// downloaded after the device is synchronized.
void backward_poisoned(DilatedAttention& gpu, const GpuCase& c, const DeviceTensor& q, const DeviceTensor& k,
                       const DeviceTensor& v, const HostTensor& o_in, const std::vector<float>& lse_in,
                       const DeviceTensor& dout, HostTensor (&g)[3]) {
  DeviceTensor d_oin(o_in);
  DeviceArray<float> d_lse_in(lse_in);
  g[0] = HostTensor(c.dtype, c.B, c.S, c.Hq, c.D, c.head_pad, c.row_pad);
  g[1] = HostTensor(c.dtype, c.B, c.S, c.Hkv, c.D, c.head_pad, c.row_pad);
  g[2] = HostTensor(c.dtype, c.B, c.S, c.Hkv, c.D, c.head_pad, c.row_pad);
  for (HostTensor& t : g) fill_nan(t);
  DeviceTensor g0(g[0]), g1(g[1]), g2(g[2]);
  gpu.backward(q.view(), k.view(), v.view(), d_oin.view(), d_lse_in.ptr, dout.view(), g0.view(), g1.view(), g2.view(),
               nullptr);
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  g0.download(g[0]);
  g1.download(g[1]);
  g2.download(g[2]);
}

void run_case(const GpuCase& c) {
  DISTATTN_REQUIRE_GPU();
  CaseInputs in = make_inputs(c);
  SCOPED_TRACE("case " + c.name + " seed " + std::to_string(in.seed));
  if (c.alibi) add_alibi_slopes(in, c);
  const DilatedConfig& cfg = in.cfg;
  DilatedConfig naive_cfg = cfg;
  naive_cfg.host_precision = HostPrecision::kRoundIntermediates;

  const HostTensor &q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
  const int64_t n_lse = c.B * c.Hq * c.S;

  // --- forward ---
  HostTensor o64(DType::kFloat32, c.B, c.S, c.Hq, c.D), o_naive(c.dtype, c.B, c.S, c.Hq, c.D);
  std::vector<float> lse64(n_lse), lse_naive(n_lse);
  dilated_attention_forward(cfg, q.view, k.view, v.view, o64.view, lse64.data(), Device::kHost);
  dilated_attention_forward(naive_cfg, q.view, k.view, v.view, o_naive.view, lse_naive.data(), Device::kHost);

  DeviceTensor dq_in(q), dk_in(k), dv_in(v), ddout(dout);
  DilatedAttention gpu(cfg, Device::kCuda);
  gpu.set_fold_classes(c.fold_classes);
  gpu.set_concurrent_calls(c.concurrent);
  gpu.set_fused_final(c.fused);
  gpu.set_head_chains(c.head_chains);
  HostTensor o_gpu;
  std::vector<float> lse_gpu;
  forward_poisoned(gpu, c, dq_in, dk_in, dv_in, o_gpu, lse_gpu);
  {
    const ErrorStats e = compare(o_gpu.view, o64.view), en = compare(o_naive.view, o64.view);
    const std::vector<double> ref(lse64.begin(), lse64.end());
    const ErrorStats l = compare_flat(lse_gpu.data(), ref.data(), n_lse);
    const ErrorStats ln = compare_flat(lse_naive.data(), ref.data(), n_lse);
    SCOPED_TRACE("O gpu " + e.str() + " | naive " + en.str() + " || LSE gpu " + l.str() + " | naive " + ln.str());
    std::printf("  %s fwd: O gpu max %.3g naive %.3g | LSE gpu max %.3g naive %.3g\n", c.name.c_str(), e.max_abs,
                en.max_abs, l.max_abs, ln.max_abs);
    EXPECT_EQ(e.non_finite, 0);
    EXPECT_EQ(l.non_finite, 0);
    EXPECT_LE(e.rel_l2, 2 * en.rel_l2 + 1e-4);
    EXPECT_LE(e.max_abs, 2 * en.max_abs + 1e-4);
    EXPECT_LE(l.max_abs, 2 * ln.max_abs + 1e-4);
  }

  // --- backward, fed the fp64 forward's O (rounded to the dtype) and LSE on both sides ---
  HostTensor o_in(c.dtype, c.B, c.S, c.Hq, c.D, c.head_pad, c.row_pad);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t i = 0; i < c.S; ++i)
      for (int64_t h = 0; h < c.Hq; ++h)
        for (int64_t d = 0; d < c.D; ++d) o_in.set(b, i, h, d, o64.get(b, i, h, d));
  HostTensor ref[3] = {HostTensor(DType::kFloat32, c.B, c.S, c.Hq, c.D),
                       HostTensor(DType::kFloat32, c.B, c.S, c.Hkv, c.D),
                       HostTensor(DType::kFloat32, c.B, c.S, c.Hkv, c.D)};
  HostTensor nai[3] = {HostTensor(DType::kFloat32, c.B, c.S, c.Hq, c.D),
                       HostTensor(DType::kFloat32, c.B, c.S, c.Hkv, c.D),
                       HostTensor(DType::kFloat32, c.B, c.S, c.Hkv, c.D)};
  dilated_attention_backward(cfg, q.view, k.view, v.view, o_in.view, lse64.data(), dout.view, ref[0].view, ref[1].view,
                             ref[2].view, Device::kHost);
  dilated_attention_backward(naive_cfg, q.view, k.view, v.view, o_in.view, lse64.data(), dout.view, nai[0].view,
                             nai[1].view, nai[2].view, Device::kHost);
  HostTensor out[3];
  backward_poisoned(gpu, c, dq_in, dk_in, dv_in, o_in, lse64, ddout, out);
  const char* names[3] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) {
    const double r = rms_of(ref[i]);
    EXPECT_GT(r, 0.0) << names[i];
    const std::string print_label = c.name + " " + names[i];
    testing::expect_grad_within_2x_naive(std::string(names[i]) + " gpu", print_label.c_str(), "gpu ",
                                         compare(out[i].view, ref[i].view), compare(nai[i].view, ref[i].view), r);
  }
}

TEST(DilatedGpu, LongNetLikeNonCausal) { run_case({"longnet_noncausal"}); }
TEST(DilatedGpu, LongNetLikeCausalHdim128Batch) {
  GpuCase c{"longnet_causal_d128"};
  c.causal = true;
  c.D = 128;
  c.B = 2;
  run_case(c);
}
TEST(DilatedGpu, HeadsNotDivisibleByRateFp16Padded) {
  GpuCase c{"h3_fp16_padded"};
  c.dtype = DType::kFloat16;
  c.Hq = c.Hkv = 3;
  c.causal = true;
  c.head_pad = 8;
  c.row_pad = 16;
  run_case(c);
}
TEST(DilatedGpu, GqaPerHeadAndStridedPaths) {
  GpuCase c{"gqa"};
  c.S = 384;
  c.Hq = 6;
  c.Hkv = 2;
  c.patterns = {{96, 2}, {192, 3}, {64, 1}};  // r = 2: per-head calls (ratio 3); r = 3: one strided call
  c.causal = true;
  run_case(c);
}
TEST(DilatedGpu, AlibiGlobalPositionsAndRowsWithoutKeys) {
  GpuCase c{"alibi_nokey"};
  c.alibi = true;
  c.Hq = c.Hkv = 5;
  c.patterns = {{128, 2}, {256, 4}};  // half the (row, head) pairs see nothing: O = 0, LSE = -inf
  run_case(c);
  GpuCase d{"alibi_causal"};
  d.alibi = true;
  d.causal = true;
  d.S = 512;
  d.patterns = {{128, 1}, {256, 2}, {512, 4}};
  run_case(d);
}

// The last pattern (one segment, 4 classes) runs with the classes folded into the batch by default; the same
// case with that folding off (per-class calls) must pass too, and with every call on one stream.
TEST(DilatedGpu, ClassFoldingOffMatches) {
  GpuCase c{"no_class_fold"};
  c.causal = true;
  c.fold_classes = false;
  run_case(c);
  GpuCase d{"one_stream"};  // the default folding, every call on the caller's stream
  d.causal = true;
  d.concurrent = false;
  d.Hq = d.Hkv = 5;
  run_case(d);
}

// The fused final step (rate-1 pattern last in final accumulate mode, writing o directly) is the default above;
// the previous order (rate-1 first in plain mode, then the cast pass) must pass the same checks.
TEST(DilatedGpu, FusedFinalOffMatches) {
  GpuCase c{"fused_off_causal_d128"};
  c.causal = true;
  c.D = 128;
  c.B = 2;
  c.fused = false;
  run_case(c);
  GpuCase d{"fused_off_gqa_fp16"};
  d.dtype = DType::kFloat16;
  d.Hq = 6;
  d.Hkv = 2;
  d.S = 384;
  d.patterns = {{96, 2}, {192, 3}, {64, 1}};
  d.fused = false;
  run_case(d);
}

// Rate-1 patterns address the caller's lse directly (DilatedAttention::set_direct_lse, default on; the folded calls
// split at batch boundaries for it) instead of going through the compacted LSE, and a pattern's LSE scatter is fused
// with the next pattern's gather (set_fuse_lse_moves, default on): the same engine work per row and the same LSE
// values moved, so forward (o, lse) and backward (dq, dk, dv) must be bit-identical to the compacted, unfused path. B =
// 2 with folded segments (the split), per-segment calls over the batch (fold off, padded fp16), the rate-1 pattern last
// (fused final) and first (fused final off, plain mode).
void check_direct_lse_bits(const GpuCase& c, bool fold_segments = true) {
  DISTATTN_REQUIRE_GPU();
  CaseInputs in = make_inputs(c);
  SCOPED_TRACE("case " + c.name + " seed " + std::to_string(in.seed));
  const DilatedConfig& cfg = in.cfg;
  const HostTensor &q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
  DeviceTensor dq_in(q), dk_in(k), dv_in(v), ddout(dout);
  struct Result {
    HostTensor o, g[3];
    std::vector<float> lse;
  };
  Result res[2];
  for (int direct = 0; direct < 2; ++direct) {
    Result& r = res[direct];
    DilatedAttention gpu(cfg, Device::kCuda);
    gpu.set_fused_final(c.fused);
    gpu.set_direct_lse(direct != 0);
    gpu.set_strided_lse(false);  // rates > 1 through the compacted LSE and its moves (check_strided_lse_bits: strided)
    gpu.set_fuse_lse_moves(direct != 0);
    gpu.set_fold_segments(fold_segments);
    forward_poisoned(gpu, c, dq_in, dk_in, dv_in, r.o, r.lse);
    // Both backward runs are fed the compacted run's forward output (same o, lse inputs).
    const Result& fwd = res[0];
    backward_poisoned(gpu, c, dq_in, dk_in, dv_in, direct != 0 ? fwd.o : r.o, direct != 0 ? fwd.lse : r.lse, ddout,
                      r.g);
  }
  // Not vacuous: the outputs were written (finite somewhere; NaN poison otherwise) and differ from the inputs' poison.
  const ErrorStats self = compare(res[1].o.view, res[1].o.view);
  EXPECT_EQ(self.non_finite, 0);
  EXPECT_TRUE(res[0].o.storage == res[1].o.storage) << "o differs between compacted and direct LSE";
  ASSERT_EQ(res[0].lse.size(), res[1].lse.size());
  EXPECT_EQ(std::memcmp(res[0].lse.data(), res[1].lse.data(), res[0].lse.size() * sizeof(float)), 0)
      << "lse differs between compacted and direct LSE";
  const char* names[3] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(compare(res[1].g[i].view, res[1].g[i].view).non_finite, 0) << names[i];
    EXPECT_TRUE(res[0].g[i].storage == res[1].g[i].storage) << names[i] << " differs between compacted and direct LSE";
  }
}

// fp16, B 2, 3 heads, causal, padded rows and heads: run with fold_segments = false it makes one call per segment with
// the B batches as its batch (the unfolded path of the LSE addressing checks).
GpuCase unfolded_fp16_case(const std::string& name) {
  GpuCase c{name};
  c.dtype = DType::kFloat16;
  c.B = 2;
  c.Hq = c.Hkv = 3;
  c.causal = true;
  c.head_pad = 8;
  c.row_pad = 16;
  return c;
}

TEST(DilatedGpu, DirectLseSameBitsAsCompacted) {
  GpuCase c{"direct_lse_b2_d128"};
  c.causal = true;
  c.D = 128;
  c.B = 2;
  c.S = 512;
  c.patterns = {{256, 2}, {128, 1}, {512, 4}};
  check_direct_lse_bits(c);
  GpuCase d = c;  // rate-1 pattern first in plain mode, then the cast pass
  d.name = "direct_lse_fused_off";
  d.fused = false;
  check_direct_lse_bits(d);
  check_direct_lse_bits(unfolded_fp16_case("direct_lse_unfolded_fp16"), /*fold_segments=*/false);
}

// The dilated forward twice on the case's inputs (ALiBi slopes from the head count when c.alibi), from NaN-poisoned o
// and lse, configured by configure(attention, variant) for variants 0 and 1: o and lse must be bit-identical. Not
// vacuous: every element of o is written (the poison is gone) and every LSE is finite (every row has keys here).
void expect_forward_same_bits(const GpuCase& c, const std::function<void(DilatedAttention&, int)>& configure,
                              const std::string& what) {
  DISTATTN_REQUIRE_GPU();
  CaseInputs in = make_inputs(c);
  SCOPED_TRACE("case " + c.name + " seed " + std::to_string(in.seed));
  if (c.alibi) add_alibi_slopes(in, c);
  const int64_t n_lse = c.B * c.Hq * c.S;
  DeviceTensor dq_in(in.q), dk_in(in.k), dv_in(in.v);
  HostTensor o[2];
  std::vector<float> lse[2];
  for (int variant = 0; variant < 2; ++variant) {
    DilatedAttention gpu(in.cfg, Device::kCuda);
    configure(gpu, variant);
    forward_poisoned(gpu, c, dq_in, dk_in, dv_in, o[variant], lse[variant]);
  }
  EXPECT_EQ(compare(o[1].view, o[1].view).non_finite, 0);
  EXPECT_EQ(compare_flat(lse[1].data(), std::vector<double>(lse[1].begin(), lse[1].end()).data(), n_lse).non_finite, 0);
  EXPECT_TRUE(o[0].storage == o[1].storage) << "o differs between " << what;
  EXPECT_EQ(std::memcmp(lse[0].data(), lse[1].data(), n_lse * sizeof(float)), 0) << "lse differs between " << what;
}

// Head chains (DilatedAttention::set_head_chains, default on where every rate is 1 or even, Hq even, Hq == Hkv, no
// ALiBi): the even and the odd heads run as two chains of calls on two streams. Each row gets the same engine work (the
// same q tile rows, kv tiles and walk order) and the same merges in the same order, so o and lse must be bit-identical
// to one chain over all heads. LongNet-like causal (rate 1 last, fused final), a ragged rate 6 (classes of unequal
// length, 6 classes on 8 heads), B = 2; then the rate-1 pattern first (fused final off: plain mode and the cast pass),
// the compacted LSE for rate 1 with separate moves, and everything on one stream (the chains one after the other);
// every pattern on lse directly (set_strided_lse) with and without the class calls of a chain on the chain's own side
// streams (set_chain_lanes; the cases before run them with the compacted LSE of rates > 1 and the moves).
void check_head_chain_bits(const GpuCase& c, bool direct_lse = true, bool concurrent = true, bool strided_lse = false,
                           bool chain_lanes = true) {
  expect_forward_same_bits(
      c,
      [&](DilatedAttention& gpu, int chains) {
        gpu.set_fused_final(c.fused);
        gpu.set_direct_lse(direct_lse);
        gpu.set_strided_lse(strided_lse);
        gpu.set_fuse_lse_moves(direct_lse);
        gpu.set_concurrent_calls(concurrent);
        gpu.set_head_chains(chains != 0);
        gpu.set_chain_lanes(chain_lanes);
      },
      "one chain and two head chains");
}

// LongNet-like causal: D = 128, S = 1024, 8 heads, ragged rates 2, 4, 6 with the rate-1 pattern last (fused final).
GpuCase longnet_ragged_case(const std::string& name) {
  GpuCase c{name};
  c.causal = true;
  c.D = 128;
  c.S = 1024;
  c.Hq = c.Hkv = 8;
  c.ragged = true;
  c.patterns = {{256, 2}, {512, 4}, {1024, 6}, {128, 1}};
  return c;
}

TEST(DilatedGpu, HeadChainsSameBitsAsOneChain) {
  GpuCase c = longnet_ragged_case("head_chains_longnet_b2");
  c.B = 2;
  check_head_chain_bits(c);
  GpuCase d = c;
  d.name = "head_chains_fused_off";
  d.fused = false;
  check_head_chain_bits(d);
  GpuCase e = c;
  e.name = "head_chains_compacted_noncausal";
  e.causal = false;
  check_head_chain_bits(e, /*direct_lse=*/false);
  GpuCase f = c;
  f.name = "head_chains_one_stream";
  check_head_chain_bits(f, /*direct_lse=*/true, /*concurrent=*/false);
  GpuCase g = c;  // every pattern on the caller's lse (row stride r), no LSE moves in either chain
  g.name = "head_chains_strided_lse";
  check_head_chain_bits(g, /*direct_lse=*/true, /*concurrent=*/true, /*strided_lse=*/true);
  GpuCase h = c;  // each chain's class calls one after another on the chain's stream (set_chain_lanes(false))
  h.name = "head_chains_strided_lse_no_chain_lanes";
  check_head_chain_bits(h, /*direct_lse=*/true, /*concurrent=*/true, /*strided_lse=*/true, /*chain_lanes=*/false);
}

// Patterns of rate r > 1 address the caller's lse with row stride r in the forward (DilatedAttention::set_strided_lse,
// default on; AttnParams::lse_row_stride) instead of the compacted LSE with its gathers and scatters. The calls, their
// q tiles and merges are the same and the moves only copy floats, so o and lse must be bit-identical to the compacted
// path (set_strided_lse(false), fused moves). Both runs start from NaN-poisoned o and lse. Cases: LongNet-like causal
// with ragged rates, head chains and fused final (classes folded for r = 6 on one segment); the same with one chain;
// fused final off (rate 1 first in plain mode, cast pass); B = 2 with per-segment calls over the batch (fold off,
// padded fp16); GQA with per-head calls (r = 2 not a multiple of the group) and ALiBi; non-causal with classes folding
// off. Every case is also checked against the fp64 host path (run_case) elsewhere with the default (strided) on.
void check_strided_lse_bits(const GpuCase& c, bool fold_segments = true) {
  expect_forward_same_bits(
      c,
      [&](DilatedAttention& gpu, int strided) {
        gpu.set_fused_final(c.fused);
        gpu.set_head_chains(c.head_chains);
        gpu.set_fold_classes(c.fold_classes);
        gpu.set_fold_segments(fold_segments);
        gpu.set_strided_lse(strided != 0);
      },
      "the compacted and the strided LSE");
}

TEST(DilatedGpu, StridedLseSameBitsAsCompacted) {
  GpuCase c = longnet_ragged_case("strided_lse_longnet_chains");
  check_strided_lse_bits(c);
  GpuCase d = c;
  d.name = "strided_lse_one_chain";
  d.head_chains = false;
  check_strided_lse_bits(d);
  GpuCase e = c;
  e.name = "strided_lse_fused_off_b2";
  e.B = 2;
  e.fused = false;
  check_strided_lse_bits(e);
  check_strided_lse_bits(unfolded_fp16_case("strided_lse_unfolded_fp16"), /*fold_segments=*/false);
  GpuCase g{"strided_lse_gqa_alibi"};  // 3 q heads per kv head: r = 2 runs one call per head, r = 3 one per class
  g.Hq = 6;
  g.Hkv = 2;
  g.S = 384;
  g.causal = true;
  g.alibi = true;
  g.patterns = {{96, 3}, {192, 2}, {64, 1}};
  check_strided_lse_bits(g);
  GpuCase h{"strided_lse_noncausal_classes_off"};
  h.S = 512;
  h.Hq = h.Hkv = 6;
  h.ragged = true;
  h.fold_classes = false;
  h.patterns = {{512, 6}, {256, 4}, {128, 1}};
  check_strided_lse_bits(h);
}

// Head chains against the fp64 host path with the CUDA engine's tolerance rule (run_case), LongNet's rates 1, 2, 4, 6
// and 12 (both ragged) on 16 heads, causal; and the same with one chain.
TEST(DilatedGpu, HeadChainsLongNetCausal) {
  GpuCase c{"head_chains_longnet_r12"};
  c.causal = true;
  c.D = 128;
  c.S = 1024;
  c.Hq = c.Hkv = 16;
  c.ragged = true;
  c.patterns = {{128, 1}, {256, 2}, {512, 4}, {1024, 6}, {1024, 12}};
  run_case(c);
  GpuCase d = c;
  d.name = "one_chain_longnet_r12";
  d.head_chains = false;
  run_case(d);
}

// Rates that do not divide their segments (config.ragged_rates, LongNet's r = 6, 12 on power-of-two segments):
// classes of unequal length, H % r != 0, classes folded (one segment of 512, 6 classes) and not.
TEST(DilatedGpu, RaggedRates) {
  GpuCase c{"ragged_causal_d128"};
  c.ragged = true;
  c.causal = true;
  c.S = 1024;
  c.D = 128;
  c.Hq = c.Hkv = 8;
  c.patterns = {{128, 1}, {256, 3}, {512, 6}, {1024, 12}};
  run_case(c);
  GpuCase d{"ragged_noncausal_fp16_gqa"};
  d.ragged = true;
  d.dtype = DType::kFloat16;
  d.S = 512;
  d.Hq = 6;
  d.Hkv = 2;
  d.patterns = {{512, 6}, {256, 5}, {128, 1}};  // GQA 3: r = 6 strided kv heads, r = 5 per head
  run_case(d);
  GpuCase e{"ragged_causal_no_class_fold"};
  e = c;
  e.name = "ragged_causal_no_class_fold";
  e.fold_classes = false;
  e.Hq = e.Hkv = 5;
  run_case(e);
}

TEST(DilatedGpu, BadInputThrowsBeforeLaunch) {
  DISTATTN_REQUIRE_GPU();
  HostTensor q(DType::kBFloat16, 1, 64, 2, 64);
  fill_normal(q, 1);
  DeviceTensor dq(q);
  HostTensor o(DType::kBFloat16, 1, 64, 2, 64);
  fill_nan(o);
  DeviceTensor d_o(o);
  DeviceArray<float> lse(std::vector<float>(128, std::nanf("")));
  DilatedConfig cfg;
  cfg.patterns = {{48, 1}};  // does not divide 64
  DilatedAttention attn(cfg, Device::kCuda);
  EXPECT_ERROR_ARG(attn.forward(dq.view(), dq.view(), dq.view(), d_o.view(), lse.ptr), "config.patterns[0].segment");
  EXPECT_ERROR_ARG(attn.forward(q.view, q.view, q.view, d_o.view(), lse.ptr), "q");  // host memory for CUDA
  DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
  d_o.download(o);
  EXPECT_TRUE(std::isnan(o.get(0, 0, 0, 0)) && std::isnan(o.get(0, 63, 1, 63)));
  for (float x : lse.download()) EXPECT_TRUE(std::isnan(x));
}

}  // namespace
}  // namespace distattn
