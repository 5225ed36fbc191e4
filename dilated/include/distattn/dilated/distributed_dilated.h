// LongNet dilated attention over a sequence sharded contiguously across the ranks of a Communicator.
//
// Definition: exactly dilated_attention.h's, on the GLOBAL sequence of S rows (patterns (w_i, r_i), head
// offset s = h mod r_i, causal on the compacted segment == causal on global positions, ALiBi on global
// positions, patterns mixed by their LSEs). Rank p of P holds rows [p*L, (p+1)*L), L = S/P:
//   q, o, dout, dq [B, L, Hq, D]    k, v, dk, dv [B, L, Hkv, D]    lse [B, Hq, L] fp32 packed
// and gets exactly its rows of what DilatedAttention computes on the whole sequence.
//
// How a pattern (w, r) runs:
//   - w <= L (w must divide L): every segment lies inside one shard. The local patterns run together through
//     a single-device DilatedAttention on the local shard (same masks and ALiBi: they depend only on
//     position differences inside a segment).
//   - w > L (L must divide w): a segment spans G = w/L consecutive ranks, the ranks of one sub-communicator
//     (built at construction, one per distinct G: color = rank / G). Rank p is rank j = p mod G of segment
//     g = p / G. For every head-offset class s < min(r, Hq), its kept rows are the local rows
//         l = phi + r*i,   phi = (s - p*L) mod r,   i < n_p = ceil((L - phi) / r)   (0 when phi >= L)
//     (r need not divide L: the phase and the count differ between ranks). With config.dilated.ragged_rates r need
//     not divide w either: class s keeps ceil((w - s)/r) rows of the segment, and phi is taken from the shard's
//     offset inside its segment, phi = (s - (p*L mod w)) mod r. Each rank packs the kept rows of
//     K and V, for only the kv heads the class reads, every class side by side in one row layout
//     [n_max][class][2, B, KH, D] (n_max = ceil(L/r)); ONE all-gather per pattern over the sub-communicator
//     (G * n_max rows); where the counts differ the padding rows are squeezed out; the kept query rows (a
//     strided VIEW of q: no copy) attend to the gathered keys: the compacted segment, key m at global position
//     g*w + s + r*m. Causal: only the keys of ranks 0..j of the segment (later ranks are fully masked), THIS
//     rank's own block included.
//   - Backward: the same gather; the engine writes dK, dV of the gathered keys into fp32 buffers in the gathered
//     layout, ONE reduce-scatter per pattern returns every rank the sum for its own kept rows, added into its
//     fp32 dK, dV; dQ is local. Exact, LSE mixing included (see dilated_attention.cc).
//   Communication per distributed pattern: each rank contributes n_max * 2 * B * sum_s KH_s * D elements (about
//   2*B*L*Hq*D/r when r > 1 -- one kv entry per q head of a class --, 2*B*L*Hkv*D when r = 1) and receives G-1
//   such blocks; the backward repeats that all-gather and adds an fp32 reduce-scatter of the same blocks.
//
// Engines: a Communicator on Device::kHost (MpiCommunicator) runs the host engine (fp64/fp32/...); one on
// Device::kCuda (NcclCommunicator) runs the flash engine on `stream`, bf16/fp16, scratch kept across calls.
//
// Bad input (a pattern the sharding cannot split, ranks that disagree on the configuration, a rank whose
// shard shapes or dtypes are wrong) is a distattn::Error on EVERY rank, naming the rank and the argument,
// before any collective that could wait on a peer.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "distattn/comm/communicator.h"
#include "distattn/core/dtype.h"
#include "distattn/dilated/dilated_attention.h"

