// Shared pieces of the GPU forward tests (tests/gpu/test_flash_fwd.cc, test_flash_fwd_hopper.cc): random inputs, the
// fp64 and naive (kRoundIntermediates) host references with the naive error (the yardstick of flash-attention's 2x
// rule), the rule itself on a result, bit-for-bit comparison of two results, and accumulate-mode calls over parts of
// the kv rows. What is checked stays in each test; these only build inputs and evaluate the shared rules.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "distattn/core/attn_params.h"
#include "test_util.h"

namespace distattn {
namespace testing {

constexpr double kFwdSlack = 1e-4;  // the absolute slack of the forward's 2x rule

// One forward call's inputs: q [B, Sq, Hq, D], k and v [B, Skv, Hkv, D].
struct FwdInputs {
  HostTensor q, k, v;
};

// Random inputs in `dtype` with the given padding: q and k Normal(0, qk_stddev) (seeds seed, seed + 1), v Normal(0, 1)
// (seed + 2).
FwdInputs make_fwd_inputs(DType dtype, int64_t B, int64_t Sq, int64_t Skv, int64_t Hq, int64_t Hkv, int64_t D,
                          int64_t head_pad, int64_t row_pad, uint64_t seed, double qk_stddev = 1.0);

// A forward result downloaded to the host: O (the dtype and strides of the call's o) and LSE [B, Hq, Sq].
struct FwdOutputs {
  HostTensor o;
  std::vector<float> lse;
};

// The host references of a call: fp64 (o64 [B, Sq, Hq, D] fp32 storage, lse64) and the naive evaluation in the input
// dtype, and the naive one's error against fp64.
struct FwdReference {
  HostTensor o64;
  std::vector<float> lse64;
  std::vector<double> lse_ref;  // lse64 in double, as compare_flat takes it
  ErrorStats e_naive, l_naive;
};
// `p` holds q, k, v, the positions, the mask and ALiBi (host memory); its o and lse are replaced. dt: the naive O's
// dtype.
FwdReference host_forward_reference(AttnParams p, DType dt);

// The 2x-naive rule on a result (O, LSE) against fp64: every value finite; O's max_abs and LSE's max_abs, O's rel_l2
// (with o_rel_l2) and LSE's rel_l2 (with lse_rel_l2), each within 2x the naive evaluation's error plus kFwdSlack.
// Traced as "O <label> <err> | naive <err> || LSE <label> <err> | naive <err>" (no label: "O <err> ...").
void expect_fwd_within_2x_naive(const TensorView& o, const std::vector<float>& lse, const FwdReference& r,
                                bool o_rel_l2, bool lse_rel_l2, const std::string& label);

// O and LSE of two results identical byte for byte (`what` names the comparison in the failure message).
void expect_same_bits(const FwdOutputs& a, const FwdOutputs& b, const std::string& what);

// Calls `call` once per kv part [cuts[i], cuts[i + 1]) in accumulate mode: `base` (q; k and v over all kv rows; o, lse,
// q_pos, mask, ALiBi, ...) with k and v cut to the part's rows, kv_pos = kv_pos[i] (kv_pos empty: contiguous from
// cuts[i]) and accumulate = true.
void for_kv_parts(const AttnParams& base, const std::vector<int64_t>& cuts, const std::vector<PositionMap>& kv_pos,
                  const std::function<void(const AttnParams&)>& call);

// Accumulate-mode calls over kv parts (for_kv_parts) into an fp32 accumulator O [B, Sq, Hq, D] that starts as
// `acc_start` (uploaded; e.g. zeros) with a running LSE [B, Hq, Sq] that starts at -inf: device copies of q, k, v;
// `setup` gives q_pos, mask, ALiBi (device memory) and the rest of the params; after the calls the device is
// synchronized and O and LSE are downloaded.
FwdOutputs accumulate_kv_parts(const HostTensor& q, const HostTensor& k, const HostTensor& v, HostTensor acc_start,
                               const AttnParams& setup, const std::vector<int64_t>& cuts,
                               const std::vector<PositionMap>& kv_pos,
                               const std::function<void(const AttnParams&)>& call);

}  // namespace testing
}  // namespace distattn
