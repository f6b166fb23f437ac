//===- OnnxModel.cpp - load, check and shape-infer ONNX models with libonnx -===//
//
// Compiled with exceptions: libonnx reports checker and inference failures by throwing.
//
//===----------------------------------------------------------------------===//
#include "frontend/OnnxModel.h"
#include "ir/Constants.h"
#include "ir/ShapeInference.h"

#include "onnx/checker.h"
#include "onnx/defs/parser.h"
#include "onnx/defs/schema.h"
#include "onnx/onnx_pb.h"
#include "onnx/shape_inference/implementation.h"

#include "llvm/ADT/SmallString.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"

#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <set>

using namespace moec::frontend;

namespace {
constexpr int kCheckerIrVersion = onnx::Version::IR_VERSION;

int64_t knownOpsetMax(const std::string &domain) {
  const auto &map = onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map();
  auto it = map.find(domain);
  return it == map.end() ? 0 : it->second.second;
}

std::string firstLine(const std::string &s) {
  std::string line = s.substr(0, s.find('\n'));
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r'))
    line.pop_back();
  return line;
}

/// libonnx 1.12's shape inference divides by convolution and pooling attributes without checking them
/// (a zero stride is a SIGFPE), and its ConvTranspose inference reads the weight's shape without checking it
/// is known (a null dereference), and its Conv inference indexes the input's dims by the weight's rank. Such
/// nodes are rejected with a clear error before it runs; the convolution and pooling ops moec does not import
/// (all but Conv) are rejected outright.
std::string libonnxInferenceHazard(const onnx::GraphProto &graph) {
  static const char *const kConvLike[] = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool",
                                          "AveragePool", "LpPool", "MaxUnpool", "Col2Im"};
  // Ranks known before inference (graph inputs, initializers, value_info): its convolution inference also
  // indexes the input's dims by the weight's rank without comparing them.
  // A name declared twice with different ranks (a graph output named like an input, say) is refused: libonnx
  // takes one of them and its convolution inference then indexes past the other's dims (a crash the
  // importer fuzzer found).
  std::map<std::string, int> rank;
  std::string conflict;
  auto note = [&](const std::string &name, int r) {
    auto [it, fresh] = rank.emplace(name, r);
    if (!fresh && it->second != r && conflict.empty())
      conflict = "value '" + name + "' is declared with rank " + std::to_string(it->second) + " and rank " +
                 std::to_string(r);
  };
  auto noteInfo = [&](const onnx::ValueInfoProto &v) {
    if (v.type().has_tensor_type() && v.type().tensor_type().has_shape())
      note(v.name(), v.type().tensor_type().shape().dim_size());
  };
  for (const auto &v : graph.input())
    noteInfo(v);
  for (const auto &v : graph.value_info())
    noteInfo(v);
  for (const auto &v : graph.output())
    noteInfo(v);
  for (const auto &t : graph.initializer())
    note(t.name(), t.dims_size());
  if (!conflict.empty())
    return conflict;
  for (int index = 0; index < graph.node_size(); ++index) {
    const auto &node = graph.node(index);
    const std::string label = "node '" + (node.name().empty() ? "#" + std::to_string(index) : node.name()) + "' (" +
                              node.op_type() + ")";
    bool convLike = false;
    for (const char *op : kConvLike)
      convLike |= (node.domain().empty() || node.domain() == "ai.onnx") && node.op_type() == op;
    // Of these, moec imports Conv, ConvTranspose, ConvInteger, QLinearConv, MaxPool, AveragePool and
    // MaxUnpool: the others are rejected before libonnx's inference can run on them.
    if (convLike && node.op_type() != "Conv" && node.op_type() != "ConvTranspose" &&
        node.op_type() != "ConvInteger" && node.op_type() != "QLinearConv" && node.op_type() != "MaxPool" &&
        node.op_type() != "AveragePool" && node.op_type() != "MaxUnpool")
      return label + ": op not supported by moec";
    int weight = node.op_type() == "QLinearConv" ? 3 : 1;
    if (node.op_type() == "ConvTranspose" && (node.input_size() < 2 || !rank.count(node.input(1))))
      return label + ": its weight must be an initializer or a graph input of known shape";
    if (convLike && node.op_type().find("Conv") != std::string::npos && node.input_size() > weight) {
      auto x = rank.find(node.input(0)), w = rank.find(node.input(weight));
      if (x != rank.end() && w != rank.end() && x->second != w->second)
        return label + ": input of rank " + std::to_string(x->second) + " but weight of rank " +
               std::to_string(w->second) + " (they must be equal)";
    }
    for (const auto &attr : node.attribute()) {
      if (attr.type() == onnx::AttributeProto::GRAPH) {
        std::string why = libonnxInferenceHazard(attr.g());
        if (!why.empty())
          return why;
      }
      if (!convLike)
        continue;
      const std::string &name = attr.name();
      bool positive = name == "strides" || name == "dilations" || name == "kernel_shape" || name == "group";
      bool nonNegative = name == "pads" || name == "output_padding";
      if (!positive && !nonNegative)
        continue;
      std::vector<int64_t> values(attr.ints().begin(), attr.ints().end());
      if (attr.type() == onnx::AttributeProto::INT)
        values.push_back(attr.i());
      for (int64_t v : values)
        if (positive ? v <= 0 : v < 0)
          return "node '" + (node.name().empty() ? "#" + std::to_string(index) : node.name()) + "' (" +
                 node.op_type() + "): attribute '" + name + "' must be " +
                 (positive ? "positive" : "non-negative") + ", got " + std::to_string(v);
    }
  }
  return "";
}
/// libonnx 1.12's inference of some ops indexes their input's dims without checking the rank, a null
/// dereference the importer fuzzer found: STFT's signal of rank 0 or 1; LayerNormalization's input when its
/// axis is out of range (a rank-0 input), declared or inferred; GatherND whose batch_dims is not below both
/// inputs' ranks (found by the structure-aware mutator). And it builds the result of ConstantOfShape,
/// Reshape, Expand and Unsqueeze with as many dims as their shape (axes) operand is long: one declared
/// [INT64_MAX] allocated dims until the fuzzer's 4 GB limit; and Scan's sizes vectors by its num_scan_inputs
/// (the importer refuses one past its input count, after inference). Those nodes
/// are hidden from it (renamed to an op it has no schema for, which it skips) and restored after; their
/// output types are then the model's or moec's own. A LayerNormalization whose input has a declared rank
/// (graph input, value_info, initializer) its axis fits stays visible: that is every exported model, and
/// keeps libonnx's inference of what follows; so does a shape operand whose length is not known to exceed
/// kMaxInferredRank (declared, or through Identity / Cast / Concat of declared ones).
void hideFromLibonnxInference(onnx::GraphProto &g, bool hide, std::map<std::string, int> ranks = {},
                              std::map<std::string, int64_t> lengths = {}) {
  static const std::string kSuffix = " (hidden from libonnx's shape inference)";
  auto declare = [&](const onnx::ValueInfoProto &v) {
    if (!v.type().has_tensor_type() || !v.type().tensor_type().has_shape())
      return;
    const auto &shape = v.type().tensor_type().shape();
    ranks[v.name()] = shape.dim_size();
    if (shape.dim_size() == 1 && shape.dim(0).has_dim_value())
      lengths[v.name()] = shape.dim(0).dim_value();
  };
  if (hide) {
    for (const auto &v : g.input())
      declare(v);
    for (const auto &v : g.value_info())
      declare(v);
    for (const auto &v : g.output())
      declare(v);
    for (const auto &t : g.initializer()) {
      ranks[t.name()] = t.dims_size();
      if (t.dims_size() == 1)
        lengths[t.name()] = t.dims(0);
    }
  }
  auto rankOf = [&](const onnx::NodeProto &n, int i) {
    auto it = i < n.input_size() ? ranks.find(n.input(i)) : ranks.end();
    return it == ranks.end() ? -1 : it->second;
  };
  // The known length of a node's 1-D input i, else -1 (a declared dim is >= 0 here: forgetNegativeDims).
  auto lengthOf = [&](const onnx::NodeProto &n, int i) -> int64_t {
    auto it = i < n.input_size() ? lengths.find(n.input(i)) : lengths.end();
    return it == lengths.end() ? -1 : it->second;
  };
  // Lengths libonnx would pass on: Identity and Cast keep their input's, Concat (of 1-D values) adds them.
  auto propagate = [&](const onnx::NodeProto &n) {
    if (n.output_size() < 1)
      return;
    int64_t length = -1;
    if (n.op_type() == "Identity" || n.op_type() == "Cast")
      length = lengthOf(n, 0);
    else if (n.op_type() == "Concat" && n.input_size() > 0) {
      length = 0;
      for (int i = 0; i < n.input_size() && length >= 0; ++i) {
        const int64_t l = lengthOf(n, i);
        length = l < 0 ? -1 : std::min<int64_t>(length + std::min<int64_t>(l, INT64_MAX / 2), INT64_MAX / 2);
      }
    }
    if (length >= 0)
      lengths[n.output(0)] = length;
  };
  auto intAttr = [](const onnx::NodeProto &n, const char *name, int64_t dflt) {
    for (const auto &a : n.attribute())
      if (a.name() == name)
        return a.i();
    return dflt;
  };
  auto unsafe = [&](const onnx::NodeProto &n) {
    if (n.op_type() == "STFT")
      return true;
    if (n.op_type() == "GatherND") { // batch_dims past either input's rank reads past its dims
      const int r = rankOf(n, 0), q = rankOf(n, 1);
      const int64_t b = intAttr(n, "batch_dims", 0);
      return !(r >= 1 && q >= 1 && moec::onnxir::gatherNDBatchDimsInRange(r, q, b));
    }
    if (n.op_type() == "Scan") { // its inference sizes vectors by num_scan_inputs (INT32_MAX: 16 GB)
      const int64_t scans = intAttr(n, "num_scan_inputs", 0);
      return scans < 1 || scans > n.input_size();
    }
    // ops whose result has as many dims as this input is long
    static const std::map<std::string, int> kShapeOperand = {
        {"ConstantOfShape", 0}, {"Reshape", 1}, {"Expand", 1}, {"Unsqueeze", 1}};
    if (auto it = kShapeOperand.find(n.op_type()); it != kShapeOperand.end())
      return lengthOf(n, it->second) > moec::onnxir::kMaxInferredRank;
    if (n.op_type() != "LayerNormalization")
      return false;
    const int rank = rankOf(n, 0);
    const int64_t axis = intAttr(n, "axis", -1);
    return !(rank >= 1 && axis >= -rank && axis < rank);
  };
  for (auto &n : *g.mutable_node()) {
    if (n.domain().empty() || n.domain() == "ai.onnx") {
      if (hide)
        propagate(n);
      if (hide && unsafe(n))
        n.set_op_type(n.op_type() + kSuffix);
      else if (!hide && n.op_type().size() > kSuffix.size() &&
               n.op_type().compare(n.op_type().size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0)
        n.set_op_type(n.op_type().substr(0, n.op_type().size() - kSuffix.size()));
    }
    for (auto &a : *n.mutable_attribute()) {
      if (a.has_g())
        hideFromLibonnxInference(*a.mutable_g(), hide, ranks, lengths);
      for (auto &sub : *a.mutable_graphs())
        hideFromLibonnxInference(sub, hide, ranks, lengths);
    }
  }
}

/// Clears every negative dim_value of the value types declared in `g` and its subgraphs; returns how many.
int64_t forgetNegativeDims(onnx::GraphProto &g) {
  int64_t count = 0;
  auto fix = [&](onnx::ValueInfoProto &v) {
    if (!v.has_type() || !v.type().has_tensor_type() || !v.type().tensor_type().has_shape())
      return;
    for (auto &d : *v.mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim())
      if (d.has_dim_value() && d.dim_value() < 0) {
        d.clear_dim_value();
        ++count;
      }
  };
  for (auto &v : *g.mutable_input())
    fix(v);
  for (auto &v : *g.mutable_output())
    fix(v);
  for (auto &v : *g.mutable_value_info())
    fix(v);
  for (auto &n : *g.mutable_node())
    for (auto &a : *n.mutable_attribute()) {
      if (a.has_g())
        count += forgetNegativeDims(*a.mutable_g());
      for (auto &sub : *a.mutable_graphs())
        count += forgetNegativeDims(sub);
    }
  return count;
}

/// Calls `fn` on `g` and, recursively, on every subgraph of its nodes (If branches, Loop / Scan bodies).
void forEachGraph(const onnx::GraphProto &g, const std::function<void(const onnx::GraphProto &)> &fn) {
  fn(g);
  for (const auto &n : g.node())
    for (const auto &a : n.attribute()) {
      if (a.has_g())
        forEachGraph(a.g(), fn);
      for (const auto &sub : a.graphs())
        forEachGraph(sub, fn);
    }
}
void forEachGraph(onnx::GraphProto &g, const std::function<void(onnx::GraphProto &)> &fn) {
  fn(g);
  for (auto &n : *g.mutable_node())
    for (auto &a : *n.mutable_attribute()) {
      if (a.has_g())
        forEachGraph(*a.mutable_g(), fn);
      for (auto &sub : *a.mutable_graphs())
        forEachGraph(sub, fn);
    }
}

/// libonnx 1.12's data propagation of Shape dereferences its input's type unchecked: a Shape of a value
/// inference left untyped (the result of an op it has no schema for, of one hidden above, or of one whose
/// inference failed, like a Reshape to [0, 0, -1] of a rank-1 input: the importer fuzzer's find) was a null
/// dereference. Each Shape input with no type declared anywhere in the model (graph inputs, value_info,
/// outputs, initializers, subgraphs' too) gets a placeholder value_info (a tensor of undefined element type)
/// in the graph of that Shape, which inference fills in where it can; returns their names.
std::set<std::string> addShapePlaceholders(onnx::ModelProto &model) {
  std::set<std::string> declared, added;
  forEachGraph(model.graph(), [&](const onnx::GraphProto &g) {
    for (const auto *infos : {&g.input(), &g.value_info(), &g.output()})
      for (const auto &v : *infos)
        declared.insert(v.name());
    for (const auto &t : g.initializer())
      declared.insert(t.name());
  });
  forEachGraph(*model.mutable_graph(), [&](onnx::GraphProto &g) {
    for (const auto &n : g.node())
      if ((n.domain().empty() || n.domain() == "ai.onnx") && n.op_type() == "Shape" && n.input_size() > 0 &&
          !n.input(0).empty() && declared.insert(n.input(0)).second) {
        auto *v = g.add_value_info();
        v->set_name(n.input(0));
        v->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::UNDEFINED);
        added.insert(n.input(0));
      }
  });
  return added;
}
/// Takes the placeholders named in `added` that inference left empty out again.
void removeShapePlaceholders(onnx::ModelProto &model, const std::set<std::string> &added) {
  forEachGraph(*model.mutable_graph(), [&](onnx::GraphProto &g) {
    auto *infos = g.mutable_value_info();
    for (int i = infos->size() - 1; i >= 0; --i) {
      const auto &t = infos->Get(i).type();
      if (t.has_tensor_type() && t.tensor_type().elem_type() == onnx::TensorProto::UNDEFINED &&
          !t.tensor_type().has_shape() && added.count(infos->Get(i).name()))
        infos->DeleteSubrange(i, 1);
    }
  });
}

