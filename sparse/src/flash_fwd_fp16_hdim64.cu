// Forward kernel instantiation: fp16, head dim 64 (one file per variant so they compile in parallel).
#include "flash_fwd_launch.cuh"

namespace distattn {
namespace kernels {
template void run_flash_fwd<__half, 64>(const FlashFwdParams& params, cudaStream_t stream);
}  // namespace kernels
}  // namespace distattn
