// AttentionIo (attention_io.h).
#include "attention_io.h"

#include <cstring>

#include "distattn/core/check_cuda.h"
#include "distattn/core/error.h"

namespace distattn {
namespace bench {

TensorView AttentionIo::make(DeviceBuffer& dev, HostTensor& host, int64_t heads) {
  if (on_gpu_) {
    dev = DeviceBuffer(static_cast<size_t>(B_ * S_ * heads * D_) * dtype_size(dtype_));
    return TensorView::packed(dev.get(), dtype_, Device::kCuda, B_, S_, heads, D_);
  }
  host = HostTensor(dtype_, B_, S_, heads, D_);
  return host.view;
}

void AttentionIo::allocate(bool on_gpu, DType dtype, int64_t B, int64_t S, int64_t H, int64_t Hkv, int64_t D,
                           bool bwd) {
  reset();
  on_gpu_ = on_gpu, has_grads_ = bwd, dtype_ = dtype;
  B_ = B, S_ = S, H_ = H, Hkv_ = Hkv, D_ = D;
  q = make(dq_buf_, hq_, H);
  k = make(dk_buf_, hk_, Hkv);
  v = make(dv_buf_, hv_, Hkv);
  o = make(do_buf_, ho_, H);
  if (bwd) {
    dout = make(dout_buf_, hdout_, H);
    dq = make(ddq_buf_, hdq_, H);
    dk = make(ddk_buf_, hdk_, Hkv);
    dv = make(ddv_buf_, hdv_, Hkv);
  }
  const size_t n_lse = static_cast<size_t>(B * H * S);
  if (on_gpu) {
    lse_buf_ = DeviceBuffer(n_lse * sizeof(float));
    lse = static_cast<float*>(lse_buf_.get());
  } else {
    hlse_.assign(n_lse, 0.f);
    lse = hlse_.data();
  }
}

void AttentionIo::reset() {
  for (DeviceBuffer* b :
       {&dq_buf_, &dk_buf_, &dv_buf_, &do_buf_, &dout_buf_, &ddq_buf_, &ddk_buf_, &ddv_buf_, &lse_buf_})
    b->reset();
  for (HostTensor* t : {&hq_, &hk_, &hv_, &ho_, &hdout_, &hdq_, &hdk_, &hdv_}) *t = HostTensor();
  hlse_.clear();
  q = k = v = o = dout = dq = dk = dv = TensorView();
  lse = nullptr;
  has_grads_ = false;
}

void AttentionIo::fill_inputs(uint64_t seed, cudaStream_t stream) {
  if (on_gpu_) {
    const TensorView* in[] = {&q, &k, &v, &dout};
    for (int i = 0; i < (has_grads_ ? 4 : 3); ++i)
      fill_random_device(in[i]->data, in[i]->numel(), dtype_, seed + static_cast<uint64_t>(i), 1.0f, stream);
  } else {
    HostTensor* in[] = {&hq_, &hk_, &hv_, &hdout_};
    for (int i = 0; i < (has_grads_ ? 4 : 3); ++i) fill_random_host(*in[i], seed + static_cast<uint64_t>(i));
  }
}

void AttentionIo::poison_outputs(bool grads, cudaStream_t stream) {
  DISTATTN_CHECK_ARG(!grads || has_grads_, "grads", "poisoned without gradient buffers (allocate with bwd)");
  if (on_gpu_) {
    poison_device(do_buf_.get(), do_buf_.bytes(), stream);
    poison_device(lse_buf_.get(), lse_buf_.bytes(), stream);
    if (grads)
      for (DeviceBuffer* b : {&ddq_buf_, &ddk_buf_, &ddv_buf_}) poison_device(b->get(), b->bytes(), stream);
  } else {
    fill_nan_host(ho_);
    fill_nan_host(hlse_);
    if (grads)
      for (HostTensor* t : {&hdq_, &hdk_, &hdv_}) fill_nan_host(*t);
  }
}

HostTensor AttentionIo::to_host(const TensorView& t) const {
  if (on_gpu_) return download(t.data, t.dtype, t.batch(), t.seqlen(), t.heads(), t.head_dim());
  return convert(t, t.dtype);  // a packed copy
}

void AttentionIo::upload(const HostTensor& src, const TensorView& t) {
  const size_t n = static_cast<size_t>(t.numel()) * dtype_size(t.dtype);
  DISTATTN_CHECK_ARG(src.view.dtype == t.dtype && src.bytes() == n && src.view.shape == t.shape, "src",
                     "is not a packed tensor of the destination's shape and dtype");
  if (on_gpu_) {
    DISTATTN_CUDA_CHECK(cudaMemcpy(t.data, src.storage.data(), n, cudaMemcpyHostToDevice));
  } else {
    std::memcpy(t.data, src.storage.data(), n);  // the host views are packed tensors of this class
  }
}

size_t AttentionIo::bytes() const {
  size_t n = 0;
  for (const TensorView* t : {&q, &k, &v, &o, &dout, &dq, &dk, &dv})
    if (t->data != nullptr) n += static_cast<size_t>(t->numel()) * dtype_size(t->dtype);
  return n + static_cast<size_t>(B_ * H_ * S_) * sizeof(float);
}

std::vector<float> AttentionIo::lse_to_host() const {
  if (on_gpu_) return download_floats(lse, B_ * H_ * S_);
  return hlse_;
}

}  // namespace bench
}  // namespace distattn
