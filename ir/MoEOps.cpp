//===- MoEOps.cpp - moe dialect ops: verifiers, folds, canonicalisations --===//
#include "ir/MoEOps.h"
#include "kernels/cpu/moert_kernel_abi.h"

#include "mlir/IR/Matchers.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/IR/PatternMatch.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/SmallString.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
using namespace moec::moe;

#define GET_OP_CLASSES
#include "ir/MoEOps.cpp.inc"

namespace {

std::string shapeStr(ShapedType t) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << '[';
  llvm::interleave(
      t.getShape(), os,
      [&](int64_t d) {
        if (ShapedType::isDynamic(d))
          os << '?';
        else
          os << d;
      },
      ", ");
  os << ']';
  return s;
}

bool dimsConflict(int64_t a, int64_t b) {
  return !ShapedType::isDynamic(a) && !ShapedType::isDynamic(b) && a != b;
}

/// Checks one operand's shape against expectations; each expected dim carries a name for the message.
/// A dynamic dim on either side is accepted (checked at run time).
struct ShapeChecker {
  SparseMoEOp op;
  LogicalResult check(StringRef operand, Value v, ArrayRef<std::pair<int64_t, StringRef>> expected) {
    auto t = cast<RankedTensorType>(v.getType());
    if (t.getRank() != static_cast<int64_t>(expected.size())) {
      std::string want;
      llvm::raw_string_ostream os(want);
      os << '[';
      llvm::interleave(
          expected, os, [&](auto &e) { os << e.second; }, ", ");
      os << ']';
      return op.emitOpError() << "operand '" << operand << "' must have rank " << expected.size() << " ("
                              << want << "), got " << shapeStr(t);
    }
    for (auto [i, e] : llvm::enumerate(expected)) {
      if (dimsConflict(t.getDimSize(i), e.first))
        return op.emitOpError() << "operand '" << operand << "' " << shapeStr(t) << ": dim " << i
                                << " must be " << e.second << " = " << e.first << ", got " << t.getDimSize(i);
    }
    return success();
  }
};

/// Logical K (reduction length) stored in a packed last dim, or dynamic.
int64_t unpackedDim(int64_t stored, WeightQuantAttr q) {
  if (!q || ShapedType::isDynamic(stored))
    return stored;
  return stored * 8 / q.getBits();
}

} // namespace

int64_t SparseMoEOp::getHiddenDim() {
  auto fc2 = getFc2().getType();
  return unpackedDim(fc2.getDimSize(2), getFc2QuantAttr());
}

int64_t SparseMoEOp::getActiveHiddenDim() {
  if (auto keep = getKeep())
    return *keep;
  int64_t f = getHiddenDim();
  DenseElementsAttr mask;
  if (!getMask() || !matchPattern(getMask(), m_Constant(&mask)) || ShapedType::isDynamic(f))
    return f;
  int64_t best = 0;
  int64_t experts = mask.getType().getDimSize(0);
  auto values = llvm::to_vector(mask.getValues<APInt>());
  for (int64_t e = 0; e < experts; ++e) {
    int64_t count = 0;
    for (int64_t j = 0; j < f; ++j)
      count += !values[e * f + j].isZero();
    best = std::max(best, count);
  }
  return best;
}

