// The RoPE of the bench, written once for the rope op and for dense / ring --rope: the frequencies of --rotary-dim /
// --style (host, and on the GPU a device copy of inv_freq), the RopeParams of one in-place call, and the rope(ms) /
// rope% columns and JSON keys of the attention ops that time their RoPE kernels alone.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "bench_options.h"
#include "device_fill.h"
#include "distattn/core/position_map.h"
#include "distattn/positional/rope.h"
#include "host_reference.h"
#include "json.h"

namespace distattn {
namespace bench {

class BenchRope {
 public:
  BenchRope() = default;  // no RoPE (dense, ring without --rope)
  // Frequencies for head dim `head_dim` with --rotary-dim (0: all dims) and --style; `on_gpu`: inv_freq also copied to
  // the device. Throws distattn::Error as make_rope_frequencies does (odd or too large --rotary-dim).
  BenchRope(const BenchOptions& opt, int64_t head_dim, bool on_gpu);

  // RoPE in place on q [B, rows, Hq', D] and k [B, rows, Hkv', D] (any head counts: the checks' slices) whose rows
  // sit at the global positions `pos` (q and k alike); inverse: the backward (conjugate rotation), for gradients.
  // device: the device copy of inv_freq (rope_apply_cuda), else the host's (rope_apply_host).
  RopeParams params(const TensorView& q, const TensorView& k, const PositionMap& pos, bool device, bool inverse) const;

  // The check's references under --rope: their dq, dk are gradients w.r.t. the ROTATED q, k; rotates them back in
  // place on the host (positions 0..S-1) like the RoPE backward: the fp64 ones and, with `naive`, the naive run's
  // (input dtype).
  void rotate_back_reference_grads(HostReferences& refs, bool naive) const;

  int64_t rotary_dim() const { return rotary_dim_; }  // dims rotated (--rotary-dim, 0 resolved to D)
  RopeStyle style() const { return style_; }
  const char* style_name() const { return style_ == RopeStyle::kGptJ ? "gptj" : "neox"; }
  float scale() const { return freqs_.scale; }
  const float* device_inv_freq() const { return static_cast<const float*>(inv_freq_dev_.get()); }
  const float* host_inv_freq() const { return freqs_.inv_freq.data(); }

 private:
  RopeFrequencies freqs_;  // host frequencies (inv_freq [rotary_dim / 2], scale)
  int64_t rotary_dim_ = 0;
  RopeStyle style_ = RopeStyle::kNeoX;
  DeviceBuffer inv_freq_dev_;  // GPU: inv_freq [rotary_dim / 2] fp32
};

// JSON keys of an attention op's RoPE: "rope" (bool) always; with `rope` also rotary_dim and style.
void json_rope_keys(JsonObject& out, bool rope, const BenchRope& r);

// The RoPE kernels of one iteration of an attention op that run as launches of their own (dense, ring --rope, GPU),
// timed alone once per size, and the columns and JSON keys they feed: rope(ms) and rope% = rope(ms) / time(ms).
class RopeTimes {
 public:
  // Warm-up 3, then the median of 15 CUDA-event timings of fn() on `stream` (ms).
  static double time_alone(cudaStream_t stream, const std::function<void()>& fn);
  void set(int64_t seq, double ms) { ms_[seq] = ms; }
  double ms(int64_t seq) const;  // 0 when nothing was stored at that size

  static std::string header();                           // " rope(ms)  rope%"
  std::string cells(int64_t seq, double time_ms) const;  // " %8.4f %6.2f"
  // Row keys: json_rope_keys, then with `rope` rope_ms and rope_share_pct = 100 * rope_ms / time_ms, both null
  // unless `on_gpu` and both times are > 0.
  void json_row(JsonObject& row, int64_t seq, double time_ms, bool rope, const BenchRope& r, bool on_gpu) const;

 private:
  std::map<int64_t, double> ms_;  // seq -> ms
};

}  // namespace bench
}  // namespace distattn
