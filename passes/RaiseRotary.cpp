//===- RaiseRotary.cpp - rotary embedding as exporters write it -> moe.rotary -===//
//
// transformers' apply_rotary_pos_emb, exported by PyTorch, leaves per query / key tensor x [B, H, S, D]
//
//   y = x * cos + Concat(Neg(Slice(x, h, R)), Slice(x, 0, h)) * sin        (rotate_half; R = 2h = D)
//   y = Concat(that over Slice(q, 0, R), Slice(q, R, D))                    (partial rotary, R < D)
//
// with cos / sin [B | 1, 1, S, R] (an Unsqueeze of the [B, S, R] tables the model computes once). Other
// exporters' models rotate pairs written otherwise:
//
//   y = Concat(a * cos - b * sin, b * cos + a * sin)   a, b = x's halves (GPT-OSS: Split) or its even and odd
//                                                      dims (DeepSeek's MLA: Slice step 2, written as halves)
//   y = x * cos + Reshape(Concat(-x[..., 1::2, None], x[..., 0::2, None])) * sin   (Ernie-4.5: interleaved)
//
// with cos / sin of R / 2 values per position in the first form. Each becomes one `moe.rotary`; then the
// `Transpose(perm [0, 2, 1, 3])` that made x [B, H, S, D] from the projection's [B, S, H, D] and a q/k
// RMSNorm over D in front of it (Qwen3, OLMoE) fold into the op, so the projection's output is read once and
// written once in the layout attention reads.
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

/// `v` = Slice(data, [begin], [end], [3], [step]) along the last axis of a rank-4 `data` with a static last
/// dim, step 1 or 2; bounds clamped to the dim.
struct LastAxisSlice {
  Value data;
  int64_t begin = 0, end = 0, step = 1;
};
std::optional<LastAxisSlice> lastAxisSlice(Value v) {
  auto s = defOp<ox::SliceOp>(v);
  if (!s || rankOf(s.getData()) != 4)
    return std::nullopt;
  const int64_t d = cast<RankedTensorType>(s.getData().getType()).getDimSize(3);
  auto st = constantInts(s.getStarts()), en = constantInts(s.getEnds()), ax = constantInts(s.getAxes()),
       sp = constantInts(s.getSteps());
  if (ShapedType::isDynamic(d) || !st || !en || !ax || !sp || st->size() != 1 || en->size() != 1 ||
      ax->size() != 1 || sp->size() != 1 || normAxis((*ax)[0], 4) != 3 || ((*sp)[0] != 1 && (*sp)[0] != 2))
    return std::nullopt;
  return LastAxisSlice{s.getData(), clampBound((*st)[0], d), clampBound((*en)[0], d), (*sp)[0]};
}

int64_t lastDim(Value v) { return cast<RankedTensorType>(v.getType()).getDimSize(3); }

/// x when `a` and `b` are x's first and second halves along its last axis (a Split into two, or Slices
/// [0, h) and [h, 2h) of a rank-4 x with last dim 2h); `ops` gets what took them apart.
Value matchHalves(Value a, Value b, SmallVectorImpl<Operation *> &ops) {
  if (auto split = defOp<ox::SplitOp>(a)) {
    if (split != defOp<ox::SplitOp>(b) || split.getOutputs().size() != 2 || split.getOutputs()[0] != a ||
        split.getOutputs()[1] != b || rankOf(split.getInput()) != 4 ||
        normAxis(split.getAxis(), 4) != std::optional<int64_t>(3))
      return {};
    const int64_t d = lastDim(split.getInput());
    if (ShapedType::isDynamic(d) || d % 2 || lastDim(a) != d / 2 || lastDim(b) != d / 2)
      return {};
    ops.push_back(split);
    return split.getInput();
  }
  auto lo = lastAxisSlice(a), hi = lastAxisSlice(b);
  if (!lo || !hi || lo->data != hi->data || lo->step != 1 || hi->step != 1)
    return {};
  const int64_t d = lastDim(lo->data);
  if (d % 2 || lo->begin != 0 || lo->end != d / 2 || hi->begin != d / 2 || hi->end != d)
    return {};
  ops.append({a.getDefiningOp(), b.getDefiningOp()});
  return lo->data;
}

/// x when `even` = x[..., 0::2] and `odd` = x[..., 1::2] (Slices with step 2 of a rank-4 x with an even last
/// dim); `ops` gets the Slices.
Value matchEvenOdd(Value even, Value odd, SmallVectorImpl<Operation *> &ops) {
  auto e = lastAxisSlice(even), o = lastAxisSlice(odd);
  if (!e || !o || e->data != o->data || e->step != 2 || o->step != 2)
    return {};
  const int64_t d = lastDim(e->data);
  if (d % 2 || e->begin != 0 || o->begin != 1 || e->end < d - 1 || o->end != d)
    return {};
  ops.append({even.getDefiningOp(), odd.getDefiningOp()});
  return e->data;
}

