//===- Importer.cpp - walk an ONNX graph and build MLIR -------------------===//
#include "frontend/Importer.h"

#include "frontend/NodeImporter.h"
#include "ir/Locations.h"
#include "ir/MoEDialect.h"
#include "ir/ONNXOps.h"
#include "ir/ShapeInference.h"

#include "onnx/defs/schema.h"
#include "onnx/onnx_pb.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/BuiltinDialect.h"
#include "mlir/IR/DialectResourceBlobManager.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <limits>

using namespace mlir;
using namespace moec::frontend;

namespace {

std::string sanitize(llvm::StringRef name, llvm::StringRef fallback) {
  std::string out;
  for (char c : name)
    out.push_back(llvm::isAlnum(c) || c == '_' ? c : '_');
  if (out.empty() || llvm::isDigit(out[0]))
    out = fallback.str() + (out.empty() ? "" : "_" + out);
  return out;
}

class GraphImporter final : public NodeImporter {
public:
  GraphImporter(std::shared_ptr<OnnxModel> model, MLIRContext &ctx, const ImportOptions &options)
      : model(std::move(model)), ctx(ctx), options(options), b(&ctx) {}

  OwningOpRef<ModuleOp> run(std::string &error);

  // NodeImporter.
  const onnx::NodeProto &node() const override { return *current; }
  int64_t opset() const override { return currentOpset; }
  OpBuilder &builder() override { return b; }
  Location loc() const override { return currentLoc; }
  unsigned numInputs() const override { return current->input_size(); }
  Value input(unsigned i) const override {
    if (i >= static_cast<unsigned>(current->input_size()) || current->input(i).empty())
      return nullptr;
    return values.lookup(current->input(i));
  }
  const onnx::AttributeProto *attribute(llvm::StringRef name) const override {
    for (const auto &a : current->attribute())
      if (a.name() == name)
        return &a;
    return nullptr;
  }
  LogicalResult convertAttributes(SmallVectorImpl<NamedAttribute> &out) override;
  Type outputType(unsigned i, Type fallbackElement) const override;
  unsigned numOutputs() const override { return current->output_size(); }
  void setOutputs(ValueRange results) override {
    for (auto [i, v] : llvm::enumerate(results))
      if (i < static_cast<size_t>(current->output_size()) && !current->output(i).empty())
        values[current->output(i)] = v;
  }
  LogicalResult fail(const llvm::Twine &message) override {
    const onnx::NodeProto &n = *current;
    std::string domain = n.domain().empty() ? "ai.onnx" : n.domain();
    firstError =
        model->path().str() + ": node '" + (n.name().empty() ? "#" + std::to_string(nodeIndex) : n.name()) +
        "' (" + n.op_type() + ", " + domain + " opset " + std::to_string(currentOpset) +
        (model->expandedFrom(n).empty() ? "" : ", in ONNX function " + model->expandedFrom(n).str()) +
        subgraphContext() + "): " + message.str();
    return failure();
  }
  Type elementType(int onnxDataType) const override;
  LogicalResult importSubgraph(llvm::StringRef name, Region &region, ArrayRef<Type> argTypes) override;

private:
  LogicalResult importInitializer(const onnx::TensorProto &t, std::string &error);
  FailureOr<ElementsAttr> tensorAttr(const onnx::TensorProto &t, bool allowResource, std::string &error);
  Type typeFromProto(const onnx::TypeProto *type, Type fallbackElement) const override;
  LogicalResult importNode(const onnx::NodeProto &n);

