// distattn_bench: nccl-tests style benchmark of the distattn operations.
//   ./distattn_bench -o dense -b 2K -e 16K -f 2 -c 1
//   mpirun -np 4 ./distattn_bench -o dense --causal -J out.json
#include <mpi.h>

#include <cstdio>
#include <exception>
#include <memory>

#include "distattn/launch/mpi_session.h"
#include "harness.h"

int main(int argc, char** argv) {
  std::unique_ptr<distattn::launch::MpiSession> mpi;
  try {
    mpi = std::make_unique<distattn::launch::MpiSession>(&argc, &argv);
    return distattn::bench::run_bench(*mpi, argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distattn_bench: %s\n", e.what());
    std::fflush(stderr);
    // One rank failing alone would leave the others waiting in a collective: end the whole job.
    if (mpi && mpi->world_size() > 1) MPI_Abort(MPI_COMM_WORLD, 2);
    return 2;
  }
}
