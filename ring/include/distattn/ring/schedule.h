// The ring step schedule.
//
// P ranks, at most P steps. At step s rank r holds the K|V shard that rank (r - s) mod P owns (its own at
// step 0); after computing with it, the shard moves on to rank r + 1. A step whose (q shard, kv shard)
// pair has no visible pair is skipped: no compute, but the buffer is still forwarded so the ring stays
// consistent. Dense ring: classification per (q chunk, kv chunk) pair with PositionMap::range and
// classify_tile (mask.h): kEmpty and kFull are exact promises, kPartial means "mask per element".
//
// Block-sparse ring (a GLOBAL BlockLayout over the whole sequence, Sq = Skv = S): at construction each
// step gets the sub-layout of (this rank's q rows) x (the held kv shard) in LOCAL block indices; a step
// whose sub-layout lists nothing is skipped.
//
// Useful steps and the early end: every rank can classify every rank's steps (cheap: position ranges or
// block counts), so all ranks agree on useful_steps, the steps at which ANY rank has work (plus step 0). The
// executors visit only those: the K|V buffer JUMPS from one useful step u to the next u' by a shift of
// u' - u ranks (each rank sends what it holds to rank r + (u' - u), which holds that shard at u'), so a step
// empty on every rank costs neither compute nor traffic, and nothing moves after the last useful step
// (last_useful_step). Without empty steps every jump is 1: the plain ring. E.g. a causal sliding window over
// a contiguous layout needs steps {0, 1} (one exchange instead of P - 1), a two-sided one {0, 1, P-1} (two).
// The dK|dV accumulators jump with the K|V and, after the last useful step, go home by one shift.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "distattn/core/mask.h"
#include "distattn/core/position_map.h"
#include "distattn/ring/shard.h"

namespace distattn {

class BlockLayout;  // sparse/block_layout.h

namespace ring {

// Owner of the K|V shard rank `rank` holds at step `step`: (rank - step) mod P.
inline int kv_source(int rank, int step, int world_size) {
  return ((rank - step) % world_size + world_size) % world_size;
}

// How the q rows of q_pos relate to the kv rows of kv_pos under `mask` (block lists not considered):
// kEmpty if every chunk pair is empty, kFull if every chunk pair is full, else kPartial.
TileVisibility classify_step(const PositionMap& q_pos, const PositionMap& kv_pos, const Mask& mask);

struct RingStep {
  int step = 0;        // 0 .. P-1
  int kv_rank = 0;     // whose K|V is held
  PositionMap kv_pos;  // its global positions
  TileVisibility visibility = TileVisibility::kPartial;
  // Block-sparse ring only: the sub-layout of (this rank's q rows) x (the held shard's kv rows), LOCAL block
  // indices (q block i = local q rows [128 i, 128 i + 128)), band = the global layout's; built once at
  // construction (the CUDA executor uploads it once). Null for the dense ring.
  std::shared_ptr<BlockLayout> blocks;
  int64_t listed_blocks = -1;  // blocks->nnz() (-1: dense ring)
  // CUDA executor: the view of `blocks`' device copy (uploaded once at construction; device == kCuda then).
  BlockListView device_blocks;
  bool skipped() const { return visibility == TileVisibility::kEmpty; }
};

// Rank r's P steps, in order.
struct RingSchedule {
  int world_size = 1;
  int rank = 0;
  PositionMap q_pos;
  std::vector<RingStep> steps;  // [P]; steps not in useful_steps are empty (skipped) on every rank
  // The steps a call visits, ascending: 0 and every step at which ANY rank has work. The same on every rank.
  std::vector<int> useful_steps{0};
  // Its last element (0 .. P-1; 0 when nobody has work anywhere): nothing moves after it.
  int last_useful_step = 0;
  bool block_sparse = false;  // steps carry sub-layouts

  int computed_steps() const;  // steps not skipped (all of them in useful_steps)
  // K|V exchanges of one forward (and of one backward): useful_steps.size() - 1 (P - 1 for the full ring).
  int kv_exchanges() const { return static_cast<int>(useful_steps.size()) - 1; }
  // dK|dV accumulator exchanges of one backward: useful_steps.size(). All but the last jump along with the
  // K|V; the last sends every accumulator straight home (a shift by -last_useful_step: +1, a ring hop, for
  // the full ring; a local copy when last_useful_step == 0).
  int grad_exchanges() const { return static_cast<int>(useful_steps.size()); }
};

// Dense ring (causal / window mask on global positions; mask.blocks must be null).
RingSchedule make_schedule(ShardLayout layout, int64_t seq_len, int world_size, int rank, const Mask& mask);

// Throws distattn::Error unless `global` can drive a block-sparse ring over `layout`: names "layout" for striped
// (its rows are not 128-row chunks), "seq_len" unless every chunk boundary is a multiple of kLayoutBlock
// (contiguous: S/P, zigzag: S/(2P) rows per chunk), "block_layout" unless it is ceil(S/128) x ceil(S/128) blocks.
// Validates the layout (validate_layout) first.
void validate_block_layout(ShardLayout layout, int64_t seq_len, int world_size, const BlockLayout& global);

// Block-sparse ring: `global` covers the whole sequence (q and kv positions 0 .. S-1, band = global.band()).
// Validates with validate_block_layout. Partial blocks the band proves empty are dropped and those it proves
// full become full (exact: classify_tile on the blocks' global position ranges).
RingSchedule make_schedule(ShardLayout layout, int64_t seq_len, int world_size, int rank, const BlockLayout& global);

// Which ranks have work at which step: work[r * P + s] = 1 iff rank r computes at step s. Dense form (mask
// without blocks) and block-sparse form (validated like make_schedule). useful_steps() / last_useful_step()
// read it: {0} plus every step with work on some rank (ascending), and its largest element.
std::vector<uint8_t> step_work(ShardLayout layout, int64_t seq_len, int world_size, const Mask& mask);
std::vector<uint8_t> step_work(ShardLayout layout, int64_t seq_len, int world_size, const BlockLayout& global);
std::vector<int> useful_steps(const std::vector<uint8_t>& work, int world_size);
int last_useful_step(const std::vector<uint8_t>& work, int world_size);

}  // namespace ring
}  // namespace distattn
