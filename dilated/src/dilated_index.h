// Index math shared by the host loops (dilated_attention.cc) and the CUDA helpers (dilated_kernels.cu).
// Internal (not installed).
//
// Pattern (w, r) over S rows, Hq heads: row p is kept for head h iff p mod r == h mod r (segments start at
// multiples of w and r divides w, so the offset inside the segment has the same residue).
// A pattern's partial LSE is stored COMPACTED as [B, S/w, Hq, w/r]: (batch, segment g, head h, kept row m)
// with p = g*w + (h mod r) + r*m. For one engine call (segment g, heads h0, h0 + r, ...) this is a
// row-contiguous [B, Hq', m] array with head step r*(w/r) and batch step (S/w)*Hq*(w/r), which is what
// AttnParams::lse requires (row stride 1); a [B, Hq, S] layout would need row stride r.
#pragma once

#include <cstdint>

#include "distattn/core/dtype.h"  // DISTATTN_HD

namespace distattn {
namespace dilated_detail {

DISTATTN_HD bool kept(int64_t p, int64_t h, int64_t r) { return p % r == h % r; }

// Compacted partial-LSE index of (b, p, h); only meaningful when kept(p, h, r).
DISTATTN_HD int64_t compact_index(int64_t b, int64_t p, int64_t h, int64_t S, int64_t H, int64_t w, int64_t r) {
  const int64_t g = p / w, m = (p % w) / r;
  return ((b * (S / w) + g) * H + h) * (w / r) + m;
}

}  // namespace dilated_detail
}  // namespace distattn
