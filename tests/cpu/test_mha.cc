// The multi-head attention layer on the host (layers/multi_head_attention.h) against an independent fp64
// reference written here: naive projections, RoPE from its definition, attention as an explicit softmax over
// every visible (query, key) pair (dense band masks, block-sparse rule, or LongNet's dilated multiset), the
// output projection. Gradients (dx and every weight / bias gradient) are checked against central finite
// differences of the reference's scalar loss L = sum(y * dy), so the reference needs no backward of its own.
//
// Tolerances: layer (fp64 host engine) vs reference differ by double rounding (~1e-15 relative) and by the
// fp32 RoPE angle (both compute float(pos) * inv_freq in fp32 as the contract says; sin/cos of it may differ
// in the last fp32 bits: ~1e-7 relative on rotated values). Central differences with h = 1e-5 have truncation
// error h^2 * L''' / 6 (~1e-10 here) and cancellation error ~1e-16 * |L| / h (~1e-10). So 1e-6 relative to
// max(1, max |ref|) is ~10x above every legitimate error and orders below a real defect (a wrong position, a
// missed pair, a transposed weight all move values by O(0.1)).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/layers/multi_head_attention.h"
#include "distattn/sparse/block_layout.h"
#include "mha_names.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ------------------------------------------------------------------------------------------------------------
// The reference.
struct Problem {
  int64_t B = 2, S = 9, E = 12, Hq = 4, Hkv = 2, D = 8;
  bool bias = true;
  bool rope = true;
  RopeStyle style = RopeStyle::kNeoX;
  int64_t rotary_dim = 0;  // 0: D
  double rope_base = 10000.0;
  bool causal = false;
  int64_t window = 0;
  std::vector<float> slopes;            // ALiBi [Hq] or empty
  int64_t pos_start = 0;                // dense / sparse: positions pos_start + s
  std::vector<DilatedPattern> dilated;  // non-empty: the dilated core
  bool dilated_ragged = false;          // MhaConfig::dilated_ragged_rates (rates need not divide segments)
  int64_t sparse_stride = 0;            // > 0: the block-sparse core, strided rule (below)
  int64_t sparse_local = 0;
  int64_t N() const { return (Hq + 2 * Hkv) * D; }
  int64_t HD() const { return Hq * D; }
  std::string name() const {
    std::string n = dilated.empty() ? (sparse_stride > 0 ? "sparse" : "dense") : "dilated";
    n += causal ? "/causal" : "/full";
    if (window) n += "/win" + std::to_string(window);
    if (!slopes.empty()) n += "/alibi";
    n += rope ? (style == RopeStyle::kGptJ ? "/rope-gptj" : "/rope") : "/norope";
    n += bias ? "/bias" : "";
    n += "/B" + std::to_string(B) + "S" + std::to_string(S) + "E" + std::to_string(E) + "Hq" + std::to_string(Hq) +
         "Hkv" + std::to_string(Hkv) + "D" + std::to_string(D);
    return n;
  }
};

struct Params {
  std::vector<double> wqkv, bqkv, wo, bo;  // [N, E], [N], [E, Hq*D], [E]
};

// How many times the pair (query row i, key row j) of head h is counted (0: not visible).
int multiplicity(const Problem& p, int64_t h, int64_t i, int64_t j) {
  if (!p.dilated.empty()) {
    int count = 0;
    for (const DilatedPattern& pt : p.dilated) {
      const int64_t w = pt.segment, r = pt.rate, s = h % r;
      if (i / w != j / w) continue;  // same segment only
      if ((i % w) % r != s || (j % w) % r != s) continue;
      if (p.causal && j > i) continue;
      ++count;
    }
    return count;
  }
  const int64_t d = (p.pos_start + i) - (p.pos_start + j);
  if (p.causal && d < 0) return 0;
  if (p.window > 0 && (d >= p.window || (!p.causal && -d >= p.window))) return 0;
  if (p.sparse_stride > 0) {
    const int64_t qb = i / kLayoutBlock, kb = j / kLayoutBlock;
    const int64_t diff = qb - kb;
    const bool listed =
        ((diff % p.sparse_stride) + p.sparse_stride) % p.sparse_stride == 0 || std::llabs(diff) <= p.sparse_local;
    if (!listed) return 0;
  }
  return 1;
}

int64_t position(const Problem& p, int64_t s) { return p.dilated.empty() ? p.pos_start + s : s; }

