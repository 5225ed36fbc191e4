// The CUDA forward attention kernel: flash-attention 2 style tiling with online softmax, mma.sync
// m16n8k16 (sm_80+; no Hopper-only instruction), cp.async loads into XOR-swizzled shared memory.
//
// One CTA = one q tile of kBlockM = 128 rows (= kLayoutBlock, so q tile m is CSR row m of a block list)
// of one (batch, q head). 4 warps; warp w owns q rows [32w, 32w + 32) of the tile as two m16 tiles.
// The CTA walks the kv tiles (kBlockN rows) from the last to the first, skipping every tile that is
// empty under the mask (no load, no math) -- with ALiBi where the cutoff applies (see "ALiBi cutoff"), also
// every tile whose exp2 underflows to exactly 0, and non-causal walks then start at the diagonal -- and for
// each visited tile:
//
//   wait K[n]; barrier; issue V[n]                    (V's load overlaps S = Q K^T)
//   find the next non-empty tile n'                   (scalar work while few registers are live)
//   S = Q K^T            Q and K fragments by ldmatrix from shared memory
//   mask / ALiBi         element mask only on partial tiles and the tile that crosses Skv; ALiBi as one
//                        FFMA per element plus a per-row term on tiles where pos_q - pos_k has one sign
//   wait V[n]; barrier; issue K[n']                   (K's load overlaps the softmax and O += P V)
//   online softmax       exp2, tree max/sum, quad reduction with 2 shuffles, lazy rescaling of O
//   prepare tile n'      its plan (mask? ALiBi form?) and, if needed, its kv positions, into smem
//   O += P V             P converted to 16 bit in registers and used directly as the A operand
//
// so shared memory holds Q, one K tile and one V tile (64 KB at D = 128): two CTAs fit per SM. The
// accumulators take nearly all 255 registers, so CTA-uniform values (position ranges, slice offsets,
// the tile plan) live in shared memory and per-thread load offsets are rebuilt per use.
// Timings and the history of these choices: notes/fwd_kernel.md.
//
// Fragment layout of mma m16n8k16 (g = lane / 4, tq = lane % 4), used throughout:
//   accumulator of an m16 x n8 tile: c0,c1 -> (row g,   cols 2tq, 2tq+1)   c2,c3 -> (row g+8, same cols)
// S[mi][nj][e] is the score of q row 32w + 16mi + g + 8(e/2) and kv column 8nj + 2tq + e%2 of the tile;
// O[mi][dj][e] likewise with head-dim column 8dj + 2tq + e%2.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "distattn/core/mask.h"
#include "flash_fwd_params.h"
#include "mma_primitives.cuh"

namespace distattn {
namespace kernels {

template <int kHeadDim_, int kBlockN_>
struct FlashFwdTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;       // q rows per CTA (== kLayoutBlock)
  static constexpr int kBlockN = kBlockN_;  // kv rows per tile
  static constexpr int kNWarps = 4;
  static constexpr int kThreads = kNWarps * 32;
  static constexpr int kWarpRows = kBlockM / kNWarps;  // 32 q rows per warp
  static constexpr int kMTiles = kWarpRows / 16;       // m16 tiles per warp
  static constexpr int kNTiles = kBlockN / 8;          // n8 tiles of S per warp
  static constexpr int kDTiles = kHeadDim / 8;         // n8 tiles of O per warp
  static constexpr int kSmemQ = kBlockM * kHeadDim;    // elements
  static constexpr int kSmemKV = kBlockN * kHeadDim;   // elements of one K (or V) tile
  // Q, K, V tiles, then the kv rows' positions (int32), the q rows' positions (int32), the CTA state.
  static constexpr int kSmemBytes = (kSmemQ + 2 * kSmemKV) * 2 + kBlockN * 4 + kBlockM * 4 + 128;
  // Dense tile walk: groups of this many tiles are classified at once to jump over long empty runs.
  static constexpr int kSkipGroup = 16;
  // CTAs per SM the register budget is sized for (D = 128 needs ~255 registers: O 128 + S 64 per
  // thread; a cap of 168 for a third CTA made D = 64 spill).
  static constexpr int kMinBlocksPerSM = 2;

