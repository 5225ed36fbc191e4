// Kernel parameters of the Hopper (sm_90a, wgmma + TMA) backward attention kernel
// (flash_bwd_hopper_kernel.cuh). Filled on the host by flash_bwd_hopper.cu from the validated backward
// parameters (kernels::FlashBwdParams, built by flash_bwd_api.cu) and passed by value as a __grid_constant__
// argument: the TMA tensor maps must live in parameter memory, and the kernel reads them in place.
//
// Tensors (int64 element strides; the tensor maps carry theirs in bytes):
//   q, dout  [B, Sq,  Hq,  128]  TMA dims (innermost first) {128, Sq, Hq, B}, box {64, 64 rows, 1, 1}
//   k, v     [B, Skv, Hkv, 128]  TMA dims {128, Skv, Hkv, B}, box {64, 128 rows, 1, 1}
//   lse, delta [B, Hq, Sq] fp32  lse_ptr + b * lse_batch_stride + h * lse_head_stride + row (delta likewise)
//   dq_accum fp32: dq_accum + b * dq_accum_batch_stride + h * dq_accum_head_stride + row * dq_accum_row_stride + d
//            (row stride 128 for the engine's scratch; dq itself in accumulate mode)
//   dk, dv   [B, Skv, Hkv, 128]  dtype of q or fp32: dk + b * dk_batch_stride + row * dk_row_stride +
//            h * dk_head_stride + d
#pragma once

#include <cuda.h>  // CUtensorMap (header only, no libcuda link)

#include <cstdint>

namespace distattn {
namespace hopper {

struct FlashBwdHopperParams {
  // --- TMA descriptors (128-byte swizzle, zero fill out of range) --------------------------------------
  CUtensorMap tmap_q;     // q, box 64 x 64 rows
  CUtensorMap tmap_dout;  // dout, box 64 x 64 rows
  CUtensorMap tmap_k;     // k, box 64 x 128 rows
  CUtensorMap tmap_v;     // v, box 64 x 128 rows
  CUtensorMap tmap_dq;    // dq_accum fp32 {128, Sq, Hq, B}, box 32 x 64 rows (kDqTma: TMA reduce-add of dQ tiles)

  // --- softmax statistics (read by the producer warpgroup) ------------------------------------------------
  const float* lse_ptr = nullptr;    // [B, Hq, Sq] natural-log LSE of the forward; -inf: row without keys
  int64_t lse_batch_stride = 0;      // elements
  int64_t lse_head_stride = 0;       // elements
  const float* delta_ptr = nullptr;  // [B, Hq, Sq] rowsum(dO * O)
  int64_t delta_batch_stride = 0;    // elements
  int64_t delta_head_stride = 0;     // elements

  // --- outputs ------------------------------------------------------------------------------------------
  float* dq_accum = nullptr;          // fp32 dQ accumulator, added to by TMA reductions (or red.global.add)
  int64_t dq_accum_batch_stride = 0;  // elements
  int64_t dq_accum_head_stride = 0;   // elements
  int64_t dq_accum_row_stride = 128;  // elements (128 for the scratch; dq's own row stride when reduced into directly)
  void* dk_ptr = nullptr;             // [B, Skv, Hkv, 128] dtype of q, or fp32 (dk_fp32)
  int64_t dk_batch_stride = 0;        // elements
  int64_t dk_row_stride = 0;          // elements
  int64_t dk_head_stride = 0;         // elements
  void* dv_ptr = nullptr;             // [B, Skv, Hkv, 128] like dk
  int64_t dv_batch_stride = 0;        // elements
  int64_t dv_row_stride = 0;          // elements
  int64_t dv_head_stride = 0;         // elements
  bool dk_fp32 = false;               // dk is fp32 (else the dtype of q)
  bool dv_fp32 = false;               // dv is fp32 (else the dtype of q)
  bool accumulate = false;            // add into fp32 dk / dv instead of overwriting

