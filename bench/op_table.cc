#include "bench_op.h"

namespace distattn {
namespace bench {

const std::vector<OpEntry>& op_table() {
  static const std::vector<OpEntry> table = {
      {"dense", "attention forward / backward / fwd+bwd on one GPU (--pass, --causal, --window, --alibi, --gqa)",
       make_dense_op},
      {"ring",
       "ring attention over the job's ranks, one GPU each (global S sharded by --layout; --pass, --causal, "
       "--window, --alibi, --gqa); per-GPU TFLOPs, exposed communication, K|V busbw, peak memory",
       make_ring_op},
      {"sparse",
       "block-sparse attention on one GPU (--sparse-pattern, --sparse-block, --window, --causal, --pass); useful "
       "TFLOPs",
       make_sparse_op},
      {"dilated",
       "LongNet dilated attention, one GPU or sharded over the job's ranks (--dilated-segments, --dilated-rates, "
       "--dilated-ragged; default LongNet's configuration; --causal, --alibi, --gqa, --pass); useful TFLOPs, dense "
       "fraction, peak memory",
       make_dilated_op},
      {"mha",
       "one attention layer: fused QKV and output projections (cuBLAS), RoPE, attention core --core "
       "dense|ring|dilated|sparse; whole-layer TFLOPs",
       make_mha_op},
      {"rope", "RoPE on q and k in place (--rotary-dim, --style); GB/s and % of device copy bandwidth", make_rope_op},
  };
  return table;
}

}  // namespace bench
}  // namespace distattn
