// Hopper backward attention kernel: TMA loads, wgmma (warpgroup MMA), warp specialisation.
//
// CTA = 3 warpgroups (384 threads) for one (batch b, kv head g, kv tile of kBlockN = 128 rows). K and V of the tile
// are loaded once; the CTA walks every q head of the GQA group (dK, dV sum over them) and, per head, the q tiles of
// kBlockM = 64 rows that can see the kv tile (the band / chunk plan below).
//   warpgroup 0  producer (setmaxnreg 24): thread 0 issues every TMA load: K and V once, then Q and dO of each q
//                tile into a 2-stage ring; warp 1 copies the tile's LSE (as LSE * log2 e; +inf for rows past Sq
//                or without keys, so P = 0 there) and delta into shared memory next to them; warp 2 (lane 0) adds
//                each item's dQ tile, staged in shared memory by the consumers, to the fp32 dQ accumulator with TMA
//                reductions (cp.reduce.async.bulk.tensor .add: whole 128-byte lines at L2 instead of per-element
//                atomics; the conversion kernel casts the accumulator to dq afterwards).
//   warpgroups 1, 2  consumers (setmaxnreg 240): consumer c owns kv rows [64 c, 64 c + 64) of the tile. Per q tile,
//                all products transposed so that the kv rows are the wgmma M dimension:
//     S^T  = K_c Q^T           64 x 64   8 wgmma m64n64k16, A = K (smem, K-major), B = Q (smem, K-major)
//     dP^T = V_c dO^T          64 x 64   8 wgmma m64n64k16, A = V, B = dO
//     P^T  = exp2(S^T scale_log2 - LSE_log2[q]) (band mask on partial tiles and rows past Skv)
//     dV_c += P^T dO           64 x 128  4 wgmma m64n128k16, A = P^T from registers (the S^T accumulator is
//                                        already the A fragment), B = dO (MN-major, transpose bit)
//     dS^T = P^T (dP^T - delta[q])
//     dK_c += dS^T Q           64 x 128  4 wgmma m64n128k16, A = dS^T registers, B = Q (MN-major)
//     dS^T -> shared memory (16-bit, [128 kv rows][64 q], 128-byte swizzle, double-buffered), then, once both
//     consumers' halves are there,
//     dQ[:, 64 c .. 64 c + 64) = dS K    64 x 64   8 wgmma m64n64k16, A = dS (MN-major: the stored dS^T read
//                                        with the A transpose bit), B = K columns of half c (MN-major)
//     dQ * scale -> the shared fp32 staging tile (warp 2 of the producer reduces it into dq_accum).
//   S^T and dP^T are issued back to back; the softmax of P runs while dP^T is computed, dS while P^T dO runs. The dQ
//   product of item it is issued in iteration it + 1 (kDeferDq), after the consumer's own dS(it + 1) is written.
// Synchronisation (mbarriers in shared memory):
//   bar_kv       K and V landed (transaction count).
//   full[s]      Q and dO of stage s landed (TMA bytes + 1 arrival of thread 0) and its LSE / delta were written
//                (32 arrivals of warp 1).
//   empty[s]     all 8 consumer warps finished with stage s (Q, dO, stats).
//   ds_full[i]   all 256 consumer threads wrote their part of the dS held by buffer i (item it uses i = it % 2).
//   ds_empty[i]  all 256 consumer threads finished the dQ product that read buffer i.
//   dq_full      all 256 consumer threads wrote the dQ staging tile of the next item (phase k = item k).
//   dq_empty     warp 2's reductions of item k have read the staging tile (1 arrival).
//   Item it uses stage it % 2; its use u = it / 2 waits full with parity u & 1, and the producer's refill for use
//   u >= 1 waits empty with parity (u - 1) & 1 (ds_full / ds_empty likewise per dS buffer). A barrier never runs two
//   phases ahead of a waiter: each phase u + 1 needs an arrival that comes after that waiter's wait for phase u.
//
// Shared memory (bytes from a 1024-aligned base; tiles in the 128-byte-swizzle layout of hopper_primitives.cuh,
// head dim in two 64-wide halves):
//   K, V     [2 halves][128 rows][128 B]        32 KB each
//   Q[s], dO[s]  [2 halves][64 rows][128 B]     16 KB each, s = 0, 1
//   dS[i]    [128 kv rows][64 q][2 B]           16 KB each, i = 0, 1
//   dQ staging fp32 [4 boxes][64 rows][128 B]   32 KB
//   stats[s] float lse_log2[64], delta[64]      512 B each
//   mbarriers, the q-tile plan                  (195 KB in all)
//
// Position maps: up to 8 chunks per side with boundaries on multiples of 128 rows (flash_bwd_hopper_supported):
// the kv tile and every q tile lie in one chunk, positions affine. Plan: for kv positions [k_min, k_max] the visible
// q positions are [k_min + band_lo, k_max + band_hi]; per q chunk they are one local row range (positions grow in a
// chunk), so one q-tile segment per chunk; every head of the group walks the same segments.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "distattn/core/mask.h"
#include "distattn/positional/rope_math.cuh"
#include "flash_bwd_hopper_params.h"
#include "hopper_bwd_primitives.cuh"

