//===- RaiseDecomposed.cpp - raise PyTorch-exported MoE subgraphs to moe.sparse_moe -===//
//
// A MoE block written out as ONNX ops is recognised by what it computes, in two halves that each reduce the
// exporter's ops to a normal form, and then raised to one moe.sparse_moe by one builder:
//
//   Experts  (per token and top-k slot: tokens, fc1 / fc2 with their biases, activation, gated layout, clamp)
//   Routing  (logits, score function, selection bias, k, grouped top-k, normalisation, scale, zero experts)
//
// The experts half starts at the combine, the pattern's root, and walks backwards:
//
//   ReduceSum(Reshape(Mul(down, Unsqueeze(Reshape(weights))), [-1, k, H]), axes = [1])        combine
//   down = linear(fc2, act(up)),  up = linear(fc1, repeat_interleave(tokens, k))
//   linear(W, x) = Squeeze(MatMul(GatherND(W, ids), Unsqueeze(x, -1)))     W [E, out, in]   (batched_mm)
//                | Squeeze(MatMul(Unsqueeze(x, 1), GatherND(W, ids)))      W [E, in, out]   (transposed)
//                  (+ GatherND(b, ids): per-expert bias; Squeeze(Unsqueeze(v)) pairs are seen through)
//   act = g(gate) * up after a Split in halves (block layout) or two step-2 Slices (interleaved), with
//         g = silu | silu(alpha *) | gelu, `up + beta`, and GPT-OSS's clamps; or an ungated relu / gelu /
//         silu
//
// The routing half starts from the ids and weights the experts use:
//
//   ids     = TopK(sel, k).indices                    (optionally skip-masked: Where(ids == E, 0, ids))
//   weights = scores at ids (TopK values or GatherElements), score-function(TopK(logits).values) for a top-k
//             taken before the score function (softmax: renormalised), then optionally / sum (ReduceSum,
//             ReduceL1, + a negligible eps or Clip at a provably inactive minimum), * scale, skip-zeroed
//   sel     = scores (+ selection bias) (grouped: Where(not(group mask), -inf or 0, sel), groups scored by
//             their top-2 sum or their max)
//   scores  = Softmax(logits) | Sigmoid(logits)
//
// Other combines reduce to the same halves: the dense sum over all experts of a top-k-sparse routing matrix's
// column times the expert (RaiseDenseMoE), every expert by batched matmuls (RaiseAllExpertsMoE), and loops
// over the experts (RaiseLoopMoE), one body per expert e, rooted at the last scatter-add:
//
//   (slot, tok) = NonZero(ids == e)      (Equal, or the plane e of one_hot(ids).permute(2, 1, 0))
//   acc += scatter(tok, expert_e(x[tok]) * weights[tok, slot])     (ScatterND / ScatterElements add,
//   index_add)
//
// from zeros, every expert of the router once; e a constant, or the i-th expert hit in a TorchScript trace
// that holds a body per expert (expertIndex says why that is i).
//
// The result has router_kind = logits with the logits as its router operand (moe-fold-router turns a linear
// router, bias included, into weights). Every op of the pattern must be used only inside the pattern. The
// pattern runs under MLIR's greedy rewrite driver; each near miss is a `notifyMatchFailure` that becomes a
// `--report` remark.
//
// Adding a form an exporter writes means teaching one of the two halves another way of writing the same
// fact (docs/writing-fusion-passes.md), not adding a pass.
//
//===----------------------------------------------------------------------===//
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "ir/ShapeInference.h"
#include "passes/MatchUtils.h"
#include "passes/Passes.h"

#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Matchers.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/SetVector.h"

#include <cmath>
#include <cstring>

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
  /// Unsqueeze/Squeeze of one axis `axis` (or its negative form) of `v`'s operand; returns that operand.
  template <typename OpTy> Value oneAxis(Value v, int64_t axis, int64_t resultRank) {
    auto op = defOp<OpTy>(v);
    if (!op || !op.getAxes())
      return {};
    auto axes = constantInts(op.getAxes());
    if (!axes || axes->size() != 1 || normAxis((*axes)[0], resultRank) != axis)
      return {};
    ops.insert(op);
    return op.getData();
  }
  /// `OpTy(x, c)` or `OpTy(c, x)` with `c` a constant holding one number: returns x and sets c.
  template <typename OpTy> Value scalarOperand(Value v, double &c) {
    auto op = defOp<OpTy>(v);
    for (int i = 0; op && i < 2; ++i)
      if (auto s = constantScalar(op->getOperand(i))) {
        ops.insert(op);
        c = *s;
        return op->getOperand(1 - i);
      }
    return {};
  }
  /// `v` through ops that keep its elements in row-major order (Reshape, Squeeze, Unsqueeze, Identity,
  /// Flatten, a Transpose that only moves size-1 axes), recording them; stops early
  /// at a value of rank `untilRank`.
  Value peelViews(Value v, int64_t untilRank = -1) {
    while (Operation *op = v && rankOf(v) != untilRank ? v.getDefiningOp() : nullptr) {
      Value in;
      if (isa<ox::ReshapeOp, ox::SqueezeOp, ox::UnsqueezeOp, ox::IdentityOp, ox::FlattenOp>(op))
        in = op->getOperand(0);
      else if (auto t = dyn_cast<ox::TransposeOp>(op); t && t.getPerm())
        in = movesOnlyUnitAxes(t) ? t.getData() : Value();
      if (!in)
        break;
      ops.insert(op);
      v = in;
    }
    return v;
  }
  static bool movesOnlyUnitAxes(ox::TransposeOp t) {
    auto type = dyn_cast<RankedTensorType>(t.getData().getType());
    if (!type)
      return false;
    SmallVector<int64_t> kept; // the non-unit axes, in the order the result holds them
    for (Attribute a : t.getPermAttr()) {
      int64_t axis = cast<IntegerAttr>(a).getInt();
      if (axis < 0 || axis >= type.getRank())
        return false;
      if (type.getDimSize(axis) != 1)
        kept.push_back(axis);
    }
    return llvm::is_sorted(kept);
  }
  /// Adds the shape computations only the pattern reads: integer ops (Shape, and Gather / Concat / arithmetic
  /// on shapes) and ops read only by Shape ops, whose every user is already in the pattern. They go when the
  /// pattern does; without them the closure check would see the pattern's values read outside it.
  void absorbShapeOps() {
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t i = 0; i < ops.size(); ++i)
        for (Value operand : ops[i]->getOperands()) {
          Operation *d = operand.getDefiningOp();
          if (!d || ops.contains(d) || d->hasTrait<OpTrait::ConstantLike>() || d->getNumRegions())
            continue;
          bool intOnly = llvm::all_of(d->getResultTypes(), [](Type t) {
            auto rt = dyn_cast<RankedTensorType>(t);
            return rt && isa<IntegerType>(rt.getElementType());
          });
          bool shapeRead = llvm::all_of(d->getUsers(), [](Operation *u) { return isa<ox::ShapeOp>(u); });
          if ((!intOnly && !shapeRead) ||
              !llvm::all_of(d->getUsers(), [&](Operation *u) { return ops.contains(u); }))
            continue;
          ops.insert(d);
          changed = true;
        }
    }
  }
  /// `v` with Squeeze(Unsqueeze(x, a), a) pairs (the exporter's no-op views) seen through.
  Value peelViewPairs(Value v) {
    while (auto sq = defOp<ox::SqueezeOp>(v)) {
      auto un = defOp<ox::UnsqueezeOp>(sq.getData());
      auto a = sq.getAxes() ? constantInts(sq.getAxes()) : std::nullopt;
      auto b = un && un.getAxes() ? constantInts(un.getAxes()) : std::nullopt;
      if (!a || !b || *a != *b)
        break;
      ops.insert(sq);
      ops.insert(un);
      v = un.getData();
    }
    return v;
  }
};

// ---- The normal form -------------------------------------------------------------------------------------

/// What the experts compute for each (token, slot): act(fc1 x + b1) through fc2 (+ b2).
struct Experts {
  Value tokens;   ///< [T, H]
  Value fc1, fc2; ///< [E, rows, in] as stored; `transposed`: [E, in, rows]
  bool fc1Transposed = false, fc2Transposed = false;
  Value fc1Bias, fc2Bias; ///< [E, rows] or null
  moe::Activation act = moe::Activation::identity;
  moe::GatedLayout layout = moe::GatedLayout::block;
  double alpha = 1.0, beta = 0.0;
  std::optional<double> limit;
  int64_t k = 0;
};

/// How each token picks its experts and weighs them.
struct Routing {
  Value logits, selectionBias;
  moe::GateFunc gate = moe::GateFunc::softmax;
  bool normalize = false;
  double scale = 1.0;
  int64_t zeroExperts = 0, groups = 1, groupTopk = 0;
  moe::GroupScore groupScore = moe::GroupScore::top2_sum;
  std::optional<double> jitterEps; ///< sparsemixer's
};

// ---- Experts ---------------------------------------------------------------------------------------------

/// One batched per-expert linear layer applied to `x` rows: W[ids] @ x (+ b[ids]). Returns W, sets the rest.
struct BatchedLinear {
  Value weight, bias, ids, x;
  bool transposed = false;
};
std::optional<BatchedLinear> matchBatchedLinear(Matcher &m, Value v) {
  BatchedLinear l;
  v = m.peelViewPairs(v);
  // Per-expert bias: Add(linear, GatherND(b, ids)).
  Value biasIds;
  if (auto add = defOp<ox::AddOp>(v)) {
    for (int i = 0; i < 2 && !l.bias; ++i)
      if (auto g = defOp<ox::GatherNDOp>(add->getOperand(i)))
        if (g.getBatchDims() == 0 && matchPattern(g.getData(), m_Constant()) && rankOf(g.getData()) == 2) {
          m.ops.insert(add);
          m.ops.insert(g);
          l.bias = g.getData();
          biasIds = g.getIndices();
          v = m.peelViewPairs(add->getOperand(1 - i));
        }
  }
  Matcher trial = m;
  Value mm = trial.oneAxis<ox::SqueezeOp>(v, 2, 3);
  bool transposed = false;
  if (!mm) { // [T*k, 1, out] squeezed at axis 1
    trial = m;
    mm = trial.oneAxis<ox::SqueezeOp>(v, 1, 3);
    transposed = true;
  }
  auto matmul = trial.take<ox::MatMulOp>(mm);
  if (!matmul)
    return std::nullopt;
  Value wSide = transposed ? matmul.getB() : matmul.getA();
  Value xSide = transposed ? matmul.getA() : matmul.getB();
  auto gather = trial.take<ox::GatherNDOp>(wSide);
  if (!gather || gather.getBatchDims() != 0 || !matchPattern(gather.getData(), m_Constant()) ||
      rankOf(gather.getData()) != 3)
    return std::nullopt;
  l.x =
      transposed ? trial.oneAxis<ox::UnsqueezeOp>(xSide, 1, 3) : trial.oneAxis<ox::UnsqueezeOp>(xSide, 2, 3);
  if (!l.x)
    return std::nullopt;
  l.weight = gather.getData();
  l.ids = gather.getIndices();
  l.transposed = transposed;
  if (l.bias && !sameData(biasIds, l.ids))
    return std::nullopt;
  m = trial;
  return l;
}

/// The flattened top-k id column the gathers use: Unsqueeze(Reshape(ids, [-1]), -1). Returns the ids.
Value matchIdColumn(Matcher &m, Value v) {
  Value flat = m.oneAxis<ox::UnsqueezeOp>(v, 1, 2);
  return flat ? m.peelReshapes(flat) : Value();
}

/// `x * sigmoid(alpha * x)` (alpha = 1 without the Mul) or `x * sigmoid(x)`; returns x.
Value matchSilu(Matcher &m, Value v, double &alpha) {
  auto mul = defOp<ox::MulOp>(v);
  if (!mul)
    return {};
  for (int i = 0; i < 2; ++i) {
    auto sig = defOp<ox::SigmoidOp>(mul->getOperand(i));
    if (!sig)
      continue;
    Value x = mul->getOperand(1 - i);
    double a = 1.0;
    Operation *scaleOp = nullptr;
    if (sig.getX() != x) {
      auto inner = defOp<ox::MulOp>(sig.getX());
      Value c = inner ? otherOperand(inner, x) : Value();
      auto s = c ? constantScalar(c) : std::nullopt;
      if (!s)
        continue;
      a = *s;
      scaleOp = inner;
    }
    m.ops.insert(mul);
    m.ops.insert(sig);
    if (scaleOp)
      m.ops.insert(scaleOp);
    alpha = a;
    return x;
  }
  return {};
}

/// GELU written with Erf, `x * (1 + Erf(x / sqrt(2))) * 0.5` in any association of its two Muls
/// (TorchScript's export of F.gelu); returns x.
Value matchErfGelu(Matcher &m, Value v) {
  auto outer = defOp<ox::MulOp>(v);
  for (int i = 0; outer && i < 2; ++i) {
    auto inner = defOp<ox::MulOp>(outer->getOperand(i));
    if (!inner)
      continue;
    Value leaves[3] = {outer->getOperand(1 - i), inner.getA(), inner.getB()};
    for (int a = 0; a < 3; ++a) {
      auto add = defOp<ox::AddOp>(leaves[a]);
      double one = 0;
      Value erfOut = add ? Matcher().scalarOperand<ox::AddOp>(leaves[a], one) : Value();
      auto erf = defOp<ox::ErfOp>(erfOut);
      if (!erf || one != 1.0)
        continue;
      double c = 0;
      Value x;
      if (auto d = defOp<ox::DivOp>(erf.getX()); d && constantScalar(d.getB())) {
        x = d.getA();
        c = 1.0 / *constantScalar(d.getB());
      } else if (Value y = Matcher().scalarOperand<ox::MulOp>(erf.getX(), c)) {
        x = y;
      }
      if (!x || std::abs(c - M_SQRT1_2) > 1e-6)
        continue;
      Value p = leaves[(a + 1) % 3], q = leaves[(a + 2) % 3];
      auto half = constantScalar(p == x ? q : p);
      if ((p != x && q != x) || !half || *half != 0.5)
        continue;
      for (Operation *op : {outer.getOperation(), inner.getOperation(), add.getOperation(),
                            erf.getOperation(), erf.getX().getDefiningOp()})
        m.ops.insert(op);
      return x;
    }
  }
  return {};
}

