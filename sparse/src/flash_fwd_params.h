// Kernel parameters of the CUDA forward attention kernel (flash_fwd_kernel.cuh).
//
// A plain struct, filled on the host by flash_fwd_api.cu from an AttnParams after validation, passed to
// the kernel by value as a __grid_constant__ argument (so the position maps' member functions can be
// called on it in place, without a local-memory copy). Strides are int64 and counted in ELEMENTS.
//
//   q  [B, Sq,  Hq,  D]    element (b, s, h, d) at q_ptr + b*q_batch_stride + s*q_row_stride + h*q_head_stride + d
//   k  [B, Skv, Hkv, D]    likewise with the k_* strides;  v with the v_* strides
//   o  [B, Sq,  Hq,  D]    dtype of q (plain mode) or fp32 (accumulate mode), o_* strides
//   o_final [B, Sq, Hq, D] dtype of q, optional, final accumulate mode only (o_final_* strides)
//   lse [B, Hq, Sq] fp32   lse_ptr + b*lse_batch_stride + h*lse_head_stride + s*lse_row_stride
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "distattn/core/position_map.h"

namespace distattn {
namespace kernels {

struct FlashFwdParams {
  // --- operands ------------------------------------------------------------------------------------
  const void* q_ptr = nullptr;  // [B, Sq, Hq, D] bf16/fp16, head dim contiguous, rows 16-byte aligned
  const void* k_ptr = nullptr;  // [B, Skv, Hkv, D] dtype of q
  const void* v_ptr = nullptr;  // [B, Skv, Hkv, D] dtype of q
  void* o_ptr = nullptr;        // [B, Sq, Hq, D] dtype of q, or the fp32 accumulator when accumulate
  float* lse_ptr = nullptr;     // [B, Hq, Sq] fp32 natural-log LSE; null in plain mode = not written

  int64_t q_batch_stride = 0;  // elements between batches of q
  int64_t q_row_stride = 0;    // elements between consecutive rows (sequence positions) of q
  int64_t q_head_stride = 0;   // elements between heads of q
  int64_t k_batch_stride = 0;  // same three for k
  int64_t k_row_stride = 0;
  int64_t k_head_stride = 0;
  int64_t v_batch_stride = 0;  // same three for v
  int64_t v_row_stride = 0;
  int64_t v_head_stride = 0;
  int64_t o_batch_stride = 0;  // same three for o
  int64_t o_row_stride = 0;
  int64_t o_head_stride = 0;
  int64_t lse_batch_stride = 0;  // elements between batches of lse (resolved, never 0 unless B == 1)
  int64_t lse_head_stride = 0;   // elements between heads of lse (resolved)
  int64_t lse_row_stride = 1;    // elements between rows of lse (resolved, >= 1; AttnParams::lse_row_stride)

  // --- sizes -----------------------------------------------------------------------------------------
  int batch = 0;         // B
  int seqlen_q = 0;      // Sq: local q rows
  int seqlen_kv = 0;     // Skv: local kv rows
  int heads_q = 0;       // Hq
  int heads_kv = 0;      // Hkv
  int head_group = 1;    // Hq / Hkv: q head h reads kv head h / head_group
  int head_dim = 0;      // D (the kernel is instantiated for it; kept for checks)
  int num_m_blocks = 0;  // ceil(Sq / kBlockM): the grid's x extent

  // --- positions and mask ----------------------------------------------------------------------------
  PositionMap q_pos;    // global position of each q row (length Sq), positions < 2^31
  PositionMap kv_pos;   // global position of each kv row (length Skv)
  int64_t band_lo = 0;  // visible iff band_lo <= pos_q - pos_k <= band_hi (DiagonalBand, +-kInf sentinels)
  int64_t band_hi = 0;

  // Block list (BlockListView arrays, device memory), or has_blocks == false for a dense band mask.
  // kBlockM == kLayoutBlock, so the kernel's q tile m reads CSR row m.
  bool has_blocks = false;
  const int32_t* block_row_offset = nullptr;   // [num_q_blocks + 1]
  const int32_t* block_col_index = nullptr;    // [nnz] kv block of each listed block, ascending per row
  const uint8_t* block_row_partial = nullptr;  // [nnz] 1: apply the element mask; 0: whole block visible

  // --- scores ---------------------------------------------------------------------------------------
  // score (natural units) = softmax_scale * q.k - slope_h * |pos_q - pos_k|. The kernel works in log2
  // units on the UNSCALED dot product: t = q.k + alibi_coef_h * |pos_q - pos_k|, p = exp2(t * scale_log2 - m),
  // with alibi_coef_h = -slope_h / softmax_scale, so ALiBi costs one FFMA per element and the exp keeps
  // FA2's single FFMA form.
  float softmax_scale = 0.f;            // resolved scale (> 0)
  float scale_log2 = 0.f;               // softmax_scale * log2(e)
  const float* alibi_slopes = nullptr;  // [Hq] fp32 device, or null (kernel instantiated without ALiBi)

  // ALiBi underflow cutoff (flash_fwd_kernel.cuh, "ALiBi cutoff"; enabled by flash_fwd_api.cu only where
  // its argument holds: dense band, q_pos == kv_pos as one chunk, ALiBi on). Tiles so far from the diagonal
  // that every exp2 of theirs is exactly 0 are not visited; O and LSE stay bit-identical.
  int alibi_cutoff = 0;           // 0: off; 1: causal (walk bounded below); 2: non-causal (rotated walk, both sides)
  bool alibi_cutoff_skip = true;  // false: same walk (mode 2: rotated), nothing skipped (bit-identity reference)
  const float* kv_norm_sq_max = nullptr;  // [B, Hkv] fp32 device: max over kv rows of ||k_row||^2 (+inf if
                                          // any is not finite); read only when alibi_cutoff

  // --- output mode ----------------------------------------------------------------------------------
  bool accumulate = false;  // merge (O_b, LSE_b) into the fp32 accumulator o and its running lse
  bool o_fp32 = false;      // o is fp32 (always in accumulate mode; optional in plain mode)
  // Final accumulate (AttnParams::o_final): accumulate mode only; set, the merged normalised O is written here
  // in T ([B, Sq, Hq, D], element (b, s, h, d) at o_final_ptr + b*o_final_batch_stride + s*o_final_row_stride +
  // h*o_final_head_stride + d) and o is only read. Null: o is updated in place.
  void* o_final_ptr = nullptr;
  int64_t o_final_batch_stride = 0;  // elements
  int64_t o_final_row_stride = 0;    // elements
  int64_t o_final_head_stride = 0;   // elements
};

// Launches the forward kernel for element type T (__nv_bfloat16 / __half) and head dim kHeadDim on
// `stream`. Defined in flash_fwd_launch.cuh, instantiated once per (T, kHeadDim) in
// flash_fwd_<dtype>_hdim<d>.cu so the instantiations compile in parallel.
template <typename T, int kHeadDim>
void run_flash_fwd(const FlashFwdParams& params, cudaStream_t stream);

// ALiBi cutoff pre-pass (flash_fwd_kv_norm.cu): out[b * Hkv + h] = max over kv rows j of ||k[b, j, h, :]||^2
// in fp32 (+inf where a row's is not finite), from params.k_ptr / k strides / sizes. `out` (device, B * Hkv
// floats) is zeroed on `stream` first. T: __nv_bfloat16 or __half; head dims 64 and 128.
template <typename T>
void run_kv_norm_sq_max(const FlashFwdParams& params, float* out, cudaStream_t stream);

}  // namespace kernels
}  // namespace distattn
