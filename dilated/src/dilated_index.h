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

// --- distributed patterns (distributed_dilated.cc, w > L) ---
// Rank p holds global rows [p*L, (p+1)*L). For rate r, head h (class s = h mod r) and base = (p*L) mod r,
// local row l is kept iff (p*L + l) mod r == s, i.e. l = phase + r*i with phase = (s - base) mod r.
DISTATTN_HD int64_t dist_phase(int64_t s, int64_t base, int64_t r) { return ((s - base) % r + r) % r; }
// Kept local rows of a class on a shard of L rows: ceil((L - phase) / r), 0 when phase >= L.
DISTATTN_HD int64_t dist_count(int64_t phase, int64_t L, int64_t r) { return phase < L ? (L - 1 - phase) / r + 1 : 0; }
// Packed partial LSE of a distributed pattern: [B, H, n_max], entry (b, h, i) of kept row phase(h) + r*i.
DISTATTN_HD int64_t dist_lse_index(int64_t b, int64_t h, int64_t i, int64_t H, int64_t n_max) {
  return (b * H + h) * n_max + i;
}
// The kv head behind entry t of class s's packed K|V: every kv head (t) when r == 1 (one class, GQA kept),
// else the kv head of q head s + r*t (ratio gqa = Hq / Hkv; entries may repeat a kv head when r < gqa).
DISTATTN_HD int64_t dist_kv_head(int64_t t, int64_t s, int64_t r, int64_t gqa) {
  return r == 1 ? t : (s + r * t) / gqa;
}

}  // namespace dilated_detail
}  // namespace distattn
