// Dilated (LongNet) attention through the host engine (fp64 inputs; fp32 accumulator and LSE inside)
// against a dense fp64 reference written here from the pattern definition alone:
//   for each pattern (w, r), head h and query row i kept by it ((i - g0) mod r == h mod r, g0 = the start of
//   i's segment: torchscale's rows s, s + r, ... < w of each segment, also when r does not divide w, the
//   config.ragged_rates case), the keys are the rows j of i's segment with (j - g0) mod r == h mod r (and j <= i
//   when causal); the softmax runs over the MULTISET union of those keys over all patterns (a key listed by two
//   patterns counts twice).
// Backward: the reference's analytic gradient of that softmax, checked itself by finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/dilated/dilated_attention.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::compare;
using testing::compare_flat;
using testing::fill_nan;
using testing::fill_normal;
using testing::HostTensor;

struct Shape {
  int64_t B, S, Hq, Hkv, D;
};

// Multiset of keys of query (i, h); `count_once` collapses duplicates (the WRONG semantics, used to prove
// that the tests see the difference).
std::vector<int64_t> keys_of(const DilatedConfig& c, int64_t i, int64_t h, bool count_once = false) {
  std::vector<int64_t> keys;
  std::vector<char> seen;
  for (const DilatedPattern& p : c.patterns) {
    const int64_t g0 = (i / p.segment) * p.segment;  // offsets counted from the segment start
    if ((i - g0) % p.rate != h % p.rate) continue;   // row i not kept for head h by this pattern
    for (int64_t j = g0; j < g0 + p.segment; ++j) {
      if ((j - g0) % p.rate != h % p.rate) continue;
      if (c.causal && j > i) continue;
      keys.push_back(j);
    }
  }
  if (count_once) {
    std::vector<int64_t> u;
    for (int64_t j : keys)
      if (std::find(u.begin(), u.end(), j) == u.end()) u.push_back(j);
    return u;
  }
  return keys;
}

struct Reference {
  HostTensor o, dq, dk, dv;  // fp64 packed
  std::vector<double> lse;   // [B, Hq, S]
};

double score(const DilatedConfig& c, const HostTensor& q, const HostTensor& k, int64_t b, int64_t i, int64_t h,
             int64_t j, int64_t kh, double scale) {
  double s = 0;
  for (int64_t d = 0; d < q.view.shape[3]; ++d) s += q.get(b, i, h, d) * k.get(b, j, kh, d);
  s *= scale;
  if (!c.alibi_slopes.empty()) {
    const double slope = c.alibi_slopes[h];
    s -= slope * (c.causal ? double(i - j) : std::fabs(double(i - j)));
  }
  return s;
}

