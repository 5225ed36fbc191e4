#include "stream_timer.h"

#include <algorithm>
#include <chrono>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"

namespace distattn {
namespace bench {
namespace {

// RAII for the per-run CUDA event pairs.
struct EventPairs {
  std::vector<cudaEvent_t> start, stop;
  explicit EventPairs(int n) : start(static_cast<size_t>(n), nullptr), stop(static_cast<size_t>(n), nullptr) {
    for (int i = 0; i < n; ++i) {
      DISTATTN_CUDA_CHECK(cudaEventCreate(&start[static_cast<size_t>(i)]));
      DISTATTN_CUDA_CHECK(cudaEventCreate(&stop[static_cast<size_t>(i)]));
    }
  }
  ~EventPairs() {
    for (cudaEvent_t e : start)
      if (e != nullptr) cudaEventDestroy(e);
    for (cudaEvent_t e : stop)
      if (e != nullptr) cudaEventDestroy(e);
  }
  EventPairs(const EventPairs&) = delete;
  EventPairs& operator=(const EventPairs&) = delete;
};

}  // namespace

double median_of(std::vector<double> v) {
  DISTATTN_CHECK_ARG(!v.empty(), "v", "is empty: no timings to take the median of");
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double median_stream_ms(cudaStream_t stream, int warmup, int iters, const std::function<void()>& fn, bool sync_each) {
  DISTATTN_CHECK_ARG(iters >= 1, "iters", "must be >= 1, got ", iters);
  for (int i = 0; i < warmup; ++i) {
    fn();
    if (sync_each) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  EventPairs ev(iters);
  for (size_t i = 0; i < ev.start.size(); ++i) {
    DISTATTN_CUDA_CHECK(cudaEventRecord(ev.start[i], stream));
    fn();
    DISTATTN_CUDA_CHECK(cudaEventRecord(ev.stop[i], stream));
    if (sync_each) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  DISTATTN_CUDA_CHECK_LAUNCH();
  std::vector<double> ms(ev.start.size());
  for (size_t i = 0; i < ms.size(); ++i) {
    float t = 0.f;
    DISTATTN_CUDA_CHECK(cudaEventElapsedTime(&t, ev.start[i], ev.stop[i]));
    ms[i] = t;
  }
  return median_of(ms);
}

double median_host_ms(int warmup, int iters, const std::function<void()>& fn) {
  DISTATTN_CHECK_ARG(iters >= 1, "iters", "must be >= 1, got ", iters);
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms(static_cast<size_t>(iters));
  for (double& m : ms) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    m = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  return median_of(ms);
}

}  // namespace bench
}  // namespace distattn
