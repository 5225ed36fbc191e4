// BlockSparseAttention (block_sparse_attention.h): configuration checks, the one-time uploads, the named
// factories, and the calls, which validate and then hand one AttnParams with the layout's block list to the
// host engine or the CUDA flash engine.
#include "distattn/sparse/block_sparse_attention.h"

#include <cmath>
#include <utility>

#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/sparse/flash_attention.h"

namespace distattn {

void validate_block_sparse_config(const BlockSparseConfig& c, Device device) {
  DISTATTN_CHECK_ARG(device == Device::kHost || device == Device::kCuda, "device", "must be kHost or kCuda");
  DISTATTN_CHECK_ARG(c.q_heads >= 1, "config.q_heads", "must be >= 1, got ", c.q_heads);
  DISTATTN_CHECK_ARG(c.kv_heads >= 0, "config.kv_heads", "must be >= 0 (0: q_heads), got ", c.kv_heads);
  DISTATTN_CHECK_ARG(c.q_heads % c.resolved_kv_heads() == 0, "config.kv_heads", c.resolved_kv_heads(),
                     " kv heads do not divide ", c.q_heads, " q heads (GQA needs Hq % Hkv == 0)");
  DISTATTN_CHECK_ARG(c.head_dim >= 1, "config.head_dim", "must be >= 1, got ", c.head_dim);
  if (device == Device::kCuda) {
    DISTATTN_CHECK_ARG(flash_supports_head_dim(c.head_dim), "config.head_dim", "head dim ", c.head_dim,
                       " has no CUDA kernel (supported: 64, 128)");
  }
  DISTATTN_CHECK_ARG(c.alibi_slopes.empty() || static_cast<int64_t>(c.alibi_slopes.size()) == c.q_heads,
                     "config.alibi_slopes", "has ", c.alibi_slopes.size(),
                     " slopes, expected 0 (no ALiBi) or Hq = ", c.q_heads);
  for (size_t h = 0; h < c.alibi_slopes.size(); ++h) {
    DISTATTN_CHECK_ARG(std::isfinite(c.alibi_slopes[h]), "config.alibi_slopes", "slope of head ", h, " is ",
                       c.alibi_slopes[h], " (expected finite)");
  }
  DISTATTN_CHECK_ARG(std::isfinite(c.softmax_scale) && c.softmax_scale >= 0.f, "config.softmax_scale", "is ",
                     c.softmax_scale, " (expected finite and >= 0; 0: 1/sqrt(D))");
  if (c.q_pos.num_chunks != 0) c.q_pos.validate("config.q_pos");
  if (c.kv_pos.num_chunks != 0) c.kv_pos.validate("config.kv_pos");
  const int hp = static_cast<int>(c.host_precision);
  DISTATTN_CHECK_ARG(hp >= 0 && hp <= 2, "config.host_precision", "unknown value ", hp);
}

// ------------------------------------------------------------------------------------------------
// Lifetime

BlockSparseAttention::BlockSparseAttention(BlockLayout layout, BlockSparseConfig config, Device device,
                                           cudaStream_t stream)
    : layout_(std::move(layout)), config_(std::move(config)), device_(device) {
  validate_block_sparse_config(config_, device_);
  auto blocks = [](int64_t rows) { return (rows + kLayoutBlock - 1) / kLayoutBlock; };
  if (config_.q_pos.num_chunks != 0) {
    DISTATTN_CHECK_ARG(blocks(config_.q_pos.length()) == layout_.num_q_blocks(), "layout", "has ",
                       layout_.num_q_blocks(), " q blocks but config.q_pos has ", config_.q_pos.length(),
                       " rows (ceil(Sq / ", kLayoutBlock, ") = ", blocks(config_.q_pos.length()), ")");
  }
  if (config_.kv_pos.num_chunks != 0) {
    DISTATTN_CHECK_ARG(blocks(config_.kv_pos.length()) == layout_.num_kv_blocks(), "layout", "has ",
                       layout_.num_kv_blocks(), " kv blocks but config.kv_pos has ", config_.kv_pos.length(),
                       " rows (ceil(Skv / ", kLayoutBlock, ") = ", blocks(config_.kv_pos.length()), ")");
  }
  if (device_ == Device::kCuda) {
    int count = 0;
    DISTATTN_CHECK_ARG(cudaGetDeviceCount(&count) == cudaSuccess && count > 0, "device",
                       "is kCuda but no CUDA device is usable");
    (void)cudaGetLastError();  // clear a sticky "no device" from the probe above, if any
    DISTATTN_CUDA_CHECK(cudaGetDevice(&device_ordinal_));
    // The layout's CSR arrays, once (the view is cached inside the layout; calls never upload again).
    layout_.device_view(stream);
    if (!config_.alibi_slopes.empty()) {
      const size_t bytes = config_.alibi_slopes.size() * sizeof(float);
      DISTATTN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&slopes_device_), bytes));
      const cudaError_t e = cudaMemcpy(slopes_device_, config_.alibi_slopes.data(), bytes, cudaMemcpyHostToDevice);
      if (e != cudaSuccess) release();
      DISTATTN_CUDA_CHECK(e);
    }
  }
}

