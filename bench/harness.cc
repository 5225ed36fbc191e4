#include "harness.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "bench_op.h"
#include "bench_options.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/check_libs.h"  // after <mpi.h>: DISTATTN_MPI_CHECK
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "distattn/launch/device.h"
#include "distattn/launch/sizes.h"
#include "json.h"
#include "stream_timer.h"

#ifndef DISTATTN_GIT_COMMIT_CONFIGURED
#define DISTATTN_GIT_COMMIT_CONFIGURED "unknown"
#endif

namespace distattn {
namespace bench {
namespace {

std::string utc_now_iso() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// A kernel switch as the engine reads it (DISTATTN_FORWARD_KERNEL: sparse/src/flash_fwd_api.cu,
// DISTATTN_BACKWARD_KERNEL: flash_bwd_api.cu): "auto" when unset or empty.
std::string kernel_choice(const char* variable) {
  const char* v = std::getenv(variable);
  return (v == nullptr || *v == '\0') ? std::string("auto") : std::string(v);
}
std::string forward_kernel_choice() { return kernel_choice("DISTATTN_FORWARD_KERNEL"); }
std::string backward_kernel_choice() { return kernel_choice("DISTATTN_BACKWARD_KERNEL"); }

std::string git_commit() {
  const char* env = std::getenv("DISTATTN_GIT_COMMIT");
  if (env != nullptr && *env != '\0') return env;
  return DISTATTN_GIT_COMMIT_CONFIGURED;
}

const OpEntry& find_op(const std::string& name) {
  std::string known;
  for (const OpEntry& e : op_table()) {
    if (name == e.name) return e;
    known += (known.empty() ? "" : ", ") + std::string(e.name);
  }
  DISTATTN_THROW("--op/-o", "unknown operation '", name, "' (known: ", known, ")");
}

// Times op.run() (warm_median_ms on the GPU; host engine: -w calls, then the median of `iters` by a steady clock).
double time_op(BenchOp& op, const RunContext& ctx, const BenchOptions& opt) {
  const auto run = [&op] { op.run(); };
  const launch::CommonOptions& c = opt.common;
  return ctx.on_gpu() ? warm_median_ms(run, ctx.stream, c.warmup, opt.warmup_ms, c.iters, c.sync_each_iter)
                      : median_host_ms(c.warmup, c.iters, run);
}

void print0(int rank, const std::string& line) {
  if (rank != 0) return;
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

}  // namespace

int run_bench(launch::MpiSession& mpi, int argc, const char* const argv[]) {
  const int rank = mpi.rank();

  // One mode for the whole job: the GPU path only when every rank has a GPU.
  int have_gpu_local = launch::cuda_device_count() > 0 ? 1 : 0, have_gpu = 0;
  DISTATTN_MPI_CHECK(MPI_Allreduce(&have_gpu_local, &have_gpu, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));

  const BenchOptions opt = parse_bench_options(argc, argv, have_gpu != 0);
  if (opt.help) {
    if (rank == 0) {
      std::ostringstream os;
      os << launch::usage("distattn_bench", "[options]   (under mpirun: one rank per GPU)",
                          bench_options_description());
      os << "\nOperations (-o):\n";
      for (const OpEntry& e : op_table()) os << "  " << e.name << ": " << e.description << "\n";
      os << "\nWithout a GPU the host engine runs (fp32; default sweep " << kHostDefaultMinSeq << ".."
         << kHostDefaultMaxSeq << ", -n " << kHostDefaultIters << ", -w " << kHostDefaultWarmup << ").\n";
      std::fputs(os.str().c_str(), stdout);
      std::fflush(stdout);
    }
    return 0;
  }
  const OpEntry& entry = find_op(opt.op);

  RunContext ctx;
  ctx.options = &opt;
  ctx.rank = rank;
  ctx.device = have_gpu ? launch::select_device(mpi.local_rank(), opt.common.strict_devices) : -1;
  cudaStream_t stream = nullptr;
  if (ctx.on_gpu()) DISTATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  ctx.stream = stream;
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() {
      if (s) cudaStreamDestroy(s);
    }
  } stream_guard{stream};
  // DISTATTN_BENCH_PAD_MB=N (experiments; default 0): N MiB of device memory taken before anything else and held to
  // the end, so that every buffer of the run lands at other addresses. Forward-only timings differ by 5-8% between
  // processes of the same command (bench/results/2026-11-23_h200_s10_positional); this told placement from the rest.
  // (Placement it was not: the power cap is, bench/results/2026-11-23_h200_s11_clocks, hence --warmup-ms.)
  struct PadGuard {
    void* p = nullptr;
    ~PadGuard() {
      if (p) cudaFree(p);
    }
  } pad_guard;
  const int64_t pad_mb = ctx.on_gpu() ? env_int("DISTATTN_BENCH_PAD_MB", 0, int64_t{1} << 20, 0) : 0;
  if (pad_mb > 0) DISTATTN_CUDA_CHECK(cudaMalloc(&pad_guard.p, static_cast<size_t>(pad_mb) << 20));

