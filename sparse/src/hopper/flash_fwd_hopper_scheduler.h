// Tile scheduler of the persistent Hopper forward kernel (flash_fwd_hopper_kernel.cuh): which work units a CTA
// processes and in what order. Host and device code (the launcher sizes the sections with the same formula).
//
// Work unit = (q tile m_block, q head h, batch b): 128 q rows of one head, the kernel's former CTA; M = num_m_blocks
// units per (b, h) pair (pair = b * Hq + h, so GQA heads sharing a kv head are neighbours).
// Slots: with pair_units (the launcher sets it when the q tiles' kv tile counts grow about linearly with m, as under a
// causal band), slot j of a pair holds the two units m = M - 1 - j and m = j (one unit for the middle of an odd M), so
// every slot weighs about the same (FA2/FA3-style causal balancing: a heavy tile with a light one); otherwise slot j
// holds the unit m = M - 1 - j (heaviest first under a growing band). Slots per pair: Ms = ceil(M / 2) or M.
// Slots are numbered t = 0 .. num_slots - 1 in this order:
//   sections of `section_pairs` consecutive pairs; inside a section, slot j from 0 up, and for each j the section's
//   pairs in order:  t = section * (section_pairs * Ms) + j * np + (pair - section * section_pairs),
//   with np = the section's pair count (section_pairs, or fewer in the last section). Why sections: the K / V of one
//   section's kv heads is sized to stay in L2 (the launcher picks section_pairs from Skv), so the slots in flight at
//   any time (consecutive t) share K / V through L2 while the order is still heaviest first inside the section.
// CTA c of a grid of G takes, in round r = 0, 1, ..., the slot t = r * G + (r even ? c : G - 1 - c) ("snake"): the
// CTA that got the heaviest slot of one round gets the lightest of the next, without any global counter (the kernel
// may run on several streams at once; a shared atomic counter would need a per-launch reset). A CTA stops at the
// first t >= num_slots (later rounds only have larger t). With G = num_slots every CTA takes exactly one slot.
#pragma once

#include <cstdint>

#include "flash_fwd_hopper_params.h"

#if defined(__CUDACC__)
#define DISTATTN_HOPPER_HD __host__ __device__ __forceinline__
#else
#define DISTATTN_HOPPER_HD inline
#endif

namespace distattn {
namespace hopper {

struct WorkUnit {
  int m_block = 0;  // q tile: rows [128 m_block, 128 m_block + 128)
  int h = 0;        // q head
  int b = 0;        // batch
};

// Slots per (b, h) pair (see above).
DISTATTN_HOPPER_HD int slots_per_pair(const FlashFwdHopperParams& p) {
  return p.pair_units ? (p.num_m_blocks + 1) / 2 : p.num_m_blocks;
}

// Walks the units of CTA `cta` in a grid of `grid`: round by round, and inside a paired slot its heavy unit first.
// Producer and consumers each run one (same sequence).
struct UnitWalk {
  int round = 0;
  int second = 0;  // 1: the paired slot's second unit (m = j) is next

  // The next unit, or false when the CTA is done.
  DISTATTN_HOPPER_HD bool next(const FlashFwdHopperParams& p, int cta, int grid, WorkUnit* u) {
    const int64_t t = static_cast<int64_t>(round) * grid + ((round & 1) ? grid - 1 - cta : cta);
    if (t >= p.num_slots) return false;
    const int ms = slots_per_pair(p);
    const int per_section = p.section_pairs * ms;  // <= num_slots < 2^31
    const int ti = static_cast<int>(t);
    const int section = ti / per_section;
    const int within = ti - section * per_section;
    const int first_pair = section * p.section_pairs;
    const int pairs_total = p.batch * p.heads_q;
    const int np = pairs_total - first_pair < p.section_pairs ? pairs_total - first_pair : p.section_pairs;
    const int j = within / np;
    const int pair = first_pair + (within - j * np);
    u->m_block = second ? j : p.num_m_blocks - 1 - j;
    u->b = pair / p.heads_q;
    u->h = pair - u->b * p.heads_q;
    // Advance: a paired slot with two distinct units takes two calls.
    if (p.pair_units && !second && j != p.num_m_blocks - 1 - j) {
      second = 1;
    } else {
      second = 0;
      ++round;
    }
    return true;
  }
};

// Pairs per L2 section: the q heads whose kv heads' K and V (Skv rows x 128 x 2 bytes, twice) fit `l2_bytes`, at
// least one kv head's worth (head_group q heads), at most every pair.
inline int l2_section_pairs(int64_t seqlen_kv, int head_group, int64_t pairs_total, int64_t l2_bytes) {
  const int64_t kv_head_bytes = seqlen_kv * 128 * 2 * 2;
  int64_t kv_heads = kv_head_bytes > 0 ? l2_bytes / kv_head_bytes : 1;
  if (kv_heads < 1) kv_heads = 1;
  int64_t pairs = kv_heads * head_group;
  if (pairs > pairs_total) pairs = pairs_total;
  if (pairs < 1) pairs = 1;
  return static_cast<int>(pairs);
}

}  // namespace hopper
}  // namespace distattn