// RoPE on one head vector from the definition (rope.h): pair i rotated by float(pos) * inv_freq[i] (fp32).
void rotate(const Problem& p, double* x, int64_t pos) {
  const int64_t rd = p.rotary_dim > 0 ? p.rotary_dim : p.D, half = rd / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float inv = static_cast<float>(std::pow(p.rope_base, -2.0 * static_cast<double>(i) / rd));
    const float angle = static_cast<float>(pos) * inv;
    const double c = std::cos(static_cast<double>(angle)), s = std::sin(static_cast<double>(angle));
    const int64_t a = p.style == RopeStyle::kNeoX ? i : 2 * i, b = p.style == RopeStyle::kNeoX ? i + half : 2 * i + 1;
    const double xa = x[a], xb = x[b];
    x[a] = xa * c - xb * s;
    x[b] = xa * s + xb * c;
  }
}

// y [B, S, E] of the layer, everything in double.
std::vector<double> reference_forward(const Problem& p, const Params& w, const std::vector<double>& x) {
  const int64_t B = p.B, S = p.S, E = p.E, N = p.N(), D = p.D, HD = p.HD();
  std::vector<double> qkv(static_cast<size_t>(B * S * N));
  for (int64_t t = 0; t < B * S; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      double acc = p.bias ? w.bqkv[n] : 0.0;
      for (int64_t e = 0; e < E; ++e) acc += x[t * E + e] * w.wqkv[n * E + e];
      qkv[t * N + n] = acc;
    }
    if (p.rope) {
      const int64_t pos = position(p, t % S);
      for (int64_t h = 0; h < p.Hq + p.Hkv; ++h) rotate(p, &qkv[t * N + h * D], pos);  // q heads, then k heads
    }
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> o(static_cast<size_t>(B * S * HD), 0.0), sc(static_cast<size_t>(S));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < p.Hq; ++h) {
      const int64_t kh = h / (p.Hq / p.Hkv);
      for (int64_t i = 0; i < S; ++i) {
        const double* q = &qkv[(b * S + i) * N + h * D];
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < S; ++j) {
          sc[j] = -std::numeric_limits<double>::infinity();
          if (multiplicity(p, h, i, j) == 0) continue;
          const double* k = &qkv[(b * S + j) * N + (p.Hq + kh) * D];
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += q[d] * k[d];
          double s = scale * dot;
          if (!p.slopes.empty()) {
            const double dist = static_cast<double>(position(p, i) - position(p, j));
            s -= p.slopes[h] * (p.causal ? dist : std::fabs(dist));
          }
          sc[j] = s;
          mx = std::max(mx, s);
        }
        if (mx == -std::numeric_limits<double>::infinity()) continue;  // no visible key: o = 0
        double den = 0;
        for (int64_t j = 0; j < S; ++j) {
          if (sc[j] == -std::numeric_limits<double>::infinity()) continue;
          den += multiplicity(p, h, i, j) * std::exp(sc[j] - mx);
        }
        for (int64_t j = 0; j < S; ++j) {
          if (sc[j] == -std::numeric_limits<double>::infinity()) continue;
          const double a = multiplicity(p, h, i, j) * std::exp(sc[j] - mx) / den;
          const double* v = &qkv[(b * S + j) * N + (p.Hq + p.Hkv + kh) * D];
          for (int64_t d = 0; d < D; ++d) o[(b * S + i) * HD + h * D + d] += a * v[d];
        }
      }
    }
  }
  std::vector<double> y(static_cast<size_t>(B * S * E));
  for (int64_t t = 0; t < B * S; ++t) {
    for (int64_t e = 0; e < E; ++e) {
      double acc = p.bias ? w.bo[e] : 0.0;
      for (int64_t c = 0; c < HD; ++c) acc += o[t * HD + c] * w.wo[e * HD + c];
      y[t * E + e] = acc;
    }
  }
  return y;
}

double loss(const Problem& p, const Params& w, const std::vector<double>& x, const std::vector<double>& dy) {
  const std::vector<double> y = reference_forward(p, w, x);
  double l = 0;
  for (size_t i = 0; i < y.size(); ++i) l += y[i] * dy[i];
  return l;
}

