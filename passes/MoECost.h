//===- MoECost.h - work and weight traffic of one MoE layer -----*- C++ -*-===//
#ifndef MOEC_PASSES_MOECOST_H
#define MOEC_PASSES_MOECOST_H

#include <cstdint>

namespace moec {
namespace moe {
class SparseMoEOp;
class LinearOp;
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

/// What one row costs in one linear layer: 2 K N FLOPs; its weight bytes as stored (storage with its block
/// scales, or the imported codes, scales and zero points), all read once per call. -1 when K or N is dynamic.
struct LinearLayerCost {
  int64_t flopsPerRow = -1;
  int64_t weightBytes = -1;
};
LinearLayerCost computeLinearLayerCost(moe::LinearOp op);

/// Bytes one weight takes in `storage` (a moe::Storage value), with one scale of `scaleBytes` per `block`
/// weights when quantised (MOERT_QSCALE_BYTES for the expert and linear weights moec quantises; 4 for
/// token-embedding tables' f32 scales).
double storedWeightBytes(int storage, int64_t block, int scaleBytes);

} // namespace moec

#endif // MOEC_PASSES_MOECOST_H