/// Ungated activation applied to `v`; sets `act` and returns its input.
Value matchPlainActivation(Matcher &m, Value v, moe::Activation &act) {
  double alpha = 1.0;
  Matcher trial = m;
  if (Value x = matchSilu(trial, v, alpha); x && alpha == 1.0) {
    m = trial;
    act = moe::Activation::silu;
    return x;
  }
  if (auto gelu = m.take<ox::GeluOp>(v)) {
    act = gelu.getApproximate() == "tanh" ? moe::Activation::gelu_tanh : moe::Activation::gelu;
    return gelu.getX();
  }
  if (auto relu = m.take<ox::ReluOp>(v)) {
    act = moe::Activation::relu;
    return relu.getX();
  }
  if (Value x = matchErfGelu(m, v)) {
    act = moe::Activation::gelu;
    return x;
  }
  return {};
}

/// The two halves a gated activation reads from the up projection `u`: Split(u, axis -1) in two equal halves
/// or Slice(u, :W/2) / Slice(u, W/2:) (block layout), or Slice(u, 0::2) / Slice(u, 1::2) along the last axis
/// (interleaved). Returns u.
Value matchGateUpHalves(Matcher &m, Value gate, Value up, moe::GatedLayout &layout) {
  if (auto split = defOp<ox::SplitOp>(gate)) {
    int64_t rank = rankOf(split.getInput());
    if (split->getNumResults() != 2 || gate != split->getResult(0) || up != split->getResult(1) ||
        normAxis(split.getAxis(), rank) != rank - 1)
      return {};
    if (split.getSplit()) {
      auto sizes = constantInts(split.getSplit());
      if (!sizes || sizes->size() != 2 || (*sizes)[0] != (*sizes)[1])
        return {};
    }
    m.ops.insert(split);
    layout = moe::GatedLayout::block;
    return split.getInput();
  }
  auto sg = defOp<ox::SliceOp>(gate), su = defOp<ox::SliceOp>(up);
  if (!sg || !su || sg.getData() != su.getData())
    return {};
  int64_t rank = rankOf(sg.getData());
  int64_t width = rank > 0 ? cast<RankedTensorType>(sg.getData().getType()).getShape().back() : 0;
  // Bounds may be shape arithmetic (`chunk(2, -1)` exports Shape -> Gather -> Add -> Div): evaluated.
  auto half = [&](ox::SliceOp s, int64_t start, int64_t end, int64_t step) {
    auto st = ox::staticIntValue(s.getStarts()), en = ox::staticIntValue(s.getEnds()),
         ax = ox::staticIntValue(s.getAxes()), sp = ox::staticIntValue(s.getSteps());
    if (!st || !en || !ax || !sp || st->size() != 1 || en->size() != 1 || ax->size() != 1 ||
        sp->size() != 1 || (*st)[0] != start || (*sp)[0] != step || normAxis((*ax)[0], rank) != rank - 1)
      return false;
    if (end < 0) // to the end of the axis
      return (*en)[0] >= (int64_t(1) << 30) || (width > 0 && (*en)[0] >= width);
    return (*en)[0] == end;
  };
  if (half(sg, 0, -1, 2) && half(su, 1, -1, 2))
    layout = moe::GatedLayout::interleaved;
  else if (width > 0 && width % 2 == 0 && half(sg, 0, width / 2, 1) && half(su, width / 2, -1, 1))
    layout = moe::GatedLayout::block;
  else
    return {};
  m.ops.insert(sg);
  m.ops.insert(su);
  return sg.getData();
}

/// `Clip(v, lo, hi)` with constant bounds (absent = unbounded); returns v and sets the bounds.
Value matchClip(Matcher &m, Value v, std::optional<double> &lo, std::optional<double> &hi) {
  auto clip = defOp<ox::ClipOp>(v);
  if (!clip)
    return {};
  lo = clip.getMin() ? constantScalar(clip.getMin()) : std::nullopt;
  hi = clip.getMax() ? constantScalar(clip.getMax()) : std::nullopt;
  if ((clip.getMin() && !lo) || (clip.getMax() && !hi))
    return {};
  m.ops.insert(clip);
  return clip.getInput();
}

/// A gated activation `g(gate) * (up + beta)` of the two halves of one projection; sets the experts'
/// activation facts and returns the projection.
Value matchGated(Matcher &m, Value h, Experts &ex) {
  auto mul = defOp<ox::MulOp>(h);
  if (!mul)
    return {};
  for (int i = 0; i < 2; ++i) {
    Matcher trial = m;
    trial.ops.insert(mul);
    Value gPart = mul->getOperand(i), upPart = mul->getOperand(1 - i);
    // The gate side: silu (with alpha) or gelu.
    moe::Activation act;
    double alpha = 1.0;
    Value g = matchSilu(trial, gPart, alpha);
    if (g) {
      act = moe::Activation::swiglu;
    } else if (auto gelu = trial.take<ox::GeluOp>(gPart); gelu && gelu.getApproximate() != "tanh") {
      act = moe::Activation::geglu;
      g = gelu.getX();
    } else {
      continue;
    }
    // The up side: up or up + beta.
    double beta = 0.0;
    Value u = upPart;
    if (Value in = trial.scalarOperand<ox::AddOp>(u, beta))
      u = in;
    // GPT-OSS's clamps: gate <= limit, -limit <= up <= limit.
    std::optional<double> glo, ghi, ulo, uhi, limit;
    if (Value in = matchClip(trial, g, glo, ghi)) {
      if (glo || !ghi)
        return m.fail("the gate half is clamped other than from above (min(gate, limit))"), Value();
      g = in;
      limit = *ghi;
    }
    if (Value in = matchClip(trial, u, ulo, uhi)) {
      if (!limit || !ulo || !uhi || *uhi != *limit || *ulo != -*limit)
        return m.fail("the up half's clamp is not [-limit, limit] with the gate's limit"), Value();
      u = in;
    } else if (limit) {
      return m.fail("the gate half is clamped but the up half is not"), Value();
    }
    moe::GatedLayout layout;
    Value proj = matchGateUpHalves(trial, g, u, layout);
    if (!proj)
      continue;
    m = trial;
    ex.act = act;
    ex.alpha = alpha;
    ex.beta = beta;
    ex.limit = limit;
    ex.layout = layout;
    return proj;
  }
  return {};
}

/// The experts half, from the combining ReduceSum. Sets the routing `ids` and per-(token, slot) `weights`.
bool matchExperts(Matcher &m, ox::ReduceSumOp sum, Experts &ex, Value &ids, Value &weights) {
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
  std::optional<BatchedLinear> down;
  Value weightCol;
  for (int i = 0; i < 2 && !down; ++i) {
    Matcher trial = m;
    down = matchBatchedLinear(trial, mul->getOperand(i));
    if (down) {
      m = trial;
      weightCol = mul->getOperand(1 - i);
    }
  }
  if (!down)
    return false; // not an expert combine at all: no remark
  ex.k = (*shape)[1];
  Value flatWeights = m.oneAxis<ox::UnsqueezeOp>(weightCol, 1, 2);
  if (!flatWeights)
    return m.fail("the expert outputs are not scaled by a per-(token, slot) routing weight column");
  weights = m.peelReshapes(flatWeights);
  ids = matchIdColumn(m, down->ids);
  if (!ids)
    return m.fail("the down projection's expert gather is not indexed by the flattened top-k ids");

  // Activation between the projections.
  Value upOut = matchGated(m, down->x, ex);
  if (!upOut && m.why.empty())
    upOut = matchPlainActivation(m, down->x, ex.act);
  if (!upOut)
    return m.fail("no activation this compiler knows between the expert projections");
  auto up = matchBatchedLinear(m, upOut);
  if (!up)
    return m.fail("the up projection is not a gathered batched matmul W[ids] @ x");
  if (!sameData(matchIdColumn(m, up->ids), ids))
    return m.fail("the up and down projections gather experts with different ids");

  // Tokens repeated k times: Reshape(Expand(Unsqueeze(tokens, 1), [1, k, 1]), [-1, H]).
  Value tokens;
  if (auto rr = defOp<ox::ReshapeOp>(up->x))
    if (auto expand = defOp<ox::ExpandOp>(rr.getData()))
      if (auto unsq = defOp<ox::UnsqueezeOp>(expand.getInput())) {
        auto ua = constantInts(unsq.getAxes());
        auto es = constantInts(expand.getShape());
        if (ua && ua->size() == 1 && (*ua)[0] == 1 && es && es->size() == 3 && (*es)[1] == ex.k) {
          m.ops.insert(rr);
          m.ops.insert(expand);
          m.ops.insert(unsq);
          tokens = unsq.getData();
        }
      }
  if (!tokens && ex.k == 1)
    tokens = up->x;
  if (!tokens)
    return m.fail("the experts' input is not each token repeated k = " + Twine(ex.k) + " times");
  if (rankOf(tokens) != 2)
    return m.fail("the experts' tokens are not a 2-D [T, H] tensor");

  auto w1 = cast<RankedTensorType>(up->weight.getType()), w2 = cast<RankedTensorType>(down->weight.getType());
  auto rows = [](RankedTensorType t, bool tr) { return t.getDimSize(tr ? 2 : 1); };
  auto cols = [](RankedTensorType t, bool tr) { return t.getDimSize(tr ? 1 : 2); };
  bool gated = ex.act == moe::Activation::swiglu || ex.act == moe::Activation::geglu;
  int64_t e = w1.getDimSize(0), h1 = cols(w1, up->transposed), f = cols(w2, down->transposed);
  if (w2.getDimSize(0) != e)
    return m.fail("mismatched expert count: fc1 has " + Twine(e) + " experts, fc2 " + Twine(w2.getDimSize(0)));
  if (rows(w1, up->transposed) != (gated ? 2 * f : f) || rows(w2, down->transposed) != h1)
    return m.fail("expert weight shapes do not chain (fc1 " + Twine(rows(w1, up->transposed)) + "x" +
                  Twine(h1) + ", fc2 " + Twine(rows(w2, down->transposed)) + "x" + Twine(f) + ")");
  if (!w1.getElementType().isF32() || !w2.getElementType().isF32())
    return m.fail("the expert weights are not f32");
  ex.tokens = tokens;
  ex.fc1 = up->weight;
  ex.fc2 = down->weight;
  ex.fc1Transposed = up->transposed;
  ex.fc2Transposed = down->transposed;
  ex.fc1Bias = up->bias;
  ex.fc2Bias = down->bias;
  return true;
}

// ---- Routing ---------------------------------------------------------------------------------------------

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

/// `v` reduced over its last axis with keepdims by `OpTy`; returns the reduced value.
template <typename OpTy> Value lastAxisReduced(Value v) {
  auto r = defOp<OpTy>(v);
  auto ax = r && r.getAxes() ? constantInts(r.getAxes()) : std::nullopt;
  if (!r || r.getKeepdims() != 1 || !ax || ax->size() != 1)
    return {};
  int64_t rank = rankOf(r.getData());
  return normAxis((*ax)[0], rank) == rank - 1 ? r.getData() : Value();
}

/// Grouped top-k: `Where(Not(group mask), fill, base)` where the mask keeps the best `topk_group` groups of
/// `Reshape(base, [-1, G, per])`, scored by the sum of their top 2 (DeepSeek-V3) or their max (DeepSeek-V2).
/// Returns base; sets the groups.
Value matchGroupMask(Matcher &m, ox::WhereOp where, Routing &r, bool &fillIsZero) {
  auto fill = constantScalar(where.getX());
  if (!fill || !((std::isinf(*fill) && *fill < 0) || *fill == 0.0))
    return m.fail("the top-k input is masked with something other than -inf or 0"), Value();
  fillIsZero = *fill == 0.0;
  Value base = where.getY();
  Value c = where.getCondition();
  m.ops.insert(where);
  if (auto n = m.take<ox::NotOp>(c))
    c = n.getX();
  else
    return m.fail("the grouped top-k mask is not negated"), Value();
  while (true) {
    if (auto cast = m.take<ox::CastOp>(c))
      c = cast.getInput();
    else if (auto rs = m.take<ox::ReshapeOp>(c))
      c = rs.getData();
    else if (auto ex = m.take<ox::ExpandOp>(c))
      c = ex.getInput();
    else if (auto u = m.take<ox::UnsqueezeOp>(c))
      c = u.getData();
    else
      break;
  }
  auto scatter = m.take<ox::ScatterElementsOp>(c);
  auto gtop = scatter ? defOp<ox::TopKOp>(scatter.getIndices()) : ox::TopKOp();
  auto gk = gtop ? constantInts(gtop.getK()) : std::nullopt;
  if (!gtop || !gk || gk->size() != 1)
    return m.fail("the top-k input mask is not a grouped top-k (a scatter of the best groups' ids)"), Value();
  SmallVector<Operation *> groupOps{scatter, gtop};
  Value grouped;
  if (auto gsum = defOp<ox::ReduceSumOp>(gtop.getX())) { // sum of the top 2 per group
    auto inner = defOp<ox::TopKOp>(gsum.getData());
    auto two = inner ? constantInts(inner.getK()) : std::nullopt;
    if (inner && two && (*two)[0] == 2 && gsum.getData() == inner.getValues()) {
      groupOps.append({gsum, inner});
      grouped = inner.getX();
      r.groupScore = moe::GroupScore::top2_sum;
    }
  } else if (auto gmax = defOp<ox::ReduceMaxOp>(gtop.getX())) { // max per group
    auto ax = gmax.getAxes() ? constantInts(gmax.getAxes()) : std::nullopt;
    if (ax && ax->size() == 1 && normAxis((*ax)[0], 3) == 2 && gmax.getKeepdims() == 0) {
      groupOps.push_back(gmax);
      grouped = gmax.getData();
      r.groupScore = moe::GroupScore::max;
    }
  }
  auto reshaped = defOp<ox::ReshapeOp>(grouped);
  auto gshape = reshaped ? constantInts(reshaped.getShape()) : std::nullopt;
  if (!reshaped || reshaped.getData() != base || !gshape || gshape->size() != 3)
    return m.fail(
               "the grouped top-k does not score groups of the top-k input by their top-2 sum or their max"),
           Value();
  groupOps.push_back(reshaped);
  for (Operation *op : groupOps)
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
  r.groups = (*gshape)[1];
  r.groupTopk = (*gk)[0];
  return base;
}

