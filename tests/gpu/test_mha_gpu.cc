// The multi-head attention layer on one GPU (cuBLAS projections, CUDA RoPE, CUDA attention cores) against the
// host layer in fp64 on the same bf16 inputs.
//
// Tolerance, argued from bf16 rounding. The GPU layer keeps every GEMM and every attention sum in fp32, but
// stores the activations between stages in bf16 (relative rounding 2^-9 each): qkv (after the GEMM and again
// after RoPE), o, y; backward dO, dq|dk|dv (and again after the RoPE backward), dx. Weight gradients are written
// in fp32 by the GEMM from bf16 operands. A "naive" implementation with the same storage precision -- the host
// layer run with config.dtype = bf16 (every one of those intermediates rounded to bf16 at the same places,
// attention with kRoundIntermediates: S, P, dP, dS rounded to bf16 like a framework's naive bf16 code) -- has
// the error that bf16 storage alone causes. Rule (flash-attention's, DESIGN.md): the GPU's relative L2 error
// against fp64 must be at most 2x the naive one, plus 2^-10 for the fp32-vs-double accumulation differences
// (well below one bf16 half-ulp). A transposed weight, a wrong position or a missing bias gives O(1) errors.
// An absolute ceiling (rel L2 <= 2^-5, i.e. 16 bf16 half-ulps) catches a naive baseline that is itself broken.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/layers/multi_head_attention.h"
#include "mha_names.h"
#include "mha_test_util.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

// bf16 values drawn N(0, stddev) (bits) and their exact doubles.
struct Bf16 {
  std::vector<uint16_t> bits;
  std::vector<double> values;
};
Bf16 draw(size_t n, std::mt19937_64& rng, double stddev) {
  std::normal_distribution<double> d(0.0, stddev);
  Bf16 b;
  b.bits.resize(n);
  b.values.resize(n);
  for (size_t i = 0; i < n; ++i) {
    b.bits[i] = float_to_bf16_bits(static_cast<float>(d(rng)));
    b.values[i] = bf16_bits_to_float(b.bits[i]);
  }
  return b;
}

struct Stats {
  double rel_l2 = 0, max_abs = 0;
  int64_t non_finite = 0;
};
Stats stats(const std::vector<double>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  Stats s;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) {
      ++s.non_finite;
      continue;
    }
    const double d = got[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
    s.max_abs = std::max(s.max_abs, std::fabs(d));
  }
  s.rel_l2 = std::sqrt(num / std::max(den, 1e-300));
  return s;
}

// Host outputs of one layer run (any dtype, converted to double, activations packed [B, S, E]).
using Outputs = MhaOutputs;

struct Case {
  std::string name;
  int64_t B = 2, S = 300, E = 256, Hq = 4, Hkv = 2, D = 64;
  bool bias = true;
  Mask mask;
  AttentionCore core = AttentionCore::kDense;
  std::vector<DilatedPattern> dilated;
  int64_t sparse_stride = 0;
  int64_t row_pad = 0;  // > 0: x, y, dy, dx rows padded and batches not back to back (cuBLAS strided path)
};

MhaConfig config_of(const Case& c, DType dtype) {
  MhaConfig cfg;
  cfg.embed_dim = c.E;
  cfg.q_heads = c.Hq;
  cfg.kv_heads = c.Hkv;
  cfg.head_dim = c.D;
  cfg.dtype = dtype;
  cfg.bias = c.bias;
  cfg.mask = c.mask;
  cfg.core = c.core;
  cfg.dilated_patterns = c.dilated;
  if (c.core == AttentionCore::kBlockSparse) {
    const int64_t stride = c.sparse_stride;
    const bool causal = c.mask.causal;
    cfg.sparse_layout = [stride, causal](int64_t s, const PositionMap& pos) {
      return BlockLayout::strided(s, s, stride, 0,
                                  causal ? CausalRestriction::on(pos, pos) : CausalRestriction::none());
    };
  }
  return cfg;
}

// The host layer (fp64 reference or the bf16 naive baseline) on the values of the bf16 inputs.
Outputs run_host(const Case& c, DType dtype, HostPrecision precision, const Bf16& x, const Bf16& dy, const Bf16& wqkv,
                 const Bf16& wo, const Bf16& bqkv, const Bf16& bo) {
  MhaConfig cfg = config_of(c, dtype);
  cfg.host_precision = precision;
  return run_host_layer(cfg, c.B, c.S, c.E, x.values, dy.values, wqkv.values, wo.values, bqkv.values, bo.values);
}

