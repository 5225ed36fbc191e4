// Thread pool-less parallel loop of the host engine (host_common.h): units are (batch, head) pairs whose
// outputs do not overlap, handed out through an atomic counter.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <thread>
#include <vector>

#include "distattn/core/env.h"
#include "host_common.h"

namespace distattn {
namespace host_detail {

// DISTATTN_HOST_THREADS=N (an integer >= 1): N threads (at most one per unit); unset: the node's cores shared by its
// ranks (below); anything else throws naming the variable. Read at every call (tests change it between calls).
int host_threads() {
  const int64_t n = env_int("DISTATTN_HOST_THREADS", 1, std::numeric_limits<int>::max(), 0);
  if (n >= 1) return static_cast<int>(n);
  int hw = static_cast<int>(std::thread::hardware_concurrency());
  if (hw < 1) hw = 1;
  // Ranks on this node share its cores (CPU ranks under mpirun run the host engine side by side).
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"}) {
    if (const char* env = std::getenv(name)) {
      const int local = std::atoi(env);
      if (local >= 1) return std::max(1, hw / local);
    }
  }
  return hw;
}

void parallel_for(int64_t units, double work, const std::function<void(int64_t)>& body) {
  constexpr double kMinWorkPerThread = 1 << 22;  // ~ a few ms of loops: below it a thread costs more than it saves
  const int64_t threads = std::min<int64_t>(
      {static_cast<int64_t>(host_threads()), units, static_cast<int64_t>(work / kMinWorkPerThread) + 1});
  if (threads <= 1) {
    for (int64_t u = 0; u < units; ++u) body(u);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t u = next.fetch_add(1); u < units; u = next.fetch_add(1)) body(u);
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
}

}  // namespace host_detail
}  // namespace distattn
