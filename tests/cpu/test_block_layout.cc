// BlockLayout builders against brute force: every builder's layout, read with the engines' semantics
//   visible(i, j) = listed(i / 128, j / 128) AND (full OR band.visible(pos_q(i), pos_k(j)))
// must give exactly the element visibility of the builder's definition, evaluated pair by pair from
// positions. Odd sizes (last blocks short), zigzag / strided / offset maps (blocks straddling chunks).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/sparse/block_layout.h"
#include "test_util.h"

namespace distattn {
namespace {

constexpr int64_t B = kLayoutBlock;

int64_t ceil_blocks(int64_t s) { return (s + B - 1) / B; }

// One geometry: sizes and the two position maps.
struct Geometry {
  std::string name;
  int64_t sq, skv;
  PositionMap q_pos, kv_pos;
};

// Maps chosen so that chunk seams fall inside blocks (150 and 225 are not multiples of 128).
std::vector<Geometry> geometries(int64_t sq, int64_t skv) {
  std::vector<Geometry> g;
  g.push_back({"contiguous", sq, skv, PositionMap::contiguous(0, sq), PositionMap::contiguous(0, skv)});
  // q rows are the last sq positions of the kv sequence (bottom-right aligned causal).
  g.push_back(
      {"offset", sq, skv, PositionMap::contiguous(skv - sq > 0 ? skv - sq : 0, sq), PositionMap::contiguous(0, skv)});
  if (sq >= 2 && skv >= 2) {
    PositionMap q, kv;
    q.add_chunk(sq / 2 + 7, 1, sq / 2).add_chunk(4 * skv - sq / 2 - 3, 1, sq - sq / 2);  // zigzag-like
    kv.add_chunk(0, 1, skv / 2).add_chunk(4 * skv - skv / 2, 1, skv - skv / 2);
    g.push_back({"zigzag", sq, skv, q, kv});
  }
  g.push_back({"strided", sq, skv, PositionMap::strided(5, 3, sq), PositionMap::strided(0, 2, skv)});
  if (skv >= 3) {
    // Striped shard (stride = ranks) for q against a contiguous kv range, kv chunks out of order.
    PositionMap kv;
    kv.add_chunk(skv, 1, skv / 3).add_chunk(0, 1, skv - skv / 3);
    g.push_back({"striped_unordered", sq, skv, PositionMap::strided(1, 4, sq), kv});
  }
  return g;
}

// Block states of a layout, dense (small layouts only): 0 absent, 1 partial, 2 full.
std::vector<uint8_t> dense_states(const BlockLayout& l) {
  std::vector<uint8_t> s(l.num_q_blocks() * l.num_kv_blocks(), 0);
  for (int64_t r = 0; r < l.num_q_blocks(); ++r) {
    for (int32_t i = l.row_offset()[r]; i < l.row_offset()[r + 1]; ++i) {
      s[r * l.num_kv_blocks() + l.col_index()[i]] = l.row_partial()[i] ? 1 : 2;
    }
  }
  return s;
}

// CSR invariants: sizes, ascending rows and columns, the transpose holds the same blocks and flags.
void check_csr(const BlockLayout& l) {
  const BlockListView v = l.host_view();
  ASSERT_EQ(v.device, Device::kHost);
  ASSERT_EQ(v.num_q_blocks, l.num_q_blocks());
  ASSERT_EQ(v.num_kv_blocks, l.num_kv_blocks());
  ASSERT_EQ(v.nnz, l.nnz());
  ASSERT_EQ(v.row_offset[0], 0);
  ASSERT_EQ(v.col_offset[0], 0);
  ASSERT_EQ(v.row_offset[v.num_q_blocks], v.nnz);
  ASSERT_EQ(v.col_offset[v.num_kv_blocks], v.nnz);
  std::vector<std::pair<int64_t, int64_t>> by_row, by_col;  // (q block, kv block) * 2 + partial
  int64_t partial = 0;
  for (int64_t r = 0; r < v.num_q_blocks; ++r) {
    ASSERT_LE(v.row_offset[r], v.row_offset[r + 1]);
    for (int32_t i = v.row_offset[r]; i < v.row_offset[r + 1]; ++i) {
      ASSERT_GE(v.col_index[i], 0);
      ASSERT_LT(v.col_index[i], v.num_kv_blocks);
      if (i > v.row_offset[r]) {
        ASSERT_LT(v.col_index[i - 1], v.col_index[i]) << "row " << r;
      }
      ASSERT_LE(v.row_partial[i], 1);
      partial += v.row_partial[i];
      by_row.emplace_back(r, int64_t{v.col_index[i]} * 2 + v.row_partial[i]);
    }
  }
  for (int64_t c = 0; c < v.num_kv_blocks; ++c) {
    ASSERT_LE(v.col_offset[c], v.col_offset[c + 1]);
    for (int32_t i = v.col_offset[c]; i < v.col_offset[c + 1]; ++i) {
      ASSERT_GE(v.row_index[i], 0);
      ASSERT_LT(v.row_index[i], v.num_q_blocks);
      if (i > v.col_offset[c]) {
        ASSERT_LT(v.row_index[i - 1], v.row_index[i]) << "column " << c;
      }
      by_col.emplace_back(v.row_index[i], c * 2 + v.col_partial[i]);
    }
  }
  std::sort(by_col.begin(), by_col.end());
  ASSERT_EQ(by_row, by_col) << "transpose differs from rows";
  ASSERT_EQ(partial, l.num_partial());
  ASSERT_EQ(l.num_full() + l.num_partial(), l.nnz());
  ASSERT_DOUBLE_EQ(l.density(), double(l.nnz()) / double(l.num_q_blocks() * l.num_kv_blocks()));
}

using Definition = std::function<bool(int64_t q_row, int64_t kv_row)>;

// The layout's element visibility (engine semantics, with the layout's band) equals `definition` for
// every pair; full blocks are fully visible by the definition; listed blocks have a visible pair when
// `no_empty_listed`. Also checks the point queries against the CSR.
void check_against(const BlockLayout& l, const Geometry& g, const Definition& definition, bool no_empty_listed) {
  ASSERT_NO_FATAL_FAILURE(check_csr(l));
  ASSERT_EQ(l.num_q_blocks(), ceil_blocks(g.sq));
  ASSERT_EQ(l.num_kv_blocks(), ceil_blocks(g.skv));
  const DiagonalBand band = DiagonalBand::from_mask(l.band());
  const std::vector<uint8_t> states = dense_states(l);
  std::vector<int64_t> visible_in_block(states.size(), 0), pairs_in_block(states.size(), 0);
  std::vector<int64_t> kv_positions(g.skv);
  for (int64_t j = 0; j < g.skv; ++j) kv_positions[j] = g.kv_pos.position(j);
  int64_t mismatches = 0;
  for (int64_t i = 0; i < g.sq; ++i) {
    const int64_t pq = g.q_pos.position(i);
    for (int64_t j = 0; j < g.skv; ++j) {
      const int64_t blk = (i / B) * l.num_kv_blocks() + j / B;
      const uint8_t s = states[blk];
      const bool got = s == 2 || (s == 1 && band.visible(pq, kv_positions[j]));
      const bool want = definition(i, j);
      if (got != want && ++mismatches <= 5) {
        ADD_FAILURE() << g.name << ": pair (" << i << ", " << j << ") block (" << i / B << ", " << j / B << ") state "
                      << int(s) << ": layout says " << got << ", definition " << want;
      }
      visible_in_block[blk] += want;
      pairs_in_block[blk] += 1;
    }
  }
  ASSERT_EQ(mismatches, 0) << g.name << ": " << l.describe();
  for (int64_t qb = 0; qb < l.num_q_blocks(); ++qb) {
    for (int64_t kb = 0; kb < l.num_kv_blocks(); ++kb) {
      const int64_t blk = qb * l.num_kv_blocks() + kb;
      if (states[blk] == 2) {
        EXPECT_EQ(visible_in_block[blk], pairs_in_block[blk])
            << g.name << ": full block (" << qb << ", " << kb << ") is not fully visible";
      }
      // Position ranges are exact (a listed tile has a visible pair) when both blocks are runs of
      // consecutive positions; a block straddling a chunk seam, or strided positions, over-approximate
      // (check_classification covers those: listed exactly when classify_tile is not kEmpty).
      int64_t base, step_q = 0, step_k = 0;
      const bool exact = g.q_pos.affine(qb * B, std::min((qb + 1) * B, g.sq), &base, &step_q) && step_q == 1 &&
                         g.kv_pos.affine(kb * B, std::min((kb + 1) * B, g.skv), &base, &step_k) && step_k == 1;
      if (no_empty_listed && exact && states[blk] != 0) {
        EXPECT_GT(visible_in_block[blk], 0) << g.name << ": listed block (" << qb << ", " << kb << ") is empty";
      }
      EXPECT_EQ(l.visible_block(qb, kb), states[blk] != 0);
      EXPECT_EQ(l.partial(qb, kb), states[blk] == 1);
      EXPECT_EQ(l.full(qb, kb), states[blk] == 2);
    }
  }
}

// The band builders list exactly the tiles classify_tile does not call empty, with its full/partial.
void check_classification(const BlockLayout& l, const Geometry& g, const Mask& m) {
  const DiagonalBand band = DiagonalBand::from_mask(m);
  for (int64_t qb = 0; qb < l.num_q_blocks(); ++qb) {
    int64_t qmin, qmax, kmin, kmax;
    g.q_pos.range(qb * B, std::min((qb + 1) * B, g.sq), &qmin, &qmax);
    for (int64_t kb = 0; kb < l.num_kv_blocks(); ++kb) {
      g.kv_pos.range(kb * B, std::min((kb + 1) * B, g.skv), &kmin, &kmax);
      const TileVisibility t = classify_tile(band, qmin, qmax, kmin, kmax);
      ASSERT_EQ(l.visible_block(qb, kb), t != TileVisibility::kEmpty) << g.name << " (" << qb << ", " << kb << ")";
      ASSERT_EQ(l.full(qb, kb), t == TileVisibility::kFull) << g.name << " (" << qb << ", " << kb << ")";
    }
  }
}

bool causal_pair(const Geometry& g, int64_t i, int64_t j) { return g.kv_pos.position(j) <= g.q_pos.position(i); }

// ---------------------------------------------------------------------------------------------------
// Band builders

TEST(BlockLayout, CausalMatchesBruteForce) {
  for (const auto& sizes : std::vector<std::pair<int64_t, int64_t>>{{300, 450}, {450, 300}, {1, 129}, {777, 777}}) {
    for (const Geometry& g : geometries(sizes.first, sizes.second)) {
      SCOPED_TRACE(g.name + " sq " + std::to_string(g.sq) + " skv " + std::to_string(g.skv));
      const BlockLayout l = BlockLayout::causal(g.sq, g.skv, g.q_pos, g.kv_pos);
      EXPECT_TRUE(l.band().causal);
      EXPECT_EQ(l.band().window, 0);
      check_against(
          l, g, [&](int64_t i, int64_t j) { return causal_pair(g, i, j); }, true);
      check_classification(l, g, Mask::make_causal());
    }
  }
}

TEST(BlockLayout, SlidingWindowMatchesBruteForce) {
  for (const Geometry& g : geometries(300, 450)) {
    for (int64_t window : {1, 37, 128, 200, 5000}) {
      for (bool causal : {true, false}) {
        SCOPED_TRACE(g.name + " window " + std::to_string(window) + (causal ? " causal" : ""));
        const BlockLayout l = BlockLayout::sliding_window(g.sq, g.skv, g.q_pos, g.kv_pos, window, causal);
        const Mask m = causal ? Mask::make_causal(window) : Mask::make_window(window);
        EXPECT_EQ(l.band().causal, causal);
        EXPECT_EQ(l.band().window, window);
        const DiagonalBand band = DiagonalBand::from_mask(m);
        check_against(
            l, g, [&](int64_t i, int64_t j) { return band.visible(g.q_pos.position(i), g.kv_pos.position(j)); }, true);
        check_classification(l, g, m);
      }
    }
  }
}

TEST(BlockLayout, FromMaskNoneIsDense) {
  const Geometry g = geometries(300, 450)[2];
  const BlockLayout l = BlockLayout::from_mask(g.sq, g.skv, g.q_pos, g.kv_pos, Mask::none());
  EXPECT_EQ(l.nnz(), 3 * 4);
  EXPECT_EQ(l.num_partial(), 0);
  EXPECT_DOUBLE_EQ(l.density(), 1.0);
  check_against(
      l, g, [](int64_t, int64_t) { return true; }, true);
}

// ---------------------------------------------------------------------------------------------------
// Block-level builders (definitions in block indices; the causal restriction on positions)

// Sizes with more blocks so the block patterns have room: 7 x 9 blocks, both last blocks short.
constexpr int64_t kSq = 801, kSkv = 1111;

int64_t mod(int64_t a, int64_t m) { return ((a % m) + m) % m; }

// Both shapes: more kv blocks than q blocks, and more q blocks than kv blocks (rows past the last
// kv block: the local band reaches back into the kv range only for the first few of them).
std::vector<Geometry> block_geometries() {
  std::vector<Geometry> g = geometries(kSq, kSkv);
  for (const Geometry& t : geometries(1111, 500)) g.push_back(t);  // 9 x 4 blocks
  return g;
}

TEST(BlockLayout, StridedMatchesDefinition) {
  for (const Geometry& g : block_geometries()) {
    for (const auto& sl : std::vector<std::pair<int64_t, int64_t>>{{1, 0}, {3, 0}, {3, 1}, {4, 20}}) {
      const int64_t stride = sl.first, local = sl.second;
      for (bool causal : {false, true}) {
        SCOPED_TRACE(g.name + " stride " + std::to_string(stride) + " local " + std::to_string(local) +
                     (causal ? " causal" : ""));
        const BlockLayout l = BlockLayout::strided(
            g.sq, g.skv, stride, local, causal ? CausalRestriction::on(g.q_pos, g.kv_pos) : CausalRestriction::none());
        EXPECT_EQ(l.band().causal, causal);
        if (!causal) {
          EXPECT_EQ(l.num_partial(), 0);
        }
        check_against(
            l, g,
            [&](int64_t i, int64_t j) {
              const int64_t qb = i / B, kb = j / B;
              const bool block = mod(qb - kb, stride) == 0 || std::abs(qb - kb) <= local;
              return block && (!causal || causal_pair(g, i, j));
            },
            causal);
      }
    }
  }
}

TEST(BlockLayout, StridedCausalContiguousIsLowerTriangle) {
  // Contiguous maps from 0, Sq == Skv: "kb <= qb, diagonal partial" exactly.
  const int64_t s = 1000;
  const BlockLayout l = BlockLayout::strided(
      s, s, 3, 0, CausalRestriction::on(PositionMap::contiguous(0, s), PositionMap::contiguous(0, s)));
  for (int64_t qb = 0; qb < l.num_q_blocks(); ++qb) {
    for (int64_t kb = 0; kb < l.num_kv_blocks(); ++kb) {
      EXPECT_EQ(l.visible_block(qb, kb), kb <= qb && (qb - kb) % 3 == 0);
      EXPECT_EQ(l.partial(qb, kb), kb == qb);
    }
  }
}

TEST(BlockLayout, GlobalTokensMatchesDefinition) {
  for (const Geometry& g : block_geometries()) {
    for (int64_t global : {int64_t{1}, std::min(ceil_blocks(g.sq), ceil_blocks(g.skv))}) {
      for (bool causal : {false, true}) {
        SCOPED_TRACE(g.name + " global " + std::to_string(global) + (causal ? " causal" : ""));
        const BlockLayout l = BlockLayout::global_tokens(
            g.sq, g.skv, global, causal ? CausalRestriction::on(g.q_pos, g.kv_pos) : CausalRestriction::none());
        check_against(
            l, g,
            [&](int64_t i, int64_t j) {
              return (i / B < global || j / B < global) && (!causal || causal_pair(g, i, j));
            },
            causal);
      }
    }
  }
}

TEST(BlockLayout, RandomDeterministicExactAndUniformish) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t sq = 5000, skv = 7000;  // 40 x 55 blocks
  const BlockLayout a = BlockLayout::random(sq, skv, 7, seed);
  const BlockLayout b = BlockLayout::random(sq, skv, 7, seed);
  const BlockLayout c = BlockLayout::random(sq, skv, 7, seed + 1);
  check_csr(a);
  EXPECT_EQ(a.row_offset(), b.row_offset());
  EXPECT_EQ(a.col_index(), b.col_index());
  EXPECT_NE(a.col_index(), c.col_index());
  EXPECT_EQ(a.num_partial(), 0);
  for (int64_t r = 0; r < a.num_q_blocks(); ++r) EXPECT_EQ(a.row_offset()[r + 1] - a.row_offset()[r], 7);
  // Every kv block is drawn 40 * 7 / 55 ~ 5.1 times on average; over 20 seeds a column total is
  // ~102 +- 10: far outside [40, 200] only if the draw were not uniform over columns.
  std::vector<int64_t> per_column(a.num_kv_blocks(), 0);
  for (uint64_t s = 0; s < 20; ++s) {
    const BlockLayout l = BlockLayout::random(sq, skv, 7, seed + 100 + s);
    for (int64_t kb = 0; kb < l.num_kv_blocks(); ++kb) per_column[kb] += l.col_offset()[kb + 1] - l.col_offset()[kb];
  }
  for (int64_t kb = 0; kb < a.num_kv_blocks(); ++kb) {
    EXPECT_GT(per_column[kb], 40) << "kv block " << kb;
    EXPECT_LT(per_column[kb], 200) << "kv block " << kb;
  }
  // blocks_per_row == num_kv_blocks: dense.
  const BlockLayout dense = BlockLayout::random(sq, skv, a.num_kv_blocks(), seed);
  EXPECT_EQ(dense.nnz(), a.num_q_blocks() * a.num_kv_blocks());
}

TEST(BlockLayout, RandomCausalDrawsOnlyVisibleBlocks) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (const Geometry& g : block_geometries()) {
    SCOPED_TRACE(g.name);
    const BlockLayout causal = BlockLayout::causal(g.sq, g.skv, g.q_pos, g.kv_pos);
    const BlockLayout l = BlockLayout::random(g.sq, g.skv, 3, seed, CausalRestriction::on(g.q_pos, g.kv_pos));
    for (int64_t r = 0; r < l.num_q_blocks(); ++r) {
      const int64_t available = causal.row_offset()[r + 1] - causal.row_offset()[r];
      EXPECT_EQ(l.row_offset()[r + 1] - l.row_offset()[r], std::min<int64_t>(3, available)) << "row " << r;
    }
    // Listed blocks are a subset of the causal layout with its flags: intersecting changes nothing.
    const BlockLayout again = BlockLayout::intersect(l, causal);
    EXPECT_EQ(again.col_index(), l.col_index());
    EXPECT_EQ(again.row_partial(), l.row_partial());
    const std::vector<uint8_t> states = dense_states(l);
    check_against(
        l, g,
        [&](int64_t i, int64_t j) { return states[(i / B) * l.num_kv_blocks() + j / B] != 0 && causal_pair(g, i, j); },
        true);
  }
}

