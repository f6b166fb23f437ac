//===- SequenceImport.cpp - ONNX sequences and optionals ------------------===//
//
// Builders for the ops that make, read and take apart ONNX sequences (`!onnx.seq<tensor>`) and optionals
// (`!onnx.opt<T>`). Result types: the one libonnx inferred or the model declares when it is of the right
// kind, else the kind the op makes with the element type it is given (shapes unknown).
//
//===----------------------------------------------------------------------===//
#include "frontend/NodeImporter.h"
#include "frontend/OnnxModel.h"
#include "ir/ONNXOps.h"

#include "onnx/onnx_pb.h"

using namespace mlir;
using namespace moec::frontend;
namespace ox = moec::onnxir;

namespace {

/// Output `i`'s type when inferred as a sequence, else a sequence of `elem` tensors of unknown shape.
Type sequenceResult(NodeImporter &ni, unsigned i, Type elem) {
  Type t = ni.outputType(i, elem);
  if (isa_and_present<ox::SeqType>(t) && (!elem || ox::innerElementType(t) == elem))
    return t;
  return elem ? ox::SeqType::get(ni.builder().getContext(), UnrankedTensorType::get(elem)) : Type();
}

/// Output `i`'s type when inferred as a tensor of `elem`, else a tensor of `elem` of unknown shape.
Type tensorResult(NodeImporter &ni, unsigned i, Type elem) {
  Type t = ni.outputType(i, elem);
  if (isa_and_present<TensorType>(t) && cast<TensorType>(t).getElementType() == elem)
    return t;
  return UnrankedTensorType::get(elem);
}

LogicalResult build(NodeImporter &ni, StringRef name, ValueRange operands, ArrayRef<NamedAttribute> attrs,
                    Type result) {
  if (!result)
    return ni.fail("the result's type is unknown");
  Operation *op = ni.createOp(name, operands, attrs, {result});
  if (!op)
    return failure();
  ni.setOutputs(op->getResults());
  return success();
}

/// The node's integer attributes among `known` (others are errors).
LogicalResult intAttributes(NodeImporter &ni, ArrayRef<StringRef> known,
                            SmallVectorImpl<NamedAttribute> &out) {
  if (failed(onlyKnownAttributes(ni, known)))
    return failure();
  for (const auto &a : ni.node().attribute()) {
    if (a.type() != onnx::AttributeProto::INT)
      return ni.fail("attribute '" + a.name() + "' must be an integer");
    out.push_back(ni.builder().getNamedAttr(a.name(), ni.builder().getI64IntegerAttr(a.i())));
  }
  return success();
}

Value sequenceInput(NodeImporter &ni, unsigned i) {
  Value v = i < ni.numInputs() ? ni.input(i) : Value();
  return v && isa<ox::SeqType>(v.getType()) ? v : Value();
}

} // namespace

LogicalResult moec::frontend::importIdentity(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(ni, {})))
    return failure();
  Value in = ni.numInputs() > 0 ? ni.input(0) : Value();
  if (!in)
    return ni.fail("input 0 is required");
  Type t = ni.outputType(0, ox::innerElementType(in.getType()));
  // Identity keeps its input's type; an inferred one counts only when it is of the same kind and element.
  if (!t || ox::valueKind(t) != ox::valueKind(in.getType()) ||
      ox::innerElementType(t) != ox::innerElementType(in.getType()) || isa<UnrankedTensorType>(t))
    t = in.getType();
  return build(ni, ox::IdentityOp::getOperationName(), {in}, {}, t);
}

