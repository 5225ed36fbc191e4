// Hopper (sm_90a) fast path of the CUDA forward attention: TMA + wgmma, warp-specialised
// (hopper/flash_fwd_hopper_kernel.cuh). The dispatcher (flash_fwd_api.cu) calls
// flash_fwd_hopper_supported() and, when it says yes, flash_fwd_hopper() instead of the mma.sync kernel.
//
// Shapes: q [B, Sq, Hq, 128], k, v [B, Skv, Hkv, 128], o [B, Sq, Hq, 128] (dtype of q or fp32), lse [B, Hq, Sq]
// fp32 (optional in plain mode; the running LSE in accumulate mode). Same results contract as flash_attention_forward
// (core/attn_params.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "distattn/core/attn_params.h"

namespace distattn {

// True when the Hopper kernel handles `p` on CUDA device `device`: the device is compute capability 9.0 and
// the library holds sm_90a code for the kernel; q is bf16 or fp16 with head dim 128; o in the dtype of q or
// fp32 (plain mode), or accumulate mode (o fp32, lse set); ALiBi except with a block list (and, only when the
// environment variable DISTATTN_ALIBI_HOPPER_MAX_KV=N is set, except where q_pos == kv_pos as one identical chunk with
// more than N keys: A/B runs against the mma.sync kernel's ALiBi cutoff); q_pos and kv_pos of up to 8 chunks
// each whose boundaries (prefix sums of the chunk lengths; the sequence end excepted) are multiples of 128 rows (one
// chunk: any map; zigzag shards with chunk lengths a multiple of 128); any causal / window band and optional block
// list; every row / head / batch stride a positive multiple of 16 bytes (strides of size-1 dimensions ignored), base
// pointers 16-byte aligned; Sq, Skv >= 1. Otherwise false (nothing throws for an unsupported case; CUDA errors while
// querying the device, and a DISTATTN_ALIBI_HOPPER_MAX_KV that is not an integer in [-1, 2^30], throw distattn::Error).
bool flash_fwd_hopper_supported(const AttnParams& p, int device);

// Runs the Hopper kernel on `stream`. `p` must have passed validate_forward(p, Device::kCuda), the CUDA
// pointer checks of flash_attention_forward, and flash_fwd_hopper_supported() on the current device.
// Writes o [B, Sq, Hq, 128] and, when p.lse is not null, lse [B, Hq, Sq]. Throws distattn::Error when a TMA
// descriptor cannot be built (argument "q", "k" or "v") or a CUDA call fails.
void flash_fwd_hopper(const AttnParams& p, cudaStream_t stream);

// The ALiBi underflow cutoff of one call (hopper/flash_fwd_hopper_plan.h): the kernel leaves out the kv tiles whose
// exp2 is exactly 0 for every element, with the same bound as the mma.sync kernel, bit-identical to the walk without
// skipping. Valid only where its premises hold (flash_attention_forward checks them: ALiBi, no block list, q_pos ==
// kv_pos as one chunk); the norms are written on the same stream before the kernel (kernels::run_qk_norm_sq_max).
// Mode 3 is the cutoff across merged calls (AttnParams::alibi_merge, whose caller vouches that every q row's own key is
// in one of the merged calls): the plan leaves out the kv tiles whose every key is at least the bound's distance (in
// positions) from every q row of the unit, over any position maps; within fp32 rounding once merged.
struct FlashFwdHopperCutoff {
  int mode = 0;                           // 0: off; 1 (causal) or 2 (non-causal): on; 3: across merged calls
  bool skip = true;                       // false: the cutoff's walk order (diagonal tile first), nothing skipped
  const float* kv_norm_sq_max = nullptr;  // [B, Hkv] fp32 device: max over kv rows of ||k_row||^2 (+inf if not finite)
  const float* q_norm_sq_max = nullptr;   // [B, Hq, ceil(Sq / 128)] fp32 device: max over each 128-row q tile
  const float* own_kv_norm_sq_max = nullptr;  // mode 3 only: [B, Hkv] fp32 device, the own keys' max ||k_row||^2
};

// flash_fwd_hopper with the ALiBi cutoff (`cutoff.mode` 0: exactly the call above). Same requirements, outputs and
// throws; additionally throws distattn::Error (argument "cutoff") when the mode is on without ALiBi or a norm pointer.
void flash_fwd_hopper(const AttnParams& p, const FlashFwdHopperCutoff& cutoff, cudaStream_t stream);

// Fused RoPE (flash_attention_forward_rope): the launch rotates q and k IN PLACE by +theta (NeoX pairs (d, d + 64)
// over the whole head dim) while it attends, bit-identical to rope_apply_cuda followed by the plain launch (the
// kernel's "fused RoPE" helpers, hopper/flash_fwd_hopper_kernel.cuh). Self-attention only: Sq == Skv and q_pos ==
// kv_pos. flash_fwd_hopper enqueues, before the kernel, one launch (flash_fwd_rope_prepare.h) that writes the table
// and the counters and rotates the kv groups the grid's first units need at once.
struct FlashFwdHopperRope {
  const float* inv_freq = nullptr;  // [64] fp32 (device): the frequencies
  float scale = 1.0f;               // cos/sin multiplier
  float2* table = nullptr;          // [S][64] device scratch (written before the launch)
  uint32_t* counters = nullptr;     // [flash_fwd_hopper_rope_counters(p)] device scratch (set before the launch)
  // Diagnostic (DISTATTN_ROPE_FWD=prerotated): rope_prepare rotates every kv group, so the fused launch has nothing
  // to rotate or wait for; tells the kernel's own cost from the helpers' work and the units' waits.
  bool rotate_all_before = false;
  // q only: k arrives already rotated (the caller rotated it, e.g. the ring while packing its send buffer); the launch
  // and its set-up kernel rotate q alone.
  bool q_only = false;
};

// flash_fwd_hopper_supported(p, device) and the fused RoPE's conditions: no ALiBi, Sq == Skv and q_pos == kv_pos, the
// device's shared memory holds the larger launch. Throws only what flash_fwd_hopper_supported throws.
bool flash_fwd_hopper_rope_supported(const AttnParams& p, int device);
// Counters the fused RoPE needs: 2 + B * Hkv.
int64_t flash_fwd_hopper_rope_counters(const AttnParams& p);

// flash_fwd_hopper with the cutoff and, when `rope` is not null, the fused RoPE (then `p` must also pass
// flash_fwd_hopper_rope_supported and cutoff.mode must be 0; argument "rope" otherwise).
void flash_fwd_hopper(const AttnParams& p, const FlashFwdHopperCutoff& cutoff, const FlashFwdHopperRope* rope,
                      cudaStream_t stream);

// The kernel walks work units (q tile of 128 rows, q head, batch; hopper/flash_fwd_hopper_scheduler.h): for short
// problems (Sq <= 8192 in plain mode, Sq <= 4096 in accumulate mode) persistently, one CTA per SM each walking a share;
// otherwise one CTA per unit. For tests and experiments, the CTA count of later launches (all threads, all devices):
// ctas > 0 = that many (at most the unit count), 0 = one CTA per unit, < 0 = automatic again (then the environment
// variable DISTATTN_HOPPER_GRID, read once, overrides likewise). Results do not depend on it. Throws nothing.
void flash_fwd_hopper_set_grid_override(int ctas);

}  // namespace distattn
