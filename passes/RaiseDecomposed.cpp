//===- RaiseDecomposed.cpp - raise PyTorch-exported MoE subgraphs to moe.sparse_moe -===//
//
// Matches the graph `torch.onnx.export` writes for a transformers MoE block whose experts run through the
// `batched_mm` experts implementation (docs/pytorch-export.md), from its last op backwards:
//
//   ReduceSum(Reshape(Mul(down, Unsqueeze(Reshape(weights))), [-1, k, H]), axes = [1])        combine
//   down = Squeeze(MatMul(GatherND(fc2, ids), Unsqueeze(act(up))))                             down proj
//   up   = Squeeze(MatMul(GatherND(fc1, ids), Unsqueeze(repeat_interleave(tokens, k))))        gate/up proj
//   act  = silu(gate) * up | gelu(gate) * up after Split(axis 1) (gated) | relu / gelu / silu
//
// and then the router that produced `ids` and `weights`:
//
//   ids     = TopK(sel, k).indices        (optionally skip-masked: Where(ids == E, 0, ids))
//   weights = TopK.values | GatherElements(scores, ids), then optionally / ReduceSum (renormalise),
//             * scale, and Where(ids == E, 0, w) (ZAYA's skip class)
//   sel     = scores (+ selection bias) (grouped: Where(not(group mask), -inf, sel))
//   scores  = Softmax(logits) | Sigmoid(logits)
//
// The result is one moe.sparse_moe with router_kind = logits and the logits as its router operand
// (moe-fold-router turns a linear router into weights). Every op of the pattern must be used only inside
// the pattern; otherwise (and for every other near miss) nothing changes and, with `remarks`, a remark
// says why.
//
//===----------------------------------------------------------------------===//
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "passes/MatchUtils.h"
#include "passes/Passes.h"

#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Matchers.h"
#include "mlir/IR/Verifier.h"
#include "llvm/ADT/SetVector.h"

namespace moec {
#define GEN_PASS_DEF_MOERAISEDECOMPOSEDPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
namespace ox = moec::onnxir;
namespace moe = moec::moe;

namespace {

/// Collects the ops of one candidate and the first reason it is not a MoE layer.
struct Matcher {
  llvm::SetVector<Operation *> ops;
  std::string why;

