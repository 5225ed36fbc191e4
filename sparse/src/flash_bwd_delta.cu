// flash_attention_backward_delta (sparse/flash_attention.h): delta = rowsum(dO * O) once, with the engine's own
// preprocess kernel, for callers that run several backward calls over the same rows and hand it to each of them
// (AttnBwdParams::delta). Without it every call computes the delta of its rows again: dilated attention's patterns
// each cover every row, so a 5-pattern LongNet backward read dO and O five times.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/core/operand_checks.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_bwd_launch.cuh"
#include "flash_bwd_params.h"
#include "static_switch.h"

namespace distattn {

void flash_attention_backward_delta(const TensorView& o, const TensorView& dout, float* delta, cudaStream_t stream) {
  DISTATTN_CHECK_ARG(dout.data != nullptr, "dout", "is null");
  DISTATTN_CHECK_ARG(o.data != nullptr, "o", "is null");
  DISTATTN_CHECK_ARG(delta != nullptr, "delta", "is null; it receives [B, H, S] fp32");
  DISTATTN_CHECK_ARG(dout.dtype == DType::kBFloat16 || dout.dtype == DType::kFloat16, "dout",
                     "must be bf16 or fp16, got ", dtype_name(dout.dtype));
  DISTATTN_CHECK_ARG(o.dtype == dout.dtype || o.dtype == DType::kFloat32, "o", "must be ", dtype_name(dout.dtype),
                     " (dout's dtype) or fp32, got ", dtype_name(o.dtype));
  for (int axis = 0; axis < 4; ++axis)
    DISTATTN_CHECK_ARG(o.shape[axis] == dout.shape[axis], "o", "shape [", o.batch(), ", ", o.seqlen(), ", ", o.heads(),
                       ", ", o.head_dim(), "] differs from dout's [", dout.batch(), ", ", dout.seqlen(), ", ",
                       dout.heads(), ", ", dout.head_dim(), "]");
  DISTATTN_CHECK_ARG(dout.head_dim() == 64 || dout.head_dim() == 128, "dout", "head dim ", dout.head_dim(),
                     " has no CUDA kernel (supported: 64, 128)");
  DISTATTN_CHECK_ARG(dout.batch() >= 1 && dout.seqlen() >= 1 && dout.heads() >= 1, "dout", "is empty");
  DISTATTN_CHECK_ARG(dout.batch() <= std::numeric_limits<int32_t>::max() &&
                         dout.seqlen() <= std::numeric_limits<int32_t>::max() &&
                         dout.heads() <= std::numeric_limits<int32_t>::max(),
                     "dout", "has a dimension beyond 2^31 - 1");
  check_cuda_tensor(dout, "dout");
  check_cuda_tensor(o, "o");
  check_device_pointer(delta, "delta");

  kernels::FlashBwdParams p;
  p.o = o.data;
  p.o_fp32 = o.dtype == DType::kFloat32;
  p.o_batch_stride = o.stride[0], p.o_row_stride = o.stride[1], p.o_head_stride = o.stride[2];
  p.dout = dout.data;
  p.dout_batch_stride = dout.stride[0], p.dout_row_stride = dout.stride[1], p.dout_head_stride = dout.stride[2];
  p.batch = static_cast<int>(dout.batch());
  p.seqlen_q = static_cast<int>(dout.seqlen());
  p.heads_q = static_cast<int>(dout.heads());
  // delta [B, H, S] packed: entry (b, h, i) at (b * H + h) * S + i, the lse layout.
  p.delta_out = delta;
  p.delta_batch_stride = dout.heads() * dout.seqlen();
  p.delta_head_stride = dout.seqlen();
  // The engine's launcher: one thread per 16-byte vector of dO, 256 per block; its grid must fit an int32.
  const int64_t vectors = dout.batch() * dout.seqlen() * dout.heads() * (dout.head_dim() / 8);
  DISTATTN_CHECK_ARG((vectors + 255) / 256 <= std::numeric_limits<int32_t>::max(), "dout",
                     "is too large for one launch");
  DTYPE_SWITCH(dout.dtype, T, [&] {
    HEADDIM_SWITCH(dout.head_dim(), kHeadDim, [&] { kernels::launch_flash_bwd_delta<T, kHeadDim>(p, stream); });
  });
}

}  // namespace distattn
