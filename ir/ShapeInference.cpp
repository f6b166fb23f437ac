//===- ShapeInference.cpp - result shapes of ONNX-dialect ops moec computes itself ---===//
#include "ir/ShapeInference.h"
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Matchers.h"
#include "llvm/ADT/StringMap.h"

#include <optional>

using namespace mlir;
namespace ox = moec::onnxir;

namespace {

constexpr int64_t kDyn = ShapedType::kDynamic;
// Dims are static sizes, kDyn, or symbols: the named dims of the graph inputs (onnx.dim_params), encoded as
// kSym + id (values no real size takes), so that equal unknown dims can be told equal (a Reshape's -1).
constexpr int64_t kSym = kDyn + 1, kSymEnd = kDyn + (int64_t(1) << 30);
bool unknown(int64_t d) { return d < kSymEnd; }
using Dims = SmallVector<int64_t>;
/// The length of a 1-D shape operand of shape `s` (or of a 1-D partial value) when known,
/// 0..ox::kMaxInferredRank.
std::optional<size_t> shapeLength(const std::optional<Dims> &s) {
  if (!s || s->size() != 1 || unknown((*s)[0]) || (*s)[0] < 0 || (*s)[0] > ox::kMaxInferredRank)
    return std::nullopt;
  return size_t((*s)[0]);
}

/// The symbolic shapes of the values seen so far in this refinement (refineShapes' own).
thread_local llvm::DenseMap<Value, Dims> *symbolic = nullptr;

std::optional<Dims> shapeOf(Value v) {
  if (symbolic)
    if (auto it = symbolic->find(v); it != symbolic->end())
      return it->second;
  // A moe.norm the importer made of an (RMS)LayerNormalization has its input's shape, symbols included (its
  // type holds only the static dims), so a Reshape's -1 after it still resolves.
  if (auto norm = v.getDefiningOp<moec::moe::NormOp>())
    return shapeOf(norm.getOperand(0));
  if (auto t = dyn_cast<RankedTensorType>(v.getType()))
    return Dims(t.getShape());
  return std::nullopt;
}

std::optional<Dims> constInts(Value v) {
  DenseIntElementsAttr attr;
  if (!v || !matchPattern(v, m_Constant(&attr)))
    return std::nullopt;
  Dims out;
  for (const APInt &x : attr.getValues<APInt>())
    out.push_back(x.getSExtValue());
  return out;
}

std::optional<Dims> broadcast(ValueRange operands) {
  Dims shape;
  for (Value v : operands) {
    auto s = shapeOf(v);
    if (!s)
      return std::nullopt;
    if (s->size() > shape.size())
      shape.insert(shape.begin(), s->size() - shape.size(), 1);
    for (size_t k = 0; k < s->size(); ++k) {
      int64_t &a = shape[shape.size() - s->size() + k];
      int64_t b = (*s)[k];
      if (a == 1)
        a = b;
      else if (b == 1 || a == b)
        continue;
      else if (unknown(a) && !unknown(b))
        a = b;
      else if (unknown(a) || unknown(b))
        a = unknown(b) ? (unknown(a) ? kDyn : a) : b;
      else
        return std::nullopt; // does not broadcast: left to the run time's error
    }
  }
  return shape;
}

int64_t norm(int64_t axis, int64_t rank) { return axis < 0 ? axis + rank : axis; }

/// The value of a small 1-D (or scalar) integer tensor as far as it is known at compile time, kDyn where an
/// element is not: constants, Shape of a partly static tensor, and what Gather / Slice / Concat / (Un)Squeeze
/// / Cast / Reshape / Add / Sub / Mul / Div make of those (ONNX's data propagation, for the shapes that
/// Reshape, Expand and ConstantOfShape read).
std::optional<Dims> partialValue(Value v, int depth = 0) {
  if (!v || depth > 32)
    return std::nullopt;
  if (auto c = constInts(v))
    return c;
  Operation *op = v.getDefiningOp();
  if (!op)
    return std::nullopt;
  if (auto s = dyn_cast<ox::ShapeOp>(op)) {
    auto dims = shapeOf(s.getData());
    if (!dims)
      return std::nullopt;
    int64_t r = int64_t(dims->size());
    int64_t start = std::clamp<int64_t>(norm(s.getStart(), r), 0, r);
    int64_t end = s.getEnd() ? std::clamp<int64_t>(norm(*s.getEnd(), r), 0, r) : r;
    return Dims(dims->begin() + start, dims->begin() + std::max(start, end));
  }
  if (isa<ox::CastOp, ox::UnsqueezeOp, ox::SqueezeOp, ox::IdentityOp, ox::ReshapeOp>(op)) // the same elements
    return partialValue(op->getOperand(0), depth + 1);
  if (auto c = dyn_cast<ox::ConstantOfShapeOp>(op)) { // a 1-D integer fill (TorchScript's `repeat`: ones)
    auto n = partialValue(c.getInput(), depth + 1);
    auto fill = c.getValue() ? dyn_cast<DenseIntElementsAttr>(*c.getValue()) : DenseIntElementsAttr();
    auto length = shapeLength(n);
    if (!fill || !length || fill.getNumElements() != 1)
      return std::nullopt;
    return Dims(*length, (*fill.getValues<APInt>().begin()).getSExtValue());
  }
  if (auto g = dyn_cast<ox::GatherOp>(op)) {
    auto data = partialValue(g.getData(), depth + 1);
    auto idx = constInts(g.getIndices());
    if (!data || !idx || g.getAxis() != 0)
      return std::nullopt;
    Dims out;
    for (int64_t i : *idx) {
      i = norm(i, data->size());
      if (i < 0 || i >= int64_t(data->size()))
        return std::nullopt;
      out.push_back((*data)[i]);
    }
    return out;
  }
  if (isa<ox::ConcatOp>(op)) {
    Dims out;
    for (Value x : op->getOperands()) {
      auto p = partialValue(x, depth + 1);
      if (!p)
        return std::nullopt;
      out.append(p->begin(), p->end());
    }
    return out;
  }
  if (isa<ox::SliceOp>(op)) {
    auto data = partialValue(op->getOperand(0), depth + 1);
    auto starts = constInts(op->getOperand(1)), ends = constInts(op->getOperand(2));
    if (!data || !starts || !ends || starts->size() != 1 || ends->size() != 1)
      return std::nullopt;
    if (op->getNumOperands() > 4) {
      auto steps = constInts(op->getOperand(4));
      if (!steps || steps->size() != 1 || (*steps)[0] != 1)
        return std::nullopt;
    }
    const int64_t n = int64_t(data->size());
    int64_t b = std::clamp<int64_t>(norm((*starts)[0], n), 0, n),
            e = std::clamp<int64_t>(norm((*ends)[0], n), 0, n);
    return Dims(data->begin() + b, data->begin() + std::max(b, e));
  }
  if (isa<ox::AddOp, ox::SubOp, ox::MulOp, ox::DivOp>(op)) {
    auto a = partialValue(op->getOperand(0), depth + 1), b = partialValue(op->getOperand(1), depth + 1);
    if (!a || !b || (a->size() != b->size() && a->size() != 1 && b->size() != 1))
      return std::nullopt;
    const size_t n = std::max(a->size(), b->size());
    Dims out;
    for (size_t k = 0; k < n; ++k) {
      int64_t x = (*a)[a->size() == 1 ? 0 : k], y = (*b)[b->size() == 1 ? 0 : k];
      if (unknown(x) || unknown(y) || (isa<ox::DivOp>(op) && y == 0)) {
        out.push_back(kDyn);
        continue;
      }
      out.push_back(isa<ox::AddOp>(op)   ? x + y
                    : isa<ox::SubOp>(op) ? x - y
                    : isa<ox::MulOp>(op) ? x * y
                                         : x / y);
    }
    return out;
  }
  return std::nullopt;
}

/// The result shape of `op`'s result `i`, when moec knows how to compute it.
std::optional<Dims> infer(Operation *op, unsigned i) {
  auto in = [&](unsigned k) { return k < op->getNumOperands() ? shapeOf(op->getOperand(k)) : std::nullopt; };
  auto intAttr = [&](StringRef name, int64_t dflt) {
    if (auto a = op->getAttrOfType<IntegerAttr>(name))
      return a.getInt();
    return dflt;
  };
  StringRef name = op->getName().stripDialect();
  // Shape-preserving ops (their first operand's shape).
  static const StringRef kSame[] = {"Abs",
                                    "Ceil",
                                    "Cos",
                                    "Erf",
                                    "Exp",
                                    "Floor",
                                    "Identity",
                                    "Log",
                                    "Neg",
                                    "Not",
                                    "Reciprocal",
                                    "Relu",
                                    "Sigmoid",
                                    "Sin",
                                    "Sqrt",
                                    "Tanh",
                                    "Acos",
                                    "Acosh",
                                    "Asin",
                                    "Asinh",
                                    "Atan",
                                    "Atanh",
                                    "Cosh",
                                    "Round",
                                    "Sign",
                                    "Sinh",
                                    "Softplus",
                                    "Softsign",
                                    "Tan",
                                    "IsNaN",
                                    "IsInf",
                                    "Cast",
                                    "Softmax",
                                    "LogSoftmax",
                                    "Elu",
                                    "LeakyRelu",
                                    "Selu",
                                    "HardSigmoid",
                                    "ThresholdedRelu",
                                    "Gelu",
                                    "Celu",
                                    "Clip",
                                    "Dropout",
                                    "Shrink",
                                    "HardSwish",
                                    "Mish",
                                    "CumSum",
                                    "LayerNormalization",
                                    "InstanceNormalization",
                                    "BatchNormalization",
                                    "Trilu",
                                    "Hardmax"};
  if (llvm::is_contained(kSame, name) && i == 0)
    return in(0);
  static const StringRef kBroadcast[] = {
      "Add", "And",   "Div",  "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Mul",
      "Or",  "Pow",   "Sub",  "Xor",   "Mod",     "BitShift",       "Max",  "Min",         "Mean",
      "Sum", "Where", "PRelu"};
  if (llvm::is_contained(kBroadcast, name))
    return broadcast(op->getOperands());
  if (isa<ox::MatMulOp>(op))
    return moec::onnxir::matmulShape(op->getOperand(0), op->getOperand(1));
  if (auto g = dyn_cast<ox::GemmOp>(op)) {
    auto a = in(0), b = in(1);
    if (!a || !b || a->size() != 2 || b->size() != 2)
      return std::nullopt;
    return Dims{(*a)[g.getTransA() ? 1 : 0], (*b)[g.getTransB() ? 0 : 1]};
  }
  // A shape operand of known length (computed at run time): the rank, its dims unknown.
  auto rankFromShape = [&](Value shape, size_t atLeast) -> std::optional<Dims> {
    auto n = shapeLength(shapeOf(shape));
    if (!n)
      return std::nullopt;
    return Dims(std::max(*n, atLeast), kDyn);
  };
  if (isa<ox::ReshapeOp>(op)) {
    auto target = partialValue(op->getOperand(1));
    if (!target)
      return rankFromShape(op->getOperand(1), 0);
    auto data = in(0);
    Dims out;
    int64_t known = 1, minus = -1;
    SmallVector<int64_t> unknownTarget;
    for (auto [k, d] : llvm::enumerate(*target)) {
      if (d == 0 && !intAttr("allowzero", 0))
        d = data && k < data->size() ? (*data)[k] : kDyn;
      if (d == -1)
        minus = int64_t(k);
      else if (unknown(d))
        unknownTarget.push_back(d);
      else
        known *= d;
      out.push_back(d == -1 ? kDyn : d);
    }
    // -1: the data's size over the others'; unknown dims cancel when they are the same symbols on both sides.
    if (minus >= 0 && data && known > 0) {
      int64_t total = 1;
      SmallVector<int64_t> unknownData;
      for (int64_t d : *data)
        if (unknown(d))
          unknownData.push_back(d);
        else
          total *= d;
      llvm::sort(unknownTarget);
      llvm::sort(unknownData);
      const bool cancel =
          unknownTarget == unknownData && llvm::none_of(unknownData, [](int64_t d) { return d == kDyn; });
      if (cancel && total % known == 0)
        out[minus] = total / known;
    }
    return out;
  }
  if (auto t = dyn_cast<ox::TransposeOp>(op)) {
    auto data = in(0);
    if (!data)
      return std::nullopt;
    Dims out;
    if (auto perm = t.getPerm()) {
      for (Attribute p : *perm) {
        int64_t k = cast<IntegerAttr>(p).getInt();
        if (k < 0 || k >= int64_t(data->size()))
          return std::nullopt;
        out.push_back((*data)[k]);
      }
    } else {
      out.assign(data->rbegin(), data->rend());
    }
    return out;
  }
  if (isa<ox::UnsqueezeOp>(op)) {
    auto data = in(0);
    auto axes = constInts(op->getOperand(1));
    if (!data || !axes)
      return std::nullopt;
    const int64_t rank = int64_t(data->size() + axes->size());
    Dims out(rank, -2);
    for (int64_t a : *axes) {
      a = norm(a, rank);
      if (a < 0 || a >= rank)
        return std::nullopt;
      out[a] = 1;
    }
    size_t k = 0;
    for (int64_t &d : out)
      if (d == -2)
        d = (*data)[k++];
    return out;
  }
  if (isa<ox::SqueezeOp>(op)) {
    auto data = in(0);
    if (!data)
      return std::nullopt;
    std::optional<Dims> axes = op->getNumOperands() > 1 ? constInts(op->getOperand(1)) : Dims{};
    if (!axes)
      return std::nullopt;
    Dims out;
    for (size_t k = 0; k < data->size(); ++k) {
      const int64_t d = (*data)[k];
      bool drop = axes->empty()
                      ? d == 1
                      : llvm::any_of(*axes, [&](int64_t a) { return norm(a, data->size()) == int64_t(k); });
      if (axes->empty() && unknown(d))
        return std::nullopt;
      if (!drop)
        out.push_back(d);
    }
    return out;
  }
  if (auto c = dyn_cast<ox::ConcatOp>(op)) {
    std::optional<Dims> out;
    for (Value v : op->getOperands()) {
      auto s = shapeOf(v);
      if (!s)
        return std::nullopt;
      if (!out) {
        out = s;
        continue;
      }
      int64_t axis = norm(c.getAxis(), out->size());
      if (s->size() != out->size() || axis < 0 || axis >= int64_t(out->size()))
        return std::nullopt;
      for (size_t k = 0; k < s->size(); ++k)
        if (int64_t(k) == axis)
          (*out)[k] = unknown((*out)[k]) || unknown((*s)[k]) ? kDyn : (*out)[k] + (*s)[k];
        else if (unknown((*out)[k]))
          (*out)[k] = (*s)[k];
    }
    return out;
  }
  if (isa<ox::SliceOp>(op)) {
    auto data = in(0);
    if (!data)
      return std::nullopt;
    auto starts = constInts(op->getOperand(1)), ends = constInts(op->getOperand(2));
    std::optional<Dims> axes = op->getNumOperands() > 3 ? constInts(op->getOperand(3)) : std::nullopt;
    std::optional<Dims> steps = op->getNumOperands() > 4 ? constInts(op->getOperand(4)) : std::nullopt;
    Dims out = *data;
    if (!axes) { // unknown axes: only the rank is known
      for (int64_t &d : out)
        d = kDyn;
      return out;
    }
    for (auto [j, a] : llvm::enumerate(*axes)) {
      a = norm(a, data->size());
      if (a < 0 || a >= int64_t(data->size()))
        return std::nullopt;
      int64_t n = (*data)[a];
      if (!starts || !ends || unknown(n) || j >= starts->size() || j >= ends->size()) {
        out[a] = kDyn;
        continue;
      }
      int64_t step = steps && j < steps->size() ? (*steps)[j] : 1;
      if (step == 0)
        return std::nullopt;
      auto clamp = [&](int64_t v) {
        if (v < 0)
          v += n;
        return step > 0 ? std::clamp<int64_t>(v, 0, n) : std::clamp<int64_t>(v, -1, n - 1);
      };
      int64_t s = clamp((*starts)[j]), e = clamp((*ends)[j]);
      out[a] = step > 0 ? std::max<int64_t>(0, (e - s + step - 1) / step)
                        : std::max<int64_t>(0, (s - e - step - 1) / -step);
    }
    return out;
  }
  if (auto g = dyn_cast<ox::GatherOp>(op)) {
    auto data = in(0), idx = in(1);
    if (!data || !idx)
      return std::nullopt;
    int64_t axis = norm(g.getAxis(), data->size());
    if (axis < 0 || axis >= int64_t(data->size()))
      return std::nullopt;
    Dims out(data->begin(), data->begin() + axis);
    out.append(idx->begin(), idx->end());
    out.append(data->begin() + axis + 1, data->end());
    return out;
  }
  if (auto g = dyn_cast<ox::GatherNDOp>(op)) {
    auto data = in(0), idx = in(1);
    if (!data || !idx || idx->empty() || unknown(idx->back()))
      return std::nullopt;
    const int64_t b = g.getBatchDims(), last = idx->back(), r = int64_t(data->size()),
                  q = int64_t(idx->size());
    if (!moec::onnxir::gatherNDBatchDimsInRange(r, q, b) ||
        !moec::onnxir::gatherNDIndexLengthInRange(r, b, last)) // the importer says so
      return std::nullopt;
    Dims out(idx->begin(), idx->end() - 1);
    out.append(data->begin() + b + last, data->end());
    return out;
  }
  if (isa<ox::ExpandOp>(op)) {
    auto data = in(0);
    auto target = partialValue(op->getOperand(1));
    if (!data)
      return std::nullopt;
    if (!target)
      return rankFromShape(op->getOperand(1), data->size());
    Dims shape = *data;
    Dims t = *target;
    size_t r = std::max(shape.size(), t.size());
    shape.insert(shape.begin(), r - shape.size(), 1);
    t.insert(t.begin(), r - t.size(), 1);
    Dims out;
    for (size_t k = 0; k < r; ++k)
      out.push_back(t[k] == 1                           ? shape[k]
                    : shape[k] == 1 || shape[k] == t[k] ? t[k]
                    : unknown(shape[k])                 ? t[k]
                                                        : kDyn);
    return out;
  }
  if (auto s = dyn_cast<ox::ShapeOp>(op)) {
    auto data = in(0);
    if (!data)
      return std::nullopt;
    int64_t r = int64_t(data->size());
    int64_t start = std::clamp<int64_t>(norm(s.getStart(), r), 0, r);
    int64_t end = s.getEnd() ? std::clamp<int64_t>(norm(*s.getEnd(), r), 0, r) : r;
    return Dims{std::max<int64_t>(0, end - start)};
  }
  if (name.starts_with("Reduce") || name == "ArgMax" || name == "ArgMin") {
    auto data = in(0);
    if (!data)
      return std::nullopt;
    const bool keep = intAttr("keepdims", 1) != 0;
    std::optional<Dims> axes;
    if (name.starts_with("Reduce"))
      axes = op->getNumOperands() > 1 ? constInts(op->getOperand(1)) : Dims{};
    else
      axes = Dims{intAttr("axis", 0)};
    if (!axes)
      return std::nullopt;
    if (axes->empty() && intAttr("noop_with_empty_axes", 0))
      return data;
    Dims out;
    for (size_t k = 0; k < data->size(); ++k) {
      const int64_t d = (*data)[k];
      bool reduced = axes->empty() ||
                     llvm::any_of(*axes, [&](int64_t a) { return norm(a, data->size()) == int64_t(k); });
      if (!reduced)
        out.push_back(d);
      else if (keep)
        out.push_back(1);
    }
    return out;
  }
  if (auto t = dyn_cast<ox::TopKOp>(op)) {
    auto data = in(0);
    auto k = constInts(op->getOperand(1));
    if (!data)
      return std::nullopt;
    int64_t axis = norm(t.getAxis(), data->size());
    if (axis < 0 || axis >= int64_t(data->size()))
      return std::nullopt;
    Dims out = *data;
    out[axis] = k && k->size() == 1 ? (*k)[0] : kDyn;
    return out;
  }
  if (auto s = dyn_cast<ox::SplitOp>(op)) {
    auto data = in(0);
    if (!data)
      return std::nullopt;
    int64_t axis = norm(s.getAxis(), data->size());
    if (axis < 0 || axis >= int64_t(data->size()))
      return std::nullopt;
    Dims out = *data;
    if (auto sizes = op->getNumOperands() > 1 ? constInts(op->getOperand(1)) : std::nullopt;
        sizes && i < sizes->size())
      out[axis] = (*sizes)[i];
    else if (!unknown((*data)[axis]) && (*data)[axis] % int64_t(op->getNumResults()) == 0)
      out[axis] = (*data)[axis] / int64_t(op->getNumResults());
    else
      out[axis] = kDyn;
    return out;
  }
  if (isa<ox::ConstantOfShapeOp>(op)) {
    if (auto dims = partialValue(op->getOperand(0)))
      return dims;
    if (auto n = shapeLength(in(0)))
      return Dims(*n, kDyn);
    return std::nullopt;
  }
  if (isa<ox::RangeOp>(op))
    return Dims{kDyn};
  if (name == "ScatterND" || name == "ScatterElements")
    return in(0);
  if (name == "GatherElements")
    return in(1);
  if (auto c = dyn_cast<ox::ConvOp>(op)) {
    auto x = in(0), w = in(1);
    if (!x || !w || x->size() < 3 || w->size() != x->size())
      return std::nullopt;
    const size_t sp = x->size() - 2;
    Dims out{(*x)[0], (*w)[0]};
    auto ints = [&](std::optional<ArrayAttr> a, size_t n, int64_t dflt) {
      Dims v(n, dflt);
      if (a && a->size() == n)
        for (size_t k = 0; k < n; ++k)
          v[k] = cast<IntegerAttr>((*a)[k]).getInt();
      return v;
    };
    Dims pads = ints(c.getPads(), 2 * sp, 0), strides = ints(c.getStrides(), sp, 1),
         dil = ints(c.getDilations(), sp, 1), kernel = ints(c.getKernelShape(), sp, kDyn);
    const bool notSet = c.getAutoPad() == "NOTSET";
    for (size_t k = 0; k < sp; ++k) {
      const int64_t n = (*x)[2 + k], kk = !unknown(kernel[k]) ? kernel[k] : (*w)[2 + k];
      if (!notSet || unknown(n) || unknown(kk) || strides[k] <= 0)
        out.push_back(kDyn);
      else
        out.push_back((n + pads[k] + pads[sp + k] - dil[k] * (kk - 1) - 1) / strides[k] + 1);
    }
    return out;
  }
  return std::nullopt;
}

} // namespace

