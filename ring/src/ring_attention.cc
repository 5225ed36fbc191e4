// RingAttention (ring_attention.h): validation and agreement, and the host-engine executor.
//
// Host executor, forward, rank r of P (Sl = S/P local rows, Nkv = B*Sl*Hkv*D; U = schedule().useful_steps,
// the same on every rank: 0 and the steps with work on some rank; U = 0, 1, .., P-1 for the full ring):
//   kv[0] = own K|V packed [2][B, Sl, Hkv, D] in q's dtype; acc_o = 0 (fp32 [B, Sl, Hq, D]); acc_lse = -inf
//   for each s = U[i]:                             (held: K|V of rank (r - s) mod P)
//     not last: post the jump to u' = U[i+1]: kv[cur] -> rank r + (u' - s), rank r - (u' - s) -> kv[nxt]
//               (the ring hop when u' - s = 1); the rank we receive from held shard r - u' at step s
//     step not empty: engine(accumulate) on kv[cur] with that shard's positions (and its sub-layout)
//     not last: wait; swap cur, nxt
//   o = cast(acc_o); lse = acc_lse
// Steps outside U have no work on any rank, so no K|V travels for them.
//
// Backward: K|V travel the same way (prefetched). The gradient accumulator of the held shard travels
// one exchange behind: at step s this rank computes its contribution into a zeroed fp32 scratch (no
// dependency on the incoming accumulator, so the compute overlaps that exchange), then waits for the
// accumulator of the held shard (from the rank that held it at the previous useful step), adds, and sends
// it on with the same jump as the K|V. At the last useful step L the accumulator this rank holds belongs to
// rank r - L and has every contribution (nobody works after L): it goes straight home, a shift by -L (send
// to r - L, receive this rank's own from r + L). For the full ring L = P-1 and that shift is +1, the plain
// ring hop.
#include "distattn/ring/ring_attention.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "distattn/comm/nccl_communicator.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/core/operand_checks.h"
#include "distattn/positional/rope.h"
#include "distattn/sparse/block_layout.h"
#include "distattn/sparse/flash_attention.h"

