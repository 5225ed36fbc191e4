// LongNet dilated attention on one device: validation, the per-pattern engine calls on strided views, the
// pattern merge and the backward (dilated_attention.h).
//
// Why the backward is exact. Mixing the patterns by their LSEs is one softmax over the multiset union U of
// every pattern's (query i, key j) pairs: with LSE_i = log sum_{(i,j) in U} exp(s_ij) (a pair kept by two
// patterns appears twice, in the forward because both partials contain it and both partial LSEs count it),
//   O_i = sum_{(i,j) in U} P_ij v_j,   P_ij = exp(s_ij - LSE_i).
// Its gradient is the ordinary attention gradient over U: dV_j += P_ij dO_i, dS_ij = P_ij (dO_i.v_j - delta_i),
// delta_i = dO_i . O_i (final O). Each pattern's slice of U is exactly one engine call's visible pairs, so
// the backward is, for every pattern/segment/offset class, the engine's backward on the SAME strided views,
// fed the FINAL O (hence the final delta, which the engine computes from o and dout) and the FINAL LSE
// (compacted to the call's rows), adding into fp32 dQ, dK, dV (accumulate = true). A duplicated pair is
// visited by both pattern calls, so it contributes twice, as in the forward.
#include "distattn/dilated/dilated_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "dilated_index.h"
#include "dilated_kernels.h"
#include "dilated_views.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/sparse/flash_attention.h"

namespace distattn {

namespace {

using dilated_detail::compact_index;
using dilated_detail::head_groups;
using dilated_detail::HeadGroup;
using dilated_detail::host_cast;
using dilated_detail::kept;
using dilated_detail::sub_view;

std::string pattern_arg(size_t i, const char* field) { return "config.patterns[" + std::to_string(i) + "]." + field; }

// How one pattern's segments reach the engine. Unfolded: one call per segment g, rows g*w + s + r*j, global
// positions PositionMap::strided(g*w + s, r, m). Folded (B == 1, or every tensor's batch stride equals S times
// its row stride): the B * S/w segments become the batch dimension of ONE call, batch index b*(S/w) + g at
// b*stride[0] + g*w*stride[1] = (b*(S/w) + g) * (w*stride[1]); positions are then measured from the segment
// start, strided(s, r, m), which changes nothing because the causal mask and the ALiBi bias depend only on
// position DIFFERENCES inside a segment (keys never cross segments). The compacted LSE [B, S/w, Hq, m] has
// the uniform batch step Hq*m in both cases.
// The folded batch is cut into calls of at most `chunk` segments (the CUDA grid takes at most 65535 batches);
// call c covers flattened batch indices [c*chunk, c*chunk + count), which start at row c*chunk*w of the
// flattened (b, row) space (uniform because batch stride == S * row stride when folding).
struct SegmentPlan {
  bool fold;
  int64_t B, w, r, m, nseg, Hq;
  int64_t chunk;  // folded: segments per call (>= 1); unfolded: 1
  int64_t total() const { return fold ? B * nseg : nseg; }
  int64_t calls() const { return (total() + chunk - 1) / chunk; }
  TensorView view(const TensorView& t, int64_t call, int64_t s, int64_t h0, int64_t hstep, int64_t heads) const {
    if (!fold) return sub_view(t, call * w + s, r, m, h0, hstep, heads);
    const int64_t first = call * chunk;
    TensorView v = sub_view(t, first * w + s, r, m, h0, hstep, heads);
    v.shape[0] = std::min(chunk, total() - first);
    v.stride[0] = w * t.stride[1];
    return v;
  }
  PositionMap positions(int64_t call, int64_t s) const { return PositionMap::strided(fold ? s : call * w + s, r, m); }
  float* lse(float* base, int64_t call, int64_t h0) const { return base + (call * chunk * Hq + h0) * m; }
  int64_t lse_batch_stride() const { return fold ? Hq * m : nseg * Hq * m; }
};

bool foldable(const TensorView& t) { return t.shape[0] == 1 || t.stride[0] == t.shape[1] * t.stride[1]; }

// The kv-side view (k, v, dk, dv) of head group hg: the whole kv tensor (GQA ratio kept) or its strided heads.
TensorView kv_view(const SegmentPlan& plan, const HeadGroup& hg, int64_t g, int64_t s, const TensorView& t) {
  return hg.kv_all ? plan.view(t, g, s, 0, 1, t.heads()) : plan.view(t, g, s, hg.kh0, hg.kstep, hg.count);
}

// One engine call: rows of segment call g at offset s for head group hg, on strided views of q, k, v and
// `o` (the pattern's partial output in the forward, the FINAL output in the backward), with the compacted
// LSE at `lse_base` (partial in the forward, the final LSE in the backward). accumulate is left false.
AttnParams pattern_call(const SegmentPlan& plan, const HeadGroup& hg, int64_t g, int64_t s, const TensorView& q,
                        const TensorView& k, const TensorView& v, const TensorView& o, float* lse_base,
                        const float* slopes, const DilatedConfig& config) {
  AttnParams p;
  p.q = plan.view(q, g, s, hg.qh0, hg.qstep, hg.count);
  p.k = kv_view(plan, hg, g, s, k);
  p.v = kv_view(plan, hg, g, s, v);
  p.o = plan.view(o, g, s, hg.qh0, hg.qstep, hg.count);
  // Compacted LSE of (segment g, head qh0 + qstep*t, row j): see dilated_index.h.
  p.lse = plan.lse(lse_base, g, hg.qh0);
  p.lse_head_stride = hg.qstep * plan.m;
  p.lse_batch_stride = plan.lse_batch_stride();
  p.q_pos = plan.positions(g, s);
  p.kv_pos = p.q_pos;
  p.mask.causal = config.causal;
  p.alibi_slopes = slopes != nullptr ? slopes + hg.slope_offset : nullptr;
  p.softmax_scale = config.softmax_scale;
  return p;
}

// --- host versions of the helpers (cuda versions in dilated_kernels.cu) ---
void host_merge(float* acc, float* lse_acc, const float* part, const float* lse_part, int64_t B, int64_t S, int64_t H,
                int64_t D, int64_t w, int64_t r) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < S; ++p)
      for (int64_t h = 0; h < H; ++h) {
        if (!kept(p, h, r)) continue;
        float& la = lse_acc[(b * H + h) * S + p];
        const float lp = lse_part[compact_index(b, p, h, S, H, w, r)];
        const float hi = std::max(la, lp);
        if (hi == -std::numeric_limits<float>::infinity()) continue;
        const float L = hi + std::log1p(std::exp(std::min(la, lp) - hi));
        const float ca = std::exp(la - L), cp = std::exp(lp - L);
        float* a = acc + ((b * S + p) * H + h) * D;
        const float* pp = part + ((b * S + p) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) a[d] = a[d] * ca + pp[d] * cp;
        la = L;
      }
}