namespace distattn {

struct DistributedDilatedConfig {
  DilatedConfig dilated;           // patterns, causal, scale, ALiBi (host values), host precision
  int64_t seq_len = 0;             // GLOBAL sequence length S (P divides it)
  int64_t batch = 1;               // B
  int64_t q_heads = 0;             // Hq
  int64_t kv_heads = 0;            // Hkv (divides Hq); 0: Hq
  int64_t head_dim = 0;            // D
  DType dtype = DType::kBFloat16;  // q, k, v, dout (host engine: also fp32 / fp64)
};

// How pattern i is executed on this sharding (for tests and the benchmark).
struct DilatedPatternPlan {
  bool local = true;     // w <= L: segments inside a shard
  int64_t group = 1;     // G = w / L ranks per segment (1 when local)
  int64_t max_rows = 0;  // n_max = ceil(L / r): kept rows per rank and class, padded
};

class DistributedDilatedAttention {
 public:
  // Collective over `comm` (which must outlive this object): validates the configuration locally (throws
  // naming "seq_len", "batch", "q_heads", "kv_heads", "head_dim", "dtype", "config.patterns[i].segment",
  // ... and the rank), agrees on it across ranks, and splits one sub-communicator per distinct segment
  // group size. Throws on every rank.
  DistributedDilatedAttention(Communicator& comm, const DistributedDilatedConfig& config);
  ~DistributedDilatedAttention();
  DistributedDilatedAttention(const DistributedDilatedAttention&) = delete;
  DistributedDilatedAttention& operator=(const DistributedDilatedAttention&) = delete;

  const DistributedDilatedConfig& config() const { return config_; }
  int64_t local_rows() const { return local_rows_; }  // L = S / P
  const DilatedPatternPlan& plan(size_t pattern) const { return plans_[pattern]; }
  // Bytes of scratch held on the engine's device (accumulators, packed / gathered K|V, fp32 dK|dV buffers, and
  // the local patterns' single-device scratch); grows to the largest call, kept until destruction.
  int64_t scratch_bytes() const;

  // Local shards (see the top of this file): q [B, L, Hq, D], k, v [B, L, Hkv, D] of config.dtype (any strides,
  // head dim contiguous); o [B, L, Hq, D] of config.dtype or fp32 and lse [B, Hq, L] fp32 packed are written.
  // Every rank's inputs are checked and the verdict agreed before any collective. Collective: every rank calls.
  void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
               cudaStream_t stream = nullptr);

  // o and lse: the complete forward's (this rank's shard). dq [B, L, Hq, D], dk, dv [B, L, Hkv, D] of
  // config.dtype or fp32 are overwritten. Collective.
  void backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, const float* lse,
                const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                cudaStream_t stream = nullptr);

 private:
  // Scratch slots (byte buffers on the engine's device, grown on demand, kept until destruction):
  enum Slot { kSend = 0, kGathered, kCompact, kGrad, kGradPadded, kOwnGrad, kSlots };
  float* fscratch(int64_t floats);                    // fp32 accumulators (see distributed_dilated.cc)
  unsigned char* bscratch(Slot slot, size_t bytes);   // one slot, at least `bytes`
  const float* pattern_slopes(size_t pattern) const;  // slopes permuted by offset class, or null
  struct ClassInfo;                                   // one (pattern, head-offset class) on this rank
  struct PatternInfo;                                 // every class of a distributed pattern, and the packed row layout
  ClassInfo class_info(size_t pattern, int64_t s) const;
  PatternInfo pattern_info(size_t pattern) const;
  // Packs every class's kept K|V rows and all-gathers them over the segment's ranks (one collective); returns
  // the gathered rows [G * n_max][class][2, B, KH, D].
  unsigned char* gather_pattern(const PatternInfo& pinfo, const TensorView& k, const TensorView& v,
                                cudaStream_t stream);
  // Class ci's keys in order (the gathered rows themselves, or squeezed when r does not divide L): returns the
  // class's part of key 0 and sets *row_stride (elements between keys).
  unsigned char* class_keys(const ClassInfo& ci, const PatternInfo& pinfo, unsigned char* gathered, int64_t* row_stride,
                            cudaStream_t stream);

  Communicator& comm_;
  DistributedDilatedConfig config_;
  int64_t local_rows_ = 0;
  std::vector<DilatedPatternPlan> plans_;
  std::unique_ptr<DilatedAttention> local_;                  // the local patterns, or null when none
  std::map<int64_t, std::unique_ptr<Communicator>> groups_;  // G -> sub-communicator of a segment's ranks
  std::vector<float> slopes_host_;                           // per pattern, permuted by offset class
  float* slopes_device_ = nullptr;
  float* fscratch_ = nullptr;  // engine device (host: points into fscratch_host_)
  int64_t fscratch_floats_ = 0;
  std::vector<float> fscratch_host_;
  unsigned char* bscratch_[kSlots] = {};
  size_t bscratch_bytes_[kSlots] = {};
  std::vector<unsigned char> bscratch_host_[kSlots];
  cudaStream_t last_stream_ = nullptr;
};

}  // namespace distattn
