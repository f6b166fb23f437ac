//===- OpTable.cpp - (domain, op, since-version) -> builder ----------------===//
//
// The importer's op table. Adding an op: one row in `kTable` (most ops use `generic<OpTy>`), one op in
// ir/ONNXOps.td if it is new, and one lit test in frontend/test/. Rows for an op at several since-versions
// normalise older opsets into the form ir/ONNXOps.td documents (newest semantics).
//
//===----------------------------------------------------------------------===//
#include "frontend/NodeImporter.h"
#include "frontend/OnnxModel.h"
#include "ir/ONNXOps.h"
#include "ir/ShapeInference.h"

#include "mlir/IR/Matchers.h"
#include "llvm/Support/MathExtras.h"

#include "onnx/onnx_pb.h"

using namespace mlir;
using namespace moec::frontend;
namespace ox = moec::onnxir;

namespace {

/// Element type of results when libonnx's shape inference did not give one.
enum class Elem { SameAsInput0, Bool, I64, SameAsInput2 };

Type fallbackElement(NodeImporter &ni, Elem rule) {
  OpBuilder &b = ni.builder();
  switch (rule) {
  case Elem::Bool:
    return b.getI1Type();
  case Elem::I64:
    return b.getI64Type();
  case Elem::SameAsInput2:
    return ni.input(2) ? cast<ShapedType>(ni.input(2).getType()).getElementType() : Type();
  case Elem::SameAsInput0:
    return nullptr; // outputType's own default
  }
  return nullptr;
}

/// Creates `OpTy` with `operands` and `attrs`, verifies it and binds the node's outputs.
template <typename OpTy>
LogicalResult finish(NodeImporter &ni, ValueRange operands, ArrayRef<NamedAttribute> attrs,
                     ArrayRef<Type> resultTypes) {
  Operation *op = ni.createOp(OpTy::getOperationName(), operands, attrs, resultTypes);
  if (!op)
    return failure();
  ni.setOutputs(op->getResults());
  return success();
}

/// Converts the node's attributes, rejecting those `OpTy` does not declare and those in `dropped`.
template <typename OpTy>
LogicalResult declaredAttributes(NodeImporter &ni, SmallVectorImpl<NamedAttribute> &attrs,
                                 ArrayRef<StringRef> dropped = {}) {
  SmallVector<NamedAttribute> all;
  if (failed(ni.convertAttributes(all)))
    return failure();
  for (NamedAttribute a : all) {
    if (llvm::is_contained(dropped, a.getName().getValue()))
      continue;
    if (!llvm::is_contained(OpTy::getAttributeNames(), a.getName().getValue()))
      return ni.fail("attribute '" + a.getName().getValue() + "' is not supported");
    attrs.push_back(a);
  }
  return success();
}

SmallVector<Type> resultTypes(NodeImporter &ni, int count, Elem rule = Elem::SameAsInput0,
                              ArrayRef<Elem> perResult = {}) {
  SmallVector<Type> types;
  for (int i = 0; i < count; ++i)
    types.push_back(ni.outputType(i, fallbackElement(ni, i < (int)perResult.size() ? perResult[i] : rule)));
  return types;
}

LogicalResult collectInputs(NodeImporter &ni, SmallVectorImpl<Value> &operands) {
  unsigned n = ni.numInputs();
  // Drop omitted trailing optional inputs; an omitted input before a present one is not representable.
  while (n > 0 && !ni.input(n - 1))
    --n;
  for (unsigned i = 0; i < n; ++i) {
    if (!ni.input(i))
      return ni.fail("input " + std::to_string(i) + " is omitted but later inputs are given");
    operands.push_back(ni.input(i));
  }
  return success();
}

/// An elementwise op's result type when neither value_info nor ONNX shape inference gave one (a contrib op
/// upstream, or an opset libonnx does not know): the NumPy broadcast of its operands' shapes, when all are
/// ranked (onnxir::broadcastShape, the rule moec's own shape inference uses). Other types are returned as
/// they are.
Type broadcastResult(ArrayRef<Value> operands, Type current) {
  auto unranked = dyn_cast_if_present<UnrankedTensorType>(current);
  if (!unranked || operands.empty())
    return current;
  auto shape = moec::onnxir::broadcastShape(operands);
  return shape ? RankedTensorType::get(*shape, unranked.getElementType()) : current;
}

/// MatMul's result type when none was inferred: onnxir::matmulShape of two ranked operands.
Type matmulResult(ArrayRef<Value> operands, Type current) {
  auto unranked = dyn_cast_if_present<UnrankedTensorType>(current);
  if (!unranked || operands.size() != 2)
    return current;
  auto shape = moec::onnxir::matmulShape(operands[0], operands[1]);
  return shape ? RankedTensorType::get(*shape, unranked.getElementType()) : current;
}

/// How `generic` completes a result type neither value_info nor ONNX shape inference gave: not at all, as the
/// broadcast of the operands (elementwise ops), or as their matrix product (MatMul).
enum class Shape { AsGiven, Broadcast, MatMul };

/// One MLIR op per ONNX node: inputs in order, attributes under their names, `Results` results
/// (-1: as many as the node has); unknown result shapes completed by `Infer`.
template <typename OpTy, int Results = 1, Elem Rule = Elem::SameAsInput0, Shape Infer = Shape::AsGiven>
LogicalResult generic(NodeImporter &ni) {
  SmallVector<Value> operands;
  SmallVector<NamedAttribute> attrs;
  if (failed(collectInputs(ni, operands)) || failed(declaredAttributes<OpTy>(ni, attrs)))
    return failure();
  int count = Results < 0 ? static_cast<int>(ni.numOutputs()) : Results;
  SmallVector<Type> types = resultTypes(ni, count, Rule);
  for (Type &t : types)
    t = Infer == Shape::Broadcast ? broadcastResult(operands, t)
        : Infer == Shape::MatMul  ? matmulResult(operands, t)
                                  : t;
  return finish<OpTy>(ni, operands, attrs, types);
}

/// Rank of `v` when known.
std::optional<int64_t> rankOf(Value v) {
  if (auto t = dyn_cast<RankedTensorType>(v.getType()))
    return t.getRank();
  return std::nullopt;
}

/// Softmax/LogSoftmax before opset 13 flatten to 2-D at `axis` (default 1); that equals the opset-13 form
/// exactly when `axis` is the last dim.
template <typename OpTy> LogicalResult softmaxV1(NodeImporter &ni) {
  int64_t axis = 1;
  if (auto *a = ni.attribute("axis"))
    axis = a->i();
  auto rank = rankOf(ni.input(0));
  if (!rank)
    return ni.fail("needs a known input rank before opset 13");
  if (axis < 0)
    axis += *rank;
  if (axis != *rank - 1)
    return ni.fail(
        "axis " + std::to_string(axis) + " of rank " + std::to_string(*rank) +
        " flattens the input before opset 13, which moec does not support; re-export with opset >= 13");
  return finish<OpTy>(ni, {ni.input(0)},
                      {ni.builder().getNamedAttr("axis", ni.builder().getI64IntegerAttr(-1))},
                      resultTypes(ni, 1));
}

/// Ops whose `axes` (or Split's `split`) moved from an attribute to an input: before that opset the
/// attribute becomes a constant input, so the IR has the newest form.
template <typename OpTy> LogicalResult attrToInput(NodeImporter &ni, StringRef name) {
  SmallVector<NamedAttribute> attrs;
  if (failed(declaredAttributes<OpTy>(ni, attrs, {name})))
    return failure();
  SmallVector<Value> operands;
  if (failed(collectInputs(ni, operands)))
    return failure();
  if (operands.size() > 1)
    return ni.fail("has more inputs than this opset allows");
  if (auto *a = ni.attribute(name))
    operands.push_back(ni.constantI64(SmallVector<int64_t>(a->ints().begin(), a->ints().end())));
  int results = std::is_same_v<OpTy, ox::SplitOp> ? static_cast<int>(ni.numOutputs()) : 1;
  return finish<OpTy>(ni, operands, attrs, resultTypes(ni, results));
}
template <typename OpTy> LogicalResult axesAttrToInput(NodeImporter &ni) {
  return attrToInput<OpTy>(ni, "axes");
}

LogicalResult topkV1(NodeImporter &ni) {
  auto *k = ni.attribute("k");
  if (!k)
    return ni.fail("attribute 'k' is required");
  Value kv = ni.constantI64({k->i()});
  SmallVector<NamedAttribute> attrs;
  if (failed(declaredAttributes<ox::TopKOp>(ni, attrs, {"k"})))
    return failure();
  return finish<ox::TopKOp>(ni, {ni.input(0), kv}, attrs,
                            resultTypes(ni, 2, Elem::SameAsInput0, {Elem::SameAsInput0, Elem::I64}));
}

LogicalResult topk(NodeImporter &ni) {
  SmallVector<Value> operands;
  SmallVector<NamedAttribute> attrs;
  if (failed(collectInputs(ni, operands)) || failed(declaredAttributes<ox::TopKOp>(ni, attrs)))
    return failure();
  return finish<ox::TopKOp>(ni, operands, attrs,
                            resultTypes(ni, 2, Elem::SameAsInput0, {Elem::SameAsInput0, Elem::I64}));
}

LogicalResult castOp(NodeImporter &ni) {
  auto *to = ni.attribute("to");
  if (!to || to->type() != onnx::AttributeProto::INT)
    return ni.fail("attribute 'to' (an integer data type) is required");
  Type elem = ni.elementType(static_cast<int>(to->i()));
  if (!elem)
    return ni.fail("cast to data type " + onnxDataTypeName(static_cast<int>(to->i())).str() +
                   " is not supported");
  SmallVector<NamedAttribute> attrs;
  if (failed(declaredAttributes<ox::CastOp>(ni, attrs, {"to"})))
    return failure();
  attrs.push_back(ni.builder().getNamedAttr("to", TypeAttr::get(elem)));
  return finish<ox::CastOp>(ni, {ni.input(0)}, attrs, {ni.outputType(0, elem)});
}

LogicalResult constantNode(NodeImporter &ni) {
  OpBuilder &b = ni.builder();
  if (ni.node().attribute_size() != 1)
    return ni.fail("expects exactly one value attribute");
  const onnx::AttributeProto &a = ni.node().attribute(0);
  ElementsAttr value;
  if (a.name() == "value") {
    SmallVector<NamedAttribute> converted;
    if (failed(ni.convertAttributes(converted)))
      return failure();
    value = dyn_cast<ElementsAttr>(converted[0].getValue());
    if (!value)
      return ni.fail("attribute 'value' must be a tensor");
  } else if (a.name() == "value_float") {
    value = DenseElementsAttr::get(RankedTensorType::get({}, b.getF32Type()), a.f());
  } else if (a.name() == "value_int") {
    value = DenseElementsAttr::get(RankedTensorType::get({}, b.getI64Type()), static_cast<int64_t>(a.i()));
  } else if (a.name() == "value_floats") {
    SmallVector<float> v(a.floats().begin(), a.floats().end());
    value = DenseElementsAttr::get(RankedTensorType::get({(int64_t)v.size()}, b.getF32Type()), ArrayRef(v));
  } else if (a.name() == "value_ints") {
    SmallVector<int64_t> v(a.ints().begin(), a.ints().end());
    value = DenseElementsAttr::get(RankedTensorType::get({(int64_t)v.size()}, b.getI64Type()), ArrayRef(v));
  } else {
    return ni.fail("attribute '" + a.name() + "' is not supported");
  }
  ni.setOutputs(ni.constant(value));
  return success();
}

LogicalResult constantOfShape(NodeImporter &ni) {
  SmallVector<NamedAttribute> attrs;
  if (failed(declaredAttributes<ox::ConstantOfShapeOp>(ni, attrs)))
    return failure();
  Type elem = ni.builder().getF32Type();
  for (NamedAttribute a : attrs)
    if (a.getName() == "value") {
      auto value = dyn_cast<ElementsAttr>(a.getValue());
      if (!value)
        return ni.fail("attribute 'value' must be a one-element tensor");
      elem = value.getElementType();
    }
  return finish<ox::ConstantOfShapeOp>(ni, {ni.input(0)}, attrs, {ni.outputType(0, elem)});
}

LogicalResult splitV2(NodeImporter &ni) { return attrToInput<ox::SplitOp>(ni, "split"); }

/// Slice: starts/ends/axes/steps as inputs (attributes before opset 10), with defaults materialised.
LogicalResult slice(NodeImporter &ni) {
  Value data = ni.input(0), starts, ends, axes, steps;
  size_t n = 0;
  if (ni.opset() < 10) {
    auto ints = [&](const char *name) -> std::optional<SmallVector<int64_t>> {
      if (auto *a = ni.attribute(name))
        return SmallVector<int64_t>(a->ints().begin(), a->ints().end());
      return std::nullopt;
    };
    auto s = ints("starts"), e = ints("ends"), a = ints("axes");
    if (!s || !e)
      return ni.fail("attributes 'starts' and 'ends' are required");
    n = s->size();
    starts = ni.constantI64(*s);
    ends = ni.constantI64(*e);
    if (a)
      axes = ni.constantI64(*a);
  } else {
    starts = ni.input(1);
    ends = ni.input(2);
    axes = ni.input(3);
    steps = ni.input(4);
    auto st = dyn_cast<RankedTensorType>(starts.getType());
    if (st && st.getRank() != 1)
      return ni.fail("input 'starts' must be 1-D, not of rank " + std::to_string(st.getRank()));
    if ((!axes || !steps) && (!st || st.isDynamicDim(0)))
      return ni.fail("omitted 'axes' or 'steps' need a static length of 'starts'");
    n = st ? st.getDimSize(0) : 0;
  }
  // One start per sliced axis: no more than the data's dims (the default axes and steps are built n long;
  // a declared length of INT32_MAX exhausted memory, found by the fuzzer).
  auto dt = data ? dyn_cast<RankedTensorType>(data.getType()) : RankedTensorType();
  const int64_t most = dt ? dt.getRank() : moec::onnxir::kMaxInferredRank;
  if (int64_t(n) > most)
    return ni.fail("'starts' has " + std::to_string(n) + " elements, more than the " +
                   (dt ? "data's " + std::to_string(most) + " dims"
                       : std::to_string(most) + " dims a tensor may have here"));
  if (!axes) {
    SmallVector<int64_t> all;
    for (size_t i = 0; i < n; ++i)
      all.push_back(static_cast<int64_t>(i));
    axes = ni.constantI64(all);
  }
  if (!steps)
    steps = ni.constantI64(SmallVector<int64_t>(n, 1));
  return finish<ox::SliceOp>(ni, {data, starts, ends, axes, steps}, {}, resultTypes(ni, 1));
}

/// Reshape: a target shape known at compile time is checked against ONNX's rules and, when the input's
/// shape is static, its element count: a malformed one is one error here, not a failure at run time.
LogicalResult reshape(NodeImporter &ni) {
  auto target = ni.numInputs() > 1 && ni.input(0) && ni.input(1) ? moec::onnxir::staticIntValue(ni.input(1))
                                                                 : std::nullopt;
  if (!target)
    return generic<ox::ReshapeOp>(ni);
  const auto *az = ni.attribute("allowzero");
  const bool allowZero = az && az->i() != 0;
  auto shown = [&] {
    std::string s = "[";
    for (auto [k, d] : llvm::enumerate(*target))
      s += (k ? ", " : "") + std::to_string(d);
    return s + "]";
  };
  auto dt = dyn_cast<RankedTensorType>(ni.input(0).getType());
  int64_t minus = -1, product = 1;
  bool zero = false;
  for (auto [k, d] : llvm::enumerate(*target)) {
    if (d < -1)
      return ni.fail("'shape' " + shown() + " has " + std::to_string(d) + " at " + std::to_string(k) +
                     " (a dim is >= 0, or -1 to infer)");
    if (d == -1 && minus >= 0)
      return ni.fail("'shape' " + shown() + " has more than one -1");
    if (d == -1)
      minus = int64_t(k);
    zero |= d == 0;
    if (d == 0 && !allowZero && dt && int64_t(k) >= dt.getRank())
      return ni.fail("'shape' " + shown() + " has 0 (copy the input's dim) at " + std::to_string(k) +
                     ", past the input's " + std::to_string(dt.getRank()) + " dims");
    const int64_t dim = d == 0 && !allowZero ? (dt && !dt.isDynamicDim(k) ? dt.getDimSize(k) : -2) : d;
    if (dim == -2 || product < 0)
      product = -1;
    else if (dim >= 0)
      product = llvm::MulOverflow(product, dim, product) ? -1 : product;
  }
  if (allowZero && zero && minus >= 0)
    return ni.fail("'shape' " + shown() + " holds both 0 and -1 with allowzero = 1");
  if (dt && dt.hasStaticShape() && product >= 0) {
    const int64_t elements = dt.getNumElements();
    if (minus < 0 ? product != elements : product == 0 ? elements != 0 : elements % product != 0)
      return ni.fail("'shape' " + shown() + " does not fit the input's " + std::to_string(elements) +
                     " elements");
  }
  return generic<ox::ReshapeOp>(ni);
}

#define UNARY(NAME, SINCE)                                                                                   \
  { "", #NAME, SINCE, generic<ox::NAME##Op, 1, Elem::SameAsInput0, Shape::Broadcast> }
#define BINARY(NAME)                                                                                         \
  { "", #NAME, 7, generic<ox::NAME##Op, 1, Elem::SameAsInput0, Shape::Broadcast> }
#define COMPARE(NAME, SINCE)                                                                                 \
  { "", #NAME, SINCE, generic<ox::NAME##Op, 1, Elem::Bool, Shape::Broadcast> }

/// Clip from opset 11: min and max are optional inputs, either may be omitted on its own.
LogicalResult clip(NodeImporter &ni) {
  if (ni.numInputs() == 0 || !ni.input(0))
    return ni.fail("input 0 (the tensor to clip) is required");
  SmallVector<Value> operands{ni.input(0)};
  SmallVector<int32_t> segments{1, 0, 0};
  for (unsigned i = 1; i < 3 && i < ni.numInputs(); ++i)
    if (Value v = ni.input(i)) {
      operands.push_back(v);
      segments[i] = 1;
    }
  if (ni.node().attribute_size() != 0)
    return ni.fail("attributes are not supported from opset 11 on");
  SmallVector<NamedAttribute> attrs{
      ni.builder().getNamedAttr("operandSegmentSizes", ni.builder().getDenseI32ArrayAttr(segments))};
  return finish<ox::ClipOp>(ni, operands, attrs, resultTypes(ni, 1));
}

/// Ops whose trailing inputs are optional and may be left out one by one (`Optional` operands with
/// AttrSizedOperandSegments): the first `required` inputs must be given.
template <typename OpTy>
LogicalResult withOptionalInputs(NodeImporter &ni, unsigned required, unsigned optional, Elem rule,
                                 unsigned opsetOptional = ~0u, int results = 1) {
  SmallVector<Value> operands;
  SmallVector<int32_t> segments;
  if (ni.numInputs() > required + std::min(optional, opsetOptional))
    return ni.fail("has more inputs than the op takes at this opset");
  for (unsigned i = 0; i < required + optional; ++i) {
    Value v = i < ni.numInputs() ? ni.input(i) : Value();
    if (!v && i < required)
      return ni.fail("input " + std::to_string(i) + " is required");
    if (v)
      operands.push_back(v);
    segments.push_back(v ? 1 : 0);
  }
  SmallVector<NamedAttribute> attrs;
  if (failed(declaredAttributes<OpTy>(ni, attrs)))
    return failure();
  attrs.push_back(
      ni.builder().getNamedAttr("operandSegmentSizes", ni.builder().getDenseI32ArrayAttr(segments)));
  return finish<OpTy>(ni, operands, attrs, resultTypes(ni, results, rule));
}

/// RNN / GRU / LSTM: optional B, sequence_lens, initial_h (LSTM: initial_c, P); every result made, whichever
/// the node names; the activation names checked.
template <typename OpTy, unsigned Optional, int Results> LogicalResult recurrentOp(NodeImporter &ni) {
  static const llvm::StringRef kActivations[] = {
      "Relu",       "Tanh",        "Sigmoid", "Affine",   "LeakyRelu", "ThresholdedRelu",
      "ScaledTanh", "HardSigmoid", "Elu",     "Softsign", "Softplus"};
  if (const auto *a = ni.attribute("activations"))
    for (const std::string &name : a->strings())
      if (!llvm::is_contained(kActivations, name))
        return ni.fail(
            "attribute 'activations' = \"" + name +
            "\" is not supported (one of Relu, Tanh, Sigmoid, "
            "Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, Softsign, Softplus)");
  return withOptionalInputs<OpTy>(ni, 3, Optional, Elem::SameAsInput0, ~0u, Results);
}

/// NonMaxSuppression: max_output_boxes_per_class, iou_threshold and score_threshold optional.
LogicalResult nonMaxSuppression(NodeImporter &ni) {
  return withOptionalInputs<ox::NonMaxSuppressionOp>(ni, 2, 3, Elem::I64);
}

/// Pad from opset 11: pads (and constant_value, axes from 18) are inputs.
LogicalResult pad(NodeImporter &ni) {
  return withOptionalInputs<ox::PadOp>(ni, 2, 2, Elem::SameAsInput0, ni.opset() >= 18 ? 2 : 1);
}

/// Pad before opset 11: `pads` and `value` attributes become constant inputs.
LogicalResult padV2(NodeImporter &ni) {
  auto *pads = ni.attribute("pads");
  if (!pads)
    return ni.fail("attribute 'pads' is required");
  SmallVector<NamedAttribute> attrs;
  if (failed(declaredAttributes<ox::PadOp>(ni, attrs, {"pads", "value"})))
    return failure();
  Value padsV = ni.constantI64(SmallVector<int64_t>(pads->ints().begin(), pads->ints().end()));
  auto elem = cast<ShapedType>(ni.input(0).getType()).getElementType();
  float value = 0;
  if (auto *v = ni.attribute("value"))
    value = v->f();
  if (!isa<FloatType>(elem))
    return ni.fail("needs a floating-point input before opset 11");
  Value cv = ni.constant(DenseElementsAttr::get(RankedTensorType::get({}, elem),
                                                FloatAttr::get(elem, static_cast<double>(value))));
  attrs.push_back(
      ni.builder().getNamedAttr("operandSegmentSizes", ni.builder().getDenseI32ArrayAttr({1, 1, 1, 0})));
  return finish<ox::PadOp>(ni, {ni.input(0), padsV, cv}, attrs, resultTypes(ni, 1));
}

/// RoiAlign: opset 10's has no coordinate_transformation_mode and computes as output_half_pixel.
LogicalResult roiAlign(NodeImporter &ni) {
  SmallVector<NamedAttribute> attrs;
  if (failed(declaredAttributes<ox::RoiAlignOp>(ni, attrs)))
    return failure();
  if (ni.opset() < 16)
    attrs.push_back(ni.builder().getNamedAttr("coordinate_transformation_mode",
                                              ni.builder().getStringAttr("output_half_pixel")));
  SmallVector<Value> operands;
  if (failed(collectInputs(ni, operands)))
    return failure();
  return finish<ox::RoiAlignOp>(ni, operands, attrs, resultTypes(ni, 1));
}

/// TfIdfVectorizer over integer tokens; string pools are out of scope (docs/onnx-support.md).
LogicalResult tfIdfVectorizer(NodeImporter &ni) {
  if (ni.attribute("pool_strings"))
    return ni.fail("pool_strings (string tokens) is not supported: string tensors are out of scope");
  return generic<ox::TfIdfVectorizerOp>(ni);
}

LogicalResult matMulInteger(NodeImporter &ni) {
  return withOptionalInputs<ox::MatMulIntegerOp>(ni, 2, 2, Elem::SameAsInput0);
}

/// EyeLike: its `dtype` attribute is the result's element type.
LogicalResult eyeLike(NodeImporter &ni) {
  SmallVector<NamedAttribute> attrs;
  if (failed(declaredAttributes<ox::EyeLikeOp>(ni, attrs, {"dtype"})))
    return failure();
  Type elem;
  if (auto *d = ni.attribute("dtype")) {
    elem = ni.elementType(static_cast<int>(d->i()));
    if (!elem)
      return ni.fail("dtype " + onnxDataTypeName(static_cast<int>(d->i())).str() + " is not supported");
  }
  return finish<ox::EyeLikeOp>(ni, {ni.input(0)}, attrs, {ni.outputType(0, elem)});
}

/// Size = the product of the input's shape, a 0-D int64.
LogicalResult sizeOp(NodeImporter &ni) {
  if (ni.node().attribute_size() != 0)
    return ni.fail("takes no attributes");
  OpBuilder &b = ni.builder();
  auto shapeType = RankedTensorType::get({ShapedType::kDynamic}, b.getI64Type());
  if (auto t = dyn_cast<RankedTensorType>(ni.input(0).getType()))
    shapeType = RankedTensorType::get({t.getRank()}, b.getI64Type());
  Operation *shape = ni.createOp(ox::ShapeOp::getOperationName(), {ni.input(0)}, {}, {shapeType});
  if (!shape)
    return failure();
  return finish<ox::ReduceProdOp>(ni, {shape->getResult(0)},
                                  {b.getNamedAttr("keepdims", b.getI64IntegerAttr(0))},
                                  {RankedTensorType::get({}, b.getI64Type())});
}

/// Dropout at inference (or training with a constant ratio of 0): the input unchanged, and a mask of all
/// true when asked for. Otherwise (training mode, or one known only at run time) an onnx.Dropout that
/// libmoert runs.
LogicalResult dropout(NodeImporter &ni) {
  OpBuilder &b = ni.builder();
  for (const auto &a : ni.node().attribute())
    if (a.name() != "ratio" && a.name() != "seed" && a.name() != "is_test")
      return ni.fail("attribute '" + a.name() + "' is not supported");
  auto constantValue = [](Value v) -> std::optional<double> {
    DenseElementsAttr attr;
    if (!v || !matchPattern(v, m_Constant(&attr)) || attr.getNumElements() != 1)
      return std::nullopt;
    if (attr.getElementType().isInteger(1))
      return attr.getSplatValue<bool>() ? 1.0 : 0.0;
    if (isa<FloatType>(attr.getElementType()))
      return (*attr.getValues<APFloat>().begin()).convertToDouble();
    return std::nullopt;
  };
  if (Value training = ni.numInputs() > 2 ? ni.input(2) : Value()) {
    auto on = constantValue(training);
    Value ratio = ni.numInputs() > 1 ? ni.input(1) : Value();
    auto r = ratio ? constantValue(ratio) : std::optional<double>(0.5);
    if (!on || (*on != 0 && (!r || *r != 0))) {
      // Training mode (or a mode known only at run time): the random mask, drawn by libmoert.
      SmallVector<NamedAttribute> attrs;
      if (auto *seed = ni.attribute("seed"))
        attrs.push_back(b.getNamedAttr("seed", b.getI64IntegerAttr(seed->i())));
      attrs.push_back(b.getNamedAttr("operandSegmentSizes", b.getDenseI32ArrayAttr({1, ratio ? 1 : 0, 1})));
      SmallVector<Value> operands{ni.input(0)};
      if (ratio)
        operands.push_back(ratio);
      operands.push_back(training);
      Operation *op = ni.createOp(ox::DropoutOp::getOperationName(), operands, attrs,
                                  {ni.outputType(0), ni.outputType(1, b.getI1Type())});
      if (!op)
        return failure();
      ni.setOutputs(op->getResults().take_front(std::max(1u, std::min(2u, ni.numOutputs()))));
      return success();
    }
  }
  Operation *id = ni.createOp(ox::IdentityOp::getOperationName(), {ni.input(0)}, {}, {ni.outputType(0)});
  if (!id)
    return failure();
  SmallVector<Value> outs{id->getResult(0)};
  if (ni.numOutputs() > 1 && !ni.node().output(1).empty()) {
    auto maskType = ni.outputType(1, b.getI1Type());
    Operation *shape = ni.createOp(ox::ShapeOp::getOperationName(), {ni.input(0)}, {},
                                   {RankedTensorType::get({ShapedType::kDynamic}, b.getI64Type())});
    if (!shape)
      return failure();
    auto one = DenseElementsAttr::get(RankedTensorType::get({1}, b.getI1Type()), true);
    Operation *mask = ni.createOp(ox::ConstantOfShapeOp::getOperationName(), {shape->getResult(0)},
                                  {b.getNamedAttr("value", one)}, {maskType});
    if (!mask)
      return failure();
    outs.push_back(mask->getResult(0));
  }
  ni.setOutputs(outs);
  return success();
}

/// GlobalAveragePool / GlobalMaxPool: a mean / max over every dim after the channel one, kept as 1s.
template <typename ReduceTy> LogicalResult globalPool(NodeImporter &ni) {
  if (ni.node().attribute_size() != 0)
    return ni.fail("takes no attributes");
  auto rank = rankOf(ni.input(0));
  if (!rank || *rank < 3)
    return ni.fail("needs an input of known rank >= 3");
  SmallVector<int64_t> axes;
  for (int64_t d = 2; d < *rank; ++d)
    axes.push_back(d);
  return finish<ReduceTy>(ni, {ni.input(0), ni.constantI64(axes)}, {}, resultTypes(ni, 1));
}

/// BatchNormalization at inference (the running mean and variance); training mode: ComposedImport.cpp.
LogicalResult batchNorm(NodeImporter &ni) {
  if (auto *t = ni.attribute("training_mode"); t && t->i() != 0)
    return importBatchNormTraining(ni);
  if (auto *sp = ni.attribute("spatial"); sp && sp->i() != 1)
    return ni.fail("spatial = 0 is not supported");
  if (ni.numOutputs() > 1)
    return ni.fail("outputs beyond Y (training statistics) are not supported");
  SmallVector<NamedAttribute> attrs;
  if (failed(
          declaredAttributes<ox::BatchNormalizationOp>(ni, attrs, {"training_mode", "spatial", "is_test"})))
    return failure();
  SmallVector<Value> operands;
  if (failed(collectInputs(ni, operands)))
    return failure();
  return finish<ox::BatchNormalizationOp>(ni, operands, attrs, resultTypes(ni, 1));
}

LogicalResult resize(NodeImporter &ni) {
  return withOptionalInputs<ox::ResizeOp>(ni, 1, 3, Elem::SameAsInput0);
}

/// Upsample (opset 9) and Resize-10: X and scales, the source coordinate x / scale (asymmetric), nearest
/// rounding down; imported as Resize with those settings.
LogicalResult upsampleV9(NodeImporter &ni) {
  OpBuilder &b = ni.builder();
  std::string mode = stringAttr(ni, "mode", "nearest");
  if (mode != "nearest" && mode != "linear")
    return ni.fail("mode '" + mode + "' (nearest or linear)");
  if (failed(onlyKnownAttributes(ni, {"mode"})))
    return failure();
  if (ni.numInputs() != 2 || !ni.input(1))
    return ni.fail("needs inputs X and scales");
  SmallVector<NamedAttribute> attrs{
      b.getNamedAttr("mode", b.getStringAttr(mode)),
      b.getNamedAttr("coordinate_transformation_mode", b.getStringAttr("asymmetric")),
      b.getNamedAttr("nearest_mode", b.getStringAttr("floor")),
      b.getNamedAttr("operandSegmentSizes", b.getDenseI32ArrayAttr({1, 0, 1, 0}))};
  return finish<ox::ResizeOp>(ni, {ni.input(0), ni.input(1)}, attrs, resultTypes(ni, 1));
}

/// Unique: all four results (Y and the int64 indices, inverse_indices and counts), whichever the node names.
LogicalResult uniqueOp(NodeImporter &ni) {
  SmallVector<NamedAttribute> attrs;
  if (failed(declaredAttributes<ox::UniqueOp>(ni, attrs)))
    return failure();
  auto idx = RankedTensorType::get({ShapedType::kDynamic}, ni.builder().getI64Type());
  SmallVector<Type> types{ni.outputType(0)};
  for (unsigned i = 1; i < 4; ++i)
    types.push_back(i < ni.numOutputs() && !ni.node().output(i).empty()
                        ? ni.outputType(i, idx.getElementType())
                        : Type(idx));
  return finish<ox::UniqueOp>(ni, {ni.input(0)}, attrs, types);
}

//===----------------------------------------------------------------------===//
// Control flow: subgraph attributes become regions (NodeImporter::importSubgraph).
//===----------------------------------------------------------------------===//

/// The element type a subgraph declares for its output `i` (null when it declares none).
Type subgraphOutputElement(NodeImporter &ni, StringRef graph, int i) {
  const onnx::GraphProto *g = ni.graphAttribute(graph);
  if (!g || i < 0 || i >= g->output_size() || !g->output(i).type().has_tensor_type())
    return nullptr;
  return ni.elementType(g->output(i).type().tensor_type().elem_type());
}

/// Rejects attributes other than `known`; graph attributes are read by importSubgraph, not converted.
LogicalResult controlFlowAttributes(NodeImporter &ni, ArrayRef<StringRef> graphs, ArrayRef<StringRef> ints,
                                    SmallVectorImpl<NamedAttribute> &attrs) {
  for (const auto &a : ni.node().attribute()) {
    if (llvm::is_contained(graphs, a.name())) {
      if (a.type() != onnx::AttributeProto::GRAPH)
        return ni.fail("attribute '" + a.name() + "' must be a graph");
      continue;
    }
    if (!llvm::is_contained(ints, a.name()))
      return ni.fail("attribute '" + a.name() + "' is not supported");
    OpBuilder &b = ni.builder();
    if (a.type() == onnx::AttributeProto::INT)
      attrs.push_back(b.getNamedAttr(a.name(), b.getI64IntegerAttr(a.i())));
    else if (a.type() == onnx::AttributeProto::INTS)
      attrs.push_back(b.getNamedAttr(
          a.name(), b.getI64ArrayAttr(SmallVector<int64_t>(a.ints().begin(), a.ints().end()))));
    else
      return ni.fail("attribute '" + a.name() + "' must be an integer or a list of integers");
  }
  for (StringRef g : graphs)
    if (!ni.graphAttribute(g))
      return ni.fail("needs the graph attribute '" + g + "'");
  return success();
}

/// A subgraph input's declared type, or `fallback` where it declares none.
Type subgraphInputType(NodeImporter &ni, StringRef graph, int i, Type fallback) {
  const onnx::GraphProto *g = ni.graphAttribute(graph);
  if (!g || i >= g->input_size() ||
      !(g->input(i).type().has_tensor_type() || g->input(i).type().has_sequence_type() ||
        g->input(i).type().has_optional_type()))
    return fallback;
  return nullptr; // importSubgraph reads the declared type
}

/// Creates control-flow op `OpTy` with one region per graph attribute in `graphs` (block arguments of
/// `argTypes`, null: the subgraph's declared type) and binds the node's outputs; a result type nobody
/// inferred takes the element type of the first graph's output `i + skipOutputs` (Loop's body yields its
/// condition first).
template <typename OpTy>
LogicalResult finishWithRegions(NodeImporter &ni, ValueRange operands, ArrayRef<NamedAttribute> attrs,
                                ArrayRef<StringRef> graphs, ArrayRef<Type> argTypes, int skipOutputs) {
  SmallVector<Type> types;
  for (unsigned i = 0; i < ni.numOutputs(); ++i)
    types.push_back(ni.outputType(i, subgraphOutputElement(ni, graphs[0], int(i) + skipOutputs)));
  Operation *op =
      ni.createOp(OpTy::getOperationName(), operands, attrs, types, graphs.size(), [&](Operation *op) {
        for (auto [r, g] : llvm::enumerate(graphs))
          if (failed(ni.importSubgraph(g, op->getRegion(r), argTypes)))
            return failure();
        return success();
      });
  if (!op)
    return failure();
  ni.setOutputs(op->getResults());
  return success();
}

LogicalResult ifOp(NodeImporter &ni) {
  SmallVector<NamedAttribute> attrs;
  if (failed(controlFlowAttributes(ni, {"then_branch", "else_branch"}, {}, attrs)))
    return failure();
  if (!ni.input(0))
    return ni.fail("needs input 'cond'");
  return finishWithRegions<ox::IfOp>(ni, {ni.input(0)}, attrs, {"then_branch", "else_branch"}, {}, 0);
}

LogicalResult loopOp(NodeImporter &ni) {
  SmallVector<NamedAttribute> attrs;
  if (failed(controlFlowAttributes(ni, {"body"}, {}, attrs)))
    return failure();
  OpBuilder &b = ni.builder();
  SmallVector<Value> operands;
  Value trip = ni.input(0), cond = ni.numInputs() > 1 ? ni.input(1) : Value();
  if (trip)
    operands.push_back(trip);
  if (cond)
    operands.push_back(cond);
  const int carried = ni.numInputs() > 2 ? int(ni.numInputs()) - 2 : 0;
  // Body arguments: the iteration number, the condition, then the carried values (which may change shape
  // from one iteration to the next: their declared type, else any shape of the initial value's dtype).
  SmallVector<Type> argTypes{subgraphInputType(ni, "body", 0, RankedTensorType::get({}, b.getI64Type())),
                             subgraphInputType(ni, "body", 1, RankedTensorType::get({}, b.getI1Type()))};
  for (int i = 0; i < carried; ++i) {
    Value v = ni.input(2 + i);
    if (!v)
      return ni.fail("loop-carried input " + Twine(i) + " is omitted");
    operands.push_back(v);
    argTypes.push_back(subgraphInputType(
        ni, "body", 2 + i,
        isa<TensorType>(v.getType()) ? UnrankedTensorType::get(cast<TensorType>(v.getType()).getElementType())
                                     : v.getType())); // a sequence or optional: its own type
  }
  attrs.push_back(
      b.getNamedAttr("operandSegmentSizes", b.getDenseI32ArrayAttr({trip ? 1 : 0, cond ? 1 : 0, carried})));
  return finishWithRegions<ox::LoopOp>(ni, operands, attrs, {"body"}, argTypes, 1);
}

LogicalResult scanOp(NodeImporter &ni) {
  SmallVector<NamedAttribute> attrs;
  // Scan-8: every input has a batch dim first (scanned per batch entry, along dim 1), its first input the
  // optional sequence_lens, its `directions` Scan-9's scan_input_directions.
  const bool batched = ni.opset() < 9;
  if (failed(controlFlowAttributes(ni, {"body"},
                                   batched ? ArrayRef<StringRef>{"num_scan_inputs", "directions"}
                                           : ArrayRef<StringRef>{"num_scan_inputs", "scan_input_axes",
                                                                 "scan_input_directions", "scan_output_axes",
                                                                 "scan_output_directions"},
                                   attrs)))
    return failure();
  if (batched) {
    if (ni.numInputs() > 0 && ni.input(0))
      return ni.fail("Scan-8's sequence_lens (per batch entry lengths) is not supported");
    for (NamedAttribute &a : attrs)
      if (a.getName() == "directions")
        a.setName(ni.builder().getStringAttr("scan_input_directions"));
    attrs.push_back(ni.builder().getNamedAttr("batched", ni.builder().getI64IntegerAttr(1)));
  }
  SmallVector<Value> operands;
  for (unsigned i = batched ? 1 : 0; i < ni.numInputs(); ++i) {
    if (!ni.input(i))
      return ni.fail("input " + Twine(i) + " is omitted");
    operands.push_back(ni.input(i));
  }
  const int64_t scans = intAttr(ni, "num_scan_inputs", 0);
  if (scans < 1 || scans > int64_t(operands.size()))
    return ni.fail("num_scan_inputs = " + Twine(scans) + " with " + Twine(operands.size()) + " inputs");
  const int64_t states = int64_t(operands.size()) - scans;
  SmallVector<int64_t> axes(scans, 0);
  if (const auto *a = ni.attribute("scan_input_axes"))
    for (int i = 0; i < a->ints_size() && i < scans; ++i)
      axes[i] = a->ints(i);
  SmallVector<Type> argTypes;
  for (auto [i, v] : llvm::enumerate(operands)) {
    auto t = cast<ShapedType>(v.getType());
    Type fallback = UnrankedTensorType::get(t.getElementType());
    if (batched && t.hasRank() && t.getRank() < (int64_t(i) >= states ? 2 : 1))
      return ni.fail("Scan-8's input " + Twine(i + 1) + " has no batch dim");
    if (batched && int64_t(i) < states && t.hasRank()) // a batch entry's state
      fallback = RankedTensorType::get(t.getShape().drop_front(), t.getElementType());
    if (int64_t(i) >= states && t.hasRank()) { // a slice: the scan axis (and Scan-8's batch dim) dropped
      int64_t axis = batched ? 1 : axes[i - states] < 0 ? axes[i - states] + t.getRank() : axes[i - states];
      if (axis < 0 || axis >= t.getRank())
        return ni.fail("scan_input_axes[" + Twine(i - states) + "] = " + Twine(axes[i - states]) +
                       " is out of range for a rank-" + Twine(t.getRank()) + " input");
      SmallVector<int64_t> dims(t.getShape());
      dims.erase(dims.begin() + axis);
      if (batched)
        dims.erase(dims.begin());
      fallback = RankedTensorType::get(dims, t.getElementType());
    }
    argTypes.push_back(subgraphInputType(ni, "body", int(i), fallback));
  }
  return finishWithRegions<ox::ScanOp>(ni, operands, attrs, {"body"}, argTypes, 0);
}

const OpTableEntry kTable[] = {
    // Elementwise (unary ops before opset 6 had `consumed_inputs`; binary ops before 7 legacy broadcast).
    UNARY(Abs, 6),
    UNARY(Ceil, 6),
    UNARY(Cos, 7),
    UNARY(Erf, 9),
    UNARY(Exp, 6),
    UNARY(Floor, 6),
    COMPARE(IsNaN, 9),
    {"", "IsInf", 10, generic<ox::IsInfOp, 1, Elem::Bool, Shape::Broadcast>},
    UNARY(Acos, 7),
    UNARY(Acosh, 9),
    UNARY(Asin, 7),
    UNARY(Asinh, 9),
    UNARY(Atan, 7),
    UNARY(Atanh, 9),
    UNARY(Cosh, 9),
    UNARY(Round, 11),
    UNARY(Sign, 9),
    UNARY(Sinh, 9),
    UNARY(Softplus, 1),
    UNARY(Softsign, 1),
    UNARY(Tan, 7),
    UNARY(Elu, 6),
    UNARY(LeakyRelu, 6),
    UNARY(ThresholdedRelu, 10),
    UNARY(Selu, 6),
    UNARY(HardSigmoid, 6),
    UNARY(Shrink, 9),
    {"", "Max", 8, generic<ox::MaxOp, 1, Elem::SameAsInput0, Shape::Broadcast>},
    {"", "Min", 8, generic<ox::MinOp, 1, Elem::SameAsInput0, Shape::Broadcast>},
    {"", "Sum", 8, generic<ox::SumOp, 1, Elem::SameAsInput0, Shape::Broadcast>},
    {"", "Mean", 8, generic<ox::MeanOp, 1, Elem::SameAsInput0, Shape::Broadcast>},
    {"", "Clip", 11, clip},
    {"", "Conv", 1, generic<ox::ConvOp>},
    {"", "ConvTranspose", 1, generic<ox::ConvTransposeOp>},
    {"", "Upsample", 9, upsampleV9},
    {"", "Resize", 10, upsampleV9},
    {"", "Resize", 11, resize},
    {"", "Gelu", 20, generic<ox::GeluOp, 1, Elem::SameAsInput0, Shape::Broadcast>},
    {"", "Identity", 1, importIdentity, /*takesValues=*/true},
    UNARY(Log, 6),
    UNARY(Neg, 6),
    UNARY(Reciprocal, 6),
    UNARY(Relu, 6),
    UNARY(Sigmoid, 6),
    UNARY(Sin, 7),
    UNARY(Sqrt, 6),
    UNARY(Tanh, 6),
    COMPARE(Not, 1),
    BINARY(Add),
    BINARY(Sub),
    BINARY(Mul),
    BINARY(Div),
    BINARY(Pow),
    BINARY(PRelu),
    {"", "Mod", 10, generic<ox::ModOp, 1, Elem::SameAsInput0, Shape::Broadcast>},
    {"", "BitShift", 11, generic<ox::BitShiftOp, 1, Elem::SameAsInput0, Shape::Broadcast>},
    COMPARE(Equal, 7),
    COMPARE(Greater, 7),
    COMPARE(Less, 7),
    COMPARE(GreaterOrEqual, 12),
    COMPARE(LessOrEqual, 12),
    COMPARE(And, 7),
    COMPARE(Or, 7),
    COMPARE(Xor, 7),
    {"", "Where", 9, generic<ox::WhereOp, 1, Elem::SameAsInput2, Shape::Broadcast>},
    // Linear algebra.
    {"", "MatMul", 1, generic<ox::MatMulOp, 1, Elem::SameAsInput0, Shape::MatMul>},
    {"", "Gemm", 7, generic<ox::GemmOp>},
    {"", "Einsum", 12, generic<ox::EinsumOp>},
    // Normalisation and routing.
    {"", "Softmax", 1, softmaxV1<ox::SoftmaxOp>},
    {"", "Softmax", 13, generic<ox::SoftmaxOp>},
    {"", "LogSoftmax", 1, softmaxV1<ox::LogSoftmaxOp>},
    {"", "LogSoftmax", 13, generic<ox::LogSoftmaxOp>},
    {"", "LayerNormalization", 17, generic<ox::LayerNormalizationOp, 3>},
    {"", "TopK", 1, topkV1},
    {"", "TopK", 10, topk},
    {"", "ArgMax", 1, generic<ox::ArgMaxOp, 1, Elem::I64>},
    {"", "ArgMin", 1, generic<ox::ArgMinOp, 1, Elem::I64>},
    {"", "CumSum", 11, generic<ox::CumSumOp>},
    // Reductions (axes: attribute, then input from 13 for ReduceSum and from 18 for the others).
    {"", "ReduceSum", 1, axesAttrToInput<ox::ReduceSumOp>},
    {"", "ReduceSum", 13, generic<ox::ReduceSumOp>},
    {"", "ReduceL2", 1, axesAttrToInput<ox::ReduceL2Op>},
    {"", "ReduceL2", 18, generic<ox::ReduceL2Op>},
    {"", "ReduceMean", 1, axesAttrToInput<ox::ReduceMeanOp>},
    {"", "ReduceMean", 18, generic<ox::ReduceMeanOp>},
    {"", "ReduceMax", 1, axesAttrToInput<ox::ReduceMaxOp>},
    {"", "ReduceMax", 18, generic<ox::ReduceMaxOp>},
    {"", "ReduceMin", 1, axesAttrToInput<ox::ReduceMinOp>},
    {"", "ReduceMin", 18, generic<ox::ReduceMinOp>},
    {"", "ReduceProd", 1, axesAttrToInput<ox::ReduceProdOp>},
    {"", "ReduceProd", 18, generic<ox::ReduceProdOp>},
    {"", "ReduceL1", 1, axesAttrToInput<ox::ReduceL1Op>},
    {"", "ReduceL1", 18, generic<ox::ReduceL1Op>},
    {"", "ReduceSumSquare", 1, axesAttrToInput<ox::ReduceSumSquareOp>},
    {"", "ReduceSumSquare", 18, generic<ox::ReduceSumSquareOp>},
    {"", "ReduceLogSum", 1, axesAttrToInput<ox::ReduceLogSumOp>},
    {"", "ReduceLogSum", 18, generic<ox::ReduceLogSumOp>},
    {"", "ReduceLogSumExp", 1, axesAttrToInput<ox::ReduceLogSumExpOp>},
    {"", "ReduceLogSumExp", 18, generic<ox::ReduceLogSumExpOp>},
    // Indexing.
    {"", "Gather", 1, generic<ox::GatherOp>},
    {"", "GatherElements", 11, generic<ox::GatherElementsOp>},
    {"", "GatherND", 11, generic<ox::GatherNDOp>},
    {"", "ScatterElements", 11, generic<ox::ScatterElementsOp>},
    {"", "ScatterND", 11, generic<ox::ScatterNDOp>},
    {"", "OneHot", 9, generic<ox::OneHotOp, 1, Elem::SameAsInput2>},
    {"", "Trilu", 14, generic<ox::TriluOp>},
    // Shapes and data movement.
    {"", "Cast", 6, castOp},
    {"", "Reshape", 5, reshape},
    {"", "Transpose", 1, generic<ox::TransposeOp>},
    {"", "Squeeze", 1, axesAttrToInput<ox::SqueezeOp>},
    {"", "Squeeze", 13, generic<ox::SqueezeOp>},
    {"", "Unsqueeze", 1, axesAttrToInput<ox::UnsqueezeOp>},
    {"", "Unsqueeze", 13, generic<ox::UnsqueezeOp>},
    {"", "Concat", 4, generic<ox::ConcatOp>},
    {"", "Split", 2, splitV2},
    {"", "Split", 13, generic<ox::SplitOp, -1>},
    {"", "Slice", 1, slice},
    {"", "Expand", 8, generic<ox::ExpandOp>},
    {"", "Shape", 1, generic<ox::ShapeOp, 1, Elem::I64>},
    {"", "ConstantOfShape", 9, constantOfShape},
    {"", "Range", 11, generic<ox::RangeOp>},
    {"", "Constant", 1, constantNode},
    {"", "Flatten", 1, generic<ox::FlattenOp>},
    {"", "Tile", 6, generic<ox::TileOp>},
    {"", "DepthToSpace", 1, generic<ox::DepthToSpaceOp>},
    {"", "SpaceToDepth", 1, generic<ox::SpaceToDepthOp>},
    {"", "Compress", 9, generic<ox::CompressOp>},
    {"", "NonZero", 9, generic<ox::NonZeroOp, 1, Elem::I64>},
    {"", "EyeLike", 9, eyeLike},
    {"", "Pad", 2, padV2},
    {"", "Pad", 11, pad},
    {"", "ReverseSequence", 10, generic<ox::ReverseSequenceOp>},
    {"", "Size", 1, sizeOp},
    {"", "Dropout", 7, dropout},
    {"", "Scatter", 9, generic<ox::ScatterElementsOp>},
    // Normalisation, pooling and quantisation (vision towers, quantised exports).
    {"", "Hardmax", 1, softmaxV1<ox::HardmaxOp>},
    {"", "Hardmax", 13, generic<ox::HardmaxOp>},
    {"", "BatchNormalization", 7, batchNorm},
    {"", "InstanceNormalization", 6, generic<ox::InstanceNormalizationOp>},
    {"", "MaxPool", 8, generic<ox::MaxPoolOp, -1, Elem::SameAsInput0>},
    {"", "MaxUnpool", 9, generic<ox::MaxUnpoolOp>},
    {"", "NonMaxSuppression", 10, nonMaxSuppression},
    {"", "ConvInteger", 10, importConvInteger},
    {"", "QLinearConv", 10, importQLinearConv},
    {"", "QLinearMatMul", 10, importQLinearMatMul},
    {"", "DFT", 17, generic<ox::DFTOp>},
    {"", "STFT", 17,
     [](NodeImporter &ni) { return withOptionalInputs<ox::STFTOp>(ni, 2, 2, Elem::SameAsInput0); }},
    {"", "MelWeightMatrix", 17, generic<ox::MelWeightMatrixOp>},
    {"", "GridSample", 16, generic<ox::GridSampleOp>},
    {"", "GridSample", 20, generic<ox::GridSampleOp>},
    {"", "RoiAlign", 10, roiAlign},
    {"", "RoiAlign", 16, roiAlign},
    {"", "TfIdfVectorizer", 9, tfIdfVectorizer},
    {"", "RandomUniform", 1, generic<ox::RandomUniformOp>},
    {"", "RandomNormal", 1, generic<ox::RandomNormalOp>},
    {"", "RandomUniformLike", 1, generic<ox::RandomUniformLikeOp>},
    {"", "RandomNormalLike", 1, generic<ox::RandomNormalLikeOp>},
    {"", "RNN", 7, recurrentOp<ox::RNNOp, 3, 2>},
    {"", "GRU", 7, recurrentOp<ox::GRUOp, 3, 2>},
    {"", "LSTM", 7, recurrentOp<ox::LSTMOp, 5, 3>},
    {"ai.onnx.preview.training", "Adagrad", 1, generic<ox::AdagradOp, -1>},
    {"ai.onnx.preview.training", "Momentum", 1, generic<ox::MomentumOp, -1>},
    {"ai.onnx.preview.training", "Adam", 1, generic<ox::AdamOp, -1>},
    {"", "LRN", 1, generic<ox::LRNOp>},
    {"", "Det", 11, generic<ox::DetOp>},
    {"", "Unique", 11, uniqueOp},
    {"", "If", 1, ifOp, /*takesValues=*/true},
    {"", "Loop", 1, loopOp, /*takesValues=*/true},
    {"", "SequenceConstruct", 11, importSequenceOp},
    {"", "SequenceEmpty", 11, importSequenceOp},
    {"", "SequenceInsert", 11, importSequenceOp, /*takesValues=*/true},
    {"", "SequenceAt", 11, importSequenceOp, /*takesValues=*/true},
    {"", "SequenceErase", 11, importSequenceOp, /*takesValues=*/true},
    {"", "SequenceLength", 11, importSequenceOp, /*takesValues=*/true},
    {"", "SplitToSequence", 11, importSequenceOp},
    {"", "ConcatFromSequence", 11, importSequenceOp, /*takesValues=*/true},
    {"", "Optional", 15, importOptionalOp, /*takesValues=*/true},
    {"", "OptionalHasElement", 15, importOptionalOp, /*takesValues=*/true},
    {"", "OptionalGetElement", 15, importOptionalOp, /*takesValues=*/true},
    {"", "SequenceMap", 17, importSequenceMap, /*takesValues=*/true},
    {"", "Scan", 8, scanOp},
    {"", "Scan", 9, scanOp},
    {"", "AveragePool", 7, generic<ox::AveragePoolOp>},
    {"", "GlobalAveragePool", 1, globalPool<ox::ReduceMeanOp>},
    {"", "GlobalMaxPool", 1, globalPool<ox::ReduceMaxOp>},
    {"", "QuantizeLinear", 10, generic<ox::QuantizeLinearOp>},
    {"", "DequantizeLinear", 10, generic<ox::DequantizeLinearOp>},
    {"", "MatMulInteger", 10, matMulInteger},
    // Mixture-of-Experts layers (MoEImport.cpp).
    {"com.microsoft", "MoE", 1, importOrtMoE},
    {"com.microsoft", "QMoE", 1, importOrtQMoE},
    {"moec", "SparseMoE", 1, importSparseMoE},
    // Linear layers with quantised weights (MoEImport.cpp).
    {"com.microsoft", "MatMulNBits", 1, importOrtMatMulNBits},
    // ONNX Runtime's norm and GELU contrib ops (MoEImport.cpp).
    {"com.microsoft", "SimplifiedLayerNormalization", 1, importOrtSimplifiedLayerNorm},
    {"com.microsoft", "SkipSimplifiedLayerNormalization", 1, importOrtSkipLayerNorm},
    {"com.microsoft", "SkipLayerNormalization", 1, importOrtSkipLayerNorm},
    {"com.microsoft", "FastGelu", 1, importOrtGelu},
    {"com.microsoft", "BiasGelu", 1, importOrtGelu},
    {"com.microsoft", "QuickGelu", 1, importOrtGelu},
    // Attention (AttentionImport.cpp).
    {"com.microsoft", "GroupQueryAttention", 1, importOrtGroupQueryAttention},
    {"com.microsoft", "RotaryEmbedding", 1, importOrtRotaryEmbedding},
    {"", "Attention", 23, importOnnxAttention},
    {"", "RotaryEmbedding", 23, importOnnxRotaryEmbedding},
    {"", "RMSNormalization", 23, importOrtSimplifiedLayerNorm},
    {"com.microsoft", "GatherBlockQuantized", 1, importOrtGatherBlockQuantized},
};

#undef UNARY
#undef BINARY
#undef COMPARE

} // namespace

ArrayRef<OpTableEntry> moec::frontend::opTable() { return kTable; }