Reference reference(const DilatedConfig& c, const Shape& sh, const HostTensor& q, const HostTensor& k,
                    const HostTensor& v, const HostTensor* dout, bool count_once = false) {
  const double scale = c.softmax_scale > 0 ? double(c.softmax_scale) : double(float(1.0 / std::sqrt(double(sh.D))));
  const int64_t G = sh.Hq / sh.Hkv;
  Reference r;
  r.o = HostTensor(DType::kFloat64, sh.B, sh.S, sh.Hq, sh.D);
  r.dq = HostTensor(DType::kFloat64, sh.B, sh.S, sh.Hq, sh.D);
  r.dk = HostTensor(DType::kFloat64, sh.B, sh.S, sh.Hkv, sh.D);
  r.dv = HostTensor(DType::kFloat64, sh.B, sh.S, sh.Hkv, sh.D);
  for (HostTensor* t : {&r.o, &r.dq, &r.dk, &r.dv}) std::fill(t->storage.begin(), t->storage.end(), 0);
  r.lse.assign(sh.B * sh.Hq * sh.S, -std::numeric_limits<double>::infinity());
  for (int64_t b = 0; b < sh.B; ++b)
    for (int64_t h = 0; h < sh.Hq; ++h)
      for (int64_t i = 0; i < sh.S; ++i) {
        const int64_t kh = h / G;
        const std::vector<int64_t> keys = keys_of(c, i, h, count_once);
        if (keys.empty()) continue;  // O = 0, LSE = -inf, no gradient
        std::vector<double> s(keys.size());
        double mx = -1e300;
        for (size_t n = 0; n < keys.size(); ++n) mx = std::max(mx, s[n] = score(c, q, k, b, i, h, keys[n], kh, scale));
        double sum = 0;
        for (double x : s) sum += std::exp(x - mx);
        const double lse = mx + std::log(sum);
        r.lse[(b * sh.Hq + h) * sh.S + i] = lse;
        std::vector<double> P(keys.size());
        for (size_t n = 0; n < keys.size(); ++n) P[n] = std::exp(s[n] - lse);
        for (int64_t d = 0; d < sh.D; ++d) {
          double acc = 0;
          for (size_t n = 0; n < keys.size(); ++n) acc += P[n] * v.get(b, keys[n], kh, d);
          r.o.set(b, i, h, d, acc);
        }
        if (dout == nullptr) continue;
        double delta = 0;
        for (int64_t d = 0; d < sh.D; ++d) delta += dout->get(b, i, h, d) * r.o.get(b, i, h, d);
        for (size_t n = 0; n < keys.size(); ++n) {
          const int64_t j = keys[n];
          double dp = 0;
          for (int64_t d = 0; d < sh.D; ++d) dp += dout->get(b, i, h, d) * v.get(b, j, kh, d);
          const double ds = P[n] * (dp - delta);
          for (int64_t d = 0; d < sh.D; ++d) {
            r.dq.set(b, i, h, d, r.dq.get(b, i, h, d) + scale * ds * k.get(b, j, kh, d));
            r.dk.set(b, j, kh, d, r.dk.get(b, j, kh, d) + scale * ds * q.get(b, i, h, d));
            r.dv.set(b, j, kh, d, r.dv.get(b, j, kh, d) + P[n] * dout->get(b, i, h, d));
          }
        }
      }
  return r;
}

struct Case {
  Shape sh;
  HostTensor q, k, v, dout;
  uint64_t seed;
  Case(const Shape& s, uint64_t salt, int64_t pad = 0) : sh(s) {
    seed = testing::test_seed() + salt;
    q = HostTensor(DType::kFloat64, s.B, s.S, s.Hq, s.D, pad, 3 * pad);
    k = HostTensor(DType::kFloat64, s.B, s.S, s.Hkv, s.D, 2 * pad, pad);
    v = HostTensor(DType::kFloat64, s.B, s.S, s.Hkv, s.D, pad, 0);
    dout = HostTensor(DType::kFloat64, s.B, s.S, s.Hq, s.D, 0, pad);
    fill_normal(q, seed);
    fill_normal(k, seed + 1);
    fill_normal(v, seed + 2);
    fill_normal(dout, seed + 3);
  }
};

std::vector<float> random_slopes(int64_t H, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.05f, 0.6f);
  std::vector<float> s(H);
  for (float& x : s) x = u(rng);
  return s;
}