namespace distattn {
namespace hopper {

struct BwdConfig {
  static constexpr int kHeadDim = 128;
  static constexpr int kBlockM = 64;   // q rows per tile
  static constexpr int kBlockN = 128;  // kv rows per CTA: 2 consumer warpgroups x 64
  static constexpr int kStages = 2;    // Q / dO / stats ring depth
  static constexpr int kThreads = 384;
  static constexpr int kHalfQBytes = kBlockM * 128;       // one 64-wide half of a Q or dO tile
  static constexpr int kQBytes = 2 * kHalfQBytes;         // 16 KB
  static constexpr int kHalfKVBytes = kBlockN * 128;      // one 64-wide half of K or V
  static constexpr int kKVBytes = 2 * kHalfKVBytes;       // 32 KB
  static constexpr int kDSBytes = kBlockN * kBlockM * 2;  // dS^T: 128 rows of 128 bytes
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kKVBytes;
  static constexpr int kOffQ = 2 * kKVBytes;                 // Q[s] at kOffQ + s * kQBytes
  static constexpr int kOffDO = kOffQ + kStages * kQBytes;   // dO[s]
  static constexpr int kOffDS = kOffDO + kStages * kQBytes;  // dS[s] at kOffDS + s * kDSBytes
  // dQ staging (kDqTma): fp32 [4 boxes of 32 columns][64 rows][128 B], 128-byte swizzle (the dq tensor map's layout).
  static constexpr int kOffDQ = kOffDS + kStages * kDSBytes;
  static constexpr int kDQBytes = kBlockM * kHeadDim * 4;  // 32 KB
  static constexpr int kOffStats = kOffDQ + kDQBytes;      // float [s][128]: lse_log2 [0, 64), delta [64, 128)
  static constexpr int kOffBar =
      kOffStats + kStages * 512;                            // mbarriers: kv, full[2], empty[2], ds_full[2], ds_empty[2]
  static constexpr int kOffPlan = kOffBar + 128;            // int plan[20]
  static constexpr int kSmemBytes = kOffPlan + 128 + 1024;  // + slack to align the base to 1024
  static constexpr int kMaxChunks = FlashBwdHopperParams::kMaxChunks;
  static_assert(kBlockN % kBlockM == 0 && 128 % kBlockM == 0, "chunk boundaries (128 rows) must align with tiles");
};

// Plan in shared memory (thread 0 writes it before the first __syncthreads): plan[0] = q tiles per head; per q
// chunk c the tiles [plan[kBwdPlanFirst + c], + plan[kBwdPlanCount + c]). With a block list: plan[1] = the kv tile's
// first entry e0 in the column lists (col_offset), and tile j is 2 row_index[e0 + j / 2] + j % 2.
constexpr int kBwdPlanE0 = 1;
constexpr int kBwdPlanFirst = 4;
constexpr int kBwdPlanCount = kBwdPlanFirst + BwdConfig::kMaxChunks;

// floor(a / b), ceil(a / b) for b >= 1 and any sign of a.
__device__ __forceinline__ int64_t bwd_floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
__device__ __forceinline__ int64_t bwd_ceil_div(int64_t a, int64_t b) { return -bwd_floor_div(-a, b); }

// Affine piece of a position map at local row `row`: pos(row + t) = base + t * step inside its chunk.
// Compile-time chunk indices only (the params stay in the parameter bank).
struct BwdAffine {
  int64_t base = 0;
  int64_t step = 1;
};
__device__ __forceinline__ BwdAffine bwd_affine(const int (&rows)[BwdConfig::kMaxChunks + 1],
                                                const int64_t (&start)[BwdConfig::kMaxChunks],
                                                const int64_t (&stride)[BwdConfig::kMaxChunks], int num_chunks,
                                                int row) {
  int chunk = 0;
#pragma unroll
  for (int c = 1; c < BwdConfig::kMaxChunks; ++c)
    if (c < num_chunks && row >= rows[c]) chunk = c;
  BwdAffine a;
#pragma unroll
  for (int c = 0; c < BwdConfig::kMaxChunks; ++c)
    if (c == chunk) {
      a.step = stride[c];
      a.base = start[c] + static_cast<int64_t>(row - rows[c]) * stride[c];
    }
  return a;
}

// Thread 0: the q-tile segments of every q chunk visible from kv positions [k_min, k_max]; with a block list, the
// listed q blocks of kv tile n_tile (two q tiles each, less a last tile past Sq: row_index ascends in a column, so
// only the column's last entry can hold the last q block).
__device__ __forceinline__ void bwd_write_plan(const FlashBwdHopperParams& p, int n_tile, int64_t k_min, int64_t k_max,
                                               int* plan) {
  if (p.has_blocks) {
    const int e0 = __ldg(p.col_offset + n_tile), e1 = __ldg(p.col_offset + n_tile + 1);
    int tiles = 2 * (e1 - e0);
    if (tiles > 0 && 2 * __ldg(p.row_index + e1 - 1) + 1 >= p.num_q_tiles) --tiles;
    plan[0] = tiles;
    plan[kBwdPlanE0] = e0;
    return;
  }
  int total = 0;
#pragma unroll
  for (int c = 0; c < BwdConfig::kMaxChunks; ++c) {
    if (c >= p.q_chunks) break;
    const int row_c = p.q_row[c];
    const int len = p.q_row[c + 1] - row_c;
    // local rows l of the chunk with pos = start + l * stride in [k_min + band_lo, k_max + band_hi]
    const int64_t l = max(bwd_ceil_div(k_min + p.band_lo - p.q_start[c], p.q_stride[c]), int64_t{0});
    const int64_t h =
        min(bwd_floor_div(k_max + p.band_hi - p.q_start[c], p.q_stride[c]), static_cast<int64_t>(len - 1));
    int first = 0, count = 0;
    if (l <= h) {
      first = (row_c + static_cast<int>(l)) / BwdConfig::kBlockM;
      count = (row_c + static_cast<int>(h)) / BwdConfig::kBlockM + 1 - first;
    }
    plan[kBwdPlanFirst + c] = first;
    plan[kBwdPlanCount + c] = count;
    total += count;
  }
  plan[0] = total;
}

// q tile of the j-th visible tile of a head (0 <= j < plan[0]), without a block list.
__device__ __forceinline__ int bwd_plan_tile(const int* plan, int q_chunks, int j) {
  for (int c = 0; c < BwdConfig::kMaxChunks; ++c) {
    if (c >= q_chunks) break;
    const int count = plan[kBwdPlanCount + c];
    if (j < count) return plan[kBwdPlanFirst + c] + j;
    j -= count;
  }
  return 0;  // not reached
}

// q tile of the j-th tile of a head, with or without a block list (see the plan above).
__device__ __forceinline__ int bwd_item_tile(const FlashBwdHopperParams& p, const int* plan, int j) {
  if (p.has_blocks) return 2 * __ldg(p.row_index + plan[kBwdPlanE0] + (j >> 1)) + (j & 1);
  return bwd_plan_tile(plan, p.q_chunks, j);
}

// kDeferDq (default): dQ of item it is issued in iteration it + 1, after this consumer's dS(it + 1) is written, so
// the two consumers only wait for each other's dS of the previous item (mbarriers ds_full / ds_empty per dS buffer)
// and may drift up to one item apart. 0: a named barrier of both consumers per item before dQ (lockstep).
// H100, 32 heads x 128, bf16 (bench/results/*_hopper_bwd): with red.global.add for dQ both orders ran at ~400 TF
// (16K, 64K, causal or not); with the TMA reduction (kDqTma) defer + TMA gave 453-464 TF. The combination TMA without
// defer spilled 16 bytes and was not measured.
// STATS_EARLY (A/B knob): each item's LSE and delta columns are loaded from shared memory before the waits for S^T and
// dP^T, so the loads' latency overlaps the products (ncu, session 14: the first exp2's FFMA and the first dS
// subtraction were the top short-scoreboard stalls).
#ifndef DISTATTN_HOPPER_BWD_STATS_EARLY
#define DISTATTN_HOPPER_BWD_STATS_EARLY 1
#endif
#ifndef DISTATTN_HOPPER_BWD_DEFER_DQ
#define DISTATTN_HOPPER_BWD_DEFER_DQ 1
#endif
// kDqTma (default): the consumers write dQ * scale of an item to a shared fp32 tile and warp 2 of the producer
// warpgroup adds it to dq_accum with TMA reductions (4 boxes of 64 rows x 32 columns); 0: red.global.add.v2.f32 from
// registers (16 per thread and item; ~13% slower end to end).
#ifndef DISTATTN_HOPPER_BWD_DQ_TMA
#define DISTATTN_HOPPER_BWD_DQ_TMA 1
#endif

#ifdef DISTATTN_HOPPER_DEVICE
// ---- fused inverse RoPE of dK (epilogue) --------------------------------------------------------------------
// acc (64 dK accumulators of one consumer thread): acc i is (row r = (i / 2) % 2 of the thread's two rows, column
// 8 (i / 4) + col_base + (i % 2)). Before the call acc holds the values the store will write (scale applied and,
// for a 16-bit dk, rounded to T and back: the values a separate RoPE pass would read); after it, those values
// rotated by -theta (rounded once more by the store).
// The thread's 16 pair slots m (the same for both rows: a pair's frequency depends on its column only):
//   NeoX  m = 2 c + e: pair j = 8 c + col_base + e (a side chunk c, b side chunk c + half / 8), used iff c < half / 8
//   GPT-J m = c:       pair j = (8 c + col_base) / 2 of columns 8 c + col_base, +1, used iff 8 c + col_base < rot
// One CTA per SM: nothing overlaps this epilogue, so its latency is the cost. The 16 frequencies are loaded before
// any sincosf (one L2 round trip, not one per pair), and the multipliers stay in registers (fully unrolled, constant
// indices), one row at a time (dV is stored before, so its 64 accumulators are free).
// NeoX: kShift = half / 8 (compile time, so every accumulator index is a constant and acc stays in registers).
template <int kShift, int kRow>
__device__ __forceinline__ void bwd_rope_rotate_neox_row(float (&acc)[64], const float (&cs)[16],
                                                         const float (&sn)[16]) {
#pragma unroll
  for (int c = 0; c < kShift; ++c)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int ia = 4 * c + 2 * kRow + e, ib = 4 * (c + kShift) + 2 * kRow + e, m = 2 * c + e;
      rope_math::rotate(acc[ia], acc[ib], cs[m], sn[m], &acc[ia], &acc[ib]);
    }
}

template <int kRow>
__device__ __forceinline__ void bwd_rope_dk_row(const FlashBwdHopperParams& p, float (&acc)[64], int64_t pos,
                                                const float (&freq)[16], const bool (&used)[16], bool neox, int half) {
  const float pf = rope_math::position_float(pos);
  float cs[16], sn[16];
#pragma unroll
  for (int m = 0; m < 16; ++m) {
    cs[m] = 0.f, sn[m] = 0.f;
    if (used[m]) rope_math::cos_sin(pf, freq[m], p.rope_scale, -p.rope_scale, &cs[m], &sn[m]);
  }
  if (neox) {
    switch (half / 8) {  // half % 8 == 0 and half <= 64 (flash_bwd_hopper.cu sets the fields only then)
      case 1:
        bwd_rope_rotate_neox_row<1, kRow>(acc, cs, sn);
        break;
      case 2:
        bwd_rope_rotate_neox_row<2, kRow>(acc, cs, sn);
        break;
      case 3:
        bwd_rope_rotate_neox_row<3, kRow>(acc, cs, sn);
        break;
      case 4:
        bwd_rope_rotate_neox_row<4, kRow>(acc, cs, sn);
        break;
      case 5:
        bwd_rope_rotate_neox_row<5, kRow>(acc, cs, sn);
        break;
      case 6:
        bwd_rope_rotate_neox_row<6, kRow>(acc, cs, sn);
        break;
      case 7:
        bwd_rope_rotate_neox_row<7, kRow>(acc, cs, sn);
        break;
      default:
        bwd_rope_rotate_neox_row<8, kRow>(acc, cs, sn);
        break;
    }
  } else {
#pragma unroll
    for (int c = 0; c < 16; ++c) {
      const int ia = 4 * c + 2 * kRow;
      if (used[c]) rope_math::rotate(acc[ia], acc[ia + 1], cs[c], sn[c], &acc[ia], &acc[ia + 1]);
    }
  }
}

// The frequencies of the thread's 16 pair slots (0 where unused), loaded together.
__device__ __forceinline__ void bwd_rope_dk_freq(const FlashBwdHopperParams& p, int col_base, float (&freq)[16],
                                                 bool (&used)[16]) {
  const bool neox = p.rope_style == 0;
#pragma unroll
  for (int m = 0; m < 16; ++m) {
    const int col = neox ? 8 * (m / 2) + col_base + (m % 2) : 8 * m + col_base;
    used[m] = neox ? col < p.rope_rotary_dim / 2 : col < p.rope_rotary_dim;
    freq[m] = used[m] ? __ldg(p.rope_inv_freq + (neox ? col : col / 2)) : 0.f;
  }
}

// Rotates both rows of acc back (freq, used from bwd_rope_dk_freq).
__device__ __forceinline__ void bwd_rope_dk(const FlashBwdHopperParams& p, float (&acc)[64], int64_t pos0, int64_t pos1,
                                            const float (&freq)[16], const bool (&used)[16]) {
  const bool neox = p.rope_style == 0;
  const int half = p.rope_rotary_dim / 2;
  bwd_rope_dk_row<0>(p, acc, pos0, freq, used, neox, half);
  bwd_rope_dk_row<1>(p, acc, pos1, freq, used, neox, half);
}
#endif  // DISTATTN_HOPPER_DEVICE

template <typename T>
__global__ void __launch_bounds__(BwdConfig::kThreads, 1)
    flash_bwd_hopper_kernel(const __grid_constant__ FlashBwdHopperParams p) {
#ifdef DISTATTN_HOPPER_DEVICE
  using C = BwdConfig;
  using Ops = WgmmaOps<T>;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t smem_base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  uint8_t* const smem = smem_raw + (smem_base - smem_u32(smem_raw));
  const uint32_t sK = smem_base + C::kOffK;
  const uint32_t sV = smem_base + C::kOffV;
  const uint32_t sQ = smem_base + C::kOffQ;
  const uint32_t sDO = smem_base + C::kOffDO;
  const uint32_t sDS = smem_base + C::kOffDS;
  float* const stats = reinterpret_cast<float*>(smem + C::kOffStats);
  const uint32_t bar_kv = smem_base + C::kOffBar;
  const uint32_t bar_full = bar_kv + 8;                     // [kStages]
  const uint32_t bar_empty = bar_full + 8 * C::kStages;     // [kStages]
  const uint32_t bar_ds_full = bar_empty + 8 * C::kStages;  // [2] kDeferDq: dS(it) of buffer it % 2 written
  const uint32_t bar_ds_empty = bar_ds_full + 16;           // [2] kDeferDq: dQ(it) finished reading buffer it % 2
  const uint32_t bar_dq_full = bar_ds_empty + 16;           // kDqTma: the dQ staging tile is written (256 arrivals)
  const uint32_t bar_dq_empty = bar_dq_full + 8;            // kDqTma: its TMA reduction has read it (1 arrival)
  const uint32_t sDQ = smem_base + C::kOffDQ;
  constexpr bool kDqTma = DISTATTN_HOPPER_BWD_DQ_TMA != 0;
  constexpr bool kDeferDq = DISTATTN_HOPPER_BWD_DEFER_DQ != 0;
  constexpr bool kStatsEarly = DISTATTN_HOPPER_BWD_STATS_EARLY != 0;
  int* const plan = reinterpret_cast<int*>(smem + C::kOffPlan);

  // kv tile 0 first: under a causal band with aligned positions it sees the most q tiles.
  const int n_tile = blockIdx.x;
  const int h_kv = blockIdx.y;
  const int b = blockIdx.z;
  const int n0 = n_tile * C::kBlockN;
  const int kv_last = min(n0 + C::kBlockN, p.seqlen_kv) - 1;
  const bool kv_tail = n0 + C::kBlockN > p.seqlen_kv;
  // The kv tile lies in one chunk: positions ka.base + t * ka.step, t in [0, kv_last - n0].
  const BwdAffine ka = bwd_affine(p.kv_row, p.kv_start, p.kv_stride, p.kv_chunks, n0);
  const int64_t k_min = ka.base;
  const int64_t k_max = ka.base + static_cast<int64_t>(kv_last - n0) * ka.step;

  if (threadIdx.x == 0) {
    bwd_write_plan(p, n_tile, k_min, k_max, plan);
    mbar_init(bar_kv, 1);
    for (int s = 0; s < C::kStages; ++s) {
      mbar_init(bar_full + 8 * s, 1 + 32);  // thread 0's expect_tx + warp 1's 32 stats arrivals
      mbar_init(bar_empty + 8 * s, 8);      // one arrival per consumer warp
    }
    for (int i = 0; i < 2; ++i) {
      mbar_init(bar_ds_full + 8 * i, 256);  // every consumer thread
      mbar_init(bar_ds_empty + 8 * i, 256);
    }
    mbar_init(bar_dq_full, 256);
    mbar_init(bar_dq_empty, 1);
    mbar_init_fence();
  }
  __syncthreads();
  const int per_head = plan[0];
  const int n_items = per_head * p.group;  // item it: q head h_kv * group + it / per_head, tile it % per_head
  const int warpgroup = threadIdx.x / 128;

  if (warpgroup == 0) {
    // ---------------------------------------------------------------- producer
    regs_decrease<24>();
    if (n_items == 0) return;  // nothing visible: no load is issued (the consumers write zeros)
    const int warp = threadIdx.x / 32;
    if (threadIdx.x == 0) {
      tma_prefetch_desc(&p.tmap_q);
      tma_prefetch_desc(&p.tmap_dout);
      tma_prefetch_desc(&p.tmap_k);
      tma_prefetch_desc(&p.tmap_v);
      mbar_arrive_expect_tx(bar_kv, 2 * C::kKVBytes);
      tma_load_4d(sK, &p.tmap_k, bar_kv, 0, n0, h_kv, b);
      tma_load_4d(sK + C::kHalfKVBytes, &p.tmap_k, bar_kv, 64, n0, h_kv, b);
      tma_load_4d(sV, &p.tmap_v, bar_kv, 0, n0, h_kv, b);
      tma_load_4d(sV + C::kHalfKVBytes, &p.tmap_v, bar_kv, 64, n0, h_kv, b);
      for (int it = 0; it < n_items; ++it) {
        const int s = it % C::kStages;
        const int use = it / C::kStages;
        if (use > 0) mbar_wait(bar_empty + 8 * s, (use - 1) & 1);
        const int hq = h_kv * p.group + it / per_head;
        const int m0 = bwd_item_tile(p, plan, it % per_head) * C::kBlockM;
        const uint32_t full = bar_full + 8 * s;
        const uint32_t q_dst = sQ + s * C::kQBytes;
        const uint32_t do_dst = sDO + s * C::kQBytes;
        mbar_arrive_expect_tx(full, 2 * C::kQBytes);
        tma_load_4d(q_dst, &p.tmap_q, full, 0, m0, hq, b);
        tma_load_4d(q_dst + C::kHalfQBytes, &p.tmap_q, full, 64, m0, hq, b);
        tma_load_4d(do_dst, &p.tmap_dout, full, 0, m0, hq, b);
        tma_load_4d(do_dst + C::kHalfQBytes, &p.tmap_dout, full, 64, m0, hq, b);
      }
    } else if (kDqTma && warp == 2) {
      // dQ writer: item k's tile (written by the consumers, dq_full phase k) -> dq_accum rows [m0, m0 + 64) of head
      // hq (rows past Sq are skipped by the TMA unit); the staging tile is free again once the reduction read it.
      if (threadIdx.x % 32 == 0) {
        tma_prefetch_desc(&p.tmap_dq);
        for (int it = 0; it < n_items; ++it) {
          const int hq = h_kv * p.group + it / per_head;
          const int m0 = bwd_item_tile(p, plan, it % per_head) * C::kBlockM;
          mbar_wait(bar_dq_full, it & 1);
#pragma unroll
          for (int j = 0; j < 4; ++j) tma_reduce_add_4d(&p.tmap_dq, sDQ + j * (C::kBlockM * 128), 32 * j, m0, hq, b);
          bulk_commit();
          bulk_wait_read<0>();
          mbar_arrive(bar_dq_empty);
        }
        bulk_wait<0>();  // the last reductions are complete before the CTA exits
      }
    } else if (warp == 1) {
      // LSE (as LSE * log2 e, +inf where P must be 0) and delta of the item's 64 q rows, two rows per lane.
      const int lane = threadIdx.x % 32;
      for (int it = 0; it < n_items; ++it) {
        const int s = it % C::kStages;
        const int use = it / C::kStages;
        if (use > 0) mbar_wait(bar_empty + 8 * s, (use - 1) & 1);
        const int hq = h_kv * p.group + it / per_head;
        const int m0 = bwd_item_tile(p, plan, it % per_head) * C::kBlockM;
        const float* lse = p.lse_ptr + b * p.lse_batch_stride + hq * p.lse_head_stride;
        const float* delta = p.delta_ptr + b * p.delta_batch_stride + hq * p.delta_head_stride;
        float* st = stats + s * 128;
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const int r = lane + 32 * k;
          const int row = m0 + r;
          const bool valid = row < p.seqlen_q;
          const float l = valid ? __ldg(lse + row) : -INFINITY;
          st[r] = l == -INFINITY ? INFINITY : l * 1.4426950408889634f;
          st[64 + r] = valid ? __ldg(delta + row) : 0.f;
        }
        mbar_arrive(bar_full + 8 * s);  // release: the stores above are visible to the waiting consumers
      }
    }
    return;
  }

