// LongNet dilated attention on one device (host engine or CUDA engine), forward and backward.
//
// Definition (LongNet, and ../../shared/DESIGN.md "Dilated attention"): a list of patterns (w_i, r_i).
// For pattern i and query head h, every segment [g*w_i, (g+1)*w_i) of the sequence keeps the rows
//     g*w_i + s + r_i*m,   m = 0 .. ceil((w_i - s)/r_i) - 1,   s = h mod r_i,
// and computes dense attention (optionally causal) among the kept rows of that segment only. By default r_i
// must divide w_i (every class keeps w_i/r_i rows); DilatedConfig::ragged_rates lets it not divide (torchscale's
// semantics: the classes of a segment then differ in length by one). A row that
// pattern i does not keep for head h gets nothing from it (O_i = 0, LSE_i = -inf). The patterns are mixed
// by their softmax denominators:
//     O = sum_i alpha_i O_i,   alpha_i = exp(LSE_i - LSE),   LSE = logsumexp_i LSE_i.
// Equivalently: one softmax over the MULTISET union of every pattern's (query, key) pairs; a pair kept by
// two patterns (row 0 of a segment under r = 1 and r = 2, say) counts twice, as in torchscale's mixing.
// A (row, head) that no pattern keeps has O = 0 and LSE = -inf (or is an error, see DilatedConfig).
//
// Causal: on the compacted segment, which equals causal on global positions (positions are monotone).
// ALiBi: bias -slope_h * (pos_q - pos_k) on GLOBAL positions (|.| when not causal).
//
// Tensors (int64 element strides, head dim contiguous, as in core/attn_params.h):
//   q, o, dout, dq [B, S, Hq, D]     k, v, dk, dv [B, S, Hkv, D]   (Hq % Hkv == 0: GQA)
//   lse [B, Hq, S] fp32 packed (written by the forward, read by the backward)
// Host engine: every tensor and lse in host memory, q of any engine dtype (fp64 for references).
// CUDA engine: device memory, bf16/fp16, head dims of flash_supports_head_dim; work is enqueued on `stream`.
//
// How it runs (no gather copies): for each pattern, engine calls on strided views (row stride * r, start row
// g*w + s; heads s, s + r, ... as a view with head stride * r when that is a regular stride of q and kv heads,
// else one call per head) with position maps PositionMap::strided(., r, rows), folded one of two ways:
//   - segments folded: one call per head-offset class s, the S/w segments (and the B batches when the layout
//     allows: B == 1, or batch stride == S * row stride) in the batch dimension, positions counted from the
//     segment start (masks and ALiBi depend only on differences inside a segment);
//   - classes folded: one call per segment (and batch), the classes in the batch dimension (class s starts at
//     row s, head s: batch stride = row stride + head stride; outputs never alias), positions strided(0, r, .)
//     for every class. Only without ALiBi (its slopes differ per class), with Hq == Hkv, and for the classes of
//     equal row and head counts (consecutive runs).
//   The one with more CTAs per call is used (classes when the longest run of foldable classes > the segment batch).
// The patterns ACCUMULATE into one fp32 output [B, S, Hq, D] through the engine's accumulate mode: the running
// LSE is kept in the caller's lse [B, Hq, S] and, per pattern, its kept entries are gathered into the compacted
// layout [B, S/w, Hq, ceil(w/r)] that the pattern's calls can address with row stride 1, then scattered back (a
// pattern's scatter and the next one's gather run as one kernel). Rate-1 patterns address lse itself (their rows
// are consecutive): no compaction; in the forward, so do the patterns of rate r > 1, with LSE row stride r
// (set_strided_lse; AttnParams::lse_row_stride), so that the forward needs no LSE moves at all by default. The
// accumulation starts at lse = -inf (the engine never reads the accumulator of a row whose lse is -inf, so it is not
// cleared); the first accumulating pattern then runs in plain mode into the accumulator, which is the same result. With
// o in q's dtype and a rate-1 pattern (it keeps every row), that pattern runs LAST in the engine's final accumulate
// mode and writes the mixed result straight into o (no cast pass); otherwise a rate-1 pattern runs first in plain mode
// (initialising the accumulator) and the accumulator is cast once into o. Forward head chains (set_head_chains;
// LongNet-like configurations): all of the above runs twice, once for the even and once for the odd q heads, each chain
// on its own stream (a head's rows only ever merge with the same head's rows, so the chains are independent), which
// lets one chain's launches fill the SMs the other's ramps and tails leave idle.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "distattn/core/host_engine.h"  // HostPrecision
#include "distattn/core/tensor.h"

