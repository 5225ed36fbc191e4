// Host conversions of the 16-bit formats (core/dtype.h). Expected values come from the IEEE 754
// definitions (bf16: 1 sign, 8 exponent, 7 mantissa bits; fp16: 1, 5 (bias 15), 10), written as
// powers of two here, never produced by the code under test.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "distattn/core/dtype.h"
#include "test_util.h"

namespace distattn {
namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
const float kInf = std::numeric_limits<float>::infinity();

// --- bf16 ---------------------------------------------------------------------------------------------
TEST(Bf16, DecodeKnownPatterns) {
  EXPECT_EQ(bf16_bits_to_float(0x3F80), 1.0f);
  EXPECT_EQ(bf16_bits_to_float(0xC000), -2.0f);
  EXPECT_EQ(bf16_bits_to_float(0x3FC0), 1.5f);
  EXPECT_EQ(bf16_bits_to_float(0x7F80), kInf);
  EXPECT_EQ(bf16_bits_to_float(0xFF80), -kInf);
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(0x7FC0)));
  EXPECT_EQ(bf16_bits_to_float(0x0001), std::ldexp(1.0f, -133));   // smallest subnormal
  EXPECT_EQ(bf16_bits_to_float(0x0080), std::ldexp(1.0f, -126));   // smallest normal
  EXPECT_EQ(bf16_bits_to_float(0x7F7F), std::ldexp(255.0f, 120));  // largest finite: (2 - 2^-7) * 2^127
  EXPECT_TRUE(std::signbit(bf16_bits_to_float(0x8000)));
}

TEST(Bf16, EncodeExactValues) {
  EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16_bits(-2.0f), 0xC000);
  EXPECT_EQ(float_to_bf16_bits(0.0f), 0x0000);
  EXPECT_EQ(float_to_bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(float_to_bf16_bits(kInf), 0x7F80);
  EXPECT_EQ(float_to_bf16_bits(-kInf), 0xFF80);
  EXPECT_EQ(float_to_bf16_bits(std::ldexp(1.0f, -133)), 0x0001);
}

TEST(Bf16, RoundToNearestEven) {
  // Between 1 and 1 + 2^-7 (mantissa even / odd): the midpoint 1 + 2^-8 goes to the even one, 1.
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  // Between 1 + 2^-7 (odd) and 1 + 2^-6 (even): the midpoint goes up.
  EXPECT_EQ(float_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  // Just above / below a midpoint: the nearer neighbour.
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3F81);
  EXPECT_EQ(float_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8) - std::ldexp(1.0f, -20)), 0x3F81);
  EXPECT_EQ(float_to_bf16_bits(-(1.0f + std::ldexp(1.0f, -8))), 0xBF80);
  // Carry into the exponent: 2 - 2^-8 is the midpoint of 2 - 2^-7 (odd) and 2: goes to 2.
  EXPECT_EQ(float_to_bf16_bits(2.0f - std::ldexp(1.0f, -8)), 0x4000);
}

TEST(Bf16, OverflowUnderflowAndNaN) {
  // The largest float is past the midpoint between the largest bf16 and 2^128: infinity.
  EXPECT_EQ(float_to_bf16_bits(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(float_to_bf16_bits(std::ldexp(255.0f, 120)), 0x7F7F);  // the largest bf16 itself stays
  // Subnormals: 2^-134 is halfway between 0 and the smallest subnormal: to 0 (even); 3 * 2^-134 to 2 * 2^-133.
  EXPECT_EQ(float_to_bf16_bits(std::ldexp(1.0f, -134)), 0x0000);
  EXPECT_EQ(float_to_bf16_bits(std::ldexp(3.0f, -134)), 0x0002);
  EXPECT_EQ(float_to_bf16_bits(std::ldexp(1.0f, -140)), 0x0000);
  EXPECT_EQ(float_to_bf16_bits(-std::ldexp(1.0f, -140)), 0x8000);
  // NaNs stay NaN, including a signalling NaN whose payload sits in the low bits only (truncating would
  // turn it into infinity).
  for (uint32_t nan_bits : {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu}) {
    const uint16_t b = float_to_bf16_bits(from_bits(nan_bits));
    EXPECT_EQ(b & 0x7F80, 0x7F80) << std::hex << nan_bits;
    EXPECT_NE(b & 0x007F, 0) << std::hex << nan_bits;
    EXPECT_TRUE(std::isnan(bf16_bits_to_float(b)));
  }
}

TEST(Bf16, EveryPatternRoundTrips) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const float f = bf16_bits_to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(f))));
      continue;
    }
    ASSERT_EQ(float_to_bf16_bits(f), b) << std::hex << b;
  }
}

