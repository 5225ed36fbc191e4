// Forward kernel instantiation: bf16, head dim 128 (one file per variant so they compile in parallel).
#include "flash_fwd_launch.cuh"

namespace distattn {
namespace kernels {
template void run_flash_fwd<__nv_bfloat16, 128>(const FlashFwdParams& params, cudaStream_t stream);
}  // namespace kernels
}  // namespace distattn