bool isLastAxisConcat(ox::ConcatOp c, unsigned inputs) {
  return c && c.getInputs().size() == inputs && rankOf(c.getResult()) == 4 &&
         normAxis(c.getAxis(), 4) == std::optional<int64_t>(3);
}

/// A rotation matched at its last op `root`: y = x * cos + rotate_half(x) * sin (or its interleaved form), or
/// the halves form Concat(a * cos - b * sin, b * cos + a * sin).
struct Rotation {
  Value x, cos, sin; ///< cos / sin as multiplied: broadcastable to x ([.., R] or, halves form, [.., R / 2])
  int64_t rotaryDim = 0, width = 0; ///< width: cos / sin values per position
  bool interleaved = false, deinterleave = false;
  Operation *root = nullptr;
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
  if (!hi || !lo || hi->data != lo->data || hi->step != 1 || lo->step != 1)
    return {};
  const int64_t d = lastDim(hi->data);
  if (d % 2 || lo->begin != 0 || lo->end != d / 2 || hi->begin != d / 2 || hi->end != d)
    return {};
  ops.append({cat, neg, neg.getX().getDefiningOp(), cat.getInputs()[1].getDefiningOp()});
  return hi->data;
}

/// True when a Reshape to `shape` (rank 4) keeps the first three dims of `t`: each copied (0, without
/// allowzero), equal to t's static dim, or the one -1 (the last dim is the caller's to check).
bool keepsLeadingDims(ox::ReshapeOp reshape, ArrayRef<int64_t> shape, RankedTensorType t) {
  for (int i = 0; i < 3; ++i)
    if ((shape[i] != 0 || reshape.getAllowzero() != 0) && shape[i] != -1 && shape[i] != t.getDimSize(i))
      return false;
  return true;
}

/// The `Concat(Unsqueeze(..., -1), Unsqueeze(..., -1))` of two rank-4 tensors along a new last axis
/// (`stack`).
ox::ConcatOp stackOf(Value v) {
  auto cat = defOp<ox::ConcatOp>(v);
  if (!cat || cat.getInputs().size() != 2 || rankOf(cat.getResult()) != 5 ||
      normAxis(cat.getAxis(), 5) != std::optional<int64_t>(4))
    return {};
  for (Value in : cat.getInputs()) {
    auto u = defOp<ox::UnsqueezeOp>(in);
    auto axes = u ? constantInts(u.getAxes()) : std::nullopt;
    if (!axes || axes->size() != 1 || rankOf(u.getData()) != 4 ||
        normAxis((*axes)[0], 5) != std::optional<int64_t>(4))
      return {};
  }
  return cat;
}

/// `v` = Reshape(stack(-x[..., 1::2], x[..., 0::2]), [.., D]) with x's last dim D: the partner each dim of
/// interleaved pairs multiplies by sin (Ernie-4.5's rotate_half).
Value matchRotateInterleaved(Value v, SmallVectorImpl<Operation *> &ops) {
  auto reshape = defOp<ox::ReshapeOp>(v);
  auto cat = reshape ? stackOf(reshape.getData()) : ox::ConcatOp();
  if (!cat || rankOf(reshape.getResult()) != 4)
    return {};
  auto negU = defOp<ox::UnsqueezeOp>(cat.getInputs()[0]), evenU = defOp<ox::UnsqueezeOp>(cat.getInputs()[1]);
  auto neg = defOp<ox::NegOp>(negU.getData());
  SmallVector<Operation *> slices;
  Value x = neg ? matchEvenOdd(evenU.getData(), neg.getX(), slices) : Value();
  if (!x)
    return {};
  // The Reshape merges the stacked pairs back into x's layout [d0, d1, d2, D].
  auto shape = constantInts(reshape.getShape());
  auto xT = cast<RankedTensorType>(x.getType());
  if (!shape || shape->size() != 4 || (*shape)[3] != xT.getDimSize(3) ||
      !keepsLeadingDims(reshape, *shape, xT))
    return {};
  ops.append({reshape, cat, negU, evenU, neg});
  ops.append(slices.begin(), slices.end());
  return x;
}

/// True when `add` looks like a rotation (one operand multiplies a `Concat(Neg(..), ..)`, or the Reshape of a
/// stack of a Neg and another tensor): only those get a remark when they are not raised.
bool looksLikeRotation(ox::AddOp add) {
  for (Value o : add->getOperands())
    if (auto m = defOp<ox::MulOp>(o))
      for (Value f : m->getOperands()) {
        if (auto r = defOp<ox::ReshapeOp>(f))
          f = r.getData();
        if (auto c = defOp<ox::ConcatOp>(f); c && c.getInputs().size() == 2) {
          Value first = c.getInputs()[0];
          if (auto u = defOp<ox::UnsqueezeOp>(first))
            first = u.getData();
          if (defOp<ox::NegOp>(first))
            return true;
        }
      }
  return false;
}

