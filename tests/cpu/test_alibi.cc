// ALiBi slopes (Press et al. 2022): the published sequences for power-of-two and other head counts,
// tensor-parallel slicing, and argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/positional/alibi.h"
#include "test_util.h"

namespace distattn {
namespace {

TEST(Alibi, EightHeadsArePowersOfOneHalf) {
  const std::vector<float> s = alibi_slopes(8);
  const float expect[8] = {0.5f, 0.25f, 0.125f, 0.0625f, 0.03125f, 0.015625f, 0.0078125f, 0.00390625f};
  ASSERT_EQ(s.size(), 8u);
  for (int h = 0; h < 8; ++h) EXPECT_EQ(s[h], expect[h]) << h;  // exact: powers of two
}

TEST(Alibi, SixteenHeadsAreHalfSteps) {
  // 2^(-8(h+1)/16) = 2^(-(h+1)/2): 0.7071, 0.5, 0.3536, 0.25, ...
  const std::vector<float> s = alibi_slopes(16);
  ASSERT_EQ(s.size(), 16u);
  for (int h = 0; h < 16; ++h) EXPECT_FLOAT_EQ(s[h], static_cast<float>(std::pow(2.0, -(h + 1) / 2.0))) << h;
  EXPECT_EQ(s[1], 0.5f);
  EXPECT_EQ(s[15], 1.0f / 256);
}

TEST(Alibi, TwelveHeadsFollowTheNonPowerOfTwoRule) {
  // 12 heads: m = 8. The 8-head slopes 2^-1 .. 2^-8, then the 16-head slopes 2^(-(j+1)/2) at
  // j = 0, 2, 4, 6: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
  const float expect[12] = {0.5f,       0.25f,       0.125f,      0.0625f,     0.03125f,    0.015625f,
                            0.0078125f, 0.00390625f, 0.70710678f, 0.35355339f, 0.17677670f, 0.08838835f};
  const std::vector<float> s = alibi_slopes(12);
  ASSERT_EQ(s.size(), 12u);
  for (int h = 0; h < 12; ++h) EXPECT_FLOAT_EQ(s[h], expect[h]) << h;
}

TEST(Alibi, OddCountsAndOneHead) {
  EXPECT_EQ(alibi_slopes(1), std::vector<float>{1.0f / 256});  // m = 1: 2^-8
  // 3 heads: m = 2 -> 2^-4, 2^-8, then the 4-head rule at j = 0: 2^-2.
  const std::vector<float> s3 = alibi_slopes(3);
  ASSERT_EQ(s3.size(), 3u);
  EXPECT_EQ(s3[0], 0.0625f);
  EXPECT_EQ(s3[1], 1.0f / 256);
  EXPECT_EQ(s3[2], 0.25f);
  // 40 heads: m = 32 (2^(-(h+1)/4)), then the 64-head rule 2^(-(j+1)/8) at j = 0, 2, ..., 14.
  const std::vector<float> s40 = alibi_slopes(40);
  ASSERT_EQ(s40.size(), 40u);
  for (int h = 0; h < 32; ++h) EXPECT_FLOAT_EQ(s40[h], static_cast<float>(std::pow(2.0, -(h + 1) / 4.0)));
  for (int j = 0; j < 8; ++j) EXPECT_FLOAT_EQ(s40[32 + j], static_cast<float>(std::pow(2.0, -(2 * j + 1) / 8.0)));
}

TEST(Alibi, SlicingEqualsSubRange) {
  for (int64_t total : {8, 12, 40, 96}) {
    const std::vector<float> all = alibi_slopes(total);
    for (int64_t tp : {2, 4}) {
      if (total % tp) continue;
      const int64_t local = total / tp;
      for (int64_t r = 0; r < tp; ++r) {
        const std::vector<float> part = alibi_slopes(total, r * local, local);
        ASSERT_EQ(static_cast<int64_t>(part.size()), local);
        for (int64_t j = 0; j < local; ++j) EXPECT_EQ(part[j], all[r * local + j]) << total << " " << r << " " << j;
      }
    }
    const std::vector<float> tail = alibi_slopes(total, 3);  // local_heads < 0: heads 3 .. total-1
    ASSERT_EQ(static_cast<int64_t>(tail.size()), total - 3);
    for (int64_t j = 0; j < total - 3; ++j) EXPECT_EQ(tail[j], all[3 + j]);
  }
}

TEST(Alibi, BadArgumentsNameTheField) {
  EXPECT_ERROR_ARG(alibi_slopes(0), "total_heads");
  EXPECT_ERROR_ARG(alibi_slopes(-4), "total_heads");
  EXPECT_ERROR_ARG(alibi_slopes(8, -1), "head_offset");
  EXPECT_ERROR_ARG(alibi_slopes(8, 8), "head_offset");
  EXPECT_ERROR_ARG(alibi_slopes(8, 4, 5), "local_heads");
  EXPECT_ERROR_ARG(alibi_slopes(8, 0, 0), "local_heads");
  EXPECT_NO_THROW(alibi_slopes(8, 4, 4));
}

}  // namespace
}  // namespace distattn
