// The backward attention main kernel (FlashAttention-2 style, mma.sync m16n8k16, sm_80+).
//
// One CTA of 8 warps per (kv tile of kBlockN = 128 rows, kv head, batch). K and V of the tile stay in
// shared memory; the CTA walks the q heads of its GQA group and, for each, the q tiles of kBlockM = 64
// rows that can see the kv tile (Q and dO double-buffered with cp.async). Per q tile:
//   A  S = Q K^T                                     64 x 128, fp32, warps 2 (m) x 4 (n), 32 x 32 each
//   B  P = exp2(S * scale_log2 - LSE_log2 [+ ALiBi]) (masked) -> smem as 16-bit (and kept packed)
//      dP = dO V^T (same layout), dS = P (dP - delta) -> smem as 16-bit
//   C  dV += P^T dO                                 128 x D in registers, warps 4 (n) x 2 (d)
//   D  dK += dS^T Q                                 128 x D in registers, same layout
//   E  dQ_tile = scale * dS K                        64 x D, warps 2 (m) x 4 (d) -> fp32 reductions into
//      the dQ accumulator (row stride D): red.global.add.v2.f32 on sm_90, scalar atomicAdd on sm_80
// and at the end dK (times scale) and dV are written (or added: accumulate mode without overwrite_dk_dv) once per
// element.
// Tiles are classified with PositionMap::range + classify_tile: empty ones are skipped without loads,
// full ones take no per-element mask, partial ones (and the kv tile crossing Skv) evaluate the band.
// With ALiBi, pairs whose P provably underflows to exactly 0 are skipped too ("ALiBi cutoff" below).
//
// Shared memory rows are 16-byte chunks XOR-swizzled with the row index (physical chunk = chunk ^
// (row & 7)), so every ldmatrix phase (8 lanes reading 8 consecutive rows at one logical chunk) and
// every 32-bit store of P/dS (8 rows x 4 lanes) touches 8 distinct 16-byte bank groups.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "flash_bwd_params.h"
#include "mma_primitives.cuh"

namespace distattn {
namespace kernels {

template <int kHeadDim_>
struct FlashBwdTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 64;   // q rows per tile
  static constexpr int kBlockN = 128;  // kv rows per CTA (== kLayoutBlock: one block-list column)
  static constexpr int kWarps = 8;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowBytes = kHeadDim * 2;  // one 16-bit row of Q/K/V/dO in smem
  static constexpr int kChunks = kHeadDim / 8;    // 16-byte chunks per row
  static constexpr int kPRowBytes = kBlockN * 2;  // one 16-bit row of P / dS (256 bytes)
  static constexpr int kPChunks = kBlockN / 8;    // 16
  // Shared-memory carve-up (bytes).
  static constexpr int kSmemK = 0;                                  // [kBlockN][D]
  static constexpr int kSmemV = kSmemK + kBlockN * kRowBytes;       // [kBlockN][D]
  static constexpr int kSmemQ = kSmemV + kBlockN * kRowBytes;       // 2 x [kBlockM][D]
  static constexpr int kSmemDO = kSmemQ + 2 * kBlockM * kRowBytes;  // 2 x [kBlockM][D]
  static constexpr int kSmemP = kSmemDO + 2 * kBlockM * kRowBytes;  // [kBlockM][kBlockN]
  static constexpr int kSmemDS = kSmemP + kBlockM * kPRowBytes;     // [kBlockM][kBlockN]
  static constexpr int kSmemKPos = kSmemDS + kBlockM * kPRowBytes;  // int32 [kBlockN] kv positions
  static constexpr int kSmemLse = kSmemKPos + kBlockN * 4;          // fp32 2 x [kBlockM] LSE of the q tile
  static constexpr int kSmemDelta = kSmemLse + 2 * kBlockM * 4;     // fp32 2 x [kBlockM] delta of the q tile
  static constexpr int kSmemKeep = kSmemDelta + 2 * kBlockM * 4;    // uint32 [kMaxCutGroup] ALiBi cutoff intervals
  static constexpr int kMaxCutGroup = 64;                           // q heads per kv head the cutoff serves
  static constexpr int kSmemBytes = kSmemKeep + kMaxCutGroup * 4;
  // Per-warp tiles: phase C/D covers D/2 columns (kNTileC n8 tiles), phase E D/4 (kNTileE).
  static constexpr int kNTileC = kHeadDim / 16;
  static constexpr int kNTileE = kHeadDim / 32;
  static_assert(kLayoutBlock == kBlockN, "the block-list column walk assumes one kv tile per layout block");
  static_assert(kLayoutBlock % kBlockM == 0, "q tiles must divide layout blocks");
};

// Swizzled byte offset of the 16-byte chunk C + 2j of a row starting at `row_base` (a multiple of 128),
// for a lane whose row has (row & 7) folded into `lane_xor` (with its ldmatrix chunk offset), split so
// that the part depending on j is one XOR: offset(j) = bwd_lane_off(...) ^ (32 * (j & 3)) + 128 * (j >> 2).
// Valid when the bits of (C & 7) and 2 * (j & 3) are disjoint (true for every use below).
__device__ __forceinline__ uint32_t bwd_lane_off(int row_base, int C, int lane_xor) {
  return static_cast<uint32_t>(row_base + ((C & ~7) << 4) + (((C & 7) ^ lane_xor) << 4));
}
__device__ __forceinline__ uint32_t bwd_j_off(uint32_t lane_off, int j) {
  return (lane_off ^ static_cast<uint32_t>(32 * (j & 3))) + static_cast<uint32_t>(128 * (j >> 2));
}

// threadIdx.x read through a volatile asm: offsets derived from it are recomputed where they are used
// (a few integer ops per phase) instead of being hoisted out of the tile loop and held in registers
// (the loop runs at the register limit; hoisting them made ptxas spill).
__device__ __forceinline__ int bwd_tid_volatile() {
  int v;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(v));
  return v;
}

