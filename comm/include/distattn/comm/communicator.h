// Communicator: the one interface the distributed algorithms (ring/, dilated/) talk to.
//
// Two implementations:
//   MpiCommunicator  (mpi_communicator.h)   host memory; the host engine's ring runs for real on CPU ranks
//   NcclCommunicator (nccl_communicator.h)  device memory; NCCL bootstrapped over MPI, one GPU per rank
//
// Both keep a duplicate of the MPI communicator they were built from as their CONTROL PLANE: the
// agreement checks below run over it, so they never mix with the caller's own MPI traffic.
//
// Nothing waits forever. Every wait polls with a deadline (timeout_s(): default 300 s, or the
// environment variable DISTATTN_COMM_TIMEOUT_S); past it, or on a transport error, the communicator
// is marked broken (NCCL: ncclCommAbort) and a distattn::Error names this rank, the operation and
// the step. A broken communicator refuses every later call with an Error instead of hanging.
//
// Agreement: check_agreement() lets every rank see every other rank's configuration fingerprint
// (an all-gather bounded by the deadline); any disagreement throws on EVERY rank, naming the field
// and the disagreeing rank(s). agree_ok() does the same for "did my local validation pass?", so one
// rank's bad input becomes an Error everywhere before any exchange that could wait on it.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "distattn/core/dtype.h"
#include "distattn/core/error.h"
#include "distattn/core/tensor.h"

struct CUstream_st;  // cudaStream_t without pulling the CUDA headers in here

namespace distattn {

// Default timeout: DISTATTN_COMM_TIMEOUT_S if set (a positive number of seconds), else 300 s.
// A malformed value throws distattn::Error naming the variable.
double default_comm_timeout_s();

// A configuration fingerprint: named int64 fields, compared field by field across ranks.
// Floats are added by their bit pattern (add_float / add_double), arrays by a hash (add_hash).
class ConfigFingerprint {
 public:
  static constexpr int kMaxFields = 48;
  ConfigFingerprint& add(const std::string& name, int64_t value);
  ConfigFingerprint& add_float(const std::string& name, float value);
  ConfigFingerprint& add_hash(const std::string& name, const void* data, size_t bytes);  // FNV-1a 64

  int size() const { return static_cast<int>(fields_.size()); }
  const std::pair<std::string, int64_t>& field(int i) const { return fields_[static_cast<size_t>(i)]; }
  uint64_t names_hash() const;  // hash of the field names in order: ranks must have the same fields

 private:
  std::vector<std::pair<std::string, int64_t>> fields_;
};

uint64_t fnv1a64(const void* data, size_t bytes, uint64_t seed = 1469598103934665603ull);

// A posted exchange; pass it back to wait_exchange(). Move-only in spirit: wait exactly once.
struct ExchangeTicket {
  int slot = -1;
  int64_t step = -1;
  const char* op = "";
};

class Communicator {
 public:
  virtual ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int next() const { return (rank_ + 1) % size_; }          // the rank this one sends to
  int prev() const { return (rank_ + size_ - 1) % size_; }  // the rank this one receives from
  MPI_Comm control() const { return control_; }             // the duplicated MPI communicator (control plane)

  virtual Device device() const = 0;        // where the buffers of exchange/all_gather/... live
  virtual const char* backend() const = 0;  // "mpi" / "nccl"

  double timeout_s() const { return timeout_s_; }
  void set_timeout_s(double seconds);  // > 0; throws naming "timeout_s" otherwise
  bool broken() const { return broken_; }

  // --- agreement (control plane, every rank must call, bounded by the deadline) ---
  // Throws on every rank if any rank's fingerprint differs (field count or names, or a value).
  void check_agreement(const ConfigFingerprint& mine, const char* what);
  // Every rank contributes ok (and, when !ok, its Error's argument and message). If any rank is not
  // ok, every rank throws an Error naming each failing rank, its argument and message (truncated).
  void agree_ok(bool ok, const std::string& argument, const std::string& message, const char* what);
  // Runs this rank's `local_checks` (a callable that throws distattn::Error on bad input), then agree_ok() on the
  // outcome: one rank's Error becomes an Error on every rank, before anything that could wait on a peer.
  template <typename LocalChecks>
  void agree_on(const char* what, LocalChecks&& local_checks) {
    bool ok = true;
    std::string argument, message;
    try {
      local_checks();
    } catch (const Error& e) {
      ok = false;
      argument = e.argument();
      message = e.message();
    }
    agree_ok(ok, argument, message, what);
  }