BlockSparseAttention::~BlockSparseAttention() { release(); }

void BlockSparseAttention::release() noexcept {
  if (slopes_device_ == nullptr) return;
  // Free on the device that owns the buffer; errors ignored (destructor; the runtime may be shutting down).
  int current = -1;
  const bool have_current = cudaGetDevice(&current) == cudaSuccess;
  if (have_current && current != device_ordinal_) (void)cudaSetDevice(device_ordinal_);
  (void)cudaFree(slopes_device_);
  if (have_current && current != device_ordinal_) (void)cudaSetDevice(current);
  slopes_device_ = nullptr;
}

BlockSparseAttention::BlockSparseAttention(BlockSparseAttention&& other) noexcept { *this = std::move(other); }

BlockSparseAttention& BlockSparseAttention::operator=(BlockSparseAttention&& other) noexcept {
  if (this == &other) return *this;
  release();
  layout_ = std::move(other.layout_);
  config_ = std::move(other.config_);
  device_ = other.device_;
  slopes_device_ = other.slopes_device_;
  device_ordinal_ = other.device_ordinal_;
  keys_checked_sq_ = other.keys_checked_sq_;
  keys_checked_skv_ = other.keys_checked_skv_;
  other.slopes_device_ = nullptr;
  other.device_ordinal_ = -1;
  other.keys_checked_sq_ = other.keys_checked_skv_ = -1;
  return *this;
}

// ------------------------------------------------------------------------------------------------
// Factories

namespace {
PositionMap resolved(const PositionMap& m, int64_t rows) {
  return m.num_chunks != 0 ? m : PositionMap::contiguous(0, rows);
}
CausalRestriction restriction(bool causal, const BlockSparseConfig& c, int64_t sq, int64_t skv) {
  return causal ? CausalRestriction::on(resolved(c.q_pos, sq), resolved(c.kv_pos, skv)) : CausalRestriction::none();
}
// Every named factory: the config is validated first (the layout builder reads its positions), then the layout
// `build(config)` returns, then the instance over it (whose constructor validates the rest).
template <typename Build>
BlockSparseAttention make_with_layout(BlockSparseConfig config, Device device, cudaStream_t stream, Build build) {
  validate_block_sparse_config(config, device);
  BlockLayout l = build(config);
  return BlockSparseAttention(std::move(l), std::move(config), device, stream);
}
}  // namespace

BlockSparseAttention BlockSparseAttention::local_window(int64_t sq, int64_t skv, int64_t window, bool causal,
                                                        BlockSparseConfig config, Device device, cudaStream_t stream) {
  return make_with_layout(std::move(config), device, stream, [&](const BlockSparseConfig& c) {
    return BlockLayout::sliding_window(sq, skv, resolved(c.q_pos, sq), resolved(c.kv_pos, skv), window, causal);
  });
}

BlockSparseAttention BlockSparseAttention::block_diagonal(int64_t sq, int64_t skv, int64_t segment, bool causal,
                                                          BlockSparseConfig config, Device device,
                                                          cudaStream_t stream) {
  return make_with_layout(std::move(config), device, stream, [&](const BlockSparseConfig& c) {
    return block_diagonal_layout(sq, skv, segment, restriction(causal, c, sq, skv));
  });
}

