#include "distattn/core/error.h"

#include <atomic>
#include <cstdlib>

namespace distattn {
namespace {

std::atomic<int> g_rank{-2};  // -2: not set and environment not consulted yet

int rank_from_environment() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && *value != '\0') return std::atoi(value);
  }
  return -1;
}

std::string format(const std::string& message, const std::string& argument, const std::string& where, int rank) {
  std::string out = "distattn: ";
  if (!argument.empty()) out += "argument '" + argument + "': ";
  out += message;
  out += " [rank " + (rank >= 0 ? std::to_string(rank) : std::string("?")) + ", " + where + "]";
  return out;
}

}  // namespace

void set_error_rank(int rank) { g_rank.store(rank); }

int error_rank() {
  int rank = g_rank.load();
  if (rank == -2) {
    rank = rank_from_environment();
    g_rank.store(rank);
  }
  return rank;
}

Error::Error(const std::string& message, const std::string& argument, const char* file, int line)
    : std::runtime_error(format(message, argument, std::string(file) + ":" + std::to_string(line), error_rank())),
      message_(message),
      argument_(argument),
      where_(std::string(file) + ":" + std::to_string(line)),
      rank_(error_rank()) {}

}  // namespace distattn