  std::shared_ptr<OnnxModel> model;
  MLIRContext &ctx;
  const ImportOptions &options;
  OpBuilder b;
  llvm::StringMap<Value> values;
  const onnx::NodeProto *current = nullptr;
  int64_t currentOpset = 0;
  int nodeIndex = 0;
  Location currentLoc = UnknownLoc::get(&ctx);
  std::string firstError;
  // The subgraphs being imported, outermost first: "then_branch of node 'x' (If)".
  std::vector<std::string> subgraphs;
  std::string subgraphContext() const {
    std::string out;
    for (auto it = subgraphs.rbegin(); it != subgraphs.rend(); ++it)
      out += ", in " + *it;
    return out;
  }
};

Type GraphImporter::elementType(int t) const {
  Builder bb(&ctx);
  switch (t) {
  case onnx::TensorProto::FLOAT:
    return bb.getF32Type();
  case onnx::TensorProto::FLOAT16:
    return bb.getF16Type();
  case onnx::TensorProto::BFLOAT16:
    return bb.getBF16Type();
  case onnx::TensorProto::DOUBLE:
    return bb.getF64Type();
  case onnx::TensorProto::BOOL:
    return bb.getI1Type();
  case onnx::TensorProto::INT8:
    return bb.getIntegerType(8);
  case onnx::TensorProto::INT16:
    return bb.getIntegerType(16);
  case onnx::TensorProto::INT32:
    return bb.getIntegerType(32);
  case onnx::TensorProto::INT64:
    return bb.getIntegerType(64);
  case onnx::TensorProto::UINT8:
    return bb.getIntegerType(8, /*isSigned=*/false);
  case onnx::TensorProto::UINT16:
    return bb.getIntegerType(16, false);
  case onnx::TensorProto::UINT32:
    return bb.getIntegerType(32, false);
  case onnx::TensorProto::UINT64:
    return bb.getIntegerType(64, false);
  default:
    return nullptr;
  }
}

Type GraphImporter::typeFromProto(const onnx::TypeProto *type, Type fallbackElement) const {
  // Sequences and optionals (of tensors, of sequences of tensors): their content's type, wrapped.
  if (type && type->has_sequence_type()) {
    const onnx::TypeProto &elem = type->sequence_type().elem_type();
    if (elem.value_case() != onnx::TypeProto::VALUE_NOT_SET && !elem.has_tensor_type())
      return nullptr; // a sequence of sequences, maps, ...: not supported
    auto inner = dyn_cast_if_present<TensorType>(typeFromProto(&elem, fallbackElement));
    return inner ? moec::onnxir::SeqType::get(&ctx, inner) : Type();
  }
  if (type && type->has_optional_type()) {
    const onnx::TypeProto &elem = type->optional_type().elem_type();
    if (!elem.has_tensor_type() && !elem.has_sequence_type())
      return nullptr;
    Type inner = typeFromProto(&elem, fallbackElement);
    return inner ? moec::onnxir::OptType::get(&ctx, inner) : Type();
  }
  if (!type || !type->has_tensor_type())
    return fallbackElement ? UnrankedTensorType::get(fallbackElement) : Type();
  const auto &tt = type->tensor_type();
  Type elem = elementType(tt.elem_type());
  if (!elem)
    elem = fallbackElement;
  if (!elem)
    return nullptr;
  if (!tt.has_shape())
    return UnrankedTensorType::get(elem);
  SmallVector<int64_t> dims;
  for (const auto &d : tt.shape().dim())
    dims.push_back(d.has_dim_value() && d.dim_value() >= 0 ? d.dim_value() : ShapedType::kDynamic);
  return RankedTensorType::get(dims, elem);
}

Type GraphImporter::outputType(unsigned i, Type fallbackElement) const {
  if (!fallbackElement && numInputs() > 0 && input(0))
    fallbackElement = moec::onnxir::innerElementType(input(0).getType());
  if (i < static_cast<unsigned>(current->output_size()) && !current->output(i).empty())
    if (Type t = typeFromProto(model->valueType(current->output(i)), fallbackElement))
      return t;
  return fallbackElement ? UnrankedTensorType::get(fallbackElement) : Type();
}

FailureOr<ElementsAttr> GraphImporter::tensorAttr(const onnx::TensorProto &t, bool allowResource,
                                                  std::string &error) {
  Type elem = elementType(t.data_type());
  if (!elem) {
    error = model->path().str() + ": tensor '" + t.name() + "': data type " +
            onnxDataTypeName(t.data_type()).str() + " is not supported";
    return failure();
  }
  TensorBytes bytes;
  if (!model->tensorBytes(t, bytes, error))
    return failure();
  SmallVector<int64_t> dims(t.dims().begin(), t.dims().end());
  auto type = RankedTensorType::get(dims, elem);
  if (elem.isInteger(1)) { // ONNX stores one byte per bool; MLIR wants bools
    SmallVector<bool> bits;
    for (char c : bytes.data)
      bits.push_back(c != 0);
    return ElementsAttr(DenseElementsAttr::get(type, bits));
  }
  if (!allowResource || bytes.data.size() <= options.inlineConstantBytes) {
    bool splat = false;
    if (!DenseElementsAttr::isValidRawBuffer(type, bytes.data, splat)) {
      error = model->path().str() + ": tensor '" + t.name() + "': data does not match its type";
      return failure();
    }
    return ElementsAttr(DenseElementsAttr::getFromRawBuffer(type, bytes.data));
  }
  // Large: a resource blob pointing at the model's memory. The deleter keeps the model alive for as long
  // as the context holds the blob. Misaligned data (rare) is copied once.
  size_t align = std::max<size_t>(1, onnxElementSize(t.data_type()));
  AsmResourceBlob blob;
  if (reinterpret_cast<uintptr_t>(bytes.data.data()) % align == 0) {
    std::shared_ptr<OnnxModel> keepAlive = model;
    blob = UnmanagedAsmResourceBlob::allocateWithAlign(
        bytes.data, align, [keepAlive](void *, size_t, size_t) mutable { keepAlive.reset(); });
  } else {
    blob = HeapAsmResourceBlob::allocateAndCopyWithAlign(bytes.data, align);
  }
  return ElementsAttr(DenseResourceElementsAttr::get(type, sanitize(t.name(), "weight"), std::move(blob)));
}

LogicalResult GraphImporter::convertAttributes(SmallVectorImpl<NamedAttribute> &out) {
  for (const auto &a : current->attribute()) {
    Attribute v;
    switch (a.type()) {
    case onnx::AttributeProto::INT:
      v = b.getI64IntegerAttr(a.i());
      break;
    case onnx::AttributeProto::FLOAT:
      v = b.getF32FloatAttr(a.f());
      break;
    case onnx::AttributeProto::STRING:
      v = b.getStringAttr(a.s());
      break;
    case onnx::AttributeProto::INTS:
      v = b.getI64ArrayAttr(SmallVector<int64_t>(a.ints().begin(), a.ints().end()));
      break;
    case onnx::AttributeProto::FLOATS:
      v = b.getF32ArrayAttr(SmallVector<float>(a.floats().begin(), a.floats().end()));
      break;
    case onnx::AttributeProto::STRINGS: {
      SmallVector<StringRef> strings(a.strings().begin(), a.strings().end());
      v = b.getStrArrayAttr(strings);
      break;
    }
    case onnx::AttributeProto::TENSOR: {
      std::string error;
      auto attr = tensorAttr(a.t(), /*allowResource=*/false, error);
      if (failed(attr))
        return fail("attribute '" + a.name() + "': " + error);
      v = *attr;
      break;
    }
    default:
      return fail("attribute '" + a.name() + "' has a kind moec does not support (" +
                  onnx::AttributeProto_AttributeType_Name(a.type()) + ")");
    }
    out.push_back(b.getNamedAttr(a.name(), v));
  }
  return success();
}

LogicalResult GraphImporter::importInitializer(const onnx::TensorProto &t, std::string &error) {
  auto attr = tensorAttr(t, /*allowResource=*/true, error);
  if (failed(attr))
    return failure();
  values[t.name()] = b.create<moec::onnxir::ConstantOp>(NameLoc::get(b.getStringAttr(t.name())), *attr);
  return success();
}

LogicalResult GraphImporter::importNode(const onnx::NodeProto &n) {
  current = &n;
  llvm::StringRef domain = n.domain() == "ai.onnx" ? "" : llvm::StringRef(n.domain());
  currentOpset = model->nodeOpset(n);
  currentLoc = moec::nodeLocation(&ctx, model->path(), n.name().empty() ? n.op_type() : n.name(), nodeIndex);
  for (int i = 0; i < n.input_size(); ++i)
    if (!n.input(i).empty() && !values.count(n.input(i)))
      return fail("input '" + n.input(i) +
                  "' is not produced by any earlier node, initializer or graph input");

  const OpTableEntry *best = nullptr;
  int oldestSince = 0;
  for (const OpTableEntry &e : opTable()) {
    if (e.domain != domain || e.op != n.op_type())
      continue;
    if (!oldestSince || e.sinceVersion < oldestSince)
      oldestSince = e.sinceVersion;
    if (e.sinceVersion <= currentOpset && (!best || e.sinceVersion > best->sinceVersion))
      best = &e;
  }
  if (!best) {
    if (oldestSince)
      return fail("supported from opset " + std::to_string(oldestSince) +
                  " only; see docs/onnx-support.md for the supported ops");
    return fail(
        "unsupported op; see docs/onnx-support.md (or `moec import --list-ops`) for the supported ops");
  }
  // Input and output counts against ONNX's schema of the op at this opset (where libonnx has one): the
  // builders read their required inputs unguarded (the structure-aware fuzzer's `Size` with no input). A
  // model of a newer opset than libonnx knows is held to the minimums only (later opsets add inputs).
  const int schemaVersion = int(std::clamp<int64_t>(currentOpset, 1, std::numeric_limits<int>::max()));
  if (const onnx::OpSchema *schema =
          onnx::OpSchemaRegistry::Schema(n.op_type(), schemaVersion, domain.str())) {
    const bool newer = model->newerThanLibonnx();
    if (n.input_size() < schema->min_input() || (!newer && n.input_size() > schema->max_input()))
      return fail("has " + std::to_string(n.input_size()) + " inputs; opset " + std::to_string(currentOpset) +
                  " takes " + std::to_string(schema->min_input()) +
                  (schema->max_input() == schema->min_input()
                       ? ""
                       : " to " + (schema->max_input() == std::numeric_limits<int>::max()
                                       ? std::string("any number")
                                       : std::to_string(schema->max_input()))));
    for (int i = 0; i < n.input_size() && i < int(schema->inputs().size()); ++i)
      if (n.input(i).empty() && schema->inputs()[i].GetOption() == onnx::OpSchema::Single)
        return fail("input " + std::to_string(i) + " ('" + schema->inputs()[i].GetName() +
                    "') is required but left empty");
    if (n.output_size() < schema->min_output() || (!newer && n.output_size() > schema->max_output()))
      return fail("has " + std::to_string(n.output_size()) + " outputs; opset " +
                  std::to_string(currentOpset) + " gives " + std::to_string(schema->min_output()) +
                  (schema->max_output() == schema->min_output() ? "" : " or more"));
  }
  // Sequences and optionals flow only into the ops that take them; every other op's builder sees tensors.
  for (int i = 0; i < n.input_size() && !best->takesValues; ++i) {
    Type t = n.input(i).empty() ? Type() : values.lookup(n.input(i)).getType();
    if (t && !isa<TensorType>(t))
      return fail("input '" + n.input(i) + "' is a " +
                  (isa<moec::onnxir::SeqType>(t) ? "sequence" : "optional") + "; this op takes tensors");
  }
  if (failed(best->build(*this)))
    return failure();
  for (int i = 0; i < n.output_size(); ++i)
    if (!n.output(i).empty() && !values.count(n.output(i)))
      return fail("output '" + n.output(i) + "' is not supported by moec's importer");
  return success();
}

LogicalResult GraphImporter::importSubgraph(llvm::StringRef name, Region &region, ArrayRef<Type> argTypes) {
  const onnx::GraphProto *g = graphAttribute(name);
  if (!g)
    return fail("needs the graph attribute '" + name + "'");
  // The subgraph's names are visible inside it only (they may shadow outer ones): restored at the end.
  llvm::StringMap<Value> outer = values;
  const onnx::NodeProto *node = current;
  const int64_t opset = currentOpset;
  const int index = nodeIndex;
  const Location where = currentLoc;
  auto restore = [&] {
    subgraphs.pop_back();
    values = std::move(outer);
    current = node, currentOpset = opset, nodeIndex = index, currentLoc = where;
  };
  OpBuilder::InsertionGuard guard(b);
  Block *block = b.createBlock(&region);
  subgraphs.push_back(name.str() + " of node '" +
                      (node->name().empty() ? "#" + std::to_string(index) : node->name()) + "' (" +
                      node->op_type() + ")");
  for (auto [i, in] : llvm::enumerate(g->input())) {
    Type t = i < argTypes.size() ? argTypes[i] : Type();
    if (!t)
      t = typeFromProto(in.has_type() ? &in.type() : nullptr, nullptr);
    if (!t || !moec::onnxir::valueKind(t)) {
      restore();
      return fail("subgraph '" + name + "': input '" + in.name() +
                  "' is not a tensor, sequence or optional of a supported type");
    }
    values[in.name()] = block->addArgument(t, where);
  }
  std::string error;
  for (const auto &t : g->initializer())
    if (failed(importInitializer(t, error))) {
      restore();
      return fail("subgraph '" + name + "': " + error);
    }
  nodeIndex = 0;
  for (const auto &n : g->node()) {
    if (failed(importNode(n))) {
      restore();
      return failure();
    }
    ++nodeIndex;
  }
  SmallVector<Value> results;
  for (const auto &out : g->output()) {
    Value v = values.lookup(out.name());
    if (!v) {
      restore();
      return fail("subgraph '" + name + "': output '" + out.name() + "' is not produced by the subgraph");
    }
    results.push_back(v);
  }
  restore();
  b.create<moec::onnxir::YieldOp>(currentLoc, results);
  return success();
}

OwningOpRef<ModuleOp> GraphImporter::run(std::string &error) {
  const onnx::GraphProto &g = model->proto().graph();
  // Owned from the start: an early error return frees everything built so far.
  OwningOpRef<ModuleOp> owned = ModuleOp::create(FileLineColLoc::get(b.getStringAttr(model->path()), 0, 0));
  ModuleOp module = owned.get();
  b.setInsertionPointToEnd(module.getBody());

  llvm::StringSet<> initializerNames;
  for (const auto &t : g.initializer())
    initializerNames.insert(t.name());
  SmallVector<Type> argTypes;
  SmallVector<const onnx::ValueInfoProto *> args;
  for (const auto &in : g.input()) {
    if (initializerNames.contains(in.name()))
      continue; // an initializer listed as input (IR < 4 style): a constant, not an argument
    Type t = typeFromProto(in.has_type() ? &in.type() : nullptr, nullptr);
    if (!t || !moec::onnxir::valueKind(t)) {
      error = model->path().str() + ": graph input '" + in.name() +
              "' is not a tensor, sequence or optional of a supported type";
      return nullptr;
    }
    argTypes.push_back(t);
    args.push_back(&in);
  }

  auto func =
      b.create<func::FuncOp>(module.getLoc(), sanitize(g.name(), "main"), b.getFunctionType(argTypes, {}));
  Block *entry = func.addEntryBlock();
  b.setInsertionPointToStart(entry);
  for (auto [i, in] : llvm::enumerate(args)) {
    values[in->name()] = entry->getArgument(i);
    SmallVector<Attribute> dimNames;
    bool anyNamed = false;
    for (const auto &d : in->type().tensor_type().shape().dim()) { // (none for sequences and optionals)
      dimNames.push_back(b.getStringAttr(d.has_dim_param() ? d.dim_param() : ""));
      anyNamed |= d.has_dim_param();
    }
    func.setArgAttr(i, "onnx.name", b.getStringAttr(in->name()));
    if (anyNamed)
      func.setArgAttr(i, "onnx.dim_params", b.getArrayAttr(dimNames));
  }

  for (const auto &t : g.initializer())
    if (failed(importInitializer(t, error)))
      return nullptr;
  for (const auto &n : g.node()) {
    if (failed(importNode(n))) {
      error = firstError;
      return nullptr;
    }
    ++nodeIndex;
  }

  SmallVector<Value> results;
  SmallVector<Type> resultTypes;
  for (const auto &out : g.output()) {
    Value v = values.lookup(out.name());
    if (!v) {
      error = model->path().str() + ": graph output '" + out.name() + "' is not produced by the graph";
      return nullptr;
    }
    results.push_back(v);
    resultTypes.push_back(v.getType());
  }
  b.create<func::ReturnOp>(func.getLoc(), results);
  func.setFunctionType(b.getFunctionType(argTypes, resultTypes));
  for (auto [i, out] : llvm::enumerate(g.output()))
    func.setResultAttr(i, "onnx.name", b.getStringAttr(out.name()));

  // Builders are expected to produce valid IR; verify so that a gap shows up as an error, not a crash later.
  std::string diag;
  {
    ScopedDiagnosticHandler handler(&ctx, [&](Diagnostic &d) {
      if (diag.empty()) {
        llvm::raw_string_ostream os(diag);
        os << d.getLocation() << ": " << d.str();
      }
      return success();
    });
    if (failed(verify(module))) {
      error = model->path().str() + ": imported IR does not verify: " + diag;
      return nullptr;
    }
  }
  return owned;
}

} // namespace

