// Checks the CUDA engine makes on top of validate_forward/backward (core/attn_params.h): that each
// pointer is device memory of the current device (or managed), and the alignment the kernels' 16-byte
// vector loads need. Each throws distattn::Error naming the argument.
#pragma once

#include "distattn/core/tensor.h"

namespace distattn {

// `ptr` must be null (when allow_null) or point at device/managed memory.
void check_device_pointer(const void* ptr, const char* argument, bool allow_null = false);

// Device residency, base address 16-byte aligned, and batch/row/head strides multiples of 16 bytes.
void check_cuda_tensor(const TensorView& t, const char* argument);

}  // namespace distattn