/// Softmax over the last axis or Sigmoid of `v`: sets the gate and returns the logits.
Value matchScoreFunction(Matcher &m, Value v, moe::GateFunc &gate) {
  if (auto sm = defOp<ox::SoftmaxOp>(v)) {
    if (normAxis(sm.getAxis(), rankOf(v)) != rankOf(v) - 1)
      return m.fail("softmax over the wrong axis (" + Twine(sm.getAxis()) + "; experts are the last dim)"),
             Value();
    m.ops.insert(sm);
    gate = moe::GateFunc::softmax;
    return sm.getInput();
  }
  if (auto sg = m.take<ox::SigmoidOp>(v)) {
    gate = moe::GateFunc::sigmoid;
    return sg.getX();
  }
  return {};
}

/// A tensor filled with `value` (0, -inf): a splat constant, `ConstantOfShape(Shape(..), value)` (no value:
/// 0) or `Expand(value, ..)`; records the fill and the Shape it reads.
bool isFill(Matcher &m, Value v, double value) {
  auto splatIs = [&](Attribute attr) {
    auto d = dyn_cast_or_null<DenseFPElementsAttr>(attr);
    return d && d.isSplat() && d.getSplatValue<APFloat>().convertToDouble() == value;
  };
  Attribute attr;
  if (matchPattern(v, m_Constant(&attr)))
    return splatIs(attr);
  Operation *fill = v.getDefiningOp();
  Value shape;
  if (auto c = dyn_cast_or_null<ox::ConstantOfShapeOp>(fill)) { // its value defaults to 0
    if (c.getValue() ? !splatIs(*c.getValue()) : value != 0.0)
      return false;
    shape = c.getInput();
  } else if (auto ex = dyn_cast_or_null<ox::ExpandOp>(fill);
             ex && matchPattern(ex.getInput(), m_Constant(&attr)) && splatIs(attr)) {
    shape = ex.getShape();
  } else {
    return false;
  }
  m.ops.insert(fill);
  if (auto sh = defOp<ox::ShapeOp>(shape))
    m.ops.insert(sh);
  return true;
}

/// PhiMoE's sparsemixer (inference): ids = Concat(ArgMax(prev_j)), weights = Concat(GatherElements(
/// Softmax(Where(Greater((max_j - L) / Max(Abs(L), max_j), 2 eps), -inf, prev_j)), ArgMax(prev_j))), with
/// prev_0 = L (the logits) and prev_j = ScatterElements(prev_{j-1}, id_{j-1}, -inf). Sets the routing.
bool matchSparseMixer(Matcher &m, ox::ConcatOp ids, Value weights, int64_t k, Routing &r) {
  auto wc = defOp<ox::ConcatOp>(weights);
  int64_t rank = rankOf(ids);
  if (!wc || rank != 2 || normAxis(ids.getAxis(), 2) != 1 || normAxis(wc.getAxis(), 2) != 1 ||
      int64_t(ids.getInputs().size()) != k || int64_t(wc.getInputs().size()) != k)
    return m.fail("the expert ids are a Concat, but not of a sparsemixer's k ArgMax slots");
  m.ops.insert(ids);
  m.ops.insert(wc);
  Value logits;
  std::optional<double> threshold;
  Value prev;
  for (int64_t j = 0; j < k; ++j) {
    auto am = m.take<ox::ArgMaxOp>(ids.getInputs()[j]);
    if (!am || normAxis(am.getAxis(), 2) != 1 || am.getKeepdims() != 1 || am.getSelectLastIndex() != 0)
      return m.fail("sparsemixer slot " + Twine(j) + ": the id is not the first ArgMax over the experts");
    Value in = am.getData();
    if (j == 0) {
      logits = prev = in;
    } else {
      auto sc = m.take<ox::ScatterElementsOp>(in);
      if (!sc || sc.getData() != prev || sc.getIndices() != ids.getInputs()[j - 1] ||
          normAxis(sc.getAxis(), 2) != 1 || !isFill(m, sc.getUpdates(), -INFINITY))
        return m.fail("sparsemixer slot " + Twine(j) + ": the earlier slot's expert is not masked with -inf");
      prev = in;
    }
    // weight_j = GatherElements(Softmax(Where(far, -inf, prev)), id_j).
    auto ge = m.take<ox::GatherElementsOp>(wc.getInputs()[j]);
    auto sm = ge ? m.take<ox::SoftmaxOp>(ge.getData()) : ox::SoftmaxOp();
    auto where = sm ? m.take<ox::WhereOp>(sm.getInput()) : ox::WhereOp();
    if (!ge || ge.getIndices() != am.getResult() || normAxis(ge.getAxis(), 2) != 1 || !sm ||
        normAxis(sm.getAxis(), 2) != 1 || !where || where.getY() != prev ||
        !isFill(m, where.getX(), -INFINITY))
      return m.fail("sparsemixer slot " + Twine(j) + ": the weight is not a masked softmax at the slot's id");
    // far = Greater(Div(Sub(max, L), Max(Abs(L), max)), 2 eps), max = ReduceMax(prev, -1, keepdims).
    auto gt = m.take<ox::GreaterOp>(where.getCondition());
    auto div = gt ? m.take<ox::DivOp>(gt.getA()) : ox::DivOp();
    auto sub = div ? m.take<ox::SubOp>(div.getA()) : ox::SubOp();
    auto mx = div ? m.take<ox::MaxOp>(div.getB()) : ox::MaxOp();
    auto thr = gt ? constantScalar(gt.getB()) : std::nullopt;
    Value best = sub ? sub.getA() : Value();
    if (!gt || !div || !sub || !mx || !thr || sub.getB() != logits || mx.getData_0().size() != 2 ||
        lastAxisReduced<ox::ReduceMaxOp>(best) != prev)
      return m.fail("sparsemixer slot " + Twine(j) +
                    ": the mask is not (max - logits) / max(|logits|, max) > eps");
    m.ops.insert(best.getDefiningOp());
    Value absL = mx.getData_0()[0] == best ? mx.getData_0()[1] : mx.getData_0()[0];
    auto abs = m.take<ox::AbsOp>(absL);
    if (!abs || abs.getX() != logits || (mx.getData_0()[0] != best && mx.getData_0()[1] != best))
      return m.fail("sparsemixer slot " + Twine(j) + ": the mask's scale is not max(|logits|, max)");
    if (threshold && *threshold != *thr)
      return m.fail("sparsemixer slots with different thresholds");
    threshold = thr;
  }
  r.logits = logits;
  r.gate = moe::GateFunc::sparsemixer;
  r.jitterEps = *threshold / 2;
  return true;
}