std::vector<double> normal(size_t n, std::mt19937_64& rng, double stddev) {
  std::normal_distribution<double> dist(0.0, stddev);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

MhaConfig layer_config(const Problem& p) {
  MhaConfig c;
  c.embed_dim = p.E;
  c.q_heads = p.Hq;
  c.kv_heads = p.Hkv;
  c.head_dim = p.D;
  c.dtype = DType::kFloat64;
  c.bias = p.bias;
  c.rope = p.rope;
  c.rope_config.style = p.style;
  c.rope_config.rotary_dim = p.rotary_dim;
  c.rope_config.base = p.rope_base;
  c.mask.causal = p.causal;
  c.mask.window = p.window;
  c.alibi_slopes = p.slopes;
  if (!p.dilated.empty()) {
    c.core = AttentionCore::kDilated;
    c.dilated_patterns = p.dilated;
    c.dilated_ragged_rates = p.dilated_ragged;
  } else {
    c.positions = PositionMap::contiguous(p.pos_start, p.S);
    if (p.sparse_stride > 0) {
      c.core = AttentionCore::kBlockSparse;
      const int64_t stride = p.sparse_stride, local = p.sparse_local;
      const bool causal = p.causal;
      c.sparse_layout = [stride, local, causal](int64_t s, const PositionMap& pos) {
        return BlockLayout::strided(s, s, stride, local,
                                    causal ? CausalRestriction::on(pos, pos) : CausalRestriction::none());
      };
    }
  }
  return c;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Checks the layer's gradient `got` of tensor `param` (a vector the reference reads) against central differences
// at `max_checks` entries (all when the tensor is smaller; else a random sample).
void check_gradient(const char* what, const std::vector<double>& got, std::vector<double>& param,
                    const std::function<double()>& eval, int64_t max_checks, std::mt19937_64& rng) {
  ASSERT_EQ(got.size(), param.size()) << what;
  std::vector<size_t> idx(param.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  if (static_cast<int64_t>(idx.size()) > max_checks) {
    std::shuffle(idx.begin(), idx.end(), rng);
    idx.resize(static_cast<size_t>(max_checks));
  }
  const double h = 1e-5;
  const double tol = 1e-6 * std::max(1.0, max_abs(got));
  double worst = 0;
  for (size_t i : idx) {
    const double keep = param[i];
    param[i] = keep + h;
    const double lp = eval();
    param[i] = keep - h;
    const double lm = eval();
    param[i] = keep;
    const double fd = (lp - lm) / (2 * h);
    ASSERT_TRUE(std::isfinite(got[i])) << what << "[" << i << "] not finite";
    worst = std::max(worst, std::fabs(got[i] - fd));
    ASSERT_NEAR(got[i], fd, tol) << what << "[" << i << "]";
  }
  std::printf("    %-10s %zu entries checked, max |layer - finite diff| %.2e (tol %.1e)\n", what, idx.size(), worst,
              tol);
}

// Runs the layer (host, fp64) forward and backward on random inputs and checks y, dx and every weight gradient.
// `row_pad` pads x / dy / dx rows (strided activations); `max_checks` bounds the finite differences per tensor.
void run_problem(const Problem& p, int64_t row_pad = 0, int64_t max_checks = 1 << 30) {
  const uint64_t seed = test_seed() + static_cast<uint64_t>(p.S * 131 + p.E * 7 + p.Hkv);
  SCOPED_TRACE(::testing::Message() << p.name() << " seed " << seed);
  std::printf("[mha host] %s seed %llu\n", p.name().c_str(), static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  const int64_t B = p.B, S = p.S, E = p.E, N = p.N(), HD = p.HD();
  // Weights ~ N(0, 1/fan_in) keep activations O(1) (the usual init), so scores are neither flat nor one-hot.
  Params w;
  w.wqkv = normal(static_cast<size_t>(N * E), rng, 1.0 / std::sqrt(static_cast<double>(E)));
  w.wo = normal(static_cast<size_t>(E * HD), rng, 1.0 / std::sqrt(static_cast<double>(HD)));
  if (p.bias) {
    w.bqkv = normal(static_cast<size_t>(N), rng, 0.5);
    w.bo = normal(static_cast<size_t>(E), rng, 0.5);
  }
  std::vector<double> x = normal(static_cast<size_t>(B * S * E), rng, 1.0);
  const std::vector<double> dy = normal(static_cast<size_t>(B * S * E), rng, 1.0);

  // Strided activations: row stride E + row_pad, batch stride S * row stride + 3.
  const int64_t rs = E + row_pad, bs = S * rs + (row_pad ? 3 : 0);
  auto strided = [&](const std::vector<double>& packed) {
    std::vector<double> s(static_cast<size_t>(B * bs), kNaN);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < S; ++r)
        for (int64_t e = 0; e < E; ++e) s[b * bs + r * rs + e] = packed[(b * S + r) * E + e];
    return s;
  };
  auto packed_of = [&](const std::vector<double>& s) {
    std::vector<double> out(static_cast<size_t>(B * S * E));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < S; ++r)
        for (int64_t e = 0; e < E; ++e) out[(b * S + r) * E + e] = s[b * bs + r * rs + e];
    return out;
  };
  std::vector<double> xs = strided(x), dys = strided(dy), ys(xs.size(), kNaN), dxs(xs.size(), kNaN);
  auto view = [&](std::vector<double>& buf) {
    SequenceView v = SequenceView::packed(buf.data(), DType::kFloat64, Device::kHost, B, S, E);
    v.row_stride = rs;
    v.batch_stride = bs;
    return v;
  };

  MultiHeadAttention layer(layer_config(p), Device::kHost);
  MhaWeights lw;
  lw.qkv_weight = w.wqkv.data();
  lw.out_weight = w.wo.data();
  if (p.bias) lw.qkv_bias = w.bqkv.data(), lw.out_bias = w.bo.data();
  layer.forward(lw, view(xs), view(ys));

  const std::vector<double> y_ref = reference_forward(p, w, x);
  const std::vector<double> y = packed_of(ys);
  const double tol_y = 1e-6 * std::max(1.0, max_abs(y_ref));
  double worst = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    ASSERT_TRUE(std::isfinite(y[i])) << "y[" << i << "]";
    worst = std::max(worst, std::fabs(y[i] - y_ref[i]));
  }
  EXPECT_LE(worst, tol_y) << "y";
  std::printf("    y          max |layer - ref| %.2e (tol %.1e)\n", worst, tol_y);

  std::vector<double> gwqkv(w.wqkv.size(), kNaN), gwo(w.wo.size(), kNaN), gbqkv(w.bqkv.size(), kNaN),
      gbo(w.bo.size(), kNaN);
  MhaGrads g;
  g.qkv_weight = gwqkv.data();
  g.out_weight = gwo.data();
  if (p.bias) g.qkv_bias = gbqkv.data(), g.out_bias = gbo.data();
  layer.backward(lw, view(xs), view(dys), view(dxs), g);
  // Padding of dx untouched (still NaN): the layer writes only the rows' E elements.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < S; ++r)
      for (int64_t e = E; e < rs; ++e) ASSERT_TRUE(std::isnan(dxs[b * bs + r * rs + e])) << "dx padding written";

  auto eval = [&]() { return loss(p, w, x, dy); };
  check_gradient("dx", packed_of(dxs), x, eval, max_checks, rng);
  check_gradient("dWqkv", gwqkv, w.wqkv, eval, max_checks, rng);
  check_gradient("dWo", gwo, w.wo, eval, max_checks, rng);
  if (p.bias) {
    check_gradient("dbqkv", gbqkv, w.bqkv, eval, max_checks, rng);
    check_gradient("dbo", gbo, w.bo, eval, max_checks, rng);
  }
}

// ------------------------------------------------------------------------------------------------------------
TEST(MhaHost, DenseFullMhaBias) {
  Problem p;
  p.Hkv = 4;  // plain MHA
  run_problem(p);
}

TEST(MhaHost, DenseCausalGqaAlibiOddEmbedShardPositions) {
  Problem p;
  p.E = 13;
  p.S = 11;
  p.causal = true;
  p.pos_start = 37;  // a shard of a longer sequence: RoPE and ALiBi on global positions
  p.slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  run_problem(p, /*row_pad=*/3);
}

TEST(MhaHost, DenseCausalWindowMqaGptjPartialRotaryNoBias) {
  Problem p;
  p.Hkv = 1;
  p.bias = false;
  p.causal = true;
  p.window = 4;
  p.style = RopeStyle::kGptJ;
  p.rotary_dim = 4;
  p.S = 10;
  run_problem(p);
}

TEST(MhaHost, DenseTwoSidedWindowNoRope) {
  Problem p;
  p.window = 3;
  p.rope = false;
  p.B = 1;
  p.S = 7;
  run_problem(p);
}

TEST(MhaHost, DilatedCausalGqa) {
  Problem p;
  p.S = 16;
  p.causal = true;
  p.dilated = {{4, 1}, {8, 2}, {16, 4}};
  run_problem(p);
}

TEST(MhaHost, DilatedNonCausalRowsWithoutKeys) {
  // Rate 2 only: half of every segment is kept per head, the other rows get o = 0 (and no gradient).
  Problem p;
  p.S = 12;
  p.E = 9;
  p.dilated = {{6, 2}};
  run_problem(p, /*row_pad=*/1);
}

TEST(MhaHost, DilatedLongNetRaggedRates) {
  // LongNet-style rates that do not divide their segments (3 on 8, 6 on 16): class s keeps rows s, s+r, ... < w,
  // so classes differ in length; the reference's multiplicity() counts exactly those pairs. 7 heads: H % r != 0.
  Problem p;
  p.S = 16;
  p.Hq = 7;
  p.Hkv = 7;
  p.causal = true;
  p.dilated = {{8, 3}, {16, 6}};
  p.dilated_ragged = true;
  run_problem(p);
}

TEST(MhaHost, BlockSparseCausalStrided) {
  // 3 blocks of 128 rows (the last short): stride 2, no local band -> block (2, 1) is absent; causal on top.
  // Larger than the other cases: gradients are checked on a sample of 24 entries per tensor.
  Problem p;
  p.B = 1;
  p.S = 300;
  p.E = 8;
  p.Hq = 2;
  p.Hkv = 1;
  p.causal = true;
  p.sparse_stride = 2;
  p.sparse_local = 0;
  run_problem(p, 0, 24);
}

// The fp32 host layer (the CPU fallback) against the same reference: fp32 rounding of the stored
// intermediates (qkv, o, dO, dqkv) dominates: 1e-4 relative is > 100x their unit roundoff.
TEST(MhaHost, Fp32FallbackMatchesReference) {
  Problem p;
  p.causal = true;
  const uint64_t seed = test_seed() + 99;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t B = p.B, S = p.S, E = p.E, N = p.N(), HD = p.HD();
  Params w;
  w.wqkv = normal(static_cast<size_t>(N * E), rng, 1.0 / std::sqrt(static_cast<double>(E)));
  w.wo = normal(static_cast<size_t>(E * HD), rng, 1.0 / std::sqrt(static_cast<double>(HD)));
  w.bqkv = normal(static_cast<size_t>(N), rng, 0.5);
  w.bo = normal(static_cast<size_t>(E), rng, 0.5);
  // Round every input to fp32 first, so the reference sees exactly the fp32 layer's inputs.
  auto round32 = [](std::vector<double>& v) {
    for (double& x : v) x = static_cast<float>(x);
  };
  std::vector<double> x = normal(static_cast<size_t>(B * S * E), rng, 1.0);
  round32(w.wqkv), round32(w.wo), round32(w.bqkv), round32(w.bo), round32(x);
  auto f32 = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  std::vector<float> wq = f32(w.wqkv), wo = f32(w.wo), bq = f32(w.bqkv), bo = f32(w.bo), xf = f32(x);
  std::vector<float> y(static_cast<size_t>(B * S * E), std::numeric_limits<float>::quiet_NaN());
  MhaConfig c = layer_config(p);
  c.dtype = DType::kFloat32;
  c.host_precision = HostPrecision::kFloat32;
  MultiHeadAttention layer(c, Device::kHost);
  EXPECT_EQ(layer.grad_dtype(), DType::kFloat32);
  MhaWeights lw{wq.data(), bq.data(), wo.data(), bo.data()};
  layer.forward(lw, SequenceView::packed(xf.data(), DType::kFloat32, Device::kHost, B, S, E),
                SequenceView::packed(y.data(), DType::kFloat32, Device::kHost, B, S, E));
  const std::vector<double> ref = reference_forward(p, w, x);
  const double tol = 1e-4 * std::max(1.0, max_abs(ref));
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], tol) << "y[" << i << "]";
}

