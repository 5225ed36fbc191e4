#include "distattn/core/tensor.h"

#include <sstream>

namespace distattn {

std::string describe(const TensorView& t) {
  std::ostringstream os;
  os << "[" << t.shape[0] << ", " << t.shape[1] << ", " << t.shape[2] << ", " << t.shape[3] << "] "
     << dtype_name(t.dtype) << " strides [" << t.stride[0] << ", " << t.stride[1] << ", " << t.stride[2] << ", "
     << t.stride[3] << "] on " << (t.device == Device::kCuda ? "cuda" : "host");
  return os.str();
}

}  // namespace distattn
