// The interface every benchmark operation implements, and the op table.
//
// The harness (harness.h) owns the sweep, timing, MPI aggregation and output; an op owns its buffers
// and knows its work formula and how to check itself. Per size the harness calls:
//   setup(S) -> run() x (warm-up + iters, timed one by one) -> check() when -c 1 -> teardown()
// On the GPU, run() only ENQUEUES on ctx.stream (the harness brackets it with CUDA events); with the
// host engine (no GPU) run() executes synchronously and the harness times it with a steady clock.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench_options.h"
#include "json.h"

namespace distattn {
namespace bench {

struct RunContext {
  const BenchOptions* options = nullptr;
  int rank = 0;
  int device = -1;                // CUDA device of this rank; -1: host engine
  cudaStream_t stream = nullptr;  // the stream ops enqueue on (GPU only)
  bool on_gpu() const { return device >= 0; }
};

// One check at one size. `done` false means the size was not checked (too big for the host engine):
// the table prints "skip".
struct CheckResult {
  bool done = false;
  double max_err = 0;    // max |got - ref| over every checked element of every output
  double naive_err = 0;  // the same for the naive same-precision host run (the 2x rule's baseline), max over outputs
  double tolerance = 0;  // the per-element bound of the output with the largest max_err / tolerance ratio
  int64_t wrong = 0;     // elements outside their output's tolerance (or not finite)
  int64_t checked = 0;   // elements compared
  std::string detail;    // per-output errors for the JSON, e.g. "o 1.2e-3/4.0e-3 lse ..."
};

class BenchOp {
 public:
  virtual ~BenchOp() = default;

  // Lines (without "# ") describing the configuration, the work formula and the check rule.
  virtual std::vector<std::string> describe() const = 0;
  // "TFLOPs" (work in FLOPs) or "GB/s" (work in bytes).
  virtual bool work_is_bytes() const = 0;
  virtual double work(int64_t seq) const = 0;  // FLOPs or bytes of one run() at sequence length `seq`

  // Shape columns of the table: header cells and one row's cells (fixed widths chosen by the op).
  virtual std::string shape_header() const = 0;
  virtual std::string shape_cells(int64_t seq) const = 0;
  // Optional extra columns after the rate (e.g. rope's "%copy").
  virtual std::string extra_header() const { return ""; }
  virtual std::string extra_cells(int64_t /*seq*/, double /*time_ms*/) const { return ""; }
  // Op-specific fields of the JSON report: once (options) and per row.
  virtual void json_options(JsonObject& /*out*/) const {}
  virtual void json_row(JsonObject& /*row*/, int64_t /*seq*/, double /*time_ms*/) const {}

  virtual void setup(int64_t seq) = 0;  // allocate and fill random inputs for size `seq`
  virtual void run() = 0;               // one iteration (enqueue on the GPU; execute on the host)
  virtual bool check_affordable(int64_t seq) const = 0;
  virtual CheckResult check() = 0;  // fresh inputs, poisoned outputs, one run, compare with fp64
  virtual void teardown() = 0;      // free what setup() allocated
};

struct OpEntry {
  const char* name;
  const char* description;
  std::function<std::unique_ptr<BenchOp>(const RunContext&)> make;
};

// The table of operations (op_table.cc).
const std::vector<OpEntry>& op_table();

// Constructors living in ops/*.cc.
std::unique_ptr<BenchOp> make_dense_op(const RunContext& ctx);
std::unique_ptr<BenchOp> make_rope_op(const RunContext& ctx);
std::unique_ptr<BenchOp> make_ring_op(const RunContext& ctx);
std::unique_ptr<BenchOp> make_dilated_op(const RunContext& ctx);
std::unique_ptr<BenchOp> make_sparse_op(const RunContext& ctx);
std::unique_ptr<BenchOp> make_mha_op(const RunContext& ctx);

}  // namespace bench
}  // namespace distattn
