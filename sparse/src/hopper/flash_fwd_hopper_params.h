// Kernel parameters of the Hopper (sm_90a, wgmma + TMA) forward attention kernel
// (flash_fwd_hopper_kernel.cuh). Filled on the host by flash_fwd_hopper.cu from a validated AttnParams
// and passed by value as a __grid_constant__ argument: the TMA tensor maps must live in parameter
// (or constant / global) memory, and the kernel reads them in place through their generic address.
//
// Tensors (int64 element strides on the host; the tensor maps carry them in bytes):
//   q  [B, Sq,  Hq,  D]   TMA map dims (innermost first) {D, Sq, Hq, B}, box {64, 128, 1, 1}
//   k  [B, Skv, Hkv, D]   {D, Skv, Hkv, B}, box {64, kBlockN, 1, 1}; v likewise
//   o  [B, Sq,  Hq,  D]   dtype of q or fp32; written by ordinary stores: o_ptr + b*o_batch_stride + s*o_row_stride +
//                         h*o_head_stride + d
//   lse [B, Hq, Sq] fp32  lse_ptr + b*lse_batch_stride + h*lse_head_stride + s*lse_row_stride  (null: not written)
#pragma once

#include <cuda.h>          // CUtensorMap (a 128-byte, 64-byte aligned opaque struct; header only, no libcuda link)
#include <vector_types.h>  // float2

#include <cstdint>

namespace distattn {
namespace hopper {

struct FlashFwdHopperParams {
  // --- TMA descriptors (128-byte swizzle, zero fill out of range) --------------------------------------
  CUtensorMap tmap_q;  // q, box 64 x 128 rows
  CUtensorMap tmap_k;  // k, box 64 x kBlockN rows
  CUtensorMap tmap_v;  // v, box 64 x kBlockN rows

  // --- output -----------------------------------------------------------------------------------------
  void* o_ptr = nullptr;         // [B, Sq, Hq, D] dtype of q
  float* lse_ptr = nullptr;      // [B, Hq, Sq] fp32 natural-log LSE, or null
  int64_t o_batch_stride = 0;    // elements
  int64_t o_row_stride = 0;      // elements
  int64_t o_head_stride = 0;     // elements
  int64_t lse_batch_stride = 0;  // elements (resolved)
  int64_t lse_head_stride = 0;   // elements (resolved)
  int64_t lse_row_stride = 1;    // elements between rows (resolved, >= 1; AttnParams::lse_row_stride)

  // --- sizes --------------------------------------------------------------------------------------------
  int batch = 0;         // B
  int seqlen_q = 0;      // Sq
  int seqlen_kv = 0;     // Skv
  int heads_q = 0;       // Hq
  int head_group = 1;    // Hq / Hkv: q head h reads kv head h / head_group
  int num_m_blocks = 0;  // M = ceil(Sq / 128): q tiles per (b, h)

  // --- persistent schedule (flash_fwd_hopper_scheduler.h) -----------------------------------------------------
  int num_slots = 0;        // slots of work units (q tile, head, batch): Hq * B * (pair_units ? ceil(M / 2) : M)
  bool pair_units = false;  // a slot holds q tiles M - 1 - j and j (causal balancing) instead of tile M - 1 - j
  int section_pairs = 1;    // (b, h) pairs per L2 section of the slot order (their kv heads' K / V fit in L2)

  // --- positions: up to kMaxChunks chunks per side (PositionMap). Chunk c covers local rows
  // [row[c], row[c + 1]) with pos(row) = start[c] + (row - row[c]) * stride[c]. Every boundary row[c], 0 < c <
  // num_chunks, is a multiple of the side's tile rows (128), so a q tile / kv tile lies inside one chunk and its
  // positions are affine (flash_fwd_hopper_supported refuses other maps). row[num_chunks] = Sq (Skv).
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

  // --- block list (BlockListView by q block; 128 x 128 blocks = the kernel's tiles), or has_blocks false --
  bool has_blocks = false;
  const int32_t* block_row_offset = nullptr;   // [num_q_blocks + 1]
  const int32_t* block_col_index = nullptr;    // [nnz] ascending per q block
  const uint8_t* block_row_partial = nullptr;  // [nnz] 1: band mask applies; 0: whole block visible

