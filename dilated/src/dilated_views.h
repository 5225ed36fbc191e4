// Strided views, head groups and the whole-call params for validation, shared by the single-device
// (dilated_attention.cc) and distributed (distributed_dilated.cc) dilated attention. Internal (not installed).
#pragma once

#include <cstdint>
#include <vector>

#include "distattn/core/attn_params.h"
#include "distattn/core/dtype.h"
#include "distattn/core/tensor.h"

namespace distattn {
namespace dilated_detail {

// View of rows row0, row0 + r, ... (rows of them) and heads head0, head0 + hstep, ... (heads of them):
// the same buffer, strides multiplied, no copy.
inline TensorView sub_view(const TensorView& t, int64_t row0, int64_t r, int64_t rows, int64_t head0, int64_t hstep,
                           int64_t heads) {
  TensorView v = t;
  v.data = static_cast<char*>(t.data) +
           (row0 * t.stride[1] + head0 * t.stride[2]) * static_cast<int64_t>(dtype_size(t.dtype));
  v.shape = {t.shape[0], rows, heads, t.shape[3]};
  v.stride = {t.stride[0], t.stride[1] * r, t.stride[2] * hstep, 1};
  return v;
}

// One engine call's head set for pattern rate r, offset class s: q heads qh0 + qstep*t (t < count) reading
// kv heads kh0 + kstep*t (or, when kv_all, the whole kv tensor with the GQA ratio: r == 1).
struct HeadGroup {
  int64_t qh0, qstep, kh0, kstep, count;
  bool kv_all;
  int64_t slope_offset;  // into the pattern's permuted slopes
};

// The calls covering class s of rate r: one (regular stride of q AND kv heads) or one per head.
// GQA ratio g = Hq / Hkv: q head s + r*t reads kv head (s + r*t) / g = s/g + (r/g)*t when g divides r.
inline std::vector<HeadGroup> head_groups(int64_t Hq, int64_t Hkv, int64_t r, int64_t s, int64_t class_offset) {
  std::vector<HeadGroup> out;
  const int64_t g = Hq / Hkv;
  const int64_t count = (Hq - 1 - s) / r + 1;
  if (r == 1) {
    out.push_back({0, 1, 0, 1, Hq, true, 0});
  } else if (r % g == 0) {
    out.push_back({s, r, s / g, r / g, count, false, class_offset});
  } else {
    for (int64_t t = 0; t < count; ++t) {
      const int64_t h = s + r * t;
      out.push_back({h, 1, h / g, 1, 1, false, class_offset + t});
    }
  }
  return out;
}

// dst (a strided host view of any host dtype) = src (packed fp32 with dst's shape).
inline void host_cast(const float* src, const TensorView& dst) {
  const int64_t B = dst.shape[0], S = dst.shape[1], H = dst.shape[2], D = dst.shape[3];
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < D; ++d)
          store_from_double(dst.data, dst.offset(b, s, h, d), dst.dtype, src[((b * S + s) * H + h) * D + d]);
}

// The caller's whole call as one engine call: q, k, v, o, lse with every q and kv row at `pos`, causal or not. Not run:
// the engine's validate_forward checks the caller's tensors on it (shapes, dtypes, strides, devices, aliasing) before
// any per-pattern call.
inline AttnParams whole_call(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                             float* lse, const PositionMap& pos, bool causal) {
  AttnParams p;
  p.q = q;
  p.k = k;
  p.v = v;
  p.o = o;
  p.lse = lse;
  p.q_pos = pos;
  p.kv_pos = pos;
  p.mask.causal = causal;
  return p;
}

// The same for a backward (dout, dq, dk, dv added), for validate_backward.
inline AttnBwdParams whole_call(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                const float* lse, const TensorView& dout, const TensorView& dq, const TensorView& dk,
                                const TensorView& dv, const PositionMap& pos, bool causal) {
  AttnBwdParams b;
  b.fwd = whole_call(q, k, v, o, const_cast<float*>(lse), pos, causal);  // the backward only reads lse
  b.dout = dout;
  b.dq = dq;
  b.dk = dk;
  b.dv = dv;
  return b;
}

}  // namespace dilated_detail
}  // namespace distattn