// Runs forward and backward through the host engine, with segments folded into the batch (the default when
// the layout allows) and with one call per segment, and compares both with the reference.
// `batch_pad` rows between batches make the layout non-foldable (batch stride != S * row stride).
void check(const DilatedConfig& c, const Shape& sh, uint64_t salt, int64_t pad = 0, int64_t batch_pad = 0) {
  Case cs(sh, salt, pad);
  if (batch_pad > 0) {  // same values, batches spread apart: copy into taller tensors and narrow the view
    for (HostTensor* t : {&cs.q, &cs.k, &cs.v, &cs.dout}) {
      HostTensor tall(t->view.dtype, sh.B, sh.S + batch_pad, t->view.shape[2], sh.D, pad, pad);
      fill_normal(tall, cs.seed + 99);
      tall.view.shape[1] = sh.S;
      for (int64_t b = 0; b < sh.B; ++b)
        for (int64_t i = 0; i < sh.S; ++i)
          for (int64_t h = 0; h < t->view.shape[2]; ++h)
            for (int64_t d = 0; d < sh.D; ++d) tall.set(b, i, h, d, t->get(b, i, h, d));
      *t = std::move(tall);
    }
  }
  SCOPED_TRACE("seed " + std::to_string(cs.seed) + " S=" + std::to_string(sh.S) + " Hq=" + std::to_string(sh.Hq) +
               " Hkv=" + std::to_string(sh.Hkv) + " causal=" + std::to_string(c.causal));
  const Reference ref = reference(c, sh, cs.q, cs.k, cs.v, &cs.dout);
  // Modes: 0 the default (segments or classes folded, whichever gives more CTAs), 1 segments folded in calls of
  // <= 3 segments, 2 per segment (classes may still fold), 3 segments folded and classes never folded, 4 default
  // folding without the fused final step (rate-1 pattern first in plain mode, then the cast pass), 5 default folding
  // with every pattern through the compacted LSE (the other modes but 6 address lse directly: rate 1 with row stride
  // 1, rate r > 1 with row stride r, set_strided_lse; mode 1 splits the folded direct calls at batch boundaries for
  // it), 6 default folding with rates > 1 through the compacted LSE and separate LSE scatters and gathers (mode 5 fuses
  // a pattern's scatter with the next gather), 7 default folding with one chain of all heads (the others split the
  // heads into an even and an odd chain where the config allows: set_head_chains).
  for (int mode = 0; mode < 8; ++mode) {
    const bool fold = mode != 2;
    SCOPED_TRACE(mode == 0   ? "default folding"
                 : mode == 1 ? "segments folded, 3 per call"
                 : mode == 2 ? "per segment"
                 : mode == 3 ? "segments folded, classes never"
                 : mode == 4 ? "default folding, fused final off"
                 : mode == 5 ? "default folding, compacted LSE for every rate"
                 : mode == 6 ? "default folding, compacted LSE for rates > 1, separate scatter and gather"
                             : "default folding, one head chain");
    HostTensor o(DType::kFloat64, sh.B, sh.S, sh.Hq, sh.D, pad, pad);
    std::vector<float> lse(sh.B * sh.Hq * sh.S, std::numeric_limits<float>::quiet_NaN());
    fill_nan(o);
    DilatedAttention attn(c, Device::kHost);
    attn.set_fold_segments(fold, mode == 1 ? 3 : 0);
    attn.set_fold_classes(mode != 3);
    attn.set_fused_final(mode != 4);
    attn.set_direct_lse(mode != 5);
    attn.set_fuse_lse_moves(mode != 6);
    attn.set_strided_lse(mode != 5 && mode != 6);
    attn.set_head_chains(mode != 7);
    attn.forward(cs.q.view, cs.k.view, cs.v.view, o.view, lse.data());
    const auto eo = compare(o.view, ref.o.view);
    const auto el = compare_flat(lse.data(), ref.lse.data(), static_cast<int64_t>(lse.size()));
    EXPECT_EQ(eo.non_finite, 0) << eo.str();
    EXPECT_LE(eo.max_abs, 2e-6) << eo.str();
    EXPECT_EQ(el.non_finite, 0) << el.str();
    EXPECT_LE(el.max_abs, 2e-6) << el.str();
    // -inf exactly where the reference has no key.
    for (size_t n = 0; n < lse.size(); ++n) {
      ASSERT_EQ(std::isinf(lse[n]), std::isinf(ref.lse[n])) << "lse entry " << n;
    }

    HostTensor dq(DType::kFloat64, sh.B, sh.S, sh.Hq, sh.D, 0, pad);
    HostTensor dk(DType::kFloat64, sh.B, sh.S, sh.Hkv, sh.D, pad, 0);
    HostTensor dv(DType::kFloat64, sh.B, sh.S, sh.Hkv, sh.D);
    fill_nan(dq);
    fill_nan(dk);
    fill_nan(dv);
    attn.backward(cs.q.view, cs.k.view, cs.v.view, o.view, lse.data(), cs.dout.view, dq.view, dk.view, dv.view);
    for (auto [got, want, name] : {std::make_tuple(&dq, &ref.dq, "dq"), std::make_tuple(&dk, &ref.dk, "dk"),
                                   std::make_tuple(&dv, &ref.dv, "dv")}) {
      const auto e = compare(got->view, want->view);
      EXPECT_EQ(e.non_finite, 0) << name << " " << e.str();
      EXPECT_LE(e.rel_l2, 1e-5) << name << " " << e.str();
      EXPECT_LE(e.max_abs, 2e-5) << name << " " << e.str();
    }
  }
}

DilatedConfig longnet_like(bool causal) {
  DilatedConfig c;
  c.patterns = {{8, 1}, {16, 2}, {32, 4}};
  c.causal = causal;
  return c;
}

