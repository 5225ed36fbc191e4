// Op "mha": one multi-head attention LAYER (layers/multi_head_attention.h) forward, backward or both (--pass):
// fused QKV projection (cuBLAS, bf16 in, fp32 accumulation), RoPE on global positions, an attention core, output
// projection; backward through all of it incl. the weight gradients. Without a GPU: the host layer in fp32.
//
// Core: --core dense|ring|dilated|sparse (default dense).
//   dense    one GPU's engine on S rows (positions 0..S-1)
//   ring     RingAttention over the job's ranks; S is the GLOBAL length, each rank holds S/N rows (--layout)
//   dilated  LongNet dilated attention (one GPU: S rows; N ranks: DistributedDilatedAttention); patterns
//            --dilated-segments / --dilated-rates / --dilated-ragged (default LongNet's configuration, ragged),
//            patterns with segment > S dropped
//   sparse   BlockSparseAttention: --sparse-pattern block-diagonal (segment --sparse-block) | strided (stride
//            --sparse-block rows, local band 1 block) | sliding-window (window --window, else --sparse-block)
// With N > 1 ranks the dilated core is the distributed one (S global, each rank S/N contiguous rows); with the dense
// and sparse cores every rank runs its own S rows (data parallel). Every core all-reduces the weight gradients over
// the ranks inside backward (timed: it is part of the layer).
//
// Shapes: E = H * D (-H, -d), Hkv = --gqa, x, y, dy, dx [B, S_local, E] packed; Wqkv [(H + 2 Hkv) D, E],
// Wo [E, H D]; no biases. Inputs: x, dy ~ U-like random (device_fill) of scale 1, weights scaled by 1/sqrt(fan_in).
//
// FLOPs (per GPU, T = B * S_local tokens, N = (H + 2 Hkv) * D):
//   projections  fwd 2*T*E*N + 2*T*(H*D)*E;  bwd 2x that (dX and dW GEMMs);  fwdbwd 3x
//   attention    the flash convention of the core: dense 4*B*S^2*H*D (causal x0.5, windows exact); ring the same
//                on the global S divided by N; dilated and sparse 4*B*H*D*(visible pairs, counted exactly);
//                fwd x1, bwd x2.5, fwdbwd x3.5
//   TFLOPs = (projections + attention) / time.  proj% = projection share of those FLOPs.
//
// Check (-c 1): fresh inputs generated on the host (the same values on every rank; ring: each rank uploads its
// shard), y (and dx, dWqkv, dWo for a backward) compared with the host layer in fp64 on the full problem (ring:
// this rank's shard), tolerance 2 * (naive bf16 host layer's error) + ulp * max|ref| per element (OutputCheck).
// The host reference costs B*S*E*(N + H*D) multiply-adds per pass on one core, so the check runs only where that
// is below 2e9 (small -H / -d / S); other sizes print "skip".
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>

#include "bench_flops.h"
#include "bench_op.h"
#include "device_fill.h"
#include "distattn/comm/mpi_communicator.h"
#include "distattn/comm/nccl_communicator.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/check_libs.h"
#include "distattn/core/error.h"
#include "distattn/layers/multi_head_attention.h"
#include "distattn/positional/alibi.h"
#include "distattn/ring/shard.h"
#include "distattn/sparse/block_sparse_attention.h"
#include "distattn/sparse/flash_attention.h"
#include "host_tensors.h"
#include "op_common.h"
#include "output_check.h"

