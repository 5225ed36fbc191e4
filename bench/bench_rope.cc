#include "bench_rope.h"

#include <cstdio>

#include "op_common.h"
#include "stream_timer.h"

namespace distattn {
namespace bench {

BenchRope::BenchRope(const BenchOptions& opt, int64_t head_dim, bool on_gpu) {
  RopeConfig config;
  config.head_dim = head_dim;
  config.rotary_dim = opt.rotary_dim;
  config.style = opt.rope_gptj ? RopeStyle::kGptJ : RopeStyle::kNeoX;
  freqs_ = make_rope_frequencies(config);
  rotary_dim_ = opt.rotary_dim > 0 ? opt.rotary_dim : head_dim;
  style_ = config.style;
  if (on_gpu) inv_freq_dev_ = device_copy(freqs_.inv_freq);
}

RopeParams BenchRope::params(const TensorView& q, const TensorView& k, const PositionMap& pos, bool device,
                             bool inverse) const {
  RopeParams p;
  p.q = q;
  p.k = k;  // q_out / k_out empty: in place
  p.q_pos = pos;
  p.k_pos = pos;
  p.rotary_dim = rotary_dim_;
  p.style = style_;
  p.inv_freq = device ? device_inv_freq() : freqs_.inv_freq.data();
  p.scale = freqs_.scale;
  p.inverse = inverse;
  return p;
}

void BenchRope::rotate_back_reference_grads(HostReferences& refs, bool naive) const {
  const PositionMap all = PositionMap::contiguous(0, refs.dq.view.seqlen());
  rope_apply_host(params(refs.dq.view, refs.dk.view, all, false, true));
  if (naive) rope_apply_host(params(refs.naive_dq.view, refs.naive_dk.view, all, false, true));
}

void json_rope_keys(JsonObject& out, bool rope, const BenchRope& r) {
  out.set("rope", rope);
  if (rope) out.set("rotary_dim", r.rotary_dim()).set("style", r.style_name());
}

double RopeTimes::time_alone(cudaStream_t stream, const std::function<void()>& fn) {
  constexpr int kRopeWarmup = 3, kRopeIters = 15;
  return median_stream_ms(stream, kRopeWarmup, kRopeIters, fn);
}

double RopeTimes::ms(int64_t seq) const {
  const auto it = ms_.find(seq);
  return it == ms_.end() ? 0.0 : it->second;
}

std::string RopeTimes::header() {
  char buf[32];
  std::snprintf(buf, sizeof(buf), " %8s %6s", "rope(ms)", "rope%");
  return buf;
}

std::string RopeTimes::cells(int64_t seq, double time_ms) const {
  const double r = ms(seq);
  char buf[48];
  std::snprintf(buf, sizeof(buf), " %8.4f %6.2f", r, time_ms > 0 ? 100.0 * r / time_ms : 0.0);
  return buf;
}

void RopeTimes::json_row(JsonObject& row, int64_t seq, double time_ms, bool rope, const BenchRope& r,
                         bool on_gpu) const {
  json_rope_keys(row, rope, r);
  if (!rope) return;
  const double t = ms(seq);
  if (on_gpu && t > 0 && time_ms > 0) {
    row.set("rope_ms", t).set("rope_share_pct", 100.0 * t / time_ms);
  } else {
    row.set_null("rope_ms").set_null("rope_share_pct");
  }
}

}  // namespace bench
}  // namespace distattn
