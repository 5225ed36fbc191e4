// The medians every bench op reports: GPU work timed with CUDA events on one stream, host work with a steady clock.
// One copy of the loop that the harness, the ring op's compute-only / exchange-only timings and the RoPE kernel
// timings of dense and ring all run.
#pragma once

#include <cuda_runtime_api.h>

#include <functional>
#include <vector>

namespace distattn {
namespace bench {

// Median of v (the upper median for an even count); v must not be empty.
double median_of(std::vector<double> v);

// Runs fn `warmup` times, then `iters` (>= 1) times with a CUDA event pair recorded on `stream` around each run (the
// host runs ahead: what is timed is the GPU work fn enqueues on `stream`), waits for the stream and returns the
// median time per run in ms. Throws distattn::Error on a CUDA failure (events are released either way).
// sync_each: the stream is synchronised after every run (--sync-each-iter); the events still time each run's GPU
// work, which then includes whatever a call redoes after a synchronisation (and any gap while the host enqueues).
double median_stream_ms(cudaStream_t stream, int warmup, int iters, const std::function<void()>& fn,
                        bool sync_each = false);

// Runs fn `warmup` times, then `iters` (>= 1) times timed with a steady clock; the median per run in ms (host engine).
double median_host_ms(int warmup, int iters, const std::function<void()>& fn);

}  // namespace bench
}  // namespace distattn
