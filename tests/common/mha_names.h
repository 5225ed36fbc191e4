// The multi-head attention layer's names that every layer test uses (tests/cpu/test_mha.cc, tests/gpu/test_mha_gpu.cc,
// tests/mpi/test_mha_host.cc, tests/mpi/test_mha_gpu.cc), brought into distattn::testing in one place.
#pragma once

#include "distattn/layers/multi_head_attention.h"

namespace distattn {
namespace testing {

using layers::AttentionCore;
using layers::MhaConfig;
using layers::MhaGrads;
using layers::MhaWeights;
using layers::MultiHeadAttention;
using layers::SequenceView;

}  // namespace testing
}  // namespace distattn