namespace distattn {
namespace bench {

std::unique_ptr<BenchOp> make_mha_op(const RunContext& ctx);

namespace {

using layers::AttentionCore;
using layers::MhaConfig;
using layers::MhaGrads;
using layers::MhaWeights;
using layers::MultiHeadAttention;
using layers::SequenceView;

class MhaOp : public OpBase {
 public:
  explicit MhaOp(const RunContext& ctx) : OpBase(ctx) {
    const auto& c = opt_.common;
    E_ = H_ * D_;
    core_ = layers::parse_core(opt_.core, "--core");
    require_cuda_head_dim();
    DISTATTN_CHECK_ARG(core_ != AttentionCore::kDilated || c.window == 0, "--window",
                       "the dilated core has no window (its patterns are the sparsity)");
    // The layer's dilated patterns (rates that do not divide their segments need --dilated-ragged 1,
    // MhaConfig::dilated_ragged_rates; the layer's validation names them otherwise).
    if (core_ == AttentionCore::kDilated) requested_ = requested_dilated_patterns(opt_);
    DISTATTN_CHECK_ARG(core_ != AttentionCore::kBlockSparse || opt_.sparse_pattern == "block-diagonal" ||
                           opt_.sparse_pattern == "strided" || opt_.sparse_pattern == "sliding-window",
                       "--sparse-pattern",
                       "the mha op's sparse core takes block-diagonal, strided or sliding-window, got ",
                       opt_.sparse_pattern);
    if (c.alibi) slopes_ = alibi_slopes(H_);
    int n = 1;
    DISTATTN_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &n));
    N_ = n;
    // Collective over MPI_COMM_WORLD: every rank constructs the op at the same point.
    if (core_ == AttentionCore::kRing || N_ > 1) {
      if (ctx.on_gpu()) {
        comm_ = std::make_unique<NcclCommunicator>(MPI_COMM_WORLD, ctx.device);
      } else {
        comm_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
      }
    }
  }

  std::vector<std::string> describe() const override {
    const auto& c = opt_.common;
    std::vector<std::string> lines;
    std::ostringstream os;
    os << "op mha: attention layer " << pass_name(opt_.pass) << ", core " << layers::core_name(core_) << " over " << N_
       << " rank(s)" << (comm_ ? std::string(" (") + comm_->backend() + ")" : std::string()) << ", "
       << dtype_name(dtype_) << ", B " << B_ << ", E " << E_ << " (H " << H_ << " x D " << D_ << "), Hkv " << Hkv_
       << ", causal " << (c.causal ? "yes" : "no") << ", window " << c.window << ", alibi " << (c.alibi ? "yes" : "no")
       << ", RoPE " << (opt_.rope_gptj ? "gptj" : "neox") << ", no biases"
       << (ctx_.on_gpu() ? ", cuBLAS bf16 GEMMs (fp32 accumulation) + CUDA engine" : ", host layer fp32");
    lines.push_back(os.str());
    if (core_ == AttentionCore::kRing) {
      lines.push_back("seq = GLOBAL S, layout " + opt_.layout + ", each rank holds S/N rows");
    } else if (sequence_parallel()) {
      lines.push_back("seq = GLOBAL S, distributed dilated core: each rank holds S/N contiguous rows");
    } else if (N_ > 1) {
      lines.push_back("seq = S per rank (data parallel: each rank its own rows), weight grads all-reduced in bwd");
    }
    if (core_ == AttentionCore::kDilated) {
      std::ostringstream p;
      p << "dilated patterns (segment:rate, segments > S dropped):";
      for (const DilatedPattern& d : requested_) p << " " << d.segment << ":" << d.rate;
      if (opt_.dilated_ragged) p << " (ragged rates allowed: class s keeps rows s, s+r, ... < w)";
      lines.push_back(p.str());
    }
    if (core_ == AttentionCore::kBlockSparse) {
      lines.push_back("sparse pattern " + opt_.sparse_pattern + ", block " + std::to_string(opt_.sparse_block) +
                      " rows");
    }
    lines.push_back(
        "TFLOPs per GPU = (projections + attention) / time; T = B*S_local, N = (H+2Hkv)*D: projections "
        "2*T*E*N + 2*T*H*D*E (fwd x1, bwd x2, fwdbwd x3); attention flash formula 4*B*S^2*H*D (causal x0.5) for "
        "dense, the same on the global S / ranks for ring, 4*B*H*D*visible pairs for dilated / sparse / windows "
        "(fwd x1, bwd x2.5, fwdbwd x3.5); proj% = projection share");
    std::ostringstream ck;
    ck << "check: S <= " << opt_.check_max_seq << " and host cost <= 2e9 MACs; y" << (bwd() ? ", dx, dWqkv, dWo" : "")
       << " vs the fp64 host layer on the full problem; " << check_rule_text(ctx_.on_gpu(), "host layer in bf16");
    lines.push_back(ck.str());
    return lines;
  }

  bool work_is_bytes() const override { return false; }
  double work(int64_t seq) const override { return projection_flops(seq) + attention_flops_of(seq); }

