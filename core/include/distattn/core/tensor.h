// TensorView: a non-owning view of an attention operand, pointer + shape + strides + dtype.
//
// Every attention operand is 4-D, [B, S, H, D] (batch, sequence row, head, head dim), with its own
// int64 strides counted in ELEMENTS (not bytes). The head dim must be contiguous (stride[3] == 1):
// the engines load 16-byte vectors along it. A dilated view (every r-th row) is the same buffer
// with stride[1] multiplied by r and S divided by r: no copy.
//
//   element (b, s, h, d) lives at  data + b*stride[0] + s*stride[1] + h*stride[2] + d*stride[3]
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "distattn/core/dtype.h"

namespace distattn {

enum class Device : int { kHost = 0, kCuda = 1 };

struct TensorView {
  void* data = nullptr;                       // first element; host or device memory as `device` says
  DType dtype = DType::kBFloat16;             // element type
  Device device = Device::kCuda;              // where `data` lives
  std::array<int64_t, 4> shape{0, 0, 0, 0};   // [B, S, H, D]
  std::array<int64_t, 4> stride{0, 0, 0, 0};  // elements between neighbours along each axis

  int64_t batch() const { return shape[0]; }
  int64_t seqlen() const { return shape[1]; }
  int64_t heads() const { return shape[2]; }
  int64_t head_dim() const { return shape[3]; }
  int64_t numel() const { return shape[0] * shape[1] * shape[2] * shape[3]; }
  bool empty() const { return data == nullptr; }
  int64_t offset(int64_t b, int64_t s, int64_t h, int64_t d) const {
    return b * stride[0] + s * stride[1] + h * stride[2] + d * stride[3];
  }

  // A densely packed [B, S, H, D] view (the layout PyTorch's (B, S, H, D) contiguous tensor has).
  static TensorView packed(void* data, DType dtype, Device device, int64_t B, int64_t S, int64_t H, int64_t D) {
    TensorView t;
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    t.shape = {B, S, H, D};
    t.stride = {S * H * D, H * D, D, 1};
    return t;
  }

  // Rows [begin, end) along axis 1 (same strides, same buffer): e.g. one part of a call split by kv rows.
  // The caller keeps 0 <= begin <= end <= shape[1] (not checked here; the engines validate what they get).
  TensorView rows(int64_t begin, int64_t end) const {
    TensorView t = *this;
    t.data = static_cast<unsigned char*>(data) + begin * stride[1] * static_cast<int64_t>(dtype_size(dtype));
    t.shape[1] = end - begin;
    return t;
  }

  // Heads [begin, end) along axis 2 (same strides, same buffer): e.g. one part of a call split by heads.
  // The caller keeps 0 <= begin <= end <= shape[2] (not checked here, as for rows()).
  TensorView head_range(int64_t begin, int64_t end) const {
    TensorView t = *this;
    t.data = static_cast<unsigned char*>(data) + begin * stride[2] * static_cast<int64_t>(dtype_size(dtype));
    t.shape[2] = end - begin;
    return t;
  }
};

// "[1, 4096, 32, 128] bf16 strides [..]" for error messages.
std::string describe(const TensorView& t);

// Whether two views may share an element (for calls that write one view in place while reading the other). False
// when their byte ranges are disjoint, or when they are head slices of one buffer (same dtype and strides, the same
// shape except the head count, head dim contiguous, bases a whole number of heads apart) whose head ranges do not meet
// and whose addressing is unique (a head's D elements within the head stride, a row's heads within the row stride,
// a batch's rows within the batch stride): the q, k, v of a packed qkv projection. True otherwise (conservative).
// Reads no element; never throws.
bool views_may_overlap(const TensorView& a, const TensorView& b);

}  // namespace distattn
