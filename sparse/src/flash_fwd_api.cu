// flash_attention_forward: validation, kernel parameters, dispatch over dtype and head dim.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "distattn/core/check_cuda.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "distattn/core/operand_checks.h"
#include "distattn/core/scratch_pool.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_fwd_norms.h"
#include "flash_fwd_options.h"
#include "flash_fwd_params.h"
#include "hopper/flash_fwd_hopper.h"
#include "static_switch.h"

namespace distattn {

bool flash_supports_head_dim(int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

namespace {

// DISTATTN_FORWARD_KERNEL: unset, "auto" or "hopper": the Hopper kernel where it applies; "mma": the mma.sync kernel
// only. Read once per process; anything else throws naming the variable.
bool forward_kernel_forced_to_mma() {
  static const bool forced = env_choice("DISTATTN_FORWARD_KERNEL", {"auto", "hopper", "mma"}, 0) == 2;
  return forced;
}

kernels::FlashFwdParams make_fwd_params(const AttnParams& p) {
  kernels::FlashFwdParams k;
  k.q_ptr = p.q.data;
  k.k_ptr = p.k.data;
  k.v_ptr = p.v.data;
  k.o_ptr = p.o.data;
  k.lse_ptr = p.lse;
  k.q_batch_stride = p.q.stride[0];
  k.q_row_stride = p.q.stride[1];
  k.q_head_stride = p.q.stride[2];
  k.k_batch_stride = p.k.stride[0];
  k.k_row_stride = p.k.stride[1];
  k.k_head_stride = p.k.stride[2];
  k.v_batch_stride = p.v.stride[0];
  k.v_row_stride = p.v.stride[1];
  k.v_head_stride = p.v.stride[2];
  k.o_batch_stride = p.o.stride[0];
  k.o_row_stride = p.o.stride[1];
  k.o_head_stride = p.o.stride[2];
  k.lse_batch_stride = p.lse_batch_step();
  k.lse_head_stride = p.lse_head_step();
  k.lse_row_stride = p.lse_row_step();
  k.batch = static_cast<int>(p.q.batch());
  k.seqlen_q = static_cast<int>(p.q.seqlen());
  k.seqlen_kv = static_cast<int>(p.k.seqlen());
  k.heads_q = static_cast<int>(p.q.heads());
  k.heads_kv = static_cast<int>(p.k.heads());
  k.head_group = k.heads_q / k.heads_kv;
  k.head_dim = static_cast<int>(p.q.head_dim());
  k.num_m_blocks = (k.seqlen_q + kLayoutBlock - 1) / kLayoutBlock;  // kBlockM == kLayoutBlock
  k.q_pos = p.q_pos;
  k.kv_pos = p.kv_pos;
  const DiagonalBand band = DiagonalBand::from_mask(p.mask);
  k.band_lo = band.lo;
  k.band_hi = band.hi;
  if (p.mask.blocks != nullptr) {
    k.has_blocks = true;
    k.block_row_offset = p.mask.blocks->row_offset;
    k.block_col_index = p.mask.blocks->col_index;
    k.block_row_partial = p.mask.blocks->row_partial;
  }
  k.softmax_scale = p.scale();
  k.scale_log2 = static_cast<float>(static_cast<double>(k.softmax_scale) * 1.4426950408889634);
  k.alibi_slopes = p.alibi_slopes;
  k.accumulate = p.accumulate;
  k.o_fp32 = p.o.dtype == DType::kFloat32;
  if (p.o_final.data != nullptr) {  // final accumulate (validated: accumulate mode, q's dtype, o's shape)
    k.o_final_ptr = p.o_final.data;
    k.o_final_batch_stride = p.o_final.stride[0];
    k.o_final_row_stride = p.o_final.stride[1];
    k.o_final_head_stride = p.o_final.stride[2];
  }
  return k;
}

// The ALiBi cutoff's mode where its argument holds (flash_fwd_kernel.cuh, "ALiBi cutoff"), 0 elsewhere: ALiBi
// on, no block list, and q and kv at the same positions as one chunk (so every q row's own key is among the
// keys, in the CTA's diagonal tiles, which the walk visits first). 1: causal; 2: non-causal (any window).
int alibi_cutoff_mode(const AttnParams& p) {
  if (p.alibi_slopes == nullptr || p.mask.blocks != nullptr) return 0;
  if (p.q_pos.num_chunks != 1 || p.kv_pos.num_chunks != 1) return 0;
  const PositionChunk& a = p.q_pos.chunks[0];
  const PositionChunk& c = p.kv_pos.chunks[0];
  if (a.start != c.start || a.stride != c.stride || a.length != c.length) return 0;
  return p.mask.causal ? 1 : 2;
}

// Smallest key count for which the Hopper kernel applies the ALiBi cutoff by default. Below, its pre-pass (one read of
// Q and K, a memset and a launch) costs about what it saves: the CPU model (hopper/tools/alibi_cutoff_emu.cc model,
// distattn_bench's inputs, H 32, standard slopes) leaves 93% / 83% / 71% / 58% of the kv tiles at 1K / 2K / 4K / 8K,
// and the pre-pass reads 17 / 34 / 67 / 134 MB (~4 / 8 / 17 / 34 us at ~4 TB/s) against H200 kernel times of ~0.03 /
// 0.07 / 0.30 / 1.1 ms (causal): a loss at 1K, even at 2K, a gain from 4K. To be confirmed on a GPU
// (build-hopper-cutoff/run.sh times 1K-4K with and without). DISTATTN_HOPPER_CUTOFF_MIN_KV=N overrides it (read once;
// a huge N turns the Hopper cutoff off for A/B runs); anything but a non-negative integer throws naming the variable.
int64_t hopper_cutoff_min_kv() {
  static const int64_t v =
      env_int("DISTATTN_HOPPER_CUTOFF_MIN_KV", 0, std::numeric_limits<int64_t>::max(), int64_t{4096});
  return v;
}

}  // namespace

void flash_attention_forward(const AttnParams& p, cudaStream_t stream) {
  detail::flash_attention_forward(p, detail::FlashFwdOptions{}, stream);
}

int64_t alibi_merge_norms_floats(const TensorView& q, const TensorView& k) {
  return q.batch() * k.heads() + q.batch() * q.heads() * ((q.seqlen() + kLayoutBlock - 1) / kLayoutBlock);
}

void flash_attention_alibi_norms(const TensorView& q, const TensorView& k, float* norms, cudaStream_t stream) {
  check_cuda_tensor(q, "q");
  check_cuda_tensor(k, "k");
  DISTATTN_CHECK_ARG(q.dtype == DType::kBFloat16 || q.dtype == DType::kFloat16, "q", "has dtype ", dtype_name(q.dtype),
                     " (expected bf16 or fp16)");
  DISTATTN_CHECK_ARG(k.dtype == q.dtype, "k", "has dtype ", dtype_name(k.dtype), ", q has ", dtype_name(q.dtype));
  DISTATTN_CHECK_ARG(flash_supports_head_dim(q.head_dim()), "q", "head dim ", q.head_dim(), " (expected 64 or 128)");
  DISTATTN_CHECK_ARG(k.head_dim() == q.head_dim() && k.batch() == q.batch(), "k", "has batch ", k.batch(),
                     " and head dim ", k.head_dim(), ", q has ", q.batch(), " and ", q.head_dim());
  DISTATTN_CHECK_ARG(k.heads() >= 1 && q.heads() % k.heads() == 0, "k", "has ", k.heads(),
                     " heads, which must divide q's ", q.heads());
  // The kernels index rows with int32 and put heads / batches on grid.y / grid.z.
  constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max() - kLayoutBlock;
  DISTATTN_CHECK_ARG(q.seqlen() <= kMaxRows && k.seqlen() <= kMaxRows, "q", "or k has more than ", kMaxRows, " rows");
  DISTATTN_CHECK_ARG(q.heads() <= 65535 && q.batch() <= 65535, "q", "has ", q.heads(), " heads and batch ", q.batch(),
                     " (at most 65535 each)");
  DISTATTN_CHECK_ARG(q.stride[3] == 1 && k.stride[3] == 1, "q", "or k has a head dim that is not contiguous");
  check_device_pointer(norms, "norms");
  DISTATTN_CHECK_ARG(reinterpret_cast<uintptr_t>(norms) % alignof(float) == 0, "norms", "is not aligned to 4 bytes");
  AttnParams p;  // only q, k and their sizes matter to the pre-pass
  p.q = q;
  p.k = k;
  p.v = k;
  p.o = q;
  const kernels::FlashFwdParams np = make_fwd_params(p);
  float* q_norms = norms + static_cast<int64_t>(np.batch) * np.heads_kv;
  DTYPE_SWITCH(q.dtype, T, [&] { kernels::run_qk_norm_sq_max<T>(np, norms, q_norms, stream); });
}

namespace detail {

void check_forward_cuda(const AttnParams& p) {
  validate_forward(p, Device::kCuda);
  check_cuda_tensor(p.q, "q");
  check_cuda_tensor(p.k, "k");
  check_cuda_tensor(p.v, "v");
  check_cuda_tensor(p.o, "o");
  if (p.o_final.data != nullptr) check_cuda_tensor(p.o_final, "o_final");
  check_device_pointer(p.lse, "lse", /*allow_null=*/!p.accumulate);
  check_device_pointer(p.alibi_slopes, "alibi_slopes", /*allow_null=*/true);
  if (p.mask.blocks != nullptr) {
    check_device_pointer(p.mask.blocks->row_offset, "mask.blocks");
    if (p.mask.blocks->nnz > 0) {
      check_device_pointer(p.mask.blocks->col_index, "mask.blocks");
      check_device_pointer(p.mask.blocks->row_partial, "mask.blocks");
    }
  }
  DISTATTN_CHECK_ARG(flash_supports_head_dim(p.q.head_dim()), "q", "head dim ", p.q.head_dim(),
                     " has no CUDA kernel (supported: 64, 128)");
  // The kernel indexes rows with int32 and puts heads / batches on grid.y / grid.z.
  constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max() - kLayoutBlock;
  DISTATTN_CHECK_ARG(p.q.seqlen() <= kMaxRows, "q", "has ", p.q.seqlen(), " rows; the CUDA engine takes at most ",
                     kMaxRows);
  DISTATTN_CHECK_ARG(p.k.seqlen() <= kMaxRows, "k", "has ", p.k.seqlen(), " rows; the CUDA engine takes at most ",
                     kMaxRows);
  DISTATTN_CHECK_ARG(p.q.heads() <= 65535, "q", "has ", p.q.heads(), " heads; the CUDA engine takes at most 65535");
  DISTATTN_CHECK_ARG(p.q.batch() <= 65535, "q", "has batch ", p.q.batch(), "; the CUDA engine takes at most 65535");
}

bool forward_runs_hopper_rope(const AttnParams& p) {
  if (forward_kernel_forced_to_mma()) return false;
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  return flash_fwd_hopper_rope_supported(p, device);
}

void flash_attention_forward(const AttnParams& p, const FlashFwdOptions& options, cudaStream_t stream) {
  // Everything is checked before anything is launched or written.
  check_forward_cuda(p);
  if (options.hopper_rope != nullptr) {
    // The caller (flash_attention_forward_rope) asked forward_runs_hopper_rope first.
    DISTATTN_CHECK(options.allow_hopper && forward_runs_hopper_rope(p),
                   "flash_attention_forward: the fused RoPE needs the Hopper kernel, which does not take this call");
    flash_fwd_hopper(p, FlashFwdHopperCutoff{}, options.hopper_rope, stream);
    return;
  }

  // The Hopper kernel (TMA + wgmma, hopper/) takes every call it supports; the mma.sync kernel below serves the
  // rest (ALiBi with block lists, position-map chunks not on 128-row tiles, head dim 64, other GPUs).
  // DISTATTN_FORWARD_KERNEL=mma forces the mma.sync kernel everywhere (A/B timings, bisecting a result).
  if (options.allow_hopper && !forward_kernel_forced_to_mma()) {
    int device = 0;
    DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
    if (flash_fwd_hopper_supported(p, device)) {
      // Its ALiBi cutoff (hopper/flash_fwd_hopper_plan.h) where the premises hold and the key count reaches
      // hopper_cutoff_min_kv(): the pre-pass writes the max key norm per (b, kv head) and the max query norm per
      // (b, h, 128-row q tile) into B * (Hkv + Hq * M) floats of pooled scratch, then the kernel plans its units.
      // With the caller's norms (AttnParams::alibi_merge) there is no pre-pass: the single-call cutoff where its
      // premises hold (bit-identical), else mode 3, the cutoff across merged calls (within rounding after the merge).
      FlashFwdHopperCutoff cutoff;
      PooledScratch norms;  // core/scratch_pool.h: stays mapped between calls
      const int mode = options.alibi_cutoff ? alibi_cutoff_mode(p) : 0;
      const int64_t min_kv = options.hopper_cutoff_min_kv >= 0 ? options.hopper_cutoff_min_kv : hopper_cutoff_min_kv();
      if (options.alibi_cutoff && p.alibi_merge.set()) {
        cutoff.mode = mode != 0 ? mode : 3;
        cutoff.skip = options.alibi_cutoff_skip;
        cutoff.kv_norm_sq_max = p.alibi_merge.kv_norm_sq_max;
        cutoff.q_norm_sq_max = p.alibi_merge.q_norm_sq_max;
        cutoff.own_kv_norm_sq_max = p.alibi_merge.own_kv_norm_sq_max;
      } else if (mode != 0 && p.k.seqlen() >= min_kv) {
        const kernels::FlashFwdParams np = make_fwd_params(p);
        const size_t nk = static_cast<size_t>(np.batch) * np.heads_kv;
        const size_t nq = static_cast<size_t>(np.batch) * np.heads_q * np.num_m_blocks;
        norms.allocate((nk + nq) * sizeof(float), stream);
        float* k_norms = norms.get<float>();
        DTYPE_SWITCH(p.q.dtype, T, [&] { kernels::run_qk_norm_sq_max<T>(np, k_norms, k_norms + nk, stream); });
        cutoff.mode = mode;
        cutoff.skip = options.alibi_cutoff_skip;
        cutoff.kv_norm_sq_max = k_norms;
        cutoff.q_norm_sq_max = k_norms + nk;
      }
      flash_fwd_hopper(p, cutoff, stream);
      return;
    }
  }

  kernels::FlashFwdParams params = make_fwd_params(p);
  PooledScratch kv_norms;
  const int cutoff = options.alibi_cutoff ? alibi_cutoff_mode(p) : 0;
  if (cutoff != 0) {
    kv_norms.allocate(static_cast<size_t>(params.batch) * params.heads_kv * sizeof(float), stream);
    params.alibi_cutoff = cutoff;
    params.alibi_cutoff_skip = options.alibi_cutoff_skip;
    params.kv_norm_sq_max = kv_norms.get<const float>();
  }
  DTYPE_SWITCH(p.q.dtype, T, [&] {
    if (params.alibi_cutoff != 0) kernels::run_kv_norm_sq_max<T>(params, kv_norms.get<float>(), stream);
    HEADDIM_SWITCH(p.q.head_dim(), kHeadDim, [&] { kernels::run_flash_fwd<T, kHeadDim>(params, stream); });
  });
}

}  // namespace detail

}  // namespace distattn
