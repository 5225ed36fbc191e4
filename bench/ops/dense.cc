// Op "dense": one GPU's attention forward, backward, or both (--pass), through the CUDA engine
// (sparse/flash_attention.h); without a GPU, through the host engine in fp32.
//
// Shapes: q, o, dout, dq [B, S, H, D]; k, v, dk, dv [B, S, Hkv, D]; lse [B, H, S] fp32. All packed.
// Positions: one contiguous chunk 0..S-1 for both q and kv (a single-GPU problem).
//
// Check (-c 1, S <= --check-max-seq): fresh random inputs, outputs poisoned, one run, then for the first
// `check_heads` kv heads (and their Hq/Hkv q heads each; all batches) the host engine computes
//   ref   = fp64 everywhere (inputs: the exact values the GPU read),
//   naive = kRoundIntermediates (S, P, dP, dS rounded to the input dtype, like a framework's naive code),
// and each output X passes element-wise if |X_gpu - X_ref| <= 2 * max|X_naive - X_ref| + eps, with
// eps = ulp(dtype at 1) * max|X_ref| (the representation error of the largest value; fp32 LSE: 1e-6 scale).
// Host-engine mode has no naive baseline (its run IS fp32): there tolerance = 1e-4 * max(1, max|X_ref|).
//
// --rope (what a user's training step does around attention): the timed iteration is
//   RoPE forward on q, k in place (one fused launch, positions 0..S-1)  -> attention forward
//   [--pass bwd/fwdbwd: -> attention backward with the inverse RoPE of dq, dk fused into it
//    (AttnBwdParams::rope_grad: the dQ conversion and the Hopper dK epilogue rotate them back; default), or, with
//    DISTATTN_ROPE_BWD=separate, -> attention backward -> RoPE backward (inverse rotation) on dq, dk in place]
// (--pass bwd: q, k are rotated once in setup, before the forward that provides O and LSE). q and k are rotated
// again by every iteration; a rotation keeps their magnitude, so the timing sees the same kind of data.
// DISTATTN_ROPE_BWD: unset or "fused" (default) | "separate"; anything else throws naming the variable.
// The check then runs that path once on fresh inputs and compares with the host engine applied to host-rotated
// q, k (rope_apply_host in the input dtype: rounded once, as the kernel does), the fp64 and naive gradients
// rotated back with the host RoPE (fp64 / input dtype). The RoPE kernels that run as launches of their own (the
// forward; + the separate backward pass with DISTATTN_ROPE_BWD=separate) are timed alone once per size (CUDA events,
// median) and reported as rope_ms and their share of the step; the fused inverse is inside the backward's time and
// not in rope_ms (--pass bwd with the fused inverse: rope_ms 0, nothing runs separately).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "attention_io.h"
#include "bench_flops.h"
#include "bench_op.h"
#include "device_fill.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "distattn/core/host_engine.h"
#include "distattn/positional/alibi.h"
#include "distattn/positional/rope.h"
#include "distattn/sparse/flash_attention.h"
#include "host_reference.h"
#include "host_tensors.h"
#include "output_check.h"
#include "stream_timer.h"

