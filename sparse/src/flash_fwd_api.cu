// flash_attention_forward: validation, kernel parameters, dispatch over dtype and head dim.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "cuda_operand.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_fwd_params.h"
#include "static_switch.h"

namespace distattn {

bool flash_supports_head_dim(int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

namespace {

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
  return k;
}

}  // namespace

void flash_attention_forward(const AttnParams& p, cudaStream_t stream) {
  // Everything is checked before anything is launched or written.
  validate_forward(p, Device::kCuda);
  check_cuda_tensor(p.q, "q");
  check_cuda_tensor(p.k, "k");
  check_cuda_tensor(p.v, "v");
  check_cuda_tensor(p.o, "o");
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

  const kernels::FlashFwdParams params = make_fwd_params(p);
  DTYPE_SWITCH(p.q.dtype, T, [&] {
    HEADDIM_SWITCH(p.q.head_dim(), kHeadDim, [&] { kernels::run_flash_fwd<T, kHeadDim>(params, stream); });
  });
}

}  // namespace distattn