/// True when `cat` looks like the halves form: Concat(Sub(Mul, Mul), Add(Mul, Mul)).
bool looksLikeHalvesRotation(ox::ConcatOp cat) {
  if (cat.getInputs().size() != 2)
    return false;
  auto sub = defOp<ox::SubOp>(cat.getInputs()[0]);
  auto add = defOp<ox::AddOp>(cat.getInputs()[1]);
  auto muls = [](Operation *op) {
    return op && defOp<ox::MulOp>(op->getOperand(0)) && defOp<ox::MulOp>(op->getOperand(1));
  };
  return muls(sub) && muls(add);
}

/// True when `v` = Mul(p, q) in either order.
bool isMulOf(Value v, Value p, Value q) {
  auto m = defOp<ox::MulOp>(v);
  return m && ((m.getA() == p && m.getB() == q) || (m.getA() == q && m.getB() == p));
}

/// The halves form at `cat`: Concat(a * cos - b * sin, b * cos + a * sin) over the last axis, each product's
/// operands in either order, the Add's too.
std::optional<Rotation> matchHalvesRotation(ox::ConcatOp cat, std::string &why) {
  why =
      "not Concat(a * cos - b * sin, b * cos + a * sin) over the halves or the even / odd dims of one tensor";
  if (!isLastAxisConcat(cat, 2))
    return std::nullopt;
  auto sub = defOp<ox::SubOp>(cat.getInputs()[0]);
  auto add = defOp<ox::AddOp>(cat.getInputs()[1]);
  auto ac = sub ? defOp<ox::MulOp>(sub.getA()) : ox::MulOp(),
       bs = sub ? defOp<ox::MulOp>(sub.getB()) : ox::MulOp();
  if (!ac || !bs || !add)
    return std::nullopt;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      Value a = ac->getOperand(i), c = ac->getOperand(1 - i), b = bs->getOperand(j),
            s = bs->getOperand(1 - j);
      if (!(isMulOf(add.getA(), b, c) && isMulOf(add.getB(), a, s)) &&
          !(isMulOf(add.getB(), b, c) && isMulOf(add.getA(), a, s)))
        continue;
      Rotation r;
      r.x = matchHalves(a, b, r.ops);
      if (!r.x) {
        r.x = matchEvenOdd(a, b, r.ops);
        r.interleaved = r.deinterleave = static_cast<bool>(r.x);
      }
      if (!r.x)
        continue;
      r.cos = c;
      r.sin = s;
      r.rotaryDim = lastDim(r.x);
      r.width = r.rotaryDim / 2;
      r.root = cat;
      r.ops.append({cat, sub, add, ac, bs, add.getA().getDefiningOp(), add.getB().getDefiningOp()});
      return r;
    }
  return std::nullopt;
}

std::optional<Rotation> matchRotation(ox::AddOp add, std::string &why) {
  for (int i = 0; i < 2; ++i) {
    auto direct = defOp<ox::MulOp>(add->getOperand(i)), rotated = defOp<ox::MulOp>(add->getOperand(1 - i));
    if (!direct || !rotated)
      continue;
    for (int j = 0; j < 2; ++j) {
      Rotation r;
      Value x = matchRotateHalf(rotated->getOperand(j), r.ops);
      if (!x) {
        x = matchRotateInterleaved(rotated->getOperand(j), r.ops);
        r.interleaved = static_cast<bool>(x);
      }
      if (!x)
        continue;
      r.sin = rotated->getOperand(1 - j);
      r.cos = otherOperand(direct, x);
      if (!r.cos) {
        why = "the un-rotated term does not multiply the rotated tensor";
        return std::nullopt;
      }
      r.x = x;
      r.rotaryDim = r.width = lastDim(x);
      r.root = add;
      r.ops.append({add, direct, rotated});
      llvm::erase(r.ops, nullptr);
      return r;
    }
  }
  why = "not x * cos + Concat(-x[..., h:], x[..., :h]) * sin (or its interleaved form) over the same x";
  return std::nullopt;
}

