// Shared pieces of the GPU backward tests (tests/gpu/test_flash_bwd.cc, test_flash_bwd_hopper.cc,
// test_rope_bwd_fused.cc): the host forward that gives the backward its O (rounded to O's dtype) and LSE, the fp64 and
// kRoundIntermediates host backward references, the device-side AttnBwdParams, and the bound every one of those tests
// applies to a gradient (flash-attention's rule: at most twice the naive error plus a slack relative to the gradient's
// RMS). What is checked stays in each test; these only build inputs and evaluate the one shared rule.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "distattn/core/attn_params.h"
#include "test_util.h"

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