// ------------------------------------------------------------------------------------------------------------
// Bad input: an Error naming the argument, nothing written.
class MhaHostErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    c.embed_dim = 12;
    c.q_heads = 4;
    c.kv_heads = 2;
    c.head_dim = 8;
    c.dtype = DType::kFloat64;
    c.mask.causal = true;
    std::mt19937_64 rng(test_seed());
    wqkv = normal(static_cast<size_t>(c.qkv_dim() * 12), rng, 0.3);
    wo = normal(static_cast<size_t>(12 * c.attn_dim()), rng, 0.3);
    x = normal(2 * 5 * 12, rng, 1.0);
    y.assign(x.size(), kNaN);
    w.qkv_weight = wqkv.data();
    w.out_weight = wo.data();
  }
  SequenceView seq(std::vector<double>& v, int64_t dim = 12) {
    return SequenceView::packed(v.data(), DType::kFloat64, Device::kHost, 2, 5, dim);
  }
  void expect_y_untouched() {
    for (double v : y) ASSERT_TRUE(std::isnan(v)) << "y written on bad input";
  }
  MhaConfig c;
  std::vector<double> wqkv, wo, x, y;
  MhaWeights w;
};

TEST_F(MhaHostErrors, ConfigHeadsAndDims) {
  MhaConfig bad = c;
  bad.kv_heads = 3;  // does not divide 4
  EXPECT_ERROR_ARG(MultiHeadAttention(bad, Device::kHost), "config.kv_heads");
  bad = c;
  bad.q_heads = 0;
  EXPECT_ERROR_ARG(MultiHeadAttention(bad, Device::kHost), "config.q_heads");
  bad = c;
  bad.embed_dim = 0;
  EXPECT_ERROR_ARG(MultiHeadAttention(bad, Device::kHost), "config.embed_dim");
  bad = c;
  bad.head_dim = 0;
  EXPECT_ERROR_ARG(MultiHeadAttention(bad, Device::kHost), "config.head_dim");
  bad = c;
  bad.alibi_slopes = {0.5f};  // one slope for four heads
  EXPECT_ERROR_ARG(MultiHeadAttention(bad, Device::kHost), "config.alibi_slopes");
  bad = c;
  bad.core = AttentionCore::kRing;  // no communicator
  EXPECT_ERROR_ARG(MultiHeadAttention(bad, Device::kHost), "comm");
  bad = c;
  bad.core = AttentionCore::kDilated;  // no patterns
  EXPECT_ERROR_ARG(MultiHeadAttention(bad, Device::kHost), "config.dilated_patterns");
  bad = c;
  bad.core = AttentionCore::kBlockSparse;  // no layout builder
  EXPECT_ERROR_ARG(MultiHeadAttention(bad, Device::kHost), "config.sparse_layout");
  bad = c;
  bad.rope_config.rotary_dim = 5;  // odd
  EXPECT_ERROR_ARG(MultiHeadAttention(bad, Device::kHost), "config.rope_config.rotary_dim");
  // The CUDA rules are checked without a GPU: fp64 and head dim 8 are refused there.
  EXPECT_ERROR_ARG(layers::validate_mha_config(c, Device::kCuda), "config.dtype");
  bad = c;
  bad.dtype = DType::kBFloat16;
  EXPECT_ERROR_ARG(layers::validate_mha_config(bad, Device::kCuda), "config.head_dim");
  EXPECT_ERROR_ARG(layers::parse_core("flash", "--core"), "--core");
  EXPECT_EQ(layers::parse_core("sparse", "--core"), AttentionCore::kBlockSparse);
}