/// t when `v` = repeat_interleave(t, 2) along the last axis as exported: Reshape(Expand(Unsqueeze(t, -1),
/// [1, .., 1, 2]), [.., 2 * t's last dim]) of a rank-4 t (Ernie-4.5's cos / sin); `ops` gets the three ops.
Value repeatInterleaveSource(Value v, SmallVectorImpl<Operation *> &ops) {
  auto reshape = defOp<ox::ReshapeOp>(v);
  auto expand = reshape ? defOp<ox::ExpandOp>(reshape.getData()) : ox::ExpandOp();
  auto unsq = expand ? defOp<ox::UnsqueezeOp>(expand.getInput()) : ox::UnsqueezeOp();
  if (!unsq || rankOf(unsq.getData()) != 4 || rankOf(reshape.getResult()) != 4)
    return {};
  auto axes = constantInts(unsq.getAxes());
  auto times = constantInts(expand.getShape());
  auto shape = constantInts(reshape.getShape());
  auto tT = cast<RankedTensorType>(unsq.getData().getType());
  const int64_t w = tT.getDimSize(3);
  if (!axes || axes->size() != 1 || normAxis((*axes)[0], 5) != std::optional<int64_t>(4) || !times ||
      times->size() != 5 || (*times)[4] != 2 || !shape || shape->size() != 4 || ShapedType::isDynamic(w) ||
      (*shape)[3] != 2 * w || !keepsLeadingDims(reshape, *shape, tT))
    return {};
  for (int i = 0; i < 4; ++i)
    if ((*times)[i] != 1)
      return {};
  ops.append({reshape, expand, unsq});
  return unsq.getData();
}

/// `c` (cos or sin as multiplied, broadcastable to x [B, H, S, ..]) as the op's [Bc, S, r] table; null when
/// it is not one.
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

std::string raise(std::optional<Rotation> rot, std::string why) {
  if (!rot)
    return why;
  Operation *root = rot->root;
  Value input = rot->x;
  SmallVector<Operation *> ops(rot->ops);
  // Partial rotary: x = q[..., :R], the result Concat(rotated, q[..., R:]).
  if (auto xs = lastAxisSlice(rot->x); xs && xs->begin == 0 && xs->step == 1 && root->hasOneUse()) {
    auto cat = dyn_cast<ox::ConcatOp>(*root->getUsers().begin());
    auto pass = cat && isLastAxisConcat(cat, 2) && cat.getInputs()[0] == root->getResult(0)
                    ? lastAxisSlice(cat.getInputs()[1])
                    : std::nullopt;
    const int64_t d = lastDim(xs->data);
    if (!pass || pass->data != xs->data || pass->step != 1 || pass->begin != rot->rotaryDim || pass->end != d)
      return "a rotation of part of the head dim whose untouched rest is not concatenated after it";
    ops.append({cat, rot->x.getDefiningOp(), cat.getInputs()[1].getDefiningOp()});
    root = cat;
    input = xs->data;
  }
  // Interleaved pairs whose tables repeat each pair's value twice (repeat_interleave): the op reads the half
  // tables (W = R / 2) and the repeat goes.
  if (rot->interleaved && !rot->deinterleave && rot->width == rot->rotaryDim) {
    SmallVector<Operation *> repeats;
    Value c = repeatInterleaveSource(rot->cos, repeats), s = repeatInterleaveSource(rot->sin, repeats);
    if (c && s) {
      rot->cos = c, rot->sin = s, rot->width = rot->rotaryDim / 2;
      ops.append(repeats.begin(), repeats.end());
    }
  }
  auto xT = dyn_cast<RankedTensorType>(input.getType());
  auto outT = dyn_cast<RankedTensorType>(root->getResult(0).getType());
  if (!xT || !outT || !xT.getElementType().isF32() || outT.getRank() != 4 || outT.getShape() != xT.getShape())
    return "the rotated tensor is not f32 [B, H, S, D] or the rotation broadcasts it";
  OpBuilder b(root);
  Value cos = table(b, root->getLoc(), rot->cos, xT, rot->width, why);
  Value sin = cos ? table(b, root->getLoc(), rot->sin, xT, rot->width, why) : Value();
  if (!cos || !sin)
    return why;
  auto unit = [&](bool on) { return on ? b.getUnitAttr() : UnitAttr(); };
  auto op = b.create<moe::RotaryOp>(root->getLoc(), outT, input, cos, sin, Value(),
                                    b.getI64IntegerAttr(rot->rotaryDim), unit(rot->interleaved),
                                    b.getI64IntegerAttr(2), UnitAttr(), b.getF32FloatAttr(1e-6f),
                                    unit(rot->deinterleave));
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
    SmallVector<Operation *> candidates;
    getOperation()->walk([&](Operation *op) {
      if (auto a = dyn_cast<ox::AddOp>(op); a && looksLikeRotation(a))
        candidates.push_back(op);
      else if (auto c = dyn_cast<ox::ConcatOp>(op); c && looksLikeHalvesRotation(c))
        candidates.push_back(op);
    });
    for (Operation *op : candidates) {
      Location loc = op->getLoc();
      std::string why;
      if (auto a = dyn_cast<ox::AddOp>(op)) {
        auto rot = matchRotation(a, why);
        why = raise(std::move(rot), why);
      } else {
        auto rot = matchHalvesRotation(cast<ox::ConcatOp>(op), why);
        why = raise(std::move(rot), why);
      }
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