__device__ __forceinline__ void bwd_ldsm_x4(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void bwd_ldsm_x4_t(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void bwd_sts_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v));
}

// Copies rows [row0, row0 + kRows) of a [rows, D] 16-bit matrix into a swizzled smem tile with
// cp.async. `src_row0` points at row row0 (a valid row); rows at or past `rows_left` are zero-filled
// (kCheckRows = false: the caller guarantees rows_left >= kRows and no predicate is evaluated). Thread tid copies chunk
// tid % kChunks of rows tid / kChunks + i * kRowsPerPass: the swizzle (row & 7) is the same for all i.
template <typename Traits, int kRows, bool kCheckRows = true>
__device__ __forceinline__ void bwd_load_tile(uint32_t smem, const uint16_t* src_row0, int64_t row_stride,
                                              int rows_left, int tid) {
  constexpr int kRowsPerPass = Traits::kThreads / Traits::kChunks;
  static_assert(kRows % kRowsPerPass == 0 && kRowsPerPass % 8 == 0, "tile not divisible by threads");
  const int r = tid / Traits::kChunks;
  const int c = tid % Traits::kChunks;
  const uint16_t* src = src_row0 + r * row_stride + c * 8;
  const int64_t step = kRowsPerPass * row_stride;
  const uint32_t dst = smem + static_cast<uint32_t>(r * Traits::kRowBytes + ((c ^ (r & 7)) << 4));
#pragma unroll
  for (int i = 0; i < kRows / kRowsPerPass; ++i) {
    const bool valid = !kCheckRows || r + i * kRowsPerPass < rows_left;
    // Rows past the end point at the last valid row (clamped index: the address stays inside the
    // tensor) and copy 0 bytes, which zero-fills their smem chunk.
    const uint16_t* from =
        kCheckRows ? src_row0 + min(r + i * kRowsPerPass, rows_left - 1) * row_stride + c * 8 : src + i * step;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst + i * kRowsPerPass * Traits::kRowBytes),
                 "l"(from), "r"(valid ? 16 : 0));
  }
}

// LSE and delta of q rows [row0, row0 + kBlockM) (threads 0..63: LSE, 64..127: delta), 4-byte cp.async;
// rows past Sq are not loaded (the reader substitutes them).
template <typename Traits>
__device__ __forceinline__ void bwd_load_stats(uint32_t s_lse, uint32_t s_delta, const float* lse, const float* delta,
                                               int row0, int rows_valid, int tid) {
  if (tid < 2 * Traits::kBlockM) {
    const int r = tid % Traits::kBlockM;
    const bool valid = row0 + r < rows_valid;
    const float* src = (tid < Traits::kBlockM ? lse : delta) + (valid ? row0 + r : 0);
    const uint32_t dst = (tid < Traits::kBlockM ? s_lse : s_delta) + 4 * r;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
  }
}

// Work items of one CTA (one kv tile): without a block list, item it is q tile (it + rot) mod nQ; with
// one, item it is q tile 2 * row_index[e0 + it/2] + it%2 of the kv block's column. Returns the tile's
// visibility class (0 empty, 1 partial: band per element, 2 full; with ALiBi 3 / 4: full with pos_q - pos_k
// >= 0 / <= 0 everywhere) and the tile index.
struct BwdWalk {
  int n_items;           // items to visit
  int e0;                // first CSR entry of this kv block (block list)
  int rot;               // rotation of the q-tile order (no block list): spreads the dQ atomics of CTAs apart
  int64_t k_min, k_max;  // global position range of the kv tile
};

