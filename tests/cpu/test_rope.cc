// RoPE on the host: rope_apply_host against an independent complex-multiplication formula, the
// algebra of the backward (inverse and transpose), frequency variants against hand-computed values
// from their published definitions, angle precision at large positions, and argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <random>
#include <string>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/positional/rope.h"
#include "test_util.h"

namespace distattn {
namespace {

using testing::HostTensor;

// A deep copy. (HostTensor's implicit copy keeps view.data pointing at the ORIGINAL storage.)
HostTensor clone(const HostTensor& t) {
  HostTensor c = t;
  c.view.data = c.storage.data();
  return c;
}

// Independent reference. Pair i of (b, s, h) as a complex number z = x[ia] + i x[ib]; RoPE multiplies it
// by scale * e^{i theta} (e^{-i theta} for the inverse), theta = float(pos) * inv_freq[i] (the fp32
// contract) evaluated in double from there. Dims past rot are copied. Output: fp64 [B, S, H, D].
HostTensor reference(const HostTensor& x, const PositionMap& pos, const std::vector<float>& inv_freq, int64_t rot,
                     RopeStyle style, double scale, bool inverse) {
  const auto& v = x.view;
  HostTensor y(DType::kFloat64, v.shape[0], v.shape[1], v.shape[2], v.shape[3]);
  const int64_t half = rot / 2;
  for (int64_t b = 0; b < v.shape[0]; ++b)
    for (int64_t s = 0; s < v.shape[1]; ++s)
      for (int64_t h = 0; h < v.shape[2]; ++h) {
        for (int64_t d = rot; d < v.shape[3]; ++d) y.set(b, s, h, d, x.get(b, s, h, d));
        for (int64_t i = 0; i < half; ++i) {
          const int64_t ia = style == RopeStyle::kNeoX ? i : 2 * i;
          const int64_t ib = style == RopeStyle::kNeoX ? i + half : 2 * i + 1;
          const double theta = static_cast<double>(static_cast<float>(pos.position(s)) * inv_freq[i]);
          const std::complex<double> z(x.get(b, s, h, ia), x.get(b, s, h, ib));
          const std::complex<double> w = z * std::polar(scale, inverse ? -theta : theta);
          y.set(b, s, h, ia, w.real());
          y.set(b, s, h, ib, w.imag());
        }
      }
  return y;
}

RopeParams make_params(const HostTensor& q, const HostTensor* k, const PositionMap& qp, const PositionMap& kp,
                       const std::vector<float>& inv_freq, int64_t rotary_dim, RopeStyle style) {
  RopeParams p;
  p.q = q.view;
  if (k) p.k = k->view;
  p.q_pos = qp;
  p.k_pos = kp;
  p.rotary_dim = rotary_dim;
  p.style = style;
  p.inv_freq = inv_freq.data();
  return p;
}

std::vector<float> frequencies(int64_t head_dim, int64_t rotary_dim, double base = 10000.0) {
  RopeConfig c;
  c.head_dim = head_dim;
  c.rotary_dim = rotary_dim;
  c.base = base;
  return make_rope_frequencies(c).inv_freq;
}

// Largest |got - ref| relative to max(1, |ref|).
double max_rel_err(const HostTensor& got, const HostTensor& ref) {
  double worst = 0;
  const auto& v = got.view;
  for (int64_t b = 0; b < v.shape[0]; ++b)
    for (int64_t s = 0; s < v.shape[1]; ++s)
      for (int64_t h = 0; h < v.shape[2]; ++h)
        for (int64_t d = 0; d < v.shape[3]; ++d) {
          const double g = got.get(b, s, h, d), r = ref.get(b, s, h, d);
          if (!std::isfinite(g)) return INFINITY;
          worst = std::max(worst, std::fabs(g - r) / std::max(1.0, std::fabs(r)));
        }
  return worst;
}

struct Case {
  RopeStyle style;
  int64_t D, rot;  // rot 0: D
  bool in_place;
};

// fp64 tensors, GQA shapes (Hq != Hkv, Sq != Skv), padded strides, zigzag q and strided k positions.
TEST(RopeHost, MatchesComplexFormulaFp64) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Case cases[] = {{RopeStyle::kNeoX, 64, 0, true},   {RopeStyle::kNeoX, 64, 0, false},
                        {RopeStyle::kGptJ, 64, 0, true},   {RopeStyle::kGptJ, 64, 0, false},
                        {RopeStyle::kNeoX, 40, 24, false}, {RopeStyle::kGptJ, 40, 24, false},
                        {RopeStyle::kNeoX, 40, 24, true},  {RopeStyle::kGptJ, 34, 2, false}};
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE("case " + std::to_string(n) + " style " + std::to_string(static_cast<int>(c.style)) + " D " +
                 std::to_string(c.D) + " rot " + std::to_string(c.rot) + (c.in_place ? " in place" : " out of place"));
    const int64_t B = 2, Sq = 13, Hq = 6, Skv = 9, Hkv = 2;
    HostTensor q(DType::kFloat64, B, Sq, Hq, c.D, /*head_pad=*/3, /*row_pad=*/5);
    HostTensor k(DType::kFloat64, B, Skv, Hkv, c.D, 1, 0);
    testing::fill_normal(q, seed + 10 * n);
    testing::fill_normal(k, seed + 10 * n + 1);
    const HostTensor q_in = clone(q), k_in = clone(k);
    // zigzag: chunks 1 and 6 of 8 chunks of 7 tokens, shifted by a large offset; k strided.
    PositionMap qp = PositionMap::contiguous(700000 + 7, 7);
    qp.add_chunk(700000 + 42, 1, 6);
    const PositionMap kp = PositionMap::strided(3, 5, Skv);
    const std::vector<float> inv = frequencies(c.D, c.rot);
    const int64_t rot = c.rot ? c.rot : c.D;
    RopeParams p = make_params(q, &k, qp, kp, inv, c.rot, c.style);
    HostTensor q_out(DType::kFloat64, B, Sq, Hq, c.D), k_out(DType::kFloat64, B, Skv, Hkv, c.D, 2, 7);
    testing::fill_nan(q_out);
    testing::fill_nan(k_out);
    if (!c.in_place) {
      p.q_out = q_out.view;
      p.k_out = k_out.view;
    }
    rope_apply_host(p);
    const HostTensor& qr = c.in_place ? q : q_out;
    const HostTensor& kr = c.in_place ? k : k_out;
    EXPECT_LT(max_rel_err(qr, reference(q_in, qp, inv, rot, c.style, 1.0, false)), 1e-13);
    EXPECT_LT(max_rel_err(kr, reference(k_in, kp, inv, rot, c.style, 1.0, false)), 1e-13);
    if (!c.in_place) {  // inputs untouched
      EXPECT_EQ(max_rel_err(q, q_in), 0.0);
      EXPECT_EQ(max_rel_err(k, k_in), 0.0);
    }
    ++n;
  }
}

