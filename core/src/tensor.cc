#include "distattn/core/tensor.h"

#include <algorithm>
#include <cstdint>
#include <sstream>

namespace distattn {

std::string describe(const TensorView& t) {
  std::ostringstream os;
  os << "[" << t.shape[0] << ", " << t.shape[1] << ", " << t.shape[2] << ", " << t.shape[3] << "] "
     << dtype_name(t.dtype) << " strides [" << t.stride[0] << ", " << t.stride[1] << ", " << t.stride[2] << ", "
     << t.stride[3] << "] on " << (t.device == Device::kCuda ? "cuda" : "host");
  return os.str();
}

namespace {

// [first byte, one past the last byte) a view can touch (its shape and strides).
void byte_span(const TensorView& t, uintptr_t* lo, uintptr_t* hi) {
  *lo = reinterpret_cast<uintptr_t>(t.data);
  int64_t last = 0;
  for (int axis = 0; axis < 4; ++axis) last += (t.shape[axis] - 1) * t.stride[axis];
  *hi = *lo + static_cast<uintptr_t>(last + 1) * dtype_size(t.dtype);
}

}  // namespace

bool views_may_overlap(const TensorView& a, const TensorView& b) {
  if (a.data == nullptr || b.data == nullptr || a.numel() <= 0 || b.numel() <= 0) return false;  // no element
  uintptr_t alo, ahi, blo, bhi;
  byte_span(a, &alo, &ahi);
  byte_span(b, &blo, &bhi);
  if (alo >= bhi || blo >= ahi) return false;
  if (a.dtype != b.dtype || a.stride[3] != 1 || b.stride[3] != 1) return true;
  for (int axis = 0; axis < 4; ++axis) {
    if (a.stride[axis] != b.stride[axis]) return true;
    if (axis != 2 && a.shape[axis] != b.shape[axis]) return true;
  }
  const int64_t es = static_cast<int64_t>(dtype_size(a.dtype));
  const int64_t diff = static_cast<int64_t>(blo) - static_cast<int64_t>(alo);  // bytes from a's base to b's
  const int64_t hs = a.stride[2];
  if (hs <= 0 || diff % (es * hs) != 0) return true;
  const int64_t shift = diff / (es * hs);  // b's head h is a's head h + shift
  const int64_t first = std::min<int64_t>(0, shift), end = std::max<int64_t>(a.shape[2], shift + b.shape[2]);
  const bool unique = a.shape[3] <= hs && (end - first) * hs <= a.stride[1] &&
                      (a.shape[0] == 1 || a.shape[1] * a.stride[1] <= a.stride[0]);
  const bool apart = shift >= a.shape[2] || shift + b.shape[2] <= 0;
  return !(unique && apart);
}

}  // namespace distattn
