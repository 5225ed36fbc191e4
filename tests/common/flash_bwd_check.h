// Shared pieces of the GPU backward tests (tests/gpu/test_flash_bwd.cc, test_flash_bwd_hopper.cc,
// test_rope_bwd_fused.cc): the host forward that gives the backward its O (rounded to O's dtype) and LSE, the fp64 and
// kRoundIntermediates host backward references, the device-side AttnBwdParams, and the bound every one of those tests
// applies to a gradient (flash-attention's rule: at most twice the naive error plus a slack relative to the gradient's
// RMS). What is checked stays in each test; these only build inputs and evaluate the one shared rule.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "distattn/core/attn_params.h"
#include "test_util.h"

// Declares `seed` = test_seed() + the line of the case that expands it, traced and printed ("seed N"): the seed of a
// case is the line it stands on, so a failure names the seed and the line to rerun.
#define DISTATTN_LINE_SEED()                                                                \
  const uint64_t seed = ::distattn::testing::test_seed() + static_cast<uint64_t>(__LINE__); \
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " (line " << __LINE__ << ")");    \
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed))

namespace distattn {
namespace testing {

// True on a device of compute capability 9.0 (H100 / H200): where the sm_90a kernels must be taken.
bool on_hopper_device();

// Host forward in fp64 of `hf` (host views q, k, v, positions, mask, ALiBi, scale; hf.o and hf.lse are ignored),
// written to an fp32 O of q's shape (the widest the host engine takes for 16-bit inputs), then rounded into `o` (any
// dtype and strides, q's shape). On return lse holds the LSE [B, Hq, Sq], hf.o = o.view and hf.lse = lse.data().
void host_forward_rounded(AttnParams& hf, HostTensor& o, std::vector<float>& lse);

// rowsum(dO * O) per (b, h, i) in double, stored as fp32 [B, Hq, Sq] (the backward's delta); dout and o [B, Sq, Hq, D].
std::vector<float> rowsum_delta(const HostTensor& dout, const HostTensor& o);

// The fp64 host backward of `hb` (fwd, dout, delta as given; its dq, dk, dv are ignored) into ref[0..2] and the
// kRoundIntermediates one into nai[0..2]: fresh packed fp32 tensors [B, Sq, Hq, D] / [B, Skv, Hkv, D] (overwritten).
void host_backward_refs(AttnBwdParams hb, HostTensor (&ref)[3], HostTensor (&nai)[3]);

// dq [B, Sq, Hq, D], dk and dv [B, Skv, Hkv, D] in `dtype` with the shapes of q and k and the given padding.
void make_grad_tensors(HostTensor (&g)[3], DType dtype, const TensorView& q, const TensorView& k, int64_t head_pad = 0,
                       int64_t row_pad = 0);

// hf (the host forward's params: positions, mask, ALiBi, scale) with q, k, v, o, lse, dout and the gradients replaced
// by the device copies; the caller adds ALiBi slopes, block lists, accumulate and delta on the device as its case says.
AttnBwdParams device_bwd_params(const AttnParams& hf, const DeviceTensor& q, const DeviceTensor& k,
                                const DeviceTensor& v, const DeviceTensor& o, float* lse, const DeviceTensor& dout,
                                const DeviceTensor (&grads)[3]);

// The plain backward call over q, k, v, o, lse, dout and the gradients dq, dk, dv as given (host or device views, used
// as they are): q_pos contiguous from 0 over q's rows, kv_pos over k's rows, no mask, no ALiBi, default scale. The
// bad-input tests start from it and break one field.
AttnBwdParams contiguous_bwd_params(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                    float* lse, const TensorView& dout, const TensorView& dq, const TensorView& dk,
                                    const TensorView& dv);

// The setup of a case (AttnParams without tensors): q_pos and kv_pos as given, or contiguous from 0 over Sq / Skv rows
// when they have no chunk, and the mask.
AttnParams case_setup(const PositionMap& q_pos, const PositionMap& kv_pos, int64_t Sq, int64_t Skv, const Mask& mask);

// Shapes of a backward case: q, dO, O [B, Sq, Hq, D], k, v [B, Skv, Hkv, D], every tensor with the given padding.
struct BwdShape {
  DType dtype = DType::kBFloat16;    // q, k, v, dO
  DType o_dtype = DType::kBFloat16;  // O (the fp64 forward's output rounded to it)
  int64_t B = 1, Sq = 0, Skv = 0, Hq = 0, Hkv = 0, D = 0;
  int64_t head_pad = 0, row_pad = 0;
};

// The host side of a backward case: q, k, v, dO drawn Normal(0, 1) (seeds seed + 1 .. seed + 4), O and LSE of the fp64
// host forward (O rounded to o_dtype), delta = rowsum(dO * O) when given_delta, the accumulate mode's pre-fill (fp32
// with the case's padding, seeds seed + 10 + i) and the fp64 / naive host backward references. hf points into q, k,
// v, o and lse: a BwdHostCase is built in place (make_bwd_host_case) and never copied.
struct BwdHostCase {
  HostTensor q, k, v, dout, o;
  AttnParams hf;  // host params of the forward: views of q, k, v, o, lse and the setup's positions, mask, ALiBi, scale
  std::vector<float> lse, delta;
  HostTensor pre[3], ref[3], nai[3];
  BwdHostCase() = default;
  BwdHostCase(const BwdHostCase&) = delete;
  BwdHostCase& operator=(const BwdHostCase&) = delete;
};
// `setup`: positions, mask (host block list), ALiBi slopes (host) and scale of the case; its tensors are ignored.
void make_bwd_host_case(BwdHostCase& h, const BwdShape& s, const AttnParams& setup, bool given_delta, uint64_t seed);

// Device copies of a case's q, k, v, dO, O, LSE and (when the case has one) delta.
struct BwdDeviceInputs {
  DeviceTensor q, k, v, dout, o;
  DeviceArray<float> lse;
  std::unique_ptr<DeviceArray<float>> delta;
  explicit BwdDeviceInputs(const BwdHostCase& h);
  // The device params over these inputs and `grads` (h.hf's positions, mask, ALiBi, scale; delta when uploaded);
  // the caller adds device ALiBi slopes and block lists.
  AttnBwdParams params(const BwdHostCase& h, const DeviceTensor (&grads)[3], bool accumulate) const;
};

// Fresh dq, dk, dv in `dtype` with the case's shapes and padding: the pre-fill (accumulate) or NaN everywhere.
void make_grad_outputs(HostTensor (&out)[3], const BwdHostCase& h, const BwdShape& s, DType dtype, bool accumulate);

// Whether the Hopper backward takes `gb` on this device. must_take: expect it does (an H100 / H200 with the sm_90a
// build and a case inside its scope). When it does not, prints `skip_line` (the caller then skips the Hopper half).
bool hopper_bwd_takes(const AttnBwdParams& gb, bool must_take, const char* skip_line);

// The backward bound on one gradient: no non-finite element, max error <= 2 naive + 1e-2 ref_rms + 1e-6 and RMS error
// <= 2 naive + 2e-3 ref_rms + 1e-7. Traced as "<trace_label>: <err> | naive: <naive> | ref rms <r>" and printed as
// "  <print_label>: <got_word>max .. rmse .. | naive max .. rmse .. | ref rms ..".
void expect_grad_within_2x_naive(const std::string& trace_label, const char* print_label, const char* got_word,
                                 const ErrorStats& err, const ErrorStats& naive, double ref_rms);

}  // namespace testing
}  // namespace distattn