  std::string shape_header() const override {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "%8s %4s %6s %4s %4s %4s %8s %7s", "seq", "B", "E", "H", "Hkv", "D", "core",
                  "mask");
    return buf;
  }
  std::string shape_cells(int64_t seq) const override {
    char buf[160];
    std::string mask = opt_.common.causal ? "causal" : "none";
    if (opt_.common.window > 0) mask = "win" + std::to_string(opt_.common.window);
    std::snprintf(buf, sizeof(buf), "%8lld %4lld %6lld %4lld %4lld %4lld %8s %7s", static_cast<long long>(seq),
                  static_cast<long long>(B_), static_cast<long long>(E_), static_cast<long long>(H_),
                  static_cast<long long>(Hkv_), static_cast<long long>(D_), layers::core_name(core_), mask.c_str());
    return buf;
  }
  std::string extra_header() const override { return " proj%"; }
  std::string extra_cells(int64_t seq, double) const override {
    char buf[32];
    std::snprintf(buf, sizeof(buf), " %5.1f", 100.0 * projection_flops(seq) / std::max(1.0, work(seq)));
    return buf;
  }
  void json_options(JsonObject& out) const override {
    out.set("pass", pass_name(opt_.pass)).set("core", layers::core_name(core_)).set("ranks", N_);
  }
  void json_row(JsonObject& row, int64_t seq, double) const override {
    row.set("B", B_).set("E", E_).set("H", H_).set("Hkv", Hkv_).set("D", D_).set("causal", opt_.common.causal);
    row.set("window", opt_.common.window).set("core", layers::core_name(core_)).set("pass", pass_name(opt_.pass));
    row.set("dtype", dtype_name(dtype_)).set("flops", work(seq)).set("projection_flops", projection_flops(seq));
    row.set("attention_flops", attention_flops_of(seq)).set("local_seq", local_rows(seq));
  }

  void setup(int64_t seq) override {
    begin_size(seq);
    Sl_ = local_rows(seq);
    build_layer(S_);
    const uint64_t seed = size_seed() + 977 * static_cast<uint64_t>(ctx_.rank);
    allocate();
    if (ctx_.on_gpu()) {
      fill_random_device(x_.get(), B_ * Sl_ * E_, dtype_, seed, 1.0f, ctx_.stream);
      fill_random_device(wqkv_.get(), qkv_dim() * E_, dtype_, opt_.seed + 1, static_cast<float>(1.0 / std::sqrt(E_)),
                         ctx_.stream);
      fill_random_device(wo_.get(), E_ * H_ * D_, dtype_, opt_.seed + 2, static_cast<float>(1.0 / std::sqrt(H_ * D_)),
                         ctx_.stream);
      if (bwd()) fill_random_device(dy_.get(), B_ * Sl_ * E_, dtype_, seed + 3, 1.0f, ctx_.stream);
      poison_device(y_.get(), y_.bytes(), ctx_.stream);
      if (opt_.pass == Pass::kBackward) forward();  // bwd alone is timed against one forward's saved state
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    } else {
      fill_random_host(hx_, seed);
      fill_random_host(hwqkv_, opt_.seed + 1, static_cast<float>(1.0 / std::sqrt(E_)));
      fill_random_host(hwo_, opt_.seed + 2, static_cast<float>(1.0 / std::sqrt(H_ * D_)));
      if (bwd()) fill_random_host(hdy_, seed + 3);
      if (opt_.pass == Pass::kBackward) forward();
    }
  }

  void run() override {
    if (opt_.pass != Pass::kBackward) forward();
    if (bwd()) backward();
  }

  bool check_affordable(int64_t seq) const override {
    const double macs = static_cast<double>(B_) * seq * E_ * (qkv_dim() + H_ * D_) * (bwd() ? 3.0 : 1.0);
    return seq <= opt_.check_max_seq && macs <= 2e9;
  }

