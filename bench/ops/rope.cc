// Op "rope": rotary position embedding applied to q [B, S, H, D] and k [B, S, Hkv, D] in place, one fused
// launch (positional/rope.h), positions 0..S-1. Memory bound: the rate is GB/s of bytes read plus bytes
// written, 2 * B * S * (H + Hkv) * D * sizeof(dtype), and "%copy" compares it with a device-to-device
// cudaMemcpy measured once at start-up (same read+write counting), the practical ceiling.
//
// Check (-c 1, S <= --check-max-seq): fresh random q and k, copied back before and after one in-place run
// (the timed path; an in-place op has no separate output to poison), then rope_apply_host on fp64 copies
// (reference) and on copies in the input dtype (naive); element ok if |err| <= 2*naive_err + ulp*max|ref|.
// Host-engine mode (no GPU): rope_apply_host in fp32, checked with tolerance 1e-4 * max(1, max|ref|).
#include "distattn/positional/rope.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <sstream>

#include "bench_flops.h"
#include "bench_op.h"
#include "bench_rope.h"
#include "device_fill.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "host_tensors.h"
#include "op_common.h"
#include "output_check.h"

namespace distattn {
namespace bench {
namespace {

constexpr size_t kCopyBytes = size_t{512} << 20;  // buffer of the copy-bandwidth measurement
constexpr int kCopyIters = 20;

class RopeOp : public OpBase {
 public:
  explicit RopeOp(const RunContext& ctx) : OpBase(ctx), rope_(opt_, D_, ctx.on_gpu()) {
    if (ctx.on_gpu()) copy_gbps_ = measure_copy_bandwidth_gbps(kCopyBytes, kCopyIters, ctx.stream);
  }

  std::vector<std::string> describe() const override {
    std::vector<std::string> lines;
    std::ostringstream os;
    os << "op rope: q and k in place, " << dtype_name(dtype_) << ", B " << B_ << ", H " << H_ << ", Hkv " << Hkv_
       << ", D " << D_ << ", rotary dim " << rope_.rotary_dim() << ", style " << rope_.style_name()
       << (ctx_.on_gpu() ? ", engine CUDA" : ", engine host fp32");
    lines.push_back(os.str());
    lines.push_back("GB/s: bytes read + written = 2*B*S*(H+Hkv)*D*elem / time");
    if (ctx_.on_gpu()) {
      char buf[160];
      std::snprintf(buf, sizeof(buf),
                    "device-to-device copy (cudaMemcpyAsync, %zu MiB, median of %d): %.1f GB/s read+write",
                    kCopyBytes >> 20, kCopyIters, copy_gbps_);
      lines.push_back(buf);
    }
    std::ostringstream ck;
    ck << "check: S <= " << opt_.check_max_seq << ", every element of q and k after one in-place run, vs the fp64 host "
       << "RoPE; " << check_rule_text(ctx_.on_gpu(), "host RoPE in the input dtype");
    lines.push_back(ck.str());
    return lines;
  }

  bool work_is_bytes() const override { return true; }
  double work(int64_t seq) const override {
    return rope_bytes(B_, seq, H_, Hkv_, D_, static_cast<int64_t>(dtype_size(dtype_)));
  }

  std::string shape_header() const override {
    return seq_shape_header(false) + table_cell(4, "rot") + table_cell(5, "style");
  }
  std::string shape_cells(int64_t seq) const override {
    return seq_shape_cells(seq, -1) + table_cell(4, std::to_string(rope_.rotary_dim())) +
           table_cell(5, rope_.style_name());
  }
  std::string extra_header() const override { return ctx_.on_gpu() ? " %copy" : ""; }
  std::string extra_cells(int64_t seq, double time_ms) const override {
    if (!ctx_.on_gpu()) return "";
    char buf[32];
    std::snprintf(buf, sizeof(buf), " %5.1f", 100.0 * percent_base(seq, time_ms));
    return buf;
  }
  void json_options(JsonObject& out) const override {
    out.set("rotary_dim", rope_.rotary_dim()).set("style", rope_.style_name());
    if (ctx_.on_gpu()) out.set("copy_gbps", copy_gbps_);
  }
  void json_row(JsonObject& row, int64_t seq, double time_ms) const override {
    row.set("B", B_).set("H", H_).set("Hkv", Hkv_).set("D", D_).set("hidden", H_ * D_);
    row.set("rotary_dim", rope_.rotary_dim()).set("style", rope_.style_name()).set("dtype", dtype_name(dtype_));
    row.set("bytes", work(seq));
    if (ctx_.on_gpu()) row.set("pct_copy", 100.0 * percent_base(seq, time_ms));
  }