TEST(BlockLayout, BigBirdIsWindowGlobalPlusRandom) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (const Geometry& g : block_geometries()) {
    for (bool causal : {false, true}) {
      SCOPED_TRACE(g.name + (causal ? " causal" : ""));
      const int64_t window = 1, global = 1, random = 2;
      const CausalRestriction cr = causal ? CausalRestriction::on(g.q_pos, g.kv_pos) : CausalRestriction::none();
      const BlockLayout l = BlockLayout::bigbird(g.sq, g.skv, window, global, random, seed, cr);
      const BlockLayout l2 = BlockLayout::bigbird(g.sq, g.skv, window, global, random, seed, cr);
      EXPECT_EQ(l.col_index(), l2.col_index());
      const BlockLayout base = BlockLayout::unite(BlockLayout::strided(g.sq, g.skv, 1 << 20, window, cr),
                                                  BlockLayout::global_tokens(g.sq, g.skv, global, cr));
      const BlockLayout all = causal ? BlockLayout::causal(g.sq, g.skv, g.q_pos, g.kv_pos)
                                     : BlockLayout::from_mask(g.sq, g.skv, g.q_pos, g.kv_pos, Mask::none());
      // window + global is contained, with the same flags; exactly min(random, available) extra per row.
      const BlockLayout inter = BlockLayout::intersect(l, base);
      EXPECT_EQ(inter.col_index(), base.col_index());
      EXPECT_EQ(inter.row_partial(), base.row_partial());
      for (int64_t r = 0; r < l.num_q_blocks(); ++r) {
        const int64_t n = l.row_offset()[r + 1] - l.row_offset()[r];
        const int64_t nb = base.row_offset()[r + 1] - base.row_offset()[r];
        const int64_t na = all.row_offset()[r + 1] - all.row_offset()[r];
        EXPECT_EQ(n - nb, std::min(random, na - nb)) << "row " << r;
      }
      const std::vector<uint8_t> states = dense_states(l);
      check_against(
          l, g,
          [&](int64_t i, int64_t j) {
            return states[(i / B) * l.num_kv_blocks() + j / B] != 0 && (!causal || causal_pair(g, i, j));
          },
          causal);
      // The window part matches its own definition on contiguous maps.
      if (g.name == "contiguous" && !causal) {
        for (int64_t qb = 0; qb < l.num_q_blocks(); ++qb)
          for (int64_t kb = std::max<int64_t>(0, qb - 1); kb <= std::min(qb + 1, l.num_kv_blocks() - 1); ++kb)
            EXPECT_TRUE(l.full(qb, kb));
      }
    }
  }
}

