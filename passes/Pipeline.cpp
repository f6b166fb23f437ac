//===- Pipeline.cpp - moec's compile pipeline and its user hooks -----------===//
#include "passes/Pipeline.h"
#include "passes/Passes.h"

#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

namespace moec {

void buildFusionPipeline(OpPassManager &pm, const PipelineOptions &options) {
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  if (options.hook)
    options.hook(pm, HookPoint::BeforeFusion);
  pm.addPass(createMoERaiseDecomposedPass({options.remarks}));
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  pm.addPass(createMoEFoldRouterPass({options.remarks}));
  pm.addPass(createMoEFuseSharedExpertPass({options.remarks}));
  pm.addPass(createMoEFuseNormResidualPass({options.remarks}));
  pm.addPass(createMoEPruneStaticMaskPass());
  pm.addPass(createMoERaiseLinearPass({options.remarks}));
  pm.addPass(createMoERaiseAttentionPass({options.remarks}));
  pm.addPass(createMoERaiseRotaryPass({options.remarks}));
  pm.addPass(createMoERaiseNormPass({options.remarks}));
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  if (options.hook)
    options.hook(pm, HookPoint::AfterFusion);
}

void registerFusionPipeline() {
  PassPipelineRegistration<>(
      "moec-fusion-pipeline",
      "moec compile's pipeline from imported graph to fused MoE dispatches (without user hooks)",
      [](OpPassManager &pm) { buildFusionPipeline(pm, PipelineOptions{}); });
}

} // namespace moec
