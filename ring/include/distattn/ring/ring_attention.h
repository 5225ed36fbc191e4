// RingAttention: exact attention over a sequence sharded across the ranks of a Communicator.
//
// Each rank holds its shard of Q, K, V (shard.h: contiguous, zigzag or striped) as [B, S/P, H, D]
// tensors. K and V travel around the ring packed in ONE buffer, double-buffered on the receive side:
// the exchange of step s+1 is posted before step s's compute. Each step runs the engine in
// ACCUMULATE mode (attn_params.h) on the held K|V with that shard's global positions, so O and LSE
// accumulate in fp32 across steps and are cast once at the end. Steps whose shard pair is fully
// masked are skipped; steps empty on EVERY rank are not even visited: the K|V jump over them (a shift
// exchange), and the ring ends after the last step at which any rank has work (schedule.h: useful_steps,
// last_useful_step; e.g. a causal sliding window over a contiguous layout needs steps 0 and 1 only).
//
// Block-sparse ring: RingConfig::block_layout is ONE global BlockLayout over the whole sequence (S x S in
// 128-row blocks, the same on every rank, e.g. BigBird or strided). Each rank's chunks must be whole blocks
// (contiguous or zigzag with chunk sizes multiples of 128; striped is rejected). At construction every step
// gets its sub-layout (this rank's q rows x the shard held then) in local block indices; steps with none are
// not computed, steps with none on any rank not visited, and the ring ends after the last step with blocks
// anywhere.
//
// Backward: K|V travel again (prefetched one step ahead like the forward) and their gradients travel
// with them: each rank adds its contribution to the dK|dV accumulator of the shard it holds and
// passes it on (with the K|V's jumps), and after the last useful step each accumulator, complete, is sent
// straight home by one shift exchange (for the full ring that is the P-th ring hop). Travel precision is
// fp32 (default) or bf16. dQ accumulates locally in fp32; delta = rowsum(dO * O) is computed once.
// CUDA: the two travelling accumulators (send, receive) are a buffer the object keeps from its first backward until
// it is destroyed (2 * 2 * B * S/P * Hkv * D elements of the travel dtype), registered as a copy-engine window like
// the K|V double buffer.
// GQA: only the Hkv key/value heads travel.
//
// Engines: a Communicator on Device::kHost (MpiCommunicator) runs the host engine (tested under mpirun);
// one on Device::kCuda (NcclCommunicator) runs flash_attention_forward/backward in accumulate mode on
// `stream`, the exchange on the communicator's stream, events between them (ring_cuda.cc).
//
// Bad input (a layout that cannot split seq_len, ranks that disagree on the configuration, a rank
// whose shard shapes or dtypes do not match) becomes a distattn::Error on EVERY rank, naming the rank
// and the argument, before any exchange that could wait on a peer.
#pragma once

#include <cstdint>
#include <vector>

#include "distattn/comm/communicator.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/host_engine.h"
#include "distattn/core/mask.h"
#include "distattn/ring/schedule.h"
#include "distattn/ring/shard.h"

struct CUevent_st;  // cudaEvent_t without the CUDA headers

namespace distattn {

class BlockLayout;  // sparse/block_layout.h

namespace ring {

// Precision of the dK|dV accumulators while they travel.
enum class GradTravel : int { kFloat32 = 0, kBFloat16 = 1 };

struct RingConfig {
  ShardLayout layout = ShardLayout::kZigzag;  // how the sequence is sharded (the same on every rank)
  int64_t seq_len = 0;                        // GLOBAL sequence length S
  int64_t batch = 1;                          // B
  int64_t q_heads = 0;                        // Hq
  int64_t kv_heads = 0;                       // Hkv (Hq % Hkv == 0); 0: Hq
  int64_t head_dim = 0;                       // D
  DType dtype = DType::kBFloat16;             // q, k, v, dout (host engine: also fp32 / fp64)
  Mask mask;                                  // causal / window on GLOBAL positions (blocks: use block_layout)
  // Optional block sparsity: ONE layout over the whole sequence, num_q_blocks = num_kv_blocks = S / 128, rows
  // and columns = global 128-row blocks (positions 0 .. S-1), identical on every rank (agreed by a hash).
  // Its band must equal mask's causal / window (use mask = layout.band()). Read during construction only.
  // Requires layout contiguous or zigzag with every chunk a multiple of 128 rows. (RingAttention::config()
  // shows it as null: the steps keep their own sub-layouts.)
  const BlockLayout* block_layout = nullptr;
  const float* alibi_slopes = nullptr;  // [Hq] fp32 on the communicator's device, or null
  // Optional RoPE (rope.inv_freq null: off). inv_freq [rotary_dim / 2] fp32 on the communicator's device (host memory
  // for the host engine), kept valid while the object lives; rotary_dim, style and scale as RopeAngles says
  // (attn_params.h; make_rope_frequencies gives the values). With it, forward() first rotates this rank's q and k IN
  // PLACE by +theta at their GLOBAL positions (q_positions(): a rank's k rows sit at its q rows' positions) -- so K
  // travels rotated, and q, k hold the rotated values afterwards, which is what backward() must be given -- and
  // backward() returns dq, dk rotated back (gradients with respect to the unrotated q, k). Bit-identical to
  // rope_apply_cuda / rope_apply_host on the shards before forward() and the inverse rotation of dq, dk after
  // backward(). CUDA: the rotation of k also writes the K|V send buffer (k read once), and from 8192 local rows on
  // (Hopper, head dim 128 rotated whole, NeoX pairs, no ALiBi) q is rotated inside the own step's forward launch
  // (flash_attention_forward_rope's fused path). Agreed across ranks at construction (fields and a hash of inv_freq).
  RopeAngles rope;
  float softmax_scale = 0.f;  // 0: 1 / sqrt(D)
  GradTravel grad_travel = GradTravel::kFloat32;
  HostPrecision host_precision = HostPrecision::kFloat64;  // host engine only
  // CUDA: the K|V double buffer is a registered window of the communicator (Communicator::register_window), so
  // its exchanges run on the copy engine where every rank can (one node, peer access; DISTATTN_RING_EXCHANGE=nccl
  // turns it off). false: never register (the NCCL path). Not part of the agreed configuration: registration
  // itself agrees (any rank off -> every rank on NCCL).
  bool copy_engine_exchange = true;

