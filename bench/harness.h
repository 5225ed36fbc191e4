// The distattn_bench harness: options, rank/GPU setup, the sweep, timing, MPI aggregation, the
// nccl-tests style table, the correctness footer and the JSON report. Ops plug in via bench_op.h.
#pragma once

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

}  // namespace bench
}  // namespace distattn
