// CUDA projections of the MHA layer (projection.h) through cuBLAS: bf16/fp16 operands, CUBLAS_COMPUTE_32F
// (fp32 accumulation), activations written in their dtype, weight gradients written in fp32 directly by the
// GEMM (no bf16 round trip of a sum over all tokens).
//
// cuBLAS is column-major; a row-major matrix M [r, c] with row stride ld is the column-major matrix M^T (c x r,
// leading dimension ld). So, with X [T, K] and W [N, K] row-major:
//   Y = X W^T   [T, N]   is   Y^T (N x T) = W^T(cm: op T of the K x N matrix) * X^T (K x T)  -> gemm(T, N, m=N, n=T,
//   k=K) dX = dY W   [T, K]   is   dX^T (K x T) = W^T (K x N) * dY^T (N x T)                     -> gemm(N, N, m=K,
//   n=T, k=N) dW = dY^T X [N, K]   is   dW^T (K x N) = X^T (K x T) * dY (T x N)                         -> gemm(N, T,
//   m=K, n=N, k=T)
// A stack of B matrices whose batches are not back to back goes through cublasGemmStridedBatchedEx (the
// weight is shared: stride 0); dW sums over batches, so there the batches are GEMMs with beta = 1 after the first.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <climits>

#include "distattn/core/check_cuda.h"
#include "distattn/core/check_libs.h"
#include "distattn/core/error.h"
#include "projection.h"

namespace distattn {
namespace layers {
namespace detail {
namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kBFloat16:
      return CUDA_R_16BF;
    case DType::kFloat16:
      return CUDA_R_16F;
    case DType::kFloat32:
      return CUDA_R_32F;
    default:
      break;
  }
  DISTATTN_THROW("dtype", "cuBLAS projections take bf16 / fp16 operands, got ", dtype_name(t));
}

int as_int(int64_t v, const char* what) {
  DISTATTN_CHECK_ARG(v >= 0 && v <= INT_MAX, what, "is ", v, ": cuBLAS takes 32-bit sizes");
  return static_cast<int>(v);
}

char* elem(void* base, DType t, int64_t offset) {
  return static_cast<char*>(base) + offset * static_cast<int64_t>(dtype_size(t));
}

class CudaProjector : public Projector {
 public:
  CudaProjector() { DISTATTN_CUBLAS_CHECK(cublasCreate(&handle_)); }
  ~CudaProjector() override {
    if (handle_) cublasDestroy(handle_);  // never throws from a destructor
  }
  void set_stream(cudaStream_t stream) override {
    stream_ = stream;
    DISTATTN_CUBLAS_CHECK(cublasSetStream(handle_, stream));
  }

  void linear(const Mat& in, const void* weight, const void* bias, const Mat& out) override {
    const float one = 1.f, zero = 0.f;
    const cudaDataType_t t = cuda_type(in.dtype);
    const int n_out = as_int(out.cols, "out.cols"), n_in = as_int(in.cols, "in.cols");
    if (in.folded() && out.folded()) {
      // Y^T (n_out x T) = op_T(W: n_in x n_out col-major) * X^T (n_in x T)
      DISTATTN_CUBLAS_CHECK(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, n_out, as_int(in.batch * in.rows, "tokens"),
                                         n_in, &one, weight, t, n_in, in.data, t, as_int(in.row_stride, "x row stride"),
                                         &zero, out.data, cuda_type(out.dtype), as_int(out.row_stride, "y row stride"),
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
      DISTATTN_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          handle_, CUBLAS_OP_T, CUBLAS_OP_N, n_out, as_int(in.rows, "rows"), n_in, &one, weight, t, n_in, 0, in.data, t,
          as_int(in.row_stride, "x row stride"), in.batch_stride, &zero, out.data, cuda_type(out.dtype),
          as_int(out.row_stride, "y row stride"), out.batch_stride, as_int(in.batch, "batch"), CUBLAS_COMPUTE_32F,
          CUBLAS_GEMM_DEFAULT));
    }
    if (bias) launch_add_bias(out, bias, stream_);
  }

  void linear_input_grad(const Mat& dout, const void* weight, const Mat& din) override {
    const float one = 1.f, zero = 0.f;
    const cudaDataType_t t = cuda_type(dout.dtype);
    const int n_out = as_int(dout.cols, "dout.cols"), n_in = as_int(din.cols, "din.cols");
    if (dout.folded() && din.folded()) {
      // dX^T (n_in x T) = W^T (n_in x n_out col-major, ld n_in) * dY^T (n_out x T)
      DISTATTN_CUBLAS_CHECK(cublasGemmEx(
          handle_, CUBLAS_OP_N, CUBLAS_OP_N, n_in, as_int(dout.batch * dout.rows, "tokens"), n_out, &one, weight, t,
          n_in, dout.data, t, as_int(dout.row_stride, "dy row stride"), &zero, din.data, cuda_type(din.dtype),
          as_int(din.row_stride, "dx row stride"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
      DISTATTN_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          handle_, CUBLAS_OP_N, CUBLAS_OP_N, n_in, as_int(dout.rows, "rows"), n_out, &one, weight, t, n_in, 0,
          dout.data, t, as_int(dout.row_stride, "dy row stride"), dout.batch_stride, &zero, din.data,
          cuda_type(din.dtype), as_int(din.row_stride, "dx row stride"), din.batch_stride, as_int(dout.batch, "batch"),
          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }

  void linear_weight_grad(const Mat& dout, const Mat& in, void* dweight, void* dbias) override {
    const float one = 1.f, zero = 0.f;
    const cudaDataType_t t = cuda_type(dout.dtype);
    const int n_out = as_int(dout.cols, "dout.cols"), n_in = as_int(in.cols, "in.cols");
    if (dout.folded() && in.folded()) {
      // dW^T (n_in x n_out, ld n_in) = X^T (n_in x T) * dY (T x n_out) = X^T * op_T(dY^T)
      DISTATTN_CUBLAS_CHECK(cublasGemmEx(
          handle_, CUBLAS_OP_N, CUBLAS_OP_T, n_in, n_out, as_int(dout.batch * dout.rows, "tokens"), &one, in.data, t,
          as_int(in.row_stride, "x row stride"), dout.data, t, as_int(dout.row_stride, "dy row stride"), &zero, dweight,
          CUDA_R_32F, n_in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
      // Batches are summed: one GEMM per batch, accumulating (beta = 1) after the first.
      for (int64_t b = 0; b < dout.batch; ++b) {
        DISTATTN_CUBLAS_CHECK(cublasGemmEx(
            handle_, CUBLAS_OP_N, CUBLAS_OP_T, n_in, n_out, as_int(dout.rows, "rows"), &one,
            elem(in.data, in.dtype, b * in.batch_stride), t, as_int(in.row_stride, "x row stride"),
            elem(dout.data, dout.dtype, b * dout.batch_stride), t, as_int(dout.row_stride, "dy row stride"),
            b == 0 ? &zero : &one, dweight, CUDA_R_32F, n_in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      }
    }
    if (dbias) launch_column_sums(dout, static_cast<float*>(dbias), stream_);
  }

 private:
  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::unique_ptr<Projector> make_cuda_projector() { return std::make_unique<CudaProjector>(); }

}  // namespace detail
}  // namespace layers
}  // namespace distattn