  // --- sizes --------------------------------------------------------------------------------------------
  int batch = 0;         // B
  int seqlen_q = 0;      // Sq
  int seqlen_kv = 0;     // Skv
  int heads_q = 0;       // Hq
  int heads_kv = 0;      // Hkv
  int group = 1;         // Hq / Hkv: kv head g serves q heads [g * group, (g + 1) * group)
  int num_kv_tiles = 0;  // ceil(Skv / 128): grid x

  // --- positions: up to kMaxChunks chunks per side (PositionMap). Chunk c covers local rows
  // [row[c], row[c + 1]) with pos(row) = start[c] + (row - row[c]) * stride[c]. Every boundary row[c], 0 < c <
  // num_chunks, is a multiple of 128 rows (flash_bwd_hopper_supported), so a 64-row q tile and a 128-row kv tile
  // lie inside one chunk and their positions are affine. row[num_chunks] = Sq (Skv).
  static constexpr int kMaxChunks = 8;
  int q_chunks = 1;                    // q_pos.num_chunks
  int q_row[kMaxChunks + 1] = {};      // first local q row of each chunk (prefix sums of lengths)
  int64_t q_start[kMaxChunks] = {};    // q_pos.chunks[c].start
  int64_t q_stride[kMaxChunks] = {};   // q_pos.chunks[c].stride (>= 1)
  int kv_chunks = 1;                   // kv_pos.num_chunks
  int kv_row[kMaxChunks + 1] = {};     // first local kv row of each chunk
  int64_t kv_start[kMaxChunks] = {};   // kv_pos.chunks[c].start
  int64_t kv_stride[kMaxChunks] = {};  // kv_pos.chunks[c].stride (>= 1)
  int64_t band_lo = 0;  // visible iff band_lo <= pos_q - pos_k <= band_hi (DiagonalBand, +-2^40 sentinels)
  int64_t band_hi = 0;

  // --- block list (Mask::blocks; layout blocks of 128 rows = this kernel's kv tile, two 64-row q tiles) ----------
  // kv tile n walks only the q blocks listed in its column: q tiles 2 row_index[e] + {0, 1} for e in [col_offset[n],
  // col_offset[n + 1]); a block with col_partial[e] = 0 is visible everywhere, otherwise the band applies per
  // element. Device arrays (the engine's BlockListView); absent when has_blocks is false.
  bool has_blocks = false;
  const int32_t* col_offset = nullptr;   // [num_kv_tiles + 1]
  const int32_t* row_index = nullptr;    // [nnz] q block of each entry, ascending within a column
  const uint8_t* col_partial = nullptr;  // [nnz]
  int num_q_tiles = 0;                   // ceil(Sq / 64): a listed block's second tile may lie past Sq

  // --- fused inverse RoPE of dK (AttnBwdParams::rope_grad), applied in the epilogue --------------------------
  // Set only when every rotation pair of a dK row lies in one thread's accumulators: GPT-J (pairs 2i, 2i + 1 are
  // columns col_base, col_base + 1 of one n8 chunk) or NeoX with rope_half % 8 == 0 (column c and c + half are
  // chunks c / 8 and c / 8 + half / 8 of the same thread). Null: dK stored as computed.
  const float* rope_inv_freq = nullptr;  // [rope_rotary_dim / 2] fp32 on the device
  int rope_rotary_dim = 0;               // dims rotated (even, <= 128)
  int rope_style = 0;                    // 0 NeoX, 1 GPT-J
  float rope_scale = 1.f;                // cos multiplier; sin multiplier -rope_scale (inverse rotation)

  // --- scores -------------------------------------------------------------------------------------------
  float scale_log2 = 0.f;  // softmax_scale * log2(e): P = exp2(q.k * scale_log2 - LSE * log2(e))
  float scale = 0.f;       // softmax_scale: dQ = scale * dS K, dK = scale * dS^T Q
};

}  // namespace hopper
}  // namespace distattn