  static_assert(kBlockM == kLayoutBlock, "q tile m must be block-list row m");
  static_assert(kLayoutBlock % kBlockN == 0, "kv tiles must divide the layout block");
  static_assert(kHeadDim % 64 == 0, "the swizzle works on 128-byte row groups");
};

namespace fwd_detail {

// CTA-uniform values kept in shared memory instead of registers (the accumulators need nearly all 255).
struct CtaState {
  int64_t q_min, q_max;  // global position range of this CTA's q rows
  int64_t k_offset;      // elements from k_ptr to this CTA's (batch, kv head) slice
  int64_t v_offset;      // same for v_ptr
  int list_begin;        // block list: CSR offset of this q block's row
  int count;             // candidate kv tiles
  float alibi_coef;      // -slope_h / softmax_scale (0 without ALiBi)
  // Plan of the kv tile in flight (written by prepare_tile before the barrier that publishes it):
  int plan_mask;         // 0: no element mask; 1: band + Skv bound (partial tile); 2: Skv bound only (a FULL or
                         // unmasked tile crossing Skv: the band must not touch it, a listed FULL block is visible)
  int plan_per_element;  // 1: mask and/or ALiBi from the per-row positions in sKPos
  int plan_k_base;       // fast ALiBi: pos(k0 + c) = plan_k_base + c * plan_k_step
  int plan_k_step;
  int plan_sign;  // fast ALiBi: sign shared by every pos_q - pos_k of the tile (0: mixed)
  // ALiBi cutoff (alibi_cutoff_rows). The walk visits tiles t >= t_lo only (0 without the cutoff). Mode 2
  // (non-causal) also rotates it: rot_d_hi, rot_d_hi - 1, ..., t_lo, then rot_t_hi, ..., rot_d_hi + 1.
  int t_lo;
  int rot_d_hi, rot_t_hi;
  float q_norm_sq[4];  // per warp: max ||q_row||^2 over the warp's 32 rows (cutoff only)
  float k_norm_sq;     // max ||k_row||^2 of this (batch, kv head) (cutoff only)
  float slope;         // ALiBi slope of this head (cutoff only)
  int alibi_base;      // ALiBi column form (kAlibiMode 2): the CTA's first q position (q_min)
};
static_assert(sizeof(CtaState) <= 128, "FlashFwdTraits::kSmemBytes reserves 128 bytes for the CTA state");

// Shared-memory layout of a [rows][kHeadDim] 16-bit tile: each row is kHeadDim / 8 chunks of 16 bytes;
// chunk c of row r is stored at chunk position c ^ (r % 8) (only the low 3 bits flip). The 8 rows an
// ldmatrix phase reads (or a cp.async phase writes) at the same logical chunk then hit 8 different
// 16-byte bank groups: no bank conflicts, without padding.
template <int kHeadDim>
__device__ __forceinline__ int swizzle(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
}

__device__ __forceinline__ void ldsm_x4(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t* r, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Copies rows [row0, row0 + kRows) of a [seq, kHeadDim] slice (row stride in elements) into a swizzled
// tile; rows at or past `num_rows` are zero-filled (they must not hold NaN garbage: P * V reads them).
// Thread tid copies 16-byte chunks tid, tid + kThreads, ...: consecutive threads read consecutive
// chunks of a row, so every warp reads whole 128-byte lines.
__device__ __forceinline__ int thread_index() {
  int t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  return t;
}

// Thread tid always copies chunk tid % kChunks of rows tid / kChunks + i * kRowStep; kRowStep is a
// multiple of 8, so the swizzle of all its rows is the same and one base offset serves every copy.
// tid is re-read per call (asm volatile) so the per-thread offsets are rebuilt each time instead of being
// hoisted out of the kv loop into registers the accumulators need.
template <int kRows, int kHeadDim, int kThreads, typename T>
__device__ __forceinline__ void load_tile(T* smem, const T* gbase, int64_t row_stride, int row0, int num_rows) {
  const int tid = thread_index();
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kRowStep = kThreads / kChunks;
  constexpr int kIters = kRows / kRowStep;
  static_assert(kRows % kRowStep == 0 && kRowStep % 8 == 0, "tile must split evenly over the threads");
  const int r = tid / kChunks;
  const int c = tid % kChunks;
  T* dst = smem + swizzle<kHeadDim>(r, c);
  const int rows_left = num_rows - row0 - r;  // copy i exists iff i * kRowStep < rows_left
  const T* src = gbase + static_cast<int64_t>(row0 + r) * row_stride + c * 8;
  const int64_t src_step = kRowStep * row_stride;
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
    const bool ok = i * kRowStep < rows_left;
    cp_async_16(dst + i * kRowStep * kHeadDim, ok ? src + i * src_step : gbase, ok);
  }
}

// PositionMap::range / affine with a shortcut for the common one-chunk map (fewer instructions on the
// per-tile path; same results).
__device__ __forceinline__ void fast_range(const PositionMap& m, int b, int e, int64_t* lo, int64_t* hi) {
  if (m.num_chunks == 1) {
    *lo = m.chunks[0].start + static_cast<int64_t>(b) * m.chunks[0].stride;
    *hi = m.chunks[0].start + static_cast<int64_t>(e - 1) * m.chunks[0].stride;
  } else {
    m.range(b, e, lo, hi);
  }
}
__device__ __forceinline__ bool fast_affine(const PositionMap& m, int b, int e, int64_t* base, int64_t* step) {
  if (m.num_chunks == 1) {  // b < e <= length (callers only ask for existing rows)
    *base = m.chunks[0].start + static_cast<int64_t>(b) * m.chunks[0].stride;
    *step = m.chunks[0].stride;
    return true;
  }
  return m.affine(b, e, base, step);
}

// Walks the kv tiles of one q tile from the last to the first, classifying each against the mask.
// Dense band: tile t covers kv rows [t*kBlockN, ...). Block list: tile t is sub-tile t % kPer of the
// (t / kPer)-th listed kv block of this q block (kPer = kLayoutBlock / kBlockN).
// kCutoff (the ALiBi instantiation): the walk may be bounded below by st.t_lo (cutoff mode 1) or rotated
// (mode 2, no skip-group jumps: candidate index and tile index differ there).
template <int kBlockN, int kSkipGroup, bool kCutoff>
struct KvTileWalker {
  static constexpr int kPer = kLayoutBlock / kBlockN;
  const FlashFwdParams& p;  // kernel parameters (param space)
  const CtaState& st;       // shared memory

  // Fills the CTA state (one thread; a barrier must follow before anyone walks).
  static __device__ void init(const FlashFwdParams& p, CtaState& st, int m_block, int m0, int m_end) {
    p.q_pos.range(m0, m_end, &st.q_min, &st.q_max);
    if (p.has_blocks) {
      st.list_begin = p.block_row_offset[m_block];
      st.count = (p.block_row_offset[m_block + 1] - st.list_begin) * kPer;
    } else {
      st.list_begin = 0;
      st.count = (p.seqlen_kv + kBlockN - 1) / kBlockN;
    }
    st.t_lo = 0;
    // Mode 2 (dense, so candidate t is tile t): d_hi = the higher of the CTA's two diagonal tiles (it holds
    // the own key of some existing q row, so it is never empty); t_lo <= d_hi <= rot_t_hi.
    st.rot_d_hi = min(m0 / kBlockN + 1, st.count - 1);
    st.rot_t_hi = st.count - 1;
  }

  // The first tile to visit (-1 if none): the last non-empty one, or in cutoff mode 2 the diagonal tile d_hi.
  __device__ __forceinline__ int first(int& n, TileVisibility& vis) const {
    if (kCutoff && p.alibi_cutoff == 2) {
      const int t = st.rot_d_hi;
      vis = classify(t, n);
      return t;
    }
    return prev(st.count - 1, n, vis);
  }
  __device__ DiagonalBand band() const {
    DiagonalBand b;
    b.lo = p.band_lo;
    b.hi = p.band_hi;
    return b;
  }

  // Classifies candidate t; sets n (the kv tile index: rows [n*kBlockN, ...)).
  __device__ __forceinline__ TileVisibility classify(int t, int& n) const {
    bool listed_full = false;
    if (p.has_blocks) {
      const int entry = st.list_begin + t / kPer;
      n = p.block_col_index[entry] * kPer + t % kPer;
      listed_full = p.block_row_partial[entry] == 0;
    } else {
      n = t;
    }
    const int k0 = n * kBlockN;
    if (k0 >= p.seqlen_kv) return TileVisibility::kEmpty;  // sub-tile of the last block past Skv
    if (listed_full) return TileVisibility::kFull;         // the list's promise; Skv still masked
    const int k1 = min(k0 + kBlockN, p.seqlen_kv);
    int64_t k_min, k_max;
    fast_range(p.kv_pos, k0, k1, &k_min, &k_max);
    return classify_tile(band(), st.q_min, st.q_max, k_min, k_max);
  }