  CheckResult check() override {
    // Full problem on the host (identical on every rank), this rank's rows uploaded.
    const int64_t Sf = sequence_parallel() ? S_ : Sl_;
    const uint64_t seed = check_seed(0x3a5eedull);
    HostTensor fx(dtype_, B_, Sf, 1, E_), fdy(dtype_, B_, Sf, 1, E_), fwq(dtype_, 1, qkv_dim(), 1, E_),
        fwo(dtype_, 1, E_, 1, H_ * D_);
    fill_random_host(fx, seed);
    fill_random_host(fdy, seed + 3);
    fill_random_host(fwq, seed + 1, static_cast<float>(1.0 / std::sqrt(E_)));
    fill_random_host(fwo, seed + 2, static_cast<float>(1.0 / std::sqrt(H_ * D_)));
    HostTensor lx = local_of(fx), ldy = local_of(fdy);
    HostTensor y(dtype_, B_, Sl_, 1, E_), dx(dtype_, B_, Sl_, 1, E_), gq(grad_dtype(), 1, qkv_dim(), 1, E_),
        go(grad_dtype(), 1, E_, 1, H_ * D_);
    if (ctx_.on_gpu()) {
      DISTATTN_CUDA_CHECK(cudaMemcpy(x_.get(), lx.data(), lx.bytes(), cudaMemcpyHostToDevice));
      DISTATTN_CUDA_CHECK(cudaMemcpy(wqkv_.get(), fwq.data(), fwq.bytes(), cudaMemcpyHostToDevice));
      DISTATTN_CUDA_CHECK(cudaMemcpy(wo_.get(), fwo.data(), fwo.bytes(), cudaMemcpyHostToDevice));
      poison_device(y_.get(), y_.bytes(), ctx_.stream);
      if (bwd()) {
        DISTATTN_CUDA_CHECK(cudaMemcpy(dy_.get(), ldy.data(), ldy.bytes(), cudaMemcpyHostToDevice));
        poison_device(dx_.get(), dx_.bytes(), ctx_.stream);
        poison_device(gwqkv_.get(), gwqkv_.bytes(), ctx_.stream);
        poison_device(gwo_.get(), gwo_.bytes(), ctx_.stream);
      }
      forward();
      if (bwd()) backward();
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
      DISTATTN_CUDA_CHECK(cudaMemcpy(y.data(), y_.get(), y.bytes(), cudaMemcpyDeviceToHost));
      if (bwd()) {
        DISTATTN_CUDA_CHECK(cudaMemcpy(dx.data(), dx_.get(), dx.bytes(), cudaMemcpyDeviceToHost));
        DISTATTN_CUDA_CHECK(cudaMemcpy(gq.data(), gwqkv_.get(), gq.bytes(), cudaMemcpyDeviceToHost));
        DISTATTN_CUDA_CHECK(cudaMemcpy(go.data(), gwo_.get(), go.bytes(), cudaMemcpyDeviceToHost));
      }
    } else {
      hx_ = lx, hwqkv_ = fwq, hwo_ = fwo;
      if (bwd()) hdy_ = ldy;
      fill_nan_host(hy_);
      forward();
      if (bwd()) backward();
      y = hy_;
      if (bwd()) dx = hdx_, gq = hgwqkv_, go = hgwo_;
    }

    // References: the host layer on the full problem (ring: the dense core on the global sequence; data-parallel
    // cores: each rank's own rows, gradients summed over ranks by the same all-reduce as the layer under test).
    Ref ref = host_reference(DType::kFloat64, HostPrecision::kFloat64, fx, fdy, fwq, fwo);
    Ref naive;
    const bool naive_on = ctx_.on_gpu();
    if (naive_on) naive = host_reference(dtype_, HostPrecision::kRoundIntermediates, fx, fdy, fwq, fwo);
    OutputCheck check;
    const double ulp = dtype_ulp(dtype_);
    HostTensor ry = local_of(ref.y), ny = naive_on ? local_of(naive.y) : HostTensor();
    check.compare("y", y.view, ry.view, naive_on ? &ny.view : nullptr, ulp);
    if (bwd()) {
      HostTensor rdx = local_of(ref.dx), ndx = naive_on ? local_of(naive.dx) : HostTensor();
      check.compare("dx", dx.view, rdx.view, naive_on ? &ndx.view : nullptr, ulp);
      check.compare("dWqkv", gq.view, ref.gq.view, naive_on ? &naive.gq.view : nullptr, ulp);
      check.compare("dWo", go.view, ref.go.view, naive_on ? &naive.go.view : nullptr, ulp);
    }
    return check.finish();
  }

  void teardown() override {
    x_.reset(), y_.reset(), dy_.reset(), dx_.reset(), wqkv_.reset(), wo_.reset(), gwqkv_.reset(), gwo_.reset();
    hx_ = HostTensor(), hy_ = HostTensor(), hdy_ = HostTensor(), hdx_ = HostTensor();
    hwqkv_ = HostTensor(), hwo_ = HostTensor(), hgwqkv_ = HostTensor(), hgwo_ = HostTensor();
    layer_.reset();
  }

