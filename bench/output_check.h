// The check's per-output comparison, shared by every op that checks against the host engine.
//
// An element of an output is wrong when |got - ref| > tol, with
//   tol = 2 * (max error of the naive same-precision host run) + ulp * max|ref|     (naive run available)
//   tol = 1e-4 * max(1, max|ref|)                                                   (host-engine mode: no naive run)
// which is DESIGN.md's "at most 2x the naive implementation's error", applied per element.
#pragma once

#include <sstream>
#include <string>

#include "bench_op.h"
#include "distattn/core/dtype.h"
#include "distattn/core/tensor.h"

namespace distattn {
namespace bench {

// The unit roundoff of a dtype's mantissa (bf16 2^-7, fp16 2^-10, fp32 2^-23, fp64 2^-52): the `ulp` of compare().
double dtype_ulp(DType dtype);

// The rule OutputCheck applies, as the ops' describe() lines state it: with a naive run (GPU) "element ok if
// |err| <= 2*naive_err + ulp*max|ref|", followed by " (naive: <naive>)" when `naive` is not empty; without one (host
// engine) "element ok if |err| <= 1e-4*max(1,max|ref|)".
std::string check_rule_text(bool with_naive, const std::string& naive = "");

class OutputCheck {
 public:
  // Compares one output (`naive` may be null); the views must have the same shape.
  void compare(const char* name, const TensorView& got, const TensorView& ref, const TensorView* naive, double ulp);
  // The accumulated result (done = true) with a "name err .. naive .. tol .. wrong ..; ..." detail string.
  CheckResult finish();

 private:
  CheckResult result_;
  std::ostringstream detail_;
  double worst_ratio_ = -1;
};

}  // namespace bench
}  // namespace distattn
