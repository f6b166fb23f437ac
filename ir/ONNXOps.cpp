//===- ONNXOps.cpp - the onnx graph dialect -------------------------------===//
#include "ir/ONNXOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/Matchers.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/IR/PatternMatch.h"
#include "llvm/ADT/TypeSwitch.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>

using namespace mlir;
using namespace moec::onnxir;

#include "ir/ONNXDialect.cpp.inc"
#define GET_TYPEDEF_CLASSES
#include "ir/ONNXTypes.cpp.inc"
#define GET_OP_CLASSES
#include "ir/ONNXOps.cpp.inc"

void ONNXDialect::initialize() {
  addTypes<
#define GET_TYPEDEF_LIST
#include "ir/ONNXTypes.cpp.inc"
      >();
  addOperations<
#define GET_OP_LIST
#include "ir/ONNXOps.cpp.inc"
      >();
}

std::optional<ValueKind> moec::onnxir::valueKind(Type t) {
  if (isa<TensorType>(t))
    return ValueKind::Tensor;
  if (isa<SeqType>(t))
    return ValueKind::Sequence;
  if (auto o = dyn_cast<OptType>(t)) {
    if (isa<TensorType>(o.getElementType()))
      return ValueKind::OptionalTensor;
    if (isa<SeqType>(o.getElementType()))
      return ValueKind::OptionalSequence;
  }
  return std::nullopt;
}

TensorType moec::onnxir::innerTensorType(Type t) {
  if (auto o = dyn_cast<OptType>(t))
    t = o.getElementType();
  if (auto s = dyn_cast<SeqType>(t))
    return s.getElementType();
  return dyn_cast<TensorType>(t);
}

Type moec::onnxir::innerElementType(Type t) {
  TensorType inner = innerTensorType(t);
  return inner ? inner.getElementType() : Type();
}

OpFoldResult ConstantOp::fold(FoldAdaptor) { return getValue(); }

OpFoldResult CastOp::fold(FoldAdaptor) { return getInput().getType() == getType() ? getInput() : Value(); }

//===----------------------------------------------------------------------===//
// Control flow
//===----------------------------------------------------------------------===//

namespace {
/// The values a region's onnx.Yield returns.
OperandRange yielded(Region &r) { return r.front().getTerminator()->getOperands(); }

/// Element types must agree between a region's yields and the op's results; shapes may differ (ONNX allows
/// branches of different shapes, and Loop's carried values may change shape between iterations).
LogicalResult sameElementTypes(Operation *op, TypeRange yields, TypeRange results, StringRef what) {
  if (yields.size() != results.size())
    return op->emitOpError() << what << " yields " << yields.size() << " values for " << results.size()
                             << " results";
  for (auto [i, y, r] : llvm::enumerate(yields, results))
    if (innerElementType(y) != innerElementType(r) || valueKind(y) != valueKind(r))
      return op->emitOpError() << what << " yields " << y << " as value " << i << ", the op's result is "
                               << r;
  return success();
}
} // namespace

LogicalResult IfOp::verify() {
  if (failed(sameElementTypes(*this, yielded(getThenBranch()).getTypes(), getResultTypes(), "then_branch")) ||
      failed(sameElementTypes(*this, yielded(getElseBranch()).getTypes(), getResultTypes(), "else_branch")))
    return failure();
  return success();
}

