// Tile plan of one work unit of the Hopper forward kernel (flash_fwd_hopper_kernel.cuh): the layout of a plan slot in
// shared memory, the walk over it, and the ALiBi underflow cutoff's plan. Host and device code: the kernel's producer
// writes the plan, producer and consumers walk it (plan_segment_tile), and the CPU test
// (tests/cpu/test_hopper_cutoff_plan.cc) and the emulation (tools/alibi_cutoff_emu.cc) run the same functions.
//
// Plan slot (ints): [kPlanTotal] tiles to visit, [kPlanSegments] segment count, [kPlanFirst + c] first kv tile of
// segment c, [kPlanCount + c] its tile count (segments of consecutive kv tiles). Walk: step it = 0 .. total - 1 visits
// the (total - 1 - it)-th tile counting segment 0 ascending, then segment 1 ascending, ...: the LAST segment from its
// top tile down first, then the one before it. Dense plans have one segment per kv chunk (the q tile's visible tiles
// in that chunk); the ALiBi cutoff's plan has two (write_cutoff_plan).
#pragma once

#include <math.h>

#include <cstdint>

#include "flash_fwd_hopper_params.h"

#if defined(__CUDACC__)
#define DISTATTN_HOPPER_PLAN_HD __host__ __device__ __forceinline__
#else
#define DISTATTN_HOPPER_PLAN_HD inline
#endif