 private:
  struct Ref {
    HostTensor y, dx, gq, go;
  };

  bool bwd() const { return opt_.pass != Pass::kForward; }
  int64_t qkv_dim() const { return (H_ + 2 * Hkv_) * D_; }
  DType grad_dtype() const { return DType::kFloat32; }
  // The ring and (over > 1 ranks) the dilated core shard the sequence: the sweep's S is then global.
  bool sequence_parallel() const {
    return core_ == AttentionCore::kRing || (core_ == AttentionCore::kDilated && N_ > 1);
  }
  int64_t local_rows(int64_t seq) const { return sequence_parallel() ? seq / N_ : seq; }

  double projection_flops(int64_t seq) const {
    const double f = layers::mha_projection_flops(B_ * local_rows(seq), E_, H_, Hkv_, D_);
    return f * (opt_.pass == Pass::kForward ? 1.0 : opt_.pass == Pass::kBackward ? 2.0 : 3.0);
  }

  double attention_flops_of(int64_t seq) const {
    const auto& c = opt_.common;
    switch (core_) {
      case AttentionCore::kRing:
        return ring_flops_per_gpu(B_, seq, H_, D_, c.causal, c.window, opt_.pass, N_);
      case AttentionCore::kDense:
        return attention_flops(B_, seq, H_, D_, c.causal, c.window, opt_.pass);
      default:  // dilated (global S, shared by the N ranks when distributed) and sparse: exact visible pairs
        return 4.0 * B_ * D_ * static_cast<double>(visible_pairs_all_heads(seq)) * pass_factor(opt_.pass) /
               (sequence_parallel() ? N_ : 1);
    }
  }

  // Visible (q, k) pairs of the dilated / sparse core at length `seq`, summed over the q heads, per batch (cached).
  int64_t visible_pairs_all_heads(int64_t seq) const {
    auto it = pairs_.find(seq);
    if (it != pairs_.end()) return it->second;
    int64_t pairs = 0;
    if (core_ == AttentionCore::kDilated) {
      // Head h, pattern (w, r): S/w segments, each keeping the m = ceil((w - h mod r) / r) rows s, s+r, ... < w
      // (= w/r when r divides w) that attend among themselves.
      for (const DilatedPattern& p : patterns_for(seq))
        for (int64_t h = 0; h < H_; ++h) {
          const int64_t m = (p.segment - h % p.rate + p.rate - 1) / p.rate;
          pairs += (seq / p.segment) * (opt_.common.causal ? m * (m + 1) / 2 : m * m);
        }
    } else {
      const PositionMap pos = PositionMap::contiguous(0, seq);
      pairs = H_ * count_visible_pairs(make_layout(seq, pos), seq, seq, pos, pos);
    }
    pairs_[seq] = pairs;
    return pairs;
  }

  std::vector<DilatedPattern> patterns_for(int64_t seq) const {
    std::vector<DilatedPattern> out;
    for (const DilatedPattern& p : requested_) {
      if (p.segment <= seq) out.push_back(p);
    }
    if (out.empty()) out.push_back({seq, 1});
    return out;
  }

  BlockLayout make_layout(int64_t seq, const PositionMap& pos) const {
    const bool causal = opt_.common.causal;
    const CausalRestriction cr = causal ? CausalRestriction::on(pos, pos) : CausalRestriction::none();
    if (opt_.sparse_pattern == "block-diagonal") return block_diagonal_layout(seq, seq, opt_.sparse_block, cr);
    if (opt_.sparse_pattern == "strided") {
      return BlockLayout::strided(seq, seq, std::max<int64_t>(1, opt_.sparse_block / kLayoutBlock), 1, cr);
    }
    const int64_t window = opt_.common.window > 0 ? opt_.common.window : opt_.sparse_block;
    return BlockLayout::sliding_window(seq, seq, pos, pos, window, causal);
  }

