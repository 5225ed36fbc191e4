// Checks on the operands of a call, shared by every entry point that takes tensors: the CUDA engine (on top of
// validate_forward / validate_backward, core/attn_params.h) and the distributed algorithms (ring/, dilated/), which
// run them on every rank BEFORE any collective so that one rank's bad argument fails every rank instead of
// hanging the others. Each throws distattn::Error naming the argument.
#pragma once

#include <cstdint>

#include "distattn/core/dtype.h"
#include "distattn/core/tensor.h"

namespace distattn {

// `ptr` must be null (when allow_null) or point at device/managed memory.
void check_device_pointer(const void* ptr, const char* argument, bool allow_null = false);

// The CUDA engine's layout rule: base address 16-byte aligned, and batch/row/head strides multiples of 16 bytes where
// the axis has more than one element (the kernels load 16-byte vectors). No residency check, never throws.
bool cuda_tensor_aligned(const TensorView& t);

// Operands of a call that rotates q (and, with rotate_k, k) IN PLACE by RoPE before attending
// (flash_attention_forward_rope, the ring's RingConfig::rope): what is written must share no memory with anything else
// the call reads or writes. Errors name "k", "v" or "o".
void check_rope_in_place(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                         bool rotate_k);

// Device residency and cuda_tensor_aligned, each failure an Error naming the argument and what is off.
void check_cuda_tensor(const TensorView& t, const char* argument);

// A rank's local shard: not null, shape [B, rows, H, D], dtype `dtype` (or fp32 when fp32_allowed), on `device`
// (the communicator's). `rows_note` says where `rows` comes from in the message, e.g. "S/P rows".
void check_shard(const TensorView& t, const char* argument, int64_t B, int64_t rows, int64_t H, int64_t D, DType dtype,
                 bool fp32_allowed, Device device, const char* rows_note);

// The expected local shards of a distributed attention call (ring/, dilated/): q, o, dout, dq [B, rows, Hq, D];
// k, v, dk, dv [B, rows, Hkv, D]; inputs in `dtype`, outputs in `dtype` or fp32; all on `device`.
struct ShardSpec {
  int64_t batch = 0;
  int64_t rows = 0;  // this rank's rows (S/P)
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  DType dtype = DType::kBFloat16;
  Device device = Device::kHost;
  const char* rows_note = "S/P rows";  // how the messages name `rows`

  // The shards of a sharded configuration (RingConfig, DistributedDilatedConfig: any type with batch, q_heads,
  // kv_heads, head_dim and dtype) holding `rows` rows on `device`.
  template <typename Config>
  static ShardSpec of(const Config& c, int64_t rows, Device device, const char* rows_note) {
    ShardSpec spec;
    spec.batch = c.batch;
    spec.rows = rows;
    spec.q_heads = c.q_heads;
    spec.kv_heads = c.kv_heads;
    spec.head_dim = c.head_dim;
    spec.dtype = c.dtype;
    spec.device = device;
    spec.rows_note = rows_note;
    return spec;
  }
};

// check_shard on q, k, v, o and, on CUDA, check_cuda_tensor on each and check_device_pointer on lse (may be null:
// callers that need it check that first, with their own message).
void check_forward_shards(const ShardSpec& spec, const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& o, const float* lse);
// The same for a backward call: dout, q, k, v, o, dq, dk, dv and lse.
void check_backward_shards(const ShardSpec& spec, const TensorView& dout, const TensorView& q, const TensorView& k,
                           const TensorView& v, const TensorView& o, const float* lse, const TensorView& dq,
                           const TensorView& dk, const TensorView& dv);

}  // namespace distattn