  // --- header: the command, then one line per rank in rank order -------------------------------------
  const std::string device_name = launch::device_name(ctx.device);
  print0(rank, "# distattn_bench: " + launch::command_line(argc, argv));
  print0(rank, "# git " + git_commit() + ", " + utc_now_iso() + ", " + std::to_string(mpi.world_size()) + " rank(s)" +
                   (ctx.on_gpu() ? ", forward kernel " + forward_kernel_choice() + ", backward kernel " +
                                       backward_kernel_choice()
                                 : std::string()));
  if (!ctx.on_gpu()) print0(rank, "# no CUDA device: running the host engine (fp32) on small sizes");
  if (pad_guard.p != nullptr)
    print0(rank, "# DISTATTN_BENCH_PAD_MB: " + std::to_string(pad_mb) +
                     " MiB of device memory held before the run's buffers");
  {
    constexpr int kLine = 256;
    char line[kLine] = {0};
    std::snprintf(line, kLine, "# rank %d pid %d host %s device %d [%s]", rank, static_cast<int>(getpid()),
                  mpi.hostname().c_str(), ctx.device, ctx.on_gpu() ? device_name.c_str() : "host engine");
    std::vector<char> all(rank == 0 ? static_cast<size_t>(kLine) * mpi.world_size() : 1);
    DISTATTN_MPI_CHECK(MPI_Gather(line, kLine, MPI_CHAR, all.data(), kLine, MPI_CHAR, 0, MPI_COMM_WORLD));
    for (int r = 0; rank == 0 && r < mpi.world_size(); ++r) {
      std::string s(&all[static_cast<size_t>(r) * kLine], kLine);
      print0(rank, s.c_str());
    }
  }

  std::unique_ptr<BenchOp> op = entry.make(ctx);
  for (const std::string& line : op->describe()) print0(rank, "# " + line);
  {
    std::ostringstream os;
    os << "# sweep " << launch::format_size(opt.sizes.front()) << ".." << launch::format_size(opt.sizes.back());
    if (opt.common.step_factor > 1)
      os << " x" << opt.common.step_factor;
    else
      os << " +" << opt.common.step_increment;
    os << ", iters " << opt.common.iters << " (median; max over ranks), warm-up " << opt.common.warmup
       << (opt.warmup_ms > 0 && ctx.on_gpu() ? " + " + std::to_string(opt.warmup_ms) + " ms" : std::string())
       << ", check " << opt.common.check << ", seed " << opt.seed
       << (opt.common.sync_each_iter ? ", stream synchronised after every iteration" : "");
    print0(rank, os.str());
  }
  const bool check_on = opt.common.check == 1;
  const char* rate_name = op->work_is_bytes() ? "GB/s" : "TFLOPs";
  {
    char cells[96];
    std::snprintf(cells, sizeof(cells), " %10s %9s", "time(ms)", rate_name);
    std::string header = "#" + op->shape_header().substr(1) + cells + op->extra_header();
    if (check_on) {
      std::snprintf(cells, sizeof(cells), " %10s %7s", "max_err", "#wrong");
      header += cells;
    }
    print0(rank, "#");
    print0(rank, header);
  }

