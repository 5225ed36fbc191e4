// Launch of the backward pass for one (dtype, head dim): preprocess (delta, zeroing of the dQ
// accumulator), main kernel, dQ conversion. The instantiation files flash_bwd_<dtype>_hdim<d>.cu each
// instantiate run_flash_bwd for one pair, so the variants compile in parallel.
#pragma once

#include <cuda_runtime_api.h>

#include "distattn/core/check_cuda.h"
#include "flash_bwd_kernel.cuh"
#include "flash_bwd_params.h"
#include "flash_bwd_preprocess.cuh"

namespace distattn {
namespace kernels {

// Launches the delta preprocess (when p.delta_out is set) and nothing else.
template <typename T, int kHeadDim>
void launch_flash_bwd_delta(const FlashBwdParams& p, cudaStream_t stream) {
  const int64_t threads = static_cast<int64_t>(p.batch) * p.seqlen_q * p.heads_q * (kHeadDim / 8);
  const int block = 256;
  const int64_t grid = (threads + block - 1) / block;
  flash_bwd_delta_kernel<T, kHeadDim><<<static_cast<unsigned>(grid), block, 0, stream>>>(p);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

template <typename T, int kHeadDim>
void launch_flash_bwd_main(const FlashBwdParams& p, cudaStream_t stream) {
  using Tr = FlashBwdTraits<kHeadDim>;
  auto kernel = flash_bwd_kernel<T, kHeadDim>;
  DISTATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  // x = kv head, y = kv tile, z = batch: CTAs of the first kv tiles (the heaviest ones under a causal
  // mask) are issued first across all heads, a cheap longest-first order.
  const dim3 grid(p.heads_kv, p.num_kv_tiles, p.batch);
  kernel<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(p);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

template <typename T, int kHeadDim>
void launch_flash_bwd_convert_dq(const FlashBwdParams& p, cudaStream_t stream) {
  const int64_t threads = static_cast<int64_t>(p.batch) * p.seqlen_q * p.heads_q * (kHeadDim / 8);
  const int block = 256;
  const int64_t grid = (threads + block - 1) / block;
  flash_bwd_convert_dq_kernel<T, kHeadDim><<<static_cast<unsigned>(grid), block, 0, stream>>>(p);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

// The conversion with the fused inverse RoPE (p.rope_inv_freq set; p.rope_rows_per_block chosen by the API).
template <typename T, int kHeadDim>
void launch_flash_bwd_convert_dq_rope(const FlashBwdParams& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.seqlen_q;
  const int64_t R = p.rope_rows_per_block;
  const int64_t grid = (rows + R - 1) / R;  // <= 2^31 - 1: checked by the API
  const size_t smem = static_cast<size_t>(2 * R * p.rope_half) * sizeof(float);
  const dim3 g(static_cast<unsigned>(grid)), blk(kConvertRopeThreads);
  if (p.dq_fp32) {
    if (p.rope_style == 0) {
      flash_bwd_convert_dq_rope_kernel<T, float, kHeadDim, 0><<<g, blk, smem, stream>>>(p);
    } else {
      flash_bwd_convert_dq_rope_kernel<T, float, kHeadDim, 1><<<g, blk, smem, stream>>>(p);
    }
  } else {
    if (p.rope_style == 0) {
      flash_bwd_convert_dq_rope_kernel<T, T, kHeadDim, 0><<<g, blk, smem, stream>>>(p);
    } else {
      flash_bwd_convert_dq_rope_kernel<T, T, kHeadDim, 1><<<g, blk, smem, stream>>>(p);
    }
  }
  DISTATTN_CUDA_CHECK_LAUNCH();
}

// dq from the accumulator: nothing when the reductions went straight into dq, the rotating conversion when the
// inverse RoPE is fused, the plain conversion otherwise.
template <typename T, int kHeadDim>
void launch_flash_bwd_dq_out(const FlashBwdParams& p, cudaStream_t stream) {
  if (p.dq_accum == p.dq) return;
  if (p.rope_inv_freq != nullptr) {
    launch_flash_bwd_convert_dq_rope<T, kHeadDim>(p, stream);
  } else {
    launch_flash_bwd_convert_dq<T, kHeadDim>(p, stream);
  }
}

// The three launches in order; scratch is set up by the caller (flash_bwd_api.cu).
template <typename T, int kHeadDim>
void run_flash_bwd(const FlashBwdParams& p, cudaStream_t stream) {
  if (p.delta_out != nullptr) launch_flash_bwd_delta<T, kHeadDim>(p, stream);
  launch_flash_bwd_main<T, kHeadDim>(p, stream);
  launch_flash_bwd_dq_out<T, kHeadDim>(p, stream);
}

}  // namespace kernels
}  // namespace distattn