namespace distattn {

struct DilatedPattern {
  int64_t segment = 0;  // w: segment length in rows; must divide the sequence length
  int64_t rate = 1;     // r: dilation rate, 1 <= r <= w; must divide w unless DilatedConfig::ragged_rates
};

struct DilatedConfig {
  std::vector<DilatedPattern> patterns;  // at least one
  bool causal = false;                   // causal inside each (compacted) segment
  float softmax_scale = 0.f;             // 0: 1 / sqrt(D)
  // Opt-in for rates that do not divide their segment (LongNet's own configuration: w = 2048 .. 32768 with
  // r = 1, 2, 4, 6, 12). false: such a rate is an Error naming config.patterns[i].rate. true: torchscale's
  // semantics, class s keeps the rows s, s + r, ... < w of every segment, ceil((w - s) / r) of them (classes
  // differ in length by one). Rates that divide w behave identically either way.
  bool ragged_rates = false;
  std::vector<float> alibi_slopes;          // HOST values, [Hq] or empty for no ALiBi (copied at construction)
  bool error_if_query_without_key = false;  // throw (argument "config.patterns") if some (row, head) is kept by
                                            // no pattern; otherwise such rows get O = 0 and LSE = -inf
  // Host engine only: kFloat64 (the reference) or kRoundIntermediates (the naive same-precision baseline of the
  // GPU tests' 2x rule). Accumulator, partial O and LSE are fp32 in every mode (the engine's contract).
  HostPrecision host_precision = HostPrecision::kFloat64;
};

// Checks the configuration against a sequence length and head count; throws distattn::Error naming the
// argument ("config.patterns", "config.patterns[i].segment", "config.patterns[i].rate",
// "config.alibi_slopes", "config.softmax_scale"). A rate that does not divide its segment is an Error unless
// config.ragged_rates is set. Called by every entry point before anything runs.
void validate_dilated_config(const DilatedConfig& config, int64_t seqlen, int64_t q_heads);

// Owns the configuration and the scratch buffers: fp32 accumulator O [B, S, Hq, D] and one pattern's
// compacted LSE (at most [B, Hq, S + S/w]), and in the backward fp32 dQ, dK, dV and the compacted LSE. Scratch lives on
// `device` (cudaMalloc on CUDA), grows to the largest call and is kept until destruction; the object is not thread-safe
// (one call at a time). On CUDA the destructor synchronises the stream of the last call before freeing.
class DilatedAttention {
 public:
  // Reads the defaults of the switches below from the environment (once per process: DISTATTN_DILATED_SHARE_SMS,
  // _STRIDED_LSE, _CHAIN_LANES "0" / "1", _HEAD_CHAINS a non-negative integer); throws distattn::Error naming the
  // variable when one holds anything else.
  DilatedAttention(DilatedConfig config, Device device);
  ~DilatedAttention();
  DilatedAttention(const DilatedAttention&) = delete;
  DilatedAttention& operator=(const DilatedAttention&) = delete;

  const DilatedConfig& config() const { return config_; }

