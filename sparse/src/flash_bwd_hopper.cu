// Hopper fast path of the backward (hopper/flash_bwd_hopper.h): support test, TMA descriptors, launches.
// This file sits in sparse/src (not sparse/src/hopper) because the library's source glob is not recursive;
// the kernel and its helpers live in hopper/.
#include <cuda.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "flash_bwd_launch.cuh"
#include "hopper/flash_bwd_hopper.h"
#include "hopper/flash_bwd_hopper_kernel.cuh"
#include "hopper/flash_bwd_hopper_params.h"
#include "hopper/hopper_host.h"

namespace distattn {

namespace {

using hopper::BwdConfig;
using hopper::DeviceSupportCache;
using hopper::FlashBwdHopperParams;
using hopper::tma_addressable;

// Whether a device runs this kernel (compute capability 9.0, sm_90a code, enough shared memory): hopper_host.h.
DeviceSupportCache g_device_support;

bool device_runs_hopper_bwd(int device) {
  return g_device_support.get(device, reinterpret_cast<const void*>(hopper::flash_bwd_hopper_kernel<__nv_bfloat16>),
                              static_cast<size_t>(BwdConfig::kSmemBytes));
}

// Chunk boundaries on 128 rows: every 64-row q tile and 128-row kv tile lies in one chunk.
bool tile_aligned_chunks(const PositionMap& m) {
  return hopper::tile_aligned_chunks(m, FlashBwdHopperParams::kMaxChunks, 128);
}

// TMA descriptor of the fp32 dQ accumulator (row, head and batch strides of kp: row stride 128 floats for the scratch,
// dq's own when the reductions go straight into dq): dims {128, Sq, Hq, B}, box {32, 64, 1, 1} (128 bytes wide),
// 128-byte swizzle: the staging layout the kernel's TMA reductions read.
CUtensorMap make_tmap_dq(const kernels::FlashBwdParams& kp) {
  CUtensorMap map;
  const cuuint64_t dims[4] = {128, static_cast<cuuint64_t>(kp.seqlen_q), static_cast<cuuint64_t>(kp.heads_q),
                              static_cast<cuuint64_t>(kp.batch)};
  auto bytes = [](int64_t size, int64_t stride_elems) -> cuuint64_t {
    return size == 1 ? 16 : static_cast<cuuint64_t>(stride_elems * 4);
  };
  const cuuint64_t strides[3] = {bytes(kp.seqlen_q, kp.dq_accum_row_stride), bytes(kp.heads_q, kp.dq_accum_head_stride),
                                 bytes(kp.batch, kp.dq_accum_batch_stride)};
  const cuuint32_t box[4] = {32, static_cast<cuuint32_t>(BwdConfig::kBlockM), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUresult r =
      hopper::tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, kp.dq_accum, dims, strides, box,
                                   elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                   CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  DISTATTN_CHECK_ARG(r == CUDA_SUCCESS, "dq",
                     "accumulator cannot be described to the TMA engine (cuTensorMapEncodeTiled error ",
                     static_cast<int>(r), ")");
  return map;
}

template <typename T>
void launch_main(const FlashBwdHopperParams& params, cudaStream_t stream) {
  auto kernel = &hopper::flash_bwd_hopper_kernel<T>;
  static std::atomic<uint64_t> done_devices{0};
  int device = 0;
  DISTATTN_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit == 0 || (done_devices.load() & bit) == 0) {
    DISTATTN_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, BwdConfig::kSmemBytes));
    done_devices.fetch_or(bit);
  }
  // x: kv tiles (tile 0, the heaviest under a causal band, first), y: kv heads, z: batch.
  const dim3 grid(static_cast<unsigned>(params.num_kv_tiles), static_cast<unsigned>(params.heads_kv),
                  static_cast<unsigned>(params.batch));
  kernel<<<grid, BwdConfig::kThreads, BwdConfig::kSmemBytes, stream>>>(params);
  DISTATTN_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool flash_bwd_hopper_supported(const AttnBwdParams& p, int device) {
  const AttnParams& f = p.fwd;
  const DType dt = f.q.dtype;
  if (dt != DType::kBFloat16 && dt != DType::kFloat16) return false;
  if (f.k.dtype != dt || f.v.dtype != dt || p.dout.dtype != dt) return false;
  if (p.dk.dtype != dt && p.dk.dtype != DType::kFloat32) return false;
  if (p.dv.dtype != dt && p.dv.dtype != DType::kFloat32) return false;
  if (f.q.head_dim() != 128 || f.k.head_dim() != 128) return false;
  if (f.k.heads() < 1 || f.q.heads() % f.k.heads() != 0) return false;
  if (f.alibi_slopes != nullptr) return false;
  // Block lists: layout blocks of 128 rows are the kernel's kv tiles (and two of its q tiles); the column lists are
  // on the device with the rest (validated by flash_bwd_api.cu before dispatch).
  static_assert(kLayoutBlock == BwdConfig::kBlockN && kLayoutBlock == 2 * BwdConfig::kBlockM,
                "a layout block must be one kv tile and two q tiles");
  if (!tile_aligned_chunks(f.q_pos) || !tile_aligned_chunks(f.kv_pos)) return false;
  if (f.q.seqlen() < 1 || f.k.seqlen() < 1) return false;
  constexpr int64_t kMaxRows = int64_t{0x7fffffff} - 256;
  if (f.q.seqlen() > kMaxRows || f.k.seqlen() > kMaxRows) return false;
  if (f.k.heads() > 65535 || f.q.batch() > 65535) return false;
  if (!tma_addressable(f.q) || !tma_addressable(f.k) || !tma_addressable(f.v) || !tma_addressable(p.dout)) return false;
  return device_runs_hopper_bwd(device);
}

bool flash_bwd_hopper_fuses_rope_dk(const RopeGradParams& rope) {
  const int64_t rot = rope.rotary_dim == 0 ? BwdConfig::kHeadDim : rope.rotary_dim;
  return rope.style == 1 || (rot / 2) % 8 == 0;
}

void flash_bwd_hopper(const AttnBwdParams& p, const kernels::FlashBwdParams& kp, cudaStream_t stream) {
  const AttnParams& f = p.fwd;
  FlashBwdHopperParams k;
  k.tmap_q = hopper::make_tmap_16bit(f.q, BwdConfig::kBlockM, "q");
  k.tmap_dout = hopper::make_tmap_16bit(p.dout, BwdConfig::kBlockM, "dout");
  k.tmap_k = hopper::make_tmap_16bit(f.k, BwdConfig::kBlockN, "k");
  k.tmap_v = hopper::make_tmap_16bit(f.v, BwdConfig::kBlockN, "v");
  k.tmap_dq = make_tmap_dq(kp);  // the dQ reductions (DISTATTN_HOPPER_BWD_DQ_TMA, the default)
  k.lse_ptr = kp.lse;
  k.lse_batch_stride = kp.lse_batch_stride;
  k.lse_head_stride = kp.lse_head_stride;
  k.delta_ptr = kp.delta;
  k.delta_batch_stride = kp.delta_batch_stride;
  k.delta_head_stride = kp.delta_head_stride;
  k.dq_accum = kp.dq_accum;
  k.dq_accum_batch_stride = kp.dq_accum_batch_stride;
  k.dq_accum_head_stride = kp.dq_accum_head_stride;
  k.dq_accum_row_stride = kp.dq_accum_row_stride;
  k.dk_ptr = kp.dk;
  k.dk_batch_stride = kp.dk_batch_stride;
  k.dk_row_stride = kp.dk_row_stride;
  k.dk_head_stride = kp.dk_head_stride;
  k.dv_ptr = kp.dv;
  k.dv_batch_stride = kp.dv_batch_stride;
  k.dv_row_stride = kp.dv_row_stride;
  k.dv_head_stride = kp.dv_head_stride;
  k.dk_fp32 = kp.dk_fp32;
  k.dv_fp32 = kp.dv_fp32;
  k.accumulate = kp.accumulate_dkdv;  // the Hopper kernel's flag is dK / dV's (its dQ goes through the conversion)
  k.batch = kp.batch;
  k.seqlen_q = kp.seqlen_q;
  k.seqlen_kv = kp.seqlen_kv;
  k.heads_q = kp.heads_q;
  k.heads_kv = kp.heads_kv;
  k.group = kp.group;
  k.num_kv_tiles = (kp.seqlen_kv + BwdConfig::kBlockN - 1) / BwdConfig::kBlockN;
  hopper::fill_chunks(f.q_pos, FlashBwdHopperParams::kMaxChunks, &k.q_chunks, k.q_row, k.q_start, k.q_stride);
  hopper::fill_chunks(f.kv_pos, FlashBwdHopperParams::kMaxChunks, &k.kv_chunks, k.kv_row, k.kv_start, k.kv_stride);
  const DiagonalBand band = DiagonalBand::from_mask(f.mask);
  k.band_lo = band.lo;
  k.band_hi = band.hi;
  if (kp.has_blocks) {
    k.has_blocks = true;
    k.col_offset = kp.col_offset;
    k.row_index = kp.row_index;
    k.col_partial = kp.col_partial;
    k.num_q_tiles = static_cast<int>((kp.seqlen_q + BwdConfig::kBlockM - 1) / BwdConfig::kBlockM);
  }
  if (kp.rope_dk_epilogue && p.rope_grad != nullptr) {  // decided by flash_bwd_api.cu (fuses_rope_dk, options)
    const RopeGradParams& r = *p.rope_grad;
    k.rope_inv_freq = r.inv_freq;
    k.rope_rotary_dim = static_cast<int>(r.rotary_dim == 0 ? BwdConfig::kHeadDim : r.rotary_dim);
    k.rope_style = r.style;
    k.rope_scale = r.scale;
  }
  k.scale = kp.scale;
  k.scale_log2 = static_cast<float>(static_cast<double>(kp.scale) * 1.4426950408889634);
  const bool bf16 = f.q.dtype == DType::kBFloat16;
  // The same three steps as kernels::run_flash_bwd, with the Hopper main kernel in the middle.
  if (bf16) {
    if (kp.delta_out != nullptr) kernels::launch_flash_bwd_delta<__nv_bfloat16, 128>(kp, stream);
    launch_main<__nv_bfloat16>(k, stream);
    kernels::launch_flash_bwd_dq_out<__nv_bfloat16, 128>(kp, stream);  // plain or rotating conversion
  } else {
    if (kp.delta_out != nullptr) kernels::launch_flash_bwd_delta<__half, 128>(kp, stream);
    launch_main<__half>(k, stream);
    kernels::launch_flash_bwd_dq_out<__half, 128>(kp, stream);  // plain or rotating conversion
  }
}

}  // namespace distattn