// ALiBi cutoff. The kernel recomputes P = exp2(x) with x = S * scale_log2 - LSE_log2 + slope2 * |pos_q - pos_k|
// (slope2 = -slope * log2(e)) from the forward's final LSE. A (q tile, kv tile) pair whose every x lies below
// -T_dtype makes every P exactly 0 as the kernel stores it (16-bit): bf16 T = 127 (ex2.approx.ftz flushes
// results below 2^-126 to +0), fp16 T = 26 (exp2 < 2^-25 rounds to +0 in fp16). Then dS = P (dP - delta) is
// +-0 too and the pair adds nothing to dV, dK or dQ: not visiting it changes no bit (given finite dP - delta:
// 0 * inf would be NaN). The pre-pass (flash_bwd_alibi_stats.cu, where the bound and its margins are written
// out) judges every pair and leaves, per (batch, q head, kv tile), the interval [lo, hi) of q tiles that holds
// every pair it could not cut (packed lo | hi << 16); the walk skips the q tiles outside it. Valid for any
// position maps, masks and block lists (the bound uses position ranges and the actual LSE). The CTA copies the
// intervals of its group's q heads to shared memory once (s_keep): the walk loop runs at the register limit and
// a global load indexed by (batch, head, kv tile) there spilled; an LDS indexed by gh does not.

