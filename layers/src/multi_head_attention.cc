// MultiHeadAttention (multi_head_attention.h): validation, the saved activations, RoPE, the core dispatch and
// the weight-gradient all-reduce. The projections are projection_{host,cuda}.cc behind detail::Projector.
#include "distattn/layers/multi_head_attention.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <utility>

#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/dilated/distributed_dilated.h"
#include "distattn/sparse/block_sparse_attention.h"
#include "distattn/sparse/flash_attention.h"
#include "projection.h"

namespace distattn {
namespace layers {

const char* core_name(AttentionCore core) {
  switch (core) {
    case AttentionCore::kDense:
      return "dense";
    case AttentionCore::kRing:
      return "ring";
    case AttentionCore::kDilated:
      return "dilated";
    case AttentionCore::kBlockSparse:
      return "sparse";
  }
  return "unknown";
}

AttentionCore parse_core(const std::string& text, const std::string& argument) {
  if (text == "dense") return AttentionCore::kDense;
  if (text == "ring") return AttentionCore::kRing;
  if (text == "dilated") return AttentionCore::kDilated;
  if (text == "sparse" || text == "block-sparse") return AttentionCore::kBlockSparse;
  DISTATTN_THROW(argument, "unknown attention core '", text, "' (expected dense, ring, dilated or sparse)");
}

double mha_projection_flops(int64_t tokens, int64_t embed_dim, int64_t q_heads, int64_t kv_heads, int64_t head_dim) {
  const double T = static_cast<double>(tokens), E = static_cast<double>(embed_dim);
  const double N = static_cast<double>((q_heads + 2 * kv_heads) * head_dim);
  const double HD = static_cast<double>(q_heads * head_dim);
  return 2.0 * T * E * N + 2.0 * T * HD * E;
}

void validate_mha_config(const MhaConfig& c, Device device) {
  DISTATTN_CHECK_ARG(c.embed_dim >= 1, "config.embed_dim", "is ", c.embed_dim, ": must be >= 1");
  DISTATTN_CHECK_ARG(c.q_heads >= 1, "config.q_heads", "is ", c.q_heads, ": must be >= 1");
  DISTATTN_CHECK_ARG(c.kv_heads >= 0, "config.kv_heads", "is ", c.kv_heads, ": must be >= 0 (0: q_heads)");
  DISTATTN_CHECK_ARG(c.q_heads % c.resolved_kv_heads() == 0, "config.kv_heads", "is ", c.kv_heads,
                     ": must divide config.q_heads (", c.q_heads, ")");
  DISTATTN_CHECK_ARG(c.head_dim >= 1, "config.head_dim", "is ", c.head_dim, ": must be >= 1");
  if (device == Device::kCuda) {
    DISTATTN_CHECK_ARG(c.dtype == DType::kBFloat16 || c.dtype == DType::kFloat16, "config.dtype", "is ",
                       dtype_name(c.dtype), ": the CUDA layer takes bf16 or fp16");
    DISTATTN_CHECK_ARG(flash_supports_head_dim(c.head_dim), "config.head_dim", "is ", c.head_dim,
                       ": the CUDA engine has no kernel for it");
  }
  DISTATTN_CHECK_ARG(c.mask.blocks == nullptr, "config.mask",
                     "must not carry a block list (use core kBlockSparse with config.sparse_layout)");
  DISTATTN_CHECK_ARG(c.mask.window >= 0, "config.mask", "window is ", c.mask.window, ": must be >= 0");
  DISTATTN_CHECK_ARG(c.alibi_slopes.empty() || static_cast<int64_t>(c.alibi_slopes.size()) == c.q_heads,
                     "config.alibi_slopes", "has ", c.alibi_slopes.size(), " values, expected 0 or q_heads (",
                     c.q_heads, ")");
  DISTATTN_CHECK_ARG(c.softmax_scale >= 0.f, "config.softmax_scale", "is ", c.softmax_scale,
                     ": must be >= 0 (0: 1/sqrt(D))");
  if (c.rope) {
    RopeConfig rc = c.rope_config;
    rc.head_dim = c.head_dim;
    try {
      (void)make_rope_frequencies(rc);
    } catch (const Error& e) {  // "config.rotary_dim" there is "config.rope_config.rotary_dim" here
      const std::string field = e.argument().rfind("config.", 0) == 0 ? e.argument().substr(7) : e.argument();
      DISTATTN_THROW("config.rope_config." + field, e.message());
    }
  }
  switch (c.core) {
    case AttentionCore::kDense:
    case AttentionCore::kBlockSparse:
      if (c.positions.num_chunks > 0) c.positions.validate("config.positions");
      if (c.core == AttentionCore::kBlockSparse) {
        DISTATTN_CHECK_ARG(static_cast<bool>(c.sparse_layout), "config.sparse_layout",
                           "is empty: the block-sparse core needs a layout builder");
      }
      break;
    case AttentionCore::kRing:
      DISTATTN_CHECK_ARG(c.ring_layout == ring::ShardLayout::kContiguous ||
                             c.ring_layout == ring::ShardLayout::kZigzag ||
                             c.ring_layout == ring::ShardLayout::kStriped,
                         "config.ring_layout", "unknown shard layout ", static_cast<int>(c.ring_layout));
      break;
    case AttentionCore::kDilated:
      DISTATTN_CHECK_ARG(!c.dilated_patterns.empty(), "config.dilated_patterns", "is empty: at least one pattern");
      DISTATTN_CHECK_ARG(c.mask.window == 0, "config.mask", "window ", c.mask.window,
                         ": the dilated core has no window (its segments bound the span)");
      break;
    default:
      DISTATTN_THROW("config.core", "unknown attention core ", static_cast<int>(c.core));
  }
}

namespace {

// Host or device bytes, grown on demand (device: cudaMalloc; the previous block is freed after the stream of
// its last use is synchronised by the caller).
class Buffer {
 public:
  Buffer() = default;
  ~Buffer() { release(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* ensure(size_t bytes, Device device) {
    if (bytes <= bytes_) return data_;
    release();
    if (device == Device::kCuda) {
      DISTATTN_CUDA_CHECK(cudaMalloc(&data_, bytes));
    } else {
      host_.assign(bytes, 0);
      data_ = host_.data();
    }
    device_ = device;
    bytes_ = bytes;
    return data_;
  }
  void* get() const { return data_; }
  size_t bytes() const { return bytes_; }
  void release() {
    if (device_ == Device::kCuda && data_ != nullptr) cudaFree(data_);  // no throw from here
    host_.clear();
    host_.shrink_to_fit();
    data_ = nullptr;
    bytes_ = 0;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::kHost;
  std::vector<unsigned char> host_;
};

// The dilated core's config (single-device, or the distributed one's `dilated` part) from the layer's: patterns,
// ragged rates, causal, scale, ALiBi slopes (host values), host precision.
DilatedConfig dilated_config_of(const MhaConfig& c) {
  DilatedConfig dc;
  dc.patterns = c.dilated_patterns;
  dc.ragged_rates = c.dilated_ragged_rates;
  dc.causal = c.mask.causal;
  dc.softmax_scale = c.softmax_scale;
  dc.alibi_slopes = c.alibi_slopes;
  dc.host_precision = c.host_precision;
  return dc;
}

// Throws naming `arg` unless `ptr` is device (or managed) memory of the current device.
void require_device_pointer(const void* ptr, const char* arg) {
  cudaPointerAttributes attr{};
  const cudaError_t st = cudaPointerGetAttributes(&attr, ptr);
  if (st != cudaSuccess) (void)cudaGetLastError();
  DISTATTN_CHECK_ARG(st == cudaSuccess && (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged),
                     arg, "is not device memory (the CUDA layer needs its tensors on the GPU)");
}

void check_sequence(const SequenceView& v, const char* arg, const MhaConfig& c, Device device, int64_t batch,
                    int64_t seq) {
  DISTATTN_CHECK_ARG(v.data != nullptr, arg, "is null");
  DISTATTN_CHECK_ARG(v.dtype == c.dtype, arg, "dtype is ", dtype_name(v.dtype), ", expected config.dtype ",
                     dtype_name(c.dtype));
  DISTATTN_CHECK_ARG(v.device == device, arg, "lives on the ", v.device == Device::kCuda ? "GPU" : "host",
                     ", the layer on the ", device == Device::kCuda ? "GPU" : "host");
  DISTATTN_CHECK_ARG(v.dim == c.embed_dim, arg, "has dim ", v.dim, ", expected config.embed_dim ", c.embed_dim);
  DISTATTN_CHECK_ARG(v.batch >= 1 && v.seq >= 1, arg, "has batch ", v.batch, " and seq ", v.seq, ": both must be >= 1");
  if (batch >= 0) {
    DISTATTN_CHECK_ARG(v.batch == batch && v.seq == seq, arg, "is [", v.batch, ", ", v.seq, ", ", v.dim,
                       "], expected [", batch, ", ", seq, ", ", c.embed_dim, "] (the shape of x)");
  }
  DISTATTN_CHECK_ARG(v.row_stride == 0 || v.row_stride >= v.dim, arg, "row stride ", v.row_stride, " < dim ", v.dim);
  DISTATTN_CHECK_ARG(v.batch_stride == 0 || v.batch == 1 || v.batch_stride >= v.seq * v.row_step(), arg,
                     "batch stride ", v.batch_stride, " overlaps its rows (seq * row stride = ", v.seq * v.row_step(),
                     ")");
  if (device == Device::kCuda) require_device_pointer(v.data, arg);
}

// Bytes spanned by an activation view (first element to one past the last).
size_t span_bytes(const SequenceView& v) {
  const int64_t last = (v.batch - 1) * v.batch_step() + (v.seq - 1) * v.row_step() + v.dim;
  return static_cast<size_t>(last) * dtype_size(v.dtype);
}
bool overlap(const SequenceView& a, const SequenceView& b) {
  const char* pa = static_cast<const char*>(a.data);
  const char* pb = static_cast<const char*>(b.data);
  return pa < pb + span_bytes(b) && pb < pa + span_bytes(a);
}

void check_param(const void* p, bool required, const char* arg, Device device) {
  if (required) {
    DISTATTN_CHECK_ARG(p != nullptr, arg, "is null");
    if (device == Device::kCuda) require_device_pointer(p, arg);
  } else {
    DISTATTN_CHECK_ARG(p == nullptr, arg, "is given but config.bias is false");
  }
}

}  // namespace

struct MultiHeadAttention::Impl {
  Communicator* comm = nullptr;
  std::unique_ptr<detail::Projector> proj;
  Buffer qkv, o, lse, dout, dqkv, grad_pack;  // saved activations and backward scratch
  Buffer inv_freq, slopes;                    // device copies (CUDA) of the RoPE frequencies and ALiBi slopes
  RopeFrequencies freqs;
  std::unique_ptr<ring::RingAttention> ring;
  int64_t ring_batch = -1, ring_rows = -1;
  std::unique_ptr<DilatedAttention> dilated;
  std::unique_ptr<DistributedDilatedAttention> dist_dilated;  // kDilated over > 1 ranks (config.dilated_distributed)
  int64_t dilated_batch = -1, dilated_rows = -1;
  std::unique_ptr<BlockSparseAttention> sparse;
  int64_t sparse_rows = -1;
  int64_t saved_batch = -1, saved_rows = -1;  // shape of the last forward (-1: none)
  cudaStream_t last_stream = nullptr;
  bool used_cuda = false;

  // A CUDA call's stream bookkeeping before its scratch is ensured. `grows`: some Buffer of the call is about to
  // grow, which frees its old block while work queued on the last call's stream may still read it, so that stream
  // is waited for first. Then `stream` is the last stream (the destructor waits for it) and the projector's.
  void use_stream(bool grows, cudaStream_t stream) {
    if (grows && used_cuda) {
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(last_stream));
    }
    used_cuda = true;
    last_stream = stream;
    proj->set_stream(stream);
  }

  bool collective() const { return comm != nullptr && comm->size() > 1; }
  // The core itself talks to the other ranks (so a forward / backward is collective).
  bool collective_core(const MhaConfig& c) const {
    return c.core == AttentionCore::kRing ||
           (c.core == AttentionCore::kDilated && c.dilated_distributed && collective());
  }
};

MultiHeadAttention::MultiHeadAttention(MhaConfig config, Device device, Communicator* comm)
    : impl_(new Impl), config_(std::move(config)), device_(device) {
  validate_mha_config(config_, device_);
  if (config_.core == AttentionCore::kRing) {
    DISTATTN_CHECK_ARG(comm != nullptr, "comm", "is null: the ring core needs a communicator");
  }
  if (comm != nullptr) {
    DISTATTN_CHECK_ARG(comm->device() == device_, "comm", "is a ", comm->backend(),
                       " communicator on the wrong device for this layer");
  }
  config_.rope_config.head_dim = config_.head_dim;
  Impl& m = *impl_;
  m.comm = comm;
  if (config_.rope) m.freqs = make_rope_frequencies(config_.rope_config);
  if (device_ == Device::kCuda) {
    m.proj = detail::make_cuda_projector();
    if (config_.rope) {
      void* p = m.inv_freq.ensure(m.freqs.inv_freq.size() * sizeof(float), device_);
      DISTATTN_CUDA_CHECK(
          cudaMemcpy(p, m.freqs.inv_freq.data(), m.freqs.inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice));
    }
    if (!config_.alibi_slopes.empty()) {
      void* p = m.slopes.ensure(config_.alibi_slopes.size() * sizeof(float), device_);
      DISTATTN_CUDA_CHECK(cudaMemcpy(p, config_.alibi_slopes.data(), config_.alibi_slopes.size() * sizeof(float),
                                     cudaMemcpyHostToDevice));
    }
  } else {
    m.proj = detail::make_host_projector(grad_dtype());
  }
  if (config_.core == AttentionCore::kDilated && !m.collective_core(config_)) {
    m.dilated.reset(new DilatedAttention(dilated_config_of(config_), device_));
  }
}

MultiHeadAttention::~MultiHeadAttention() {
  // The scratch may still be in use by work enqueued on the last stream: wait for it before freeing.
  if (impl_ && impl_->used_cuda) (void)cudaStreamSynchronize(impl_->last_stream);
}

DType MultiHeadAttention::grad_dtype() const {
  return config_.dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
}

const BlockSparseAttention* MultiHeadAttention::block_sparse_core() const { return impl_->sparse.get(); }
const void* MultiHeadAttention::saved_qkv() const { return impl_->qkv.get(); }
const void* MultiHeadAttention::saved_o() const { return impl_->o.get(); }
const float* MultiHeadAttention::saved_lse() const { return static_cast<const float*>(impl_->lse.get()); }

namespace {

// Views of q, k, v (or dq, dk, dv) inside a packed [B, S, N] qkv buffer: row stride N, head stride D.
struct QkvViews {
  TensorView q, k, v;
};
QkvViews qkv_views(void* base, const MhaConfig& c, Device device, int64_t B, int64_t S) {
  const int64_t N = c.qkv_dim(), D = c.head_dim, Hq = c.q_heads, Hkv = c.resolved_kv_heads();
  const size_t e = dtype_size(c.dtype);
  auto view = [&](int64_t column, int64_t heads) {
    TensorView t;
    t.data = static_cast<char*>(base) + static_cast<size_t>(column) * e;
    t.dtype = c.dtype;
    t.device = device;
    t.shape = {B, S, heads, D};
    t.stride = {S * N, N, D, 1};
    return t;
  };
  return QkvViews{view(0, Hq), view(Hq * D, Hkv), view((Hq + Hkv) * D, Hkv)};
}

// RoPE in place on the q and k of `t` at positions `pos` (both), with the layer's rotary dims, style and
// frequencies: the forward's rotation, or (inverse) its conjugate, which is the backward of dq and dk. CUDA: the
// frequencies' device copy `device_inv_freq` and `stream`; host: freqs.inv_freq. Throws what rope_apply_* throws.
void apply_rope(const QkvViews& t, const PositionMap& pos, const MhaConfig& c, const RopeFrequencies& freqs,
                const void* device_inv_freq, Device device, cudaStream_t stream, bool inverse) {
  RopeParams rp;
  rp.q = t.q;
  rp.k = t.k;
  rp.q_pos = rp.k_pos = pos;
  rp.rotary_dim = c.rope_config.rotary_dim;
  rp.style = c.rope_config.style;
  rp.scale = freqs.scale;
  rp.inverse = inverse;
  if (device == Device::kCuda) {
    rp.inv_freq = static_cast<const float*>(device_inv_freq);
    rope_apply_cuda(rp, stream);
  } else {
    rp.inv_freq = freqs.inv_freq.data();
    rope_apply_host(rp);
  }
}

}  // namespace

void MultiHeadAttention::forward(const MhaWeights& w, const SequenceView& x, const SequenceView& y,
                                 cudaStream_t stream) {
  Impl& m = *impl_;
  const MhaConfig& c = config_;
  // 1. Validate everything locally; across ranks (ring core) agree before any collective.
  const auto local_checks = [&] {
    check_sequence(x, "x", c, device_, -1, -1);
    check_sequence(y, "y", c, device_, x.batch, x.seq);
    DISTATTN_CHECK_ARG(!overlap(x, y), "y", "overlaps x (the output projection would overwrite the input)");
    check_param(w.qkv_weight, true, "weights.qkv_weight", device_);
    check_param(w.out_weight, true, "weights.out_weight", device_);
    check_param(w.qkv_bias, c.bias, "weights.qkv_bias", device_);
    check_param(w.out_bias, c.bias, "weights.out_bias", device_);
    if ((c.core == AttentionCore::kDense || c.core == AttentionCore::kBlockSparse) && c.positions.num_chunks > 0) {
      c.positions.validate("config.positions", x.seq);
    }
    if (c.core == AttentionCore::kDilated && !m.collective_core(c)) {  // the distributed one checks collectively
      DilatedConfig dc;
      dc.patterns = c.dilated_patterns;
      dc.ragged_rates = c.dilated_ragged_rates;
      validate_dilated_config(dc, x.seq, c.q_heads);
    }
  };
  if (m.collective_core(c)) {
    m.comm->agree_on("MultiHeadAttention::forward", local_checks);
  } else {
    local_checks();
  }

  const int64_t B = x.batch, S = x.seq, N = c.qkv_dim(), HD = c.attn_dim();
  const int64_t Hq = c.q_heads;
  // 2. The core's positions (and the core itself when the shape changed).
  switch (c.core) {
    case AttentionCore::kRing:
      if (!m.ring || m.ring_batch != B || m.ring_rows != S) {
        ring::RingConfig rc;
        rc.layout = c.ring_layout;
        rc.seq_len = S * m.comm->size();
        rc.batch = B;
        rc.q_heads = Hq;
        rc.kv_heads = c.resolved_kv_heads();
        rc.head_dim = c.head_dim;
        rc.dtype = c.dtype;
        rc.mask = c.mask;
        rc.alibi_slopes = c.alibi_slopes.empty() ? nullptr
                                                 : (device_ == Device::kCuda ? static_cast<const float*>(m.slopes.get())
                                                                             : c.alibi_slopes.data());
        rc.softmax_scale = c.softmax_scale;
        if (c.rope) {  // the ring rotates q, k itself (with its K|V pack) and dq, dk back
          rc.rope.inv_freq =
              device_ == Device::kCuda ? static_cast<const float*>(m.inv_freq.get()) : m.freqs.inv_freq.data();
          rc.rope.rotary_dim = c.rope_config.rotary_dim;
          rc.rope.style = static_cast<int>(c.rope_config.style);
          rc.rope.scale = m.freqs.scale;
        }
        rc.grad_travel = c.ring_grad_travel;
        rc.host_precision = c.host_precision;
        m.ring.reset();
        m.ring.reset(new ring::RingAttention(*m.comm, rc));
        m.ring_batch = B;
        m.ring_rows = S;
      }
      positions_ = m.ring->q_positions();
      break;
    case AttentionCore::kDilated:
      if (m.collective_core(c)) {
        // Sequence sharded contiguously: rank p holds global rows [p*S, (p+1)*S) of S * P.
        if (!m.dist_dilated || m.dilated_batch != B || m.dilated_rows != S) {
          DistributedDilatedConfig dc;
          dc.dilated = dilated_config_of(c);
          dc.seq_len = S * m.comm->size();
          dc.batch = B;
          dc.q_heads = Hq;
          dc.kv_heads = c.resolved_kv_heads();
          dc.head_dim = c.head_dim;
          dc.dtype = c.dtype;
          m.dist_dilated.reset();
          m.dist_dilated.reset(new DistributedDilatedAttention(*m.comm, dc));
          m.dilated_batch = B;
          m.dilated_rows = S;
        }
        positions_ = PositionMap::contiguous(static_cast<int64_t>(m.comm->rank()) * S, S);
      } else {
        positions_ = PositionMap::contiguous(0, S);
      }
      break;
    default:
      positions_ = c.positions.num_chunks > 0 ? c.positions : PositionMap::contiguous(0, S);
      if (c.core == AttentionCore::kBlockSparse && m.sparse_rows != S) {
        BlockLayout layout = c.sparse_layout(S, positions_);
        DISTATTN_CHECK_ARG(layout.band().causal == c.mask.causal && layout.band().window == c.mask.window,
                           "config.sparse_layout", "built a layout whose band (causal ", layout.band().causal,
                           ", window ", layout.band().window, ") differs from config.mask (causal ", c.mask.causal,
                           ", window ", c.mask.window, ")");
        BlockSparseConfig sc;
        sc.q_heads = Hq;
        sc.kv_heads = c.resolved_kv_heads();
        sc.head_dim = c.head_dim;
        sc.softmax_scale = c.softmax_scale;
        sc.alibi_slopes = c.alibi_slopes;
        sc.q_pos = sc.kv_pos = positions_;
        sc.host_precision = c.host_precision;
        m.sparse.reset();
        m.sparse.reset(new BlockSparseAttention(std::move(layout), sc, device_, stream));
        m.sparse_rows = S;
      }
      break;
  }

  // 3. Scratch (saved for backward). A grown buffer replaces one the stream may still read: wait first.
  const size_t e = dtype_size(c.dtype);
  const size_t qkv_bytes = static_cast<size_t>(B * S * N) * e, o_bytes = static_cast<size_t>(B * S * HD) * e;
  const size_t lse_bytes = static_cast<size_t>(B * Hq * S) * sizeof(float);
  if (device_ == Device::kCuda) {
    m.use_stream(qkv_bytes > m.qkv.bytes() || o_bytes > m.o.bytes() || lse_bytes > m.lse.bytes(), stream);
  }
  void* qkv = m.qkv.ensure(qkv_bytes, device_);
  void* o = m.o.ensure(o_bytes, device_);
  float* lse = static_cast<float*>(m.lse.ensure(lse_bytes, device_));
  m.saved_batch = -1;  // invalid until this forward completes

  // 4. qkv = x Wqkv^T + b (one GEMM), q|k|v as strided views of it.
  const detail::Mat qkv_mat = detail::packed_mat(qkv, c.dtype, B, S, N);
  m.proj->linear(detail::mat_of(x), w.qkv_weight, c.bias ? w.qkv_bias : nullptr, qkv_mat);
  const QkvViews v = qkv_views(qkv, c, device_, B, S);

  // 5. RoPE on q and k in place, global positions. The dense core on CUDA rotates them inside its forward call
  // (flash_attention_forward_rope: the same bits, the rotation beside the attention where the Hopper kernel applies);
  // the ring core rotates them itself on either engine (RingConfig::rope, set when the ring was made).
  const bool rope_in_core =
      c.rope && ((device_ == Device::kCuda && c.core == AttentionCore::kDense) || c.core == AttentionCore::kRing);
  if (c.rope && !rope_in_core) {
    apply_rope(v, positions_, c, m.freqs, m.inv_freq.get(), device_, stream, /*inverse=*/false);
  }

  // 6. The core: o [B, S, Hq, D] packed, lse [B, Hq, S].
  const TensorView ov = TensorView::packed(o, c.dtype, device_, B, S, Hq, c.head_dim);
  switch (c.core) {
    case AttentionCore::kRing:
      m.ring->forward(v.q, v.k, v.v, ov, lse, stream);
      break;
    case AttentionCore::kDilated:
      if (m.dist_dilated) {
        m.dist_dilated->forward(v.q, v.k, v.v, ov, lse, stream);
      } else {
        m.dilated->forward(v.q, v.k, v.v, ov, lse, stream);
      }
      break;
    case AttentionCore::kBlockSparse:
      m.sparse->forward(v.q, v.k, v.v, ov, lse, stream);
      break;
    default: {
      AttnParams p;
      p.q = v.q, p.k = v.k, p.v = v.v, p.o = ov;
      p.lse = lse;
      p.q_pos = p.kv_pos = positions_;
      p.mask = c.mask;
      p.softmax_scale = c.softmax_scale;
      if (device_ == Device::kCuda) {
        p.alibi_slopes = c.alibi_slopes.empty() ? nullptr : static_cast<const float*>(m.slopes.get());
        if (rope_in_core) {
          RopeAngles angles;
          angles.inv_freq = static_cast<const float*>(m.inv_freq.get());
          angles.rotary_dim = c.rope_config.rotary_dim;
          angles.style = static_cast<int>(c.rope_config.style);
          angles.scale = m.freqs.scale;
          flash_attention_forward_rope(p, angles, stream);
        } else {
          flash_attention_forward(p, stream);
        }
      } else {
        p.alibi_slopes = c.alibi_slopes.empty() ? nullptr : c.alibi_slopes.data();
        host_attention_forward(p, c.host_precision);
      }
      break;
    }
  }

  // 7. y = o Wo^T + bo.
  m.proj->linear(detail::packed_mat(o, c.dtype, B, S, HD), w.out_weight, c.bias ? w.out_bias : nullptr,
                 detail::mat_of(y));
  m.saved_batch = B;
  m.saved_rows = S;
}

void MultiHeadAttention::backward(const MhaWeights& w, const SequenceView& x, const SequenceView& dy,
                                  const SequenceView& dx, const MhaGrads& g, cudaStream_t stream) {
  Impl& m = *impl_;
  const MhaConfig& c = config_;
  const bool reduce = c.all_reduce_weight_grads && m.collective();
  const auto local_checks = [&] {
    DISTATTN_CHECK_ARG(m.saved_batch >= 1, "x", "backward() needs a completed forward() first");
    check_sequence(x, "x", c, device_, -1, -1);
    DISTATTN_CHECK_ARG(x.batch == m.saved_batch && x.seq == m.saved_rows, "x", "is [", x.batch, ", ", x.seq,
                       ", ..], the last forward() saw [", m.saved_batch, ", ", m.saved_rows, ", ..]");
    check_sequence(dy, "dy", c, device_, x.batch, x.seq);
    check_sequence(dx, "dx", c, device_, x.batch, x.seq);
    check_param(w.qkv_weight, true, "weights.qkv_weight", device_);
    check_param(w.out_weight, true, "weights.out_weight", device_);
    check_param(w.qkv_bias, c.bias, "weights.qkv_bias", device_);
    check_param(w.out_bias, c.bias, "weights.out_bias", device_);
    check_param(g.qkv_weight, true, "grads.qkv_weight", device_);
    check_param(g.out_weight, true, "grads.out_weight", device_);
    check_param(g.qkv_bias, c.bias, "grads.qkv_bias", device_);
    check_param(g.out_bias, c.bias, "grads.out_bias", device_);
  };
  // Across ranks (a collective core, or the weight-gradient all-reduce) every rank learns every rank's verdict.
  if ((m.collective_core(c) || reduce) && m.collective()) {
    m.comm->agree_on("MultiHeadAttention::backward", local_checks);
  } else {
    local_checks();
  }

  const int64_t B = x.batch, S = x.seq, N = c.qkv_dim(), HD = c.attn_dim(), E = c.embed_dim;
  const int64_t Hq = c.q_heads;
  const size_t e = dtype_size(c.dtype);
  const size_t dout_bytes = static_cast<size_t>(B * S * HD) * e, dqkv_bytes = static_cast<size_t>(B * S * N) * e;
  if (device_ == Device::kCuda) m.use_stream(dout_bytes > m.dout.bytes() || dqkv_bytes > m.dqkv.bytes(), stream);
  void* dout = m.dout.ensure(dout_bytes, device_);
  void* dqkv = m.dqkv.ensure(dqkv_bytes, device_);
  const detail::Mat o_mat = detail::packed_mat(m.o.get(), c.dtype, B, S, HD);
  const detail::Mat dout_mat = detail::packed_mat(dout, c.dtype, B, S, HD);
  const detail::Mat dqkv_mat = detail::packed_mat(dqkv, c.dtype, B, S, N);

  // 1. Output projection: dWo = dy^T o, dbo = sum dy, dO = dy Wo.
  m.proj->linear_weight_grad(detail::mat_of(dy), o_mat, g.out_weight, c.bias ? g.out_bias : nullptr);
  m.proj->linear_input_grad(detail::mat_of(dy), w.out_weight, dout_mat);

  // 2. The core's backward into dq | dk | dv (strided views of dqkv, the forward's layout).
  const QkvViews v = qkv_views(m.qkv.get(), c, device_, B, S);
  const QkvViews d = qkv_views(dqkv, c, device_, B, S);
  const TensorView ov = TensorView::packed(m.o.get(), c.dtype, device_, B, S, Hq, c.head_dim);
  const TensorView dov = TensorView::packed(dout, c.dtype, device_, B, S, Hq, c.head_dim);
  const float* lse = static_cast<const float*>(m.lse.get());
  switch (c.core) {
    case AttentionCore::kRing:
      m.ring->backward(dov, v.q, v.k, v.v, ov, lse, d.q, d.k, d.v, stream);
      break;
    case AttentionCore::kDilated:
      if (m.dist_dilated) {
        m.dist_dilated->backward(v.q, v.k, v.v, ov, lse, dov, d.q, d.k, d.v, stream);
      } else {
        m.dilated->backward(v.q, v.k, v.v, ov, lse, dov, d.q, d.k, d.v, stream);
      }
      break;
    case AttentionCore::kBlockSparse:
      m.sparse->backward(v.q, v.k, v.v, ov, lse, dov, d.q, d.k, d.v, stream);
      break;
    default: {
      AttnBwdParams bp;
      bp.fwd.q = v.q, bp.fwd.k = v.k, bp.fwd.v = v.v, bp.fwd.o = ov;
      bp.fwd.lse = const_cast<float*>(lse);
      bp.fwd.q_pos = bp.fwd.kv_pos = positions_;
      bp.fwd.mask = c.mask;
      bp.fwd.softmax_scale = c.softmax_scale;
      bp.dout = dov, bp.dq = d.q, bp.dk = d.k, bp.dv = d.v;
      if (device_ == Device::kCuda) {
        bp.fwd.alibi_slopes = c.alibi_slopes.empty() ? nullptr : static_cast<const float*>(m.slopes.get());
        flash_attention_backward(bp, stream);
      } else {
        bp.fwd.alibi_slopes = c.alibi_slopes.empty() ? nullptr : c.alibi_slopes.data();
        host_attention_backward(bp, c.host_precision);
      }
      break;
    }
  }

  // 3. RoPE backward: the conjugate rotation of dq and dk, same positions (the ring core's backward did it already).
  if (c.rope && c.core != AttentionCore::kRing)
    apply_rope(d, positions_, c, m.freqs, m.inv_freq.get(), device_, stream, /*inverse=*/true);

  // 4. QKV projection: dWqkv = dqkv^T x, dbqkv = sum dqkv, dx = dqkv Wqkv.
  m.proj->linear_weight_grad(dqkv_mat, detail::mat_of(x), g.qkv_weight, c.bias ? g.qkv_bias : nullptr);
  m.proj->linear_input_grad(dqkv_mat, w.qkv_weight, detail::mat_of(dx));

  // 5. Weight gradients summed over ranks: pack [dWqkv | dWo | dbqkv | dbo] (padded to a multiple of P),
  //    reduce-scatter (rank i gets the sum of block i), all-gather the blocks back, unpack.
  if (reduce) {
    const int P = m.comm->size();
    const DType gt = grad_dtype();
    const size_t ge = dtype_size(gt);
    struct Piece {
      void* ptr;
      int64_t count;
    };
    std::vector<Piece> pieces = {{g.qkv_weight, N * E}, {g.out_weight, E * HD}};
    if (c.bias) pieces.push_back({g.qkv_bias, N}), pieces.push_back({g.out_bias, E});
    int64_t total = 0;
    for (const Piece& p : pieces) total += p.count;
    const int64_t per_rank = (total + P - 1) / P;
    const size_t pack_bytes = static_cast<size_t>(per_rank * (P + 1)) * ge;  // P blocks + this rank's sum
    if (device_ == Device::kCuda && pack_bytes > m.grad_pack.bytes() && m.grad_pack.bytes() > 0) {
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    char* pack = static_cast<char*>(m.grad_pack.ensure(pack_bytes, device_));
    char* mine = pack + static_cast<size_t>(per_rank * P) * ge;
    const cudaMemcpyKind kind = cudaMemcpyDeviceToDevice;
    size_t at = 0;
    for (const Piece& p : pieces) {
      const size_t bytes = static_cast<size_t>(p.count) * ge;
      if (device_ == Device::kCuda) {
        DISTATTN_CUDA_CHECK(cudaMemcpyAsync(pack + at, p.ptr, bytes, kind, stream));
      } else {
        std::memcpy(pack + at, p.ptr, bytes);
      }
      at += bytes;
    }
    const size_t pad = static_cast<size_t>(per_rank * P) * ge - at;  // zeros past the last gradient
    if (pad > 0) {
      if (device_ == Device::kCuda) {
        DISTATTN_CUDA_CHECK(cudaMemsetAsync(pack + at, 0, pad, stream));
      } else {
        std::memset(pack + at, 0, pad);
      }
    }
    m.comm->reduce_scatter("mha weight grads", pack, mine, static_cast<size_t>(per_rank), gt, stream);
    m.comm->all_gather("mha weight grads", mine, pack, static_cast<size_t>(per_rank) * ge, stream);
    at = 0;
    for (const Piece& p : pieces) {
      const size_t bytes = static_cast<size_t>(p.count) * ge;
      if (device_ == Device::kCuda) {
        DISTATTN_CUDA_CHECK(cudaMemcpyAsync(p.ptr, pack + at, bytes, kind, stream));
      } else {
        std::memcpy(p.ptr, pack + at, bytes);
      }
      at += bytes;
    }
  }
}

}  // namespace layers
}  // namespace distattn
