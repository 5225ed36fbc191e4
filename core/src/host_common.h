// Internal helpers shared by the host engine's forward and backward (host_forward.cc, host_backward.cc).
// Not installed: the public interface is distattn/core/host_engine.h.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "distattn/core/attn_params.h"
#include "distattn/core/dtype.h"
#include "distattn/core/host_engine.h"

namespace distattn {
namespace host_detail {

// Rounds a value to `t` and back (identity for fp32/fp64): the kRoundIntermediates mode stores S, P,
// dP, dS like a framework whose tensors have q's dtype would.
inline float round_to(DType t, float x) {
  switch (t) {
    case DType::kBFloat16:
      return bf16_bits_to_float(float_to_bf16_bits(x));
    case DType::kFloat16:
      return fp16_bits_to_float(float_to_fp16_bits(x));
    default:
      return x;
  }
}
inline double round_to(DType, double x) { return x; }  // kFloat64 never rounds

// Accumulator type and rounding policy of one precision mode.
template <typename AccT, bool kRoundT>
struct Policy {
  using Acc = AccT;
  static constexpr bool kRound = kRoundT;
  DType dtype;  // q's dtype: what kRound rounds to
  Acc round(Acc x) const { return kRound ? static_cast<Acc>(round_to(dtype, static_cast<float>(x))) : x; }
};

// Which kv rows each q row sees (attn_params.h / mask.h): positions resolved once, the block list
// expanded once per q block.
//   visible(i, j) = band.visible(pos_q[i], pos_k[j])                        without a block list
//   visible(i, j) = listed(i/128, j/128) && (full || band.visible(...))    with one
class Visibility {
 public:
  explicit Visibility(const AttnParams& p);

  // Fills `cols` with the visible kv rows of q row i among kv rows [j_begin, j_end) (j_end < 0: Skv), ascending.
  void row(int64_t i, std::vector<int64_t>& cols, int64_t j_begin = 0, int64_t j_end = -1) const;

  const std::vector<int64_t>& q_positions() const { return pos_q_; }
  const std::vector<int64_t>& kv_positions() const { return pos_k_; }

 private:
  int64_t sq_, skv_;
  DiagonalBand band_;
  const BlockListView* blocks_;
  std::vector<int64_t> pos_q_, pos_k_;
};

// ALiBi bias of one (q head, q row, kv row): -slope * |pos_q - pos_k|, integer difference first.
template <typename Acc>
inline Acc alibi_bias(Acc slope, int64_t pos_q, int64_t pos_k) {
  const int64_t d = pos_q - pos_k;
  return -slope * static_cast<Acc>(d < 0 ? -d : d);
}

// Copies rows [s_begin, s_end) (s_end < 0: all) of head h of batch b of `t` into a dense
// [s_end - s_begin, D] buffer of Acc.
template <typename Acc>
void load_head(const TensorView& t, int64_t b, int64_t h, std::vector<Acc>& out, int64_t s_begin = 0,
               int64_t s_end = -1) {
  if (s_end < 0) s_end = t.seqlen();
  const int64_t D = t.head_dim();
  out.resize(static_cast<size_t>((s_end - s_begin) * D));
  for (int64_t s = s_begin; s < s_end; ++s) {
    const int64_t base = t.offset(b, s, h, 0);
    Acc* dst = &out[(s - s_begin) * D];
    for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<Acc>(load_as_double(t.data, base + d, t.dtype));
  }
}

// q . k over the head dim with four partial sums: independent chains the compiler can vectorise (a
// single running sum cannot be reordered), and a shorter error chain than one sequential sum.
template <typename Acc>
inline Acc dot(const Acc* a, const Acc* b, int64_t n) {
  Acc s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

// Threads the host engine may use: DISTATTN_HOST_THREADS if set, else the hardware threads divided by
// the ranks sharing this node (mpirun / Slurm environment), at least 1.
int host_threads();

// Runs body(u) for u in [0, units) on up to host_threads() threads; inline when `work` (a rough count
// of multiply-adds) is too small to pay for starting threads. body must not throw.
void parallel_for(int64_t units, double work, const std::function<void(int64_t)>& body);

}  // namespace host_detail
}  // namespace distattn
