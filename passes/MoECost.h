//===- MoECost.h - work and weight traffic of one MoE layer -----*- C++ -*-===//
#ifndef MOEC_PASSES_MOECOST_H
#define MOEC_PASSES_MOECOST_H

#include <cstdint>

namespace moec {
namespace moe {
class SparseMoEOp;
}

/// What one token costs in one MoE layer; all counts are upper bounds (every chosen expert is real).
/// Fields are -1 when a needed size is dynamic.
struct MoELayerCost {
  int64_t activeHiddenDim = -1;      // hidden dims computed per chosen expert
  int64_t expertsPerToken = 0;       // k
  int64_t routerFlops = -1;          // router matmul (0 for precomputed logits)
  int64_t predictorFlops = -1;       // low-rank dim predictor, per token (all chosen experts)
  int64_t expertFlops = -1;          // fc1 + fc2 of the chosen experts
  int64_t sharedFlops = 0;           // the always-active shared expert (and its gate), per token
  int64_t sharedWeightBytes = 0;     // shared expert (+ gate) weight bytes, read once per token batch
  int64_t weightBytesPerExpert = -1; // fc1 + fc2 (+ scales) bytes one expert visit reads
  int64_t totalWeightBytes = -1;     // fc1 + fc2 (+ scales) bytes of all experts as stored
  int64_t flopsPerToken() const;
  /// Weight bytes one token reads: its experts' visits plus the shared expert.
  int64_t weightBytesPerToken() const;
};

MoELayerCost computeMoELayerCost(moe::SparseMoEOp op);

} // namespace moec

#endif // MOEC_PASSES_MOECOST_H