// bf16 / fp16 / fp32 storage: the result is the exact rotation rounded once to the dtype, so it matches
// the fp64 reference (rounded the same way) to within one rounding: |err| <= 2^-p |ref|.
TEST(RopeHost, LowPrecisionDtypesRoundOnce) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::pair<DType, double> dts[] = {{DType::kBFloat16, std::ldexp(1.0, -8)},
                                          {DType::kFloat16, std::ldexp(1.0, -11)},
                                          {DType::kFloat32, std::ldexp(1.0, -24)}};
  for (const auto& [dt, half_ulp] : dts) {
    SCOPED_TRACE(dtype_name(dt));
    HostTensor q(dt, 1, 11, 3, 32);
    testing::fill_normal(q, seed + 77);
    const HostTensor q_in = clone(q);
    const std::vector<float> inv = frequencies(32, 0);
    const PositionMap qp = PositionMap::contiguous(123456, 11);
    RopeParams p = make_params(q, nullptr, qp, qp, inv, 0, RopeStyle::kGptJ);
    p.scale = 1.25f;
    rope_apply_host(p);
    const HostTensor ref = reference(q_in, qp, inv, 32, RopeStyle::kGptJ, 1.25, false);
    for (int64_t s = 0; s < 11; ++s)
      for (int64_t h = 0; h < 3; ++h)
        for (int64_t d = 0; d < 32; ++d) {
          const double r = ref.get(0, s, h, d);
          ASSERT_LE(std::fabs(q.get(0, s, h, d) - r),
                    half_ulp * std::fabs(r) * 1.0001 + 3e-8)  // 3e-8: fp16 subnormal spacing
              << "s " << s << " h " << h << " d " << d;
        }
  }
}

