//===- FuseNormResidual.cpp - fold the norm before and the residual after a MoE layer -===//
//
// A transformer layer's MoE half is `y = x + moe(norm(x))`. When the norm's output feeds nothing but the
// MoE layer (router, experts and shared expert already inside it), the norm moves into the op (`norm`,
// `norm_weight`, `norm_bias`, `norm_epsilon`, input = x); when the op's result (through reshapes) feeds
// exactly one Add, the Add's other operand becomes the op's `residual`. Norms recognised (matchNorm in
// passes/MatchUtils.h):
//
//   RMSNorm:   w * (x * Reciprocal(Sqrt(ReduceMean(x^2, -1) + eps)))   (also x / Sqrt(...), Mul(x, x))
//   LayerNorm: onnx.LayerNormalization(x, w, b?) over the last axis
//   either:    moe.norm (ONNX Runtime's SimplifiedLayerNormalization / Skip* norms, as the importer makes
//   them)
//
//===----------------------------------------------------------------------===//
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "passes/MatchUtils.h"
#include "passes/Passes.h"

#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Matchers.h"

#include <functional>

namespace moec {
#define GEN_PASS_DEF_MOEFUSENORMRESIDUALPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
namespace ox = moec::onnxir;
namespace moe = moec::moe;

namespace {

/// `v` as [T, H]: itself when already 2-D, else a new Reshape(v, [-1, H]).
Value flatten(OpBuilder &b, Location loc, Value v, RankedTensorType flatType) {
  if (v.getType() == flatType)
    return v;
  if (rankOf(v) == 2 && cast<RankedTensorType>(v.getType()).getDimSize(1) == flatType.getDimSize(1))
    return v;
  auto i64 = RankedTensorType::get({2}, b.getI64Type());
  Value shape = b.create<ox::ConstantOp>(
      loc, DenseIntElementsAttr::get(i64, ArrayRef<int64_t>{-1, flatType.getDimSize(1)}));
  return b.create<ox::ReshapeOp>(loc, flatType, v, shape, b.getI64IntegerAttr(0));
}

FusionOutcome fuseNorm(moe::SparseMoEOp op, PatternRewriter &rewriter) {
  using R = FusionOutcome;
  if (op.getNorm() != moe::NormKind::none)
    return R::nothing();
  Value in = op.getInput();
  SmallVector<Operation *> chain;
  Value v = in;
  while (auto r = defOp<ox::ReshapeOp>(v)) {
    chain.push_back(r);
    v = r.getData();
  }
  auto inT = op.getInput().getType();
  auto n = matchNorm(v, inT.getDimSize(1));
  if (!n)
    return R::nothing(); // no norm in front: nothing to say
  // Every use of the norm's output must reach only this op's input (through reshapes), or read only its
  // shape (x's: then the Shape reads x).
  Operation *reader = nullptr;
  SmallVector<Operation *> shapeReads;
  std::function<bool(Value)> onlyFeedsOp = [&](Value v) {
    for (Operation *user : v.getUsers()) {
      if (user == op.getOperation())
        continue;
      if (isa<ox::ReshapeOp>(user) && onlyFeedsOp(user->getResult(0)))
        continue;
      if (isa<ox::ShapeOp>(user) && v == n->ops.front()->getResult(0)) {
        shapeReads.push_back(user);
        continue;
      }
      reader = user;
      return false;
    }
    return true;
  };
  if (!onlyFeedsOp(n->ops.front()->getResult(0)))
    return R::miss("the norm's output is also read by '" + reader->getName().getStringRef().str() +
                   "' outside the MoE layer");
  SmallVector<Operation *> all(n->ops);
  if (!usedOnlyWithin(all, n->ops.front()))
    return R::miss("an intermediate of the norm is also read outside it");
  if (!shapeReads.empty() && n->x.getType() != n->ops.front()->getResult(0).getType())
    return R::miss("the norm's output's shape is read, and the norm changes its type");
  all.append(chain.begin(), chain.end());
  if (!matchPattern(n->weight, m_Constant()) || (n->bias && !matchPattern(n->bias, m_Constant())))
    return R::miss("the norm's weight or bias is not a constant");
  for (Value w : {n->weight, n->bias})
    if (w && cast<RankedTensorType>(w.getType()).getElementType() != inT.getElementType())
      return R::miss("the norm's weights differ in element type from the layer's input");
  rewriter.setInsertionPoint(op);
  Value x = flatten(rewriter, op.getLoc(), n->x, inT);
  rewriter.modifyOpInPlace(op, [&] {
    op.getInputMutable().assign(x);
    op.getNormWeightMutable().assign(n->weight);
    if (n->bias)
      op.getNormBiasMutable().assign(n->bias);
    op.setNorm(n->kind);
    op.setNormEpsilon(APFloat(static_cast<float>(n->eps)));
    noteFused(op, n->kind == moe::NormKind::rms ? "rms_norm" : "layer_norm");
  });
  for (Operation *shape : shapeReads)
    rewriter.modifyOpInPlace(shape, [&] { shape->setOperand(0, n->x); });
  eraseDeadOps(all, &rewriter);
  return R::done();
}

FusionOutcome fuseResidual(moe::SparseMoEOp op, PatternRewriter &rewriter) {
  using R = FusionOutcome;
  if (op.getResidual())
    return R::nothing();
  Value r;
  auto add = addThroughReshapes(op.getResult(), r);
  if (!add)
    return R::nothing();
  Value other = otherOperand(add, r);
  if (!other || other.getType() != add.getType() || r.getType() != add.getType())
    return R::miss("the residual Add broadcasts");
  auto outT = op.getResult().getType();
  // Reuse the flattened input when the residual is the layer's (pre-norm) input.
  Value res = sameData(other, op.getInput()) && other != op.getInput() && rankOf(other) != 2
                  ? op.getInput()
                  : Value();
  if (!res) {
    if (Operation *d = other.getDefiningOp(); d && !d->isBeforeInBlock(op) && d->getBlock() == op->getBlock())
      return R::miss("the residual is computed after the MoE layer");
    rewriter.setInsertionPoint(op);
    res = flatten(rewriter, op.getLoc(), other, outT);
  }
  rewriter.modifyOpInPlace(op, [&] {
    op.getResidualMutable().assign(res);
    noteFused(op, "residual_add");
  });
  rewriter.replaceOp(add, r);
  return R::done();
}

struct MoEFuseNormResidualPass final : moec::impl::MoEFuseNormResidualPassBase<MoEFuseNormResidualPass> {
  using Base::Base;
  void runOnOperation() override {
    if (failed(applyLayerFusions(getOperation(),
                                 {{fuseNorm, "norm not fused into the MoE layer"},
                                  {fuseResidual, "residual Add not fused into the MoE layer"}},
                                 remarks)))
      signalPassFailure();
  }
};

} // namespace
