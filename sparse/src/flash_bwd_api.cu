// flash_attention_backward (sparse/include/distattn/sparse/flash_attention.h): validation, scratch,
// parameter set-up and dispatch over (dtype, head dim) to the instantiations in flash_bwd_<dtype>_hdim<d>.cu.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include "../../positional/src/rope_validate.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/env.h"
#include "distattn/core/error.h"
#include "distattn/core/operand_checks.h"
#include "distattn/core/scratch_pool.h"
#include "distattn/positional/rope.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_bwd_alibi.h"
#include "flash_bwd_options.h"
#include "flash_bwd_params.h"
#include "hopper/flash_bwd_hopper.h"
#include "static_switch.h"

namespace distattn {
namespace kernels {
// Defined in the instantiation files.
template <typename T, int kHeadDim>
void run_flash_bwd(const FlashBwdParams& p, cudaStream_t stream);
}  // namespace kernels

namespace {

constexpr int kBwdBlockM = 64;       // q rows per tile (FlashBwdTraits::kBlockM)
constexpr int kBwdBlockN = 128;      // kv rows per CTA (FlashBwdTraits::kBlockN)
constexpr int kBwdMaxCutGroup = 64;  // FlashBwdTraits::kMaxCutGroup

// DISTATTN_BACKWARD_KERNEL: unset, "auto" or "hopper": the Hopper kernel where it applies; "mma": the mma.sync kernel
// only. Read once per process; anything else throws naming the variable.
bool backward_kernel_forced_to_mma() {
  static const bool forced = env_choice("DISTATTN_BACKWARD_KERNEL", {"auto", "hopper", "mma"}, 0) == 2;
  return forced;
}

// DISTATTN_ROPE_BWD_DK: unset: FlashBwdOptions::rope_dk_in_epilogue decides; "epilogue": the Hopper kernel rotates dK
// back in its epilogue (rope_grad); "separate": dk through rope_apply_cuda after the kernel. Read once per process;
// anything else throws naming it. Returns -1 (unset), 0 (separate) or 1 (epilogue).
int rope_dk_env() {
  static const int forced = env_choice("DISTATTN_ROPE_BWD_DK", {"separate", "epilogue"}, -1);
  return forced;
}

int32_t clamp_to_int32(int64_t x) {
  const int64_t lo = -static_cast<int64_t>(std::numeric_limits<int32_t>::max());
  const int64_t hi = std::numeric_limits<int32_t>::max();
  return static_cast<int32_t>(std::min(hi, std::max(lo, x)));
}

}  // namespace

void flash_attention_backward(const AttnBwdParams& params, cudaStream_t stream) {
  detail::flash_attention_backward(params, detail::FlashBwdOptions{}, stream);
}

namespace detail {

void flash_attention_backward(const AttnBwdParams& params, const FlashBwdOptions& options, cudaStream_t stream) {
  // ---- validation: everything before anything is allocated or launched ----------------------------
  validate_backward(params, Device::kCuda);
  const AttnParams& f = params.fwd;
  check_cuda_tensor(f.q, "q");
  check_cuda_tensor(f.k, "k");
  check_cuda_tensor(f.v, "v");
  check_cuda_tensor(f.o, "o");
  check_cuda_tensor(params.dout, "dout");
  check_cuda_tensor(params.dq, "dq");
  check_cuda_tensor(params.dk, "dk");
  check_cuda_tensor(params.dv, "dv");
  check_device_pointer(f.lse, "lse");
  check_device_pointer(params.delta, "delta", /*allow_null=*/true);
  check_device_pointer(f.alibi_slopes, "alibi_slopes", /*allow_null=*/true);
  const BlockListView* bl = f.mask.blocks;
  if (bl != nullptr) {
    check_device_pointer(bl->col_offset, "mask.blocks.col_offset");
    if (bl->nnz > 0) {
      check_device_pointer(bl->row_index, "mask.blocks.row_index");
      check_device_pointer(bl->col_partial, "mask.blocks.col_partial");
    }
  }
  const RopeGradParams* rope = params.rope_grad;  // validate_backward checked its fields
  if (rope != nullptr) check_device_pointer(rope->inv_freq, "rope_grad.inv_freq");
  const int64_t D = f.q.head_dim();
  DISTATTN_CHECK_ARG(D == 64 || D == 128, "q", "head dim ", D, " has no CUDA backward kernel (supported: 64, 128)");
  const int64_t B = f.q.batch(), Sq = f.q.seqlen(), Hq = f.q.heads();
  const int64_t Skv = f.k.seqlen(), Hkv = f.k.heads();
  const int64_t num_kv_tiles = (Skv + kBwdBlockN - 1) / kBwdBlockN;
  DISTATTN_CHECK_ARG(Sq <= std::numeric_limits<int32_t>::max() - kBwdBlockM, "q", "has Sq = ", Sq,
                     "; the CUDA engine indexes rows with int32");
  DISTATTN_CHECK_ARG(num_kv_tiles <= 65535, "k", "has Skv = ", Skv, "; the backward grid allows at most ",
                     65535 * kBwdBlockN, " kv rows");
  DISTATTN_CHECK_ARG(B <= 65535, "q", "has batch ", B, "; the backward grid allows at most 65535");
  DISTATTN_CHECK_ARG(Hq <= std::numeric_limits<int32_t>::max(), "q", "has too many heads: ", Hq);
  // The kernels' 16-byte (and the dq conversion's fp32 x 4) vector accesses rely on the 16-byte aligned
  // base addresses and strides that check_cuda_tensor has asked of every tensor above.

  // The Hopper kernel (TMA + wgmma, hopper/) takes every call it supports (bf16/fp16, D = 128, no ALiBi, no block
  // list, chunk boundaries on 128 rows); the mma.sync kernel serves the rest. DISTATTN_BACKWARD_KERNEL=mma forces
  // the mma.sync kernel everywhere (A/B timings, bisecting a result). Decided before any scratch is allocated.
  bool use_hopper = false;
  if (options.allow_hopper && !backward_kernel_forced_to_mma()) {
    int device = 0;
    DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
    use_hopper = flash_bwd_hopper_supported(params, device);
  }

  // ---- parameters ----------------------------------------------------------------------------------
  kernels::FlashBwdParams p;
  p.q = f.q.data;
  p.k = f.k.data;
  p.v = f.v.data;
  p.o = f.o.data;
  p.o_fp32 = f.o.dtype == DType::kFloat32;
  p.dout = params.dout.data;
  p.q_batch_stride = f.q.stride[0], p.q_row_stride = f.q.stride[1], p.q_head_stride = f.q.stride[2];
  p.k_batch_stride = f.k.stride[0], p.k_row_stride = f.k.stride[1], p.k_head_stride = f.k.stride[2];
  p.v_batch_stride = f.v.stride[0], p.v_row_stride = f.v.stride[1], p.v_head_stride = f.v.stride[2];
  p.o_batch_stride = f.o.stride[0], p.o_row_stride = f.o.stride[1], p.o_head_stride = f.o.stride[2];
  p.dout_batch_stride = params.dout.stride[0], p.dout_row_stride = params.dout.stride[1];
  p.dout_head_stride = params.dout.stride[2];

  p.lse = f.lse;
  p.lse_batch_stride = f.lse_batch_step();
  p.lse_head_stride = f.lse_head_step();

  p.dq = params.dq.data;
  p.dq_batch_stride = params.dq.stride[0], p.dq_row_stride = params.dq.stride[1];
  p.dq_head_stride = params.dq.stride[2];
  p.dk = params.dk.data;
  p.dk_batch_stride = params.dk.stride[0], p.dk_row_stride = params.dk.stride[1];
  p.dk_head_stride = params.dk.stride[2];
  p.dv = params.dv.data;
  p.dv_batch_stride = params.dv.stride[0], p.dv_row_stride = params.dv.stride[1];
  p.dv_head_stride = params.dv.stride[2];
  p.dq_fp32 = params.dq.dtype == DType::kFloat32;
  p.dk_fp32 = params.dk.dtype == DType::kFloat32;
  p.dv_fp32 = params.dv.dtype == DType::kFloat32;
  p.accumulate = params.accumulate;
  p.accumulate_dkdv = params.accumulate && !params.overwrite_dk_dv;

  p.batch = static_cast<int>(B);
  p.seqlen_q = static_cast<int>(Sq);
  p.seqlen_kv = static_cast<int>(Skv);
  p.heads_q = static_cast<int>(Hq);
  p.heads_kv = static_cast<int>(Hkv);
  p.head_dim = static_cast<int>(D);
  p.group = static_cast<int>(Hq / Hkv);
  p.num_q_tiles = static_cast<int>((Sq + kBwdBlockM - 1) / kBwdBlockM);
  p.num_kv_tiles = static_cast<int>(num_kv_tiles);

  p.scale = f.scale();
  p.scale_log2 = p.scale * 1.4426950408889634f;
  p.alibi_slopes = f.alibi_slopes;
  p.q_pos = f.q_pos;
  p.kv_pos = f.kv_pos;
  p.band = DiagonalBand::from_mask(f.mask);
  p.band_lo32 = clamp_to_int32(p.band.lo);
  p.band_hi32 = clamp_to_int32(p.band.hi);
  if (bl != nullptr) {
    p.has_blocks = true;
    p.col_offset = bl->col_offset;
    p.row_index = bl->row_index;
    p.col_partial = bl->col_partial;
  }

  // ---- fused inverse RoPE of the gradients (AttnBwdParams::rope_grad) ------------------------------------------
  // dq: the dQ conversion rotates it (flash_bwd_convert_dq_rope_kernel) when its 8-element units never straddle a
  // pair boundary: NeoX with half % 8 == 0, GPT-J with rot % 8 == 0. dk: the Hopper kernel's epilogue rotates it
  // (flash_bwd_hopper_fuses_rope_dk). What is not fused (the mma.sync kernel's dk; dq for other rotary dims) is
  // rotated by rope_apply_cuda(inverse) on the stream right after the backward: the same result, one more pass.
  bool rope_dq_fused = false, rope_dk_fused = false;
  RopeParams rope_dq_separate, rope_dk_separate;  // the separate passes' params, validated here (before launches)
  if (rope != nullptr) {
    const int64_t rot = rope->rotary_dim == 0 ? D : rope->rotary_dim;
    const int64_t half = rot / 2;
    const int64_t rot_units = rope->style == 0 ? half / 8 : rot / 8;
    const int64_t units = rot_units + (D - rot) / 8;  // 8-element units per head (fused conversion)
    rope_dq_fused = (rope->style == 0 ? half % 8 == 0 : rot % 8 == 0) && Hq * units <= (int64_t{1} << 24);
    const bool dk_in_epilogue = rope_dk_env() < 0 ? options.rope_dk_in_epilogue : rope_dk_env() == 1;
    rope_dk_fused = use_hopper && dk_in_epilogue && flash_bwd_hopper_fuses_rope_dk(*rope);
    p.rope_dk_epilogue = rope_dk_fused;
    if (rope_dq_fused) {
      // Rows per block: ~512 units (2 per thread), at most 64 rows (cos/sin table <= 32 KiB).
      const int64_t rows_per_block = std::max<int64_t>(1, std::min<int64_t>(64, (512 + Hq * units - 1) / (Hq * units)));
      const int64_t blocks = (B * Sq + rows_per_block - 1) / rows_per_block;
      rope_dq_fused = blocks <= std::numeric_limits<int32_t>::max();
      p.rope_inv_freq = rope->inv_freq;
      p.rope_rotary_dim = static_cast<int>(rot);
      p.rope_half = static_cast<int>(half);
      p.rope_style = rope->style;
      p.rope_scale = rope->scale;
      p.rope_rows_per_block = static_cast<int>(rows_per_block);
      if (!rope_dq_fused) p.rope_inv_freq = nullptr;
    }
    auto separate = [&](const TensorView& t, const PositionMap& pos, const char* name) {
      RopeParams r;
      r.q = t;  // one tensor per pass: dq and dk may differ in dtype
      r.q_pos = pos;
      r.rotary_dim = rot;
      r.style = static_cast<RopeStyle>(rope->style);
      r.inv_freq = rope->inv_freq;
      r.scale = rope->scale;
      r.inverse = true;
      try {
        detail::validate_rope_params(r, Device::kCuda, /*allow_fp64=*/false);
      } catch (const Error& e) {
        DISTATTN_THROW(name, "cannot be rotated back by the RoPE kernel (", describe(t), "): ", e.what());
      }
      return r;
    };
    if (!rope_dq_fused) rope_dq_separate = separate(params.dq, f.q_pos, "dq");
    if (!rope_dk_fused) rope_dk_separate = separate(params.dk, f.kv_pos, "dk");
  }
  auto run_rope_separate = [&] {
    if (rope == nullptr) return;
    if (!rope_dq_fused) rope_apply_cuda(rope_dq_separate, stream);
    if (!rope_dk_fused) rope_apply_cuda(rope_dk_separate, stream);
  };

  // ---- ALiBi cutoff (flash_bwd_kernel.cuh "ALiBi cutoff"): threshold T + 3 on exp2's argument, T = 127
  // for bf16 (ex2.approx.ftz flushes below 2^-126), 26 for fp16 (P < 2^-25 rounds to 0 when stored) ----------
  // Limits: the packed q-tile interval (16 bits each), the pre-pass grid (heads <= 65535), the kernel's shared
  // copy of its group's intervals (FlashBwdTraits::kMaxCutGroup), and position differences that the kernel's
  // int32 pos_q - pos_k holds exactly (the bound uses the true distance).
  bool positions_ok = Sq > 0 && Skv > 0;
  if (positions_ok) {
    int64_t q_lo = 0, q_hi = 0, k_lo = 0, k_hi = 0;  // positions fit int32 (PositionMap validation)
    f.q_pos.range(0, Sq, &q_lo, &q_hi);
    f.kv_pos.range(0, Skv, &k_lo, &k_hi);
    positions_ok = std::max(q_hi, k_hi) - std::min(q_lo, k_lo) < (int64_t{1} << 30);
  }
  const bool alibi_cut = options.alibi_cutoff && f.alibi_slopes != nullptr && Hq <= 65535 && Hkv <= 65535 &&
                         p.num_q_tiles < 65535 && p.group <= kBwdMaxCutGroup && positions_ok;
  if (alibi_cut) {
    p.alibi_cut_log2 = f.q.dtype == DType::kFloat16 ? 29.f : 130.f;
    p.alibi_cut_skip = options.alibi_cutoff_skip;
    p.alibi_cut_count = options.alibi_cut_count;
  }

  // ---- scratch, one stream-ordered allocation: delta [B, Hq, Sq], the fp32 dQ accumulator [B, Sq, Hq, D]
  // (packed), the cutoff's q tile stats [B, Hq, num_q_tiles] float2, kv tile norms [B, Hkv, num_kv_tiles] and
  // packed q-tile intervals [B, Hq, num_kv_tiles] uint32.
  // Each piece starts 256-byte aligned.
  auto align256 = [](size_t x) { return (x + 255) / 256 * 256; };
  const bool own_delta = params.delta == nullptr;
  // The mma.sync kernel's dQ accumulator has row stride D (compile-time in the kernel); the Hopper kernel's TMA
  // reductions take any row stride that is a multiple of 16 bytes, which every fp32 dq has (check_cuda_tensor). In
  // accumulate mode (dq fp32, validated) the reductions go straight into dq -- no scratch, no clearing, no conversion
  // -- on the Hopper kernel always, on the mma.sync kernel when dq's rows are D apart (a [B, H, S, D]-ordered view, or
  // Hq == 1 packed). Otherwise a zeroed [B, Hq, Sq, D] scratch is converted (accumulate: added) into dq afterwards.
  // (Dilated attention's per-pattern calls are accumulate-mode calls with a packed fp32 dq: each skipped scratch is a
  // clear and a read-modify-write pass over dq. The ring's head-major dQ accumulator had rows D apart already.)
  const bool dq_direct = params.accumulate && (p.dq_row_stride == D || Sq == 1 || use_hopper);
  const size_t delta_bytes = own_delta ? align256(static_cast<size_t>(B * Hq * Sq) * sizeof(float)) : 0;
  const size_t dq_bytes = dq_direct ? 0 : align256(static_cast<size_t>(B * Sq * Hq * D) * sizeof(float));
  const size_t qstat_bytes = alibi_cut ? align256(static_cast<size_t>(B * Hq * p.num_q_tiles) * sizeof(float2)) : 0;
  const size_t knorm_bytes = alibi_cut ? align256(static_cast<size_t>(B * Hkv * p.num_kv_tiles) * sizeof(float)) : 0;
  const size_t keep_bytes = alibi_cut ? align256(static_cast<size_t>(B * Hq * p.num_kv_tiles) * sizeof(uint32_t)) : 0;
  PooledScratch scratch;  // core/scratch_pool.h: stays mapped between calls
  const size_t total = delta_bytes + dq_bytes + qstat_bytes + knorm_bytes + keep_bytes;
  scratch.allocate(total, stream);
  unsigned char* cursor = scratch.get();
  if (!own_delta) {
    p.delta = params.delta;
    p.delta_batch_stride = p.lse_batch_stride;
    p.delta_head_stride = p.lse_head_stride;
  } else {
    p.delta_out = reinterpret_cast<float*>(cursor);
    cursor += delta_bytes;
    p.delta = p.delta_out;
    p.delta_batch_stride = Hq * Sq;
    p.delta_head_stride = Sq;
  }
  p.dq_accum_row_stride = D;
  if (dq_direct) {
    p.dq_accum = static_cast<float*>(params.dq.data);
    p.dq_accum_batch_stride = p.dq_batch_stride;
    p.dq_accum_head_stride = p.dq_head_stride;
    p.dq_accum_row_stride = Sq == 1 ? D : p.dq_row_stride;
  } else {
    DISTATTN_CUDA_CHECK(cudaMemsetAsync(cursor, 0, dq_bytes, stream));
    p.dq_accum = reinterpret_cast<float*>(cursor);
    cursor += dq_bytes;
    p.dq_accum_batch_stride = Hq * Sq * D;
    p.dq_accum_head_stride = Sq * D;
  }
  if (alibi_cut) {
    float2* q_stat = reinterpret_cast<float2*>(cursor);
    float* k_norm = reinterpret_cast<float*>(cursor + qstat_bytes);
    uint32_t* keep = reinterpret_cast<uint32_t*>(cursor + qstat_bytes + knorm_bytes);
    DTYPE_SWITCH(f.q.dtype, T, [&] {
      kernels::run_flash_bwd_alibi_prepass<T>(p, kBwdBlockM, kBwdBlockN, q_stat, k_norm, keep, stream);
    });
    p.alibi_keep = keep;
  }

  if (use_hopper) {  // same scratch (delta, dQ accumulator), same preprocess and conversion kernels
    flash_bwd_hopper(params, p, stream);
  } else {
    DTYPE_SWITCH(f.q.dtype, T,
                 [&] { HEADDIM_SWITCH(D, kHeadDim, [&] { kernels::run_flash_bwd<T, kHeadDim>(p, stream); }); });
  }
  run_rope_separate();  // the parts of the inverse RoPE not fused above (none on the Hopper path at rot % 16 == 0)
}

}  // namespace detail

}  // namespace distattn
