// MpiCommunicator: the Communicator over plain MPI, host memory. The host engine's ring runs on it.
//
// The exchange is MPI_Irecv from prev() + MPI_Isend to next() (posted together, so no ordering
// deadlock), completed by polling MPI_Test against the deadline. Collectives are the nonblocking
// MPI_Iallgather / MPI_Ireduce_scatter_block, polled the same way. Data travels on its own duplicate
// of the MPI communicator (not the control plane), with a per-call tag so a late message from an
// abandoned step can never be mistaken for a later one.
#pragma once

#include <mpi.h>

#include <memory>
#include <vector>

#include "distattn/comm/communicator.h"

namespace distattn {

class MpiCommunicator : public Communicator {
 public:
  // Collective over `comm` (bounded by the deadline). timeout_s <= 0: default_comm_timeout_s().
  explicit MpiCommunicator(MPI_Comm comm, double timeout_s = 0.0);
  ~MpiCommunicator() override;

  Device device() const override { return Device::kHost; }
  const char* backend() const override { return "mpi"; }

  ExchangeTicket post_exchange(const char* op, int64_t step, const void* send, void* recv, size_t bytes,
                               CUstream_st* after = nullptr) override;
  void wait_exchange(ExchangeTicket& ticket, CUstream_st* consumer = nullptr) override;
  ExchangeTicket post_shift(const char* op, int64_t step, const void* send, void* recv, size_t bytes, int shift,
                            CUstream_st* after = nullptr) override;

  void all_gather(const char* op, const void* send, void* recv, size_t bytes_per_rank,
                  CUstream_st* stream = nullptr) override;
  // fp32 and fp64 only (MPI has no bf16/fp16 sum); others throw naming "dtype".
  void reduce_scatter(const char* op, const void* send, void* recv, size_t count, DType dtype,
                      CUstream_st* stream = nullptr) override;

  std::unique_ptr<Communicator> split(int color, int key) override;

 private:
  struct Slot {
    bool busy = false;
    MPI_Request reqs[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};  // [0] receive from prev, [1] send to next
    int recv_from = -1, send_to = -1;                            // the peers (prev / next for post_exchange)
  };
  MPI_Comm data_ = MPI_COMM_NULL;  // data plane (exchanges and collectives)
  std::vector<Slot> slots_;
  int tag_ = 0;  // advances with every exchange: ranks post exchanges in the same order
};

}  // namespace distattn
