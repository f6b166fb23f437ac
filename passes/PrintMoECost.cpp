//===- PrintMoECost.cpp - remark each MoE layer's per-token cost ---------===//
#include "ir/MoEOps.h"
#include "passes/MoECost.h"
#include "passes/Passes.h"

#include "mlir/IR/Diagnostics.h"

namespace moec {
#define GEN_PASS_DEF_MOEPRINTCOSTPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;

namespace {
/// A size as the IR prints it: `?` when dynamic.
std::string dim(int64_t d) { return ShapedType::isDynamic(d) ? "?" : std::to_string(d); }

struct MoEPrintCostPass final : moec::impl::MoEPrintCostPassBase<MoEPrintCostPass> {
  void runOnOperation() override {
    getOperation()->walk([](moec::moe::SparseMoEOp op) {
      moec::MoELayerCost c = moec::computeMoELayerCost(op);
      auto diag = mlir::emitRemark(op.getLoc());
      diag << "E=" << dim(op.getNumExperts()) << " zero_experts=" << op.getZeroExperts() << " k=" << op.getK()
           << " H=" << dim(op.getInput().getType().getDimSize(1)) << " F=" << dim(op.getHiddenDim())
           << " activation=" << moec::moe::stringifyActivation(op.getActivation());
      if (c.activeHiddenDim < 0) {
        diag << ": cost unknown (dynamic weight shapes)";
        return;
      }
      diag << " active_F=" << c.activeHiddenDim << ": per token <= " << c.flopsPerToken() << " FLOPs ("
           << c.routerFlops << " router, " << c.predictorFlops << " predictor, " << c.expertFlops << " experts";
      if (op.getSharedFc1())
        diag << ", " << c.sharedFlops << " shared expert";
      diag << "), <= " << c.weightBytesPerToken() << " weight bytes; all expert weights " << c.totalWeightBytes
           << " bytes";
    });
    getOperation()->walk([](moec::moe::LinearOp op) {
      moec::LinearLayerCost c = moec::computeLinearLayerCost(op);
      auto diag = mlir::emitRemark(op.getLoc());
      diag << "linear K=" << dim(op.getInFeatures()) << " N=" << dim(op.getOutFeatures())
           << " storage=" << moec::moe::stringifyStorage(op.getStorage());
      if (c.flopsPerRow < 0)
        diag << ": cost unknown (dynamic shapes)";
      else
        diag << ": per row " << c.flopsPerRow << " FLOPs, " << c.weightBytes << " weight bytes as stored (read once "
             << "per call)";
    });
    markAllAnalysesPreserved();
  }
};
} // namespace