// Random floats: the result is the nearer of the two bf16 values around x (ties: even mantissa).
TEST(Bf16, RandomValuesRoundToNearest) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 gen(static_cast<uint32_t>(seed));
  for (int t = 0; t < 200000; ++t) {
    const uint32_t u = gen() % 0x7F800000u;  // finite non-negative floats, subnormals included
    const float x = from_bits(u);
    // Neighbours: truncation (below or equal) and the next pattern; 0x7F80 (inf) stands for 2^128 there.
    const uint16_t lo = static_cast<uint16_t>(u >> 16), hi = static_cast<uint16_t>(lo + 1);
    const double vhi = hi == 0x7F80 ? std::ldexp(1.0, 128) : double(bf16_bits_to_float(hi));
    const double dlo = double(x) - bf16_bits_to_float(lo), dhi = vhi - x;
    const uint16_t want = dlo < dhi ? lo : dhi < dlo ? hi : ((lo & 1) ? hi : lo);
    ASSERT_EQ(float_to_bf16_bits(x), want) << std::hex << u;
  }
}

// --- fp16 ---------------------------------------------------------------------------------------------
TEST(Fp16, DecodeKnownPatterns) {
  EXPECT_EQ(fp16_bits_to_float(0x3C00), 1.0f);
  EXPECT_EQ(fp16_bits_to_float(0xC000), -2.0f);
  EXPECT_EQ(fp16_bits_to_float(0x3555), std::ldexp(1365.0f, -12));  // 0x155 = 341: (1 + 341/1024) * 2^-2
  EXPECT_EQ(fp16_bits_to_float(0x7BFF), 65504.0f);
  EXPECT_EQ(fp16_bits_to_float(0x7C00), kInf);
  EXPECT_EQ(fp16_bits_to_float(0xFC00), -kInf);
  EXPECT_TRUE(std::isnan(fp16_bits_to_float(0x7E00)));
  EXPECT_TRUE(std::isnan(fp16_bits_to_float(0x7C01)));
  EXPECT_EQ(fp16_bits_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(fp16_bits_to_float(0x0002), std::ldexp(1.0f, -23));
  EXPECT_EQ(fp16_bits_to_float(0x0155), std::ldexp(341.0f, -24));   // a subnormal with several bits
  EXPECT_EQ(fp16_bits_to_float(0x03FF), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(fp16_bits_to_float(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  EXPECT_EQ(fp16_bits_to_float(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::signbit(fp16_bits_to_float(0x8000)));
}

TEST(Fp16, EncodeAndRoundToNearestEven) {
  EXPECT_EQ(float_to_fp16_bits(1.0f), 0x3C00);
  EXPECT_EQ(float_to_fp16_bits(-0.0f), 0x8000);
  EXPECT_EQ(float_to_fp16_bits(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_fp16_bits(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // midpoint -> even (1)
  EXPECT_EQ(float_to_fp16_bits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // midpoint -> even (up)
  EXPECT_EQ(float_to_fp16_bits(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3C01);
  EXPECT_EQ(float_to_fp16_bits(2.0f - std::ldexp(1.0f, -11)), 0x4000);  // carry into the exponent
  EXPECT_EQ(float_to_fp16_bits(-3.0f), 0xC200);
}

TEST(Fp16, OverflowToInfinity) {
  // 65520 is the midpoint of 65504 (odd mantissa 0x3FF) and 65536 (= infinity's place): goes up to inf.
  EXPECT_EQ(float_to_fp16_bits(65520.0f), 0x7C00);
  EXPECT_EQ(float_to_fp16_bits(65519.0f), 0x7BFF);
  EXPECT_EQ(float_to_fp16_bits(-65520.0f), 0xFC00);
  EXPECT_EQ(float_to_fp16_bits(1e6f), 0x7C00);
  EXPECT_EQ(float_to_fp16_bits(kInf), 0x7C00);
  EXPECT_EQ(float_to_fp16_bits(-kInf), 0xFC00);
  EXPECT_EQ(float_to_fp16_bits(std::numeric_limits<float>::max()), 0x7C00);
}

TEST(Fp16, SubnormalsAndUnderflow) {
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(1023.0f, -24)), 0x03FF);
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(1.0f, -14)), 0x0400);
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(1.0f, -25)), 0x0000);            // midpoint 0 / 2^-24: even
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(1.0f, -25) * 1.0001f), 0x0001);  // just above it
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(3.0f, -25)), 0x0002);            // midpoint 1 / 2: even
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(9.0f, -25)), 0x0004);            // 4.5 -> 4
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(11.0f, -25)), 0x0006);           // 5.5 -> 6
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(2047.0f, -25)), 0x0400);         // 1023.5 -> 1024 (normal)
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(1.0f, -26)), 0x0000);
  EXPECT_EQ(float_to_fp16_bits(-std::ldexp(1.0f, -26)), 0x8000);
  EXPECT_EQ(float_to_fp16_bits(-std::ldexp(3.0f, -24)), 0x8003);
  EXPECT_EQ(float_to_fp16_bits(std::numeric_limits<float>::denorm_min()), 0x0000);
}

