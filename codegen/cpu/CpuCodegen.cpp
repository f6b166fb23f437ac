//===- CpuCodegen.cpp - fused graph -> CPU artifact --------------------------===//
#include "codegen/cpu/CpuCodegen.h"
#include "codegen/Artifact.h"
#include "codegen/KernelCache.h"
#include "codegen/WeightPacking.h"
#include "codegen/hip/GpuCodegen.h"
#include "ir/Constants.h"
#include "ir/Locations.h"
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "kernels/cpu/moert_kernel_abi.h"
#include "passes/MatchUtils.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Matchers.h"
#include "llvm/ADT/APFloat.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/ScopeExit.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/TargetParser/Host.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>

using namespace mlir;
using namespace moec;
using namespace moec::codegen;
namespace ox = moec::onnxir;
namespace moe = moec::moe;
namespace pb = moert::proto;

namespace {

const std::pair<const char *, const char *> kKernelSources[] = {
#include "codegen/cpu/KernelSources.inc"
};

// Kernel weight slots (kernels/cpu/moert_kernel_abi.h).
static_assert(int(moe::Storage::fp32) == MOERT_STORAGE_F32 && int(moe::Storage::bf16) == MOERT_STORAGE_BF16 &&
                  int(moe::Storage::fp16) == MOERT_STORAGE_F16 && int(moe::Storage::int8) == MOERT_STORAGE_INT8 &&
                  int(moe::Storage::int4) == MOERT_STORAGE_INT4,
              "#moe.storage follows moert_storage");
static_assert(int(moe::Activation::identity) == MOERT_ACT_IDENTITY &&
                  int(moe::Activation::relu) == MOERT_ACT_RELU &&
                  int(moe::Activation::gelu) == MOERT_ACT_GELU &&
                  int(moe::Activation::silu) == MOERT_ACT_SILU &&
                  int(moe::Activation::swiglu) == MOERT_ACT_SWIGLU &&
                  int(moe::Activation::geglu) == MOERT_ACT_GEGLU &&
                  int(moe::Activation::gelu_tanh) == MOERT_ACT_GELU_TANH,
              "#moe.activation follows moert_activation (CPU and GPU kernels' C::ACT)");
static_assert(int(moe::NormKind::none) == MOERT_NORM_NONE && int(moe::NormKind::rms) == MOERT_NORM_RMS &&
                  int(moe::NormKind::layer) == MOERT_NORM_LAYER,
              "#moe.norm follows moert_norm (CPU and GPU kernels' C::NORM)");

/// CPU features each -march needs at run time (checked by moert before it loads the code).
struct CpuInfo {
  const char *name;
  std::vector<std::string> features;
};
const std::vector<std::string> kV3 = {"avx2", "fma", "bmi2", "f16c"};
std::vector<std::string> plus(std::vector<std::string> a, std::vector<std::string> b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
const std::vector<CpuInfo> &cpuTable() {
  static const std::vector<CpuInfo> table = {
      {"x86-64", {}},
      {"x86-64-v2", {"sse4.2", "popcnt"}},
      {"x86-64-v3", kV3},
      {"x86-64-v4", plus(kV3, {"avx512f", "avx512bw", "avx512vl", "avx512dq"})},
      {"haswell", kV3},
      {"znver3", kV3},
      {"znver4", plus(kV3, {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512bf16", "avx512vnni"})},
      {"skylake-avx512", plus(kV3, {"avx512f", "avx512bw", "avx512vl", "avx512dq"})},
      {"icelake-server", plus(kV3, {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni"})},
      {"sapphirerapids",
       plus(kV3, {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni", "avx512bf16"})},
  };
  return table;
}

/// The host's features among those moert can check.
std::vector<std::string> hostFeatures() {
  static const char *const kCheckable[] = {"sse4.2", "popcnt", "avx2", "fma", "bmi2", "f16c", "avx512f",
                                           "avx512bw", "avx512vl", "avx512dq", "avx512bf16", "avx512vnni"};
  std::vector<std::string> out;
  llvm::StringMap<bool> host = llvm::sys::getHostCPUFeatures();
  for (const char *f : kCheckable)
    if (host.lookup(f))
      out.push_back(f);
  return out;
}

std::string floatLit(double v) {
  if (std::isinf(v))
    return v > 0 ? "INFINITY" : "-INFINITY";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9gf", v);
  std::string s = buf;
  if (s.find_first_of(".e") == std::string::npos)
    s.insert(s.size() - 1, ".0");
  return s;
}

/// The f32 values of a constant operand, or an error naming it.
bool f32Constant(Value v, StringRef what, std::vector<float> &out, std::string &error) {
  auto t = v ? dyn_cast<RankedTensorType>(v.getType()) : RankedTensorType();
  if (!t || !t.getElementType().isF32()) {
    error = "operand '" + what.str() + "' must be an f32 tensor for CPU code generation (this build packs f32 "
            "weights only)";
    return false;
  }
  std::vector<char> bytes = constantBytes(v);
  if (bytes.empty()) {
    error = "operand '" + what.str() + "' must be a constant (an ONNX initializer) to be packed into the "
            "artifact";
    return false;
  }
  out.resize(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return true;
}

/// A constant f32 operand's values without a copy where they lie in memory (the mapped model's external data,
/// or an attribute's own storage); otherwise copied into `own`. `out` is valid while the module and `own`
/// are.
bool f32Operand(Value v, StringRef what, std::vector<float> &own, F32Span &out, std::string &error) {
  auto t = v ? dyn_cast<RankedTensorType>(v.getType()) : RankedTensorType();
  ArrayRef<char> view = t && t.getElementType().isF32() ? constantTensorView(v) : ArrayRef<char>();
  if (!view.empty() && reinterpret_cast<uintptr_t>(view.data()) % alignof(float) == 0) {
    out = F32Span(reinterpret_cast<const float *>(view.data()), view.size() / 4);
    return true;
  }
  if (!f32Constant(v, what, own, error))
    return false;
  out = own;
  return true;
}

struct Emitter {
  const CpuOptions &opts;
  ArtifactWriter writer;
  llvm::DenseMap<Value, uint32_t> ids;
  pb::Program *program;
  // Per graph input: the window of a window-sized KV cache (the function argument's moe.window_cache), else
  // 0.
  std::vector<int64_t> inputWindows;
  // Where steps go: the program's, or a control-flow op's block while its region is emitted.
  google::protobuf::RepeatedPtrField<pb::Step> *steps;
  std::string source; // the generated C++ translation unit
  std::string gpuSource; // the generated GPU translation unit (when GPU archs are asked for)
  int dispatches = 0; // MoE dispatches
  int linears = 0;    // linear dispatches
  int attentions = 0; // attention dispatches
  // Attention config structs by their constants: layers alike share one (one kernel instantiation per config
  // and cache storage, not per layer).
  std::map<std::string, std::string> attentionConfigs;
  // MoE and linear config structs by their constants, shared the same way (a 26-layer model: one of each).
  std::map<std::string, std::string> moeConfigs, linearConfigs;
  std::string error;
  raw_ostream *progress;

  explicit Emitter(const CpuOptions &o, raw_ostream *p)
      : opts(o), program(writer.meta().mutable_program()), steps(program->mutable_steps()), progress(p) {}

  pb::Step *addStep() { return steps->Add(); }

  bool fail(Operation *op, const Twine &msg) {
    error = describeLocation(op->getLoc()) + ": " + msg.str();
    return false;
  }

  static pb::DType dtypeOf(Type t) {
    if (t.isF32())
      return pb::F32;
    if (t.isF64())
      return pb::F64;
    if (t.isF16())
      return pb::F16;
    if (t.isBF16())
      return pb::BF16;
    if (auto i = dyn_cast<IntegerType>(t)) {
      bool u = i.isUnsigned();
      switch (i.getWidth()) {
      case 1:
        return pb::BOOL;
      case 8:
        return u ? pb::U8 : pb::I8;
      case 16:
        return u ? pb::U16 : pb::I16;
      case 32:
        return u ? pb::U32 : pb::I32;
      case 64:
        return u ? pb::U64 : pb::I64;
      }
    }
    return pb::DTYPE_UNKNOWN;
  }

  /// A program value for `v` (fails on element types moert has no dtype for).
  bool addValue(Operation *where, Value v, StringRef name, uint32_t &id, ArrayAttr dimNames = {}) {
    // A sequence or optional: its kind, and its tensors' type as the value's type.
    auto kind = ox::valueKind(v.getType());
    auto shaped = dyn_cast_if_present<ShapedType>(ox::innerTensorType(v.getType()));
    pb::DType dtype = shaped ? dtypeOf(shaped.getElementType()) : pb::DTYPE_UNKNOWN;
    if (dtype == pb::DTYPE_UNKNOWN) {
      std::string type;
      llvm::raw_string_ostream os(type);
      v.getType().print(os);
      return fail(where, "values of type " + type + " have no CPU support (moert's dtypes: f32 f64 f16 bf16 "
                         "i64 i32 i16 i8 u64 u32 u16 u8 bool)");
    }
    auto *val = program->add_values();
    val->set_name(name.str());
    val->mutable_type()->set_dtype(dtype);
    switch (*kind) {
    case ox::ValueKind::Tensor:
      break;
    case ox::ValueKind::Sequence:
      val->set_kind(pb::Value::SEQUENCE);
      break;
    case ox::ValueKind::OptionalTensor:
      val->set_kind(pb::Value::OPTIONAL_TENSOR);
      break;
    case ox::ValueKind::OptionalSequence:
      val->set_kind(pb::Value::OPTIONAL_SEQUENCE);
      break;
    }
    if (!shaped.hasRank())
      val->mutable_type()->set_unranked(true);
    for (int64_t i = 0; shaped.hasRank() && i < shaped.getRank(); ++i) {
      auto *d = val->mutable_type()->add_dims();
      if (!shaped.isDynamicDim(i)) {
        d->set_size(shaped.getDimSize(i));
        continue;
      }
      d->set_size(-1);
      std::string sym;
      if (dimNames && i < static_cast<int64_t>(dimNames.size()))
        if (auto s = dyn_cast<StringAttr>(dimNames[i]))
          sym = s.getValue().str();
      d->set_symbol(sym.empty() ? "?" : sym);
    }
    id = program->values_size() - 1;
    ids[v] = id;
    return true;
  }

  bool valueId(Operation *user, Value v, StringRef what, uint32_t &id) {
    auto it = ids.find(v);
    if (it == ids.end())
      return fail(user, "operand '" + what + "' is a constant or an unsupported value; CPU code generation "
                        "needs it computed by the graph");
    id = it->second;
    return true;
  }

  /// A value id for `v`, turning a constant into a constant value stored in its own section.
  /// An optional operand's value id (a constant gets a section), or -1 when it is absent.
  bool optionalId(Operation *user, Value v, StringRef what, int64_t &id) {
    uint32_t u = 0;
    if (v && !valueOrConstant(user, v, what, u))
      return false;
    id = v ? int64_t(u) : int64_t(-1);
    return true;
  }

  bool valueOrConstant(Operation *user, Value v, StringRef what, uint32_t &id) {
    if (ids.count(v))
      return valueId(user, v, what, id);
    auto t = dyn_cast<RankedTensorType>(v.getType());
    std::vector<char> bytes = constantTensorBytes(v);
    if (!t || !t.hasStaticShape() || (bytes.empty() && t.getNumElements() != 0))
      return fail(user, "operand '" + what + "' is neither computed by the graph nor a constant");
    if (!addValue(user, v, "const" + std::to_string(program->values_size()), id))
      return false;
    program->mutable_values(id)->set_constant_section(
        writer.addSection("const" + std::to_string(id), pb::Section::WEIGHTS, std::move(bytes)));
    return true;
  }

  /// An ONNX attribute as the runtime reads it; false for attributes the runtime does not need (Cast's `to`
  /// is the output's dtype).
  bool encodeAttribute(Operation *op, NamedAttribute na, pb::Attribute &out) {
    out.set_name(na.getName().str());
    Attribute a = na.getValue();
    if (auto i = dyn_cast<IntegerAttr>(a)) {
      out.set_kind(pb::Attribute::INT);
      out.add_ints(i.getValue().getSExtValue());
    } else if (auto f = dyn_cast<FloatAttr>(a)) {
      out.set_kind(pb::Attribute::FLOAT);
      out.add_floats(f.getValueAsDouble());
    } else if (auto s = dyn_cast<StringAttr>(a)) {
      out.set_kind(pb::Attribute::STRING);
      out.set_s(s.getValue().str());
    } else if (auto arr = dyn_cast<ArrayAttr>(a); arr && !arr.empty() && isa<StringAttr>(arr[0])) {
      out.set_kind(pb::Attribute::STRINGS);
      for (Attribute e : arr) {
        auto str = dyn_cast<StringAttr>(e);
        if (!str)
          return fail(op, "attribute '" + na.getName().str() + "' mixes strings and other values");
        out.add_strings(str.getValue().str());
      }
    } else if (auto arr = dyn_cast<ArrayAttr>(a)) {
      bool floats = !arr.empty() && isa<FloatAttr>(arr[0]);
      out.set_kind(floats ? pb::Attribute::FLOATS : pb::Attribute::INTS);
      for (Attribute e : arr) {
        if (auto i = dyn_cast<IntegerAttr>(e))
          out.add_ints(i.getValue().getSExtValue());
        else if (auto f = dyn_cast<FloatAttr>(e))
          out.add_floats(f.getValueAsDouble());
        else
          return fail(op, "attribute '" + na.getName().str() + "' is not a list of numbers");
      }
    } else if (auto e = dyn_cast<ElementsAttr>(a)) {
      out.set_kind(pb::Attribute::TENSOR);
      out.set_tensor_dtype(dtypeOf(e.getElementType()));
      std::vector<char> bytes = elementsBytes(e);
      if (out.tensor_dtype() == pb::DTYPE_UNKNOWN || (bytes.empty() && e.getNumElements() != 0))
        return fail(op, "tensor attribute '" + na.getName().str() + "' has an element type moert cannot hold");
      for (int64_t d : e.getShapedType().getShape())
        out.add_ints(d);
      out.set_s(std::string(bytes.begin(), bytes.end()));
    } else if (!isa<TypeAttr>(a)) {
      return fail(op, "attribute '" + na.getName().str() + "' has a kind moert does not read");
    }
    return true;
  }

  /// Any other `onnx.*` op: a step run by libmoert's op kernels (runtime/src/Ops.cpp), inputs by value id
  /// (constants stored as sections), attributes with their defaults filled in.
  bool emitGraphOp(Operation *op) {
    StringRef name = op->getName().getStringRef();
    if (!name.consume_front("onnx."))
      return false;
    auto *step = addStep()->mutable_op();
    step->set_op(name.str());
    // Optional operands left out are -1: ops with AttrSizedOperandSegments say which, the others can only
    // leave out trailing ones.
    SmallVector<int64_t> groups;
    if (auto seg = op->getAttrOfType<DenseI32ArrayAttr>("operandSegmentSizes"))
      groups.assign(seg.asArrayRef().begin(), seg.asArrayRef().end());
    else
      groups.assign(op->getNumOperands(), 1);
    unsigned next = 0;
    for (int64_t g : groups) {
      if (g == 0) {
        step->add_inputs(-1);
        continue;
      }
      for (int64_t k = 0; k < g; ++k, ++next) {
        uint32_t id;
        if (!valueOrConstant(op, op->getOperand(next), "input " + std::to_string(next), id))
          return false;
        step->add_inputs(id);
      }
    }
    NamedAttrList attrs(op->getAttrDictionary());
    if (auto info = op->getRegisteredInfo())
      info->populateDefaultAttrs(attrs);
    for (NamedAttribute na : attrs) {
      if (na.getName() == "operandSegmentSizes" || na.getName().strref().starts_with("moe."))
        continue;
      pb::Attribute a;
      if (!encodeAttribute(op, na, a))
        return false;
      if (a.kind() != pb::Attribute::KIND_UNKNOWN)
        *step->add_attributes() = std::move(a);
    }
    for (Value r : op->getResults()) {
      uint32_t id;
      if (!addValue(op, r, name.str() + std::to_string(program->values_size()), id))
        return false;
      step->add_outputs(id);
    }
    // Control flow (If, Loop, Scan): each region is a block of steps; its arguments are values the op binds
    // per run, its onnx.Yield the block's outputs.
    for (Region &region : op->getRegions()) {
      pb::Block *block = step->add_blocks();
      Block &body = region.front();
      for (BlockArgument arg : body.getArguments()) {
        uint32_t id;
        if (!addValue(op, arg, name.str() + std::to_string(program->values_size()) + ".arg", id))
          return false;
        block->add_inputs(id);
      }
      auto *outer = steps;
      steps = block->mutable_steps();
      bool ok = true;
      for (Operation &inner : body.without_terminator())
        if (!(ok = emitOp(inner)))
          break;
      steps = outer;
      if (!ok)
        return false;
      for (auto [i, v] : llvm::enumerate(body.getTerminator()->getOperands())) {
        uint32_t id;
        if (!valueOrConstant(op, v, "yielded value " + std::to_string(i), id))
          return false;
        block->add_outputs(id);
      }
    }
    return true;
  }

  /// A MoE dispatch's weight section; the per-expert slots are checksummed per expert (run-time checks read
  /// only the experts a run computes).
  int weightSection(moe::SparseMoEOp op, int slot, StringRef name, std::vector<char> bytes) {
    return writer.addSection(("d" + std::to_string(dispatches) + "." + name).str(), pb::Section::WEIGHTS,
                             std::move(bytes), MOERT_MOE_SLOT_PER_EXPERT(slot) ? op.getNumExperts() : 1);
  }

  /// ONNX Runtime QMoE's packed integers ([E, rows, K * bits / 8], low nibble first) and their scales
  /// ([E, rows] or [E, rows, K / block]) as centred rows.
  bool importedRows(moe::SparseMoEOp op, Value packed, Value scales, moe::WeightQuantAttr qa, StringRef what,
                    int64_t rows, int64_t k, QRows &out) {
    auto t = cast<RankedTensorType>(packed.getType());
    std::vector<char> bytes = constantTensorBytes(packed);
    std::vector<float> sc;
    if (bytes.empty())
      return fail(op, "operand '" + what + "' must be a constant (an ONNX initializer) to be packed");
    if (!f32Constant(scales, (what + "_scales").str(), sc, error))
      return fail(op, error);
    unsigned bits = qa.getBits();
    bool isUnsigned = t.getElementType().isUnsignedInteger();
    int64_t blk = qa.getBlockSize() ? qa.getBlockSize() : k;
    out.rows = rows, out.k = k, out.blk = blk, out.nb = (k + blk - 1) / blk;
    if (int64_t(bytes.size()) * 8 != rows * k * bits || int64_t(sc.size()) != rows * out.nb)
      return fail(op, "operand '" + what + "': packed size or scale count disagrees with its layer shape");
    out.q.resize(rows * k);
    for (int64_t i = 0; i < rows * k; ++i) {
      int v;
      if (bits == 8) {
        v = isUnsigned ? int(uint8_t(bytes[i])) - 128 : int(int8_t(bytes[i]));
      } else {
        int nib = (uint8_t(bytes[i / 2]) >> ((i & 1) * 4)) & 15;
        v = isUnsigned ? nib - 8 : (nib >= 8 ? nib - 16 : nib);
      }
      out.q[i] = static_cast<int8_t>(v);
    }
    out.s = std::move(sc);
    return true;
  }

  bool emitMoE(moe::SparseMoEOp op) {
    auto started = std::chrono::steady_clock::now();
    auto inT = op.getInput().getType();
    if (!inT.getElementType().isF32())
      return fail(op, "moe.sparse_moe on " + llvm::Twine(inT.getElementType().isF16() ? "f16" : "non-f32") +
                          " activations has no CPU code generation yet (f32 only)");
    int64_t h = inT.getDimSize(1), e = op.getNumExperts(), f = op.getHiddenDim(), n = op.getNumRouterColumns();
    if (ShapedType::isDynamic(h) || ShapedType::isDynamic(e) || ShapedType::isDynamic(f))
      return fail(op, "the layer's H, E and F must be static");
    bool gated = op.isGated();
    int64_t g = gated ? 2 : 1;
    bool interleaved = op.getGatedLayout() == moe::GatedLayout::interleaved;
    std::vector<int64_t> sections(MOERT_MOE_SLOTS, -1);
    uint64_t weightBytes = 0;
    const moe::Storage storage = op.getStorage();
    const bool bf16 = storage == moe::Storage::bf16, fp16 = storage == moe::Storage::fp16;
    // An f32 operand of the layer (router, biases, norm, predictor); the expert weights are packed in their
    // storage by packExperts below.
    auto add = [&](int slot, StringRef name, std::vector<float> data) {
      std::vector<char> bytes = asBytes(data);
      weightBytes += bytes.size();
      sections[slot] = weightSection(op, slot, name, std::move(bytes));
    };
    auto gatedRow = [&](int64_t j, int64_t part, int64_t fdim) {
      return !gated ? j : (interleaved ? 2 * j + part : part * fdim + j);
    };
    // Expert weights in the kernels' layouts: fc1 [E, g*F, H] -> [E][F][g][H]; fc2 [E, H, F] -> [E][F][H]
    // (transposed). Quantised ones (QMoE's, or --weights=int8/int4) as integers packed along H with scales
    // (fc1's per block of QBLOCK1 columns of a row, fc2's per column per block of QBLOCK2 rows): f16 where
    // moec quantises the layer (C::SCALE16, MOERT_QSCALE_BYTES), QMoE's own f32 ones otherwise.
    auto q1a = op.getFc1QuantAttr(), q2a = op.getFc2QuantAttr();
    int qbits = q1a ? int(q1a.getBits()) : storage == moe::Storage::int8 ? 8 : storage == moe::Storage::int4 ? 4 : 0;
    if (bool(q1a) != bool(q2a) || (q1a && q1a.getBits() != q2a.getBits()))
      return fail(op, "fc1 and fc2 quantised differently (or only one of them) have no CPU code generation");
    if (q1a && storage != moe::Storage::fp32)
      return fail(op, "storage '" + moe::stringifyStorage(storage) + "' on a layer whose weights are already "
                      "quantised (QMoE)");
    if (qbits == 4 && h % 2)
      return fail(op, "int4 weights need an even H (packed two per byte along H); H = " + Twine(h));
    static_assert(MOERT_QSCALE_BYTES == 2, "f16 scales");
    const bool scale16 = qbits && !q1a;
    auto scaleBytes = [&](const std::vector<float> &sc) { return scale16 ? asF16(sc) : asBytes(sc); };
    int64_t qblock1 = 0, qblock2 = 0;
    bool panels = false;
    // Packs (x, j, part) rows of fc1 and fc2 columns for `ne` experts with `fdim` dims into `slot`s.
    auto packExperts = [&](int64_t ne, int64_t fdim, F32Span w1, F32Span w2, const QRows *r1, const QRows *r2,
                           int slot1, int slot2, int sslot1, int sslot2, StringRef name1, StringRef name2) {
      // With panels, each expert's fc1 is a linear layer of h inputs and fdim * g outputs whose panel
      // (j / NR) * g + part holds part `part` of dims j / NR * NR .. + NR - 1: the output of (j, part).
      auto panelRow = [&](int64_t j, int64_t part) {
        constexpr int64_t nr = MOERT_LINEAR_NR;
        return ((j / nr) * g + part) * nr + j % nr;
      };
      if (!qbits) {
        // fc1's rows regrouped, fc2 transposed (forEachTiled), each weight written straight in its storage
        // (no f32 copy first); experts and row ranges in parallel.
        const int64_t eb = bf16 || fp16 ? 2 : 4;
        auto put = [&](char *dst, float v) {
          if (eb == 4) {
            std::memcpy(dst, &v, 4);
          } else {
            const uint16_t b = bf16 ? toBf16(v) : toF16(v);
            std::memcpy(dst, &b, 2);
          }
        };
        auto store = [&](int slot, StringRef name, std::vector<char> bytes) {
          weightBytes += bytes.size();
          sections[slot] = weightSection(op, slot, name, std::move(bytes));
        };
        if (panels) {
          // Each expert's fc1 (rows in panelRow's order) and fc2 ([H][F] per expert: its transpose) as linear
          // layers in the linear kernel's panels, by packLinear.
          const moert_storage st = moert_storage(storage);
          std::vector<char> p1, p2;
          std::vector<float> rows1(fdim * g * h);
          for (int64_t x = 0; x < ne; ++x) {
            parallelFor(fdim, std::max<int64_t>(1, 16384 / h), [&](int64_t j0, int64_t j1) {
              for (int64_t j = j0; j < j1; ++j)
                for (int64_t part = 0; part < g; ++part)
                  std::memcpy(&rows1[panelRow(j, part) * h],
                              &w1[(x * g * fdim + gatedRow(j, part, fdim)) * h], h * 4);
            });
            const std::vector<char> a = packLinear(rows1, true, h, fdim * g, st, 0, {}).slots[MOERT_LIN_W];
            p1.insert(p1.end(), a.begin(), a.end());
            const std::vector<char> b =
                packLinear(F32Span(&w2[x * h * fdim], h * fdim), true, fdim, h, st, 0, {}).slots[MOERT_LIN_W];
            p2.insert(p2.end(), b.begin(), b.end());
          }
          store(slot1, name1, std::move(p1));
          store(slot2, name2, std::move(p2));
          return;
        }
        std::vector<char> p1(ne * fdim * g * h * eb);
        parallelFor(ne * fdim, std::max<int64_t>(1, 16384 / h), [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t x = r / fdim, j = r % fdim;
            for (int64_t part = 0; part < g; ++part) {
              const float *src = &w1[(x * g * fdim + gatedRow(j, part, fdim)) * h];
              char *dst = &p1[(r * g + part) * h * eb];
              if (eb == 4)
                std::memcpy(dst, src, h * 4);
              else
                for (int64_t i = 0; i < h; ++i)
                  put(dst + i * eb, src[i]);
            }
          }
        });
        store(slot1, name1, std::move(p1));
        std::vector<char> p2(ne * fdim * h * eb);
        forEachTiled(ne, fdim, h, [&](int64_t x, int64_t j, int64_t i) {
          put(&p2[((x * fdim + j) * h + i) * eb], w2[(x * h + i) * fdim + j]);
        });
        store(slot2, name2, std::move(p2));
        return;
      }
      std::vector<char> c1, cs1, c2, cs2; // fc1's and fc2's codes and scales
      // One expert's layer (`codes` [n][k] unsigned, zero point 2^(bits-1); `scales` [n][k / blk]) appended
      // in the linear kernel's panels.
      auto appendPanels = [&](const std::vector<uint8_t> &codes, const std::vector<float> &scales, int64_t k,
                              int64_t n, int64_t blk, std::vector<char> &c, std::vector<char> &cs) {
        PackedLinear pl = packLinearCodes(codes, scales, {}, qbits, k, n, blk, {}, scale16);
        c.insert(c.end(), pl.slots[MOERT_LIN_W].begin(), pl.slots[MOERT_LIN_W].end());
        cs.insert(cs.end(), pl.slots[MOERT_LIN_SCALES].begin(), pl.slots[MOERT_LIN_SCALES].end());
      };
      if (panels) {
        // each expert's fc1 as a linear layer (panelRow's order), in the linear kernel's panels
        for (int64_t x = 0; x < ne; ++x) {
          std::vector<uint8_t> codes(fdim * g * h);
          std::vector<float> scales(fdim * g * r1->nb);
          for (int64_t j = 0; j < fdim; ++j)
            for (int64_t part = 0; part < g; ++part) {
              const int64_t src = x * g * fdim + gatedRow(j, part, fdim), dst = panelRow(j, part);
              for (int64_t i = 0; i < h; ++i) // unsigned codes, zero point 2^(bits-1)
                codes[dst * h + i] = uint8_t(r1->q[src * h + i] + (1 << (qbits - 1)));
              std::memcpy(&scales[dst * r1->nb], &r1->s[src * r1->nb], r1->nb * 4);
            }
          appendPanels(codes, scales, h, fdim * g, r1->blk, c1, cs1);
        }
        // each expert's fc2 as a linear layer of fdim inputs and h outputs
        for (int64_t x = 0; x < ne; ++x) {
          std::vector<uint8_t> codes(h * fdim);
          for (int64_t i = 0; i < h * fdim; ++i)
            codes[i] = uint8_t(r2->q[x * h * fdim + i] + (1 << (qbits - 1)));
          std::vector<float> scales(r2->s.begin() + x * h * r2->nb, r2->s.begin() + (x + 1) * h * r2->nb);
          appendPanels(codes, scales, fdim, h, r2->blk, c2, cs2);
        }
      } else {
        std::vector<int8_t> q1(ne * fdim * g * h);
        std::vector<float> s1(ne * fdim * g * r1->nb);
        for (int64_t x = 0; x < ne; ++x)
          for (int64_t j = 0; j < fdim; ++j)
            for (int64_t part = 0; part < g; ++part) {
              int64_t src = x * g * fdim + gatedRow(j, part, fdim), dst = (x * fdim + j) * g + part;
              std::memcpy(&q1[dst * h], &r1->q[src * h], h);
              std::memcpy(&s1[dst * r1->nb], &r1->s[src * r1->nb], r1->nb * 4);
            }
        c1 = packBits(q1, qbits);
        cs1 = scaleBytes(s1);
        // fc2 transposed: row f holds dim f's codes for every column, scales per column per row block
        std::vector<int8_t> q2(ne * fdim * h);
        std::vector<float> sc(ne * r2->nb * h);
        forEachTiled(ne, fdim, h, [&](int64_t x, int64_t j, int64_t i) {
          q2[(x * fdim + j) * h + i] = r2->q[(x * h + i) * fdim + j];
        });
        for (int64_t x = 0; x < ne; ++x)
          for (int64_t i = 0; i < h; ++i)
            for (int64_t b = 0; b < r2->nb; ++b)
              sc[(x * r2->nb + b) * h + i] = r2->s[(x * h + i) * r2->nb + b];
        c2 = packBits(q2, qbits);
        cs2 = scaleBytes(sc);
      }
      auto raw = [&](int slot, StringRef name, std::vector<char> bytes) {
        weightBytes += bytes.size();
        sections[slot] = weightSection(op, slot, name, std::move(bytes));
      };
      raw(slot1, name1, std::move(c1));
      raw(slot2, name2, std::move(c2));
      raw(sslot1, (name1 + "_scales").str(), std::move(cs1));
      raw(sslot2, (name2 + "_scales").str(), std::move(cs2));
    };
    const bool gpu = opts.gpu();
    if (gpu && op.getNumRouterColumns() > 2048)
      return fail(op, "GPU kernels route over at most 2048 router columns; this layer has " +
                      Twine(op.getNumRouterColumns()));
    std::vector<float> w1Copy, w2Copy;
    F32Span w1, w2;
    QRows r1, r2;
    if (q1a) {
      if (!importedRows(op, op.getFc1(), op.getFc1Scales(), q1a, "fc1", e * g * f, h, r1) ||
          !importedRows(op, op.getFc2(), op.getFc2Scales(), q2a, "fc2", e * h, f, r2))
        return false;
      if (r1.blk % 16 != 0 && r1.blk < h) // a vector load (8 or 16 lanes) must not straddle two blocks
        return fail(op, "fc1 quantisation blocks of " + Twine(r1.blk) + " columns (CPU kernels need a multiple "
                        "of 16, or one scale per row)");
      qblock1 = r1.blk;
      qblock2 = q2a.getBlockSize(); // 0: one scale per row of fc2 = per column of its transpose
    } else {
      if (!f32Operand(op.getFc1(), "fc1", w1Copy, w1, error) ||
          !f32Operand(op.getFc2(), "fc2", w2Copy, w2, error))
        return fail(op, error);
      if (int64_t(w1.size()) != e * g * f * h || int64_t(w2.size()) != e * h * f)
        return fail(op, "operands 'fc1' / 'fc2' hold " + Twine(w1.size()) + " / " + Twine(w2.size()) +
                            " values; the layer's shape needs " + Twine(e * g * f * h) + " / " +
                            Twine(e * h * f));
      if (qbits) {
        qblock1 = qblock2 = MOERT_EXPERT_QBLOCK;
        r1 = quantizeRows(w1, e * g * f, h, qbits, qblock1, scale16);
        r2 = quantizeRows(w2, e * h, f, qbits, qblock2, scale16);
      }
    }
    // On a CPU target fc1 and fc2 go in the linear kernel's panels (C::PANELS, MOERT_FC1 / MOERT_FC2), where
    // the kernel's paths for them apply. Quantised experts with int8 activations multiply integers there:
    // fc1 blocks and H whole input blocks / code steps, no predictor, H whole column panels, F and the shared
    // expert's dims whole input blocks (so whole fc1 panels too), fc2 blocks of whole input blocks. Plain
    // ones (f32, bf16, fp16) run gemm.h's micro-kernel on them whatever the token count: no predictor, H, F
    // and the shared expert's dims whole panels. GPU kernels read rows.
    const int64_t fsDims =
        op.getSharedFc2() ? cast<RankedTensorType>(op.getSharedFc2().getType()).getDimSize(1) : 0;
    const int64_t xb = MOERT_INT8_ACT_BLOCK;
    static_assert(MOERT_INT8_ACT_BLOCK % MOERT_LINEAR_NR == 0,
                  "dims in whole input blocks: whole fc1 panels");
    panels = qbits && op.getInt8Activations() && !gpu && !op.getPredA() &&
             (qblock1 ? qblock1 : h) % xb == 0 && h % (qbits == 4 ? 2 * xb : xb) == 0 &&
             h % MOERT_LINEAR_NR == 0 && f % xb == 0 && fsDims % xb == 0 && qblock2 % xb == 0;
    panels |= !qbits && !gpu && !op.getPredA() && h % MOERT_LINEAR_NR == 0 && f % MOERT_LINEAR_NR == 0 &&
              fsDims % MOERT_LINEAR_NR == 0;
    packExperts(e, f, w1, w2, &r1, &r2, MOERT_FC1, MOERT_FC2, MOERT_FC1_SCALES, MOERT_FC2_SCALES, "fc1",
                "fc2");
    bool linear = op.getRouterKind() == moe::RouterKind::linear;
    int64_t logitsId = -1;
    if (linear) {
      std::vector<float> r;
      if (!f32Constant(op.getRouter(), "router", r, error))
        return fail(op, error);
      std::vector<float> rt(r.size());
      for (int64_t i = 0; i < h; ++i)
        for (int64_t c = 0; c < n; ++c)
          rt[c * h + i] = r[i * n + c];
      add(MOERT_ROUTER, "router", std::move(rt));
    } else {
      uint32_t id;
      if (!valueId(op, op.getRouter(), "router", id))
        return false;
      logitsId = id;
    }
    auto plain = [&](Value v, int slot, StringRef name) {
      if (!v)
        return true;
      std::vector<float> d;
      if (!f32Constant(v, name, d, error))
        return fail(op, error);
      add(slot, name, std::move(d));
      return true;
    };
    if (!plain(op.getRouterBias(), MOERT_ROUTER_BIAS, "router_bias") ||
        !plain(op.getSelectionBias(), MOERT_SEL_BIAS, "selection_bias") ||
        !plain(op.getFc2Bias(), MOERT_FC2_BIAS, "fc2_bias") ||
        !plain(op.getNormWeight(), MOERT_NORM_W, "norm_weight") ||
        !plain(op.getNormBias(), MOERT_NORM_B, "norm_bias") ||
        !plain(op.getSharedGate(), MOERT_SHARED_GATE, "shared_gate"))
      return false;
    if (Value b1v = op.getFc1Bias()) {
      std::vector<float> b1;
      if (!f32Constant(b1v, "fc1_bias", b1, error))
        return fail(op, error);
      std::vector<float> p(b1.size());
      for (int64_t x = 0; x < e; ++x)
        for (int64_t j = 0; j < f; ++j)
          for (int64_t part = 0; part < g; ++part)
            p[(x * f + j) * g + part] = b1[x * g * f + gatedRow(j, part, f)];
      add(MOERT_FC1_BIAS, "fc1_bias", std::move(p));
    }
    if (Value m = op.getMask()) {
      DenseElementsAttr attr;
      if (!matchPattern(m, m_Constant(&attr)))
        return fail(op, "a mask computed at run time has no CPU code generation yet (constant masks only)");
      std::vector<char> bytes;
      for (const APInt &v : attr.getValues<APInt>())
        bytes.push_back(v.isZero() ? 0 : 1);
      weightBytes += bytes.size();
      sections[MOERT_MASK] = weightSection(op, MOERT_MASK, "mask", std::move(bytes));
    }
    int64_t r = 0, keep = op.getKeep() ? static_cast<int64_t>(*op.getKeep()) : 0;
    if (op.getPredA()) {
      std::vector<float> a, b;
      if (!f32Constant(op.getPredA(), "pred_a", a, error) || !f32Constant(op.getPredB(), "pred_b", b, error))
        return fail(op, error);
      r = cast<RankedTensorType>(op.getPredA().getType()).getDimSize(2);
      std::vector<float> at(a.size());
      for (int64_t x = 0; x < e; ++x)
        for (int64_t i = 0; i < h; ++i)
          for (int64_t k = 0; k < r; ++k)
            at[(x * r + k) * h + i] = a[(x * h + i) * r + k];
      add(MOERT_PRED_A, "pred_a", std::move(at));
      add(MOERT_PRED_B, "pred_b", std::move(b));
    }
    int64_t fs = 0;
    if (op.getSharedFc1()) {
      std::vector<float> s1, s2;
      if (!f32Constant(op.getSharedFc1(), "shared_fc1", s1, error) ||
          !f32Constant(op.getSharedFc2(), "shared_fc2", s2, error))
        return fail(op, error);
      fs = cast<RankedTensorType>(op.getSharedFc2().getType()).getDimSize(1);
      QRows sr1, sr2;
      if (qbits) { // the shared expert is quantised like the routed ones (same blocks)
        sr1 = quantizeRows(s1, g * fs, h, qbits, qblock1, scale16);
        sr2 = quantizeRows(s2, h, fs, qbits, qblock2 ? qblock2 : fs, scale16);
      }
      packExperts(1, fs, s1, s2, &sr1, &sr2, MOERT_SHARED1, MOERT_SHARED2, MOERT_SHARED1_SCALES,
                  MOERT_SHARED2_SCALES, "shared_fc1", "shared_fc2");
    }

    // The dispatch's step and its specialised kernel.
    int index = dispatches++;
    auto *step = addStep()->mutable_moe();
    step->set_index(index);
    uint32_t in;
    if (!valueId(op, op.getInput(), "input", in))
      return false;
    step->set_input(in);
    step->set_logits(logitsId);
    int64_t residual = -1;
    if (op.getResidual()) {
      uint32_t id;
      if (!valueId(op, op.getResidual(), "residual", id))
        return false;
      residual = id;
    }
    step->set_residual(residual);
    for (int64_t s : sections)
      step->add_weight_sections(s);
    if (int ranks = opts.expertParallel) {
      if (!opts.expertMap.empty() && int64_t(opts.expertMap.size()) != e)
        return fail(op, "--expert-map names the ranks of " + Twine(opts.expertMap.size()) +
                            " experts, but this MoE layer has " + Twine(e));
      for (int64_t x = 0; x < e; ++x)
        step->add_expert_rank(opts.expertMap.empty() ? uint32_t(x * ranks / e) : uint32_t(opts.expertMap[x]));
    }
    step->set_hidden(h);
    step->set_experts(e);
    step->set_top_k(op.getK());
    step->set_weight_bytes(weightBytes);
    std::string desc;
    llvm::raw_string_ostream ds(desc);
    ds << "sparse_moe E=" << e;
    if (op.getZeroExperts())
      ds << "+" << op.getZeroExperts() << " zero";
    ds << " k=" << op.getK() << " H=" << h << " F=" << f << " " << (qbits == 8 ? "int8 " : qbits == 4 ? "int4 " : bf16 ? "bf16 " : fp16 ? "fp16 " : "")
       << moe::stringifyActivation(op.getActivation())
       << ", router " << moe::stringifyRouterKind(op.getRouterKind()) << "/" << moe::stringifyGateFunc(op.getGate());
    if (op.getPredA())
      ds << ", predictor R=" << r << " keep=" << keep;
    if (op.getMask())
      ds << ", static mask";
    if (op.getSharedFc1())
      ds << ", shared expert Fs=" << fs;
    if (op.getNorm() != moe::NormKind::none)
      ds << ", " << moe::stringifyNormKind(op.getNorm()) << " norm";
    if (qbits && op.getInt8Activations())
      ds << ", int8 activations";
    // bf16 activations: on the CPU where the experts are in panels (CPU targets), on a GPU in its matrix-core
    // calls (GPU targets; the artifact's CPU kernels then take f32 inputs)
    const bool bf16Act = bf16 && (panels || gpu) && op.getBf16Activations();
    if (bf16Act)
      ds << (panels ? ", bf16 activations" : ", bf16 activations on the GPU (prefill)");
    if (op.getResidual())
      ds << ", residual";
    step->set_description(desc);
    if (progress)
      *progress << "moec: dispatch " << index << ": " << desc << " (" << llvm::format("%.1f", weightBytes / 1048576.0)
                << " MiB packed in "
                << llvm::format("%.2f", std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count())
                << " s)\n";
    uint32_t outId;
    if (!addValue(op, op.getResult(), "moe" + std::to_string(index), outId))
      return false;
    step->set_output(outId);

    auto b = [](bool v) { return v ? "true" : "false"; };
    std::string config;
    llvm::raw_string_ostream cs(config);
    cs << "  using W = "
       << (qbits  ? "uint8_t; // quantised expert weights"
           : bf16 ? "uint16_t; // bf16 expert weights"
           : fp16 ? "_Float16; // fp16 expert weights"
                  : "float;")
       << "\n"
       << "  static constexpr int QBITS = " << qbits << ";\n"
       << "  static constexpr int64_t QBLOCK1 = " << (qblock1 ? qblock1 : h) << ", QBLOCK2 = " << qblock2
       << ";\n"
       << "  static constexpr bool INT8_ACT = " << b(qbits && op.getInt8Activations())
       << ", BF16_ACT = " << b(bf16Act) << ", PANELS = " << b(panels) << ", SCALE16 = " << b(scale16) << ";\n"
       << "  static constexpr int64_t H = " << h << ", F = " << f << ", E = " << e << ", N = " << n
       << ", K = " << op.getK() << ", R = " << r << ", KEEP = " << keep << ", FS = " << fs
       << ", GROUPS = " << op.getExpertGroups()
       << ", GROUP_TOPK = " << (op.getGroupTopk() ? *op.getGroupTopk() : 0)
       << ";\n  static constexpr bool GROUP_MAX = " << b(op.getGroupScore() == moe::GroupScore::max)
       << ";\n  static constexpr int ACT = " << static_cast<int>(op.getActivation())
       << ", NORM = " << static_cast<int>(op.getNorm()) << ";\n"
       << "  static constexpr bool LINEAR_ROUTER = " << b(linear)
       << ", SIGMOID_GATE = " << b(op.getGate() == moe::GateFunc::sigmoid)
       << ", IDENTITY_GATE = " << b(op.getGate() == moe::GateFunc::identity)
       << ", SPARSEMIXER = " << b(op.getGate() == moe::GateFunc::sparsemixer)
       << ", NORMALIZE = " << b(op.getNormalize()) << ", HAS_SHARED = " << b(fs > 0)
       << ", HAS_PRED = " << b(op.getPredA() != nullptr) << ";\n"
       << "  static constexpr float SCALE = " << floatLit(op.getScale().convertToDouble())
       << ", JITTER_EPS = " << floatLit(op.getJitterEps() ? op.getJitterEps()->convertToDouble() : 0.0)
       << ", ALPHA = " << floatLit(op.getActivationAlpha().convertToDouble())
       << ", BETA = " << floatLit(op.getActivationBeta().convertToDouble()) << ", LIMIT = "
       << floatLit(op.getActivationLimit() ? op.getActivationLimit()->convertToDouble() : -1.0)
       << ", EPS = " << floatLit(op.getNormEpsilon().convertToDouble()) << ";\n";
    // Layers alike share one config struct (one kernel instantiation for a model's identical MoE layers).
    auto [configIt, fresh] = moeConfigs.try_emplace(config, "C" + std::to_string(index));
    const std::string &cname = configIt->second;
    const std::string head = "\n// dispatch " + std::to_string(index) + ": " + desc + "\n" +
                             (fresh ? "namespace {\nstruct " + cname + " {\n" + config + "};\n}\n" : "");
    if (gpu) {
      gpuSource += head;
      // (kernel name suffix, Kernels<C> member): kernels/hip/moert_gpu_abi.h lists them
      std::vector<std::pair<const char *, const char *>> kernels = {
          {"route", "route"}, {"up", "up"}, {"down", "down"}, {"up_mma", "upMma"}, {"down_mma", "downMma"}};
      if (linear)
        kernels.insert(kernels.begin(), {"logits", "logits"});
      if (op.getPredA())
        kernels.push_back({"predict", "predict"});
      for (const auto &[name, member] : kernels)
        gpuSource += "MOERT_GPU_KERNEL(moert_gpu_" + std::to_string(index) + "_" + name +
                     ", moert_gpu_args, moert_gpu::Kernels<" + cname + ">::" + member + ")\n";
      auto *gs = step->mutable_gpu();
      gs->set_h(h), gs->set_f(f), gs->set_fs(fs), gs->set_e(e), gs->set_n(n), gs->set_k(op.getK());
      gs->set_norm(op.getNorm() != moe::NormKind::none);
      gs->set_pred(op.getPredA() != nullptr);
    }
    llvm::raw_string_ostream os(source);
    os << head << "extern \"C\" MOERT_EXPORT int moert_dispatch_" << index
       << "(const moert_moe_args *a) { return moert_cpu::Kernel<" << cname << ">::run(a); }\n"
       << "extern \"C\" MOERT_EXPORT size_t moert_dispatch_" << index
       << "_scratch(int64_t t, int threads) { return moert_cpu::Kernel<" << cname
       << ">::scratch(t, threads); }\n"
       << "extern \"C\" MOERT_EXPORT uint64_t moert_dispatch_" << index << "_weight_bytes(int slot) {\n"
       << "  static const uint64_t bytes[] = {";
    for (int s = 0; s < MOERT_MOE_SLOTS; ++s)
      os << (s ? ", " : "")
         << (sections[s] < 0 ? 0 : writer.meta().sections(sections[s]).size());
    os << "};\n  return slot >= 0 && slot < " << MOERT_MOE_SLOTS << " ? bytes[slot] : 0;\n}\n"
       << "extern \"C\" MOERT_EXPORT int64_t moert_dispatch_" << index
       << "_dims(int which) { return which == 0 ? " << h << " : which == 1 ? " << n << " : " << e << "; }\n";
    if (opts.expertParallel) // the routed experts alone, over rows other ranks send (moert_moe_phase)
      os << "extern \"C\" MOERT_EXPORT int moert_dispatch_" << index
         << "_rows(const moert_moe_args *a) { return moert_cpu::Kernel<moert_cpu::PreRouted<" << cname
         << ">>::run(a); }\n"
         << "extern \"C\" MOERT_EXPORT size_t moert_dispatch_" << index
         << "_rows_scratch(int64_t t, int threads) { return moert_cpu::Kernel<moert_cpu::PreRouted<" << cname
         << ">>::scratch(t, threads); }\n";
    return true;
  }

  /// MatMulNBits-style codes ([N, blocks, block * bits / 8] bytes, low nibble first) as one code per element
  /// ([N][K]), scales as f32 [N * blocks], zero points (f32, or packed `bits`-wide codes per column) as f32.
  bool importedLinearCodes(moe::LinearOp op, int64_t k, int64_t n, std::vector<uint8_t> &codes,
                           std::vector<float> &scales, std::vector<float> &zeros) {
    auto qa = op.getWeightQuantAttr();
    const int bits = int(qa.getBits());
    const int64_t blk = qa.getBlockSize(), nb = (k + blk - 1) / blk, blob = blk * bits / 8;
    std::vector<char> raw = constantTensorBytes(op.getWeight());
    if (raw.empty())
      return fail(op, "operand 'weight' must be a constant (an ONNX initializer) to be packed");
    if (int64_t(raw.size()) != n * nb * blob)
      return fail(op, "operand 'weight' holds " + Twine(raw.size()) + " bytes; " + Twine(n) + " columns of " +
                          Twine(nb) + " blocks of " + Twine(blob) + " bytes need " + Twine(n * nb * blob));
    if (!f32Constant(op.getScales(), "scales", scales, error))
      return fail(op, error);
    if (int64_t(scales.size()) != n * nb)
      return fail(op, "operand 'scales' holds " + Twine(scales.size()) + " values, expected N * blocks = " +
                          Twine(n * nb));
    codes.assign(n * k, 0);
    for (int64_t c = 0; c < n; ++c) // a column's blocks are consecutive: feature f is its f-th code
      for (int64_t f = 0; f < k; ++f) {
        uint8_t byte = uint8_t(raw[c * nb * blob + (bits == 8 ? f : f / 2)]);
        codes[c * k + f] = bits == 8 ? byte : uint8_t((byte >> ((f & 1) * 4)) & 15);
      }
    zeros.clear();
    if (Value z = op.getZeroPoints()) {
      auto zt = cast<RankedTensorType>(z.getType());
      if (zt.getElementType().isF32()) {
        if (!f32Constant(z, "zero_points", zeros, error))
          return fail(op, error);
      } else {
        std::vector<char> zb = constantTensorBytes(z);
        const int64_t perCol = (nb * bits + 7) / 8;
        if (int64_t(zb.size()) != n * perCol)
          return fail(op, "operand 'zero_points' holds " + Twine(zb.size()) + " bytes, expected " +
                              Twine(n * perCol) + " (" + Twine(bits) + "-bit codes, each column's padded to bytes)");
        zeros.resize(n * nb);
        for (int64_t c = 0; c < n; ++c)
          for (int64_t b = 0; b < nb; ++b) {
            uint8_t byte = uint8_t(zb[c * perCol + (bits == 8 ? b : b / 2)]);
            zeros[c * nb + b] = float(bits == 8 ? byte : (byte >> ((b & 1) * 4)) & 15);
          }
      }
      if (int64_t(zeros.size()) != n * nb)
        return fail(op, "operand 'zero_points' holds " + Twine(zeros.size()) + " values, expected " + Twine(n * nb));
    }
    return true;
  }

  /// A `moe.linear`: weights packed into panels in the op's storage, a config struct instantiating
  /// kernels/cpu/linear.h, and a linear step.
  bool emitLinear(moe::LinearOp op) {
    auto started = std::chrono::steady_clock::now();
    auto inT = op.getInput().getType();
    if (!inT.getElementType().isF32())
      return fail(op, "moe.linear on non-f32 activations has no CPU code generation yet (f32 only)");
    const int64_t k = op.getInFeatures(), n = op.getOutFeatures();
    if (ShapedType::isDynamic(k) || ShapedType::isDynamic(n) || k <= 0 || n <= 0)
      return fail(op, "a linear layer needs static, positive K and N");
    // Packed panels hold ceil(N / 16) * 16 columns of K features (f32 at most, plus scales).
    if (k > (int64_t(1) << 31) || n > (int64_t(1) << 31) || (n + 15) / 16 * 16 * k > (int64_t(1) << 37))
      return fail(op, "weight [" + Twine(k) + ", " + Twine(n) + "]: its packed size overflows what an artifact "
                      "section holds (2^39 bytes)");
    const moert_storage storage = moert_storage(op.getStorage());
    const auto qa = op.getWeightQuantAttr();
    const int qbits = storage == MOERT_STORAGE_INT8 ? 8 : storage == MOERT_STORAGE_INT4 ? 4 : 0;
    const int64_t block = qbits ? int64_t(op.getBlockSize()) : 0;
    if (qbits && (block < 16 || block % 8))
      return fail(op,
                  "quantisation blocks of " + Twine(block) + " input features (need a multiple of 8, >= 16)");
    std::vector<float> bias;
    if (Value b = op.getBias())
      if (!f32Constant(b, "bias", bias, error))
        return fail(op, error);
    PackedLinear packed;
    bool affine = false;
    // Weights moec quantises itself keep f16 block scales (MOERT_QSCALE_BYTES); imported codes their f32.
    static_assert(MOERT_QSCALE_BYTES == 2, "f16 scales");
    const bool scale16 = qbits && !qa;
    if (qa) {
      std::vector<uint8_t> codes;
      std::vector<float> scales, zeros;
      if (!importedLinearCodes(op, k, n, codes, scales, zeros))
        return false;
      affine = !zeros.empty();
      packed = packLinearCodes(codes, scales, zeros, qbits, k, n, block, bias);
    } else {
      std::vector<float> copy;
      F32Span w;
      if (!f32Operand(op.getWeight(), "weight", copy, w, error))
        return fail(op, error);
      if (int64_t(w.size()) != k * n)
        return fail(op, "operand 'weight' holds " + Twine(w.size()) + " values, expected K * N = " + Twine(k * n));
      packed = packLinear(w, /*transposed=*/false, k, n, storage, block, bias, /*f16Scales=*/scale16);
    }
    const bool norm = op.getNorm() != moe::NormKind::none;
    for (auto [slot, v, what] :
         {std::tuple<int, Value, const char *>{MOERT_LIN_NORM_W, op.getNormWeight(), "norm_weight"},
          {MOERT_LIN_NORM_B, op.getNormBias(), "norm_bias"}}) {
      std::vector<float> values;
      if (!v)
        continue;
      if (!f32Constant(v, what, values, error))
        return fail(op, error);
      if (int64_t(values.size()) != k)
        return fail(op, "operand '" + Twine(what) + "' holds " + Twine(values.size()) +
                            " values, expected K = " + Twine(k));
      packed.slots[slot] = asBytes(values);
    }

    const int index = linears++;
    auto *step = addStep()->mutable_linear();
    step->set_index(index);
    uint32_t in;
    if (!valueId(op, op.getInput(), "input", in))
      return false;
    step->set_input(in);
    int64_t residual = -1;
    if (Value r = op.getResidual()) {
      uint32_t id;
      if (!valueId(op, r, "residual", id))
        return false;
      residual = id;
    }
    step->set_residual(residual);
    static const char *const kSlotNames[MOERT_LIN_SLOTS] = {"w",    "scales", "offsets",
                                                            "bias", "norm_w", "norm_b"};
    uint64_t bytes = 0;
    for (int slot = 0; slot < MOERT_LIN_SLOTS; ++slot) {
      std::vector<char> &b = packed.slots[slot];
      bytes += b.size();
      step->add_weight_sections(b.empty() ? -1
                                          : writer.addSection("l" + std::to_string(index) + "." + kSlotNames[slot],
                                                              pb::Section::WEIGHTS, std::move(b)));
    }
    step->set_k(k);
    step->set_n(n);
    step->set_weight_bytes(bytes);
    // The outputs' columns (several: projections of one input merged by moe-raise-linear).
    std::vector<int64_t> split{0};
    for (Value r : op.getOutputs())
      split.push_back(split.back() + cast<RankedTensorType>(r.getType()).getShape().back());
    if (split.back() != n)
      return fail(op, "its results' last dims add up to " + Twine(split.back()) + ", not N = " + Twine(n));
    std::string desc;
    llvm::raw_string_ostream ds(desc);
    ds << "linear K=" << k << " N=" << n;
    for (size_t j = 1; split.size() > 2 && j < split.size(); ++j)
      ds << (j == 1 ? " (" : " + ") << split[j] - split[j - 1] << (j + 1 == split.size() ? ")" : "");
    ds << " " << moe::stringifyStorage(op.getStorage());
    if (qbits)
      ds << "/" << block << (qa ? " (kept as imported" + std::string(affine ? ", zero points)" : ")") : "");
    if (qbits && op.getInt8Activations())
      ds << ", int8 activations";
    const bool bf16Act = storage == MOERT_STORAGE_BF16 && op.getBf16Activations();
    if (bf16Act)
      ds << ", bf16 activations";
    if (norm)
      ds << ", " << (op.getNorm() == moe::NormKind::rms ? "rms" : "layer") << " norm";
    if (op.getBias())
      ds << ", bias";
    if (op.getResidual())
      ds << ", residual";
    if (auto src = op->getAttrOfType<StringAttr>("moe.source"))
      ds << " (" << src.getValue() << ")";
    step->set_description(desc);
    for (auto [j, r] : llvm::enumerate(op.getOutputs())) {
      uint32_t outId;
      if (!addValue(op, r, "linear" + std::to_string(index) + (j ? "." + std::to_string(j) : ""), outId))
        return false;
      step->add_outputs(outId);
      step->add_output_columns(split[j + 1] - split[j]);
    }
    if (progress && bytes >= (16u << 20))
      *progress << "moec: linear " << index << ": " << desc << " (" << llvm::format("%.1f", bytes / 1048576.0)
                << " MiB packed in "
                << llvm::format("%.2f", std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count())
                << " s)\n";

    auto b = [](bool v) { return v ? "true" : "false"; };
    const char *w = storage == MOERT_STORAGE_BF16 ? "uint16_t" : storage == MOERT_STORAGE_F16 ? "_Float16"
                    : qbits                       ? "uint8_t"
                                                  : "float";
    std::string config;
    llvm::raw_string_ostream os(config);
    os << "  using W = " << w << ";\n"
       << "  static constexpr int64_t K = " << k << ", N = " << n << ", QBLOCK = " << (qbits ? block : k)
       << ";\n"
       << "  static constexpr int QBITS = " << qbits << ";\n"
       << "  static constexpr bool SCALE16 = " << b(scale16) << ";\n"
       << "  static constexpr bool AFFINE = " << b(affine) << ", HAS_BIAS = " << b(op.getBias() != nullptr)
       << ", INT8_ACT = " << b(qbits && op.getInt8Activations()) << ", BF16_ACT = " << b(bf16Act)
       << ", HAS_NORM_BIAS = " << b(op.getNormBias() != nullptr) << ";\n"
       << "  static constexpr int NORM = " << static_cast<int>(op.getNorm()) << ";\n"
       << "  static constexpr float EPS = " << floatLit(op.getNormEpsilon().convertToDouble()) << ";\n"
       << "  static constexpr int NOUT = " << split.size() - 1 << ";\n"
       << "  static constexpr int64_t SPLIT[NOUT + 1] = {";
    for (size_t j = 0; j < split.size(); ++j)
      os << (j ? ", " : "") << split[j];
    os << "};\n";
    // Layers alike (the same projection in every decoder layer) share one config: one instantiation.
    auto [it, fresh] = linearConfigs.try_emplace(config, "L" + std::to_string(index));
    const std::string &name = it->second;
    llvm::raw_string_ostream src(source);
    src << "\n// linear " << index << ": " << desc << "\n";
    if (fresh)
      src << "namespace {\nstruct " << name << " {\n" << config << "};\n}\n";
    src << "extern \"C\" MOERT_EXPORT int moert_linear_" << index << "(const moert_linear_args *a) { return "
        << "moert_cpu::Linear<" << name << ">::run(a); }\n"
        << "extern \"C\" MOERT_EXPORT uint64_t moert_linear_" << index << "_weight_bytes(int slot) { return "
        << "moert_cpu::Linear<" << name << ">::weightBytes(slot); }\n"
        << "extern \"C\" MOERT_EXPORT size_t moert_linear_" << index
        << "_scratch(int64_t rows, int threads) { return "
        << "moert_cpu::Linear<" << name << ">::scratch(rows, threads); }\n"
        << "extern \"C\" MOERT_EXPORT int64_t moert_linear_" << index
        << "_dims(int which) { return which == 0 ? " << k << " : which == 1 ? " << n << " : which == 2 ? "
        << name << "::NOUT : which >= 3 && which - 3 < " << name << "::NOUT ? " << name
        << "::SPLIT[which - 2] - " << name << "::SPLIT[which - 3] : -1; }\n";
    if (opts.gpu()) {
      gpuSource += "\n// linear " + std::to_string(index) + ": " + desc + "\n";
      if (fresh)
        gpuSource += "namespace {\nstruct " + name + " {\n" + config + "};\n}\n";
      for (const char *k : {"norm", "gemv", "reduce", "gemm"})
        if (norm || std::string(k) != "norm")
          gpuSource += "MOERT_GPU_KERNEL(moert_gpu_lin_" + std::to_string(index) + "_" + k +
                       ", moert_gpu_linear_args, moert_gpu::LinearKernels<" + name + ">::" + k + ")\n";
      auto *g = step->mutable_gpu();
      g->set_qbits(qbits);
      g->set_norm(norm);
    }
    return true;
  }

  /// A `moe.attention`: a config struct instantiating kernels/cpu/attention.h, and an attention step.
  bool emitAttention(moe::AttentionOp op) {
    auto qT = op.getQuery().getType(), kT = op.getKey().getType(), vT = op.getValue().getType();
    const int64_t hq = qT.getDimSize(1), hkv = kT.getDimSize(1), dk = qT.getDimSize(3), dv = vT.getDimSize(3);
    if (dk > 1024 || dv > 1024 || hq / hkv > 1024)
      return fail(op, "attention with head dims " + Twine(dk) + " / " + Twine(dv) + " and " +
                          Twine(hq / hkv) +
                          " query heads per key/value head: the CPU kernel takes up to 1024 of each");
    const int index = attentions++;
    auto *step = addStep()->mutable_attention();
    step->set_index(index);
    uint32_t q, k, v;
    if (!valueId(op, op.getQuery(), "query", q) || !valueId(op, op.getKey(), "key", k) ||
        !valueId(op, op.getValue(), "value", v))
      return false;
    step->set_query(q);
    step->set_key(k);
    step->set_value(v);
    int64_t mask, sinks;
    if (!optionalId(op, op.getMask(), "mask", mask) || !optionalId(op, op.getSinks(), "sinks", sinks))
      return false;
    step->set_mask(mask);
    step->set_sinks(sinks);
    step->set_q_heads(hq);
    step->set_kv_heads(hkv);
    step->set_key_dim(dk);
    step->set_value_dim(dv);
    step->set_transpose_output(op.getTransposeOutput());
    const float scale = op.getScale().convertToFloat();
    std::string desc;
    llvm::raw_string_ostream ds(desc);
    ds << "attention " << hq << " query / " << hkv << " key-value heads, head dims " << dk;
    if (dv != dk)
      ds << " / " << dv;
    ds << ", scale " << llvm::format("%.6g", scale) << (mask >= 0 ? ", mask" : "")
       << (sinks >= 0 ? ", sinks" : "") << (op.getNanToZero() ? ", masked rows 0" : "");
    if (const float c = op.getSoftcap().convertToFloat(); c > 0.0f)
      ds << ", softcap " << llvm::format("%.6g", c);
    const bool bf16Act = op.getBf16Activations(); // an even key head dim (the op's verifier)
    if (bf16Act)
      ds << ", bf16 activations over bf16 caches";
    if (op.getTransposeOutput())
      ds << ", output [B, S, H, D]";
    if (auto src = op->getAttrOfType<StringAttr>("moe.source"))
      ds << " (" << src.getValue() << ")";
    step->set_description(desc);
    uint32_t outId;
    if (!addValue(op, op.getResult(), "attention" + std::to_string(index), outId))
      return false;
    step->set_output(outId);
    llvm::raw_string_ostream os(source);
    const std::string fn = "moert_attention_" + std::to_string(index);
    std::string config;
    llvm::raw_string_ostream cs(config);
    cs << "  static constexpr int64_t HQ = " << hq << ", HKV = " << hkv << ", DK = " << dk << ", DV = " << dv
       << ";\n"
       << "  static constexpr float SCALE = " << floatLit(scale) << ";\n"
       << "  static constexpr bool NAN_ZERO = " << (op.getNanToZero() ? "true" : "false") << ";\n"
       << "  static constexpr float SOFTCAP = " << floatLit(op.getSoftcap().convertToFloat()) << ";\n"
       << "  static constexpr bool BF16_ACT = " << (bf16Act ? "true" : "false") << ";\n";
    auto [it, fresh] = attentionConfigs.try_emplace(config, "A" + std::to_string(index));
    const std::string &name = it->second;
    os << "\n// attention " << index << ": " << desc << "\n";
    if (fresh)
      os << "namespace {\nstruct " << name << " {\n" << config << "};\n}\n";
    os << "extern \"C\" MOERT_EXPORT int " << fn << "(const moert_attention_args *a) { return "
       << "moert_cpu::Attention<" << name << ">::run(a); }\n"
       << "extern \"C\" MOERT_EXPORT size_t " << fn
       << "_scratch(int64_t b, int64_t s, int64_t t, int threads) { return moert_cpu::Attention<" << name
       << ">::scratch(b, s, t, threads); }\n"
       << "extern \"C\" MOERT_EXPORT int64_t " << fn << "_dims(int which) { return which == 0 ? " << hq
       << " : which == 1 ? " << hkv << " : which == 2 ? " << dk << " : " << dv << "; }\n";
    if (opts.gpu()) { // the same config instantiates kernels/hip/attention_gpu.h
      gpuSource += "\n// attention " + std::to_string(index) + ": " + desc + "\n";
      if (fresh)
        gpuSource += "namespace {\nstruct " + name + " {\n" + config + "};\n}\n";
      for (const char *k : {"attend", "attend_bf16", "attend_f16", "merge"})
        gpuSource += "MOERT_GPU_KERNEL(moert_gpu_attn_" + std::to_string(index) + "_" + k +
                     ", moert_gpu_attention_args, moert_gpu::AttentionKernels<" + name + ">::" + k + ")\n";
      step->set_gpu(true);
    }
    return true;
  }

  /// A constant program value of `dims` stored in its own WEIGHTS section (packed bytes no MLIR value holds).
  uint32_t packedConstant(const std::string &name, pb::DType dtype, std::initializer_list<int64_t> dims,
                          std::vector<char> bytes) {
    auto *val = program->add_values();
    val->set_name(name);
    val->mutable_type()->set_dtype(dtype);
    for (int64_t d : dims)
      val->mutable_type()->add_dims()->set_size(d);
    val->set_constant_section(writer.addSection(name, pb::Section::WEIGHTS, std::move(bytes)));
    return program->values_size() - 1;
  }

  /// A `moe.embedding`: the table packed in the op's storage (moert_kernel_abi.h, MOERT_EMBED_*) and a
  /// `moec.Embedding` step, run by libmoert (a row copy needs no generated code).
  bool emitEmbedding(moe::EmbeddingOp op) {
    auto tT = op.getTable().getType();
    const int64_t v = tT.getDimSize(0), h = tT.getDimSize(1);
    if (ShapedType::isDynamic(v) || ShapedType::isDynamic(h) || v <= 0 || h <= 0)
      return fail(op, "an embedding table needs a static, non-empty [V, H] shape");
    if (v > (int64_t(1) << 40) / h)
      return fail(op, "embedding table [" + Twine(v) + ", " + Twine(h) + "]: larger than an artifact holds");
    const moert_storage storage = moert_storage(op.getStorage());
    const bool quantised = storage == MOERT_STORAGE_INT8 || storage == MOERT_STORAGE_INT4;
    const int64_t block = int64_t(op.getBlockSize());
    if (quantised && (block < 16 || block % 8))
      return fail(op, "quantisation blocks of " + Twine(block) + " values (need a multiple of 8, >= 16)");
    std::vector<float> copy;
    F32Span t;
    if (!f32Operand(op.getTable(), "table", copy, t, error))
      return fail(op, error);
    if (int64_t(t.size()) != v * h)
      return fail(op,
                  "operand 'table' holds " + Twine(t.size()) + " values, expected V * H = " + Twine(v * h));
    PackedTable packed = packEmbedding(t, v, h, storage, block);
    std::vector<float>().swap(copy);
    const std::string base = "embed" + std::to_string(program->values_size());
    const pb::DType rowType = storage == MOERT_STORAGE_F32    ? pb::F32
                              : storage == MOERT_STORAGE_BF16 ? pb::BF16
                              : storage == MOERT_STORAGE_F16  ? pb::F16
                                                              : pb::U8;
    const uint64_t bytes = packed.rows.size() + packed.scales.size();
    auto *step = addStep()->mutable_op();
    step->set_op("moec.Embedding");
    step->add_inputs(packedConstant(base + ".rows", rowType, {v, rowType == pb::U8 ? packed.rowBytes : h},
                                    std::move(packed.rows)));
    const int64_t nb = (h + block - 1) / block;
    step->add_inputs(
        quantised ? int64_t(packedConstant(base + ".scales", pb::F32, {v, nb}, std::move(packed.scales)))
                  : int64_t(-1));
    uint32_t idx;
    if (!valueId(op, op.getIndices(), "indices", idx))
      return false;
    step->add_inputs(idx);
    intAttr(step, "storage", storage);
    intAttr(step, "block", quantised ? block : h);
    intAttr(step, "width", h);
    uint32_t outId;
    if (!addValue(op, op.getResult(), base, outId))
      return false;
    step->add_outputs(outId);
    if (progress && bytes >= (16u << 20))
      *progress << "moec: embedding " << v << " x " << h << " " << moe::stringifyStorage(op.getStorage())
                << " (" << llvm::format("%.1f", bytes / 1048576.0) << " MiB)\n";
    return true;
  }

  /// A `moe.kv_cache_update`: a `moec.KvCacheUpdate` step (inputs as moert_kernel_abi.h's MOERT_KV_UPDATE_*
  /// say), run by libmoert, in place when a session owns the cache.
  bool emitKvCacheUpdate(moe::KvCacheUpdateOp op) {
    std::pair<Value, const char *> operands[MOERT_KV_UPDATE_INPUTS];
    operands[MOERT_KV_UPDATE_FRESH] = {op.getFresh(), "fresh"};
    operands[MOERT_KV_UPDATE_PAST_LENGTHS] = {op.getPastLengths(), "past_lengths"};
    operands[MOERT_KV_UPDATE_LENGTH] = {op.getLength(), "length"};
    operands[MOERT_KV_UPDATE_PAST] = {op.getPast(), "past"};
    return emitRuntimeStep(op, "moec.KvCacheUpdate", operands, op.getPresent()) != nullptr;
  }

  /// A step `name` run by libmoert (no generated code) with `operands` as its inputs in order (null: an
  /// optional one left out, -1) and `result` as its output.
  pb::OpStep *emitRuntimeStep(Operation *op, const char *name,
                              ArrayRef<std::pair<Value, const char *>> operands, Value result) {
    auto *step = addStep()->mutable_op();
    step->set_op(name);
    for (auto [v, what] : operands) {
      int64_t id;
      if (!optionalId(op, v, what, id))
        return nullptr;
      step->add_inputs(id);
    }
    uint32_t outId;
    if (!addValue(op, result, "v" + std::to_string(program->values_size()), outId))
      return nullptr;
    step->add_outputs(outId);
    return step;
  }

  static void intAttr(pb::OpStep *step, const char *name, int64_t value) {
    pb::Attribute *a = step->add_attributes();
    a->set_name(name);
    a->set_kind(pb::Attribute::INT);
    a->add_ints(value);
  }

  static void floatAttr(pb::OpStep *step, const char *name, double value) {
    pb::Attribute *a = step->add_attributes();
    a->set_name(name);
    a->set_kind(pb::Attribute::FLOAT);
    a->add_floats(value);
  }

  /// A `moe.norm`: libmoert's `moec.Norm` step (inputs as moert_kernel_abi.h's MOERT_NORM_* say).
  bool emitNorm(moe::NormOp op) {
    std::pair<Value, const char *> operands[MOERT_NORM_INPUTS];
    operands[MOERT_NORM_INPUT] = {op.getInput(), "input"};
    operands[MOERT_NORM_WEIGHT] = {op.getWeight(), "weight"};
    operands[MOERT_NORM_BIAS] = {op.getBias(), "bias"};
    pb::OpStep *step = emitRuntimeStep(op, "moec.Norm", operands, op.getOutput());
    if (!step)
      return false;
    intAttr(step, "kind", int64_t(op.getKind()));
    floatAttr(step, "epsilon", op.getEpsilon().convertToDouble());
    return true;
  }

  /// A `moe.rotary`: libmoert's `moec.Rotary` step (inputs as moert_kernel_abi.h's MOERT_ROTARY_* say).
  bool emitRotary(moe::RotaryOp op) {
    std::pair<Value, const char *> operands[MOERT_ROTARY_INPUTS];
    operands[MOERT_ROTARY_INPUT] = {op.getInput(), "input"};
    operands[MOERT_ROTARY_COS] = {op.getCos(), "cos"};
    operands[MOERT_ROTARY_SIN] = {op.getSin(), "sin"};
    operands[MOERT_ROTARY_NORM_WEIGHT] = {op.getNormWeight(), "norm_weight"};
    pb::OpStep *step = emitRuntimeStep(op, "moec.Rotary", operands, op.getOutput());
    if (!step)
      return false;
    intAttr(step, "rotary_dim", op.getRotaryDim());
    intAttr(step, "interleaved", op.getInterleaved() ? 1 : 0);
    if (op.getDeinterleave())
      intAttr(step, "deinterleave", 1);
    intAttr(step, "seq_axis", op.getSeqAxis());
    intAttr(step, "transpose", op.getTranspose() ? 1 : 0);
    floatAttr(step, "norm_epsilon", op.getNormEpsilon().convertToDouble());
    return true;
  }

  bool emitFunction(func::FuncOp fn) {
    for (auto [i, arg] : llvm::enumerate(fn.getArguments())) {
      // Tensors need a rank (a sequence's tensors may each have their own).
      if (isa<TensorType>(arg.getType()) && !isa<RankedTensorType>(arg.getType()))
        return fail(fn, "graph input " + Twine(i) + " has an unranked type");
      std::string name = "input" + std::to_string(i);
      if (auto n = fn.getArgAttrOfType<StringAttr>(i, "onnx.name"))
        name = n.getValue().str();
      uint32_t id;
      if (!addValue(fn, arg, name, id, fn.getArgAttrOfType<ArrayAttr>(i, "onnx.dim_params")))
        return false;
      program->add_inputs(id);
      auto window = fn.getArgAttrOfType<IntegerAttr>(i, "moe.window_cache");
      inputWindows.push_back(window ? window.getInt() : 0);
    }
    // Weights stream through: while an op's weights are packed the kernel reads the next op's ahead, and once
    // packed (written to the artifact) their pages leave this process. Progress counts the bytes read.
    std::vector<Operation *> ops;
    for (Operation &op : fn.getBody().front())
      ops.push_back(&op);
    llvm::DenseSet<Value> counted; // each constant counted once, by its first reader
    auto weightBytes = [&](Operation *op) {
      uint64_t bytes = 0;
      for (Value v : op->getOperands())
        if (v.getDefiningOp() && v.getDefiningOp()->hasTrait<OpTrait::ConstantLike>())
          if (auto t = dyn_cast<RankedTensorType>(v.getType());
              t && t.hasStaticShape() && t.getElementType().isIntOrFloat() && counted.insert(v).second)
            bytes += uint64_t(t.getNumElements()) * std::max(8u, t.getElementTypeBitWidth()) / 8;
      return bytes;
    };
    uint64_t weightTotal = 0, weightDone = 0;
    for (Operation *op : ops)
      weightTotal += weightBytes(op);
    counted.clear();
    const auto start = std::chrono::steady_clock::now();
    auto lastReport = start;
    bool reportedAll = false;
    for (size_t i = 0; i < ops.size(); ++i) {
      Operation &op = *ops[i];
      if (i + 1 < ops.size())
        for (Value v : ops[i + 1]->getOperands())
          prefetchConstantPages(v);
      if (auto ret = dyn_cast<func::ReturnOp>(op)) {
        if (!emitReturn(fn, ret))
          return false;
      } else if (!emitOp(op)) {
        return false;
      }
      if (std::string e = writer.error(); !e.empty()) { // a full disk: say so now, not after packing the rest
        error = e;
        return false;
      }
      for (Value v : op.getOperands())
        releaseConstantPages(v);
      weightDone += weightBytes(&op);
      const auto now = std::chrono::steady_clock::now();
      const bool last = weightDone == weightTotal && !reportedAll && lastReport != start;
      if (progress && weightTotal >= (uint64_t(1) << 30) &&
          (last || (weightDone < weightTotal && now - lastReport > std::chrono::seconds(5)))) {
        lastReport = now;
        reportedAll = last;
        const double secs = std::chrono::duration<double>(now - start).count(), rate = weightDone / secs;
        *progress << "moec: weights " << llvm::format("%.2f", weightDone / 1073741824.0) << " / "
                  << llvm::format("%.2f", weightTotal / 1073741824.0) << " GiB packed ("
                  << llvm::format("%.0f", 100.0 * weightDone / weightTotal) << "%, "
                  << llvm::format("%.0f", rate / 1e6) << " MB/s)";
        if (weightDone < weightTotal)
          *progress << ", about " << llvm::format("%.0f", (weightTotal - weightDone) / rate) << " s left";
        *progress << "\n";
      }
    }
    return true;
  }

  /// One op of the function or of a control-flow region: a dispatch or an op step.
  bool emitOp(Operation &op) {
    if (op.hasTrait<OpTrait::ConstantLike>())
      return true;
    if (auto m = dyn_cast<moe::SparseMoEOp>(op))
      return emitMoE(m);
    if (auto l = dyn_cast<moe::LinearOp>(op))
      return emitLinear(l);
    if (auto e = dyn_cast<moe::EmbeddingOp>(op))
      return emitEmbedding(e);
    if (auto at = dyn_cast<moe::AttentionOp>(op))
      return emitAttention(at);
    if (auto kv = dyn_cast<moe::KvCacheUpdateOp>(op))
      return emitKvCacheUpdate(kv);
    if (auto n = dyn_cast<moe::NormOp>(op))
      return emitNorm(n);
    if (auto r = dyn_cast<moe::RotaryOp>(op))
      return emitRotary(r);
    if (emitGraphOp(&op))
      return true;
    if (!error.empty())
      return false;
    return fail(&op, "op '" + op.getName().getStringRef() + "' has no CPU code generation");
  }

  bool emitReturn(func::FuncOp fn, func::ReturnOp ret) {
    for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
      uint32_t id;
      if (!valueOrConstant(ret, v, "output " + std::to_string(i), id))
        return false;
      std::string name = "output" + std::to_string(i);
      if (auto n = fn.getResultAttrOfType<StringAttr>(i, "onnx.name"))
        name = n.getValue().str();
      // Outputs are named after the graph's outputs. A value that is also an input, another output or
      // a constant gets its own copy (an Identity step), so each output has its own name.
      bool shared = program->values(id).has_constant_section() || llvm::is_contained(program->inputs(), id) ||
                    llvm::is_contained(program->outputs(), id);
      if (shared) {
        auto *step = addStep()->mutable_op();
        step->set_op("Identity");
        step->add_inputs(id);
        auto *val = program->add_values();
        *val = program->values(id);
        val->clear_constant_section();
        id = program->values_size() - 1;
        step->add_outputs(id);
      }
      program->mutable_values(id)->set_name(name);
      program->add_outputs(id);
    }
    return true;
  }
};

/// Marks a decoder with KV caches (Program.decoder) when the graph has input_ids, logits and past/present
/// pairs under the names exporters use, each past a rank-4 f32 [B, heads, past, head dim].
void recordDecoder(pb::Program &p, ArrayRef<int64_t> inputWindows) {
  auto nameOf = [&](uint32_t id) -> const std::string & { return p.values(id).name(); };
  auto find = [&](const auto &ids, const std::string &name) -> int {
    for (int i = 0; i < ids.size(); ++i)
      if (nameOf(ids[i]) == name)
        return i;
    return -1;
  };
  const int ids = find(p.inputs(), "input_ids");
  int logits = find(p.outputs(), "logits");
  if (ids < 0 || logits < 0)
    return;
  pb::Decoder d;
  d.set_input_ids(ids);
  d.set_attention_mask(find(p.inputs(), "attention_mask"));
  d.set_position_ids(find(p.inputs(), "position_ids"));
  d.set_logits(logits);
  for (int i = 0; i < p.inputs_size(); ++i) {
    const std::string &name = nameOf(p.inputs(i));
    if (name.rfind("past_key_values.", 0) != 0)
      continue;
    std::string present = "present." + name.substr(std::strlen("past_key_values."));
    int o = find(p.outputs(), present);
    const auto &t = p.values(p.inputs(i)).type();
    if (o < 0 || t.dtype() != pb::F32 || t.dims_size() != 4)
      return; // a past without its present, or of another form: not a decoder the session API drives
    auto *c = d.add_caches();
    c->set_past(i);
    c->set_present(o);
    if (i < static_cast<int>(inputWindows.size()))
      c->set_window(inputWindows[i]);
  }
  if (d.caches_size() > 0)
    *p.mutable_decoder() = std::move(d);
}

std::string findCompiler(const CpuOptions &o) {
  // --cxx or $MOEC_CXX; a bare name (no '/') is looked up on PATH, as a shell would
  auto onPath = [](std::string c) {
    if (c.find('/') == std::string::npos)
      if (auto p = llvm::sys::findProgramByName(c))
        return *p;
    return c;
  };
  if (!o.cxx.empty())
    return onPath(o.cxx);
  if (const char *env = std::getenv("MOEC_CXX"))
    return onPath(env);
  if (auto p = llvm::sys::findProgramByName("clang++-19"))
    return *p;
  if (llvm::sys::fs::can_execute("/usr/lib/llvm-19/bin/clang++"))
    return "/usr/lib/llvm-19/bin/clang++";
  return "";
}

} // namespace

std::vector<std::string> moec::codegen::knownCpus() {
  std::vector<std::string> out{"native"};
  for (const auto &c : cpuTable())
    out.push_back(c.name);
  return out;
}

bool moec::codegen::compileCpuArtifact(ModuleOp module, const CpuOptions &options, StringRef outPath,
                                       StringRef sourceModel, std::string &error, raw_ostream *progress) {
  std::vector<std::string> features;
  if (options.cpu == "native") {
    features = hostFeatures();
  } else {
    const CpuInfo *info = nullptr;
    for (const auto &c : cpuTable())
      if (options.cpu == c.name)
        info = &c;
    if (!info) {
      error = "--cpu=" + options.cpu + " is not a CPU this build knows (" + llvm::join(knownCpus(), ", ") + ")";
      return false;
    }
    features = info->features;
  }

  func::FuncOp entry;
  module.walk([&](func::FuncOp fn) {
    if (!entry && !fn.isPrivate())
      entry = fn;
  });
  if (!entry) {
    error = "the module has no public function to compile";
    return false;
  }
  Emitter em(options, progress);
  if (!em.writer.open(outPath, error))
    return false;
  // (The model's name is not in it: models with the same dispatches share the kernel cache's code.)
  em.source = "// Generated by moec: one exported function per dispatch.\n#include "
              "\"sparse_moe.h\"\n#include \"linear.h\"\n"
              "#include \"attention.h\"\n"
              "#define MOERT_EXPORT __attribute__((visibility(\"default\")))\n"
              "extern \"C\" MOERT_EXPORT uint32_t moert_kernel_abi_version(void) { return "
              "MOERT_KERNEL_ABI_VERSION; }\n";
  if (!em.emitFunction(entry)) {
    error = em.error;
    return false;
  }
  if (options.expertParallel && em.dispatches == 0) {
    error = "--expert-parallel: the model has no fused MoE layer whose experts could be split (moec compile "
            "--report says why a layer was not fused)";
    return false;
  }
  recordDecoder(*em.program, em.inputWindows);
  planMemory(*em.program);
  if (progress)
    *progress << "moec: " << em.dispatches << " MoE dispatch" << (em.dispatches == 1 ? "" : "es") << ", "
              << em.linears << " linear dispatch" << (em.linears == 1 ? "" : "es") << ", " << em.attentions
              << " attention dispatch" << (em.attentions == 1 ? "" : "es") << ", "
              << llvm::format("%.2f", em.writer.sectionBytes(pb::Section::WEIGHTS) / 1048576.0)
              << " MiB of packed weights\n";

  auto &meta = em.writer.meta();
  meta.set_producer("moec 0.1.0");
  meta.set_target("cpu");
  meta.set_cpu(options.cpu);
  meta.set_expert_parallel(uint32_t(options.expertParallel));
  if (options.expertParallel)
    meta.set_expert_wire(options.expertWireBf16 ? pb::BF16 : pb::F32);
  if (!options.tokenizerJson.empty())
    meta.set_tokenizer_json(options.tokenizerJson);
  meta.set_kernel_abi(MOERT_KERNEL_ABI_VERSION);
  meta.set_source_model(llvm::sys::path::filename(sourceModel).str());
  meta.set_code_section(-1);
  // A GPU target: the graph ops' kernels (and each dispatch's), for every model.
  auto gpuCode = [&](const std::string &cxx, const KernelCache &cache) {
    if (std::string crossings = gpuCrossings(*em.program); !crossings.empty() && progress)
      *progress << "moec: note: " << crossings << "\n";
    GpuBuild gb{options.hipArchs,
                options.cudaArchs,
                options.emuArchs,
                cxx,
                options.dumpKernelsDir,
                options.sanitizers,
                cache};
    return compileGpuCode(gb, em.gpuSource, em.writer, error, progress);
  };
  if (em.dispatches == 0 && em.linears == 0 && em.attentions == 0 &&
      options.dumpKernelsDir.empty()) { // only graph ops: libmoert's kernels run them all on the CPU
    if (options.gpu()) {
      std::string cxx = findCompiler(options);
      if (cxx.empty()) {
        error = "no clang for the GPU kernels: install clang-19 (Debian: clang-19) or set MOEC_CXX";
        return false;
      }
      if (!gpuCode(cxx, KernelCache::open(options.kernelCache)))
        return false;
    }
    return em.writer.finish(error);
  }
  for (const auto &f : features)
    meta.add_cpu_features(f);
  // Sources into a private directory, compiled to one shared object.
  SmallString<128> dir;
  if (auto ec = llvm::sys::fs::createUniqueDirectory("moec-cpu", dir)) {
    error = "cannot create a temporary directory: " + ec.message();
    return false;
  }
  auto cleanup = llvm::make_scope_exit([&] { llvm::sys::fs::remove_directories(dir); });
  std::vector<std::pair<std::string, std::string>> files;
  for (const auto &[name, text] : kKernelSources)
    files.emplace_back(name, text);
  files.emplace_back("dispatches.cpp", em.source);
  if (!stageSources(dir, files, options.dumpKernelsDir, error))
    return false;
  std::string cxx = findCompiler(options);
  if (cxx.empty()) {
    error = "no C++ compiler for the CPU kernels: install clang-19 (Debian: clang-19) or set MOEC_CXX";
    return false;
  }
  SmallString<128> src(dir), so(dir), log(dir);
  llvm::sys::path::append(src, "dispatches.cpp");
  llvm::sys::path::append(so, "code.so");
  llvm::sys::path::append(log, "compile.log");
  std::string march = "-march=" + options.cpu;
  SmallVector<StringRef> args{cxx, "-std=c++17", "-O3", march, "-fPIC", "-shared", "-fopenmp-simd",
                              "-fno-exceptions", "-fno-rtti", "-fvisibility=hidden", "-fno-math-errno",
                              "-w", "-o", so, src};
  std::vector<std::string> sanitize = sanitizerFlags(options.sanitizers);
  args.append(sanitize.begin(), sanitize.end());
  for (const auto &s : options.sanitizers)
    meta.add_sanitizers(s);
  const KernelCache cache = KernelCache::open(options.kernelCache);
  std::string host; // -march=native means this CPU: its name and features are part of the cache key
  if (options.cpu == "native") {
    host = llvm::sys::getHostCPUName().str();
    std::vector<std::string> on;
    for (const auto &f : llvm::sys::getHostCPUFeatures())
      if (f.second)
        on.push_back(f.first().str());
    std::sort(on.begin(), on.end());
    for (const auto &f : on)
      host += " +" + f;
  }
  std::vector<char> bytes;
  KernelCompileResult r = compileOrReuse(cache,
                                         {cxx, args, dir, &files, so, log, host,
                                          [&] {
                                            if (progress)
                                              *progress << "moec: compiling the CPU kernels (" << march
                                                        << ") with " << cxx << "\n";
                                          }},
                                         bytes);
  if (r.rc != 0) {
    std::string first = r.rc > 0 ? firstErrorLine(log) : "";
    error = "compiling the CPU kernels failed (" +
            (r.execError.empty() ? "exit " + std::to_string(r.rc) : r.execError) + ")" +
            (first.empty() ? "" : ": " + first);
    return false;
  }
  if (progress && r.reused)
    *progress << "moec: the CPU kernels (" << march << ") from the kernel cache (" << cache.dir << ")\n";
  meta.set_code_section(em.writer.addSection("code", pb::Section::CODE, std::move(bytes)));
  if (options.gpu() && !gpuCode(cxx, cache))
    return false;
  return em.writer.finish(error);
}