  // The largest t' <= t whose tile is not empty (-1 if none), with its n and visibility.
  __device__ __forceinline__ int prev(int t, int& n, TileVisibility& vis) const {
    if (kCutoff && p.alibi_cutoff == 2) return prev_rotated(t, n, vis);
    const int t_lo = kCutoff ? st.t_lo : 0;
    while (t >= t_lo) {
      vis = classify(t, n);
      if (vis != TileVisibility::kEmpty) return t;
      --t;
      if (!p.has_blocks && t >= kSkipGroup - 1) {
        // Dense, inside an empty run: one range over the next kSkipGroup tiles; an empty union means
        // every tile in it is empty.
        const int k0 = (t - kSkipGroup + 1) * kBlockN;
        const int k1 = min((t + 1) * kBlockN, p.seqlen_kv);
        int64_t k_min, k_max;
        fast_range(p.kv_pos, k0, k1, &k_min, &k_max);
        if (classify_tile(band(), st.q_min, st.q_max, k_min, k_max) == TileVisibility::kEmpty) t -= kSkipGroup;
      }
    }
    return -1;
  }

  // Mode 2: the next non-empty tile of the rotated walk at or after candidate t (-1 at the end). Segment 1 runs
  // d_hi down to t_lo, segment 2 rot_t_hi down to d_hi + 1. prev is called with t = (current tile) - 1, which
  // equals d_hi only when coming down segment 2: the end.
  __device__ __forceinline__ int prev_rotated(int t, int& n, TileVisibility& vis) const {
    while (true) {
      if (t < st.t_lo) t = st.rot_t_hi;  // segment 1 done (t_hi == d_hi: segment 2 is empty, next line ends)
      if (t == st.rot_d_hi) return -1;
      vis = classify(t, n);
      if (vis != TileVisibility::kEmpty) return t;
      --t;
    }
  }
};

// ---- ALiBi cutoff ------------------------------------------------------------------------------------
// With ALiBi, keys far from the diagonal get a bias so negative that their exp2 is exactly 0; the kernel then
// does not visit them. Premises (flash_fwd_api.cu enables it only where all hold): dense band with d = 0
// visible (causal: band_lo = 0 <= band_hi; non-causal: band_lo <= 0 <= band_hi), no block list, q_pos ==
// kv_pos as ONE chunk {start, stride, L} (so Sq == Skv, q row r and kv row r share a position and positions
// grow with the row), ALiBi slope > 0, finite inputs.
//   1. The first two tiles the walk visits are the CTA's diagonal tiles m0/kBlockN + 1 and m0/kBlockN (kv rows
//      [m0, m0 + 128)): causal (mode 1), because every tile above them is empty and the walk goes down from
//      the last non-empty one; non-causal (mode 2), because the walk is rotated to start there
//      (KvTileWalker::first / prev_rotated). So every q row r has seen its own key (d = 0, bias 0) before any other.
//   2. Its running max M_r (unscaled t = q.k + coef |d|) is then >= q_r.k_r >= -|q_r| Kmax, and a key at
//      distance dist has t <= |q_r| Kmax - dist * slope / scale. In the log2 units of p = exp2((t - m) scale_log2)
//      with the lazy reference max m >= M - kRescaleLog2 / scale_log2:
//        (t - m) scale_log2 <= 2 scale_log2 Qmax Kmax - slope log2(e) dist + kRescaleLog2.
//   3. Where that is <= -160, ex2.approx.ftz returns exactly +0 (results below 2^-126 are flushed): the tile
//      adds +0 to every row sum and 0 * V to O, and moves no row max (its max is below m - kRescaleLog2). The
//      state after it equals the state before it, so skipping it changes no bit of O or LSE, wherever it sits
//      in the walk (the walk order itself is the same with and without skipping).
// Margins: 2^-10 relative on the dot-product and the bias terms (norms, mma accumulation, fp32 bias and
// exponent arithmetic are all ~1e-6 relative), plus 176 = 160 + kRescaleLog2 + 8 absolute (log2 units).
// Returns the smallest distance in rows (of `stride` positions) that clears the bound, or -1 when nothing may
// be cut (NaN / inf norms, slope <= 0 or too small, or a distance beyond 2^30 rows).
__device__ __forceinline__ int alibi_cutoff_rows(const FlashFwdParams& p, float q_norm_sq, float k_norm_sq,
                                                 float slope) {
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr float kMarginLog2 = 176.f;
  constexpr float kRel = 1.f / 1024.f;
  const float dot_log2 = p.scale_log2 * sqrtf(q_norm_sq) * sqrtf(k_norm_sq);  // bound on |q.k| scale_log2
  const float need_log2 = fmaf(2.f * dot_log2, 1.f + kRel, kMarginLog2);
  const float per_row_log2 = slope * kLog2e * static_cast<float>(p.q_pos.chunks[0].stride) * (1.f - kRel);
  if (!(need_log2 <= 3.0e38f) || !(per_row_log2 > 0.f)) return -1;
  const float rows = ceilf(need_log2 / per_row_log2);  // >= 1
  return rows <= 1073741824.f ? static_cast<int>(rows) : -1;
}

// Thread 0, once per CTA (after the q norms): narrows the walk to the tiles within `rows` rows of the CTA's q
// rows [m0, m0 + kBlockM) (phantom rows past Sq sit at the last row's position, inside that range).
//   below: kv rows < t_lo * kBlockN <= m0 + 1 - rows are >= rows before every q row;
//   above (mode 2): kv rows >= (t_hi + 1) * kBlockN >= m0 + kBlockM - 1 + rows are >= rows after every q row.
// Mode 2 also drops the tiles outside the mask's window (empty anyway: the same walk with or without skipping).
template <int kBlockM, int kBlockN>
__device__ void alibi_cutoff_apply(const FlashFwdParams& p, CtaState& st, int m0, int rows) {
  const int count = (p.seqlen_kv + kBlockN - 1) / kBlockN;
  int t_lo = 0, t_hi = count - 1;
  if (!p.alibi_cutoff_skip) rows = -1;  // the bit-identity reference: same walk, nothing skipped
  if (rows >= 0 && rows <= m0) t_lo = (m0 + 1 - rows) / kBlockN;  // <= m0 / kBlockN: the diagonal tiles stay
  if (p.alibi_cutoff == 1) {
    st.t_lo = t_lo;
    return;
  }
  if (rows >= 0) {
    const int64_t first_far = static_cast<int64_t>(m0) + kBlockM - 1 + rows;  // kv rows >= this: cut
    t_hi = static_cast<int>(min(static_cast<int64_t>(t_hi), (first_far + kBlockN - 1) / kBlockN - 1));
  }
  // Window: visible kv rows k satisfy -band_hi <= (k - q) * stride <= -band_lo for some q row of the CTA.
  const int64_t stride = p.q_pos.chunks[0].stride;
  const int64_t lo_row = static_cast<int64_t>(m0) - p.band_hi / stride;
  const int64_t hi_row = static_cast<int64_t>(m0) + kBlockM - 1 + (-p.band_lo) / stride;
  if (lo_row > 0) t_lo = max(t_lo, static_cast<int>(min(lo_row / kBlockN, static_cast<int64_t>(m0 / kBlockN))));
  if (hi_row < static_cast<int64_t>(count) * kBlockN) t_hi = min(t_hi, static_cast<int>(hi_row / kBlockN));
  st.t_lo = t_lo;
  st.rot_t_hi = max(t_hi, st.rot_d_hi);
}

}  // namespace fwd_detail

// kAlibiMode: 0 no ALiBi; 1 ALiBi, general form (|pos_q - pos_k| per element, or split into a row and a column
// part on tiles where the difference has one sign); 2 ALiBi where every visible pair has pos_q - pos_k >= 0
// (band_lo >= 0: causal): the bias -slope (pos_q - base) + slope (pos_k - base), base = the CTA's first q
// position, has a row part that is constant along each row, so it cancels in the softmax: the walk adds only the
// column part and the epilogue adds the row part to the LSE (so O is unchanged and the LSE exact).
template <typename T, int kHeadDim, int kBlockN, int kAlibiMode>
__global__ void __launch_bounds__(128, (FlashFwdTraits<kHeadDim, kBlockN>::kMinBlocksPerSM))
    flash_fwd_kernel(const __grid_constant__ FlashFwdParams p) {
  using Tr = FlashFwdTraits<kHeadDim, kBlockN>;
  constexpr bool kAlibi = kAlibiMode != 0;
  constexpr bool kColumnAlibi = kAlibiMode == 2;
  constexpr int kBlockM = Tr::kBlockM;
  constexpr int kMTiles = Tr::kMTiles;
  constexpr int kNTiles = Tr::kNTiles;
  constexpr int kDTiles = Tr::kDTiles;
  constexpr int kThreads = Tr::kThreads;
  constexpr float kLn2 = 0.6931471805599453f;
  constexpr float kRescaleLog2 = 8.f;  // lazy rescale threshold: p <= 2^8 between rescales
  const float kNegInf = -__int_as_float(0x7f800000);

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);                 // [kBlockM][kHeadDim] swizzled
  T* sK = sQ + Tr::kSmemQ;                                // [kBlockN][kHeadDim] swizzled
  T* sV = sK + Tr::kSmemKV;                               // [kBlockN][kHeadDim] swizzled
  int* sKPos = reinterpret_cast<int*>(sV + Tr::kSmemKV);  // [kBlockN] global position of each kv row
  int* sQPos = sKPos + kBlockN;                           // [kBlockM] global position of each q row
  auto& st = *reinterpret_cast<fwd_detail::CtaState*>(sQPos + kBlockM);

