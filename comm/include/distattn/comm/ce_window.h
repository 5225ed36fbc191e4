// Copy-engine exchange windows: the pieces of the decision that need no GPU (so host tests can check them).
//
// A registered window (Communicator::register_window) lets the ring's exchanges run as cudaMemcpyAsync into the
// peer's buffer through a CUDA IPC mapping (the copy engine: no SMs, NVLink speed) instead of NCCL's kernels, which
// compete with the attention kernels for SMs. It is used only when EVERY rank of the communicator can:
//   - the switch DISTATTN_RING_EXCHANGE is "ce" (or unset) on every rank ("nccl" forces the NCCL path);
//   - all ranks run on one node (MPI_COMM_TYPE_SHARED split as large as the communicator);
//   - the driver's stream memory operations (cuStreamWaitValue32 / cuStreamWriteValue32) work on its GPU;
//   - its window and its flag array can be exported (cudaIpcGetMemHandle: cudaMalloc memory, not a pool's);
//   - it can map every peer's GPU (cudaDeviceCanAccessPeer, or the same GPU) and open their handles.
// Otherwise every rank falls back to the ordinary path together (the decision is made on gathered facts, the same
// on every rank).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace distattn {
namespace ce {

enum class ExchangeMode : int { kCopyEngine = 0, kNccl = 1 };

// Parses a DISTATTN_RING_EXCHANGE value: null or "" or "ce" -> kCopyEngine; "nccl" -> kNccl. Anything else
// throws distattn::Error naming "DISTATTN_RING_EXCHANGE" and the accepted values.
ExchangeMode parse_exchange_mode(const char* text);
// parse_exchange_mode(getenv("DISTATTN_RING_EXCHANGE")).
ExchangeMode exchange_mode_from_env();
const char* exchange_mode_name(ExchangeMode mode);  // "ce" / "nccl"

// What one rank found out locally; gathered from every rank (fixed-size, trivially copyable: sent as bytes).
struct RankFacts {
  int32_t wants_ce = 0;  // its switch (environment and caller) allows the copy engine
  int32_t memops = 0;    // stream memory operations work on its GPU (entry points found, a write/wait test ran)
  int32_t ipc = 0;       // its window and flag array were exported (cudaIpcGetMemHandle succeeded)
  int32_t peers = 1;     // second round: it mapped every peer's window and flags (1 in the first round)
};

// The reason the copy engine cannot be used, naming the first rank (and what) that prevents it; "" when every
// rank can. `ranks_on_node` is the size of the node-local (MPI_COMM_TYPE_SHARED) split of the communicator; a
// communicator of one rank needs no peer and is accepted (its exchanges are local copies).
std::string refusal(const std::vector<RankFacts>& facts, int ranks_on_node);

// The cyclic 32-bit comparison the driver's CU_STREAM_WAIT_VALUE_GEQ makes: (int32_t)(value - target) >= 0.
// Sequence numbers may wrap; a wait for n is satisfied by any value in [n, n + 2^31).
inline bool seq_reached(uint32_t value, uint32_t target) { return static_cast<int32_t>(value - target) >= 0; }
// The value written into the local flags to release every stream wait stuck on them after a timeout: far enough
// ahead of the last sequence number `seq` to satisfy every pending wait (all <= seq), and within 2^31 of it.
inline uint32_t poison_value(uint32_t seq) { return seq + (1u << 30); }

}  // namespace ce
}  // namespace distattn
