// Launch of the forward kernel for one (dtype, head dim): tile shape per head dim, the ALiBi switch,
// the dynamic shared-memory opt-in, the grid. Included only by the flash_fwd_<dtype>_hdim<d>.cu
// instantiation files.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "distattn/core/check_cuda.h"
#include "flash_fwd_kernel.cuh"
#include "flash_fwd_params.h"
#include "static_switch.h"

namespace distattn {
namespace kernels {

// kv tile rows: 64 (at D = 128: S 64 + O 128 accumulator registers per thread; at D = 64, 128-row kv
// tiles would need S 128 + O 64 and spill, while 64 fits three CTAs per SM).
template <int kHeadDim>
constexpr int fwd_block_n() {
  return 64;
}

template <typename T, int kHeadDim, int kAlibiMode>
void launch_flash_fwd(const FlashFwdParams& params, cudaStream_t stream) {
  constexpr int kBlockN = fwd_block_n<kHeadDim>();
  using Tr = FlashFwdTraits<kHeadDim, kBlockN>;
  auto kernel = &flash_fwd_kernel<T, kHeadDim, kBlockN, kAlibiMode>;
  constexpr int kSmem = Tr::kSmemBytes;
  if constexpr (kSmem > 48 * 1024) {
    // The opt-in above 48 KB is per device: remember which devices have it (up to 64).
    static std::atomic<uint64_t> done_devices{0};
    int device = 0;
    DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
    const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
    if (bit == 0 || (done_devices.load() & bit) == 0) {
      DISTATTN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
      done_devices.fetch_or(bit);
    }
  }
  // x: q tiles (the kernel reverses them: heaviest first), y: q heads, z: batch. x varies fastest, so
  // the CTAs resident at one time mostly share a head and its K/V stay in L2.
  const dim3 grid(static_cast<unsigned>(params.num_m_blocks), static_cast<unsigned>(params.heads_q),
                  static_cast<unsigned>(params.batch));
  kernel<<<grid, Tr::kThreads, kSmem, stream>>>(params);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

// The ALiBi variant (flash_fwd_kernel's kAlibiMode): none, general, or the column form where every visible
// pair has pos_q - pos_k >= 0 (band_lo >= 0).
template <typename T, int kHeadDim>
void run_flash_fwd(const FlashFwdParams& params, cudaStream_t stream) {
  if (params.alibi_slopes == nullptr) {
    launch_flash_fwd<T, kHeadDim, 0>(params, stream);
  } else if (params.band_lo >= 0) {
    launch_flash_fwd<T, kHeadDim, 2>(params, stream);
  } else {
    launch_flash_fwd<T, kHeadDim, 1>(params, stream);
  }
}

}  // namespace kernels
}  // namespace distattn
