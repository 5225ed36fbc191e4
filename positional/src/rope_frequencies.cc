// make_rope_frequencies: every frequency variant reduced to fp32 inv_freq[rotary_dim / 2] plus one
// cos/sin multiplier. Everything is computed in double and rounded to fp32 once at the end, so the
// variants differ from their published definitions only by that final rounding.
#include <cmath>
#include <string>

#include "distattn/core/error.h"
#include "distattn/positional/rope.h"

namespace distattn {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Base frequencies, RoFormer (Su et al. 2021, eq. 15): theta_i = base^(-2i / d), i = 0 .. d/2 - 1,
// with d the ROTARY dim (partial rotary rotates the first d dims with d-based frequencies, as in
// GPT-NeoX / HF `partial_rotary_factor`).
std::vector<double> base_inv_freq(double base, int64_t rot) {
  std::vector<double> f(static_cast<size_t>(rot / 2));
  for (int64_t i = 0; i < rot / 2; ++i) f[i] = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rot));
  return f;
}

void check_factor_at_least_one(const RopeConfig& c, const char* variant) {
  DISTATTN_CHECK_ARG(std::isfinite(c.factor) && c.factor >= 1.0, "config.factor", variant,
                     " scaling needs factor >= 1 (finite), got ", c.factor);
}

void check_original_max_position(const RopeConfig& c, const char* variant) {
  DISTATTN_CHECK_ARG(c.original_max_position > 0, "config.original_max_position", variant,
                     " scaling needs original_max_position > 0 (the pre-scaling context length), got ",
                     c.original_max_position);
}

}  // namespace

