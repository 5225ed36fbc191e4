// Dilated attention's fused final step (dilated_attention.h, set_fused_final) through the host engine, in the
// 16-bit dtypes where it applies: the default (a rate-1 pattern last, in final accumulate mode, writing o directly)
// against the previous order (rate-1 first in plain mode, then the cast pass) and both against an fp64 run of the
// same inputs; every element of o written (NaN poison); the fallbacks (fp32 o, o whose layout does not fold, no
// rate-1 pattern, a lone rate-1 pattern, two rate-1 patterns) give the same results.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "distattn/dilated/dilated_attention.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::compare;
using testing::convert;
using testing::fill_nan;
using testing::fill_normal;
using testing::HostTensor;

struct Inputs {
  int64_t B, S, Hq, Hkv, D;
  DType dtype;
  HostTensor q, k, v;
  uint64_t seed;
  Inputs(int64_t b, int64_t s, int64_t hq, int64_t hkv, int64_t d, DType t, uint64_t salt)
      : B(b), S(s), Hq(hq), Hkv(hkv), D(d), dtype(t) {
    seed = testing::test_seed() + salt;
    q = HostTensor(t, B, S, Hq, D, 1, 2);
    k = HostTensor(t, B, S, Hkv, D, 0, 1);
    v = HostTensor(t, B, S, Hkv, D, 2, 0);
    fill_normal(q, seed);
    fill_normal(k, seed + 1);
    fill_normal(v, seed + 2);
  }
};

struct Out {
  HostTensor o;
  std::vector<float> lse;
};

// One forward with o in `o_dtype`; `batch_pad` rows between o's batches make o non-foldable.
Out run(const DilatedConfig& c, const Inputs& in, bool fused, DType o_dtype, int64_t batch_pad = 0) {
  Out r;
  if (batch_pad > 0) {
    r.o = HostTensor(o_dtype, in.B, in.S + batch_pad, in.Hq, in.D, 1, 1);
    r.o.view.shape[1] = in.S;
  } else {
    r.o = HostTensor(o_dtype, in.B, in.S, in.Hq, in.D, 3, 1);
  }
  fill_nan(r.o);
  r.lse.assign(static_cast<size_t>(in.B * in.Hq * in.S), std::numeric_limits<float>::quiet_NaN());
  DilatedAttention attn(c, Device::kHost);
  attn.set_fused_final(fused);
  attn.forward(in.q.view, in.k.view, in.v.view, r.o.view, r.lse.data());
  return r;
}

// fp64 inputs (the same values), fused final off: the accuracy reference of both 16-bit orders.
Out reference(const DilatedConfig& c, const Inputs& in) {
  Inputs in64 = in;
  in64.q = convert(in.q, DType::kFloat64);
  in64.k = convert(in.k, DType::kFloat64);
  in64.v = convert(in.v, DType::kFloat64);
  return run(c, in64, /*fused=*/false, DType::kFloat64);
}

void expect_close(const Out& got, const Out& want, double tol_o, const std::string& what) {
  SCOPED_TRACE(what);
  const auto e = compare(got.o.view, want.o.view);
  EXPECT_EQ(e.non_finite, 0) << e.str();
  for (int64_t b = 0; b < got.o.view.shape[0]; ++b)
    for (int64_t i = 0; i < got.o.view.shape[1]; ++i)
      for (int64_t h = 0; h < got.o.view.shape[2]; ++h)
        for (int64_t d = 0; d < got.o.view.shape[3]; ++d)
          ASSERT_FALSE(std::isnan(got.o.get(b, i, h, d))) << "o unwritten at b=" << b << " i=" << i << " h=" << h;
  EXPECT_LE(e.max_abs, tol_o) << e.str();
  ASSERT_EQ(got.lse.size(), want.lse.size());
  double lse_err = 0;
  for (size_t n = 0; n < got.lse.size(); ++n) {
    ASSERT_EQ(std::isinf(got.lse[n]), std::isinf(want.lse[n])) << "lse " << n;
    ASSERT_FALSE(std::isnan(got.lse[n])) << "lse " << n;
    if (std::isfinite(want.lse[n])) lse_err = std::max(lse_err, double(std::fabs(got.lse[n] - want.lse[n])));
  }
  EXPECT_LE(lse_err, 4e-6);
}