// The backward rotation undoes the forward: inverse(forward(x)) = scale^2 x.
TEST(RopeHost, InverseUndoesForward) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (RopeStyle style : {RopeStyle::kNeoX, RopeStyle::kGptJ}) {
    HostTensor x(DType::kFloat64, 1, 17, 5, 48);
    testing::fill_normal(x, seed + 5);
    const HostTensor x0 = clone(x);
    const std::vector<float> inv = frequencies(48, 32);
    PositionMap pos = PositionMap::strided(1000003, 7, 10);
    pos.add_chunk(5, 1, 7);
    RopeParams p = make_params(x, nullptr, pos, pos, inv, 32, style);
    p.scale = 0.75f;
    rope_apply_host(p);
    EXPECT_GT(max_rel_err(x, x0), 0.1);  // the forward did rotate
    p.inverse = true;
    rope_apply_host(p);
    HostTensor expect = clone(x0);
    for (int64_t s = 0; s < 17; ++s)
      for (int64_t h = 0; h < 5; ++h)
        for (int64_t d = 0; d < 48; ++d) expect.set(0, s, h, d, x0.get(0, s, h, d) * (d < 32 ? 0.75 * 0.75 : 1.0));
    EXPECT_LT(max_rel_err(x, expect), 1e-14);
  }
}

// The backward is the transpose of the forward (what makes it the gradient): <y, R x> = <R^T y, x>.
TEST(RopeHost, InverseIsTranspose) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (RopeStyle style : {RopeStyle::kNeoX, RopeStyle::kGptJ}) {
    HostTensor x(DType::kFloat64, 2, 9, 3, 20), y(DType::kFloat64, 2, 9, 3, 20);
    testing::fill_normal(x, seed + 11);
    testing::fill_normal(y, seed + 12);
    HostTensor rx = clone(x), rty = clone(y);
    const std::vector<float> inv = frequencies(20, 16);
    const PositionMap pos = PositionMap::strided(40000, 3, 9);
    RopeParams p = make_params(rx, nullptr, pos, pos, inv, 16, style);
    p.scale = 1.3f;
    rope_apply_host(p);  // rx = R x
    p.q = rty.view;
    p.inverse = true;
    rope_apply_host(p);  // rty = R^T y
    double lhs = 0, rhs = 0, norm = 0;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t s = 0; s < 9; ++s)
        for (int64_t h = 0; h < 3; ++h)
          for (int64_t d = 0; d < 20; ++d) {
            lhs += y.get(b, s, h, d) * rx.get(b, s, h, d);
            rhs += rty.get(b, s, h, d) * x.get(b, s, h, d);
            norm += std::fabs(y.get(b, s, h, d) * rx.get(b, s, h, d));
          }
    EXPECT_NEAR(lhs, rhs, 1e-13 * norm);
  }
}

