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
//   RoPE forward on q, k in place (positions 0..S-1) + attention forward: one flash_attention_forward_rope call (on
//   the Hopper kernel, NeoX over the whole head dim, no ALiBi, S >= 8K: the rotation inside the forward's launch;
//   otherwise, or with DISTATTN_ROPE_FWD=separate, one RoPE launch, then the forward; DISTATTN_ROPE_FWD=fused: inside
//   the launch at any S)
//   [--pass bwd/fwdbwd: -> attention backward with the inverse RoPE of dq, dk fused into it
//    (AttnBwdParams::rope_grad: the dQ conversion and the Hopper dK epilogue rotate them back; default), or, with
//    DISTATTN_ROPE_BWD=separate, -> attention backward -> RoPE backward (inverse rotation) on dq, dk in place]
// (--pass bwd: q, k are rotated once in setup, before the forward that provides O and LSE). q and k are rotated
// again by every iteration; a rotation keeps their magnitude, so the timing sees the same kind of data.
// DISTATTN_ROPE_BWD: unset or "fused" (default) | "separate"; anything else throws naming the variable.
// The check then runs that path once on fresh inputs and compares with the host engine applied to host-rotated
// q, k (rope_apply_host in the input dtype: rounded once, as the kernel does), the fp64 and naive gradients
// rotated back with the host RoPE (fp64 / input dtype). The rotations as launches of their own (the forward's RoPE
// kernel; + the separate backward pass with DISTATTN_ROPE_BWD=separate) are timed alone once per size (CUDA events,
// median) and reported as rope_ms and their share of the step: what the rotation costs when nothing hides it (inside
// the forward's launch it runs beside the attention); the fused inverse is inside the backward's time and not in
// rope_ms (--pass bwd with the fused inverse: rope_ms 0, nothing runs separately).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "attention_io.h"
#include "bench_flops.h"
#include "bench_op.h"
#include "bench_rope.h"
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
#include "op_common.h"
#include "output_check.h"

