// The ring step schedule (schedule.h): dense classification, block-sparse sub-layouts, the early end.
#include "distattn/ring/schedule.h"

#include <algorithm>

#include "distattn/core/error.h"
#include "distattn/sparse/block_layout.h"

namespace distattn {
namespace ring {

TileVisibility classify_step(const PositionMap& q_pos, const PositionMap& kv_pos, const Mask& mask) {
  const DiagonalBand band = DiagonalBand::from_mask(mask);
  bool any_visible = false, all_full = true;
  // Per chunk pair: a zigzag shard's two chunks are far apart, so one min/max over the whole shard
  // would call almost every step partial.
  int64_t q_first = 0;
  for (int a = 0; a < q_pos.num_chunks; ++a) {
    int64_t q_min, q_max;
    q_pos.range(q_first, q_first + q_pos.chunks[a].length, &q_min, &q_max);
    q_first += q_pos.chunks[a].length;
    int64_t k_first = 0;
    for (int c = 0; c < kv_pos.num_chunks; ++c) {
      int64_t k_min, k_max;
      kv_pos.range(k_first, k_first + kv_pos.chunks[c].length, &k_min, &k_max);
      k_first += kv_pos.chunks[c].length;
      const TileVisibility v = classify_tile(band, q_min, q_max, k_min, k_max);
      if (v != TileVisibility::kEmpty) any_visible = true;
      if (v != TileVisibility::kFull) all_full = false;
    }
  }
  if (!any_visible) return TileVisibility::kEmpty;
  return all_full ? TileVisibility::kFull : TileVisibility::kPartial;
}

int RingSchedule::computed_steps() const {
  int n = 0;
  for (const RingStep& s : steps) n += s.skipped() ? 0 : 1;
  return n;
}

int last_useful_step(const std::vector<uint8_t>& work, int world_size) {
  DISTATTN_CHECK_ARG(world_size >= 1 && work.size() == static_cast<size_t>(world_size) * world_size, "work", "has ",
                     work.size(), " entries, expected world_size^2 = ", int64_t{world_size} * world_size);
  int last = 0;
  for (int r = 0; r < world_size; ++r)
    for (int s = 0; s < world_size; ++s)
      if (work[static_cast<size_t>(r) * world_size + s]) last = std::max(last, s);
  return last;
}

std::vector<int> useful_steps(const std::vector<uint8_t>& work, int world_size) {
  last_useful_step(work, world_size);  // validates the size
  std::vector<int> u{0};
  for (int s = 1; s < world_size; ++s) {
    bool any = false;
    for (int r = 0; r < world_size; ++r) any = any || work[static_cast<size_t>(r) * world_size + s] != 0;
    if (any) u.push_back(s);
  }
  return u;
}

std::vector<uint8_t> step_work(ShardLayout layout, int64_t seq_len, int world_size, const Mask& mask) {
  DISTATTN_CHECK_ARG(mask.blocks == nullptr, "mask.blocks",
                     "the dense schedule takes causal / window masks; pass a block layout to the block-sparse form");
  const int P = world_size;
  std::vector<PositionMap> pos(static_cast<size_t>(P));
  for (int r = 0; r < P; ++r) pos[static_cast<size_t>(r)] = shard_positions(layout, seq_len, P, r);
  std::vector<uint8_t> work(static_cast<size_t>(P) * P, 0);
  for (int r = 0; r < P; ++r)
    for (int s = 0; s < P; ++s) {
      const PositionMap& kv = pos[static_cast<size_t>(kv_source(r, s, P))];
      work[static_cast<size_t>(r) * P + s] =
          classify_step(pos[static_cast<size_t>(r)], kv, mask) != TileVisibility::kEmpty;
    }
  return work;
}

RingSchedule make_schedule(ShardLayout layout, int64_t seq_len, int world_size, int rank, const Mask& mask) {
  RingSchedule sched;
  sched.world_size = world_size;
  sched.rank = rank;
  sched.q_pos = shard_positions(layout, seq_len, world_size, rank);
  sched.steps.resize(static_cast<size_t>(world_size));
  for (int s = 0; s < world_size; ++s) {
    RingStep& st = sched.steps[static_cast<size_t>(s)];
    st.step = s;
    st.kv_rank = kv_source(rank, s, world_size);
    st.kv_pos = shard_positions(layout, seq_len, world_size, st.kv_rank);
    st.visibility = classify_step(sched.q_pos, st.kv_pos, mask);
  }
  sched.useful_steps = useful_steps(step_work(layout, seq_len, world_size, mask), world_size);
  sched.last_useful_step = sched.useful_steps.back();
  return sched;
}

// ------------------------------------------------------------------------------------------------
// Block-sparse

void validate_block_layout(ShardLayout layout, int64_t seq_len, int world_size, const BlockLayout& global) {
  validate_layout(layout, seq_len, world_size);
  DISTATTN_CHECK_ARG(layout != ShardLayout::kStriped, "layout",
                     "is striped: a block-sparse ring needs every rank's rows in whole ", kLayoutBlock,
                     "-row blocks of the global layout (use contiguous or zigzag)");
  const int64_t chunks = layout == ShardLayout::kZigzag ? 2 * int64_t{world_size} : int64_t{world_size};
  const int64_t chunk = seq_len / chunks;
  DISTATTN_CHECK_ARG(chunk % kLayoutBlock == 0, "seq_len", "is ", seq_len, ": with a block layout every ",
                     layout_name(layout), " chunk (S/", chunks, " = ", chunk, " rows) must be a multiple of ",
                     kLayoutBlock, " rows, so that chunk boundaries fall on block boundaries (S a multiple of ",
                     chunks * kLayoutBlock, ")");
  const int64_t nb = seq_len / kLayoutBlock;
  DISTATTN_CHECK_ARG(global.num_q_blocks() == nb && global.num_kv_blocks() == nb, "block_layout", "is ",
                     global.num_q_blocks(), " x ", global.num_kv_blocks(), " blocks, expected ", nb, " x ", nb,
                     " (the whole sequence of ", seq_len, " rows in ", kLayoutBlock, "-row blocks)");
}

namespace {

// Global block -> owner rank and local block index; per rank, the global block of each local block.
// Chunks are kLayoutBlock-aligned with stride 1 (validate_block_layout).
struct BlockOwners {
  std::vector<int32_t> owner, local;              // [num blocks]
  std::vector<std::vector<int32_t>> rank_blocks;  // [P][local blocks]: global block of local block i
};

BlockOwners block_owners(ShardLayout layout, int64_t seq_len, int P) {
  const int64_t nb = seq_len / kLayoutBlock;
  BlockOwners o;
  o.owner.assign(static_cast<size_t>(nb), -1);
  o.local.assign(static_cast<size_t>(nb), -1);
  o.rank_blocks.resize(static_cast<size_t>(P));
  for (int r = 0; r < P; ++r) {
    const PositionMap m = shard_positions(layout, seq_len, P, r);
    int32_t li = 0;
    for (int c = 0; c < m.num_chunks; ++c) {
      // Local rows of a chunk follow its global rows in order (stride 1), so local block li <-> global block g.
      for (int64_t j = 0; j < m.chunks[c].length / kLayoutBlock; ++j) {
        const int64_t g = m.chunks[c].start / kLayoutBlock + j;
        o.owner[static_cast<size_t>(g)] = r;
        o.local[static_cast<size_t>(g)] = li++;
        o.rank_blocks[static_cast<size_t>(r)].push_back(static_cast<int32_t>(g));
      }
    }
  }
  return o;
}

// State of the global block (gq, gk) once the band is applied: 0 not visible, 1 full, 2 partial. A full block
// is the builder's promise (kept); a partial one is classified on its exact global position ranges.
int refined_state(const DiagonalBand& band, int64_t seq_len, int64_t gq, int64_t gk, bool partial) {
  if (!partial) return 1;
  const int64_t q0 = gq * kLayoutBlock, q1 = std::min(q0 + kLayoutBlock, seq_len) - 1;
  const int64_t k0 = gk * kLayoutBlock, k1 = std::min(k0 + kLayoutBlock, seq_len) - 1;
  switch (classify_tile(band, q0, q1, k0, k1)) {
    case TileVisibility::kEmpty:
      return 0;
    case TileVisibility::kFull:
      return 1;
    default:
      return 2;
  }
}

}  // namespace

std::vector<uint8_t> step_work(ShardLayout layout, int64_t seq_len, int world_size, const BlockLayout& global) {
  validate_block_layout(layout, seq_len, world_size, global);
  const int P = world_size;
  const BlockOwners o = block_owners(layout, seq_len, P);
  const DiagonalBand band = DiagonalBand::from_mask(global.band());
  const std::vector<int32_t>& ro = global.row_offset();
  const std::vector<int32_t>& ci = global.col_index();
  const std::vector<uint8_t>& rp = global.row_partial();
  std::vector<uint8_t> work(static_cast<size_t>(P) * P, 0);
  for (int64_t gq = 0; gq < global.num_q_blocks(); ++gq) {
    const int r = o.owner[static_cast<size_t>(gq)];
    for (int32_t e = ro[static_cast<size_t>(gq)]; e < ro[static_cast<size_t>(gq) + 1]; ++e) {
      const int64_t gk = ci[static_cast<size_t>(e)];
      if (refined_state(band, seq_len, gq, gk, rp[static_cast<size_t>(e)] != 0) == 0) continue;
      const int k = o.owner[static_cast<size_t>(gk)];
      work[static_cast<size_t>(r) * P + ((r - k) % P + P) % P] = 1;  // rank r meets shard k at step (r - k) mod P
    }
  }
  return work;
}

RingSchedule make_schedule(ShardLayout layout, int64_t seq_len, int world_size, int rank, const BlockLayout& global) {
  validate_block_layout(layout, seq_len, world_size, global);
  DISTATTN_CHECK_ARG(rank >= 0 && rank < world_size, "rank", "is ", rank, " (expected 0 .. ", world_size - 1, ")");
  const int P = world_size;
  RingSchedule sched;
  sched.world_size = P;
  sched.rank = rank;
  sched.block_sparse = true;
  sched.q_pos = shard_positions(layout, seq_len, P, rank);
  sched.steps.resize(static_cast<size_t>(P));

  // One pass over this rank's rows of the global layout, each listed block routed to the step at which its kv
  // block is held: P row-CSRs in local block indices, built side by side.
  const BlockOwners o = block_owners(layout, seq_len, P);
  const DiagonalBand band = DiagonalBand::from_mask(global.band());
  const std::vector<int32_t>& mine = o.rank_blocks[static_cast<size_t>(rank)];
  const int64_t nq = static_cast<int64_t>(mine.size());  // local blocks: S/P/128 (q and kv shards alike)
  std::vector<std::vector<int32_t>> offs(static_cast<size_t>(P), std::vector<int32_t>(static_cast<size_t>(nq) + 1, 0));
  std::vector<std::vector<int32_t>> cols(static_cast<size_t>(P));
  std::vector<std::vector<uint8_t>> parts(static_cast<size_t>(P));
  const std::vector<int32_t>& ro = global.row_offset();
  const std::vector<int32_t>& ci = global.col_index();
  const std::vector<uint8_t>& rp = global.row_partial();
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t gq = mine[static_cast<size_t>(i)];
    // Global kv blocks ascend along the row, and within one shard local order follows global order (its chunks
    // are in ascending global order), so every step's row comes out ascending as from_rows requires.
    for (int32_t e = ro[static_cast<size_t>(gq)]; e < ro[static_cast<size_t>(gq) + 1]; ++e) {
      const int64_t gk = ci[static_cast<size_t>(e)];
      const int state = refined_state(band, seq_len, gq, gk, rp[static_cast<size_t>(e)] != 0);
      if (state == 0) continue;
      const int k = o.owner[static_cast<size_t>(gk)];
      const size_t s = static_cast<size_t>(((rank - k) % P + P) % P);
      cols[s].push_back(o.local[static_cast<size_t>(gk)]);
      parts[s].push_back(state == 2 ? 1 : 0);
    }
    for (int s = 0; s < P; ++s)
      offs[static_cast<size_t>(s)][static_cast<size_t>(i) + 1] =
          static_cast<int32_t>(cols[static_cast<size_t>(s)].size());
  }
  for (int s = 0; s < P; ++s) {
    RingStep& st = sched.steps[static_cast<size_t>(s)];
    st.step = s;
    st.kv_rank = kv_source(rank, s, P);
    st.kv_pos = shard_positions(layout, seq_len, P, st.kv_rank);
    st.blocks = std::make_shared<BlockLayout>(
        BlockLayout::from_rows(nq, nq, std::move(offs[static_cast<size_t>(s)]), std::move(cols[static_cast<size_t>(s)]),
                               std::move(parts[static_cast<size_t>(s)]), global.band()));
    st.listed_blocks = st.blocks->nnz();
    st.visibility = st.listed_blocks == 0 ? TileVisibility::kEmpty : TileVisibility::kPartial;
  }
  sched.useful_steps = useful_steps(step_work(layout, seq_len, P, global), P);
  sched.last_useful_step = sched.useful_steps.back();
  return sched;
}

}  // namespace ring
}  // namespace distattn
