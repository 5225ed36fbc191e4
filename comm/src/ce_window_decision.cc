// The copy-engine window decision (ce_window.h): plain C++, no CUDA, so host tests run it.
#include <cstdlib>

#include "distattn/comm/ce_window.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"

namespace distattn {
namespace ce {

ExchangeMode parse_exchange_mode(const char* text) {
  return parse_choice("DISTATTN_RING_EXCHANGE", text, {"ce", "nccl"}, 0) == 1 ? ExchangeMode::kNccl
                                                                              : ExchangeMode::kCopyEngine;
}

ExchangeMode exchange_mode_from_env() { return parse_exchange_mode(std::getenv("DISTATTN_RING_EXCHANGE")); }

const char* exchange_mode_name(ExchangeMode mode) { return mode == ExchangeMode::kNccl ? "nccl" : "ce"; }

std::string refusal(const std::vector<RankFacts>& facts, int ranks_on_node) {
  const int n = static_cast<int>(facts.size());
  if (n <= 0) return "no ranks";
  // Every rank computes this on the same gathered facts (and the same node size: the shared split is as large as
  // the communicator on every rank or on none), so every rank reaches the same verdict.
  if (ranks_on_node != n) {
    return detail::make_message("the ", n, " ranks are not on one node (", ranks_on_node, " share this one)");
  }
  for (int r = 0; r < n; ++r) {
    const RankFacts& f = facts[static_cast<size_t>(r)];
    if (!f.wants_ce) return detail::make_message("rank ", r, " asked for the NCCL path (DISTATTN_RING_EXCHANGE=nccl)");
  }
  for (int r = 0; r < n; ++r) {
    const RankFacts& f = facts[static_cast<size_t>(r)];
    if (!f.memops) return detail::make_message("rank ", r, ": the driver's stream memory operations are unavailable");
    if (!f.ipc) {
      return detail::make_message("rank ", r,
                                  ": its window could not be exported over CUDA IPC (cudaMalloc memory is needed)");
    }
    if (!f.peers) return detail::make_message("rank ", r, ": cannot map every peer's window (no peer access)");
  }
  return "";
}

}  // namespace ce
}  // namespace distattn