TEST(Dilated, LongNetLikeNonCausal) { check(longnet_like(false), {2, 64, 4, 4, 16}, 1); }
TEST(Dilated, LongNetLikeCausal) { check(longnet_like(true), {2, 64, 4, 4, 16}, 2); }
TEST(Dilated, HeadsNotDivisibleByRateOddHeads) {
  check(longnet_like(true), {1, 64, 3, 3, 8}, 3);   // H = 3 < r = 4, H % 2 != 0
  check(longnet_like(false), {1, 64, 5, 5, 8}, 4);  // odd heads
}
TEST(Dilated, StridedTensorsAndBatch) {
  check(longnet_like(true), {3, 32, 5, 5, 8}, 5, /*pad=*/3);                     // foldable: padded rows
  check(longnet_like(false), {2, 32, 3, 3, 8}, 18, /*pad=*/1, /*batch_pad=*/5);  // batch gap: per segment
}
TEST(Dilated, GqaStridePathAndPerHeadPath) {
  DilatedConfig c;
  c.patterns = {{8, 1}, {24, 2}, {12, 3}};  // Hq/Hkv = 3: r = 3 one strided call, r = 2 one call per head
  c.causal = true;
  check(c, {1, 48, 6, 2, 8}, 6);
  c.patterns = {{16, 4}, {8, 1}};  // Hq/Hkv = 2 divides 4: kv head stride 2
  c.causal = false;
  check(c, {2, 32, 4, 2, 8}, 7, 1);
}
TEST(Dilated, AlibiOnGlobalPositions) {
  DilatedConfig c = longnet_like(true);
  c.alibi_slopes = random_slopes(5, testing::test_seed() + 80);
  check(c, {1, 64, 5, 5, 8}, 8);
  c.causal = false;
  c.softmax_scale = 0.3f;
  check(c, {2, 32, 5, 5, 8}, 9);
}
TEST(Dilated, SinglePatternIsBlockDiagonalAttention) {
  DilatedConfig c;
  c.patterns = {{8, 1}};  // segment boundaries: no key crosses them
  check(c, {1, 40, 2, 2, 8}, 10);
  c.causal = true;
  c.patterns = {{40, 1}};  // one segment: plain causal attention
  check(c, {1, 40, 2, 2, 8}, 11);
}

TEST(Dilated, RowsWithNoKeyGiveZeroAndMinusInf) {
  DilatedConfig c;
  c.patterns = {{8, 2}, {16, 4}};  // row p, head h kept iff p % 2 == h % 2: the other half sees nothing
  c.causal = true;
  check(c, {1, 32, 3, 3, 8}, 12);
  Case cs({1, 32, 3, 3, 8}, 13);
  HostTensor o(DType::kFloat64, 1, 32, 3, 8);
  std::vector<float> lse(3 * 32);
  dilated_attention_forward(c, cs.q.view, cs.k.view, cs.v.view, o.view, lse.data(), Device::kHost);
  for (int64_t h = 0; h < 3; ++h)
    for (int64_t p = 0; p < 32; ++p) {
      const bool seen = p % 2 == h % 2;
      EXPECT_EQ(std::isinf(lse[h * 32 + p]) && lse[h * 32 + p] < 0, !seen) << "h " << h << " p " << p;
      if (!seen) {
        for (int64_t d = 0; d < 8; ++d) EXPECT_EQ(o.get(0, p, h, d), 0.0);
      }
    }
  // The same configuration as an error when asked for; a rate-1 pattern makes it legal again.
  c.error_if_query_without_key = true;
  fill_nan(o);
  EXPECT_ERROR_ARG(dilated_attention_forward(c, cs.q.view, cs.k.view, cs.v.view, o.view, lse.data(), Device::kHost),
                   "config.patterns");
  EXPECT_TRUE(std::isnan(o.get(0, 0, 0, 0)));
  c.patterns.push_back({32, 1});
  EXPECT_NO_THROW(validate_dilated_config(c, 32, 3));
  c.patterns = {{12, 2}, {12, 3}};  // h = 0: rows with p even or p % 3 == 0; p = 1 has none
  EXPECT_ERROR_ARG(validate_dilated_config(c, 48, 1), "config.patterns");
  c.patterns = {{12, 2}, {12, 3}, {48, 6}};  // still p = 1 (1 % 6 != 0)
  EXPECT_ERROR_ARG(validate_dilated_config(c, 48, 1), "config.patterns");
  // (Without a rate-1 pattern row h + 1 of head h is never kept, so only the single-row sequence escapes.)
  c.patterns = {{1, 1}, {1, 1}};
  EXPECT_NO_THROW(validate_dilated_config(c, 7, 3));
}

