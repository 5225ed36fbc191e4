// MpiCommunicator (mpi_communicator.h): nonblocking MPI point-to-point and collectives, bounded waits.
#include "distattn/comm/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cstring>

#include "distattn/core/check_libs.h"  // after <mpi.h>: DISTATTN_MPI_CHECK
#include "distattn/core/error.h"

namespace distattn {

namespace {
// Messages larger than INT_MAX elements need a derived type; exchanges are sent as MPI_BYTE chunks of
// at most this many bytes through a contiguous type instead.
constexpr size_t kChunk = size_t{1} << 30;

// A count + datatype describing `bytes` bytes (a contiguous type of kChunk bytes when large).
struct ByteType {
  MPI_Datatype type = MPI_BYTE;
  int count = 0;
  bool owned = false;
  explicit ByteType(size_t bytes) {
    if (bytes <= static_cast<size_t>(INT_MAX)) {
      count = static_cast<int>(bytes);
      return;
    }
    DISTATTN_CHECK_ARG(bytes % kChunk == 0, "bytes", "is ", bytes, ": messages over 2 GiB must be a multiple of 1 GiB");
    DISTATTN_MPI_CHECK(MPI_Type_contiguous(static_cast<int>(kChunk), MPI_BYTE, &type));
    DISTATTN_MPI_CHECK(MPI_Type_commit(&type));
    owned = true;
    count = static_cast<int>(bytes / kChunk);
  }
  ~ByteType() {
    if (owned) MPI_Type_free(&type);
  }
};
}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, double timeout_s) : Communicator(comm, timeout_s) {
  MPI_Request req = MPI_REQUEST_NULL;
  DISTATTN_MPI_CHECK(MPI_Comm_idup(control_, &data_, &req));
  wait_mpi(&req, 1, "communicator construction (MPI_Comm_idup)", -1, "every rank of the communicator", false);
  DISTATTN_MPI_CHECK(MPI_Comm_set_errhandler(data_, MPI_ERRORS_RETURN));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (Slot& s : slots_) {  // an exchange that was never waited for: drop it (receives cancelled)
    for (int i = 0; i < 2; ++i) {
      if (s.reqs[i] == MPI_REQUEST_NULL) continue;
      if (i == 0) MPI_Cancel(&s.reqs[i]);
      MPI_Request_free(&s.reqs[i]);
    }
  }
  if (data_ != MPI_COMM_NULL) MPI_Comm_free(&data_);
}

ExchangeTicket MpiCommunicator::post_exchange(const char* op, int64_t step, const void* send, void* recv, size_t bytes,
                                              CUstream_st* after) {
  return post_shift(op, step, send, recv, bytes, 1, after);  // to next(), from prev()
}

ExchangeTicket MpiCommunicator::post_shift(const char* op, int64_t step, const void* send, void* recv, size_t bytes,
                                           int shift, CUstream_st* /*after*/) {
  require_healthy(op, step);
  DISTATTN_CHECK_ARG(bytes == 0 || (send != nullptr && recv != nullptr), "send/recv", op, " step ", step,
                     ": null buffer for ", bytes, " bytes");
  DISTATTN_CHECK_ARG(bytes == 0 || send != recv, "recv", op, " step ", step, ": the receive buffer is the send buffer");
  int slot = 0;
  while (slot < static_cast<int>(slots_.size()) && slots_[static_cast<size_t>(slot)].busy) ++slot;
  if (slot == static_cast<int>(slots_.size())) slots_.emplace_back();
  Slot& s = slots_[static_cast<size_t>(slot)];
  s.send_to = peer(shift);
  s.recv_from = peer(-shift);
  // Tags cycle through a range every MPI guarantees (MPI_TAG_UB >= 32767). Every rank posts its
  // exchanges in the same order, so the same tag names the same exchange on both ends.
  const int tag = tag_;
  tag_ = (tag_ + 1) % 32768;
  if (s.send_to != rank_ && bytes > 0) {
    ByteType bt(bytes);
    DISTATTN_MPI_CHECK(MPI_Irecv(recv, bt.count, bt.type, s.recv_from, tag, data_, &s.reqs[0]));
    DISTATTN_MPI_CHECK(MPI_Isend(send, bt.count, bt.type, s.send_to, tag, data_, &s.reqs[1]));
  } else if (bytes > 0) {
    std::memcpy(recv, send, bytes);  // shift 0 (mod size), e.g. a ring of one: this rank sends to itself
  }
  s.busy = true;
  return ExchangeTicket{slot, step, op};
}