void run_case(const Case& c) {
  DISTATTN_REQUIRE_GPU();
  const uint64_t seed = test_seed() + std::hash<std::string>()(c.name) % 10007;
  SCOPED_TRACE(::testing::Message() << c.name << " seed " << seed);
  std::mt19937_64 rng(seed);
  const MhaConfig cfg = config_of(c, DType::kBFloat16);
  const int64_t N = cfg.qkv_dim(), HD = cfg.attn_dim(), B = c.B, S = c.S, E = c.E;
  const Bf16 wqkv = draw(static_cast<size_t>(N * E), rng, 1.0 / std::sqrt(double(E)));
  const Bf16 wo = draw(static_cast<size_t>(E * HD), rng, 1.0 / std::sqrt(double(HD)));
  const Bf16 bqkv = draw(static_cast<size_t>(N), rng, 0.5), bo = draw(static_cast<size_t>(E), rng, 0.5);
  const Bf16 x = draw(static_cast<size_t>(B * S * E), rng, 1.0), dy = draw(static_cast<size_t>(B * S * E), rng, 1.0);

  // GPU run. Activations with padded rows (row_pad) and a gap between batches when asked.
  const int64_t rs = E + c.row_pad, bs = S * rs + (c.row_pad ? 8 : 0);
  auto strided_bits = [&](const std::vector<uint16_t>& packed) {
    std::vector<uint16_t> s(static_cast<size_t>(B * bs), 0xFFFF);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < S; ++r) std::memcpy(&s[b * bs + r * rs], &packed[(b * S + r) * E], E * 2);
    return s;
  };
  auto packed_bits = [&](const std::vector<uint16_t>& s) {
    std::vector<uint16_t> p(static_cast<size_t>(B * S * E));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < S; ++r) std::memcpy(&p[(b * S + r) * E], &s[b * bs + r * rs], E * 2);
    return p;
  };
  const size_t act_bytes = static_cast<size_t>(B * bs) * 2;
  DeviceBytes xd(act_bytes), dyd(act_bytes), yd(act_bytes), dxd(act_bytes);  // x, dy in; y, dx out
  DeviceBytes dwq(wqkv.bits.size() * 2), dwo(wo.bits.size() * 2), dbq(bqkv.bits.size() * 2), dbo(bo.bits.size() * 2);
  DeviceBytes gq(wqkv.bits.size() * 4), go(wo.bits.size() * 4), gbq(bqkv.bits.size() * 4), gbo(bo.bits.size() * 4);
  xd.upload(strided_bits(x.bits).data());
  dyd.upload(strided_bits(dy.bits).data());
  dwq.upload(wqkv.bits.data()), dwo.upload(wo.bits.data()), dbq.upload(bqkv.bits.data()), dbo.upload(bo.bits.data());
  yd.poison(), dxd.poison(), gq.poison(), go.poison(), gbq.poison(), gbo.poison();
  auto seq = [&](DeviceBytes& d) {
    SequenceView v = SequenceView::packed(d.p, DType::kBFloat16, Device::kCuda, B, S, E);
    v.row_stride = rs;
    v.batch_stride = bs;
    return v;
  };
  cudaStream_t stream;
  DISTATTN_CUDA_CHECK(cudaStreamCreate(&stream));
  {
    MultiHeadAttention layer(cfg, Device::kCuda);
    MhaWeights w{dwq.p, c.bias ? dbq.p : nullptr, dwo.p, c.bias ? dbo.p : nullptr};
    MhaGrads g{gq.p, c.bias ? gbq.p : nullptr, go.p, c.bias ? gbo.p : nullptr};
    layer.forward(w, seq(xd), seq(yd), stream);
    layer.backward(w, seq(xd), seq(dyd), seq(dxd), g, stream);
    DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  DISTATTN_CUDA_CHECK(cudaStreamDestroy(stream));
  Outputs gpu;
  {
    std::vector<uint16_t> hy(static_cast<size_t>(B * bs)), hdx(hy.size());
    yd.download(hy.data());
    dxd.download(hdx.data());
    gpu.y = bf16_to_double(packed_bits(hy));
    gpu.dx = bf16_to_double(packed_bits(hdx));
    // y and dx were poisoned (0xFFFF, NaN): the layer writes E elements per row, so the padding stays NaN.
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < S; ++r)
        for (int64_t e = E; e < rs; ++e) {
          ASSERT_EQ(hy[b * bs + r * rs + e], 0xFFFF) << "y padding written";
          ASSERT_EQ(hdx[b * bs + r * rs + e], 0xFFFF) << "dx padding written";
        }
    auto grad = [](const DeviceBytes& d) {
      std::vector<float> h(d.bytes / 4);
      d.download(h.data());
      return f32_to_double(h);
    };
    gpu.gwqkv = grad(gq), gpu.gwo = grad(go);
    if (c.bias) gpu.gbqkv = grad(gbq), gpu.gbo = grad(gbo);
  }

  const Outputs ref = run_host(c, DType::kFloat64, HostPrecision::kFloat64, x, dy, wqkv, wo, bqkv, bo);
  const Outputs naive = run_host(c, DType::kBFloat16, HostPrecision::kRoundIntermediates, x, dy, wqkv, wo, bqkv, bo);

  std::printf("[mha gpu] %s seed %llu\n", c.name.c_str(), static_cast<unsigned long long>(seed));
  auto check = [&](const char* what, const std::vector<double>& got, const std::vector<double>& r,
                   const std::vector<double>& nv) {
    const Stats sg = stats(got, r), sn = stats(nv, r);
    const double bound = std::min(2.0 * sn.rel_l2 + std::ldexp(1.0, -10), std::ldexp(1.0, -5));
    std::printf("    %-6s rel L2 gpu %.2e  naive bf16 %.2e  bound %.2e  max|err| %.2e\n", what, sg.rel_l2, sn.rel_l2,
                bound, sg.max_abs);
    EXPECT_EQ(sg.non_finite, 0) << what;
    EXPECT_LE(sg.rel_l2, bound) << what;
  };
  check("y", gpu.y, ref.y, naive.y);
  check("dx", gpu.dx, ref.dx, naive.dx);
  check("dWqkv", gpu.gwqkv, ref.gwqkv, naive.gwqkv);
  check("dWo", gpu.gwo, ref.gwo, naive.gwo);
  if (c.bias) {
    check("dbqkv", gpu.gbqkv, ref.gbqkv, naive.gbqkv);
    check("dbo", gpu.gbo, ref.gbo, naive.gbo);
  }
}