LogicalResult SparseMoEOp::verify() {
  ShapeChecker c{*this};
  auto inputT = getInput().getType();
  if (inputT.getRank() != 2)
    return emitOpError() << "operand 'input' must have rank 2 ([T, H]), got " << shapeStr(inputT);
  auto outT = getOutput().getType();
  if (outT.getElementType() != inputT.getElementType())
    return emitOpError() << "result element type " << outT.getElementType()
                         << " must match operand 'input' element type " << inputT.getElementType();
  int64_t t = inputT.getDimSize(0), h = inputT.getDimSize(1);
  if (failed(c.check("result", getOutput(), {{t, "T"}, {h, "H"}})))
    return failure();

  // fc1 / fc2 and their quantisation decide E, F and H as the weights see them.
  auto fc1T = getFc1().getType(), fc2T = getFc2().getType();
  auto q1 = getFc1QuantAttr(), q2 = getFc2QuantAttr();
  for (auto [name, type, quant, scales] :
       {std::make_tuple("fc1", fc1T, q1, getFc1Scales()), std::make_tuple("fc2", fc2T, q2, getFc2Scales())}) {
    bool isInt = type.getElementType().isInteger(8);
    if (isInt && !quant)
      return emitOpError() << "operand '" << name << "' holds integers (" << type.getElementType()
                           << ") but the op has no '" << name << "_quant' attribute";
    if (!isInt && quant)
      return emitOpError() << "attribute '" << name << "_quant' needs integer weights in operand '" << name
                           << "', got " << type.getElementType();
    if (bool(quant) != bool(scales))
      return emitOpError() << "operand '" << name << "_scales' must be given exactly when '" << name
                           << "' is quantised";
    if (type.getRank() != 3)
      return emitOpError() << "operand '" << name << "' must have rank 3, got " << shapeStr(type);
  }
  int64_t e = fc1T.getDimSize(0);
  int64_t fc1Rows = fc1T.getDimSize(1);
  int64_t f = getHiddenDim();
  if (isGated() && !ShapedType::isDynamic(fc1Rows) && fc1Rows % 2 != 0)
    return emitOpError() << "operand 'fc1' " << shapeStr(fc1T) << ": gated activation '"
                         << stringifyActivation(getActivation()) << "' needs an even row count (gate and up)";
  int64_t fFromFc1 = ShapedType::isDynamic(fc1Rows) ? fc1Rows : (isGated() ? fc1Rows / 2 : fc1Rows);
  if (dimsConflict(fFromFc1, f))
    return emitOpError() << "operand 'fc1' " << shapeStr(fc1T) << " has " << fc1Rows
                         << " rows but operand 'fc2' " << shapeStr(fc2T) << " implies F = " << f
                         << " (activation '" << stringifyActivation(getActivation()) << "' needs "
                         << (isGated() ? "2F" : "F") << " rows)";
  if (ShapedType::isDynamic(f))
    f = fFromFc1;
  if (dimsConflict(unpackedDim(fc1T.getDimSize(2), q1), h))
    return emitOpError() << "operand 'fc1' " << shapeStr(fc1T) << ": reduction dim holds "
                         << unpackedDim(fc1T.getDimSize(2), q1)
                         << " values but operand 'input' has H = " << h;
  if (failed(c.check("fc2", getFc2(), {{e, "E"}, {h, "H"}, {fc2T.getDimSize(2), "F"}})))
    return failure();

  if (q1 && !ShapedType::isDynamic(h) && (h * q1.getBits()) % 8 != 0)
    return emitOpError() << "H = " << h << " cannot be packed at " << q1.getBits() << " bits";
  for (auto [name, scales, quant, rows, red] : {std::make_tuple("fc1_scales", getFc1Scales(), q1, fc1Rows, h),
                                                std::make_tuple("fc2_scales", getFc2Scales(), q2, h, f)}) {
    if (!scales)
      continue;
    if (quant.getBlockSize() == 0) {
      if (failed(c.check(name, scales, {{e, "E"}, {rows, "rows"}})))
        return failure();
      continue;
    }
    if (!ShapedType::isDynamic(red) && red % quant.getBlockSize() != 0)
      return emitOpError() << "operand '" << name << "': reduction length " << red
                           << " is not a multiple of block_size " << quant.getBlockSize();
    int64_t blocks = ShapedType::isDynamic(red) ? red : red / quant.getBlockSize();
    if (failed(c.check(name, scales, {{e, "E"}, {rows, "rows"}, {blocks, "blocks"}})))
      return failure();
  }

  // Router.
  int64_t n = ShapedType::isDynamic(e) ? e : e + getZeroExperts();
  if (getRouterKind() == RouterKind::linear) {
    if (failed(c.check("router", getRouter(), {{h, "H"}, {n, "E + zero_experts"}})))
      return failure();
  } else if (failed(c.check("router", getRouter(), {{t, "T"}, {n, "E + zero_experts"}}))) {
    return failure();
  }
  if (getRouterBias() && failed(c.check("router_bias", getRouterBias(), {{n, "E + zero_experts"}})))
    return failure();
  if (getSelectionBias() && failed(c.check("selection_bias", getSelectionBias(), {{n, "E + zero_experts"}})))
    return failure();
  if (!ShapedType::isDynamic(n) && static_cast<int64_t>(getK()) > n)
    return emitOpError() << "k = " << getK() << " exceeds the " << n << " router columns (E + zero_experts)";

  // Sparsemixer routing (PhiMoE).
  if (getGate() == GateFunc::sparsemixer) {
    if (!getJitterEps())
      return emitOpError() << "gate = sparsemixer needs 'jitter_eps'";
    if (getSelectionBias() || getExpertGroups() > 1 || getNormalize() || getZeroExperts())
      return emitOpError() << "gate = sparsemixer takes no selection bias, expert groups, normalize or zero "
                              "experts";
  } else if (getJitterEps()) {
    return emitOpError() << "'jitter_eps' needs gate = sparsemixer";
  }

  // Grouped top-k (DeepSeek-V3 style).
  if (getExpertGroups() > 1) {
    int64_t groups = getExpertGroups();
    if (!getGroupTopk())
      return emitOpError() << "expert_groups = " << groups << " needs 'group_topk'";
    if (static_cast<int64_t>(*getGroupTopk()) > groups)
      return emitOpError() << "group_topk = " << *getGroupTopk() << " exceeds expert_groups = " << groups;
    if (!ShapedType::isDynamic(n) && n % groups != 0)
      return emitOpError() << "expert_groups = " << groups << " does not divide the " << n
                           << " router columns";
    if (!ShapedType::isDynamic(n) &&
        static_cast<int64_t>(getK()) > static_cast<int64_t>(*getGroupTopk()) * (n / groups))
      return emitOpError() << "k = " << getK() << " exceeds the " << *getGroupTopk() * (n / groups)
                           << " experts in the chosen groups";
  } else if (getGroupTopk()) {
    return emitOpError() << "'group_topk' needs expert_groups > 1";
  } else if (getGroupScore() != GroupScore::top2_sum) {
    return emitOpError() << "'group_score' needs expert_groups > 1";
  }

  // Biases.
  if (getFc1Bias() && failed(c.check("fc1_bias", getFc1Bias(), {{e, "E"}, {fc1Rows, "fc1 rows"}})))
    return failure();
  if (getFc2Bias() && failed(c.check("fc2_bias", getFc2Bias(), {{e, "E"}, {h, "H"}})))
    return failure();

  // Fine-grained dim selection: static mask or low-rank predictor + keep.
  if (getMask() && failed(c.check("mask", getMask(), {{e, "E"}, {f, "F"}})))
    return failure();
  if (bool(getPredA()) != bool(getPredB()))
    return emitOpError() << "operands 'pred_a' and 'pred_b' must be given together";
  if (getPredA()) {
    if (getMask())
      return emitOpError() << "operand 'mask' and the predictor ('pred_a', 'pred_b') are mutually exclusive";
    auto aT = cast<RankedTensorType>(getPredA().getType());
    int64_t r = aT.getRank() == 3 ? aT.getDimSize(2) : ShapedType::kDynamic;
    if (failed(c.check("pred_a", getPredA(), {{e, "E"}, {h, "H"}, {r, "R"}})) ||
        failed(c.check("pred_b", getPredB(), {{e, "E"}, {r, "R"}, {f, "F"}})))
      return failure();
    if (!getKeep())
      return emitOpError() << "the predictor ('pred_a', 'pred_b') needs attribute 'keep'";
    if (!ShapedType::isDynamic(f) && static_cast<int64_t>(*getKeep()) > f)
      return emitOpError() << "keep = " << *getKeep() << " exceeds the expert hidden size F = " << f;
  } else if (getKeep()) {
    return emitOpError() << "attribute 'keep' needs the predictor operands 'pred_a' and 'pred_b'";
  }

  // Fused norm, shared expert and residual.
  if (getNorm() == NormKind::none) {
    if (getNormWeight() || getNormBias())
      return emitOpError() << "operands 'norm_weight'/'norm_bias' need attribute 'norm' (rms or layer)";
  } else {
    if (!getNormWeight())
      return emitOpError() << "norm = " << stringifyNormKind(getNorm()) << " needs operand 'norm_weight'";
    if (failed(c.check("norm_weight", getNormWeight(), {{h, "H"}})))
      return failure();
    if (getNormBias() && getNorm() != NormKind::layer)
      return emitOpError() << "operand 'norm_bias' only applies to norm = layer";
    if (getNormBias() && failed(c.check("norm_bias", getNormBias(), {{h, "H"}})))
      return failure();
    if (!(getNormEpsilon().convertToFloat() >= 0.0f))
      return emitOpError() << "norm_epsilon must be non-negative";
  }
  if (bool(getSharedFc1()) != bool(getSharedFc2()))
    return emitOpError() << "operands 'shared_fc1' and 'shared_fc2' must be given together";
  if (getSharedGate() && !getSharedFc1())
    return emitOpError() << "operand 'shared_gate' needs a shared expert ('shared_fc1', 'shared_fc2')";
  if (getSharedFc1()) {
    auto s2 = cast<RankedTensorType>(getSharedFc2().getType());
    int64_t fs = s2.getRank() == 2 ? s2.getDimSize(1) : ShapedType::kDynamic;
    int64_t rows = ShapedType::isDynamic(fs) ? fs : (isGated() ? 2 * fs : fs);
    if (failed(c.check("shared_fc2", getSharedFc2(), {{h, "H"}, {fs, "Fs"}})) ||
        failed(c.check("shared_fc1", getSharedFc1(), {{rows, isGated() ? "2Fs" : "Fs"}, {h, "H"}})))
      return failure();
    if (getSharedGate() && failed(c.check("shared_gate", getSharedGate(), {{h, "H"}})))
      return failure();
  }
  if (getResidual() && failed(c.check("residual", getResidual(), {{t, "T"}, {h, "H"}})))
    return failure();

  if (getActivationLimit() && !(getActivationLimit()->convertToFloat() > 0.0f))
    return emitOpError() << "activation_limit must be positive";
  if (!isGated() && getGatedLayout() != GatedLayout::block)
    return emitOpError() << "gated_layout only applies to gated activations (swiglu, geglu), not '"
                         << stringifyActivation(getActivation()) << "'";
  return success();
}

