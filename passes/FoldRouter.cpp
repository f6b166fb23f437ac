//===- FoldRouter.cpp - fold a linear router subgraph into moe.sparse_moe --===//
//
// A layer imported with precomputed logits (`router_kind = logits`: com.microsoft.MoE's router_probs input,
// or a raised PyTorch block) whose logits are `input @ W (+ b)` computed from the layer's own input becomes
// `router_kind = linear` with W as its router weights ([H, N]) and b as its router bias, so the router
// matmul runs inside the fused dispatch. Any other router (an MLP, another tensor's projection, a shared
// logits value) stays as it is.
//
//===----------------------------------------------------------------------===//
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "passes/MatchUtils.h"
#include "passes/Passes.h"

#include "mlir/IR/Diagnostics.h"

namespace moec {
#define GEN_PASS_DEF_MOEFOLDROUTERPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
namespace ox = moec::onnxir;
namespace moe = moec::moe;

namespace {

/// Folds `op`'s linear router into it, or says why not.
FusionOutcome fold(moe::SparseMoEOp op, PatternRewriter &rewriter) {
  using R = FusionOutcome;
  if (op.getRouterKind() != moe::RouterKind::logits)
    return R::nothing();
  if (op.getRouterBias())
    return R::miss("router bias on precomputed logits");
  // The logits, through reshapes that are used only on the way to this op.
  SmallVector<Operation *> chain;
  Value v = op.getRouter();
  while (auto r = defOp<ox::ReshapeOp>(v)) {
    chain.push_back(r);
    v = r.getData();
  }
  auto lin = matchLinear(v);
  if (!lin)
    return R::miss("the router logits are not a linear layer (x @ W + b with constant W)");
  if (!sameData(lin->x, op.getInput()))
    return R::miss(
        "the router is not one linear layer of the layer's input (an MLP router, say): its logits stay "
        "computed outside the dispatch");
  auto inT = op.getInput().getType();
  auto wT = cast<RankedTensorType>(lin->weight.getType());
  if (lin->in != inT.getDimSize(1) || lin->out != op.getNumRouterColumns())
    return R::miss("the router weights' shape does not match H and the router columns");
  if (wT.getElementType() != inT.getElementType())
    return R::miss("the router weights' element type differs from the input's");
  SmallVector<Operation *> all(chain);
  all.append(lin->ops.begin(), lin->ops.end());
  if (!usedOnlyWithin(all, chain.empty() ? lin->ops.front() : chain.front()) ||
      !(chain.empty() ? lin->ops.front() : chain.front())->hasOneUse())
    return R::miss("the router logits are also read outside the MoE layer");

  std::vector<char> inOut = linearWeightInOut(*lin), bb; // [H, N]
  if (inOut.empty())
    return R::miss("the router weights are not readable constants");
  if (lin->bias) {
    bb = constantBytes(lin->bias);
    if (bb.empty() || cast<RankedTensorType>(lin->bias.getType()).getElementType() != wT.getElementType())
      return R::miss("the router bias is not a readable constant of the weights' type");
  }
  rewriter.setInsertionPoint(op);
  Value w =
      makeConstant(rewriter, op.getLoc(), RankedTensorType::get({lin->in, lin->out}, wT.getElementType()),
                   inOut, "router_weight");
  Value bias = lin->bias
                   ? makeConstant(rewriter, op.getLoc(),
                                  RankedTensorType::get({lin->out}, wT.getElementType()), bb, "router_bias")
                   : Value();
  rewriter.modifyOpInPlace(op, [&] {
    op->setAttr("router_kind", moe::RouterKindAttr::get(op.getContext(), moe::RouterKind::linear));
    op.getRouterMutable().assign(w);
    if (bias)
      op.getRouterBiasMutable().assign(bias);
    noteFused(op, "router_matmul");
  });
  eraseDeadOps(all, &rewriter); // the router subgraph is dead now
  return R::done();
}

struct MoEFoldRouterPass final : moec::impl::MoEFoldRouterPassBase<MoEFoldRouterPass> {
  using Base::Base;
  void runOnOperation() override {
    if (failed(applyLayerFusions(getOperation(), {{fold, "router not folded into the MoE layer"}}, remarks)))
      signalPassFailure();
  }
};

} // namespace