namespace distattn {
namespace bench {
namespace {

// DISTATTN_ROPE_BWD: true (unset / "fused"): the inverse RoPE of dq, dk fused into the backward; false ("separate"):
// the backward, then rope_apply_cuda(inverse) on dq, dk (the A/B baseline).
bool rope_bwd_fused_from_env() { return env_choice("DISTATTN_ROPE_BWD", {"fused", "separate"}, 0) == 0; }

class DenseOp : public BenchOp {
 public:
  explicit DenseOp(const RunContext& ctx) : ctx_(ctx), opt_(*ctx.options) {
    const auto& c = opt_.common;
    B_ = c.batch;
    H_ = c.heads;
    Hkv_ = c.resolved_kv_heads();
    D_ = c.head_dim;
    dtype_ = ctx.on_gpu() ? c.dtype : DType::kFloat32;
    if (ctx.on_gpu()) {
      DISTATTN_CHECK_ARG(flash_supports_head_dim(D_), "--headdim/-d", "the CUDA engine has no kernel for head dim ",
                         D_);
    }
    if (c.alibi) slopes_host_ = alibi_slopes(H_);
    if (opt_.rope) {
      RopeConfig config;
      config.head_dim = D_;
      config.rotary_dim = opt_.rotary_dim;
      config.style = opt_.rope_gptj ? RopeStyle::kGptJ : RopeStyle::kNeoX;
      freqs_ = make_rope_frequencies(config);
      rotary_dim_ = opt_.rotary_dim > 0 ? opt_.rotary_dim : D_;
      if (ctx.on_gpu()) {
        inv_freq_dev_ = DeviceBuffer(freqs_.inv_freq.size() * sizeof(float));
        DISTATTN_CUDA_CHECK(
            cudaMemcpy(inv_freq_dev_.get(), freqs_.inv_freq.data(), inv_freq_dev_.bytes(), cudaMemcpyHostToDevice));
        rope_bwd_fused_ = rope_bwd_fused_from_env();
        rope_grad_.inv_freq = static_cast<const float*>(inv_freq_dev_.get());
        rope_grad_.rotary_dim = rotary_dim_;
        rope_grad_.style = static_cast<int>(config.style);
        rope_grad_.scale = freqs_.scale;
      }
    }
    const int64_t auto_heads = std::min<int64_t>({Hkv_, static_cast<int64_t>(hardware_threads()), 8});
    check_kv_heads_ = opt_.check_heads > 0 ? opt_.check_heads : std::max<int64_t>(1, auto_heads);
  }

  std::vector<std::string> describe() const override {
    const auto& c = opt_.common;
    std::vector<std::string> lines;
    std::ostringstream os;
    os << "op dense: attention " << pass_name(opt_.pass) << ", " << dtype_name(dtype_) << ", B " << B_ << ", H " << H_
       << ", Hkv " << Hkv_ << ", D " << D_ << ", mask " << mask_label(c.causal, c.window) << ", alibi "
       << (c.alibi ? "yes" : "no") << ", rope ";
    if (opt_.rope) {
      const char* bwd_desc = opt_.pass == Pass::kForward ? ""
                             : fused_rope_bwd()          ? "inverse on dq, dk fused into the attention backward; "
                                                         : "inverse kernel on dq, dk after the backward; ";
      os << "yes (fused kernel on q, k before; " << bwd_desc << "rotary dim " << rotary_dim_ << ", "
         << (opt_.rope_gptj ? "gptj" : "neox") << ")";
    } else {
      os << "no";
    }
    os << (ctx_.on_gpu() ? ", engine CUDA" : ", engine host fp32");
    lines.push_back(os.str());
    lines.push_back(
        "TFLOPs per GPU: flash formula 4*B*S^2*H*D, causal x0.5" +
        std::string(c.window > 0 ? "; window: 4*B*H*D*(visible pairs), pairs counted exactly (closed form)" : "") +
        "; fwd x1, bwd x2.5, fwdbwd x3.5" + std::string(opt_.rope ? " (RoPE adds time, not FLOPs)" : ""));
    if (opt_.rope && ctx_.on_gpu()) {
      lines.push_back(
          "rope(ms): the RoPE kernel(s) that run as launches of their own in one iteration, timed alone (median)" +
          std::string(fused_rope_bwd() ? " (the fused inverse is inside the backward, not here)" : "") +
          "; rope%: rope(ms) / time(ms)");
    }
    std::ostringstream ck;
    ck << "check: S <= " << opt_.check_max_seq << ", kv heads 0.." << check_kv_heads_ - 1 << " (q heads 0.."
       << check_kv_heads_ * (H_ / Hkv_) - 1 << "), all batches, vs the fp64 host engine; ";
    if (ctx_.on_gpu()) {
      ck << "element ok if |err| <= 2*naive_err + ulp*max|ref| (naive: host kRoundIntermediates)";
    } else {
      ck << "element ok if |err| <= 1e-4*max(1,max|ref|)";
    }
    if (opt_.rope) {
      ck << "; reference on host-rotated q, k (host RoPE in " << dtype_name(dtype_)
         << "), gradients rotated back on the host";
    }
    lines.push_back(ck.str());
    return lines;
  }

  bool work_is_bytes() const override { return false; }
  double work(int64_t seq) const override {
    return attention_flops(B_, seq, H_, D_, opt_.common.causal, opt_.common.window, opt_.pass);
  }