namespace {
/// A small tensor known at compile time (shape arithmetic: sizes, flags), its elements as doubles (exact for
/// the integers shapes hold).
struct Known {
  SmallVector<int64_t> shape;
  SmallVector<double> values;
};

/// Evaluates `v` when it is a constant or computed from constants and static dims by shape arithmetic
/// (Shape, Gather / Slice of a 1-D value, Range, Cast, reshapes, comparisons, logic, Add / Sub / Mul), with
/// at most 64 elements in a constant and 4096 in a Range; nullopt otherwise. Lets an If whose condition only
/// depends on shapes fold, and tells a ScatterND's indices (FoldSliceScatter).
std::optional<Known> evaluate(Value v, int depth = 0) {
  constexpr int64_t kMaxElements = 64;
  auto type = dyn_cast<RankedTensorType>(v.getType());
  Operation *def = v.getDefiningOp();
  if (!type || !def || depth > 32)
    return std::nullopt;
  Known out;
  DenseElementsAttr attr;
  if (matchPattern(v, m_Constant(&attr))) {
    if (attr.getNumElements() > kMaxElements)
      return std::nullopt;
    out.shape.assign(type.getShape().begin(), type.getShape().end());
    Type e = attr.getElementType();
    if (e.isInteger(1))
      for (bool b : attr.getValues<bool>())
        out.values.push_back(b);
    else if (isa<IntegerType>(e))
      for (const APInt &i : attr.getValues<APInt>())
        out.values.push_back(e.isUnsignedInteger() ? double(i.getZExtValue()) : double(i.getSExtValue()));
    else if (isa<FloatType>(e))
      for (const APFloat &f : attr.getValues<APFloat>())
        out.values.push_back(f.convertToDouble());
    else
      return std::nullopt;
    return out;
  }
  auto arg = [&](unsigned i) { return evaluate(def->getOperand(i), depth + 1); };
  if (auto shape = dyn_cast<ShapeOp>(def)) {
    auto in = dyn_cast<RankedTensorType>(shape.getData().getType());
    if (!in)
      return std::nullopt;
    const int64_t rank = in.getRank();
    auto clampAxis = [&](int64_t a) { return std::clamp<int64_t>(a < 0 ? a + rank : a, 0, rank); };
    const int64_t start = clampAxis(int64_t(shape.getStart())),
                  end = clampAxis(shape.getEnd() ? int64_t(*shape.getEnd()) : rank);
    for (int64_t d = start; d < end; ++d) {
      if (in.isDynamicDim(d))
        return std::nullopt;
      out.values.push_back(double(in.getDimSize(d)));
    }
    out.shape = {int64_t(out.values.size())};
    return out;
  }
  // Ops that keep the values and give them the result's (static) shape.
  if (isa<IdentityOp, ReshapeOp, SqueezeOp, UnsqueezeOp, CastOp>(def)) {
    auto in = arg(0);
    if (!in || type.getNumDynamicDims() > 1)
      return std::nullopt;
    out.shape.assign(type.getShape().begin(), type.getShape().end());
    if (type.getNumDynamicDims() == 1) { // the one dim the element count leaves
      int64_t rest = 1;
      for (int64_t d : out.shape)
        rest *= ShapedType::isDynamic(d) ? 1 : d;
      if (rest == 0 || in->values.size() % size_t(rest) != 0)
        return std::nullopt;
      for (int64_t &d : out.shape)
        if (ShapedType::isDynamic(d))
          d = int64_t(in->values.size()) / rest;
    }
    out.values = in->values;
    Type e = type.getElementType();
    for (double &x : out.values)
      x = e.isInteger(1) ? double(x != 0) : isa<IntegerType>(e) ? std::trunc(x) : x;
    return out;
  }
  if (auto g = dyn_cast<GatherOp>(def)) {
    // Dims of a Shape: known when the dims picked are static, whatever the others are.
    auto shape = g.getData().getDefiningOp<ShapeOp>();
    auto in = shape ? dyn_cast<RankedTensorType>(shape.getData().getType()) : RankedTensorType();
    if (in && !shape.getEnd() && int64_t(shape.getStart()) == 0 && int64_t(g.getAxis()) == 0) {
      auto idx = arg(1);
      if (!idx)
        return std::nullopt;
      for (double i : idx->values) {
        const int64_t k = int64_t(i) < 0 ? int64_t(i) + in.getRank() : int64_t(i);
        if (k < 0 || k >= in.getRank() || in.isDynamicDim(k))
          return std::nullopt;
        out.values.push_back(double(in.getDimSize(k)));
      }
      out.shape = idx->shape;
      return out;
    }
    auto data = arg(0), idx = arg(1);
    if (!data || !idx || data->shape.size() != 1 || (int64_t(g.getAxis()) != 0 && int64_t(g.getAxis()) != -1))
      return std::nullopt;
    const int64_t n = data->shape[0];
    for (double i : idx->values) {
      int64_t k = int64_t(i) < 0 ? int64_t(i) + n : int64_t(i);
      if (k < 0 || k >= n)
        return std::nullopt;
      out.values.push_back(data->values[k]);
    }
    out.shape = idx->shape;
    return out;
  }
  if (auto sl = dyn_cast<SliceOp>(def)) {
    auto data = arg(0);
    if (!data || data->shape.size() != 1)
      return std::nullopt;
    auto starts = evaluate(sl.getStarts(), depth + 1), ends = evaluate(sl.getEnds(), depth + 1);
    auto axes = evaluate(sl.getAxes(), depth + 1), steps = evaluate(sl.getSteps(), depth + 1);
    if (!starts || !ends || !steps || !axes || starts->values.size() != 1 || ends->values.size() != 1 ||
        steps->values.size() != 1 || steps->values[0] == 0 || axes->values.size() != 1 ||
        (axes->values[0] != 0 && axes->values[0] != -1))
      return std::nullopt;
    const int64_t n = data->shape[0], step = int64_t(steps->values[0]);
    auto bound = [&](double x, int64_t lo, int64_t hi) {
      int64_t k = x < -1e18 ? lo : x > 1e18 ? hi : int64_t(x);
      return std::clamp<int64_t>(k < 0 ? k + n : k, lo, hi);
    };
    int64_t b = bound(starts->values[0], step > 0 ? 0 : -1, step > 0 ? n : n - 1),
            e = bound(ends->values[0], step > 0 ? 0 : -1, step > 0 ? n : n - 1);
    for (int64_t k = b; step > 0 ? k < e : k > e; k += step)
      out.values.push_back(data->values[k]);
    out.shape = {int64_t(out.values.size())};
    return out;
  }
  if (isa<RangeOp>(def)) {
    auto start = arg(0), limit = arg(1), delta = arg(2);
    if (!start || !limit || !delta || start->values.size() != 1 || limit->values.size() != 1 ||
        delta->values.size() != 1 || delta->values[0] == 0)
      return std::nullopt;
    const double a = start->values[0], d = delta->values[0];
    const double n = std::max(0.0, std::ceil((limit->values[0] - a) / d));
    if (n > 4096)
      return std::nullopt;
    for (int64_t i = 0; i < int64_t(n); ++i)
      out.values.push_back(a + double(i) * d);
    out.shape = {int64_t(n)};
    return out;
  }
  if (isa<NotOp>(def)) {
    auto in = arg(0);
    if (!in)
      return std::nullopt;
    out = *in;
    for (double &x : out.values)
      x = x == 0;
    return out;
  }
  // Binary ops on equal shapes or with a one-element side.
  std::function<double(double, double)> fn;
  if (isa<EqualOp>(def))
    fn = [](double a, double b) { return double(a == b); };
  else if (isa<GreaterOp>(def))
    fn = [](double a, double b) { return double(a > b); };
  else if (isa<GreaterOrEqualOp>(def))
    fn = [](double a, double b) { return double(a >= b); };
  else if (isa<LessOp>(def))
    fn = [](double a, double b) { return double(a < b); };
  else if (isa<LessOrEqualOp>(def))
    fn = [](double a, double b) { return double(a <= b); };
  else if (isa<AndOp>(def))
    fn = [](double a, double b) { return double(a != 0 && b != 0); };
  else if (isa<OrOp>(def))
    fn = [](double a, double b) { return double(a != 0 || b != 0); };
  else if (isa<XorOp>(def))
    fn = [](double a, double b) { return double((a != 0) != (b != 0)); };
  else if (isa<AddOp>(def) && isa<IntegerType>(type.getElementType()))
    fn = [](double a, double b) { return a + b; };
  else if (isa<SubOp>(def) && isa<IntegerType>(type.getElementType()))
    fn = [](double a, double b) { return a - b; };
  else if (isa<MulOp>(def) && isa<IntegerType>(type.getElementType()))
    fn = [](double a, double b) { return a * b; };
  if (!fn)
    return std::nullopt;
  auto a = arg(0), b = arg(1);
  if (!a || !b)
    return std::nullopt;
  const size_t n = std::max(a->values.size(), b->values.size());
  if ((a->values.size() != n && a->values.size() != 1) || (b->values.size() != n && b->values.size() != 1) ||
      !type.hasStaticShape() || size_t(type.getNumElements()) != n)
    return std::nullopt;
  out.shape.assign(type.getShape().begin(), type.getShape().end());
  for (size_t i = 0; i < n; ++i)
    out.values.push_back(
        fn(a->values[a->values.size() == 1 ? 0 : i], b->values[b->values.size() == 1 ? 0 : i]));
  return out;
}

/// If with a condition known at compile time (a constant, or shape arithmetic on static dims) -> the chosen
/// branch's ops, inlined in front of it.
struct FoldConstantIf : OpRewritePattern<IfOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(IfOp op, PatternRewriter &rewriter) const override {
    std::optional<Known> cond = evaluate(op.getCond());
    if (!cond || cond->values.size() != 1)
      return failure();
    Region &taken = cond->values[0] != 0 ? op.getThenBranch() : op.getElseBranch();
    Block &block = taken.front();
    Operation *yield = block.getTerminator();
    SmallVector<Value> results;
    for (auto [v, r] : llvm::zip(yield->getOperands(), op.getResults())) {
      // A branch may yield a more precise (or other) shape than the op's result type.
      if (v.getType() != r.getType())
        return failure();
      results.push_back(v);
    }
    rewriter.inlineBlockBefore(&block, op);
    rewriter.eraseOp(yield);
    rewriter.replaceOp(op, results);
    return success();
  }
};
/// PyTorch's `slice_scatter` into a new tensor, as the dynamo exporter writes it (DeepSeek's attention builds
/// its keys so: `k = zeros(...); k[..., :nope] = k_nope; k[..., nope:] = k_pe`): per write
/// `Transpose_p'(ScatterND(Transpose_p(D), [[lo], ..., [hi - 1]], Transpose_p(U)))`, p moving the written
/// axis a = p[0] to the front and p' undoing it, from a `ConstantOfShape` through earlier writes. When the
/// writes' index ranges (known at compile time) tile axis a of a static size exactly, the result is the
/// Concat of the written values along a, whatever the constant was: one op instead of about six per write.
struct FoldSliceScatter : OpRewritePattern<TransposeOp> {
  using OpRewritePattern::OpRewritePattern;
  struct Write {
    int64_t lo, hi;
    Value value;
  };
  /// The write `out` is (the Transpose after a ScatterND), or nullopt; `base` receives the data written into.
  static std::optional<Write> write(TransposeOp out, int64_t &axis, Value &base) {
    auto scatter = out.getData().getDefiningOp<ScatterNDOp>();
    if (!scatter || scatter.getReduction() != "none" || !out.getPerm())
      return std::nullopt;
    auto data = scatter.getData().getDefiningOp<TransposeOp>();
    auto upd = scatter.getUpdates().getDefiningOp<TransposeOp>();
    if (!data || !upd || !data.getPerm() || !upd.getPerm() || data.getPerm() != upd.getPerm())
      return std::nullopt;
    SmallVector<int64_t> p, q;
    const ArrayAttr pa = *data.getPerm(), qa = *out.getPerm();
    for (Attribute a : pa)
      p.push_back(cast<IntegerAttr>(a).getInt());
    for (Attribute a : qa)
      q.push_back(cast<IntegerAttr>(a).getInt());
    if (p.size() != q.size() || p.empty())
      return std::nullopt;
    for (size_t i = 0; i < p.size(); ++i) // q undoes p
      if (p[i] < 0 || p[i] >= int64_t(p.size()) || q[p[i]] != int64_t(i))
        return std::nullopt;
    std::optional<Known> idx = evaluate(scatter.getIndices());
    if (!idx || idx->shape.size() != 2 || idx->shape[1] != 1 || idx->values.empty())
      return std::nullopt;
    for (size_t i = 1; i < idx->values.size(); ++i) // contiguous and ascending
      if (idx->values[i] != idx->values[0] + double(i))
        return std::nullopt;
    axis = p[0];
    base = data.getData();
    return Write{int64_t(idx->values.front()), int64_t(idx->values.back()) + 1, upd.getData()};
  }
  LogicalResult matchAndRewrite(TransposeOp op, PatternRewriter &rewriter) const override {
    auto type = dyn_cast<RankedTensorType>(op.getType());
    int64_t axis = -1;
    Value base;
    std::optional<Write> w = write(op, axis, base);
    if (!type || !w || type.isDynamicDim(axis))
      return failure();
    SmallVector<Write> writes{*w};
    while (auto t = base.getDefiningOp<TransposeOp>()) { // earlier writes along the same axis
      int64_t a = -1;
      Value below;
      std::optional<Write> e = write(t, a, below);
      if (!e || a != axis)
        return failure();
      writes.push_back(*e);
      base = below;
    }
    if (!base.getDefiningOp<ConstantOfShapeOp>() || base.getType() != op.getType())
      return failure();
    llvm::sort(writes, [](const Write &a, const Write &b) { return a.lo < b.lo; });
    int64_t at = 0;
    SmallVector<Value> parts;
    for (const Write &x : writes) { // they tile [0, size) in order, each value as wide as its range
      auto vt = dyn_cast<RankedTensorType>(x.value.getType());
      if (x.lo != at || !vt || vt.getRank() != type.getRank() || vt.isDynamicDim(axis) ||
          vt.getDimSize(axis) != x.hi - x.lo)
        return failure();
      at = x.hi;
      parts.push_back(x.value);
    }
    if (at != type.getDimSize(axis))
      return failure();
    rewriter.replaceOpWithNewOp<ConcatOp>(op, type, parts, rewriter.getI64IntegerAttr(axis));
    return success();
  }
};
} // namespace