TEST(Fp16, NaN) {
  for (uint32_t nan_bits : {0x7FC00000u, 0x7F800001u, 0xFFC00000u, 0x7FFFFFFFu}) {
    const uint16_t h = float_to_fp16_bits(from_bits(nan_bits));
    EXPECT_EQ(h & 0x7C00, 0x7C00) << std::hex << nan_bits;
    EXPECT_NE(h & 0x03FF, 0) << std::hex << nan_bits;
  }
}

TEST(Fp16, EveryPatternRoundTrips) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = fp16_bits_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(fp16_bits_to_float(float_to_fp16_bits(f))));
      continue;
    }
    ASSERT_EQ(float_to_fp16_bits(f), h) << std::hex << h;
  }
}

// Random floats in fp16's range (normal, subnormal, beyond): nearest of the two fp16 neighbours, found
// by a search over the ordered positive patterns (not by the encoder).
TEST(Fp16, RandomValuesRoundToNearest) {
  const uint64_t seed = testing::test_seed() + 1;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 gen(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<double> expo(-27.0, 16.5);
  for (int t = 0; t < 100000; ++t) {
    const float x = static_cast<float>(std::exp2(expo(gen)));
    // Positive fp16 patterns 0x0000..0x7C00 are ordered like their values (0x7C00 = inf stands for 65536
    // in the nearest-neighbour comparison, the value that rounds there).
    uint32_t lo = 0, hi = 0x7C00;
    auto value = [](uint32_t h) {
      return h == 0x7C00 ? 65536.0 : double(fp16_bits_to_float(static_cast<uint16_t>(h)));
    };
    if (x >= 65536.0f) {
      ASSERT_EQ(float_to_fp16_bits(x), 0x7C00);
      continue;
    }
    while (hi - lo > 1) {  // value(lo) <= x < value(hi)
      const uint32_t mid = (lo + hi) / 2;
      (value(mid) <= x ? lo : hi) = mid;
    }
    const double dlo = x - value(lo), dhi = value(hi) - x;
    const uint32_t want = dlo < dhi ? lo : dhi < dlo ? hi : ((lo & 1) ? hi : lo);
    ASSERT_EQ(float_to_fp16_bits(x), want) << x;
  }
}

// --- typed loads and stores -----------------------------------------------------------------------------
TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::kFloat16), 2u);
  EXPECT_EQ(dtype_size(DType::kBFloat16), 2u);
  EXPECT_EQ(dtype_size(DType::kFloat32), 4u);
  EXPECT_EQ(dtype_size(DType::kFloat64), 8u);
  EXPECT_STREQ(dtype_name(DType::kBFloat16), "bf16");
  EXPECT_STREQ(dtype_name(DType::kFloat16), "fp16");
}

TEST(DType, LoadStoreRoundTrip) {
  unsigned char buf[64];
  const double third = 1.0 / 3.0;
  // fp64 keeps the double, fp32 rounds once to float, 16-bit types round (once, via float) to nearest even.
  store_from_double(buf, 3, DType::kFloat64, third);
  EXPECT_EQ(load_as_double(buf, 3, DType::kFloat64), third);
  store_from_double(buf, 5, DType::kFloat32, third);
  EXPECT_EQ(load_as_double(buf, 5, DType::kFloat32), static_cast<double>(static_cast<float>(third)));
  // 1/3 = 1.0101...b * 2^-2: bf16 keeps 7 mantissa bits 0101010|1... -> rounds up to 0101011.
  store_from_double(buf, 7, DType::kBFloat16, third);
  EXPECT_EQ(load_as_double(buf, 7, DType::kBFloat16), std::ldexp(1.0 + 43.0 / 128.0, -2));
  // fp16 keeps 10 bits 0101010101|0101... -> rounds down.
  store_from_double(buf, 9, DType::kFloat16, third);
  EXPECT_EQ(load_as_double(buf, 9, DType::kFloat16), std::ldexp(1.0 + 341.0 / 1024.0, -2));
  // Neighbouring elements are untouched by a 16-bit store.
  store_from_double(buf, 10, DType::kFloat16, 2.0);
  EXPECT_EQ(load_as_double(buf, 9, DType::kFloat16), std::ldexp(1.0 + 341.0 / 1024.0, -2));
  EXPECT_EQ(load_as_double(buf, 10, DType::kFloat16), 2.0);
}

}  // namespace
}  // namespace distattn