void host_compact_lse(const float* lse, float* lse_part, int64_t B, int64_t S, int64_t H, int64_t w, int64_t r) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t p = 0; p < S; ++p)
        if (kept(p, h, r)) lse_part[compact_index(b, p, h, S, H, w, r)] = lse[(b * H + h) * S + p];
}

int64_t gcd64(int64_t a, int64_t b) { return b == 0 ? a : gcd64(b, a % b); }

}  // namespace

void validate_dilated_config(const DilatedConfig& config, int64_t seqlen, int64_t q_heads) {
  DISTATTN_CHECK_ARG(!config.patterns.empty(), "config.patterns", "is empty (expected at least one (segment, rate))");
  for (size_t i = 0; i < config.patterns.size(); ++i) {
    const DilatedPattern& pt = config.patterns[i];
    DISTATTN_CHECK_ARG(pt.segment >= 1, pattern_arg(i, "segment"), "is ", pt.segment, " (expected >= 1)");
    DISTATTN_CHECK_ARG(seqlen % pt.segment == 0, pattern_arg(i, "segment"), "is ", pt.segment,
                       ", which does not divide the sequence length ", seqlen);
    DISTATTN_CHECK_ARG(pt.rate >= 1, pattern_arg(i, "rate"), "is ", pt.rate, " (expected >= 1)");
    DISTATTN_CHECK_ARG(pt.segment % pt.rate == 0, pattern_arg(i, "rate"), "is ", pt.rate,
                       ", which does not divide the segment length ", pt.segment);
  }
  DISTATTN_CHECK_ARG(std::isfinite(config.softmax_scale) && config.softmax_scale >= 0.f, "config.softmax_scale", "is ",
                     config.softmax_scale, " (expected finite and >= 0; 0: 1/sqrt(D))");
  if (!config.alibi_slopes.empty()) {
    DISTATTN_CHECK_ARG(static_cast<int64_t>(config.alibi_slopes.size()) == q_heads, "config.alibi_slopes", "has ",
                       config.alibi_slopes.size(), " slopes, expected one per q head (", q_heads, ")");
    for (size_t h = 0; h < config.alibi_slopes.size(); ++h) {
      DISTATTN_CHECK_ARG(std::isfinite(config.alibi_slopes[h]), "config.alibi_slopes", "slope of head ", h, " is ",
                         config.alibi_slopes[h], " (expected finite)");
    }
  }
  if (config.error_if_query_without_key) {
    // Row p is kept for head h by pattern i iff p mod r_i == h mod r_i: periodic in p with period
    // lcm(r_i), so rows [0, min(S, lcm)) decide (a rate of 1 keeps every row).
    int64_t period = 1;
    for (const DilatedPattern& pt : config.patterns) {
      period = period / gcd64(period, pt.rate) * pt.rate;
      if (period >= seqlen) {
        period = seqlen;
        break;
      }
    }
    for (int64_t h = 0; h < q_heads; ++h) {
      for (int64_t p = 0; p < std::min(period, seqlen); ++p) {
        bool any = false;
        for (const DilatedPattern& pt : config.patterns) any = any || kept(p, h, pt.rate);
        DISTATTN_CHECK_ARG(any, "config.patterns", "leave row ", p, " of head ", h,
                           " with no key (no pattern keeps it) and error_if_query_without_key is set");
      }
    }
  }
}