// keep: the ALiBi cutoff's q-tile interval of the item's q head (read when p.alibi_keep is set); *cut is set
// when the cutoff judged the pair cuttable (skipped unless p.alibi_cut_skip is false).
template <typename Traits>
__device__ __forceinline__ int bwd_classify_item(const FlashBwdParams& p, const BwdWalk& w, int it, uint32_t keep,
                                                 int* tile, bool* cut) {
  int m;
  bool block_full = false;
  if (p.has_blocks) {
    const int e = w.e0 + (it >> 1);
    m = 2 * __ldg(p.row_index + e) + (it & 1);
    if (m >= p.num_q_tiles) return 0;
    block_full = __ldg(p.col_partial + e) == 0;
  } else {
    m = it + w.rot;
    if (m >= p.num_q_tiles) m -= p.num_q_tiles;
  }
  *tile = m;
  const bool alibi_cut = p.alibi_keep != nullptr;
  const bool alibi = p.alibi_slopes != nullptr;
  if (block_full && !alibi) return 2;
  int64_t q_min, q_max;
  const int r0 = m * Traits::kBlockM;
  const int r1 = min(r0 + Traits::kBlockM, p.seqlen_q);
  p.q_pos.range(r0, r1, &q_min, &q_max);
  int cls = block_full ? 2 : static_cast<int>(classify_tile(p.band, q_min, q_max, w.k_min, w.k_max));
  // ALiBi on a full tile where pos_q - pos_k has one sign: 3 (>= 0 everywhere) or 4 (<= 0): the main loop's
  // split form (row part + column part, no per-element |d|) applies.
  // (not on the kv tile crossing Skv: its columns past the end need the per-element path)
  if (alibi && cls == 2 && (static_cast<int>(blockIdx.y) + 1) * Traits::kBlockN <= p.seqlen_kv)
    cls = q_min >= w.k_max ? 3 : q_max <= w.k_min ? 4 : 2;
  if (cls != 0 && alibi_cut && (m < static_cast<int>(keep & 0xffffu) || m >= static_cast<int>(keep >> 16))) {
    *cut = true;
    if (p.alibi_cut_skip) return 0;
  }
  return cls;
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(256, 1) flash_bwd_kernel(const __grid_constant__ FlashBwdParams p) {
  using Tr = FlashBwdTraits<kHeadDim>;
  constexpr int kBlockM = Tr::kBlockM;
  constexpr int kBlockN = Tr::kBlockN;
  constexpr int kRB = Tr::kRowBytes;
  constexpr int kPRB = Tr::kPRowBytes;
  constexpr float kLog2e = 1.4426950408889634f;
  // ALiBi split form (phase B) for bf16 only: in the fp16 D=128 instantiation it made ptxas spill (12 B).
  constexpr bool kAlibiSplit = std::is_same<T, __nv_bfloat16>::value || kHeadDim != 128;

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t s_base = smem_u32(smem);
  const uint32_t sK = s_base + Tr::kSmemK;
  const uint32_t sV = s_base + Tr::kSmemV;
  const uint32_t sP = s_base + Tr::kSmemP;
  const uint32_t sDS = s_base + Tr::kSmemDS;
  int32_t* s_kpos = reinterpret_cast<int32_t*>(smem + Tr::kSmemKPos);

  const int hkv = blockIdx.x;
  const int n_tile = blockIdx.y;
  const int b = blockIdx.z;
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;  // mma groupID: fragment row
  const int t = lane & 3;   // mma thread-in-group: fragment column pair
  const int n0 = n_tile * kBlockN;
  const int kv_rows = min(kBlockN, p.seqlen_kv - n0);  // valid rows of this kv tile
  const bool kv_tail = kv_rows < kBlockN;              // columns past Skv must be masked

  // ldmatrix lane patterns (see the fragment maps in mma_primitives.cuh):
  //   X: row offset (lane & 7) + 8 * ((lane >> 3) & 1), chunk offset lane >> 4
  //      -> A operand, row-major (non-trans) and B operand stored [k][n] (trans)
  //   Y: row offset (lane & 7) + 8 * (lane >> 4), chunk offset (lane >> 3) & 1
  //      -> B operand stored [n][k] (non-trans) and A operand stored [k][m] (trans)
  const int x_row = (lane & 7) + ((lane >> 3) & 1) * 8;
  const int x_chunk = lane >> 4;
  const int y_row = (lane & 7) + (lane >> 4) * 8;
  const int y_chunk = (lane >> 3) & 1;

  // ---- K, V of this kv tile: [B, Skv, Hkv, D], rows n0 .. n0 + 127 --------------------------------
  const uint16_t* k_head = static_cast<const uint16_t*>(p.k) + b * p.k_batch_stride + hkv * p.k_head_stride;
  const uint16_t* v_head = static_cast<const uint16_t*>(p.v) + b * p.v_batch_stride + hkv * p.v_head_stride;
  bwd_load_tile<Tr, kBlockN>(sK, k_head + n0 * p.k_row_stride, p.k_row_stride, kv_rows, tid);
  bwd_load_tile<Tr, kBlockN>(sV, v_head + n0 * p.v_row_stride, p.v_row_stride, kv_rows, tid);
  cp_async_commit();
  // Global positions of the kv rows (read by the per-element mask and ALiBi).
  if (tid < kBlockN) s_kpos[tid] = tid < kv_rows ? static_cast<int32_t>(p.kv_pos.position(n0 + tid)) : 0;
  // ALiBi cutoff: the q-tile interval of each q head of the group for this kv tile (keep[b, hq, n_tile];
  // the host enables the cutoff only for group <= kMaxCutGroup).
  uint32_t* s_keep = reinterpret_cast<uint32_t*>(smem + Tr::kSmemKeep);
  if (p.alibi_keep != nullptr && tid < p.group)
    s_keep[tid] = p.alibi_keep[(static_cast<int64_t>(b) * p.heads_q + hkv * p.group + tid) * p.num_kv_tiles + n_tile];
  if (p.alibi_keep != nullptr) __syncthreads();  // s_keep is read by every warp's first next_work below

  BwdWalk walk;
  p.kv_pos.range(n0, n0 + kv_rows, &walk.k_min, &walk.k_max);
  if (p.has_blocks) {
    walk.e0 = __ldg(p.col_offset + n_tile);
    walk.n_items = 2 * (__ldg(p.col_offset + n_tile + 1) - walk.e0);
    walk.rot = 0;
  } else {
    walk.e0 = 0;
    walk.n_items = p.num_q_tiles;
    walk.rot = static_cast<int>((static_cast<int64_t>(n_tile) * p.num_q_tiles) / p.num_kv_tiles) % p.num_q_tiles;
  }

  // Warp roles per phase.
  const int wm_a = warp >> 2, wn_a = warp & 3;  // A/B: rows 32*wm_a, kv cols 32*wn_a of the 64 x 128 tile
  const int wn_c = warp & 3, wd_c = warp >> 2;  // C/D: kv rows 32*wn_c, d cols (D/2)*wd_c
  const int wm_e = warp & 1, wd_e = warp >> 1;  // E:   q rows 32*wm_e, d cols (D/4)*wd_e

  // Per-lane swizzled smem offsets (bwd_lane_off), one per (phase, operand); the loops add the
  // compile-time parts. lx / ly: (row & 7) of the lane's ldmatrix row XOR its chunk offset.
  const int lx = (lane & 7) ^ x_chunk;
  const int ly = (lane & 7) ^ y_chunk;
  const uint32_t offA_q = bwd_lane_off((wm_a * 32 + x_row) * kRB, 0, lx);  // Q, dO: rows, chunk 2kk
  const uint32_t offA_k = bwd_lane_off((wn_a * 32 + y_row) * kRB, 0, ly);  // K, V:  rows, chunk 2kk
  // Phases B, C, E recompute theirs from bwd_tid_volatile() (see there):
  //   offS   P / dS stores: row 32*wm_a + g (+16mi + 8h), chunk 4*wn_a + ni, byte 4t inside the chunk
  //   offC_p P, dS (trans): rows kk*16 + y_row, chunk 4wn_c + 2mi;  offC_b dO, Q (trans): chunk (D/16)wd_c + 2nj
  //   offE_a dS: rows 32wm_e + x_row, chunk 2kk;                   offE_b K (trans): chunk (D/32)wd_e + 2nj

  float acc_dv[2][Tr::kNTileC][4];
  float acc_dk[2][Tr::kNTileC][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < Tr::kNTileC; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc_dv[i][j][r] = acc_dk[i][j][r] = 0.f;

  // ---- the walk: (q head of the group gh, item) ---------------------------------------------------
  // Items are classified 32 at a time, one per lane; `hits` holds the ballot of the non-empty ones of
  // the current window [scan_base, scan_base + 32) not consumed yet, and each lane keeps its item's
  // tile and class for the shuffle that hands them out. Every warp runs the same walk (uniform result).
  int gh = 0, scan_base = -32, my_tile = 0, my_cls = 0, tile = 0, cls = 0;
  unsigned hits = 0;
  auto next_work = [&]() -> bool {
    while (true) {
      if (hits) {
        const int src = __ffs(hits) - 1;
        hits &= hits - 1;
        tile = __shfl_sync(0xffffffffu, my_tile, src);
        cls = __shfl_sync(0xffffffffu, my_cls, src);
        return true;
      }
      scan_base += 32;
      if (scan_base >= walk.n_items) {
        if (++gh >= p.group) return false;
        scan_base = 0;
      }
      const int mine = scan_base + lane;
      bool my_cut = false;
      my_cls = mine < walk.n_items ? bwd_classify_item<Tr>(p, walk, mine, s_keep[gh], &my_tile, &my_cut) : 0;
      hits = __ballot_sync(0xffffffffu, my_cls != 0);
      if (p.alibi_cut_count != nullptr) {  // tests: pairs the ALiBi cutoff judged cuttable (one warp counts)
        const unsigned cuts = __ballot_sync(0xffffffffu, my_cut);
        if (threadIdx.x == 0 && cuts != 0) atomicAdd(p.alibi_cut_count, static_cast<unsigned long long>(__popc(cuts)));
      }
    }
  };
  // Q and dO rows [m0, m0 + 64) of q head hq into buffer `which`, with their LSE and delta.
  auto load_q_tile = [&](int hq, int m0, int which) {
    const uint16_t* q = static_cast<const uint16_t*>(p.q) + b * p.q_batch_stride + hq * p.q_head_stride;
    const uint16_t* d = static_cast<const uint16_t*>(p.dout) + b * p.dout_batch_stride + hq * p.dout_head_stride;
    const int rows_left = p.seqlen_q - m0;
    const uint32_t sq = s_base + Tr::kSmemQ + which * kBlockM * kRB;
    const uint32_t sd = s_base + Tr::kSmemDO + which * kBlockM * kRB;
    if (rows_left >= kBlockM) {  // every tile but the last: no per-row predicates or address selects
      bwd_load_tile<Tr, kBlockM, false>(sq, q + m0 * p.q_row_stride, p.q_row_stride, rows_left, tid);
      bwd_load_tile<Tr, kBlockM, false>(sd, d + m0 * p.dout_row_stride, p.dout_row_stride, rows_left, tid);
    } else {
      bwd_load_tile<Tr, kBlockM>(sq, q + m0 * p.q_row_stride, p.q_row_stride, rows_left, tid);
      bwd_load_tile<Tr, kBlockM>(sd, d + m0 * p.dout_row_stride, p.dout_row_stride, rows_left, tid);
    }
  };
  auto load_stats = [&](int hq, int row0, int which) {
    bwd_load_stats<Tr>(s_base + Tr::kSmemLse + which * kBlockM * 4, s_base + Tr::kSmemDelta + which * kBlockM * 4,
                       p.lse + b * p.lse_batch_stride + hq * p.lse_head_stride,
                       p.delta + b * p.delta_batch_stride + hq * p.delta_head_stride, row0, p.seqlen_q, tid);
  };

  bool have = next_work();
  if (have) {
    const int hq = hkv * p.group + gh;
    load_q_tile(hq, tile * kBlockM, 0);
    load_stats(hq, tile * kBlockM, 0);
  }
  cp_async_commit();

  int buf = 0;
  while (have) {
    const int cur_hq = hkv * p.group + gh;
    const int cur_tile = tile;
    const int cur_cls = cls;
    const int m0 = cur_tile * kBlockM;
    have = next_work();

    cp_async_wait<0>();
    __syncthreads();  // this tile's Q/dO landed; every warp is done with the previous tile's smem
    if (have) {
      const int hq = hkv * p.group + gh;
      load_q_tile(hq, tile * kBlockM, buf ^ 1);
      load_stats(hq, tile * kBlockM, buf ^ 1);
    }
    cp_async_commit();

    const uint32_t sQ = s_base + Tr::kSmemQ + buf * kBlockM * kRB;
    const uint32_t sDO = s_base + Tr::kSmemDO + buf * kBlockM * kRB;

    // ---- phase A/B -----------------------------------------------------------------------------------
    // This warp's 32 x 32 of the 64 x 128 tile; element (mi, ni, r): row 32*wm_a + 16*mi + g + 8*(r>>1),
    // kv col 32*wn_a + 8*ni + 2t + (r&1). Order: S = Q K^T -> P = exp2(...) (masked) -> P to smem as
    // 16-bit, kept packed in 16 registers -> dP = dO V^T -> dS = P (dP - delta) -> smem. Holding P packed
    // instead of S and dP both in fp32 keeps the loop under the register limit without spills.
    auto gemm_a = [&](float(&acc)[2][4][4], uint32_t sA, uint32_t sB) {
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        uint32_t a[2][4], bb[2][4];
        const uint32_t oq = bwd_j_off(offA_q, kk), ok = bwd_j_off(offA_k, kk);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) bwd_ldsm_x4(a[mi], sA + oq + mi * 16 * kRB);  // rows 32wm_a + 16mi
#pragma unroll
        for (int nj = 0; nj < 2; ++nj) bwd_ldsm_x4(bb[nj], sB + ok + nj * 16 * kRB);  // n8 tiles 2nj, 2nj+1
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) mma_16816<T>(acc[mi][ni], a[mi], &bb[ni >> 1][(ni & 1) * 2]);
      }
    };
    uint32_t p_pk[2][4][2];  // P as 16-bit pairs: [mi][ni][h] = cols (2t, 2t+1) of row +8h
    uint32_t offS;           // P / dS stores: row 32*wm_a + g (+16mi + 8h), chunk 4*wn_a + ni, byte 4t
    {
      const int vt = bwd_tid_volatile(), vl = vt & 31, vw = vt >> 5;
      offS = bwd_lane_off(((vw >> 2) * 32 + (vl >> 2)) * kPRB, (vw & 3) * 4, vl >> 2) + 4 * (vl & 3);
    }
    {
      float acc_s[2][4][4];
      gemm_a(acc_s, sQ, sK);
      // LSE of this thread's 4 rows; -inf (no visible key) and rows past Sq become +inf: P = 0 there.
      float lse2[2][2];
      const float* s_lse = reinterpret_cast<const float*>(smem + Tr::kSmemLse) + buf * kBlockM;
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int rl = wm_a * 32 + mi * 16 + g + 8 * h;
          const float l = s_lse[rl];
          lse2[mi][h] = m0 + rl < p.seqlen_q && l != -INFINITY ? l * kLog2e : INFINITY;
        }
      const bool band_check = cur_cls == 1;
      const bool alibi = p.alibi_slopes != nullptr;
      if (!band_check && !kv_tail && !alibi) {  // full tile: no per-element work besides the exp
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r)
              acc_s[mi][ni][r] = fast_exp2(fmaf(acc_s[mi][ni][r], p.scale_log2, -lse2[mi][r >> 1]));
      } else {
        if (kAlibiSplit && cur_cls >= 3) {
          // ALiBi, full tile, one sign of d = pos_q - pos_k (classify: 3 d >= 0, 4 d <= 0). With s2 = -slope
          // log2(e) sign: bias = s2 d = s2 (pos_q - kb) - s2 (pos_k - kb), kb = the tile's first kv position. The
          // row part joins -LSE_log2 once per row, the column part is one value per column: one FFMA + one FADD
          // per element instead of the |d| chain and the visibility select.
          // Global positions of this thread's rows (one multiply-add when the tile lies in one chunk).
          int32_t qpos[2][2];
          int64_t base, step;
          const bool aff = p.q_pos.affine(m0, min(m0 + kBlockM, p.seqlen_q), &base, &step);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int rl = wm_a * 32 + mi * 16 + g + 8 * h;
              qpos[mi][h] = m0 + rl >= p.seqlen_q ? 0
                            : aff                 ? static_cast<int32_t>(base + rl * step)
                                                  : static_cast<int32_t>(p.q_pos.position(m0 + rl));
            }
          const float s2 = (cur_cls == 3 ? -kLog2e : kLog2e) * __ldg(p.alibi_slopes + cur_hq);
          const int32_t kb = s_kpos[0];
          float rowc[2][2];
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) rowc[mi][h] = fmaf(s2, static_cast<float>(qpos[mi][h] - kb), -lse2[mi][h]);
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int col = wn_a * 32 + ni * 8 + 2 * t + c;
              const float colc = -s2 * static_cast<float>(s_kpos[col] - kb);