/// The routing half, from the top-k ids and weights the experts use.
bool matchRouting(Matcher &m, Value ids, Value weights, int64_t e, int64_t k, Routing &r) {
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
  if (auto cat = defOp<ox::ConcatOp>(ids); cat && !skip) {
    if (!matchSparseMixer(m, cat, m.peelReshapes(weights), k, r))
      return false;
    auto lt = dyn_cast<RankedTensorType>(r.logits.getType());
    if (!lt || lt.isDynamicDim(lt.getRank() - 1) || lt.getShape().back() != e)
      return m.fail("mismatched expert count between the router and the expert weights");
    return true;
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
  if (!kk || kk->size() != 1 || (*kk)[0] != k)
    return m.fail("the router's top-k does not pick k = " + Twine(k) + " experts");

  // Weights: peel skip masking, scaling and normalisation (outermost first).
  Value w = m.peelReshapes(weights);
  if (skip) {
    auto where = defOp<ox::WhereOp>(w);
    auto zero = where ? constantScalar(where.getX()) : std::nullopt;
    if (!where || !zero || *zero != 0.0 || matchSkipTest(where.getCondition(), e) != ids)
      return m.fail("the skip class' routing weight is not zeroed");
    m.ops.insert(where);
    w = m.peelReshapes(where.getY());
  }
  // A constant scale (routed_scaling_factor), then normalisation: w / sum(w) written as ReduceSum, ReduceL1
  // (of non-negative scores), ReduceSum + an eps below the f32 resolution of the sum (DeepSeek's 1e-20), or
  // Clip(ReduceSum, min) with min below the smallest sum the scores can have (Ernie's 1e-12 on softmax
  // scores, checked once the gate is known). A scale applied before normalising cancels.
  auto peelScale = [&](double &scale) {
    if (Value in = m.scalarOperand<ox::MulOp>(w, scale))
      w = in;
  };
  peelScale(r.scale);
  double clipMin = -1.0;
  if (auto div = defOp<ox::DivOp>(w)) {
    Matcher trial = m;
    Value den = div.getB();
    double lo = -1.0;
    double eps = -1.0;
    Matcher withEps = trial;
    if (Value in = withEps.scalarOperand<ox::AddOp>(den, eps)) {
      if (eps >= 0 && eps < 1e-12) {
        trial = withEps;
        den = in;
      }
    } else if (auto clip = defOp<ox::ClipOp>(den); clip && clip.getMin() && !clip.getMax()) {
      if (auto c = constantScalar(clip.getMin())) {
        trial.ops.insert(clip);
        lo = *c;
        den = clip.getInput();
      }
    }
    Value summed = lastAxisReduced<ox::ReduceSumOp>(den);
    if (!summed)
      summed = lastAxisReduced<ox::ReduceL1Op>(den); // |w| = w: softmax and sigmoid scores are positive
    if (summed && summed == div.getA()) {
      trial.ops.insert(div);
      trial.ops.insert(den.getDefiningOp());
      m = trial;
      r.normalize = true;
      clipMin = lo;
      w = div.getA();
      double cancelled = 1.0;
      peelScale(cancelled);
    }
  }

  // Scores and the selection input.
  Value sel = topk.getX();
  Value scores;
  bool topkBeforeScore = false;
  if (auto sm = defOp<ox::SoftmaxOp>(w); sm && sm.getInput() == topk.getValues()) {
    // Top-k of the logits, then a softmax over the k values: a softmax gate renormalised over the top k.
    if (normAxis(sm.getAxis(), rankOf(w)) != rankOf(w) - 1)
      return m.fail("softmax over the top-k values along the wrong axis");
    if (r.normalize)
      return m.fail("a softmax over the top-k values renormalised again");
    m.ops.insert(sm);
    r.gate = moe::GateFunc::softmax;
    r.normalize = true;
    r.logits = sel;
    topkBeforeScore = true;
  } else if (auto sg = defOp<ox::SigmoidOp>(w); sg && sg.getX() == topk.getValues()) {
    m.ops.insert(sg); // sigmoid is monotonic: top-k of the logits is top-k of the scores
    r.gate = moe::GateFunc::sigmoid;
    r.logits = sel;
    topkBeforeScore = true;
  } else if (w == topk.getValues()) {
    scores = sel; // refined below: the values are the scores unless a bias or mask intervenes
  } else if (auto ge = defOp<ox::GatherElementsOp>(w)) {
    if (ge.getIndices() != ids || normAxis(ge.getAxis(), rank) != rank - 1)
      return m.fail("the routing weights are not gathered at the top-k ids");
    m.ops.insert(ge);
    scores = ge.getData();
  } else {
    return m.fail("the routing weights are neither the top-k values, the scores at the top-k ids, nor a "
                  "softmax / sigmoid of the top-k logits");
  }

  if (!topkBeforeScore) {
    bool valuesAreWeights = w == topk.getValues();
    bool fillIsZero = false;
    if (auto where = defOp<ox::WhereOp>(sel)) {
      Value base = matchGroupMask(m, where, r, fillIsZero);
      if (!base)
        return false;
      sel = base;
    }
    if (valuesAreWeights)
      scores = sel; // masked-out experts are never chosen: the values are the unmasked scores
    if (sel != scores) {
      auto add = defOp<ox::AddOp>(sel);
      Value bias = add ? otherOperand(add, scores) : Value();
      auto bt = bias ? dyn_cast<RankedTensorType>(bias.getType()) : RankedTensorType();
      if (!bias || !matchPattern(bias, m_Constant()) || !bt ||
          !(bt.getRank() == 1 || (bt.getRank() == 2 && bt.getDimSize(0) == 1))) // [N] or [1, N]
        return m.fail("the top-k input is not the scores plus a constant selection bias");
      m.ops.insert(add);
      r.selectionBias = bias;
    }
    r.logits = matchScoreFunction(m, scores, r.gate);
    if (!r.logits)
      return m.fail("the router scores are neither a softmax nor a sigmoid of logits");
    // A mask filling 0 instead of -inf selects the same experts only when every score competing is above 0:
    // softmax and sigmoid scores are, and the unmasked experts outnumber k (checked by the op's verifier).
    if (fillIsZero && r.selectionBias)
      return m.fail("the grouped top-k masks biased scores with 0 (they may be negative)");
  }

  if (clipMin >= 0) {
    int64_t n = rankOf(r.logits) > 0 ? cast<RankedTensorType>(r.logits.getType()).getShape().back() : 0;
    // The sum of the top k softmax scores is at least k / N.
    if (r.gate != moe::GateFunc::softmax || topkBeforeScore || n <= 0 || clipMin > double(k) / double(n))
      return m.fail("the renormalisation's denominator is clamped at a minimum the sum can reach");
  }

  auto lt = dyn_cast<RankedTensorType>(r.logits.getType());
  int64_t n = lt ? lt.getShape().back() : ShapedType::kDynamic;
  if (ShapedType::isDynamic(n))
    return m.fail("the router's expert count is dynamic");
  if (n != e && !(skip && n == e + 1))
    return m.fail("mismatched expert count: the router scores " + Twine(n) + " experts, the weights hold " +
                  Twine(e));
  r.zeroExperts = n - e;
  if (r.groups > 1 && n % r.groups != 0)
    return m.fail("expert groups do not divide the router columns");
  return true;
}

/// No op of the pattern may feed anything outside it (the intermediate would disappear).
bool checkClosed(Matcher &m, Operation *root) {
  m.absorbShapeOps();
  std::string why = firstUseOutside(m.ops.getArrayRef(), root);
  return why.empty() || m.fail(why);
}

/// `w` ([E, A, B]) as a constant [E, B, A]: weights a transposed batched matmul stores [E, in, out].
Value transposedWeight(OpBuilder &b, Location loc, Value w) {
  auto t = cast<RankedTensorType>(w.getType());
  std::vector<char> in = constantBytes(w);
  int64_t e = t.getDimSize(0), a = t.getDimSize(1), c = t.getDimSize(2);
  if (in.empty())
    return {};
  size_t es = in.size() / size_t(e * a * c);
  std::vector<char> out(in.size());
  for (int64_t x = 0; x < e; ++x)
    for (int64_t i = 0; i < a; ++i)
      for (int64_t j = 0; j < c; ++j)
        std::memcpy(&out[((x * c + j) * a + i) * es], &in[((x * a + i) * c + j) * es], es);
  return makeConstant(b, loc, RankedTensorType::get({e, c, a}, t.getElementType()), out, "expert_weights");
}

// ---- Dense forms: every expert on every token, weighted by a top-k-sparse routing matrix ---------------

/// A routing matrix [T, E] that is zero outside each token's top-k: `ScatterElements(zeros, ids, w, axis 1)`,
/// or the one-hot sum `ReduceSum(Cast(Equal(Unsqueeze(ids, -1), [0..E))) * Unsqueeze(w, -1), axes = [1])`.
/// Sets the ids and weights it spreads.
bool matchSparseRoutingMatrix(Matcher &m, Value dense, int64_t e, Value &ids, Value &weights) {
  if (auto sc = defOp<ox::ScatterElementsOp>(dense)) {
    if (normAxis(sc.getAxis(), 2) != 1 || sc.getReduction() != "none")
      return false;
    if (!isFill(m, sc.getData(), 0.0))
      return m.fail("the routing matrix is scattered into something other than zeros");
    m.ops.insert(sc);
    ids = sc.getIndices();
    weights = sc.getUpdates();
    return true;
  }
  auto sum = defOp<ox::ReduceSumOp>(dense);
  auto axes = sum && sum.getAxes() ? constantInts(sum.getAxes()) : std::nullopt;
  if (!sum || sum.getKeepdims() != 0 || !axes || axes->size() != 1 || normAxis((*axes)[0], 3) != 1)
    return false;
  auto mul = defOp<ox::MulOp>(sum.getData());
  if (!mul)
    return false;
  for (int i = 0; i < 2; ++i) {
    Matcher trial = m;
    Value hot = mul->getOperand(i);
    while (auto c = trial.take<ox::CastOp>(hot))
      hot = c.getInput();
    auto eq = trial.take<ox::EqualOp>(hot);
    if (!eq)
      continue;
    Value idCol;
    for (int j = 0; j < 2 && !idCol; ++j) {
      auto r = constantInts(eq->getOperand(j));
      bool isRange = r && int64_t(r->size()) == e;
      for (int64_t x = 0; isRange && x < e; ++x)
        isRange = (*r)[x] == x;
      if (isRange)
        idCol = eq->getOperand(1 - j);
    }
    Value id = idCol ? trial.oneAxis<ox::UnsqueezeOp>(idCol, 2, 3) : Value();
    Value w = trial.oneAxis<ox::UnsqueezeOp>(mul->getOperand(1 - i), 2, 3);
    if (!id || !w)
      continue;
    trial.ops.insert(mul);
    trial.ops.insert(sum);
    m = trial;
    ids = id;
    weights = w;
    return true;
  }
  return false;
}

/// The routing of a top-k-sparse routing matrix [T, E] (matchSparseRoutingMatrix, then matchRouting on the
/// ids and weights it spreads); sets k.
bool matchRoutingMatrix(Matcher &m, Value dense, int64_t e, Experts &ex, Routing &r) {
  Value ids, weights;
  if (!matchSparseRoutingMatrix(m, dense, e, ids, weights))
    return m.fail("the experts are weighted by a routing matrix not known to be zero outside the top k (a "
                  "ScatterElements of the top-k weights into zeros, or a one-hot sum)");
  auto idsType = dyn_cast<RankedTensorType>(ids.getType());
  if (!idsType || idsType.getRank() != 2 || idsType.isDynamicDim(1))
    return m.fail("the routing matrix's top-k ids are not a [T, k] tensor");
  ex.k = idsType.getDimSize(1);
  return matchRouting(m, ids, weights, e, ex.k, r);
}

/// N when `ids` are provably in [0, N): the indices of a TopK over the last axis of [.., N] scores, or a
/// Concat along the last axis of ArgMaxes over it (PhiMoE's sparsemixer slots); -1 otherwise.
int64_t routerWidth(Value ids) {
  auto lastDim = [](Value v) {
    auto t = dyn_cast<RankedTensorType>(v.getType());
    return t && t.getRank() > 0 && !t.isDynamicDim(t.getRank() - 1) ? t.getShape().back() : int64_t(-1);
  };
  if (auto topk = defOp<ox::TopKOp>(ids))
    return ids == topk.getIndices() && normAxis(topk.getAxis(), rankOf(ids)) == rankOf(ids) - 1
               ? lastDim(topk.getX())
               : -1;
  auto cat = defOp<ox::ConcatOp>(ids);
  if (!cat || normAxis(cat.getAxis(), rankOf(ids)) != rankOf(ids) - 1)
    return -1;
  int64_t n = -1;
  for (Value slot : cat.getInputs()) {
    auto am = defOp<ox::ArgMaxOp>(slot);
    int64_t w =
        am && normAxis(am.getAxis(), rankOf(am.getData())) == rankOf(am.getData()) - 1 && am.getKeepdims()
            ? lastDim(am.getData())
            : -1;
    if (w < 0 || (n >= 0 && w != n))
      return -1;
    n = w;
  }
  return n;
}

/// The one-hot of the router's top-k ids whose hit list `nz` is: `NonZero(ReduceSum(one_hot(ids)) > 0)` with
/// the sum over every axis but the class one (so entry c is hit when some top-k id is c); null otherwise.
ox::OneHotOp hitExpertsOneHot(ox::NonZeroOp nz) {
  auto gt = defOp<ox::GreaterOp>(nz.getX());
  auto zero = gt ? constantInts(gt.getB()) : std::nullopt;
  auto sum = gt ? defOp<ox::ReduceSumOp>(gt.getA()) : ox::ReduceSumOp();
  if (!zero || zero->size() != 1 || (*zero)[0] != 0 || !sum || rankOf(sum.getResult()) != 1)
    return {};
  Value hot = sum.getData();
  auto axes = sum.getAxes() ? constantInts(sum.getAxes()) : std::nullopt;
  if (!axes || axes->size() != 2 || rankOf(hot) != 3)
    return {};
  int64_t classAxis = 3 - *normAxis((*axes)[0], 3) - *normAxis((*axes)[1], 3);
  if (auto t = defOp<ox::TransposeOp>(hot); t && t.getPerm()) {
    classAxis = cast<IntegerAttr>(t.getPermAttr()[classAxis]).getInt();
    hot = t.getData();
  }
  auto oh = defOp<ox::OneHotOp>(hot);
  auto values = oh ? constantInts(oh.getValues()) : std::nullopt;
  if (!oh || classAxis != 2 || normAxis(oh.getAxis(), 3) != 2 || !values || values->size() != 2 ||
      (*values)[0] != 0 || (*values)[1] <= 0)
    return {};
  return oh;
}

/// The expert a loop body computes: a constant, or the i-th of the experts a batch hits, read as
/// `Gather(Squeeze(Split(Transpose(NonZero(ReduceSum(one_hot(ids)) > 0)))[i]), 0)` (the TorchScript trace of
/// transformers' eager experts). With one piece of size 1 per expert of the router, every expert must be hit
/// for the Split to succeed, so the i-th hit is expert i; for any other input the traced graph fails.
std::optional<int64_t> expertIndex(Value v) {
  if (auto c = constantInts(v))
    return c->size() == 1 ? std::optional<int64_t>((*c)[0]) : std::nullopt;
  if (auto g = defOp<ox::GatherOp>(v)) {
    auto z = constantInts(g.getIndices());
    if (!z || z->size() != 1 || (*z)[0] != 0)
      return std::nullopt;
    v = g.getData();
  }
  while (isa_and_nonnull<ox::SqueezeOp, ox::UnsqueezeOp, ox::ReshapeOp>(v.getDefiningOp()))
    v = v.getDefiningOp()->getOperand(0);
  auto split = defOp<ox::SplitOp>(v);
  auto sizes = split && split.getSplit() ? constantInts(split.getSplit()) : std::nullopt;
  if (!sizes || !llvm::all_of(*sizes, [](int64_t x) { return x == 1; }))
    return std::nullopt;
  int64_t pieces = split->getNumResults(), piece = cast<OpResult>(v).getResultNumber();
  Value hit = split.getInput();
  int64_t axis = split.getAxis();
  if (auto t = defOp<ox::TransposeOp>(hit)) {
    hit = t.getData();
    axis = 1 - axis;
  }
  auto nz = defOp<ox::NonZeroOp>(hit);
  auto oh = nz ? hitExpertsOneHot(nz) : ox::OneHotOp();
  if (axis != 1 || !oh)
    return std::nullopt;
  if (routerWidth(oh.getIndices()) != pieces)
    return std::nullopt;
  return piece;
}

/// A linear layer of one expert: matchLinear, or `MatMul(x, W[e])` / `MatMul(x, Transpose(W[e]))` (+ a
/// constant bias, or its row B[e] of stacked [E, out] biases: then `bias` is B) with W a stacked [E, ., .]
/// constant and e an expertIndex.
std::optional<LinearMatch> matchExpertLinear(Value v) {
  if (auto l = matchLinear(v))
    return l;
  LinearMatch l;
  Value mmOut = v;
  std::optional<int64_t> biasIndex; // a stacked bias's row: Gather(B [E, out], e)
  if (auto add = defOp<ox::AddOp>(v))
    for (int i = 0; i < 2; ++i) {
      Value b = add->getOperand(i);
      auto gb = defOp<ox::GatherOp>(b);
      if (gb && gb.getAxis() == 0 && rankOf(gb.getData()) == 2 && matchPattern(gb.getData(), m_Constant()))
        biasIndex = expertIndex(gb.getIndices());
      if (!defOp<ox::MatMulOp>(add->getOperand(1 - i)) ||
          !((matchPattern(b, m_Constant()) && rankOf(b) == 1) || biasIndex))
        continue;
      l.bias = biasIndex ? gb.getData() : b;
      if (biasIndex)
        l.ops.push_back(gb);
      mmOut = add->getOperand(1 - i);
      l.ops.push_back(add);
      break;
    }
  auto mm = defOp<ox::MatMulOp>(mmOut);
  if (!mm)
    return std::nullopt;
  l.ops.push_back(mm);
  l.x = mm.getA();
  Value w = mm.getB();
  if (auto t = defOp<ox::TransposeOp>(w)) {
    auto perm = t.getPerm();
    if (!perm || perm->size() != 2 || cast<IntegerAttr>((*perm)[0]).getInt() != 1)
      return std::nullopt;
    l.weightIsOutIn = true;
    l.ops.push_back(t);
    w = t.getData();
  }
  auto g = defOp<ox::GatherOp>(w);
  auto st = g ? dyn_cast<RankedTensorType>(g.getData().getType()) : RankedTensorType();
  auto e = g ? expertIndex(g.getIndices()) : std::nullopt;
  if (!g || g.getAxis() != 0 || !e || !st || st.getRank() != 3 || !st.hasStaticShape() || *e < 0 ||
      *e >= st.getDimSize(0) || !matchPattern(stripReshapes(g.getData()), m_Constant()))
    return std::nullopt; // (DBRX views its [E * F, H] weights as [E, F, H]: a reshape of a constant)
  l.ops.push_back(g);
  l.weight = g.getData();
  l.stackIndex = *e;
  l.out = st.getDimSize(l.weightIsOutIn ? 1 : 2);
  l.in = st.getDimSize(l.weightIsOutIn ? 2 : 1);
  auto bt = l.bias ? cast<RankedTensorType>(l.bias.getType()) : RankedTensorType();
  if (biasIndex && (*biasIndex != *e || bt.getDimSize(0) != st.getDimSize(0) || bt.getDimSize(1) != l.out))
    return std::nullopt;
  if (l.bias && !biasIndex && bt.getNumElements() != l.out)
    return std::nullopt;
  return l;
}

/// One expert MLP on `tokens` from separate linear layers: down(g(gate(x)) * up(x)) or down(act(up(x))), or
/// with gate and up the two halves of one linear layer (`fusedGateUp`, in `layout`).
struct DenseExpert {
  LinearMatch gate, up, down;
  bool gated = false, fusedGateUp = false;
  moe::GatedLayout layout = moe::GatedLayout::block;
  moe::Activation act = moe::Activation::identity;
  double alpha = 1.0, beta = 0.0; ///< a fused gated activation's (Experts' meaning)
  std::optional<double> limit;
};
std::optional<DenseExpert> matchDenseExpert(Matcher &m, Value v, Value &tokens) {
  DenseExpert d;
  auto down = matchExpertLinear(v);
  if (!down)
    return std::nullopt;
  d.down = *down;
  Value h = down->x;
  Matcher trial = m;
  auto linearOf = [&](Value x) -> std::optional<LinearMatch> {
    auto l = matchExpertLinear(x);
    if (!l || (tokens && !sameData(l->x, tokens)))
      return std::nullopt;
    tokens = tokens ? tokens : l->x;
    return l;
  };
  { // The two halves of one linear layer, with any gated activation matchGated knows (GPT-OSS's too).
    Matcher t2 = trial;
    Experts facts;
    Value saved = tokens;
    Value u = matchGated(t2, h, facts);
    auto fl = u ? linearOf(u) : std::nullopt;
    if (fl && fl->out % 2 == 0) {
      trial = t2;
      d.up = *fl;
      d.gated = d.fusedGateUp = true;
      d.act = facts.act, d.layout = facts.layout, d.alpha = facts.alpha, d.beta = facts.beta,
      d.limit = facts.limit;
    } else {
      tokens = saved;
    }
  }
  if (auto mul = defOp<ox::MulOp>(h); mul && !d.gated) {
    for (int i = 0; i < 2 && !d.gated; ++i) {
      Matcher t2 = trial;
      double alpha = 1.0;
      Value g = matchSilu(t2, mul->getOperand(i), alpha);
      moe::Activation act = moe::Activation::swiglu;
      if (!g || alpha != 1.0) {
        auto gelu = t2.take<ox::GeluOp>(mul->getOperand(i));
        if (!gelu || gelu.getApproximate() == "tanh")
          continue;
        g = gelu.getX();
        act = moe::Activation::geglu;
      }
      Value saved = tokens;
      auto gl = linearOf(g);
      auto ul = gl ? linearOf(mul->getOperand(1 - i)) : std::nullopt;
      if (!gl || !ul) {
        tokens = saved;
        continue;
      }
      t2.ops.insert(mul);
      trial = t2;
      d.gate = *gl;
      d.up = *ul;
      d.gated = true;
      d.act = act;
    }
  }
  if (!d.gated) {
    Value in = matchPlainActivation(trial, h, d.act);
    auto ul = in ? linearOf(in) : std::nullopt;
    if (!ul)
      return std::nullopt;
    d.up = *ul;
  }
  for (const LinearMatch *l : {&d.gate, &d.up, &d.down})
    for (Operation *op : l->ops)
      trial.ops.insert(op);
  m = trial;
  return d;
}

/// `Slice(dense, [e], [e + 1], axes = [1])`: column e of the routing matrix. Returns dense, sets e.
Value matchColumn(Matcher &m, Value v, int64_t &e) {
  auto sl = defOp<ox::SliceOp>(v);
  if (!sl)
    return {};
  auto st = constantInts(sl.getStarts()), en = constantInts(sl.getEnds()), ax = constantInts(sl.getAxes()),
       sp = constantInts(sl.getSteps());
  if (!st || !en || !ax || !sp || st->size() != 1 || en->size() != 1 || ax->size() != 1 || sp->size() != 1 ||
      normAxis((*ax)[0], 2) != 1 || (*sp)[0] != 1 || (*en)[0] != (*st)[0] + 1 || (*st)[0] < 0)
    return {};
  m.ops.insert(sl);
  e = (*st)[0];
  return sl.getData();
}

/// `expert_out * column` of one term of the dense sum; sets e, dense and the expert.
bool matchDenseTerm(Matcher &m, Value term, int64_t &e, Value &dense, Value &tokens, DenseExpert &ex) {
  auto mul = defOp<ox::MulOp>(term);
  if (!mul)
    return false;
  for (int i = 0; i < 2; ++i) {
    Matcher trial = m;
    Value col = matchColumn(trial, mul->getOperand(i), e);
    if (!col || (dense && col != dense))
      continue;
    Value saved = tokens;
    auto d = matchDenseExpert(trial, mul->getOperand(1 - i), tokens);
    if (!d) {
      tokens = saved;
      m.fail("the expert weighted by routing column " + Twine(e) +
             " is not linear layers around an activation this compiler knows");
      continue;
    }
    trial.ops.insert(mul);
    m = trial;
    dense = col;
    ex = *d;
    return true;
  }
  return false;
}

/// True when `term` has the shape of a dense MoE term: a Mul by a column of a matrix.
bool isColumnTerm(Value term) {
  auto mul = defOp<ox::MulOp>(term);
  int64_t e;
  Matcher scratch;
  return mul && (matchColumn(scratch, mul->getOperand(0), e) || matchColumn(scratch, mul->getOperand(1), e));
}

/// A dense MoE sum rooted at `root` (the last Add of `acc + column_e * expert_e(x)` over all experts, `acc`
/// starting from zeros or the first term). Fills the experts' normal form (weights stacked into new
/// constants by `stack`) and the ids / weights the routing matrix spreads.
struct DenseMoE {
  Value tokens, dense;
  std::vector<DenseExpert> experts; ///< by expert index
};
bool matchDenseSum(Matcher &m, ox::AddOp root, DenseMoE &out) {
  std::vector<std::pair<int64_t, DenseExpert>> found;
  Value acc = root.getResult();
  while (auto add = defOp<ox::AddOp>(acc)) {
    bool took = false;
    std::string termWhy; // why a term shaped like one did not match
    for (int i = 0; i < 2 && !took; ++i) {
      Matcher trial = m;
      int64_t e;
      DenseExpert ex;
      Value dense = out.dense, tokens = out.tokens;
      if (!matchDenseTerm(trial, add->getOperand(i), e, dense, tokens, ex)) {
        if (termWhy.empty())
          termWhy = trial.why;
      } else {
        trial.ops.insert(add);
        m = trial;
        out.dense = dense;
        out.tokens = tokens;
        found.push_back({e, ex});
        acc = add->getOperand(1 - i);
        took = true;
      }
    }
    if (!took) {
      // A term that looks like one but whose expert is not understood: say so (at the outermost Add).
      if (found.empty() && !termWhy.empty())
        m.fail(termWhy);
      break;
    }
  }
  if (found.empty())
    return false;
  // The start: zeros or the first term itself.
  if (!isFill(m, acc, 0.0)) {
    int64_t e;
    DenseExpert ex;
    if (!matchDenseTerm(m, acc, e, out.dense, out.tokens, ex))
      return m.fail("the dense expert sum does not start from zeros or an expert term");
    found.push_back({e, ex});
  }
  int64_t n = int64_t(found.size());
  out.experts.assign(n, DenseExpert());
  SmallVector<bool> seen(n, false);
  for (auto &[e, ex] : found) {
    if (e >= n || seen[e])
      return m.fail("the dense sum's routing columns are not each of the " + Twine(n) + " experts once");
    seen[e] = true;
    out.experts[e] = ex;
  }
  return true;
}

/// A linear layer's bias as bytes: the constant, or its row of stacked [E, out] biases.
std::vector<char> biasBytes(const LinearMatch &l) {
  std::vector<char> bytes = constantBytes(l.bias);
  if (bytes.empty() || rankOf(l.bias) != 2 || l.stackIndex < 0)
    return bytes;
  size_t row = bytes.size() / size_t(cast<RankedTensorType>(l.bias.getType()).getDimSize(0));
  return std::vector<char>(bytes.begin() + l.stackIndex * row, bytes.begin() + (l.stackIndex + 1) * row);
}

/// Stacks the dense experts' linear layers into the op's fc1 [E, rows, H] (gate rows, then up rows) and fc2
/// [E, H, F], with their biases when every layer has one.
bool stackDenseExperts(OpBuilder &b, Location loc, const DenseMoE &d, Experts &ex, Matcher &m) {
  const DenseExpert &first = d.experts.front();
  int64_t e = d.experts.size(), h = first.up.in, f = first.fusedGateUp ? first.up.out / 2 : first.up.out,
          rows = first.gated ? 2 * f : f;
  bool bias1 = first.up.bias != nullptr, bias2 = first.down.bias != nullptr;
  for (const DenseExpert &x : d.experts) {
    if (x.gated != first.gated || x.act != first.act || x.fusedGateUp != first.fusedGateUp ||
        (x.fusedGateUp && x.layout != first.layout) || x.alpha != first.alpha || x.beta != first.beta ||
        x.limit != first.limit)
      return m.fail("the experts differ in activation or gated layout");
    bool sepGate = x.gated && !x.fusedGateUp;
    if (x.up.in != h || x.up.out != (x.fusedGateUp ? rows : f) ||
        (sepGate && (x.gate.in != h || x.gate.out != f)) || x.down.in != f || x.down.out != h)
      return m.fail("the experts' linear layers differ in shape");
    if ((x.up.bias != nullptr) != bias1 || (sepGate && (x.gate.bias != nullptr) != bias1) ||
        (x.down.bias != nullptr) != bias2)
      return m.fail("some experts have biases and others do not");
    for (const LinearMatch *l : {&x.gate, &x.up, &x.down})
      if (l->weight && !cast<RankedTensorType>(l->weight.getType()).getElementType().isF32())
        return m.fail("the experts' weights are not f32");
  }
  ex.act = first.act;
  ex.layout = first.fusedGateUp ? first.layout : moe::GatedLayout::block;
  ex.alpha = first.alpha, ex.beta = first.beta, ex.limit = first.limit;
  ex.tokens = d.tokens;
  // Expert x's layers are row x of the same stacked constants (a traced loop over stacked experts): those are
  // the op's weights as they are.
  auto stackedInOrder = [&](auto layer) {
    for (int64_t x = 0; x < e; ++x) {
      const LinearMatch &l = layer(d.experts[x]);
      const LinearMatch &l0 = layer(first);
      if (l.stackIndex != x || l.weight != l0.weight || l.weightIsOutIn != l0.weightIsOutIn ||
          cast<RankedTensorType>(l.weight.getType()).getDimSize(0) != e || l.bias != l0.bias ||
          (l.bias && rankOf(l.bias) != 2))
        return false;
    }
    return true;
  };
  if ((!first.gated || first.fusedGateUp) &&
      stackedInOrder([](const DenseExpert &x) -> const LinearMatch & { return x.up; }) &&
      stackedInOrder([](const DenseExpert &x) -> const LinearMatch & { return x.down; })) {
    auto constant = [&](Value w, StringRef name) { // a reshaped constant becomes one of its own
      if (matchPattern(w, m_Constant()))
        return w;
      return makeConstant(b, loc, cast<RankedTensorType>(w.getType()), constantBytes(stripReshapes(w)), name);
    };
    ex.fc1 = constant(first.up.weight, "expert_fc1");
    ex.fc1Transposed = !first.up.weightIsOutIn;
    ex.fc2 = constant(first.down.weight, "expert_fc2");
    ex.fc2Transposed = !first.down.weightIsOutIn;
    ex.fc1Bias = first.up.bias; // [E, rows] / [E, H] (stackedInOrder: stacked too)
    ex.fc2Bias = first.down.bias;
    return true;
  }
  std::vector<char> w1, w2, b1, b2;
  StackCache stacks;
  auto append = [](std::vector<char> &to, const std::vector<char> &bytes) {
    to.insert(to.end(), bytes.begin(), bytes.end());
  };
  for (const DenseExpert &x : d.experts) {
    if (x.gated && !x.fusedGateUp)
      append(w1, linearWeightOutIn(x.gate, &stacks));
    append(w1, linearWeightOutIn(x.up, &stacks));
    append(w2, linearWeightOutIn(x.down, &stacks));
    if (bias1) {
      if (x.gated && !x.fusedGateUp)
        append(b1, biasBytes(x.gate));
      append(b1, biasBytes(x.up));
    }
    if (bias2)
      append(b2, biasBytes(x.down));
  }
  auto f32 = b.getF32Type();
  if (int64_t(w1.size()) != e * rows * h * 4 || int64_t(w2.size()) != e * h * f * 4 ||
      (bias1 && int64_t(b1.size()) != e * rows * 4) || (bias2 && int64_t(b2.size()) != e * h * 4))
    return m.fail("the dense experts' weights or biases are not readable f32 constants");
  ex.fc1 = makeConstant(b, loc, RankedTensorType::get({e, rows, h}, f32), w1, "expert_fc1");
  ex.fc2 = makeConstant(b, loc, RankedTensorType::get({e, h, f}, f32), w2, "expert_fc2");
  if (bias1)
    ex.fc1Bias = makeConstant(b, loc, RankedTensorType::get({e, rows}, f32), b1, "expert_fc1_bias");
  if (bias2)
    ex.fc2Bias = makeConstant(b, loc, RankedTensorType::get({e, h}, f32), b2, "expert_fc2_bias");
  return true;
}

// ---- Loop forms: per expert, its tokens gathered, run, weighted and scatter-added -------------------------

/// A row of NonZero(mask)'s [rank, n] output: the coordinate `row` of each nonzero.
struct NzCoord {
  Operation *nz = nullptr;
  int64_t row = -1;
  bool operator==(const NzCoord &o) const { return nz == o.nz && row == o.row; }
};

/// `v` (as [n] or [n, 1]) as one coordinate of a NonZero's output: Gather(nz, r) / Slice(nz, r:r+1) / Split
/// piece r along its first axis, or the same along the second axis of Transpose(nz).
std::optional<NzCoord> matchNzCoord(Matcher &m, Value v) {
  v = m.peelViews(v);
  Operation *op = v ? v.getDefiningOp() : nullptr;
  Value from;
  int64_t axis = -1, row = -1;
  if (auto g = dyn_cast_or_null<ox::GatherOp>(op)) {
    auto r = constantInts(g.getIndices());
    if (!r || r->size() != 1)
      return std::nullopt;
    from = g.getData(), axis = g.getAxis(), row = (*r)[0];
  } else if (auto sl = dyn_cast_or_null<ox::SliceOp>(op)) {
    auto st = constantInts(sl.getStarts()), en = constantInts(sl.getEnds()), ax = constantInts(sl.getAxes()),
         sp = constantInts(sl.getSteps());
    if (!st || !en || !ax || !sp || st->size() != 1 || ax->size() != 1 || (*sp)[0] != 1 ||
        (*en)[0] != (*st)[0] + 1)
      return std::nullopt;
    from = sl.getData(), axis = (*ax)[0], row = (*st)[0];
  } else if (auto sp = dyn_cast_or_null<ox::SplitOp>(op)) {
    auto sizes = sp.getSplit() ? constantInts(sp.getSplit()) : std::nullopt;
    if (!sizes || !llvm::all_of(*sizes, [](int64_t x) { return x == 1; }))
      return std::nullopt;
    from = sp.getInput(), axis = sp.getAxis(), row = cast<OpResult>(v).getResultNumber();
  } else {
    return std::nullopt;
  }
  auto rowAxis = normAxis(axis, 2);
  if (!rowAxis || rankOf(from) != 2)
    return std::nullopt;
  Operation *transpose = nullptr;
  if (auto t = defOp<ox::TransposeOp>(from)) {
    transpose = t;
    from = t.getData();
    *rowAxis = 1 - *rowAxis;
  }
  auto nz = defOp<ox::NonZeroOp>(from);
  if (!nz || *rowAxis != 0 || row < 0 || row >= 2)
    return std::nullopt;
  m.ops.insert(op);
  if (transpose)
    m.ops.insert(transpose);
  m.ops.insert(nz);
  return NzCoord{nz, row};
}

/// The mask a NonZero reads, as `ids == e` over the router's [T, k] top-k ids: `Equal(ids, e)`, or the
/// expert's plane `Gather(Transpose(one_hot(ids)), e)` of the one-hot (OneHot, or Equal(Unsqueeze(ids, -1),
/// [0..E))). Sets e, ids, and which of the mask's two axes is the token's (the other is the slot's).
bool matchExpertMask(Matcher &m, Value mask, int64_t &e, Value &ids, int64_t &tokenAxis) {
  while (auto c = m.take<ox::CastOp>(mask))
    mask = c.getInput();
  if (auto eq = defOp<ox::EqualOp>(mask)) {
    for (int i = 0; i < 2; ++i)
      if (auto x = expertIndex(eq->getOperand(i)); x && rankOf(eq->getOperand(1 - i)) == 2) {
        m.ops.insert(eq);
        e = *x, ids = eq->getOperand(1 - i), tokenAxis = 0;
        return true;
      }
    return false;
  }
  auto g = defOp<ox::GatherOp>(mask);
  auto x = g ? expertIndex(g.getIndices()) : std::nullopt;
  auto t = g ? defOp<ox::TransposeOp>(g.getData()) : ox::TransposeOp();
  if (g && !x && t)
    return m.fail("a loop body's expert is not known at compile time (the i-th expert an input hits, with "
                  "fewer bodies than experts: a trace of the experts its example hit)");
  if (!x || g.getAxis() != 0 || !t || !t.getPerm() || t.getPerm()->size() != 3)
    return false;
  SmallVector<int64_t> perm;
  for (Attribute a : t.getPermAttr())
    perm.push_back(cast<IntegerAttr>(a).getInt());
  if (perm[0] != 2)
    return false;
  Matcher trial = m;
  Value hot = t.getData();
  while (auto c = trial.take<ox::CastOp>(hot))
    hot = c.getInput();
  if (auto oh = trial.take<ox::OneHotOp>(hot)) {
    auto values = constantInts(oh.getValues());
    if (normAxis(oh.getAxis(), 3) != 2 || !values || values->size() != 2 || (*values)[0] != 0 ||
        (*values)[1] == 0)
      return false;
    ids = oh.getIndices();
  } else if (auto eq = trial.take<ox::EqualOp>(hot)) {
    for (int i = 0; i < 2 && !ids; ++i) {
      auto r = constantInts(eq->getOperand(i));
      bool isRange = r && !r->empty();
      for (size_t c = 0; isRange && c < r->size(); ++c)
        isRange = (*r)[c] == int64_t(c);
      if (isRange)
        ids = trial.oneAxis<ox::UnsqueezeOp>(eq->getOperand(1 - i), 2, 3);
    }
  }
  if (!ids || rankOf(ids) != 2)
    return false;
  trial.ops.insert(g);
  trial.ops.insert(t);
  m = trial;
  e = *x;
  tokenAxis = perm[1] == 0 ? 0 : 1;
  return true;
}

/// The rows of `x` at the token coordinate: Gather(x, tok) or GatherND(x', Unsqueeze(tok, -1)) with x' a view
/// of x keeping its token axis first. Sets x and the coordinate.
bool matchRows(Matcher &m, Value v, Value &x, NzCoord &tok) {
  v = m.peelViews(v);
  Value data, idx;
  bool leadingUnits = false;
  if (auto g = m.take<ox::GatherOp>(v)) {
    // Along the first axis that is not a unit one (`x[None, tok]` gathers along axis 1 of [1, T, H]).
    auto dt = dyn_cast<RankedTensorType>(g.getData().getType());
    auto axis = dt ? normAxis(g.getAxis(), dt.getRank()) : std::nullopt;
    if (!axis || rankOf(g.getIndices()) != 1)
      return false;
    for (int64_t a = 0; a < *axis; ++a)
      if (dt.getDimSize(a) != 1)
        return false;
    data = g.getData(), idx = g.getIndices();
    leadingUnits = *axis > 0; // dropped by peelViews, so that the token axis is first
  } else if (auto g = m.take<ox::GatherNDOp>(v)) {
    auto it = dyn_cast<RankedTensorType>(g.getIndices().getType());
    if (g.getBatchDims() != 0 || !it || it.getRank() != 2 || it.getDimSize(1) != 1)
      return false;
    data = g.getData(), idx = g.getIndices();
  } else {
    return false;
  }
  auto dt = dyn_cast<RankedTensorType>(data.getType());
  if (!dt || dt.getRank() < 2 || (!leadingUnits && dt.getDimSize(0) == 1))
    return false; // its first axis must be the tokens'
  x = m.peelViews(data, 2);
  auto c = matchNzCoord(m, idx);
  auto xt = dyn_cast<RankedTensorType>(x.getType());
  // x [T, H] and the gathered view hold rows of the same length H (every other axis of the view a unit one).
  int64_t units = 0;
  for (int64_t d : dt.getShape())
    units += d == 1;
  if (!c || !xt || xt.getRank() != 2 || xt.isDynamicDim(1) || xt.getDimSize(1) != dt.getShape().back() ||
      units != dt.getRank() - 2 + (dt.getShape().back() == 1))
    return false;
  tok = *c;
  return true;
}

/// Each gathered token's routing weight, `weights[tok, slot]`: GatherND(w', Concat(tok, slot)) or
/// Gather(Flatten(w'), slot + tok * k) with w' a view of the [T, k] weights. Sets the weights.
bool matchSlotWeight(Matcher &m, Value v, NzCoord tok, NzCoord slot, Value &weights) {
  v = m.peelViews(v);
  Value data;
  if (auto g = m.take<ox::GatherNDOp>(v)) {
    auto cat = m.take<ox::ConcatOp>(g.getIndices());
    if (g.getBatchDims() != 0 || !cat || cat->getNumOperands() != 2 || normAxis(cat.getAxis(), 2) != 1)
      return false;
    auto a = matchNzCoord(m, cat->getOperand(0)), b = matchNzCoord(m, cat->getOperand(1));
    if (!a || !b || !(*a == tok) || !(*b == slot))
      return false;
    data = g.getData();
  } else if (auto g = m.take<ox::GatherOp>(v)) {
    auto add = m.take<ox::AddOp>(g.getIndices());
    if (g.getAxis() != 0 || !add)
      return false;
    data = g.getData();
    auto flat = dyn_cast<RankedTensorType>(data.getType()); // [T * k] or [T * k, 1]
    if (!flat || flat.getRank() > 2 || (flat.getRank() == 2 && flat.getDimSize(1) != 1) ||
        !isa_and_nonnull<ox::FlattenOp, ox::ReshapeOp>(data.getDefiningOp()))
      return false;
    m.ops.insert(data.getDefiningOp());
    data = data.getDefiningOp()->getOperand(0);
    Value w2 = m.peelViews(data, 2);
    auto wt = dyn_cast<RankedTensorType>(w2.getType());
    if (!wt || wt.getRank() != 2 || wt.isDynamicDim(1))
      return false;
    bool ok = false;
    for (int i = 0; i < 2 && !ok; ++i) {
      auto mul = defOp<ox::MulOp>(add->getOperand(1 - i));
      auto s = matchNzCoord(m, add->getOperand(i));
      if (!mul || !s || !(*s == slot))
        continue;
      for (int j = 0; j < 2 && !ok; ++j) {
        auto t = matchNzCoord(m, mul->getOperand(j));
        auto k = ox::staticIntValue(mul->getOperand(1 - j));
        ok = t && *t == tok && k && k->size() == 1 && (*k)[0] == wt.getDimSize(1);
      }
      if (ok)
        m.ops.insert(mul);
    }
    if (!ok)
      return false;
  } else {
    return false;
  }
  weights = m.peelViews(data, 2);
  // The indexed view keeps w's [T, k] as its leading axes (the rest unit ones).
  auto wt = dyn_cast<RankedTensorType>(weights.getType()), vt = dyn_cast<RankedTensorType>(data.getType());
  if (!wt || wt.getRank() != 2 || wt.isDynamicDim(1) || !vt)
    return false;
  if (isa_and_nonnull<ox::GatherNDOp>(v.getDefiningOp()))
    for (int64_t a = 1; a < vt.getRank(); ++a)
      if (vt.getDimSize(a) != (a == 1 ? wt.getDimSize(1) : 1))
        return false;
  return true;
}

/// `Expand(u, shape)` that leaves `u` ([n, H]) as it is: the shape is that of one row, Shape(Slice(.., [0],
/// [1], axes [0] ..)), as TorchScript's index_add writes it. Returns u, or v itself.
Value peelRowExpand(Matcher &m, Value v) {
  auto ex = defOp<ox::ExpandOp>(v);
  auto sh = ex ? defOp<ox::ShapeOp>(ex.getShape()) : ox::ShapeOp();
  auto sl = sh ? defOp<ox::SliceOp>(sh.getData()) : ox::SliceOp();
  if (!sl || rankOf(ex.getInput()) != 2 || ex.getType() != ex.getInput().getType())
    return v;
  auto st = constantInts(sl.getStarts()), en = constantInts(sl.getEnds()), ax = constantInts(sl.getAxes());
  bool oneRow = false;
  for (size_t i = 0; st && en && ax && i < ax->size() && i < st->size() && i < en->size(); ++i)
    if (normAxis((*ax)[i], 2) == 0 && (*st)[i] == 0 && (*en)[i] == 1)
      oneRow = true;
  auto slt = dyn_cast<RankedTensorType>(sl.getType());
  if (!oneRow || !slt || slt.getRank() != 2 ||
      slt.getDimSize(1) != cast<RankedTensorType>(v.getType()).getDimSize(1))
    return v;
  m.ops.insert(ex);
  m.ops.insert(sh);
  m.ops.insert(sl);
  return ex.getInput();
}

/// One scatter-add of a loop body into `acc`: ScatterND(acc, Unsqueeze(tok, -1), upd, add),
/// ScatterElements(acc, Expand(Unsqueeze(tok, 1)), upd, axis 0, add), or (TorchScript's index_add)
/// Add(acc, ScatterElements(zeros, Expand(Unsqueeze(tok, 1)), Expand(upd), axis 0)) — the tokens one expert
/// takes are distinct (top-k ids are), so that scatter writes each row once. Sets acc, upd and tok.
bool matchScatterStep(Matcher &m, Value v, Value &acc, Value &upd, NzCoord &tok) {
  auto column = [&](Value idx) -> std::optional<NzCoord> {
    auto ex = defOp<ox::ExpandOp>(idx); // the token column [n, 1] broadcast over the row
    auto ct = ex ? dyn_cast<RankedTensorType>(ex.getInput().getType()) : RankedTensorType();
    if (!ct || ct.getRank() != 2 || ct.getDimSize(1) != 1)
      return std::nullopt;
    m.ops.insert(ex);
    return matchNzCoord(m, ex.getInput());
  };
  if (auto sc = defOp<ox::ScatterNDOp>(v)) {
    auto it = dyn_cast<RankedTensorType>(sc.getIndices().getType());
    if (sc.getReduction() != "add" || !it || it.getRank() != 2 || it.getDimSize(1) != 1 ||
        rankOf(sc.getData()) != 2)
      return false;
    auto c = matchNzCoord(m, sc.getIndices());
    if (!c)
      return false;
    m.ops.insert(sc);
    acc = sc.getData(), upd = sc.getUpdates(), tok = *c;
    return true;
  }
  ox::ScatterElementsOp sc = defOp<ox::ScatterElementsOp>(v);
  Operation *add = nullptr;
  if (!sc) {
    auto a = defOp<ox::AddOp>(v);
    for (int i = 0; a && i < 2 && !sc; ++i)
      if (auto s = defOp<ox::ScatterElementsOp>(a->getOperand(i)); s && s.getReduction() == "none") {
        Matcher trial = m;
        // Zeros of the accumulator's own shape (ConstantOfShape(Shape(acc))), so the Add does not broadcast.
        auto fill = defOp<ox::ConstantOfShapeOp>(s.getData());
        auto shape = fill ? defOp<ox::ShapeOp>(fill.getInput()) : ox::ShapeOp();
        if (!shape || shape.getData() != a->getOperand(1 - i) || !isFill(trial, s.getData(), 0.0))
          continue;
        m = trial;
        sc = s, add = a, acc = a->getOperand(1 - i);
      }
    if (!sc)
      return false;
  } else {
    if (sc.getReduction() != "add")
      return false;
    acc = sc.getData();
  }
  if (normAxis(sc.getAxis(), 2) != 0 || rankOf(sc.getUpdates()) != 2)
    return false;
  auto c = column(sc.getIndices());
  if (!c)
    return false;
  m.ops.insert(sc);
  if (add)
    m.ops.insert(add);
  upd = peelRowExpand(m, sc.getUpdates());
  tok = *c;
  return true;
}

/// A loop-form MoE rooted at the last scatter-add: over every expert e, a body
///   (slot, tok) = NonZero(ids == e);  y = expert_e(x[tok]) * weights[tok, slot];  acc[tok] += y
/// starting from zeros. Fills the experts (stacked by stackDenseExperts), the ids and the weights.
struct LoopMoE {
  DenseMoE experts;
  Value ids, weights;
};
bool matchLoopSum(Matcher &m, Value root, LoopMoE &out) {
  std::vector<std::pair<int64_t, DenseExpert>> found;
  Value acc = root;
  while (true) {
    Matcher trial = m;
    Value next, upd;
    NzCoord tok;
    if (!matchScatterStep(trial, acc, next, upd, tok))
      break;
    // From here on the candidate is a loop body: say why it is not one.
    auto mul = trial.take<ox::MulOp>(upd);
    if (!mul)
      return m.fail(
          "a per-expert scatter-add adds something other than expert outputs times routing weights");
    int64_t e = -1, tokenAxis = 0;
    Value ids;
    if (!matchExpertMask(trial, cast<ox::NonZeroOp>(tok.nz).getX(), e, ids, tokenAxis))
      return m.fail(trial.why.empty()
                        ? "a per-expert scatter-add's tokens are not those whose top-k ids equal one "
                          "expert"
                        : trial.why);
    if (tok.row != tokenAxis)
      return m.fail("a per-expert scatter-add writes at the slot coordinate of its mask, not the token's");
    NzCoord slot{tok.nz, 1 - tok.row};
    bool matched = false;
    for (int i = 0; i < 2 && !matched; ++i) {
      Matcher t2 = trial;
      Value weights, x, tokens;
      NzCoord rowsAt;
      if (!matchSlotWeight(t2, mul->getOperand(i), tok, slot, weights))
        continue;
      Value y = mul->getOperand(1 - i);
      for (auto r = defOp<ox::ReshapeOp>(y); r && r.getData().getType() == r.getType() && rankOf(y) == 2;
           r = defOp<ox::ReshapeOp>(y)) { // `.view(-1, H)` of an [n, H] output
        t2.ops.insert(r);
        y = r.getData();
      }
      auto d = matchDenseExpert(t2, y, tokens);
      if (!d)
        return m.fail("expert " + Twine(e) +
                      "'s body is not linear layers around an activation this compiler "
                      "knows");
      if (!matchRows(t2, tokens, x, rowsAt) || !(rowsAt == tok))
        return m.fail("expert " + Twine(e) + " does not read the rows of the tokens its mask selects");
      if ((out.ids && out.ids != ids) || (out.weights && !sameData(out.weights, weights)) ||
          (out.experts.tokens && !sameData(out.experts.tokens, x)))
        return m.fail("the loop's bodies read different ids, weights or tokens");
      out.ids = ids, out.weights = weights, out.experts.tokens = x;
      found.push_back({e, *d});
      trial = t2;
      matched = true;
    }
    if (!matched)
      return m.fail("expert " + Twine(e) +
                    "'s output is not weighted by its routing weight weights[tok, slot]");
    m = trial;
    acc = next;
  }
  if (found.empty())
    return false;
  if (!isFill(m, acc, 0.0))
    return m.fail("the per-expert scatter-adds do not start from zeros");
  // (of the tokens' shape, as zeros_like writes them: here, as far as the types say)
  auto zt = dyn_cast<RankedTensorType>(acc.getType());
  auto tt = cast<RankedTensorType>(out.experts.tokens.getType());
  if (!zt || zt.getRank() != 2 || zt.getDimSize(1) != tt.getDimSize(1) ||
      (!zt.isDynamicDim(0) && !tt.isDynamicDim(0) && zt.getDimSize(0) != tt.getDimSize(0)))
    return m.fail("the per-expert scatter-adds start from zeros of another shape than the tokens'");
  int64_t n = found.size();
  auto it = dyn_cast<RankedTensorType>(out.ids.getType());
  int64_t width = routerWidth(out.ids);
  if (width != n)
    return m.fail("the loop has " + Twine(n) + " expert bodies for a router of " +
                  (width > 0 ? Twine(width) : Twine("unknown")) + " experts");
  out.experts.experts.assign(n, DenseExpert());
  SmallVector<bool> seen(n, false);
  for (auto &[e, ex] : found) {
    if (e < 0 || e >= n || seen[e])
      return m.fail("the loop's bodies are not each of the " + Twine(n) + " experts once");
    seen[e] = true;
    out.experts.experts[e] = ex;
  }
  if (!it || it.getRank() != 2 || it.isDynamicDim(1))
    return m.fail("the loop's top-k ids are not a [T, k] tensor");
  return true;
}

/// True when `v`'s result is the accumulator another scatter-add step continues (not the outermost step).
bool continuedByScatter(Value v) {
  for (Operation *user : v.getUsers()) {
    if (auto sc = dyn_cast<ox::ScatterNDOp>(user); sc && sc.getData() == v && sc.getReduction() == "add")
      return true;
    if (auto sc = dyn_cast<ox::ScatterElementsOp>(user);
        sc && sc.getData() == v && sc.getReduction() == "add")
      return true;
    if (auto add = dyn_cast<ox::AddOp>(user))
      if (defOp<ox::ScatterElementsOp>(otherOperand(add, v)))
        return true;
  }
  return false;
}

// ---- The rewrite -----------------------------------------------------------------------------------------

/// Replaces `root` by one moe.sparse_moe of the matched normal form and erases the rest of the pattern.
LogicalResult raise(PatternRewriter &rewriter, Operation *root, const Experts &ex, const Routing &r,
                    Matcher &m, StringRef source) {
  Location loc = root->getLoc();
  MLIRContext *ctx = rewriter.getContext();
  // Router logits as [T, N].
  auto lt = cast<RankedTensorType>(r.logits.getType());
  int64_t n = lt.getShape().back();
  moe::SparseMoEOperands operands;
  operands.input = ex.tokens;
  operands.router = r.logits;
  if (lt.getRank() != 2) {
    auto i64 = RankedTensorType::get({2}, rewriter.getI64Type());
    Value shape =
        rewriter.create<ox::ConstantOp>(loc, DenseIntElementsAttr::get(i64, ArrayRef<int64_t>{-1, n}));
    int64_t t = cast<RankedTensorType>(ex.tokens.getType()).getDimSize(0);
    operands.router = rewriter.create<ox::ReshapeOp>(loc, RankedTensorType::get({t, n}, lt.getElementType()),
                                                     r.logits, shape, rewriter.getI64IntegerAttr(0));
  }
  operands.selectionBias = r.selectionBias;
  if (r.selectionBias && rankOf(r.selectionBias) == 2) { // [1, N]: the same bytes as [N]
    auto bt = cast<RankedTensorType>(r.selectionBias.getType());
    operands.selectionBias =
        makeConstant(rewriter, loc, RankedTensorType::get({bt.getDimSize(1)}, bt.getElementType()),
                     constantBytes(r.selectionBias), "selection_bias");
  }
  operands.fc1 = ex.fc1Transposed ? transposedWeight(rewriter, loc, ex.fc1) : ex.fc1;
  operands.fc2 = ex.fc2Transposed ? transposedWeight(rewriter, loc, ex.fc2) : ex.fc2;
  if (!operands.fc1 || !operands.fc2)
    return rewriter.notifyMatchFailure(root, "the expert weights are not readable constants");
  operands.fc1Bias = ex.fc1Bias;
  operands.fc2Bias = ex.fc2Bias;
  SmallVector<NamedAttribute> attrs{
      rewriter.getNamedAttr("k", rewriter.getI64IntegerAttr(ex.k)),
      rewriter.getNamedAttr("router_kind", moe::RouterKindAttr::get(ctx, moe::RouterKind::logits)),
      rewriter.getNamedAttr("gate", moe::GateFuncAttr::get(ctx, r.gate)),
      rewriter.getNamedAttr("normalize", rewriter.getBoolAttr(r.normalize)),
      rewriter.getNamedAttr("scale", rewriter.getF32FloatAttr(r.scale)),
      rewriter.getNamedAttr("activation", moe::ActivationAttr::get(ctx, ex.act)),
      rewriter.getNamedAttr("moe.source", rewriter.getStringAttr(source))};
  if (ex.layout != moe::GatedLayout::block)
    attrs.push_back(rewriter.getNamedAttr("gated_layout", moe::GatedLayoutAttr::get(ctx, ex.layout)));
  if (ex.alpha != 1.0)
    attrs.push_back(rewriter.getNamedAttr("activation_alpha", rewriter.getF32FloatAttr(ex.alpha)));
  if (ex.beta != 0.0)
    attrs.push_back(rewriter.getNamedAttr("activation_beta", rewriter.getF32FloatAttr(ex.beta)));
  if (ex.limit)
    attrs.push_back(rewriter.getNamedAttr("activation_limit", rewriter.getF32FloatAttr(*ex.limit)));
  if (r.zeroExperts)
    attrs.push_back(rewriter.getNamedAttr("zero_experts", rewriter.getI64IntegerAttr(r.zeroExperts)));
  if (r.jitterEps)
    attrs.push_back(rewriter.getNamedAttr("jitter_eps", rewriter.getF32FloatAttr(*r.jitterEps)));
  if (r.groups > 1) {
    attrs.push_back(rewriter.getNamedAttr("expert_groups", rewriter.getI64IntegerAttr(r.groups)));
    attrs.push_back(rewriter.getNamedAttr("group_topk", rewriter.getI64IntegerAttr(r.groupTopk)));
    if (r.groupScore != moe::GroupScore::top2_sum)
      attrs.push_back(rewriter.getNamedAttr("group_score", moe::GroupScoreAttr::get(ctx, r.groupScore)));
  }
  // The op's result is [T, H]; a root of another shape (the sum over experts of [E, B, S, H] outputs) gets it
  // back through a Reshape to its static dims (-1 for the one dynamic dim).
  auto rootT = cast<RankedTensorType>(root->getResult(0).getType());
  auto tokT = cast<RankedTensorType>(ex.tokens.getType());
  auto outT = RankedTensorType::get({tokT.getDimSize(0), tokT.getDimSize(1)}, rootT.getElementType());
  SmallVector<int64_t> rootShape(rootT.getShape());
  if (rootT != outT && (rootT.getNumDynamicDims() > 1 || rootShape.back() != tokT.getDimSize(1)))
    return rewriter.notifyMatchFailure(root, "the layer's output cannot be reshaped from [T, H]");
  // A verifier error in a pattern would fail the compile: it becomes the near miss's reason instead.
  moe::SparseMoEOp op = moe::buildSparseMoE(rewriter, loc, outT, operands, attrs);
  std::string invalid;
  {
    ScopedDiagnosticHandler capture(ctx, [&](Diagnostic &d) {
      if (invalid.empty())
        invalid = d.str();
      return success();
    });
    if (failed(mlir::verify(op)) && invalid.empty())
      invalid = "the raised op does not verify";
  }
  if (!invalid.empty()) {
    rewriter.eraseOp(op);
    return rewriter.notifyMatchFailure(root, invalid);
  }
  Value result = op.getResult();
  if (rootT != outT) {
    for (int64_t &d : rootShape)
      d = ShapedType::isDynamic(d) ? -1 : d;
    auto i64 = RankedTensorType::get({int64_t(rootShape.size())}, rewriter.getI64Type());
    Value shape = rewriter.create<ox::ConstantOp>(loc, DenseIntElementsAttr::get(i64, rootShape));
    result = rewriter.create<ox::ReshapeOp>(loc, rootT, result, shape, rewriter.getI64IntegerAttr(0));
  }
  rewriter.replaceOp(root, result);
  m.ops.remove(root);
  eraseDeadOps(m.ops.getArrayRef(), &rewriter); // the rest of the pattern, users first
  return success();
}

/// The batched_mm form, rooted at the ReduceSum combining the k slots.
struct RaiseMoEBlock : OpRewritePattern<ox::ReduceSumOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(ox::ReduceSumOp root, PatternRewriter &rewriter) const override {
    Matcher m;
    Experts ex;
    Routing r;
    Value ids, weights;
    if (!matchExperts(m, root, ex, ids, weights)) {
      if (m.why.empty())
        return failure(); // not an expert combine at all
      return rewriter.notifyMatchFailure(root, m.why);
    }
    int64_t e = cast<RankedTensorType>(ex.fc1.getType()).getDimSize(0);
    if (!matchRouting(m, ids, weights, e, ex.k, r) || !checkClosed(m, root))
      return rewriter.notifyMatchFailure(root, m.why);
    return raise(rewriter, root, ex, r, m, "pytorch-batched-mm");
  }
};