TEST(BlockLayout, FromBlockMaskAndList) {
  const int64_t nq = 5, nk = 7;
  std::vector<uint8_t> mask(nq * nk);
  std::vector<std::pair<int64_t, int64_t>> pairs;
  uint64_t x = testing::test_seed();
  for (int64_t i = 0; i < nq * nk; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    mask[i] = static_cast<uint8_t>((x >> 33) % 3);
    if (mask[i] != 0) pairs.emplace_back(i / nk, i % nk);
  }
  const BlockLayout l = BlockLayout::from_block_mask(nq, nk, mask, Mask::make_causal());
  check_csr(l);
  EXPECT_TRUE(l.band().causal);
  EXPECT_EQ(dense_states(l), [&] {
    std::vector<uint8_t> s(mask);
    for (auto& v : s) v = v == 0 ? 0 : (v == 1 ? 2 : 1);
    return s;
  }());
  // The list form: any order, duplicates, all full.
  std::vector<std::pair<int64_t, int64_t>> shuffled = pairs;
  std::reverse(shuffled.begin(), shuffled.end());
  shuffled.push_back(pairs.front());
  const BlockLayout from_list = BlockLayout::from_block_mask(nq, nk, shuffled);
  check_csr(from_list);
  EXPECT_EQ(from_list.col_index(), l.col_index());
  EXPECT_EQ(from_list.num_partial(), 0);
  EXPECT_EQ(from_list.nnz(), static_cast<int64_t>(pairs.size()));
}