  // --- the ring exchange: send `bytes` from `send` to next(), receive `bytes` from prev() into `recv` ---
  // Posted now, completed by wait_exchange(). NCCL: enqueued on this communicator's stream after the
  // work already enqueued on `after` (null: no ordering). Buffers must stay untouched until the wait.
  virtual ExchangeTicket post_exchange(const char* op, int64_t step, const void* send, void* recv, size_t bytes,
                                       CUstream_st* after = nullptr) = 0;
  // Blocks until the exchange is complete (host polls with the deadline). NCCL: if `consumer` is not null,
  // additionally orders `consumer` after the exchange (the host still waits: that is the watchdog).
  virtual void wait_exchange(ExchangeTicket& ticket, CUstream_st* consumer = nullptr) = 0;

  // --- a shift exchange: send `bytes` from `send` to peer(shift), receive `bytes` from peer(-shift) into `recv` ---
  // Every rank posts it with the same shift (any integer; taken mod size()). shift = 1 moves data like
  // post_exchange; shift = 0 (mod size()) copies `send` into `recv` locally. Used e.g. to send a buffer that
  // travelled s hops of the ring straight home (shift = -s). Completed by wait_exchange(), with the same
  // ordering (`after`, `consumer`), deadline and abort as post_exchange. Throws naming "send/recv" for a null
  // buffer, "recv" when recv == send.
  virtual ExchangeTicket post_shift(const char* op, int64_t step, const void* send, void* recv, size_t bytes, int shift,
                                    CUstream_st* after = nullptr) = 0;
  // The rank `shift` places after this one on the ring: (rank() + shift) mod size(), for any integer shift.
  int peer(int shift) const { return static_cast<int>(((rank_ + int64_t{shift}) % size_ + size_) % size_); }

  // --- registered windows: exchanges on the copy engine (ce_window.h, nccl_communicator.h) ---
  // Collective: every rank calls it, in the same order, with its own device buffer [base, base + bytes) of the
  // SAME size (checked: a mismatch throws on every rank naming "bytes" and the ranks). Returns a window id >= 0 when
  // the backend runs the exchanges whose send AND recv ranges lie inside this window (recv at the same offset on
  // every rank) on the copy engine; -1 when it cannot (MPI backend: always; NCCL: ce_window.h lists the
  // conditions): then nothing is registered and every exchange takes the ordinary path. `op` names the caller in
  // errors. Throws "base" for a null base, "bytes" for 0 or different sizes, and (bounded by the deadline) a timeout
  // naming op when a rank never arrives. The buffer must outlive the window (deregister_window before freeing it).
  virtual int register_window(void* base, size_t bytes, const char* op = "register_window");
  // Collective. Releases a window from register_window (-1: nothing): waits (bounded) for this rank's exchanges,
  // unmaps the peers' windows, and after every rank did so (bounded barrier) frees the flags. Never throws for a
  // broken communicator or a timeout (releases what is local); throws "id" for an id that is not registered.
  virtual void deregister_window(int id);
  // "ce" when an exchange from `send` to `recv` of `bytes` would run on the copy engine, else backend().
  virtual const char* exchange_path(const void* send, const void* recv, size_t bytes) const;

  // --- collectives (blocking with the deadline; NCCL: ordered after `stream`, and `stream` after them) ---
  // recv holds size() * bytes_per_rank bytes, rank i's contribution at offset i * bytes_per_rank.
  virtual void all_gather(const char* op, const void* send, void* recv, size_t bytes_per_rank,
                          CUstream_st* stream = nullptr) = 0;
  // Sum over ranks of send [size() * count] elements; rank i receives block i ([count]) into recv.
  virtual void reduce_scatter(const char* op, const void* send, void* recv, size_t count, DType dtype,
                              CUstream_st* stream = nullptr) = 0;

  // Sub-communicator of the ranks with the same `color`, ordered by (key, rank). Every rank calls it.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

 protected:
  // Duplicates `comm` (MPI_Comm_idup, bounded by the deadline) as the control plane and sets the
  // error rank. timeout_s <= 0 means default_comm_timeout_s().
  Communicator(MPI_Comm comm, double timeout_s);

  // Throws if broken (naming the earlier failure), so no call waits on a peer that already gave up.
  void require_healthy(const char* op, int64_t step) const;
  // Marks the communicator broken and returns the message for the Error the caller throws.
  std::string mark_broken(const std::string& why);
  // Polls MPI_Testall on `reqs` until complete or the deadline; on timeout marks broken and throws an
  // Error naming op, step and `waiting_for` (e.g. "rank 3 (previous)"). Cancels what can be cancelled.
  void wait_mpi(MPI_Request* reqs, int n, const char* op, int64_t step, const std::string& waiting_for,
                bool cancellable);

  MPI_Comm control_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  int world_rank_ = 0;

 private:
  double timeout_s_ = 300.0;
  bool broken_ = false;
  std::string broken_why_;
};

}  // namespace distattn
