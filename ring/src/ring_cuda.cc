// RingAttention's CUDA executor (ring_attention.h). Same schedule as the host executor
// (ring_attention.cc), with streams:
//   compute stream  = the caller's `stream`: packing, the engine calls, casts
//   comm stream     = NcclCommunicator::stream(): the grouped ncclSend/ncclRecv
//   post_exchange(after = stream) orders an exchange after everything enqueued on the compute stream so
//   far (in particular the step that last READ the buffer it receives into); wait_exchange(consumer =
//   stream) orders the compute stream after it, and the host polls it with the deadline (watchdog).
//
// Forward, step s: post the K|V exchange feeding step s+1, enqueue step s's compute on kv[cur], then
// wait. The exchange of step s+1 therefore runs while step s computes.
// Backward, step s: post the K|V exchange of step s+1; compute step s into a zeroed fp32 scratch dK|dV
// (independent of the travelling accumulator, so it overlaps the accumulator's exchange of step s-1);
// wait for that accumulator; add; post it on to next.
//
// STATUS: compiles; not yet run on a GPU (verified next session with the gpu-mpi tests).
#include <cuda_runtime_api.h>

#include <cmath>
#include <limits>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"
#include "distattn/ring/ring_attention.h"
#include "distattn/sparse/flash_attention.h"
#include "ring_kernels.h"

