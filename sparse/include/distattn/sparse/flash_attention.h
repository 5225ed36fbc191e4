// The CUDA attention engine: flash-attention style fused forward and backward kernels.
//
// Contract: core/attn_params.h. Supported here: bf16 and fp16 inputs, head dims 64 and 128, any
// GQA ratio, any element strides with a contiguous head dim and 16-byte aligned rows, causal and
// window masks on global positions, block lists, ALiBi (exact form), accumulate mode.
// Every argument is validated before anything is launched; bad input throws distattn::Error and
// writes nothing. Work is enqueued on `stream`; the calls do not synchronise.
//
// Two forward kernels: on a Hopper GPU (compute capability 9.0, library built with sm_90a) the TMA + wgmma kernel
// takes every call it supports (bf16/fp16, head dim 128, no ALiBi, position maps whose chunk boundaries fall on
// 128-row tiles; masks, block lists, accumulate mode and fp32 output included); the mma.sync kernel takes the rest.
// Both meet the same contract and tests. The environment variable DISTATTN_FORWARD_KERNEL=mma (read once per
// process; "auto" or unset: the default) forces the mma.sync kernel. The backward is the mma.sync kernel.
#pragma once

#include <cuda_runtime_api.h>

#include "distattn/core/attn_params.h"

namespace distattn {

// Head dims the CUDA engine has kernels for.
bool flash_supports_head_dim(int64_t head_dim);

void flash_attention_forward(const AttnParams& params, cudaStream_t stream);

// Scratch: an fp32 dQ accumulator (unless dq is already fp32 with accumulate) and delta = rowsum(dO*O)
// (unless given) are taken from the stream-ordered allocator (cudaMallocAsync) and freed on the stream.
void flash_attention_backward(const AttnBwdParams& params, cudaStream_t stream);

}  // namespace distattn
