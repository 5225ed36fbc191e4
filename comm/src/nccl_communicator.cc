// NcclCommunicator (nccl_communicator.h): NCCL bootstrapped over MPI, nonblocking communicator, watchdog
// waits. Compiled as plain C++ against the CUDA runtime API (no kernels here).
#include "distattn/comm/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <chrono>
#include <thread>

#include "ce_window_impl.h"  // CeWindow complete here: the destructors own them
#include "distattn/core/check_cuda.h"
#include "distattn/core/check_libs.h"  // after <mpi.h> and <nccl.h>: DISTATTN_MPI_CHECK, DISTATTN_NCCL_CHECK
#include "distattn/core/error.h"

namespace distattn {

namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::kFloat16:
      return ncclFloat16;
    case DType::kBFloat16:
      return ncclBfloat16;
    case DType::kFloat32:
      return ncclFloat32;
    case DType::kFloat64:
      return ncclFloat64;
  }
  DISTATTN_THROW("dtype", "unknown dtype ", static_cast<int>(t));
}

ncclConfig_t nonblocking_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every call returns; completion is polled (ncclCommGetAsyncError) with the deadline
  return config;
}

}  // namespace

NcclCommunicator::NcclCommunicator(MPI_Comm comm, int device, double timeout_s) : Communicator(comm, timeout_s) {
  // Node-local rank from the shared-memory split (not an environment guess), ordered by rank.
  MPI_Comm local = MPI_COMM_NULL;
  DISTATTN_MPI_CHECK(MPI_Comm_split_type(control_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local));
  const int rc_rank = MPI_Comm_rank(local, &local_rank_);
  MPI_Comm_free(&local);
  DISTATTN_MPI_CHECK(rc_rank);

  int count = 0;
  DISTATTN_CUDA_CHECK(cudaGetDeviceCount(&count));
  DISTATTN_CHECK_ARG(count > 0, "device", "no CUDA device is visible to this rank");
  device_ = device >= 0 ? device : local_rank_ % count;
  DISTATTN_CHECK_ARG(device_ < count, "device", "is ", device_, " but only ", count, " devices are visible");
  DISTATTN_CUDA_CHECK(cudaSetDevice(device_));

  // Rank 0's unique id to everyone, bounded by the deadline.
  ncclUniqueId id;
  if (rank_ == 0) DISTATTN_NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_Request req = MPI_REQUEST_NULL;
  DISTATTN_MPI_CHECK(MPI_Ibcast(&id, sizeof(id), MPI_BYTE, 0, control_, &req));
  wait_mpi(&req, 1, "NCCL bootstrap (unique id broadcast)", -1, "rank 0's NCCL unique id", false);

  ncclConfig_t config = nonblocking_config();
  DISTATTN_NCCL_CHECK(ncclCommInitRankConfig(&nccl_, size_, id, rank_, &config));
  wait_nccl_ready("ncclCommInitRankConfig", -1);
  init_common();
}

