// Communicator base: timeouts, the control plane, agreement checks, bounded MPI waits.
#include "distattn/comm/communicator.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>

#include "distattn/core/check_libs.h"  // after <mpi.h>: DISTATTN_MPI_CHECK
#include "distattn/core/error.h"

namespace distattn {

double default_comm_timeout_s() {
  const char* text = std::getenv("DISTATTN_COMM_TIMEOUT_S");
  if (text == nullptr || *text == '\0') return 300.0;
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  DISTATTN_CHECK_ARG(end != text && *end == '\0' && std::isfinite(v) && v > 0, "DISTATTN_COMM_TIMEOUT_S", "is '", text,
                     "', expected a positive number of seconds");
  return v;
}

uint64_t fnv1a64(const void* data, size_t bytes, uint64_t seed) {
  uint64_t h = seed;
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

ConfigFingerprint& ConfigFingerprint::add(const std::string& name, int64_t value) {
  DISTATTN_CHECK(static_cast<int>(fields_.size()) < kMaxFields, "ConfigFingerprint holds at most ", kMaxFields,
                 " fields (adding '", name, "')");
  fields_.emplace_back(name, value);
  return *this;
}

ConfigFingerprint& ConfigFingerprint::add_float(const std::string& name, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return add(name, static_cast<int64_t>(bits));
}

ConfigFingerprint& ConfigFingerprint::add_hash(const std::string& name, const void* data, size_t bytes) {
  return add(name, static_cast<int64_t>(fnv1a64(data, bytes)));
}

uint64_t ConfigFingerprint::names_hash() const {
  uint64_t h = fnv1a64(nullptr, 0);
  for (const auto& f : fields_) h = fnv1a64(f.first.data(), f.first.size() + 1, h);  // + the terminating 0
  return h;
}

// --- Communicator -----------------------------------------------------------------------------

namespace {

// Polls until done() or the deadline. Spins briefly, then sleeps between polls: ranks oversubscribed
// on few cores must leave the CPU to the peer they wait for.
template <typename Done>
bool poll_until(double timeout_s, Done done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (int spin = 0;; ++spin) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return done();
    if (spin > 64) std::this_thread::sleep_for(std::chrono::microseconds(spin > 1024 ? 200 : 20));
  }
}

}  // namespace

Communicator::Communicator(MPI_Comm comm, double timeout_s) {
  timeout_s_ = timeout_s > 0 ? timeout_s : default_comm_timeout_s();
  DISTATTN_CHECK_ARG(comm != MPI_COMM_NULL, "comm", "is MPI_COMM_NULL");
  int initialized = 0;
  DISTATTN_MPI_CHECK(MPI_Initialized(&initialized));
  DISTATTN_CHECK_ARG(initialized, "comm", "MPI is not initialised (call MPI_Init first)");
  DISTATTN_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_));
  set_error_rank(world_rank_);
  DISTATTN_MPI_CHECK(MPI_Comm_rank(comm, &rank_));
  DISTATTN_MPI_CHECK(MPI_Comm_size(comm, &size_));
  // The control plane: a private duplicate, created without an unbounded wait.
  MPI_Request req = MPI_REQUEST_NULL;
  DISTATTN_MPI_CHECK(MPI_Comm_idup(comm, &control_, &req));
  wait_mpi(&req, 1, "communicator construction (MPI_Comm_idup)", -1, "every rank of the communicator", false);
  DISTATTN_MPI_CHECK(MPI_Comm_set_errhandler(control_, MPI_ERRORS_RETURN));
}

Communicator::~Communicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && control_ != MPI_COMM_NULL) MPI_Comm_free(&control_);
}

void Communicator::set_timeout_s(double seconds) {
  DISTATTN_CHECK_ARG(std::isfinite(seconds) && seconds > 0, "timeout_s", "is ", seconds,
                     " (expected a positive number of seconds)");
  timeout_s_ = seconds;
}

void Communicator::require_healthy(const char* op, int64_t step) const {
  if (!broken_) return;
  DISTATTN_THROW("", "communicator (", backend(), ", rank ", rank_, " of ", size_,
                 ") is broken by an earlier failure (", broken_why_, "); refusing ", op, step >= 0 ? " step " : "",
                 step >= 0 ? std::to_string(step) : "");
}

// Default (MPI backend): no windows; exchanges keep their ordinary path.
int Communicator::register_window(void* base, size_t bytes, const char* op) {
  require_healthy(op, -1);
  DISTATTN_CHECK_ARG(base != nullptr, "base", op, ": null window");
  DISTATTN_CHECK_ARG(bytes > 0, "bytes", op, ": empty window");
  return -1;
}

void Communicator::deregister_window(int id) {
  DISTATTN_CHECK_ARG(id == -1, "id", "window ", id, " is not registered (this backend registers none)");
}

const char* Communicator::exchange_path(const void*, const void*, size_t) const { return backend(); }

std::string Communicator::mark_broken(const std::string& why) {
  broken_ = true;
  broken_why_ = why;
  return why;
}