void IfOp::getCanonicalizationPatterns(RewritePatternSet &results, MLIRContext *context) {
  results.add<FoldConstantIf>(context);
}

void TransposeOp::getCanonicalizationPatterns(RewritePatternSet &results, MLIRContext *context) {
  results.add<FoldSliceScatter>(context);
}

LogicalResult LoopOp::verify() {
  Block &body = getBody().front();
  const size_t carried = getVInitial().size();
  if (body.getNumArguments() != carried + 2)
    return emitOpError() << "body takes " << body.getNumArguments()
                         << " arguments; expected the iteration number, the condition and " << carried
                         << " carried values";
  TypeRange ys = yielded(getBody()).getTypes();
  if (ys.size() < carried + 1 || getNumResults() != ys.size() - 1)
    return emitOpError() << "body yields " << ys.size() << " values; expected the condition, " << carried
                         << " carried values and one per scan output (" << getNumResults() << " results)";
  return sameElementTypes(*this, ys.drop_front(), getResultTypes(), "body");
}

LogicalResult SequenceMapOp::verify() {
  Block &body = getBody().front();
  if (body.getNumArguments() != getNumOperands())
    return emitOpError() << "body takes " << body.getNumArguments()
                         << " arguments; expected one per operand (" << getNumOperands() << ")";
  for (auto [i, arg, v] : llvm::enumerate(body.getArgumentTypes(), getOperandTypes()))
    if (!isa<TensorType>(arg) || innerElementType(arg) != innerElementType(v) ||
        !(isa<SeqType>(v) || isa<TensorType>(v)))
      return emitOpError() << "body argument " << i << " is " << arg << " for operand " << v
                           << "; expected a tensor of its element type";
  TypeRange ys = yielded(getBody()).getTypes();
  if (ys.size() != getNumResults())
    return emitOpError() << "body yields " << ys.size() << " values for " << getNumResults() << " results";
  for (auto [i, y, r] : llvm::enumerate(ys, getResultTypes()))
    if (!isa<TensorType>(y) || innerElementType(y) != innerElementType(r))
      return emitOpError() << "body yields " << y << " as value " << i << " for a result of type " << r;
  return success();
}

