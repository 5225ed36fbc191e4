// flash_attention_backward (sparse/include/distattn/sparse/flash_attention.h): validation, scratch,
// parameter set-up and dispatch over (dtype, head dim) to the instantiations in flash_bwd_<dtype>_hdim<d>.cu.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cuda_operand.h"
#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/sparse/flash_attention.h"
#include "flash_bwd_params.h"
#include "static_switch.h"

namespace distattn {
namespace kernels {
// Defined in the instantiation files.
template <typename T, int kHeadDim>
void run_flash_bwd(const FlashBwdParams& p, cudaStream_t stream);
}  // namespace kernels

namespace {

constexpr int kBwdBlockM = 64;   // q rows per tile (FlashBwdTraits::kBlockM)
constexpr int kBwdBlockN = 128;  // kv rows per CTA (FlashBwdTraits::kBlockN)

// Stream-ordered scratch that is released on the stream even when a launch throws.
struct StreamScratch {
  cudaStream_t stream;
  void* ptr = nullptr;
  explicit StreamScratch(cudaStream_t s) : stream(s) {}
  void allocate(size_t bytes) { DISTATTN_CUDA_CHECK(cudaMallocAsync(&ptr, bytes, stream)); }
  ~StreamScratch() {
    if (ptr != nullptr) (void)cudaFreeAsync(ptr, stream);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
};

int32_t clamp_to_int32(int64_t x) {
  const int64_t lo = -static_cast<int64_t>(std::numeric_limits<int32_t>::max());
  const int64_t hi = std::numeric_limits<int32_t>::max();
  return static_cast<int32_t>(std::min(hi, std::max(lo, x)));
}

}  // namespace

void flash_attention_backward(const AttnBwdParams& params, cudaStream_t stream) {
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

  // ---- scratch: delta [B, Hq, Sq] and the fp32 dQ accumulator [B, Sq, Hq, D] (packed) ---------------
  StreamScratch delta_buf(stream), dq_buf(stream);
  if (params.delta != nullptr) {
    p.delta = params.delta;
    p.delta_batch_stride = p.lse_batch_stride;
    p.delta_head_stride = p.lse_head_stride;
  } else {
    delta_buf.allocate(static_cast<size_t>(B * Hq * Sq) * sizeof(float));
    p.delta_out = static_cast<float*>(delta_buf.ptr);
    p.delta = p.delta_out;
    p.delta_batch_stride = Hq * Sq;
    p.delta_head_stride = Sq;
  }
  // The main kernel's dQ accumulator has row stride D (compile-time in the kernel). In accumulate mode
  // (dq fp32, validated) whose rows are D apart (a [B, H, S, D]-ordered view, or Hq == 1 packed) the
  // reductions go straight into dq: no scratch, no conversion. Otherwise a zeroed [B, Hq, Sq, D] scratch
  // is converted (accumulate: added) into dq afterwards.
  if (params.accumulate && (p.dq_row_stride == D || Sq == 1)) {
    p.dq_accum = static_cast<float*>(params.dq.data);
    p.dq_accum_batch_stride = p.dq_batch_stride;
    p.dq_accum_head_stride = p.dq_head_stride;
  } else {
    const size_t bytes = static_cast<size_t>(B * Sq * Hq * D) * sizeof(float);
    dq_buf.allocate(bytes);
    DISTATTN_CUDA_CHECK(cudaMemsetAsync(dq_buf.ptr, 0, bytes, stream));
    p.dq_accum = static_cast<float*>(dq_buf.ptr);
    p.dq_accum_batch_stride = Hq * Sq * D;
    p.dq_accum_head_stride = Sq * D;
  }

  DTYPE_SWITCH(f.q.dtype, T,
               [&] { HEADDIM_SWITCH(D, kHeadDim, [&] { kernels::run_flash_bwd<T, kHeadDim>(p, stream); }); });
}

}  // namespace distattn