#pragma unroll
              for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  const int r = 2 * h + c;
                  acc_s[mi][ni][r] = fast_exp2(fmaf(acc_s[mi][ni][r], p.scale_log2, rowc[mi][h]) + colc);
                }
            }
        } else {
          const float slope2 = alibi ? -__ldg(p.alibi_slopes + cur_hq) * kLog2e : 0.f;
          // Global positions of this thread's rows (one multiply-add when the tile lies in one chunk).
          int32_t qpos[2][2];
          int64_t base, step;
          const bool aff = p.q_pos.affine(m0, min(m0 + kBlockM, p.seqlen_q), &base, &step);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int rl = wm_a * 32 + mi * 16 + g + 8 * h;
              qpos[mi][h] = m0 + rl >= p.seqlen_q ? 0
                            : aff                 ? static_cast<int32_t>(base + rl * step)
                                                  : static_cast<int32_t>(p.q_pos.position(m0 + rl));
            }
#pragma unroll
          for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int col = wn_a * 32 + ni * 8 + 2 * t + c;
              const int32_t kp = s_kpos[col];
              const bool col_ok = col < kv_rows;
#pragma unroll
              for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  const int r = 2 * h + c;
                  const int32_t d = qpos[mi][h] - kp;
                  const bool vis = col_ok && (!band_check || (d >= p.band_lo32 && d <= p.band_hi32));
                  float x = fmaf(acc_s[mi][ni][r], p.scale_log2, -lse2[mi][h]);
                  x = fmaf(slope2, static_cast<float>(d < 0 ? -d : d), x);
                  acc_s[mi][ni][r] = vis ? fast_exp2(x) : 0.f;
                }
            }
        }
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            p_pk[mi][ni][h] = pack2<T>(acc_s[mi][ni][2 * h], acc_s[mi][ni][2 * h + 1]);
            bwd_sts_u32(sP + (offS ^ static_cast<uint32_t>(16 * ni)) + (mi * 16 + 8 * h) * kPRB, p_pk[mi][ni][h]);
          }
    }
    {
      float acc_dp[2][4][4];
      gemm_a(acc_dp, sDO, sV);
      const float* s_dl = reinterpret_cast<const float*>(smem + Tr::kSmemDelta) + buf * kBlockM;
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int rl = wm_a * 32 + mi * 16 + g + 8 * h;
          const float dl = m0 + rl < p.seqlen_q ? s_dl[rl] : 0.f;
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) {
            const float2 pr = unpack2<T>(p_pk[mi][ni][h]);
            const uint32_t ds = pack2<T>(pr.x * (acc_dp[mi][ni][2 * h] - dl), pr.y * (acc_dp[mi][ni][2 * h + 1] - dl));
            bwd_sts_u32(sDS + (offS ^ static_cast<uint32_t>(16 * ni)) + (mi * 16 + 8 * h) * kPRB, ds);
          }
        }
    }
    __syncthreads();  // P and dS complete

    // ---- phases C, D: dV += P^T dO, dK += dS^T Q (k = the tile's 64 q rows) -------------------------
    uint32_t offC_p, offC_b;
    {
      const int vt = bwd_tid_volatile(), vl = vt & 31, vw = vt >> 5;
      const int vxr = (vl & 7) + ((vl >> 3) & 1) * 8, vyr = (vl & 7) + (vl >> 4) * 8;
      const int vlx = (vl & 7) ^ (vl >> 4), vly = (vl & 7) ^ ((vl >> 3) & 1);
      offC_p = bwd_lane_off(vyr * kPRB, (vw & 3) * 4, vly);
      offC_b = bwd_lane_off(vxr * kRB, (vw >> 2) * (kHeadDim / 16), vlx);
    }
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      uint32_t a_p[2][4], a_ds[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {  // A = P^T: stored [m][n], rows k = m (kk*16 + y_row), chunk 4wn_c + 2mi
        const uint32_t o = bwd_j_off(offC_p, mi) + kk * 16 * kPRB;
        bwd_ldsm_x4_t(a_p[mi], sP + o);
        bwd_ldsm_x4_t(a_ds[mi], sDS + o);
      }
#pragma unroll
      for (int nj = 0; nj < Tr::kNTileC / 2; ++nj) {  // B = dO / Q: stored [m][d], rows k = m
        uint32_t b_do[4], b_q[4];
        const uint32_t o = bwd_j_off(offC_b, nj) + kk * 16 * kRB;  // rows kk*16 + x_row, chunk (D/16)wd_c + 2nj
        bwd_ldsm_x4_t(b_do, sDO + o);
        bwd_ldsm_x4_t(b_q, sQ + o);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          mma_16816<T>(acc_dv[mi][2 * nj], a_p[mi], &b_do[0]);
          mma_16816<T>(acc_dv[mi][2 * nj + 1], a_p[mi], &b_do[2]);
          mma_16816<T>(acc_dk[mi][2 * nj], a_ds[mi], &b_q[0]);
          mma_16816<T>(acc_dk[mi][2 * nj + 1], a_ds[mi], &b_q[2]);
        }
      }
    }

    // ---- phase E: dQ tile = scale * dS K (k = the 128 kv rows) -> atomics -------------------------
    {
      uint32_t offE_a, offE_b;
      {
        const int vt = bwd_tid_volatile(), vl = vt & 31, vw = vt >> 5;
        const int vxr = (vl & 7) + ((vl >> 3) & 1) * 8;
        const int vlx = (vl & 7) ^ (vl >> 4);
        offE_a = bwd_lane_off(((vw & 1) * 32 + vxr) * kPRB, 0, vlx);
        offE_b = bwd_lane_off(vxr * kRB, (vw >> 1) * (kHeadDim / 32), vlx);
      }
      float acc_dq[2][Tr::kNTileE][4];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < Tr::kNTileE; ++j)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc_dq[i][j][r] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t a_ds[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)                                          // A = dS: stored [m][n], row-major
          bwd_ldsm_x4(a_ds[mi], sDS + bwd_j_off(offE_a, kk) + mi * 16 * kPRB);  // rows 32wm_e + 16mi, chunk 2kk
