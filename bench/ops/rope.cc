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
#include "device_fill.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "host_tensors.h"

namespace distattn {
namespace bench {
namespace {

constexpr size_t kCopyBytes = size_t{512} << 20;  // buffer of the copy-bandwidth measurement
constexpr int kCopyIters = 20;

double ulp_of(DType t) {
  return t == DType::kBFloat16  ? std::ldexp(1.0, -7)
         : t == DType::kFloat16 ? std::ldexp(1.0, -10)
                                : std::ldexp(1.0, -23);
}

class RopeOp : public BenchOp {
 public:
  explicit RopeOp(const RunContext& ctx) : ctx_(ctx), opt_(*ctx.options) {
    const auto& c = opt_.common;
    B_ = c.batch;
    H_ = c.heads;
    Hkv_ = c.resolved_kv_heads();
    D_ = c.head_dim;
    dtype_ = ctx.on_gpu() ? c.dtype : DType::kFloat32;
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
      copy_gbps_ = measure_copy_bandwidth_gbps(kCopyBytes, kCopyIters, ctx.stream);
    }
  }

  std::vector<std::string> describe() const override {
    std::vector<std::string> lines;
    std::ostringstream os;
    os << "op rope: q and k in place, " << dtype_name(dtype_) << ", B " << B_ << ", H " << H_ << ", Hkv " << Hkv_
       << ", D " << D_ << ", rotary dim " << rotary_dim_ << ", style " << (opt_.rope_gptj ? "gptj" : "neox")
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
       << (ctx_.on_gpu()
               ? "RoPE; element ok if |err| <= 2*naive_err + ulp*max|ref| (naive: host RoPE in the input dtype)"
               : "RoPE; element ok if |err| <= 1e-4*max(1,max|ref|)");
    lines.push_back(ck.str());
    return lines;
  }

  bool work_is_bytes() const override { return true; }
  double work(int64_t seq) const override {
    return rope_bytes(B_, seq, H_, Hkv_, D_, static_cast<int64_t>(dtype_size(dtype_)));
  }

  std::string shape_header() const override {
    char buf[128];
    std::snprintf(buf, sizeof(buf), "%8s %4s %4s %4s %4s %4s %5s", "seq", "B", "H", "Hkv", "D", "rot", "style");
    return buf;
  }
  std::string shape_cells(int64_t seq) const override {
    char buf[128];
    std::snprintf(buf, sizeof(buf), "%8lld %4lld %4lld %4lld %4lld %4lld %5s", static_cast<long long>(seq),
                  static_cast<long long>(B_), static_cast<long long>(H_), static_cast<long long>(Hkv_),
                  static_cast<long long>(D_), static_cast<long long>(rotary_dim_), opt_.rope_gptj ? "gptj" : "neox");
    return buf;
  }
  std::string extra_header() const override { return ctx_.on_gpu() ? " %copy" : ""; }
  std::string extra_cells(int64_t seq, double time_ms) const override {
    if (!ctx_.on_gpu()) return "";
    char buf[32];
    std::snprintf(buf, sizeof(buf), " %5.1f", 100.0 * percent_base(seq, time_ms));
    return buf;
  }
  void json_options(JsonObject& out) const override {
    out.set("rotary_dim", rotary_dim_).set("style", opt_.rope_gptj ? "gptj" : "neox");
    if (ctx_.on_gpu()) out.set("copy_gbps", copy_gbps_);
  }
  void json_row(JsonObject& row, int64_t seq, double time_ms) const override {
    row.set("B", B_).set("H", H_).set("Hkv", Hkv_).set("D", D_).set("hidden", H_ * D_);
    row.set("rotary_dim", rotary_dim_).set("style", opt_.rope_gptj ? "gptj" : "neox").set("dtype", dtype_name(dtype_));
    row.set("bytes", work(seq));
    if (ctx_.on_gpu()) row.set("pct_copy", 100.0 * percent_base(seq, time_ms));
  }

  void setup(int64_t seq) override {
    S_ = seq;
    ++size_index_;
    const uint64_t seed = opt_.seed + 16 * static_cast<uint64_t>(size_index_);
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
                             TensorView::packed(k_.get(), dtype_, Device::kCuda, B_, S_, Hkv_, D_),
                             static_cast<const float*>(inv_freq_dev_.get())),
                      ctx_.stream);
    } else {
      rope_apply_host(params(hq_.view, hk_.view, freqs_.inv_freq.data()));
    }
  }

  bool check_affordable(int64_t seq) const override { return seq <= opt_.check_max_seq; }

  CheckResult check() override {
    const uint64_t seed = (opt_.seed ^ 0x5eedc0ffeeull) + 16 * static_cast<uint64_t>(size_index_);
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
    rope_apply_host(params(q_ref.view, k_ref.view, freqs_.inv_freq.data()));
    const bool naive_on = ctx_.on_gpu();
    if (naive_on) rope_apply_host(params(q_in.view, k_in.view, freqs_.inv_freq.data()));  // q_in/k_in become naive

    CheckResult r;
    r.done = true;
    std::ostringstream detail;
    double worst = -1;
    auto compare = [&](const char* name, const TensorView& got, const TensorView& ref, const TensorView& naive) {
      const double err = max_abs_diff(got, ref);
      const double naive_err = naive_on ? max_abs_diff(naive, ref) : 0.0;
      const double ref_max = max_abs(ref);
      const double tol = naive_on ? 2 * naive_err + ulp_of(dtype_) * ref_max : 1e-4 * std::max(1.0, ref_max);
      const int64_t wrong = count_outside(got, ref, tol);
      r.wrong += wrong;
      r.checked += got.numel();
      r.max_err = std::isfinite(err) ? std::max(r.max_err, err) : err;
      r.naive_err = std::max(r.naive_err, naive_err);
      if (!(err / tol <= worst)) worst = err / tol, r.tolerance = tol;
      char buf[160];
      std::snprintf(buf, sizeof(buf), "%s err %.3g naive %.3g tol %.3g wrong %lld", name, err, naive_err, tol,
                    static_cast<long long>(wrong));
      detail << buf << (name[0] == 'q' ? "; " : "");
    };
    compare("q", q_out.view, q_ref.view, q_in.view);
    compare("k", k_out.view, k_ref.view, k_in.view);
    r.detail = detail.str();
    return r;
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

  RopeParams params(const TensorView& q, const TensorView& k, const float* inv_freq) const {
    RopeParams p;
    p.q = q;
    p.k = k;  // q_out / k_out empty: in place
    p.q_pos = PositionMap::contiguous(0, S_);
    p.k_pos = PositionMap::contiguous(0, S_);
    p.rotary_dim = rotary_dim_;
    p.style = opt_.rope_gptj ? RopeStyle::kGptJ : RopeStyle::kNeoX;
    p.inv_freq = inv_freq;
    p.scale = freqs_.scale;
    return p;
  }

  RunContext ctx_;
  const BenchOptions& opt_;
  int64_t B_ = 1, H_ = 1, Hkv_ = 1, D_ = 2, S_ = 0, rotary_dim_ = 0;
  DType dtype_ = DType::kBFloat16;
  int size_index_ = -1;
  RopeFrequencies freqs_;
  double copy_gbps_ = 0;
  DeviceBuffer q_, k_, inv_freq_dev_;
  HostTensor hq_, hk_;
};

}  // namespace

std::unique_ptr<BenchOp> make_rope_op(const RunContext& ctx) { return std::make_unique<RopeOp>(ctx); }

}  // namespace bench
}  // namespace distattn
