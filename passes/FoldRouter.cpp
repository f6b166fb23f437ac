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

/// Why `op`'s router cannot be folded, or empty when it was.
std::string fold(moe::SparseMoEOp op) {
  if (op.getRouterKind() != moe::RouterKind::logits)
    return "";
  if (op.getRouterBias())
    return "router bias on precomputed logits";
  // The logits, through reshapes that are used only on the way to this op.
  SmallVector<Operation *> chain;
  Value v = op.getRouter();
  while (auto r = defOp<ox::ReshapeOp>(v)) {
    chain.push_back(r);
    v = r.getData();
  }
  auto lin = matchLinear(v);
  if (!lin)
    return "the router logits are not a linear layer (x @ W + b with constant W)";
  if (!sameData(lin->x, op.getInput()))
    return "the router is not one linear layer of the layer's input (an MLP router, say): its logits stay "
           "computed outside the dispatch";
  auto inT = op.getInput().getType();
  auto wT = cast<RankedTensorType>(lin->weight.getType());
  if (lin->in != inT.getDimSize(1) || lin->out != op.getNumRouterColumns())
    return "the router weights' shape does not match H and the router columns";
  if (wT.getElementType() != inT.getElementType())
    return "the router weights' element type differs from the input's";
  SmallVector<Operation *> all(chain);
  all.append(lin->ops.begin(), lin->ops.end());
  if (!usedOnlyWithin(all, chain.empty() ? lin->ops.front() : chain.front()) ||
      !(chain.empty() ? lin->ops.front() : chain.front())->hasOneUse())
    return "the router logits are also read outside the MoE layer";

  std::vector<char> inOut = linearWeightInOut(*lin); // [H, N]
  if (inOut.empty())
    return "the router weights are not readable constants";
  OpBuilder b(op);
  Value w = makeConstant(b, op.getLoc(), RankedTensorType::get({lin->in, lin->out}, wT.getElementType()), inOut,
                         "router_weight");
  Value bias;
  if (lin->bias) {
    std::vector<char> bb = constantBytes(lin->bias);
    auto bt = cast<RankedTensorType>(lin->bias.getType());
    if (bb.empty() || bt.getElementType() != wT.getElementType())
      return "the router bias is not a readable constant of the weights' type";
    bias = makeConstant(b, op.getLoc(), RankedTensorType::get({lin->out}, bt.getElementType()), bb,
                        "router_bias");
  }
  op->setAttr("router_kind", moe::RouterKindAttr::get(op.getContext(), moe::RouterKind::linear));
  op.getRouterMutable().assign(w);
  if (bias)
    op.getRouterBiasMutable().assign(bias);
  noteFused(op, "router_matmul");
  // The router subgraph is dead now; `all` runs from the op outwards, so users go first.
  for (Operation *dead : all)
    if (dead->use_empty())
      dead->erase();
  return "";
}

struct MoEFoldRouterPass final : moec::impl::MoEFoldRouterPassBase<MoEFoldRouterPass> {
  using Base::Base;
  void runOnOperation() override {
    for (moe::SparseMoEOp op : collectLayers(getOperation()))
      remarkIfUnfused(remarks, op, "router not folded into the MoE layer", fold(op));
  }
};

} // namespace
