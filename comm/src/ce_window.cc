// NcclCommunicator's copy-engine windows (nccl_communicator.h, ce_window.h): registration over MPI and CUDA IPC,
// the push exchange on the copy engine, its waits and the watchdog's release of stuck waits.
//
// ---- Protocol --------------------------------------------------------------------------------------------------
// Window w is registered collectively; every rank holds [base, base + bytes) of the same size, maps every peer's
// window and flag array (CUDA IPC), and keeps w.seq, the sequence number of the last exchange posted on w.
// Every rank posts the same exchanges on w in the same order (the exchange contract), so every rank advances
// w.seq identically: exchange number n (n = 1, 2, ...) is the same exchange everywhere. With shift k, rank r
// pushes to its TARGET t = peer(k) and is pushed to by its SOURCE s = peer(-k) (both the same k on every rank, so
// r is t's source and s's target). Flag entries (ce_window_impl.h): FREE[q] and READY[q] in each rank's flags, each
// written only by rank q, in sequence order, so each entry only grows (32-bit, compared cyclically).
//
// post n on rank r (communication stream N, after the work so far on `after`):
//   N: wait for `after`            r's previous readers of its recv range [ro, ro + bytes) are done (the contract:
//                                  the consumer of exchange n-1's data was enqueued on `after` before this post)
//   N: s.FREE[r]  := n             "my recv range is free for exchange n" (into the SOURCE's flags)
//   N: wait r.FREE[t] >= n         the TARGET released its recv range for exchange n
//   N: copy r[so, +bytes) -> t[ro, +bytes)   cudaMemcpyAsync through the IPC mapping: copy engine, no SMs
//   N: t.READY[r] := n             "exchange n's data is in your window" (the write carries a memory barrier:
//                                  the copy is visible before the flag)
//   N: record done[slot]           this rank's send range has been read
// wait n on rank r (consumer C):
//   C: wait done[slot]             the send range may be rewritten after the wait (contract)
//   C: wait r.READY[s] >= n        the data pushed by the SOURCE has arrived
//   watch stream: the same two waits, then record arrived[slot]; the HOST polls arrived[slot] against the deadline
//   (not C: the host must not wait for C's compute, only for the exchange).
// Why no step mismatch is possible: FREE / READY for rank pair (q -> r) are only written with the sequence number of
// the exchange being posted, by the one rank q, after q posted every earlier exchange; a wait for n is satisfied only
// by a value >= n (cyclically), i.e. only after q reached exchange n. The ring's buffer lifetimes (ring_cuda.cc): the
// recv range of step i (kv[1-cur]) is read by step i+1's compute, enqueued on C before the post of step i+2 that
// receives into it again; that post's `after` = C orders the FREE write after that compute, so no rank pushes into a
// buffer its owner still reads. The send range of step i is read by N's copy before done[slot]; the next write into
// it is the push of exchange n+1 from the source, which waits for FREE n+1, written on N after done[slot] of n.
// Shift 0 (mod size): a local copy on N, no flags (w.seq still advances).
// Timeout: the host's poll of arrived[slot] (or any other wait of this communicator) past the deadline writes
// poison_value(w.seq) into ALL of this rank's flag entries (poison stream), which satisfies every pending stream wait
// on them, then marks the communicator broken (NCCL aborted) and throws an Error naming the rank, op and step.
// Limitation: a released push may still land in the target's window with a READY flag (the target then sees data
// that its source gave up on); the source has thrown, so the job is failing; see the report / notes.
// -----------------------------------------------------------------------------------------------------------------
#include "distattn/comm/ce_window.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>
#include <mpi.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "ce_window_impl.h"
#include "distattn/comm/nccl_communicator.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/check_libs.h"  // after <mpi.h>: DISTATTN_MPI_CHECK
#include "distattn/core/error.h"

