#include "distattn/core/operand_checks.h"

#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <initializer_list>

#include "distattn/core/error.h"

namespace distattn {

void check_device_pointer(const void* ptr, const char* argument, bool allow_null) {
  if (ptr == nullptr) {
    DISTATTN_CHECK_ARG(allow_null, argument, "is a null pointer; device memory is required");
    return;
  }
  cudaPointerAttributes attr{};
  const cudaError_t status = cudaPointerGetAttributes(&attr, ptr);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error this query leaves behind
    DISTATTN_THROW(argument, "pointer ", ptr, " is not known to CUDA (", cudaGetErrorString(status),
                   "); device memory is required");
  }
  DISTATTN_CHECK_ARG(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, argument, "pointer ", ptr,
                     " is host memory; device memory is required");
}

bool cuda_tensor_aligned(const TensorView& t) {
  const int64_t elem = static_cast<int64_t>(dtype_size(t.dtype));
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return false;
  for (int axis = 0; axis < 3; ++axis)
    if ((t.stride[axis] * elem) % 16 != 0 && t.shape[axis] != 1) return false;
  return true;
}

void check_cuda_tensor(const TensorView& t, const char* argument) {
  DISTATTN_CHECK_ARG(t.device == Device::kCuda, argument,
                     "is marked as host memory; the CUDA engine needs device tensors");
  check_device_pointer(t.data, argument);
  if (cuda_tensor_aligned(t)) return;
  // Which part of the rule fails, for the message.
  const int64_t elem = static_cast<int64_t>(dtype_size(t.dtype));
  DISTATTN_CHECK_ARG(reinterpret_cast<uintptr_t>(t.data) % 16 == 0, argument, "base address ", t.data,
                     " is not 16-byte aligned (the kernels load 16-byte vectors)");
  for (int axis = 0; axis < 3; ++axis) {
    DISTATTN_CHECK_ARG((t.stride[axis] * elem) % 16 == 0 || t.shape[axis] == 1, argument, "stride[", axis,
                       "] = ", t.stride[axis], " elements is not a multiple of 16 bytes (", 16 / elem, " elements of ",
                       dtype_name(t.dtype), ")");
  }
}

void check_shard(const TensorView& t, const char* argument, int64_t B, int64_t rows, int64_t H, int64_t D, DType dtype,
                 bool fp32_allowed, Device device, const char* rows_note) {
  DISTATTN_CHECK_ARG(t.data != nullptr, argument, "is null");
  const std::array<int64_t, 4> want{B, rows, H, D};
  DISTATTN_CHECK_ARG(t.shape == want, argument, "has shape ", describe(t), ", expected this rank's shard [", B, ", ",
                     rows, ", ", H, ", ", D, "] (", rows_note, ")");
  DISTATTN_CHECK_ARG(t.dtype == dtype || (fp32_allowed && t.dtype == DType::kFloat32), argument, "has dtype ",
                     dtype_name(t.dtype), ", expected the configuration's ", dtype_name(dtype),
                     fp32_allowed ? " or fp32" : "");
  const auto where = [](Device d) { return d == Device::kCuda ? "cuda" : "host"; };
  DISTATTN_CHECK_ARG(t.device == device, argument, "lives on ", where(t.device), " but the communicator is on ",
                     where(device));
}

namespace {

struct Operand {
  const TensorView* view;
  const char* name;
  bool is_q_side;     // [B, rows, Hq, D] (else the kv heads)
  bool fp32_allowed;  // an output
};

void check_shards(const ShardSpec& spec, std::initializer_list<Operand> operands, const float* lse) {
  for (const Operand& t : operands) {
    check_shard(*t.view, t.name, spec.batch, spec.rows, t.is_q_side ? spec.q_heads : spec.kv_heads, spec.head_dim,
                spec.dtype, t.fp32_allowed, spec.device, spec.rows_note);
  }
  if (spec.device != Device::kCuda) return;
  for (const Operand& t : operands) check_cuda_tensor(*t.view, t.name);
  check_device_pointer(lse, "lse", /*allow_null=*/true);
}

}  // namespace

void check_forward_shards(const ShardSpec& spec, const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& o, const float* lse) {
  check_shards(spec, {{&q, "q", true, false}, {&k, "k", false, false}, {&v, "v", false, false}, {&o, "o", true, true}},
               lse);
}

void check_backward_shards(const ShardSpec& spec, const TensorView& dout, const TensorView& q, const TensorView& k,
                           const TensorView& v, const TensorView& o, const float* lse, const TensorView& dq,
                           const TensorView& dk, const TensorView& dv) {
  check_shards(spec,
               {{&dout, "dout", true, false},
                {&q, "q", true, false},
                {&k, "k", false, false},
                {&v, "v", false, false},
                {&o, "o", true, true},
                {&dq, "dq", true, true},
                {&dk, "dk", false, true},
                {&dv, "dv", false, true}},
               lse);
}

void check_rope_in_place(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                         bool rotate_k) {
  DISTATTN_CHECK_ARG(!views_may_overlap(q, k), "k", "overlaps q in memory; q is rotated in place");
  DISTATTN_CHECK_ARG(!views_may_overlap(q, v), "v", "overlaps q in memory; q is rotated in place");
  DISTATTN_CHECK_ARG(!rotate_k || !views_may_overlap(k, v), "v", "overlaps k in memory; k is rotated in place");
  DISTATTN_CHECK_ARG(!views_may_overlap(q, o) && (!rotate_k || !views_may_overlap(k, o)), "o",
                     "overlaps q or k in memory; they are rotated in place");
}

}  // namespace distattn
