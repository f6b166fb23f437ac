//===- ApplyPatterns.cpp - apply user PDL patterns from a file --------------===//
#include "passes/Passes.h"

#include "mlir/Dialect/PDL/IR/PDL.h"
#include "mlir/Dialect/PDL/IR/PDLOps.h"
#include "mlir/Dialect/PDLInterp/IR/PDLInterp.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Rewrite/FrozenRewritePatternSet.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace moec {
#define GEN_PASS_DEF_MOEAPPLYPATTERNSPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;

namespace {

struct MoEApplyPatternsPass final : moec::impl::MoEApplyPatternsPassBase<MoEApplyPatternsPass> {
  using Base::Base;

  LogicalResult initialize(MLIRContext *context) override {
    if (file.empty())
      return emitError(UnknownLoc::get(context)) << "moe-apply-patterns needs a pattern file (file=...)";
    OwningOpRef<ModuleOp> module = parseSourceFile<ModuleOp>(file, context);
    if (!module)
      return emitError(UnknownLoc::get(context))
             << "cannot read PDL patterns from '" << file << "' (an MLIR file of pdl.pattern ops, as "
             << "`mlir-pdll-19 FILE.pdll -x=mlir` writes)";
    bool any = false;
    module->walk([&](pdl::PatternOp) { any = true; });
    if (!any)
      return emitError(module->getLoc()) << "'" << file << "' holds no pdl.pattern";
    RewritePatternSet set(context);
    set.add(PDLPatternModule(std::move(module)));
    patterns = std::make_shared<FrozenRewritePatternSet>(std::move(set));
    return success();
  }

  void runOnOperation() override {
    if (failed(applyPatternsAndFoldGreedily(getOperation(), *patterns)))
      getOperation()->emitWarning() << "patterns from '" << file << "' did not converge";
  }

  std::shared_ptr<FrozenRewritePatternSet> patterns;
};

} // namespace
