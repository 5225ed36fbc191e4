// ALiBi backward timing program (helper alibi-bwd): distattn's CUDA backward at B = 1, H = 32, D = 128, bf16,
// q_pos = kv_pos = 0..S-1, causal and non-causal. Per (S, mask) six configurations timed INTERLEAVED (one call
// of each per iteration, CUDA events around each call):
//   none, alibi (cutoff on = the library default), alibi-nocut (detail::FlashBwdOptions{false}), on random
//   inputs (uniform(-sqrt3, sqrt3), like distattn_bench) and on "adversarial" inputs (q, k x 100: the cutoff's
//   bound then clears no pair, so it only costs its pre-pass).
// O and LSE of each input set come from the library forward (ALiBi or not, as the backward). Also checks that
// cutoff-on and cutoff-off give bit-identical dK, dV (and reports the dQ difference: fp32 atomics order).
// JSON rows to argv[1]; argv[2]: iteration scale; argv[3]: comma-separated sizes.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_bwd_options.h"

using namespace distattn;

__global__ void fill_random(__nv_bfloat16* x, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + seed) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = (z >> 40) * (1.0f / 16777216.0f);
    x[i] = __float2bfloat16((u - 0.5f) * 3.4641016f * scale);
  }
}
static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
static float bf(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

int main(int argc, char** argv) {
  const char* json_path = argc > 1 ? argv[1] : nullptr;
  const double iter_scale = argc > 2 ? atof(argv[2]) : 1.0;
  std::vector<int> sizes = {8192, 16384, 32768};
  if (argc > 3) {
    sizes.clear();
    for (char* t = strtok(argv[3], ","); t; t = strtok(nullptr, ",")) sizes.push_back(atoi(t));
  }
  const int B = 1, H = 32, D = 128;
  const float kAdvScale = 100.f;
  cudaStream_t stream;
  DISTATTN_CUDA_CHECK(cudaStreamCreate(&stream));
  std::vector<float> slopes(H);
  for (int h = 0; h < H; ++h) slopes[h] = std::pow(2.0f, -8.0f * (h + 1) / H);
  float* d_slopes;
  DISTATTN_CUDA_CHECK(cudaMalloc(&d_slopes, H * sizeof(float)));
  DISTATTN_CUDA_CHECK(cudaMemcpy(d_slopes, slopes.data(), H * sizeof(float), cudaMemcpyHostToDevice));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::string rows_json;
  const char* names[6] = {"none", "alibi", "alibi-nocut", "none-adv", "alibi-adv", "alibi-nocut-adv"};
  printf("%-7s %-6s %-16s %9s %9s %9s %8s\n", "S", "causal", "config", "med_ms", "min_ms", "max_ms", "vs_none");
  for (int S : sizes) {
    const size_t n = size_t(B) * S * H * D;
    auto alloc = [&](size_t bytes) {
      void* p;
      DISTATTN_CUDA_CHECK(cudaMalloc(&p, bytes));
      return p;
    };
    __nv_bfloat16 *q = (__nv_bfloat16*)alloc(n * 2), *k = (__nv_bfloat16*)alloc(n * 2),
                  *qa = (__nv_bfloat16*)alloc(n * 2), *ka = (__nv_bfloat16*)alloc(n * 2),
                  *v = (__nv_bfloat16*)alloc(n * 2), *dout = (__nv_bfloat16*)alloc(n * 2);
    __nv_bfloat16* o[4];
    float* lse[4];
    for (int i = 0; i < 4; ++i) o[i] = (__nv_bfloat16*)alloc(n * 2), lse[i] = (float*)alloc(size_t(B) * H * S * 4);
    __nv_bfloat16 *dq = (__nv_bfloat16*)alloc(n * 2), *dk = (__nv_bfloat16*)alloc(n * 2),
                  *dv = (__nv_bfloat16*)alloc(n * 2);
    fill_random<<<1024, 256>>>(q, n, 1 + S, 1.f);
    fill_random<<<1024, 256>>>(k, n, 1000003 + S, 1.f);
    fill_random<<<1024, 256>>>(qa, n, 1 + S, kAdvScale);
    fill_random<<<1024, 256>>>(ka, n, 1000003 + S, kAdvScale);
    fill_random<<<1024, 256>>>(v, n, 7000001 + S, 1.f);
    fill_random<<<1024, 256>>>(dout, n, 9000001 + S, 1.f);
    DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());
    for (int causal : {1, 0}) {
      auto fwd = [&](int cfg) {  // cfg 0..5 -> the forward params of its input set (set = adv * 2 + alibi)
        const bool adv = cfg >= 3;
        const bool alibi = cfg % 3 != 0;
        const int set = adv * 2 + alibi;
        AttnParams p;
        p.q = TensorView::packed(adv ? qa : q, DType::kBFloat16, Device::kCuda, B, S, H, D);
        p.k = TensorView::packed(adv ? ka : k, DType::kBFloat16, Device::kCuda, B, S, H, D);
        p.v = TensorView::packed(v, DType::kBFloat16, Device::kCuda, B, S, H, D);
        p.o = TensorView::packed(o[set], DType::kBFloat16, Device::kCuda, B, S, H, D);
        p.lse = lse[set];
        p.q_pos = PositionMap::contiguous(0, S);
        p.kv_pos = PositionMap::contiguous(0, S);
        p.mask = causal ? Mask::make_causal() : Mask::none();
        p.alibi_slopes = alibi ? d_slopes : nullptr;
        return p;
      };
      for (int cfg : {0, 1, 3, 4}) flash_attention_forward(fwd(cfg), stream);
      auto bwd = [&](int cfg, bool skip) {
        AttnBwdParams b;
        b.fwd = fwd(cfg);
        b.dout = TensorView::packed(dout, DType::kBFloat16, Device::kCuda, B, S, H, D);
        b.dq = TensorView::packed(dq, DType::kBFloat16, Device::kCuda, B, S, H, D);
        b.dk = TensorView::packed(dk, DType::kBFloat16, Device::kCuda, B, S, H, D);
        b.dv = TensorView::packed(dv, DType::kBFloat16, Device::kCuda, B, S, H, D);
        detail::FlashBwdOptions opt;
        opt.alibi_cutoff = cfg % 3 == 1;
        opt.alibi_cutoff_skip = skip;
        detail::flash_attention_backward(b, opt, stream);
      };
      const double flops = 10.0 * B * double(S) * S * H * D / (causal ? 2 : 1);  // flash bwd: 2.5 x fwd
      int iters = S <= 8192 ? 20 : S <= 16384 ? 10 : 5;
      iters = std::max(2, int(iters * iter_scale));
      for (int cfg = 0; cfg < 6; ++cfg) bwd(cfg, true);
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
      std::vector<double> ms[6];
      for (int it = 0; it < iters; ++it)
        for (int cfg = 0; cfg < 6; ++cfg) {
          cudaEventRecord(e0, stream);
          bwd(cfg, true);
          cudaEventRecord(e1, stream);
          DISTATTN_CUDA_CHECK(cudaEventSynchronize(e1));
          float t;
          cudaEventElapsedTime(&t, e0, e1);
          ms[cfg].push_back(t);
        }
      for (int cfg = 0; cfg < 6; ++cfg) {
        const double med = median(ms[cfg]), base = median(ms[cfg < 3 ? 0 : 3]);
        std::vector<double> ratio;
        for (int it = 0; it < iters; ++it) ratio.push_back(ms[cfg][it] / ms[cfg < 3 ? 0 : 3][it]);
        const double pr = median(ratio);
        const double mn = *std::min_element(ms[cfg].begin(), ms[cfg].end());
        const double mx = *std::max_element(ms[cfg].begin(), ms[cfg].end());
        printf("%-7d %-6d %-16s %9.3f %9.3f %9.3f %+7.1f%%  (paired %+5.1f%%) %6.1f TF\n", S, causal, names[cfg], med,
               mn, mx, (med / base - 1) * 100, (pr - 1) * 100, flops / med * 1e-9);
        char buf[640];
        snprintf(buf, sizeof(buf),
                 "%s{\"op\": \"flash_bwd\", \"seq\": %d, \"B\": %d, \"H\": %d, \"D\": %d, \"dtype\": \"bf16\", "
                 "\"causal\": %s, \"config\": \"%s\", \"alibi\": %s, \"cutoff\": %s, \"inputs\": \"%s\", "
                 "\"iters\": %d, \"time_ms\": %.4f, \"min_ms\": %.4f, \"max_ms\": %.4f, \"tflops\": %.2f, "
                 "\"vs_none_pct\": %.2f, \"paired_vs_none_pct\": %.2f}",
                 rows_json.empty() ? "" : "\n", S, B, H, D, causal ? "true" : "false", names[cfg],
                 cfg % 3 ? "true" : "false", cfg % 3 == 1 ? "true" : "false", cfg >= 3 ? "qk_x100" : "random", iters,
                 med, mn, mx, flops / med * 1e-9, (med / base - 1) * 100, (pr - 1) * 100);
        rows_json += buf;
      }
      // Bit identity: cutoff skipping vs judged-but-not-skipped vs cutoff off (dK, dV memcmp; dQ max diff).
      for (int adv : {0, 1}) {
        std::vector<uint16_t> g[3][3];
        for (int pass = 0; pass < 3; ++pass) {
          for (auto* t : {dq, dk, dv}) cudaMemsetAsync(t, 0xff, n * 2, stream);
          if (pass < 2) {
            bwd(adv * 3 + 1, pass == 0);
          } else {
            bwd(adv * 3 + 2, true);
          }
          DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
          __nv_bfloat16* src[3] = {dq, dk, dv};
          for (int i = 0; i < 3; ++i) {
            g[pass][i].resize(n);
            cudaMemcpy(g[pass][i].data(), src[i], n * 2, cudaMemcpyDeviceToHost);
          }
        }
        for (int ref = 1; ref < 3; ++ref) {
          const bool same_k = memcmp(g[0][1].data(), g[ref][1].data(), n * 2) == 0;
          const bool same_v = memcmp(g[0][2].data(), g[ref][2].data(), n * 2) == 0;
          double dmax = 0, qmax = 0;
          size_t ndiff = 0, nonfinite = 0;
          for (size_t i = 0; i < n; ++i) {
            const float a = bf(g[0][0][i]), b = bf(g[ref][0][i]);
            if (!std::isfinite(a) || !std::isfinite(b)) ++nonfinite;
            dmax = std::max(dmax, double(std::fabs(a - b)));
            qmax = std::max(qmax, double(std::fabs(b)));
            ndiff += g[0][0][i] != g[ref][0][i];
          }
          printf(
              "S %d causal %d %s: cutoff vs %s: dK identical %s, dV identical %s, dQ: %zu of %zu bf16 values "
              "differ, max |diff| %.3g (max |dQ| %.3g), non-finite %zu\n",
              S, causal, adv ? "adversarial" : "random", ref == 1 ? "judged-not-skipped" : "cutoff-off",
              same_k ? "YES" : "NO", same_v ? "YES" : "NO", ndiff, n, dmax, qmax, nonfinite);
        }
      }
    }
    for (void* p : {(void*)q, (void*)k, (void*)qa, (void*)ka, (void*)v, (void*)dout, (void*)dq, (void*)dk, (void*)dv})
      cudaFree(p);
    for (int i = 0; i < 4; ++i) cudaFree(o[i]), cudaFree(lse[i]);
  }
  if (json_path) {
    FILE* f = fopen(json_path, "w");
    fprintf(f, "%s\n", rows_json.c_str());
    fclose(f);
  }
  return 0;
}