  std::string shape_header() const override {
    char buf[128];
    std::snprintf(buf, sizeof(buf), "%8s %4s %4s %4s %4s %10s", "seq", "B", "H", "Hkv", "D", "mask");
    return buf;
  }
  std::string shape_cells(int64_t seq) const override {
    char buf[128];
    std::snprintf(buf, sizeof(buf), "%8lld %4lld %4lld %4lld %4lld %10s", static_cast<long long>(seq),
                  static_cast<long long>(B_), static_cast<long long>(H_), static_cast<long long>(Hkv_),
                  static_cast<long long>(D_), mask_label(opt_.common.causal, opt_.common.window).c_str());
    return buf;
  }

  std::string extra_header() const override {
    if (!opt_.rope || !ctx_.on_gpu()) return "";
    char buf[32];
    std::snprintf(buf, sizeof(buf), " %8s %6s", "rope(ms)", "rope%");
    return buf;
  }
  std::string extra_cells(int64_t seq, double time_ms) const override {
    if (!opt_.rope || !ctx_.on_gpu()) return "";
    const double r = rope_ms(seq);
    char buf[48];
    std::snprintf(buf, sizeof(buf), " %8.4f %6.2f", r, time_ms > 0 ? 100.0 * r / time_ms : 0.0);
    return buf;
  }

  void json_options(JsonObject& out) const override {
    out.set("pass", pass_name(opt_.pass));
    out.set("check_kv_heads", check_kv_heads_);
    out.set("rope", opt_.rope);
    if (opt_.rope) out.set("rotary_dim", rotary_dim_).set("style", opt_.rope_gptj ? "gptj" : "neox");
    if (opt_.rope && opt_.pass != Pass::kForward && ctx_.on_gpu()) {
      out.set("rope_bwd", fused_rope_bwd() ? "fused" : "separate");
    }
  }
  // Row keys: rope (bool) always; with --rope also rotary_dim, style, rope_ms (the RoPE kernels of one iteration that
  // run as launches of their own, timed alone, GPU only; null on the host engine, and null where nothing runs
  // separately) and rope_share_pct = 100 * rope_ms / time_ms. Options key rope_bwd: "fused" | "separate".
  void json_row(JsonObject& row, int64_t seq, double time_ms) const override {
    row.set("B", B_).set("H", H_).set("Hkv", Hkv_).set("D", D_).set("causal", opt_.common.causal);
    row.set("window", opt_.common.window).set("alibi", opt_.common.alibi).set("pass", pass_name(opt_.pass));
    row.set("dtype", dtype_name(dtype_)).set("flops", work(seq)).set("rope", opt_.rope);
    if (opt_.rope) {
      row.set("rotary_dim", rotary_dim_).set("style", opt_.rope_gptj ? "gptj" : "neox");
      const double r = rope_ms(seq);
      if (ctx_.on_gpu() && r > 0 && time_ms > 0) {
        row.set("rope_ms", r).set("rope_share_pct", 100.0 * r / time_ms);
      } else {
        row.set_null("rope_ms").set_null("rope_share_pct");
      }
    }
  }

  void setup(int64_t seq) override {
    S_ = seq;
    ++size_index_;
    const uint64_t seed = opt_.seed + 16 * static_cast<uint64_t>(size_index_);
    const bool need_bwd = opt_.pass != Pass::kForward;
    io_.allocate(ctx_.on_gpu(), dtype_, B_, S_, H_, Hkv_, D_, need_bwd);
    io_.fill_inputs(seed, ctx_.stream);
    io_.poison_outputs(false, ctx_.stream);
    if (ctx_.on_gpu()) {
      if (!slopes_host_.empty() && slopes_dev_.get() == nullptr) {
        slopes_dev_ = DeviceBuffer(slopes_host_.size() * sizeof(float));
        DISTATTN_CUDA_CHECK(
            cudaMemcpy(slopes_dev_.get(), slopes_host_.data(), slopes_dev_.bytes(), cudaMemcpyHostToDevice));
      }
      if (opt_.rope) time_rope_kernels();
      // bwd alone is timed against the forward's O and LSE, computed once here (on rotated q, k with --rope).
      if (opt_.pass == Pass::kBackward) {
        if (opt_.rope) rope_cuda(false);
        flash_attention_forward(device_params(), ctx_.stream);
      }
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    } else if (opt_.pass == Pass::kBackward) {
      if (opt_.rope) rope_apply_host(rope_params(io_.q, io_.k, freqs_.inv_freq.data(), false));
      host_run(true, false);
    }
  }