// A driver call through an entry point: a failure becomes an Error with the call's text and the CUresult.
#define DISTATTN_CU_CHECK(expr)                                                                           \
  do {                                                                                                    \
    const CUresult distattn_cu_ = (expr);                                                                 \
    if (distattn_cu_ != CUDA_SUCCESS) {                                                                   \
      DISTATTN_THROW("", #expr, " failed: CUresult ", static_cast<int>(distattn_cu_), " (driver error)"); \
    }                                                                                                     \
  } while (0)

namespace distattn {

namespace ce {

const DriverOps& driver_ops() {
  static const DriverOps ops = [] {
    DriverOps o;
    auto get = [&o](const char* name, void** fn) {
      if (!o.missing.empty()) return;
      cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
      // Version 12000: the v2 memory operations (cuStreamWaitValue32_v2), part of every CUDA 12+ driver.
      const cudaError_t rc = cudaGetDriverEntryPointByVersion(name, fn, 12000, cudaEnableDefault, &q);
      if (rc != cudaSuccess || q != cudaDriverEntryPointSuccess || *fn == nullptr) {
        (void)cudaGetLastError();
        *fn = nullptr;
        o.missing = name;
      }
    };
    get("cuStreamWaitValue32", reinterpret_cast<void**>(&o.wait32));
    get("cuStreamWriteValue32", reinterpret_cast<void**>(&o.write32));
    get("cuMemGetAddressRange", reinterpret_cast<void**>(&o.address_range));
    get("cuDeviceGetAttribute", reinterpret_cast<void**>(&o.attribute));
    return o;
  }();
  return ops;
}

bool drain(cudaStream_t a, cudaStream_t b, double seconds) noexcept {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (cudaStream_t s : {a, b}) {
    while (s != nullptr && cudaStreamQuery(s) == cudaErrorNotReady) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  (void)cudaGetLastError();
  return true;
}

}  // namespace ce

namespace {

CUdeviceptr dptr(const void* p) { return static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(p)); }
CUstream cu(cudaStream_t s) { return reinterpret_cast<CUstream>(s); }

// What every rank contributes to the first registration round (sent as bytes: trivially copyable).
struct WindowRecord {
  ce::RankFacts facts;
  char bus_id[32];            // cudaDeviceGetPCIBusId of its GPU
  cudaIpcMemHandle_t window;  // the allocation holding its window
  cudaIpcMemHandle_t flags;   // its flag array
  uint64_t window_offset;     // its base - the allocation's base
};

}  // namespace

int NcclCommunicator::register_window(void* base, size_t bytes, const char* op) {
  require_healthy(op, -1);
  DISTATTN_CUDA_CHECK(cudaSetDevice(device_));
  // 1. Arguments and the switch: one rank's bad input is an Error on every rank, before anything waits on a peer.
  ce::ExchangeMode mode = ce::ExchangeMode::kNccl;
  agree_on(op, [&] {
    DISTATTN_CHECK_ARG(base != nullptr, "base", op, ": null window");
    DISTATTN_CHECK_ARG(bytes > 0, "bytes", op, ": empty window (0 bytes)");
    cudaPointerAttributes attr{};
    DISTATTN_CUDA_CHECK(cudaPointerGetAttributes(&attr, base));
    DISTATTN_CHECK_ARG(attr.type == cudaMemoryTypeDevice && attr.device == device_, "base", op,
                       ": the window must be device memory of this rank's GPU ", device_);
    mode = ce::exchange_mode_from_env();  // throws naming DISTATTN_RING_EXCHANGE for a bad value
  });
  ConfigFingerprint fp;
  fp.add("bytes", static_cast<int64_t>(bytes));
  check_agreement(fp, op);  // the same window size everywhere (the protocol pushes at the same offsets)

  // 2. Local preparation: flags, the stream memory operations, the IPC handles. Failures here only make this rank
  // refuse the copy engine (a fact gathered below), they never throw: every rank must reach the gathers.
  window_refusal_.clear();
  auto w = std::make_unique<CeWindow>();
  w->base = static_cast<unsigned char*>(base);
  w->bytes = bytes;
  WindowRecord rec{};  // value-initialised: zero handles and bus id, RankFacts' defaults
  rec.facts.wants_ce = mode == ce::ExchangeMode::kCopyEngine ? 1 : 0;
  std::string local_note;
  const ce::DriverOps& ops = ce::driver_ops();
  const size_t flag_bytes = static_cast<size_t>(2 * size_) * sizeof(uint32_t);
  if (rec.facts.wants_ce) {
    try {
      DISTATTN_CHECK(ops.ok(), "driver entry point ", ops.missing, " not found");
      DISTATTN_CUDA_CHECK(cudaDeviceGetPCIBusId(rec.bus_id, sizeof(rec.bus_id), device_));
      DISTATTN_CUDA_CHECK(cudaMalloc(&w->flags, flag_bytes));
      // Zero the flags, and check that the memory operations run on this GPU: a write, then a wait it satisfies.
      // Synchronised before the first gather, so no peer can write into the flags before they are zero (peers
      // write only after the second round, which needs this rank's contribution).
      DISTATTN_CUDA_CHECK(cudaMemsetAsync(w->flags, 0, flag_bytes, stream_));
      DISTATTN_CU_CHECK(ops.write32(cu(stream_), dptr(w->flags), 0u, 0));
      DISTATTN_CU_CHECK(ops.wait32(cu(stream_), dptr(w->flags), 0u, CU_STREAM_WAIT_VALUE_GEQ));
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream_));  // nothing else is on stream_ at registration
      rec.facts.memops = 1;
      CUdeviceptr alloc_base = 0;
      size_t alloc_size = 0;
      DISTATTN_CU_CHECK(ops.address_range(&alloc_base, &alloc_size, dptr(base)));
      rec.window_offset = static_cast<uint64_t>(dptr(base) - alloc_base);
      DISTATTN_CHECK(rec.window_offset + bytes <= alloc_size, "the window runs past its allocation");
      DISTATTN_CUDA_CHECK(cudaIpcGetMemHandle(&rec.window, base));  // fails for stream-ordered pool memory
      DISTATTN_CUDA_CHECK(cudaIpcGetMemHandle(&rec.flags, w->flags));
      rec.facts.ipc = 1;
    } catch (const Error& e) {
      (void)cudaGetLastError();
      local_note = e.what();
    }
  }
  std::vector<WindowRecord> all(static_cast<size_t>(size_));
  MPI_Request req = MPI_REQUEST_NULL;
  DISTATTN_MPI_CHECK(MPI_Iallgather(&rec, sizeof(rec), MPI_BYTE, all.data(), sizeof(rec), MPI_BYTE, control_, &req));
  try {
    wait_mpi(&req, 1, detail::make_message(op, ": window registration").c_str(), -1,
             "every rank to register its window", false);
  } catch (...) {
    release_window(*w);
    throw;
  }
  // Every rank is here now, so the (blocking) node split completes.
  int on_node = 0;
  {
    MPI_Comm local = MPI_COMM_NULL;
    const int rc = MPI_Comm_split_type(control_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    if (rc == MPI_SUCCESS) {
      if (MPI_Comm_size(local, &on_node) != MPI_SUCCESS) on_node = 0;
      MPI_Comm_free(&local);
    }
  }
  std::vector<ce::RankFacts> facts(static_cast<size_t>(size_));
  for (int q = 0; q < size_; ++q) facts[static_cast<size_t>(q)] = all[static_cast<size_t>(q)].facts;
  std::string why = ce::refusal(facts, on_node);
  auto refuse = [&](const std::string& reason) {
    release_window(*w);
    window_refusal_ = reason.empty() ? std::string("refused") : reason;
    if (!local_note.empty()) window_refusal_ += " [this rank: " + local_note + "]";
    return -1;
  };
  if (!why.empty()) return refuse(why);

  // 3. Map every peer's window and flags (second round: every rank must have mapped all of them).
  w->peer_base.assign(static_cast<size_t>(size_), nullptr);
  w->peer_flags.assign(static_cast<size_t>(size_), nullptr);
  w->peer_base[static_cast<size_t>(rank_)] = w->base;
  w->peer_flags[static_cast<size_t>(rank_)] = w->flags;
  int32_t mapped = 1;
  try {
    for (int q = 0; q < size_ && mapped; ++q) {
      if (q == rank_) continue;
      const WindowRecord& pr = all[static_cast<size_t>(q)];
      int ordinal = -1;
      DISTATTN_CUDA_CHECK(cudaDeviceGetByPCIBusId(&ordinal, pr.bus_id));  // fails when that GPU is not visible
      int can = ordinal == device_ ? 1 : 0;                               // the same GPU needs no peer access
      if (!can) DISTATTN_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, device_, ordinal));
      DISTATTN_CHECK(can, "GPU ", device_, " cannot access rank ", q, "'s GPU ", ordinal, " (", pr.bus_id, ")");
      void* p = nullptr;
      DISTATTN_CUDA_CHECK(cudaIpcOpenMemHandle(&p, pr.window, cudaIpcMemLazyEnablePeerAccess));
      w->opened.push_back(p);
      w->peer_base[static_cast<size_t>(q)] = static_cast<unsigned char*>(p) + pr.window_offset;
      DISTATTN_CUDA_CHECK(cudaIpcOpenMemHandle(&p, pr.flags, cudaIpcMemLazyEnablePeerAccess));
      w->opened.push_back(p);
      w->peer_flags[static_cast<size_t>(q)] = static_cast<uint32_t*>(p);
    }
  } catch (const Error& e) {
    (void)cudaGetLastError();
    mapped = 0;
    local_note = e.what();
  }
  std::vector<int32_t> all_mapped(static_cast<size_t>(size_), 0);
  DISTATTN_MPI_CHECK(MPI_Iallgather(&mapped, 1, MPI_INT32_T, all_mapped.data(), 1, MPI_INT32_T, control_, &req));
  try {
    wait_mpi(&req, 1, detail::make_message(op, ": window mapping").c_str(), -1, "every rank to map the windows", false);
  } catch (...) {
    release_window(*w);
    throw;
  }
  for (int q = 0; q < size_; ++q) facts[static_cast<size_t>(q)].peers = all_mapped[static_cast<size_t>(q)];
  why = ce::refusal(facts, on_node);
  if (!why.empty()) return refuse(why);
  windows_.push_back(std::move(w));
  return static_cast<int>(windows_.size() - 1);
}