  // Heaviest q tiles first: under a causal mask the last q rows see the most keys, and starting them
  // first leaves the short tiles to fill the end of the grid.
  const int m_block = p.num_m_blocks - 1 - static_cast<int>(blockIdx.x);
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2;  // accumulator row within an m16 tile (and +8)
  const int tq = lane & 3;  // accumulator column pair within an n8 tile
  const int m0 = m_block * kBlockM;

  using Walker = fwd_detail::KvTileWalker<kBlockN, Tr::kSkipGroup, kAlibi>;
  if (tid == 0) {
    Walker::init(p, st, m_block, m0, min(m0 + kBlockM, p.seqlen_q));
    // ALiBi in the unscaled domain: t = q.k + alibi_coef * |pos_q - pos_k|, alibi_coef = -slope / scale.
    st.alibi_coef = kAlibi ? -p.alibi_slopes[h] / p.softmax_scale : 0.f;
    st.alibi_base = static_cast<int>(st.q_min);
    const int h_kv = h / p.head_group;
    if (kAlibi && p.alibi_cutoff != 0) {  // loaded now, used after Q has landed (before the walk)
      st.slope = p.alibi_slopes[h];
      st.k_norm_sq = p.kv_norm_sq_max[b * p.heads_kv + h_kv];
    }
    st.k_offset = b * p.k_batch_stride + h_kv * p.k_head_stride;
    st.v_offset = b * p.v_batch_stride + h_kv * p.v_head_stride;
  }
  // Global positions of the tile's q rows (rows past Sq, never written, take the last row's position).
  static_assert(kBlockM == kThreads, "one q row position per thread");
  sQPos[tid] = static_cast<int>(p.q_pos.position(min(m0 + tid, p.seqlen_q - 1)));
  __syncthreads();
  const Walker walker{p, st};
  // Row of this thread's accumulator element (mi, rr) within the tile: 32*warp + 16*mi + 8*rr + g.
  auto q_row_pos = [&](int mi, int rr) { return sQPos[warp * 32 + mi * 16 + rr * 8 + g]; };

  // Base pointers of this (b, h) slice: q/o [Sq, D] with row stride q_row_stride; k/v [Skv, D]. Recomputed
  // where used (a few integer ops) rather than held in registers across the kv loop.
  auto q_slice = [&]() {
    return static_cast<const T*>(p.q_ptr) + blockIdx.z * p.q_batch_stride + blockIdx.y * p.q_head_stride;
  };
  auto k_slice = [&]() { return static_cast<const T*>(p.k_ptr) + st.k_offset; };
  auto v_slice = [&]() { return static_cast<const T*>(p.v_ptr) + st.v_offset; };

