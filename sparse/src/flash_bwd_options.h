// Internal switches of the CUDA backward (not part of the public contract): tests and timing programs use them
// to run the same kernel with and without an optimisation and compare the results bit for bit.
#pragma once

#include <cuda_runtime_api.h>

#include "distattn/core/attn_params.h"

namespace distattn {
namespace detail {

struct FlashBwdOptions {
  // ALiBi underflow cutoff (flash_bwd_kernel.cuh, "ALiBi cutoff"): skip (q tile, kv tile) pairs whose P is
  // exactly 0 for every element. Applies to every ALiBi call (any position maps, masks, block lists): the
  // bound uses the LSE the backward is given. false: no pre-pass, the kernel as without the cutoff.
  bool alibi_cutoff = true;
  // false (with alibi_cutoff): the same pre-pass and per-pair test, but no pair skipped (the reference the
  // cutoff must match bit for bit; the walk order does not depend on the cutoff).
  bool alibi_cutoff_skip = true;
  // null, or a device counter the main kernel adds the number of pairs judged cuttable to (skipped or not).
  unsigned long long* alibi_cut_count = nullptr;
  // false: never the Hopper kernel (hopper/flash_bwd_hopper.h), always the mma.sync kernel: tests that compare the
  // two, and the mma.sync kernel's own tests on a Hopper GPU. The environment variable DISTATTN_BACKWARD_KERNEL=mma
  // does the same for a whole process.
  bool allow_hopper = true;
  // With AttnBwdParams::rope_grad on the Hopper kernel: true, dK is rotated back in the kernel's epilogue (where the
  // rotary dim allows); false, dk goes through rope_apply_cuda(inverse) after the kernel (dq stays fused in the
  // conversion). Same bits either way. Default false: on an H100 (bench/results/2026-11-22_h100_fbf477f_rope_bwd_fused)
  // the epilogue's cos/sin work cost as much as the pass it saves (fwd+bwd causal 8K: +3.3% vs +2.5% over no RoPE),
  // while the fused dq conversion is a clear gain. DISTATTN_ROPE_BWD_DK=epilogue|separate overrides it for a process.
  bool rope_dk_in_epilogue = false;
};

// flash_attention_backward (distattn/sparse/flash_attention.h) with explicit options; same shapes, same throws.
// The ALiBi cutoff takes 4 (B Hq ceil(Sq / 64) 2 + B Hkv ceil(Skv / 128) + B Hq ceil(Skv / 128)) bytes of scratch,
// carved from the same stream-ordered allocation as the backward's other scratch.
void flash_attention_backward(const AttnBwdParams& params, const FlashBwdOptions& options, cudaStream_t stream);

}  // namespace detail
}  // namespace distattn
