// The block-sparse ring's plan without MPI (ring/schedule.h), for ring sizes the mpi tests do not reach
// (P up to 16): every rank's per-step sub-layouts against the global layout block by block, the band refinement
// (partial blocks the band proves empty dropped, proved full upgraded), last_useful_step against a brute force
// over every rank, the dense ring's early end for windows, and the layout validation errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/core/mask.h"
#include "distattn/ring/schedule.h"
#include "distattn/ring/shard.h"
#include "distattn/sparse/block_layout.h"
#include "test_util.h"

namespace distattn {
namespace testing {
namespace {

using ring::ShardLayout;
constexpr int64_t kB = kLayoutBlock;

// Global blocks of rank r's shard in local order.
std::vector<int64_t> blocks_of(ShardLayout layout, int64_t S, int P, int r) {
  const PositionMap m = ring::shard_positions(layout, S, P, r);
  std::vector<int64_t> out;
  for (int64_t i = 0; i < m.length(); i += kB) out.push_back(m.position(i) / kB);
  return out;
}

// Expected state of a global block after the band: 0 dropped, 1 full, 2 partial (exact position ranges).
int expected_state(const BlockLayout& g, int64_t S, int64_t qb, int64_t kb) {
  if (!g.visible_block(qb, kb)) return 0;
  if (g.full(qb, kb)) return 1;
  const DiagonalBand band = DiagonalBand::from_mask(g.band());
  const TileVisibility v =
      classify_tile(band, qb * kB, std::min((qb + 1) * kB, S) - 1, kb * kB, std::min((kb + 1) * kB, S) - 1);
  return v == TileVisibility::kEmpty ? 0 : (v == TileVisibility::kFull ? 1 : 2);
}

// Checks every rank's plan for `g` over P ranks; returns last_useful_step.
int check_plan(const BlockLayout& g, ShardLayout layout, int64_t S, int P) {
  SCOPED_TRACE(::testing::Message() << ring::layout_name(layout) << " S=" << S << " P=" << P << " " << g.describe());
  std::vector<int> owner(static_cast<size_t>(S / kB));
  for (int r = 0; r < P; ++r)
    for (int64_t b : blocks_of(layout, S, P, r)) owner[static_cast<size_t>(b)] = r;
  int last = 0;
  std::vector<int> lasts;
  for (int r = 0; r < P; ++r) {
    const ring::RingSchedule sc = ring::make_schedule(layout, S, P, r, g);
    EXPECT_TRUE(sc.block_sparse);
    lasts.push_back(sc.last_useful_step);
    const std::vector<int64_t> mine = blocks_of(layout, S, P, r);
    int64_t listed = 0;
    for (const ring::RingStep& st : sc.steps) {
      EXPECT_NE(st.blocks, nullptr);
      if (st.blocks == nullptr) return -1;
      EXPECT_EQ(st.kv_rank, ((r - st.step) % P + P) % P);
      const std::vector<int64_t> theirs = blocks_of(layout, S, P, st.kv_rank);
      const BlockLayout& sub = *st.blocks;
      EXPECT_EQ(sub.num_q_blocks(), static_cast<int64_t>(mine.size()));
      EXPECT_EQ(sub.num_kv_blocks(), static_cast<int64_t>(theirs.size()));
      EXPECT_EQ(sub.band().causal, g.band().causal);
      EXPECT_EQ(sub.band().window, g.band().window);
      EXPECT_EQ(st.listed_blocks, sub.nnz());
      EXPECT_EQ(st.skipped(), sub.nnz() == 0);
      if (!st.skipped()) last = std::max(last, st.step);
      // Block by block, both ways: listed locally iff the global block survives the band, same full/partial.
      for (size_t i = 0; i < mine.size(); ++i)
        for (size_t j = 0; j < theirs.size(); ++j) {
          const int want = expected_state(g, S, mine[i], theirs[j]);
          const int got = sub.visible_block(static_cast<int64_t>(i), static_cast<int64_t>(j))
                              ? (sub.partial(static_cast<int64_t>(i), static_cast<int64_t>(j)) ? 2 : 1)
                              : 0;
          EXPECT_EQ(got, want) << "rank " << r << " step " << st.step << " local (" << i << ", " << j << ") = global ("
                               << mine[i] << ", " << theirs[j] << ")";
        }
      listed += sub.nnz();
    }
    // Every surviving global block of my rows landed in exactly one step.
    int64_t want_listed = 0;
    for (int64_t qb : mine)
      for (int64_t kb = 0; kb < g.num_kv_blocks(); ++kb) want_listed += expected_state(g, S, qb, kb) != 0;
    EXPECT_EQ(listed, want_listed) << "rank " << r;
  }
  // Every rank computed the same last useful step, and it is the brute-force maximum over ranks; the useful steps
  // are 0 and exactly the steps some rank computes.
  for (int l : lasts) EXPECT_EQ(l, last);
  std::vector<int> useful{0};
  for (int s = 1; s < P; ++s) {
    bool any = false;
    for (int r = 0; r < P; ++r) any = any || !ring::make_schedule(layout, S, P, r, g).steps[s].skipped();
    if (any) useful.push_back(s);
  }
  for (int r = 0; r < P; ++r) EXPECT_EQ(ring::make_schedule(layout, S, P, r, g).useful_steps, useful) << "rank " << r;
  return last;
}

TEST(RingSparsePlan, SubLayoutsMatchTheGlobalLayoutUpTo16Ranks) {
  for (int P : {1, 2, 3, 5, 8, 16}) {
    for (ShardLayout layout : {ShardLayout::kContiguous, ShardLayout::kZigzag}) {
      const int64_t S = 2 * P * kB * (P <= 5 ? 2 : 1);
      const PositionMap all = PositionMap::contiguous(0, S);
      const CausalRestriction cr = CausalRestriction::on(all, all);
      check_plan(BlockLayout::bigbird(S, S, 1, 1, 2, 99 + P), layout, S, P);
      check_plan(BlockLayout::bigbird(S, S, 1, 1, 2, 98 + P, cr), layout, S, P);
      check_plan(BlockLayout::strided(S, S, 3, 1, cr), layout, S, P);
      check_plan(BlockLayout::global_tokens(S, S, 2), layout, S, P);
      check_plan(BlockLayout::random(S, S, 3, 7 * P, cr), layout, S, P);
      check_plan(BlockLayout::sliding_window(S, S, all, all, 200, true), layout, S, P);
      check_plan(BlockLayout::sliding_window(S, S, all, all, 130, false), layout, S, P);
    }
  }
}

TEST(RingSparsePlan, BandRefinementDropsAndUpgradesPartialBlocks) {
  // Every block listed PARTIAL under a causal band: above the diagonal the band leaves nothing (dropped),
  // below it everything (upgraded to full), on it a real partial block.
  const int P = 4;
  const int64_t S = 2 * P * kB, nb = S / kB;
  const std::vector<uint8_t> all_partial(static_cast<size_t>(nb * nb), BlockLayout::kPartial);
  const BlockLayout g = BlockLayout::from_block_mask(nb, nb, all_partial, Mask::make_causal());
  EXPECT_EQ(check_plan(g, ShardLayout::kContiguous, S, P), P - 1);
  const ring::RingSchedule sc = ring::make_schedule(ShardLayout::kContiguous, S, P, 1, g);
  EXPECT_EQ(sc.steps[0].listed_blocks, 3);  // rank 1's blocks 2, 3: (2,2) partial, (3,2) full, (3,3) partial
  EXPECT_EQ(sc.steps[0].blocks->num_partial(), 2);
  EXPECT_EQ(sc.steps[1].listed_blocks, 4);  // shard 0 (blocks 0, 1): all below the diagonal, full
  EXPECT_EQ(sc.steps[1].blocks->num_partial(), 0);
  EXPECT_TRUE(sc.steps[2].skipped());  // shards 3 and 2 lie above rank 1's rows: nothing survives
  EXPECT_TRUE(sc.steps[3].skipped());
  // Causal on a contiguous layout with a local band of 1 block: only the previous shard is ever needed.
  const BlockLayout band = BlockLayout::strided(
      S, S, nb + 1, 1, CausalRestriction::on(PositionMap::contiguous(0, S), PositionMap::contiguous(0, S)));
  EXPECT_EQ(check_plan(band, ShardLayout::kContiguous, S, P), 1);
  EXPECT_EQ(check_plan(band, ShardLayout::kZigzag, S, P), P - 1);
}

TEST(RingSparsePlan, StepWorkAgreesWithSchedules) {
  const int P = 6;
  const int64_t S = 2 * P * kB;
  const BlockLayout g = BlockLayout::random(S, S, 2, 5);
  const std::vector<uint8_t> work = ring::step_work(ShardLayout::kZigzag, S, P, g);
  ASSERT_EQ(work.size(), static_cast<size_t>(P * P));
  for (int r = 0; r < P; ++r) {
    const ring::RingSchedule sc = ring::make_schedule(ShardLayout::kZigzag, S, P, r, g);
    for (int s = 0; s < P; ++s) EXPECT_EQ(work[static_cast<size_t>(r * P + s)] != 0, !sc.steps[s].skipped());
  }
}

TEST(RingSparsePlan, DenseWindowEndsEarly) {
  // Contiguous, 100 rows per rank (no block constraint for the dense ring).
  for (int P : {2, 3, 8, 16}) {
    const int64_t S = 100 * P;
    EXPECT_EQ(ring::make_schedule(ShardLayout::kContiguous, S, P, 0, Mask::make_causal(50)).last_useful_step, 1);
    EXPECT_EQ(ring::make_schedule(ShardLayout::kContiguous, S, P, P - 1, Mask::make_causal(102)).last_useful_step,
              std::min(2, P - 1));
    EXPECT_EQ(ring::make_schedule(ShardLayout::kContiguous, S, P, 0, Mask::make_causal()).last_useful_step, P - 1);
    const ring::RingSchedule two = ring::make_schedule(ShardLayout::kContiguous, S, P, 0, Mask::make_window(50));
    EXPECT_EQ(two.last_useful_step, P - 1);  // the next shard (step P-1) too; the middle steps are jumped over
    EXPECT_EQ(two.useful_steps, P == 2 ? std::vector<int>({0, 1}) : std::vector<int>({0, 1, P - 1}));
    EXPECT_EQ(two.kv_exchanges(), std::min(2, P - 1));
    EXPECT_EQ(ring::make_schedule(ShardLayout::kContiguous, S, P, 0, Mask::none()).last_useful_step, P - 1);
    const ring::RingSchedule z = ring::make_schedule(ShardLayout::kZigzag, 2 * S, P, 0, Mask::make_causal(50));
    EXPECT_EQ(z.last_useful_step, P - 1);  // the late chunk's predecessor sits on rank 1 (step P-1)
    EXPECT_EQ(z.useful_steps, P == 2 ? std::vector<int>({0, 1}) : std::vector<int>({0, 1, P - 1}));
    EXPECT_EQ(z.kv_exchanges(), static_cast<int>(z.useful_steps.size()) - 1);
    EXPECT_EQ(z.grad_exchanges(), static_cast<int>(z.useful_steps.size()));
  }
}

TEST(RingSparsePlan, ValidationNamesTheArgument) {
  const int P = 4;
  const BlockLayout g8 = BlockLayout::strided(8 * kB, 8 * kB, 2, 0);
  EXPECT_NO_THROW(ring::validate_block_layout(ShardLayout::kZigzag, 8 * kB, P, g8));  // chunks of 128
  EXPECT_NO_THROW(ring::validate_block_layout(ShardLayout::kContiguous, 8 * kB, P, g8));
  EXPECT_ERROR_ARG(ring::validate_block_layout(ShardLayout::kStriped, 8 * kB, P, g8), "layout");
  EXPECT_ERROR_ARG(ring::validate_block_layout(ShardLayout::kZigzag, 4 * kB, P, g8), "seq_len");       // chunks of 64
  EXPECT_ERROR_ARG(ring::validate_block_layout(ShardLayout::kContiguous, P * 192, P, g8), "seq_len");  // 192 rows
  EXPECT_ERROR_ARG(ring::validate_block_layout(ShardLayout::kContiguous, 8 * kB + 2, P, g8), "seq_len");
  EXPECT_ERROR_ARG(ring::validate_block_layout(ShardLayout::kContiguous, 16 * kB, P, g8), "block_layout");
  EXPECT_ERROR_ARG(ring::make_schedule(ShardLayout::kContiguous, 16 * kB, P, 0, g8), "block_layout");
  EXPECT_ERROR_ARG(ring::step_work(ShardLayout::kContiguous, 8 * kB, P, g8.host_mask()), "mask.blocks");
}

}  // namespace
}  // namespace testing
}  // namespace distattn