  // Prepares the per-element data of kv tile n for whoever reads it after the next barrier: the plan
  // (thread 0) and, when a per-element path needs them, the kv rows' positions (rows past Skv: 0).
  // The fast ALiBi form needs the tile's kv rows in one chunk (affine) and |pos_q - pos_k| < 2^24 over
  // the tile, so that its fp32 arithmetic on integers is exact.
  auto prepare_tile = [&](int n, TileVisibility vis) {
    const int k0 = n * kBlockN;
    const bool band_mask = vis == TileVisibility::kPartial;
    const bool mask = band_mask || k0 + kBlockN > p.seqlen_kv;
    bool per_element = mask;
    if constexpr (kAlibi) {
      // Computed by every thread (a few integer ops; no warp waits on one thread's work).
      int64_t base64 = 0, step64 = 0;
      int sign = 0;  // +1: every pos_q - pos_k of the tile >= 0; -1: every one <= 0; 0: both signs
      bool fast = false;
      if (!mask && fwd_detail::fast_affine(p.kv_pos, k0, k0 + kBlockN, &base64, &step64)) {
        // All positions < 2^31 and the tile's rows all exist, so these int32 differences cannot overflow.
        const int k_base = static_cast<int>(base64);
        const int k_last = k_base + (kBlockN - 1) * static_cast<int>(step64);
        if constexpr (kColumnAlibi) {
          // Column form: base - pos_k over the tile, exact in fp32 below 2^24.
          const int base = st.alibi_base;
          fast = max(abs(base - k_base), abs(base - k_last)) < (1 << 24);
          sign = 1;
        } else {
          const int d_max = static_cast<int>(st.q_max) - k_base;
          const int d_min = static_cast<int>(st.q_min) - k_last;
          fast = max(abs(d_max), abs(d_min)) < (1 << 24);
          sign = d_min >= 0 ? 1 : (d_max <= 0 ? -1 : 0);
        }
      }
      per_element = !fast;
      if (tid == 0) {
        st.plan_k_base = static_cast<int>(base64);
        st.plan_k_step = static_cast<int>(step64);
        st.plan_sign = fast ? sign : 0;
      }
    }
    if (tid == 0) {
      st.plan_mask = band_mask ? 1 : (mask ? 2 : 0);
      st.plan_per_element = per_element;
    }
    if (per_element && tid < kBlockN) {
      // tid re-read here (asm volatile: not CSE'd), so the address is rebuilt on this rare path instead
      // of occupying a register (or a spill slot) across the whole loop.
      const int tid_now = fwd_detail::thread_index();
      const int row = k0 + tid_now;
      sKPos[tid_now] = row < p.seqlen_kv ? static_cast<int>(p.kv_pos.position(row)) : 0;
    }
  };