namespace distattn {
namespace ring {

namespace {

// Copies a strided [B, S, H, D] view into a packed buffer of the same dtype (raw element bytes).
void pack(const TensorView& t, unsigned char* dst) {
  const size_t es = dtype_size(t.dtype);
  const size_t row = static_cast<size_t>(t.head_dim()) * es;
  const unsigned char* src = static_cast<const unsigned char*>(t.data);
  for (int64_t b = 0; b < t.batch(); ++b)
    for (int64_t s = 0; s < t.seqlen(); ++s)
      for (int64_t h = 0; h < t.heads(); ++h) {
        std::memcpy(dst, src + t.offset(b, s, h, 0) * static_cast<int64_t>(es), row);
        dst += row;
      }
}

// Writes a packed buffer of element type `from` into the (strided) view `to`, converting through double.
void unpack_convert(const void* src, DType from, const TensorView& to) {
  int64_t i = 0;
  for (int64_t b = 0; b < to.batch(); ++b)
    for (int64_t s = 0; s < to.seqlen(); ++s)
      for (int64_t h = 0; h < to.heads(); ++h) {
        const int64_t off = to.offset(b, s, h, 0);
        for (int64_t d = 0; d < to.head_dim(); ++d, ++i)
          store_from_double(to.data, off + d, to.dtype, load_as_double(src, i, from));
      }
}

TensorView packed_view(void* data, DType dtype, int64_t B, int64_t S, int64_t H, int64_t D) {
  return TensorView::packed(data, dtype, Device::kHost, B, S, H, D);
}

// Global sequence length from which the CUDA forward uses the ALiBi cutoff across steps by default. Measured on 2
// H200s (bench/results/2026-11-22_h200x2_d201603_ring_alibi_cutoff): ALiBi forward against no bias -16% at 8K with
// the cutoff (+13% without), but +30% at 4K (+6% without): there the ring is latency-bound (30-40% of the call is
// exposed exchange) and the norm pass before the first send (one read of the local q and k, a memset and a launch)
// delays it; at 4K the cutoff leaves ~71% of the tiles, too few saved to pay for that.
constexpr int64_t kAlibiMergeCutoffMinSeq = 8192;

// Whether the CUDA forward applies the ALiBi cutoff across steps (AttnParams::alibi_merge; ring_cuda.cc, "ALiBi
// cutoff across steps"): ALiBi on, a dense ring (every q row's own key is in the own step; a block layout may leave
// the diagonal out), a Hopper GPU and head dim 128 (the only kernel that uses the norms) and
// DISTATTN_RING_ALIBI_CUTOFF: auto (the default: from kAlibiMergeCutoffMinSeq tokens on), on (any length: tests) or off
// (A/B). Anything else throws naming the variable. Agreed across ranks by the caller (it changes the size of the K|V
// exchange).
bool alibi_merge_cutoff_wanted(const Communicator& comm, const RingConfig& c) {
  enum Mode { kAuto, kOn, kOff };
  const int mode = env_choice("DISTATTN_RING_ALIBI_CUTOFF", {"auto", "on", "off"}, kAuto);
  if (mode == kOff || comm.device() != Device::kCuda || c.alibi_slopes == nullptr || c.block_layout != nullptr ||
      c.head_dim != 128)
    return false;
  if (mode == kAuto && c.seq_len < kAlibiMergeCutoffMinSeq) return false;
  int device = 0, major = 0;
  if (const auto* nccl = dynamic_cast<const NcclCommunicator*>(&comm)) {
    device = nccl->cuda_device();
  } else {
    DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  }
  DISTATTN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major == 9;
}

// A host copy of n floats of a configuration array (ALiBi slopes, RoPE frequencies) for the checks and the fingerprint:
// copied from the device when the ring runs on CUDA (the pointer checked to be device memory first), and every entry
// checked to be finite (the Error names `argument` and "<what> i").
std::vector<float> host_finite_floats(const float* src, size_t n, Device device, const char* argument,
                                      const char* what) {
  std::vector<float> host(n);
  if (device == Device::kCuda) {
    check_device_pointer(src, argument);
    DISTATTN_CUDA_CHECK(cudaMemcpy(host.data(), src, n * sizeof(float), cudaMemcpyDeviceToHost));
  } else {
    host.assign(src, src + n);
  }
  for (size_t i = 0; i < n; ++i)
    DISTATTN_CHECK_ARG(std::isfinite(host[i]), argument, what, " ", i, " is ", host[i], " (expected finite)");
  return host;
}

}  // namespace

RingAttention::RingAttention(Communicator& comm, const RingConfig& config) : comm_(comm), config_(config) {
  const int P = comm.size();
  if (config_.kv_heads <= 0) config_.kv_heads = config_.q_heads;
  // 1. Local validation; the verdict is shared below so every rank throws, not only the bad one.
  comm.agree_on("RingAttention construction", [&] {
    validate_layout(config_.layout, config_.seq_len, P);
    DISTATTN_CHECK_ARG(config_.batch >= 1, "batch", "is ", config_.batch, " (expected >= 1)");
    DISTATTN_CHECK_ARG(config_.q_heads >= 1, "q_heads", "is ", config_.q_heads, " (expected >= 1)");
    DISTATTN_CHECK_ARG(config_.q_heads % config_.kv_heads == 0, "kv_heads", "is ", config_.kv_heads,
                       ", which does not divide q_heads = ", config_.q_heads);
    DISTATTN_CHECK_ARG(config_.head_dim >= 1, "head_dim", "is ", config_.head_dim, " (expected >= 1)");
    DISTATTN_CHECK_ARG(dtype_size(config_.dtype) != 0, "dtype", "is unknown (", static_cast<int>(config_.dtype), ")");
    DISTATTN_CHECK_ARG(config_.mask.blocks == nullptr, "mask.blocks",
                       "the ring takes block sparsity as ONE global layout in RingConfig::block_layout "
                       "(mask holds the causal / window band)");
    if (config_.block_layout != nullptr) {
      validate_block_layout(config_.layout, config_.seq_len, P, *config_.block_layout);
      const Mask& band = config_.block_layout->band();
      DISTATTN_CHECK_ARG(band.causal == config_.mask.causal && band.window == config_.mask.window, "mask", "is causal ",
                         config_.mask.causal, " window ", config_.mask.window,
                         " but the block layout's band (what its partial blocks mean) is causal ", band.causal,
                         " window ", band.window, ": pass mask = block_layout->band()");
    }
    DISTATTN_CHECK_ARG(config_.mask.window >= 0, "mask.window", "is ", config_.mask.window, " (expected >= 0)");
    DISTATTN_CHECK_ARG(std::isfinite(config_.softmax_scale) && config_.softmax_scale >= 0.f, "softmax_scale", "is ",
                       config_.softmax_scale, " (expected finite and >= 0; 0: 1/sqrt(D))");
    DISTATTN_CHECK_ARG(config_.grad_travel == GradTravel::kFloat32 || config_.grad_travel == GradTravel::kBFloat16,
                       "grad_travel", "is ", static_cast<int>(config_.grad_travel), " (expected fp32 or bf16)");
    if (comm.device() == Device::kCuda) {
      DISTATTN_CHECK_ARG(config_.dtype == DType::kBFloat16 || config_.dtype == DType::kFloat16, "dtype", "is ",
                         dtype_name(config_.dtype), "; the CUDA engine takes bf16 or fp16");
      DISTATTN_CHECK_ARG(flash_supports_head_dim(config_.head_dim), "head_dim", "is ", config_.head_dim,
                         ": the CUDA engine has no kernel for it");
    }
    if (config_.alibi_slopes != nullptr) {
      alibi_host_ = host_finite_floats(config_.alibi_slopes, static_cast<size_t>(config_.q_heads), comm.device(),
                                       "alibi_slopes", "slope of head");
    }
    if (config_.rope.inv_freq != nullptr) {
      validate_rope_angles(config_.rope, config_.head_dim, "rope");
      const int64_t rot = config_.rope.rotary_dim == 0 ? config_.head_dim : config_.rope.rotary_dim;
      rope_freq_host_ = host_finite_floats(config_.rope.inv_freq, static_cast<size_t>(rot / 2), comm.device(),
                                           "rope.inv_freq", "entry");
    }
    local_rows_ = config_.seq_len / P;
    // DISTATTN_RING_BWD_OWN=whole (default) | split | heads: the CUDA backward's own step in one part, or in two cut
    // by kv rows or by kv heads (ring_cuda.cc). Read at every construction (tests change it between objects); anything
    // else throws naming it. The choice indices are kOwnWhole, kOwnSplitRows, kOwnSplitHeads.
    bwd_own_split_ = env_choice("DISTATTN_RING_BWD_OWN", {"whole", "split", "heads"}, 0);
    fwd_alibi_merge_ = alibi_merge_cutoff_wanted(comm, config_);
  });

  // 2. Agreement on everything that must be equal across ranks.
  ConfigFingerprint fp;
  fp.add("world_size", P)
      .add("layout", static_cast<int64_t>(config_.layout))
      .add("seq_len", config_.seq_len)
      .add("batch", config_.batch)
      .add("q_heads", config_.q_heads)
      .add("kv_heads", config_.kv_heads)
      .add("head_dim", config_.head_dim)
      .add("dtype", static_cast<int64_t>(config_.dtype))
      .add("mask.causal", config_.mask.causal ? 1 : 0)
      .add("mask.window", config_.mask.window)
      .add("alibi", config_.alibi_slopes != nullptr ? 1 : 0)
      .add_hash("alibi_slopes", alibi_host_.data(), alibi_host_.size() * sizeof(float))
      .add_float("softmax_scale", config_.softmax_scale)
      .add("rope", rope_on() ? 1 : 0)
      .add("rope.rotary_dim", rope_on() ? static_cast<int64_t>(rope_freq_host_.size() * 2) : 0)
      .add("rope.style", rope_on() ? config_.rope.style : 0)
      .add_float("rope.scale", rope_on() ? config_.rope.scale : 1.f)
      .add_hash("rope.inv_freq", rope_freq_host_.data(), rope_freq_host_.size() * sizeof(float))
      .add("grad_travel", static_cast<int64_t>(config_.grad_travel))
      .add("host_precision", static_cast<int64_t>(config_.host_precision))
      .add("DISTATTN_RING_BWD_OWN", bwd_own_split_)
      .add("DISTATTN_RING_ALIBI_CUTOFF", fwd_alibi_merge_ ? 1 : 0);
  // The block layout: presence, size and a hash of its row CSR (listed blocks and their partial flags).
  const BlockLayout* bl = config_.block_layout;
  uint64_t layout_hash = 0;
  if (bl != nullptr) {
    layout_hash = fnv1a64(bl->row_offset().data(), bl->row_offset().size() * sizeof(int32_t));
    layout_hash = fnv1a64(bl->col_index().data(), bl->col_index().size() * sizeof(int32_t), layout_hash);
    layout_hash = fnv1a64(bl->row_partial().data(), bl->row_partial().size(), layout_hash);
  }
  fp.add("block_layout", bl != nullptr ? 1 : 0)
      .add("block_layout.nnz", bl != nullptr ? bl->nnz() : 0)
      .add("block_layout.hash", static_cast<int64_t>(layout_hash));
  comm.check_agreement(fp, "RingAttention construction");

  // 3. The schedule (block-sparse: every step's sub-layout, uploaded once for the CUDA engine). Whatever
  // fails here fails on every rank too.
  comm.agree_on("RingAttention construction (schedule)", [&] {
    if (bl != nullptr) {
      schedule_ = make_schedule(config_.layout, config_.seq_len, P, comm.rank(), *bl);
      if (comm.device() == Device::kCuda) {
        upload_step_layouts();
      }
    } else {
      schedule_ = make_schedule(config_.layout, config_.seq_len, P, comm.rank(), config_.mask);
    }
  });
  config_.block_layout = nullptr;  // read during construction only: the steps hold their own sub-layouts
}

ExchangeTicket RingAttention::post_jump(const char* op, int64_t step, const void* send, void* recv, size_t bytes,
                                        int jump, CUstream_st* after) {
  // A jump of 1 is the ring hop (post_exchange, as the full ring always did); longer ones skip steps that are
  // empty on every rank.
  return jump == 1 ? comm_.post_exchange(op, step, send, recv, bytes, after)
                   : comm_.post_shift(op, step, send, recv, bytes, jump, after);
}

AttnParams RingAttention::step_params(const TensorView& q, const TensorView& k, const TensorView& v,
                                      const RingStep& st) const {
  AttnParams p;
  p.q = q;
  p.k = k;
  p.v = v;
  p.q_pos = schedule_.q_pos;
  p.kv_pos = st.kv_pos;
  p.mask = config_.mask;
  // Block-sparse: the step's sub-layout (host arrays, or the device copy uploaded at construction; empty steps
  // are never computed and have none).
  if (st.blocks != nullptr && !st.skipped()) {
    p.mask = comm_.device() == Device::kCuda ? st.blocks->make_mask(st.device_blocks) : st.blocks->host_mask();
  }
  // The host engine reads the host copy; the CUDA engine the caller's device array.
  p.alibi_slopes =
      comm_.device() == Device::kCuda ? config_.alibi_slopes : (alibi_host_.empty() ? nullptr : alibi_host_.data());
  p.softmax_scale = config_.softmax_scale;
  return p;
}

void RingAttention::forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                            float* lse, CUstream_st* stream) {
  const Device dev = comm_.device();
  // Every rank's shards checked, the verdict shared: a bad shard on one rank is an Error on all.
  comm_.agree_on("RingAttention::forward", [&] {
    check_forward_shards(ShardSpec::of(config_, local_rows_, dev, "S/P rows of the ring configuration"), q, k, v, o,
                         lse);
    AttnParams p = step_params(q, k, v, schedule_.steps[0]);  // strides, aliasing, positions
    p.mask.blocks = nullptr;                                  // the sub-layouts were checked when they were built
    p.o = o;
    p.lse = lse;
    validate_forward(p, dev);
    if (rope_on()) check_rope_in_place(q, k, v, o, /*rotate_k=*/true);  // the ring's RoPE rotates q, k in place
  });
  if (dev == Device::kCuda) {
    forward_cuda(q, k, v, o, lse, stream);  // rotates q, k itself (with the K|V pack and the own step)
  } else {
    if (rope_on()) rope_shards(q, k, TensorView{}, /*inverse=*/false, nullptr);
    forward_host(q, k, v, o, lse);
  }
}

void RingAttention::rope_shards(const TensorView& q, const TensorView& k, const TensorView& k_copy, bool inverse,
                                CUstream_st* stream) const {
  RopeParams rp;
  const PositionMap& q_pos = schedule_.q_pos;
  const PositionMap& k_pos = schedule_.steps[0].kv_pos;  // the own shard: the q rows' positions
  if (q.empty()) {                                       // k alone, in the call's first operand
    rp.q = k;
    rp.q_pos = k_pos;
    rp.q_copy = k_copy;
  } else {
    rp.q = q;
    rp.q_pos = q_pos;
    rp.k = k;
    rp.k_pos = k_pos;
    rp.k_copy = k_copy;
  }
  rp.rotary_dim = config_.rope.rotary_dim;
  rp.style = static_cast<RopeStyle>(config_.rope.style);
  rp.inv_freq = config_.rope.inv_freq;
  rp.scale = config_.rope.scale;
  rp.inverse = inverse;
  if (comm_.device() == Device::kCuda) {
    rope_apply_cuda(rp, stream != nullptr ? stream : cudaStreamLegacy);
  } else {
    rope_apply_host(rp);
  }
}

void RingAttention::forward_host(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                 float* lse) {
  const int64_t B = config_.batch, Sl = local_rows_, Hq = config_.q_heads, Hkv = config_.kv_heads, D = config_.head_dim;
  const size_t es = dtype_size(config_.dtype);
  const int64_t nkv = B * Sl * Hkv * D;  // elements of one of K, V
  const size_t kv_bytes = 2 * static_cast<size_t>(nkv) * es;
  std::vector<unsigned char> kv[2] = {std::vector<unsigned char>(kv_bytes), std::vector<unsigned char>(kv_bytes)};
  pack(k, kv[0].data());
  pack(v, kv[0].data() + nkv * es);

  // fp32 accumulators: O [B, Sl, Hq, D] packed, LSE [B, Hq, Sl] packed.
  std::vector<float> acc_o(static_cast<size_t>(B * Sl * Hq * D), 0.f);
  std::vector<float> acc_lse(static_cast<size_t>(B * Hq * Sl), -std::numeric_limits<float>::infinity());
  const TensorView acc_view = packed_view(acc_o.data(), DType::kFloat32, B, Sl, Hq, D);

  const std::vector<int>& U = schedule_.useful_steps;
  last_forward_ = RingCallStats();
  last_forward_.steps_run = static_cast<int>(U.size());
  int cur = 0;
  for (size_t i = 0; i < U.size(); ++i) {
    const int s = U[i];
    const bool more = i + 1 < U.size();
    ExchangeTicket t;
    if (more) {
      t = post_jump("ring forward K|V exchange", U[i + 1], kv[cur].data(), kv[1 - cur].data(), kv_bytes, U[i + 1] - s,
                    nullptr);
      ++last_forward_.kv_exchanges;
    }
    const RingStep& st = schedule_.steps[static_cast<size_t>(s)];
    if (!st.skipped()) {
      ++last_forward_.computed_steps;
      AttnParams p = step_params(q, packed_view(kv[cur].data(), config_.dtype, B, Sl, Hkv, D),
                                 packed_view(kv[cur].data() + nkv * es, config_.dtype, B, Sl, Hkv, D), st);
      p.o = acc_view;
      p.lse = acc_lse.data();
      p.accumulate = true;
      host_attention_forward(p, config_.host_precision);
    }
    if (more) {
      comm_.wait_exchange(t);
      cur = 1 - cur;
    }
  }
  // Cast once: O in o's dtype; LSE as accumulated.
  unpack_convert(acc_o.data(), DType::kFloat32, o);
  if (lse != nullptr) std::memcpy(lse, acc_lse.data(), acc_lse.size() * sizeof(float));
}

void RingAttention::backward(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                             const TensorView& o, const float* lse, const TensorView& dq, const TensorView& dk,
                             const TensorView& dv, CUstream_st* stream) {
  const Device dev = comm_.device();
  comm_.agree_on("RingAttention::backward", [&] {
    DISTATTN_CHECK_ARG(lse != nullptr, "lse", "is null; the backward needs the forward's LSE [B, Hq, S/P]");
    check_backward_shards(ShardSpec::of(config_, local_rows_, dev, "S/P rows of the ring configuration"), dout, q, k, v,
                          o, lse, dq, dk, dv);
    AttnBwdParams bp;
    bp.fwd = step_params(q, k, v, schedule_.steps[0]);
    bp.fwd.mask.blocks = nullptr;  // the sub-layouts were checked when they were built
    bp.fwd.o = o;
    bp.fwd.lse = const_cast<float*>(lse);
    bp.dout = dout;
    bp.dq = dq;
    bp.dk = dk;
    bp.dv = dv;
    validate_backward(bp, dev);
  });
  if (dev == Device::kCuda) {
    backward_cuda(dout, q, k, v, o, lse, dq, dk, dv, stream);
  } else {
    backward_host(dout, q, k, v, o, lse, dq, dk, dv);
  }
  if (rope_on()) {  // the gradients back to the unrotated frame: one launch, or one per tensor when dtypes differ
    if (dq.dtype == dk.dtype) {
      rope_shards(dq, dk, TensorView{}, /*inverse=*/true, stream);
    } else {
      rope_shards(dq, TensorView{}, TensorView{}, /*inverse=*/true, stream);
      rope_shards(TensorView{}, dk, TensorView{}, /*inverse=*/true, stream);
    }
  }
}

void RingAttention::backward_host(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                                  const TensorView& o, const float* lse, const TensorView& dq, const TensorView& dk,
                                  const TensorView& dv) {
  const int64_t B = config_.batch, Sl = local_rows_, Hq = config_.q_heads, Hkv = config_.kv_heads, D = config_.head_dim;
  const int P = comm_.size();
  const size_t es = dtype_size(config_.dtype);
  const int64_t nkv = B * Sl * Hkv * D;
  const size_t kv_bytes = 2 * static_cast<size_t>(nkv) * es;
  std::vector<unsigned char> kv[2] = {std::vector<unsigned char>(kv_bytes), std::vector<unsigned char>(kv_bytes)};
  pack(k, kv[0].data());
  pack(v, kv[0].data() + nkv * es);

  // delta_i = sum_d dO_id O_id, [B, Hq, Sl] fp32, computed once for all steps.
  std::vector<float> delta(static_cast<size_t>(B * Hq * Sl));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Sl; ++i) {
        double acc = 0;
        const int64_t od = o.offset(b, i, h, 0), dd = dout.offset(b, i, h, 0);
        for (int64_t d = 0; d < D; ++d)
          acc += load_as_double(o.data, od + d, o.dtype) * load_as_double(dout.data, dd + d, dout.dtype);
        delta[static_cast<size_t>((b * Hq + h) * Sl + i)] = static_cast<float>(acc);
      }

