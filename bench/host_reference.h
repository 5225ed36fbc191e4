// The references a check compares against: the fp64 host engine on the checked heads, and (optionally) the
// naive same-precision run (host engine, kRoundIntermediates) whose error is the baseline of the 2x rule.
// Shared by every op that checks attention (dense, ring); pure host code, so it is unit-tested on the CPU.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "distattn/core/attn_params.h"
#include "host_tensors.h"

namespace distattn {
namespace bench {

struct HostReferences {
  HostTensor o, naive_o;                    // [B, S, Hc, D]: fp64 / the input dtype
  std::vector<float> lse, naive_lse;        // [B, Hc, S] (naive_lse all NaN without the naive run)
  HostTensor dq, dk, dv;                    // fp64; [B, S, Hc|Kc, D]; empty without dout
  HostTensor naive_dq, naive_dk, naive_dv;  // input dtype; empty without dout or naive
};

// Builds the AttnParams of one reference run (positions, mask, ALiBi, scale) around the given views.
using ReferenceParams = std::function<AttnParams(const TensorView& q, const TensorView& k, const TensorView& v,
                                                 const TensorView& o, float* lse)>;

// q [B, S, Hc, D], k/v [B, S, Kc, D], dout [B, S, Hc, D] or null (forward only); host views in the input dtype.
// Every output is poisoned with NaN before the engine writes it.
HostReferences compute_host_references(const TensorView& q, const TensorView& k, const TensorView& v,
                                       const TensorView* dout, bool with_naive, const ReferenceParams& params);

}  // namespace bench
}  // namespace distattn
