// Instantiation of the backward pass for fp16, head dim 64 (one file per variant: parallel builds).
#include "flash_bwd_launch.cuh"

namespace distattn {
namespace kernels {
template void run_flash_bwd<__half, 64>(const FlashBwdParams& p, cudaStream_t stream);
}  // namespace kernels
}  // namespace distattn
