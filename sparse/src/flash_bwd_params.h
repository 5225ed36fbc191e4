// Parameters of the backward attention kernels (preprocess, main, dQ conversion): a plain struct
// passed by value, flash-attention style. All strides are in ELEMENTS of the tensor they belong to.
//
// Shapes (core/attn_params.h):
//   q, o, dout, dq   [B, Sq,  Hq,  D]      k, v, dk, dv   [B, Skv, Hkv, D]      (head dim contiguous)
//   lse, delta       [B, Hq, Sq] fp32, row stride 1
//   dq_accum         fp32 [B, Hq, Sq, D] in effect: row stride D (a compile-time constant in the kernel, so the
//                    dQ reductions of a thread share one address register), batch and head strides given
#pragma once

#include <cstdint>

#include "distattn/core/mask.h"
#include "distattn/core/position_map.h"

namespace distattn {
namespace kernels {

struct FlashBwdParams {
  // --- inputs (16-bit, the dtype the kernel is instantiated for) ---
  const void* q = nullptr;     // [B, Sq, Hq, D]
  const void* k = nullptr;     // [B, Skv, Hkv, D]
  const void* v = nullptr;     // [B, Skv, Hkv, D]
  const void* o = nullptr;     // [B, Sq, Hq, D]  forward output (only read by the delta preprocess)
  bool o_fp32 = false;         // o is fp32 (else the input dtype)
  const void* dout = nullptr;  // [B, Sq, Hq, D]  gradient of the output

  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;           // q strides
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;           // k strides
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;           // v strides
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;           // o strides
  int64_t dout_batch_stride = 0, dout_row_stride = 0, dout_head_stride = 0;  // dout strides

  // --- softmax statistics ---
  const float* lse = nullptr;      // [B, Hq, Sq] final forward LSE (natural log); -inf marks rows with no key
  int64_t lse_batch_stride = 0;    // elements between batches of lse
  int64_t lse_head_stride = 0;     // elements between heads of lse
  const float* delta = nullptr;    // [B, Hq, Sq] rowsum(dO * O): given by the caller or written by the preprocess
  float* delta_out = nullptr;      // where the preprocess writes delta (null when the caller gave it)
  int64_t delta_batch_stride = 0;  // elements between batches of delta (and delta_out)
  int64_t delta_head_stride = 0;   // elements between heads of delta (and delta_out)

  // --- outputs ---
  float* dq_accum = nullptr;  // fp32 dQ accumulator the main kernel adds into with atomics (scale included)
  int64_t dq_accum_batch_stride = 0, dq_accum_head_stride = 0;  // its strides (row stride: D)
  // Row stride of dq_accum for the Hopper kernel only (its TMA reductions take any 16-byte multiple): D, or dq's own
  // row stride when the reductions go straight into dq (accumulate mode). The mma.sync kernel and the conversions
  // assume D.
  int64_t dq_accum_row_stride = 0;
  void* dq = nullptr;  // final dQ (written by the conversion kernel unless dq_accum == dq)
  int64_t dq_batch_stride = 0, dq_row_stride = 0, dq_head_stride = 0;  // dq strides
  void* dk = nullptr;  // [B, Skv, Hkv, D] written (or added to) once per element by the main kernel
  int64_t dk_batch_stride = 0, dk_row_stride = 0, dk_head_stride = 0;  // dk strides
  void* dv = nullptr;                                                  // [B, Skv, Hkv, D] like dk
  int64_t dv_batch_stride = 0, dv_row_stride = 0, dv_head_stride = 0;  // dv strides
  bool dq_fp32 = false;                                                // dq is fp32 (else the input dtype)
  bool dk_fp32 = false;                                                // dk is fp32 (else the input dtype)
  bool dv_fp32 = false;                                                // dv is fp32 (else the input dtype)
  bool accumulate = false;       // add into fp32 dq instead of overwriting it (accumulate mode)
  bool accumulate_dkdv = false;  // add into fp32 dk/dv instead of overwriting (accumulate mode without overwrite_dk_dv)

  // --- sizes ---
  int batch = 0;         // B
  int seqlen_q = 0;      // Sq
  int seqlen_kv = 0;     // Skv
  int heads_q = 0;       // Hq
  int heads_kv = 0;      // Hkv
  int head_dim = 0;      // D (the kernel is instantiated for it; kept for the preprocess kernels)
  int group = 1;         // Hq / Hkv: q heads per kv head
  int num_q_tiles = 0;   // ceil(Sq / kBlockM)
  int num_kv_tiles = 0;  // ceil(Skv / kBlockN)

  // --- score and mask ---
  float scale = 0.f;                    // softmax scale
  float scale_log2 = 0.f;               // scale * log2(e): scores are exponentiated with exp2
  const float* alibi_slopes = nullptr;  // [Hq] fp32 or null: bias = -slope_h * |pos_q - pos_k|
  PositionMap q_pos;                    // global position of each q row
  PositionMap kv_pos;                   // global position of each kv row
  DiagonalBand band;                    // visible iff band.lo <= pos_q - pos_k <= band.hi
  int32_t band_lo32 = 0;                // band.lo clamped to int32 for the per-element test
  int32_t band_hi32 = 0;                // band.hi clamped to int32 for the per-element test

  // --- ALiBi underflow cutoff (flash_bwd_kernel.cuh, "ALiBi cutoff"; pre-pass flash_bwd_alibi_stats.cu) ---
  const uint32_t* alibi_keep = nullptr;  // [B, Hq, num_kv_tiles] q tiles [lo, hi) to visit (lo | hi << 16); null: off
  float alibi_cut_log2 = 0.f;            // a pair is cut where its bound on exp2's argument is < -alibi_cut_log2
  bool alibi_cut_skip = true;            // false: pairs are judged (and counted) but still visited (tests)
  unsigned long long* alibi_cut_count = nullptr;  // null or a device counter: += pairs judged cuttable (tests)

  // --- fused inverse RoPE of dq (AttnBwdParams::rope_grad; positional/rope_math.cuh holds the arithmetic) ---
  // Set only when the dQ conversion rotates dq back (flash_bwd_convert_dq_rope_kernel): NeoX with rope_half % 8 == 0
  // or GPT-J with rope_rotary_dim % 8 == 0 (8-element units never straddle the rotary boundary). Null: plain copy.
  const float* rope_inv_freq = nullptr;  // [rope_rotary_dim / 2] fp32 on the device
  int rope_rotary_dim = 0;               // dims rotated (even, <= D)
  int rope_half = 0;                     // rope_rotary_dim / 2: pairs per head
  int rope_style = 0;                    // 0 NeoX (x[i], x[i + half]), 1 GPT-J (x[2i], x[2i + 1])
  float rope_scale = 1.f;                // cos multiplier; the sin multiplier is -rope_scale (inverse rotation)
  int rope_rows_per_block = 1;           // (b, i) rows per block of the rotating conversion (its cos/sin table)
  bool rope_dk_epilogue = false;         // the Hopper kernel rotates dK back in its epilogue (AttnBwdParams::rope_grad)

  // --- block list (transposed CSR: the kv-block CTA walks its column) ---
  bool has_blocks = false;               // a block list restricts the visible (q block, kv block) pairs
  const int32_t* col_offset = nullptr;   // [num_kv_blocks + 1] q blocks of kv block j: [col_offset[j], col_offset[j+1])
  const int32_t* row_index = nullptr;    // [nnz] q block index of each entry
  const uint8_t* col_partial = nullptr;  // [nnz] 1: apply the band per element; 0: the block is all visible
};

}  // namespace kernels
}  // namespace distattn
