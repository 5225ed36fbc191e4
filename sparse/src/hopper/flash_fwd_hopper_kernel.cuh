// Hopper forward attention kernel: TMA loads, wgmma (warpgroup MMA), warp specialisation.
//
// Work unit = (batch b, q head h, q tile of kBlockM = 128 rows). A CTA walks a sequence of units
// (flash_fwd_hopper_scheduler.h: persistent grid of one CTA per SM for short problems, one CTA per unit otherwise);
// the barrier phases and the K / V ring continue from one unit to the next, so the producer loads the next unit's Q,
// K and V while the consumers finish the current one.
// CTA = 3 warpgroups (384 threads):
//   warpgroup 0  producer: gives registers back (setmaxnreg 24); one thread issues every TMA load: per unit the
//                Q tile once (after both consumers' last S of the previous unit), then K and V tiles into a 2-stage
//                ring, in the order K(0), K(1), V(0), K(2), V(1), ... (the consumers need K(it) and V(it - 1)
//                together).
//   warpgroups 1, 2  consumers (setmaxnreg 240): consumer c owns q rows [64 c, 64 c + 64) of the tile.
//                Per kv tile (128 rows): S = Q K^T (8 wgmma m64n128k16, A = Q and B = K from shared
//                memory, K-major), mask (boundary tiles only), online softmax on the accumulator fragment,
//                P rounded to bf16/fp16 in registers, O += P V (8 wgmma, A = P from registers,
//                B = V from shared memory, MN-major through the descriptor's transpose bit).
//                Intra-warpgroup overlap: S(it) and P V(it - 1) are issued back to back, and the softmax of
//                tile it runs while the tensor cores still do P V(it - 1); O is rescaled after that wait.
// Synchronisation (mbarriers in shared memory; k = the CTA's unit count so far, g = its kv tiles so far):
//   bar_q              unit k's Q landed (TMA transaction count; a plain arrival for a unit with no kv tile), phase k.
//   q_empty            both consumers' last S of unit k done (8 warp arrivals): Q and plan slot k % 2 may be refilled.
//   full_k[s], full_v[s]    K / V tile of stage s landed.
//   empty_k[s], empty_v[s]  both consumers finished reading K / V of stage s (8 warp arrivals each): the
//                      producer may refill it. K is released right after S, V after P V.
//   Tile it of a unit sits at ring position j = g + it: stage j % 2; its use u = j / 2 waits full with parity
//   u & 1, and the producer's refill for use u >= 1 waits empty with parity (u - 1) & 1.
//
// Shared memory (bytes from a 1024-aligned base; every tile in the 128-byte-swizzle layout of
// hopper_primitives.cuh, head dim split in two 64-wide halves):
//   Q     [2 halves][128 rows][128 B]           32 KB
//   K[s]  [2 halves][kBlockN rows][128 B]       32 KB each, s = 0, 1
//   V[s]  same                                  32 KB each
//   mbarriers                                   10 x 8 B
//   dense tile plan (per kv chunk), 2 slots     2 x 128 B
//   row-range mask table [8 chunks][128 rows]   8 KB
//   ALiBi row reference D0 [128 rows]           1 KB
//
// ALiBi (kAlibi): scores t = q.k + coef |pos_q - pos_k| with coef = -slope_h / softmax_scale (q.k units). Exactness
// with positions up to 2^31: every row r gets an integer reference D0(r) = min |pos_q - pos_k| over its visible keys
// (once per unit, from the row-range table), and the kernel works with t' = q.k + coef (|d| - D0(r)), which is t minus
// a per-row constant (the softmax does not change; LSE = LSE' - slope D0(r), added once in the epilogue in double).
// |d| - D0 is small for the keys that matter, so fp32 holds it exactly. Per kv tile (q range x k range):
//   one sign (every pos_q - pos_k >= 0, sigma = +1, or every one <= 0, sigma = -1): |d| - D0 = e_row - sigma k_step c
//     with e_row = sigma (pos_q - k_base - col_base k_step) - D0 (int64 per row and tile) and c the compile-time
//     column offset of the accumulator: one FFMA per element (s += c * kcol, kcol = -coef sigma k_step); the row
//     part coef e_row goes into the softmax's max and exp per row (row_off), not per element;
//   straddling the diagonal (both signs): |d| per element from a small per-row integer (exact below 2^24): 3 ops.
//
// ALiBi cutoff (p.alibi_cutoff, flash_fwd_hopper_plan.h): where q_pos == kv_pos as one chunk, keys far from the
// diagonal get a bias so negative that their exp2 is exactly 0 for every element; the producer then leaves their tiles
// out of the unit's plan (write_cutoff_plan, from the pre-computed max q norm of the tile and max k norm of the kv
// head: the mma.sync kernel's bound) and the walk starts at the diagonal tile. Skipped tiles would have changed no bit
// of O or LSE; alibi_cutoff_skip = false walks the same order without skipping (the tests' reference).
//
// Position maps: up to 8 chunks per side whose boundaries are multiples of 128 rows (flash_fwd_hopper_supported),
// so every q tile and kv tile lies in one chunk and its positions are affine (start + row * stride).
// Tiles visited: with a dense band, inside each kv chunk the kv rows any q row of the tile can see form one
// range (a chunk's positions are increasing); the per-chunk tile ranges (disjoint: chunks are tile-aligned)
// are walked from the last to the first (the diagonal tile first under a causal mask). With a block list, the listed kv
// blocks of q block m, last to first. A tile needs the per-element mask when the band does not cover it entirely
// (classify_tile on the position ranges; FULL blocks of a block list never do) or when it crosses Skv (TMA fills the
// rows past Skv with zeros, which would score 0, not -inf).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "distattn/core/mask.h"
#include "distattn/positional/rope_math.cuh"
#include "flash_fwd_hopper_params.h"
#include "flash_fwd_hopper_plan.h"
#include "flash_fwd_hopper_scheduler.h"
#include "hopper_bwd_primitives.cuh"
#include "hopper_primitives.cuh"