void NcclCommunicator::release_window(CeWindow& w) noexcept {
  if (device_ >= 0) (void)cudaSetDevice(device_);
  for (void* p : w.opened) (void)cudaIpcCloseMemHandle(p);
  w.opened.clear();
  w.peer_base.clear();
  w.peer_flags.clear();
  if (w.flags != nullptr) (void)cudaFree(w.flags);
  w.flags = nullptr;
  (void)cudaGetLastError();
}

void NcclCommunicator::deregister_window(int id) {
  if (id == -1) return;
  DISTATTN_CHECK_ARG(id >= 0 && id < static_cast<int>(windows_.size()) && windows_[static_cast<size_t>(id)], "id",
                     "window ", id, " is not registered (or was deregistered already)");
  for (size_t s = 0; s < busy_.size(); ++s) {
    DISTATTN_CHECK_ARG(!(busy_[s] && slot_ce_[s].window == id), "id", "window ", id,
                       " still has an exchange posted and not waited (step of slot ", s, ")");
  }
  std::unique_ptr<CeWindow> w = std::move(windows_[static_cast<size_t>(id)]);
  (void)cudaSetDevice(device_);
  // Drain this rank's streams (bounded): every write into a peer's memory is then done, and every write into this
  // rank's memory was waited for by one of them (each FREE by N before its push, each READY by C / the watch).
  if (!broken()) {
    try {
      DISTATTN_CUDA_CHECK(cudaEventRecord(sync_, stream_));
      wait_event(sync_, "deregister_window (draining the exchanges)", -1);
      DISTATTN_CUDA_CHECK(cudaEventRecord(sync_, watch_));
      wait_event(sync_, "deregister_window (draining the exchanges)", -1);
    } catch (const Error&) {
      // marked broken (and the flags poisoned) by wait_event; release what is local below
    }
  } else {
    poison_windows();                       // again: a late peer write may have lowered a poisoned flag
    (void)ce::drain(stream_, watch_, 5.0);  // the released pushes land before the mappings close
  }
  // Unmap the peers, then (healthy) wait until every rank has unmapped before the flags go: a peer never touches
  // this rank's flags after its own drain, and nobody keeps a mapping of memory that is freed.
  if (device_ >= 0) {
    for (void* p : w->opened) (void)cudaIpcCloseMemHandle(p);
  }
  w->opened.clear();
  if (!broken()) {
    try {
      MPI_Request req = MPI_REQUEST_NULL;
      DISTATTN_MPI_CHECK(MPI_Ibarrier(control_, &req));
      wait_mpi(&req, 1, "deregister_window", -1, "every rank to unmap the window", false);
    } catch (const Error&) {
      // broken now; the flags are freed anyway (the peers that could still write into them have failed)
    }
  }
  release_window(*w);
}