LogicalResult moec::frontend::importSequenceOp(NodeImporter &ni) {
  const std::string &op = ni.node().op_type();
  OpBuilder &b = ni.builder();
  SmallVector<NamedAttribute> attrs;
  if (op == "SequenceEmpty") {
    if (failed(onlyKnownAttributes(ni, {"dtype"})))
      return failure();
    const int dtype = int(intAttr(ni, "dtype", onnx::TensorProto::FLOAT));
    Type elem = ni.elementType(dtype);
    if (!elem)
      return ni.fail("dtype " + onnxDataTypeName(dtype) + " is not supported");
    return build(ni, ox::SequenceEmptyOp::getOperationName(), {}, {}, sequenceResult(ni, 0, elem));
  }
  if (op == "SequenceConstruct") {
    if (failed(onlyKnownAttributes(ni, {})))
      return failure();
    if (ni.numInputs() == 0)
      return ni.fail("needs at least one input");
    SmallVector<Value> inputs;
    for (unsigned i = 0; i < ni.numInputs(); ++i) {
      Value v = ni.input(i);
      if (!v)
        return ni.fail("input " + Twine(i) + " is omitted");
      if (ox::innerElementType(v.getType()) != ox::innerElementType(ni.input(0).getType()))
        return ni.fail("input " + Twine(i) + "'s element type differs from input 0's");
      inputs.push_back(v);
    }
    // Tensors all of one type make a sequence of that type.
    Type result = sequenceResult(ni, 0, ox::innerElementType(inputs[0].getType()));
    if (llvm::all_equal(ValueRange(inputs).getTypes()) &&
        isa<UnrankedTensorType>(ox::innerTensorType(result)))
      result = ox::SeqType::get(b.getContext(), cast<TensorType>(inputs[0].getType()));
    return build(ni, ox::SequenceConstructOp::getOperationName(), inputs, {}, result);
  }
  if (op == "SplitToSequence") {
    if (failed(intAttributes(ni, {"axis", "keepdims"}, attrs)))
      return failure();
    Value in = ni.input(0), split = ni.numInputs() > 1 ? ni.input(1) : Value();
    if (!in)
      return ni.fail("input 0 is required");
    SmallVector<Value> operands{in};
    if (split)
      operands.push_back(split);
    return build(ni, ox::SplitToSequenceOp::getOperationName(), operands, attrs,
                 sequenceResult(ni, 0, ox::innerElementType(in.getType())));
  }

  // The rest take a sequence first.
  Value seq = sequenceInput(ni, 0);
  if (!seq)
    return ni.fail("input 0 must be a sequence");
  Type elem = ox::innerElementType(seq.getType());
  if (op == "SequenceLength") {
    if (failed(onlyKnownAttributes(ni, {})))
      return failure();
    return build(ni, ox::SequenceLengthOp::getOperationName(), {seq}, {},
                 RankedTensorType::get({}, b.getI64Type()));
  }
  if (op == "ConcatFromSequence") {
    if (failed(intAttributes(ni, {"axis", "new_axis"}, attrs)))
      return failure();
    if (!ni.attribute("axis"))
      return ni.fail("attribute 'axis' is required");
    return build(ni, ox::ConcatFromSequenceOp::getOperationName(), {seq}, attrs, tensorResult(ni, 0, elem));
  }
  if (failed(onlyKnownAttributes(ni, {})))
    return failure();
  Value position = op == "SequenceInsert" ? (ni.numInputs() > 2 ? ni.input(2) : Value())
                                          : (ni.numInputs() > 1 ? ni.input(1) : Value());
  if (position && !isa<IntegerType>(ox::innerElementType(position.getType())))
    return ni.fail("input 'position' must be an int32 or int64 tensor");
  if (op == "SequenceAt") {
    if (!position)
      return ni.fail("input 'position' is required");
    return build(ni, ox::SequenceAtOp::getOperationName(), {seq, position}, {}, tensorResult(ni, 0, elem));
  }
  if (op == "SequenceErase") {
    SmallVector<Value> operands{seq};
    if (position)
      operands.push_back(position);
    return build(ni, ox::SequenceEraseOp::getOperationName(), operands, {}, sequenceResult(ni, 0, elem));
  }
  // SequenceInsert
  Value tensor = ni.numInputs() > 1 ? ni.input(1) : Value();
  if (!tensor)
    return ni.fail("input 'tensor' is required");
  if (ox::innerElementType(tensor.getType()) != elem)
    return ni.fail("input 'tensor''s element type differs from the sequence's");
  SmallVector<Value> operands{seq, tensor};
  if (position)
    operands.push_back(position);
  return build(ni, ox::SequenceInsertOp::getOperationName(), operands, {}, sequenceResult(ni, 0, elem));
}

