// rope_apply_cuda: validation, vector-path choice and the single launch for q and k.
#include <algorithm>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/positional/rope.h"
#include "rope_kernel.cuh"
#include "rope_validate.h"

namespace distattn {
namespace rope {
namespace {

// `ptr` must be device (or managed) memory usable by the current device. A local copy of the check
// the sparse engine makes, so positional/ does not reach into sparse/'s private sources.
void check_device_memory(const void* ptr, const char* argument) {
  cudaPointerAttributes attr{};
  const cudaError_t st = cudaPointerGetAttributes(&attr, ptr);
  if (st != cudaSuccess) {
    (void)cudaGetLastError();  // clear the non-sticky error the query left behind
    DISTATTN_THROW(argument, "cudaPointerGetAttributes failed (", cudaGetErrorName(st), "): not device memory");
  }
  DISTATTN_CHECK_ARG(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, argument, "pointer ", ptr,
                     " is not device or managed memory (cudaMemoryType ", static_cast<int>(attr.type), ")");
  if (attr.type == cudaMemoryTypeDevice) {
    int current = -1;
    DISTATTN_CUDA_CHECK(cudaGetDevice(&current));
    DISTATTN_CHECK_ARG(attr.device == current, argument, "pointer ", ptr, " lives on device ", attr.device,
                       ", the current device is ", current);
  }
}

// The 16-byte path needs every packet address aligned: base pointer 16-byte aligned and batch/row/head
// strides multiples of the packet (the head dim is contiguous, unit offsets are multiples of it).
bool vector_ok(const TensorView& t, int64_t vec) {
  if (t.empty()) return true;
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return false;
  return t.stride[0] % vec == 0 && t.stride[1] % vec == 0 && t.stride[2] % vec == 0;
}

RopeTensorArgs make_tensor_args(const TensorView& in, const TensorView& out_or_empty, const TensorView& copy,
                                const PositionMap& pos, int64_t rot, int64_t rows_per_block) {
  const TensorView& out = out_or_empty.empty() ? in : out_or_empty;
  RopeTensorArgs a;
  a.in = in.data;
  a.out = out.data;
  a.in_stride_b = in.stride[0];
  a.in_stride_s = in.stride[1];
  a.in_stride_h = in.stride[2];
  a.out_stride_b = out.stride[0];
  a.out_stride_s = out.stride[1];
  a.out_stride_h = out.stride[2];
  a.seqlen = in.seqlen();
  a.heads = in.heads();
  a.rows = in.batch() * in.seqlen();
  a.num_blocks = (a.rows + rows_per_block - 1) / rows_per_block;
  const bool in_place = out.data == in.data && out.stride == in.stride;
  a.copy_tail = (!in_place && rot < in.head_dim()) ? 1 : 0;
  if (!copy.empty()) {
    a.copy = copy.data;
    a.copy_stride_b = copy.stride[0];
    a.copy_stride_s = copy.stride[1];
    a.copy_stride_h = copy.stride[2];
  }
  a.pos = pos;
  return a;
}

template <typename T, bool kCopy>
void dispatch(const RopeKernelParams& kp, RopeStyle style, bool vec, size_t smem, int64_t blocks, cudaStream_t stream) {
  constexpr int kV = 16 / sizeof(T);
  const dim3 grid(static_cast<unsigned>(blocks)), block(kThreads);
  if (style == RopeStyle::kNeoX) {
    if (vec) {
      rope_kernel<T, RopeStyle::kNeoX, kV, true, kCopy><<<grid, block, smem, stream>>>(kp);
    } else {
      rope_kernel<T, RopeStyle::kNeoX, 1, false, kCopy><<<grid, block, smem, stream>>>(kp);
    }
  } else {
    if (vec) {
      rope_kernel<T, RopeStyle::kGptJ, kV, true, kCopy><<<grid, block, smem, stream>>>(kp);
    } else {
      rope_kernel<T, RopeStyle::kGptJ, 2, false, kCopy><<<grid, block, smem, stream>>>(kp);
    }
  }
  DISTATTN_CUDA_CHECK_LAUNCH();
}

template <typename T>
void dispatch(const RopeKernelParams& kp, RopeStyle style, bool vec, bool copy, size_t smem, int64_t blocks,
              cudaStream_t stream) {
  if (copy) {
    dispatch<T, true>(kp, style, vec, smem, blocks, stream);
  } else {
    dispatch<T, false>(kp, style, vec, smem, blocks, stream);
  }
}

}  // namespace

void launch_rope_kernel(const RopeParams& p, int64_t rot, int64_t items_per_block, cudaStream_t stream) {
  const TensorView& q = p.q;
  const int64_t D = q.head_dim();
  const int64_t half = rot / 2;
  const int64_t vec = 16 / static_cast<int64_t>(dtype_size(q.dtype));

  // Vector path: every operand aligned, and the unit/tail split falls on packet boundaries.
  const bool split_ok = p.style == RopeStyle::kNeoX ? (half % vec == 0) : (rot % vec == 0);
  const bool vec_path = split_ok && (D - rot) % vec == 0 && vector_ok(q, vec) && vector_ok(p.q_out, vec) &&
                        vector_ok(p.k, vec) && vector_ok(p.k_out, vec) && vector_ok(p.q_copy, vec) &&
                        vector_ok(p.k_copy, vec);
  const int64_t unit_elems = vec_path ? vec : (p.style == RopeStyle::kNeoX ? 1 : 2);
  const int64_t units_per_head = p.style == RopeStyle::kNeoX ? half / unit_elems : rot / unit_elems;

  // Rows per block: enough rows that a block has ~items_per_block units, bounded by the cos/sin table
  // (<= 32 KiB of shared memory) and 64 rows. Default 512 units (2 per thread; one row of 64 heads at
  // D = 128): measured best on H100 for the PEERS.md configs (256 / 512 / 1024 / 2048 / 4096 swept;
  // 512 was fastest at every size, 1-3% ahead of 1024, up to 5% ahead of 4096).
  if (items_per_block <= 0) items_per_block = int64_t{kThreads} * 2;
  const int64_t heads = std::max(q.heads(), p.k.empty() ? int64_t{0} : p.k.heads());
  // The kernel indexes a block's items (<= 64 rows * heads * D) in int32.
  DISTATTN_CHECK_ARG(heads * D <= (int64_t{1} << 24), p.k.empty() || q.heads() >= p.k.heads() ? "q" : "k",
                     "heads * head_dim = ", heads * D, " above the supported 2^24 per row");
  int64_t rows_per_block = (items_per_block + heads * units_per_head - 1) / (heads * units_per_head);
  rows_per_block = std::max<int64_t>(1, std::min<int64_t>(rows_per_block, 64));
  rows_per_block = std::min<int64_t>(rows_per_block, std::max<int64_t>(1, (32 * 1024) / (half * 8)));

  RopeKernelParams kp;
  kp.t[0] = make_tensor_args(q, p.q_out, p.q_copy, p.q_pos, rot, rows_per_block);
  if (!p.k.empty()) kp.t[1] = make_tensor_args(p.k, p.k_out, p.k_copy, p.k_pos, rot, rows_per_block);  // else 0 blocks
  const bool copy = !p.q_copy.empty() || !p.k_copy.empty();
  kp.inv_freq = p.inv_freq;
  kp.head_dim = static_cast<int>(D);
  kp.rotary_dim = static_cast<int>(rot);
  kp.half = static_cast<int>(half);
  kp.rows_per_block = static_cast<int>(rows_per_block);
  kp.scale = p.scale;
  kp.inverse = p.inverse ? 1 : 0;

  const int64_t blocks = kp.t[0].num_blocks + kp.t[1].num_blocks;
  DISTATTN_CHECK_ARG(blocks <= 0x7fffffff, "q", "too many rows for one launch (", blocks, " blocks)");
  // Row offsets (3 int64 per row: input, output, second output), cos/sin table (2 * half floats per row), positions
  // (1 float per row).
  const size_t smem = static_cast<size_t>(3 * rows_per_block) * sizeof(int64_t) +
                      static_cast<size_t>(rows_per_block * (2 * half + 1)) * sizeof(float);
  switch (q.dtype) {
    case DType::kBFloat16:
      dispatch<__nv_bfloat16>(kp, p.style, vec_path, copy, smem, blocks, stream);
      break;
    case DType::kFloat16:
      dispatch<__half>(kp, p.style, vec_path, copy, smem, blocks, stream);
      break;
    case DType::kFloat32:
      dispatch<float>(kp, p.style, vec_path, copy, smem, blocks, stream);
      break;
    default:
      DISTATTN_THROW("q", "unsupported dtype ", dtype_name(q.dtype));
  }
}

}  // namespace rope

void rope_apply_cuda(const RopeParams& p, cudaStream_t stream) {
  const int64_t rot = detail::validate_rope_params(p, Device::kCuda, /*allow_fp64=*/false);
  rope::check_device_memory(p.q.data, "q");
  if (!p.q_out.empty()) rope::check_device_memory(p.q_out.data, "q_out");
  if (!p.k.empty()) rope::check_device_memory(p.k.data, "k");
  if (!p.k_out.empty()) rope::check_device_memory(p.k_out.data, "k_out");
  if (!p.q_copy.empty()) rope::check_device_memory(p.q_copy.data, "q_copy");
  if (!p.k_copy.empty()) rope::check_device_memory(p.k_copy.data, "k_copy");
  rope::check_device_memory(p.inv_freq, "inv_freq");
  rope::launch_rope_kernel(p, rot, 0, stream);
}

}  // namespace distattn