/// libonnx's shape inference over `model`, with the nodes it cannot infer safely hidden from it and every
/// Shape's input typed (addShapePlaceholders).
void inferShapes(onnx::ModelProto &model) {
  hideFromLibonnxInference(*model.mutable_graph(), true);
  const std::set<std::string> placeholders = addShapePlaceholders(model);
  struct Restore {
    onnx::ModelProto &m;
    const std::set<std::string> &placeholders;
    ~Restore() {
      removeShapePlaceholders(m, placeholders);
      hideFromLibonnxInference(*m.mutable_graph(), false);
    }
  } restore{model, placeholders};
  onnx::ShapeInferenceOptions inferOptions(/*check_type=*/false, /*strict_mode=*/0, /*data_prop=*/true);
  onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), inferOptions);
}

} // namespace

size_t moec::frontend::onnxElementSize(int dataType) {
  switch (dataType) {
  case onnx::TensorProto::FLOAT:
  case onnx::TensorProto::INT32:
  case onnx::TensorProto::UINT32:
    return 4;
  case onnx::TensorProto::UINT8:
  case onnx::TensorProto::INT8:
  case onnx::TensorProto::BOOL:
    return 1;
  case onnx::TensorProto::UINT16:
  case onnx::TensorProto::INT16:
  case onnx::TensorProto::FLOAT16:
  case onnx::TensorProto::BFLOAT16:
    return 2;
  case onnx::TensorProto::INT64:
  case onnx::TensorProto::UINT64:
  case onnx::TensorProto::DOUBLE:
    return 8;
  default:
    return 0;
  }
}