void Communicator::wait_mpi(MPI_Request* reqs, int n, const char* op, int64_t step, const std::string& waiting_for,
                            bool cancellable) {
  int mpi_error = MPI_SUCCESS;
  const bool done = poll_until(timeout_s_, [&] {
    int flag = 0;
    mpi_error = MPI_Testall(n, reqs, &flag, MPI_STATUSES_IGNORE);
    return mpi_error != MPI_SUCCESS || flag != 0;
  });
  if (done && mpi_error == MPI_SUCCESS) return;
  std::string why;
  if (mpi_error != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING] = {0};
    int len = 0;
    MPI_Error_string(mpi_error, text, &len);
    why = detail::make_message(op, step >= 0 ? " step " : "", step >= 0 ? std::to_string(step) : "",
                               " failed in MPI: ", text);
  } else {
    why = detail::make_message(op, step >= 0 ? " step " : "", step >= 0 ? std::to_string(step) : "",
                               " timed out after ", timeout_s_, " s waiting for ", waiting_for,
                               " (set DISTATTN_COMM_TIMEOUT_S to change the limit)");
  }
  // Abandon the requests: receives are cancelled (their buffers are no longer written); sends and
  // collectives cannot be cancelled portably, so they are left to MPI. The communicator is broken from
  // here on and refuses further calls.
  for (int i = 0; i < n; ++i) {
    if (reqs[i] == MPI_REQUEST_NULL) continue;
    if (cancellable) {
      MPI_Cancel(&reqs[i]);
      MPI_Request_free(&reqs[i]);
    }
    reqs[i] = MPI_REQUEST_NULL;
  }
  DISTATTN_THROW("", mark_broken(why));
}

void Communicator::check_agreement(const ConfigFingerprint& mine, const char* what) {
  require_healthy(what, -1);
  // Fixed-size record per rank: [field count, names hash, values..., zero padding].
  constexpr int kRec = ConfigFingerprint::kMaxFields + 2;
  std::vector<int64_t> rec(kRec, 0), all(static_cast<size_t>(kRec) * size_, 0);
  rec[0] = mine.size();
  rec[1] = static_cast<int64_t>(mine.names_hash());
  for (int i = 0; i < mine.size(); ++i) rec[2 + i] = mine.field(i).second;
  MPI_Request req = MPI_REQUEST_NULL;
  DISTATTN_MPI_CHECK(MPI_Iallgather(rec.data(), kRec, MPI_INT64_T, all.data(), kRec, MPI_INT64_T, control_, &req));
  wait_mpi(&req, 1, detail::make_message(what, ": configuration agreement").c_str(), -1,
           "every rank to contribute its configuration", false);

  auto at = [&](int r, int i) { return all[static_cast<size_t>(r) * kRec + i]; };
  // Every rank runs the same deterministic comparison on the same data, so all throw (or none).
  for (int r = 0; r < size_; ++r) {
    if (at(r, 0) != at(0, 0) || at(r, 1) != at(0, 1)) {
      DISTATTN_THROW("config", what, ": ranks disagree on the configuration's fields (rank ", r, " has ", at(r, 0),
                     " fields, rank 0 has ", at(0, 0), ", or different names): different library versions?");
    }
  }
  std::string report, first_field;
  for (int i = 0; i < mine.size(); ++i) {
    // The value most ranks hold (ties: the lowest rank's) is the reference; the others disagree.
    std::map<int64_t, int> count;
    for (int r = 0; r < size_; ++r) ++count[at(r, 2 + i)];
    if (count.size() == 1) continue;
    int64_t majority = at(0, 2 + i);
    for (int r = 0; r < size_; ++r) {
      if (count[at(r, 2 + i)] > count[majority]) majority = at(r, 2 + i);
    }
    std::string ranks;
    for (int r = 0; r < size_; ++r) {
      if (at(r, 2 + i) == majority) continue;
      ranks += detail::make_message(ranks.empty() ? "" : ", ", "rank ", r, " has ", at(r, 2 + i));
    }
    if (first_field.empty()) first_field = mine.field(i).first;
    report += detail::make_message(report.empty() ? "" : "; ", "'", mine.field(i).first, "': ", ranks,
                                   " where the others have ", majority);
  }
  if (!report.empty()) DISTATTN_THROW(first_field, what, ": ranks disagree on the configuration: ", report);
}

void Communicator::agree_ok(bool ok, const std::string& argument, const std::string& message, const char* what) {
  require_healthy(what, -1);
  // Fixed-size record per rank: ok flag, argument (64 bytes), message (the rest), both truncated.
  constexpr int kRec = 512, kArg = 64;
  std::vector<char> rec(kRec, 0), all(static_cast<size_t>(kRec) * size_, 0);
  rec[0] = ok ? 1 : 0;
  std::strncpy(&rec[1], argument.c_str(), kArg - 2);
  std::strncpy(&rec[kArg], message.c_str(), kRec - kArg - 1);
  MPI_Request req = MPI_REQUEST_NULL;
  DISTATTN_MPI_CHECK(MPI_Iallgather(rec.data(), kRec, MPI_CHAR, all.data(), kRec, MPI_CHAR, control_, &req));
  wait_mpi(&req, 1, detail::make_message(what, ": input check agreement").c_str(), -1,
           "every rank to report its input check", false);
  // Group identical complaints ("ranks 0, 1, 2 rejected ...") so a config bad everywhere reads once.
  std::vector<std::pair<std::string, std::string>> groups;  // (ranks, "argument: message")
  std::string first_arg;
  for (int r = 0; r < size_; ++r) {
    const char* rr = &all[static_cast<size_t>(r) * kRec];
    if (rr[0] != 0) continue;
    const std::string arg(rr + 1), msg(rr + kArg);
    if (first_arg.empty()) first_arg = arg;
    const std::string text = detail::make_message(arg.empty() ? "" : "argument '", arg, arg.empty() ? "" : "': ", msg);
    bool found = false;
    for (auto& g : groups) {
      if (g.second == text) {
        g.first += ", " + std::to_string(r);
        found = true;
      }
    }
    if (!found) groups.emplace_back(std::to_string(r), text);
  }
  std::string report;
  for (const auto& g : groups) {
    const bool several = g.first.find(',') != std::string::npos;
    report +=
        detail::make_message(report.empty() ? "" : "; ", several ? "ranks " : "rank ", g.first, " rejected ", g.second);
  }
  if (!report.empty()) DISTATTN_THROW(first_arg, what, ": ", report);
}

}  // namespace distattn