//===----------------------------------------------------------------------===//
// Canonicalisation: optional operands that change nothing are dropped, so later passes and codegen see
// the simplest form (no bias add of zeros, no mask that keeps every dim).
//===----------------------------------------------------------------------===//

namespace {

bool isAllZeroFloat(Value v) {
  DenseElementsAttr attr;
  if (!v || !matchPattern(v, m_Constant(&attr)))
    return false;
  if (attr.isSplat())
    return attr.getSplatValue<APFloat>().isZero();
  return llvm::all_of(attr.getValues<APFloat>(), [](const APFloat &x) { return x.isZero(); });
}

bool isAllNonZeroMask(Value v) {
  DenseElementsAttr attr;
  if (!v || !matchPattern(v, m_Constant(&attr)))
    return false;
  if (attr.isSplat())
    return !attr.getSplatValue<APInt>().isZero();
  return llvm::all_of(attr.getValues<APInt>(), [](const APInt &x) { return !x.isZero(); });
}

struct DropNoOpOperands final : OpRewritePattern<SparseMoEOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(SparseMoEOp op, PatternRewriter &rewriter) const override {
    bool mask = isAllNonZeroMask(op.getMask()), routerBias = isAllZeroFloat(op.getRouterBias()),
         selectionBias = isAllZeroFloat(op.getSelectionBias()), fc1Bias = isAllZeroFloat(op.getFc1Bias()),
         fc2Bias = isAllZeroFloat(op.getFc2Bias()), normBias = isAllZeroFloat(op.getNormBias());
    if (!(mask || routerBias || selectionBias || fc1Bias || fc2Bias || normBias))
      return failure();
    rewriter.modifyOpInPlace(op, [&] {
      if (mask)
        op.getMaskMutable().clear();
      if (routerBias)
        op.getRouterBiasMutable().clear();
      if (selectionBias)
        op.getSelectionBiasMutable().clear();
      if (fc1Bias)
        op.getFc1BiasMutable().clear();
      if (fc2Bias)
        op.getFc2BiasMutable().clear();
      if (normBias)
        op.getNormBiasMutable().clear();
    });
    return success();
  }
};

} // namespace

