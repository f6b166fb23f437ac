//===- FuseSharedExpert.cpp - fold shared experts into moe.sparse_moe ------===//
//
// Qwen2-MoE and DeepSeek-V3 add an always-active "shared" expert MLP, computed from the same tokens, to the
// routed experts' output:
//
//   y = moe(x) + shared(x)                                  (DeepSeek-V3: n_shared_experts MLPs as one)
//   y = moe(x) + sigmoid(x @ g) * shared(x)                 (Qwen2-MoE's gated shared expert)
//   shared(x) = down(act(gate(x)) * up(x))  (gated)  or  down(act(up(x)))
//
// The MLP's weights become the op's `shared_fc1` ([2Fs, H] in the op's gated layout) and `shared_fc2`
// ([H, Fs]), the gate vector `shared_gate` ([H]), and the Add disappears. The MLP's activation must be the
// routed experts' one, and no intermediate of it may be read elsewhere.
//
//===----------------------------------------------------------------------===//
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "passes/MatchUtils.h"
#include "passes/Passes.h"

#include "mlir/IR/Diagnostics.h"

#include <cstring>

namespace moec {
#define GEN_PASS_DEF_MOEFUSESHAREDEXPERTPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
namespace ox = moec::onnxir;
namespace moe = moec::moe;

namespace {

/// The ungated activation applied to `v` (silu = x * sigmoid(x), gelu, relu); returns its input.
Value matchAct(Value v, moe::Activation &act, SmallVectorImpl<Operation *> &ops) {
  if (auto mul = defOp<ox::MulOp>(v))
    for (int i = 0; i < 2; ++i)
      if (auto sig = defOp<ox::SigmoidOp>(mul->getOperand(i)); sig && sig.getX() == mul->getOperand(1 - i)) {
        ops.append({mul, sig});
        act = moe::Activation::silu;
        return sig.getX();
      }
  if (auto g = defOp<ox::GeluOp>(v)) {
    ops.push_back(g);
    act = g.getApproximate() == "tanh" ? moe::Activation::gelu_tanh : moe::Activation::gelu;
    return g.getX();
  }
  if (auto r = defOp<ox::ReluOp>(v)) {
    ops.push_back(r);
    act = moe::Activation::relu;
    return r.getX();
  }
  return {};
}

struct SharedMLP {
  std::optional<LinearMatch> gate, up, down, scalar; // scalar: the [H -> 1] sigmoid gate
  moe::Activation act = moe::Activation::identity;
  SmallVector<Operation *> ops;
  bool matched = false;
};

/// Matches `s` as a (gated) shared MLP of the layer's input; empty string on success, else why not.
std::string matchShared(moe::SparseMoEOp op, Value s, SharedMLP &mlp) {
  // Optional sigmoid gate around it.
  if (auto mul = defOp<ox::MulOp>(s)) {
    for (int i = 0; i < 2; ++i)
      if (auto sig = defOp<ox::SigmoidOp>(mul->getOperand(i)))
        if (auto lin = matchLinear(sig.getX()); lin && lin->out == 1 && !lin->bias) {
          mlp.scalar = lin;
          mlp.ops.append({mul, sig});
          mlp.ops.append(lin->ops.begin(), lin->ops.end());
          s = mul->getOperand(1 - i);
          break;
        }
  }
  mlp.down = matchLinear(s);
  if (!mlp.down)
    return mlp.scalar ? "the gated tensor is not a linear layer (a shared expert's down projection)" : "";
  if (mlp.down->bias)
    return "the shared expert's down projection has a bias";
  mlp.ops.append(mlp.down->ops.begin(), mlp.down->ops.end());
  Value h = mlp.down->x;
  moe::Activation act;
  if (auto mul = defOp<ox::MulOp>(h)) {
    for (int i = 0; i < 2 && !mlp.gate; ++i) {
      SmallVector<Operation *> actOps;
      Value g = matchAct(mul->getOperand(i), act, actOps);
      auto gl = g ? matchLinear(g) : std::nullopt;
      auto ul = matchLinear(mul->getOperand(1 - i));
      if (gl && ul && !gl->bias && !ul->bias) {
        mlp.gate = gl;
        mlp.up = ul;
        mlp.ops.push_back(mul);
        mlp.ops.append(actOps);
        mlp.ops.append(gl->ops.begin(), gl->ops.end());
        mlp.ops.append(ul->ops.begin(), ul->ops.end());
        mlp.act = act == moe::Activation::silu   ? moe::Activation::swiglu
                  : act == moe::Activation::gelu ? moe::Activation::geglu
                                                 : moe::Activation::identity;
      }
    }
  }
  if (!mlp.gate) {
    SmallVector<Operation *> actOps;
    Value u = matchAct(h, act, actOps);
    mlp.up = u ? matchLinear(u) : std::nullopt;
    if (!mlp.up || mlp.up->bias)
      return "the added tensor is not an MLP (down(act(gate(x)) * up(x)) or down(act(up(x))))";
    mlp.ops.append(actOps);
    mlp.ops.append(mlp.up->ops.begin(), mlp.up->ops.end());
    mlp.act = act;
  }
  if (mlp.act != op.getActivation())
    return std::string("the shared MLP's activation differs from the routed experts' '") +
           moe::stringifyActivation(op.getActivation()).str() + "'";
  for (auto *l : {&mlp.gate, &mlp.up, &mlp.scalar})
    if (*l && !sameData((*l)->x, op.getInput()))
      return "the shared MLP reads a tensor other than the layer's input";
  int64_t hdim = op.getInput().getType().getDimSize(1);
  if (mlp.up->in != hdim || mlp.down->out != hdim || mlp.down->in != mlp.up->out ||
      (mlp.gate && (mlp.gate->in != hdim || mlp.gate->out != mlp.up->out)))
    return "the shared MLP's weight shapes do not chain H -> Fs -> H";
  auto et = op.getInput().getType().getElementType();
  for (auto *l : {&mlp.gate, &mlp.up, &mlp.down, &mlp.scalar})
    if (*l && cast<RankedTensorType>((*l)->weight.getType()).getElementType() != et)
      return "the shared MLP's weights differ in element type from the layer's input";
  mlp.matched = true;
  return "";
}

FusionOutcome fuse(moe::SparseMoEOp op, PatternRewriter &rewriter) {
  using R = FusionOutcome;
  if (op.getSharedFc1())
    return R::nothing();
  // The op's result, through single-use reshapes, into an Add.
  Value r;
  auto add = addThroughReshapes(op.getResult(), r);
  if (!add)
    return R::nothing();
  Value other = otherOperand(add, r);
  if (!other || other.getType() != r.getType())
    return R::nothing();
  SharedMLP mlp;
  std::string why = matchShared(op, other, mlp);
  if (!mlp.matched)
    return R::miss(why);
  if (!usedOnlyWithin(mlp.ops, mlp.ops.front()) || !mlp.ops.front()->hasOneUse())
    return R::miss("an intermediate of the shared MLP is also read outside it");

  auto et = op.getInput().getType().getElementType();
  int64_t hdim = mlp.down->out, fs = mlp.down->in;
  std::vector<char> up = linearWeightOutIn(*mlp.up), down = linearWeightOutIn(*mlp.down), gate;
  if (mlp.gate)
    gate = linearWeightOutIn(*mlp.gate);
  std::vector<char> g = mlp.scalar ? linearWeightOutIn(*mlp.scalar) : std::vector<char>();
  if (up.empty() || down.empty() || (mlp.gate && gate.empty()) || (mlp.scalar && g.empty()))
    return R::miss("the shared MLP's weights are not readable constants");
  size_t width = et.getIntOrFloatBitWidth() / 8, row = hdim * width;
  // fc1 rows in the op's layout: block = gate rows then up rows; interleaved = gate, up per dim.
  std::vector<char> fc1;
  if (!mlp.gate) {
    fc1 = up;
  } else {
    fc1.resize(2 * fs * row);
    bool inter = op.getGatedLayout() == moe::GatedLayout::interleaved;
    for (int64_t j = 0; j < fs; ++j) {
      std::memcpy(&fc1[(inter ? 2 * j : j) * row], &gate[j * row], row);
      std::memcpy(&fc1[(inter ? 2 * j + 1 : fs + j) * row], &up[j * row], row);
    }
  }
  rewriter.setInsertionPoint(op);
  Location loc = op.getLoc();
  Value c1 = makeConstant(rewriter, loc, RankedTensorType::get({mlp.gate ? 2 * fs : fs, hdim}, et), fc1,
                          "shared_fc1");
  Value c2 = makeConstant(rewriter, loc, RankedTensorType::get({hdim, fs}, et), down, "shared_fc2");
  Value cg =
      mlp.scalar ? makeConstant(rewriter, loc, RankedTensorType::get({hdim}, et), g, "shared_gate") : Value();
  rewriter.modifyOpInPlace(op, [&] {
    op.getSharedFc1Mutable().assign(c1);
    op.getSharedFc2Mutable().assign(c2);
    if (cg)
      op.getSharedGateMutable().assign(cg);
    noteFused(op, mlp.scalar ? "gated_shared_expert" : "shared_expert");
  });
  rewriter.replaceOp(add, r);
  eraseDeadOps(mlp.ops, &rewriter);
  return R::done();
}

struct MoEFuseSharedExpertPass final : moec::impl::MoEFuseSharedExpertPassBase<MoEFuseSharedExpertPass> {
  using Base::Base;
  void runOnOperation() override {
    if (failed(applyLayerFusions(getOperation(), {{fuse, "shared expert not fused into the MoE layer"}},
                                 remarks)))
      signalPassFailure();
  }
};

} // namespace
