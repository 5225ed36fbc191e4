// The Hopper forward kernel's ALiBi cutoff plan on the host (sparse/src/hopper/flash_fwd_hopper_plan.h: the same
// functions the kernel's producer runs): the distance bound against an fp64 evaluation of the inequality it must
// satisfy, and the plan of every q tile of random one-chunk problems (causal, windows, none; strided positions; odd
// lengths) against brute force: the diagonal tile first, every visited tile inside the band's range, every left-out
// tile at least `rows` rows from every q row, no tile left out that has a closer pair (within the q tile's 128 rows),
// and the skipping walk equal to the reference walk (rows = -1) with tiles removed, in the same order (what makes the
// results bit-identical).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../sparse/src/hopper/flash_fwd_hopper_plan.h"
#include "distattn/core/mask.h"
#include "test_util.h"

namespace distattn {
namespace {

using hopper::alibi_cutoff_rows;
using hopper::chunk_rows;
using hopper::kPlanTileRows;
using hopper::plan_segment_tile;
using hopper::write_cutoff_plan;

// The walk of a plan: kv tiles in visiting order.
std::vector<int> walk(const int* plan) {
  std::vector<int> out;
  for (int it = 0; it < plan[hopper::kPlanTotal]; ++it) out.push_back(plan_segment_tile(plan, it));
  return out;
}

// fp64: does a distance of `rows` rows clear 2 scale_log2 |q| |k| (1 + 2^-10) + 176 <= slope log2(e) stride rows
// (1 - 2^-10)? (the inequality alibi_cutoff_rows solves in fp32; its rounding must never make it cut short).
bool clears(double scale_log2, double stride, double q_norm_sq, double k_norm_sq, double slope, double rows) {
  const double need = 2.0 * scale_log2 * std::sqrt(q_norm_sq) * std::sqrt(k_norm_sq) * (1.0 + 1.0 / 1024) + 176.0;
  return slope * 1.4426950408889634 * stride * rows * (1.0 - 1.0 / 1024) >= need * (1.0 - 1e-6);
}

TEST(HopperCutoffPlan, DistanceBound) {
  const uint64_t seed = testing::test_seed() + 901;
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  int checked = 0;
  for (int i = 0; i < 20000; ++i) {
    const float scale_log2 = static_cast<float>((0.05 + u(rng)) * 1.4426950408889634 / std::sqrt(128.0) * 8);
    const int64_t stride = 1 + static_cast<int64_t>(u(rng) * 4);
    const float qn = static_cast<float>(std::pow(10.0, 4 * u(rng)));  // squared norms 1 .. 1e4
    const float kn = static_cast<float>(std::pow(10.0, 4 * u(rng)));
    const float slope = static_cast<float>(std::pow(2.0, -12 + 14 * u(rng)));  // 2^-12 .. 4
    const int rows = alibi_cutoff_rows(scale_log2, stride, qn, kn, slope);
    if (rows < 0) continue;  // beyond 2^30 rows: nothing cut
    ++checked;
    ASSERT_GE(rows, 1);
    EXPECT_TRUE(clears(scale_log2, stride, qn, kn, slope, rows))
        << "rows " << rows << " does not clear the bound: qn " << qn << " kn " << kn << " slope " << slope;
    // Not far above the smallest distance that clears it (ceil of an fp32 quotient: within a few ulp).
    EXPECT_FALSE(clears(scale_log2, stride, qn, kn, slope, std::floor(rows * (1 - 1e-5)) - 1)) << "rows " << rows;
  }
  EXPECT_GT(checked, 10000);
  // Nothing is cut where the bound cannot be evaluated or never clears.
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(alibi_cutoff_rows(0.127f, 1, inf, 100.f, 0.5f), -1);
  EXPECT_EQ(alibi_cutoff_rows(0.127f, 1, 100.f, inf, 0.5f), -1);
  EXPECT_EQ(alibi_cutoff_rows(0.127f, 1, nan, 100.f, 0.5f), -1);
  EXPECT_EQ(alibi_cutoff_rows(0.127f, 1, 100.f, 100.f, 0.f), -1);
  EXPECT_EQ(alibi_cutoff_rows(0.127f, 1, 100.f, 100.f, -0.5f), -1);
  EXPECT_EQ(alibi_cutoff_rows(0.127f, 1, 100.f, 100.f, nan), -1);
  EXPECT_EQ(alibi_cutoff_rows(0.127f, 1, 100.f, 100.f, 1e-12f), -1);  // > 2^30 rows
  // A worked case: |q|^2 = |k|^2 = 128, D = 128 (scale_log2 = log2(e) / sqrt(128)), slope 0.5: need = 2 * 16.32 *
  // (1 + 2^-10) + 176 = 208.67 log2 units, 0.7206 per row -> 290 rows.
  EXPECT_EQ(alibi_cutoff_rows(static_cast<float>(1.4426950408889634 / std::sqrt(128.0)), 1, 128.f, 128.f, 0.5f), 290);
}

struct PlanCase {
  int64_t S;
  int64_t start, stride;
  Mask mask;
  std::string name;
};

TEST(HopperCutoffPlan, PlansAgainstBruteForce) {
  const uint64_t seed = testing::test_seed() + 902;
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<PlanCase> cases = {
      {1000, 0, 1, Mask::make_causal(), "causal_1000"},
      {1000, 0, 1, Mask::none(), "none_1000"},
      {4099, 7, 1, Mask::make_causal(), "causal_4099_start7"},
      {4099, 7, 1, Mask::none(), "none_4099_start7"},
      {3000, 5, 3, Mask::make_causal(1000), "causal_window1000_stride3"},
      {3000, 5, 3, Mask::make_window(700), "window700_stride3"},
      {2048, 0, 1, Mask::make_window(1), "window1"},
      {100, 3, 1, Mask::none(), "short_100"},
      {129, 0, 2, Mask::make_causal(), "causal_129_stride2"},
      {8192, 1 << 20, 1, Mask::none(), "none_8192_2e20"},
  };
  int64_t visited_total = 0, cut_total = 0;
  for (const PlanCase& c : cases) {
    SCOPED_TRACE("case " + c.name);
    const DiagonalBand band = DiagonalBand::from_mask(c.mask);
    const int S = static_cast<int>(c.S);
    const int M = (S + kPlanTileRows - 1) / kPlanTileRows;
    for (int m = 0; m < M; ++m) {
      const int m0 = m * kPlanTileRows, m_last = std::min(m0 + kPlanTileRows, S) - 1;
      const int64_t q_min = c.start + m0 * c.stride, q_max = c.start + static_cast<int64_t>(m_last) * c.stride;
      int lo, hi;
      chunk_rows(q_min, q_max, band.lo, band.hi, c.start, c.stride, 0, S, &lo, &hi);
      ASSERT_LE(lo, m0);
      ASSERT_GE(hi, m0);
      int ref_plan[32] = {};
      write_cutoff_plan(m, lo, hi, -1, ref_plan);
      const std::vector<int> ref = walk(ref_plan);
      // Reference: every tile of [lo / 128, hi / 128] once, diagonal first, then down, then from the top down.
      ASSERT_EQ(static_cast<int>(ref.size()), hi / kPlanTileRows - lo / kPlanTileRows + 1);
      ASSERT_EQ(ref.front(), m);
      for (size_t i = 1; i < ref.size(); ++i) {
        if (ref[i] < m) {
          EXPECT_EQ(ref[i], ref[i - 1] - 1);
        } else {
          EXPECT_EQ(ref[i], i == static_cast<size_t>(m - lo / kPlanTileRows + 1) ? hi / kPlanTileRows : ref[i - 1] - 1);
        }
      }
      for (int trial = 0; trial < 6; ++trial) {
        // Distances from 1 row to beyond the sequence; one trial at exactly a tile multiple.
        const int rows = trial == 0 ? kPlanTileRows : 1 + static_cast<int>(rng() % static_cast<uint64_t>(2 * S + 1));
        int plan[32] = {};
        write_cutoff_plan(m, lo, hi, rows, plan);
        const std::vector<int> cut = walk(plan);
        ASSERT_FALSE(cut.empty());
        EXPECT_EQ(cut.front(), m) << "rows " << rows;
        // Same order as the reference, tiles removed.
        size_t j = 0;
        for (int t : cut) {
          while (j < ref.size() && ref[j] != t) ++j;
          ASSERT_LT(j, ref.size()) << "tile " << t << " out of the reference's order, rows " << rows;
          ++j;
        }
        std::vector<bool> visited(static_cast<size_t>(M), false);
        for (int t : cut) visited[static_cast<size_t>(t)] = true;
        for (int t : ref) {
          // Closest pair between the tile's kv rows (< S) and the q tile's rows: real rows [m0, m_last] for the
          // safety of a cut, and all 128 rows [m0, m0 + 127] for the tightness of a visit.
          const int k0 = t * kPlanTileRows, k1 = std::min(k0 + kPlanTileRows, S) - 1;
          auto gap = [&](int q_hi) { return k1 < m0 ? m0 - k1 : (k0 > q_hi ? k0 - q_hi : 0); };
          if (visited[static_cast<size_t>(t)]) {
            ++visited_total;
            EXPECT_LT(gap(m0 + kPlanTileRows - 1), rows) << "tile " << t << " visited needlessly, q tile " << m;
          } else {
            ++cut_total;
            EXPECT_GE(gap(m_last), rows) << "tile " << t << " cut though a pair is closer than " << rows;
          }
        }
      }
    }
  }
  EXPECT_GT(cut_total, 100);
  EXPECT_GT(visited_total, 100);
}

// The cutoff across merged calls (mode 3): the band narrowed by merge_cutoff_band, applied by chunk_rows to a q tile's
// position range and a kv chunk (any start and stride on either side, as in a ring step), against brute force over
// every (q row, kv row) pair: every pair inside the mask's band and closer than `dist` positions keeps its kv row (no
// needed key is cut: leaving out the others is what the bound makes safe), with consecutive q positions the range is
// tight (its first and last rows are needed), and dist < 1 leaves the band as it was.
TEST(HopperCutoffPlan, MergeCutoffBandAgainstBruteForce) {
  const uint64_t seed = testing::test_seed() + 903;
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto uni = [&](int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
  };
  const Mask masks[] = {Mask::make_causal(), Mask::none(), Mask::make_causal(300), Mask::make_window(200)};
  int64_t kept_pairs = 0, cut_rows = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const DiagonalBand band = DiagonalBand::from_mask(masks[trial % 4]);
    // q tile: 1..128 rows of stride qs from qa; kv chunk: len rows of stride ks from ka (positions may interleave).
    const int64_t qs = uni(1, 4), ks = uni(1, 4), q_rows = uni(1, 128), len = uni(1, 700);
    const int64_t qa = uni(0, 3000), ka = uni(0, 3000);
    const int dist = trial % 10 == 0 ? -1 : static_cast<int>(uni(1, 900));
    int64_t blo, bhi;
    hopper::merge_cutoff_band(band.lo, band.hi, dist, &blo, &bhi);
    if (dist < 1) {
      EXPECT_EQ(blo, band.lo);
      EXPECT_EQ(bhi, band.hi);
    }
    const int row_c = static_cast<int>(uni(0, 50));  // the chunk's first local row
    int lo, hi;
    chunk_rows(qa, qa + (q_rows - 1) * qs, blo, bhi, ka, ks, row_c, static_cast<int>(len), &lo, &hi);
    for (int64_t j = 0; j < len; ++j) {
      const int64_t pk = ka + j * ks;
      const bool in_range = row_c + j >= lo && row_c + j <= hi;
      bool needed = false;
      for (int64_t i = 0; i < q_rows; ++i) {
        const int64_t d = qa + i * qs - pk;
        const bool visible = d >= band.lo && d <= band.hi;
        const bool near = dist < 1 || (d < 0 ? -d : d) < dist;
        if (visible && near) needed = true;
      }
      if (needed) {
        ++kept_pairs;
        EXPECT_TRUE(in_range) << "kv row " << j << " (pos " << pk << ") is needed but left out; dist " << dist;
      } else if (!in_range) {
        ++cut_rows;
      }
      if (qs == 1 && in_range && (row_c + j == lo || row_c + j == hi))
        EXPECT_TRUE(needed) << "range end " << j << " is not needed: the range is loose; dist " << dist;
    }
  }
  EXPECT_GT(kept_pairs, 1000);
  EXPECT_GT(cut_rows, 1000);
}

// The plan of a dense multi-chunk layout (write_segments' format) is walked last segment first, each top down.
TEST(HopperCutoffPlan, SegmentWalkOrder) {
  int plan[32] = {};
  plan[hopper::kPlanSegments] = 3;
  plan[hopper::kPlanFirst + 0] = 2, plan[hopper::kPlanCount + 0] = 2;  // tiles 2, 3
  plan[hopper::kPlanFirst + 1] = 9, plan[hopper::kPlanCount + 1] = 0;  // empty
  plan[hopper::kPlanFirst + 2] = 5, plan[hopper::kPlanCount + 2] = 3;  // tiles 5, 6, 7
  plan[hopper::kPlanTotal] = 5;
  EXPECT_EQ(walk(plan), (std::vector<int>{7, 6, 5, 3, 2}));
  // The cutoff's two segments: diagonal 4 and below first, then the tiles above from the top.
  write_cutoff_plan(4, 0, 10 * kPlanTileRows - 1, -1, plan);
  EXPECT_EQ(walk(plan), (std::vector<int>{4, 3, 2, 1, 0, 9, 8, 7, 6, 5}));
  write_cutoff_plan(4, 0, 10 * kPlanTileRows - 1, kPlanTileRows + 1, plan);  // one tile either side
  EXPECT_EQ(walk(plan), (std::vector<int>{4, 3, 5}));
  write_cutoff_plan(4, 0, 4 * kPlanTileRows + 99, 1, plan);  // causal-like range, rows 1: the diagonal only
  EXPECT_EQ(walk(plan), (std::vector<int>{4}));
}

}  // namespace
}  // namespace distattn