//===----------------------------------------------------------------------===//
// moe.linear
//===----------------------------------------------------------------------===//

int64_t LinearOp::getInFeatures() { return getInput().getType().getShape().back(); }

int64_t LinearOp::getOutFeatures() {
  auto w = getWeight().getType();
  return getWeightQuantAttr() ? w.getDimSize(0) : w.getDimSize(1);
}

LogicalResult LinearOp::verify() {
  if (getOutputs().empty() || getOutputs().size() > MOERT_LIN_MAX_OUTPUTS)
    return emitOpError() << "has " << getOutputs().size() << " results; 1 to " << MOERT_LIN_MAX_OUTPUTS
                         << " split its columns";
  auto inT = getInput().getType(), outT = getOutput().getType(), wT = getWeight().getType();
  if (inT.getRank() < 1)
    return emitOpError() << "operand 'input' must have rank >= 1 ([..., K]), got " << shapeStr(inT);
  int64_t columns = 0; // every result's last dim together (dynamic when one is)
  for (Value r : getOutputs()) {
    auto rT = cast<RankedTensorType>(r.getType());
    if (rT.getRank() != inT.getRank())
      return emitOpError() << "result " << shapeStr(rT) << " must have the rank of operand 'input' "
                           << shapeStr(inT);
    if (rT.getElementType() != inT.getElementType())
      return emitOpError() << "result element type must match operand 'input''s";
    for (int64_t i = 0; i + 1 < inT.getRank(); ++i)
      if (dimsConflict(inT.getDimSize(i), rT.getDimSize(i)))
        return emitOpError() << "result " << shapeStr(rT) << " must keep operand 'input''s leading dims "
                             << shapeStr(inT);
    columns = ShapedType::isDynamic(columns) || rT.isDynamicDim(rT.getRank() - 1)
                  ? ShapedType::kDynamic
                  : columns + rT.getShape().back();
  }
  if (getOutputs().size() > 1 && getResidual())
    return emitOpError() << "a residual needs a single result (got " << getOutputs().size() << ")";
  int64_t k = getInFeatures();
  if (ShapedType::isDynamic(k))
    return emitOpError() << "operand 'input' " << shapeStr(inT) << ": its last dim (K) must be static";
  auto quant = getWeightQuantAttr();
  bool isInt = wT.getElementType().isInteger(8);
  int64_t n;
  if (!quant) {
    if (isInt)
      return emitOpError() << "operand 'weight' holds integers but the op has no 'weight_quant' attribute";
    if (getScales() || getZeroPoints())
      return emitOpError() << "operands 'scales' / 'zero_points' need 'weight_quant'";
    if (wT.getRank() != 2 || dimsConflict(wT.getDimSize(0), k))
      return emitOpError() << "operand 'weight' " << shapeStr(wT) << " must be [K, N] with K = " << k;
    n = wT.getDimSize(1);
  } else {
    unsigned bits = quant.getBits();
    int64_t blk = quant.getBlockSize();
    if (!isInt || !wT.getElementType().isUnsignedInteger())
      return emitOpError() << "attribute 'weight_quant' needs ui8 codes in operand 'weight'";
    if (blk == 0 || uint64_t(blk) != getBlockSize())
      return emitOpError() << "attribute 'weight_quant' must have a block_size equal to 'block_size' ("
                           << getBlockSize() << ")";
    int64_t nb = (k + blk - 1) / blk;
    if (wT.getRank() != 3 || dimsConflict(wT.getDimSize(1), nb) || dimsConflict(wT.getDimSize(2), blk * bits / 8))
      return emitOpError() << "operand 'weight' " << shapeStr(wT) << " must be [N, " << nb << ", "
                           << blk * bits / 8 << "] for K = " << k << ", " << bits << "-bit codes in blocks of "
                           << blk;
    n = wT.getDimSize(0);
    if (!getScales())
      return emitOpError() << "operand 'scales' must be given with 'weight_quant'";
    auto sT = getScales().getType();
    if (sT.hasStaticShape() && !ShapedType::isDynamic(n) && sT.getNumElements() != n * nb)
      return emitOpError() << "operand 'scales' " << shapeStr(sT) << " must hold N * ceil(K / block) = "
                           << n * nb << " values";
    if (auto z = getZeroPoints()) {
      auto zT = z.getType();
      int64_t want = zT.getElementType().isF32() ? n * nb : n * ((nb * bits + 7) / 8);
      if (zT.hasStaticShape() && !ShapedType::isDynamic(n) && zT.getNumElements() != want)
        return emitOpError() << "operand 'zero_points' " << shapeStr(zT) << " must hold " << want << " values";
    }
    Storage want = bits == 8 ? Storage::int8 : Storage::int4;
    if (getStorage() != want)
      return emitOpError() << "storage '" << stringifyStorage(getStorage()) << "' for " << bits
                           << "-bit weights kept as imported (must be '" << stringifyStorage(want) << "')";
  }
  if (dimsConflict(columns, n))
    return emitOpError() << (getOutputs().size() > 1 ? "results' last dims together" : "result's last dim")
                         << " must be N = " << n;
  if (auto b = getBias()) {
    auto bT = b.getType();
    if (bT.getRank() != 1 || dimsConflict(bT.getDimSize(0), n))
      return emitOpError() << "operand 'bias' " << shapeStr(bT) << " must be [N] with N = " << n;
  }
  if (getNorm() == NormKind::none) {
    if (getNormWeight() || getNormBias())
      return emitOpError() << "operands 'norm_weight'/'norm_bias' need attribute 'norm' (rms or layer)";
  } else {
    for (auto [what, v] :
         {std::pair<const char *, Value>{"norm_weight", getNormWeight()}, {"norm_bias", getNormBias()}}) {
      if (!v)
        continue;
      auto t = cast<RankedTensorType>(v.getType());
      if (t.getRank() != 1 || dimsConflict(t.getDimSize(0), k))
        return emitOpError() << "operand '" << what << "' " << shapeStr(t) << " must be [K] with K = " << k;
    }
    if (!getNormWeight())
      return emitOpError() << "norm = " << stringifyNormKind(getNorm()) << " needs operand 'norm_weight'";
    if (getNormBias() && getNorm() != NormKind::layer)
      return emitOpError() << "operand 'norm_bias' only applies to norm = layer";
    if (!(getNormEpsilon().convertToFloat() >= 0.0f))
      return emitOpError() << "norm_epsilon must be non-negative";
  }
  if (auto r = getResidual()) {
    auto rT = r.getType();
    bool ok = rT.getRank() == outT.getRank();
    for (int64_t i = 0; ok && i < rT.getRank(); ++i)
      ok = !dimsConflict(rT.getDimSize(i), outT.getDimSize(i));
    if (!ok)
      return emitOpError() << "operand 'residual' " << shapeStr(rT) << " must have the result's shape "
                           << shapeStr(outT);
  }
  return success();
}