  // --- output mode ------------------------------------------------------------------------------------------
  bool accumulate = false;  // merge (O_b, LSE_b) into the fp32 accumulator o and its running lse (lse_ptr set)
  bool o_fp32 = false;      // o is fp32 (always in accumulate mode; optional in plain mode)
  // Final accumulate (AttnParams::o_final), accumulate mode only: set, the merged normalised O is written here in
  // the kernel's T ([B, Sq, Hq, D], o_final_ptr + b*o_final_batch_stride + s*o_final_row_stride +
  // h*o_final_head_stride + d; 4-byte stores at even columns) and o is only read. Null: o is updated in place.
  void* o_final_ptr = nullptr;
  int64_t o_final_batch_stride = 0;  // elements
  int64_t o_final_row_stride = 0;    // elements
  int64_t o_final_head_stride = 0;   // elements

  // --- scores -------------------------------------------------------------------------------------------
  float scale_log2 = 0.f;     // softmax_scale * log2(e): p = exp2(q.k * scale_log2 - running max)
  float softmax_scale = 0.f;  // natural-log scale of q.k (ALiBi: coef = -slope / softmax_scale in q.k units)

  // --- ALiBi (kernel instantiation kAlibi) ------------------------------------------------------------------
  const float* alibi_slopes = nullptr;  // [Hq] fp32: bias -slope_h * |pos_q - pos_k| added to softmax_scale * q.k
  // ALiBi underflow cutoff (flash_fwd_hopper_plan.h; set by flash_attention_forward only where its premises hold):
  // the dense plan of a unit leaves out the kv tiles whose exp2 is exactly 0 for every element, diagonal tile first.
  // 3: across merged calls (AttnParams::alibi_merge): the band narrowed to the bound's distance in positions.
  int alibi_cutoff = 0;                   // 0: off; 1 (causal) or 2 (non-causal): on (the plan is the same for both)
  bool alibi_cutoff_skip = true;          // false: the cutoff's walk order, nothing skipped (bit-identity reference)
  const float* kv_norm_sq_max = nullptr;  // [B, Hkv]: max over kv rows of ||k_row||^2 (+inf if one is not finite)
  const float* q_norm_sq_max = nullptr;   // [B, Hq, M]: max over the rows of q tile m of ||q_row||^2 (likewise)
  const float* own_kv_norm_sq_max = nullptr;  // mode 3: [B, Hkv], the own keys' max ||k_row||^2 (AlibiMergeNorms)

  // --- fused RoPE (flash_attention_forward_rope; kernel instantiation kRope) -------------------------------------
  // q and k are rotated IN PLACE inside the launch by the producer warpgroup's three idle warps, beside the attention
  // (self-attention only: Sq == Skv, q_pos == kv_pos). Job j = (kv group g = j / rope_group_jobs, row block
  // rb = j % rope_group_jobs): rows [32 rb, 32 rb + 32) of k's kv head hkv and of its head_group q heads (g = b * Hkv +
  // hkv, the schedule's order: consecutive (b, h) pairs share a group). Jobs are claimed from rope_counters[0];
  // rope_counters[1 + g] counts the group's finished jobs, and a unit's producer waits for rope_group_jobs there
  // before loading anything. The groups [0, rope_pre_groups), which the first units of the grid need at once, were
  // rotated by a RoPE launch before this one: their counters start complete and claims start at their end
  // (flash_fwd_hopper.cu sets the counters up with rope_prepare).
  CUtensorMap tmap_rq;                // q, box 64 x 32 rows (the helpers' loads and stores)
  CUtensorMap tmap_rk;                // k, box 64 x 32 rows
  int rope_jobs = 0;                  // B * Hkv * rope_group_jobs (claims at or past it end a helper)
  int rope_group_jobs = 0;            // ceil(S / 32)
  int rope_pre_groups = 0;            // groups rotated before the launch (no wait for them)
  uint32_t* rope_counters = nullptr;  // [2 + B * Hkv]: claim counter, finished jobs per group, producers done
  const float2* rope_cs = nullptr;    // [S][64] (scale cos, scale sin) of row s's position, pair i
  // 0: a job rotates its kv head of k, then its q heads; 1 (q only): k arrives rotated (the ring rotates it while it
  // packs its send buffer), a job rotates its q heads only.
  int rope_first_step = 0;
};

}  // namespace hopper
}  // namespace distattn