TEST_F(MhaHostErrors, ForwardInputs) {
  MultiHeadAttention layer(c, Device::kHost);
  std::vector<double> x13(2 * 5 * 13, 1.0);
  EXPECT_ERROR_ARG(layer.forward(w, seq(x13, 13), seq(y)), "x");  // E mismatch
  expect_y_untouched();
  MhaWeights nw = w;
  nw.qkv_weight = nullptr;
  EXPECT_ERROR_ARG(layer.forward(nw, seq(x), seq(y)), "weights.qkv_weight");
  nw = w;
  nw.out_weight = nullptr;
  EXPECT_ERROR_ARG(layer.forward(nw, seq(x), seq(y)), "weights.out_weight");
  nw = w;
  nw.qkv_bias = wo.data();  // config.bias is false
  EXPECT_ERROR_ARG(layer.forward(nw, seq(x), seq(y)), "weights.qkv_bias");
  expect_y_untouched();
  EXPECT_ERROR_ARG(layer.forward(w, seq(x), seq(x)), "y");  // in place is refused
  SequenceView ybad = seq(y);
  ybad.seq = 4;
  EXPECT_ERROR_ARG(layer.forward(w, seq(x), ybad), "y");
  SequenceView x32 = seq(x);
  x32.dtype = DType::kFloat32;
  EXPECT_ERROR_ARG(layer.forward(w, x32, seq(y)), "x");
  SequenceView xnull = seq(x);
  xnull.data = nullptr;
  EXPECT_ERROR_ARG(layer.forward(w, xnull, seq(y)), "x");
  expect_y_untouched();
  // Positions of the wrong length for the local rows.
  MhaConfig cp = c;
  cp.positions = PositionMap::contiguous(0, 7);
  MultiHeadAttention lp(cp, Device::kHost);
  EXPECT_ERROR_ARG(lp.forward(w, seq(x), seq(y)), "config.positions");
  // Dilated segment that does not divide the local length (5).
  MhaConfig cd = c;
  cd.core = AttentionCore::kDilated;
  cd.dilated_patterns = {{4, 1}};
  MultiHeadAttention ld(cd, Device::kHost);
  EXPECT_ERROR_ARG(ld.forward(w, seq(x), seq(y)), "config.patterns[0].segment");
  // A rate that does not divide its segment without dilated_ragged_rates.
  MhaConfig cr = c;
  cr.core = AttentionCore::kDilated;
  cr.dilated_patterns = {{5, 2}};
  MultiHeadAttention lr(cr, Device::kHost);
  EXPECT_ERROR_ARG(lr.forward(w, seq(x), seq(y)), "config.patterns[0].rate");
  // Block-sparse layout whose band (none) differs from config.mask (causal).
  MhaConfig cs = c;
  cs.core = AttentionCore::kBlockSparse;
  cs.sparse_layout = [](int64_t s, const PositionMap&) { return BlockLayout::strided(s, s, 1, 0); };
  MultiHeadAttention ls(cs, Device::kHost);
  EXPECT_ERROR_ARG(ls.forward(w, seq(x), seq(y)), "config.sparse_layout");
  expect_y_untouched();
}

