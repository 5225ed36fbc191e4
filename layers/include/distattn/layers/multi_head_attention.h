// MultiHeadAttention: one attention LAYER (projections + RoPE + an attention core), forward and backward,
// on one GPU, on the CPU (host engine), or across the ranks of a Communicator (sequence sharded, weights
// replicated).
//
// Definition. T = B * S_local tokens on this rank, N = (Hq + 2 Hkv) * D:
//
//   x    [B, S_local, E]                                           (this rank's tokens)
//   qkv  = x Wqkv^T + bqkv                 [B, S_local, N]         ONE GEMM; Wqkv [N, E] row-major =
//                                                                  Wq [Hq*D, E] ; Wk [Hkv*D, E] ; Wv [Hkv*D, E]
//   q, k, v = strided views of qkv:  q [B, S_local, Hq, D]  (row stride N, head stride D, column 0)
//                                    k [B, S_local, Hkv, D] (column Hq*D),  v (column (Hq + Hkv)*D)
//   q, k  <- RoPE(q, k) on GLOBAL positions (the core's position map: shard offsets, zigzag chunks), in place
//            (the dense CUDA core inside its forward call, the ring core inside the ring: RingConfig::rope)
//   o    = core(q, k, v)               [B, S_local, Hq, D]         (packed, = [T, Hq*D])
//   y    = o Wo^T + bo                 [B, S_local, E]             Wo [E, Hq*D]
//
// Backward (dy [B, S_local, E] in):
//   dWo  = sum_tokens dy^T o           [E, Hq*D]       dbo = sum_tokens dy          [E]
//   dO   = dy Wo                       [T, Hq*D]
//   dq, dk, dv = core backward (dO, the forward's O and LSE)      written into dqkv [T, N] (the same strided views)
//   dq, dk <- RoPE backward (the conjugate rotation, same positions; the ring core's backward does it itself)
//   dWqkv = sum_tokens dqkv^T x        [N, E]          dbqkv = sum_tokens dqkv      [N]
//   dx   = dqkv Wqkv                   [B, S_local, E]
// Across ranks each rank's weight gradients cover its own tokens only; with all_reduce_weight_grads (default)
// the layer sums them over the communicator (a reduce-scatter followed by an all-gather of one packed fp32/fp64
// buffer), so every rank returns the FULL gradient, as one big GPU would. dx stays local (it is per token).
//
// Cores (MhaConfig::core):
//   kDense    one device's engine (flash_attention_* on CUDA, host_attention_* on CPU) on the local rows;
//             positions: MhaConfig::positions (default 0..S_local-1).
//   kRing     RingAttention over `comm` (ring/ring_attention.h); S = S_local * ranks, layout zigzag /
//             contiguous / striped; positions: the ring's shard map.
//   kDilated  LongNet dilated attention. With a communicator of > 1 ranks and config.dilated_distributed (default):
//             DistributedDilatedAttention (dilated/distributed_dilated.h) over the sequence sharded contiguously,
//             rank p holding global rows [p*S_local, (p+1)*S_local) (each pattern's segment must divide S_local or
//             be a multiple of it); otherwise the single-device DilatedAttention on positions 0..S_local-1.
//   kBlockSparse  BlockSparseAttention (sparse/block_sparse_attention.h) on the layout MhaConfig::sparse_layout
//             builds from (S_local, positions), rebuilt when S_local changes; the layout's band (causal /
//             window) must equal config.mask's.
//
// Precision. CUDA: x, weights, biases, qkv, o, dO, dqkv and dx are config.dtype (bf16 or fp16); every GEMM
// is cublasGemmEx / cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F (fp32 accumulation); weight gradients
// are fp32 (cuBLAS writes them in fp32 straight from the bf16 operands); the core accumulates in fp32 as its
// contract says. Host: plain loops with double accumulation; intermediates stored in config.dtype (fp64 for
// the reference, fp32 as the CPU fallback), weight gradients in fp64 when config.dtype is fp64, else fp32.
//
// Errors: every entry point validates everything (shapes, dtypes, devices, null weights, head counts, the
// communicator) before anything runs and throws distattn::Error naming the argument ("x", "weights.qkv_weight",
// "config.q_heads", ...). Across ranks (kRing) a local validation failure is agreed first, so every rank
// throws instead of one rank waiting on a peer.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "distattn/comm/communicator.h"
#include "distattn/core/host_engine.h"
#include "distattn/core/mask.h"
#include "distattn/core/position_map.h"
#include "distattn/core/tensor.h"
#include "distattn/dilated/dilated_attention.h"
#include "distattn/positional/rope.h"
#include "distattn/ring/ring_attention.h"
#include "distattn/sparse/block_layout.h"
#include "distattn/sparse/block_sparse_attention.h"

