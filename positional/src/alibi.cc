// ALiBi slopes, Press et al. 2022 ("Train Short, Test Long"), sec. 3 and the authors' reference
// `get_slopes`:
//   n a power of two:  slope_h = 2^(-8 (h + 1) / n),  h = 0 .. n-1   (geometric, ratio = first term)
//   otherwise, m = largest power of two below n: the m slopes of the m-head rule, then the slopes of
//   the 2m-head rule at indices 0, 2, 4, ... (every other one) until n slopes are listed.
// Computed in double (exp2 of an exact rational) and rounded to fp32 once.
#include "distattn/positional/alibi.h"

#include <cmath>

#include "distattn/core/error.h"

namespace distattn {
namespace {

// Slope h of the power-of-two rule for n heads: 2^(-8 (h + 1) / n).
double power_of_two_slope(int64_t n, int64_t h) {
  return std::exp2(-8.0 * static_cast<double>(h + 1) / static_cast<double>(n));
}

// Slope of global head h under the rule for `total` heads.
double global_slope(int64_t total, int64_t h) {
  int64_t m = 1;
  while (m * 2 <= total) m *= 2;  // largest power of two <= total
  if (h < m) return power_of_two_slope(m, h);
  return power_of_two_slope(2 * m, 2 * (h - m));  // every other slope of the 2m-head rule
}

}  // namespace

std::vector<float> alibi_slopes(int64_t total_heads, int64_t head_offset, int64_t local_heads) {
  DISTATTN_CHECK_ARG(total_heads >= 1, "total_heads", "total_heads must be >= 1, got ", total_heads);
  DISTATTN_CHECK_ARG(total_heads <= (int64_t{1} << 30), "total_heads", "total_heads ", total_heads,
                     " is implausibly large (at most 2^30)");
  DISTATTN_CHECK_ARG(head_offset >= 0 && head_offset < total_heads, "head_offset", "head_offset must be in [0, ",
                     total_heads, "), got ", head_offset);
  DISTATTN_CHECK_ARG(local_heads != 0, "local_heads",
                     "local_heads must be >= 1 (or negative for every head from head_offset on), got 0");
  const int64_t count = local_heads < 0 ? total_heads - head_offset : local_heads;
  DISTATTN_CHECK_ARG(head_offset + count <= total_heads, "local_heads", "heads [", head_offset, ", ",
                     head_offset + count, ") run past total_heads ", total_heads);
  std::vector<float> slopes(static_cast<size_t>(count));
  for (int64_t j = 0; j < count; ++j) slopes[j] = static_cast<float>(global_slope(total_heads, head_offset + j));
  return slopes;
}

}  // namespace distattn
