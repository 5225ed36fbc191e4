// Op "sparse": one GPU's block-sparse attention (sparse/block_sparse_attention.h) forward, backward or both
// (--pass), through the CUDA engine with the layout's block list uploaded once per size; without a GPU,
// through the host engine in fp32.
//
// Patterns (--sparse-pattern), all on contiguous positions 0..S-1, Sq = Skv = S:
//   block-diagonal  independent segments of --sparse-block rows (default 2048); --causal inside each
//   sliding-window  pos_q - pos_k < --window, and causal with --causal (else |pos_q - pos_k| < W)
//   strided         (qb - kb) mod (--sparse-block / 128) == 0 or |qb - kb| <= 1 (128-row blocks); --causal
//   bigbird         window 1 block each side + 1 global block + --sparse-random random blocks per q block
//   random          --sparse-random random blocks per q block
// The layout is built in setup() (not timed), like a model builds it once.
//
// Work: USEFUL FLOPs, 4 * B * H * D * (visible pairs), the pairs counted exactly from the layout and its band
// (BlockSparseAttention::visible_pairs); backward x2.5, fwd+bwd x3.5. Columns: %dense = visible pairs / S^2,
// %comp = pairs of the listed blocks (what the engine computes) / S^2.
//
// Check (-c 1, S <= --check-max-seq): as the dense op (bench/ops/dense.cc): fresh inputs, poisoned outputs,
// one run, then the fp64 host engine with the SAME block list on the checked heads; element ok if
// |err| <= 2 * naive_err + ulp * max|ref| (naive: host kRoundIntermediates).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <sstream>

#include "attention_io.h"
#include "bench_flops.h"
#include "bench_op.h"
#include "device_fill.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/positional/alibi.h"
#include "distattn/sparse/block_sparse_attention.h"
#include "distattn/sparse/flash_attention.h"
#include "host_reference.h"
#include "host_tensors.h"
#include "op_common.h"
#include "output_check.h"

namespace distattn {
namespace bench {
namespace {

class SparseOp : public OpBase {
 public:
  explicit SparseOp(const RunContext& ctx) : OpBase(ctx) {
    const auto& c = opt_.common;
    require_cuda_head_dim();
    const std::string& pat = opt_.sparse_pattern;
    if (pat == "sliding-window") {
      DISTATTN_CHECK_ARG(c.window > 0, "--window", "--sparse-pattern sliding-window needs --window W > 0");
    } else {
      DISTATTN_CHECK_ARG(c.window == 0, "--window", "applies to --sparse-pattern sliding-window only (pattern is ", pat,
                         ")");
    }
    if (c.alibi) slopes_host_ = alibi_slopes(H_);
    check_kv_heads_ = option_check_kv_heads();
  }

  std::string pattern_label() const {
    const auto& c = opt_.common;
    const std::string& pat = opt_.sparse_pattern;
    std::ostringstream os;
    if (pat == "block-diagonal") os << "bdiag" << opt_.sparse_block;
    if (pat == "sliding-window") os << "win" << c.window;
    if (pat == "strided") os << "stride" << opt_.sparse_block;
    if (pat == "bigbird") os << "bigbird" << opt_.sparse_random;
    if (pat == "random") os << "random" << opt_.sparse_random;
    if (c.causal) os << "-c";
    return os.str();
  }

  std::vector<std::string> describe() const override {
    const auto& c = opt_.common;
    std::vector<std::string> lines;
    std::ostringstream os;
    os << "op sparse: block-sparse attention " << pass_name(opt_.pass) << ", " << dtype_name(dtype_) << ", B " << B_
       << ", H " << H_ << ", Hkv " << Hkv_ << ", D " << D_ << ", pattern " << opt_.sparse_pattern << " ("
       << pattern_label() << "), causal " << (c.causal ? "yes" : "no") << ", alibi " << (c.alibi ? "yes" : "no")
       << (ctx_.on_gpu() ? ", engine CUDA (block list uploaded once per size)" : ", engine host fp32");
    lines.push_back(os.str());
    lines.push_back(
        "TFLOPs per GPU: USEFUL, 4*B*H*D*(visible pairs, exact from the layout and its band); fwd x1, bwd x2.5, "
        "fwdbwd x3.5; %dense = visible pairs / S^2, %comp = pairs of the listed 128x128 blocks / S^2");
    std::ostringstream ck;
    ck << "check: S <= " << opt_.check_max_seq << ", kv heads 0.." << check_kv_heads_ - 1
       << ", vs the fp64 host engine with the same block list; ";
    ck << check_rule_text(ctx_.on_gpu(), "host kRoundIntermediates");
    lines.push_back(ck.str());
    return lines;
  }