  int64_t resolved_kv_heads() const { return kv_heads > 0 ? kv_heads : q_heads; }
};

// What the last forward / backward call did (introspection: tests, the bench).
struct RingCallStats {
  int steps_run = 0;        // ring steps visited: schedule().useful_steps.size()
  int computed_steps = 0;   // steps with an engine call on this rank
  int kv_exchanges = 0;     // K|V exchanges posted
  int grad_exchanges = 0;   // backward: dK|dV accumulator exchanges posted (the last one sends them home)
  int grad_home_shift = 0;  // backward: the last one's shift, -last_useful_step mod P (1: a plain ring hop)
  // CUDA backward: r > 0 when this rank's own step ran in two parts, kv rows [r, S/P) first and [0, r) after the
  // last remote step (beside the dK|dV home hop); 0 when it ran whole (see ring_cuda.cc, "Own step in two parts").
  int64_t own_split_row = 0;
  // CUDA backward: h > 0 when the own step ran in two parts by kv heads (DISTATTN_RING_BWD_OWN=heads), kv heads [0, h)
  // first and [h, Hkv) after the last remote step; 0 otherwise.
  int64_t own_split_kv_head = 0;
  // CUDA forward: the engine calls skipped the kv tiles below the ALiBi bound across steps (AttnParams::alibi_merge;
  // ring_cuda.cc "ALiBi cutoff across steps"; DISTATTN_RING_ALIBI_CUTOFF).
  bool alibi_merge_cutoff = false;
  // CUDA forward with RingConfig::rope: q was rotated inside the own step's forward launch (the fused path), not in
  // the RoPE launch that rotated k into the send buffer.
  bool rope_q_in_own_step = false;
};

class RingAttention {
 public:
  // Collective over `comm` (which must outlive this object): validates the config locally, then
  // agrees on it across ranks (both bounded by the communicator's timeout). Throws on every rank: names
  // the argument (e.g. "seq_len", "layout", "block_layout", "mask") and the rank(s) it was bad on; a
  // field the ranks disagree on (e.g. "block_layout.hash") names the disagreeing ranks.
  // Block-sparse: builds every step's sub-layout (host; CUDA: uploaded once to the communicator's GPU).
  RingAttention(Communicator& comm, const RingConfig& config);
  // Deregisters and frees the K|V and dK|dV windows (collective like the construction: every rank destroys its
  // object; a broken communicator releases locally). Never throws.
  ~RingAttention();
  RingAttention(const RingAttention&) = delete;
  RingAttention& operator=(const RingAttention&) = delete;

  const RingConfig& config() const { return config_; }
  const RingSchedule& schedule() const { return schedule_; }
  int64_t local_rows() const { return local_rows_; }  // S / P
  const PositionMap& q_positions() const { return schedule_.q_pos; }
  // What the most recent forward / backward on this object did (zeros before the first call). Never throws.
  const RingCallStats& last_forward() const { return last_forward_; }
  const RingCallStats& last_backward() const { return last_backward_; }
  // The path the K|V exchanges of the last CUDA call took: "ce" (copy engine, registered window) or "nccl"; ""
  // before the first CUDA call (and for the host engine). Never throws.
  const char* kv_exchange_path() const { return kv_path_; }

  // AttnParams::persistent_max_rows of the ring's CUDA step calls with step mask `step_mask`: 0 (never the persistent
  // forward: one CTA per unit, SMs free up as units finish) under a causal band, a window or a block list, whose units
  // differ in weight and which the hardware's dispatch balances better than a static schedule (2 H200s, 8K causal:
  // forward 0.82 -> 0.65 ms); 4096 for the full mask (persistent up to 4K local rows in both modes, as before session
  // 9: a persistent step also delays the start of the next hop, and at 8K local rows that cost 1.5-2% at 16K
  // non-causal). Exposed so that timing code that re-issues the ring's engine calls (the bench's compute-only time)
  // schedules them alike. bench/results/2026-11-23_h200x2_s9_ring_persistent has the measurements.
  static int64_t step_persistent_max_rows(const Mask& step_mask) {
    return step_mask.causal || step_mask.window > 0 || step_mask.blocks != nullptr ? 0 : 4096;
  }