/// The dense forms, rooted at the last Add of the sum over experts.
struct RaiseDenseMoE : OpRewritePattern<ox::AddOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(ox::AddOp root, PatternRewriter &rewriter) const override {
    // Only the outermost Add of the sum: an Add that another term continues is part of a larger candidate.
    for (Operation *user : root->getUsers())
      if (auto next = dyn_cast<ox::AddOp>(user); next && isColumnTerm(otherOperand(next, root.getResult())))
        return failure();
    Matcher m;
    DenseMoE d;
    if (!matchDenseSum(m, root, d))
      return m.why.empty() ? failure() : rewriter.notifyMatchFailure(root, m.why);
    int64_t e = d.experts.size();
    Experts ex;
    Routing r;
    if (!matchRoutingMatrix(m, d.dense, e, ex, r) || !checkClosed(m, root))
      return rewriter.notifyMatchFailure(root, m.why);
    if (rankOf(d.tokens) != 2)
      return rewriter.notifyMatchFailure(root, "the experts' tokens are not a 2-D [T, H] tensor");
    if (!stackDenseExperts(rewriter, root.getLoc(), d, ex, m))
      return rewriter.notifyMatchFailure(root, m.why);
    return raise(rewriter, root, ex, r, m, "dense");
  }
};

/// Every expert run by batched matmuls (stacked `[E, in, out]` weights, optional `[E, 1, out]` biases) on
/// every token, summed over experts, rooted at that ReduceSum (axis 0). A routing matrix R [T, E] that is
/// zero outside each token's top k weights either
///
///   the outputs (Optimum's GPT-OSS export):
///     out = ReduceSum(Reshape(act(Tile(x) @ W1 + b1) @ W2 + b2) * Unsqueeze(Reshape(Transpose(R))), [0])
///     with R = ScatterElements(zeros, ids, w): the op itself, for any k;
///   or the inputs (Llama-4):
///     out = ReduceSum(Reshape(act((Tile(x) * Reshape(Transpose(R), [-1, 1])) @ W1) @ W2), [0])
///     with R = Sigmoid(ScatterElements(full(-inf), ids, TopK(logits, k).values)). An expert not chosen reads
///     zeros and (no biases; act(0) = 0) adds nothing; with k = 1 that is one op over `x * sigmoid(top
///     value)` routed by the logits with a sigmoid gate renormalised over its one expert (weight w / w = 1).
///     k > 1 would weight each expert's input differently, which the op cannot say: not raised.
struct RaiseAllExpertsMoE : OpRewritePattern<ox::ReduceSumOp> {
  using OpRewritePattern::OpRewritePattern;

