//===- RaiseNorm.cpp - the norms no dispatch absorbed -> moe.norm ------------===//
//
// After the MoE layers took their input norms (moe-fuse-norm-residual) and the rotary embeddings their q/k
// norms (moe-raise-rotary), every RMSNorm (as transformers' export writes it: `w * (x * Reciprocal(Sqrt(
// ReduceMean(x^2) + eps)))`, about seven op steps) and every last-axis `LayerNormalization` left becomes one
// `moe.norm`: one pass over its rows on all threads instead of a pass per op. The attention layers' input
// norms and the final norm are the ones a decoder has.
//
//===----------------------------------------------------------------------===//
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "passes/MatchUtils.h"
#include "passes/Passes.h"

#include "mlir/IR/Verifier.h"

namespace moec {
#define GEN_PASS_DEF_MOERAISENORMPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
namespace ox = moec::onnxir;
namespace moe = moec::moe;

namespace {

std::string raise(Operation *root) {
  Value v = root->getResult(0);
  auto t = dyn_cast<RankedTensorType>(v.getType());
  if (!t || t.getRank() < 1 || !t.getElementType().isF32() || t.isDynamicDim(t.getRank() - 1))
    return "";
  auto n = matchNorm(v, t.getDimSize(t.getRank() - 1));
  if (!n)
    return "";
  if (!usedOnlyWithin(n->ops, n->ops.front()))
    return "an intermediate of the norm is also read outside it";
  for (Value w : {n->weight, n->bias})
    if (w && !cast<RankedTensorType>(w.getType()).getElementType().isF32())
      return "the norm's weight or bias is not f32";
  if (n->x.getType() != v.getType())
    return "the norm broadcasts its input";
  OpBuilder b(root);
  auto op = b.create<moe::NormOp>(root->getLoc(), t, n->x, n->weight, n->bias,
                                  moe::NormKindAttr::get(b.getContext(), n->kind),
                                  b.getF32FloatAttr(static_cast<float>(n->eps)));
  if (failed(mlir::verify(op))) {
    op->erase();
    return "the matched shapes do not make a valid moe.norm";
  }
  v.replaceAllUsesWith(op.getResult());
  eraseDeadOps(n->ops);
  return "";
}

struct MoERaiseNormPass final : moec::impl::MoERaiseNormPassBase<MoERaiseNormPass> {
  using Base::Base;
  void runOnOperation() override {
    // Roots: the weight Mul of an RMSNorm or a LayerNormalization (matchNorm says which are norms).
    SmallVector<Operation *> candidates;
    getOperation()->walk([&](Operation *op) {
      if (isa<ox::MulOp, ox::LayerNormalizationOp>(op))
        candidates.push_back(op);
    });
    // A norm's ops all come before its root, so raising in program order only erases candidates already
    // visited.
    for (Operation *op : candidates) {
      Location loc = op->getLoc();
      std::string why = raise(op);
      if (!why.empty() && remarks)
        emitRemark(loc) << "norm not raised: " << why;
    }
  }
};

} // namespace