  bool fail(const Twine &reason) {
    if (why.empty())
      why = reason.str();
    return false;
  }
  template <typename OpTy> OpTy take(Value v) {
    auto op = defOp<OpTy>(v);
    if (op)
      ops.insert(op);
    return op;
  }
  /// `v` through any number of onnx.Reshape ops, recording them.
  Value peelReshapes(Value v) {
    while (auto r = defOp<ox::ReshapeOp>(v)) {
      ops.insert(r);
      v = r.getData();
    }
    return v;
  }
  /// Unsqueeze/Squeeze of the last axis (`-1` or rank-1) of `v`'s operand; returns that operand.
  template <typename OpTy> Value lastAxis(Value v, int64_t operandRank) {
    auto op = take<OpTy>(v);
    if (!op || !op.getAxes())
      return {};
    auto axes = constantInts(op.getAxes());
    if (!axes || axes->size() != 1 || ((*axes)[0] != -1 && (*axes)[0] != operandRank))
      return {};
    return op.getData();
  }
};

/// One matched layer, ready to build.
struct Layer {
  Value tokens, logits, selectionBias, fc1, fc2;
  int64_t k = 0, zeroExperts = 0, groups = 1, groupTopk = 0;
  moe::GateFunc gate = moe::GateFunc::softmax;
  moe::Activation act = moe::Activation::identity;
  bool normalize = false;
  double scale = 1.0;
};

/// `MatMul(GatherND(W, ids), Unsqueeze(x, -1))` squeezed back: W[ids] @ x[..., None]. Returns W, sets ids
/// and x.
Value matchBatchedLinear(Matcher &m, Value v, Value &ids, Value &x) {
  Value mm = m.lastAxis<ox::SqueezeOp>(v, 2);
  auto matmul = m.take<ox::MatMulOp>(mm);
  if (!matmul)
    return {};
  auto gather = m.take<ox::GatherNDOp>(matmul.getA());
  if (!gather || gather.getBatchDims() != 0 || !matchPattern(gather.getData(), m_Constant()) ||
      rankOf(gather.getData()) != 3)
    return {};
  ids = gather.getIndices();
  x = m.lastAxis<ox::UnsqueezeOp>(matmul.getB(), 2);
  return x ? gather.getData() : Value();
}

/// The token index ids: Unsqueeze(Reshape(ids, [-1]), -1). Returns the unflattened ids.
Value matchIdColumn(Matcher &m, Value v) {
  Value flat = m.lastAxis<ox::UnsqueezeOp>(v, 1);
  return flat ? m.peelReshapes(flat) : Value();
}

/// Activation applied to `v`; sets `act` and returns its input, or null.
Value matchActivation(Matcher &m, Value v, moe::Activation &act, bool gated) {
  if (auto mul = defOp<ox::MulOp>(v)) { // x * sigmoid(x)
    for (int i = 0; i < 2; ++i)
      if (auto sig = defOp<ox::SigmoidOp>(mul->getOperand(i)))
        if (sig.getX() == mul->getOperand(1 - i)) {
          m.ops.insert(mul);
          m.ops.insert(sig);
          act = gated ? moe::Activation::swiglu : moe::Activation::silu;
          return sig.getX();
        }
  }
  if (auto gelu = m.take<ox::GeluOp>(v)) {
    bool tanh = gelu.getApproximate() == "tanh";
    if (gated && tanh)
      return m.fail("gated tanh-GELU experts have no moe.sparse_moe activation"), Value();
    act = gated ? moe::Activation::geglu : (tanh ? moe::Activation::gelu_tanh : moe::Activation::gelu);
    return gelu.getX();
  }
  if (auto relu = m.take<ox::ReluOp>(v); relu && !gated) {
    act = moe::Activation::relu;
    return relu.getX();
  }
  return {};
}

/// Expert part, from the combining ReduceSum.
bool matchExperts(Matcher &m, ox::ReduceSumOp sum, Layer &layer, Value &ids, Value &weights) {
  auto axes = sum.getAxes() ? constantInts(sum.getAxes()) : std::nullopt;
  if (sum.getKeepdims() != 0 || !axes || axes->size() != 1 || (*axes)[0] != 1)
    return false;
  m.ops.insert(sum);
  auto reshape = m.take<ox::ReshapeOp>(sum.getData());
  auto shape = reshape ? constantInts(reshape.getShape()) : std::nullopt;
  if (!shape || shape->size() != 3)
    return false;
  auto mul = m.take<ox::MulOp>(reshape.getData());
  if (!mul)
    return false;
  Value idsDown, h, fc2;
  Value weightCol;
  for (int i = 0; i < 2 && !fc2; ++i) {
    Matcher trial = m;
    fc2 = matchBatchedLinear(trial, mul->getOperand(i), idsDown, h);
    if (fc2) {
      m = trial;
      weightCol = mul->getOperand(1 - i);
    }
  }
  if (!fc2)
    return false; // not an expert combine at all: no remark
  layer.k = (*shape)[1];
  Value flatWeights = m.lastAxis<ox::UnsqueezeOp>(weightCol, 1);
  if (!flatWeights)
    return m.fail("the expert outputs are not scaled by a per-(token, slot) routing weight column");
  weights = m.peelReshapes(flatWeights);
  ids = matchIdColumn(m, idsDown);
  if (!ids)
    return m.fail("the down projection's expert gather is not indexed by the flattened top-k ids");

  // Activation between the projections; gated ones split the up projection in two halves.
  Value upOut;
  if (auto gmul = defOp<ox::MulOp>(h)) {
    for (int i = 0; i < 2 && !upOut; ++i) {
      Matcher trial = m;
      trial.ops.insert(gmul);
      auto split = defOp<ox::SplitOp>(gmul->getOperand(1 - i));
      if (!split || split->getNumResults() != 2 || split.getAxis() != 1 ||
          gmul->getOperand(1 - i) != split->getResult(1))
        continue;
      moe::Activation act;
      Value g = matchActivation(trial, gmul->getOperand(i), act, /*gated=*/true);
      if (!g || g != split->getResult(0))
        continue;
      if (split.getSplit()) {
        auto sizes = constantInts(split.getSplit());
        if (!sizes || sizes->size() != 2 || (*sizes)[0] != (*sizes)[1])
          continue;
      }
      trial.ops.insert(split);
      m = trial;
      layer.act = act;
      upOut = split.getInput();
    }
  }
  if (!upOut) {
    moe::Activation act;
    if (Value in = matchActivation(m, h, act, /*gated=*/false)) {
      layer.act = act;
      upOut = in;
    }
  }
  if (!upOut)
    return m.fail("no activation this compiler knows between the expert projections");
  Value idsUp, xrep;
  Value fc1 = matchBatchedLinear(m, upOut, idsUp, xrep);
  if (!fc1)
    return m.fail("the up projection is not a gathered batched matmul W[ids] @ x");
  if (!sameData(matchIdColumn(m, idsUp), ids))
    return m.fail("the up and down projections gather experts with different ids");

  // tokens repeated k times: Reshape(Expand(Unsqueeze(tokens, 1), [1, k, 1]), [-1, H]).
  Value tokens;
  if (auto rr = defOp<ox::ReshapeOp>(xrep))
    if (auto expand = defOp<ox::ExpandOp>(rr.getData()))
      if (auto unsq = defOp<ox::UnsqueezeOp>(expand.getInput())) {
        auto ua = constantInts(unsq.getAxes());
        auto es = constantInts(expand.getShape());
        if (ua && ua->size() == 1 && (*ua)[0] == 1 && es && es->size() == 3 && (*es)[1] == layer.k) {
          m.ops.insert(rr);
          m.ops.insert(expand);
          m.ops.insert(unsq);
          tokens = unsq.getData();
        }
      }
  if (!tokens && layer.k == 1)
    tokens = xrep;
  if (!tokens)
    return m.fail("the experts' input is not each token repeated k = " + Twine(layer.k) + " times");
  if (rankOf(tokens) != 2)
    return m.fail("the experts' tokens are not a 2-D [T, H] tensor");

  auto w1 = cast<RankedTensorType>(fc1.getType()), w2 = cast<RankedTensorType>(fc2.getType());
  bool gated = layer.act == moe::Activation::swiglu || layer.act == moe::Activation::geglu;
  int64_t e = w1.getDimSize(0), h1 = w1.getDimSize(2), f = w2.getDimSize(2);
  if (w2.getDimSize(0) != e)
    return m.fail("mismatched expert count: fc1 has " + Twine(e) + " experts, fc2 " + Twine(w2.getDimSize(0)));
  if (w1.getDimSize(1) != (gated ? 2 * f : f) || w2.getDimSize(1) != h1)
    return m.fail("expert weight shapes do not chain (fc1 " + Twine(w1.getDimSize(1)) + "x" + Twine(h1) +
                  ", fc2 " + Twine(w2.getDimSize(1)) + "x" + Twine(f) + ")");
  layer.tokens = tokens;
  layer.fc1 = fc1;
  layer.fc2 = fc2;
  return true;
}

/// `Equal(ids, E)`: the skip-class test; returns the ids.
Value matchSkipTest(Value cond, int64_t numExperts) {
  auto eq = defOp<ox::EqualOp>(cond);
  if (!eq)
    return {};
  for (int i = 0; i < 2; ++i) {
    auto c = constantInts(eq->getOperand(i));
    if (c && c->size() == 1 && (*c)[0] == numExperts)
      return eq->getOperand(1 - i);
  }
  return {};
}

/// Router part, from the top-k ids and weights the experts use.
bool matchRouter(Matcher &m, Value ids, Value weights, Layer &layer) {
  int64_t e = cast<RankedTensorType>(layer.fc1.getType()).getDimSize(0);
  bool skip = false;
  if (auto where = defOp<ox::WhereOp>(ids)) {
    auto zero = constantInts(where.getX());
    Value tested = matchSkipTest(where.getCondition(), e);
    if (zero && zero->size() == 1 && (*zero)[0] == 0 && tested && tested == where.getY()) {
      m.ops.insert(where);
      m.ops.insert(where.getCondition().getDefiningOp());
      ids = where.getY();
      skip = true;
    }
  }
  auto topk = defOp<ox::TopKOp>(ids);
  if (!topk || ids != topk.getIndices())
    return m.fail("the expert ids are not the indices of a TopK");
  m.ops.insert(topk);
  int64_t rank = rankOf(topk.getX());
  auto kk = constantInts(topk.getK());
  if (normAxis(topk.getAxis(), rank) != rank - 1)
    return m.fail("top-k over the wrong dim (axis " + Twine(topk.getAxis()) + " of a rank-" + Twine(rank) +
                  " tensor; experts are the last dim)");
  if (topk.getLargest() != 1)
    return m.fail("top-k picks the smallest scores");
  if (!kk || kk->size() != 1 || (*kk)[0] != layer.k)
    return m.fail("the router's top-k does not pick k = " + Twine(layer.k) + " experts");

  // Weights: peel skip masking, scaling and renormalisation (outermost first).
  Value w = m.peelReshapes(weights);
  if (skip) {
    auto where = defOp<ox::WhereOp>(w);
    auto zero = where ? constantScalar(where.getX()) : std::nullopt;
    if (!where || !zero || *zero != 0.0 || matchSkipTest(where.getCondition(), e) != ids)
      return m.fail("the skip class' routing weight is not zeroed");
    m.ops.insert(where);
    w = m.peelReshapes(where.getY());
  }
  if (auto mul = defOp<ox::MulOp>(w)) {
    for (int i = 0; i < 2; ++i)
      if (auto s = constantScalar(mul->getOperand(i))) {
        m.ops.insert(mul);
        layer.scale = *s;
        w = mul->getOperand(1 - i);
        break;
      }
  }
  if (auto div = defOp<ox::DivOp>(w)) {
    Value den = div.getB();
    if (auto add = defOp<ox::AddOp>(den)) { // `sum + 1e-20` (DeepSeek-V3): below f32 resolution of the sum
      for (int i = 0; i < 2; ++i)
        if (auto eps = constantScalar(add->getOperand(i)); eps && *eps >= 0 && *eps < 1e-12) {
          m.ops.insert(add);
          den = add->getOperand(1 - i);
          break;
        }
    }
    auto rsum = defOp<ox::ReduceSumOp>(den);
    auto ax = rsum && rsum.getAxes() ? constantInts(rsum.getAxes()) : std::nullopt;
    if (rsum && rsum.getData() == div.getA() && rsum.getKeepdims() == 1 && ax && ax->size() == 1 &&
        normAxis((*ax)[0], rankOf(div.getA())) == rankOf(div.getA()) - 1) {
      m.ops.insert(div);
      m.ops.insert(rsum);
      layer.normalize = true;
      w = div.getA();
    }
  }

  Value scores;
  Value sel = topk.getX();
  if (w == topk.getValues()) {
    scores = sel;
  } else if (auto ge = defOp<ox::GatherElementsOp>(w)) {
    if (ge.getIndices() != ids || normAxis(ge.getAxis(), rank) != rank - 1)
      return m.fail("the routing weights are not gathered at the top-k ids");
    m.ops.insert(ge);
    scores = ge.getData();
  } else {
    return m.fail("the routing weights are neither the top-k values nor the scores at the top-k ids");
  }

  // Selection: grouped top-k mask, then a selection-only bias.
  if (sel != scores) {
    if (auto where = defOp<ox::WhereOp>(sel)) {
      auto ninf = constantScalar(where.getX());
      if (!ninf || !std::isinf(*ninf) || *ninf > 0)
        return m.fail("the top-k input is masked with something other than -inf");
      Value base = where.getY();
      // cond = not(cast(expand(scatter(zeros, group_top_ids, 1)))), group_top_ids = TopK(sum of top-2 per
      // group of base).
      Value c = where.getCondition();
      m.ops.insert(where);
      if (auto n = m.take<ox::NotOp>(c))
        c = n.getX();
      else
        return m.fail("the grouped top-k mask is not negated");
      while (true) {
        if (auto cast = m.take<ox::CastOp>(c))
          c = cast.getInput();
        else if (auto r = m.take<ox::ReshapeOp>(c))
          c = r.getData();
        else if (auto ex = m.take<ox::ExpandOp>(c))
          c = ex.getInput();
        else if (auto u = m.take<ox::UnsqueezeOp>(c))
          c = u.getData();
        else
          break;
      }
      auto scatter = m.take<ox::ScatterElementsOp>(c);
      auto gtop = scatter ? defOp<ox::TopKOp>(scatter.getIndices()) : ox::TopKOp();
      auto gsum = gtop ? defOp<ox::ReduceSumOp>(gtop.getX()) : ox::ReduceSumOp();
      auto inner = gsum ? defOp<ox::TopKOp>(gsum.getData()) : ox::TopKOp();
      auto grouped = inner ? defOp<ox::ReshapeOp>(inner.getX()) : ox::ReshapeOp();
      auto gshape = grouped ? constantInts(grouped.getShape()) : std::nullopt;
      auto two = inner ? constantInts(inner.getK()) : std::nullopt;
      auto gk = gtop ? constantInts(gtop.getK()) : std::nullopt;
      if (!grouped || grouped.getData() != base || !gshape || gshape->size() != 3 || !two || (*two)[0] != 2 ||
          !gk || gsum.getData() != inner.getValues())
        return m.fail("the top-k input mask is not DeepSeek-V3's grouped top-k (sum of the top 2 per group)");
      for (Operation *op : {scatter.getOperation(), gtop.getOperation(), gsum.getOperation(),
                            inner.getOperation(), grouped.getOperation()})
        m.ops.insert(op);
      // zeros_like / ones_like: chains that only read shapes (Shape, Expand, ConstantOfShape).
      SmallVector<Value> side{scatter.getData(), scatter.getUpdates()};
      while (!side.empty()) {
        Operation *d = side.pop_back_val().getDefiningOp();
        if (!d || d->hasTrait<OpTrait::ConstantLike>() || m.ops.contains(d))
          continue;
        if (isa<ox::ExpandOp, ox::ConstantOfShapeOp>(d)) {
          m.ops.insert(d);
          side.append(d->operand_begin(), d->operand_end());
        } else if (isa<ox::ShapeOp>(d)) {
          m.ops.insert(d);
        }
      }
      layer.groups = (*gshape)[1];
      layer.groupTopk = (*gk)[0];
      sel = base;
    }
    if (sel != scores) {
      auto add = defOp<ox::AddOp>(sel);
      Value bias = add ? otherOperand(add, scores) : Value();
      if (!bias || !matchPattern(bias, m_Constant()) || rankOf(bias) != 1)
        return m.fail("the top-k input is not the scores plus a constant selection bias");
      m.ops.insert(add);
      layer.selectionBias = bias;
    }
  }

  if (auto sm = defOp<ox::SoftmaxOp>(scores)) {
    if (normAxis(sm.getAxis(), rankOf(scores)) != rankOf(scores) - 1)
      return m.fail("softmax over the wrong axis (" + Twine(sm.getAxis()) + "; experts are the last dim)");
    m.ops.insert(sm);
    layer.gate = moe::GateFunc::softmax;
    layer.logits = sm.getInput();
  } else if (auto sg = defOp<ox::SigmoidOp>(scores)) {
    m.ops.insert(sg);
    layer.gate = moe::GateFunc::sigmoid;
    layer.logits = sg.getX();
  } else {
    return m.fail("the router scores are neither a softmax nor a sigmoid of logits");
  }
  auto lt = dyn_cast<RankedTensorType>(layer.logits.getType());
  int64_t n = lt ? lt.getShape().back() : ShapedType::kDynamic;
  if (ShapedType::isDynamic(n))
    return m.fail("the router's expert count is dynamic");
  if (n != e && !(skip && n == e + 1))
    return m.fail("mismatched expert count: the router scores " + Twine(n) + " experts, the weights hold " +
                  Twine(e));
  layer.zeroExperts = n - e;
  if (layer.groups > 1 && n % layer.groups != 0)
    return m.fail("expert groups do not divide the router columns");
  return true;
}

/// No op of the pattern may feed anything outside it (the intermediate would disappear).
bool checkClosed(Matcher &m, Operation *root) {
  for (Operation *op : m.ops) {
    if (op == root || op->hasTrait<OpTrait::ConstantLike>())
      continue;
    for (Operation *user : op->getUsers())
      if (!m.ops.contains(user))
        return m.fail("'" + op->getName().getStringRef() + "' inside the pattern is also read by '" +
                      user->getName().getStringRef() + "' outside it");
  }
  return true;
}

struct MoERaiseDecomposedPass final : moec::impl::MoERaiseDecomposedPassBase<MoERaiseDecomposedPass> {
  using Base::Base;
  void runOnOperation() override {
    SmallVector<ox::ReduceSumOp> roots;
    getOperation()->walk([&](ox::ReduceSumOp op) { roots.push_back(op); });
    for (ox::ReduceSumOp root : roots) {
      Matcher m;
      Layer layer;
      Value ids, weights;
      if (!matchExperts(m, root, layer, ids, weights)) {
        if (!m.why.empty() && remarks)
          emitRemark(root.getLoc()) << "MoE experts not raised: " << m.why;
        continue;
      }
      if (!matchRouter(m, ids, weights, layer) || !checkClosed(m, root)) {
        if (remarks)
          emitRemark(root.getLoc()) << "MoE experts not raised: " << m.why;
        continue;
      }
      build(root, layer, m);
    }
  }