std::optional<Dims> moec::onnxir::staticIntValue(Value v) {
  auto value = partialValue(v);
  if (!value || llvm::any_of(*value, unknown))
    return std::nullopt;
  return value;
}

std::optional<Dims> moec::onnxir::matmulShape(Value lhs, Value rhs) {
  auto a = shapeOf(lhs), b = shapeOf(rhs);
  if (!a || !b || a->empty() || b->empty())
    return std::nullopt;
  bool aVec = a->size() == 1, bVec = b->size() == 1;
  if (aVec)
    a->insert(a->begin(), 1);
  if (bVec)
    b->push_back(1);
  Dims la(a->begin(), a->end() - 2), lb(b->begin(), b->end() - 2);
  size_t r = std::max(la.size(), lb.size());
  la.insert(la.begin(), r - la.size(), 1);
  lb.insert(lb.begin(), r - lb.size(), 1);
  Dims out;
  for (size_t k = 0; k < r; ++k)
    out.push_back(la[k] == 1 ? lb[k] : lb[k] == 1 ? la[k] : unknown(la[k]) ? lb[k] : la[k]);
  if (!aVec)
    out.push_back((*a)[a->size() - 2]);
  if (!bVec)
    out.push_back(b->back());
  return out;
}

std::optional<Dims> moec::onnxir::broadcastShape(ValueRange operands) { return broadcast(operands); }