DilatedAttention::DilatedAttention(DilatedConfig config, Device device) : config_(std::move(config)), device_(device) {
  const int64_t H = static_cast<int64_t>(config_.alibi_slopes.size());
  if (H > 0) {
    // Per pattern, the slopes in (h mod r, h div r) order: class s's heads s, s + r, ... are adjacent, so a
    // call over them (or over one of them) points at a contiguous slice.
    for (const DilatedPattern& pt : config_.patterns) {
      const int64_t r = std::max<int64_t>(pt.rate, 1);
      for (int64_t s = 0; s < std::min(r, H); ++s)
        for (int64_t h = s; h < H; h += r) slopes_host_.push_back(config_.alibi_slopes[h]);
    }
    if (device_ == Device::kCuda) {
      DISTATTN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&slopes_device_), slopes_host_.size() * sizeof(float)));
      DISTATTN_CUDA_CHECK(
          cudaMemcpy(slopes_device_, slopes_host_.data(), slopes_host_.size() * sizeof(float), cudaMemcpyHostToDevice));
    }
  }
}

DilatedAttention::~DilatedAttention() {
  if (device_ == Device::kCuda) {
    if (scratch_ != nullptr || slopes_device_ != nullptr) cudaStreamSynchronize(last_stream_);
    if (scratch_ != nullptr) cudaFree(scratch_);
    if (slopes_device_ != nullptr) cudaFree(slopes_device_);
  }
}

int64_t DilatedAttention::fold_chunk(int64_t total) const {
  int64_t limit = max_fold_batch_ > 0 ? max_fold_batch_ : (device_ == Device::kCuda ? 65535 : total);
  return std::max<int64_t>(1, std::min(limit, total));
}

const float* DilatedAttention::pattern_slopes(size_t pattern) const {
  if (slopes_host_.empty()) return nullptr;
  const int64_t H = static_cast<int64_t>(config_.alibi_slopes.size());
  const float* base = device_ == Device::kCuda ? slopes_device_ : slopes_host_.data();
  return base + pattern * H;
}

float* DilatedAttention::scratch(int64_t floats) {
  if (floats <= scratch_floats_) return scratch_;
  if (device_ == Device::kHost) {
    scratch_host_.resize(static_cast<size_t>(floats));
    scratch_ = scratch_host_.data();
  } else {
    if (scratch_ != nullptr) {
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(last_stream_));
      DISTATTN_CUDA_CHECK(cudaFree(scratch_));
      scratch_ = nullptr;
    }
    DISTATTN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&scratch_), static_cast<size_t>(floats) * sizeof(float)));
  }
  scratch_floats_ = floats;
  return scratch_;
}

void DilatedAttention::validate_tensors(const TensorView& q, const TensorView& k, const TensorView& v,
                                        const TensorView& o, const float* lse) const {
  DISTATTN_CHECK_ARG(lse != nullptr, "lse", "is null; dilated attention needs the fp32 LSE [B, Hq, S]");
  DISTATTN_CHECK_ARG(q.data == nullptr || k.data == nullptr || k.shape[1] == q.shape[1], "k", "has ", k.shape[1],
                     " rows, q has ", q.shape[1], " (dilated self-attention needs equal lengths)");
  // The engine's rules on the whole tensors (shapes, dtypes, strides, devices, aliasing).
  AttnParams full;
  full.q = q;
  full.k = k;
  full.v = v;
  full.o = o;
  full.lse = const_cast<float*>(lse);
  full.q_pos = PositionMap::contiguous(0, std::max<int64_t>(q.shape[1], 1));
  full.kv_pos = PositionMap::contiguous(0, std::max<int64_t>(k.shape[1], 1));
  full.mask.causal = config_.causal;
  validate_forward(full, device_);
  if (device_ == Device::kCuda) {
    DISTATTN_CHECK_ARG(flash_supports_head_dim(q.head_dim()), "q", "has head dim ", q.head_dim(),
                       ", which the CUDA engine has no kernels for");
  }
  validate_dilated_config(config_, q.seqlen(), q.heads());
}