llvm::StringRef moec::frontend::onnxDataTypeName(int dataType) {
  if (onnx::TensorProto_DataType_IsValid(dataType))
    return onnx::TensorProto_DataType_Name(static_cast<onnx::TensorProto_DataType>(dataType));
  return "UNKNOWN";
}

OnnxModel::OnnxModel() : model(std::make_unique<onnx::ModelProto>()) {}
OnnxModel::~OnnxModel() {
  for (const auto &f : externalFiles)
    if (f.second->getBufferKind() == llvm::MemoryBuffer::MemoryBuffer_MMap)
      moec::forgetFileMapping(llvm::ArrayRef<char>(f.second->getBufferStart(), f.second->getBufferSize()));
}

WeightsRead OnnxModel::weightsRead() const {
  WeightsRead r = read;
  r.externalFiles = externalFiles.size();
  return r;
}

std::unique_ptr<OnnxModel> OnnxModel::load(llvm::StringRef path, const LoadOptions &options,
                                           std::string &error) {
  std::unique_ptr<OnnxModel> m(new OnnxModel());
  m->modelPath = path.str();
  m->modelDir = llvm::sys::path::parent_path(path).str();
  auto fail = [&](const std::string &what) {
    error = path.str() + ": " + what;
    return nullptr;
  };

  auto buffer = llvm::MemoryBuffer::getFile(path, /*IsText=*/false, /*RequiresNullTerminator=*/false);
  if (!buffer)
    return fail("cannot read model file: " + buffer.getError().message());
  bool text = path.ends_with(".onnxtxt") || path.ends_with(".onnx.txt");
  // The proto keeps copies of what it needs, so the mapping of the model file ends with this call.
  return parse(std::move(m), (*buffer)->getBuffer(), text, options, error);
}