  // --- the sweep ---------------------------------------------------------------------------------------
  std::vector<JsonObject> rows;
  int64_t total_wrong = 0;
  double rate_sum = 0;
  for (int64_t seq : opt.sizes) {
    op->setup(seq);
    double t_local = time_op(*op, ctx, opt), t_max = 0, t_min = 0;
    DISTATTN_MPI_CHECK(MPI_Allreduce(&t_local, &t_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    DISTATTN_MPI_CHECK(MPI_Allreduce(&t_local, &t_min, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD));

    CheckResult local;
    if (check_on && op->check_affordable(seq)) local = op->check();
    op->teardown();

    // Aggregate the check: every rank checked the same sizes (same options), so `done` agrees.
    int done_local = local.done ? 1 : 0, done = 0;
    DISTATTN_MPI_CHECK(MPI_Allreduce(&done_local, &done, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
    double err_local[2] = {std::isfinite(local.max_err) ? local.max_err : std::numeric_limits<double>::max(),
                           local.naive_err},
           err[2] = {0, 0};
    DISTATTN_MPI_CHECK(MPI_Allreduce(err_local, err, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    int64_t cnt_local[2] = {local.wrong, local.checked}, cnt[2] = {0, 0};
    DISTATTN_MPI_CHECK(MPI_Allreduce(cnt_local, cnt, 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
    const double max_err = err[0] == std::numeric_limits<double>::max() ? HUGE_VAL : err[0];
    if (done) total_wrong += cnt[0];

    const double work = op->work(seq);
    const double rate = work / (t_max * 1e-3) / (op->work_is_bytes() ? 1e9 : 1e12);
    rate_sum += rate;

    char cells[128];
    // Small rates (the host engine) keep their digits; GPU rates print like nccl-tests' bandwidths.
    std::snprintf(cells, sizeof(cells), rate < 10 ? " %10.4f %9.4f" : " %10.4f %9.2f", t_max, rate);
    std::string line = " " + op->shape_cells(seq).substr(1) + cells + op->extra_cells(seq, t_max);
    if (check_on) {
      if (done) {
        std::snprintf(cells, sizeof(cells), " %10.2e %7lld", max_err, static_cast<long long>(cnt[0]));
      } else {
        std::snprintf(cells, sizeof(cells), " %10s %7s", "skip", "skip");
      }
      line += cells;
    }
    print0(rank, line);

    JsonObject row;
    row.set("seq", seq).set("time_ms", t_max).set("time_ms_min_rank", t_min);
    if (op->work_is_bytes()) {
      row.set_null("tflops").set("gbps", rate);
    } else {
      row.set("tflops", rate).set_null("gbps");
    }
    if (done) {
      row.set("max_err", max_err).set("wrong", cnt[0]).set("checked", cnt[1]).set("naive_err", err[1]);
      row.set("tolerance", local.tolerance).set("check_detail_rank0", local.detail);
    } else {
      row.set_null("max_err").set_null("wrong");
    }
    op->json_row(row, seq, t_max);
    rows.push_back(row);
  }

  // --- footer -------------------------------------------------------------------------------------------
  const bool ok = total_wrong == 0;
  if (check_on) {
    print0(rank, "# Out of bounds values : " + std::to_string(total_wrong) + (ok ? " OK" : " FAILED"));
  } else {
    print0(rank, "# Out of bounds values : N/A (-c 0)");
  }
  {
    char buf[96];
    std::snprintf(buf, sizeof(buf), "# Avg %s per GPU : %.3f", rate_name, rate_sum / static_cast<double>(rows.size()));
    print0(rank, buf);
  }

  if (rank == 0 && !opt.common.json_path.empty()) {
    JsonObject options;
    const auto& c = opt.common;
    options.set("batch", c.batch).set("heads", c.heads).set("kv_heads", c.resolved_kv_heads());
    options.set("head_dim", c.head_dim).set("dtype", ctx.on_gpu() ? dtype_name(c.dtype) : "fp32");
    options.set("causal", c.causal).set("window", c.window).set("alibi", c.alibi);
    options.set("iters", c.iters)
        .set("warmup", c.warmup)
        .set("warmup_ms", opt.warmup_ms)
        .set("check", c.check)
        .set("sync_each_iter", c.sync_each_iter);
    options.set("check_max_seq", opt.check_max_seq).set("seed", static_cast<int64_t>(opt.seed));
    op->json_options(options);
    JsonObject report;
    report.set("peer", "distattn").set("device", ctx.on_gpu() ? device_name : std::string("host engine (no GPU)"));
    report.set("date", utc_now_iso()).set("git_commit", git_commit());
    // Which forward kernel the engine was allowed to use: rows of a DISTATTN_FORWARD_KERNEL=mma run are the
    // older kernel's and must not be pooled with the default ones (bench/study_lib.py keys on this).
    if (ctx.on_gpu())
      report.set("forward_kernel", forward_kernel_choice()).set("backward_kernel", backward_kernel_choice());
    report.set("command_line", launch::command_line(argc, argv)).set("op", opt.op);
    report.set("ranks", mpi.world_size()).set("host_engine", !ctx.on_gpu());
    report.set("options", options);
    report.set_array("rows", rows);
    report.set("wrong_total", total_wrong).set("status", check_on ? (ok ? "OK" : "FAILED") : "unchecked");
    std::ofstream f(opt.common.json_path);
    DISTATTN_CHECK_ARG(f.good(), "--json/-J", "cannot open '", opt.common.json_path, "' for writing");
    f << report.str() << "\n";
    f.close();
    DISTATTN_CHECK_ARG(!f.fail(), "--json/-J", "writing '", opt.common.json_path, "' failed");
    print0(rank, "# JSON written to " + opt.common.json_path);
  }
  return ok ? 0 : 1;
}

double max_over_ranks(double x) {
  double r = 0;
  DISTATTN_MPI_CHECK(MPI_Allreduce(&x, &r, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  return r;
}

namespace {

// --warmup-ms: calls fn() until `ms` of wall time have passed on every rank (warm_median_ms, harness.h).
void warm_up_for_ms(const std::function<void()>& fn, cudaStream_t stream, int ms) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const auto elapsed_ms = [&t0] { return std::chrono::duration<double, std::milli>(clock::now() - t0).count(); };
  fn();
  DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  // Batches of ~10 ms between the checks: the host waits for the stream only that often.
  const double first_ms = std::max(max_over_ranks(elapsed_ms()), 1e-3);
  const int batch = static_cast<int>(std::min(10000.0, std::max(1.0, std::ceil(10.0 / first_ms))));
  while (true) {
    const int done_local = elapsed_ms() >= ms ? 1 : 0;
    int done = 0;
    DISTATTN_MPI_CHECK(MPI_Allreduce(&done_local, &done, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
    if (done) return;
    for (int i = 0; i < batch; ++i) fn();
    DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
}

}  // namespace

double warm_median_ms(const std::function<void()>& fn, cudaStream_t stream, int warmup, int warmup_ms, int iters,
                      bool sync_each) {
  if (warmup_ms <= 0) return median_stream_ms(stream, warmup, iters, fn, sync_each);
  for (int i = 0; i < warmup; ++i) {
    fn();
    if (sync_each) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  warm_up_for_ms(fn, stream, warmup_ms);
  return median_stream_ms(stream, 0, iters, fn, sync_each);
}

}  // namespace bench
}  // namespace distattn
