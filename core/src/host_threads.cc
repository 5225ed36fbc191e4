// Thread pool-less parallel loop of the host engine (host_common.h): units are (batch, head) pairs whose
// outputs do not overlap, handed out through an atomic counter.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>
#include <vector>

#include "host_common.h"

namespace distattn {
namespace host_detail {

int host_threads() {
  if (const char* env = std::getenv("DISTATTN_HOST_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
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