void MpiCommunicator::wait_exchange(ExchangeTicket& ticket, CUstream_st* /*consumer*/) {
  DISTATTN_CHECK_ARG(ticket.slot >= 0 && ticket.slot < static_cast<int>(slots_.size()) &&
                         slots_[static_cast<size_t>(ticket.slot)].busy,
                     "ticket", "is not a pending exchange (waited twice, or never posted)");
  Slot& s = slots_[static_cast<size_t>(ticket.slot)];
  s.busy = false;
  ticket.slot = -1;
  require_healthy(ticket.op, ticket.step);
  const bool ring = s.recv_from == prev() && s.send_to == next();
  // Wait for the receive first so a timeout names the rank whose data never came.
  wait_mpi(&s.reqs[0], 1, ticket.op, ticket.step,
           detail::make_message("rank ", s.recv_from, ring ? " (previous in the ring)" : "", " to send"), true);
  wait_mpi(&s.reqs[1], 1, ticket.op, ticket.step,
           detail::make_message("rank ", s.send_to, ring ? " (next in the ring)" : "", " to receive"), true);
}

void MpiCommunicator::all_gather(const char* op, const void* send, void* recv, size_t bytes_per_rank,
                                 CUstream_st* /*stream*/) {
  require_healthy(op, -1);
  DISTATTN_CHECK_ARG(bytes_per_rank <= static_cast<size_t>(INT_MAX), "bytes_per_rank", "is ", bytes_per_rank,
                     ": at most 2^31-1 bytes per rank");
  MPI_Request req = MPI_REQUEST_NULL;
  const int n = static_cast<int>(bytes_per_rank);
  DISTATTN_MPI_CHECK(MPI_Iallgather(send, n, MPI_BYTE, recv, n, MPI_BYTE, data_, &req));
  wait_mpi(&req, 1, op, -1, "every rank to join the all-gather", false);
}

void MpiCommunicator::reduce_scatter(const char* op, const void* send, void* recv, size_t count, DType dtype,
                                     CUstream_st* /*stream*/) {
  require_healthy(op, -1);
  DISTATTN_CHECK_ARG(dtype == DType::kFloat32 || dtype == DType::kFloat64, "dtype", "is ", dtype_name(dtype),
                     ": the MPI reduce-scatter sums fp32 or fp64");
  DISTATTN_CHECK_ARG(count <= static_cast<size_t>(INT_MAX), "count", "is ", count, ": at most 2^31-1 per rank");
  MPI_Request req = MPI_REQUEST_NULL;
  DISTATTN_MPI_CHECK(MPI_Ireduce_scatter_block(
      send, recv, static_cast<int>(count), dtype == DType::kFloat32 ? MPI_FLOAT : MPI_DOUBLE, MPI_SUM, data_, &req));
  wait_mpi(&req, 1, op, -1, "every rank to join the reduce-scatter", false);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  require_healthy("split", -1);
  MPI_Comm sub = MPI_COMM_NULL;
  // MPI has no nonblocking split; it runs on the control plane, which no data operation is using.
  DISTATTN_MPI_CHECK(MPI_Comm_split(control_, color, key, &sub));
  std::unique_ptr<Communicator> child;
  try {
    child.reset(new MpiCommunicator(sub, timeout_s()));
  } catch (...) {
    MPI_Comm_free(&sub);
    throw;
  }
  MPI_Comm_free(&sub);  // the child holds its own duplicates
  return child;
}

}  // namespace distattn