void DilatedAttention::forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                               float* lse, cudaStream_t stream) {
  validate_tensors(q, k, v, o, lse);
  const int64_t B = q.batch(), S = q.seqlen(), Hq = q.heads(), Hkv = k.heads(), D = q.head_dim();
  const int64_t n_o = B * S * Hq * D, n_lse = B * Hq * S;
  float* base = scratch(2 * n_o + 2 * n_lse);
  last_stream_ = stream;
  float* acc = base;                  // packed fp32 [B, S, Hq, D]: the mixed output
  float* part = base + n_o;           // packed fp32 [B, S, Hq, D]: one pattern's output (kept rows)
  float* lse_acc = part + n_o;        // packed [B, Hq, S]
  float* lse_part = lse_acc + n_lse;  // compacted [B, S/w, Hq, w/r]
  const TensorView part_view = TensorView::packed(part, DType::kFloat32, device_, B, S, Hq, D);
  const bool cuda = device_ == Device::kCuda;
  const bool fold = fold_segments_ && foldable(q) && foldable(k) && foldable(v);  // scratch is packed
  const float inf = std::numeric_limits<float>::infinity();
  if (cuda) {
    dilated_detail::cuda_fill(acc, n_o, 0.f, stream);
    dilated_detail::cuda_fill(lse_acc, n_lse, -inf, stream);
  } else {
    std::fill(acc, acc + n_o, 0.f);
    std::fill(lse_acc, lse_acc + n_lse, -inf);
  }

  for (size_t i = 0; i < config_.patterns.size(); ++i) {
    const int64_t w = config_.patterns[i].segment, r = config_.patterns[i].rate, m = w / r, nseg = S / w;
    const float* slopes = pattern_slopes(i);
    const SegmentPlan plan{fold, B, w, r, m, nseg, Hq, fold ? fold_chunk(B * nseg) : 1};
    int64_t class_offset = 0;
    for (int64_t s = 0; s < std::min(r, Hq); ++s) {
      for (const HeadGroup& hg : head_groups(Hq, Hkv, r, s, class_offset)) {
        for (int64_t g = 0; g < plan.calls(); ++g) {
          // Rows g*w + s + r*j, j < m (all segments at once when folded): q/k/v/o views with row stride * r.
          const AttnParams p = pattern_call(plan, hg, g, s, q, k, v, part_view, lse_part, slopes, config_);
          if (cuda) {
            flash_attention_forward(p, stream);
          } else {
            host_attention_forward(p, config_.host_precision);
          }
        }
      }
      class_offset += (Hq - 1 - s) / r + 1;
    }
    if (cuda) {
      dilated_detail::cuda_merge(acc, lse_acc, part, lse_part, B, S, Hq, D, w, r, stream);
    } else {
      host_merge(acc, lse_acc, part, lse_part, B, S, Hq, D, w, r);
    }
  }

  if (cuda) {
    dilated_detail::cuda_cast(acc, o, stream);
    DISTATTN_CUDA_CHECK(cudaMemcpyAsync(lse, lse_acc, n_lse * sizeof(float), cudaMemcpyDeviceToDevice, stream));
  } else {
    host_cast(acc, o);
    std::memcpy(lse, lse_acc, n_lse * sizeof(float));
  }
}