  void run() override { run_pass(opt_.pass != Pass::kBackward, opt_.pass != Pass::kForward); }

  bool check_affordable(int64_t seq) const override { return seq <= opt_.check_max_seq; }

  CheckResult check() override {
    const uint64_t seed = (opt_.seed ^ 0x5eedc0ffeeull) + 16 * static_cast<uint64_t>(size_index_);
    const bool bwd = opt_.pass != Pass::kForward;
    // 1. Fresh inputs, poisoned outputs, one run of forward (+ backward), results copied back.
    // q, k: the inputs as the user gave them (before RoPE; the run rotates the buffers in place).
    io_.fill_inputs(seed, ctx_.stream);
    io_.poison_outputs(bwd, ctx_.stream);
    if (ctx_.on_gpu()) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    const HostTensor q = io_.to_host(io_.q), k = io_.to_host(io_.k);  // before the run rotates them (--rope)
    run_pass(true, bwd);  // the timed path (with --rope: RoPE forward first, RoPE backward last)
    if (ctx_.on_gpu()) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    const HostTensor v = io_.to_host(io_.v), o = io_.to_host(io_.o);
    std::vector<float> lse = io_.lse_to_host();
    HostTensor dout, dq, dk, dv;
    if (bwd) dout = io_.to_host(io_.dout), dq = io_.to_host(io_.dq), dk = io_.to_host(io_.dk), dv = io_.to_host(io_.dv);

    // 2. Host references on the checked heads (q heads [0, Hc), kv heads [0, Kc)); the host engine
    //    spreads (batch, head) units over the CPU's threads itself.
    const int64_t G = H_ / Hkv_;
    const int64_t Hc = check_kv_heads_ * G, Kc = check_kv_heads_;
    const bool naive_on = ctx_.on_gpu();
    // With --rope the references see q, k rotated on the host in the input dtype (what the kernel stores).
    HostTensor q_rot, k_rot;
    if (opt_.rope) {
      q_rot = convert(head_slice(q.view, 0, Hc), dtype_);
      k_rot = convert(head_slice(k.view, 0, Kc), dtype_);
      rope_apply_host(rope_params(q_rot.view, k_rot.view, freqs_.inv_freq.data(), false));
    }
    const TensorView q16 = opt_.rope ? q_rot.view : head_slice(q.view, 0, Hc);
    const TensorView k16 = opt_.rope ? k_rot.view : head_slice(k.view, 0, Kc), v16 = head_slice(v.view, 0, Kc);
    const TensorView do16 = bwd ? head_slice(dout.view, 0, Hc) : TensorView();
    HostReferences refs = compute_host_references(
        q16, k16, v16, bwd ? &do16 : nullptr, naive_on,
        [&](const TensorView& rq, const TensorView& rk, const TensorView& rv, const TensorView& ro, float* rlse) {
          return host_params(rq, rk, rv, ro, rlse, Hc);
        });
    HostTensor &ref_o = refs.o, &naive_o = refs.naive_o;
    std::vector<float>&ref_lse = refs.lse, &naive_lse = refs.naive_lse;
    HostTensor &ref_dq = refs.dq, &ref_dk = refs.dk, &ref_dv = refs.dv;
    HostTensor &naive_dq = refs.naive_dq, &naive_dk = refs.naive_dk, &naive_dv = refs.naive_dv;
    if (opt_.rope && bwd) {
      // The references' dq, dk are gradients w.r.t. the ROTATED q, k: rotate them back like the RoPE backward
      // (fp64 for the reference, the input dtype for the naive run).
      rope_apply_host(rope_params(ref_dq.view, ref_dk.view, freqs_.inv_freq.data(), true));
      if (naive_on) rope_apply_host(rope_params(naive_dq.view, naive_dk.view, freqs_.inv_freq.data(), true));
    }

    // 3. Compare each output on the checked heads.
    OutputCheck check;
    check.compare("o", head_slice(o.view, 0, Hc), ref_o.view, naive_on ? &naive_o.view : nullptr, dtype_ulp(dtype_));
    const TensorView lse_got = head_slice(lse_view(lse.data(), B_, S_, H_), 0, Hc);
    const TensorView lse_ref = lse_view(ref_lse.data(), B_, S_, Hc);
    const TensorView lse_naive = lse_view(naive_lse.data(), B_, S_, Hc);
    check.compare("lse", lse_got, lse_ref, naive_on ? &lse_naive : nullptr, 1e-6);
    if (bwd) {
      const double ulp = dtype_ulp(dtype_);
      check.compare("dq", head_slice(dq.view, 0, Hc), ref_dq.view, naive_on ? &naive_dq.view : nullptr, ulp);
      check.compare("dk", head_slice(dk.view, 0, Kc), ref_dk.view, naive_on ? &naive_dk.view : nullptr, ulp);
      check.compare("dv", head_slice(dv.view, 0, Kc), ref_dv.view, naive_on ? &naive_dv.view : nullptr, ulp);
    }
    return check.finish();
  }