namespace distattn {
namespace layers {

enum class AttentionCore : int { kDense = 0, kRing = 1, kDilated = 2, kBlockSparse = 3 };

const char* core_name(AttentionCore core);  // "dense" / "ring" / "dilated" / "sparse"
// "dense" | "ring" | "dilated" | "sparse" (also "block-sparse"); throws distattn::Error naming `argument`.
AttentionCore parse_core(const std::string& text, const std::string& argument);

// A [B, S, C] activation (x, y, dy, dx): row r of batch b at data + b * batch_stride + r * row_stride,
// C contiguous elements. Strides in elements.
struct SequenceView {
  void* data = nullptr;
  DType dtype = DType::kBFloat16;
  Device device = Device::kCuda;
  int64_t batch = 0;         // B
  int64_t seq = 0;           // S_local
  int64_t dim = 0;           // C (E for x, y, dy, dx)
  int64_t batch_stride = 0;  // elements between batches; 0: seq * row stride
  int64_t row_stride = 0;    // elements between rows; 0: dim

  int64_t row_step() const { return row_stride > 0 ? row_stride : dim; }
  int64_t batch_step() const { return batch_stride > 0 ? batch_stride : seq * row_step(); }
  static SequenceView packed(void* data, DType dtype, Device device, int64_t B, int64_t S, int64_t C) {
    SequenceView v;
    v.data = data, v.dtype = dtype, v.device = device, v.batch = B, v.seq = S, v.dim = C;
    return v;
  }
};

// Builds a block layout for the kBlockSparse core from the local length and the rows' global positions
// (e.g. BlockLayout::strided(S, S, 4, 1, CausalRestriction::on(pos, pos))).
using SparseLayoutBuilder = std::function<BlockLayout(int64_t seq, const PositionMap& positions)>;

struct MhaConfig {
  int64_t embed_dim = 0;           // E
  int64_t q_heads = 0;             // Hq
  int64_t kv_heads = 0;            // Hkv (Hq % Hkv == 0); 0: Hq
  int64_t head_dim = 0;            // D (CUDA: a head dim the engine supports, 64 or 128)
  DType dtype = DType::kBFloat16;  // activations, weights, biases (CUDA: bf16 / fp16; host: any)
  bool bias = false;               // projections with biases (bqkv [N], bo [E])

  bool rope = true;        // RoPE on q and k (global positions)
  RopeConfig rope_config;  // its head_dim field is ignored (head_dim above is used)

  AttentionCore core = AttentionCore::kDense;
  Mask mask;                        // causal / window on global positions (blocks: must be null; see kBlockSparse)
  std::vector<float> alibi_slopes;  // HOST values [Hq] or empty (no ALiBi)
  float softmax_scale = 0.f;        // 0: 1 / sqrt(D)

  // kDense / kBlockSparse: global positions of the local rows; num_chunks == 0: 0..S_local-1.
  PositionMap positions;
  // kRing: how the global sequence is sharded (S_local * ranks rows), and the dK|dV travel precision.
  ring::ShardLayout ring_layout = ring::ShardLayout::kZigzag;
  ring::GradTravel ring_grad_travel = ring::GradTravel::kFloat32;
  // kDilated: the (segment, rate) patterns (single device: each segment must divide S_local); mask.causal is
  // the dilated core's causal flag; windows are not supported there.
  std::vector<DilatedPattern> dilated_patterns;
  // kDilated: DilatedConfig::ragged_rates: rates that do not divide their segment keep rows s, s+r, ... < w
  // (LongNet's own configuration: r = 6, 12 on power-of-two segments); false: such a rate is an Error.
  bool dilated_ragged_rates = false;
  // kDilated with a communicator of > 1 ranks: true: sequence parallel (DistributedDilatedAttention over comm);
  // false: data parallel (each rank its own sequences, single-device core, weight gradients all-reduced).
  bool dilated_distributed = true;
  // kBlockSparse: the layout builder (required).
  SparseLayoutBuilder sparse_layout;

  bool all_reduce_weight_grads = true;                     // sum weight grads over comm's ranks in backward()
  HostPrecision host_precision = HostPrecision::kFloat64;  // host engine's attention precision

