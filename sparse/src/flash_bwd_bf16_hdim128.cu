// Instantiation of the backward pass for bf16, head dim 128 (one file per variant: parallel builds).
#include "flash_bwd_launch.cuh"

namespace distattn {
namespace kernels {
template void run_flash_bwd<__nv_bfloat16, 128>(const FlashBwdParams& p, cudaStream_t stream);
}  // namespace kernels
}  // namespace distattn