// ---------------------------------------------------------------------------------------------------
// Set operations

TEST(BlockLayout, UniteIntersectAreElementwiseOrAnd) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (const Geometry& g : geometries(kSq, kSkv)) {
    SCOPED_TRACE(g.name);
    const CausalRestriction cr = CausalRestriction::on(g.q_pos, g.kv_pos);
    const BlockLayout causal = BlockLayout::causal(g.sq, g.skv, g.q_pos, g.kv_pos);
    const BlockLayout strided = BlockLayout::strided(g.sq, g.skv, 4, 0, cr);
    const BlockLayout rnd = BlockLayout::random(g.sq, g.skv, 3, seed);  // full blocks, no band
    const BlockLayout global = BlockLayout::global_tokens(g.sq, g.skv, 2);
    auto states = [](const BlockLayout& l) { return dense_states(l); };
    const std::vector<uint8_t> sc = states(causal), ss = states(strided), sr = states(rnd), sg = states(global);
    const int64_t nk = causal.num_kv_blocks();
    // Element visibility of one layout (its band is causal or none; all partial blocks here are causal).
    auto vis = [&](const std::vector<uint8_t>& s, int64_t i, int64_t j) {
      const uint8_t st = s[(i / B) * nk + j / B];
      return st == 2 || (st == 1 && causal_pair(g, i, j));
    };
    const BlockLayout u1 = BlockLayout::unite(strided, rnd);
    check_against(
        u1, g, [&](int64_t i, int64_t j) { return vis(ss, i, j) || vis(sr, i, j); }, false);
    EXPECT_TRUE(u1.band().causal);
    const BlockLayout u2 = BlockLayout::unite(global, causal);
    check_against(
        u2, g, [&](int64_t i, int64_t j) { return vis(sg, i, j) || vis(sc, i, j); }, true);
    const BlockLayout i1 = BlockLayout::intersect(rnd, causal);
    check_against(
        i1, g, [&](int64_t i, int64_t j) { return vis(sr, i, j) && vis(sc, i, j); }, true);
    const BlockLayout i2 = BlockLayout::intersect(strided, global);
    check_against(
        i2, g, [&](int64_t i, int64_t j) { return vis(ss, i, j) && vis(sg, i, j); }, false);
    // The causal restriction of a block-level builder is the intersection with causal().
    const BlockLayout restricted = BlockLayout::intersect(BlockLayout::strided(g.sq, g.skv, 4, 0), causal);
    EXPECT_EQ(restricted.col_index(), strided.col_index());
    EXPECT_EQ(restricted.row_partial(), strided.row_partial());
    EXPECT_EQ(restricted.row_index(), strided.row_index());
  }
}

