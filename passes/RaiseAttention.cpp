//===- RaiseAttention.cpp - the SDPA chain exporters write -> moe.attention ----===//
//
// transformers' SDPA / eager attention, exported by PyTorch, leaves per layer
//
//   scores = MatMul(q * c, Kt * c)               Kt: keys transposed (a Transpose, or the exporter's
//   p      = Softmax(scores + mask)                  Reshape -> Transpose -> Reshape over Shape slices)
//   p      = Where(IsNaN(p), 0, p)               (optional)
//   out    = MatMul(p, V)
//
// with K and V repeated for grouped-query heads (Unsqueeze -> Expand -> Reshape: repeat_kv). The chain
// becomes one `moe.attention` reading the unrepeated keys and values, the scale folded into one constant;
// codegen turns it into an attention dispatch (kernels/cpu/attention.h). Eager logit softcapping,
// c * Tanh(scores / c) before the mask, becomes the op's softcap. The additive mask stays computed by the
// graph (shared by every layer); the past-cache Concat stays an op step (sessions run it in place), rotary
// embedding is moe-raise-rotary's. A moe.attention imported whole (ONNX's Attention op) whose K and V are
// repeat_kv's reads the unrepeated ones too.
//
//===----------------------------------------------------------------------===//
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "passes/MatchUtils.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Matchers.h"
#include "mlir/IR/Verifier.h"

#include <limits>