  // Segments of a pattern go to the engine as the batch of ONE call when the tensors' layout allows it
  // (B == 1, or batch stride == S * row stride) -- see SegmentPlan in dilated_attention.cc; otherwise one
  // call per segment. Both give the same result; false forces the per-segment calls (tests). A folded batch
  // is split into calls of at most `max_batch` segments (0: the engine's limit, 65535 on CUDA; none on host).
  void set_fold_segments(bool fold, int64_t max_batch = 0) {
    fold_segments_ = fold;
    max_fold_batch_ = max_batch;
  }
  // Classes of a pattern go to the engine as the batch of one call per segment when that gives more CTAs
  // (see "How it runs"); false forces the per-class calls (tests: both give the same result).
  void set_fold_classes(bool fold) { fold_classes_ = fold; }
  // CUDA: the calls of one pattern that write disjoint elements (different classes, segments) are spread over up
  // to 4 streams forked from and joined back into the caller's stream (event waits), so one call's tail overlaps
  // the next call. false: every call on the caller's stream. Same results either way.
  void set_concurrent_calls(bool on) { concurrent_calls_ = on; }
  // Forward with o in q's dtype and a rate-1 pattern: that pattern runs LAST in the engine's final accumulate mode
  // (AttnParams::o_final), writing the mixed result straight into o; no fp32 write of it, no cast pass ("How it
  // runs"). false: the previous order (rate-1 first in plain mode, cast at the end; A/B timings, tests). Results
  // differ only by the order of the fp32 merges.
  void set_fused_final(bool on) { fused_final_ = on; }
  // Rate-1 patterns address the caller's lse [B, Hq, S] directly (a rate-1 segment's rows are consecutive, so the
  // engine's row-contiguous LSE fits): no gather into / scatter out of the compacted LSE for them. false: the
  // compacted path for every pattern (A/B timings, tests). Same results either way.
  void set_direct_lse(bool on) { direct_lse_ = on; }
  // Forward: patterns of rate r > 1 address the caller's lse [B, Hq, S] directly as well, with LSE row stride r
  // (AttnParams::lse_row_stride; a class's rows are every r-th row of a segment): no compacted LSE, no gather / scatter
  // kernels between the patterns. false (or DISTATTN_DILATED_STRIDED_LSE=0 in the environment): the compacted path for
  // them (A/B timings, tests). The backward always reads their LSE compacted (its engines take row stride 1). Same
  // results either way.
  void set_strided_lse(bool on) { strided_lse_ = on; }
  // Forward: a pattern's LSE scatter and the next pattern's gather run as one kernel (the gather takes the previous
  // pattern's rows from its compacted LSE). false: separate scatter and gather (A/B timings, tests). Same results.
  void set_fuse_lse_moves(bool on) { fuse_lse_moves_ = on; }
  // CUDA forward: when a pattern's calls all run at once on distinct streams (set_concurrent_calls), each gets a share
  // of the SMs proportional to its work (AttnParams::max_ctas), so they run side by side from their start instead of
  // one after the other. false (or DISTATTN_DILATED_SHARE_SMS=0 in the environment): one CTA per SM each. Same results.
  void set_share_sms(bool on) { share_sms_ = on; }
  // CUDA forward: the even and the odd q heads run as two independent chains of pattern calls on two streams (each
  // chain: its heads' calls of every pattern in order, with their LSE moves), so one chain's launches fill the SMs the
  // other's ramps and tails leave idle. Used where every rate is 1 or even, Hq is even, Hq == Hkv, there is no ALiBi,
  // there are at least two patterns, and B * S <= max_rows (-1: no limit; default kHeadChainsMaxRows); otherwise one
  // chain over all heads. on = false, or DISTATTN_DILATED_HEAD_CHAINS=0 in the environment: one chain ("1": no limit,
  // N > 1: max_rows N, for the default of later objects). The host engine runs the two chains one after the other.
  // Same results either way (the same engine work and merges in the same order per row).
  static constexpr int64_t kHeadChainsMaxRows = -1;
  void set_head_chains(bool on, int64_t max_rows = kHeadChainsMaxRows) { head_chains_max_rows_ = on ? max_rows : 0; }
  // CUDA forward with head chains: inside each chain, a pattern's calls of different classes (lane keys) run on the
  // chain's own side streams at once (up to 4; no SM shares), instead of one after another on the chain's stream.
  // false (or DISTATTN_DILATED_CHAIN_LANES=0 in the environment): one stream per chain. Same results; needs
  // set_concurrent_calls (on by default).
  void set_chain_lanes(bool on) { chain_lanes_ = on; }
  Device device() const { return device_; }
  // Bytes of scratch currently held on the device (fp32 accumulators, partials; grows to the largest call).
  int64_t scratch_bytes() const { return scratch_floats_ * static_cast<int64_t>(sizeof(float)); }