  static std::optional<SmallVector<int64_t>> perm(ox::TransposeOp t) {
    std::optional<ArrayAttr> attr = t.getPerm();
    if (!attr)
      return std::nullopt;
    SmallVector<int64_t> p;
    for (Attribute a : *attr)
      p.push_back(cast<IntegerAttr>(a).getInt());
    return p;
  }
  /// R from a column of its transpose: Reshape(Transpose(R, [1, 0])) (optionally Unsqueezed); returns R.
  static Value routingMatrixOf(Matcher &m, Value col) {
    if (auto u = defOp<ox::UnsqueezeOp>(col)) {
      m.ops.insert(u);
      col = u.getData();
    }
    auto tr = m.take<ox::TransposeOp>(m.peelReshapes(col));
    return tr && perm(tr) == SmallVector<int64_t>{1, 0} && rankOf(tr.getData()) == 2 ? tr.getData() : Value();
  }
  /// `Add(MatMul, b)` with b a constant per-expert bias, [E, N] or [E, 1, N]: returns the MatMul's result and
  /// sets b; `v` itself otherwise.
  static Value peelBatchedBias(Matcher &m, Value v, Value &bias) {
    auto add = defOp<ox::AddOp>(v);
    for (int i = 0; add && i < 2; ++i) {
      Value b = add->getOperand(i);
      auto bt = dyn_cast<RankedTensorType>(b.getType());
      if (!defOp<ox::MatMulOp>(add->getOperand(1 - i)) || !bt || !bt.hasStaticShape() ||
          !matchPattern(b, m_Constant()) ||
          !(bt.getRank() == 2 || (bt.getRank() == 3 && bt.getDimSize(1) == 1)))
        continue;
      m.ops.insert(add);
      bias = b;
      return add->getOperand(1 - i);
    }
    return v;
  }
  static bool biasFor(Value bias, int64_t e) {
    return !bias || cast<RankedTensorType>(bias.getType()).getDimSize(0) == e;
  }