Value NodeImporter::constant(ElementsAttr value) {
  return builder().create<moec::onnxir::ConstantOp>(loc(), value);
}

Value NodeImporter::constantI64(ArrayRef<int64_t> values) {
  auto type = RankedTensorType::get({static_cast<int64_t>(values.size())}, builder().getI64Type());
  return constant(DenseElementsAttr::get(type, values));
}

const onnx::GraphProto *NodeImporter::graphAttribute(StringRef name) const {
  const onnx::AttributeProto *a = attribute(name);
  return a && a->type() == onnx::AttributeProto::GRAPH ? &a->g() : nullptr;
}

void NodeImporter::refineInputs() {
  bool unranked = false;
  for (unsigned i = 0; i < numInputs(); ++i)
    if (Value v = input(i))
      unranked |= isa<UnrankedTensorType>(v.getType());
  Block *block = builder().getInsertionBlock();
  if (!unranked || !block || !block->getParentOp())
    return;
  Operation *fn = block->getParentOp();
  if (!isa<func::FuncOp>(fn))
    fn = fn->getParentOfType<func::FuncOp>();
  if (fn)
    moec::onnxir::refineShapes(fn);
}

Operation *NodeImporter::createOp(StringRef name, ValueRange operands, ArrayRef<NamedAttribute> attrs,
                                  TypeRange resultTypes, unsigned numRegions,
                                  function_ref<LogicalResult(Operation *)> fillRegions) {
  // A required input the node leaves out (or names no value for) reaches here as a null operand: an error
  // naming it, never an op with a null operand.
  for (auto [i, v] : llvm::enumerate(operands))
    if (!v) {
      (void)fail("input " + Twine(i) + " is missing (the node has " + Twine(numInputs()) + " input" +
                 (numInputs() == 1 ? "" : "s") + ")");
      return nullptr;
    }
  // An output whose element type could not be known (a malformed type in the model) is an error too.
  for (auto [i, t] : llvm::enumerate(resultTypes))
    if (!t || !moec::onnxir::valueKind(t)) {
      (void)fail("output " + Twine(i) + " has no known tensor, sequence or optional type");
      return nullptr;
    }
  OperationState state(loc(), name);
  state.addOperands(operands);
  state.addTypes(resultTypes);
  state.addAttributes(attrs);
  for (unsigned r = 0; r < numRegions; ++r)
    state.addRegion();
  Operation *op = builder().create(state);
  if (numRegions && failed(fillRegions(op))) {
    op->erase();
    return nullptr;
  }
  // OperationState drops an inherent attribute of the wrong kind instead of failing; catch that.
  for (NamedAttribute a : attrs) {
    if (op->getAttr(a.getName()) == a.getValue())
      continue;
    std::string shown;
    llvm::raw_string_ostream os(shown);
    os << a.getValue();
    op->erase();
    (void)fail("attribute '" + a.getName().getValue() + "' has an unsupported kind or value (" + shown + ")");
    return nullptr;
  }
  std::string diag;
  {
    ScopedDiagnosticHandler handler(op->getContext(), [&](Diagnostic &d) {
      if (diag.empty())
        diag = d.str();
      return success();
    });
    if (failed(verify(op))) {
      // A value the op's constraints (ONNX's allowed values) reject: "attribute 'mode' = "bogus" is not
      // supported (one of nearest, linear, cubic)".
      llvm::StringRef rest = diag;
      const llvm::StringRef marker = "failed to satisfy constraint: ";
      size_t at = rest.find("attribute '"), why = rest.find(marker);
      if (at != llvm::StringRef::npos && why != llvm::StringRef::npos) {
        llvm::StringRef name = rest.substr(at + 11).split('\'').first;
        llvm::StringRef allowed = rest.substr(why + marker.size());
        if (size_t cut = allowed.find("attribute "); cut != llvm::StringRef::npos)
          allowed = allowed.substr(cut + 10);
        if (Attribute given = op->getAttr(name)) {
          std::string shown;
          llvm::raw_string_ostream os(shown);
          if (auto s = dyn_cast<StringAttr>(given))
            os << '"' << s.getValue() << '"';
          else if (auto i = dyn_cast<IntegerAttr>(given))
            os << i.getValue().getSExtValue();
          else
            os << given;
          diag = ("attribute '" + name + "' = " + shown + " is not supported (" + allowed + ")").str();
        }
      }
      op->erase();
      (void)fail(diag);
      return nullptr;
    }
  }
  // An axis attribute within the first operand's rank (Flatten's and OneHot's may also name the end;
  // (De)QuantizeLinear's default axis 1 means nothing for per-tensor scales, and the kernels check it).
  if (auto axis = op->getAttrOfType<IntegerAttr>("axis");
      axis && op->getNumOperands() > 0 &&
      !isa<moec::onnxir::QuantizeLinearOp, moec::onnxir::DequantizeLinearOp>(op)) {
    if (auto t = dyn_cast<RankedTensorType>(op->getOperand(0).getType())) {
      const int64_t r = t.getRank(), a = axis.getValue().getSExtValue();
      const bool end = isa<moec::onnxir::FlattenOp>(op), outer = isa<moec::onnxir::OneHotOp>(op);
      const int64_t lo = -r - (outer ? 1 : 0), hi = r - 1 + (end || outer ? 1 : 0);
      if (a < lo || a > hi) {
        op->erase();
        (void)fail("attribute 'axis' = " + Twine(a) + " is out of range for a rank-" + Twine(r) + " input (" +
                   (lo > hi ? Twine("it has no axis") : Twine(lo) + " to " + Twine(hi)) + ")");
        return nullptr;
      }
    }
  }
  // GatherND: batch_dims below both ranks, and each index tuple no longer than the dims it indexes (ONNX's
  // ranges; the runtime checks them too, for inputs of unknown rank).
  if (auto g = dyn_cast<moec::onnxir::GatherNDOp>(op)) {
    auto data = dyn_cast<RankedTensorType>(g.getData().getType());
    auto idx = dyn_cast<RankedTensorType>(g.getIndices().getType());
    const int64_t b = g.getBatchDims();
    if (data && idx) {
      const int64_t r = data.getRank(), q = idx.getRank();
      if (!moec::onnxir::gatherNDBatchDimsInRange(r, q, b)) {
        op->erase();
        (void)fail(
            "attribute 'batch_dims' = " + Twine(b) + " is out of range for data of rank " + Twine(r) +
            " and indices of rank " + Twine(q) +
            (std::min(r, q) > 0 ? " (0 to " + Twine(std::min(r, q) - 1) + ")" : Twine(" (no valid value)")));
        return nullptr;
      }
      if (const int64_t last = idx.getShape().back();
          !ShapedType::isDynamic(last) && !moec::onnxir::gatherNDIndexLengthInRange(r, b, last)) {
        op->erase();
        (void)fail("indices' last dim is " + Twine(last) + ", expected 1 to " + Twine(r - b) +
                   " (the data's rank " + Twine(r) + " less batch_dims " + Twine(b) + ")");
        return nullptr;
      }
    } else if (b < 0) {
      op->erase();
      (void)fail("attribute 'batch_dims' = " + Twine(b) + " is negative");
      return nullptr;
    }
  }
  return op;
}