// Angles at position ~1,000,000. With fp32 angles theta = float(pos) * inv_freq_fp32 the error against
// the exact angle pos * inv_freq_exact is at most pos * |inv_freq_fp32 - inv_freq_exact| (inv_freq
// rounding, <= 2^-24 relative) + half an ulp of theta (the product's rounding): about 0.06 rad at the
// highest frequencies for pos = 1e6 — the known price of fp32 angles, and what every fp32 RoPE pays.
// What must NOT happen is the position itself being rounded (bf16 would move 1,000,001 to 999,424:
// hundreds of radians off). Pair 0 (inv_freq = 1 exactly) has the exact angle, so it matches double.
TEST(RopeHost, AnglePrecisionAtOneMillion) {
  const int64_t D = 128;
  const std::vector<float> inv = frequencies(D, 0);
  ASSERT_EQ(inv[0], 1.0f);
  HostTensor x(DType::kFloat64, 1, 2, 1, D);
  for (int64_t s = 0; s < 2; ++s)
    for (int64_t d = 0; d < D; ++d) x.set(0, s, 0, d, d < D / 2 ? 1.0 : 0.0);  // z = 1 + 0i: output = (cos, sin)
  const int64_t pos0 = 1000001;
  const PositionMap pos = PositionMap::contiguous(pos0, 2);
  RopeParams p = make_params(x, nullptr, pos, pos, inv, 0, RopeStyle::kNeoX);
  rope_apply_host(p);
  // Pair 0: exact angle 1000001 and 1000002 (representable in fp32), so cos/sin match double closely.
  for (int64_t s = 0; s < 2; ++s) {
    EXPECT_NEAR(x.get(0, s, 0, 0), std::cos(static_cast<double>(pos0 + s)), 1e-15);
    EXPECT_NEAR(x.get(0, s, 0, D / 2), std::sin(static_cast<double>(pos0 + s)), 1e-15);
  }
  // The two rows (positions differ by 1) must differ by exactly one radian at pair 0: no position rounding.
  const double a0 = std::atan2(x.get(0, 0, 0, D / 2), x.get(0, 0, 0, 0));
  const double a1 = std::atan2(x.get(0, 1, 0, D / 2), x.get(0, 1, 0, 0));
  EXPECT_NEAR(std::remainder(a1 - a0 - 1.0, 2 * M_PI), 0.0, 1e-12);
  // bf16 would round the position: make sure the result is far from the rounded-position rotation.
  EXPECT_GT(std::fabs(x.get(0, 0, 0, 0) - std::cos(999424.0)) + std::fabs(x.get(0, 0, 0, D / 2) - std::sin(999424.0)),
            0.1);
  // Every pair: within the documented fp32-angle bound of the exact fp64 angle.
  double worst = 0;
  for (int64_t i = 0; i < D / 2; ++i) {
    const double exact_inv = std::pow(10000.0, -2.0 * i / D);
    const double exact = static_cast<double>(pos0) * exact_inv;
    const float theta32 = static_cast<float>(pos0) * inv[i];
    const double bound = pos0 * std::fabs(static_cast<double>(inv[i]) - exact_inv) +
                         0.5 * (std::nextafter(theta32, INFINITY) - theta32) + 1e-9;
    const double err =
        std::fabs(std::remainder(std::atan2(x.get(0, 0, 0, i + D / 2), x.get(0, 0, 0, i)) - exact, 2 * M_PI));
    EXPECT_LE(err, bound) << "pair " << i;
    worst = std::max(worst, err);
  }
  EXPECT_LT(worst, 0.07);  // documented magnitude at 1e6 (see above)
}

// ---- frequency variants ----

TEST(RopeFrequencies, BaseAndLinear) {
  RopeConfig c;
  c.head_dim = 10;
  c.rotary_dim = 8;  // frequencies use the rotary dim: base^(-2i/8)
  RopeFrequencies f = make_rope_frequencies(c);
  ASSERT_EQ(f.inv_freq.size(), 4u);
  const double expect[4] = {1.0, 0.1, 0.01, 0.001};  // 10000^(-i/4)
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(f.inv_freq[i], static_cast<float>(expect[i]));
  EXPECT_EQ(f.scale, 1.0f);
  c.scaling = RopeScaling::kLinear;
  c.factor = 2.0;  // position interpolation by 2: every frequency halves
  f = make_rope_frequencies(c);
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(f.inv_freq[i], static_cast<float>(expect[i] / 2));
  EXPECT_EQ(f.scale, 1.0f);
}

TEST(RopeFrequencies, DynamicNtk) {
  RopeConfig c;
  c.head_dim = 8;
  c.scaling = RopeScaling::kDynamicNtk;
  c.factor = 2.0;
  c.original_max_position = 100;
  const double base_freq[4] = {1.0, 0.1, 0.01, 0.001};
  for (int64_t L : {0, 50, 100}) {  // at or below the original length: unscaled
    c.sequence_length = L;
    const RopeFrequencies f = make_rope_frequencies(c);
    for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(f.inv_freq[i], static_cast<float>(base_freq[i])) << "L " << L;
  }
  // L = 200: base' = 10000 * (2 * 200 / 100 - 1)^(8 / 6) = 10000 * 3^(4/3), so
  // inv_freq[i] = base'^(-i/4) = 10^-i * 3^(-i/3): 1, 0.0693361274, 0.0048074986, 0.000333333.
  c.sequence_length = 200;
  const RopeFrequencies f = make_rope_frequencies(c);
  const double expect[4] = {1.0, 0.06933612743506347, 0.004807498567691361, 1.0 / 3000.0};
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(f.inv_freq[i], static_cast<float>(expect[i]));
  EXPECT_EQ(f.scale, 1.0f);
}