  LogicalResult matchAndRewrite(ox::ReduceSumOp root, PatternRewriter &rewriter) const override {
    auto axes = root.getAxes() ? constantInts(root.getAxes()) : std::nullopt;
    if (root.getKeepdims() != 0 || !axes || axes->size() != 1 || (*axes)[0] != 0 ||
        rankOf(root.getData()) < 3)
      return failure();
    Matcher m;
    m.ops.insert(root);
    Value v = root.getData();
    // Output weighting: Mul(expert outputs, a column of R transposed).
    Value outR;
    if (auto mul = defOp<ox::MulOp>(v)) {
      for (int i = 0; i < 2 && !outR; ++i) {
        Matcher trial = m;
        if (Value r = routingMatrixOf(trial, mul->getOperand(i))) {
          trial.ops.insert(mul);
          m = trial;
          outR = r;
          v = mul->getOperand(1 - i);
        }
      }
    }
    v = m.peelReshapes(v);
    // Down projection of every expert: MatMul(h, W2 [E, F, H]) (+ b2).
    Value b2, b1;
    auto mm2 = m.take<ox::MatMulOp>(peelBatchedBias(m, v, b2));
    if (!mm2 || !matchPattern(mm2.getB(), m_Constant()) || rankOf(mm2.getB()) != 3)
      return failure(); // not a sum over batched experts
    int64_t e = cast<RankedTensorType>(mm2.getB().getType()).getDimSize(0);
    if (!biasFor(b2, e))
      return failure();
    Experts ex;
    Value upOut = matchGated(m, mm2.getA(), ex);
    if (!upOut && m.why.empty())
      upOut = matchPlainActivation(m, mm2.getA(), ex.act);
    if (!upOut)
      return rewriter.notifyMatchFailure(
          root, m.why.empty() ? "no activation this compiler knows between the expert projections" : m.why);
    auto mm1 = m.take<ox::MatMulOp>(peelBatchedBias(m, upOut, b1));
    if (!mm1 || !matchPattern(mm1.getB(), m_Constant()) || rankOf(mm1.getB()) != 3 ||
        cast<RankedTensorType>(mm1.getB().getType()).getDimSize(0) != e || !biasFor(b1, e))
      return rewriter.notifyMatchFailure(root,
                                         "the up projection is not a batched matmul by stacked weights");
    // The experts' input: Reshape(Tile(x, [E, 1]) (* a column of R transposed), [E, -1, H]).
    Value in = m.peelReshapes(mm1.getA());
    Value inR;
    if (auto mul = defOp<ox::MulOp>(in)) {
      for (int i = 0; i < 2 && !inR; ++i) {
        Matcher trial = m;
        if (Value r = routingMatrixOf(trial, mul->getOperand(i));
            r && defOp<ox::TileOp>(mul->getOperand(1 - i))) {
          trial.ops.insert(mul);
          m = trial;
          inR = r;
          in = mul->getOperand(1 - i);
        }
      }
    }
    auto tile = m.take<ox::TileOp>(in);
    auto reps = tile ? ox::staticIntValue(tile.getRepeats()) : std::nullopt; // TorchScript: from Shape(R)
    if (!tile || !reps || *reps != SmallVector<int64_t>{e, 1})
      return rewriter.notifyMatchFailure(root,
                                         "the experts' input is not the tokens repeated once per expert");
    Value tokens = tile.getInput();
    if (auto expand = defOp<ox::ExpandOp>(tokens)) { // Expand(x, [1, 1]): x itself
      auto shape = ox::staticIntValue(expand.getShape());
      if (shape && llvm::all_of(*shape, [](int64_t d) { return d == 1; })) {
        m.ops.insert(expand);
        tokens = expand.getInput();
      }
    }
    if (rankOf(tokens) != 2)
      return rewriter.notifyMatchFailure(root, "the experts' tokens are not a 2-D [T, H] tensor");
    if (bool(inR) == bool(outR))
      return rewriter.notifyMatchFailure(
          root, inR ? "the routing weights scale both the experts' inputs and outputs"
                    : "the experts' outputs are summed without routing weights");
    auto w1 = cast<RankedTensorType>(mm1.getB().getType()), w2 = cast<RankedTensorType>(mm2.getB().getType());
    bool gated = ex.act == moe::Activation::swiglu || ex.act == moe::Activation::geglu;
    int64_t h = w1.getDimSize(1), f = w2.getDimSize(1);
    if (w1.getDimSize(2) != (gated ? 2 * f : f) || w2.getDimSize(2) != h ||
        cast<RankedTensorType>(tokens.getType()).getDimSize(1) != h)
      return rewriter.notifyMatchFailure(root, "expert weight shapes do not chain");
    if (!w1.getElementType().isF32() || !w2.getElementType().isF32())
      return rewriter.notifyMatchFailure(root, "the expert weights are not f32");

    Routing rt;
    ox::TopKOp inputTopk;
    if (outR) {
      if (!matchRoutingMatrix(m, outR, e, ex, rt))
        return rewriter.notifyMatchFailure(root, m.why);
    } else {
      // R = Sigmoid(ScatterElements(full(-inf), ids, values)).
      auto sig = m.take<ox::SigmoidOp>(inR);
      auto sc = sig ? m.take<ox::ScatterElementsOp>(sig.getX()) : ox::ScatterElementsOp();
      inputTopk = sc ? defOp<ox::TopKOp>(sc.getIndices()) : ox::TopKOp();
      if (!inputTopk || sc.getUpdates() != inputTopk.getValues() ||
          sc.getIndices() != inputTopk.getIndices() || normAxis(sc.getAxis(), 2) != 1 ||
          !isFill(m, sc.getData(), -INFINITY))
        return rewriter.notifyMatchFailure(root,
                                           "the input weights are not a sigmoid of top-k logits scattered "
                                           "into -inf (zero outside the top k)");
      auto kk = constantInts(inputTopk.getK());
      rt.logits = inputTopk.getX();
      if (!kk || kk->size() != 1 ||
          normAxis(inputTopk.getAxis(), rankOf(rt.logits)) != rankOf(rt.logits) - 1 ||
          inputTopk.getLargest() != 1 || rankOf(rt.logits) != 2)
        return rewriter.notifyMatchFailure(root,
                                           "the routing top-k is not the largest k over the experts' axis");
      if ((*kk)[0] != 1)
        return rewriter.notifyMatchFailure(
            root, "routing weights multiply the experts' inputs with k = " + Twine((*kk)[0]) +
                      " > 1, which moe.sparse_moe cannot express");
      if (b1 || b2 || ex.beta != 0.0 || ex.limit)
        return rewriter.notifyMatchFailure(root,
                                           "input-weighted experts with biases, up + beta or clamps (an "
                                           "expert not chosen would not add zero)");
      if (cast<RankedTensorType>(rt.logits.getType()).getShape().back() != e)
        return rewriter.notifyMatchFailure(root,
                                           "the router and the expert weights disagree on the expert count");
      ex.k = 1;
      rt.gate = moe::GateFunc::sigmoid;
      rt.normalize = true; // w / w = 1: the weight is already in the input
    }
    // (The input-weighted form's TopK stays: its values scale the input.)
    if (!checkClosed(m, root))
      return rewriter.notifyMatchFailure(root, m.why);

    Location loc = root.getLoc();
    ex.tokens = tokens;
    if (inputTopk) { // x * sigmoid(top value): the one chosen expert's input
      auto colT = cast<RankedTensorType>(inputTopk.getValues().getType());
      Value sv = rewriter.create<ox::SigmoidOp>(loc, colT, inputTopk.getValues());
      ex.tokens = rewriter.create<ox::MulOp>(loc, tokens.getType(), tokens, sv);
    }
    ex.fc1 = mm1.getB();
    ex.fc2 = mm2.getB();
    ex.fc1Transposed = ex.fc2Transposed = true;
    auto asMatrix = [&](Value b, StringRef name) -> Value {
      if (!b)
        return {};
      auto bt = cast<RankedTensorType>(b.getType());
      return makeConstant(rewriter, loc,
                          RankedTensorType::get({e, bt.getShape().back()}, bt.getElementType()),
                          constantBytes(b), name);
    };
    ex.fc1Bias = asMatrix(b1, "expert_fc1_bias");
    ex.fc2Bias = asMatrix(b2, "expert_fc2_bias");
    return raise(rewriter, root, ex, rt, m, inputTopk ? "input-weighted (Llama-4)" : "all experts (batched)");
  }
};