int NcclCommunicator::find_window(const void* send, const void* recv, size_t bytes, size_t* send_off,
                                  size_t* recv_off) const {
  if (bytes == 0 || send == nullptr || recv == nullptr) return -1;
  const uintptr_t s = reinterpret_cast<uintptr_t>(send), r = reinterpret_cast<uintptr_t>(recv);
  for (size_t i = 0; i < windows_.size(); ++i) {
    const CeWindow* w = windows_[i].get();
    if (w == nullptr) continue;
    const uintptr_t b = reinterpret_cast<uintptr_t>(w->base);
    auto inside = [&](uintptr_t p) { return p >= b && p - b <= w->bytes && bytes <= w->bytes - (p - b); };
    if (inside(s) && inside(r)) {
      *send_off = s - b;
      *recv_off = r - b;
      return static_cast<int>(i);
    }
  }
  return -1;
}

const char* NcclCommunicator::exchange_path(const void* send, const void* recv, size_t bytes) const {
  size_t so = 0, ro = 0;
  return find_window(send, recv, bytes, &so, &ro) >= 0 ? "ce" : "nccl";
}

ExchangeTicket NcclCommunicator::post_ce(const char* op, int64_t step, int window, size_t send_off, size_t recv_off,
                                         size_t bytes, int shift, CUstream_st* after) {
  require_healthy(op, step);
  // Inside one window: the receive range must not overlap the send range (the source writes it while N reads).
  DISTATTN_CHECK_ARG(send_off + bytes <= recv_off || recv_off + bytes <= send_off, "recv", op, " step ", step,
                     ": the receive range [", recv_off, ", +", bytes, ") overlaps the send range [", send_off, ", +",
                     bytes, ") of window ", window);
  DISTATTN_CUDA_CHECK(cudaSetDevice(device_));
  CeWindow& w = *windows_[static_cast<size_t>(window)];
  const ce::DriverOps& ops = ce::driver_ops();
  const int target = peer(shift), source = peer(-shift);
  const size_t slot = take_slot();
  slot_ce_[slot] = SlotCe{};
  const uint32_t n = w.seq + 1;
  try {
    order_after(after);
    if (target == rank_) {
      // Shift 0: nothing crosses a link; the same ordering rules.
      DISTATTN_CUDA_CHECK(
          cudaMemcpyAsync(w.base + recv_off, w.base + send_off, bytes, cudaMemcpyDeviceToDevice, stream_));
    } else {
      const uint32_t* free_from_target = w.flags + target;
      uint32_t* source_free_from_me = w.peer_flags[static_cast<size_t>(source)] + rank_;
      uint32_t* target_ready_from_me = w.peer_flags[static_cast<size_t>(target)] + size_ + rank_;
      DISTATTN_CU_CHECK(ops.write32(cu(stream_), dptr(source_free_from_me), n, 0));
      DISTATTN_CU_CHECK(ops.wait32(cu(stream_), dptr(free_from_target), n, CU_STREAM_WAIT_VALUE_GEQ));
      DISTATTN_CUDA_CHECK(cudaMemcpyAsync(w.peer_base[static_cast<size_t>(target)] + recv_off, w.base + send_off, bytes,
                                          cudaMemcpyDefault, stream_));
      // Default flags: a memory barrier before the write, so the copy's data is visible before the flag.
      DISTATTN_CU_CHECK(ops.write32(cu(stream_), dptr(target_ready_from_me), n, 0));
    }
    DISTATTN_CUDA_CHECK(cudaEventRecord(done_[slot], stream_));
  } catch (const Error& e) {
    // Part of the exchange may be enqueued: the peers could wait on it forever; break the communicator so that
    // every wait here is released and the peers time out instead.
    w.seq = n;
    abort_and_throw(detail::make_message("posting the copy-engine exchange failed: ", e.what()), op, step);
  }
  w.seq = n;
  busy_[slot] = true;
  slot_ce_[slot] = SlotCe{window, n, source};
  return ExchangeTicket{static_cast<int>(slot), step, op};
}