  // Local shards: q [B, S/P, Hq, D], k, v [B, S/P, Hkv, D] of config.dtype; o [B, S/P, Hq, D] of
  // config.dtype or fp32; lse [B, Hq, S/P] fp32 packed (may be null). Any strides, head dim contiguous.
  // Rows with no visible key anywhere get O = 0, LSE = -inf. `stream`: CUDA stream (GPU path).
  void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
               CUstream_st* stream = nullptr);

  // o and lse: the complete forward's (this rank's shard). dq [B, S/P, Hq, D], dk, dv [B, S/P, Hkv, D] of
  // config.dtype or fp32, overwritten.
  void backward(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                const TensorView& o, const float* lse, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                CUstream_st* stream = nullptr);

 private:
  AttnParams step_params(const TensorView& q, const TensorView& k, const TensorView& v, const RingStep& st) const;
  void upload_step_layouts();
  // The K|V (or dK|dV) move from one useful step to the next, `jump` steps later: post_exchange when 1,
  // post_shift(jump) otherwise.
  ExchangeTicket post_jump(
      const char* op, int64_t step, const void* send, void* recv, size_t bytes, int jump,
      CUstream_st* after);  // CUDA: every non-empty step's sub-layout to the communicator's GPU (ring_cuda.cc)
  // The executors, after every rank's inputs were checked (ring_attention.cc: host, ring_cuda.cc: CUDA).
  void forward_host(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse);
  void backward_host(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                     const TensorView& o, const float* lse, const TensorView& dq, const TensorView& dk,
                     const TensorView& dv);
  void forward_cuda(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
                    CUstream_st* stream);
  void backward_cuda(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                     const TensorView& o, const float* lse, const TensorView& dq, const TensorView& dk,
                     const TensorView& dv, CUstream_st* stream);

  Communicator& comm_;
  RingConfig config_;
  RingSchedule schedule_;
  int64_t local_rows_ = 0;
  std::vector<float> alibi_host_;      // host copy of the slopes (host engine; the fingerprint hashes it)
  std::vector<float> rope_freq_host_;  // host copy of config.rope.inv_freq (the fingerprint hashes it)
  bool rope_on() const { return config_.rope.inv_freq != nullptr; }
  // RoPE of this rank's shards in place (forward: q and k by +theta; inverse: the gradients dq, dk by -theta) at
  // q_positions(), with config.rope; CUDA on `stream`, host otherwise. k_copy (CUDA, optional): a second output for the
  // rotated k (the K|V send buffer); q empty: k alone.
  void rope_shards(const TensorView& q, const TensorView& k, const TensorView& k_copy, bool inverse,
                   CUstream_st* stream) const;
  RingCallStats last_forward_, last_backward_;
  // CUDA backward: the own step whole or in two parts, cut by kv rows or by kv heads (DISTATTN_RING_BWD_OWN=whole |
  // split | heads; kOwnSplit* below; read and agreed at construction: it changes the size of the home hop, so every
  // rank must make the same choice).
  static constexpr int kOwnWhole = 0, kOwnSplitRows = 1, kOwnSplitHeads = 2;
  int bwd_own_split_ = kOwnWhole;
  // CUDA forward: the ALiBi cutoff across steps (AttnParams::alibi_merge; ring_cuda.cc "ALiBi cutoff"): the norms of
  // k travel with K|V, so the exchange grows by B * Hkv floats and every rank must make the same choice (agreed at
  // construction; DISTATTN_RING_ALIBI_CUTOFF=auto (default) | on | off).
  bool fwd_alibi_merge_ = false;
  // CUDA: the persistent K|V double buffer [2][kv_bytes] (cudaMalloc: IPC-exportable) and its window id (-1: not a
  // window); allocated by the first call, grown when a call needs more (ring_cuda.cc).
  unsigned char* kv_buffer_ = nullptr;
  size_t kv_buffer_bytes_ = 0;
  int kv_window_ = -1;
  // Recorded on the caller's stream after a call's last use of the persistent buffers (K|V and dK|dV).
  CUevent_st* kv_idle_ = nullptr;
  const char* kv_path_ = "";
  unsigned char* kv_double_buffer(size_t kv_bytes);  // collective (registration); returns kv_buffer_
  void release_kv_buffer() noexcept;
  // CUDA backward: the persistent dK|dV travelling accumulators [dsend | drecv] (2 x the travel bytes; cudaMalloc)
  // and their window id (-1: not a window); allocated by the first backward call, grown when a call needs more.
  unsigned char* grad_buffer_ = nullptr;
  size_t grad_buffer_bytes_ = 0;
  int grad_window_ = -1;
  unsigned char* grad_double_buffer(size_t grad_bytes);  // collective (registration); returns grad_buffer_
  void release_grad_buffer() noexcept;
};

}  // namespace ring
}  // namespace distattn
