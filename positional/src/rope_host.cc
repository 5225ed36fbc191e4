// rope_apply_host: the plain-loop RoPE the GPU kernel is checked against (and the host engine's).
//
// Angle: exactly the kernel's, theta_i = float(pos) * inv_freq[i] as ONE fp32 multiply (so GPU and host
// start from the same fp32 angle bits); cos and sin of that fp32 value are then taken in DOUBLE and
// scaled in double. The rotation itself runs in double and is rounded once to the output dtype. The
// GPU's accurate sincosf is within ~1 fp32 ulp of these values, so bf16/fp16 outputs agree to <= 1 ulp.
#include <cmath>
#include <vector>

#include "distattn/core/error.h"
#include "distattn/positional/rope.h"
#include "rope_validate.h"

namespace distattn {
namespace {

// Rotates every head of one tensor. `pos_map` gives the global position of row s (batch-independent).
void rotate_tensor(const TensorView& in, const TensorView& out_or_empty, const PositionMap& pos_map, int64_t rot,
                   RopeStyle style, const float* inv_freq, double scale, bool inverse) {
  const TensorView& out = out_or_empty.empty() ? in : out_or_empty;
  const bool in_place = out_or_empty.empty() || (out.data == in.data && out.stride == in.stride);
  const int64_t B = in.batch(), S = in.seqlen(), H = in.heads(), D = in.head_dim();
  const int64_t half = rot / 2;
  std::vector<double> cs(half), sn(half), x(D);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t pos = pos_map.position(s);
    for (int64_t i = 0; i < half; ++i) {
      const float theta = static_cast<float>(pos) * inv_freq[i];  // fp32 angle, as on the GPU
      cs[i] = scale * std::cos(static_cast<double>(theta));
      sn[i] = (inverse ? -scale : scale) * std::sin(static_cast<double>(theta));
    }
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t d = 0; d < D; ++d) x[d] = load_as_double(in.data, in.offset(b, s, h, d), in.dtype);
        for (int64_t i = 0; i < half; ++i) {
          // NeoX pairs (i, i + half); GPT-J pairs (2i, 2i + 1).
          const int64_t ia = style == RopeStyle::kNeoX ? i : 2 * i;
          const int64_t ib = style == RopeStyle::kNeoX ? i + half : 2 * i + 1;
          const double a = x[ia], bv = x[ib];
          store_from_double(out.data, out.offset(b, s, h, ia), out.dtype, a * cs[i] - bv * sn[i]);
          store_from_double(out.data, out.offset(b, s, h, ib), out.dtype, a * sn[i] + bv * cs[i]);
        }
        if (!in_place) {
          for (int64_t d = rot; d < D; ++d) store_from_double(out.data, out.offset(b, s, h, d), out.dtype, x[d]);
        }
      }
    }
  }
}

// copy = out, whole heads (the second output of RopeParams::q_copy / k_copy).
void copy_tensor(const TensorView& out, const TensorView& copy) {
  for (int64_t b = 0; b < out.batch(); ++b)
    for (int64_t s = 0; s < out.seqlen(); ++s)
      for (int64_t h = 0; h < out.heads(); ++h)
        for (int64_t d = 0; d < out.head_dim(); ++d)
          store_from_double(copy.data, copy.offset(b, s, h, d), copy.dtype,
                            load_as_double(out.data, out.offset(b, s, h, d), out.dtype));
}

}  // namespace

void rope_apply_host(const RopeParams& p) {
  const int64_t rot = detail::validate_rope_params(p, Device::kHost, /*allow_fp64=*/true);
  rotate_tensor(p.q, p.q_out, p.q_pos, rot, p.style, p.inv_freq, p.scale, p.inverse);
  if (!p.q_copy.empty()) copy_tensor(p.q_out.empty() ? p.q : p.q_out, p.q_copy);
  if (!p.k.empty()) {
    rotate_tensor(p.k, p.k_out, p.k_pos, rot, p.style, p.inv_freq, p.scale, p.inverse);
    if (!p.k_copy.empty()) copy_tensor(p.k_out.empty() ? p.k : p.k_out, p.k_copy);
  }
}

}  // namespace distattn