  float acc_o[kMTiles][kDTiles][4];
  float row_max[kMTiles][2];  // running max of t (unscaled) per owned row
  float row_sum[kMTiles][2];  // this thread's partial sum of exp2(t*scale_log2 - max*scale_log2)
#pragma unroll
  for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
    for (int dj = 0; dj < kDTiles; ++dj)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mi][dj][e] = 0.f;
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      row_max[mi][rr] = kNegInf;
      row_sum[mi][rr] = 0.f;
    }
  }

  // Per-lane byte offsets of the ldmatrix row addresses (see the swizzle). A fragment's logical chunk is
  // 2kk + x (x = 0 or 1), and (2kk + x) ^ (row % 8) == 2kk ^ (x ^ row % 8) because 2kk has bit 0 clear:
  // each lane keeps row * kRowBytes + ((x ^ row % 8) << 4) and XORs the compile-time 2kk << 4 in (the XOR
  // touches bits below kRowBytes only, i.e. the chunk bits; tile offsets are multiples of kRowBytes).
  constexpr int kRowBytes = kHeadDim * 2;
  const uint32_t smem_base = smem_u32(smem_raw);
  // Q (A operand, x4): matrices (rows 0-7, chunk 0) (rows 8-15, chunk 0) (rows 0-7, chunk 1) (rows 8-15, chunk 1)
  const uint32_t q_lane =
      (warp * 32 + (lane & 7) + ((lane >> 3) & 1) * 8) * kRowBytes + ((((lane >> 4) & 1) ^ (lane & 7)) << 4);
  // K (B operand, x4): matrices (kv rows 0-7, chunk 0) (0-7, chunk 1) (8-15, chunk 0) (8-15, chunk 1)
  const uint32_t k_lane = ((lane & 7) + ((lane >> 4) & 1) * 8) * kRowBytes + ((((lane >> 3) & 1) ^ (lane & 7)) << 4);
  // V (B operand, x4.trans): matrices (kv rows 0-7, d chunk 0) (8-15, chunk 0) (0-7, chunk 1) (8-15, chunk 1)
  const uint32_t v_lane = ((lane & 7) + ((lane >> 3) & 1) * 8) * kRowBytes + ((((lane >> 4) & 1) ^ (lane & 7)) << 4);
  constexpr uint32_t kOffK = Tr::kSmemQ * 2;
  constexpr uint32_t kOffV = (Tr::kSmemQ + Tr::kSmemKV) * 2;

  int n = 0;
  TileVisibility vis = TileVisibility::kEmpty;
  int t = walker.first(n, vis);

  if (t >= 0) {
    fwd_detail::load_tile<kBlockM, kHeadDim, kThreads>(sQ, q_slice(), p.q_row_stride, m0, p.seqlen_q);
    if constexpr (kAlibi) cp_async_commit();  // Q in a group of its own: the ALiBi cutoff waits for Q only
    fwd_detail::load_tile<kBlockN, kHeadDim, kThreads>(sK, k_slice(), p.k_row_stride, n * kBlockN, p.seqlen_kv);
    cp_async_commit();
    prepare_tile(n, vis);
    if constexpr (kAlibi) {
      if (p.alibi_cutoff != 0) {
        // ALiBi cutoff (fwd_detail::alibi_cutoff_rows), once per CTA before the walk: the largest q row norm
        // of the tile from Q in shared memory (rows past Sq were zero-filled), then the lowest tile to visit.
        cp_async_wait<1>();
        __syncthreads();  // Q landed (K[n] may still be in flight)
        float nsq = 0.f;
#pragma unroll
        for (int c = 0; c < kHeadDim / 8; ++c) {
          const uint4 w = *reinterpret_cast<const uint4*>(sQ + fwd_detail::swizzle<kHeadDim>(tid, c));
          nsq += (sq_sum2<T>(w.x) + sq_sum2<T>(w.y)) + (sq_sum2<T>(w.z) + sq_sum2<T>(w.w));
        }
        if (!(nsq <= 3.4e38f)) nsq = __int_as_float(0x7f800000);  // NaN / inf -> +inf: nothing is cut
#pragma unroll
        for (int off = 16; off >= 1; off /= 2) nsq = fmaxf(nsq, __shfl_xor_sync(0xffffffffu, nsq, off));
        static_assert(Tr::kNWarps == 4, "CtaState::q_norm_sq has one slot per warp");
        if (lane == 0) st.q_norm_sq[warp] = nsq;
        __syncthreads();
        if (tid == 0) {
          const float q_norm_sq =
              fmaxf(fmaxf(st.q_norm_sq[0], st.q_norm_sq[1]), fmaxf(st.q_norm_sq[2], st.q_norm_sq[3]));
          const int rows = fwd_detail::alibi_cutoff_rows(p, q_norm_sq, st.k_norm_sq, st.slope);
          fwd_detail::alibi_cutoff_apply<kBlockM, kBlockN>(p, st, m0, rows);
        }
        // st.t_lo (and rot_t_hi) are published by the barrier at the top of the walk, before walker.prev reads them.
      }
    }

    while (true) {
      cp_async_wait<0>();
      __syncthreads();  // K[n] (and Q) landed, tile n prepared; every warp is done with V of the previous tile
      fwd_detail::load_tile<kBlockN, kHeadDim, kThreads>(sV, v_slice(), p.v_row_stride, n * kBlockN, p.seqlen_kv);
      cp_async_commit();

      // The next non-empty tile, found now while few registers are live.
      int n_next = 0;
      TileVisibility vis_next = TileVisibility::kEmpty;
      const int t_next = walker.prev(t - 1, n_next, vis_next);

      // ---- S = Q K^T: [32 rows of this warp] x [kBlockN], k over the head dim in steps of 16 ----
      float s[kMTiles][kNTiles][4];
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
        for (int nj = 0; nj < kNTiles; ++nj)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mi][nj][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        uint32_t a[kMTiles][4];
        const uint32_t q_addr = smem_base + (q_lane ^ (kk << 5));
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi) fwd_detail::ldsm_x4(a[mi], q_addr + mi * 16 * kRowBytes);
        const uint32_t k_addr = smem_base + kOffK + (k_lane ^ (kk << 5));
#pragma unroll
        for (int nj2 = 0; nj2 < kNTiles / 2; ++nj2) {
          uint32_t bk[4];  // bk[0..1]: n8 tile 2*nj2, bk[2..3]: 2*nj2 + 1
          fwd_detail::ldsm_x4(bk, k_addr + nj2 * 16 * kRowBytes);
#pragma unroll
          for (int mi = 0; mi < kMTiles; ++mi) {
            mma_16816<T>(s[mi][2 * nj2], a[mi], bk);
            mma_16816<T>(s[mi][2 * nj2 + 1], a[mi], bk + 2);
          }
        }
      }

      // ---- mask and ALiBi (t = q.k + alibi_coef * |pos_q - pos_k|; masked -> -inf) ----
      // Signed ALiBi form (tile not per-element, every pos_q - pos_k of one sign): |d| = sign * d, so the
      // bias splits into a row part and a column part, coef * |d| = R_row + c * kcol with c = 8nj + e2 + 2tq
      // the tile column, R_row = coef * sign * (pos_q - k_base), kcol = -coef * sign * k_step. Elements
      // get s += (8nj + e2) * kcol (one FFMA each); row_off(mi, rr) = R_row + 2tq * kcol is added per row
      // in the softmax's max and exp. The score of element (mi, nj, e) is then s[mi][nj][e] + row_off.
      // Column form (kAlibiMode 2): t' = q.k + alibi_coef * (base - pos_k) (the row part dropped: the epilogue adds
      // it to the LSE); on fast tiles s += (8nj + e2) * kcol and lane_off = alibi_coef * (base - k_base) + 2tq *
      // kcol, one value per thread (no q row position involved), added in the max and exp like row_off.
      float row_off[kMTiles][2];  // 0 unless the tile takes the signed ALiBi form
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi) row_off[mi][0] = row_off[mi][1] = 0.f;
      float lane_off = 0.f;
      if (st.plan_per_element) {
        // Per element from the kv positions in shared memory (written before the barrier above).
        const bool mask = st.plan_mask != 0;
        const int k_valid = p.seqlen_kv - n * kBlockN;  // columns >= k_valid do not exist
        // Band bounds as int32 (|pos_q - pos_k| < 2^31; the +-2^40 sentinels clamp to the int32 ends). A tile
        // masked only for Skv (plan_mask 2: FULL, or unbanded) keeps every pair of the band: open bounds.
        const bool band = st.plan_mask == 1;
        const int band_lo = band ? static_cast<int>(max(p.band_lo, static_cast<int64_t>(INT32_MIN))) : INT32_MIN;
        const int band_hi = band ? static_cast<int>(min(p.band_hi, static_cast<int64_t>(INT32_MAX))) : INT32_MAX;
        const float alibi_coef = st.alibi_coef;
        const int base = kColumnAlibi ? st.alibi_base : 0;
#pragma unroll
        for (int nj = 0; nj < kNTiles; ++nj)
#pragma unroll
          for (int e2 = 0; e2 < 2; ++e2) {
            const int c = nj * 8 + 2 * tq + e2;
            const int pk = sKPos[c];
            const float col = alibi_coef * static_cast<float>(base - pk);  // column form only
#pragma unroll
            for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
              for (int rr = 0; rr < 2; ++rr) {
                const int d = q_row_pos(mi, rr) - pk;
                float& x = s[mi][nj][rr * 2 + e2];
                if (mask && (c >= k_valid || d < band_lo || d > band_hi)) {
                  x = kNegInf;
                } else if constexpr (kColumnAlibi) {
                  x += col;
                } else if constexpr (kAlibi) {
                  x = fmaf(static_cast<float>(d < 0 ? -d : d), alibi_coef, x);
                }
              }
          }
      } else if constexpr (kAlibi) {
        const float alibi_coef = st.alibi_coef;
        const int k_base = st.plan_k_base, k_step = st.plan_k_step;
        const float k_step_f = static_cast<float>(k_step);
        if constexpr (kColumnAlibi) {
          const float kcol = -alibi_coef * k_step_f;
          lane_off = fmaf(static_cast<float>(2 * tq), kcol, alibi_coef * static_cast<float>(st.alibi_base - k_base));
#pragma unroll
          for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
            for (int nj = 0; nj < kNTiles; ++nj)
#pragma unroll
              for (int e = 0; e < 4; ++e) s[mi][nj][e] = fmaf(static_cast<float>(nj * 8 + e % 2), kcol, s[mi][nj][e]);
        } else if (st.plan_sign != 0) {
          // Signed form: the column part here, the row part (row_off) in the softmax.
          const float kcol = -alibi_coef * static_cast<float>(st.plan_sign) * k_step_f;
#pragma unroll
          for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
            for (int rr = 0; rr < 2; ++rr)
              row_off[mi][rr] = fmaf(static_cast<float>(2 * tq), kcol,
                                     alibi_coef * static_cast<float>(st.plan_sign * (q_row_pos(mi, rr) - k_base)));
#pragma unroll
          for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
            for (int nj = 0; nj < kNTiles; ++nj)
#pragma unroll
              for (int e = 0; e < 4; ++e) s[mi][nj][e] = fmaf(static_cast<float>(nj * 8 + e % 2), kcol, s[mi][nj][e]);
        } else {
          // Both signs in the tile (it straddles pos_q == pos_k): d(c) = (pos_q - k_base - 2tq*k_step)
          // - (8nj + e2) * k_step, all integers below 2^24, so every fp32 operation is exact.
#pragma unroll
          for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
              const float d_row = static_cast<float>(q_row_pos(mi, rr) - k_base - 2 * tq * k_step);
#pragma unroll
              for (int nj = 0; nj < kNTiles; ++nj)
#pragma unroll
                for (int e2 = 0; e2 < 2; ++e2) {
                  const float d = fmaf(-static_cast<float>(nj * 8 + e2), k_step_f, d_row);
                  s[mi][nj][rr * 2 + e2] = fmaf(fabsf(d), alibi_coef, s[mi][nj][rr * 2 + e2]);
                }
            }
        }
      }

      cp_async_wait<0>();
      __syncthreads();  // V[n] landed; every warp is done reading K[n] and tile n's plan and positions
      if (t_next >= 0) {
        fwd_detail::load_tile<kBlockN, kHeadDim, kThreads>(sK, k_slice(), p.k_row_stride, n_next * kBlockN,
                                                           p.seqlen_kv);
        cp_async_commit();
      }

      // ---- online softmax (log2 domain): m = max t, p = exp2(t*scale_log2 - m*scale_log2) ----
      // Lazy rescaling: the reference max m of a row moves only when the tile's max exceeds it by more than
      // kRescaleLog2 (in log2 units) somewhere in the warp; otherwise p = exp2(t*scale_log2 - m*scale_log2)
      // stays below 2^kRescaleLog2 (fine for fp32 sums and for 16-bit P, whose relative precision does not
      // depend on magnitude) and the O accumulators are not touched: most tiles skip the 128 FMULs and
      // the factor exp of the rescale. The result is the same function: O and l share the reference max.
      const float scale_log2 = p.scale_log2;
      float tile_max[kMTiles][2];
      bool need = false;
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          // Tree reduction: independent pairs first, so the chain is log2(16) deep, not 16.
          float red[kNTiles];
