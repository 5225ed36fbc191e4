// The ring step schedule (schedule.h).
#include "distattn/ring/schedule.h"

#include "distattn/core/error.h"

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
  return sched;
}

}  // namespace ring
}  // namespace distattn