BlockSparseAttention BlockSparseAttention::strided(int64_t sq, int64_t skv, int64_t stride_blocks, int64_t local_blocks,
                                                   bool causal, BlockSparseConfig config, Device device,
                                                   cudaStream_t stream) {
  return make_with_layout(std::move(config), device, stream, [&](const BlockSparseConfig& c) {
    return BlockLayout::strided(sq, skv, stride_blocks, local_blocks, restriction(causal, c, sq, skv));
  });
}

BlockSparseAttention BlockSparseAttention::global_tokens(int64_t sq, int64_t skv, int64_t num_global_blocks,
                                                         bool causal, BlockSparseConfig config, Device device,
                                                         cudaStream_t stream) {
  return make_with_layout(std::move(config), device, stream, [&](const BlockSparseConfig& c) {
    return BlockLayout::global_tokens(sq, skv, num_global_blocks, restriction(causal, c, sq, skv));
  });
}

BlockSparseAttention BlockSparseAttention::random(int64_t sq, int64_t skv, int64_t blocks_per_row, uint64_t seed,
                                                  bool causal, BlockSparseConfig config, Device device,
                                                  cudaStream_t stream) {
  return make_with_layout(std::move(config), device, stream, [&](const BlockSparseConfig& c) {
    return BlockLayout::random(sq, skv, blocks_per_row, seed, restriction(causal, c, sq, skv));
  });
}

BlockSparseAttention BlockSparseAttention::bigbird(int64_t sq, int64_t skv, int64_t window_blocks,
                                                   int64_t num_global_blocks, int64_t random_blocks, uint64_t seed,
                                                   bool causal, BlockSparseConfig config, Device device,
                                                   cudaStream_t stream) {
  return make_with_layout(std::move(config), device, stream, [&](const BlockSparseConfig& c) {
    return BlockLayout::bigbird(sq, skv, window_blocks, num_global_blocks, random_blocks, seed,
                                restriction(causal, c, sq, skv));
  });
}

BlockSparseAttention BlockSparseAttention::from_block_mask(int64_t num_q_blocks, int64_t num_kv_blocks,
                                                           const std::vector<uint8_t>& mask, const Mask& band,
                                                           BlockSparseConfig config, Device device,
                                                           cudaStream_t stream) {
  return make_with_layout(std::move(config), device, stream, [&](const BlockSparseConfig&) {
    return BlockLayout::from_block_mask(num_q_blocks, num_kv_blocks, mask, band);
  });
}

// ------------------------------------------------------------------------------------------------
// Calls

PositionMap BlockSparseAttention::q_positions(int64_t sq) const { return resolved(config_.q_pos, sq); }
PositionMap BlockSparseAttention::kv_positions(int64_t skv) const { return resolved(config_.kv_pos, skv); }

void BlockSparseAttention::check_call_geometry(int64_t sq, int64_t skv) const {
  const int64_t nq = (sq + kLayoutBlock - 1) / kLayoutBlock, nk = (skv + kLayoutBlock - 1) / kLayoutBlock;
  DISTATTN_CHECK_ARG(sq >= 1 && skv >= 1 && nq == layout_.num_q_blocks() && nk == layout_.num_kv_blocks(), "layout",
                     "has ", layout_.num_q_blocks(), " x ", layout_.num_kv_blocks(),
                     " blocks, but the call has Sq = ", sq, ", Skv = ", skv, " (ceil(S / ", kLayoutBlock, ") = ", nq,
                     " x ", nk, ")");
  DISTATTN_CHECK_ARG(config_.q_pos.num_chunks == 0 || config_.q_pos.length() == sq, "q", "has ", sq,
                     " rows, but config.q_pos maps ", config_.q_pos.length());
  DISTATTN_CHECK_ARG(config_.kv_pos.num_chunks == 0 || config_.kv_pos.length() == skv, "k", "has ", skv,
                     " rows, but config.kv_pos maps ", config_.kv_pos.length());
}

void BlockSparseAttention::check_rows_have_keys(int64_t sq, int64_t skv) {
  if (!config_.error_if_query_without_key) return;
  if (sq == keys_checked_sq_ && skv == keys_checked_skv_) return;
  const int64_t empty = rows_without_keys(sq, skv);
  DISTATTN_CHECK_ARG(empty == 0, "layout", empty, " of ", sq,
                     " q rows see no key (error_if_query_without_key is set): ", layout_.describe());
  keys_checked_sq_ = sq;
  keys_checked_skv_ = skv;
}

