// Timing probe (not part of the library, not a test): one zigzag ring step's forward call on one GPU, the Hopper
// kernel (multi-chunk position maps) next to the mma.sync kernel (detail::FlashFwdOptions::allow_hopper = false), on
// the same random inputs. Rank 0 of P ranks over S tokens (2P chunks of C = S / (2P)) holds chunks 0 and 2P - 1:
// step "diag" attends to its own shard (causal), step "off" to rank 1's shard (chunks 1 and 2P - 2, causal).
// B = 1, H = 32, D = 128, bf16; CUDA events, median of `reps` after 3 warm-ups; TFLOPs from the visible pairs
// counted exactly. With alibi = 1: ALiBi with the standard slopes 2^(-8 (h + 1) / H), and a third step "self"
// (q_pos == kv_pos, one chunk of the shard: the mma.sync kernel's ALiBi cutoff case, which supported() leaves to it);
// the Hopper kernel is also called directly (column "direct") so that case can be compared.
// Build like hopper_fwd_timing (notes/hopper_kernel.md). Usage: hopper_zigzag_timing [reps] [S] [P] [alibi 0|1]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../../flash_fwd_options.h"
#include "../flash_fwd_hopper.h"
#include "distattn/core/check_cuda.h"
#include "distattn/sparse/flash_attention.h"
#include "timing_common.cuh"

using namespace distattn;

using probe::fill_random;
using probe::median_ms;

// Visible (causal) pairs between two maps, counted row by row.
double causal_pairs(const PositionMap& q, const PositionMap& kv) {
  double pairs = 0;
  for (int64_t i = 0; i < q.length(); ++i) {
    const int64_t pq = q.position(i);
    for (int c = 0; c < kv.num_chunks; ++c) {
      const PositionChunk& ch = kv.chunks[c];  // stride 1 here
      pairs += static_cast<double>(std::max<int64_t>(0, std::min<int64_t>(ch.length, pq - ch.start + 1)));
    }
  }
  return pairs;
}

int main(int argc, char** argv) {
  const int reps = argc > 1 ? atoi(argv[1]) : 20;
  const int64_t S = argc > 2 ? atoll(argv[2]) : 32768;
  const int64_t P = argc > 3 ? atoll(argv[3]) : 2;
  const bool alibi = argc > 4 && atoi(argv[4]) != 0;
  const int64_t C = S / (2 * P), L = 2 * C, H = 32, D = 128;
  cudaStream_t stream;
  DISTATTN_CUDA_CHECK(cudaStreamCreate(&stream));
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  const size_t n = size_t(L) * H * D;
  __nv_bfloat16 *q, *k, *v, *o;
  float* lse;
  DISTATTN_CUDA_CHECK(cudaMalloc(&q, n * 2));
  DISTATTN_CUDA_CHECK(cudaMalloc(&k, n * 2));
  DISTATTN_CUDA_CHECK(cudaMalloc(&v, n * 2));
  DISTATTN_CUDA_CHECK(cudaMalloc(&o, n * 4));
  DISTATTN_CUDA_CHECK(cudaMalloc(&lse, size_t(L) * H * 4));
  fill_random<<<1024, 256, 0, stream>>>(q, n, 1);
  fill_random<<<1024, 256, 0, stream>>>(k, n, 2);
  fill_random<<<1024, 256, 0, stream>>>(v, n, 3);
  DISTATTN_CUDA_CHECK_LAUNCH();
  PositionMap q_pos = PositionMap::contiguous(0, C);
  q_pos.add_chunk((2 * P - 1) * C, 1, C);
  PositionMap kv_off = PositionMap::contiguous(C, C);
  kv_off.add_chunk((2 * P - 2) * C, 1, C);
  struct Step {
    const char* name;
    PositionMap kv;
  };
  const Step steps[] = {{"diag", q_pos}, {"off", kv_off}, {"self", PositionMap::contiguous(0, L)}};
  std::vector<float> slopes(H);
  for (int64_t h = 0; h < H; ++h) slopes[h] = std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(H));
  float* d_slopes = nullptr;
  DISTATTN_CUDA_CHECK(cudaMalloc(&d_slopes, H * 4));
  DISTATTN_CUDA_CHECK(cudaMemcpy(d_slopes, slopes.data(), H * 4, cudaMemcpyHostToDevice));
  printf("S=%lld P=%lld rank 0 shard %lld rows (chunks of %lld), H=%lld D=%lld bf16, accumulate mode (fp32 o)%s\n",
         (long long)S, (long long)P, (long long)L, (long long)C, (long long)H, (long long)D, alibi ? ", ALiBi" : "");
  for (const Step& st : steps) {
    const bool self = st.kv.num_chunks == 1;
    if (self && !alibi) continue;
    AttnParams p;
    p.q = TensorView::packed(q, DType::kBFloat16, Device::kCuda, 1, L, H, D);
    p.k = TensorView::packed(k, DType::kBFloat16, Device::kCuda, 1, L, H, D);
    p.v = TensorView::packed(v, DType::kBFloat16, Device::kCuda, 1, L, H, D);
    p.o = TensorView::packed(o, DType::kFloat32, Device::kCuda, 1, L, H, D);
    p.lse = lse;
    p.accumulate = true;
    p.q_pos = self ? st.kv : q_pos;
    p.kv_pos = st.kv;
    p.alibi_slopes = alibi ? d_slopes : nullptr;
    p.mask = Mask::make_causal();
    validate_forward(p, Device::kCuda);
    const bool hopper = flash_fwd_hopper_supported(p, device);
    detail::FlashFwdOptions mma;
    mma.allow_hopper = false;
    const double t_new =
        median_ms([&] { detail::flash_attention_forward(p, detail::FlashFwdOptions{}, stream); }, reps, stream);
    const double t_old = median_ms([&] { detail::flash_attention_forward(p, mma, stream); }, reps, stream);
    const double t_direct = median_ms([&] { flash_fwd_hopper(p, stream); }, reps, stream);
    const double flops = 4.0 * causal_pairs(p.q_pos, st.kv) * H * D;
    printf(
        "step %-5s hopper_supported=%d  dispatched %8.3f ms %7.1f TF | mma.sync %8.3f ms %7.1f TF | x%.2f | "
        "hopper direct %8.3f ms %7.1f TF\n",
        st.name, hopper ? 1 : 0, t_new, flops / t_new / 1e9, t_old, flops / t_old / 1e9, t_old / t_new, t_direct,
        flops / t_direct / 1e9);
  }
  return 0;
}