namespace distattn {
namespace hopper {

constexpr int kPlanTotal = 0;                                              // plan[0]: tiles to visit
constexpr int kPlanSegments = 1;                                           // plan[1]: segments
constexpr int kPlanFirst = 4;                                              // plan[kPlanFirst + c]: first tile of c
constexpr int kPlanCount = kPlanFirst + FlashFwdHopperParams::kMaxChunks;  // plan[kPlanCount + c]: its tile count
constexpr int kPlanTileRows = 128;  // kv rows per tile = q rows per work unit (FwdConfig::kBlockN == kBlockM)

// kv tile of walk step `it` (0 <= it < plan[kPlanTotal]).
DISTATTN_HOPPER_PLAN_HD int plan_segment_tile(const int* plan, int it) {
  int j = plan[kPlanTotal] - 1 - it;
  const int segments = plan[kPlanSegments];
  for (int c = 0; c < segments; ++c) {
    const int count = plan[kPlanCount + c];
    if (j < count) return plan[kPlanFirst + c] + j;
    j -= count;
  }
  return 0;  // not reached: 0 <= it < total
}

// Visible rows [lo, hi] (local, clipped to the chunk [row_c, row_c + len - 1]; empty when lo > hi) of kv chunk
// (start, stride, row_c, len) for q positions [q_lo, q_hi] under the band: pos_k in [q_lo - band_hi, q_hi -
// band_lo]. Divisions only when the stride is not 1.
DISTATTN_HOPPER_PLAN_HD void chunk_rows(int64_t q_lo, int64_t q_hi, int64_t band_lo, int64_t band_hi, int64_t start,
                                        int64_t stride, int row_c, int len, int* lo, int* hi) {
  const int64_t lo_pos = q_lo - band_hi - start;
  const int64_t hi_pos = q_hi - band_lo - start;
  const int64_t l = lo_pos <= 0 ? 0 : (stride == 1 ? lo_pos : (lo_pos + stride - 1) / stride);
  const int64_t h = hi_pos < 0 ? -1 : (stride == 1 ? hi_pos : hi_pos / stride);
  *lo = row_c + static_cast<int>(l < len ? l : static_cast<int64_t>(len));
  *hi = row_c + static_cast<int>(h < len - 1 ? h : static_cast<int64_t>(len - 1));
}

// ---- ALiBi cutoff ------------------------------------------------------------------------------------------------
// The same bound as the mma.sync kernel's (flash_fwd_kernel.cuh, "ALiBi cutoff"; fwd_detail::alibi_cutoff_rows, whose
// constants these are), on the same 128-row q tiles. Premises (flash_fwd_api.cu enables it only where all hold): dense
// band containing d = 0 (every mask does: causal, windows, none), no block list, q_pos == kv_pos as ONE chunk {start,
// stride, L} (so Sq == Skv, q row r and kv row r share a position, positions grow with the row), ALiBi slope > 0,
// finite inputs.
//   1. The walk visits the unit's diagonal tile m (kv rows [128 m, 128 m + 128), the own keys of its q rows) first
//      (write_cutoff_plan), so every q row r has seen its own key (d = 0, bias 0; the kernel's per-row reference D0(r)
//      is 0 here) before any other tile.
//   2. Its running max M_r (t = q.k + coef |d|) is then >= q_r.k_r >= -|q_r| Kmax, and a key at distance dist has
//      t <= |q_r| Kmax - dist slope / scale. In the log2 units of p = exp2((t - m) scale_log2) with the lazy reference
//      max m >= M - 8 / scale_log2 (softmax_tile moves it only beyond 8):
//        (t - m) scale_log2 <= 2 scale_log2 Qmax Kmax - slope log2(e) dist + 8.
//   3. Where that is <= -160, ex2.approx.ftz returns exactly +0: the tile adds +0 to every row sum and 0 * V to O and
//      moves no row max (a warp-wide rescale it would trigger through a row past Sq multiplies by exp2(0) = 1). The
//      state after it equals the state before it, so skipping it changes no bit of O or LSE (the walk order is the
//      same with and without skipping).
// Margins: 2^-10 relative on the dot-product and the bias terms (norms, wgmma accumulation, the fp32 row_off of far
// tiles, exponent arithmetic: all ~1e-6 relative), plus 176 = 160 + 8 + 8 absolute (log2 units).
// Returns the smallest distance in rows (of `stride` positions) that clears the bound, or -1 when nothing may be cut
// (NaN / inf norms, slope <= 0, NaN or too small, or a distance beyond 2^30 rows).
DISTATTN_HOPPER_PLAN_HD int alibi_cutoff_rows(float scale_log2, int64_t stride, float q_norm_sq, float k_norm_sq,
                                              float slope) {
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr float kMarginLog2 = 176.f;
  constexpr float kRel = 1.f / 1024.f;
  const float dot_log2 = scale_log2 * sqrtf(q_norm_sq) * sqrtf(k_norm_sq);  // bound on |q.k| scale_log2
  const float need_log2 = fmaf(2.f * dot_log2, 1.f + kRel, kMarginLog2);
  const float per_row_log2 = slope * kLog2e * static_cast<float>(stride) * (1.f - kRel);
  if (!(need_log2 <= 3.0e38f) || !(per_row_log2 > 0.f)) return -1;
  const float rows = ceilf(need_log2 / per_row_log2);  // >= 1
  return rows <= 1073741824.f ? static_cast<int>(rows) : -1;
}

// The cutoff's plan of q tile m_block: the kv tiles [lo / 128, hi / 128] the band leaves (lo, hi: the visible kv rows
// of the whole q tile, chunk_rows), less those whose every row is at least `rows` rows away from every q row of the
// tile (rows < 0: nothing cut; the bit-identity reference walks the same order with rows = -1):
//   below: kv rows < t_lo * 128 <= m0 + 1 - rows are >= rows before every q row (>= m0);
//   above: kv rows >= (t_hi + 1) * 128 >= m0 + 127 + rows are >= rows after every q row (<= m0 + 127; rows past Sq
//          are never written, so their keys do not matter).
// Order, diagonal tile first: segment 1 = [t_lo, m_block] (walked m_block down to t_lo), then segment 0 = [m_block + 1,
// t_hi] (t_hi down to m_block + 1; empty under a causal band, whose last visible tile is m_block). rows >= 1 keeps
// t_lo <= m_block <= t_hi. The premises put m_block inside [lo / 128, hi / 128]; should they not hold, the diagonal is
// clamped into the range, which keeps the plan a valid walk of the visible tiles.
DISTATTN_HOPPER_PLAN_HD void write_cutoff_plan(int m_block, int lo, int hi, int rows, int* plan) {
  constexpr int kTile = kPlanTileRows;
  plan[kPlanSegments] = 2;
  if (lo > hi) {  // nothing visible (not under the premises)
    plan[kPlanTotal] = 0;
    plan[kPlanFirst] = plan[kPlanFirst + 1] = 0;
    plan[kPlanCount] = plan[kPlanCount + 1] = 0;
    return;
  }
  const int m0 = m_block * kTile;
  int t_lo = lo / kTile, t_hi = hi / kTile;
  if (rows >= 0) {
    if (rows <= m0) {
      const int cut_lo = (m0 + 1 - rows) / kTile;  // <= m_block
      t_lo = t_lo > cut_lo ? t_lo : cut_lo;
    }
    const int64_t first_far = static_cast<int64_t>(m0) + kTile - 1 + rows;  // kv rows >= this: cut
    const int64_t cut_hi = (first_far + kTile - 1) / kTile - 1;             // >= m_block
    if (cut_hi < t_hi) t_hi = static_cast<int>(cut_hi);
  }
  int d = m_block;
  if (d < t_lo) d = t_lo;
  if (d > t_hi) d = t_hi;
  plan[kPlanFirst] = d + 1;  // segment 0: above the diagonal (walked second)
  plan[kPlanCount] = t_hi - d;
  plan[kPlanFirst + 1] = t_lo;  // segment 1: the diagonal and below (walked first)
  plan[kPlanCount + 1] = d - t_lo + 1;
  plan[kPlanTotal] = t_hi - t_lo + 1;
}

// ---- ALiBi cutoff across merged calls (mode 3, AttnParams::alibi_merge) ------------------------------------------
// Premise (the caller's word): every q row's own position is a key of one of the calls whose results are merged by
// LSE (the ring's own step). Its score t_own = softmax_scale q.k_own (bias 0) is then >= -dot, dot = softmax_scale
// Qmax Kmax with Kmax the larger of the call's and the own keys' norms (AlibiMergeNorms: the own key lies in another
// call), and the merged row max is >= t_own. A key at position distance dist has t <= dot - slope dist, so its
// weight relative to the merged maximum is <= exp(2 dot - slope dist): with `rows` = alibi_cutoff_rows(scale_log2, 1,
// ...) positions (stride 1: distances in positions, not rows) this is <= 2^-176 with the same margins, far below the
// fp32 resolution of the merged row sum (>= 1 in units of its maximum) and of O. Such keys may be left out of any
// call: within rounding of the merged result, not bit for bit (a call's own lazy maximum and its P rounding see
// fewer tiles). The skip is a narrower band: keys with |pos_q - pos_k| >= dist for every q row of the unit are cut,
// i.e. the unit keeps pos_q - pos_k in [-(dist - 1), dist - 1] intersected with the mask's band; chunk_rows on the
// unit's q position range then keeps every tile that holds a key some q row of the unit is closer to than dist.
// dist < 0 (nothing may be cut): the band unchanged. An empty intersection gives an empty plan (every key is far:
// the unit writes an empty result, O = 0 and LSE = -inf, or leaves the accumulator as it is).
DISTATTN_HOPPER_PLAN_HD void merge_cutoff_band(int64_t band_lo, int64_t band_hi, int dist, int64_t* lo, int64_t* hi) {
  *lo = band_lo;
  *hi = band_hi;
  if (dist < 1) return;
  const int64_t reach = static_cast<int64_t>(dist) - 1;
  if (*lo < -reach) *lo = -reach;
  if (*hi > reach) *hi = reach;
}

}  // namespace hopper
}  // namespace distattn