std::unique_ptr<OnnxModel> OnnxModel::loadFromMemory(llvm::StringRef bytes, llvm::StringRef name,
                                                     const LoadOptions &options, std::string &error) {
  std::unique_ptr<OnnxModel> m(new OnnxModel());
  m->modelPath = name.str();
  return parse(std::move(m), bytes, /*text=*/false, options, error);
}

std::unique_ptr<OnnxModel> OnnxModel::parse(std::unique_ptr<OnnxModel> m, llvm::StringRef bytes, bool text,
                                            const LoadOptions &options, std::string &error) {
  const std::string path = m->modelPath;
  auto fail = [&](const std::string &what) {
    error = path + ": " + what;
    return nullptr;
  };
  if (bytes.empty())
    return fail("model file is empty");

  try {
    if (text) {
      std::string source = bytes.str();
      auto status = onnx::OnnxParser::Parse(*m->model, source.c_str());
      if (!status.IsOK())
        return fail("cannot parse ONNX text: " + firstLine(status.ErrorMessage()));
    } else {
      if (bytes.size() > static_cast<size_t>(INT32_MAX))
        return fail("model file is over 2 GiB; store the weights as external data (ONNX's limit for one "
                    "protobuf)");
      if (!m->model->ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
        return fail("not a valid ONNX model: protobuf parsing failed (truncated or not an ONNX file?)");
    }
  } catch (const std::exception &e) {
    return fail(std::string("cannot parse model: ") + firstLine(e.what()));
  }

  const onnx::ModelProto &proto = *m->model;
  if (!proto.has_graph())
    return fail("not a valid ONNX model: it has no graph (truncated or not an ONNX file?)");
  if (proto.ir_version() <= 0)
    return fail("not a valid ONNX model: ir_version is missing");
  if (proto.opset_import_size() == 0)
    return fail("not a valid ONNX model: it imports no opset");

  // ONNX Runtime registers some of its contrib ops in the default domain, where libonnx's checker and shape
  // inference know no such op: they are moved to com.microsoft (the domain moec imports them from).
  {
    static const char *const kOrtDefaultDomainOps[] = {"SimplifiedLayerNormalization"};
    bool moved = false;
    for (auto &node : *m->model->mutable_graph()->mutable_node())
      for (const char *op : kOrtDefaultDomainOps)
        if ((node.domain().empty() || node.domain() == "ai.onnx") && node.op_type() == op) {
          node.set_domain("com.microsoft");
          moved = true;
        }
    if (moved && m->opsetVersion("com.microsoft") == 0) {
      auto *imp = m->model->add_opset_import();
      imp->set_domain("com.microsoft");
      imp->set_version(1);
    }
  }
  int64_t defaultOpset = m->opsetVersion("");
  int64_t knownMax = knownOpsetMax("");
  bool newerOpset = defaultOpset > knownMax;
  if (newerOpset)
    m->notes.push_back(
        "model uses opset " + std::to_string(defaultOpset) + " but libonnx knows ops up to opset " +
        std::to_string(knownMax) +
        ": its checker and shape inference were skipped (moec's importer still checks each node)");
  else if (proto.ir_version() > kCheckerIrVersion)
    m->notes.push_back("model IR version " + std::to_string(proto.ir_version()) +
                       " is newer than libonnx's (" + std::to_string(kCheckerIrVersion) +
                       "); checked as IR version " + std::to_string(kCheckerIrVersion));

  try {
    if (options.runChecker && !newerOpset) {
      onnx::checker::CheckerContext ctx;
      ctx.set_ir_version(static_cast<int>(std::min<int64_t>(proto.ir_version(), kCheckerIrVersion)));
      std::unordered_map<std::string, int> opsets;
      for (const auto &imp : proto.opset_import())
        opsets[imp.domain()] = static_cast<int>(imp.version());
      ctx.set_opset_imports(opsets);
      ctx.set_model_dir(m->modelDir.empty() ? "." : m->modelDir);
      onnx::checker::LexicalScopeContext lex;
      onnx::checker::check_graph(proto.graph(), ctx, lex);
    }
  } catch (const std::exception &e) {
    return fail("ONNX checker: " + firstLine(e.what()));
  }
  // A declared dim below zero is not ONNX (dims are >= 0 or named); libonnx's inference indexes with it (a
  // SEGV the importer fuzzer found through GatherND). Such dims are read as unknown, with a note.
  if (int64_t negative = forgetNegativeDims(*m->model->mutable_graph()))
    m->notes.push_back(std::to_string(negative) + " declared dim" + (negative == 1 ? " is" : "s are") +
                       " negative (not valid ONNX); read as unknown");
  if (options.runShapeInference && !newerOpset) {
    std::string why = libonnxInferenceHazard(proto.graph());
    if (!why.empty())
      return fail(why);
  }
  try {
    if (options.runShapeInference && !newerOpset)
      inferShapes(*m->model);
  } catch (const std::exception &e) {
    return fail("ONNX shape inference: " + firstLine(e.what()));
  }

  m->loadOptions = options;
  m->inferenceSkipped = newerOpset;
  m->collectTypes();
  return m;
}

void OnnxModel::collectTypes() {
  types.clear();
  // The graph's and, recursively, its subgraphs' (If branches, Loop / Scan bodies) declared and inferred
  // types; a subgraph's names do not override the enclosing graph's.
  forEachGraph(model->graph(), [&](const onnx::GraphProto &g) {
    for (const auto *list : {&g.output(), &g.input(), &g.value_info()})
      for (const auto &vi : *list)
        if (vi.has_type())
          types.try_emplace(vi.name(), &vi.type());
  });
}

int64_t OnnxModel::nodeOpset(const onnx::NodeProto &node) const {
  auto it = bodyOpsets.find(node.name());
  if (!node.name().empty() && it != bodyOpsets.end())
    return it->second;
  return opsetVersion(node.domain());
}

llvm::StringRef OnnxModel::expandedFrom(const onnx::NodeProto &node) const {
  auto it = bodyOf.find(node.name());
  return node.name().empty() || it == bodyOf.end() ? llvm::StringRef() : llvm::StringRef(it->second);
}

namespace {
/// The body of `schema`'s function for `node`: a fixed one, or one built from the node's attributes and its
/// inputs' types (empty TypeProtos where unknown: such builders then decline).
bool functionBody(const onnx::OpSchema &schema, const onnx::NodeProto &node,
                  const llvm::StringMap<const onnx::TypeProto *> &types,
                  const llvm::StringMap<onnx::TypeProto> &initializerTypes, onnx::FunctionProto &body) {
  if (schema.HasFunction() && schema.GetFunction()) {
    body = *schema.GetFunction();
    return true;
  }
  if (!schema.HasContextDependentFunction())
    return false;
  std::vector<onnx::TypeProto> inputTypes;
  for (const std::string &in : node.input()) {
    auto t = types.find(in);
    auto init = initializerTypes.find(in);
    inputTypes.push_back(t != types.end()                 ? *t->second
                         : init != initializerTypes.end() ? init->second
                                                          : onnx::TypeProto());
  }
  onnx::FunctionBodyBuildContextImpl ctx(node, inputTypes);
  return schema.BuildContextDependentFunction(ctx, body);
}
} // namespace

int OnnxModel::expandFunctions(const ImportsOp &imports, std::string &error) {
  llvm::StringMap<onnx::TypeProto> initializerTypes;
  // The graph's initializers and its subgraphs' (If branches, Loop / Scan bodies).
  forEachGraph(model->graph(), [&](const onnx::GraphProto &g) {
    for (const auto &t : g.initializer()) {
      onnx::TypeProto type;
      type.mutable_tensor_type()->set_elem_type(t.data_type());
      auto *shape = type.mutable_tensor_type()->mutable_shape();
      for (int64_t d : t.dims())
        shape->add_dim()->set_dim_value(d);
      initializerTypes[t.name()] = type;
    }
  });
  int expanded = 0;
  // One level of function nodes in `g` and, first, in its subgraphs; false on an error.
  std::function<bool(onnx::GraphProto &)> expandIn = [&](onnx::GraphProto &g) -> bool {
    for (auto &n : *g.mutable_node())
      for (auto &a : *n.mutable_attribute()) {
        if (a.has_g() && !expandIn(*a.mutable_g()))
          return false;
        for (auto &sub : *a.mutable_graphs())
          if (!expandIn(sub))
            return false;
      }
    google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
    const int before = expanded;
    for (int index = 0; index < g.node_size(); ++index) {
      const onnx::NodeProto &node = g.node(index);
      const std::string domain = node.domain() == "ai.onnx" ? "" : node.domain();
      const int64_t opset = nodeOpset(node);
      const onnx::OpSchema *schema =
          imports(domain, node.op_type(), opset)
              ? nullptr
              : onnx::OpSchemaRegistry::Schema(node.op_type(), static_cast<int>(opset), domain);
      onnx::FunctionProto body;
      bool haveBody = false;
      try {
        // SequenceMap's context-dependent body builder dereferences its inputs' sequence types unchecked (a
        // crash the importer fuzzer found); moec imports SequenceMap itself, as a region op.
        haveBody = schema && node.op_type() != "SequenceMap" &&
                   functionBody(*schema, node, types, initializerTypes, body);
      } catch (const std::exception &e) {
        error = modelPath + ": node '" + (node.name().empty() ? "#" + std::to_string(index) : node.name()) +
                "' (" + node.op_type() + "): cannot build its function body: " + firstLine(e.what());
        return false;
      }
      if (!haveBody) {
        *nodes.Add() = node;
        continue;
      }
      // The body's own opsets, where they differ from the model's, stay with its nodes.
      std::map<std::string, int64_t> bodyOpset;
      for (const auto &imp : body.opset_import())
        bodyOpset[imp.domain() == "ai.onnx" ? "" : imp.domain()] = imp.version();
      const std::string prefix =
          (node.name().empty() ? node.op_type() + "#" + std::to_string(expanded) : node.name()) + "/";
      std::map<std::string, std::string> rename;
      for (int i = 0; i < body.input_size(); ++i)
        rename[body.input(i)] = i < node.input_size() ? node.input(i) : std::string();
      for (int i = 0; i < body.output_size(); ++i)
        rename[body.output(i)] = i < node.output_size() ? node.output(i) : prefix + body.output(i);
      auto mapped = [&](const std::string &name) {
        if (name.empty())
          return name;
        auto it = rename.find(name);
        return it != rename.end() ? it->second : prefix + name;
      };
      for (int k = 0; k < body.node_size(); ++k) {
        const onnx::NodeProto &b = body.node(k);
        onnx::NodeProto *out = nodes.Add();
        out->set_op_type(b.op_type());
        out->set_domain(b.domain());
        out->set_name(prefix + (b.name().empty() ? b.op_type() + std::to_string(k) : b.name()));
        for (const std::string &in : b.input())
          out->add_input(mapped(in));
        for (const std::string &o : b.output())
          out->add_output(mapped(o));
        for (const auto &attr : b.attribute()) {
          if (!attr.has_ref_attr_name()) {
            *out->add_attribute() = attr;
            continue;
          }
          const onnx::AttributeProto *given = nullptr;
          for (const auto &a : node.attribute())
            if (a.name() == attr.ref_attr_name())
              given = &a;
          auto dflt = schema->attributes().find(attr.ref_attr_name());
          if (!given && dflt != schema->attributes().end() &&
              dflt->second.default_value.type() != onnx::AttributeProto::UNDEFINED)
            given = &dflt->second.default_value;
          if (!given)
            continue; // an optional attribute the node leaves out
          onnx::AttributeProto *copy = out->add_attribute();
          *copy = *given;
          copy->set_name(attr.name());
        }
        bodyOf[out->name()] = node.op_type();
        const std::string d = b.domain() == "ai.onnx" ? "" : b.domain();
        auto own = bodyOpset.find(d);
        if (own != bodyOpset.end() && own->second != opsetVersion(d))
          bodyOpsets[out->name()] = own->second;
      }
      ++expanded;
    }
    if (expanded != before)
      g.mutable_node()->Swap(&nodes);
    return true;
  };
  // Bodies may use functions themselves (SoftmaxCrossEntropyLoss's uses NegativeLogLikelihoodLoss), whose
  // context-dependent bodies need their inputs' types: one level per round, shape inference in between.
  for (int round = 0; round < 8; ++round) {
    const int before = expanded;
    if (!expandIn(*model->mutable_graph()))
      return -1;
    if (expanded == before)
      break;
    if (loadOptions.runShapeInference && !inferenceSkipped) {
      try {
        inferShapes(*model);
      } catch (const std::exception &e) {
        error = modelPath + ": ONNX shape inference after expanding functions: " + firstLine(e.what());
        return -1;
      }
    }
    collectTypes();
  }
  return expanded;
}

int64_t OnnxModel::opsetVersion(llvm::StringRef domain) const {
  for (const auto &imp : model->opset_import()) {
    llvm::StringRef d = imp.domain();
    bool isDefault = d.empty() || d == "ai.onnx";
    if ((domain.empty() || domain == "ai.onnx") ? isDefault : d == domain)
      return imp.version();
  }
  return 0;
}

const onnx::TypeProto *OnnxModel::valueType(llvm::StringRef name) const {
  auto it = types.find(name);
  return it == types.end() ? nullptr : it->second;
}

bool OnnxModel::tensorBytes(const onnx::TensorProto &t, TensorBytes &out, std::string &error) {
  const std::string name = t.name().empty() ? std::string("<unnamed>") : t.name();
  auto fail = [&](const std::string &what) {
    error = modelPath + ": tensor '" + name + "': " + what;
    return false;
  };
  size_t elemSize = onnxElementSize(t.data_type());
  if (elemSize == 0)
    return fail("data type " + onnxDataTypeName(t.data_type()).str() + " is not supported");
  uint64_t count = 1;
  for (int64_t d : t.dims()) {
    if (d < 0)
      return fail("negative dimension " + std::to_string(d));
    if (d != 0 && count > UINT64_MAX / static_cast<uint64_t>(d))
      return fail("element count overflows");
    count *= static_cast<uint64_t>(d);
  }
  if (count > UINT64_MAX / elemSize)
    return fail("byte size overflows");
  uint64_t expected = count * elemSize;

  if (t.data_location() == onnx::TensorProto::EXTERNAL) {
    std::string location;
    uint64_t offset = 0, length = expected;
    bool haveLength = false;
    for (const auto &kv : t.external_data()) {
      const std::string &v = kv.value();
      if (kv.key() == "location") {
        location = v;
      } else if (kv.key() == "offset" || kv.key() == "length") {
        char *end = nullptr;
        unsigned long long n = std::strtoull(v.c_str(), &end, 10);
        if (v.empty() || *end != '\0')
          return fail("external data " + kv.key() + " '" + v + "' is not a number");
        (kv.key() == "offset" ? offset : length) = n;
        haveLength |= kv.key() == "length";
      }
    }
    if (location.empty())
      return fail("external data has no 'location'");
    if (llvm::sys::path::is_absolute(location) || llvm::StringRef(location).contains(".."))
      return fail("external data location '" + location + "' must be a path inside the model's folder");
    if (haveLength && length != expected)
      return fail("external data length " + std::to_string(length) + " does not match its shape and type (" +
                  std::to_string(expected) + " bytes)");
    llvm::SmallString<256> file(modelDir);
    llvm::sys::path::append(file, location);
    auto it = externalFiles.find(file);
    if (it == externalFiles.end()) {
      auto mapped = llvm::MemoryBuffer::getFile(file, /*IsText=*/false, /*RequiresNullTerminator=*/false);
      if (!mapped)
        return fail("cannot read external data file '" + file.str().str() +
                    "': " + mapped.getError().message());
      it = externalFiles.try_emplace(file, std::move(*mapped)).first;
      // Codegen drops a weight's pages from memory once it is packed (they stay in the file).
      if (it->second->getBufferKind() == llvm::MemoryBuffer::MemoryBuffer_MMap)
        moec::noteFileMapping(
            llvm::ArrayRef<char>(it->second->getBufferStart(), it->second->getBufferSize()));
    }
    llvm::StringRef whole = it->second->getBuffer();
    if (offset > whole.size() || expected > whole.size() - offset)
      return fail("external data [" + std::to_string(offset) + ", " + std::to_string(offset + expected) +
                  ") lies outside '" + file.str().str() + "' (" + std::to_string(whole.size()) +
                  " bytes; truncated?)");
    out.data = llvm::ArrayRef<char>(whole.data() + offset, expected);
    out.external = true;
    if (counted.insert(&t).second)
      ++read.tensors, read.externalBytes += expected;
    return true;
  }

  out.external = false;
  if (counted.insert(&t).second)
    ++read.tensors, read.inlineBytes += expected;
  if (t.has_raw_data()) {
    if (t.raw_data().size() != expected)
      return fail("raw_data has " + std::to_string(t.raw_data().size()) + " bytes, its shape and type need " +
                  std::to_string(expected));
    out.data = llvm::ArrayRef<char>(t.raw_data().data(), expected);
    return true;
  }

  // Typed fields. Those stored at their own width are referenced; narrower types packed into int32_data
  // are converted once and kept alive with the model.
  auto reference = [&](const void *p, size_t n, size_t width) {
    if (n * width != expected)
      return fail("holds " + std::to_string(n) + " values, its shape needs " + std::to_string(count));
    out.data = llvm::ArrayRef<char>(static_cast<const char *>(p), expected);
    return true;
  };
  switch (t.data_type()) {
  case onnx::TensorProto::FLOAT:
    return reference(t.float_data().data(), t.float_data_size(), 4);
  case onnx::TensorProto::DOUBLE:
    return reference(t.double_data().data(), t.double_data_size(), 8);
  case onnx::TensorProto::INT64:
    return reference(t.int64_data().data(), t.int64_data_size(), 8);
  case onnx::TensorProto::UINT64:
    return reference(t.uint64_data().data(), t.uint64_data_size(), 8);
  case onnx::TensorProto::INT32:
    return reference(t.int32_data().data(), t.int32_data_size(), 4);
  case onnx::TensorProto::UINT32: {
    if (static_cast<uint64_t>(t.uint64_data_size()) != count)
      return fail("holds " + std::to_string(t.uint64_data_size()) + " values, its shape needs " +
                  std::to_string(count));
    auto buf = std::make_unique<std::vector<char>>(expected);
    for (uint64_t i = 0; i < count; ++i) {
      uint32_t v = static_cast<uint32_t>(t.uint64_data(static_cast<int>(i)));
      std::memcpy(buf->data() + i * 4, &v, 4);
    }
    out.data = llvm::ArrayRef<char>(buf->data(), expected);
    converted.push_back(std::move(buf));
    return true;
  }
  default: { // INT8, UINT8, BOOL, INT16, UINT16, FLOAT16, BFLOAT16: one value per int32_data entry
    if (static_cast<uint64_t>(t.int32_data_size()) != count)
      return fail("holds " + std::to_string(t.int32_data_size()) + " values, its shape needs " +
                  std::to_string(count));
    auto buf = std::make_unique<std::vector<char>>(expected);
    for (uint64_t i = 0; i < count; ++i) {
      uint32_t v = static_cast<uint32_t>(t.int32_data(static_cast<int>(i)));
      std::memcpy(buf->data() + i * elemSize, &v, elemSize); // little-endian: low bytes first
    }
    out.data = llvm::ArrayRef<char>(buf->data(), expected);
    converted.push_back(std::move(buf));
    return true;
  }
  }
}
