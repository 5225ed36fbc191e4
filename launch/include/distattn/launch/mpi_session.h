// MpiSession: the MPI lifetime of one process, and who this process is.
//
// Construct one at the top of main(). It initialises MPI (MPI_Init_thread, MPI_THREAD_FUNNELED) unless
// someone already did, and finalises it on destruction unless MPI was initialised by someone else or is
// already finalised. A plain `./program` without mpirun works: MPI's singleton init gives a world of one.
// The rank is handed to distattn::set_error_rank so every distattn::Error names it.
#pragma once

#include <mpi.h>

#include <string>

namespace distattn {
namespace launch {

class MpiSession {
 public:
  // argc/argv may be null (MPI accepts that).
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }              // rank in MPI_COMM_WORLD
  int world_size() const { return world_size_; }  // size of MPI_COMM_WORLD
  int local_rank() const { return local_rank_; }  // rank among the processes of this node (shared-memory split)
  int local_size() const { return local_size_; }  // processes on this node
  const std::string& hostname() const { return hostname_; }
  MPI_Comm local_comm() const { return local_comm_; }  // the node-local communicator (freed at destruction)
  bool owns_mpi() const { return owns_mpi_; }          // true: this object initialised MPI and will finalise it

 private:
  bool owns_mpi_ = false;
  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  std::string hostname_;
  MPI_Comm local_comm_ = MPI_COMM_NULL;
};

}  // namespace launch
}  // namespace distattn
