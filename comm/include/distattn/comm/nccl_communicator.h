// NcclCommunicator: the Communicator over NCCL, device memory. One process per GPU.
//
// Construction (collective over the MPI communicator, bounded by the deadline):
//   - the GPU: node-local rank (MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)) modulo the visible devices,
//     or an explicit `device` >= 0; made current;
//   - rank 0's ncclUniqueId broadcast over MPI; a NONBLOCKING NCCL communicator (config.blocking = 0), so
//     every NCCL call returns and the host can poll ncclCommGetAsyncError against the deadline;
//   - its own non-blocking CUDA stream for communication (created with the device's greatest priority, so that
//     exchanges are not queued behind the attention kernels' CTAs), and events to hand buffers between streams.
// The exchange is ncclSend to next() + ncclRecv from prev() inside ONE ncclGroupStart/End (ungrouped
// pairs deadlock). Waits poll cudaEventQuery and ncclCommGetAsyncError; on an error or past the deadline
// the communicator calls ncclCommAbort, is marked broken and throws an Error naming the rank, the
// operation and the step.
//
// Copy-engine windows (register_window, ce_window.cc; protocol in the comment block there): on one node with peer
// access, exchanges whose send and recv lie inside a registered window are pushed by cudaMemcpyAsync into the
// peer's IPC-mapped window on the communication stream, ordered across ranks by 32-bit sequence flags written and
// waited with the driver's stream memory operations; no SMs are used. Everything else stays on NCCL.
#pragma once

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "distattn/comm/communicator.h"

namespace distattn {

class NcclCommunicator : public Communicator {
 public:
  // device < 0: node-local rank % device count. timeout_s <= 0: default_comm_timeout_s().
  explicit NcclCommunicator(MPI_Comm comm, int device = -1, double timeout_s = 0.0);
  ~NcclCommunicator() override;

  Device device() const override { return Device::kCuda; }
  const char* backend() const override { return "nccl"; }
  int cuda_device() const { return device_; }
  int local_rank() const { return local_rank_; }
  cudaStream_t stream() const { return stream_; }  // the communication stream
  ncclComm_t nccl() const { return nccl_; }

  ExchangeTicket post_exchange(const char* op, int64_t step, const void* send, void* recv, size_t bytes,
                               CUstream_st* after = nullptr) override;
  void wait_exchange(ExchangeTicket& ticket, CUstream_st* consumer = nullptr) override;
  // ncclSend to peer(shift) + ncclRecv from peer(-shift) in one group; shift = 0 (mod size): a device copy on the
  // communication stream.
  ExchangeTicket post_shift(const char* op, int64_t step, const void* send, void* recv, size_t bytes, int shift,
                            CUstream_st* after = nullptr) override;

  void all_gather(const char* op, const void* send, void* recv, size_t bytes_per_rank,
                  CUstream_st* stream = nullptr) override;
  // fp16, bf16, fp32, fp64 sums.
  void reduce_scatter(const char* op, const void* send, void* recv, size_t count, DType dtype,
                      CUstream_st* stream = nullptr) override;

  // ncclCommSplit (plus MPI_Comm_split for the control plane); the child shares this GPU.
  std::unique_ptr<Communicator> split(int color, int key) override;

  // Copy-engine windows (communicator.h for the contract; ce_window.h for when they are used).
  int register_window(void* base, size_t bytes, const char* op = "register_window") override;
  void deregister_window(int id) override;
  const char* exchange_path(const void* send, const void* recv, size_t bytes) const override;
  // Why the last register_window returned -1 ("" when it registered a window). Never throws.
  const std::string& window_refusal() const { return window_refusal_; }

 private:
  struct CeWindow;  // ce_window_impl.h
  // Per exchange slot: the copy-engine exchange it holds (window < 0: an NCCL exchange).
  struct SlotCe {
    int window = -1;
    uint32_t seq = 0;  // the window's sequence number of this exchange
    int source = -1;   // the rank pushing into this rank's window (peer(-shift)); == rank_ for a local copy
  };
  struct FromSplit {};
  NcclCommunicator(FromSplit, MPI_Comm comm, const NcclCommunicator& parent, int color, int key);

  void init_common();                                  // streams, events
  void wait_nccl_ready(const char* op, int64_t step);  // polls ncclCommGetAsyncError until not in progress
  // Polls `event` (and the async error) until complete or the deadline; aborts and throws on failure.
  void wait_event(cudaEvent_t event, const char* op, int64_t step);
  [[noreturn]] void abort_and_throw(const std::string& why, const char* op, int64_t step);
  void order_after(CUstream_st* producer);   // stream_ waits for the work enqueued so far on `producer`
  void order_before(CUstream_st* consumer);  // `consumer` waits for the work enqueued so far on stream_
  // post_exchange / post_shift: grouped send to `send_to` and receive from `recv_from` (a device copy when
  // both are this rank and `self_copy`), ordered after `after`, completion recorded in a slot's event.
  ExchangeTicket post_p2p(const char* op, int64_t step, const void* send, void* recv, size_t bytes, int send_to,
                          int recv_from, bool self_copy, CUstream_st* after);
  size_t take_slot();  // a free exchange slot (grows the slot arrays)
  // Copy-engine path (ce_window.cc): the window holding both [send, +bytes) and [recv, +bytes) at offsets
  // send_off / recv_off, or -1.
  int find_window(const void* send, const void* recv, size_t bytes, size_t* send_off, size_t* recv_off) const;
  ExchangeTicket post_ce(const char* op, int64_t step, int window, size_t send_off, size_t recv_off, size_t bytes,
                         int shift, CUstream_st* after);
  void wait_ce(size_t slot, const char* op, int64_t step, CUstream_st* consumer);
  // After a timeout: writes a value past every pending sequence number into this rank's flags (on the poison
  // stream), so that no stream stays blocked in a wait on them. Never throws.
  void poison_windows() noexcept;
  void release_window(CeWindow& w) noexcept;  // unmaps the peers, frees the flags

  int device_ = -1;
  int local_rank_ = 0;
  ncclComm_t nccl_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;    // recorded on a producer stream, waited by stream_
  cudaEvent_t sync_ = nullptr;     // recorded on stream_ after a collective
  std::vector<cudaEvent_t> done_;  // one per exchange slot
  std::vector<bool> busy_;
  std::vector<SlotCe> slot_ce_;       // one per exchange slot
  std::vector<cudaEvent_t> arrived_;  // one per exchange slot: copy-engine exchange complete (the watch stream)
  cudaStream_t watch_ = nullptr;      // waits for copy-engine arrivals, for the host watchdog
  cudaStream_t poison_ = nullptr;     // releases stuck waits after a timeout
  std::vector<std::unique_ptr<CeWindow>> windows_;  // by id; null once deregistered
  std::string window_refusal_;
};

}  // namespace distattn