#pragma unroll
        for (int nj = 0; nj < Tr::kNTileE / 2; ++nj) {  // B = K: stored [n][d], rows k = n
          uint32_t b_k[4];
          bwd_ldsm_x4_t(b_k, sK + bwd_j_off(offE_b, nj) + kk * 16 * kRB);  // rows kk*16, chunk (D/32)wd_e + 2nj
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            mma_16816<T>(acc_dq[mi][2 * nj], a_ds[mi], &b_k[0]);
            mma_16816<T>(acc_dq[mi][2 * nj + 1], a_ds[mi], &b_k[2]);
          }
        }
      }
      // Element (mi, ni, r): q row m0 + 32*wm_e + 16*mi + g + 8*(r>>1), d = (D/4)*wd_e + 8*ni + 2t + (r&1).
      float* dq_head = p.dq_accum + b * p.dq_accum_batch_stride + cur_hq * p.dq_accum_head_stride;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      // sm_90: one 8-byte vector reduction per column pair straight from the accumulator: 16 per thread
      // per tile instead of 32 scalar ones (fewer LSU slots and fewer registers pinned by in-flight
      // reductions). Measured equal to 16-byte reductions after a lane-pair shuffle, and simpler.
      // The scaled values are formed before the first reduction is issued, so no data register is
      // rewritten while an earlier reduction may still be reading it.
      const int row0 = m0 + wm_e * 32 + g;
      // Row stride D: the 16 reductions use one address register plus immediate offsets.
      float* dst = dq_head + static_cast<int64_t>(row0) * kHeadDim + wd_e * (kHeadDim / 4) + 2 * t;
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < Tr::kNTileE; ++ni)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc_dq[mi][ni][r] *= p.scale;
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (row0 + mi * 16 + h * 8 < p.seqlen_q) {
#pragma unroll
            for (int ni = 0; ni < Tr::kNTileE; ++ni) {
              asm volatile("red.relaxed.gpu.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(
                               dst + (mi * 16 + h * 8) * kHeadDim + ni * 8),
                           "f"(acc_dq[mi][ni][2 * h]), "f"(acc_dq[mi][ni][2 * h + 1])
                           : "memory");
            }
          }
        }