  // ------------------------------------------------------------------ consumers
  regs_increase<240>();
  const int cw = warpgroup - 1;  // consumer: kv rows [64 cw, 64 cw + 64) of the tile
  const int tid = threadIdx.x % 128;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int row_in = warp * 16 + lane / 4;  // this thread's rows in the consumer's 64-row slab: row_in, row_in + 8
  const int col_base = 2 * (lane % 4);      // acc i has column 8 (i / 4) + col_base + (i % 2)

  float dv[64], dk[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) dv[i] = dk[i] = 0.f;

  if (n_items > 0) {
    // Positions of this thread's two kv rows (rows past Skv: masked everywhere).
    int64_t pos_k[2];
    bool kv_ok[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int local = 64 * cw + row_in + 8 * r;
      kv_ok[r] = n0 + local < p.seqlen_kv;
      pos_k[r] = ka.base + static_cast<int64_t>(local) * ka.step;
    }
    // A of S^T / dP^T: K / V rows [64 cw, 64 cw + 64) (K-major), 64 cw * 128 bytes into each half.
    const uint64_t desc_k = make_desc_sw128(sK + cw * 64 * 128, 16, 1024);
    const uint64_t desc_v = make_desc_sw128(sV + cw * 64 * 128, 16, 1024);
    // B of dQ: K [kv][d] read as kv x d with d contiguous (MN-major), head-dim half cw only (N = 64).
    const uint64_t desc_kt = make_desc_sw128(sK + cw * C::kHalfKVBytes, C::kHalfKVBytes, 1024);
    const DiagonalBand band{p.band_lo, p.band_hi};
    const float scale_log2 = p.scale_log2;
    mbar_wait(bar_kv, 0);

    // dQ of one item: dQ[:, 64 cw + n] = sum_kv dS[q][kv] K[kv][64 cw + n]: A = dS (q x kv) stored kv-major
    // (transpose bit), B = K half cw as kv x d (MN-major); k step kk = 16 kv rows = 2048 bytes in both.
    // dq is a fresh (uninitialised) array per item: one declared outside the loop would be live across iterations
    // for the compiler (the wgmma asm reads its accumulators) and cost 32 registers in the softmax.
    auto issue_dq = [&](float(&dq)[32], uint32_t ds_smem) {
      const uint64_t desc_ds = make_desc_sw128(ds_smem, C::kDSBytes, 1024);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)
        Ops::template mma64<1, 1>(dq, desc_ds + ((kk * 2048) >> 4), desc_kt + ((kk * 2048) >> 4), kk > 0 ? 1 : 0);
      wgmma_commit();
    };
    // dQ * scale into the accumulator: acc i is (q row row_in + 8 ((i / 2) % 2), d 64 cw + 8 (i / 4) + col_base +
    // (i % 2)) of the item's tile m0 of head hq; rows past Sq are dropped.
    int dq_uses = 0;  // kDqTma: items whose dQ went through the staging tile so far
    auto add_dq = [&](const float(&dq)[32], int hq, int m0) {
      if (kDqTma) {
        // Staging tile: column col = 64 cw + 8 c + col_base (+1) is in box col / 32, 16-byte chunk (col % 32) / 4 of
        // the 128-byte row, stored at chunk position chunk ^ (row % 8); row % 8 = lane / 4.
        if (dq_uses > 0) mbar_wait(bar_dq_empty, (dq_uses - 1) & 1);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = row_in + 8 * r;
#pragma unroll
          for (int c = 0; c < 8; ++c) {
            const int box = 2 * cw + c / 4;
            const int chunk = 2 * (c % 4) + col_base / 4;
            const uint32_t addr =
                sDQ + box * (C::kBlockM * 128) + row * 128 + ((chunk ^ (lane / 4)) << 4) + 4 * (col_base % 4);
            asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(dq[4 * c + 2 * r] * p.scale),
                         "f"(dq[4 * c + 2 * r + 1] * p.scale)
                         : "memory");
          }
        }
        fence_proxy_async_smem();
        mbar_arrive(bar_dq_full);
        ++dq_uses;
        return;
      }
      float* dq_head = p.dq_accum + b * p.dq_accum_batch_stride + hq * p.dq_accum_head_stride;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = m0 + row_in + 8 * r;
        if (row >= p.seqlen_q) continue;
        float* dst = dq_head + static_cast<int64_t>(row) * p.dq_accum_row_stride + 64 * cw + col_base;