  int64_t resolved_kv_heads() const { return kv_heads > 0 ? kv_heads : q_heads; }
  int64_t qkv_dim() const { return (q_heads + 2 * resolved_kv_heads()) * head_dim; }  // N
  int64_t attn_dim() const { return q_heads * head_dim; }                             // Hq * D
};

// The layer's parameters, row-major, config.dtype, on the layer's device. The caller owns them.
struct MhaWeights {
  const void* qkv_weight = nullptr;  // [N, E]: rows [0, Hq*D) Wq, [Hq*D, (Hq+Hkv)*D) Wk, then Wv
  const void* qkv_bias = nullptr;    // [N]; required iff config.bias
  const void* out_weight = nullptr;  // [E, Hq*D]
  const void* out_bias = nullptr;    // [E]; required iff config.bias
};

// Gradients of the parameters, same shapes as MhaWeights, dtype MultiHeadAttention::grad_dtype() (fp32; fp64
// for an fp64 host layer), overwritten by backward().
struct MhaGrads {
  void* qkv_weight = nullptr;  // [N, E]
  void* qkv_bias = nullptr;    // [N]; required iff config.bias
  void* out_weight = nullptr;  // [E, Hq*D]
  void* out_bias = nullptr;    // [E]; required iff config.bias
};

// Validates a configuration for `device` (head counts, dims, dtype, core-specific fields, RoPE config).
// Throws distattn::Error naming the field ("config.embed_dim", "config.q_heads", "config.dilated_patterns", ...).
void validate_mha_config(const MhaConfig& config, Device device);

class MultiHeadAttention {
 public:
  // `comm` is required for kRing (and must live as long as the layer); kDilated runs distributed over it (see
  // MhaConfig::dilated_distributed); for every core it carries the weight-gradient all-reduce. Its device must be
  // `device`. The layer owns a cuBLAS handle (CUDA) and its scratch: the saved activations qkv [T, N], o
  // [T, Hq*D], lse [B, Hq, S_local] and the backward's dO and dqkv, grown to the largest call.
  // Throws distattn::Error (validate_mha_config, "comm").
  MultiHeadAttention(MhaConfig config, Device device, Communicator* comm = nullptr);
  ~MultiHeadAttention();
  MultiHeadAttention(const MultiHeadAttention&) = delete;
  MultiHeadAttention& operator=(const MultiHeadAttention&) = delete;

  const MhaConfig& config() const { return config_; }
  Device device() const { return device_; }
  DType grad_dtype() const;

  // x [B, S_local, E] -> y [B, S_local, E] (both config.dtype on the layer's device; y may not overlap x).
  // Saves qkv (rotated), o and lse for backward(). Collective over comm for kRing. CUDA: enqueued on `stream`
  // (the ring synchronises internally as its executor does); host: synchronous.
  void forward(const MhaWeights& weights, const SequenceView& x, const SequenceView& y, cudaStream_t stream = nullptr);

  // After forward() with the same x: dy [B, S_local, E] -> dx [B, S_local, E] and the weight gradients
  // (overwritten; summed over ranks when config.all_reduce_weight_grads and comm has > 1 rank).
  // Throws naming "x" if called without a matching forward(). CUDA: it reads the forward's saved activations, so
  // enqueue it on the forward's stream (or order the two streams). One call at a time per layer (not thread-safe).
  void backward(const MhaWeights& weights, const SequenceView& x, const SequenceView& dy, const SequenceView& dx,
                const MhaGrads& grads, cudaStream_t stream = nullptr);

  // Global positions of the local rows used by the last forward (RoPE and the core's masks).
  const PositionMap& positions() const { return positions_; }

  // The block-sparse core built by the last forward (kBlockSparse), else null: its visible_pairs() gives the
  // attention's useful FLOPs.
  const BlockSparseAttention* block_sparse_core() const;

  // Saved activations of the last forward (for tests): qkv [B, S_local, N] and o [B, S_local, Hq*D]
  // (config.dtype, packed), lse [B, Hq, S_local] fp32. Device memory on CUDA.
  const void* saved_qkv() const;
  const void* saved_o() const;
  const float* saved_lse() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  MhaConfig config_;
  Device device_;
  PositionMap positions_;
};

// FLOPs of one forward of the layer on one rank (2 per multiply-add), the flash-attention convention for
// the core: 2*T*E*N (QKV) + 2*T*Hq*D*E (output) + attention (4*B*S*S_kv*Hq*D, halved when causal, computed by
// the caller). Backward: 2x the projection FLOPs (dX and dW GEMMs) plus 2.5x the attention's.
double mha_projection_flops(int64_t tokens, int64_t embed_dim, int64_t q_heads, int64_t kv_heads, int64_t head_dim);

}  // namespace layers
}  // namespace distattn