void moec::frontend::registerImportDialects(DialectRegistry &registry) {
  registry.insert<func::FuncDialect, moec::onnxir::ONNXDialect, moec::moe::MoEDialect>();
}

namespace {
OwningOpRef<ModuleOp> importLoaded(std::shared_ptr<OnnxModel> model, MLIRContext &context,
                                   const ImportOptions &options, std::string &error,
                                   std::vector<std::string> *warnings, WeightsRead *read = nullptr) {
  if (!model)
    return nullptr;
  DialectRegistry registry;
  registerImportDialects(registry);
  context.appendDialectRegistry(registry);
  context.loadAllAvailableDialects();
  if (warnings)
    *warnings = model->warnings();
  // Ops moec has no builder for but ONNX defines as functions are imported as their bodies.
  auto imports = [](llvm::StringRef domain, llvm::StringRef op, int64_t opset) {
    for (const OpTableEntry &e : opTable())
      if (e.domain == domain && e.op == op && e.sinceVersion <= opset)
        return true;
    return false;
  };
  if (model->expandFunctions(imports, error) < 0)
    return nullptr;
  GraphImporter importer(model, context, options);
  OwningOpRef<ModuleOp> module = importer.run(error);
  // Results libonnx left untyped (an opset it does not know, no value_info) get moec's own inference.
  if (module)
    moec::onnxir::refineShapes(*module);
  if (read)
    *read = model->weightsRead();
  return module;
}
} // namespace

OwningOpRef<ModuleOp> moec::frontend::importOnnxModel(llvm::StringRef path, MLIRContext &context,
                                                      const ImportOptions &options, std::string &error,
                                                      std::vector<std::string> *warnings, WeightsRead *read) {
  return importLoaded(OnnxModel::load(path, options.load, error), context, options, error, warnings, read);
}

OwningOpRef<ModuleOp> moec::frontend::importOnnxModelFromMemory(llvm::StringRef bytes, llvm::StringRef name,
                                                                MLIRContext &context,
                                                                const ImportOptions &options,
                                                                std::string &error) {
  return importLoaded(OnnxModel::loadFromMemory(bytes, name, options.load, error), context, options, error,
                      nullptr);
}

std::vector<SupportedOp> moec::frontend::supportedOps() {
  std::vector<SupportedOp> out;
  for (const OpTableEntry &e : opTable())
    out.push_back({e.domain, e.op, e.sinceVersion});
  return out;
}