TEST(MhaGpu, DenseCausalGqaBiasD64) {
  Case c;
  c.name = "dense/causal/gqa/bias/D64";
  c.mask = Mask::make_causal();
  run_case(c);
}

TEST(MhaGpu, DenseFullMhaD128StridedActivations) {
  Case c;
  c.name = "dense/full/mha/D128/strided-x";
  c.Hq = c.Hkv = 2;
  c.D = 128;
  c.E = 192;
  c.S = 257;
  c.bias = false;
  c.row_pad = 24;  // rows of 216 elements, batches 8 elements apart: cuBLAS strided-batched and per-batch dW paths
  run_case(c);
}

TEST(MhaGpu, DenseCausalWindowMqaBatch3) {
  Case c;
  c.name = "dense/causal-window/mqa/B3";
  c.B = 3;
  c.S = 200;
  c.Hkv = 1;
  c.mask = Mask::make_causal(96);
  run_case(c);
}

TEST(MhaGpu, DilatedCausal) {
  Case c;
  c.name = "dilated/causal/gqa";
  c.S = 512;
  c.B = 1;
  c.mask = Mask::make_causal();
  c.core = AttentionCore::kDilated;
  c.dilated = {{128, 1}, {256, 2}, {512, 4}};
  run_case(c);
}

TEST(MhaGpu, BlockSparseCausalStrided) {
  Case c;
  c.name = "sparse/causal/stride2";
  c.S = 520;
  c.B = 1;
  c.mask = Mask::make_causal();
  c.core = AttentionCore::kBlockSparse;
  c.sparse_stride = 2;
  run_case(c);
}

TEST(MhaGpu, BadInput) {
  DISTATTN_REQUIRE_GPU();
  MhaConfig cfg;
  cfg.embed_dim = 64;
  cfg.q_heads = 2;
  cfg.head_dim = 64;
  cfg.dtype = DType::kBFloat16;
  MhaConfig bad = cfg;
  bad.head_dim = 96;
  EXPECT_ERROR_ARG(MultiHeadAttention(bad, Device::kCuda), "config.head_dim");
  bad = cfg;
  bad.dtype = DType::kFloat32;
  EXPECT_ERROR_ARG(MultiHeadAttention(bad, Device::kCuda), "config.dtype");
  MultiHeadAttention layer(cfg, Device::kCuda);
  DeviceBytes x(2 * 8 * 64 * 2), y(2 * 8 * 64 * 2), wq(cfg.qkv_dim() * 64 * 2), wo(64 * cfg.attn_dim() * 2);
  y.poison();
  std::vector<uint16_t> host_w(static_cast<size_t>(cfg.qkv_dim() * 64), 0x3f80);
  auto seq = [&](DeviceBytes& d) { return SequenceView::packed(d.p, DType::kBFloat16, Device::kCuda, 2, 8, 64); };
  MhaWeights w{host_w.data(), nullptr, wo.p, nullptr};  // a host pointer where device memory is needed
  EXPECT_ERROR_ARG(layer.forward(w, seq(x), seq(y)), "weights.qkv_weight");
  w.qkv_weight = wq.p;
  SequenceView xs = seq(x);
  xs.dim = 32;
  EXPECT_ERROR_ARG(layer.forward(w, xs, seq(y)), "x");
  SequenceView xh = seq(x);
  xh.device = Device::kHost;
  EXPECT_ERROR_ARG(layer.forward(w, xh, seq(y)), "x");
  std::vector<uint16_t> hy(2 * 8 * 64);
  y.download(hy.data());
  for (uint16_t v : hy) ASSERT_EQ(v, 0xFFFF) << "y written on bad input";
}

}  // namespace
}  // namespace testing
}  // namespace distattn