RopeFrequencies make_rope_frequencies(const RopeConfig& c) {
  // ---- validation: every field the chosen variant reads ----
  DISTATTN_CHECK_ARG(c.head_dim > 0, "config.head_dim", "head_dim must be > 0, got ", c.head_dim);
  DISTATTN_CHECK_ARG(c.rotary_dim >= 0, "config.rotary_dim", "rotary_dim must be >= 0 (0: head_dim), got ",
                     c.rotary_dim);
  const int64_t rot = c.rotary_dim == 0 ? c.head_dim : c.rotary_dim;
  DISTATTN_CHECK_ARG(rot % 2 == 0, "config.rotary_dim", "rotary dim must be even, got ", rot,
                     c.rotary_dim == 0 ? " (rotary_dim 0 means head_dim)" : "");
  DISTATTN_CHECK_ARG(rot <= c.head_dim, "config.rotary_dim", "rotary_dim ", rot, " exceeds head_dim ", c.head_dim);
  DISTATTN_CHECK_ARG(std::isfinite(c.base) && c.base > 0.0, "config.base", "base must be finite and > 0, got ", c.base);
  DISTATTN_CHECK_ARG(c.style == RopeStyle::kNeoX || c.style == RopeStyle::kGptJ, "config.style", "unknown RopeStyle ",
                     static_cast<int>(c.style));

  RopeFrequencies out;
  std::vector<double> inv = base_inv_freq(c.base, rot);
  double scale = 1.0;
  const int64_t half = rot / 2;

  switch (c.scaling) {
    case RopeScaling::kNone:
      break;

    case RopeScaling::kLinear: {
      // Position interpolation (Chen et al. 2023, "Extending Context Window ... via Positional
      // Interpolation"): positions m -> m / factor, i.e. every inv_freq divided by factor.
      check_factor_at_least_one(c, "linear");
      for (auto& f : inv) f /= c.factor;
      break;
    }

    case RopeScaling::kDynamicNtk: {
      // Dynamic NTK-aware scaling as HF transformers' `_compute_dynamic_ntk_parameters` defines it
      // (bloc97's "dynamically scaled NTK" RoPE): for L = max(sequence_length, original_max_position),
      //   base' = base * ((factor * L / original_max_position) - (factor - 1)) ^ (d / (d - 2)).
      // At L <= original_max_position the bracket is 1: exactly the unscaled frequencies.
      check_factor_at_least_one(c, "dynamic NTK");
      check_original_max_position(c, "dynamic NTK");
      DISTATTN_CHECK_ARG(c.sequence_length >= 0, "config.sequence_length",
                         "dynamic NTK needs sequence_length >= 0 (the global length processed), got ",
                         c.sequence_length);
      DISTATTN_CHECK_ARG(rot > 2, "config.rotary_dim",
                         "dynamic NTK needs rotary dim > 2 (its exponent is d / (d - 2)), got ", rot);
      if (c.sequence_length > c.original_max_position) {
        const double L = static_cast<double>(c.sequence_length);
        const double orig = static_cast<double>(c.original_max_position);
        const double d = static_cast<double>(rot);
        const double new_base = c.base * std::pow(c.factor * L / orig - (c.factor - 1.0), d / (d - 2.0));
        inv = base_inv_freq(new_base, rot);
      }
      break;
    }

    case RopeScaling::kYarn: {
      // YaRN (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language Models",
      // sec. 3.2 "NTK-by-parts" + sec. 3.4 attention factor), in the dimension-index form of the
      // paper's reference code and HF transformers' `_compute_yarn_parameters`:
      //   correction_dim(n_rot) = d * ln(orig / (n_rot * 2 pi)) / (2 ln base)   (the dim index whose
      //                           wavelength fits n_rot times into the original context)
      //   low  = max(floor(correction_dim(beta_fast)), 0)
      //   high = min(ceil(correction_dim(beta_slow)), d - 1)      (if low == high: high += 0.001)
      //   ramp(i) = clamp((i - low) / (high - low), 0, 1)
      //   inv_freq'(i) = (inv_freq(i) / factor) * ramp(i) + inv_freq(i) * (1 - ramp(i))
      // i.e. fast-rotating dims (i < low) keep their frequency (extrapolate), slow ones (i > high) are
      // interpolated by `factor`, linearly in between. cos and sin are multiplied by the attention
      // factor sqrt(1/t) = 0.1 ln(factor) + 1 (factor > 1; 1 otherwise), or yarn_mscale when given.
      check_factor_at_least_one(c, "YaRN");
      check_original_max_position(c, "YaRN");
      DISTATTN_CHECK_ARG(std::isfinite(c.yarn_beta_slow) && c.yarn_beta_slow > 0.0, "config.yarn_beta_slow",
                         "YaRN needs beta_slow > 0, got ", c.yarn_beta_slow);
      DISTATTN_CHECK_ARG(std::isfinite(c.yarn_beta_fast) && c.yarn_beta_fast > c.yarn_beta_slow,
                         "config.yarn_beta_fast", "YaRN needs beta_fast > beta_slow (", c.yarn_beta_slow, "), got ",
                         c.yarn_beta_fast);
      DISTATTN_CHECK_ARG(std::isfinite(c.yarn_mscale) && c.yarn_mscale >= 0.0, "config.yarn_mscale",
                         "yarn_mscale must be >= 0 (0: 0.1 ln(factor) + 1), got ", c.yarn_mscale);
      const double d = static_cast<double>(rot);
      const double orig = static_cast<double>(c.original_max_position);
      auto correction_dim = [&](double n_rot) {
        return d * std::log(orig / (n_rot * 2.0 * kPi)) / (2.0 * std::log(c.base));
      };
      double low = std::floor(correction_dim(c.yarn_beta_fast));
      double high = std::ceil(correction_dim(c.yarn_beta_slow));
      if (low < 0.0) low = 0.0;
      if (high > d - 1.0) high = d - 1.0;
      if (low == high) high += 0.001;  // avoid a zero-width ramp (reference code's guard)
      for (int64_t i = 0; i < half; ++i) {
        double ramp = (static_cast<double>(i) - low) / (high - low);
        ramp = ramp < 0.0 ? 0.0 : (ramp > 1.0 ? 1.0 : ramp);
        inv[i] = inv[i] / c.factor * ramp + inv[i] * (1.0 - ramp);
      }
      if (c.yarn_mscale > 0.0) {
        scale = c.yarn_mscale;
      } else {
        scale = c.factor > 1.0 ? 0.1 * std::log(c.factor) + 1.0 : 1.0;
      }
      break;
    }

    case RopeScaling::kLlama3: {
      // Llama 3.1 scaling (Meta's llama-models `apply_scaling`, HF `_compute_llama3_parameters`):
      //   wavelen = 2 pi / inv_freq;  low_wl = orig / low_freq_factor;  high_wl = orig / high_freq_factor
      //   wavelen < high_wl            -> inv_freq              (high frequencies untouched)
      //   wavelen > low_wl             -> inv_freq / factor     (low frequencies interpolated)
      //   otherwise smooth = (orig / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor),
      //                inv_freq' = (1 - smooth) * inv_freq / factor + smooth * inv_freq
      check_factor_at_least_one(c, "llama3");
      check_original_max_position(c, "llama3");
      DISTATTN_CHECK_ARG(std::isfinite(c.llama3_low_freq_factor) && c.llama3_low_freq_factor > 0.0,
                         "config.llama3_low_freq_factor", "llama3 needs low_freq_factor > 0, got ",
                         c.llama3_low_freq_factor);
      DISTATTN_CHECK_ARG(
          std::isfinite(c.llama3_high_freq_factor) && c.llama3_high_freq_factor > c.llama3_low_freq_factor,
          "config.llama3_high_freq_factor", "llama3 needs high_freq_factor > low_freq_factor (",
          c.llama3_low_freq_factor, "), got ", c.llama3_high_freq_factor);
      const double orig = static_cast<double>(c.original_max_position);
      const double low_wl = orig / c.llama3_low_freq_factor;
      const double high_wl = orig / c.llama3_high_freq_factor;
      for (int64_t i = 0; i < half; ++i) {
        const double wavelen = 2.0 * kPi / inv[i];
        if (wavelen < high_wl) continue;
        if (wavelen > low_wl) {
          inv[i] /= c.factor;
        } else {
          const double smooth =
              (orig / wavelen - c.llama3_low_freq_factor) / (c.llama3_high_freq_factor - c.llama3_low_freq_factor);
          inv[i] = (1.0 - smooth) * inv[i] / c.factor + smooth * inv[i];
        }
      }
      break;
    }

    default:
      DISTATTN_THROW("config.scaling", "unknown RopeScaling ", static_cast<int>(c.scaling));
  }

  out.inv_freq.resize(inv.size());
  for (size_t i = 0; i < inv.size(); ++i) out.inv_freq[i] = static_cast<float>(inv[i]);
  out.scale = static_cast<float>(scale);
  return out;
}

}  // namespace distattn
