#include "output_check.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "host_tensors.h"

namespace distattn {
namespace bench {

double dtype_ulp(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
      return std::ldexp(1.0, -7);
    case DType::kFloat16:
      return std::ldexp(1.0, -10);
    case DType::kFloat32:
      return std::ldexp(1.0, -23);
    default:
      return std::ldexp(1.0, -52);
  }
}

std::string check_rule_text(bool with_naive, const std::string& naive) {
  if (!with_naive) return "element ok if |err| <= 1e-4*max(1,max|ref|)";
  return "element ok if |err| <= 2*naive_err + ulp*max|ref|" + (naive.empty() ? "" : " (naive: " + naive + ")");
}

void OutputCheck::compare(const char* name, const TensorView& got, const TensorView& ref, const TensorView* naive,
                          double ulp) {
  const double err = max_abs_diff(got, ref);
  const double ref_max = max_abs(ref);
  double naive_err = 0, tol;
  if (naive != nullptr) {
    naive_err = max_abs_diff(*naive, ref);
    tol = 2 * naive_err + ulp * std::max(ref_max, 1e-30);
  } else {
    tol = 1e-4 * std::max(1.0, ref_max);
  }
  const int64_t wrong = count_outside(got, ref, tol);
  result_.wrong += wrong;
  result_.checked += got.numel();
  result_.max_err = std::max(result_.max_err, err);
  if (!std::isfinite(err)) result_.max_err = err;
  result_.naive_err = std::max(result_.naive_err, naive_err);
  const double ratio = err / tol;
  if (!(ratio <= worst_ratio_)) {  // also taken when ratio is NaN
    worst_ratio_ = ratio;
    result_.tolerance = tol;
  }
  char buf[160];
  std::snprintf(buf, sizeof(buf), "%s err %.3g naive %.3g tol %.3g wrong %lld; ", name, err, naive_err, tol,
                static_cast<long long>(wrong));
  detail_ << buf;
}

CheckResult OutputCheck::finish() {
  CheckResult r = result_;
  r.done = true;
  r.detail = detail_.str();
  if (r.detail.size() >= 2) r.detail.resize(r.detail.size() - 2);  // drop the trailing "; "
  return r;
}

}  // namespace bench
}  // namespace distattn