  // o [B, S, Hq, D] (q's dtype or fp32) and lse [B, Hq, S] fp32 packed are written.
  // Everything is validated first; on bad input nothing is written and nothing is launched.
  void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
               cudaStream_t stream = nullptr);

  // o and lse: the forward's outputs. dq, dk, dv (q's dtype or fp32) are overwritten.
  void backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, const float* lse,
                const TensorView& dout, const TensorView& dq, const TensorView& dk, const TensorView& dv,
                cudaStream_t stream = nullptr);

 private:
  float* scratch(int64_t floats);  // at least `floats` fp32 elements on device_
  void validate_tensors(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                        const float* lse) const;
  const float* pattern_slopes(size_t pattern) const;  // slopes permuted by head-offset class, or null
  // Concurrent calls (set_concurrent_calls): fork_lanes records an event on `stream` that the side streams wait
  // for and returns the lanes used (1: everything on `stream`); lane_stream picks a call's stream by its lane
  // key; join_lanes makes `stream` wait for every side lane.
  static constexpr int kMaxLanes = 4;
  // set_index: the lane set (0: the pattern calls of one chain, and the head chains themselves; 1 + hp: the pattern
  // calls inside head chain hp, set_chain_lanes), each with its own side streams and events.
  int fork_lanes(int64_t keys, cudaStream_t stream, int set_index = 0);
  cudaStream_t lane_stream(int64_t key, int lanes, cudaStream_t stream, int set_index = 0) const;
  void join_lanes(int lanes, cudaStream_t stream, int set_index = 0);
  int64_t fold_chunk(int64_t total) const;  // segments per folded call

  DilatedConfig config_;
  Device device_;
  // ALiBi slopes per pattern i, ordered by offset class: [i*Hq + rank of head h in (h mod r, h div r) order].
  std::vector<float> slopes_host_;
  float* slopes_device_ = nullptr;
  float* scratch_ = nullptr;  // device_ memory (host: points into scratch_host_)
  int64_t scratch_floats_ = 0;
  std::vector<float> scratch_host_;
  cudaStream_t last_stream_ = nullptr;
  bool fold_segments_ = true;
  bool fold_classes_ = true;
  bool concurrent_calls_ = true;
  bool fused_final_ = true;
  bool direct_lse_ = true;
  bool fuse_lse_moves_ = true;
  bool share_sms_;                // default: DISTATTN_DILATED_SHARE_SMS (unset or "1": on, "0": off)
  bool strided_lse_;              // default: DISTATTN_DILATED_STRIDED_LSE (unset or "1": on, "0": off)
  bool chain_lanes_;              // default: DISTATTN_DILATED_CHAIN_LANES (unset or "1": on, "0": off)
  int64_t head_chains_max_rows_;  // 0: one chain; -1: head chains; N: head chains where B * S <= N (set_head_chains)
  struct LaneSet {
    std::vector<cudaStream_t> streams;  // side lanes 1 .. kMaxLanes-1 (lane 0 is the forking stream)
    std::vector<cudaEvent_t> events;    // one per side lane (join)
    cudaEvent_t fork = nullptr;
  };
  LaneSet lane_sets_[3];  // 0: one chain's calls and the head chains; 1, 2: inside head chain 0, 1
  int64_t max_fold_batch_ = 0;
};

// One-shot forms (a temporary DilatedAttention; on CUDA they synchronise `stream` before returning).
void dilated_attention_forward(const DilatedConfig& config, const TensorView& q, const TensorView& k,
                               const TensorView& v, const TensorView& o, float* lse, Device device,
                               cudaStream_t stream = nullptr);
void dilated_attention_backward(const DilatedConfig& config, const TensorView& q, const TensorView& k,
                                const TensorView& v, const TensorView& o, const float* lse, const TensorView& dout,
                                const TensorView& dq, const TensorView& dk, const TensorView& dv, Device device,
                                cudaStream_t stream = nullptr);

}  // namespace distattn
