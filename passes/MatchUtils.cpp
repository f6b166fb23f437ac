//===- MatchUtils.cpp - helpers shared by moec's raising and fusion passes -===//
#include "passes/MatchUtils.h"

#include "mlir/IR/Diagnostics.h"
#include "ir/ONNXOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/DialectResourceBlobManager.h"
#include "mlir/IR/Matchers.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"
#include "llvm/ADT/SetVector.h"

#include <cstring>

using namespace mlir;
namespace ox = moec::onnxir;

namespace moec {

std::vector<char> constantBytes(Value v) {
  auto type = v ? dyn_cast<RankedTensorType>(v.getType()) : RankedTensorType();
  if (!type || !isa<FloatType>(type.getElementType()))
    return {};
  return constantTensorBytes(v);
}

Value makeConstant(OpBuilder &b, Location loc, RankedTensorType type, ArrayRef<char> bytes, StringRef name) {
  return b.create<arith::ConstantOp>(loc, type, cast<TypedAttr>(elementsFromBytes(type, bytes, name)));
}

std::optional<SmallVector<int64_t>> constantInts(Value v) {
  DenseIntElementsAttr attr;
  if (!v || !matchPattern(v, m_Constant(&attr)))
    return std::nullopt;
  SmallVector<int64_t> out;
  for (const APInt &x : attr.getValues<APInt>())
    out.push_back(x.getSExtValue());
  return out;
}

std::optional<double> constantScalar(Value v) {
  DenseFPElementsAttr attr;
  if (!v || !matchPattern(v, m_Constant(&attr)) || attr.getNumElements() != 1)
    return std::nullopt;
  return (*attr.getValues<APFloat>().begin()).convertToDouble();
}

Value stripReshapes(Value v) {
  while (v) {
    if (auto r = defOp<ox::ReshapeOp>(v))
      v = r.getData();
    else if (auto i = defOp<ox::IdentityOp>(v))
      v = i.getX();
    else
      break;
  }
  return v;
}

bool sameData(Value a, Value b) { return a && b && stripReshapes(a) == stripReshapes(b); }

int64_t clampBound(int64_t b, int64_t n) {
  if (b < 0)
    b += n;
  return std::clamp<int64_t>(b, 0, n);
}

Value otherOperand(Operation *op, Value known) {
  if (!op || op->getNumOperands() != 2)
    return {};
  if (op->getOperand(0) == known)
    return op->getOperand(1);
  if (op->getOperand(1) == known)
    return op->getOperand(0);
  return {};
}

std::optional<int64_t> normAxis(int64_t axis, int64_t rank) {
  if (axis < 0)
    axis += rank;
  if (axis < 0 || axis >= rank)
    return std::nullopt;
  return axis;
}

int64_t rankOf(Value v) {
  auto t = v ? dyn_cast<RankedTensorType>(v.getType()) : RankedTensorType();
  return t ? t.getRank() : -1;
}

std::optional<LinearMatch> matchLinear(Value v) {
  LinearMatch l;
  Value mmOut = v;
  if (auto add = defOp<ox::AddOp>(v)) {
    for (int i = 0; i < 2; ++i)
      if (matchPattern(add->getOperand(i), m_Constant()) && rankOf(add->getOperand(i)) == 1 &&
          (defOp<ox::MatMulOp>(add->getOperand(1 - i)) || defOp<ox::GemmOp>(add->getOperand(1 - i)))) {
        l.bias = add->getOperand(i);
        mmOut = add->getOperand(1 - i);
        l.ops.push_back(add);
        break;
      }
  }
  if (auto mm = defOp<ox::MatMulOp>(mmOut)) {
    l.x = mm.getA();
    l.weight = mm.getB();
    l.ops.push_back(mm);
  } else if (auto g = defOp<ox::GemmOp>(mmOut)) {
    if (g.getTransA() != 0 || g.getAlpha().convertToDouble() != 1.0 || (g.getC() && l.bias))
      return std::nullopt;
    if (g.getC()) {
      if (g.getBeta().convertToDouble() != 1.0 || !matchPattern(g.getC(), m_Constant()))
        return std::nullopt;
      l.bias = g.getC();
    }
    l.x = g.getA();
    l.weight = g.getB();
    l.weightIsOutIn = g.getTransB() != 0;
    l.ops.push_back(g);
  } else {
    return std::nullopt;
  }
  auto wt = dyn_cast<RankedTensorType>(l.weight.getType());
  if (!wt || wt.getRank() != 2 || !wt.hasStaticShape() || !matchPattern(l.weight, m_Constant()))
    return std::nullopt;
  l.out = wt.getDimSize(l.weightIsOutIn ? 0 : 1);
  l.in = wt.getDimSize(l.weightIsOutIn ? 1 : 0);
  if (l.bias) {
    auto bt = dyn_cast<RankedTensorType>(l.bias.getType());
    if (!bt || bt.getNumElements() != l.out)
      return std::nullopt;
  }
  return l;
}

/// W's bytes in the orientation asked for (`outIn`: [out, in], else [in, out]), transposing when stored the
/// other way.
static std::vector<char> linearWeight(const LinearMatch &l, bool outIn, StackCache *cache) {
  std::vector<char> bytes;
  if (l.stackIndex >= 0) {
    // Expert stackIndex of [E, ., .] (a reshape of a constant holds the same bytes).
    std::vector<char> local, *stack = &local;
    if (cache) {
      auto [it, inserted] = cache->try_emplace(l.weight);
      if (inserted)
        it->second = constantBytes(stripReshapes(l.weight));
      stack = &it->second;
    } else {
      local = constantBytes(stripReshapes(l.weight));
    }
    int64_t e = cast<RankedTensorType>(l.weight.getType()).getDimSize(0);
    if (stack->empty() || l.stackIndex >= e)
      return {};
    size_t slice = stack->size() / size_t(e);
    bytes.assign(stack->begin() + l.stackIndex * slice, stack->begin() + (l.stackIndex + 1) * slice);
  } else {
    bytes = constantBytes(l.weight);
  }
  if (bytes.empty() || l.weightIsOutIn == outIn)
    return bytes;
  const int64_t rows = l.weightIsOutIn ? l.out : l.in, cols = l.weightIsOutIn ? l.in : l.out;
  size_t width = bytes.size() / (l.in * l.out);
  std::vector<char> t(bytes.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      std::memcpy(&t[(c * rows + r) * width], &bytes[(r * cols + c) * width], width);
  return t;
}

std::vector<char> linearWeightOutIn(const LinearMatch &l, StackCache *cache) {
  return linearWeight(l, true, cache);
}

std::vector<char> linearWeightInOut(const LinearMatch &l) { return linearWeight(l, false, nullptr); }

std::string firstUseOutside(ArrayRef<Operation *> ops, Operation *except) {
  for (Operation *op : ops) {
    if (op == except || op->hasTrait<OpTrait::ConstantLike>())
      continue;
    for (Operation *user : op->getUsers())
      if (!llvm::is_contained(ops, user))
        return "'" + op->getName().getStringRef().str() + "' inside the pattern is also read by '" +
               user->getName().getStringRef().str() + "' outside it";
  }
  return "";
}

bool usedOnlyWithin(ArrayRef<Operation *> ops, Operation *except) {
  return firstUseOutside(ops, except).empty();
}

void eraseDeadOps(ArrayRef<Operation *> ops, RewriterBase *rewriter) {
  // Each op once: a matcher may list an op twice (reached along two paths), and a second entry of an op
  // already erased would be read after it is freed (found by ASan: `make test SANITIZE=address,undefined`).
  llvm::SetVector<Operation *> unique(ops.begin(), ops.end());
  SmallVector<Operation *> live(unique.begin(), unique.end());
  bool changed = true;
  while (changed) {
    changed = false;
    for (Operation *&op : live)
      if (op && !op->hasTrait<OpTrait::ConstantLike>() && op->use_empty()) {
        if (rewriter)
          rewriter->eraseOp(op);
        else
          op->erase();
        op = nullptr;
        changed = true;
      }
  }
}

bool isGraphOutput(Value v) {
  for (Operation *user : v.getUsers()) {
    if (isa<func::ReturnOp>(user))
      return true;
    if (isa<ox::ReshapeOp, ox::IdentityOp, ox::SqueezeOp, ox::UnsqueezeOp>(user) &&
        isGraphOutput(user->getResult(0)))
      return true;
  }
  return false;
}

void noteFused(Operation *op, StringRef what) {
  SmallVector<Attribute> list;
  if (auto old = op->getAttrOfType<ArrayAttr>("moe.fused"))
    list.append(old.begin(), old.end());
  list.push_back(StringAttr::get(op->getContext(), what));
  op->setAttr("moe.fused", ArrayAttr::get(op->getContext(), list));
}

ox::AddOp addThroughReshapes(Value v, Value &reaching) {
  while (v.hasOneUse() && isa<ox::ReshapeOp>(*v.getUsers().begin()))
    v = v.getUsers().begin()->getResult(0);
  reaching = v;
  if (!v.hasOneUse())
    return {};
  return dyn_cast<ox::AddOp>(*v.getUsers().begin());
}

namespace {

/// The standing near miss of each (layer, fusion): set on a failure, cleared when the fusion happens. A layer
/// a fusion changes is retried by the driver, so a reason that no longer holds is replaced or cleared.
using FusionLog = llvm::DenseMap<std::pair<Operation *, unsigned>, std::string>;

struct LayerFusionPattern : OpRewritePattern<moe::SparseMoEOp> {
  LayerFusionPattern(MLIRContext *ctx, LayerFusion fn, unsigned index, FusionLog &log)
      : OpRewritePattern(ctx), fn(fn), index(index), log(log) {}
  LogicalResult matchAndRewrite(moe::SparseMoEOp op, PatternRewriter &rewriter) const override {
    FusionOutcome out = fn(op, rewriter);
    if (out.fused || out.why.empty()) {
      log.erase({op, index});
      return success(out.fused);
    }
    log[{op, index}] = out.why;
    return rewriter.notifyMatchFailure(op, out.why);
  }
  LayerFusion fn;
  unsigned index;
  FusionLog &log;
};

} // namespace

LogicalResult applyLayerFusions(Operation *root, ArrayRef<std::pair<LayerFusion, StringRef>> fusions,
                                bool remarks) {
  MLIRContext *ctx = root->getContext();
  FusionLog log;
  RewritePatternSet patterns(ctx);
  for (unsigned i = 0; i < fusions.size(); ++i)
    patterns.add<LayerFusionPattern>(ctx, fusions[i].first, i, log);
  GreedyRewriteConfig config;
  config.strictMode = GreedyRewriteStrictness::ExistingAndNewOps;
  if (failed(applyPatternsAndFoldGreedily(root, std::move(patterns), config)))
    return failure();
  if (remarks)
    root->walk([&](moe::SparseMoEOp op) {
      for (unsigned i = 0; i < fusions.size(); ++i)
        if (auto it = log.find({op, i}); it != log.end())
          emitRemark(op.getLoc()) << fusions[i].second << ": " << it->second;
    });
  return success();
}

void remarkIfUnfused(bool remarks, Operation *op, StringRef what, const std::string &why) {
  if (remarks && !why.empty())
    emitRemark(op->getLoc()) << what << ": " << why;
}

namespace {

bool isLastAxisMean(ox::ReduceMeanOp m, Value x) {
  auto axes = m.getAxes() ? constantInts(m.getAxes()) : std::nullopt;
  return m.getData() && m.getKeepdims() == 1 && axes && axes->size() == 1 &&
         normAxis((*axes)[0], rankOf(x)) == rankOf(x) - 1;
}

/// `x^2` as Pow(x, 2) or Mul(x, x); returns x.
Value matchSquare(Value v, SmallVectorImpl<Operation *> &ops) {
  if (auto p = defOp<ox::PowOp>(v)) {
    auto e = constantScalar(p.getB());
    if (e && *e == 2.0) {
      ops.push_back(p);
      return p.getA();
    }
  }
  if (auto m = defOp<ox::MulOp>(v); m && m.getA() == m.getB()) {
    ops.push_back(m);
    return m.getA();
  }
  return {};
}

/// `Sqrt(ReduceMean(x^2) + eps)`; sets x and eps.
bool matchRms(Value v, NormMatch &n) {
  auto sq = defOp<ox::SqrtOp>(v);
  auto add = sq ? defOp<ox::AddOp>(sq.getX()) : ox::AddOp();
  if (!add)
    return false;
  for (int i = 0; i < 2; ++i) {
    auto eps = constantScalar(add->getOperand(i));
    auto mean = defOp<ox::ReduceMeanOp>(add->getOperand(1 - i));
    if (!eps || !mean)
      continue;
    SmallVector<Operation *> ops{sq, add, mean};
    Value x = matchSquare(mean.getData(), ops);
    if (!x || !isLastAxisMean(mean, x))
      continue;
    n.x = x;
    n.eps = *eps;
    n.ops.append(ops);
    return true;
  }
  return false;
}

/// The normalised tensor `v` (before the weight): x * Reciprocal(Sqrt(...)), x * (1 / Sqrt(...)) or
/// x / Sqrt(...).
bool matchNormalised(Value v, NormMatch &n) {
  if (auto div = defOp<ox::DivOp>(v))
    if (matchRms(div.getB(), n) && n.x == div.getA()) {
      n.ops.push_back(div);
      return true;
    }
  if (auto mul = defOp<ox::MulOp>(v))
    for (int i = 0; i < 2; ++i) {
      Operation *inv = mul->getOperand(i).getDefiningOp();
      Value root; // Reciprocal(root) or Div(1, root)
      if (auto rec = dyn_cast_or_null<ox::ReciprocalOp>(inv))
        root = rec.getX();
      else if (auto div = dyn_cast_or_null<ox::DivOp>(inv); div && constantScalar(div.getA()) == 1.0)
        root = div.getB();
      NormMatch trial;
      if (root && matchRms(root, trial) && trial.x == mul->getOperand(1 - i)) {
        n = trial;
        n.ops.append({mul, inv});
        return true;
      }
    }
  return false;
}

} // namespace

std::optional<NormMatch> matchNorm(Value v, int64_t hdim) {
  NormMatch n;
  // A norm the importer made one op already (ONNX Runtime's SimplifiedLayerNormalization and the Skip* norms
  // are imported as moe.norm): always over the last axis.
  if (auto norm = defOp<moe::NormOp>(v)) {
    n.x = norm.getInput();
    n.weight = norm.getWeight();
    n.bias = norm.getBias();
    n.kind = norm.getKind();
    n.eps = norm.getEpsilon().convertToDouble();
    n.ops.push_back(norm);
    if (n.kind == moe::NormKind::none || rankOf(n.weight) != 1 ||
        cast<RankedTensorType>(n.weight.getType()).getDimSize(0) != hdim)
      return std::nullopt;
    return n;
  }
  if (auto ln = defOp<ox::LayerNormalizationOp>(v)) {
    if (normAxis(ln.getAxis(), rankOf(ln.getX())) != rankOf(ln.getX()) - 1 || !ln.getMean().use_empty() ||
        !ln.getInvStdDev().use_empty() || rankOf(ln.getScale()) != 1 || (ln.getB() && rankOf(ln.getB()) != 1))
      return std::nullopt;
    n.x = ln.getX();
    n.weight = ln.getScale();
    n.bias = ln.getB();
    n.kind = moe::NormKind::layer;
    n.eps = ln.getEpsilon().convertToDouble();
    n.ops.push_back(ln);
    return n;
  }
  auto mul = defOp<ox::MulOp>(v);
  if (!mul)
    return std::nullopt;
  for (int i = 0; i < 2; ++i) {
    Value w = mul->getOperand(i);
    NormMatch trial;
    if (rankOf(w) == 1 && matchNormalised(mul->getOperand(1 - i), trial)) {
      trial.weight = w;
      trial.kind = moe::NormKind::rms;
      trial.ops.insert(trial.ops.begin(), mul);
      n = trial;
      break;
    }
  }
  if (n.kind == moe::NormKind::none)
    return std::nullopt;
  auto wt = cast<RankedTensorType>(n.weight.getType());
  if (wt.getDimSize(0) != hdim)
    return std::nullopt;
  return n;
}

} // namespace moec