  void teardown() override { io_.reset(); }

 private:
  // One iteration: [RoPE fwd on q, k] -> attention fwd (if fwd) -> attention bwd [with the fused inverse RoPE] ->
  // [RoPE bwd on dq, dk, DISTATTN_ROPE_BWD=separate] (if bwd).
  // --pass bwd times (fwd = false, bwd = true): attention bwd [+ RoPE bwd]; q, k were rotated in setup.
  void run_pass(bool fwd, bool bwd) {
    if (ctx_.on_gpu()) {
      if (fwd && opt_.rope) rope_cuda(false);
      if (fwd) flash_attention_forward(device_params(), ctx_.stream);
      if (bwd) flash_attention_backward(device_bwd_params(), ctx_.stream);  // fused inverse RoPE: rope_grad
      if (bwd && opt_.rope && !fused_rope_bwd()) rope_cuda(true);
    } else {
      if (fwd && opt_.rope) rope_apply_host(rope_params(io_.q, io_.k, freqs_.inv_freq.data(), false));
      host_run(fwd, bwd);
      if (bwd && opt_.rope) rope_apply_host(rope_params(io_.dq, io_.dk, freqs_.inv_freq.data(), true));
    }
  }

  // RoPE params on q [B, S, Hq', D] and k [B, S, Hkv', D] (any head counts: the check's slices), positions 0..S-1,
  // in place; inverse: the backward (conjugate rotation) applied to gradients.
  RopeParams rope_params(const TensorView& q, const TensorView& k, const float* inv_freq, bool inverse) const {
    RopeParams p;
    p.q = q;
    p.k = k;
    p.q_pos = PositionMap::contiguous(0, S_);
    p.k_pos = PositionMap::contiguous(0, S_);
    p.rotary_dim = rotary_dim_;
    p.style = opt_.rope_gptj ? RopeStyle::kGptJ : RopeStyle::kNeoX;
    p.inv_freq = inv_freq;
    p.scale = freqs_.scale;
    p.inverse = inverse;
    return p;
  }
  // Enqueues the fused RoPE kernel: forward on q, k or (inverse) backward on dq, dk, in place.
  void rope_cuda(bool inverse) {
    const float* f = static_cast<const float*>(inv_freq_dev_.get());
    if (!inverse) {
      rope_apply_cuda(rope_params(io_.q, io_.k, f, false), ctx_.stream);
    } else {
      rope_apply_cuda(rope_params(io_.dq, io_.dk, f, true), ctx_.stream);
    }
  }
  // The RoPE kernels of one iteration that run as launches of their own, alone (forward; + the separate backward
  // on dq, dk when the pass has a backward and the inverse is not fused; bwd alone: that backward only), warm-up
  // then the median of kRopeIters CUDA-event timings; stored for this size (nothing separate: not stored, 0).
  void time_rope_kernels() {
    constexpr int kRopeWarmup = 3, kRopeIters = 15;
    const bool fwd = opt_.pass != Pass::kBackward, bwd = opt_.pass != Pass::kForward && !fused_rope_bwd();
    if (!fwd && !bwd) return;
    rope_ms_[S_] = median_stream_ms(ctx_.stream, kRopeWarmup, kRopeIters, [&] {
      if (fwd) rope_cuda(false);
      if (bwd) rope_cuda(true);
    });
  }
  double rope_ms(int64_t seq) const {
    const auto it = rope_ms_.find(seq);
    return it == rope_ms_.end() ? 0.0 : it->second;
  }

