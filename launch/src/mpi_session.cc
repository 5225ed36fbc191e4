#include "distattn/launch/mpi_session.h"

#include <mpi.h>
#include <unistd.h>

#include "distattn/core/check_libs.h"  // after <mpi.h>: defines DISTATTN_MPI_CHECK
#include "distattn/core/error.h"

namespace distattn {
namespace launch {

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  DISTATTN_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    // FUNNELED: only the main thread calls MPI; the host-engine check threads never do.
    int provided = 0;
    DISTATTN_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    owns_mpi_ = true;
  }
  try {
    // Errors come back as return codes (checked below) instead of aborting the job, so a failure
    // becomes a distattn::Error naming the call and the rank.
    DISTATTN_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    DISTATTN_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    DISTATTN_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
    set_error_rank(rank_);

    // Node-local rank: ranks sharing memory with this one (one node), ordered by world rank.
    DISTATTN_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local_comm_));
    DISTATTN_MPI_CHECK(MPI_Comm_set_errhandler(local_comm_, MPI_ERRORS_RETURN));
    DISTATTN_MPI_CHECK(MPI_Comm_rank(local_comm_, &local_rank_));
    DISTATTN_MPI_CHECK(MPI_Comm_size(local_comm_, &local_size_));

    char name[MPI_MAX_PROCESSOR_NAME] = {0};
    int length = 0;
    DISTATTN_MPI_CHECK(MPI_Get_processor_name(name, &length));
    hostname_.assign(name, static_cast<size_t>(length));
    if (hostname_.empty()) {
      char host[256] = {0};
      if (gethostname(host, sizeof(host) - 1) == 0) hostname_ = host;
    }
  } catch (...) {
    if (local_comm_ != MPI_COMM_NULL) MPI_Comm_free(&local_comm_);
    if (owns_mpi_) MPI_Finalize();
    throw;
  }
}

MpiSession::~MpiSession() {
  // A destructor must not throw: failures here are ignored (the process is ending anyway).
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (local_comm_ != MPI_COMM_NULL) MPI_Comm_free(&local_comm_);
  if (owns_mpi_) MPI_Finalize();
}

}  // namespace launch
}  // namespace distattn