  void build(ox::ReduceSumOp root, Layer &layer, Matcher &m) {
    OpBuilder b(root);
    Location loc = root.getLoc();
    MLIRContext *ctx = b.getContext();
    // Router logits as [T, N].
    auto lt = cast<RankedTensorType>(layer.logits.getType());
    int64_t n = lt.getShape().back();
    Value logits = layer.logits;
    if (lt.getRank() != 2) {
      auto i64 = RankedTensorType::get({2}, b.getI64Type());
      Value shape = b.create<ox::ConstantOp>(loc, DenseIntElementsAttr::get(i64, ArrayRef<int64_t>{-1, n}));
      int64_t t = cast<RankedTensorType>(layer.tokens.getType()).getDimSize(0);
      logits = b.create<ox::ReshapeOp>(loc, RankedTensorType::get({t, n}, lt.getElementType()), logits, shape,
                                       b.getI64IntegerAttr(0));
    }
    SmallVector<Value> operands{layer.tokens, logits};
    SmallVector<int32_t> segments(19, 0);
    segments[0] = segments[1] = 1;
    if (layer.selectionBias) {
      operands.push_back(layer.selectionBias);
      segments[3] = 1;
    }
    operands.push_back(layer.fc1);
    segments[4] = 1;
    operands.push_back(layer.fc2);
    segments[7] = 1;
    SmallVector<NamedAttribute> attrs{
        b.getNamedAttr("k", b.getI64IntegerAttr(layer.k)),
        b.getNamedAttr("router_kind", moe::RouterKindAttr::get(ctx, moe::RouterKind::logits)),
        b.getNamedAttr("gate", moe::GateFuncAttr::get(ctx, layer.gate)),
        b.getNamedAttr("normalize", b.getBoolAttr(layer.normalize)),
        b.getNamedAttr("scale", b.getF32FloatAttr(layer.scale)),
        b.getNamedAttr("activation", moe::ActivationAttr::get(ctx, layer.act)),
        b.getNamedAttr("operandSegmentSizes", b.getDenseI32ArrayAttr(segments)),
        b.getNamedAttr("moe.source", b.getStringAttr("pytorch-batched-mm"))};
    if (layer.zeroExperts)
      attrs.push_back(b.getNamedAttr("zero_experts", b.getI64IntegerAttr(layer.zeroExperts)));
    if (layer.groups > 1) {
      attrs.push_back(b.getNamedAttr("expert_groups", b.getI64IntegerAttr(layer.groups)));
      attrs.push_back(b.getNamedAttr("group_topk", b.getI64IntegerAttr(layer.groupTopk)));
    }
    OperationState state(loc, moe::SparseMoEOp::getOperationName());
    state.addOperands(operands);
    state.addAttributes(attrs);
    state.addTypes(root.getType());
    Operation *op = b.create(state);
    if (failed(mlir::verify(op))) {
      op->erase();
      return;
    }
    root.getResult().replaceAllUsesWith(op->getResult(0));
    // Erase the pattern, users first.
    bool erased = true;
    while (erased) {
      erased = false;
      for (Operation *dead : m.ops)
        if (dead && !dead->hasTrait<OpTrait::ConstantLike>() && dead->use_empty()) {
          m.ops.remove(dead);
          dead->erase();
          erased = true;
          break;
        }
    }
  }
};

} // namespace
