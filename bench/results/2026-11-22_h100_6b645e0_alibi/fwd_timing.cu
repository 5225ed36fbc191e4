// ALiBi timing program (helper alibi, session 2): distattn's CUDA forward at B = 1, H = 32, D = 128, bf16,
// q_pos = kv_pos = 0..S-1, causal and non-causal; per (S, mask) six configurations timed INTERLEAVED (one call
// of each per iteration, CUDA events around each call), so clock/thermal drift hits all alike:
//   none, alibi (cutoff on = the library default), alibi-nocut (cutoff off), on random inputs
//   (uniform(-sqrt3, sqrt3), like distattn_bench) and on "adversarial" inputs (q, k x 100: the cutoff's bound
//   then clears no tile, so it only costs its pre-pass and per-CTA setup).
// Reports median / min / max ms, the median of the per-iteration ratios alibi / none, the pre-pass time alone,
// whether cutoff-on and cutoff-off give bit-identical O and LSE, and (S = 4K) an fp64 spot check. JSON to argv[1].
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
#include "flash_fwd_options.h"
#include "flash_fwd_params.h"

using namespace distattn;

__global__ void fill_random(__nv_bfloat16* x, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + seed) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = (z >> 40) * (1.0f / 16777216.0f);          // [0,1)
    x[i] = __float2bfloat16((u - 0.5f) * 3.4641016f * scale);  // uniform(-sqrt3, sqrt3) * scale: variance scale^2
  }
}
static float bf(const __nv_bfloat16& h) { return __bfloat162float(h); }
static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  const char* json_path = argc > 1 ? argv[1] : nullptr;
  const double iter_scale = argc > 2 ? atof(argv[2]) : 1.0;
  std::vector<int> sizes = {4096, 8192, 16384, 32768, 131072};
  if (argc > 3) {
    sizes.clear();
    for (char* t = strtok(argv[3], ","); t; t = strtok(nullptr, ",")) sizes.push_back(atoi(t));
  }
  const int B = 1, H = 32, D = 128;
  const float kAdvScale = 100.f;
  cudaStream_t stream;
  DISTATTN_CUDA_CHECK(cudaStreamCreate(&stream));
  if (argc > 4 && std::string(argv[4]) == "pool") {
    // Diagnosis: keep the default pool's memory across synchronisations (cudaMallocAsync then costs ~nothing).
    cudaMemPool_t pool;
    DISTATTN_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, 0));
    uint64_t big = ~0ull;
    DISTATTN_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &big));
    printf("default pool release threshold: max\n");
  }
  std::vector<float> slopes(H);
  for (int h = 0; h < H; ++h) slopes[h] = std::pow(2.0f, -8.0f * (h + 1) / H);
  float* d_slopes;
  DISTATTN_CUDA_CHECK(cudaMalloc(&d_slopes, H * sizeof(float)));
  DISTATTN_CUDA_CHECK(cudaMemcpy(d_slopes, slopes.data(), H * sizeof(float), cudaMemcpyHostToDevice));
  cudaDeviceProp prop;
  DISTATTN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::string rows_json;
  printf("device %s\n", prop.name);
  printf("%-7s %-6s %-12s %9s %9s %9s %8s\n", "S", "causal", "config", "med_ms", "min_ms", "max_ms", "vs_none");
  const char* names[6] = {"none", "alibi", "alibi-nocut", "none-adv", "alibi-adv", "alibi-nocut-adv"};
  for (int S : sizes) {
    const size_t n = size_t(B) * S * H * D;
    __nv_bfloat16 *q, *k, *qa, *ka, *v, *o;
    float* lse;
    DISTATTN_CUDA_CHECK(cudaMalloc(&q, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&k, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&qa, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&ka, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&v, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&o, n * 2));
    DISTATTN_CUDA_CHECK(cudaMalloc(&lse, size_t(B) * H * S * 4));
    fill_random<<<1024, 256>>>(q, n, 1 + S, 1.f);
    fill_random<<<1024, 256>>>(k, n, 1000003 + S, 1.f);
    fill_random<<<1024, 256>>>(qa, n, 1 + S, kAdvScale);
    fill_random<<<1024, 256>>>(ka, n, 1000003 + S, kAdvScale);
    fill_random<<<1024, 256>>>(v, n, 7000001 + S, 1.f);
    DISTATTN_CUDA_CHECK(cudaDeviceSynchronize());

    // The pre-pass alone (max ||k||^2 per head), median of 20.
    double prepass_ms = 0;
    {
      kernels::FlashFwdParams kp;
      kp.k_ptr = k;
      kp.k_batch_stride = int64_t(S) * H * D;
      kp.k_row_stride = int64_t(H) * D;
      kp.k_head_stride = D;
      kp.batch = B, kp.seqlen_kv = S, kp.heads_kv = H, kp.head_dim = D;
      float* out;
      DISTATTN_CUDA_CHECK(cudaMalloc(&out, B * H * sizeof(float)));
      std::vector<double> ts;
      for (int r = 0; r < 23; ++r) {
        cudaEventRecord(e0, stream);
        kernels::run_kv_norm_sq_max<__nv_bfloat16>(kp, out, stream);
        cudaEventRecord(e1, stream);
        DISTATTN_CUDA_CHECK(cudaEventSynchronize(e1));
        float t;
        cudaEventElapsedTime(&t, e0, e1);
        if (r >= 3) ts.push_back(t);
      }
      prepass_ms = median(ts);
      std::vector<float> hn(H);
      cudaMemcpy(hn.data(), out, H * 4, cudaMemcpyDeviceToHost);
      printf("S %d: pre-pass (max ||k||^2 per head) %.4f ms; max ||k|| head 0 = %.3f\n", S, prepass_ms,
             std::sqrt(hn[0]));
      cudaFree(out);
    }

    for (int causal : {1, 0}) {
      const double flops = 4.0 * B * double(S) * S * H * D / (causal ? 2 : 1);
      int iters = S <= 4096 ? 60 : S <= 8192 ? 40 : S <= 16384 ? 30 : S <= 32768 ? 10 : 3;
      if (S > 32768 && !causal) iters = 2;
      iters = std::max(2, int(iters * iter_scale));
      auto params = [&](int cfg) {
        const bool adv = cfg >= 3;
        const int kind = cfg % 3;  // 0 none, 1 alibi, 2 alibi nocut
        AttnParams p;
        p.q = TensorView::packed(adv ? qa : q, DType::kBFloat16, Device::kCuda, B, S, H, D);
        p.k = TensorView::packed(adv ? ka : k, DType::kBFloat16, Device::kCuda, B, S, H, D);
        p.v = TensorView::packed(v, DType::kBFloat16, Device::kCuda, B, S, H, D);
        p.o = TensorView::packed(o, DType::kBFloat16, Device::kCuda, B, S, H, D);
        p.lse = lse;
        p.q_pos = PositionMap::contiguous(0, S);
        p.kv_pos = PositionMap::contiguous(0, S);
        p.mask = causal ? Mask::make_causal() : Mask::none();
        p.alibi_slopes = kind ? d_slopes : nullptr;
        detail::FlashFwdOptions opt;
        opt.alibi_cutoff = kind == 1;
        return std::make_pair(p, opt);
      };
      for (int cfg = 0; cfg < 6; ++cfg)
        for (int w = 0; w < 2; ++w) {
          auto po = params(cfg);
          detail::flash_attention_forward(po.first, po.second, stream);
        }
      DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
      std::vector<double> ms[6];
      for (int it = 0; it < iters; ++it)
        for (int cfg = 0; cfg < 6; ++cfg) {
          auto po = params(cfg);
          cudaEventRecord(e0, stream);
          detail::flash_attention_forward(po.first, po.second, stream);
          cudaEventRecord(e1, stream);
          DISTATTN_CUDA_CHECK(cudaEventSynchronize(e1));
          float t;
          cudaEventElapsedTime(&t, e0, e1);
          ms[cfg].push_back(t);
        }
      double med[6];
      for (int cfg = 0; cfg < 6; ++cfg) {
        med[cfg] = median(ms[cfg]);
        std::vector<double> ratio;
        for (int it = 0; it < iters; ++it) ratio.push_back(ms[cfg][it] / ms[cfg < 3 ? 0 : 3][it]);
        const double pr = median(ratio);
        printf("%-7d %-6d %-16s %9.3f %9.3f %9.3f %+7.1f%%  (paired %+5.1f%%) %6.1f TF\n", S, causal, names[cfg],
               med[cfg], *std::min_element(ms[cfg].begin(), ms[cfg].end()),
               *std::max_element(ms[cfg].begin(), ms[cfg].end()), (med[cfg] / med[cfg < 3 ? 0 : 3] - 1) * 100,
               (pr - 1) * 100, flops / med[cfg] * 1e-9);
        char buf[640];
        snprintf(buf, sizeof(buf),
                 "%s    {\"seq\": %d, \"B\": %d, \"H\": %d, \"D\": %d, \"dtype\": \"bf16\", \"causal\": %s, "
                 "\"config\": \"%s\", \"alibi\": %s, \"cutoff\": %s, \"inputs\": \"%s\", \"iters\": %d, "
                 "\"time_ms\": %.4f, \"min_ms\": %.4f, \"max_ms\": %.4f, \"tflops\": %.2f, "
                 "\"vs_none_pct\": %.2f, \"paired_vs_none_pct\": %.2f, \"prepass_ms\": %.4f}",
                 rows_json.empty() ? "" : ",\n", S, B, H, D, causal ? "true" : "false", names[cfg],
                 cfg % 3 ? "true" : "false", cfg % 3 == 1 ? "true" : "false", cfg >= 3 ? "qk_x100" : "random", iters,
                 med[cfg], *std::min_element(ms[cfg].begin(), ms[cfg].end()),
                 *std::max_element(ms[cfg].begin(), ms[cfg].end()), flops / med[cfg] * 1e-9,
                 (med[cfg] / med[cfg < 3 ? 0 : 3] - 1) * 100, (pr - 1) * 100, prepass_ms);
        rows_json += buf;
      }
      // Bit identity: cutoff on vs off, random and adversarial inputs.
      for (int adv : {0, 1}) {
        std::vector<uint16_t> o_on(n), o_off(n);
        std::vector<float> l_on(size_t(B) * H * S), l_off(l_on.size());
        for (int pass = 0; pass < 2; ++pass) {
          cudaMemsetAsync(o, 0xff, n * 2, stream);
          cudaMemsetAsync(lse, 0xff, l_on.size() * 4, stream);
          // Reference: the same walk with nothing skipped (non-causal cutoff walks rotate; see flash_fwd_options.h).
          auto po = params(adv * 3 + 1);
          po.second.alibi_cutoff_skip = pass == 0;
          detail::flash_attention_forward(po.first, po.second, stream);
          DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
          cudaMemcpy(pass ? o_off.data() : o_on.data(), o, n * 2, cudaMemcpyDeviceToHost);
          cudaMemcpy(pass ? l_off.data() : l_on.data(), lse, l_on.size() * 4, cudaMemcpyDeviceToHost);
        }
        size_t nan = 0;
        for (float x : l_on) nan += std::isfinite(x) ? 0 : 1;
        const bool same =
            memcmp(o_on.data(), o_off.data(), n * 2) == 0 && memcmp(l_on.data(), l_off.data(), l_on.size() * 4) == 0;
        printf("        %s inputs: cutoff vs nothing-skipped bit-identical O and LSE: %s (non-finite LSE: %zu)\n",
               adv ? "adversarial" : "random", same ? "YES" : "** NO **", nan);
      }
      // fp64 spot check of the cutoff run (S = 4K): rows of heads 0 (steepest) and H-1.
      if (S == 4096) {
        auto po = params(1);
        detail::flash_attention_forward(po.first, po.second, stream);
        DISTATTN_CUDA_CHECK(cudaStreamSynchronize(stream));
        std::vector<__nv_bfloat16> hq(n), hk(n), hv(n), ho(n);
        std::vector<float> hl(size_t(H) * S);
        cudaMemcpy(hq.data(), q, n * 2, cudaMemcpyDeviceToHost);
        cudaMemcpy(hk.data(), k, n * 2, cudaMemcpyDeviceToHost);
        cudaMemcpy(hv.data(), v, n * 2, cudaMemcpyDeviceToHost);
        cudaMemcpy(ho.data(), o, n * 2, cudaMemcpyDeviceToHost);
        cudaMemcpy(hl.data(), lse, hl.size() * 4, cudaMemcpyDeviceToHost);
        double max_err = 0, max_lse_err = 0;
        const double scale = 1.0 / std::sqrt(double(D));
        for (int h : {0, 5, H - 1}) {
          for (int i : {0, 1, 127, 128, 1000, 2047, 4000, S - 1}) {
            std::vector<double> sc(S, -INFINITY);
            double mx = -INFINITY;
            for (int j = 0; j < S; ++j) {
              if (causal && j > i) continue;
              double d = 0;
              for (int c = 0; c < D; ++c)
                d += double(bf(hq[(size_t(i) * H + h) * D + c])) * bf(hk[(size_t(j) * H + h) * D + c]);
              d = d * scale - slopes[h] * std::fabs(double(i - j));
              sc[j] = d;
              mx = std::max(mx, d);
            }
            double sum = 0;
            for (int j = 0; j < S; ++j) sum += std::exp(sc[j] - mx);
            const double l = mx + std::log(sum);
            max_lse_err = std::max(max_lse_err, std::fabs(l - hl[size_t(h) * S + i]));
            for (int c = 0; c < D; ++c) {
              double acc = 0;
              for (int j = 0; j < S; ++j)
                if (sc[j] > -INFINITY) acc += std::exp(sc[j] - l) * bf(hv[(size_t(j) * H + h) * D + c]);
              max_err = std::max(max_err, std::fabs(acc - bf(ho[(size_t(i) * H + h) * D + c])));
            }
          }
        }
        printf("        fp64 spot check (alibi, cutoff on): max |dO| = %.2e, max |dLSE| = %.2e %s\n", max_err,
               max_lse_err, (max_err < 2e-2 && max_lse_err < 1e-3) ? "OK" : "** BAD **");
      }
    }
    cudaFree(q);
    cudaFree(k);
    cudaFree(qa);
    cudaFree(ka);
    cudaFree(v);
    cudaFree(o);
    cudaFree(lse);
  }
  if (json_path) {
    FILE* f = fopen(json_path, "w");
    fprintf(f, "{\"device\": \"%s\", \"program\": \"fwd_timing.cu (ALiBi cutoff study)\", \"rows\": [\n%s\n]}\n",
            prop.name, rows_json.c_str());
    fclose(f);
  }
  return 0;
}
