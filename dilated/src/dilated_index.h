// Index math shared by the host loops (dilated_attention.cc) and the CUDA helpers (dilated_kernels.cu).
// Internal (not installed).
//
// Pattern (w, r) over S rows, Hq heads: in every segment [g*w, (g+1)*w) head h (class s = h mod r) keeps the rows
// g*w + s + r*i, i < rows_of_class(w, r, s) = ceil((w - s) / r): row p is kept iff (p mod w) mod r == h mod r.
// When r divides w every class keeps w/r rows and the test is p mod r == h mod r; with ragged rates
// (DilatedConfig::ragged_rates, torchscale's semantics) the classes differ in length by at most one.
// A pattern's LSE is handled COMPACTED as [B, S/w, Hq, m_max], m_max = ceil(w/r): (batch, segment g, head h,
// kept row i) with p = g*w + (h mod r) + r*i (entries i >= rows_of_class of a short class are padding, never
// read). For one engine call (segment g, heads h0, h0 + r, ...) this is a row-contiguous [B, Hq', m] array with
// head step r*m_max and batch step (S/w)*Hq*m_max, which is what AttnParams::lse requires (row stride 1); the
// [B, Hq, S] layout would need row stride r.
#pragma once

#include <cstdint>

#include "distattn/core/dtype.h"  // DISTATTN_HD

namespace distattn {
namespace dilated_detail {

DISTATTN_HD int64_t rows_of_class(int64_t w, int64_t r, int64_t s) { return s < w ? (w - 1 - s) / r + 1 : 0; }
DISTATTN_HD int64_t max_rows(int64_t w, int64_t r) { return (w + r - 1) / r; }

DISTATTN_HD bool kept(int64_t p, int64_t h, int64_t w, int64_t r) { return (p % w) % r == h % r; }

// Compacted LSE index of (b, p, h); only meaningful when kept(p, h, w, r).
DISTATTN_HD int64_t compact_index(int64_t b, int64_t p, int64_t h, int64_t S, int64_t H, int64_t w, int64_t r) {
  const int64_t g = p / w, i = (p % w) / r;
  return ((b * (S / w) + g) * H + h) * max_rows(w, r) + i;
}

// --- distributed patterns (distributed_dilated.cc, w > L) ---
// Rank p holds global rows [p*L, (p+1)*L), L dividing w. For rate r, head h (class s = h mod r) and
// base = ((p*L) mod w) mod r (the segment offset of the shard's first row, mod r), local row l is kept iff
// ((p*L + l) mod w) mod r == s, i.e. l = phase + r*i with phase = (s - base) mod r (the shard lies inside one
// segment, so the offset inside the segment is (p*L) mod w + l).
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