NcclCommunicator::NcclCommunicator(FromSplit, MPI_Comm comm, const NcclCommunicator& parent, int color, int key)
    : Communicator(comm, parent.timeout_s()) {
  device_ = parent.device_;
  local_rank_ = parent.local_rank_;
  DISTATTN_CUDA_CHECK(cudaSetDevice(device_));
  ncclConfig_t config = nonblocking_config();
  const ncclResult_t rc = ncclCommSplit(parent.nccl_, color, key, &nccl_, &config);
  if (rc != ncclSuccess && rc != ncclInProgress) {
    DISTATTN_THROW("", detail::make_message("ncclCommSplit failed: ", ncclGetErrorString(rc)));
  }
  // A nonblocking split may publish the child handle only when it completes; until then its progress is
  // reported by the PARENT (querying a not-yet-published child answers "invalid argument"). So: poll the
  // parent until the handle appears, then the child, both under the communicator's deadline.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s());
  volatile ncclComm_t* published = &nccl_;
  while (*published == nullptr) {
    ncclResult_t state = ncclSuccess;
    if (ncclCommGetAsyncError(parent.nccl_, &state) != ncclSuccess ||
        (state != ncclSuccess && state != ncclInProgress)) {
      DISTATTN_THROW(
          "", detail::make_message("ncclCommSplit: the parent communicator reports ", ncclGetErrorString(state)));
    }
    // No handle yet with the parent healthy: keep waiting (a real failure shows as a parent error or a timeout).
    DISTATTN_CHECK(std::chrono::steady_clock::now() < deadline, "ncclCommSplit timed out after ", timeout_s(),
                   " s without producing a communicator (color ", color, ")");
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  wait_nccl_ready("ncclCommSplit", -1);
  init_common();
}

void NcclCommunicator::init_common() {
  // The communication stream gets the device's greatest priority. The attention kernels fill every SM (one CTA per
  // SM for the Hopper forward); when an SM frees up, the block scheduler dispatches the pending CTAs of the
  // higher-priority stream first, so an exchange posted before a step's compute starts within one CTA's time
  // instead of waiting for the whole kernel (which exposes the exchange: the ring's step would then take compute
  // + transfer instead of max of the two).
  int least = 0, greatest = 0;
  DISTATTN_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  DISTATTN_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
  DISTATTN_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  DISTATTN_CUDA_CHECK(cudaEventCreateWithFlags(&sync_, cudaEventDisableTiming));
  // Copy-engine windows: the watch stream only waits for arrival flags (its events tell the host watchdog when a
  // copy-engine exchange is complete without waiting for the consumer's compute); the poison stream only writes
  // the release values after a timeout. Both non-blocking, so neither waits for the legacy stream.
  DISTATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&watch_, cudaStreamNonBlocking));
  DISTATTN_CUDA_CHECK(cudaStreamCreateWithPriority(&poison_, cudaStreamNonBlocking, greatest));
}

NcclCommunicator::~NcclCommunicator() {
  // No throwing here. A healthy communicator is finalized (flushes pending work) then destroyed; a
  // broken one was already aborted.
  if (device_ >= 0) (void)cudaSetDevice(device_);
  // Windows still registered (deregister_window was not called) are released below without the collective
  // barrier; first (before NCCL is finalized, which would wait behind a blocked stream) the streams drain.
  if (!windows_.empty()) {
    // Bounded drain (a posted exchange that was never waited could block on a peer forever): past the deadline, or
    // when broken (a late peer write may have lowered a poisoned flag), the flags are poisoned and the released
    // streams get a bounded moment to finish their last copies before the mappings go.
    if (broken() || !ce::drain(stream_, watch_, timeout_s())) {
      poison_windows();
      (void)ce::drain(stream_, watch_, 5.0);
    }
  }
  if (nccl_ != nullptr && !broken()) {
    // Nonblocking communicator: ncclCommFinalize normally answers ncclInProgress; poll until it is done.
    const ncclResult_t fin = ncclCommFinalize(nccl_);
    ncclResult_t state = (fin == ncclSuccess || fin == ncclInProgress) ? ncclInProgress : ncclInternalError;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s());
    while (state == ncclInProgress && std::chrono::steady_clock::now() < deadline) {
      if (ncclCommGetAsyncError(nccl_, &state) != ncclSuccess) state = ncclInternalError;
      if (state == ncclInProgress) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    if (state == ncclSuccess) {
      ncclCommDestroy(nccl_);
    } else {
      ncclCommAbort(nccl_);  // finalize failed or stalled: do not hang in the destructor
    }
  }
  for (auto& w : windows_) {
    if (w) release_window(*w);
  }
  windows_.clear();
  for (cudaEvent_t e : done_) cudaEventDestroy(e);
  for (cudaEvent_t e : arrived_) cudaEventDestroy(e);
  if (watch_) cudaStreamDestroy(watch_);
  if (poison_) cudaStreamDestroy(poison_);
  if (ready_) cudaEventDestroy(ready_);
  if (sync_) cudaEventDestroy(sync_);
  if (stream_) cudaStreamDestroy(stream_);
}

void NcclCommunicator::abort_and_throw(const std::string& why, const char* op, int64_t step) {
  const std::string text = detail::make_message(op, step >= 0 ? " step " : "", step >= 0 ? std::to_string(step) : "",
                                                ": ", why, " (NCCL communicator aborted)");
  if (!broken()) poison_windows();  // no stream stays blocked on a copy-engine flag
  if (nccl_ != nullptr && !broken()) ncclCommAbort(nccl_);
  DISTATTN_THROW("", mark_broken(text));
}