namespace distattn {
namespace bench {
namespace {

// DISTATTN_ROPE_BWD: true (unset / "fused"): the inverse RoPE of dq, dk fused into the backward; false ("separate"):
// the backward, then rope_apply_cuda(inverse) on dq, dk (the A/B baseline).
bool rope_bwd_fused_from_env() { return env_choice("DISTATTN_ROPE_BWD", {"fused", "separate"}, 0) == 0; }
// DISTATTN_ROPE_FWD (read by flash_attention_forward_rope too, with the same accepted values): "auto" | "separate" |
// "fused" | "prerotated" (diagnostic).
const char* rope_fwd_mode_from_env() {
  static const char* const names[4] = {"auto", "separate", "fused", "prerotated"};
  return names[env_choice("DISTATTN_ROPE_FWD", {"auto", "separate", "fused", "prerotated"}, 0)];
}

class DenseOp : public OpBase {
 public:
  explicit DenseOp(const RunContext& ctx) : OpBase(ctx) {
    require_cuda_head_dim();
    if (opt_.common.alibi) slopes_host_ = alibi_slopes(H_);
    if (opt_.rope) {
      rope_ = BenchRope(opt_, D_, ctx.on_gpu());
      if (ctx.on_gpu()) {
        rope_bwd_fused_ = rope_bwd_fused_from_env();
        rope_fwd_mode_ = rope_fwd_mode_from_env();
        rope_angles_.inv_freq = rope_.device_inv_freq();
        rope_angles_.rotary_dim = rope_.rotary_dim();
        rope_angles_.style = static_cast<int>(rope_.style());
        rope_angles_.scale = rope_.scale();
      }
    }
    check_kv_heads_ = option_check_kv_heads();
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
      os << "yes (q, k rotated by the forward call: " << rope_fwd_label() << "; " << bwd_desc << "rotary dim "
         << rope_.rotary_dim() << ", " << rope_.style_name() << ")";
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
    ck << check_rule_text(ctx_.on_gpu(), "host kRoundIntermediates");
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

  std::string shape_header() const override { return seq_shape_header(false) + table_cell(10, "mask"); }
  std::string shape_cells(int64_t seq) const override {
    return seq_shape_cells(seq, -1) + table_cell(10, mask_label(opt_.common.causal, opt_.common.window));
  }

  std::string extra_header() const override { return opt_.rope && ctx_.on_gpu() ? RopeTimes::header() : ""; }
  std::string extra_cells(int64_t seq, double time_ms) const override {
    return opt_.rope && ctx_.on_gpu() ? rope_times_.cells(seq, time_ms) : "";
  }

  void json_options(JsonObject& out) const override {
    out.set("pass", pass_name(opt_.pass));
    out.set("check_kv_heads", check_kv_heads_);
    json_rope_keys(out, opt_.rope, rope_);
    if (opt_.rope && opt_.pass != Pass::kBackward && ctx_.on_gpu()) {
      out.set("rope_fwd", rope_fwd_mode_);
    }
    if (opt_.rope && opt_.pass != Pass::kForward && ctx_.on_gpu()) {
      out.set("rope_bwd", fused_rope_bwd() ? "fused" : "separate");
    }
  }
  // Row keys: rope (bool) always; with --rope also rotary_dim, style, rope_ms (the RoPE kernels of one iteration that
  // run as launches of their own, timed alone, GPU only; null on the host engine, and null where nothing runs
  // separately) and rope_share_pct = 100 * rope_ms / time_ms. Options keys rope_bwd: "fused" | "separate", rope_fwd:
  // "auto" | "separate" | "fused" | "prerotated" (DISTATTN_ROPE_FWD).
  void json_row(JsonObject& row, int64_t seq, double time_ms) const override {
    json_shape(row);
    row.set("flops", work(seq));
    rope_times_.json_row(row, seq, time_ms, opt_.rope, rope_, ctx_.on_gpu());
  }

  void setup(int64_t seq) override {
    begin_size(seq);
    const uint64_t seed = size_seed();
    const bool need_bwd = opt_.pass != Pass::kForward;
    io_.allocate(ctx_.on_gpu(), dtype_, B_, S_, H_, Hkv_, D_, need_bwd);
    io_.fill_inputs(seed, ctx_.stream);
    io_.poison_outputs(false, ctx_.stream);
    if (ctx_.on_gpu()) {
      if (!slopes_host_.empty() && slopes_dev_.get() == nullptr) slopes_dev_ = device_copy(slopes_host_);
      if (opt_.rope) time_rope_kernels();
      // bwd alone is timed against the forward's O and LSE, computed once here (on rotated q, k with --rope).
      if (opt_.pass == Pass::kBackward) {
        if (opt_.rope) rope_cuda(false);
        flash_attention_forward(device_params(), ctx_.stream);
      }
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    } else if (opt_.pass == Pass::kBackward) {
      if (opt_.rope) rope_apply_host(rope_params(io_.q, io_.k, false, false));
      host_run(true, false);
    }
  }

  void run() override { run_pass(opt_.pass != Pass::kBackward, opt_.pass != Pass::kForward); }

  CheckResult check() override {
    const uint64_t seed = check_seed();
    const bool bwd = opt_.pass != Pass::kForward;
    // 1. Fresh inputs, poisoned outputs, one run of forward (+ backward), results copied back.
    // q, k: the inputs as the user gave them (before RoPE; the run rotates the buffers in place).
    io_.fill_inputs(seed, ctx_.stream);
    io_.poison_outputs(bwd, ctx_.stream);
    if (ctx_.on_gpu()) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    const HostTensor q = io_.to_host(io_.q), k = io_.to_host(io_.k);  // before the run rotates them (--rope)
    run_pass(true, bwd);  // the timed path (with --rope: RoPE forward first, RoPE backward last)
    if (ctx_.on_gpu()) DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    const HostTensor v = io_.to_host(io_.v), dout = bwd ? io_.to_host(io_.dout) : HostTensor();
    const HostOutputs got = outputs_to_host(io_, bwd);

    // 2. Host references on the checked heads (q heads [0, Hc), kv heads [0, Kc)); the host engine
    //    spreads (batch, head) units over the CPU's threads itself. With --rope the references see q, k rotated on
    //    the host in the input dtype (what the kernel stores), and their dq, dk (gradients w.r.t. the ROTATED q, k)
    //    are rotated back like the RoPE backward (fp64 for the reference, the input dtype for the naive run).
    const int64_t Hc = check_kv_heads_ * (H_ / Hkv_), Kc = check_kv_heads_;
    const bool naive_on = ctx_.on_gpu();
    const ReferenceInputs in =
        reference_inputs(q.view, k.view, v.view, dout.view, Hc, Kc, opt_.rope ? &rope_ : nullptr, dtype_);
    HostReferences refs = compute_host_references(
        in.q, in.k, in.v, bwd ? &in.dout : nullptr, naive_on,
        [&](const TensorView& rq, const TensorView& rk, const TensorView& rv, const TensorView& ro, float* rlse) {
          return full_sequence_params(rq, rk, rv, ro, rlse, Hc, S_, mask(), slopes_host_);
        });
    if (opt_.rope && bwd) rope_.rotate_back_reference_grads(refs, naive_on);

    // 3. Compare each output on the checked heads.
    return compare_attention_outputs(got, refs, naive_on, bwd, Hc, Kc, dtype_);
  }

  void teardown() override { io_.reset(); }

 private:
  // One iteration: [RoPE fwd on q, k] -> attention fwd (if fwd) -> attention bwd [with the fused inverse RoPE] ->
  // [RoPE bwd on dq, dk, DISTATTN_ROPE_BWD=separate] (if bwd).
  // --pass bwd times (fwd = false, bwd = true): attention bwd [+ RoPE bwd]; q, k were rotated in setup.
  void run_pass(bool fwd, bool bwd) {
    if (ctx_.on_gpu()) {
      if (fwd && opt_.rope) {
        flash_attention_forward_rope(device_params(), rope_angles_, ctx_.stream);  // q, k rotated in place
      } else if (fwd) {
        flash_attention_forward(device_params(), ctx_.stream);
      }
      if (bwd) flash_attention_backward(device_bwd_params(), ctx_.stream);  // fused inverse RoPE: rope_grad
      if (bwd && opt_.rope && !fused_rope_bwd()) rope_cuda(true);
    } else {
      if (fwd && opt_.rope) rope_apply_host(rope_params(io_.q, io_.k, false, false));
      host_run(fwd, bwd);
      if (bwd && opt_.rope) rope_apply_host(rope_params(io_.dq, io_.dk, false, true));
    }
  }

  // RoPE params on q [B, S, Hq', D] and k [B, S, Hkv', D] (any head counts: the check's slices), positions 0..S-1,
  // in place; device: the device frequencies; inverse: the backward (conjugate rotation) applied to gradients.
  RopeParams rope_params(const TensorView& q, const TensorView& k, bool device, bool inverse) const {
    return rope_.params(q, k, PositionMap::contiguous(0, S_), device, inverse);
  }
  // Enqueues the fused RoPE kernel: forward on q, k or (inverse) backward on dq, dk, in place.
  void rope_cuda(bool inverse) {
    if (!inverse) {
      rope_apply_cuda(rope_params(io_.q, io_.k, true, false), ctx_.stream);
    } else {
      rope_apply_cuda(rope_params(io_.dq, io_.dk, true, true), ctx_.stream);
    }
  }
  // The RoPE kernels of one iteration that run as launches of their own, alone (forward; + the separate backward
  // on dq, dk when the pass has a backward and the inverse is not fused; bwd alone: that backward only), warm-up
  // then the median of 15 CUDA-event timings (RopeTimes::time_alone); stored for this size (nothing separate: not
  // stored, 0).
  void time_rope_kernels() {
    const bool fwd = opt_.pass != Pass::kBackward, bwd = opt_.pass != Pass::kForward && !fused_rope_bwd();
    if (!fwd && !bwd) return;
    rope_times_.set(S_, RopeTimes::time_alone(ctx_.stream, [&] {
                      if (fwd) rope_cuda(false);
                      if (bwd) rope_cuda(true);
                    }));
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
    if (fused_rope_bwd()) b.rope_grad = &rope_angles_;
    return b;
  }
  // The forward's RoPE as flash_attention_forward_rope runs it (DISTATTN_ROPE_FWD).
  std::string rope_fwd_label() const {
    const std::string mode = rope_fwd_mode_;
    if (mode == "separate") return "separate (a RoPE launch, then the forward)";
    if (mode == "fused") return "fused (inside the forward's launch wherever it applies, any S)";
    if (mode == "prerotated")
      return "prerotated (diagnostic: the fused launch, every group rotated by its set-up kernel, any S)";
    return "auto (inside the forward's launch where it applies, S >= 8K)";
  }
  // The inverse RoPE of dq, dk runs inside the attention backward (GPU, --rope, DISTATTN_ROPE_BWD unset / fused).
  bool fused_rope_bwd() const { return opt_.rope && ctx_.on_gpu() && rope_bwd_fused_; }

  // Host-engine mode: the whole problem in fp32 (the engine threads over (batch, head) itself).
  void host_run(bool fwd, bool bwd) {
    const AttnParams p = full_sequence_params(io_.q, io_.k, io_.v, io_.o, io_.lse, H_, S_, mask(), slopes_host_);
    if (fwd) host_attention_forward(p, HostPrecision::kFloat32);
    if (bwd) {
      AttnBwdParams b;
      b.fwd = p;
      b.dout = io_.dout, b.dq = io_.dq, b.dk = io_.dk, b.dv = io_.dv;
      host_attention_backward(b, HostPrecision::kFloat32);
    }
  }

  int64_t check_kv_heads_ = 1;
  std::vector<float> slopes_host_;
  BenchRope rope_;                      // --rope: frequencies (host; GPU also on the device), rotary dim, style
  RopeTimes rope_times_;                // --rope, GPU: separately launched RoPE kernels of one iteration, ms, per size
  bool rope_bwd_fused_ = true;          // --rope, GPU: DISTATTN_ROPE_BWD (fused unless "separate")
  const char* rope_fwd_mode_ = "auto";  // --rope, GPU: DISTATTN_ROPE_FWD ("auto" | "separate" | "fused" | "prerotated")
  RopeAngles
      rope_angles_;  // --rope, GPU: rope_'s device inv_freq, rotary dim, style, scale (forward call, fused inverse)
  AttentionIo io_;   // q, k, v, o, lse (+ dout, dq, dk, dv) on the GPU or the host
  DeviceBuffer slopes_dev_;  // GPU: ALiBi slopes
};

}  // namespace

std::unique_ptr<BenchOp> make_dense_op(const RunContext& ctx) { return std::make_unique<DenseOp>(ctx); }

}  // namespace bench
}  // namespace distattn
