// distattn_probe_forward_spread: why do forward-only processes of one command land at one of two speeds?
//
// Session 10 found that a process of the plain 8K non-causal forward (bf16, B 1, H 32, D 128) runs at 1.82-1.84 or
// 1.94-1.99 ms, steady within the process, while fwd+bwd processes agree within 0.2% (bench/results/
// 2026-11-23_h200_s10_positional). Neither the sampled SM clock nor the buffers' virtual addresses explained it. This
// probe separates the remaining candidates inside ONE process:
//   - several independent buffer sets (each q, k, v, o, lse its own cudaMalloc): if the sets of one process differ
//     steadily, the speed follows the physical placement of the buffers; if they agree, it is state of the process
//     or of the GPU;
//   - rounds over the sets, then an idle gap and more rounds: whether the speed drifts or flips within a process;
//   - NVML sampled every millisecond on a thread during each timed block: the SM clock, the power draw and the clock
//     event (throttle) reasons, so that a short dip nvidia-smi's 20 ms samples miss shows up; and the board's energy
//     counter before and after the block: the energy of one call (mJ), which decides the time of a call once the
//     power cap holds the clock.
//   - mode (the 7th argument) picks the timed call, to compare energies per call: 0 flash_attention_forward; 1
//     flash_attention_forward_rope (NeoX over D = 128, base 10000; the path follows DISTATTN_ROPE_FWD as in the
//     library); 2 the RoPE kernel alone (rope_apply_cuda on q, k in place); 3 a device copy of the same bytes (q and
//     k into a scratch buffer: what moving them costs without any arithmetic).
//
// Usage: distattn_probe_forward_spread [S=8192] [causal=0] [sets=4] [rounds=3] [iters=30] [gap_ms=500] [mode=0]
//                                      [warm_ms=0]
// warm_ms: before the first round, calls for this many ms (the clock settles under the power cap).
// Output: one line per (round, set): the median ms of `iters` back-to-back launches (CUDA events around each), the
// mean / min SM clock of the samples taken meanwhile, mean power, the OR of the reasons seen and the energy per call;
// then a summary line.
// A research tool (bench/results/2026-11-23_h200_s11_clocks): nothing in the library or the tests depends on it.
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "device_fill.h"
#include "distattn/core/attn_params.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/positional/rope.h"
#include "distattn/sparse/flash_attention.h"
#include "stream_timer.h"

namespace {

using distattn::AttnParams;
using distattn::DType;
using distattn::TensorView;
namespace bench = distattn::bench;

// NVML through dlopen: the probe needs no NVML at link time (the dev machine has no driver library); without it the
// clock columns read -1.
struct Nvml {
  using InitFn = int (*)();
  using HandleByPciFn = int (*)(const char*, void**);
  using ClockFn = int (*)(void*, int, unsigned*);
  using ReasonsFn = int (*)(void*, unsigned long long*);
  using PowerFn = int (*)(void*, unsigned*);
  using EnergyFn = int (*)(void*, unsigned long long*);
  void* lib = nullptr;
  void* dev = nullptr;
  ClockFn clock = nullptr;
  ReasonsFn reasons = nullptr;
  PowerFn power = nullptr;
  EnergyFn energy = nullptr;  // mJ since the driver loaded

