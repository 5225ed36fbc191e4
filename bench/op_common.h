// What the operations of ops/ share, written once: the problem shape read from the common options, the per-size
// seeds, the check's size limit, the options' mask, the leading shape columns and JSON keys (OpBase); the host-engine
// params of a full-sequence attention; the check's comparison of o, lse (, dq, dk, dv) with the host references; the
// dilated patterns of the options; a device copy of a float array.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention_io.h"
#include "bench_op.h"
#include "device_fill.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/mask.h"
#include "distattn/dilated/dilated_attention.h"
#include "host_reference.h"
#include "host_tensors.h"

namespace distattn {
namespace bench {

// The base of the ops: run context, options, shape and size bookkeeping. Not an op by itself (no describe / work /
// run / check).
class OpBase : public BenchOp {
 public:
  // Sizes above --check-max-seq print "skip" (the host references grow as S^2). mha has its own rule.
  bool check_affordable(int64_t seq) const override { return seq <= opt_.check_max_seq; }

 protected:
  // Reads -B, -H, --gqa (kv heads), -d and --dtype; the host engine computes in fp32 whatever --dtype says.
  explicit OpBase(const RunContext& ctx);

  // GPU: throws distattn::Error naming --headdim/-d when the CUDA engine has no kernel for head dim D_ (host: no-op).
  void require_cuda_head_dim() const;
  // The kv heads a check compares (each with its H/Hkv q heads): --check-heads, or when 0 min(Hkv, CPU threads, 8).
  int64_t option_check_kv_heads() const;

  // Starts size `seq` of the sweep: S_ = seq and the next size index (the seeds below depend on it).
  void begin_size(int64_t seq);
  // Seed of the timed inputs at this size: --seed + 16 * size index (ops whose ranks fill different data add a
  // per-rank term).
  uint64_t size_seed() const;
  // Seed of the check's fresh inputs at this size: (--seed ^ salt) + 16 * size index.
  uint64_t check_seed(uint64_t salt = 0x5eedc0ffeeull) const;

  // --causal and --window as the engine's mask.
  Mask mask() const;

  // The table's leading shape columns: "seq B H Hkv D", or with `with_ranks` "seq N B H Hkv D" (widths 8, 3, 4).
  static std::string seq_shape_header(bool with_ranks);
  // One row's cells of those columns; `ranks` < 0: no N column.
  std::string seq_shape_cells(int64_t seq, int ranks) const;
  // JSON row keys, in this order: B, H, Hkv, D, causal, window, alibi, pass, dtype.
  void json_shape(JsonObject& row) const;

  RunContext ctx_;
  const BenchOptions& opt_;
  int64_t B_ = 1, H_ = 1, Hkv_ = 1, D_ = 1;  // batch, q heads, kv heads, head dim
  int64_t S_ = 0;                            // the sweep's current sequence length (begin_size)
  DType dtype_ = DType::kBFloat16;           // element type of the tensors (fp32 on the host engine)
  int size_index_ = -1;                      // index of the current size in the sweep (begin_size)
};

// One cell of the table: a space, then `text` right-aligned in `width` characters (as printf's " %<width>s").
std::string table_cell(int width, const std::string& text);

// Host-engine params of one attention over the whole sequence 0..S-1 (q and kv positions contiguous) on the given
// views: q [B, S, Hq', D], k, v [B, S, Hkv', D], o like q, lse an fp32 array [B, lse_heads, S] (packed); ALiBi slopes
// on the host (empty: none). The references of dense, sparse and ring, and dense's host-engine run.
AttnParams full_sequence_params(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                float* lse, int64_t lse_heads, int64_t S, const Mask& mask,
                                const std::vector<float>& slopes);

// The inputs the host references of a check see: q heads [0, Hc), kv heads [0, Kc) of the full-sequence inputs
// q [B, S, H, D], k, v [B, S, Hkv, D], dout [B, S, H, D] (empty view without a backward). With a RoPE (dense, ring
// --rope) q and k are rotated on the host at positions 0..S-1 in `dtype`, rounded once as the kernel stores them; the
// views q, k then point into q_rot, k_rot (kept here: a move keeps their buffers).
struct ReferenceInputs {
  HostTensor q_rot, k_rot;  // --rope: the rotated heads [B, S, Hc|Kc, D]
  TensorView q, k, v, dout;
};
class BenchRope;
ReferenceInputs reference_inputs(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                                 int64_t Hc, int64_t Kc, const BenchRope* rope, DType dtype);

// The outputs of one checked run, on the host: o [B, rows, H, D], lse [B, H, rows] and, with a backward, dq
// [B, rows, H, D], dk, dv [B, rows, Hkv, D] (empty without). The caller synchronised the stream.
struct HostOutputs {
  HostTensor o, dq, dk, dv;
  std::vector<float> lse;
};
HostOutputs outputs_to_host(const AttentionIo& io, bool grads);

// The check of an attention op: o and lse (and with `grads` dq, dk, dv) of q heads [0, Hc) and kv heads [0, Kc) of
// `got` against `ref` (the same rows, heads [0, Hc) / [0, Kc) only), each through OutputCheck: o and the gradients
// at the ulp of `dtype`, lse (fp32) at 1e-6; with `naive` the naive run's error is the 2x rule's baseline.
CheckResult compare_attention_outputs(const HostOutputs& got, const HostReferences& ref, bool naive, bool grads,
                                      int64_t Hc, int64_t Kc, DType dtype);

// The dilated patterns (w_i, r_i) of --dilated-segments / --dilated-rates, in order (the options checked that the
// lists have equal lengths).
std::vector<DilatedPattern> requested_dilated_patterns(const BenchOptions& opt);

// A device copy of a host float array (cudaMemcpy, synchronous); throws distattn::Error on a CUDA failure.
DeviceBuffer device_copy(const std::vector<float>& host);

}  // namespace bench
}  // namespace distattn