#pragma unroll
        for (int c = 0; c < 8; ++c)
          red_add_f32x2(dst + 8 * c, dq[4 * c + 2 * r] * p.scale, dq[4 * c + 2 * r + 1] * p.scale);
      }
    };
    int prev_hq = 0, prev_m0 = 0;  // kDeferDq: the item whose dQ is issued in the next iteration

    for (int it = 0; it < n_items; ++it) {
      const int s = it % C::kStages;
      const int hq = h_kv * p.group + it / per_head;
      const int m0 = bwd_item_tile(p, plan, it % per_head) * C::kBlockM;
      // The q tile lies in one chunk: pos_q(m0 + i) = qa.base + i * qa.step.
      const BwdAffine qa = bwd_affine(p.q_row, p.q_start, p.q_stride, p.q_chunks, m0);
      const int q_last = min(m0 + C::kBlockM, p.seqlen_q) - 1;
      const int64_t q_max = qa.base + static_cast<int64_t>(q_last - m0) * qa.step;
      // A listed block marked whole needs no band (the layout vouches for it, as in the mma.sync kernel).
      const bool block_whole = p.has_blocks && __ldg(p.col_partial + plan[kBwdPlanE0] + ((it % per_head) >> 1)) == 0;
      const bool need_mask =
          kv_tail || (!block_whole && classify_tile(band, qa.base, q_max, k_min, k_max) != TileVisibility::kFull);

      const uint32_t q_s = sQ + s * C::kQBytes;
      const uint32_t do_s = sDO + s * C::kQBytes;
      mbar_wait(bar_full + 8 * s, (it / C::kStages) & 1);

      // S^T = K_c Q^T and dP^T = V_c dO^T: 8 k-steps over the head dim (half kk / 4, 32 bytes per step inside it).
      float st[32], dp[32];
      {
        const uint64_t desc_q = make_desc_sw128(q_s, 16, 1024);
        const uint64_t desc_do = make_desc_sw128(do_s, 16, 1024);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
          const uint32_t off_a = ((kk / 4) * C::kHalfKVBytes + (kk % 4) * 32) >> 4;
          const uint32_t off_b = ((kk / 4) * C::kHalfQBytes + (kk % 4) * 32) >> 4;
          Ops::template mma64<0, 0>(st, desc_k + off_a, desc_q + off_b, kk > 0 ? 1 : 0);
        }
        wgmma_commit();
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
          const uint32_t off_a = ((kk / 4) * C::kHalfKVBytes + (kk % 4) * 32) >> 4;
          const uint32_t off_b = ((kk / 4) * C::kHalfQBytes + (kk % 4) * 32) >> 4;
          Ops::template mma64<0, 0>(dp, desc_v + off_a, desc_do + off_b, kk > 0 ? 1 : 0);
        }
        wgmma_commit();
      }
      const float* lse2 = stats + s * 128;
      const float* dlt = lse2 + 64;
      // STATS_EARLY: this thread's LSE columns are read from shared memory while the products run (they are in place
      // since bar_full), not after the wait, where the first exp2 stood on the load.
      float2 lse_c[8];
      if (kStatsEarly) {
#pragma unroll
        for (int c = 0; c < 8; ++c) lse_c[c] = *reinterpret_cast<const float2*>(lse2 + 8 * c + col_base);
      }
      wgmma_wait<1>();  // S^T done; dP^T may still run
      fence_regs(st);
      if (need_mask) {
        // Visible q columns [lo, hi] of each of this thread's kv rows: pos_q(i) in [pos_k + band_lo, pos_k + band_hi].
        int lo[2], hi[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          int64_t l = bwd_ceil_div(pos_k[r] + p.band_lo - qa.base, qa.step);
          int64_t h = bwd_floor_div(pos_k[r] + p.band_hi - qa.base, qa.step);
          l = min(max(l, int64_t{-1}), int64_t{64});
          h = min(max(h, int64_t{-1}), int64_t{64});
          lo[r] = kv_ok[r] ? static_cast<int>(l) : 64;
          hi[r] = kv_ok[r] ? static_cast<int>(h) : -1;
        }
#pragma unroll
        for (int i = 0; i < 32; ++i) {
          const int r = (i / 2) % 2;
          const int col = 8 * (i / 4) + col_base + (i % 2);
          if (col < lo[r] || col > hi[r]) st[i] = -INFINITY;
        }
      }
      // P^T = exp2(S^T scale_log2 - LSE_log2[q]); masked (-inf) and LSE_log2 = +inf give 0.
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const float2 l = kStatsEarly ? lse_c[c] : *reinterpret_cast<const float2*>(lse2 + 8 * c + col_base);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          st[4 * c + 2 * r] = fast_exp2(fmaf(st[4 * c + 2 * r], scale_log2, -l.x));
          st[4 * c + 2 * r + 1] = fast_exp2(fmaf(st[4 * c + 2 * r + 1], scale_log2, -l.y));
        }
      }
      // P^T as the A operand (k = q rows): k step kk covers columns [16 kk, 16 kk + 16) = n8 chunks 2 kk, 2 kk + 1.
      uint32_t pp[16];