void DilatedAttention::backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                const float* lse, const TensorView& dout, const TensorView& dq, const TensorView& dk,
                                const TensorView& dv, cudaStream_t stream) {
  validate_tensors(q, k, v, o, lse);
  {
    AttnBwdParams full;
    full.fwd.q = q;
    full.fwd.k = k;
    full.fwd.v = v;
    full.fwd.o = o;
    full.fwd.lse = const_cast<float*>(lse);
    full.fwd.q_pos = PositionMap::contiguous(0, q.seqlen());
    full.fwd.kv_pos = full.fwd.q_pos;
    full.fwd.mask.causal = config_.causal;
    full.dout = dout;
    full.dq = dq;
    full.dk = dk;
    full.dv = dv;
    validate_backward(full, device_);
  }
  const int64_t B = q.batch(), S = q.seqlen(), Hq = q.heads(), Hkv = k.heads(), D = q.head_dim();
  const int64_t n_q = B * S * Hq * D, n_kv = B * S * Hkv * D, n_lse = B * Hq * S;
  float* base = scratch(n_q + 2 * n_kv + n_lse);
  last_stream_ = stream;
  float* dq_acc = base;             // packed fp32 [B, S, Hq, D]
  float* dk_acc = base + n_q;       // packed fp32 [B, S, Hkv, D]
  float* dv_acc = dk_acc + n_kv;    // packed fp32 [B, S, Hkv, D]
  float* lse_part = dv_acc + n_kv;  // the final LSE compacted for one pattern: [B, S/w, Hq, w/r]
  const TensorView dq_view = TensorView::packed(dq_acc, DType::kFloat32, device_, B, S, Hq, D);
  const TensorView dk_view = TensorView::packed(dk_acc, DType::kFloat32, device_, B, S, Hkv, D);
  const TensorView dv_view = TensorView::packed(dv_acc, DType::kFloat32, device_, B, S, Hkv, D);
  const bool cuda = device_ == Device::kCuda;
  const bool fold = fold_segments_ && foldable(q) && foldable(k) && foldable(v) && foldable(o) && foldable(dout);
  if (cuda) {
    dilated_detail::cuda_fill(base, n_q + 2 * n_kv, 0.f, stream);
  } else {
    std::fill(base, base + n_q + 2 * n_kv, 0.f);
  }

  for (size_t i = 0; i < config_.patterns.size(); ++i) {
    const int64_t w = config_.patterns[i].segment, r = config_.patterns[i].rate, m = w / r, nseg = S / w;
    if (cuda) {
      dilated_detail::cuda_compact_lse(lse, lse_part, B, S, Hq, w, r, stream);
    } else {
      host_compact_lse(lse, lse_part, B, S, Hq, w, r);
    }
    const float* slopes = pattern_slopes(i);
    const SegmentPlan plan{fold, B, w, r, m, nseg, Hq, fold ? fold_chunk(B * nseg) : 1};
    int64_t class_offset = 0;
    for (int64_t s = 0; s < std::min(r, Hq); ++s) {
      for (const HeadGroup& hg : head_groups(Hq, Hkv, r, s, class_offset)) {
        for (int64_t g = 0; g < plan.calls(); ++g) {
          AttnBwdParams bp;
          // o: the FINAL output (delta = dO . O); lse_part: the FINAL LSE of these rows, compacted.
          bp.fwd = pattern_call(plan, hg, g, s, q, k, v, o, lse_part, slopes, config_);
          bp.dout = plan.view(dout, g, s, hg.qh0, hg.qstep, hg.count);
          bp.dq = plan.view(dq_view, g, s, hg.qh0, hg.qstep, hg.count);
          bp.dk = kv_view(plan, hg, g, s, dk_view);
          bp.dv = kv_view(plan, hg, g, s, dv_view);
          bp.accumulate = true;
          if (cuda) {
            flash_attention_backward(bp, stream);
          } else {
            host_attention_backward(bp, config_.host_precision);
          }
        }
      }
      class_offset += (Hq - 1 - s) / r + 1;
    }
  }

  if (cuda) {
    dilated_detail::cuda_cast(dq_acc, dq, stream);
    dilated_detail::cuda_cast(dk_acc, dk, stream);
    dilated_detail::cuda_cast(dv_acc, dv, stream);
  } else {
    host_cast(dq_acc, dq);
    host_cast(dk_acc, dk);
    host_cast(dv_acc, dv);
  }
}

void dilated_attention_forward(const DilatedConfig& config, const TensorView& q, const TensorView& k,
                               const TensorView& v, const TensorView& o, float* lse, Device device,
                               cudaStream_t stream) {
  DilatedAttention attn(config, device);
  attn.forward(q, k, v, o, lse, stream);
  if (device == Device::kCuda) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void dilated_attention_backward(const DilatedConfig& config, const TensorView& q, const TensorView& k,
                                const TensorView& v, const TensorView& o, const float* lse, const TensorView& dout,
                                const TensorView& dq, const TensorView& dk, const TensorView& dv, Device device,
                                cudaStream_t stream) {
  DilatedAttention attn(config, device);
  attn.backward(q, k, v, o, lse, dout, dq, dk, dv, stream);
  if (device == Device::kCuda) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace distattn