TEST(RopeFrequencies, Yarn) {
  // d = 128, base 10000, original context 4096, factor 4, beta_fast 32, beta_slow 1.
  // Correction dims (YaRN: dim index whose wavelength fits n rotations in the original context):
  //   d ln(4096 / (32 * 2 pi)) / (2 ln 10000) = 20.944 -> low = floor = 20
  //   d ln(4096 / (1 * 2 pi)) / (2 ln 10000)  = 45.027 -> high = ceil = 46
  // ramp(i) = clamp((i - 20) / 26, 0, 1); inv'(i) = inv(i) (1 - ramp) + inv(i) / 4 * ramp.
  RopeConfig c;
  c.head_dim = 128;
  c.scaling = RopeScaling::kYarn;
  c.factor = 4.0;
  c.original_max_position = 4096;
  const RopeFrequencies f = make_rope_frequencies(c);
  ASSERT_EQ(f.inv_freq.size(), 64u);
  auto base = [](int i) { return std::pow(10000.0, -2.0 * i / 128); };
  for (int i : {0, 5, 20}) EXPECT_FLOAT_EQ(f.inv_freq[i], static_cast<float>(base(i))) << i;        // extrapolated
  for (int i : {46, 50, 63}) EXPECT_FLOAT_EQ(f.inv_freq[i], static_cast<float>(base(i) / 4)) << i;  // interpolated
  EXPECT_FLOAT_EQ(f.inv_freq[33], static_cast<float>(base(33) * (0.5 + 0.5 / 4)));                  // ramp 13/26
  EXPECT_FLOAT_EQ(f.inv_freq[21], static_cast<float>(base(21) * (25.0 / 26 + 1.0 / 26 / 4)));       // ramp 1/26
  EXPECT_FLOAT_EQ(f.scale, 1.138629436f);                                                           // 0.1 ln 4 + 1
  RopeConfig c2 = c;
  c2.yarn_mscale = 1.5;  // explicit attention factor
  EXPECT_EQ(make_rope_frequencies(c2).scale, 1.5f);
  c2 = c;
  c2.factor = 1.0;  // no extension: frequencies unchanged, attention factor 1
  const RopeFrequencies f1 = make_rope_frequencies(c2);
  EXPECT_EQ(f1.scale, 1.0f);
  for (int i = 0; i < 64; ++i) EXPECT_FLOAT_EQ(f1.inv_freq[i], static_cast<float>(base(i)));
}

TEST(RopeFrequencies, Llama3StandardConfig) {
  // Llama 3.1: d 128, base 500000, factor 8, low_freq_factor 1, high_freq_factor 4, original 8192.
  // wavelen_i = 2 pi 500000^(i/64): < 2048 (= 8192/4) for i <= 28 -> unchanged; > 8192 for i >= 35 ->
  // divided by 8; i = 29..34 smooth: s = (8192 / wavelen - 1) / 3, inv' = (1 - s) inv / 8 + s inv.
  RopeConfig c;
  c.head_dim = 128;
  c.base = 500000.0;
  c.scaling = RopeScaling::kLlama3;
  c.factor = 8.0;
  c.original_max_position = 8192;
  const RopeFrequencies f = make_rope_frequencies(c);
  ASSERT_EQ(f.inv_freq.size(), 64u);
  auto base = [](int i) { return std::pow(500000.0, -2.0 * i / 128); };
  for (int i : {0, 10, 28}) EXPECT_FLOAT_EQ(f.inv_freq[i], static_cast<float>(base(i))) << i;
  for (int i : {35, 50, 63}) EXPECT_FLOAT_EQ(f.inv_freq[i], static_cast<float>(base(i) / 8)) << i;
  // Hand-evaluated: i = 30: wavelen 2948.3027, s = (8192/2948.3027 - 1)/3 = 0.59282, inv' = 0.0013718936.
  EXPECT_NEAR(f.inv_freq[30], 0.0013718935677611381, 1e-9);
  EXPECT_NEAR(f.inv_freq[34], 0.0001785078127679964, 1e-10);
  EXPECT_EQ(f.scale, 1.0f);
}