  bool work_is_bytes() const override { return false; }
  double work(int64_t seq) const override {
    const auto it = pairs_.find(seq);
    DISTATTN_CHECK(it != pairs_.end(), "sparse op: work(", seq, ") asked before setup(", seq, ")");
    return 4.0 * static_cast<double>(B_) * static_cast<double>(H_) * static_cast<double>(D_) *
           static_cast<double>(it->second.first) * pass_factor(opt_.pass);
  }

  std::string shape_header() const override { return seq_shape_header(false) + table_cell(14, "pattern"); }
  std::string shape_cells(int64_t seq) const override {
    return seq_shape_cells(seq, -1) + table_cell(14, pattern_label());
  }
  std::string extra_header() const override { return "  %dense  %comp"; }
  std::string extra_cells(int64_t seq, double) const override {
    const auto it = pairs_.find(seq);
    if (it == pairs_.end()) return "";
    const double all = static_cast<double>(seq) * static_cast<double>(seq);
    char buf[64];
    std::snprintf(buf, sizeof(buf), " %7.3f %6.3f", 100.0 * it->second.first / all, 100.0 * it->second.second / all);
    return buf;
  }

  void json_options(JsonObject& out) const override {
    out.set("pass", pass_name(opt_.pass));
    out.set("check_kv_heads", check_kv_heads_);
    out.set("sparse_pattern", opt_.sparse_pattern).set("sparse_block", opt_.sparse_block);
    out.set("sparse_random", opt_.sparse_random);
  }
  void json_row(JsonObject& row, int64_t seq, double) const override {
    const auto it = pairs_.find(seq);
    const double all = static_cast<double>(seq) * static_cast<double>(seq);
    json_shape(row);
    row.set("flops", work(seq));
    row.set("pattern", opt_.sparse_pattern).set("pattern_label", pattern_label());
    row.set("sparse_block", opt_.sparse_block).set("sparse_random", opt_.sparse_random);
    row.set("visible_pairs", it->second.first).set("computed_pairs", it->second.second);
    row.set("dense_fraction", it->second.first / all).set("computed_fraction", it->second.second / all);
  }

  void setup(int64_t seq) override {
    begin_size(seq);
    const uint64_t seed = size_seed();
    const bool need_bwd = opt_.pass != Pass::kForward;
    attn_ = std::make_unique<BlockSparseAttention>(
        make_attention(ctx_.on_gpu() ? Device::kCuda : Device::kHost, HostPrecision::kFloat32));
    pairs_[seq] = {attn_->visible_pairs(S_, S_), attn_->computed_pairs(S_, S_)};
    io_.allocate(ctx_.on_gpu(), dtype_, B_, S_, H_, Hkv_, D_, need_bwd);
    io_.fill_inputs(seed, ctx_.stream);
    io_.poison_outputs(false, ctx_.stream);
    if (opt_.pass == Pass::kBackward) run_fwd();  // bwd alone is timed against this forward's O and LSE
    if (ctx_.on_gpu()) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
  }

  void run() override {
    if (opt_.pass != Pass::kBackward) run_fwd();
    if (opt_.pass != Pass::kForward) run_bwd();
  }

