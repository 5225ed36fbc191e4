// Rotary position embedding (RoPE) on GLOBAL positions.
//
// For each head vector x (length D) and its row's global position p, pair i (0 <= i < rotary_dim/2)
// is rotated by the angle  theta_i = float(p) * inv_freq[i]  (fp32, accurate sincosf):
//   NeoX / rotate-half pairing:  (x[i], x[i + rotary_dim/2])
//   GPT-J / interleaved pairing: (x[2i], x[2i + 1])
//   (a, b) -> scale * (a cos - b sin, a sin + b cos)
// Dims past rotary_dim are copied unchanged (partial rotary). `scale` is the cos/sin multiplier some
// frequency variants prescribe (YaRN's attention factor), 1 otherwise.
// Backward is the conjugate rotation: dx = scale * R(-theta) dy, i.e. the same call with inverse = true.
//
// Positions are converted to fp32 before the multiply (exact up to 2^24 = 16,777,216; rounded to fp32
// beyond, identically on host and GPU). Out of place, q_out/k_out must not partially overlap their
// inputs (q_out == q with equal strides is the same as in place).
//
// Apply RoPE ONCE to the local q and k before any exchange (K travels already rotated); positions
// come from the shard's PositionMap, so contiguous shards, zigzag halves and strided views all see
// the angles one big GPU would.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "distattn/core/position_map.h"
#include "distattn/core/tensor.h"

namespace distattn {

enum class RopeStyle : int { kNeoX = 0, kGptJ = 1 };

enum class RopeScaling : int {
  kNone = 0,        // inv_freq[i] = base^(-2i / rotary_dim)
  kLinear = 1,      // positions divided by factor (inv_freq / factor)
  kDynamicNtk = 2,  // base grown for sequences past original_max_position (HF "dynamic")
  kYarn = 3,        // NTK-by-parts interpolation plus attention factor (Peng et al. 2023)
  kLlama3 = 4       // Llama 3.1 wavelength-banded scaling
};

struct RopeConfig {
  int64_t head_dim = 128;  // D
  int64_t rotary_dim = 0;  // dims rotated (even, <= head_dim); 0: head_dim
  double base = 10000.0;   // theta base
  RopeStyle style = RopeStyle::kNeoX;
  RopeScaling scaling = RopeScaling::kNone;
  double factor = 1.0;                // scaling factor (linear, dynamic NTK, YaRN, llama3)
  int64_t original_max_position = 0;  // pre-scaling context (dynamic NTK, YaRN, llama3)
  int64_t sequence_length = 0;        // dynamic NTK: the global length being processed
  double yarn_beta_fast = 32.0;       // YaRN ramp bounds (in rotations)
  double yarn_beta_slow = 1.0;
  double yarn_mscale = 0.0;  // YaRN attention factor override; 0: 0.1 * ln(factor) + 1
  double llama3_low_freq_factor = 1.0;
  double llama3_high_freq_factor = 4.0;
};

// A frequency variant reduced to what the kernel needs.
struct RopeFrequencies {
  std::vector<float> inv_freq;  // [rotary_dim / 2]
  float scale = 1.0f;           // multiplies cos and sin
};

// Validates the config (names the bad field) and computes the frequencies on the host (in double,
// rounded to fp32 once).
RopeFrequencies make_rope_frequencies(const RopeConfig& config);

struct RopeParams {
  TensorView q;      // [B, Sq, Hq, D] input
  TensorView k;      // [B, Skv, Hkv, D] input; may be empty (data == nullptr): q only
  TensorView q_out;  // output for q; empty: in place
  TensorView k_out;  // output for k; empty: in place
  // Optional second outputs (empty: none): the rotated q / k written ALSO here, whole heads (dims past rotary_dim
  // copied), in the same launch, so each input is read once -- e.g. rotate k in place and into a packed send buffer at
  // once (the ring does). Shape and dtype of the input, any strides, head dim contiguous; must not share memory with
  // any other operand of the call (argument "q_copy" / "k_copy" otherwise).
  TensorView q_copy;
  TensorView k_copy;
  PositionMap q_pos;       // global positions of q rows
  PositionMap k_pos;       // global positions of k rows
  int64_t rotary_dim = 0;  // 0: D
  RopeStyle style = RopeStyle::kNeoX;
  const float* inv_freq = nullptr;  // [rotary_dim / 2] fp32, on the device that runs the call
  float scale = 1.0f;               // cos/sin multiplier
  bool inverse = false;             // backward: rotate by -theta
};

// One fused launch for q and k. bf16/fp16/fp32 tensors. Validates first; throws distattn::Error.
void rope_apply_cuda(const RopeParams& params, cudaStream_t stream);
// Host version (any dtype incl. fp64; positions and angles computed the same way).
void rope_apply_host(const RopeParams& params);

}  // namespace distattn
