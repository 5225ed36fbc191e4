// PositionMap (core/position_map.h): positions, ranges and affine pieces across chunk boundaries, and
// validate() rejecting each bad case with the argument name it was given.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/core/position_map.h"
#include "test_util.h"

namespace distattn {
namespace {

// Expected positions written out by hand / by the sharding definitions (not by walking the struct).
TEST(PositionMap, ContiguousAndStrided) {
  const PositionMap c = PositionMap::contiguous(100, 5);
  EXPECT_EQ(c.length(), 5);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(c.position(i), 100 + i);
  const PositionMap s = PositionMap::strided(3, 4, 6);  // dilated view: offset 3, rate 4
  const int64_t want[6] = {3, 7, 11, 15, 19, 23};
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(s.position(i), want[i]);
}

TEST(PositionMap, ZigzagShard) {
  // 4 ranks, 8 chunks of 10 tokens: rank 1 holds chunks 1 and 6, i.e. positions 10..19 then 60..69.
  PositionMap m = PositionMap::contiguous(10, 10);
  m.add_chunk(60, 1, 10);
  ASSERT_EQ(m.num_chunks, 2);
  EXPECT_EQ(m.length(), 20);
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(m.position(i), 10 + i);
  for (int64_t i = 10; i < 20; ++i) EXPECT_EQ(m.position(i), 50 + i);
  EXPECT_NO_THROW(m.validate("kv_pos", 20));
}

TEST(PositionMap, RangeAcrossChunks) {
  // Chunks: {50, 1, 4} -> 50..53, {10, 3, 3} -> 10, 13, 16, {70, 2, 2} -> 70, 72.
  PositionMap m;
  m.add_chunk(50, 1, 4).add_chunk(10, 3, 3).add_chunk(70, 2, 2);
  const std::vector<int64_t> pos = {50, 51, 52, 53, 10, 13, 16, 70, 72};
  ASSERT_EQ(m.length(), 9);
  for (int64_t i = 0; i < 9; ++i) EXPECT_EQ(m.position(i), pos[i]) << "row " << i;
  // Every non-empty range against the min/max of the listed positions.
  for (int64_t b = 0; b < 9; ++b)
    for (int64_t e = b + 1; e <= 9; ++e) {
      int64_t lo = 0, hi = 0;
      m.range(b, e, &lo, &hi);
      EXPECT_EQ(lo, *std::min_element(pos.begin() + b, pos.begin() + e)) << "rows " << b << ".." << e;
      EXPECT_EQ(hi, *std::max_element(pos.begin() + b, pos.begin() + e)) << "rows " << b << ".." << e;
    }
  // A range reaching past the end is clipped.
  int64_t lo = 0, hi = 0;
  m.range(6, 100, &lo, &hi);
  EXPECT_EQ(lo, 16);
  EXPECT_EQ(hi, 72);
}

TEST(PositionMap, AffineInsideOneChunkOnly) {
  PositionMap m;
  m.add_chunk(50, 1, 4).add_chunk(10, 3, 3).add_chunk(70, 2, 2);
  int64_t base = -1, step = -1;
  EXPECT_TRUE(m.affine(0, 4, &base, &step));
  EXPECT_EQ(base, 50);
  EXPECT_EQ(step, 1);
  EXPECT_TRUE(m.affine(5, 7, &base, &step));  // rows 5, 6: positions 13, 16
  EXPECT_EQ(base, 13);
  EXPECT_EQ(step, 3);
  EXPECT_TRUE(m.affine(8, 9, &base, &step));
  EXPECT_EQ(base, 72);
  EXPECT_EQ(step, 2);
  EXPECT_FALSE(m.affine(3, 5, &base, &step));  // crosses the first boundary
  EXPECT_FALSE(m.affine(0, 9, &base, &step));
  EXPECT_FALSE(m.affine(6, 8, &base, &step));
  EXPECT_FALSE(m.affine(9, 10, &base, &step));  // starts past the end
  // Whenever affine() succeeds it reproduces position().
  for (int64_t b = 0; b < 9; ++b)
    for (int64_t e = b + 1; e <= 9; ++e) {
      if (!m.affine(b, e, &base, &step)) continue;
      for (int64_t t = 0; t < e - b; ++t) EXPECT_EQ(base + t * step, m.position(b + t));
    }
}

// A random map of 1..kMaxChunks chunks and its positions expanded by hand (start + j * stride per chunk).
PositionMap random_map(std::mt19937_64& gen, std::vector<int64_t>* pos) {
  PositionMap m;
  pos->clear();
  const int chunks = 1 + static_cast<int>(gen() % PositionMap::kMaxChunks);
  for (int c = 0; c < chunks; ++c) {
    const int64_t start = static_cast<int64_t>(gen() % 1000), stride = 1 + static_cast<int64_t>(gen() % 5),
                  len = 1 + static_cast<int64_t>(gen() % 7);
    m.add_chunk(start, stride, len);
    for (int64_t j = 0; j < len; ++j) pos->push_back(start + j * stride);
  }
  return m;
}

// A random non-empty row range [b, e) of n rows.
std::pair<int64_t, int64_t> random_range(std::mt19937_64& gen, int64_t n) {
  int64_t b = static_cast<int64_t>(gen() % n), e = static_cast<int64_t>(gen() % n);
  if (b > e) std::swap(b, e);
  return {b, e + 1};
}

TEST(PositionMap, RandomMapsAgreeWithExpansion) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 gen(seed);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<int64_t> pos;
    const PositionMap m = random_map(gen, &pos);
    const int64_t n = static_cast<int64_t>(pos.size());
    ASSERT_EQ(m.length(), n);
    EXPECT_NO_THROW(m.validate("q_pos", n));
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(m.position(i), pos[i]);
    for (int r = 0; r < 20; ++r) {
      const auto [b, e] = random_range(gen, n);
      int64_t lo = 0, hi = 0;
      m.range(b, e, &lo, &hi);
      EXPECT_EQ(lo, *std::min_element(pos.begin() + b, pos.begin() + e));
      EXPECT_EQ(hi, *std::max_element(pos.begin() + b, pos.begin() + e));
    }
  }
}