TEST(BlockLayout, UniteOfDifferentBandsThrows) {
  const int64_t s = 1000;
  const PositionMap p = PositionMap::contiguous(0, s);
  const BlockLayout causal = BlockLayout::causal(s, s, p, p);
  const BlockLayout window = BlockLayout::sliding_window(s, s, p, p, 300, true);
  try {
    BlockLayout::unite(causal, window);
    FAIL() << "expected distattn::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), "b");
  }
  EXPECT_THROW(BlockLayout::intersect(causal, window), Error);
  const BlockLayout small = BlockLayout::causal(s - 200, s, PositionMap::contiguous(0, s - 200), p);
  EXPECT_THROW(BlockLayout::unite(causal, small), Error);
}

// ---------------------------------------------------------------------------------------------------
// Arguments, moves, scale

template <typename F>
void expect_argument_error(F f, const std::string& argument) {
  try {
    f();
    ADD_FAILURE() << "expected distattn::Error naming " << argument;
  } catch (const Error& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
  }
}

TEST(BlockLayout, BadArgumentsNameTheArgument) {
  const PositionMap p300 = PositionMap::contiguous(0, 300), p450 = PositionMap::contiguous(0, 450);
  expect_argument_error([&] { BlockLayout::causal(0, 450, p300, p450); }, "sq");
  expect_argument_error([&] { BlockLayout::causal(300, -1, p300, p450); }, "skv");
  expect_argument_error([&] { BlockLayout::causal(300, 450, p450, p450); }, "q_pos");
  expect_argument_error([&] { BlockLayout::causal(300, 450, p300, p300); }, "kv_pos");
  expect_argument_error([&] { BlockLayout::causal(300, 450, PositionMap{}, p450); }, "q_pos");
  expect_argument_error([&] { BlockLayout::sliding_window(300, 450, p300, p450, 0, true); }, "window");
  const BlockListView view;
  Mask with_blocks = Mask::make_causal();
  with_blocks.blocks = &view;
  expect_argument_error([&] { BlockLayout::from_mask(300, 450, p300, p450, with_blocks); }, "mask");
  Mask negative = Mask::make_window(5);
  negative.window = -3;
  expect_argument_error([&] { BlockLayout::from_mask(300, 450, p300, p450, negative); }, "mask");
  expect_argument_error([&] { BlockLayout::strided(300, 450, 0, 1); }, "stride_blocks");
  expect_argument_error([&] { BlockLayout::strided(300, 450, 2, -1); }, "local_blocks");
  expect_argument_error([&] { BlockLayout::strided(300, 450, 2, 1, CausalRestriction::on(p450, p450)); },
                        "causal.q_pos");
  expect_argument_error([&] { BlockLayout::strided(300, 450, 2, 1, CausalRestriction::on(p300, p300)); },
                        "causal.kv_pos");
  expect_argument_error([&] { BlockLayout::global_tokens(300, 450, 0); }, "num_global_blocks");
  expect_argument_error([&] { BlockLayout::global_tokens(300, 450, 4); }, "num_global_blocks");
  expect_argument_error([&] { BlockLayout::random(300, 450, 0, 1); }, "blocks_per_row");
  expect_argument_error([&] { BlockLayout::random(300, 450, 5, 1); }, "blocks_per_row");
  expect_argument_error([&] { BlockLayout::bigbird(300, 450, -1, 1, 1, 1); }, "window_blocks");
  expect_argument_error([&] { BlockLayout::bigbird(300, 450, 1, 4, 1, 1); }, "num_global_blocks");
  expect_argument_error([&] { BlockLayout::bigbird(300, 450, 1, 1, -2, 1); }, "random_blocks");
  expect_argument_error([&] { BlockLayout::from_block_mask(2, 3, std::vector<uint8_t>(5, 1)); }, "mask");
  expect_argument_error([&] { BlockLayout::from_block_mask(2, 3, std::vector<uint8_t>(6, 3)); }, "mask");
  expect_argument_error([&] { BlockLayout::from_block_mask(0, 3, std::vector<uint8_t>{}); }, "num_q_blocks");
  expect_argument_error([&] { BlockLayout::from_block_mask(2, 3, std::vector<uint8_t>(6, 1), with_blocks); }, "band");
  expect_argument_error([&] { BlockLayout::from_block_list(2, 3, {{0, 0}, {2, 1}}); }, "blocks");
  expect_argument_error([&] { BlockLayout::from_block_list(2, 3, {{0, 3}}); }, "blocks");
  expect_argument_error([&] { BlockLayout::from_block_list(2, 0, {}); }, "num_kv_blocks");
  expect_argument_error([&] { BlockLayout::from_rows(2, 3, {0, 1}, {0}, {0}, Mask::none()); }, "row_offset");
  expect_argument_error([&] { BlockLayout::from_rows(2, 3, {0, 2, 2}, {1, 1}, {0, 0}, Mask::none()); }, "col_index");
  expect_argument_error([&] { BlockLayout::from_rows(2, 3, {0, 1, 1}, {3}, {0}, Mask::none()); }, "col_index");
  expect_argument_error([&] { BlockLayout::from_rows(2, 3, {0, 1, 1}, {0}, {}, Mask::none()); }, "row_partial");
  const BlockLayout l = BlockLayout::causal(300, 450, p300, p450);
  expect_argument_error([&] { l.visible_block(3, 0); }, "qb");
  expect_argument_error([&] { l.partial(0, -1); }, "kb");
}