LogicalResult ScanOp::verify() {
  Block &body = getBody().front();
  const int64_t scans = getNumScanInputs(), operands = getInitialStateAndScanInputs().size();
  if (scans < 1 || scans > operands)
    return emitOpError() << "num_scan_inputs = " << scans << " with " << operands << " operands";
  const int64_t states = operands - scans;
  if (int64_t(body.getNumArguments()) != operands)
    return emitOpError() << "body takes " << body.getNumArguments() << " arguments; expected " << operands;
  TypeRange ys = yielded(getBody()).getTypes();
  if (int64_t(ys.size()) < states || ys.size() != getNumResults())
    return emitOpError() << "body yields " << ys.size() << " values for " << getNumResults() << " results";
  auto axesOk = [&](std::optional<ArrayAttr> a, int64_t n, StringRef what) -> LogicalResult {
    if (a && int64_t(a->size()) != n)
      return emitOpError() << what << " has " << a->size() << " entries; expected " << n;
    return success();
  };
  if (failed(axesOk(getScanInputAxes(), scans, "scan_input_axes")) ||
      failed(axesOk(getScanInputDirections(), scans, "scan_input_directions")) ||
      failed(axesOk(getScanOutputAxes(), int64_t(ys.size()) - states, "scan_output_axes")) ||
      failed(axesOk(getScanOutputDirections(), int64_t(ys.size()) - states, "scan_output_directions")))
    return failure();
  return sameElementTypes(*this, ys, getResultTypes(), "body");
}
