// Argument checks shared by rope_apply_cuda and rope_apply_host (internal header).
#pragma once

#include "distattn/positional/rope.h"

namespace distattn {
namespace detail {

// Checks everything about `p` that does not depend on where the memory lives: shapes, dtypes
// (`allow_fp64` for the host), contiguous head dim, rotary dim, style, scale, position maps (validated
// against the row counts), output shapes, inv_freq non-null, every tensor on `device`.
// Returns the resolved rotary dim (p.rotary_dim, or D when 0). Throws distattn::Error naming the field.
int64_t validate_rope_params(const RopeParams& p, Device device, bool allow_fp64);

}  // namespace detail
}  // namespace distattn
