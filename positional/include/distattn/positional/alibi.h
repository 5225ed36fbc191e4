// ALiBi slopes (Press et al. 2022) from the GLOBAL head count.
//
// For n heads, a power of two: slope_h = 2^(-8 (h + 1) / n). Otherwise, with m the largest power of
// two below n: the m slopes of the m-head rule, followed by every other slope (odd indices 0, 2, 4...)
// of the 2m-head rule until n slopes are listed. A tensor-parallel rank holding heads
// [head_offset, head_offset + local_heads) gets exactly that slice, so sharding heads never changes
// the bias any head sees.
#pragma once

#include <cstdint>
#include <vector>

namespace distattn {

// Throws distattn::Error unless total_heads >= 1, 0 <= head_offset, head_offset + local_heads <= total_heads.
// local_heads < 0 means "all heads from head_offset on".
std::vector<float> alibi_slopes(int64_t total_heads, int64_t head_offset = 0, int64_t local_heads = -1);

}  // namespace distattn