LogicalResult moec::frontend::importOptionalOp(NodeImporter &ni) {
  const std::string &op = ni.node().op_type();
  Value in = ni.numInputs() > 0 ? ni.input(0) : Value();
  if (op == "Optional") {
    if (failed(onlyKnownAttributes(ni, {"type"})))
      return failure();
    Type content;
    if (in) {
      if (isa<ox::OptType>(in.getType()))
        return ni.fail("input 0 is already an optional");
      content = in.getType();
    } else {
      const onnx::AttributeProto *a = ni.attribute("type");
      if (!a || a->type() != onnx::AttributeProto::TYPE_PROTO)
        return ni.fail("attribute 'type' (the type of the value it could hold) is required without an input");
      content = ni.typeFromProto(&a->tp(), nullptr);
      if (!content || !ox::valueKind(content) || isa<ox::OptType>(content))
        return ni.fail("attribute 'type' is not a tensor or sequence type moec supports");
    }
    return build(ni, ox::OptionalOp::getOperationName(), in ? ValueRange{in} : ValueRange{}, {},
                 ox::OptType::get(ni.builder().getContext(), content));
  }
  if (failed(onlyKnownAttributes(ni, {})))
    return failure();
  if (op == "OptionalHasElement")
    return build(ni, ox::OptionalHasElementOp::getOperationName(), in ? ValueRange{in} : ValueRange{}, {},
                 RankedTensorType::get({}, ni.builder().getI1Type()));
  // OptionalGetElement: an optional's content, or (opset 18) a tensor or sequence as it is.
  if (!in)
    return ni.fail("input 0 is required");
  Type t = in.getType();
  if (auto o = dyn_cast<ox::OptType>(t))
    t = o.getElementType();
  return build(ni, ox::OptionalGetElementOp::getOperationName(), {in}, {}, t);
}

LogicalResult moec::frontend::importSequenceMap(NodeImporter &ni) {
  for (const auto &a : ni.node().attribute())
    if (a.name() != "body" || a.type() != onnx::AttributeProto::GRAPH)
      return ni.fail("attribute '" + a.name() + "' is not supported (SequenceMap takes the graph 'body')");
  const onnx::GraphProto *body = ni.graphAttribute("body");
  if (!body)
    return ni.fail("needs the graph attribute 'body'");
  SmallVector<Value> operands;
  SmallVector<Type> argTypes;
  for (unsigned i = 0; i < ni.numInputs(); ++i) {
    Value v = ni.input(i);
    if (!v)
      return ni.fail("input " + Twine(i) + " is omitted");
    if (i == 0 && !isa<ox::SeqType>(v.getType()))
      return ni.fail("input 0 must be a sequence");
    if (isa<ox::OptType>(v.getType()))
      return ni.fail("input " + Twine(i) + " is an optional; SequenceMap takes sequences and tensors");
    operands.push_back(v);
    // The body takes one element of each sequence, each tensor whole.
    argTypes.push_back(ox::innerTensorType(v.getType()));
  }
  if (body->input_size() != int(operands.size()))
    return ni.fail("the body takes " + Twine(body->input_size()) + " inputs for " + Twine(operands.size()) +
                   " operands");
  if (body->output_size() != int(ni.numOutputs()))
    return ni.fail("the body yields " + Twine(body->output_size()) + " values for " + Twine(ni.numOutputs()) +
                   " outputs");
  // Result i: a sequence of the body's output i (its declared element type, else the first input's).
  SmallVector<Type> types;
  for (unsigned i = 0; i < ni.numOutputs(); ++i) {
    Type elem;
    if (body->output(int(i)).type().has_tensor_type())
      elem = ni.elementType(body->output(int(i)).type().tensor_type().elem_type());
    types.push_back(sequenceResult(ni, i, elem ? elem : ox::innerElementType(operands[0].getType())));
  }
  Operation *op =
      ni.createOp(ox::SequenceMapOp::getOperationName(), operands, {}, types, 1,
                  [&](Operation *op) { return ni.importSubgraph("body", op->getRegion(0), argTypes); });
  if (!op)
    return failure();
  ni.setOutputs(op->getResults());
  return success();
}