namespace distattn {
namespace ring {

namespace {

// Stream-ordered device scratch, freed on the stream when it goes out of scope (also on a throw).
class DeviceScratch {
 public:
  DeviceScratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes > 0) DISTATTN_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  ~DeviceScratch() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  template <typename T = unsigned char>
  T* get() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

TensorView device_view(void* data, DType dtype, int64_t B, int64_t S, int64_t H, int64_t D) {
  return TensorView::packed(data, dtype, Device::kCuda, B, S, H, D);
}

}  // namespace

void RingAttention::forward_cuda(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                 float* lse, CUstream_st* stream_in) {
  // A null stream is the legacy default stream; name it explicitly so the exchange is ordered against it
  // (the communicator treats a null stream as "no ordering").
  const cudaStream_t stream = stream_in != nullptr ? stream_in : cudaStreamLegacy;
  const int64_t B = config_.batch, Sl = local_rows_, Hq = config_.q_heads, Hkv = config_.kv_heads, D = config_.head_dim;
  const int P = comm_.size();
  const size_t es = dtype_size(config_.dtype);
  const int64_t nkv = B * Sl * Hkv * D;  // elements of one of K, V
  const size_t kv_bytes = 2 * static_cast<size_t>(nkv) * es;

  DeviceScratch kv0(kv_bytes, stream), kv1(kv_bytes, stream);
  unsigned char* kv[2] = {kv0.get(), kv1.get()};
  DeviceScratch acc_o(static_cast<size_t>(B * Sl * Hq * D) * sizeof(float), stream);
  DeviceScratch acc_lse(static_cast<size_t>(B * Hq * Sl) * sizeof(float), stream);
  detail::pack_view(k, kv[0], stream);
  detail::pack_view(v, kv[0] + nkv * es, stream);
  DISTATTN_CUDA_CHECK(cudaMemsetAsync(acc_o.get(), 0, static_cast<size_t>(B * Sl * Hq * D) * sizeof(float), stream));
  detail::fill_f32(acc_lse.get<float>(), B * Hq * Sl, -std::numeric_limits<float>::infinity(), stream);
  const TensorView acc_view = device_view(acc_o.get(), DType::kFloat32, B, Sl, Hq, D);

  int cur = 0;
  for (int s = 0; s < P; ++s) {
    ExchangeTicket t;
    if (s + 1 < P) t = comm_.post_exchange("ring forward K|V exchange", s + 1, kv[cur], kv[1 - cur], kv_bytes, stream);
    const RingStep& st = schedule_.steps[static_cast<size_t>(s)];
    if (!st.skipped()) {
      AttnParams p = step_params(q, device_view(kv[cur], config_.dtype, B, Sl, Hkv, D),
                                 device_view(kv[cur] + nkv * es, config_.dtype, B, Sl, Hkv, D), st);
      p.o = acc_view;
      p.lse = acc_lse.get<float>();
      p.accumulate = true;
      flash_attention_forward(p, stream);
    }
    if (s + 1 < P) {
      comm_.wait_exchange(t, stream);
      cur = 1 - cur;
    }
  }
  detail::convert_packed_to_view(acc_o.get(), DType::kFloat32, o, stream);
  if (lse != nullptr) {
    DISTATTN_CUDA_CHECK(cudaMemcpyAsync(lse, acc_lse.get(), static_cast<size_t>(B * Hq * Sl) * sizeof(float),
                                        cudaMemcpyDeviceToDevice, stream));
  }
}

void RingAttention::backward_cuda(const TensorView& dout, const TensorView& q, const TensorView& k, const TensorView& v,
                                  const TensorView& o, const float* lse, const TensorView& dq, const TensorView& dk,
                                  const TensorView& dv, CUstream_st* stream_in) {
  // A null stream is the legacy default stream; name it explicitly so the exchange is ordered against it
  // (the communicator treats a null stream as "no ordering").
  const cudaStream_t stream = stream_in != nullptr ? stream_in : cudaStreamLegacy;
  const int64_t B = config_.batch, Sl = local_rows_, Hq = config_.q_heads, Hkv = config_.kv_heads, D = config_.head_dim;
  const int P = comm_.size();
  const size_t es = dtype_size(config_.dtype);
  const int64_t nkv = B * Sl * Hkv * D;
  const size_t kv_bytes = 2 * static_cast<size_t>(nkv) * es;
  const DType gtype = config_.grad_travel == GradTravel::kFloat32 ? DType::kFloat32 : DType::kBFloat16;
  const size_t gbytes = 2 * static_cast<size_t>(nkv) * dtype_size(gtype);

  DeviceScratch kv0(kv_bytes, stream), kv1(kv_bytes, stream);
  unsigned char* kv[2] = {kv0.get(), kv1.get()};
  detail::pack_view(k, kv[0], stream);
  detail::pack_view(v, kv[0] + nkv * es, stream);
  DeviceScratch delta(static_cast<size_t>(B * Hq * Sl) * sizeof(float), stream);
  detail::row_dot(dout, o, delta.get<float>(), stream);  // once for all steps
  const size_t dq_bytes = static_cast<size_t>(B * Sl * Hq * D) * sizeof(float);
  DeviceScratch acc_dq(dq_bytes, stream);
  DISTATTN_CUDA_CHECK(cudaMemsetAsync(acc_dq.get(), 0, dq_bytes, stream));
  DeviceScratch scratch(2 * static_cast<size_t>(nkv) * sizeof(float), stream);  // this step's dK | dV
  DeviceScratch dsend(gbytes, stream), drecv(gbytes, stream);                   // travelling accumulators

  int cur = 0;
  ExchangeTicket tg;
  for (int s = 0; s < P; ++s) {
    ExchangeTicket tk;
    if (s + 1 < P) {
      tk = comm_.post_exchange("ring backward K|V exchange", s + 1, kv[cur], kv[1 - cur], kv_bytes, stream);
    }
    const RingStep& st = schedule_.steps[static_cast<size_t>(s)];
    if (!st.skipped()) {
      DISTATTN_CUDA_CHECK(cudaMemsetAsync(scratch.get(), 0, 2 * static_cast<size_t>(nkv) * sizeof(float), stream));
      AttnBwdParams bp;
      bp.fwd = step_params(q, device_view(kv[cur], config_.dtype, B, Sl, Hkv, D),
                           device_view(kv[cur] + nkv * es, config_.dtype, B, Sl, Hkv, D), st);
      bp.fwd.o = o;
      bp.fwd.lse = const_cast<float*>(lse);
      bp.dout = dout;
      bp.dq = device_view(acc_dq.get(), DType::kFloat32, B, Sl, Hq, D);
      bp.dk = device_view(scratch.get(), DType::kFloat32, B, Sl, Hkv, D);
      bp.dv = device_view(scratch.get<float>() + nkv, DType::kFloat32, B, Sl, Hkv, D);
      bp.accumulate = true;
      bp.delta = delta.get<float>();
      flash_attention_backward(bp, stream);
    }
    if (s > 0) comm_.wait_exchange(tg, stream);
    detail::travel_add(s > 0 ? drecv.get() : nullptr, st.skipped() ? nullptr : scratch.get<float>(), dsend.get(),
                       2 * nkv, gtype, stream);
    tg = comm_.post_exchange("ring backward dK|dV exchange", s, dsend.get(), drecv.get(), gbytes, stream);
    if (s + 1 < P) {
      comm_.wait_exchange(tk, stream);
      cur = 1 - cur;
    }
  }
  comm_.wait_exchange(tg, stream);  // this rank's own dK | dV, complete
  detail::convert_packed_to_view(drecv.get(), gtype, dk, stream);
  detail::convert_packed_to_view(drecv.get() + nkv * dtype_size(gtype), gtype, dv, stream);
  detail::convert_packed_to_view(acc_dq.get(), DType::kFloat32, dq, stream);
}

}  // namespace ring
}  // namespace distattn