#else
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = m0 + wm_e * 32 + mi * 16 + g + 8 * h;
          if (row < p.seqlen_q) {
            float* dst = dq_head + static_cast<int64_t>(row) * kHeadDim + wd_e * (kHeadDim / 4) + 2 * t;
#pragma unroll
            for (int ni = 0; ni < Tr::kNTileE; ++ni) {
              atomicAdd(dst + ni * 8, acc_dq[mi][ni][2 * h] * p.scale);
              atomicAdd(dst + ni * 8 + 1, acc_dq[mi][ni][2 * h + 1] * p.scale);
            }
          }
        }
#endif
    }
    buf ^= 1;
  }
  cp_async_wait<0>();  // nothing may be in flight when the CTA exits (an empty walk still loaded K/V)

  // ---- epilogue: dK = scale * acc_dk, dV = acc_dv; rows n0 + 32*wn_c + 16*mi + g + 8*h --------------
  // Element (mi, ni, r): kv row as above with h = r>>1, d = (D/2)*wd_c + 8*ni + 2t + (r&1).
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int rl = wn_c * 32 + mi * 16 + g + 8 * h;
      if (rl >= kv_rows) continue;
      const int64_t row = n0 + rl;
      const int64_t dk_off = b * p.dk_batch_stride + row * p.dk_row_stride + hkv * p.dk_head_stride;
      const int64_t dv_off = b * p.dv_batch_stride + row * p.dv_row_stride + hkv * p.dv_head_stride;
