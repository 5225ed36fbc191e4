// Checks on the operands of a call, shared by every entry point that takes tensors: the CUDA engine (on top of
// validate_forward / validate_backward, core/attn_params.h) and the distributed algorithms (ring/, dilated/), which
// run them on every rank BEFORE any collective so that one rank's bad argument fails every rank instead of
// hanging the others. Each throws distattn::Error naming the argument.
#pragma once

#include <cstdint>

#include "distattn/core/dtype.h"
#include "distattn/core/tensor.h"

namespace distattn {

// `ptr` must be null (when allow_null) or point at device/managed memory.
void check_device_pointer(const void* ptr, const char* argument, bool allow_null = false);

// Device residency, base address 16-byte aligned, and batch/row/head strides multiples of 16 bytes (the kernels load
// 16-byte vectors).
void check_cuda_tensor(const TensorView& t, const char* argument);

// A rank's local shard: not null, shape [B, rows, H, D], dtype `dtype` (or fp32 when fp32_allowed), on `device`
// (the communicator's). `rows_note` says where `rows` comes from in the message, e.g. "S/P rows".
void check_shard(const TensorView& t, const char* argument, int64_t B, int64_t rows, int64_t H, int64_t D, DType dtype,
                 bool fp32_allowed, Device device, const char* rows_note);

}  // namespace distattn
