// The host (CPU) engine: plain loops, same contract as the CUDA engine (attn_params.h).
//
// It is the oracle for every GPU test (fp64), the "same-precision naive implementation" that the
// GPU's error is compared with (kRoundIntermediates), and the fallback that lets the distributed
// algorithms run for real on CPU ranks under mpirun.
#pragma once

#include "distattn/core/attn_params.h"

namespace distattn {

enum class HostPrecision : int {
  kFloat64 = 0,            // every product and sum in double: the reference
  kFloat32 = 1,            // float accumulation
  kRoundIntermediates = 2  // float accumulation, but S, P (and dP, dS) rounded to q's dtype like a naive
                           // framework implementation in bf16/fp16 would: the baseline for the 2x error rule
};

// All tensors, lse, delta and alibi_slopes must be host memory (Device::kHost).
// Work is spread over (batch, head) units on DISTATTN_HOST_THREADS threads (default: the hardware threads
// divided by the ranks on this node; a value that is not an integer >= 1 throws distattn::Error naming the variable);
// results do not depend on the thread count.
void host_attention_forward(const AttnParams& p, HostPrecision precision = HostPrecision::kFloat64);
void host_attention_backward(const AttnBwdParams& p, HostPrecision precision = HostPrecision::kFloat64);

}  // namespace distattn