TEST(BlockLayout, MoveKeepsArraysAndViews) {
  const PositionMap p = PositionMap::contiguous(0, 1000);
  BlockLayout a = BlockLayout::causal(1000, 1000, p, p);
  const std::vector<int32_t> cols = a.col_index();
  const int32_t* data = a.col_index().data();
  BlockLayout b(std::move(a));
  EXPECT_EQ(b.col_index(), cols);
  EXPECT_EQ(b.host_view().col_index, data);  // moved, not copied
  EXPECT_EQ(a.nnz(), 0);
  EXPECT_EQ(a.num_q_blocks(), 0);
  BlockLayout c;
  EXPECT_EQ(c.nnz(), 0);
  EXPECT_NE(c.host_view().row_offset, nullptr);
  c = std::move(b);
  EXPECT_EQ(c.col_index(), cols);
  const Mask m = c.host_mask();
  EXPECT_TRUE(m.causal);
  ASSERT_NE(m.blocks, nullptr);
  EXPECT_EQ(m.blocks->col_index, data);
  EXPECT_EQ(m.blocks->nnz, c.nnz());
  EXPECT_FALSE(c.uploaded());
  EXPECT_NE(c.describe().find("causal"), std::string::npos);
}

// The host engine (the oracle of the GPU tests) reads a layout exactly as the brute force above does:
// a band layout passed with its own band (make_mask) computes what the band alone computes, bit for bit
// (the same keys are visited in the same order).
TEST(BlockLayout, HostEngineWithBandLayoutEqualsBandMask) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Geometry g = geometries(300, 450)[2];  // zigzag, seams inside blocks
  ASSERT_EQ(g.name, "zigzag");
  const int64_t H = 2, D = 16;
  testing::HostTensor q(DType::kFloat64, 1, g.sq, H, D), k(DType::kFloat64, 1, g.skv, H, D),
      v(DType::kFloat64, 1, g.skv, H, D);
  testing::fill_normal(q, seed);
  testing::fill_normal(k, seed + 1);
  testing::fill_normal(v, seed + 2);
  for (const Mask& band : {Mask::make_causal(), Mask::make_causal(100), Mask::make_window(60)}) {
    const BlockLayout layout = BlockLayout::from_mask(g.sq, g.skv, g.q_pos, g.kv_pos, band);
    ASSERT_GT(layout.num_partial(), 0);
    ASSERT_LT(layout.nnz(), layout.num_q_blocks() * layout.num_kv_blocks());  // something is skipped
    testing::HostTensor o_ref(DType::kFloat64, 1, g.sq, H, D), o(DType::kFloat64, 1, g.sq, H, D);
    testing::fill_nan(o_ref);
    testing::fill_nan(o);
    std::vector<float> lse_ref(H * g.sq, NAN), lse(H * g.sq, NAN);
    AttnParams p;
    p.q = q.view;
    p.k = k.view;
    p.v = v.view;
    p.q_pos = g.q_pos;
    p.kv_pos = g.kv_pos;
    p.o = o_ref.view;
    p.lse = lse_ref.data();
    p.mask = band;
    host_attention_forward(p);
    p.o = o.view;
    p.lse = lse.data();
    p.mask = layout.host_mask();
    host_attention_forward(p);
    const testing::ErrorStats e = testing::compare(o.view, o_ref.view);
    EXPECT_EQ(e.max_abs, 0.0) << e.str();
    EXPECT_EQ(e.non_finite, 0);
    for (size_t i = 0; i < lse.size(); ++i) ASSERT_EQ(lse[i], lse_ref[i]) << "lse " << i;
  }
}