void NcclCommunicator::wait_nccl_ready(const char* op, int64_t step) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s());
  for (int spin = 0;; ++spin) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(nccl_, &state);
    if (rc != ncclSuccess)
      abort_and_throw(detail::make_message("ncclCommGetAsyncError failed: ", ncclGetErrorString(rc)), op, step);
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) {
      abort_and_throw(detail::make_message("NCCL error: ", ncclGetErrorString(state)), op, step);
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      abort_and_throw(detail::make_message("timed out after ", timeout_s(), " s (NCCL still in progress)"), op, step);
    }
    if (spin > 64) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void NcclCommunicator::wait_event(cudaEvent_t event, const char* op, int64_t step) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s());
  for (int spin = 0;; ++spin) {
    const cudaError_t q = cudaEventQuery(event);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) {
      abort_and_throw(
          detail::make_message("CUDA error while waiting: ", cudaGetErrorName(q), " (", cudaGetErrorString(q), ")"), op,
          step);
    }
    ncclResult_t state = ncclSuccess;
    if (ncclCommGetAsyncError(nccl_, &state) != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
      abort_and_throw(detail::make_message("NCCL async error: ", ncclGetErrorString(state)), op, step);
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      abort_and_throw(detail::make_message("timed out after ", timeout_s(), " s waiting for rank ", prev(), " / rank ",
                                           next(), " (set DISTATTN_COMM_TIMEOUT_S to change the limit)"),
                      op, step);
    }
    if (spin > 64) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void NcclCommunicator::order_after(CUstream_st* producer) {
  if (producer == nullptr) return;
  DISTATTN_CUDA_CHECK(cudaEventRecord(ready_, producer));
  DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
}

void NcclCommunicator::order_before(CUstream_st* consumer) {
  if (consumer == nullptr) return;
  DISTATTN_CUDA_CHECK(cudaEventRecord(sync_, stream_));
  DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(consumer, sync_, 0));
}

ExchangeTicket NcclCommunicator::post_exchange(const char* op, int64_t step, const void* send, void* recv, size_t bytes,
                                               CUstream_st* after) {
  size_t send_off = 0, recv_off = 0;
  const int w = find_window(send, recv, bytes, &send_off, &recv_off);
  if (w >= 0) return post_ce(op, step, w, send_off, recv_off, bytes, 1, after);
  return post_p2p(op, step, send, recv, bytes, next(), prev(), false, after);  // a ring of one: NCCL self send/recv
}

ExchangeTicket NcclCommunicator::post_shift(const char* op, int64_t step, const void* send, void* recv, size_t bytes,
                                            int shift, CUstream_st* after) {
  size_t send_off = 0, recv_off = 0;
  const int w = find_window(send, recv, bytes, &send_off, &recv_off);
  if (w >= 0) return post_ce(op, step, w, send_off, recv_off, bytes, shift, after);
  return post_p2p(op, step, send, recv, bytes, peer(shift), peer(-shift), true, after);
}

ExchangeTicket NcclCommunicator::post_p2p(const char* op, int64_t step, const void* send, void* recv, size_t bytes,
                                          int send_to, int recv_from, bool self_copy, CUstream_st* after) {
  require_healthy(op, step);
  DISTATTN_CHECK_ARG(bytes == 0 || (send != nullptr && recv != nullptr), "send/recv", op, " step ", step,
                     ": null buffer for ", bytes, " bytes");
  DISTATTN_CHECK_ARG(bytes == 0 || send != recv, "recv", op, " step ", step, ": the receive buffer is the send buffer");
  DISTATTN_CUDA_CHECK(cudaSetDevice(device_));
  const size_t slot = take_slot();
  slot_ce_[slot] = SlotCe{};
  order_after(after);
  if (bytes > 0 && self_copy && send_to == rank_ && recv_from == rank_) {
    // Shift 0: nothing crosses a link; a copy on the communication stream keeps the same ordering rules.
    DISTATTN_CUDA_CHECK(cudaMemcpyAsync(recv, send, bytes, cudaMemcpyDeviceToDevice, stream_));
  } else if (bytes > 0) {
    // One group: the send and the receive progress together (separate calls deadlock).
    DISTATTN_NCCL_CHECK(ncclGroupStart());
    ncclResult_t rc = ncclSend(send, bytes, ncclUint8, send_to, nccl_, stream_);
    const char* failed = "ncclSend";
    if (rc == ncclSuccess || rc == ncclInProgress) {
      rc = ncclRecv(recv, bytes, ncclUint8, recv_from, nccl_, stream_);
      failed = "ncclRecv";
    }
    const ncclResult_t end = ncclGroupEnd();  // always closed, also after a failed send/recv
    if (rc == ncclSuccess || rc == ncclInProgress) {
      rc = end;
      failed = "ncclGroupEnd";
    }
    if (rc != ncclSuccess && rc != ncclInProgress) {
      // The peers may already have posted their half: abort so that they time out instead of hanging.
      abort_and_throw(detail::make_message(failed, " failed: ", ncclGetErrorString(rc)), op, step);
    }
    // Nonblocking communicator: the group may still be being enqueued.
    wait_nccl_ready(op, step);
  }
  DISTATTN_CUDA_CHECK(cudaEventRecord(done_[slot], stream_));
  busy_[slot] = true;
  return ExchangeTicket{static_cast<int>(slot), step, op};
}