TEST_F(MhaHostErrors, BackwardInputs) {
  MultiHeadAttention layer(c, Device::kHost);
  std::vector<double> dy(x.size(), 0.5), dx(x.size(), kNaN), gq(wqkv.size()), go(wo.size());
  MhaGrads g;
  g.qkv_weight = gq.data();
  g.out_weight = go.data();
  EXPECT_ERROR_ARG(layer.backward(w, seq(x), seq(dy), seq(dx), g), "x");  // no forward yet
  layer.forward(w, seq(x), seq(y));
  MhaGrads ng = g;
  ng.out_weight = nullptr;
  EXPECT_ERROR_ARG(layer.backward(w, seq(x), seq(dy), seq(dx), ng), "grads.out_weight");
  ng = g;
  ng.qkv_weight = nullptr;
  EXPECT_ERROR_ARG(layer.backward(w, seq(x), seq(dy), seq(dx), ng), "grads.qkv_weight");
  SequenceView dys = seq(dy);
  dys.batch = 1;
  EXPECT_ERROR_ARG(layer.backward(w, seq(x), dys, seq(dx), g), "dy");
  for (double v : dx) ASSERT_TRUE(std::isnan(v)) << "dx written on bad input";
  layer.backward(w, seq(x), seq(dy), seq(dx), g);  // and the good call works
  for (double v : dx) ASSERT_TRUE(std::isfinite(v));
}

}  // namespace
}  // namespace testing
}  // namespace distattn

namespace distattn {
namespace testing {
namespace {

// The projection FLOPs the benchmark reports: 2*T*E*N (fused QKV) + 2*T*(Hq*D)*E (output), N = (Hq + 2 Hkv) * D.
TEST(MhaHost, ProjectionFlops) {
  // T = 10 tokens, E = 8, Hq = 4, Hkv = 2, D = 2: N = 16, Hq*D = 8 -> 2*10*8*16 + 2*10*8*8 = 2560 + 1280.
  EXPECT_DOUBLE_EQ(layers::mha_projection_flops(10, 8, 4, 2, 2), 3840.0);
  // MHA (Hkv = Hq): N = 3 * Hq * D, so the total is 8 * T * E * Hq * D.
  EXPECT_DOUBLE_EQ(layers::mha_projection_flops(4096, 4096, 32, 32, 128), 8.0 * 4096 * 4096 * 32 * 128);
}

}  // namespace
}  // namespace testing
}  // namespace distattn
