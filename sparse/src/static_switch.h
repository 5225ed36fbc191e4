// Compile-time dispatch for the kernels: turns a run-time value into a constexpr inside a lambda, so
// one launch function instantiates exactly the kernel variants listed here and nothing else.
//   DTYPE_SWITCH(dtype, T, [&] { launch<T>(...); });
//   HEADDIM_SWITCH(d, kHeadDim, [&] { launch<kHeadDim>(...); });
//   BOOL_SWITCH(flag, kFlag, [&] { ... });
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "distattn/core/dtype.h"
#include "distattn/core/error.h"

#define BOOL_SWITCH(cond, CONST_NAME, ...)      \
  [&] {                                         \
    if (cond) {                                 \
      constexpr static bool CONST_NAME = true;  \
      return __VA_ARGS__();                     \
    } else {                                    \
      constexpr static bool CONST_NAME = false; \
      return __VA_ARGS__();                     \
    }                                           \
  }()

#define DTYPE_SWITCH(dtype, TYPE_NAME, ...)                                                           \
  [&] {                                                                                               \
    if ((dtype) == ::distattn::DType::kBFloat16) {                                                    \
      using TYPE_NAME = __nv_bfloat16;                                                                \
      return __VA_ARGS__();                                                                           \
    } else if ((dtype) == ::distattn::DType::kFloat16) {                                              \
      using TYPE_NAME = __half;                                                                       \
      return __VA_ARGS__();                                                                           \
    } else {                                                                                          \
      DISTATTN_THROW("q", "the CUDA engine takes bf16 or fp16, got ", ::distattn::dtype_name(dtype)); \
    }                                                                                                 \
  }()

#define HEADDIM_SWITCH(head_dim, CONST_NAME, ...)                                               \
  [&] {                                                                                         \
    if ((head_dim) == 64) {                                                                     \
      constexpr static int CONST_NAME = 64;                                                     \
      return __VA_ARGS__();                                                                     \
    } else if ((head_dim) == 128) {                                                             \
      constexpr static int CONST_NAME = 128;                                                    \
      return __VA_ARGS__();                                                                     \
    } else {                                                                                    \
      DISTATTN_THROW("q", "head dim ", (head_dim), " has no CUDA kernel (supported: 64, 128)"); \
    }                                                                                           \
  }()