LogicalResult KvCacheUpdateOp::verify() {
  auto fT = cast<RankedTensorType>(getFresh().getType()), oT = cast<RankedTensorType>(getPresent().getType());
  if (fT.getRank() != 4 || oT.getRank() != 4)
    return emitOpError()
           << "operand 'fresh' and the result must have rank 4 ([B, H, S, D], [B, H, T, D]), got "
           << shapeStr(fT) << " and " << shapeStr(oT);
  if (getPastLengths().getType().getRank() != 1 || getLength().getType().getRank() != 1 ||
      dimsConflict(getLength().getType().getDimSize(0), 1))
    return emitOpError() << "operands 'past_lengths' and 'length' must be i64 [B] and [1]";
  for (int i : {0, 1, 3})
    if (dimsConflict(oT.getDimSize(i), fT.getDimSize(i)))
      return emitOpError() << "result " << shapeStr(oT) << " must be [B, H, T, D] for 'fresh' "
                           << shapeStr(fT);
  if (Value p = getPast()) {
    auto pT = cast<RankedTensorType>(p.getType());
    if (pT.getRank() != 4 || dimsConflict(pT.getDimSize(0), fT.getDimSize(0)) ||
        dimsConflict(pT.getDimSize(1), fT.getDimSize(1)) || dimsConflict(pT.getDimSize(3), fT.getDimSize(3)))
      return emitOpError() << "operand 'past' " << shapeStr(pT) << " must be [B, H, P, D] for 'fresh' "
                           << shapeStr(fT);
  }
  return success();
}