namespace moec {
#define GEN_PASS_DEF_MOERAISEATTENTIONPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
namespace ox = moec::onnxir;
namespace moe = moec::moe;

namespace {

/// One entry of a 1-D shape vector as the graph computes it: a constant, dim `dim` of `src`, or (dim -2) the
/// one-element value `src` computed some other way.
struct DimRef {
  Value src;
  int64_t dim = -1;
  int64_t value = 0;
  bool isDim(Value v, int64_t d) const { return src == v && dim == d; }
  bool isConst(int64_t c) const { return !src && value == c; }
  /// Dim `d` of `v`, or a constant equal to that dim where it is static (an export with static shapes folds
  /// the shape vectors into constants).
  bool isDimOrItsValue(Value v, int64_t d) const {
    auto t = dyn_cast<RankedTensorType>(v.getType());
    return isDim(v, d) || (!src && t && d < t.getRank() && !t.isDynamicDim(d) && value == t.getDimSize(d));
  }
};

/// The entries of a 1-D integer shape vector built from constants, `Shape`, `Slice` of a shape and
/// `Concat`, or nullopt when it is computed some other way.
std::optional<SmallVector<DimRef>> shapeVector(Value v) {
  if (auto c = constantInts(v)) {
    SmallVector<DimRef> out;
    for (int64_t x : *c)
      out.push_back(DimRef{Value(), -1, x});
    return out;
  }
  if (auto s = defOp<ox::ShapeOp>(v)) {
    int64_t r = rankOf(s.getData());
    if (r < 0)
      return std::nullopt;
    int64_t b = clampBound(s.getStart(), r), e = clampBound(s.getEnd() ? int64_t(*s.getEnd()) : r, r);
    SmallVector<DimRef> out;
    for (int64_t d = b; d < e; ++d)
      out.push_back(DimRef{s.getData(), d, 0});
    return out;
  }
  if (auto sl = defOp<ox::SliceOp>(v)) {
    auto whole = shapeVector(sl.getData());
    auto st = constantInts(sl.getStarts()), en = constantInts(sl.getEnds()), ax = constantInts(sl.getAxes()),
         sp = constantInts(sl.getSteps());
    if (!whole || !st || !en || !ax || !sp || st->size() != 1 || en->size() != 1 || ax->size() != 1 ||
        sp->size() != 1 || ((*ax)[0] != 0 && (*ax)[0] != -1) || (*sp)[0] != 1)
      return std::nullopt;
    int64_t n = whole->size(), b = clampBound((*st)[0], n), e = clampBound((*en)[0], n);
    return SmallVector<DimRef>(whole->begin() + b, whole->begin() + std::max(b, e));
  }
  if (auto c = defOp<ox::ConcatOp>(v)) {
    if (int64_t(c.getAxis()) != 0 && int64_t(c.getAxis()) != -1)
      return std::nullopt;
    SmallVector<DimRef> out;
    for (Value in : c.getInputs()) {
      auto part = shapeVector(in);
      if (!part)
        return std::nullopt;
      out.append(part->begin(), part->end());
    }
    return out;
  }
  // Anything else of one element (a length computed from other shapes): an entry known only as itself.
  if (auto t = dyn_cast<RankedTensorType>(v.getType());
      t && t.hasStaticShape() && t.getNumElements() == 1 && t.getRank() <= 1)
    return SmallVector<DimRef>{DimRef{v, /*dim=*/-2, 0}};
  return std::nullopt;
}

/// The graph input and dim that dim `d` of `v` equals, followed through Concats and Slices along other axes
/// (the past cache and the new keys, a sliding window's cache); a null argument when `v` comes from
/// elsewhere.
std::pair<BlockArgument, int64_t> dimOrigin(Value v, int64_t d) {
  for (int guard = 0; guard < 16; ++guard) {
    if (auto arg = dyn_cast<BlockArgument>(v))
      return {arg, d};
    const int64_t r = rankOf(v);
    if (r < 0)
      break;
    if (auto c = defOp<ox::ConcatOp>(v); c && (int64_t(c.getAxis()) + r) % r != d) {
      v = c.getInputs().front();
      continue;
    }
    if (auto sl = defOp<ox::SliceOp>(v)) { // a slice along other axes (a sliding window's cache)
      auto axes = constantInts(sl.getAxes());
      if (axes && llvm::none_of(*axes, [&](int64_t a) { return (a + r) % r == d; })) {
        v = sl.getData();
        continue;
      }
    }
    break;
  }
  return {BlockArgument(), -1};
}

/// The symbol the ONNX file gives dim `d` of graph input `arg` (`onnx.dim_params`), or "".
StringRef dimSymbol(BlockArgument arg, int64_t d) {
  auto fn = dyn_cast_or_null<func::FuncOp>(arg.getOwner()->getParentOp());
  if (!fn)
    return {};
  auto params = fn.getArgAttrOfType<ArrayAttr>(arg.getArgNumber(), "onnx.dim_params");
  if (!params || d < 0 || d >= int64_t(params.size()))
    return {};
  auto s = dyn_cast<StringAttr>(params[d]);
  return s ? s.getValue() : StringRef();
}

/// Whether shape-vector entry `r` is dim `d` of `v`: read off `v` itself, or off a graph input whose dim the
/// ONNX file names with the same symbol as the input `v`'s dim comes from (the runtime binds one value per
/// symbol, so the two are equal whenever the model runs).
bool sameDim(const DimRef &r, Value v, int64_t d) {
  if (r.isDim(v, d))
    return true;
  if (!r.src || r.dim < 0)
    return false;
  auto [a, ad] = dimOrigin(r.src, r.dim);
  auto [b, bd] = dimOrigin(v, d);
  if (!a || !b)
    return false;
  StringRef sa = dimSymbol(a, ad), sb = dimSymbol(b, bd);
  return !sa.empty() && sa == sb;
}

/// Peels multiplications / divisions by a constant scalar off `v`, folding them into `scale`.
Value peelScale(Value v, double &scale, SmallVectorImpl<Operation *> &ops) {
  while (true) {
    if (auto m = defOp<ox::MulOp>(v)) {
      if (auto c = constantScalar(m.getB())) {
        scale *= *c, ops.push_back(m), v = m.getA();
        continue;
      }
      if (auto c = constantScalar(m.getA())) {
        scale *= *c, ops.push_back(m), v = m.getB();
        continue;
      }
    }
    if (auto d = defOp<ox::DivOp>(v))
      if (auto c = constantScalar(d.getB()); c && *c != 0.0) {
        scale /= *c, ops.push_back(d), v = d.getA();
        continue;
      }
    return v;
  }
}

/// x where `kt` is x [B, H, T, D] with its last two dims swapped: `Transpose(x, [0, 1, 3, 2])`, or
/// `Reshape(Transpose(Reshape(x, [-1, T, D]), [0, 2, 1]), [B, H, D, T])` with T, D, B, H read off Shape(x)
/// (PyTorch's export of `k.transpose(2, 3)` inside SDPA).
Value untranspose(Value kt, SmallVectorImpl<Operation *> &ops) {
  if (auto t = defOp<ox::TransposeOp>(kt)) {
    auto perm = t.getPerm();
    SmallVector<int64_t> p;
    if (perm)
      for (Attribute a : *perm)
        p.push_back(cast<IntegerAttr>(a).getInt());
    if (rankOf(t.getData()) == 4 && p == SmallVector<int64_t>{0, 1, 3, 2}) {
      ops.push_back(t);
      return t.getData();
    }
    return {};
  }
  auto outer = defOp<ox::ReshapeOp>(kt);
  auto tr = outer ? defOp<ox::TransposeOp>(outer.getData()) : ox::TransposeOp();
  auto inner = tr ? defOp<ox::ReshapeOp>(tr.getData()) : ox::ReshapeOp();
  if (!inner || rankOf(inner.getData()) != 4 || rankOf(tr.getTransposed()) != 3)
    return {};
  auto perm = tr.getPerm();
  if (!perm || perm->size() != 3 || cast<IntegerAttr>((*perm)[0]).getInt() != 0 ||
      cast<IntegerAttr>((*perm)[1]).getInt() != 2 || cast<IntegerAttr>((*perm)[2]).getInt() != 1)
    return {};
  Value x = inner.getData();
  auto s3 = shapeVector(inner.getShape()), s4 = shapeVector(outer.getShape());
  if (!s3 || !s4 || s3->size() != 3 || s4->size() != 4 || !(*s3)[0].isConst(-1) ||
      !(*s3)[1].isDimOrItsValue(x, 2) || !(*s3)[2].isDimOrItsValue(x, 3) || !(*s4)[0].isDimOrItsValue(x, 0) ||
      !(*s4)[1].isDimOrItsValue(x, 1) || !(*s4)[2].isDimOrItsValue(x, 3) || !(*s4)[3].isDimOrItsValue(x, 2))
    return {};
  ops.append({outer, tr, inner});
  return x;
}

/// kv [B, Hkv, T, D] where `x` is it repeated per query group (`repeat_kv`: Unsqueeze at 2, Expand to
/// [B, Hkv, G, T, D], Reshape to [B, Hkv * G, T, D]); `x` itself when it is not.
Value unrepeat(Value x, SmallVectorImpl<Operation *> &ops) {
  auto r = defOp<ox::ReshapeOp>(x);
  auto e = r ? defOp<ox::ExpandOp>(r.getData()) : ox::ExpandOp();
  auto u = e ? defOp<ox::UnsqueezeOp>(e.getInput()) : ox::UnsqueezeOp();
  if (!u)
    return x;
  Value kv = u.getData();
  auto kvT = dyn_cast<RankedTensorType>(kv.getType());
  auto eT = dyn_cast<RankedTensorType>(e.getOutput().getType());
  auto rT = dyn_cast<RankedTensorType>(r.getReshaped().getType());
  auto axes = constantInts(u.getAxes());
  if (!kvT || !eT || !rT || kvT.getRank() != 4 || eT.getRank() != 5 || rT.getRank() != 4 || !axes ||
      axes->size() != 1 || ((*axes)[0] != 2 && (*axes)[0] != -3))
    return x;
  const int64_t hkv = kvT.getDimSize(1), d = kvT.getDimSize(3), g = eT.getDimSize(2);
  if (ShapedType::isDynamic(hkv) || ShapedType::isDynamic(d) || ShapedType::isDynamic(g) ||
      eT.getDimSize(1) != hkv || eT.getDimSize(4) != d)
    return x;
  // The Expand target: every entry but the group's is 1 or the key's own dim (Expand broadcasts only the
  // inserted axis).
  auto target = shapeVector(e.getShape());
  if (!target || target->size() != 5 || !(*target)[2].isConst(g))
    return x;
  for (int i : {0, 1, 3, 4}) {
    int64_t kd = i < 2 ? i : i - 1;
    const DimRef &t = (*target)[i];
    bool ok = t.isConst(1) || sameDim(t, kv, kd) || t.isDimOrItsValue(kv, kd) ||
              (i == 3 && t.src); // the keys' length, computed (past + new): Expand cannot change it
    if (!ok)
      return x;
  }
  auto shape = shapeVector(r.getShape());
  if (!shape || shape->size() != 4 || !(*shape)[1].isConst(hkv * g))
    return x;
  const DimRef &b = (*shape)[0], &t = (*shape)[2], &dd = (*shape)[3];
  bool bOk = sameDim(b, kv, 0) || b.isDim(e.getOutput(), 0) || (b.isConst(0) && r.getAllowzero() == 0) ||
             b.isDimOrItsValue(kv, 0);
  bool dOk = dd.isConst(d) || dd.isDim(kv, 3) || dd.isDim(e.getOutput(), 4);
  // With the batch, head and head dims exact, the element count fixes the length, however it is written
  // (-1, a dim of the keys, or a length the graph computes).
  bool tOk = t.isConst(-1) || t.isDimOrItsValue(kv, 2) || t.isDim(e.getOutput(), 3) || (t.src && bOk && dOk);
  if (!bOk || !tOk || !dOk)
    return x;
  ops.append({r, e, u});
  return kv;
}

/// Raises the attention chain ending in the MatMul reading `sm`'s probabilities; returns why not, or "".
std::string raise(ox::SoftmaxOp sm) {
  auto inT = dyn_cast<RankedTensorType>(sm.getInput().getType());
  if (!inT || inT.getRank() != 4)
    return "the softmax is not over rank-4 scores [B, H, S, T]";
  if (normAxis(sm.getAxis(), 4) != 3)
    return "the softmax is not over the last axis";
  SmallVector<Operation *> ops{sm};
  // The probabilities, maybe with NaN (rows of -inf) replaced by 0.
  Value p = sm.getOutput();
  bool nanToZero = false;
  if (llvm::range_size(p.getUsers()) == 2) {
    ox::IsNaNOp isnan;
    ox::WhereOp where;
    for (Operation *u : p.getUsers()) {
      if (auto n = dyn_cast<ox::IsNaNOp>(u))
        isnan = n;
      else if (auto w = dyn_cast<ox::WhereOp>(u))
        where = w;
    }
    if (isnan && where && isnan.getY().hasOneUse() && where.getCondition() == isnan.getY() &&
        where.getY() == p && constantScalar(where.getX()) == 0.0) {
      nanToZero = true;
      ops.append({isnan, where});
      p = where.getOutput();
    }
  }
  // GPT-OSS's sinks: the probabilities without their last column (the sink's).
  ox::SliceOp dropSink;
  if (p.hasOneUse())
    if (auto sl = dyn_cast<ox::SliceOp>(*p.getUsers().begin())) {
      auto st = constantInts(sl.getStarts()), en = constantInts(sl.getEnds()),
           ax = constantInts(sl.getAxes()), sp = constantInts(sl.getSteps());
      if (st && en && ax && sp && *st == SmallVector<int64_t>{0} && *en == SmallVector<int64_t>{-1} &&
          ax->size() == 1 && normAxis((*ax)[0], 4) == 3 && *sp == SmallVector<int64_t>{1}) {
        dropSink = sl;
        ops.push_back(sl);
        p = sl.getOutput();
      }
    }
  ox::MatMulOp pv;
  for (Operation *u : p.getUsers())
    if (auto m = dyn_cast<ox::MatMulOp>(u); m && m.getA() == p && !pv)
      pv = m;
  if (!pv)
    return "the attention probabilities do not feed a MatMul as its left operand (P x V)";
  ops.push_back(pv);
  // Scores (+ mask), maybe less their row max (the softmax does not change) and with the sinks appended.
  Value x = sm.getInput(), mask, sinkLogits;
  if (auto sub = defOp<ox::SubOp>(x))
    if (auto mx = defOp<ox::ReduceMaxOp>(sub.getB());
        mx && mx.getData() == sub.getA() && mx.getKeepdims() == 1) {
      auto axes = mx.getAxes() ? constantInts(mx.getAxes()) : std::nullopt;
      if (axes && axes->size() == 1 && normAxis((*axes)[0], 4) == 3) {
        ops.append({sub, mx});
        x = sub.getA();
      }
    }
  if (dropSink) {
    auto cat = defOp<ox::ConcatOp>(x);
    if (!cat || cat.getInputs().size() != 2 || normAxis(cat.getAxis(), 4) != 3)
      return "the probabilities drop a last column, but the scores are not Concat(scores, sinks) on the last "
             "axis";
    // sinks.reshape(1, H, 1, 1).expand(B, H, S, 1); the exporter may have folded the reshape of a constant.
    auto ex = defOp<ox::ExpandOp>(cat.getInputs()[1]);
    Value s4 = ex ? ex.getInput() : Value();
    auto rT = s4 ? dyn_cast<RankedTensorType>(s4.getType()) : RankedTensorType();
    if (!rT || !rT.hasStaticShape() || rT.getRank() != 4 || rT.getDimSize(0) != 1 || rT.getDimSize(2) != 1 ||
        rT.getDimSize(3) != 1 || !rT.getElementType().isF32())
      return "the column appended to the scores is not sinks [1, H, 1, 1] expanded";
    ops.append({cat, ex});
    auto rs = defOp<ox::ReshapeOp>(s4);
    auto sT = rs ? dyn_cast<RankedTensorType>(rs.getData().getType()) : RankedTensorType();
    if (sT && sT.hasStaticShape() && sT.getRank() == 1) {
      ops.push_back(rs);
      sinkLogits = rs.getData();
    } else { // [1, H, 1, 1] -> [H]
      OpBuilder b(cat);
      const int64_t h = rT.getDimSize(1);
      Value shape = b.create<ox::ConstantOp>(
          cat.getLoc(),
          DenseIntElementsAttr::get(RankedTensorType::get({1}, b.getI64Type()), ArrayRef<int64_t>{h}));
      sinkLogits = b.create<ox::ReshapeOp>(cat.getLoc(), RankedTensorType::get({h}, b.getF32Type()), s4,
                                           shape, b.getI64IntegerAttr(0));
    }
    x = cat.getInputs()[0];
  }
  auto scoresT = dyn_cast<RankedTensorType>(x.getType());
  if (!scoresT || scoresT.getRank() != 4)
    return "the scores are not rank 4 [B, H, S, T]";
  double scale = 1.0, softcap = 0.0;
  if (auto add = defOp<ox::AddOp>(x)) {
    // The scores are the operand that is a (scaled, maybe softcapped) MatMul; the other is the mask.
    SmallVector<Operation *> probe;
    double unused = 1.0;
    Value a = peelScale(add.getA(), unused, probe);
    if (auto th = defOp<ox::TanhOp>(a))
      a = peelScale(th.getX(), unused, probe);
    bool left = defOp<ox::MatMulOp>(a) != nullptr;
    x = left ? add.getA() : add.getB();
    mask = left ? add.getB() : add.getA();
    ops.push_back(add);
  }
  // Logit softcapping as eager attention writes it, c * tanh(s / c) (Gemma 2, Grok-1): the factors outside
  // the Tanh make c; with the ones inside they make the scale (c * tanh(scale * q.k / c) is the op's form).
  {
    SmallVector<Operation *> capOps;
    double outer = 1.0;
    Value t = peelScale(x, outer, capOps);
    if (auto th = defOp<ox::TanhOp>(t); th && !capOps.empty()) {
      if (!(outer > 0.0))
        return "the scores are softcapped by a factor that is not positive";
      softcap = outer;
      scale = outer;
      ops.append(capOps.begin(), capOps.end());
      ops.push_back(th);
      x = th.getX();
    }
  }
  x = peelScale(x, scale, ops);
  auto qk = defOp<ox::MatMulOp>(x);
  if (!qk)
    return "the softmax's input is not MatMul(Q, K^T) (times a constant) plus a mask";
  ops.push_back(qk);
  Value q = peelScale(qk.getA(), scale, ops);
  Value kt = peelScale(qk.getB(), scale, ops);
  Value kRep = untranspose(kt, ops);
  if (!kRep)
    return "K^T is not a Transpose of the keys' last two dims (nor the exporter's Reshape-Transpose-Reshape "
           "of it)";
  Value k = unrepeat(kRep, ops);
  Value v = unrepeat(pv.getB(), ops);
  auto qT = dyn_cast<RankedTensorType>(q.getType());
  auto kT = dyn_cast<RankedTensorType>(k.getType());
  auto vT = dyn_cast<RankedTensorType>(v.getType());
  if (!qT || !kT || !vT || qT.getRank() != 4 || kT.getRank() != 4 || vT.getRank() != 4)
    return "Q, K or V is not a rank-4 [B, heads, length, head dim] tensor";
  for (auto t : {qT, kT, vT})
    if (!t.getElementType().isF32())
      return "only f32 attention is raised";
  const int64_t hq = qT.getDimSize(1), hkv = kT.getDimSize(1), dk = qT.getDimSize(3), dv = vT.getDimSize(3);
  if (ShapedType::isDynamic(hq) || ShapedType::isDynamic(hkv) || ShapedType::isDynamic(dk) ||
      ShapedType::isDynamic(dv))
    return "the head counts or head dims are not static";
  if (hq % hkv || vT.getDimSize(1) != hkv || kT.getDimSize(3) != dk)
    return "the query heads are not a multiple of the key/value heads, or K and V disagree";
  if (mask) {
    auto mT = dyn_cast<RankedTensorType>(mask.getType());
    if (!mT || mT.getRank() != 4 || !mT.getElementType().isF32())
      return "the mask is not an f32 rank-4 tensor";
    for (int i = 0; i < 4; ++i)
      if (mT.getDimSize(i) != 1 && !ShapedType::isDynamic(mT.getDimSize(i)) &&
          !ShapedType::isDynamic(scoresT.getDimSize(i)) && mT.getDimSize(i) != scoresT.getDimSize(i))
        return "the mask does not broadcast over the scores";
  }
  if (sinkLogits && cast<RankedTensorType>(sinkLogits.getType()).getDimSize(0) != hq)
    return "the sinks are not one per query head";
  Value sinks = sinkLogits;
  OpBuilder b(pv);
  auto outT = dyn_cast<RankedTensorType>(pv.getY().getType());
  if (!outT || outT.getRank() != 4)
    return "the P x V product has no rank-4 type";
  auto op = b.create<moe::AttentionOp>(
      pv.getLoc(), outT, q, k, v, mask, sinks, b.getF32FloatAttr(static_cast<float>(scale)),
      nanToZero ? b.getUnitAttr() : UnitAttr(), b.getF32FloatAttr(static_cast<float>(softcap)), UnitAttr(),
      UnitAttr());
  if (failed(mlir::verify(op))) {
    op->erase();
    return "the matched shapes do not make a valid moe.attention";
  }
  op->setAttr("moe.source", b.getStringAttr("sdpa"));
  if (k != kRep)
    noteFused(op, "repeat_kv");
  if (nanToZero)
    noteFused(op, "nan_to_zero");
  if (sinks)
    noteFused(op, "sinks");
  if (softcap > 0.0)
    noteFused(op, "softcap");
  pv.getY().replaceAllUsesWith(op.getResult());
  eraseDeadOps(ops);
  return "";
}

struct MoERaiseAttentionPass final : moec::impl::MoERaiseAttentionPassBase<MoERaiseAttentionPass> {
  using Base::Base;
  void runOnOperation() override {
    SmallVector<ox::SoftmaxOp> candidates;
    getOperation()->walk([&](ox::SoftmaxOp s) { candidates.push_back(s); });
    for (ox::SoftmaxOp s : candidates) {
      // A softmax over a matrix or a vector (a MoE router's scores, a classifier's logits) is no attention
      // candidate: nothing to raise or report.
      if (rankOf(s.getInput()) >= 0 && rankOf(s.getInput()) <= 2)
        continue;
      Operation *where = s;
      std::string why = raise(s);
      if (!why.empty())
        remarkIfUnfused(remarks, where, "attention not raised", why);
    }
    // Attention imported as one op (ONNX's own Attention: torch.onnx's exporter at opset 23 writes it after
    // repeat_kv) reads the unrepeated keys and values too.
    SmallVector<moe::AttentionOp> imported;
    getOperation()->walk([&](moe::AttentionOp a) { imported.push_back(a); });
    for (moe::AttentionOp a : imported) {
      SmallVector<Operation *> ops;
      Value kRep = a.getKey(), vRep = a.getValue();
      Value k = unrepeat(kRep, ops), v = unrepeat(vRep, ops);
      if (k == kRep || v == vRep ||
          cast<RankedTensorType>(k.getType()).getDimSize(1) !=
              cast<RankedTensorType>(v.getType()).getDimSize(1))
        continue;
      a.getKeyMutable().assign(k);
      a.getValueMutable().assign(v);
      if (failed(mlir::verify(a))) {
        a.getKeyMutable().assign(kRep);
        a.getValueMutable().assign(vRep);
        continue;
      }
      noteFused(a, "repeat_kv");
      eraseDeadOps(ops);
    }
    // The Transpose back to [B, S, Hq, Dv] exporters write after attention (before the Reshape that merges
    // the heads for the output projection) becomes the op's output layout: the kernels write each row there,
    // and the model loses a copy of the attention output (and, on a GPU, a launch) per layer.
    SmallVector<moe::AttentionOp> all;
    getOperation()->walk([&](moe::AttentionOp a) { all.push_back(a); });
    for (moe::AttentionOp a : all)
      foldOutputTranspose(a);
  }