// A pair kept by two patterns counts twice: the test reference (multiset) and a set-union reference differ,
// and the library follows the multiset. A pattern listed twice leaves O unchanged and adds log 2 to LSE.
TEST(Dilated, DuplicatePairsCountTwice) {
  DilatedConfig c;
  c.patterns = {{8, 1}, {8, 2}};
  c.causal = true;
  const Shape sh{1, 16, 2, 2, 8};
  check(c, sh, 14);
  Case cs(sh, 14);
  const Reference multi = reference(c, sh, cs.q, cs.k, cs.v, nullptr);
  const Reference once = reference(c, sh, cs.q, cs.k, cs.v, nullptr, /*count_once=*/true);
  EXPECT_GT(compare(multi.o.view, once.o.view).max_abs, 1e-3) << "the case must tell the two semantics apart";

  DilatedConfig twice;
  twice.patterns = {{8, 1}, {8, 1}};
  DilatedConfig single;
  single.patterns = {{8, 1}};
  HostTensor o1(DType::kFloat64, 1, 16, 2, 8), o2(DType::kFloat64, 1, 16, 2, 8);
  std::vector<float> l1(32), l2(32);
  dilated_attention_forward(single, cs.q.view, cs.k.view, cs.v.view, o1.view, l1.data(), Device::kHost);
  dilated_attention_forward(twice, cs.q.view, cs.k.view, cs.v.view, o2.view, l2.data(), Device::kHost);
  EXPECT_LE(compare(o2.view, o1.view).max_abs, 1e-6);
  for (int n = 0; n < 32; ++n) EXPECT_NEAR(l2[n], l1[n] + std::log(2.0), 1e-5);
}

// The library's backward against central finite differences of the fp64 reference forward
// (loss = sum O * dO): independent of the reference's own analytic gradient.
TEST(Dilated, BackwardMatchesFiniteDifferences) {
  DilatedConfig c;
  c.patterns = {{4, 1}, {8, 2}};
  c.causal = true;
  c.alibi_slopes = {0.25f, 0.5f, 0.125f};
  const Shape sh{1, 8, 3, 3, 4};
  Case cs(sh, 15);
  SCOPED_TRACE("seed " + std::to_string(cs.seed));
  HostTensor o(DType::kFloat64, 1, 8, 3, 4), dq(DType::kFloat64, 1, 8, 3, 4), dk(DType::kFloat64, 1, 8, 3, 4),
      dv(DType::kFloat64, 1, 8, 3, 4);
  std::vector<float> lse(24);
  DilatedAttention attn(c, Device::kHost);
  attn.forward(cs.q.view, cs.k.view, cs.v.view, o.view, lse.data());
  attn.backward(cs.q.view, cs.k.view, cs.v.view, o.view, lse.data(), cs.dout.view, dq.view, dk.view, dv.view);
  auto loss = [&]() {
    const Reference r = reference(c, sh, cs.q, cs.k, cs.v, nullptr);
    double l = 0;
    for (int64_t i = 0; i < 8; ++i)
      for (int64_t h = 0; h < 3; ++h)
        for (int64_t d = 0; d < 4; ++d) l += r.o.get(0, i, h, d) * cs.dout.get(0, i, h, d);
    return l;
  };
  const double eps = 1e-5;
  double worst = 0;
  for (auto [in, grad] : {std::make_pair(&cs.q, &dq), std::make_pair(&cs.k, &dk), std::make_pair(&cs.v, &dv)}) {
    for (int64_t i = 0; i < 8; ++i)
      for (int64_t h = 0; h < 3; ++h)
        for (int64_t d = 0; d < 4; ++d) {
          const double x = in->get(0, i, h, d);
          in->set(0, i, h, d, x + eps);
          const double lp = loss();
          in->set(0, i, h, d, x - eps);
          const double lm = loss();
          in->set(0, i, h, d, x);
          const double fd = (lp - lm) / (2 * eps);
          worst = std::max(worst, std::fabs(fd - grad->get(0, i, h, d)));
          EXPECT_NEAR(grad->get(0, i, h, d), fd, 2e-5) << "element (" << i << ", " << h << ", " << d << ")";
        }
  }
  EXPECT_GT(worst, 0.0);
}

