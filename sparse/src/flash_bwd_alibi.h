// The backward's ALiBi underflow cutoff (flash_bwd_kernel.cuh, "ALiBi cutoff"): the pre-pass that judges
// every (q tile, kv tile) pair and gives the main kernel, per (batch, q head, kv tile), the q tiles to visit.
// Internal to sparse/src. Stats first:
// per (batch, q head, q tile of kBlockM rows), float2 {max ||q_row|| (rounded up), min over the tile's rows of
// lse_row * log2(e) as the main kernel forms it (rows with LSE -inf left out: their P is 0; +inf when no row is
// left; -inf when a row's LSE is NaN, which then disables the cut)}; per (batch, kv head, kv tile of kBlockN
// rows) the max ||k_row|| (rounded up). Norms that are NaN or overflow become +inf (the bound then cuts nothing).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "flash_bwd_params.h"

namespace distattn {
namespace kernels {

// Writes keep[b, hq, n] = [first, last + 1) of the q tiles m whose pair (m, kv tile n) the bound could not
// cut ({num_q_tiles, 0} when it cuts all), packed first | (last + 1) << 16, into `keep` ([B, Hq, num_kv_tiles];
// needs num_q_tiles < 2^16), from the tile stats
// written first into q_stat ([B, Hq, num_q_tiles] float2: x max q norm, y min LSE_log2) and k_norm ([B, Hkv,
// num_kv_tiles]). Reads q, k, lse, alibi_slopes, positions, sizes, scale_log2 and alibi_cut_log2 from p (not
// p.alibi_keep). Three launches on `stream`; block_m / block_n: the main kernel's tile sizes.
template <typename T>
void run_flash_bwd_alibi_prepass(const FlashBwdParams& p, int block_m, int block_n, float2* q_stat, float* k_norm,
                                 uint32_t* keep, cudaStream_t stream);

}  // namespace kernels
}  // namespace distattn