  // `seq`: the sweep's length (global when sequence parallel); the dilated patterns are chosen on it.
  MhaConfig layer_config(int64_t seq, DType dtype, HostPrecision precision, AttentionCore core) const {
    const auto& c = opt_.common;
    MhaConfig cfg;
    cfg.embed_dim = E_;
    cfg.q_heads = H_;
    cfg.kv_heads = Hkv_;
    cfg.head_dim = D_;
    cfg.dtype = dtype;
    cfg.rope_config.rotary_dim = opt_.rotary_dim;
    cfg.rope_config.style = opt_.rope_gptj ? RopeStyle::kGptJ : RopeStyle::kNeoX;
    cfg.core = core;
    cfg.mask.causal = c.causal;
    cfg.mask.window = c.window;
    cfg.alibi_slopes = slopes_;
    cfg.host_precision = precision;
    if (opt_.layout == "contiguous") cfg.ring_layout = ring::ShardLayout::kContiguous;
    if (opt_.layout == "striped") cfg.ring_layout = ring::ShardLayout::kStriped;
    if (core == AttentionCore::kDilated) {
      cfg.dilated_patterns = patterns_for(seq);
      cfg.dilated_ragged_rates = opt_.dilated_ragged;
    }
    if (core == AttentionCore::kBlockSparse) {
      if (opt_.sparse_pattern == "sliding-window") {
        cfg.mask.window = c.window > 0 ? c.window : opt_.sparse_block;
      } else {
        cfg.mask.window = 0;
      }
      const MhaOp* self = this;
      cfg.sparse_layout = [self](int64_t s, const PositionMap& pos) { return self->make_layout(s, pos); };
    }
    return cfg;
  }

  void build_layer(int64_t seq) {
    const Device dev = ctx_.on_gpu() ? Device::kCuda : Device::kHost;
    layer_ = std::make_unique<MultiHeadAttention>(
        layer_config(seq, dtype_, ctx_.on_gpu() ? HostPrecision::kFloat64 : HostPrecision::kFloat32, core_), dev,
        comm_.get());
  }

  void allocate() {
    const size_t e = dtype_size(dtype_), act = static_cast<size_t>(B_ * Sl_ * E_);
    if (ctx_.on_gpu()) {
      x_ = DeviceBuffer(act * e);
      y_ = DeviceBuffer(act * e);
      wqkv_ = DeviceBuffer(static_cast<size_t>(qkv_dim() * E_) * e);
      wo_ = DeviceBuffer(static_cast<size_t>(E_ * H_ * D_) * e);
      if (bwd()) {
        dy_ = DeviceBuffer(act * e);
        dx_ = DeviceBuffer(act * e);
        gwqkv_ = DeviceBuffer(static_cast<size_t>(qkv_dim() * E_) * 4);
        gwo_ = DeviceBuffer(static_cast<size_t>(E_ * H_ * D_) * 4);
      }
    } else {
      hx_ = HostTensor(dtype_, B_, Sl_, 1, E_);
      hy_ = HostTensor(dtype_, B_, Sl_, 1, E_);
      hwqkv_ = HostTensor(dtype_, 1, qkv_dim(), 1, E_);
      hwo_ = HostTensor(dtype_, 1, E_, 1, H_ * D_);
      if (bwd()) {
        hdy_ = HostTensor(dtype_, B_, Sl_, 1, E_);
        hdx_ = HostTensor(dtype_, B_, Sl_, 1, E_);
        hgwqkv_ = HostTensor(grad_dtype(), 1, qkv_dim(), 1, E_);
        hgwo_ = HostTensor(grad_dtype(), 1, E_, 1, H_ * D_);
      }
    }
  }

  SequenceView seq_view(void* data) const {
    return SequenceView::packed(data, dtype_, ctx_.on_gpu() ? Device::kCuda : Device::kHost, B_, Sl_, E_);
  }
  MhaWeights weights() const {
    MhaWeights w;
    w.qkv_weight = ctx_.on_gpu() ? wqkv_.get() : hwqkv_.storage.data();
    w.out_weight = ctx_.on_gpu() ? wo_.get() : hwo_.storage.data();
    return w;
  }
  void forward() {
    if (ctx_.on_gpu()) {
      layer_->forward(weights(), seq_view(x_.get()), seq_view(y_.get()), ctx_.stream);
    } else {
      layer_->forward(weights(), seq_view(hx_.data()), seq_view(hy_.data()));
    }
  }
  void backward() {
    MhaGrads g;
    if (ctx_.on_gpu()) {
      g.qkv_weight = gwqkv_.get();
      g.out_weight = gwo_.get();
      layer_->backward(weights(), seq_view(x_.get()), seq_view(dy_.get()), seq_view(dx_.get()), g, ctx_.stream);
    } else {
      g.qkv_weight = hgwqkv_.data();
      g.out_weight = hgwo_.data();
      layer_->backward(weights(), seq_view(hx_.data()), seq_view(hdy_.data()), seq_view(hdx_.data()), g);
    }
  }