// slice(b, e): every row of the slice has the position of row b + i of the original (expanded by hand above).
TEST(PositionMap, SliceAgreesWithExpansion) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 gen(seed);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<int64_t> pos;
    const PositionMap m = random_map(gen, &pos);
    const int64_t n = static_cast<int64_t>(pos.size());
    const auto [b, e] = random_range(gen, n);
    const PositionMap s = m.slice(b, e);
    ASSERT_EQ(s.length(), e - b);
    EXPECT_NO_THROW(s.validate("kv_pos", e - b));
    for (int64_t i = 0; i < e - b; ++i) ASSERT_EQ(s.position(i), pos[static_cast<size_t>(b + i)]) << "row " << i;
  }
  // The zigzag shard of ZigzagShard cut at its chunk boundary and inside a chunk.
  PositionMap z = PositionMap::contiguous(10, 10);
  z.add_chunk(60, 1, 10);
  EXPECT_EQ(z.slice(10, 20).num_chunks, 1);
  EXPECT_EQ(z.slice(10, 20).position(0), 60);
  EXPECT_EQ(z.slice(5, 15).num_chunks, 2);
  EXPECT_EQ(z.slice(5, 15).position(0), 15);
  EXPECT_EQ(z.slice(5, 15).position(4), 19);
  EXPECT_EQ(z.slice(5, 15).position(5), 60);
  for (auto be : {std::pair<int64_t, int64_t>{-1, 3}, {4, 4}, {5, 3}, {0, 21}}) {
    try {
      (void)z.slice(be.first, be.second);
      ADD_FAILURE() << "no error for [" << be.first << ", " << be.second << ")";
    } catch (const Error& e) {
      EXPECT_EQ(e.argument(), "begin/end");
    }
  }
}

void expect_invalid(const PositionMap& m, int64_t expected_rows, const char* what) {
  SCOPED_TRACE(what);
  try {
    m.validate("kv_pos", expected_rows);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), "kv_pos") << e.what();
  }
}

TEST(PositionMap, ValidateRejects) {
  expect_invalid(PositionMap(), -1, "no chunks");
  PositionMap bad_count;
  bad_count.num_chunks = PositionMap::kMaxChunks + 1;
  for (auto& c : bad_count.chunks) c = PositionChunk{0, 1, 1};
  expect_invalid(bad_count, -1, "too many chunks");
  expect_invalid(PositionMap::contiguous(0, 0), -1, "zero length");
  expect_invalid(PositionMap::strided(0, 0, 4), -1, "zero stride");
  expect_invalid(PositionMap::strided(0, -2, 4), -1, "negative stride");
  expect_invalid(PositionMap::contiguous(-1, 4), -1, "negative start");
  expect_invalid(PositionMap::contiguous(0, 5), 6, "length mismatch");
  expect_invalid(PositionMap::contiguous(PositionMap::kMaxPosition - 2, 4), -1, "past kMaxPosition");
  expect_invalid(PositionMap::strided(0, int64_t{1} << 40, 1 << 30), -1, "past kMaxPosition (overflowing product)");
  PositionMap second_bad = PositionMap::contiguous(0, 4);
  second_bad.add_chunk(10, 1, 0);
  expect_invalid(second_bad, -1, "second chunk empty");
  // The boundary itself is fine.
  EXPECT_NO_THROW(PositionMap::contiguous(PositionMap::kMaxPosition - 3, 4).validate("kv_pos"));
}

TEST(PositionMap, AddChunkPastCapacity) {
  PositionMap m;
  for (int c = 0; c < PositionMap::kMaxChunks; ++c) m.add_chunk(c * 10, 1, 2);
  try {
    m.add_chunk(100, 1, 2);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), "position_map");
  }
  EXPECT_EQ(m.num_chunks, PositionMap::kMaxChunks);
}

}  // namespace
}  // namespace distattn