// Rates that do not divide their segment (config.ragged_rates): class s keeps rows s, s + r, ... < w of each
// segment, so classes differ in length; H % r != 0, rates above H, GQA (strided and per-head kv), ALiBi.
TEST(Dilated, RaggedRatesForwardBackward) {
  DilatedConfig c;
  c.ragged_rates = true;
  c.patterns = {{12, 1}, {12, 5}, {24, 7}};  // r = 5: classes of 3, 3, 2, 2, 2 rows; r = 7 > H: 4, 4, 4, 3, 3
  c.causal = true;
  check(c, {1, 48, 5, 5, 8}, 30);
  c.causal = false;
  check(c, {2, 24, 5, 5, 8}, 31, /*pad=*/1);
  c.patterns = {{16, 3}, {8, 1}, {16, 6}};  // Hq/Hkv = 3 divides 3 and 6: strided kv heads
  check(c, {1, 32, 6, 2, 8}, 32);
  c.causal = true;
  c.patterns = {{10, 4}, {20, 3}};  // Hq/Hkv = 2: r = 4 strided kv heads, r = 3 per head; no rate-1 pattern
  check(c, {1, 40, 4, 2, 8}, 33);
  c.alibi_slopes = random_slopes(4, testing::test_seed() + 34);
  check(c, {1, 40, 4, 2, 8}, 34, 0, /*batch_pad=*/3);
}

// With ragged rates a short class really is short: head 4 of r = 5 over w = 12 keeps rows 4 and 9 only (not 14).
TEST(Dilated, RaggedRatesKeepTorchscaleRows) {
  DilatedConfig c;
  c.ragged_rates = true;
  c.patterns = {{12, 5}};
  Case cs({1, 24, 5, 5, 8}, 35);
  HostTensor o(DType::kFloat64, 1, 24, 5, 8);
  std::vector<float> lse(5 * 24);
  dilated_attention_forward(c, cs.q.view, cs.k.view, cs.v.view, o.view, lse.data(), Device::kHost);
  for (int64_t h = 0; h < 5; ++h)
    for (int64_t p = 0; p < 24; ++p) {
      const bool want = (p % 12) % 5 == h;
      EXPECT_EQ(std::isfinite(lse[h * 24 + p]), want) << "h " << h << " p " << p;
    }
  // Rows 10 and 11 of each segment belong to classes 0 and 1 (10 % 5, 11 % 5), as in torchscale.
  EXPECT_TRUE(std::isfinite(lse[0 * 24 + 10]) && std::isfinite(lse[1 * 24 + 23]));
  c.error_if_query_without_key = true;
  EXPECT_ERROR_ARG(validate_dilated_config(c, 24, 5), "config.patterns");
  c.patterns.push_back({24, 1});
  EXPECT_NO_THROW(validate_dilated_config(c, 24, 5));
}

TEST(Dilated, ScratchGrowsAcrossCalls) {
  DilatedConfig c = longnet_like(false);
  DilatedAttention attn(c, Device::kHost);
  for (int64_t S : {32, 96, 64}) {
    Case cs({1, S, 2, 2, 8}, 16 + S);
    HostTensor o(DType::kFloat64, 1, S, 2, 8);
    fill_nan(o);
    std::vector<float> lse(2 * S);
    attn.forward(cs.q.view, cs.k.view, cs.v.view, o.view, lse.data());
    const Reference ref = reference(c, cs.sh, cs.q, cs.k, cs.v, nullptr);
    EXPECT_LE(compare(o.view, ref.o.view).max_abs, 2e-6) << "S " << S;
  }
}