int moec::onnxir::refineShapes(Operation *root) {
  llvm::DenseMap<Value, Dims> shapes;
  symbolic = &shapes;
  // The graph inputs' named dims are the symbols.
  llvm::StringMap<int64_t> ids;
  root->walk([&](func::FuncOp fn) {
    for (auto [i, arg] : llvm::enumerate(fn.getArguments())) {
      auto t = dyn_cast<RankedTensorType>(arg.getType());
      auto names = fn.getArgAttrOfType<ArrayAttr>(i, "onnx.dim_params");
      if (!t || !names || names.size() != size_t(t.getRank()))
        continue;
      Dims d(t.getShape());
      for (auto [k, n] : llvm::enumerate(names))
        if (auto str = dyn_cast<StringAttr>(n); str && !str.getValue().empty() && d[k] == kDyn)
          d[k] = kSym + ids.try_emplace(str.getValue(), int64_t(ids.size())).first->second;
      shapes[arg] = d;
    }
  });
  auto toType = [](const Dims &d) {
    Dims out(d);
    for (int64_t &x : out)
      if (unknown(x))
        x = kDyn;
    return out;
  };
  int refined = 0;
  for (bool changed = true; changed;) {
    changed = false;
    root->walk([&](Operation *op) {
      if (op->getDialect() == nullptr || op->getDialect()->getNamespace() != "onnx")
        return;
      for (auto [i, r] : llvm::enumerate(op->getResults())) {
        if (shapes.count(r))
          continue;
        auto dims = infer(op, unsigned(i));
        if (auto u = dyn_cast<UnrankedTensorType>(r.getType())) {
          if (!dims)
            continue;
          r.setType(RankedTensorType::get(toType(*dims), u.getElementType()));
          shapes[r] = *dims;
          ++refined;
          changed = true;
        } else if (auto t = dyn_cast<RankedTensorType>(r.getType())) {
          // Typed already (value_info, libonnx, the importer): its static dims win; moec's fill the unknown
          // ones (symbols, and static sizes where no terminator yields the value: a graph output or a block
          // result keeps the type it was declared with).
          Dims merged(t.getShape());
          const bool yielded =
              llvm::any_of(r.getUsers(), [](Operation *u) { return u->hasTrait<OpTrait::IsTerminator>(); });
          bool refinedStatic = false;
          if (dims && dims->size() == merged.size())
            for (size_t k = 0; k < merged.size(); ++k)
              if (merged[k] == kDyn && (unknown((*dims)[k]) || !yielded)) {
                merged[k] = (*dims)[k];
                refinedStatic |= !unknown((*dims)[k]);
              }
          if (refinedStatic) {
            r.setType(RankedTensorType::get(toType(merged), t.getElementType()));
            ++refined;
          }
          shapes[r] = merged;
          changed = true;
        }
      }
    });
  }
  symbolic = nullptr;
  return refined;
}