namespace distattn {
namespace hopper {

struct FwdConfig {
  static constexpr int kHeadDim = 128;
  static constexpr int kBlockM = 128;  // q rows per work unit: 2 consumer warpgroups x 64
  static constexpr int kBlockN = 128;  // kv rows per tile (== kLayoutBlock: one block-list block per tile)
#ifndef DISTATTN_HOPPER_STAGES
#define DISTATTN_HOPPER_STAGES 2
#endif
  static constexpr int kStages = DISTATTN_HOPPER_STAGES;  // K and V ring depth (3 fits: 7 x 32 KB + 1 KB)
  static constexpr int kThreads = 384;
  static constexpr int kHalfQBytes = kBlockM * 128;   // one 64-wide half of Q: rows x 128 bytes
  static constexpr int kHalfKVBytes = kBlockN * 128;  // one 64-wide half of a K or V tile
  static constexpr int kQBytes = 2 * kHalfQBytes;
  static constexpr int kKVBytes = 2 * kHalfKVBytes;
  static constexpr int kOffK = kQBytes;                       // K[s] at kOffK + s * kKVBytes
  static constexpr int kOffV = kOffK + kStages * kKVBytes;    // V[s] at kOffV + s * kKVBytes
  static constexpr int kOffBar = kOffV + kStages * kKVBytes;  // mbarriers (2 + 4 kStages of 8 bytes)
  static constexpr int kMaxChunks = FlashFwdHopperParams::kMaxChunks;
  // Dense plan of a work unit, two slots (unit k of the CTA uses slot k % 2; the producer thread writes it before
  // the unit's bar_q arrival): tile count and segments of kv tiles (flash_fwd_hopper_plan.h): per kv chunk c the kv
  // tiles the q tile may see, or with the ALiBi cutoff the two segments of write_cutoff_plan.
  static constexpr int kPlanSlotInts = 32;        // 128 bytes per slot
  static constexpr int kOffPlan = kOffBar + 128;  // int slots of the layout in flash_fwd_hopper_plan.h
  // Row-range mask table: int2 [kMaxChunks][kBlockM] = visible global kv rows [lo, hi] of each q row of the tile
  // inside kv chunk c (band and chunk end; empty when lo > hi); written once per work unit by the consumers (each
  // warp its own rows).
  static constexpr int kOffBounds = kOffPlan + 2 * 4 * kPlanSlotInts;
  // ALiBi: int64 [kBlockM] = D0(row), the smallest |pos_q - pos_k| over the row's visible keys (see the kernel).
  static constexpr int kOffDref = kOffBounds + 8 * kMaxChunks * kBlockM;
  static constexpr int kSmemBytes = kOffDref + 8 * kBlockM + 1024;  // + slack to align the base to 1024
  // Fused RoPE (kRope launches only; plain launches keep kSmemBytes): the helpers' staging, 1024-aligned: two data
  // buffers (a 32-row x 128 tile of one head of q or k each, TMA swizzle layout, two 64-wide halves of 4 KB) and the
  // (cos, sin) table of the job's 32 rows (32 x 64 float2); then three mbarriers (buffer 0, buffer 1, table), the
  // claimed job and the stop flag.
  static constexpr int kRopeRows = 32;
  static constexpr int kRopeHalfBytes = kRopeRows * 128;
  static constexpr int kRopeBufBytes = 2 * kRopeHalfBytes;
  static constexpr int kRopeTableBytes = kRopeRows * 64 * 8;
  static constexpr int kOffRopeStage = (kOffDref + 8 * kBlockM + 1023) / 1024 * 1024;
  static constexpr int kOffRopeTable = kOffRopeStage + 2 * kRopeBufBytes;
  static constexpr int kOffRopeBar = kOffRopeTable + kRopeTableBytes;  // 3 mbarriers, job (4 B), stop (4 B)
  static constexpr int kSmemBytesRope = kOffRopeBar + 64 + 1024;
  // Registers: the producer warpgroup keeps 24 with or without the fused RoPE (the helpers' loop is written for it),
  // the consumers 240.
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static_assert(kBlockN == kLayoutBlock, "block lists address kv blocks as kernel tiles");
};

// Affine piece of a position map holding local row `row`: pos(row + t) = base + t * step for the rest of the
// chunk. Compile-time chunk indices only (the params live in the parameter bank; no local copy).
struct Affine {
  int64_t base = 0;
  int64_t step = 1;
  int chunk = 0;
};
__host__ __device__ __forceinline__ Affine chunk_affine(const int (&rows)[FwdConfig::kMaxChunks + 1],
                                                        const int64_t (&start)[FwdConfig::kMaxChunks],
                                                        const int64_t (&stride)[FwdConfig::kMaxChunks], int num_chunks,
                                                        int row) {
  Affine a;
#pragma unroll
  for (int c = 1; c < FwdConfig::kMaxChunks; ++c)
    if (c < num_chunks && row >= rows[c]) a.chunk = c;
#pragma unroll
  for (int c = 0; c < FwdConfig::kMaxChunks; ++c)
    if (c == a.chunk) {
      a.step = stride[c];
      a.base = start[c] + static_cast<int64_t>(row - rows[c]) * stride[c];
    }
  return a;
}

// Plan slot layout (kPlanTotal, kPlanSegments, kPlanFirst, kPlanCount) and its walk: flash_fwd_hopper_plan.h.
static_assert(kPlanCount + FwdConfig::kMaxChunks <= FwdConfig::kPlanSlotInts, "the plan fits its slot");
static_assert(kPlanTileRows == FwdConfig::kBlockN && kPlanTileRows == FwdConfig::kBlockM,
              "plan tiles are kernel tiles");

// Which kv tiles a CTA visits (same answer in every thread: producer and consumers walk in lockstep).
struct TilePlan {
  int count = 0;      // tiles to visit
  int first = 0;      // block list: CSR index of the q block's first entry (dense: the segments in shared memory)
  int64_t q_min = 0;  // positions of the tile's first and last valid q rows
  int64_t q_max = 0;
  int64_t q_step = 1;  // q position step inside the tile (its chunk's stride)
};

// chunk_rows (the visible kv rows of one chunk for a q position range): flash_fwd_hopper_plan.h.

// Every thread: q positions and block-list range. Thread 0 (write_segments) also writes the dense plan's per-chunk
// tile segments to shared memory; count is then read back after the first __syncthreads (read_count).
__host__ __device__ __forceinline__ TilePlan make_plan(const FlashFwdHopperParams& p, int m_block) {
  TilePlan t;
  const int m0 = m_block * FwdConfig::kBlockM;
  const int m_last = min(m0 + FwdConfig::kBlockM, p.seqlen_q) - 1;
  const Affine qa = chunk_affine(p.q_row, p.q_start, p.q_stride, p.q_chunks, m0);
  t.q_min = qa.base;
  t.q_max = qa.base + static_cast<int64_t>(m_last - m0) * qa.step;
  t.q_step = qa.step;
  if (p.has_blocks) {
    t.first = p.block_row_offset[m_block];
    t.count = p.block_row_offset[m_block + 1] - t.first;
  }
  return t;
}

#ifdef DISTATTN_HOPPER_DEVICE
// band_lo, band_hi: the mask's band (p.band_lo, p.band_hi), or with the cutoff across merged calls the narrower band
// of merge_cutoff_band.
__device__ __forceinline__ void write_segments(const FlashFwdHopperParams& p, const TilePlan& t, int64_t band_lo,
                                               int64_t band_hi, int* plan) {
  int total = 0;
#pragma unroll
  for (int c = 0; c < FwdConfig::kMaxChunks; ++c) {
    if (c >= p.kv_chunks) break;
    int lo, hi;
    chunk_rows(t.q_min, t.q_max, band_lo, band_hi, p.kv_start[c], p.kv_stride[c], p.kv_row[c],
               p.kv_row[c + 1] - p.kv_row[c], &lo, &hi);
    int first = 0, count = 0;
    if (lo <= hi) {
      first = lo / FwdConfig::kBlockN;
      count = hi / FwdConfig::kBlockN + 1 - first;
    }
    plan[kPlanFirst + c] = first;
    plan[kPlanCount + c] = count;
    total += count;
  }
  plan[kPlanSegments] = p.kv_chunks;
  plan[kPlanTotal] = total;
}

// kv tile of step `it` (walked last to first) and, for block lists, its CSR index.
__device__ __forceinline__ int plan_tile(const FlashFwdHopperParams& p, const TilePlan& t, int it, int* idx,
                                         const int* plan) {
  const int j = t.count - 1 - it;
  *idx = t.first + j;
  if (p.has_blocks) return __ldg(p.block_col_index + t.first + j);
  return plan_segment_tile(plan, it);  // dense: the segments of the plan slot (write_segments, write_cutoff_plan)
}
#endif

// Per-dtype packing and wgmma: hopper_primitives.cuh.
template <typename T>
using TypeOps = WgmmaOps<T>;

// Per-thread softmax state and helpers of a consumer warpgroup (see the kernel below).
// Row-range mask: a thread's row r sees kv rows [kv_lo[r], kv_hi[r]] (band AND row < Skv; empty when
// kv_lo > kv_hi), computed once per unit since one-chunk position maps are affine. On a tile starting at
// n0, acc i of the thread has column n0 + col_base + 8 (i / 4) + (i % 2), so the test per element is one
// compile-time offset against two per-row bounds.
template <bool kBand>
__device__ __forceinline__ void mask_tile(float (&sc)[64], const int (&kv_lo)[2], const int (&kv_hi)[2], int seqlen_kv,
                                          int n0_plus_col) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int lo = kBand ? kv_lo[r] - n0_plus_col : INT32_MIN;
    const int hi = (kBand ? kv_hi[r] : seqlen_kv - 1) - n0_plus_col;
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      if ((i / 2) % 2 != r) continue;
      const int off = 8 * (i / 4) + (i % 2);
      if (off < lo || off > hi) sc[i] = -INFINITY;
    }
  }
}