size_t NcclCommunicator::take_slot() {
  size_t slot = 0;
  while (slot < busy_.size() && busy_[slot]) ++slot;
  if (slot == busy_.size()) {
    // Both events first, then the arrays grow together (an exception leaves them consistent).
    cudaEvent_t e = nullptr, a = nullptr;
    DISTATTN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    const cudaError_t rc = cudaEventCreateWithFlags(&a, cudaEventDisableTiming);
    if (rc != cudaSuccess) {
      cudaEventDestroy(e);
      DISTATTN_CUDA_CHECK(rc);
    }
    done_.push_back(e);
    arrived_.push_back(a);
    slot_ce_.emplace_back();
    busy_.push_back(false);
  }
  return slot;
}

void NcclCommunicator::wait_exchange(ExchangeTicket& ticket, CUstream_st* consumer) {
  DISTATTN_CHECK_ARG(
      ticket.slot >= 0 && ticket.slot < static_cast<int>(busy_.size()) && busy_[static_cast<size_t>(ticket.slot)],
      "ticket", "is not a pending exchange (waited twice, or never posted)");
  const size_t slot = static_cast<size_t>(ticket.slot);
  busy_[slot] = false;
  ticket.slot = -1;
  require_healthy(ticket.op, ticket.step);
  DISTATTN_CUDA_CHECK(cudaSetDevice(device_));
  if (slot_ce_[slot].window >= 0) {
    wait_ce(slot, ticket.op, ticket.step, consumer);
    return;
  }
  if (consumer != nullptr) DISTATTN_CUDA_CHECK(cudaStreamWaitEvent(consumer, done_[slot], 0));
  wait_event(done_[slot], ticket.op, ticket.step);
}

void NcclCommunicator::all_gather(const char* op, const void* send, void* recv, size_t bytes_per_rank,
                                  CUstream_st* stream) {
  require_healthy(op, -1);
  DISTATTN_CUDA_CHECK(cudaSetDevice(device_));
  order_after(stream);
  DISTATTN_NCCL_CHECK(ncclAllGather(send, recv, bytes_per_rank, ncclUint8, nccl_, stream_));
  wait_nccl_ready(op, -1);
  order_before(stream);
  DISTATTN_CUDA_CHECK(cudaEventRecord(sync_, stream_));
  wait_event(sync_, op, -1);
}

void NcclCommunicator::reduce_scatter(const char* op, const void* send, void* recv, size_t count, DType dtype,
                                      CUstream_st* stream) {
  require_healthy(op, -1);
  DISTATTN_CUDA_CHECK(cudaSetDevice(device_));
  order_after(stream);
  DISTATTN_NCCL_CHECK(ncclReduceScatter(send, recv, count, nccl_type(dtype), ncclSum, nccl_, stream_));
  wait_nccl_ready(op, -1);
  order_before(stream);
  DISTATTN_CUDA_CHECK(cudaEventRecord(sync_, stream_));
  wait_event(sync_, op, -1);
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  require_healthy("split", -1);
  MPI_Comm sub = MPI_COMM_NULL;
  DISTATTN_MPI_CHECK(MPI_Comm_split(control_, color, key, &sub));
  std::unique_ptr<Communicator> child;
  try {
    child.reset(new NcclCommunicator(FromSplit{}, sub, *this, color, key));
  } catch (...) {
    MPI_Comm_free(&sub);
    throw;
  }
  MPI_Comm_free(&sub);
  return child;
}

}  // namespace distattn
