//===- RaiseRotary.cpp - rotary embedding as exporters write it -> moe.rotary -===//
//
// transformers' apply_rotary_pos_emb, exported by PyTorch, leaves per query / key tensor x [B, H, S, D]
//
//   y = x * cos + Concat(Neg(Slice(x, h, R)), Slice(x, 0, h)) * sin        (rotate_half; R = 2h = D)
//   y = Concat(that over Slice(q, 0, R), Slice(q, R, D))                    (partial rotary, R < D)
//
// with cos / sin [B | 1, 1, S, R] (an Unsqueeze of the [B, S, R] tables the model computes once). Each
// becomes one `moe.rotary`; then the `Transpose(perm [0, 2, 1, 3])` that made x [B, H, S, D] from the
// projection's [B, S, H, D] and a q/k RMSNorm over D in front of it (Qwen3, OLMoE) fold into the op, so the
// projection's output is read once and written once in the layout attention reads.
//
//===----------------------------------------------------------------------===//
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "passes/MatchUtils.h"
#include "passes/Passes.h"

#include "mlir/IR/Verifier.h"

namespace moec {
#define GEN_PASS_DEF_MOERAISEROTARYPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
namespace ox = moec::onnxir;
namespace moe = moec::moe;

namespace {

/// `v` = Slice(data, [begin], [end]) along the last axis of a rank-4 `data` with a static last dim, step 1;
/// bounds clamped to the dim.
struct LastAxisSlice {
  Value data;
  int64_t begin = 0, end = 0;
};
std::optional<LastAxisSlice> lastAxisSlice(Value v) {
  auto s = defOp<ox::SliceOp>(v);
  if (!s || rankOf(s.getData()) != 4)
    return std::nullopt;
  const int64_t d = cast<RankedTensorType>(s.getData().getType()).getDimSize(3);
  auto st = constantInts(s.getStarts()), en = constantInts(s.getEnds()), ax = constantInts(s.getAxes()),
       sp = constantInts(s.getSteps());
  if (ShapedType::isDynamic(d) || !st || !en || !ax || !sp || st->size() != 1 || en->size() != 1 ||
      ax->size() != 1 || sp->size() != 1 || normAxis((*ax)[0], 4) != 3 || (*sp)[0] != 1)
    return std::nullopt;
  return LastAxisSlice{s.getData(), clampBound((*st)[0], d), clampBound((*en)[0], d)};
}

bool isLastAxisConcat(ox::ConcatOp c, unsigned inputs) {
  return c && c.getInputs().size() == inputs && rankOf(c.getResult()) == 4 &&
         normAxis(c.getAxis(), 4) == std::optional<int64_t>(3);
}

/// A rotation matched at an Add: y = x * cos + rotate_half(x) * sin.
struct Rotation {
  Value x, cos, sin; ///< cos / sin as multiplied: broadcastable to x
  int64_t rotaryDim = 0;
  SmallVector<Operation *> ops;
};

/// `v` = Concat(Neg(Slice(x, h, 2h)), Slice(x, 0, h)) over the last axis with x's last dim 2h:
/// rotate_half(x).
Value matchRotateHalf(Value v, SmallVectorImpl<Operation *> &ops) {
  auto cat = defOp<ox::ConcatOp>(v);
  if (!isLastAxisConcat(cat, 2))
    return {};
  auto neg = defOp<ox::NegOp>(cat.getInputs()[0]);
  auto hi = neg ? lastAxisSlice(neg.getX()) : std::nullopt;
  auto lo = lastAxisSlice(cat.getInputs()[1]);
  if (!hi || !lo || hi->data != lo->data)
    return {};
  const int64_t d = cast<RankedTensorType>(hi->data.getType()).getDimSize(3);
  if (d % 2 || lo->begin != 0 || lo->end != d / 2 || hi->begin != d / 2 || hi->end != d)
    return {};
  ops.append({cat, neg, neg.getX().getDefiningOp(), cat.getInputs()[1].getDefiningOp()});
  return hi->data;
}

/// True when `add` looks like a rotation (one operand multiplies a `Concat(Neg(..), ..)`): only those get a
/// remark when they are not raised.
bool looksLikeRotation(ox::AddOp add) {
  for (Value o : add->getOperands())
    if (auto m = defOp<ox::MulOp>(o))
      for (Value f : m->getOperands())
        if (auto c = defOp<ox::ConcatOp>(f);
            c && c.getInputs().size() == 2 && defOp<ox::NegOp>(c.getInputs()[0]))
          return true;
  return false;
}

std::optional<Rotation> matchRotation(ox::AddOp add, std::string &why) {
  for (int i = 0; i < 2; ++i) {
    auto direct = defOp<ox::MulOp>(add->getOperand(i)), rotated = defOp<ox::MulOp>(add->getOperand(1 - i));
    if (!direct || !rotated)
      continue;
    for (int j = 0; j < 2; ++j) {
      Rotation r;
      Value x = matchRotateHalf(rotated->getOperand(j), r.ops);
      if (!x)
        continue;
      r.sin = rotated->getOperand(1 - j);
      r.cos = otherOperand(direct, x);
      if (!r.cos) {
        why = "the un-rotated term does not multiply the rotated tensor";
        return std::nullopt;
      }
      r.x = x;
      r.rotaryDim = cast<RankedTensorType>(x.getType()).getDimSize(3);
      r.ops.append({add, direct, rotated});
      llvm::erase(r.ops, nullptr);
      return r;
    }
  }
  why = "not x * cos + Concat(-x[..., h:], x[..., :h]) * sin over the same x";
  return std::nullopt;
}

/// `c` (cos or sin as multiplied, broadcastable to x [B, H, S, R]) as the op's [Bc, S, R] table; null when it
/// is not one.
Value table(OpBuilder &b, Location loc, Value c, RankedTensorType xT, int64_t r, std::string &why) {
  auto t = dyn_cast<RankedTensorType>(c.getType());
  if (!t || !t.getElementType().isF32() || t.getRank() < 2 || t.getRank() > 4 ||
      t.getDimSize(t.getRank() - 1) != r) {
    why = "cos/sin are not f32 tables of " + std::to_string(r) + " values per position";
    return {};
  }
  const int64_t rank = t.getRank(), sDim = t.getDimSize(rank - 2), xS = xT.getDimSize(2);
  // Positions: the table's must be S (a static 1 against a longer or unknown S would broadcast one position).
  if ((sDim == 1 && xS != 1) || (!ShapedType::isDynamic(sDim) && !ShapedType::isDynamic(xS) && sDim != xS)) {
    why = "cos/sin hold " + std::to_string(sDim) + " positions, not one per query position";
    return {};
  }
  if ((rank >= 3 && t.getDimSize(rank - 3) != 1) ||
      (rank == 4 && t.getDimSize(0) != 1 && !ShapedType::isDynamic(t.getDimSize(0)) &&
       t.getDimSize(0) != xT.getDimSize(0))) {
    why = "cos/sin vary over the heads";
    return {};
  }
  if (rank == 4)
    if (auto u = defOp<ox::UnsqueezeOp>(c)) {
      auto axes = constantInts(u.getAxes());
      if (axes && axes->size() == 1 && normAxis((*axes)[0], 4) == std::optional<int64_t>(1) &&
          rankOf(u.getData()) == 3)
        return u.getData();
    }
  const int64_t bc = rank == 4 ? t.getDimSize(0) : 1;
  auto outT = RankedTensorType::get({bc, sDim, r}, t.getElementType());
  auto i64 = RankedTensorType::get({3}, b.getI64Type());
  Value shape = b.create<ox::ConstantOp>(
      loc, DenseIntElementsAttr::get(i64, ArrayRef<int64_t>{rank == 4 ? 0 : 1, -1, r}));
  return b.create<ox::ReshapeOp>(loc, outT, c, shape, b.getI64IntegerAttr(0));
}

std::string raise(ox::AddOp add) {
  std::string why;
  auto rot = matchRotation(add, why);
  if (!rot)
    return why;
  Operation *root = add;
  Value input = rot->x;
  SmallVector<Operation *> ops(rot->ops);
  // Partial rotary: x = q[..., :R], the result Concat(rotated, q[..., R:]).
  if (auto xs = lastAxisSlice(rot->x); xs && xs->begin == 0 && add->hasOneUse()) {
    auto cat = dyn_cast<ox::ConcatOp>(*add->getUsers().begin());
    auto pass = cat && isLastAxisConcat(cat, 2) && cat.getInputs()[0] == add.getResult()
                    ? lastAxisSlice(cat.getInputs()[1])
                    : std::nullopt;
    const int64_t d = cast<RankedTensorType>(xs->data.getType()).getDimSize(3);
    if (!pass || pass->data != xs->data || pass->begin != rot->rotaryDim || pass->end != d)
      return "a rotation of part of the head dim whose untouched rest is not concatenated after it";
    ops.append({cat, rot->x.getDefiningOp(), cat.getInputs()[1].getDefiningOp()});
    root = cat;
    input = xs->data;
  }
  auto xT = dyn_cast<RankedTensorType>(input.getType());
  auto outT = dyn_cast<RankedTensorType>(root->getResult(0).getType());
  if (!xT || !outT || !xT.getElementType().isF32() || outT.getRank() != 4 || outT.getShape() != xT.getShape())
    return "the rotated tensor is not f32 [B, H, S, D] or the rotation broadcasts it";
  OpBuilder b(root);
  Value cos = table(b, root->getLoc(), rot->cos, xT, rot->rotaryDim, why);
  Value sin = cos ? table(b, root->getLoc(), rot->sin, xT, rot->rotaryDim, why) : Value();
  if (!cos || !sin)
    return why;
  auto op = b.create<moe::RotaryOp>(root->getLoc(), outT, input, cos, sin, Value(),
                                    b.getI64IntegerAttr(rot->rotaryDim), UnitAttr(), b.getI64IntegerAttr(2),
                                    UnitAttr(), b.getF32FloatAttr(1e-6f));
  if (failed(mlir::verify(op))) {
    op->erase();
    return "the matched shapes do not make a valid moe.rotary";
  }
  root->getResult(0).replaceAllUsesWith(op.getResult());
  eraseDeadOps(ops);
  return "";
}

/// Folds the Transpose(perm [0, 2, 1, 3]) that feeds `op` (and nothing else) into it.
void foldTranspose(moe::RotaryOp op) {
  auto tr = defOp<ox::TransposeOp>(op.getInput());
  if (op.getTranspose() || op.getSeqAxis() != 2 || !tr || !op.getInput().hasOneUse() || !tr.getPerm())
    return;
  ArrayAttr permAttr = *tr.getPerm();
  SmallVector<int64_t> perm;
  for (Attribute a : permAttr)
    perm.push_back(cast<IntegerAttr>(a).getInt());
  if (perm != SmallVector<int64_t>{0, 2, 1, 3})
    return;
  op.getInputMutable().assign(tr.getData());
  op.setSeqAxis(1);
  op.setTranspose(true);
  tr->erase();
  noteFused(op, "transpose");
}

/// Folds an RMSNorm over the head dim that feeds `op` (and nothing else) into it: Qwen3's q_norm / k_norm.
std::string foldNorm(moe::RotaryOp op) {
  const int64_t d = op.getInput().getType().getDimSize(3);
  auto n = matchNorm(op.getInput(), d);
  if (!n || op.getNormWeight())
    return "";
  if (n->kind != moe::NormKind::rms || n->bias)
    return "the norm in front is not an RMSNorm";
  if (!op.getInput().hasOneUse() || !usedOnlyWithin(n->ops, n->ops.front()))
    return "the norm's output or an intermediate of it is also read elsewhere";
  auto wT = cast<RankedTensorType>(n->weight.getType());
  if (!wT.getElementType().isF32() || n->x.getType() != op.getInput().getType())
    return "the norm's weight is not f32 or it broadcasts its input";
  op.getInputMutable().assign(n->x);
  op.getNormWeightMutable().assign(n->weight);
  op.setNormEpsilon(APFloat(static_cast<float>(n->eps)));
  eraseDeadOps(n->ops);
  noteFused(op, "rms_norm");
  return "";
}

struct MoERaiseRotaryPass final : moec::impl::MoERaiseRotaryPassBase<MoERaiseRotaryPass> {
  using Base::Base;
  void runOnOperation() override {
    SmallVector<ox::AddOp> candidates;
    getOperation()->walk([&](ox::AddOp a) {
      if (looksLikeRotation(a))
        candidates.push_back(a);
    });
    for (ox::AddOp a : candidates) {
      Location loc = a.getLoc();
      std::string why = raise(a);
      if (!why.empty() && remarks)
        emitRemark(loc) << "rotary embedding not raised: " << why;
    }
    SmallVector<moe::RotaryOp> ops;
    getOperation()->walk([&](moe::RotaryOp r) { ops.push_back(r); });
    for (moe::RotaryOp r : ops) {
      foldTranspose(r);
      remarkIfUnfused(remarks, r, "norm not folded into the rotary embedding", foldNorm(r));
    }
  }
};

} // namespace