void NcclCommunicator::wait_ce(size_t slot, const char* op, int64_t step, CUstream_st* consumer) {
  const SlotCe c = slot_ce_[slot];
  slot_ce_[slot] = SlotCe{};
  CeWindow& w = *windows_[static_cast<size_t>(c.window)];
  const ce::DriverOps& ops = ce::driver_ops();
  cudaEvent_t watched = done_[slot];
  try {
    if (consumer != nullptr) DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(consumer, done_[slot], 0));
    if (c.source != rank_) {
      const uint32_t* ready_from_source = w.flags + size_ + c.source;
      if (consumer != nullptr) {
        DISTATTN_CU_CHECK(ops.wait32(cu(consumer), dptr(ready_from_source), c.seq, CU_STREAM_WAIT_VALUE_GEQ));
      }
      DISTATTN_CU_CHECK(ops.wait32(cu(watch_), dptr(ready_from_source), c.seq, CU_STREAM_WAIT_VALUE_GEQ));
      DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(watch_, done_[slot], 0));
      DISTATTN_CUDA_CHECK(cudaEventRecord(arrived_[slot], watch_));
      watched = arrived_[slot];
    }
  } catch (const Error& e) {
    abort_and_throw(detail::make_message("waiting for the copy-engine exchange failed: ", e.what()), op, step);
  }
  // The watchdog: poll with the deadline; on timeout abort_and_throw poisons the flags (no stream stays blocked).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s());
  for (int spin = 0;; ++spin) {
    const cudaError_t q = cudaEventQuery(watched);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) {
      abort_and_throw(
          detail::make_message("CUDA error while waiting: ", cudaGetErrorName(q), " (", cudaGetErrorString(q), ")"), op,
          step);
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      abort_and_throw(
          detail::make_message("timed out after ", timeout_s(), " s in the copy-engine exchange (window ", c.window,
                               ", sequence ", c.seq, ") waiting for rank ", c.source, " (its data) / rank ",
                               peer(c.source == rank_ ? 0 : rank_ - c.source), " (its release of the receive buffer)",
                               " (set DISTATTN_COMM_TIMEOUT_S to change the limit)"),
          op, step);
    }
    if (spin > 64) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void NcclCommunicator::poison_windows() noexcept {
  const ce::DriverOps& ops = ce::driver_ops();
  if (!ops.ok() || poison_ == nullptr) return;
  bool any = false;
  for (auto& w : windows_) {
    if (!w || w->flags == nullptr) continue;
    const uint32_t v = ce::poison_value(w->seq);
    for (int i = 0; i < 2 * size_; ++i) {
      any |= ops.write32(cu(poison_), dptr(w->flags + i), v, 0) == CUDA_SUCCESS;
    }
  }
  if (!any) return;
  // The writes need no other stream; give them a moment (bounded) so the released waits drain before the caller
  // goes on to clean up.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (cudaStreamQuery(poison_) == cudaErrorNotReady && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  (void)cudaGetLastError();
}

}  // namespace distattn