#pragma unroll
          for (int nj = 0; nj < kNTiles; ++nj) red[nj] = fmaxf(s[mi][nj][rr * 2], s[mi][nj][rr * 2 + 1]);
#pragma unroll
          for (int w = kNTiles / 2; w >= 1; w /= 2)
#pragma unroll
            for (int j = 0; j < w; ++j) red[j] = fmaxf(red[j], red[j + w]);
          float mx = red[0];
          if constexpr (kColumnAlibi) {
            mx += lane_off;  // differs between the quad's lanes
          } else if constexpr (kAlibi) {
            mx += row_off[mi][rr];  // row_off differs between the quad's lanes
          }
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          tile_max[mi][rr] = mx;
          // -inf reference (nothing seen yet): any finite tile max needs the update.
          need |= mx * scale_log2 > fmaf(row_max[mi][rr], scale_log2, kRescaleLog2);
        }
      if (__any_sync(0xffffffffu, need)) {  // warp-uniform
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const float mx = fmaxf(row_max[mi][rr], tile_max[mi][rr]);
            // A row with nothing visible yet keeps max -inf: subtract 0 instead so exp2(-inf - x) stays 0
            // and never becomes exp2(-inf + inf) = NaN.
            const float m_scaled = mx == kNegInf ? 0.f : mx * scale_log2;
            const float factor = fast_exp2(row_max[mi][rr] * scale_log2 - m_scaled);  // old max -inf -> 0
            row_max[mi][rr] = mx;
            row_sum[mi][rr] *= factor;
#pragma unroll
            for (int dj = 0; dj < kDTiles; ++dj) {
              acc_o[mi][dj][rr * 2] *= factor;
              acc_o[mi][dj][rr * 2 + 1] *= factor;
            }
          }
      }
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const float mx = row_max[mi][rr];
          const float m_scaled = mx == kNegInf ? 0.f : mx * scale_log2;
          const float bias = kColumnAlibi ? fmaf(lane_off, scale_log2, -m_scaled)
                             : kAlibi     ? fmaf(row_off[mi][rr], scale_log2, -m_scaled)
                                          : -m_scaled;
          float red[kNTiles];
#pragma unroll
          for (int nj = 0; nj < kNTiles; ++nj) {
#pragma unroll
            for (int e2 = 0; e2 < 2; ++e2)
              s[mi][nj][rr * 2 + e2] = fast_exp2(fmaf(s[mi][nj][rr * 2 + e2], scale_log2, bias));
            red[nj] = s[mi][nj][rr * 2] + s[mi][nj][rr * 2 + 1];
          }
#pragma unroll
          for (int w = kNTiles / 2; w >= 1; w /= 2)
#pragma unroll
            for (int j = 0; j < w; ++j) red[j] += red[j + w];
          row_sum[mi][rr] += red[0];
        }

      // The next tile's plan and positions: sKPos is free (barrier above) and is read after the next one.
      if (t_next >= 0) prepare_tile(n_next, vis_next);

        // ---- O += P V: k over the tile's kv rows in steps of 16, P (fp32 accumulators) -> A fragments ----
#pragma unroll
      for (int kk = 0; kk < kNTiles / 2; ++kk) {
        uint32_t a[kMTiles][4];
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi) {
          // A fragment of rows (g, g+8) x kv cols 16kk + (2tq, 2tq+1, 2tq+8, 2tq+9): the accumulators of
          // n8 tiles 2kk and 2kk+1 in exactly the a0..a3 order.
          a[mi][0] = pack2<T>(s[mi][2 * kk][0], s[mi][2 * kk][1]);
          a[mi][1] = pack2<T>(s[mi][2 * kk][2], s[mi][2 * kk][3]);
          a[mi][2] = pack2<T>(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
          a[mi][3] = pack2<T>(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
        }
        const uint32_t v_off = kOffV + kk * 16 * kRowBytes + v_lane;
#pragma unroll
        for (int dj2 = 0; dj2 < kDTiles / 2; ++dj2) {
          uint32_t bv[4];  // bv[0..1]: head-dim n8 tile 2*dj2, bv[2..3]: 2*dj2 + 1
          fwd_detail::ldsm_x4_trans(bv, smem_base + (v_off ^ (dj2 << 5)));
#pragma unroll
          for (int mi = 0; mi < kMTiles; ++mi) {
            mma_16816<T>(acc_o[mi][2 * dj2], a[mi], bv);
            mma_16816<T>(acc_o[mi][2 * dj2 + 1], a[mi], bv + 2);
          }
        }
      }

      if (t_next < 0) break;
      t = t_next;
      n = n_next;
      vis = vis_next;
    }
  }

  // ---- epilogue: O = acc / l, LSE = (m*scale_log2 + log2 l) * ln 2; no visible key: O = 0, LSE = -inf ----
  const float scale_log2 = p.scale_log2;
  float lse_b[kMTiles][2], inv_l[kMTiles][2];