#pragma unroll
      for (int j = 0; j < 16; ++j) pp[j] = Ops::pack(st[2 * j], st[2 * j + 1]);
      {
        // dV_c += P^T dO: B = dO as q x d (d contiguous: MN-major), the two d halves kHalfQBytes apart; k step kk =
        // 16 q rows = 2048 bytes.
        const uint64_t desc_dot = make_desc_sw128(do_s, C::kHalfQBytes, 1024);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const uint32_t a[4] = {pp[4 * kk], pp[4 * kk + 1], pp[4 * kk + 2], pp[4 * kk + 3]};
          Ops::mma_rs(dv, a, desc_dot + ((kk * 2048) >> 4), 1);
        }
        wgmma_commit();
      }
      float2 dlt_c[8];  // STATS_EARLY: delta's columns, read while dP^T and P^T dO run
      if (kStatsEarly) {
#pragma unroll
        for (int c = 0; c < 8; ++c) dlt_c[c] = *reinterpret_cast<const float2*>(dlt + 8 * c + col_base);
      }
      wgmma_wait<1>();  // dP^T done; P^T dO may still run
      fence_regs(dp);
      // dS^T = P^T (dP^T - delta[q])
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const float2 d = kStatsEarly ? dlt_c[c] : *reinterpret_cast<const float2*>(dlt + 8 * c + col_base);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          dp[4 * c + 2 * r] = st[4 * c + 2 * r] * (dp[4 * c + 2 * r] - d.x);
          dp[4 * c + 2 * r + 1] = st[4 * c + 2 * r + 1] * (dp[4 * c + 2 * r + 1] - d.y);
        }
      }
      uint32_t pds[16];