  AttnParams device_params() const {
    AttnParams p;
    p.q = io_.q, p.k = io_.k, p.v = io_.v, p.o = io_.o;
    p.lse = io_.lse;
    p.q_pos = PositionMap::contiguous(0, S_);
    p.kv_pos = PositionMap::contiguous(0, S_);
    p.mask = mask();
    p.alibi_slopes = static_cast<const float*>(slopes_dev_.get());
    return p;
  }
  AttnBwdParams device_bwd_params() const {
    AttnBwdParams b;
    b.fwd = device_params();
    b.dout = io_.dout, b.dq = io_.dq, b.dk = io_.dk, b.dv = io_.dv;
    if (fused_rope_bwd()) b.rope_grad = &rope_grad_;
    return b;
  }
  // The inverse RoPE of dq, dk runs inside the attention backward (GPU, --rope, DISTATTN_ROPE_BWD unset / fused).
  bool fused_rope_bwd() const { return opt_.rope && ctx_.on_gpu() && rope_bwd_fused_; }

  Mask mask() const {
    Mask m;
    m.causal = opt_.common.causal;
    m.window = opt_.common.window;
    return m;
  }

  // Host-engine params for q heads [0, q.heads()) whose LSE is an array [B, lse_heads, S] (packed).
  AttnParams host_params(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, float* lse,
                         int64_t lse_heads) const {
    AttnParams p;
    p.q = q, p.k = k, p.v = v, p.o = o;
    p.lse = lse;
    p.lse_batch_stride = lse_heads * S_;
    p.lse_head_stride = S_;
    p.q_pos = PositionMap::contiguous(0, S_);
    p.kv_pos = PositionMap::contiguous(0, S_);
    p.mask = mask();
    p.alibi_slopes = slopes_host_.empty() ? nullptr : slopes_host_.data();
    return p;
  }

  // Host-engine mode: the whole problem in fp32 (the engine threads over (batch, head) itself).
  void host_run(bool fwd, bool bwd) {
    const AttnParams p = host_params(io_.q, io_.k, io_.v, io_.o, io_.lse, H_);
    if (fwd) host_attention_forward(p, HostPrecision::kFloat32);
    if (bwd) {
      AttnBwdParams b;
      b.fwd = p;
      b.dout = io_.dout, b.dq = io_.dq, b.dk = io_.dk, b.dv = io_.dv;
      host_attention_backward(b, HostPrecision::kFloat32);
    }
  }

  RunContext ctx_;
  const BenchOptions& opt_;
  int64_t B_ = 1, H_ = 1, Hkv_ = 1, D_ = 1, S_ = 0;
  DType dtype_ = DType::kBFloat16;
  int size_index_ = -1;
  int64_t check_kv_heads_ = 1;
  std::vector<float> slopes_host_;
  RopeFrequencies freqs_;              // --rope: host frequencies (inv_freq [rotary_dim / 2], scale)
  int64_t rotary_dim_ = 0;             // --rope: dims rotated
  std::map<int64_t, double> rope_ms_;  // --rope, GPU: separately launched RoPE kernels of one iteration, ms, per size
  bool rope_bwd_fused_ = true;         // --rope, GPU: DISTATTN_ROPE_BWD (fused unless "separate")
  RopeGradParams rope_grad_;           // --rope, GPU: the fused inverse's parameters (inv_freq_dev_, rotary dim, ...)
  AttentionIo io_;                     // q, k, v, o, lse (+ dout, dq, dk, dv) on the GPU or the host
  DeviceBuffer slopes_dev_, inv_freq_dev_;  // GPU: ALiBi slopes, RoPE frequencies
};

}  // namespace

std::unique_ptr<BenchOp> make_dense_op(const RunContext& ctx) { return std::make_unique<DenseOp>(ctx); }

}  // namespace bench
}  // namespace distattn