LogicalResult NormOp::verify() {
  auto xT = getInput().getType(), oT = getOutput().getType(), wT = getWeight().getType();
  if (xT.getRank() < 1 || ShapedType::isDynamic(xT.getDimSize(xT.getRank() - 1)))
    return emitOpError() << "operand 'input' needs a static last dim, got " << shapeStr(xT);
  const int64_t d = xT.getDimSize(xT.getRank() - 1);
  bool same = oT.getRank() == xT.getRank();
  for (int64_t i = 0; same && i < xT.getRank(); ++i)
    same = !dimsConflict(oT.getDimSize(i), xT.getDimSize(i));
  if (!same)
    return emitOpError() << "result " << shapeStr(oT) << " must have the input's shape " << shapeStr(xT);
  if (wT.getRank() != 1 || wT.getDimSize(0) != d)
    return emitOpError() << "operand 'weight' must be [" << d << "], got " << shapeStr(wT);
  if (Value b = getBias()) {
    auto bT = cast<RankedTensorType>(b.getType());
    if (getKind() != NormKind::layer)
      return emitOpError() << "operand 'bias' needs kind layer";
    if (bT.getRank() != 1 || bT.getDimSize(0) != d)
      return emitOpError() << "operand 'bias' must be [" << d << "], got " << shapeStr(bT);
  }
  if (getKind() == NormKind::none)
    return emitOpError() << "needs kind rms or layer";
  if (!(getEpsilon().convertToFloat() >= 0))
    return emitOpError() << "epsilon must be >= 0";
  return success();
}