#pragma unroll
      for (int ni = 0; ni < Tr::kNTileC; ++ni) {
        const int d = wd_c * (kHeadDim / 2) + ni * 8 + 2 * t;
        const float k0 = acc_dk[mi][ni][2 * h] * p.scale, k1 = acc_dk[mi][ni][2 * h + 1] * p.scale;
        const float v0 = acc_dv[mi][ni][2 * h], v1 = acc_dv[mi][ni][2 * h + 1];
        if (p.dk_fp32) {
          float2* dst = reinterpret_cast<float2*>(static_cast<float*>(p.dk) + dk_off + d);
          float2 val = make_float2(k0, k1);
          if (p.accumulate_dkdv) {
            const float2 old = *dst;
            val.x += old.x;
            val.y += old.y;
          }
          *dst = val;
        } else {
          *reinterpret_cast<uint32_t*>(static_cast<T*>(p.dk) + dk_off + d) = pack2<T>(k0, k1);
        }
        if (p.dv_fp32) {
          float2* dst = reinterpret_cast<float2*>(static_cast<float*>(p.dv) + dv_off + d);
          float2 val = make_float2(v0, v1);
          if (p.accumulate_dkdv) {
            const float2 old = *dst;
            val.x += old.x;
            val.y += old.y;
          }
          *dst = val;
        } else {
          *reinterpret_cast<uint32_t*>(static_cast<T*>(p.dv) + dv_off + d) = pack2<T>(v0, v1);
        }
      }
    }
}

}  // namespace kernels
}  // namespace distattn