namespace {
// Shape checks against the configuration, before the engine's own validation.
void check_against_config(const TensorView& q, const TensorView& k, const BlockSparseConfig& c) {
  DISTATTN_CHECK_ARG(q.heads() == c.q_heads, "q", "has ", q.heads(), " heads, the configuration ", c.q_heads);
  DISTATTN_CHECK_ARG(q.head_dim() == c.head_dim, "q", "has head dim ", q.head_dim(), ", the configuration ",
                     c.head_dim);
  DISTATTN_CHECK_ARG(k.heads() == c.resolved_kv_heads(), "k", "has ", k.heads(), " heads, the configuration ",
                     c.resolved_kv_heads(), " kv heads");
}

// The engine params of a call of `a` (the forward's, or the backward's fwd part): the call's q, k, v, o and lse, the
// configured positions (contiguous from 0 where unset), the layout's block list `view` as the mask (the mask points
// at it: the caller keeps it alive through the engine call), the configured ALiBi slopes (on CUDA their device copy
// `slopes_device`) and scale.
AttnParams call_params(const BlockSparseAttention& a, const float* slopes_device, const BlockListView& view,
                       const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse) {
  const BlockSparseConfig& c = a.config();
  AttnParams p;
  p.q = q, p.k = k, p.v = v, p.o = o;
  p.lse = lse;
  p.q_pos = resolved(c.q_pos, q.seqlen());
  p.kv_pos = resolved(c.kv_pos, k.seqlen());
  p.mask = a.layout().make_mask(view);
  p.alibi_slopes =
      c.alibi_slopes.empty() ? nullptr : (a.device() == Device::kCuda ? slopes_device : c.alibi_slopes.data());
  p.softmax_scale = c.softmax_scale;
  return p;
}
}  // namespace

void BlockSparseAttention::forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                   float* lse, cudaStream_t stream) {
  check_against_config(q, k, config_);
  check_call_geometry(q.seqlen(), k.seqlen());
  // The view must outlive the engine call (the engine copies what it needs into kernel parameters).
  const BlockListView view = device_ == Device::kCuda ? layout_.device_view() : layout_.host_view();
  const AttnParams p = call_params(*this, slopes_device_, view, q, k, v, o, lse);
  validate_forward(p, device_);
  check_rows_have_keys(q.seqlen(), k.seqlen());
  if (device_ == Device::kCuda) {
    flash_attention_forward(p, stream);  // checks residency / alignment before launching
  } else {
    host_attention_forward(p, config_.host_precision);
  }
}

void BlockSparseAttention::backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                    const float* lse, const TensorView& dout, const TensorView& dq,
                                    const TensorView& dk, const TensorView& dv, cudaStream_t stream) {
  check_against_config(q, k, config_);
  check_call_geometry(q.seqlen(), k.seqlen());
  DISTATTN_CHECK_ARG(lse != nullptr, "lse", "is null; the backward needs the forward's fp32 LSE [B, Hq, Sq]");
  const BlockListView view = device_ == Device::kCuda ? layout_.device_view() : layout_.host_view();
  AttnBwdParams b;
  b.fwd =
      call_params(*this, slopes_device_, view, q, k, v, o, const_cast<float*>(lse));  // lse read only in the backward
  b.dout = dout, b.dq = dq, b.dk = dk, b.dv = dv;
  validate_backward(b, device_);
  check_rows_have_keys(q.seqlen(), k.seqlen());
  if (device_ == Device::kCuda) {
    flash_attention_backward(b, stream);
  } else {
    host_attention_backward(b, config_.host_precision);
  }
}

// ------------------------------------------------------------------------------------------------
// Queries

int64_t BlockSparseAttention::visible_pairs(int64_t sq, int64_t skv) const {
  check_call_geometry(sq, skv);
  return count_visible_pairs(layout_, sq, skv, q_positions(sq), kv_positions(skv));
}

int64_t BlockSparseAttention::rows_without_keys(int64_t sq, int64_t skv) const {
  check_call_geometry(sq, skv);
  return count_rows_without_keys(layout_, sq, skv, q_positions(sq), kv_positions(skv));
}

int64_t BlockSparseAttention::computed_pairs(int64_t sq, int64_t skv) const {
  check_call_geometry(sq, skv);
  return count_computed_pairs(layout_, sq, skv, q_positions(sq), kv_positions(skv));
}

}  // namespace distattn