TEST(RopeFrequencies, ConfigErrorsNameTheField) {
  RopeConfig c;
  c.head_dim = 64;
  c.rotary_dim = 31;
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.rotary_dim");
  c.rotary_dim = 66;
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.rotary_dim");
  c.rotary_dim = -2;
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.rotary_dim");
  c = RopeConfig();
  c.head_dim = 0;
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.head_dim");
  c = RopeConfig();
  c.head_dim = 63;  // rotary_dim 0 -> 63: odd
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.rotary_dim");
  c = RopeConfig();
  c.base = 0;
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.base");
  c = RopeConfig();
  c.scaling = RopeScaling::kLinear;
  c.factor = 0.5;
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.factor");
  c = RopeConfig();
  c.scaling = RopeScaling::kDynamicNtk;
  c.factor = 2;
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.original_max_position");
  c.original_max_position = 10;
  c.sequence_length = -1;
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.sequence_length");
  c = RopeConfig();
  c.scaling = RopeScaling::kYarn;
  c.factor = 4;
  c.original_max_position = 4096;
  c.yarn_beta_fast = 0.5;  // below beta_slow
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.yarn_beta_fast");
  c = RopeConfig();
  c.scaling = RopeScaling::kLlama3;
  c.factor = 8;
  c.original_max_position = 8192;
  c.llama3_high_freq_factor = 1.0;  // not above low_freq_factor
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.llama3_high_freq_factor");
  c.llama3_high_freq_factor = 4.0;
  c.original_max_position = 0;
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.original_max_position");
  c = RopeConfig();
  c.scaling = static_cast<RopeScaling>(17);
  EXPECT_ERROR_ARG(make_rope_frequencies(c), "config.scaling");
}

// Bad calls throw naming the argument and write nothing.
// q_copy / k_copy: a second output holding exactly what the primary output holds (whole heads: the unrotated tail
// too), in place and out of place, bf16 and fp64; the copies' padding is never written.
TEST(RopeHost, SecondOutputsEqualThePrimary) {
  for (DType dt : {DType::kBFloat16, DType::kFloat64})
    for (bool in_place : {true, false}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + (in_place ? " in place" : " out of place"));
      HostTensor q(dt, 2, 9, 3, 16, 2, 0), k(dt, 2, 7, 1, 16);
      testing::fill_normal(q, 31);
      testing::fill_normal(k, 32);
      HostTensor q_out(dt, 2, 9, 3, 16), k_out(dt, 2, 7, 1, 16, 0, 8);
      HostTensor q_copy(dt, 2, 9, 3, 16, 4, 0), k_copy(dt, 2, 7, 1, 16, 0, 4);
      for (HostTensor* t : {&q_out, &k_out, &q_copy, &k_copy}) testing::fill_nan(*t);
      const HostTensor q0 = clone(q), k0 = clone(k);
      const std::vector<float> inv = frequencies(16, 12);
      RopeParams p =
          make_params(q, &k, PositionMap::contiguous(100, 9), PositionMap::strided(3, 2, 7), inv, 12, RopeStyle::kNeoX);
      if (!in_place) p.q_out = q_out.view, p.k_out = k_out.view;
      p.q_copy = q_copy.view;
      p.k_copy = k_copy.view;
      rope_apply_host(p);
      const HostTensor& qp = in_place ? q : q_out;
      const HostTensor& kp = in_place ? k : k_out;
      EXPECT_EQ(max_rel_err(q_copy, qp), 0.0);
      EXPECT_EQ(max_rel_err(k_copy, kp), 0.0);
      // The rotation happened (not a copy of the input): compare with the independent reference.
      const HostTensor qr = reference(q0, PositionMap::contiguous(100, 9), inv, 12, RopeStyle::kNeoX, 1.0, false);
      EXPECT_LE(max_rel_err(q_copy, qr), dt == DType::kFloat64 ? 1e-12 : 1e-2);
      EXPECT_GT(max_rel_err(q_copy, q0), 1e-3);
      // Padding untouched: NaN where the view does not reach.
      auto finite = [&](const HostTensor& t) {
        int64_t n = 0;
        const int64_t total = static_cast<int64_t>(t.storage.size() / dtype_size(dt));
        for (int64_t i = 0; i < total; ++i) n += std::isfinite(load_as_double(t.view.data, i, dt)) ? 1 : 0;
        return n;
      };
      EXPECT_EQ(finite(q_copy), q.view.numel());
      EXPECT_EQ(finite(k_copy), k.view.numel());
    }
}