/// The loop forms (Optimum's and hand-written loops over the experts, TorchScript's trace of transformers'
/// eager experts when it holds every expert), rooted at the last scatter-add.
template <typename RootOp> struct RaiseLoopMoE : OpRewritePattern<RootOp> {
  using OpRewritePattern<RootOp>::OpRewritePattern;

  LogicalResult matchAndRewrite(RootOp root, PatternRewriter &rewriter) const override {
    if (continuedByScatter(root.getResult()))
      return failure();
    Matcher m;
    LoopMoE loop;
    if (!matchLoopSum(m, root.getResult(), loop))
      return m.why.empty() ? failure() : rewriter.notifyMatchFailure(root, m.why);
    Experts ex;
    Routing r;
    ex.k = cast<RankedTensorType>(loop.ids.getType()).getDimSize(1);
    int64_t e = loop.experts.experts.size();
    if (!matchRouting(m, loop.ids, loop.weights, e, ex.k, r) || !checkClosed(m, root))
      return rewriter.notifyMatchFailure(root, m.why);
    if (!stackDenseExperts(rewriter, root.getLoc(), loop.experts, ex, m))
      return rewriter.notifyMatchFailure(root, m.why);
    return raise(rewriter, root, ex, r, m, "loop over experts");
  }
};

/// Keeps the last reason each pattern root did not match, for the remarks.
struct FailureReasons : RewriterBase::Listener {
  llvm::DenseMap<Location, std::string> why;
  void notifyMatchFailure(Location loc, function_ref<void(Diagnostic &)> reason) override {
    Diagnostic diag(loc, DiagnosticSeverity::Remark);
    reason(diag);
    why[loc] = diag.str();
  }
};

/// A traced loop over the experts a batch hits (TorchScript's export of eager experts: `expert_hit =
/// (one_hot(ids).sum(...) > 0).nonzero()`, then one unrolled body per expert the example hit). Holding fewer
/// bodies than the router has experts, the graph's meaning depends on which experts an input hits, so it is
/// not raised; the remark says why and what to do. With a body per expert it is the loop form (RaiseLoopMoE,
/// see expertIndex). Returns the remark, or empty when `nz` is not such a loop or holds every expert.
std::string tracedExpertLoop(ox::NonZeroOp nz) {
  auto onehot = hitExpertsOneHot(nz);
  if (!onehot)
    return "";
  int64_t experts = routerWidth(onehot.getIndices());
  // The unrolled bodies: a Split of the hit experts' indices into one piece per body.
  int64_t bodies = -1;
  for (Operation *user : nz->getUsers()) {
    Operation *u = user;
    if (isa<ox::TransposeOp>(u) && u->hasOneUse())
      u = *u->getUsers().begin();
    if (isa<ox::SplitOp>(u))
      bodies = u->getNumResults();
  }
  if (bodies > 0 && bodies == experts)
    return "";
  std::string held = bodies > 0 ? std::to_string(bodies) + " expert bodies" : "one body per expert it hit";
  if (experts > 0)
    held += " for a router of " + std::to_string(experts) + " experts";
  return "a traced per-expert loop (TorchScript's export of eager experts): the graph holds " + held +
         ", the ones the example input hit, and is right only for inputs that hit exactly those; it runs as "
         "graph ops. Trace with an input that hits every expert (the graph then holds them all and is "
         "raised), "
         "or export transformers' batched_mm experts with torch.onnx.export(dynamo=True) "
         "(docs/pytorch-export.md)";
}

struct MoERaiseDecomposedPass final : moec::impl::MoERaiseDecomposedPassBase<MoERaiseDecomposedPass> {
  using Base::Base;
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    patterns.add<RaiseMoEBlock, RaiseDenseMoE, RaiseAllExpertsMoE, RaiseLoopMoE<ox::AddOp>,
                 RaiseLoopMoE<ox::ScatterNDOp>, RaiseLoopMoE<ox::ScatterElementsOp>>(&getContext());
    FailureReasons reasons;
    GreedyRewriteConfig config;
    config.listener = &reasons;
    if (failed(applyPatternsAndFoldGreedily(getOperation(), std::move(patterns), config)))
      return signalPassFailure();
    if (!remarks)
      return;
    getOperation()->walk([&](ox::NonZeroOp nz) {
      std::string why = tracedExpertLoop(nz);
      if (!why.empty())
        emitRemark(nz.getLoc()) << "MoE experts not raised: " << why;
    });
    getOperation()->walk([&](Operation *op) {
      if (!isa<ox::ReduceSumOp, ox::AddOp, ox::ScatterNDOp, ox::ScatterElementsOp>(op))
        return;
      auto it = reasons.why.find(op->getLoc());
      if (it != reasons.why.end())
        emitRemark(op->getLoc()) << "MoE experts not raised: " << it->second;
    });
  }
};

} // namespace