  // This rank's rows of a full [B, S_full, 1, E] host tensor (sequence parallel: its shard -- the ring's layout, or
  // contiguous for the distributed dilated core; otherwise the tensor itself).
  HostTensor local_of(const HostTensor& full) const {
    if (!sequence_parallel()) return full;
    HostTensor local(full.view.dtype, B_, Sl_, 1, E_);
    const ring::ShardLayout layout =
        core_ == AttentionCore::kRing ? layer_->config().ring_layout : ring::ShardLayout::kContiguous;
    ring::shard_host(full.view, local.view, layout, N_, ctx_.rank);
    return local;
  }

  // The host layer on the full problem. Sequence parallel: one process over the global sequence (ring: the dense
  // core; dilated: the single-device dilated core), its gradients are the full ones. Data parallel: this rank's
  // rows, gradients all-reduced over the ranks with MPI (what the layer under test does through its communicator).
  Ref host_reference(DType dtype, HostPrecision precision, const HostTensor& fx, const HostTensor& fdy,
                     const HostTensor& fwq, const HostTensor& fwo) const {
    const AttentionCore core = core_ == AttentionCore::kRing ? AttentionCore::kDense : core_;
    const int64_t rows = fx.view.seqlen();
    MhaConfig cfg = layer_config(rows, dtype, precision, core);
    cfg.all_reduce_weight_grads = false;
    MultiHeadAttention ref(cfg, Device::kHost);
    const HostTensor x = convert(fx.view, dtype), dy = convert(fdy.view, dtype), wq = convert(fwq.view, dtype),
                     wo = convert(fwo.view, dtype);
    Ref r;
    r.y = HostTensor(dtype, B_, rows, 1, E_);
    const DType gt = ref.grad_dtype();
    auto sv = [&](const HostTensor& t) {
      return SequenceView::packed(const_cast<void*>(static_cast<const void*>(t.storage.data())), dtype, Device::kHost,
                                  B_, rows, E_);
    };
    MhaWeights w;
    w.qkv_weight = wq.storage.data();
    w.out_weight = wo.storage.data();
    ref.forward(w, sv(x), sv(r.y));
    if (bwd()) {
      r.dx = HostTensor(dtype, B_, rows, 1, E_);
      r.gq = HostTensor(gt, 1, qkv_dim(), 1, E_);
      r.go = HostTensor(gt, 1, E_, 1, H_ * D_);
      MhaGrads g;
      g.qkv_weight = r.gq.data();
      g.out_weight = r.go.data();
      ref.backward(w, sv(x), sv(dy), sv(r.dx), g);
      if (!sequence_parallel() && N_ > 1) {
        const MPI_Datatype mt = gt == DType::kFloat64 ? MPI_DOUBLE : MPI_FLOAT;
        DISTATTN_MPI_CHECK(
            MPI_Allreduce(MPI_IN_PLACE, r.gq.data(), static_cast<int>(qkv_dim() * E_), mt, MPI_SUM, MPI_COMM_WORLD));
        DISTATTN_MPI_CHECK(
            MPI_Allreduce(MPI_IN_PLACE, r.go.data(), static_cast<int>(E_ * H_ * D_), mt, MPI_SUM, MPI_COMM_WORLD));
      }
    }
    return r;
  }

  int64_t E_ = 1, Sl_ = 0;  // embedding H * D; this rank's rows (S, or S / N when sequence parallel)
  int N_ = 1;
  AttentionCore core_ = AttentionCore::kDense;
  std::vector<DilatedPattern> requested_;
  std::vector<float> slopes_;
  mutable std::map<int64_t, int64_t> pairs_;
  std::unique_ptr<Communicator> comm_;
  std::unique_ptr<MultiHeadAttention> layer_;
  DeviceBuffer x_, y_, dy_, dx_, wqkv_, wo_, gwqkv_, gwo_;
  HostTensor hx_, hy_, hdy_, hdx_, hwqkv_, hwo_, hgwqkv_, hgwo_;
};

}  // namespace

std::unique_ptr<BenchOp> make_mha_op(const RunContext& ctx) { return std::make_unique<MhaOp>(ctx); }

}  // namespace bench
}  // namespace distattn
