// The Hopper forward kernel's ALiBi cutoff pre-pass (flash_fwd_kv_norm.cu; hopper/flash_fwd_hopper_plan.h). Kept out
// of flash_fwd_params.h so that the mma.sync kernel's instantiations do not depend on it.
#pragma once

#include <cuda_runtime_api.h>

#include "flash_fwd_params.h"

namespace distattn {
namespace kernels {

// One memset and one launch on `stream`: k_out[b * Hkv + h] = max over kv rows j of ||k[b, j, h, :]||^2 (as
// run_kv_norm_sq_max), and q_out[(b * Hq + h) * M + m] = max over the q rows of tile m (rows [128 m, min(128 m + 128,
// Sq)), M = params.num_m_blocks) of ||q[b, row, h, :]||^2, in fp32, +inf where a row's is not finite; from
// params.q_ptr / k_ptr, their strides and the sizes. k_out (B * Hkv floats) and q_out (B * Hq * M floats) are device
// memory in one scratch, q_out == k_out + B * Hkv (one memset zeroes both; throws distattn::Error naming "q_out"
// otherwise). T: __nv_bfloat16 or __half; head dims 64 and 128. Throws distattn::Error if a CUDA call fails.
template <typename T>
void run_qk_norm_sq_max(const FlashFwdParams& params, float* k_out, float* q_out, cudaStream_t stream);

}  // namespace kernels
}  // namespace distattn