#ifdef DISTATTN_HOPPER_DEVICE
// Online softmax of one tile: updates row_max / row_sum, turns sc into unnormalised probabilities
// exp2(s * scale_log2 - max * scale_log2) and sets corr, the factor the previous O must be multiplied by.
// Returns false when corr is 1 for every row of the warp (O need not be touched).
// Lazy rescale (kLazy): the reference max of a row moves only when the tile's max exceeds it by more than
// 8 in log2 units (p <= 2^8 then, harmless in fp32 and in bf16/fp16's range); the decision is warp-uniform,
// so most tiles skip the 64 multiplies of O. O and LSE stay exact (the sum uses the same reference).
#ifndef DISTATTN_HOPPER_LAZY
#define DISTATTN_HOPPER_LAZY 1
#endif
// kRowOff (ALiBi): the score of element i is sc[i] + row_off[row of i] (a per-row term of the tile kept out of the
// elements: added to the tile max and folded into the exp's per-row bias).
template <bool kRowOff>
__device__ __forceinline__ bool softmax_tile(float (&sc)[64], float (&row_max)[2], float (&row_sum)[2],
                                             float (&corr)[2], float scale_log2, const float (&row_off)[2]) {
  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int i = 0; i < 64; ++i) tile_max[(i / 2) % 2] = fmaxf(tile_max[(i / 2) % 2], sc[i]);
  bool grow = false;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    // row_off depends on the lane (its columns start at col_base): add it BEFORE the quad reduction, so the four
    // lanes of a row agree on one max (-inf stays -inf).
    if (kRowOff) tile_max[r] += row_off[r];
    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
    grow = grow ||
           (DISTATTN_HOPPER_LAZY ? tile_max[r] * scale_log2 > row_max[r] * scale_log2 + 8.f : tile_max[r] > row_max[r]);
  }
  const bool rescale = __any_sync(0xffffffffu, grow);
  float scaled_max[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rescale) {
      const float new_max = fmaxf(row_max[r], tile_max[r]);
      // A row with nothing visible yet keeps max -inf: use 0 as the reference so no inf - inf appears.
      scaled_max[r] = new_max == -INFINITY ? 0.f : new_max * scale_log2;
      corr[r] = fast_exp2(row_max[r] * scale_log2 - scaled_max[r]);  // 0 when row_max was -inf
      row_max[r] = new_max;
      row_sum[r] *= corr[r];
    } else {
      scaled_max[r] = row_max[r] == -INFINITY ? 0.f : row_max[r] * scale_log2;
      corr[r] = 1.f;
    }
  }
  float bias[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) bias[r] = kRowOff ? fmaf(row_off[r], scale_log2, -scaled_max[r]) : -scaled_max[r];
#pragma unroll
  for (int i = 0; i < 64; ++i) {
    sc[i] = fast_exp2(fmaf(sc[i], scale_log2, bias[(i / 2) % 2]));
    row_sum[(i / 2) % 2] += sc[i];
  }
  return rescale;
}