LogicalResult RotaryOp::verify() {
  auto xT = getInput().getType(), oT = getOutput().getType();
  if (xT.getRank() != 4 || oT.getRank() != 4)
    return emitOpError() << "operand 'input' and the result must have rank 4, got " << shapeStr(xT) << " and "
                         << shapeStr(oT);
  const int64_t d = xT.getDimSize(3), r = getRotaryDim(), seqAxis = getSeqAxis();
  if (ShapedType::isDynamic(d))
    return emitOpError() << "needs a static head dim, got " << shapeStr(xT);
  if (r <= 0 || r % 2 || r > d)
    return emitOpError() << "rotary_dim " << r << " must be even, positive and at most the head dim " << d;
  if (seqAxis != 1 && seqAxis != 2)
    return emitOpError() << "seq_axis must be 1 or 2, got " << seqAxis;
  if (getDeinterleave() && !getInterleaved())
    return emitOpError() << "deinterleave needs interleaved pairs";
  const int64_t a1 = getTranspose() ? 2 : 1, a2 = getTranspose() ? 1 : 2;
  if (dimsConflict(oT.getDimSize(0), xT.getDimSize(0)) || dimsConflict(oT.getDimSize(a1), xT.getDimSize(1)) ||
      dimsConflict(oT.getDimSize(a2), xT.getDimSize(2)) || oT.getDimSize(3) != d)
    return emitOpError() << "result " << shapeStr(oT) << " must be the input " << shapeStr(xT)
                         << (getTranspose() ? " with axes 1 and 2 swapped" : "");
  for (auto [v, what] : {std::pair{getCos(), "cos"}, {getSin(), "sin"}}) {
    auto t = cast<RankedTensorType>(v.getType());
    const int64_t w = t.getRank() == 3 ? t.getDimSize(2) : 0;
    if (t.getRank() != 3 || (w != r && w != r / 2) || dimsConflict(t.getDimSize(1), xT.getDimSize(seqAxis)) ||
        (t.getDimSize(0) != 1 && dimsConflict(t.getDimSize(0), xT.getDimSize(0))))
      return emitOpError() << "operand '" << what << "' " << shapeStr(t) << " must be [1 or B, S, " << r
                           << " or " << r / 2 << "] for input " << shapeStr(xT) << " (S on axis " << seqAxis
                           << ")";
  }
  if (Value w = getNormWeight()) {
    auto wT = cast<RankedTensorType>(w.getType());
    if (wT.getRank() != 1 || wT.getDimSize(0) != d)
      return emitOpError() << "operand 'norm_weight' must be [" << d << "], got " << shapeStr(wT);
  }
  return success();
}

LogicalResult AttentionOp::verify() {
  auto qT = getQuery().getType(), kT = getKey().getType(), vT = getValue().getType(),
       oT = getOutput().getType();
  for (auto [t, what] :
       {std::pair{qT, "operand 'query'"}, {kT, "operand 'key'"}, {vT, "operand 'value'"}, {oT, "result"}})
    if (t.getRank() != 4)
      return emitOpError() << what << " must have rank 4, got " << shapeStr(t);
  const int64_t hq = qT.getDimSize(1), hkv = kT.getDimSize(1), dk = qT.getDimSize(3), dv = vT.getDimSize(3);
  if (ShapedType::isDynamic(hq) || ShapedType::isDynamic(hkv) || ShapedType::isDynamic(dk) ||
      ShapedType::isDynamic(dv) || hq <= 0 || hkv <= 0 || dk <= 0 || dv <= 0)
    return emitOpError() << "needs static head counts and head dims: query " << shapeStr(qT) << ", key "
                         << shapeStr(kT) << ", value " << shapeStr(vT);
  if (hq % hkv)
    return emitOpError() << "query heads (" << hq << ") must be a multiple of key/value heads (" << hkv
                         << ")";
  if (getBf16Activations() && dk % 2)
    return emitOpError() << "bf16_activations multiplies pairs of key dims: key head dim " << dk << " is odd";
  if (dimsConflict(kT.getDimSize(3), dk) || dimsConflict(vT.getDimSize(1), hkv) ||
      dimsConflict(kT.getDimSize(2), vT.getDimSize(2)) || dimsConflict(kT.getDimSize(0), qT.getDimSize(0)) ||
      dimsConflict(vT.getDimSize(0), qT.getDimSize(0)))
    return emitOpError() << "key " << shapeStr(kT) << " and value " << shapeStr(vT)
                         << " must be [B, Hkv, T, Dk] and [B, Hkv, T, Dv] for query " << shapeStr(qT);
  const bool seqMajor = getTransposeOutput(); // [B, S, Hq, Dv]
  if (dimsConflict(oT.getDimSize(0), qT.getDimSize(0)) || dimsConflict(oT.getDimSize(seqMajor ? 2 : 1), hq) ||
      dimsConflict(oT.getDimSize(seqMajor ? 1 : 2), qT.getDimSize(2)) || dimsConflict(oT.getDimSize(3), dv))
    return emitOpError() << "result " << shapeStr(oT) << " must be "
                         << (seqMajor ? "[B, S, Hq, Dv] = [" : "[B, Hq, S, Dv] = [") << qT.getDimSize(0)
                         << ", " << (seqMajor ? qT.getDimSize(2) : hq) << ", "
                         << (seqMajor ? hq : qT.getDimSize(2)) << ", " << dv << "]";
  if (Value m = getMask()) {
    auto mT = cast<RankedTensorType>(m.getType());
    if (mT.getRank() != 4)
      return emitOpError() << "operand 'mask' must have rank 4 ([B|1, Hq|1, S|1, T|1]), got " << shapeStr(mT);
    const int64_t full[4] = {qT.getDimSize(0), hq, qT.getDimSize(2), kT.getDimSize(2)};
    for (int i = 0; i < 4; ++i)
      if (mT.getDimSize(i) != 1 && dimsConflict(mT.getDimSize(i), full[i]))
        return emitOpError() << "operand 'mask' " << shapeStr(mT) << ": dim " << i
                             << " must be 1 or that of [B, Hq, S, T]";
  }
  if (!(getSoftcap().convertToFloat() >= 0.0f))
    return emitOpError() << "softcap must be >= 0 (0: none), got " << getSoftcap().convertToFloat();
  if (Value sk = getSinks()) {
    auto sT = cast<RankedTensorType>(sk.getType());
    if (sT.getRank() != 1 || dimsConflict(sT.getDimSize(0), hq))
      return emitOpError() << "operand 'sinks' must be [" << hq << "] (one per query head), got "
                           << shapeStr(sT);
  }
  return success();
}

