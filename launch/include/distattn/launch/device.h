// Rank-to-GPU mapping: one process per GPU, chosen by the node-local rank.
#pragma once

#include <string>

namespace distattn {
namespace launch {

// Number of CUDA devices visible to this process; 0 when there is no device or no usable driver
// (cudaErrorNoDevice / cudaErrorInsufficientDriver are "no GPU", not errors). Other failures throw.
int cuda_device_count();

// Picks and makes current GPU local_rank % device_count and returns its index; returns -1 (no error)
// when no GPU exists. With strict = true, more local ranks than GPUs (local_rank >= device_count)
// throws distattn::Error naming "local_rank" instead of sharing a GPU between ranks.
int select_device(int local_rank, bool strict = false);

// "NVIDIA H100 80GB HBM3" for a device index; "none" for -1.
std::string device_name(int device);

}  // namespace launch
}  // namespace distattn
