#include "distattn/launch/device.h"

#include <cuda_runtime_api.h>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"

namespace distattn {
namespace launch {

int cuda_device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver || status == cudaErrorInitializationError ||
      status == cudaErrorSystemDriverMismatch || status == cudaErrorCompatNotSupportedOnDevice) {
    cudaGetLastError();  // clear the sticky "no device" state so later checks do not trip on it
    return 0;
  }
  DISTATTN_CUDA_CHECK(status);
  return count;
}

int select_device(int local_rank, bool strict) {
  DISTATTN_CHECK_ARG(local_rank >= 0, "local_rank", "must be >= 0, got ", local_rank);
  const int count = cuda_device_count();
  if (count == 0) return -1;
  DISTATTN_CHECK_ARG(!strict || local_rank < count, "local_rank", "node-local rank ", local_rank,
                     " has no GPU of its own: this node has ", count, " GPU(s) visible; start at most ", count,
                     " ranks per node (or drop --strict-devices to let ranks share GPUs)");
  const int device = local_rank % count;
  DISTATTN_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

std::string device_name(int device) {
  if (device < 0) return "none";
  cudaDeviceProp prop;
  DISTATTN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

}  // namespace launch
}  // namespace distattn
