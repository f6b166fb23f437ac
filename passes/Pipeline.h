//===- Pipeline.h - moec's compile pipeline and its user hooks -------------===//
//
// The passes `moec compile` runs between import and codegen, in order:
//
//   1. cleanup         canonicalize, cse
//   2. HOOK before-fusion: user pass pipeline (--passes) and pattern files (--patterns)
//   3. raising         moe-raise-decomposed, canonicalize, cse
//   4. fusion          moe-fold-router, moe-fuse-shared-expert, moe-fuse-norm-residual
//   5. weights         moe-prune-static-mask
//   6. linear layers   moe-raise-linear (every MatMul / Gemm with a constant weight -> moe.linear, token
//                      embedding Gathers -> moe.embedding)
//   7. cleanup         canonicalize, cse
//   8. HOOK after-fusion: user pass pipeline / pattern files, when asked for this point
//
// `moec-opt --moec-fusion-pipeline` runs stages 1-7 (no hooks). `moec compile` then runs
// moe-set-weight-storage (--weights, --expert-weights, --dense-weights, --lm-head-weights,
// --embedding-weights), with or without fusion.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_PASSES_PIPELINE_H
#define MOEC_PASSES_PIPELINE_H

#include "mlir/Pass/PassManager.h"

#include <functional>

namespace moec {

enum class HookPoint { BeforeFusion, AfterFusion };

struct PipelineOptions {
  /// Near misses of the raising and fusion passes become remarks (for `moec compile --report`).
  bool remarks = false;
  /// Adds the user's passes at each hook point.
  std::function<void(mlir::OpPassManager &, HookPoint)> hook;
};

void buildFusionPipeline(mlir::OpPassManager &pm, const PipelineOptions &options);

/// Registers `moec-fusion-pipeline` (stages 1-7) for moec-opt.
void registerFusionPipeline();

} // namespace moec

#endif // MOEC_PASSES_PIPELINE_H