  void setup(int64_t seq) override {
    begin_size(seq);
    const uint64_t seed = size_seed();
    if (ctx_.on_gpu()) {
      q_ = DeviceBuffer(static_cast<size_t>(B_ * S_ * H_ * D_) * dtype_size(dtype_));
      k_ = DeviceBuffer(static_cast<size_t>(B_ * S_ * Hkv_ * D_) * dtype_size(dtype_));
      fill_device(seed);
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    } else {
      hq_ = HostTensor(dtype_, B_, S_, H_, D_);
      hk_ = HostTensor(dtype_, B_, S_, Hkv_, D_);
      fill_random_host(hq_, seed);
      fill_random_host(hk_, seed + 1);
    }
  }

  void run() override {
    if (ctx_.on_gpu()) {
      rope_apply_cuda(params(TensorView::packed(q_.get(), dtype_, Device::kCuda, B_, S_, H_, D_),
                             TensorView::packed(k_.get(), dtype_, Device::kCuda, B_, S_, Hkv_, D_), true),
                      ctx_.stream);
    } else {
      rope_apply_host(params(hq_.view, hk_.view, false));
    }
  }

  CheckResult check() override {
    const uint64_t seed = check_seed();
    HostTensor q_in, k_in, q_out, k_out;
    if (ctx_.on_gpu()) {
      fill_device(seed);
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
      q_in = download(q_.get(), dtype_, B_, S_, H_, D_);
      k_in = download(k_.get(), dtype_, B_, S_, Hkv_, D_);
      run();
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
      q_out = download(q_.get(), dtype_, B_, S_, H_, D_);
      k_out = download(k_.get(), dtype_, B_, S_, Hkv_, D_);
    } else {
      fill_random_host(hq_, seed);
      fill_random_host(hk_, seed + 1);
      q_in = hq_, k_in = hk_;
      run();
      q_out = hq_, k_out = hk_;
    }
    HostTensor q_ref = convert(q_in.view, DType::kFloat64), k_ref = convert(k_in.view, DType::kFloat64);
    rope_apply_host(params(q_ref.view, k_ref.view, false));
    const bool naive_on = ctx_.on_gpu();
    if (naive_on) rope_apply_host(params(q_in.view, k_in.view, false));  // q_in/k_in become naive

    // OutputCheck: with the naive run tol = 2 * naive_err + ulp * max|ref|, else 1e-4 * max(1, max|ref|).
    OutputCheck check;
    const double ulp = dtype_ulp(dtype_);
    check.compare("q", q_out.view, q_ref.view, naive_on ? &q_in.view : nullptr, ulp);
    check.compare("k", k_out.view, k_ref.view, naive_on ? &k_in.view : nullptr, ulp);
    return check.finish();
  }

  void teardown() override {
    q_.reset(), k_.reset();
    hq_ = HostTensor(), hk_ = HostTensor();
  }

 private:
  // time in ms -> fraction of the copy bandwidth.
  double percent_base(int64_t seq, double time_ms) const {
    if (copy_gbps_ <= 0 || time_ms <= 0) return 0;
    return work(seq) / (time_ms * 1e-3) / 1e9 / copy_gbps_;
  }

  void fill_device(uint64_t seed) {
    fill_random_device(q_.get(), B_ * S_ * H_ * D_, dtype_, seed, 1.0f, ctx_.stream);
    fill_random_device(k_.get(), B_ * S_ * Hkv_ * D_, dtype_, seed + 1, 1.0f, ctx_.stream);
  }

  // The forward RoPE in place on q [B, S, H, D], k [B, S, Hkv, D] at positions 0..S-1; device: the device frequencies.
  RopeParams params(const TensorView& q, const TensorView& k, bool device) const {
    return rope_.params(q, k, PositionMap::contiguous(0, S_), device, false);
  }

  BenchRope rope_;  // frequencies (host; GPU also on the device), rotary dim, style
  double copy_gbps_ = 0;
  DeviceBuffer q_, k_;
  HostTensor hq_, hk_;
};

}  // namespace

std::unique_ptr<BenchOp> make_rope_op(const RunContext& ctx) { return std::make_unique<RopeOp>(ctx); }

}  // namespace bench
}  // namespace distattn