  explicit Nvml(int cuda_device) {
    lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (lib == nullptr) return;
    auto init = reinterpret_cast<InitFn>(dlsym(lib, "nvmlInit_v2"));
    auto by_pci = reinterpret_cast<HandleByPciFn>(dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
    clock = reinterpret_cast<ClockFn>(dlsym(lib, "nvmlDeviceGetClockInfo"));
    reasons = reinterpret_cast<ReasonsFn>(dlsym(lib, "nvmlDeviceGetCurrentClocksEventReasons"));
    if (reasons == nullptr)
      reasons = reinterpret_cast<ReasonsFn>(dlsym(lib, "nvmlDeviceGetCurrentClocksThrottleReasons"));
    power = reinterpret_cast<PowerFn>(dlsym(lib, "nvmlDeviceGetPowerUsage"));
    energy = reinterpret_cast<EnergyFn>(dlsym(lib, "nvmlDeviceGetTotalEnergyConsumption"));
    char bus[32] = {0};
    if (init == nullptr || by_pci == nullptr || clock == nullptr || init() != 0 ||
        cudaDeviceGetPCIBusId(bus, sizeof(bus), cuda_device) != cudaSuccess || by_pci(bus, &dev) != 0) {
      dev = nullptr;
    }
  }
  bool ok() const { return dev != nullptr; }
  // The energy counter in mJ, or -1.
  double energy_mj() const {
    unsigned long long mj = 0;
    return ok() && energy != nullptr && energy(dev, &mj) == 0 ? static_cast<double>(mj) : -1.0;
  }
};

struct Samples {
  double clock_mean = -1, clock_min = -1, power_mean_w = -1;
  unsigned long long reasons_or = 0;
  int count = 0;
};

// Samples NVML every millisecond until `stop` is set.
Samples sample_until(const Nvml& nvml, const std::atomic<bool>& stop) {
  Samples s;
  if (!nvml.ok()) return s;
  double sum = 0, psum = 0, mn = 1e9;
  int n = 0, np = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    unsigned mhz = 0, mw = 0;
    unsigned long long r = 0;
    if (nvml.clock(nvml.dev, /*NVML_CLOCK_SM*/ 1, &mhz) == 0) sum += mhz, mn = std::min(mn, double(mhz)), ++n;
    if (nvml.power != nullptr && nvml.power(nvml.dev, &mw) == 0) psum += mw / 1000.0, ++np;
    if (nvml.reasons != nullptr && nvml.reasons(nvml.dev, &r) == 0) s.reasons_or |= r;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (n > 0) s.clock_mean = sum / n, s.clock_min = mn;
  if (np > 0) s.power_mean_w = psum / np;
  s.count = n;
  return s;
}

struct BufferSet {
  bench::DeviceBuffer q, k, v, o, lse;
};

int arg_or(int argc, char** argv, int i, int fallback) { return argc > i ? std::atoi(argv[i]) : fallback; }

}  // namespace

int main(int argc, char** argv) {
  try {
    const int64_t S = arg_or(argc, argv, 1, 8192);
    const bool causal = arg_or(argc, argv, 2, 0) != 0;
    const int sets = std::max(1, arg_or(argc, argv, 3, 4));
    const int rounds = std::max(1, arg_or(argc, argv, 4, 3));
    const int iters = std::max(1, arg_or(argc, argv, 5, 30));
    const int gap_ms = std::max(0, arg_or(argc, argv, 6, 500));
    const int mode = arg_or(argc, argv, 7, 0);
    DISTATTN_CHECK_ARG(mode >= 0 && mode <= 3, "mode",
                       "expected 0 (forward), 1 (forward with RoPE), 2 (RoPE kernel) or "
                       "3 (copy), got ",
                       mode);
    const int warm_ms = std::max(0, arg_or(argc, argv, 8, 0));
    const int64_t B = 1, H = 32, D = 128;
    const size_t qkv_bytes = static_cast<size_t>(B * S * H * D) * 2, lse_bytes = static_cast<size_t>(B * H * S) * 4;

    DISTATTN_CUDA_CHECK(cudaSetDevice(0));
    cudaStream_t stream = nullptr;
    DISTATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    Nvml nvml(0);
    const char* rope_env = std::getenv("DISTATTN_ROPE_FWD");
    const std::string call_name = mode == 0   ? std::string("flash_attention_forward")
                                  : mode == 1 ? std::string("flash_attention_forward_rope, DISTATTN_ROPE_FWD=") +
                                                    (rope_env != nullptr ? rope_env : "(unset)")
                                  : mode == 2 ? std::string("rope_apply_cuda on q, k (the RoPE kernel alone)")
                                              : std::string("cudaMemcpyAsync of q and k into a scratch buffer");
    std::printf(
        "# forward_spread: S %lld, %s, B 1, H 32, D 128, bf16; %d sets x %d rounds x %d iters; gap %d ms; "
        "warm %d ms; call %s; NVML %s\n",
        static_cast<long long>(S), causal ? "causal" : "non-causal", sets, rounds, iters, gap_ms, warm_ms,
        call_name.c_str(), nvml.ok() ? "yes" : "no");
    // RoPE: NeoX over all 128 dims, base 10000 (inv_freq[i] = 10000^(-2i / 128)), positions 0..S-1 (the params').
    std::vector<float> inv_freq_host(64);
    for (int i = 0; i < 64; ++i) inv_freq_host[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / 128.0));
    bench::DeviceBuffer inv_freq(64 * sizeof(float));
    DISTATTN_CUDA_CHECK(cudaMemcpy(inv_freq.get(), inv_freq_host.data(), 64 * sizeof(float), cudaMemcpyHostToDevice));
    distattn::RopeAngles angles;
    angles.inv_freq = static_cast<const float*>(inv_freq.get());
    angles.rotary_dim = 128;
    angles.style = 0;
    bench::DeviceBuffer copy_dst(mode == 3 ? 2 * qkv_bytes : 0);  // mode 3: where q and k are copied to
    const auto call = [&](const AttnParams& p) {
      if (mode == 0) {
        distattn::flash_attention_forward(p, stream);
      } else if (mode == 1) {
        distattn::flash_attention_forward_rope(p, angles, stream);
      } else if (mode == 2) {
        distattn::RopeParams rp;
        rp.q = p.q, rp.k = p.k, rp.q_pos = p.q_pos, rp.k_pos = p.kv_pos;
        rp.rotary_dim = 128, rp.inv_freq = angles.inv_freq;
        distattn::rope_apply_cuda(rp, stream);
      } else {
        char* dst = static_cast<char*>(copy_dst.get());
        DISTATTN_CUDA_CHECK(cudaMemcpyAsync(dst, p.q.data, qkv_bytes, cudaMemcpyDeviceToDevice, stream));
        DISTATTN_CUDA_CHECK(cudaMemcpyAsync(dst + qkv_bytes, p.k.data, qkv_bytes, cudaMemcpyDeviceToDevice, stream));
      }
    };

    std::vector<BufferSet> bufs(sets);
    std::vector<AttnParams> params(sets);
    for (int s = 0; s < sets; ++s) {
      BufferSet& b = bufs[s];
      b.q = bench::DeviceBuffer(qkv_bytes), b.k = bench::DeviceBuffer(qkv_bytes), b.v = bench::DeviceBuffer(qkv_bytes);
      b.o = bench::DeviceBuffer(qkv_bytes), b.lse = bench::DeviceBuffer(lse_bytes);
      // The same values in every set (same seeds), so that only the placement differs.
      bench::fill_random_device(b.q.get(), B * S * H * D, DType::kBFloat16, 1, 1.f, stream);
      bench::fill_random_device(b.k.get(), B * S * H * D, DType::kBFloat16, 2, 1.f, stream);
      bench::fill_random_device(b.v.get(), B * S * H * D, DType::kBFloat16, 3, 1.f, stream);
      AttnParams& p = params[s];
      p.q = TensorView::packed(b.q.get(), DType::kBFloat16, distattn::Device::kCuda, B, S, H, D);
      p.k = TensorView::packed(b.k.get(), DType::kBFloat16, distattn::Device::kCuda, B, S, H, D);
      p.v = TensorView::packed(b.v.get(), DType::kBFloat16, distattn::Device::kCuda, B, S, H, D);
      p.o = TensorView::packed(b.o.get(), DType::kBFloat16, distattn::Device::kCuda, B, S, H, D);
      p.lse = static_cast<float*>(b.lse.get());
      p.q_pos = distattn::PositionMap::contiguous(0, S);
      p.kv_pos = distattn::PositionMap::contiguous(0, S);
      p.mask = causal ? distattn::Mask::make_causal() : distattn::Mask::none();
      std::printf("# set %d: q %p k %p v %p o %p\n", s, b.q.get(), b.k.get(), b.v.get(), b.o.get());
    }
    DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int i = 0; i < 10; ++i) call(params[0]);  // warm-up, as the bench's -w 10
    DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
    {
      const auto t0 = std::chrono::steady_clock::now();
      while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(warm_ms)) {
        for (int i = 0; i < 5; ++i) call(params[0]);
        DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
      }
    }

    std::printf("# %5s %4s %10s %9s %9s %8s %10s %10s\n", "round", "set", "ms", "clk_mean", "clk_min", "power_w",
                "reasons", "mJ/call");
    std::vector<double> all, energies;
    const auto block = [&](int round, int s) {
      std::atomic<bool> stop{false};
      Samples smp;
      std::thread sampler([&] { smp = sample_until(nvml, stop); });
      const double e0 = nvml.energy_mj();
      const double ms = bench::median_stream_ms(stream, 0, iters, [&] { call(params[s]); });  // synchronises
      const double e1 = nvml.energy_mj();
      stop = true;
      sampler.join();
      all.push_back(ms);
      const double per_call = e0 >= 0 && e1 >= 0 ? (e1 - e0) / iters : -1.0;
      if (per_call >= 0) energies.push_back(per_call);
      std::printf("  %5d %4d %10.4f %9.1f %9.1f %8.1f %#10llx %10.2f\n", round, s, ms, smp.clock_mean, smp.clock_min,
                  smp.power_mean_w, smp.reasons_or, per_call);
      std::fflush(stdout);
    };
    for (int r = 0; r < rounds; ++r)
      for (int s = 0; s < sets; ++s) block(r, s);
    std::this_thread::sleep_for(std::chrono::milliseconds(gap_ms));
    for (int s = 0; s < sets; ++s) block(rounds, s);  // after the idle gap
    const auto mm = std::minmax_element(all.begin(), all.end());
    std::printf("# summary: median %.4f ms, min %.4f, max %.4f (max/min %.3f); energy per call median %.2f mJ\n",
                bench::median_of(all), *mm.first, *mm.second, *mm.second / *mm.first,
                energies.empty() ? -1.0 : bench::median_of(energies));
    cudaStreamDestroy(stream);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distattn_probe_forward_spread: %s\n", e.what());
    return 1;
  }
}
