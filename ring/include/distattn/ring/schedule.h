// The ring step schedule.
//
// P ranks, P steps. At step s rank r holds the K|V shard that rank (r - s) mod P owns (its own at
// step 0); after computing with it, the shard moves on to rank r + 1. A step whose (q shard, kv shard)
// pair is fully masked is skipped: no compute, but the buffer is still forwarded so the ring stays
// consistent. Classification is per (q chunk, kv chunk) pair with PositionMap::range and
// classify_tile (mask.h): kEmpty and kFull are exact promises, kPartial means "mask per element".
#pragma once

#include <cstdint>
#include <vector>

#include "distattn/core/mask.h"
#include "distattn/core/position_map.h"
#include "distattn/ring/shard.h"

namespace distattn {
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
  bool skipped() const { return visibility == TileVisibility::kEmpty; }
};

// Rank r's P steps, in order.
struct RingSchedule {
  int world_size = 1;
  int rank = 0;
  PositionMap q_pos;
  std::vector<RingStep> steps;  // [P]
  int computed_steps() const;   // steps not skipped
};

RingSchedule make_schedule(ShardLayout layout, int64_t seq_len, int world_size, int rank, const Mask& mask);

}  // namespace ring
}  // namespace distattn