#pragma unroll
      for (int j = 0; j < 16; ++j) pds[j] = Ops::pack(dp[2 * j], dp[2 * j + 1]);
      {
        // dK_c += dS^T Q: B = Q as q x d, MN-major like dO above.
        const uint64_t desc_qt = make_desc_sw128(q_s, C::kHalfQBytes, 1024);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const uint32_t a[4] = {pds[4 * kk], pds[4 * kk + 1], pds[4 * kk + 2], pds[4 * kk + 3]};
          Ops::mma_rs(dk, a, desc_qt + ((kk * 2048) >> 4), 1);
        }
        wgmma_commit();
      }
      // dS^T to shared memory: row 64 cw + row_in + 8 r (kv), 16-bit columns (q) 8 c + col_base, +1; the 16-byte
      // chunk c of a row sits at chunk position c ^ (row % 8) (128-byte swizzle; row % 8 = lane / 4).
      const int ds_buf = it % 2;
      if (kDeferDq && it >= 2) mbar_wait(bar_ds_empty + 8 * ds_buf, ((it / 2) - 1) & 1);  // dQ(it - 2) read it
      const uint32_t ds_s = sDS + ds_buf * C::kDSBytes;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int r = j % 2, c = j / 2;
        const uint32_t addr = ds_s + (64 * cw + row_in + 8 * r) * 128 + ((c ^ (lane / 4)) << 4) + 4 * (lane % 4);
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(pds[j]) : "memory");
      }
      fence_proxy_async_smem();
      float dq[32];
      if (kDeferDq) {
        mbar_arrive(bar_ds_full + 8 * ds_buf);  // this thread's part of dS(it) is in place (release)
        // dQ(it - 1) from the other buffer. At it = 0 the product runs on a buffer not yet written and its result is
        // dropped: issuing it unconditionally keeps the wgmma out of a branch (ptxas serialised the kernel's wgmma
        // and spilled when it was conditional).
        const int pit = it - 1;
        if (it >= 1) mbar_wait(bar_ds_full + 8 * (pit % 2), (pit / 2) & 1);  // both halves of dS(it - 1)
        issue_dq(dq, sDS + ((it + 1) % 2) * C::kDSBytes);
      } else {
        bwd_named_sync<256>(1);  // both consumers' dS^T rows are in place
        issue_dq(dq, ds_s);
      }
      wgmma_wait<0>();
      fence_regs(dq);
      fence_regs(dv);
      fence_regs(dk);
      fence_regs(pp);
      fence_regs(pds);
      __syncwarp();
      if (lane == 0) mbar_arrive(bar_empty + 8 * s);  // Q, dO and stats of stage s are free
      if (kDeferDq) {
        if (it >= 1) {
          mbar_arrive(bar_ds_empty + 8 * ((it - 1) % 2));  // done reading dS(it - 1)
          add_dq(dq, prev_hq, prev_m0);
        }
        prev_hq = hq;
        prev_m0 = m0;
      } else {
        add_dq(dq, hq, m0);
      }
    }
    if (kDeferDq) {  // the last item's dQ
      const int pit = n_items - 1;
      mbar_wait(bar_ds_full + 8 * (pit % 2), (pit / 2) & 1);
      float dq[32];
      issue_dq(dq, sDS + (pit % 2) * C::kDSBytes);
      wgmma_wait<0>();
      fence_regs(dq);
      add_dq(dq, prev_hq, prev_m0);
    }
  }

  // ---- epilogue: dK = scale * acc, dV = acc, rows n0 + 64 cw + row_in + 8 r; acc i column 8 (i / 4) + col_base +
  // (i % 2) (64 accumulators: 16 n8 chunks).
  auto store = [&](const float(&acc)[64], void* base, int64_t batch_stride, int64_t row_stride, int64_t head_stride,
                   bool fp32, float mul) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = n0 + 64 * cw + row_in + 8 * r;
      if (row >= p.seqlen_kv) continue;
      const int64_t off = b * batch_stride + static_cast<int64_t>(row) * row_stride +
                          static_cast<int64_t>(h_kv) * head_stride + col_base;
      if (fp32) {
        float* dst = static_cast<float*>(base) + off;
#pragma unroll
        for (int c = 0; c < 16; ++c) {
          float2 v = make_float2(acc[4 * c + 2 * r] * mul, acc[4 * c + 2 * r + 1] * mul);
          float2* ptr = reinterpret_cast<float2*>(dst + 8 * c);
          if (p.accumulate) {  // ring steps: this call's gradient is added to what the tensor holds
            const float2 old = *ptr;
            v.x += old.x;
            v.y += old.y;
          }
          *ptr = v;
        }
      } else {
        T* dst = static_cast<T*>(base) + off;
#pragma unroll
        for (int c = 0; c < 16; ++c)
          *reinterpret_cast<uint32_t*>(dst + 8 * c) = Ops::pack(acc[4 * c + 2 * r] * mul, acc[4 * c + 2 * r + 1] * mul);
      }
    }
  };
  // Inverse RoPE: the frequencies' loads are issued before the dV stores, so their latency hides behind them.
  const bool rope_dk = p.rope_inv_freq != nullptr;
  float rope_freq[16];
  bool rope_used[16];
  if (rope_dk) bwd_rope_dk_freq(p, col_base, rope_freq, rope_used);
  // dV first: its accumulators are dead before the dK epilogue (the inverse RoPE's registers).
  store(dv, p.dv_ptr, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, p.dv_fp32, 1.f);
  if (rope_dk) {
    // Fused inverse RoPE: dK values as the store would write them (scale, and for a 16-bit dk the rounding to T),
    // rotated back on the kv rows' global positions, then stored with multiplier 1 (rounded once more).
    const bool dk16 = !p.dk_fp32;
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      const float v = dk[i] * p.scale;
      dk[i] = dk16 ? rope_math::round_trip<T>(v) : v;
    }
    const int local0 = 64 * cw + row_in;  // the thread's rows n0 + local0, + 8: positions of the tile's chunk
    bwd_rope_dk(p, dk, ka.base + static_cast<int64_t>(local0) * ka.step,
                ka.base + static_cast<int64_t>(local0 + 8) * ka.step, rope_freq, rope_used);
    store(dk, p.dk_ptr, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, p.dk_fp32, 1.f);
  } else {
    store(dk, p.dk_ptr, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, p.dk_fp32, p.scale);
  }
#endif  // DISTATTN_HOPPER_DEVICE
}

}  // namespace hopper
}  // namespace distattn