// Named barriers (ids 1, 2; 0 is __syncthreads) ordering the two consumer warpgroups' wgmma issue
// ("pingpong"): each waits for its turn before issuing a tile's matrix products and hands the turn over
// right after, so one warpgroup's softmax runs while the other's products occupy the tensor cores.
#ifndef DISTATTN_HOPPER_PINGPONG
#define DISTATTN_HOPPER_PINGPONG 1
#endif
// Brings the 128-byte line holding `ptr` into L2 (no register result, nothing waits for it).
__device__ __forceinline__ void prefetch_l2(const void* ptr) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(ptr)); }
__device__ __forceinline__ void named_sync(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void named_arrive(int id) { asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory"); }
#endif

#ifdef DISTATTN_HOPPER_DEVICE
// 1-D bulk copy of `bytes` (a multiple of 16) from global memory to shared memory, completing on mbarrier `bar`.
__device__ __forceinline__ void bulk_load_1d(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

// 32-bit shared-memory accesses at a shared-window address (volatile: the job slot and stop flag are written by other
// threads between the named barriers / polled).
__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.volatile.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void sts32(uint32_t addr, uint32_t v) {
  asm volatile("st.volatile.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

// Fused RoPE (FlashFwdHopperParams, kRope): the producer warpgroup's warps 1-3 (96 threads; warp 0's lane 0 issues
// the attention's loads) rotate q and k in place, one job (32 rows of a kv group: its K head, then its q heads) at a
// time (q only, rope_first_step 1: the job starts at step 1). Per job: the table rows by a 1-D bulk copy; per head
// ("step" s: 0 = K head hkv, s >= 1 = q head hkv * head_group + s - 1) a TMA load into buffer s % 2 (two steps in
// flight), rotation of the NeoX pairs (d, d + 64) in shared memory, a TMA store back; after the last step's store has
// landed, a release increment of the group's count. Claiming stops once the CTA's producer has issued its last load
// (`stop`), so a CTA whose attention is done does not linger on the SM; a producer that waits for a group leaves its
// own helpers claiming, and every claimed job is finished by a running CTA, so every group completes whatever the grid
// (no deadlock). The arithmetic is rope_kernel's (positional/src/rope_kernel.cuh) element for element: the table holds
// the same cos_sin products (rope_prepare), rope_math::rotate, one rounding to T: q and k come out bit-identical.
//   Buffer layout: half hf (d in [64 hf, 64 hf + 64)), row r < 32, 16-byte chunk ch (elements 8 ch .. 8 ch + 7 of the
//   half) at hf * 4 KB + r * 128 + ((ch ^ (r % 8)) << 4); pair i = 8 ch + e joins element e of half 0 and half 1 at
//   the same (r, ch), i.e. the same offset in both halves. Table: row r's pair i at r * 512 + 8 i (float2).
// Register budget: the producer warpgroup runs at 24 registers (the consumers keep 240), so the loop holds little
// state: the job's coordinates, and per item one 16-byte chunk of each half and 16 table bytes at a time; the claimed
// job and the stop flag live in shared memory.
template <typename T>
__device__ __forceinline__ void rope_helpers(const FlashFwdHopperParams& p, uint32_t stage, uint32_t table,
                                             uint32_t bars) {
  using C = FwdConfig;
  constexpr int kHelpers = 96;
  const uint32_t job_slot = bars + 24, stop = bars + 28;  // bars: buffer 0, buffer 1, table mbarriers
  const int ht = static_cast<int>(threadIdx.x) - 32;      // 0 .. 95
  uint32_t phases = 0;                                    // bit b: buffer b's phase; bit 2: the table's
  for (;;) {
    if (ht == 0) {
      // Claims run past the last job by at most one per CTA (unsigned: jobs + grid < 2^32).
      const uint32_t c = lds32(stop) != 0 ? static_cast<uint32_t>(p.rope_jobs) : atomicAdd(p.rope_counters, 1u);
      sts32(job_slot, c < static_cast<uint32_t>(p.rope_jobs) ? c : static_cast<uint32_t>(p.rope_jobs));
    }
    bwd_named_sync<kHelpers>(3);  // also: every helper is done with the previous job's table and buffers
    const int j = static_cast<int>(lds32(job_slot));
    if (j >= p.rope_jobs) break;
    const int group = j / p.rope_group_jobs;
    const int row0 = (j - group * p.rope_group_jobs) * C::kRopeRows;
    // Step s -> buffer s % 2: s = 0 the kv head (group % Hkv) of k, s >= 1 q head (group % Hkv) * head_group + s - 1;
    // batch group / Hkv.
    // Tensor map, head and batch of step s (recomputed where used: registers are scarce).
    auto step_coords = [&](int s, const CUtensorMap** map, int* head, int* b) {
      const int heads_kv = p.heads_q / p.head_group;
      *b = group / heads_kv;
      const int hkv = group - *b * heads_kv;
      *map = s == 0 ? &p.tmap_rk : &p.tmap_rq;
      *head = s == 0 ? hkv : hkv * p.head_group + s - 1;
    };
    auto load_step = [&](int s) {
      const CUtensorMap* map;
      int head, b;
      step_coords(s, &map, &head, &b);
      const uint32_t buf = stage + (s & 1) * C::kRopeBufBytes, bar = bars + 8 * (s & 1);
      mbar_arrive_expect_tx(bar, C::kRopeBufBytes);
      tma_load_4d(buf, map, bar, 0, row0, head, b);
      tma_load_4d(buf + C::kRopeHalfBytes, map, bar, 64, row0, head, b);
    };
    auto store_step = [&](int s) {
      const CUtensorMap* map;
      int head, b;
      step_coords(s, &map, &head, &b);
      const uint32_t buf = stage + (s & 1) * C::kRopeBufBytes;
      tma_store_4d(map, buf, 0, row0, head, b);
      tma_store_4d(map, buf + C::kRopeHalfBytes, 64, row0, head, b);
    };
    if (ht == 0) {
      const uint32_t bytes = static_cast<uint32_t>(min(C::kRopeRows, p.seqlen_q - row0)) * 512u;
      mbar_arrive_expect_tx(bars + 16, bytes);
      bulk_load_1d(table, p.rope_cs + static_cast<int64_t>(row0) * 64, bytes, bars + 16);
      load_step(p.rope_first_step);
      if (p.rope_first_step + 1 <= p.head_group) load_step(p.rope_first_step + 1);
    }
    mbar_wait(bars + 16, (phases >> 2) & 1u);
    phases ^= 4u;
    const int words = min(C::kRopeRows, p.seqlen_q - row0) * 32;  // rows past S stay as loaded (not stored)
    for (int s = p.rope_first_step; s <= p.head_group; ++s) {
      const uint32_t bi = static_cast<uint32_t>(s & 1);
      const uint32_t buf = stage + bi * C::kRopeBufBytes;
      mbar_wait(bars + 8 * bi, (phases >> bi) & 1u);
      phases ^= 1u << bi;
      // Item = (row r, 16-byte chunk ch): 8 elements of each half, pairs 8 ch .. 8 ch + 7; the table's 64 bytes of the
      // chunk in four 16-byte loads (word q: pairs 8 ch + 2q (cos .x, sin .y) and 8 ch + 2q + 1 (.z, .w)). A warp
      // covers four rows' 128 bytes each (no bank conflict).
      for (int item = ht; item < words / 4; item += kHelpers) {
        const int r = item >> 3, ch = item & 7;
        const uint32_t off = static_cast<uint32_t>(r * 128 + ((ch ^ (r & 7)) << 4));
        const uint32_t cs = table + static_cast<uint32_t>(r * 512 + ch * 64);
        uint4 x1 = lds128(buf + off);
        uint4 x2 = lds128(buf + C::kRopeHalfBytes + off);
        auto rotate_word = [&](uint32_t& w1, uint32_t& w2, uint32_t cs_addr) {
          const uint4 tw = lds128(cs_addr);
          const float2 a = TypeOps<T>::unpack(w1), bb = TypeOps<T>::unpack(w2);
          float ya0, yb0, ya1, yb1;
          rope_math::rotate(a.x, bb.x, __uint_as_float(tw.x), __uint_as_float(tw.y), &ya0, &yb0);
          rope_math::rotate(a.y, bb.y, __uint_as_float(tw.z), __uint_as_float(tw.w), &ya1, &yb1);
          w1 = TypeOps<T>::pack(ya0, ya1);
          w2 = TypeOps<T>::pack(yb0, yb1);
        };
        rotate_word(x1.x, x2.x, cs);
        rotate_word(x1.y, x2.y, cs + 16);
        rotate_word(x1.z, x2.z, cs + 32);
        rotate_word(x1.w, x2.w, cs + 48);
        sts128(buf + off, x1);
        sts128(buf + C::kRopeHalfBytes + off, x2);
      }
      fence_proxy_async_all();  // this thread's shared stores before the TMA store reads them
      bwd_named_sync<kHelpers>(3);
      if (ht == 0) {
        store_step(s);
        bulk_commit_group();
        if (s + 2 <= p.head_group) {
          bulk_wait_read<0>();  // the store has read the buffer: step s + 2 may land in it
          load_step(s + 2);
        }
      }
    }
    if (ht == 0) {
      bulk_wait_group_all();  // every store of the job has written global memory
      fence_proxy_async_all();
      __threadfence();
      release_add_gpu(p.rope_counters + 1 + group, 1u);
    }
  }
}

// Producer side of the fused RoPE: waits until every job of kv group `group` is finished, then orders the TMA loads
// that follow after the helpers' TMA stores.
__device__ __forceinline__ void rope_wait_group(const FlashFwdHopperParams& p, int group) {
  const uint32_t* count = p.rope_counters + 1 + group;
  while (ld_acquire_gpu(count) < static_cast<uint32_t>(p.rope_group_jobs)) __nanosleep(200);
  fence_proxy_async_all();
}
#endif

template <typename T, bool kAlibi, bool kRope>
__global__ void __launch_bounds__(FwdConfig::kThreads, 1)
    flash_fwd_hopper_kernel(const __grid_constant__ FlashFwdHopperParams p) {
#ifdef DISTATTN_HOPPER_DEVICE
  using C = FwdConfig;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t smem_base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sQ = smem_base;
  const uint32_t sK = smem_base + C::kOffK;
  const uint32_t sV = smem_base + C::kOffV;
  const uint32_t bar_q = smem_base + C::kOffBar;
  const uint32_t bar_full_k = bar_q + 8;                      // [kStages]
  const uint32_t bar_full_v = bar_full_k + 8 * C::kStages;    // [kStages]
  const uint32_t bar_empty_k = bar_full_v + 8 * C::kStages;   // [kStages]
  const uint32_t bar_empty_v = bar_empty_k + 8 * C::kStages;  // [kStages]
  const uint32_t bar_q_empty = bar_empty_v + 8 * C::kStages;  // both consumers finished their last S of a unit
  uint8_t* const smem_ptr = smem_raw + (smem_base - smem_u32(smem_raw));
  int* const plan_slots = reinterpret_cast<int*>(smem_ptr + C::kOffPlan);        // [2][kPlanSlotInts]
  int2* const bounds = reinterpret_cast<int2*>(smem_ptr + C::kOffBounds);        // [kMaxChunks][kBlockM]
  long long* const dref = reinterpret_cast<long long*>(smem_ptr + C::kOffDref);  // [kBlockM] ALiBi D0

  const int warpgroup = threadIdx.x / 128;
  const int cta = static_cast<int>(blockIdx.x);
  const int grid = static_cast<int>(gridDim.x);
  if (threadIdx.x == 0) {
    mbar_init(bar_q, 1);
    for (int s = 0; s < C::kStages; ++s) {
      mbar_init(bar_full_k + 8 * s, 1);
      mbar_init(bar_full_v + 8 * s, 1);
      mbar_init(bar_empty_k + 8 * s, 8);  // one arrival per consumer warp
      mbar_init(bar_empty_v + 8 * s, 8);
    }
    mbar_init(bar_q_empty, 8);
    if constexpr (kRope) {
      for (int i = 0; i < 3; ++i) mbar_init(smem_base + C::kOffRopeBar + 8 * i, 1);
      *reinterpret_cast<volatile int*>(smem_ptr + C::kOffRopeBar + 28) = 0;  // stop flag (rope_helpers)
    }
    mbar_init_fence();
  }
  __syncthreads();
  // Fused RoPE: the launch may start while rope_prepare (table, counters, the first groups' rotation) still runs
  // (programmatic dependent launch); nothing global is read or written before that grid is complete.
  if constexpr (kRope) asm volatile("griddepcontrol.wait;\n" ::: "memory");

  // Producer and consumers walk the same units (flash_fwd_hopper_scheduler.h) and count, across units, the units
  // done (k: unit k waits bar_q with parity k & 1 and uses plan slot k % 2) and the kv tiles done (g: tile it of a
  // unit uses the ring position g + it: stage (g + it) % kStages, use (g + it) / kStages), so the barrier phases
  // continue from one unit to the next and the producer runs ahead into the next unit while the consumers finish
  // the current one (its last P V and epilogue overlap the next unit's Q, K and V loads).
  if (warpgroup == 0) {
    // ---------------------------------------------------------------- producer
    // Per unit: wait until the consumers' last S of the previous unit is done (Q buffer free, and the plan slot
    // about to be rewritten was last read two units ago), write the dense plan to slot k % 2, load Q (or just
    // arrive on bar_q when the unit visits no tile), then K(0), K(it), V(it - 1) for it = 1.., V(last): the
    // consumers need K(it) and V(it - 1) in the same iteration (S of tile it overlaps P V of tile it - 1). Ring
    // position j = g + it waits, from its second use on, until both consumers released that stage's K (resp. V).
    regs_decrease<C::kProducerRegs>();
    if (kRope && threadIdx.x >= 32) {
      rope_helpers<T>(p, smem_base + C::kOffRopeStage, smem_base + C::kOffRopeTable, smem_base + C::kOffRopeBar);
      return;
    }
    if (threadIdx.x == 0) {
      tma_prefetch_desc(&p.tmap_q);
      tma_prefetch_desc(&p.tmap_k);
      tma_prefetch_desc(&p.tmap_v);
      int g = 0;
      int rope_ready_group = -1;  // fused RoPE: the last kv group seen finished
      UnitWalk walk;
      WorkUnit u;
      for (int k = 0; walk.next(p, cta, grid, &u); ++k) {
        const int h_kv = u.h / p.head_group;
        TilePlan plan = make_plan(p, u.m_block);
        int* const tile_plan = plan_slots + (k & 1) * C::kPlanSlotInts;
        // ALiBi cutoff (flash_fwd_hopper_plan.h): the unit's q tile norm, its kv head's key norm and its slope, loaded
        // before the wait below so that their latency hides behind it.
        float cut_q = 0.f, cut_k = 0.f, cut_slope = 0.f;
        if (kAlibi && p.alibi_cutoff != 0) {
          // q_norm_sq_max [B, Hq, M], kv_norm_sq_max [B, Hkv]
          cut_q = __ldg(p.q_norm_sq_max + (static_cast<int64_t>(u.b) * p.heads_q + u.h) * p.num_m_blocks + u.m_block);
          const int64_t kv_at = static_cast<int64_t>(u.b) * (p.heads_q / p.head_group) + h_kv;
          cut_k = __ldg(p.kv_norm_sq_max + kv_at);
          // Mode 3 compares with the own key, which lies in another call: the larger key norm bounds both dots.
          if (p.alibi_cutoff == 3) cut_k = fmaxf(cut_k, __ldg(p.own_kv_norm_sq_max + kv_at));
          cut_slope = __ldg(p.alibi_slopes + u.h);
        }
        if (k > 0) mbar_wait(bar_q_empty, (k - 1) & 1);
        if (!p.has_blocks) {
          if (kAlibi && p.alibi_cutoff == 3) {
            // Across merged calls: the mask's band narrowed to the bound's distance in positions (stride 1).
            const int dist = p.alibi_cutoff_skip ? alibi_cutoff_rows(p.scale_log2, 1, cut_q, cut_k, cut_slope) : -1;
            int64_t band_lo, band_hi;
            merge_cutoff_band(p.band_lo, p.band_hi, dist, &band_lo, &band_hi);
            write_segments(p, plan, band_lo, band_hi, tile_plan);
          } else if (kAlibi && p.alibi_cutoff != 0) {
            // One kv chunk equal to the q chunk (the cutoff's premise): the q tile's visible kv rows [lo, hi], less
            // the tiles whose exp2 underflows for every element, walked diagonal tile first.
            const int rows =
                p.alibi_cutoff_skip ? alibi_cutoff_rows(p.scale_log2, p.q_stride[0], cut_q, cut_k, cut_slope) : -1;
            int lo, hi;
            chunk_rows(plan.q_min, plan.q_max, p.band_lo, p.band_hi, p.kv_start[0], p.kv_stride[0], p.kv_row[0],
                       p.kv_row[1] - p.kv_row[0], &lo, &hi);
            write_cutoff_plan(u.m_block, lo, hi, rows, tile_plan);
          } else {
            write_segments(p, plan, p.band_lo, p.band_hi, tile_plan);
          }
          plan.count = tile_plan[kPlanTotal];
        }
        if (plan.count == 0) {
          mbar_arrive(bar_q);  // release: the consumers read the plan (count 0) after their wait
          continue;
        }
        // Fused RoPE: the unit's Q tile and its kv head's K tiles must be rotated (its kv group finished) first.
        if constexpr (kRope) {
          const int group = u.b * (p.heads_q / p.head_group) + h_kv;
          if (group >= p.rope_pre_groups && group != rope_ready_group) {
            rope_wait_group(p, group);
            rope_ready_group = group;
          }
        }
        // Q tile prologue: Q of the unit lands in sQ; the consumers wait on bar_q before their first S.
        const int m0 = u.m_block * C::kBlockM;
        mbar_arrive_expect_tx(bar_q, C::kQBytes);
        tma_load_4d(sQ, &p.tmap_q, bar_q, 0, m0, u.h, u.b);
        tma_load_4d(sQ + C::kHalfQBytes, &p.tmap_q, bar_q, 64, m0, u.h, u.b);
        auto load = [&](int it, uint32_t smem, const CUtensorMap* map, uint32_t full, uint32_t empty) {
          const int j = g + it;
          const int s = j % C::kStages;
          const int use = j / C::kStages;
          if (use > 0) mbar_wait(empty + 8 * s, (use - 1) & 1);
          int idx;
          const int n0 = plan_tile(p, plan, it, &idx, tile_plan) * C::kBlockN;
          const uint32_t dst = smem + s * C::kKVBytes;
          mbar_arrive_expect_tx(full + 8 * s, C::kKVBytes);
          tma_load_4d(dst, map, full + 8 * s, 0, n0, h_kv, u.b);
          tma_load_4d(dst + C::kHalfKVBytes, map, full + 8 * s, 64, n0, h_kv, u.b);
        };
        load(0, sK, &p.tmap_k, bar_full_k, bar_empty_k);
        for (int it = 1; it < plan.count; ++it) {
          load(it, sK, &p.tmap_k, bar_full_k, bar_empty_k);
          load(it - 1, sV, &p.tmap_v, bar_full_v, bar_empty_v);
        }
        load(plan.count - 1, sV, &p.tmap_v, bar_full_v, bar_empty_v);
        g += plan.count;
      }
      // Every load issued: the helpers claim no more jobs (fused RoPE), so the CTA leaves with its consumers; except in
      // the last CTA to get here (rope_counters[1 + groups] counts them), whose helpers claim until the jobs run out,
      // so that every job runs even when no unit waits for the trailing groups (units without a tile).
      if constexpr (kRope) {
        const int groups = p.rope_jobs / p.rope_group_jobs;
        const uint32_t done = atomicAdd(p.rope_counters + 1 + groups, 1u) + 1u;
        if (done < gridDim.x) *reinterpret_cast<volatile int*>(smem_ptr + C::kOffRopeBar + 28) = 1;
      }
    }
    return;
  }

  // ------------------------------------------------------------------ consumers
  // Iteration it (>= 1) of a unit's main loop: issue S(it) = Q K(it)^T and O += P(it - 1) V(it - 1) back to back
  // (two wgmma batches in flight), wait for S(it) only, run the mask and softmax of tile it while the tensor
  // cores do P V, then wait for P V, rescale O by the new maxima and pack P(it). The last P V runs after the
  // loop. K(it) is released as soon as S(it) is done, V(it - 1) after P V, Q after the unit's last S.
  regs_increase<C::kConsumerRegs>();
  const int cw = warpgroup - 1;  // consumer warpgroup: q rows [64 cw, 64 cw + 64) of the tile
  const int tid = threadIdx.x % 128;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int row0 = cw * 64 + warp * 16 + lane / 4;  // this thread's rows in the tile: row0, row0 + 8
  const int col_base = 2 * (lane % 4);              // column of acc[4 c] within n8 chunk c is 8 c + col_base
  const float scale_log2 = p.scale_log2;
  // Descriptors. Q (A, K-major): this warpgroup's 64 rows start 64 * 128 bytes into each half.
  const uint64_t desc_q = make_desc_sw128(sQ + cw * 64 * 128, 16, 1024);
  // Pingpong turns: consumer cw waits on barrier 1 + cw, then arrives on the other's. The turns run on across units
  // (both consumers take plan.count + 1 turns per unit), so at a unit boundary consumer 0 issues the next unit's
  // first S while consumer 1 still does its last P V and epilogue: the two stay half a step apart instead of both
  // draining at once. Consumer 1 hands the very first turn to consumer 0, and consumer 0 takes one extra turn after
  // its last unit to consume consumer 1's last hand-over (no barrier is left half-arrived at exit).
  const bool pingpong = DISTATTN_HOPPER_PINGPONG != 0;
#ifndef DISTATTN_HOPPER_S_FIRST
#define DISTATTN_HOPPER_S_FIRST 1
#endif
  constexpr bool kSFirst = DISTATTN_HOPPER_S_FIRST != 0;
  // MASK_EARLY (default 1; 0 for A/B): a tile's mask is decided from positions (mask_prep) before waiting for its S,
  // so that work overlaps the product. On an H200 (session 14, five interleaved rounds, 8K..64K, causal, ALiBi and
  // not): -0.2% to -0.6%, every case the same sign (bench/results/2026-11-23_h200_s14_softmax_ab).
#ifndef DISTATTN_HOPPER_MASK_EARLY
#define DISTATTN_HOPPER_MASK_EARLY 1
#endif
  constexpr bool kMaskEarly = DISTATTN_HOPPER_MASK_EARLY != 0;
  auto turn_begin = [&]() {
    if (pingpong) named_sync(1 + cw);
  };
  auto turn_end = [&]() {
    if (pingpong) named_arrive(2 - cw);
  };

  if (pingpong && cw == 1) named_arrive(1);
  int g = 0;  // kv tiles of the previous units (ring position of this unit's tile 0)
  UnitWalk walk;
  WorkUnit u;
  for (int k = 0; walk.next(p, cta, grid, &u); ++k) {  // k: units done
    const int h = u.h;
    const int b = u.b;
    const int m0 = u.m_block * C::kBlockM;
    TilePlan plan = make_plan(p, u.m_block);
    const int* const tile_plan = plan_slots + (k & 1) * C::kPlanSlotInts;

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY};  // running max of the raw q.k per row (unscaled)
    float row_sum[2] = {0.f, 0.f};              // this thread's partial sums of exp2(q.k * scale_log2 - max)

    // Accumulate mode: the epilogue reads this unit's old O rows where their running LSE is finite (rows at -inf
    // hold no accumulation yet and are never read). Lane 0 of each quad loads its two rows' LSE now and, after the
    // Q wait (the load's latency hides behind the mask table and the wait), prefetches those O rows to L2 so the
    // read-modify-write at the end of the unit does not wait for DRAM (512 bytes per fp32 row = four 128-byte lines).
    float lse_pf[2] = {-INFINITY, -INFINITY};
    if (p.accumulate && (lane % 4) == 0) {
      const float* lse_rows =
          p.lse_ptr + static_cast<int64_t>(b) * p.lse_batch_stride + static_cast<int64_t>(h) * p.lse_head_stride;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = m0 + row0 + 8 * r;
        if (row < p.seqlen_q) lse_pf[r] = __ldcg(lse_rows + static_cast<int64_t>(row) * p.lse_row_stride);
      }
    }

    // Row-range mask table: visible kv rows of this thread's two rows inside each kv chunk (band and chunk end,
    // hence Skv for the last chunk), written once per unit by lane 0 of each quad (the quad shares the rows; only
    // this warp reads them) and read back only on tiles that need the band mask. The first __syncwarp keeps the
    // previous unit's reads before the overwrite.
    __syncwarp();
    if ((lane % 4) == 0) {
#pragma unroll
      for (int c = 0; c < C::kMaxChunks; ++c) {
        if (c >= p.kv_chunks) break;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = row0 + 8 * r;
          const int64_t pos_q = plan.q_min + static_cast<int64_t>(row) * plan.q_step;
          int lo, hi;
          chunk_rows(pos_q, pos_q, p.band_lo, p.band_hi, p.kv_start[c], p.kv_stride[c], p.kv_row[c],
                     p.kv_row[c + 1] - p.kv_row[c], &lo, &hi);
          bounds[c * C::kBlockM + row] = make_int2(lo, hi);
          if (kAlibi) {
            // Nearest visible key of this chunk: local row floor((pos_q - start) / stride) or the next, clamped to
            // [lo, hi]; D0 = min over the chunks (0 for a row with nothing visible: it stays O = 0, LSE = -inf).
            if (c == 0) dref[row] = INT64_MAX;
            if (lo <= hi) {
              const int64_t start = p.kv_start[c], stride = p.kv_stride[c];
              const int64_t x = pos_q - start;
              const int64_t jf = x < 0 ? -1 : (stride == 1 ? x : x / stride);  // local row in the chunk
              const int64_t lo_l = lo - p.kv_row[c], hi_l = hi - p.kv_row[c];
              const int64_t ja = min(max(jf, lo_l), hi_l), jb = min(max(jf + 1, lo_l), hi_l);
              const int64_t da = pos_q - (start + ja * stride), db = pos_q - (start + jb * stride);
              const int64_t d = min(da < 0 ? -da : da, db < 0 ? -db : db);
              if (d < dref[row]) dref[row] = d;
            }
            if (c + 1 == p.kv_chunks && dref[row] == INT64_MAX) dref[row] = 0;
          }
        }
      }
    }
    __syncwarp();
    // ALiBi constants of this head (q.k units).
    const float alibi_slope = kAlibi ? __ldg(p.alibi_slopes + h) : 0.f;
    const float alibi_coef = kAlibi ? -alibi_slope / p.softmax_scale : 0.f;

    // Q tile prologue: the producer arrives on bar_q once per unit (with Q's bytes when the unit visits a tile);
    // after the wait, Q is in sQ and the unit's dense plan is in its slot.
    mbar_wait(bar_q, k & 1);
    if (!p.has_blocks) plan.count = tile_plan[kPlanTotal];
    // Accumulate mode: the old LSE of this thread's two rows (lse_pf of the quad's lane 0; this unit is the only writer
    // of its rows in the launch, so it is the value the epilogue merges with) and the old fp32 O where it is finite
    // (-inf rows hold no accumulation and are never read), both rows prefetched to L2 now. Row 0 (row0) is loaded
    // into registers right after the unit's last P V is issued (load_old_row0: that wgmma's latency hides the load;
    // registers for both rows would spill), row 1 at the start of the epilogue, before any store.
    // (Measured on an H200, dilated causal 16K: +1.5% from row 0's early load; staging row 1 in shared memory by
    // cp.async at the unit start gained nothing and the larger shared memory slowed plain launches by ~1.5%.)
    float lse_old[2] = {-INFINITY, -INFINITY};
    const float* const o_old = static_cast<const float*>(p.o_ptr) + static_cast<int64_t>(b) * p.o_batch_stride +
                               static_cast<int64_t>(h) * p.o_head_stride + col_base;
    if (p.accumulate) {
#pragma unroll
      for (int r = 0; r < 2; ++r) lse_old[r] = __shfl_sync(0xffffffffu, lse_pf[r], lane & ~3);  // -inf: rows >= Sq
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (lse_old[r] == -INFINITY || (lane % 4) != 0) continue;
        const float* o_row = o_old - col_base + static_cast<int64_t>(m0 + row0 + 8 * r) * p.o_row_stride;
#pragma unroll
        for (int line = 0; line < 4; ++line) prefetch_l2(o_row + 32 * line);
      }
    }
    float2 old0[16];  // row 0's old O (load_old_row0)
    auto load_old_row0 = [&]() {
      if (!p.accumulate) return;
      const float* o_row = o_old + static_cast<int64_t>(m0 + row0) * p.o_row_stride;
      const bool finite = lse_old[0] != -INFINITY;
#pragma unroll
      for (int c = 0; c < 16; ++c)
        old0[c] = finite ? __ldcg(reinterpret_cast<const float2*>(o_row + 8 * c)) : make_float2(0.f, 0.f);
    };

    float sc[64];
    uint32_t pa[32];
    auto issue_s = [&](int s) {
      const uint64_t desc_k = make_desc_sw128(sK + s * C::kKVBytes, 16, 1024);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        // step kk: half kk / 4 of the head dim, 32 bytes per 16 elements inside the half.
        const uint32_t off_q = ((kk / 4) * C::kHalfQBytes + (kk % 4) * 32) >> 4;
        const uint32_t off_k = ((kk / 4) * C::kHalfKVBytes + (kk % 4) * 32) >> 4;
        TypeOps<T>::mma_ss(sc, desc_q + off_q, desc_k + off_k, kk > 0 ? 1 : 0);
      }
      wgmma_commit();
    };
    auto issue_pv = [&](int s) {
      // k over the tile's kv rows in 8 steps of 16 rows (2048 bytes each); B = V, MN-major.
      const uint64_t desc_v = make_desc_sw128(sV + s * C::kKVBytes, C::kHalfKVBytes, 1024);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        const uint32_t a[4] = {pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3]};
        TypeOps<T>::mma_rs(o, a, desc_v + ((kk * 2048) >> 4), 1);
      }
      wgmma_commit();
    };
    // Mask of tile `it` where needed: partial band (classify_tile on the position ranges; FULL blocks of a
    // block list never), or the tile crossing Skv. mask_prep decides from positions alone (no S), so with
    // MASK_EARLY it runs while S is still in flight; mask_apply changes the scores.
    float row_off[2] = {0.f, 0.f};  // ALiBi: the tile's per-row score term (softmax_tile<kAlibi>)
    int mk_n0 = 0;                  // the tile's first kv row
    bool mk_band = false;           // band mask per element (bounds in mk_lo / mk_hi)
    bool mk_skv = false;            // only the Skv bound
    int mk_lo[2] = {0, 0}, mk_hi[2] = {0, 0};
    int mk_sigma = 0;               // ALiBi: sign of pos_q - pos_k over the tile (0: straddles the diagonal)
    float mk_kcol = 0.f;            // ALiBi, one-sign tile: score term per column offset
    float mk_kstep = 0.f;           // ALiBi, straddling tile: kv position step
    float mk_drow[2] = {0.f, 0.f};  // ALiBi, straddling tile: pos_q - pos_k of this thread's column 0, per row
    float mk_d0[2] = {0.f, 0.f};    // ALiBi, straddling tile: the row's D0 (clamped)
    auto mask_prep = [&](int it) {
      int idx;
      const int n0 = plan_tile(p, plan, it, &idx, tile_plan) * C::kBlockN;
      const int k_last = min(n0 + C::kBlockN, p.seqlen_kv) - 1;
      // The tile lies in one kv chunk (boundaries are tile multiples): its positions are affine.
      const Affine ka = chunk_affine(p.kv_row, p.kv_start, p.kv_stride, p.kv_chunks, n0);
      const int64_t k_min = ka.base;
      const int64_t k_max = ka.base + static_cast<int64_t>(k_last - n0) * ka.step;
      const DiagonalBand band{p.band_lo, p.band_hi};
      const bool full = classify_tile(band, plan.q_min, plan.q_max, k_min, k_max) == TileVisibility::kFull;
      const bool band_mask = p.has_blocks ? (__ldg(p.block_row_partial + idx) != 0 && !full) : !full;
      mk_n0 = n0;
      mk_band = band_mask;
      mk_skv = !band_mask && n0 + C::kBlockN > p.seqlen_kv;
      if (band_mask) {
        const int2 b0 = bounds[ka.chunk * C::kBlockM + row0];
        const int2 b1 = bounds[ka.chunk * C::kBlockM + row0 + 8];
        mk_lo[0] = b0.x, mk_lo[1] = b1.x, mk_hi[0] = b0.y, mk_hi[1] = b1.y;
      }
      if constexpr (kAlibi) {
        // Bias (see the header): one-sign tiles split into row_off (per row) + c * kcol (per element); tiles
        // straddling pos_q == pos_k take |d| per element. Elements masked below get -inf regardless.
        const int64_t d_lo = plan.q_min - k_max, d_hi = plan.q_max - k_min;  // range of pos_q - pos_k over the tile
        const int sigma = d_lo >= 0 ? 1 : (d_hi <= 0 ? -1 : 0);
        const int64_t k_col = ka.base + static_cast<int64_t>(col_base) * ka.step;  // pos_k of this thread's col 0
        mk_sigma = sigma;
        if (sigma != 0) {
          mk_kcol = -alibi_coef * static_cast<float>(sigma) * static_cast<float>(ka.step);
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int row = row0 + 8 * r;
            const int64_t pos_q = plan.q_min + static_cast<int64_t>(row) * plan.q_step;
            const int64_t e_row = sigma * (pos_q - k_col) - dref[row];
            row_off[r] = alibi_coef * static_cast<float>(e_row);
          }
        } else {
          mk_kstep = static_cast<float>(ka.step);
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int row = row0 + 8 * r;
            const int64_t pos_q = plan.q_min + static_cast<int64_t>(row) * plan.q_step;
            // Straddling tile: |pos_q - k_col| is within the tile's span (exact in fp32); D0 <= the row's |d| on
            // any visible key here, so |d| - D0 is exact too (a row with no visible key here is all masked).
            mk_drow[r] = static_cast<float>(pos_q - k_col);
            mk_d0[r] = static_cast<float>(min(dref[row], static_cast<long long>(1 << 24)));
            row_off[r] = 0.f;
          }
        }
      }
    };
    auto mask_apply = [&]() {
      if constexpr (kAlibi) {
        if (mk_sigma != 0) {
#pragma unroll
          for (int i = 0; i < 64; ++i) sc[i] = fmaf(static_cast<float>(8 * (i / 4) + (i % 2)), mk_kcol, sc[i]);
        } else {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
#pragma unroll
            for (int i = 0; i < 64; ++i) {
              if ((i / 2) % 2 != r) continue;
              const float d = fmaf(-static_cast<float>(8 * (i / 4) + (i % 2)), mk_kstep, mk_drow[r]);
              sc[i] = fmaf(fabsf(d) - mk_d0[r], alibi_coef, sc[i]);
            }
          }
        }
      }
      if (mk_band) {
        mask_tile<true>(sc, mk_lo, mk_hi, p.seqlen_kv, mk_n0 + col_base);
      } else if (mk_skv) {
        const int unused[2] = {0, 0};
        mask_tile<false>(sc, unused, unused, p.seqlen_kv, mk_n0 + col_base);
      }
    };
    auto pack_p = [&]() {
    // P as the A operand: k step kk covers columns [16 kk, 16 kk + 16) = n8 chunks 2 kk, 2 kk + 1.
#pragma unroll
      for (int j = 0; j < 32; ++j) pa[j] = TypeOps<T>::pack(sc[2 * j], sc[2 * j + 1]);
    };

    if (plan.count > 0) {
      // Tile 0: S, softmax, P (O is still 0: no rescale).
      const int s0 = g % C::kStages;
      mbar_wait(bar_full_k + 8 * s0, (g / C::kStages) & 1);
      turn_begin();
      issue_s(s0);
      turn_end();
      if (kMaskEarly) mask_prep(0);
      wgmma_wait<0>();
      fence_regs(sc);
      __syncwarp();
      if (lane == 0) {
        mbar_arrive(bar_empty_k + 8 * s0);
        if (plan.count == 1) mbar_arrive(bar_q_empty);  // the unit's last S is done: Q may be refilled
      }
      if (!kMaskEarly) mask_prep(0);
      mask_apply();
      float corr[2];
      softmax_tile<kAlibi>(sc, row_max, row_sum, corr, scale_log2, row_off);
      pack_p();

      for (int it = 1; it < plan.count; ++it) {
        const int j = g + it;  // ring position of tile it; tile it - 1 sits at j - 1
        const int s = j % C::kStages;
        const int ps = (j - 1) % C::kStages;
        mbar_wait(bar_full_k + 8 * s, (j / C::kStages) & 1);
        turn_begin();
        if (!kSFirst) mbar_wait(bar_full_v + 8 * ps, ((j - 1) / C::kStages) & 1);
        issue_s(s);
        // S is issued before waiting for V(it - 1) (kSFirst): a late V then costs nothing while S runs.
        if (kSFirst) mbar_wait(bar_full_v + 8 * ps, ((j - 1) / C::kStages) & 1);
        issue_pv(ps);
        turn_end();
        if (kMaskEarly) mask_prep(it);  // positions only: overlaps S
        wgmma_wait<1>();                // S(it) done; P V (it - 1) may still run
        fence_regs(sc);
        __syncwarp();
        if (lane == 0) {
          mbar_arrive(bar_empty_k + 8 * s);
          if (it + 1 == plan.count) mbar_arrive(bar_q_empty);  // the unit's last S is done
        }
        if (!kMaskEarly) mask_prep(it);
        mask_apply();
        const bool rescale = softmax_tile<kAlibi>(sc, row_max, row_sum, corr, scale_log2, row_off);
        wgmma_wait<0>();  // P V (it - 1) done: O and the P registers are free
        fence_regs(o);
        fence_regs(pa);
        __syncwarp();
        if (lane == 0) mbar_arrive(bar_empty_v + 8 * ps);
        if (rescale) {
#pragma unroll
          for (int i = 0; i < 64; ++i) o[i] *= corr[(i / 2) % 2];
        }
        pack_p();
      }
      const int last = g + plan.count - 1;
      mbar_wait(bar_full_v + 8 * (last % C::kStages), (last / C::kStages) & 1);
      turn_begin();
      issue_pv(last % C::kStages);
      turn_end();
      load_old_row0();  // overlaps the last P V
      wgmma_wait<0>();
      fence_regs(o);
      fence_regs(pa);
      __syncwarp();
      // V(last) is released too: the producer's next unit reuses the stage.
      if (lane == 0) mbar_arrive(bar_empty_v + 8 * (last % C::kStages));
      g += plan.count;
    } else {
      // Nothing to visit: Q was not loaded, but the producer's next unit waits for this unit's release.
      __syncwarp();
      if (lane == 0) mbar_arrive(bar_q_empty);
      load_old_row0();
    }

    // ---- epilogue: normalise, write O and LSE (overlaps the producer's loads for the next unit).
    float inv[2], lse[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      inv[r] = l > 0.f ? 1.f / l : 0.f;
      // natural-log LSE = ln 2 * (max * scale_log2 + log2 l); rows with nothing visible: -inf.
      lse[r] = l > 0.f ? 0.6931471805599453f * (row_max[r] * scale_log2 + __log2f(l)) : -INFINITY;
      // ALiBi: the scores were t - coef D0(row); LSE = LSE' + softmax_scale coef D0 = LSE' - slope D0 (double: D0
      // may be ~2^31).
      if (kAlibi && l > 0.f)
        lse[r] = static_cast<float>(static_cast<double>(lse[r]) -
                                    static_cast<double>(alibi_slope) * static_cast<double>(dref[row0 + 8 * r]));
    }
    const int64_t o_off = static_cast<int64_t>(b) * p.o_batch_stride + static_cast<int64_t>(h) * p.o_head_stride;
    float* lse_base = p.lse_ptr != nullptr ? p.lse_ptr + static_cast<int64_t>(b) * p.lse_batch_stride +
                                                 static_cast<int64_t>(h) * p.lse_head_stride
                                           : nullptr;
    // acc o[4 c + 2 r + e] is (row row0 + 8 r, column 8 c + col_base + e).
    if (!p.accumulate) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = m0 + row0 + 8 * r;
        if (row >= p.seqlen_q) continue;
        if (!p.o_fp32) {
          T* o_row = static_cast<T*>(p.o_ptr) + o_off + static_cast<int64_t>(row) * p.o_row_stride + col_base;
#pragma unroll
          for (int c = 0; c < 16; ++c) {
            const uint32_t v = TypeOps<T>::pack(o[4 * c + 2 * r] * inv[r], o[4 * c + 2 * r + 1] * inv[r]);
            *reinterpret_cast<uint32_t*>(o_row + 8 * c) = v;
          }
        } else {
          float* o_row = static_cast<float*>(p.o_ptr) + o_off + static_cast<int64_t>(row) * p.o_row_stride + col_base;
#pragma unroll
          for (int c = 0; c < 16; ++c)
            *reinterpret_cast<float2*>(o_row + 8 * c) =
                make_float2(o[4 * c + 2 * r] * inv[r], o[4 * c + 2 * r + 1] * inv[r]);
        }
        if (lse_base != nullptr && (lane % 4) == 0) lse_base[static_cast<int64_t>(row) * p.lse_row_stride] = lse[r];
      }
    } else {
      // Merge into the fp32 accumulator: L = logaddexp(lse, LSE_b); o = o e^(lse - L) + O_b e^(LSE_b - L).
      // The old lse was read at the unit's start (lse_pf, lane 0 of each quad, the lane that writes the new one).
      // Final mode (o_final_ptr set): the merged row goes to o_final in T (every row: 0 where both parts are
      // empty), rounded as the separate cast pass would round it; o is only read.
      // lse_old and old0 (row 0): see the unit's Q prologue; row 1 now, every load before any store.
      const bool final_out = p.o_final_ptr != nullptr;
      float2 old1[16];
      {
        const float* o_row = o_old + static_cast<int64_t>(m0 + row0 + 8) * p.o_row_stride;
#pragma unroll
        for (int c = 0; c < 16; ++c)
          old1[c] =
              lse_old[1] != -INFINITY ? __ldcg(reinterpret_cast<const float2*>(o_row + 8 * c)) : make_float2(0.f, 0.f);
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = m0 + row0 + 8 * r;
        if (row >= p.seqlen_q) continue;
        const float la = lse_old[r], lb = lse[r];
        const float mx = fmaxf(la, lb);
        T* f_row = final_out ? static_cast<T*>(p.o_final_ptr) + static_cast<int64_t>(b) * p.o_final_batch_stride +
                                   static_cast<int64_t>(h) * p.o_final_head_stride +
                                   static_cast<int64_t>(row) * p.o_final_row_stride + col_base
                             : nullptr;
        if (mx == -INFINITY) {
          // Both -inf: nothing visible in either part; the accumulator stays as it is (final: O = 0).
          if (final_out) {
#pragma unroll
            for (int c = 0; c < 16; ++c) *reinterpret_cast<uint32_t*>(f_row + 8 * c) = 0u;
          }
          continue;
        }
        const float L = mx + logf(expf(la - mx) + expf(lb - mx));
        const float w_old = expf(la - L);           // 0 when la = -inf
        const float w_new = expf(lb - L) * inv[r];  // 0 when lb = -inf
        // w_old == 0 (la = -inf, or underflow): the old value is neither read nor used (a fresh accumulator
        // holds garbage; 0 * inf or NaN would poison the sum).
        const bool read_old = w_old > 0.f;
        float* o_row = static_cast<float*>(p.o_ptr) + o_off + static_cast<int64_t>(row) * p.o_row_stride + col_base;
        // Every global load of the old O was issued before any store here (an interleaved load after a store into
        // o_final, a pointer the compiler cannot prove distinct, would wait for it: 16 DRAM round trips in a row,
        // measured 1.5-1.7x slower accumulate calls on an H200).
#pragma unroll
        for (int c = 0; c < 16; ++c) {
          const float2 ov = !read_old ? make_float2(0.f, 0.f) : (r == 0 ? old0[c] : old1[c]);
          const float x = fmaf(o[4 * c + 2 * r], w_new, ov.x * w_old);
          const float y = fmaf(o[4 * c + 2 * r + 1], w_new, ov.y * w_old);
          if (final_out) {
            *reinterpret_cast<uint32_t*>(f_row + 8 * c) = TypeOps<T>::pack(x, y);
          } else {
            *reinterpret_cast<float2*>(o_row + 8 * c) = make_float2(x, y);
          }
        }
        if ((lane % 4) == 0) lse_base[static_cast<int64_t>(row) * p.lse_row_stride] = L;
      }
    }
  }
  if (pingpong && cw == 0) named_sync(1);
#endif  // DISTATTN_HOPPER_DEVICE
}

}  // namespace hopper
}  // namespace distattn