LogicalResult EmbeddingOp::verify() {
  auto tT = getTable().getType(), iT = getIndices().getType(), outT = getOutput().getType();
  if (tT.getRank() != 2)
    return emitOpError() << "operand 'table' " << shapeStr(tT) << " must be [V, H]";
  if (outT.getRank() != iT.getRank() + 1)
    return emitOpError() << "result " << shapeStr(outT) << " must be operand 'indices'' shape "
                         << shapeStr(iT) << " followed by H";
  for (int64_t i = 0; i < iT.getRank(); ++i)
    if (dimsConflict(iT.getDimSize(i), outT.getDimSize(i)))
      return emitOpError() << "result " << shapeStr(outT) << " must keep operand 'indices'' shape "
                           << shapeStr(iT);
  if (dimsConflict(outT.getShape().back(), tT.getDimSize(1)))
    return emitOpError() << "result " << shapeStr(outT)
                         << ": last dim must be the table's H = " << tT.getDimSize(1);
  return success();
}

void SparseMoEOp::getCanonicalizationPatterns(RewritePatternSet &results, MLIRContext *context) {
  results.add<DropNoOpOperands>(context);
}

NamedAttribute SparseMoEOperands::flatten(Builder &b, SmallVectorImpl<Value> &operands) const {
  const Value all[] = {input,    router,    routerBias, selectionBias, fc1,     fc1Bias, fc1Scales,
                       fc2,      fc2Bias,   fc2Scales,  mask,          predA,   predB,   normWeight,
                       normBias, sharedFc1, sharedFc2,  sharedGate,    residual};
  SmallVector<int32_t> segments;
  for (Value v : all) {
    segments.push_back(v ? 1 : 0);
    if (v)
      operands.push_back(v);
  }
  return b.getNamedAttr(SparseMoEOp::getOperandSegmentSizesAttrName(
                            OperationName(SparseMoEOp::getOperationName(), b.getContext())),
                        b.getDenseI32ArrayAttr(segments));
}

SparseMoEOp moec::moe::buildSparseMoE(OpBuilder &b, Location loc, Type result,
                                      const SparseMoEOperands &operands, ArrayRef<NamedAttribute> attrs) {
  OperationState state(loc, SparseMoEOp::getOperationName());
  SmallVector<Value> values;
  NamedAttribute segments = operands.flatten(b, values);
  state.addOperands(values);
  state.addAttribute(segments.getName(), segments.getValue());
  state.addAttributes(attrs);
  state.addTypes(result);
  return cast<SparseMoEOp>(b.create(state));
}
