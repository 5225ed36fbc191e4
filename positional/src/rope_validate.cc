#include "rope_validate.h"

#include <cmath>

#include "distattn/core/error.h"

namespace distattn {
namespace detail {
namespace {

void check_operand(const TensorView& t, const char* name, Device device, bool allow_fp64) {
  DISTATTN_CHECK_ARG(t.device == device, name, "expected ", device == Device::kCuda ? "device" : "host",
                     " memory, got ", describe(t));
  const bool dtype_ok = t.dtype == DType::kBFloat16 || t.dtype == DType::kFloat16 || t.dtype == DType::kFloat32 ||
                        (allow_fp64 && t.dtype == DType::kFloat64);
  DISTATTN_CHECK_ARG(dtype_ok, name, "unsupported dtype ", dtype_name(t.dtype),
                     allow_fp64 ? " (bf16, fp16, fp32, fp64)" : " (bf16, fp16, fp32 on the GPU)");
  for (int a = 0; a < 4; ++a) {
    DISTATTN_CHECK_ARG(t.shape[a] >= 1, name, "every dimension must be >= 1, got ", describe(t));
  }
  DISTATTN_CHECK_ARG(t.stride[3] == 1, name, "head dim must be contiguous (stride[3] == 1), got ", describe(t));
}

void check_output(const TensorView& out, const TensorView& in, const char* name, const char* in_name) {
  DISTATTN_CHECK_ARG(out.shape == in.shape, name, "shape must equal ", in_name, "'s: ", describe(out), " vs ",
                     describe(in));
  DISTATTN_CHECK_ARG(out.dtype == in.dtype, name, "dtype must equal ", in_name, "'s (", dtype_name(in.dtype), "), got ",
                     dtype_name(out.dtype));
}

// A second output (RopeParams::q_copy / k_copy): shaped like its input and sharing no memory with any operand.
void check_copy(const RopeParams& p, const TensorView& copy, const TensorView& in, const char* name,
                const char* in_name, Device device, bool allow_fp64) {
  check_operand(copy, name, device, allow_fp64);
  check_output(copy, in, name, in_name);
  const TensorView* others[] = {&p.q, &p.k, &p.q_out, &p.k_out, &p.q_copy, &p.k_copy};
  for (const TensorView* o : others) {
    if (o == &copy || o->empty()) continue;
    DISTATTN_CHECK_ARG(!views_may_overlap(copy, *o), name, "shares memory with another operand of the call (",
                       describe(*o), ")");
  }
}

}  // namespace

int64_t validate_rope_params(const RopeParams& p, Device device, bool allow_fp64) {
  DISTATTN_CHECK_ARG(!p.q.empty(), "q", "q is required (null data)");
  check_operand(p.q, "q", device, allow_fp64);
  const int64_t D = p.q.head_dim();
  // The kernel keeps one head's cos/sin chunk per thread; 2048 covers every published head dim.
  DISTATTN_CHECK_ARG(D <= 2048, "q", "head dim ", D, " above the supported 2048");
  DISTATTN_CHECK_ARG(p.rotary_dim >= 0, "rotary_dim", "must be >= 0 (0: head dim), got ", p.rotary_dim);
  const int64_t rot = p.rotary_dim == 0 ? D : p.rotary_dim;
  DISTATTN_CHECK_ARG(rot % 2 == 0, "rotary_dim", "rotary dim must be even, got ", rot,
                     p.rotary_dim == 0 ? " (0 means the head dim)" : "");
  DISTATTN_CHECK_ARG(rot <= D, "rotary_dim", "rotary dim ", rot, " exceeds the head dim ", D);
  DISTATTN_CHECK_ARG(p.style == RopeStyle::kNeoX || p.style == RopeStyle::kGptJ, "style", "unknown RopeStyle ",
                     static_cast<int>(p.style));
  DISTATTN_CHECK_ARG(std::isfinite(p.scale), "scale", "scale must be finite, got ", p.scale);
  DISTATTN_CHECK_ARG(p.inv_freq != nullptr, "inv_freq", "inv_freq [rotary_dim / 2] is required (null)");
  p.q_pos.validate("q_pos", p.q.seqlen());
  if (!p.q_out.empty()) {
    check_operand(p.q_out, "q_out", device, allow_fp64);
    check_output(p.q_out, p.q, "q_out", "q");
  }
  if (!p.q_copy.empty()) check_copy(p, p.q_copy, p.q, "q_copy", "q", device, allow_fp64);
  if (p.k.empty()) {
    DISTATTN_CHECK_ARG(p.k_out.empty(), "k_out", "k_out given without k");
    DISTATTN_CHECK_ARG(p.k_copy.empty(), "k_copy", "k_copy given without k");
  } else {
    check_operand(p.k, "k", device, allow_fp64);
    DISTATTN_CHECK_ARG(p.k.dtype == p.q.dtype, "k", "dtype must equal q's (", dtype_name(p.q.dtype), "), got ",
                       dtype_name(p.k.dtype));
    DISTATTN_CHECK_ARG(p.k.head_dim() == D, "k", "head dim must equal q's (", D, "), got ", describe(p.k));
    DISTATTN_CHECK_ARG(p.k.batch() == p.q.batch(), "k", "batch must equal q's (", p.q.batch(), "), got ",
                       describe(p.k));
    p.k_pos.validate("k_pos", p.k.seqlen());
    if (!p.k_out.empty()) {
      check_operand(p.k_out, "k_out", device, allow_fp64);
      check_output(p.k_out, p.k, "k_out", "k");
    }
    if (!p.k_copy.empty()) check_copy(p, p.k_copy, p.k, "k_copy", "k", device, allow_fp64);
  }
  return rot;
}

}  // namespace detail
}  // namespace distattn