  std::vector<float> acc_dq(static_cast<size_t>(B * Sl * Hq * D), 0.f);
  std::vector<float> scratch(2 * static_cast<size_t>(nkv));  // this step's dK | dV, fp32
  const DType gtype = config_.grad_travel == GradTravel::kFloat32 ? DType::kFloat32 : DType::kBFloat16;
  const size_t gbytes = 2 * static_cast<size_t>(nkv) * dtype_size(gtype);
  std::vector<unsigned char> dsend(gbytes), drecv(gbytes);  // travelling dK | dV accumulators

  const std::vector<int>& U = schedule_.useful_steps;
  const int L = schedule_.last_useful_step;
  last_backward_ = RingCallStats();
  last_backward_.steps_run = static_cast<int>(U.size());
  last_backward_.grad_home_shift = ((-L) % P + P) % P;
  int cur = 0;
  ExchangeTicket tg;  // the gradient exchange in flight
  for (size_t i = 0; i < U.size(); ++i) {
    const int s = U[i];
    const bool more = i + 1 < U.size();
    ExchangeTicket tk;
    if (more) {
      tk = post_jump("ring backward K|V exchange", U[i + 1], kv[cur].data(), kv[1 - cur].data(), kv_bytes, U[i + 1] - s,
                     nullptr);
      ++last_backward_.kv_exchanges;
    }
    const RingStep& st = schedule_.steps[static_cast<size_t>(s)];
    if (!st.skipped()) {
      ++last_backward_.computed_steps;
      std::fill(scratch.begin(), scratch.end(), 0.f);
      AttnBwdParams bp;
      bp.fwd = step_params(q, packed_view(kv[cur].data(), config_.dtype, B, Sl, Hkv, D),
                           packed_view(kv[cur].data() + nkv * es, config_.dtype, B, Sl, Hkv, D), st);
      bp.fwd.o = o;
      bp.fwd.lse = const_cast<float*>(lse);
      bp.dout = dout;
      bp.dq = packed_view(acc_dq.data(), DType::kFloat32, B, Sl, Hq, D);
      bp.dk = packed_view(scratch.data(), DType::kFloat32, B, Sl, Hkv, D);
      bp.dv = packed_view(scratch.data() + nkv, DType::kFloat32, B, Sl, Hkv, D);
      bp.accumulate = true;
      bp.delta = delta.data();
      host_attention_backward(bp, config_.host_precision);
    }
    // The held shard's accumulator: from the rank that held this shard at the previous useful step, or zero
    // at step 0.
    if (i > 0) comm_.wait_exchange(tg);
    const int64_t n2 = 2 * nkv;
    for (int64_t e = 0; e < n2; ++e) {
      const double incoming = i > 0 ? load_as_double(drecv.data(), e, gtype) : 0.0;
      const double mine = st.skipped() ? 0.0 : static_cast<double>(scratch[static_cast<size_t>(e)]);
      store_from_double(dsend.data(), e, gtype, incoming + mine);
    }
    // On with the K|V's jump; after the last useful step straight home to rank r - L (complete by then).
    tg = more ? post_jump("ring backward dK|dV exchange", s, dsend.data(), drecv.data(), gbytes, U[i + 1] - s, nullptr)
              : comm_.post_shift("ring backward dK|dV home", s, dsend.data(), drecv.data(), gbytes, -L);
    ++last_backward_.grad_exchanges;
    if (more) {
      comm_.wait_exchange(tk);
      cur = 1 - cur;
    }
  }
  comm_.wait_exchange(tg);  // this rank's own dK | dV, complete
  unpack_convert(drecv.data(), gtype, dk);
  unpack_convert(drecv.data() + nkv * dtype_size(gtype), gtype, dv);
  unpack_convert(acc_dq.data(), DType::kFloat32, dq);
}

}  // namespace ring
}  // namespace distattn