#pragma unroll
  for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float l = row_sum[mi][rr];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const bool any = l > 0.f;
      inv_l[mi][rr] = any ? 1.f / l : 0.f;
      float m_log2 = row_max[mi][rr] * scale_log2;
      // Column form: the row part alibi_coef * (pos_q - base) the walk left out (pos_q - base: 0 .. q range).
      if constexpr (kColumnAlibi)
        m_log2 = fmaf(st.alibi_coef * static_cast<float>(q_row_pos(mi, rr) - st.alibi_base), scale_log2, m_log2);
      lse_b[mi][rr] = any ? (m_log2 + __log2f(l)) * kLn2 : kNegInf;
    }

  if (!p.accumulate) {
    // Plain: o in q's dtype (two elements = 4 bytes per store) or fp32 (8 bytes per store).
    const int64_t o_off = b * p.o_batch_stride + h * p.o_head_stride;
    float* lse_base = p.lse_ptr ? p.lse_ptr + b * p.lse_batch_stride + h * p.lse_head_stride : nullptr;
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int row = m0 + warp * 32 + mi * 16 + rr * 8 + g;
        if (row >= p.seqlen_q) continue;
        const float il = inv_l[mi][rr];
        if (!p.o_fp32) {
          T* o_row = static_cast<T*>(p.o_ptr) + o_off + row * p.o_row_stride;
#pragma unroll
          for (int dj = 0; dj < kDTiles; ++dj) {
            *reinterpret_cast<uint32_t*>(o_row + dj * 8 + 2 * tq) =
                pack2<T>(acc_o[mi][dj][rr * 2] * il, acc_o[mi][dj][rr * 2 + 1] * il);
          }
        } else {
          float* o_row = static_cast<float*>(p.o_ptr) + o_off + row * p.o_row_stride;
#pragma unroll
          for (int dj = 0; dj < kDTiles; ++dj) {
            *reinterpret_cast<float2*>(o_row + dj * 8 + 2 * tq) =
                make_float2(acc_o[mi][dj][rr * 2] * il, acc_o[mi][dj][rr * 2 + 1] * il);
          }
        }
        if (lse_base != nullptr && tq == 0) lse_base[row * p.lse_row_stride] = lse_b[mi][rr];
      }
  } else {
    // Merge into the fp32 accumulator: L = logaddexp(lse, LSE_b); o = o e^(lse-L) + O_b e^(LSE_b-L).
    // The four lanes of a quad share a row: all read the old lse before any lane writes the new one.
    // Rows with lse = -inf (nothing merged yet) do not read o: callers initialise only lse, o may be garbage.
    // Final mode (o_final_ptr set): the merged row is written in T to o_final (every row; 0 where both parts
    // are empty) and o is only read; the fp32 values are rounded exactly as the separate cast pass would.
    float* o_base = static_cast<float*>(p.o_ptr) + b * p.o_batch_stride + h * p.o_head_stride;
    float* lse_base = p.lse_ptr + b * p.lse_batch_stride + h * p.lse_head_stride;
    const bool final_out = p.o_final_ptr != nullptr;
    T* of_base =
        final_out ? static_cast<T*>(p.o_final_ptr) + b * p.o_final_batch_stride + h * p.o_final_head_stride : nullptr;
    float lse_old[kMTiles][2];
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int row = m0 + warp * 32 + mi * 16 + rr * 8 + g;
        lse_old[mi][rr] = row < p.seqlen_q ? lse_base[row * p.lse_row_stride] : kNegInf;
      }
    __syncwarp();
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi)
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int row = m0 + warp * 32 + mi * 16 + rr * 8 + g;
        if (row >= p.seqlen_q) continue;
        const float la = lse_old[mi][rr], lb = lse_b[mi][rr];
        const float mx = fmaxf(la, lb);
        if (mx == kNegInf) {
          // Both -inf: nothing visible in either part; the accumulator stays as it is (final: O = 0).
          if (final_out) {
            T* f_row = of_base + row * p.o_final_row_stride;
#pragma unroll
            for (int dj = 0; dj < kDTiles; ++dj) *reinterpret_cast<uint32_t*>(f_row + dj * 8 + 2 * tq) = 0u;
          }
          continue;
        }
        const float L = mx + logf(expf(la - mx) + expf(lb - mx));
        const float w_old = expf(la - L);                  // 0 when la = -inf
        const float w_new = expf(lb - L) * inv_l[mi][rr];  // 0 when lb = -inf
        // w_old == 0 (la = -inf, or underflow): the old value is neither read nor used (it may be anything,
        // 0 * inf or NaN would poison the sum).
        const bool read_old = w_old > 0.f;
        float* o_row = o_base + row * p.o_row_stride;
        // Every load of the row before any store: a store into o_final (a pointer the compiler cannot prove
        // distinct from o) between them would make each load wait for the store before it (one DRAM round trip
        // per column tile).
        float2 old[kDTiles];
#pragma unroll
        for (int dj = 0; dj < kDTiles; ++dj)
          old[dj] = read_old ? __ldcg(reinterpret_cast<const float2*>(o_row + dj * 8 + 2 * tq)) : make_float2(0.f, 0.f);
#pragma unroll
        for (int dj = 0; dj < kDTiles; ++dj) {
          const float x = fmaf(acc_o[mi][dj][rr * 2], w_new, old[dj].x * w_old);
          const float y = fmaf(acc_o[mi][dj][rr * 2 + 1], w_new, old[dj].y * w_old);
          if (final_out) {
            *reinterpret_cast<uint32_t*>(of_base + row * p.o_final_row_stride + dj * 8 + 2 * tq) = pack2<T>(x, y);
          } else {
            *reinterpret_cast<float2*>(o_row + dj * 8 + 2 * tq) = make_float2(x, y);
          }
        }
        if (tq == 0) lse_base[row * p.lse_row_stride] = L;
      }
  }
}

}  // namespace kernels
}  // namespace distattn