// bf16 rounding of values |O| < ~4 (one ulp 2^-6 at 2..4), fp16's 2^-8: the two orders may round one fp32 value
// differently by one ulp; against fp64 half an ulp plus fp32 merges.
double ulp_tol(DType t) { return t == DType::kBFloat16 ? 1.6e-2 : 4e-3; }

void check_config(const DilatedConfig& c, const Inputs& in, const std::string& name) {
  SCOPED_TRACE(name + " seed " + std::to_string(in.seed) + " dtype " + dtype_name(in.dtype));
  const Out ref = reference(c, in);
  const Out fused = run(c, in, true, in.dtype);
  const Out old = run(c, in, false, in.dtype);
  expect_close(fused, ref, ulp_tol(in.dtype), "fused vs fp64");
  expect_close(old, ref, ulp_tol(in.dtype), "previous order vs fp64");
  expect_close(fused, old, ulp_tol(in.dtype), "fused vs previous order");
  // Fallbacks: fp32 o (no o_final in fp32), non-foldable o: the previous order, so the same values as `old`.
  const Out f32 = run(c, in, true, DType::kFloat32);
  expect_close(f32, ref, 2e-6 * 8, "fp32 o vs fp64");
  const Out gap = run(c, in, true, in.dtype, /*batch_pad=*/3);
  expect_close(gap, old, ulp_tol(in.dtype), "non-foldable o (previous order) vs previous order");
}

TEST(DilatedFinal, LongNetLikeCausalGqaBf16AndFp16) {
  DilatedConfig c;
  c.patterns = {{8, 1}, {16, 2}, {32, 4}};
  c.causal = true;
  check_config(c, Inputs(2, 64, 4, 2, 8, DType::kBFloat16, 500), "causal bf16");
  check_config(c, Inputs(1, 64, 5, 5, 16, DType::kFloat16, 501), "causal fp16");
}

TEST(DilatedFinal, RaggedRatesNonCausalAlibi) {
  DilatedConfig c;
  c.patterns = {{16, 3}, {8, 1}, {32, 6}};  // the rate-1 pattern in the middle of the configuration
  c.ragged_rates = true;
  c.alibi_slopes = {0.3f, 0.15f, 0.07f};
  check_config(c, Inputs(2, 32, 3, 3, 8, DType::kBFloat16, 510), "ragged alibi");
}

TEST(DilatedFinal, TwoRatesOneAndLoneRateOne) {
  DilatedConfig c;
  c.patterns = {{8, 1}, {16, 1}, {16, 2}};  // two rate-1 patterns: the first runs last, the other accumulates
  c.causal = true;
  check_config(c, Inputs(1, 48, 2, 1, 8, DType::kBFloat16, 520), "two rate-1");
  c.patterns = {{16, 1}};  // one pattern: plain straight into o
  check_config(c, Inputs(3, 48, 2, 2, 8, DType::kFloat16, 521), "lone rate-1");
}

TEST(DilatedFinal, NoRateOnePatternKeepsZeroRows) {
  DilatedConfig c;
  c.patterns = {{8, 2}, {16, 4}};  // no rate-1 pattern: the previous order; half the rows see nothing
  c.causal = true;
  const Inputs in(1, 32, 3, 3, 8, DType::kBFloat16, 530);
  check_config(c, in, "no rate-1");
  const Out fused = run(c, in, true, in.dtype);
  int64_t zero_rows = 0;
  for (int64_t h = 0; h < in.Hq; ++h)
    for (int64_t i = 0; i < in.S; ++i)
      if (std::isinf(fused.lse[h * in.S + i])) {
        ++zero_rows;
        for (int64_t d = 0; d < in.D; ++d) EXPECT_EQ(fused.o.get(0, i, h, d), 0.0);
      }
  EXPECT_GT(zero_rows, 0);
}

}  // namespace
}  // namespace distattn
