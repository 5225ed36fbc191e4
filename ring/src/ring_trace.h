// Diagnostic timeline of one ring call (DISTATTN_RING_TRACE=1; "0" or unset: off): CUDA events recorded at labelled
// points on the compute and communication streams, printed to stderr (one line per point, ms after the first point)
// when the call ends. Off by default and then free (no events are created). Tracing synchronises the host with the last
// point of every call, so traced timings are for reading the overlap of exchange and compute, not for benchmarks.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/core/env.h"

namespace distattn {
namespace ring {

class RingTrace {
 public:
  RingTrace(const char* call, int rank) : call_(call), rank_(rank) {
    // "1": on; "0" or unset: off; anything else throws naming the variable. Read at every call (cheap next to one).
    on_ = env_choice("DISTATTN_RING_TRACE", {"0", "1"}, 0) == 1;
  }
  ~RingTrace() {
    for (auto& p : points_) (void)cudaEventDestroy(p.second);
  }
  RingTrace(const RingTrace&) = delete;
  RingTrace& operator=(const RingTrace&) = delete;

  bool on() const { return on_; }
  // Records a point on `stream` (the event completes when the stream reaches it).
  void mark(const std::string& label, cudaStream_t stream) {
    if (!on_) return;
    cudaEvent_t e = nullptr;
    DISTATTN_CUDA_CHECK(cudaEventCreate(&e));
    DISTATTN_CUDA_CHECK(cudaEventRecord(e, stream));
    points_.emplace_back(label, e);
  }
  // Waits for every point and prints them (ms after the first), one line each, prefixed with the rank.
  void dump() {
    if (!on_ || points_.empty()) return;
    for (auto& p : points_) DISTATTN_CUDA_CHECK(cudaEventSynchronize(p.second));
    for (auto& p : points_) {
      float ms = 0.f;
      DISTATTN_CUDA_CHECK(cudaEventElapsedTime(&ms, points_.front().second, p.second));
      std::fprintf(stderr, "[ring trace] rank %d %s %-28s %9.3f ms\n", rank_, call_, p.first.c_str(), ms);
    }
    std::fflush(stderr);
  }

 private:
  const char* call_;
  int rank_;
  bool on_ = false;
  std::vector<std::pair<std::string, cudaEvent_t>> points_;
};

}  // namespace ring
}  // namespace distattn
