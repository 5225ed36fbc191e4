// The distattn_bench harness: options, rank/GPU setup, the sweep, timing, MPI aggregation, the
// nccl-tests style table, the correctness footer and the JSON report. Ops plug in via bench_op.h.
#pragma once

#include <cuda_runtime_api.h>

#include <functional>

#include "distattn/launch/mpi_session.h"

namespace distattn {
namespace bench {

// Runs the benchmark described by argv on this rank. Returns the process exit code: 0 when every checked
// value was within tolerance (or nothing was checked), 1 when any was not. Throws distattn::Error on bad
// options or a failing call.
int run_bench(launch::MpiSession& mpi, int argc, const char* const argv[]);

// The maximum of x over the job's ranks (MPI_COMM_WORLD; every rank must call it). Ops report per-rank times and
// memory as the slowest / largest rank's.
double max_over_ranks(double x);

// The GPU timing every op shares: `warmup` calls of fn() (GPU work on `stream`; synchronised after each with
// sync_each), then with warmup_ms > 0 more calls until that many ms of wall time have passed on every rank
// (--warmup-ms), then the median of `iters` CUDA-event timings (stream_timer.h's median_stream_ms), ms.
// Why the time-based warm-up: under load an H200 holds its boost clock only until its power cap applies (~60-100 ms),
// then runs ~8% slower (bench/results/2026-11-23_h200_s11_clocks); a short run would time a mix of both. The ranks
// agree on its batch size (from the slowest rank's first call) and stop together (MPI_MIN of "done"), so that the
// collectives inside a multi-rank fn pair up: with warmup_ms > 0 every rank must call it, with the same values.
double warm_median_ms(const std::function<void()>& fn, cudaStream_t stream, int warmup, int warmup_ms, int iters,
                      bool sync_each);

}  // namespace bench
}  // namespace distattn