TEST(BlockLayout, OneMillionTokensCausalIsFastAndExact) {
  const int64_t s = int64_t{1} << 20;
  const int64_t n = s / B;  // 8192 blocks
  const PositionMap p = PositionMap::contiguous(0, s);
  const auto t0 = std::chrono::steady_clock::now();
  const BlockLayout l = BlockLayout::causal(s, s, p, p);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("1M-token causal layout: %.3f s, nnz %lld, %.1f MB\n", seconds, (long long)l.nnz(), l.host_bytes() / 1e6);
  EXPECT_EQ(l.nnz(), n * (n + 1) / 2);  // lower triangle with the diagonal
  EXPECT_EQ(l.num_partial(), n);        // the diagonal blocks
  EXPECT_EQ(l.host_bytes(), 10 * l.nnz() + 4 * 2 * (n + 1));
  for (int64_t r : {int64_t{0}, int64_t{1}, n / 2, n - 1}) {
    ASSERT_EQ(l.row_offset()[r + 1] - l.row_offset()[r], r + 1);
    EXPECT_EQ(l.col_index()[l.row_offset()[r + 1] - 1], r);
    EXPECT_EQ(l.row_partial()[l.row_offset()[r + 1] - 1], 1);
    EXPECT_EQ(l.row_partial()[l.row_offset()[r]], r == 0 ? 1 : 0);
    EXPECT_EQ(l.col_offset()[r + 1] - l.col_offset()[r], n - r);
    EXPECT_EQ(l.row_index()[l.col_offset()[r]], r);
    EXPECT_EQ(l.col_partial()[l.col_offset()[r]], 1);
  }
}

TEST(BlockLayout, OneMillionTokensZigzagShardCausal) {
  // Rank 1 of 4 in zigzag order over 1M tokens: q chunks 1 and 6 of 8 (131072 each), against the full kv.
  const int64_t s = int64_t{1} << 20, c = s / 8;
  PositionMap q;
  q.add_chunk(1 * c, 1, c).add_chunk(6 * c, 1, c);
  const PositionMap kv = PositionMap::contiguous(0, s);
  const BlockLayout l = BlockLayout::causal(2 * c, s, q, kv);
  const int64_t cb = c / B;  // 1024 blocks per chunk
  // Chunk 1 rows see kv blocks [0, cb + j], chunk 6 rows [0, 6 cb + j]; one partial (diagonal) each.
  int64_t expected = 0;
  for (int64_t j = 0; j < cb; ++j) expected += (cb + j + 1) + (6 * cb + j + 1);
  EXPECT_EQ(l.nnz(), expected);
  EXPECT_EQ(l.num_partial(), 2 * cb);
}

}  // namespace
}  // namespace distattn