TEST(RopeHost, BadArgumentsThrowAndWriteNothing) {
  HostTensor q(DType::kFloat32, 1, 8, 2, 16), k(DType::kFloat32, 1, 6, 1, 16), out(DType::kFloat32, 1, 8, 2, 16);
  testing::fill_normal(q, 1);
  testing::fill_normal(k, 2);
  testing::fill_nan(out);
  const HostTensor q0 = clone(q);
  const std::vector<float> inv = frequencies(16, 0);
  const PositionMap qp = PositionMap::contiguous(0, 8), kp = PositionMap::contiguous(0, 6);
  auto fresh = [&] {
    RopeParams p = make_params(q, &k, qp, kp, inv, 0, RopeStyle::kNeoX);
    p.q_out = out.view;
    return p;
  };
  RopeParams p = fresh();
  p.rotary_dim = 7;
  EXPECT_ERROR_ARG(rope_apply_host(p), "rotary_dim");
  p.rotary_dim = 18;
  EXPECT_ERROR_ARG(rope_apply_host(p), "rotary_dim");
  p = fresh();
  p.q_pos = PositionMap::contiguous(0, 7);
  EXPECT_ERROR_ARG(rope_apply_host(p), "q_pos");
  p = fresh();
  p.k_pos = PositionMap::contiguous(-1, 6);
  EXPECT_ERROR_ARG(rope_apply_host(p), "k_pos");
  p = fresh();
  p.inv_freq = nullptr;
  EXPECT_ERROR_ARG(rope_apply_host(p), "inv_freq");
  p = fresh();
  p.q_out.shape[2] = 1;
  EXPECT_ERROR_ARG(rope_apply_host(p), "q_out");
  p = fresh();
  p.k.dtype = DType::kFloat16;
  EXPECT_ERROR_ARG(rope_apply_host(p), "k");
  p = fresh();
  p.k.shape[3] = 8;
  EXPECT_ERROR_ARG(rope_apply_host(p), "k");
  p = fresh();
  p.k = TensorView();
  p.k_out = out.view;
  EXPECT_ERROR_ARG(rope_apply_host(p), "k_out");
  p = fresh();
  p.q.device = Device::kCuda;
  EXPECT_ERROR_ARG(rope_apply_host(p), "q");
  p = fresh();
  p.q.stride[3] = 2;
  EXPECT_ERROR_ARG(rope_apply_host(p), "q");
  p = fresh();
  p.style = static_cast<RopeStyle>(5);
  EXPECT_ERROR_ARG(rope_apply_host(p), "style");
  p = fresh();
  p.scale = NAN;
  EXPECT_ERROR_ARG(rope_apply_host(p), "scale");
  p = fresh();
  p.q_copy = q.view;  // the copy on top of its input
  EXPECT_ERROR_ARG(rope_apply_host(p), "q_copy");
  p = fresh();
  p.k_copy = out.view;  // the k copy on top of q_out (and of the wrong shape)
  EXPECT_ERROR_ARG(rope_apply_host(p), "k_copy");
  p = fresh();
  p.k = TensorView();
  p.k_copy = k.view;
  EXPECT_ERROR_ARG(rope_apply_host(p), "k_copy");
  // Nothing written: q unchanged, out still all NaN.
  EXPECT_EQ(max_rel_err(q, q0), 0.0);
  for (int64_t s = 0; s < 8; ++s)
    for (int64_t d = 0; d < 16; ++d) EXPECT_TRUE(std::isnan(out.get(0, s, 1, d)));
}

}  // namespace
}  // namespace distattn