// Bad input: an Error naming the argument, and nothing written (poisoned outputs stay NaN).
TEST(Dilated, BadInputNamesArgumentAndWritesNothing) {
  const Shape sh{1, 32, 4, 4, 8};
  Case cs(sh, 17);
  HostTensor o(DType::kFloat64, 1, 32, 4, 8);
  std::vector<float> lse(4 * 32);
  auto run = [&](const DilatedConfig& c) {
    fill_nan(o);
    std::fill(lse.begin(), lse.end(), std::numeric_limits<float>::quiet_NaN());
    DilatedAttention attn(c, Device::kHost);
    attn.forward(cs.q.view, cs.k.view, cs.v.view, o.view, lse.data());
  };
  auto untouched = [&]() {
    for (int64_t i = 0; i < 32; ++i)
      for (int64_t h = 0; h < 4; ++h)
        for (int64_t d = 0; d < 8; ++d) ASSERT_TRUE(std::isnan(o.get(0, i, h, d)));
    for (float x : lse) ASSERT_TRUE(std::isnan(x));
  };
  DilatedConfig c;
  EXPECT_ERROR_ARG(run(c), "config.patterns");  // empty
  untouched();
  c.patterns = {{8, 1}, {12, 2}};  // 12 does not divide 32
  EXPECT_ERROR_ARG(run(c), "config.patterns[1].segment");
  untouched();
  c.patterns = {{8, 1}, {16, 3}};  // 3 does not divide 16: an Error unless ragged_rates (which it names)
  EXPECT_ERROR_ARG(run(c), "config.patterns[1].rate");
  untouched();
  try {
    validate_dilated_config(c, 32, 4);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ragged_rates"), std::string::npos) << e.what();
  }
  c.ragged_rates = true;
  EXPECT_NO_THROW(validate_dilated_config(c, 32, 4));
  c.patterns = {{8, 1}, {16, 17}};  // a rate above the segment stays an error
  EXPECT_ERROR_ARG(run(c), "config.patterns[1].rate");
  untouched();
  c.ragged_rates = false;
  c.patterns = {{8, 0}};
  EXPECT_ERROR_ARG(run(c), "config.patterns[0].rate");
  untouched();
  c.patterns = {{0, 1}};
  EXPECT_ERROR_ARG(run(c), "config.patterns[0].segment");
  untouched();
  c.patterns = {{8, 1}};
  c.alibi_slopes = {0.5f, 0.25f};  // 2 slopes for 4 heads
  EXPECT_ERROR_ARG(run(c), "config.alibi_slopes");
  untouched();
  c.alibi_slopes = {0.5f, 0.25f, std::numeric_limits<float>::infinity(), 0.1f};
  EXPECT_ERROR_ARG(run(c), "config.alibi_slopes");
  untouched();
  c.alibi_slopes.clear();
  c.softmax_scale = -1.f;
  EXPECT_ERROR_ARG(run(c), "config.softmax_scale");
  untouched();
  c.softmax_scale = 0.f;
  {
    DilatedAttention attn(c, Device::kHost);
    fill_nan(o);
    EXPECT_ERROR_ARG(attn.forward(cs.q.view, cs.k.view, cs.v.view, o.view, nullptr), "lse");
    HostTensor k_short(DType::kFloat64, 1, 16, 4, 8);
    fill_normal(k_short, 1);
    EXPECT_ERROR_ARG(attn.forward(cs.q.view, k_short.view, k_short.view, o.view, lse.data()), "k");
    EXPECT_ERROR_ARG(attn.forward(cs.q.view, cs.k.view, cs.v.view, cs.q.view, lse.data()), "o");  // aliases q
    TensorView cuda_q = cs.q.view;
    cuda_q.device = Device::kCuda;
    EXPECT_ERROR_ARG(attn.forward(cuda_q, cs.k.view, cs.v.view, o.view, lse.data()), "q");
    untouched();
    // Backward: wrong dq shape, nothing written.
    attn.forward(cs.q.view, cs.k.view, cs.v.view, o.view, lse.data());
    HostTensor dq(DType::kFloat64, 1, 32, 3, 8), dk(DType::kFloat64, 1, 32, 4, 8), dv(DType::kFloat64, 1, 32, 4, 8);
    fill_nan(dk);
    fill_nan(dv);
    EXPECT_ERROR_ARG(
        attn.backward(cs.q.view, cs.k.view, cs.v.view, o.view, lse.data(), cs.dout.view, dq.view, dk.view, dv.view),
        "dq");
    EXPECT_TRUE(std::isnan(dk.get(0, 0, 0, 0)) && std::isnan(dv.get(0, 31, 3, 7)));
  }
}

}  // namespace
}  // namespace distattn