  CheckResult check() override {
    const uint64_t seed = check_seed();
    const bool bwd = opt_.pass != Pass::kForward;
    // 1. Fresh inputs, poisoned outputs, one run of forward (+ backward), results copied to the host.
    io_.fill_inputs(seed, ctx_.stream);
    io_.poison_outputs(bwd, ctx_.stream);
    run_fwd();
    if (bwd) run_bwd();
    if (ctx_.on_gpu()) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    const HostTensor q = io_.to_host(io_.q), k = io_.to_host(io_.k), v = io_.to_host(io_.v);
    const HostTensor dout = bwd ? io_.to_host(io_.dout) : HostTensor();
    const HostOutputs got = outputs_to_host(io_, bwd);

    // References on the checked heads with the SAME layout (its host arrays) through the host engine.
    const int64_t Hc = check_kv_heads_ * (H_ / Hkv_), Kc = check_kv_heads_;
    const bool naive_on = ctx_.on_gpu();
    const BlockListView view = attn_->layout().host_view();
    const ReferenceInputs in = reference_inputs(q.view, k.view, v.view, dout.view, Hc, Kc, nullptr, dtype_);
    HostReferences refs = compute_host_references(
        in.q, in.k, in.v, bwd ? &in.dout : nullptr, naive_on,
        [&](const TensorView& rq, const TensorView& rk, const TensorView& rv, const TensorView& ro, float* rlse) {
          return full_sequence_params(rq, rk, rv, ro, rlse, Hc, S_, attn_->layout().make_mask(view), slopes_host_);
        });
    return compare_attention_outputs(got, refs, naive_on, bwd, Hc, Kc, dtype_);
  }

  void teardown() override {
    io_.reset();
    attn_.reset();
  }

 private:
  BlockSparseAttention make_attention(Device device, HostPrecision precision) const {
    const auto& c = opt_.common;
    BlockSparseConfig cfg;
    cfg.q_heads = H_, cfg.kv_heads = Hkv_, cfg.head_dim = D_;
    cfg.alibi_slopes = slopes_host_;
    cfg.host_precision = precision;
    const std::string& pat = opt_.sparse_pattern;
    const uint64_t layout_seed = opt_.seed ^ 0xb10c5ull;
    cudaStream_t s = ctx_.stream;
    if (pat == "block-diagonal")
      return BlockSparseAttention::block_diagonal(S_, S_, opt_.sparse_block, c.causal, cfg, device, s);
    if (pat == "sliding-window") return BlockSparseAttention::local_window(S_, S_, c.window, c.causal, cfg, device, s);
    if (pat == "strided")
      return BlockSparseAttention::strided(S_, S_, opt_.sparse_block / kLayoutBlock, 1, c.causal, cfg, device, s);
    if (pat == "bigbird") {
      return BlockSparseAttention::bigbird(S_, S_, 1, 1, opt_.sparse_random, layout_seed, c.causal, cfg, device, s);
    }
    return BlockSparseAttention::random(S_, S_, std::min<int64_t>(opt_.sparse_random, (S_ + 127) / 128), layout_seed,
                                        c.causal, cfg, device, s);
  }

  // The same calls on the GPU and the host engine (the host ignores the stream).
  void run_fwd() { attn_->forward(io_.q, io_.k, io_.v, io_.o, io_.lse, ctx_.stream); }
  void run_bwd() {
    attn_->backward(io_.q, io_.k, io_.v, io_.o, io_.lse, io_.dout, io_.dq, io_.dk, io_.dv, ctx_.stream);
  }

  int64_t check_kv_heads_ = 1;
  std::vector<float> slopes_host_;
  std::unique_ptr<BlockSparseAttention> attn_;
  std::map<int64_t, std::pair<int64_t, int64_t>> pairs_;  // seq -> (visible pairs, computed pairs) per (b, h)
  AttentionIo io_;                                        // q, k, v, o, lse (+ dout, dq, dk, dv) on the GPU or the host
};

}  // namespace

std::unique_ptr<BenchOp> make_sparse_op(const RunContext& ctx) { return std::make_unique<SparseOp>(ctx); }

}  // namespace bench
}  // namespace distattn
