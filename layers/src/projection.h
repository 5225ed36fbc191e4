// Internal: the dense projections of the MHA layer (multi_head_attention.h) behind one interface, with a
// host implementation (plain loops, double accumulation) and a CUDA one (cuBLAS, fp32 accumulation).
//
// Every operand is a stack of row-major matrices Mat [batch, rows, cols] (an activation [B, S, C]) or a
// packed row-major weight W [out, in]. With T = batch * rows tokens:
//   linear             out[T, n_out] = in[T, n_in] W^T + bias            W [n_out, n_in], bias [n_out] or null
//   linear_input_grad  din[T, n_in]  = dout[T, n_out] W
//   linear_weight_grad dW[n_out, n_in] = sum_t dout[t]^T in[t],  db[n_out] = sum_t dout[t]  (db may be null)
// dW and db are in the projector's gradient dtype (fp32 on CUDA; host: fp64 for fp64 operands, else fp32).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "distattn/core/dtype.h"
#include "distattn/layers/multi_head_attention.h"

namespace distattn {
namespace layers {
namespace detail {

struct Mat {
  void* data = nullptr;
  DType dtype = DType::kBFloat16;
  int64_t batch = 1, rows = 0, cols = 0;
  int64_t batch_stride = 0;  // elements (resolved, never 0 unless batch == 1)
  int64_t row_stride = 0;    // elements (resolved)
  // One matrix of batch * rows rows with the same row stride (batches back to back).
  bool folded() const { return batch == 1 || batch_stride == rows * row_stride; }
};

inline Mat mat_of(const SequenceView& v) {
  Mat m;
  m.data = v.data, m.dtype = v.dtype, m.batch = v.batch, m.rows = v.seq, m.cols = v.dim;
  m.row_stride = v.row_step();
  m.batch_stride = v.batch_step();
  return m;
}

inline Mat packed_mat(void* data, DType dtype, int64_t batch, int64_t rows, int64_t cols) {
  Mat m;
  m.data = data, m.dtype = dtype, m.batch = batch, m.rows = rows, m.cols = cols;
  m.row_stride = cols;
  m.batch_stride = rows * cols;
  return m;
}

class Projector {
 public:
  virtual ~Projector() = default;
  virtual void linear(const Mat& in, const void* weight, const void* bias, const Mat& out) = 0;
  virtual void linear_input_grad(const Mat& dout, const void* weight, const Mat& din) = 0;
  virtual void linear_weight_grad(const Mat& dout, const Mat& in, void* dweight, void* dbias) = 0;
  virtual void set_stream(cudaStream_t /*stream*/) {}
};

// Host loops; gradients in `grad_dtype` (fp32 or fp64).
std::unique_ptr<Projector> make_host_projector(DType grad_dtype);
// cuBLAS (handle created here, bound to the stream of set_stream); bf16/fp16 operands, fp32 gradients.
std::unique_ptr<Projector> make_cuda_projector();

// CUDA kernels (projection_kernels.cu), enqueued on `stream`:
// out[b, r, c] += bias[c] (out's dtype: bf16/fp16; bias the same dtype), fp32 add, one rounding.
void launch_add_bias(const Mat& out, const void* bias, cudaStream_t stream);
// sums[c] = sum over (b, r) of in[b, r, c] in fp32, deterministic (fixed summation order), overwritten.
void launch_column_sums(const Mat& in, float* sums, cudaStream_t stream);

}  // namespace detail
}  // namespace layers
}  // namespace distattn
