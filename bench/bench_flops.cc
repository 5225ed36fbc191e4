#include "bench_flops.h"

#include <algorithm>

#include "distattn/core/error.h"

namespace distattn {
namespace bench {

Pass parse_pass(const std::string& text, const std::string& option) {
  if (text == "fwd") return Pass::kForward;
  if (text == "bwd") return Pass::kBackward;
  if (text == "fwdbwd" || text == "fwd+bwd") return Pass::kForwardBackward;
  DISTATTN_THROW(option, "unknown pass '", text, "' (expected fwd, bwd or fwdbwd)");
}

const char* pass_name(Pass pass) {
  switch (pass) {
    case Pass::kForward:
      return "fwd";
    case Pass::kBackward:
      return "bwd";
    case Pass::kForwardBackward:
      return "fwdbwd";
  }
  return "?";
}

double pass_factor(Pass pass) {
  switch (pass) {
    case Pass::kForward:
      return 1.0;
    case Pass::kBackward:
      return 2.5;
    case Pass::kForwardBackward:
      return 3.5;
  }
  return 0.0;
}

namespace {
// sum_{d=0}^{x} (S - d) for x >= 0; 0 for x < 0.   (x + 1) * S - x (x + 1) / 2
int64_t head_sum(int64_t S, int64_t x) {
  if (x < 0) return 0;
  return (x + 1) * S - x * (x + 1) / 2;
}
}  // namespace

int64_t band_pairs(int64_t S, int64_t lo, int64_t hi) {
  DISTATTN_CHECK_ARG(S >= 0, "S", "must be >= 0, got ", S);
  if (S == 0) return 0;
  const int64_t a = std::max(lo, -(S - 1));
  const int64_t b = std::min(hi, S - 1);
  if (a > b) return 0;
  // sum_{d=a}^{b} (S - |d|), split at d = 0 (the diagonal -d has as many pairs as d).
  if (a >= 0) return head_sum(S, b) - head_sum(S, a - 1);
  if (b <= 0) return head_sum(S, -a) - head_sum(S, -b - 1);
  return head_sum(S, b) + head_sum(S, -a) - S;  // d = 0 counted in both halves
}

int64_t visible_pairs(int64_t S, bool causal, int64_t window) {
  DISTATTN_CHECK_ARG(window >= 0, "window", "must be >= 0, got ", window);
  constexpr int64_t kInf = int64_t{1} << 40;
  const int64_t lo = causal ? 0 : (window > 0 ? -(window - 1) : -kInf);
  const int64_t hi = window > 0 ? window - 1 : kInf;
  return band_pairs(S, lo, hi);
}

double attention_flops(int64_t B, int64_t S, int64_t H, int64_t D, bool causal, int64_t window, Pass pass) {
  const double per_pair = 4.0 * static_cast<double>(B) * static_cast<double>(H) * static_cast<double>(D);
  double pairs;
  if (window > 0) {
    pairs = static_cast<double>(visible_pairs(S, causal, window));
  } else {
    pairs = static_cast<double>(S) * static_cast<double>(S) * (causal ? 0.5 : 1.0);
  }
  return per_pair * pairs * pass_factor(pass);
}

double ring_flops_per_gpu(int64_t B, int64_t S, int64_t H, int64_t D, bool causal, int64_t window, Pass pass,
                          int ranks) {
  DISTATTN_CHECK_ARG(ranks >= 1, "ranks", "must be >= 1, got ", ranks);
  return attention_flops(B, S, H, D, causal, window, pass) / static_cast<double>(ranks);
}

double ring_kv_shard_bytes(int64_t B, int64_t S, int64_t Hkv, int64_t D, int64_t elem_size, int ranks) {
  DISTATTN_CHECK_ARG(ranks >= 1, "ranks", "must be >= 1, got ", ranks);
  return 2.0 * static_cast<double>(B) * (static_cast<double>(S) / ranks) * static_cast<double>(Hkv) *
         static_cast<double>(D) * static_cast<double>(elem_size);
}

double allgather_busbw_gbps(double shard_bytes, int ranks, double time_ms) {
  DISTATTN_CHECK_ARG(ranks >= 1, "ranks", "must be >= 1, got ", ranks);
  DISTATTN_CHECK_ARG(time_ms > 0, "time_ms", "must be > 0, got ", time_ms);
  const double size = static_cast<double>(ranks) * shard_bytes;  // the gathered buffer
  const double algbw = size / (time_ms * 1e-3) / 1e9;
  return algbw * static_cast<double>(ranks - 1) / static_cast<double>(ranks);
}

double rope_bytes(int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, int64_t elem_size) {
  return 2.0 * static_cast<double>(B) * static_cast<double>(S) * static_cast<double>(Hq + Hkv) *
         static_cast<double>(D) * static_cast<double>(elem_size);
}

std::string mask_label(bool causal, int64_t window) {
  if (window > 0) return (causal ? "c-win" : "win") + std::to_string(window);
  return causal ? "causal" : "none";
}

}  // namespace bench
}  // namespace distattn
