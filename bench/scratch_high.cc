// scratch_high.h: the scratch pool's high-water mark over one run.
#include "scratch_high.h"

#include "distattn/core/check_cuda.h"
#include "distattn/core/scratch_pool.h"

namespace distattn {
namespace bench {

double scratch_high_bytes_during(cudaStream_t stream, const std::function<void()>& fn) {
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  (void)scratch_pool_usage(-1, /*reset_high=*/true);
  fn();
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  return static_cast<double>(scratch_pool_usage().used_high);
}

}  // namespace bench
}  // namespace distattn