  static void foldOutputTranspose(moe::AttentionOp a) {
    if (a.getTransposeOutput() || !a.getResult().hasOneUse())
      return;
    auto t = dyn_cast<ox::TransposeOp>(*a.getResult().getUsers().begin());
    auto perm = t ? t.getPerm() : std::nullopt; // none: the dims reversed, no candidate at rank 4
    SmallVector<int64_t> p;
    if (perm)
      for (Attribute e : *perm)
        p.push_back(cast<IntegerAttr>(e).getInt());
    if (p != SmallVector<int64_t>{0, 2, 1, 3})
      return;
    auto oT = cast<RankedTensorType>(a.getResult().getType());
    auto tT = dyn_cast<RankedTensorType>(t.getTransposed().getType());
    // The op's dims in the new order, each made static where the Transpose's type knows it.
    SmallVector<int64_t> dims{oT.getDimSize(0), oT.getDimSize(2), oT.getDimSize(1), oT.getDimSize(3)};
    for (int i = 0; tT && tT.getRank() == 4 && i < 4; ++i) {
      const int64_t d = tT.getDimSize(i);
      if (!ShapedType::isDynamic(d) && !ShapedType::isDynamic(dims[i]) && d != dims[i])
        return;
      if (!ShapedType::isDynamic(d))
        dims[i] = d;
    }
    a.setTransposeOutput(true);
    a.getResult().setType(RankedTensorType::get(dims, oT.getElementType()));
    if (failed(mlir::verify(a))) {
      a.setTransposeOutput(false);
      a.getResult().setType(oT);
      return;
    }
    noteFused(a, "transpose");
    t.getTransposed().replaceAllUsesWith(a.getResult());
    t->erase();
  }
};

} // namespace
