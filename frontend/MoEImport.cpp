//===- MoEImport.cpp - MoE ops of ONNX Runtime and moec -> moe.sparse_moe --===//
//
// com.microsoft.MoE, com.microsoft.QMoE (ONNX Runtime contrib ops, semantics in docs/onnx-support.md) and
// moec.SparseMoE (our own op, docs/ops.md) each become one moe.sparse_moe. Differences in layout are
// settled here: a separate fc3 (up projection) is concatenated after fc1 (block layout), QMoE's zero points
// are folded into its codes, 3-D inputs are flattened to [tokens, hidden] and the result reshaped back.
//
//===----------------------------------------------------------------------===//
#include "frontend/GraphBuilder.h"
#include "frontend/NodeImporter.h"
#include "ir/Constants.h"
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"

#include "onnx/onnx_pb.h"

#include <cmath>
#include <cstring>

using namespace mlir;
using namespace moec::frontend;
namespace moe = moec::moe;
namespace ox = moec::onnxir;

namespace {

/// Operands of moe.sparse_moe in ODS order; null = absent.
using MoEOperands = moe::SparseMoEOperands;

/// Reads the node's inputs into `ops`: input i goes to `fields[i]` (null: an input the importer handles
/// elsewhere or not at all).
using Field = Value MoEOperands::*;
MoEOperands readInputs(NodeImporter &ni, std::initializer_list<Field> fields) {
  MoEOperands ops;
  unsigned i = 0;
  for (Field f : fields) {
    if (f)
      ops.*f = ni.input(i);
    ++i;
  }
  return ops;
}

FailureOr<moe::Activation> parseActivation(NodeImporter &ni, StringRef name) {
  if (auto act = moe::symbolizeActivation(name))
    return *act;
  (void)ni.fail("activation '" + name +
                "' is not supported (identity, relu, gelu, gelu_tanh, silu, swiglu, geglu)");
  return failure();
}

/// Concatenates two [E, rows, K] (or [E, rows]) tensors along rows: a constant when both are (expert weights
/// must be constants to be packed into the artifact), else an onnx.Concat.
Value concatRows(NodeImporter &ni, Value a, Value b) {
  auto ta = cast<RankedTensorType>(a.getType()), tb = cast<RankedTensorType>(b.getType());
  SmallVector<int64_t> shape(ta.getShape());
  shape[1] =
      ta.isDynamicDim(1) || tb.isDynamicDim(1) ? ShapedType::kDynamic : ta.getDimSize(1) + tb.getDimSize(1);
  auto type = RankedTensorType::get(shape, ta.getElementType());
  std::vector<char> ba = moec::constantTensorBytes(a), bb = moec::constantTensorBytes(b);
  const int64_t experts = shape[0];
  if (type.hasStaticShape() && experts > 0 && !ba.empty() && !bb.empty() && ba.size() % experts == 0 &&
      bb.size() % experts == 0) {
    const size_t ca = ba.size() / experts, cb = bb.size() / experts; // per expert: a's rows, then b's
    std::vector<char> out;
    out.reserve(ba.size() + bb.size());
    for (int64_t e = 0; e < experts; ++e) {
      out.insert(out.end(), ba.begin() + e * ca, ba.begin() + (e + 1) * ca);
      out.insert(out.end(), bb.begin() + e * cb, bb.begin() + (e + 1) * cb);
    }
    return ni.constant(moec::elementsFromBytes(type, out, "fc1_fc3"));
  }
  return ni.builder().create<ox::ConcatOp>(ni.loc(), type, ValueRange{a, b},
                                           ni.builder().getI64IntegerAttr(1));
}

/// One QMoE weight (fc1, fc2 or fc3) with its zero points subtracted: code - zero point per weight, the
/// scale each reads, and whether every difference fits int8.
struct CentredWeight {
  int64_t experts = 0, rows = 0, k = 0, blocks = 0, block = 0;
  std::vector<int> centred;  // [E, rows, K]
  std::vector<float> scales; // [E, rows, blocks]
  bool fitsInt8 = true;

  /// As int8 codes [E, rows, K] (the same scales apply), or dequantized f32 weights [E, rows, K].
  Value materialize(NodeImporter &ni, StringRef what, bool asFloats) const {
    OpBuilder &b = ni.builder();
    if (!asFloats) {
      std::vector<char> bytes(centred.size());
      for (size_t i = 0; i < centred.size(); ++i)
        bytes[i] = char(int8_t(centred[i]));
      auto type = RankedTensorType::get({experts, rows, k}, b.getIntegerType(8));
      return ni.constant(moec::elementsFromBytes(type, bytes, (what + "_codes").str()));
    }
    std::vector<float> w(centred.size());
    for (int64_t r = 0; r < experts * rows; ++r)
      for (int64_t c = 0; c < k; ++c)
        w[r * k + c] = float(centred[r * k + c]) * scales[r * blocks + c / block];
    auto type = RankedTensorType::get({experts, rows, k}, b.getF32Type());
    return ni.constant(
        moec::elementsFromBytes(type, ArrayRef<char>(reinterpret_cast<const char *>(w.data()), w.size() * 4),
                                (what + "_dequantized").str()));
  }
};

/// QMoE's `codes` (uint8 [E, rows, K * bits / 8], low nibble first for 4 bits) minus their zero points `zp`
/// (uint8 in `scales`' shape, two 4-bit ones per byte along its last axis, as ONNX Runtime 1.31 reads them;
/// null: 2^(bits - 1)). Fails (reported) unless codes, scales and zero points are constants of matching
/// sizes.
FailureOr<CentredWeight> centreCodes(NodeImporter &ni, StringRef what, Value codes, Value scales, Value zp,
                                     int64_t bits, int64_t block) {
  auto ct = dyn_cast<RankedTensorType>(codes.getType());
  auto st = scales ? dyn_cast<RankedTensorType>(scales.getType()) : RankedTensorType();
  std::vector<char> cb = moec::constantTensorBytes(codes), sb = moec::constantTensorBytes(scales);
  std::vector<char> zb = zp ? moec::constantTensorBytes(zp) : std::vector<char>();
  if (!ct || ct.getRank() != 3 || !ct.hasStaticShape() || cb.empty() || !st || !st.hasStaticShape() ||
      sb.empty() || !st.getElementType().isF32() || (zp && zb.empty())) {
    (void)ni.fail("with zero points, " + what + "'s weights, scales and zero points must be constants");
    return failure();
  }
  CentredWeight out;
  const int64_t e = out.experts = ct.getDimSize(0), rows = out.rows = ct.getDimSize(1),
                k = out.k = ct.getDimSize(2) * 8 / bits;
  const int64_t nb = out.blocks = block > 0 ? (k + block - 1) / block : 1,
                blk = out.block = block > 0 ? block : k;
  if (int64_t(sb.size()) != e * rows * nb * 4) {
    (void)ni.fail(what + "_scales: " + Twine(sb.size() / 4) + " values for " + Twine(e * rows * nb) +
                  " (experts x rows x blocks)");
    return failure();
  }
  // Zero points are packed along the scales' last axis: [E, rows] per row, [E, rows, blocks] per block.
  const int64_t last = st.getShape().back(), outer = e * rows * nb / std::max<int64_t>(last, 1);
  const int64_t perOuter = bits == 4 ? (last + 1) / 2 : last;
  if (zp && int64_t(zb.size()) != outer * perOuter) {
    (void)ni.fail(what + "_zero_points: " + Twine(zb.size()) + " bytes, expected " + Twine(outer * perOuter) +
                  " (uint8 in the scales' shape" + (bits == 4 ? ", two per byte along its last axis)" : ")"));
    return failure();
  }
  auto zeroPoint = [&](int64_t scaleIndex) -> int {
    if (!zp)
      return 1 << (bits - 1);
    const int64_t o = scaleIndex / last, j = scaleIndex % last;
    if (bits == 8)
      return uint8_t(zb[o * last + j]);
    return (uint8_t(zb[o * perOuter + j / 2]) >> ((j & 1) * 4)) & 15;
  };
  out.centred.resize(e * rows * k);
  for (int64_t r = 0; r < e * rows; ++r)
    for (int64_t c = 0; c < k; ++c) {
      const int64_t i = r * k + c;
      const int code = bits == 8 ? int(uint8_t(cb[i])) : (uint8_t(cb[i / 2]) >> ((i & 1) * 4)) & 15;
      const int v = code - zeroPoint(r * nb + c / blk);
      out.fitsInt8 &= v >= -128 && v <= 127;
      out.centred[i] = v;
    }
  out.scales.resize(e * rows * nb);
  std::memcpy(out.scales.data(), sb.data(), sb.size());
  return out;
}

/// Builds moe.sparse_moe over `ops`, flattening a 3-D input to [tokens, hidden] and restoring its shape.
LogicalResult emitSparseMoE(NodeImporter &ni, MoEOperands ops, SmallVector<NamedAttribute> attrs,
                            StringRef source) {
  OpBuilder &b = ni.builder();
  for (auto [name, v] : {std::pair<StringRef, Value>{"input", ops.input},
                         {"router", ops.router},
                         {"fc1", ops.fc1},
                         {"fc2", ops.fc2}})
    if (!v)
      return ni.fail("input '" + name + "' is required");
  Value original = ops.input;
  auto inType = dyn_cast<RankedTensorType>(original.getType());
  if (!inType || (inType.getRank() != 2 && inType.getRank() != 3))
    return ni.fail("input must be a ranked 2-D [tokens, hidden] or 3-D [batch, sequence, hidden] tensor");
  int64_t hidden = inType.getShape().back();
  if (inType.getRank() == 3) {
    if (ShapedType::isDynamic(hidden))
      return ni.fail("a 3-D input needs a static hidden size");
    int64_t tokens = inType.isDynamicDim(0) || inType.isDynamicDim(1)
                         ? ShapedType::kDynamic
                         : inType.getDimSize(0) * inType.getDimSize(1);
    auto flat = RankedTensorType::get({tokens, hidden}, inType.getElementType());
    ops.input = b.create<ox::ReshapeOp>(ni.loc(), flat, ops.input, ni.constantI64({-1, hidden}),
                                        b.getI64IntegerAttr(0));
  }
  auto flatType = cast<RankedTensorType>(ops.input.getType());

  SmallVector<Value> operands;
  attrs.push_back(ops.flatten(b, operands));
  Operation *op = ni.createOp(moe::SparseMoEOp::getOperationName(), operands, attrs, {flatType});
  if (!op)
    return failure();
  op->setAttr("moe.source", b.getStringAttr(source)); // the form it came in, for `moec compile --report`
  Value result = op->getResult(0);
  if (inType.getRank() == 3) {
    auto shapeType = RankedTensorType::get({3}, b.getI64Type());
    Value shape = b.create<ox::ShapeOp>(ni.loc(), shapeType, original, b.getI64IntegerAttr(0), IntegerAttr());
    result = b.create<ox::ReshapeOp>(ni.loc(), inType, result, shape, b.getI64IntegerAttr(0));
  }
  ni.setOutputs(result);
  return success();
}

/// The routing and activation attributes ONNX Runtime's MoE and QMoE share, plus their fc1/fc3 layout.
LogicalResult ortCommon(NodeImporter &ni, MoEOperands &ops, Value fc3, Value fc3Bias, Value fc3Scales,
                        SmallVectorImpl<NamedAttribute> &attrs) {
  OpBuilder &b = ni.builder();
  if (intAttr(ni, "use_sparse_mixer", 0) != 0)
    return ni.fail("use_sparse_mixer=1 (SparseMixer routing) is not supported");
  auto act = parseActivation(ni, stringAttr(ni, "activation_type", "relu"));
  if (failed(act))
    return failure();
  if (*act == moe::Activation::geglu || *act == moe::Activation::gelu_tanh)
    return ni.fail("activation '" + moe::stringifyActivation(*act) +
                   "' is not an ONNX Runtime activation_type");
  // ONNX Runtime's MoE kernels compute "gelu" with the tanh approximation (checked against its output in
  // tests/reference/check_sparse_moe_reference.py), so that is what the model means.
  if (*act == moe::Activation::gelu)
    act = moe::Activation::gelu_tanh;
  int64_t fusion = intAttr(ni, "swiglu_fusion", 0);
  if (*act == moe::Activation::swiglu) {
    if (fusion == 1 || fusion == 2) {
      if (fc3)
        return ni.fail("fc3_experts_weights must be absent when swiglu_fusion=" + std::to_string(fusion));
      if (fusion == 1)
        attrs.push_back(b.getNamedAttr(
            "gated_layout", moe::GatedLayoutAttr::get(b.getContext(), moe::GatedLayout::interleaved)));
    } else if (fusion == 0) {
      if (!fc3)
        return ni.fail("swiglu with swiglu_fusion=0 needs fc3_experts_weights (the up projection)");
      if (bool(ops.fc1Bias) != bool(fc3Bias))
        return ni.fail("fc1_experts_bias and fc3_experts_bias must be given together");
      if (bool(ops.fc1Scales) != bool(fc3Scales))
        return ni.fail("fc1_scales and fc3_scales must be given together");
      // Gate rows (fc1) then up rows (fc3): the block layout.
      ops.fc1 = concatRows(ni, ops.fc1, fc3);
      if (ops.fc1Bias)
        ops.fc1Bias = concatRows(ni, ops.fc1Bias, fc3Bias);
      if (ops.fc1Scales)
        ops.fc1Scales = concatRows(ni, ops.fc1Scales, fc3Scales);
    } else {
      return ni.fail("swiglu_fusion=" + std::to_string(fusion) + " is not 0, 1 or 2");
    }
  } else {
    if (fc3)
      return ni.fail("fc3_experts_weights with activation_type '" + moe::stringifyActivation(*act) +
                     "' is not supported");
    if (fusion != 0)
      return ni.fail("swiglu_fusion applies only to activation_type 'swiglu'");
  }
  attrs.push_back(b.getNamedAttr("k", b.getI64IntegerAttr(intAttr(ni, "k", 1))));
  attrs.push_back(
      b.getNamedAttr("router_kind", moe::RouterKindAttr::get(b.getContext(), moe::RouterKind::logits)));
  attrs.push_back(
      b.getNamedAttr("normalize", b.getBoolAttr(intAttr(ni, "normalize_routing_weights", 0) != 0)));
  attrs.push_back(b.getNamedAttr("activation", moe::ActivationAttr::get(b.getContext(), *act)));
  if (auto alpha = floatAttr(ni, "activation_alpha"))
    attrs.push_back(b.getNamedAttr("activation_alpha", b.getF32FloatAttr(*alpha)));
  if (auto beta = floatAttr(ni, "activation_beta"))
    attrs.push_back(b.getNamedAttr("activation_beta", b.getF32FloatAttr(*beta)));
  if (auto limit = floatAttr(ni, "swiglu_limit"))
    attrs.push_back(b.getNamedAttr("activation_limit", b.getF32FloatAttr(*limit)));
  return success();
}

const StringRef kOrtCommonAttrs[] = {"k",
                                     "activation_type",
                                     "normalize_routing_weights",
                                     "use_sparse_mixer",
                                     "swiglu_fusion",
                                     "swiglu_limit",
                                     "activation_alpha",
                                     "activation_beta"};

} // namespace

int64_t moec::frontend::intAttr(NodeImporter &ni, StringRef name, int64_t dflt) {
  auto *a = ni.attribute(name);
  return a ? a->i() : dflt;
}
std::optional<float> moec::frontend::floatAttr(NodeImporter &ni, StringRef name) {
  if (auto *a = ni.attribute(name))
    return a->f();
  return std::nullopt;
}
std::string moec::frontend::stringAttr(NodeImporter &ni, StringRef name, StringRef dflt) {
  auto *a = ni.attribute(name);
  return a ? a->s() : dflt.str();
}

LogicalResult moec::frontend::onlyKnownAttributes(NodeImporter &ni, ArrayRef<StringRef> known) {
  for (const auto &a : ni.node().attribute())
    if (!llvm::is_contained(known, a.name()))
      return ni.fail("attribute '" + a.name() + "' is not supported");
  return success();
}

LogicalResult moec::frontend::importOrtMoE(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(ni, kOrtCommonAttrs)))
    return failure();
  // input, router_probs, fc1_experts_weights, fc1_experts_bias, fc2_experts_weights, fc2_experts_bias; fc3*
  MoEOperands ops = readInputs(ni, {&MoEOperands::input, &MoEOperands::router, &MoEOperands::fc1,
                                    &MoEOperands::fc1Bias, &MoEOperands::fc2, &MoEOperands::fc2Bias});
  SmallVector<NamedAttribute> attrs;
  if (failed(ortCommon(ni, ops, ni.input(6), ni.input(7), Value(), attrs)))
    return failure();
  return emitSparseMoE(ni, ops, attrs, "com.microsoft.MoE");
}

LogicalResult moec::frontend::importOrtQMoE(NodeImporter &ni) {
  SmallVector<StringRef> known(std::begin(kOrtCommonAttrs), std::end(kOrtCommonAttrs));
  known.append({"quant_type", "expert_weight_bits", "fc1_expert_weight_bits", "fc2_expert_weight_bits",
                "fc3_expert_weight_bits", "block_size", "weights_prepacked", "accuracy_level"});
  if (failed(onlyKnownAttributes(ni, known)))
    return failure();
  OpBuilder &b = ni.builder();
  std::string quantType = stringAttr(ni, "quant_type", "int");
  if (quantType != "int")
    return ni.fail("quant_type '" + quantType + "' is not supported (only 'int')");
  if (intAttr(ni, "weights_prepacked", 0) != 0)
    return ni.fail("weights_prepacked must be 0 (raw [E, N, K/pack] weights)");
  for (unsigned i = 15; i < ni.numInputs(); ++i)
    if (ni.input(i))
      return ni.fail("input " + Twine(i) + " (fp4/fp8 scales) is not supported");

  MoEOperands ops = readInputs(ni, {&MoEOperands::input, &MoEOperands::router, &MoEOperands::fc1,
                                    &MoEOperands::fc1Scales, &MoEOperands::fc1Bias, &MoEOperands::fc2,
                                    &MoEOperands::fc2Scales, &MoEOperands::fc2Bias});
  if (!ops.fc1Scales || !ops.fc2Scales)
    return ni.fail("integer quantisation needs fc1_scales and fc2_scales");
  Value fc3 = ni.numInputs() > 8 ? ni.input(8) : Value(),
        fc3Scales = ni.numInputs() > 9 ? ni.input(9) : Value();
  int64_t bits = intAttr(ni, "expert_weight_bits", 4);
  int64_t fc1Bits = intAttr(ni, "fc1_expert_weight_bits", bits),
          fc2Bits = intAttr(ni, "fc2_expert_weight_bits", bits);
  if (fc3 && intAttr(ni, "fc3_expert_weight_bits", bits) != fc1Bits)
    return ni.fail("fc3 must use the same bit width as fc1");
  for (int64_t w : {fc1Bits, fc2Bits})
    if (w != 4 && w != 8)
      return ni.fail("expert weight bits " + std::to_string(w) + " are not supported (4 or 8)");
  int64_t block = intAttr(ni, "block_size", 0);
  if (block < 0)
    block = 0;
  // Zero points (inputs 11-13) are folded into the codes: code - zero point as int8 codes with the same
  // scales (exact: 4-bit ones always fit, 8-bit ones when every difference does), else every weight
  // dequantized to f32 (exact too, four bytes a weight). Then the layer is quantised symmetrically, as moec
  // stores QMoE weights without zero points.
  Value zp[3] = {ni.numInputs() > 11 ? ni.input(11) : Value(), ni.numInputs() > 12 ? ni.input(12) : Value(),
                 ni.numInputs() > 13 ? ni.input(13) : Value()};
  if (zp[2] && !fc3)
    return ni.fail("fc3_zero_points without fc3_experts_weights");
  bool dequantized = false;
  if (zp[0] || zp[1] || zp[2]) {
    struct Fc {
      const char *name;
      Value *codes, *scales;
      Value zp;
      int64_t bits;
    } fcs[3] = {{"fc1", &ops.fc1, &ops.fc1Scales, zp[0], fc1Bits},
                {"fc2", &ops.fc2, &ops.fc2Scales, zp[1], fc2Bits},
                {"fc3", &fc3, &fc3Scales, zp[2], fc1Bits}};
    // Int8 codes where every fc fits; else all of them as floats (fc1 and fc2 are stored alike).
    SmallVector<CentredWeight> centred;
    bool allFit = true;
    for (Fc &fc : fcs) {
      if (!*fc.codes)
        continue;
      if (!*fc.scales)
        return ni.fail(std::string(fc.name) + "_scales are required");
      auto c = centreCodes(ni, fc.name, *fc.codes, *fc.scales, fc.zp, fc.bits, block);
      if (failed(c))
        return failure();
      allFit &= c->fitsInt8;
      centred.push_back(std::move(*c));
    }
    dequantized = !allFit;
    size_t i = 0;
    for (Fc &fc : fcs) {
      if (!*fc.codes)
        continue;
      *fc.codes = centred[i++].materialize(ni, fc.name, dequantized);
      if (dequantized)
        *fc.scales = Value();
    }
    fc1Bits = fc2Bits = 8;
  }
  SmallVector<NamedAttribute> attrs;
  if (failed(ortCommon(ni, ops, fc3, ni.numInputs() > 10 ? ni.input(10) : Value(), fc3Scales, attrs)))
    return failure();
  // ONNX Runtime's QMoE kernel renormalises the top-k routing weights whatever normalize_routing_weights
  // says (checked against its output in tests/reference/check_sparse_moe_reference.py) unless
  // router_weights are given: then the experts router_probs selects weigh as router_weights say, not
  // normalised, a weight below zero counting as zero (measured against ONNX Runtime 1.31's CPU kernel by
  // tests/e2e/check_cpu_e2e.py). Imported as logits that are max(router_weights, 0) at the selected experts
  // and -inf elsewhere, routed with the identity gate.
  Value routerWeights = ni.numInputs() > 14 ? ni.input(14) : Value();
  for (NamedAttribute &a : attrs)
    if (a.getName() == "normalize")
      a.setValue(b.getBoolAttr(!routerWeights));
  if (routerWeights) {
    auto probs = dyn_cast<RankedTensorType>(ops.router.getType());
    auto rw = dyn_cast<RankedTensorType>(routerWeights.getType());
    if (!probs || probs.getRank() != 2 || !rw || rw.getRank() != 2 || !rw.getElementType().isF32() ||
        (!probs.isDynamicDim(1) && !rw.isDynamicDim(1) && probs.getDimSize(1) != rw.getDimSize(1)))
      return ni.fail("router_weights must be f32 [tokens, experts] like router_probs");
    GraphBuilder g(ni);
    const int64_t k = intAttr(ni, "k", 1), t = probs.getDimSize(0), n = probs.getDimSize(1);
    Operation *topk = ni.createOp(ox::TopKOp::getOperationName(), {ops.router, g.ints({k})}, {},
                                  {g.t({t, k}, g.f32), g.t({t, k}, g.i64)});
    if (!topk)
      return failure();
    Value indices = topk->getResult(1);
    Value full = g.op<ox::ExpandOp>(g.t({t, n}, g.f32), {g.scalarF32(-INFINITY), g.shape(ops.router, 0, 2)});
    Value zeros = g.op<ox::ExpandOp>(g.t({t, k}, g.f32), {g.scalarF32(0.0f), g.shape(indices, 0, 2)});
    Value penalty =
        g.op<ox::ScatterElementsOp>(g.t({t, n}, g.f32), {full, indices, zeros}, {g.attr("axis", 1)});
    Value positive = g.op<ox::ReluOp>(rw, {routerWeights});
    ops.router = g.op<ox::AddOp>(g.t({t, n}, g.f32), {positive, penalty});
    attrs.push_back(b.getNamedAttr("gate", moe::GateFuncAttr::get(b.getContext(), moe::GateFunc::identity)));
  }
  if (!dequantized)
    for (auto [name, w] : {std::pair<StringRef, int64_t>{"fc1_quant", fc1Bits}, {"fc2_quant", fc2Bits}})
      attrs.push_back(b.getNamedAttr(name, moe::WeightQuantAttr::get(b.getContext(), w, block)));
  return emitSparseMoE(ni, ops, attrs, "com.microsoft.QMoE");
}

LogicalResult moec::frontend::importSparseMoE(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(
          ni, {"k", "router", "gate", "normalize", "scale", "zero_experts", "activation", "keep"})))
    return failure();
  OpBuilder &b = ni.builder();
  // The input order of docs/ops.md.
  MoEOperands ops =
      readInputs(ni, {&MoEOperands::input, &MoEOperands::router, &MoEOperands::routerBias, &MoEOperands::fc1,
                      &MoEOperands::fc1Bias, &MoEOperands::fc2, &MoEOperands::fc2Bias, &MoEOperands::mask,
                      &MoEOperands::predA, &MoEOperands::predB});

  SmallVector<NamedAttribute> attrs;
  std::string router = stringAttr(ni, "router", "linear");
  auto routerKind = moe::symbolizeRouterKind(router);
  if (!routerKind)
    return ni.fail("router '" + router + "' is not 'linear' or 'logits'");
  std::string gate = stringAttr(ni, "gate", "softmax");
  auto gateFunc = moe::symbolizeGateFunc(gate);
  if (!gateFunc)
    return ni.fail("gate '" + gate + "' is not 'softmax', 'sigmoid' or 'identity'");
  auto act = parseActivation(ni, stringAttr(ni, "activation", "swiglu"));
  if (failed(act))
    return failure();
  attrs.push_back(b.getNamedAttr("k", b.getI64IntegerAttr(intAttr(ni, "k", 1))));
  attrs.push_back(b.getNamedAttr("router_kind", moe::RouterKindAttr::get(b.getContext(), *routerKind)));
  attrs.push_back(b.getNamedAttr("gate", moe::GateFuncAttr::get(b.getContext(), *gateFunc)));
  attrs.push_back(b.getNamedAttr("normalize", b.getBoolAttr(intAttr(ni, "normalize", 0) != 0)));
  attrs.push_back(b.getNamedAttr("scale", b.getF32FloatAttr(floatAttr(ni, "scale").value_or(1.0f))));
  attrs.push_back(b.getNamedAttr("zero_experts", b.getI64IntegerAttr(intAttr(ni, "zero_experts", 0))));
  attrs.push_back(b.getNamedAttr("activation", moe::ActivationAttr::get(b.getContext(), *act)));
  if (auto *keep = ni.attribute("keep"))
    attrs.push_back(b.getNamedAttr("keep", b.getI64IntegerAttr(keep->i())));
  return emitSparseMoE(ni, ops, attrs, "moec.SparseMoE");
}

// ---- com.microsoft.MatMulNBits: a linear layer whose weights arrive quantised (ORT's quantiser, GenAI's
// model builder); imported as moe.linear with its codes, scales and zero points kept as they are.
LogicalResult moec::frontend::importOrtMatMulNBits(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(ni, {"K", "N", "bits", "block_size", "accuracy_level"})))
    return failure();
  OpBuilder &b = ni.builder();
  Value a = ni.input(0), w = ni.input(1), scales = ni.input(2), zeros = ni.input(3), bias = ni.input(5);
  if (!a || !w || !scales)
    return ni.fail("inputs A, B and scales are required");
  if (ni.input(4))
    return ni.fail("input 'g_idx' (act-order group indices) is not supported");
  auto aT = dyn_cast<RankedTensorType>(a.getType());
  if (!aT || !aT.getElementType().isF32())
    return ni.fail("input A must be an f32 tensor of known rank (f16 activations are not supported yet)");
  const int64_t k = intAttr(ni, "K", -1), n = intAttr(ni, "N", -1), bits = intAttr(ni, "bits", 4),
                block = intAttr(ni, "block_size", -1);
  if (k <= 0 || n <= 0)
    return ni.fail("attributes K and N must be given and positive");
  if (bits != 4 && bits != 8)
    return ni.fail("bits = " + std::to_string(bits) + " is not supported (4 or 8)");
  if (block < 16 || (block & (block - 1)))
    return ni.fail("block_size = " + std::to_string(block) + " (must be a power of two >= 16)");
  if (!aT.isDynamicDim(aT.getRank() - 1) && aT.getShape().back() != k)
    return ni.fail("input A " + std::to_string(aT.getShape().back()) + " features, attribute K = " +
                   std::to_string(k));
  const int64_t nb = (k + block - 1) / block;
  auto wT = dyn_cast<RankedTensorType>(w.getType());
  if (!wT || !wT.getElementType().isUnsignedInteger(8) || !wT.hasStaticShape() ||
      wT.getNumElements() != n * nb * block * bits / 8)
    return ni.fail("input B must be uint8 [N, ceil(K / block_size), block_size * bits / 8] = [" + std::to_string(n) +
                   ", " + std::to_string(nb) + ", " + std::to_string(block * bits / 8) + "]");
  if (wT.getRank() != 3) // a flattened [N, blocks * blob] is the same bytes
    w = b.create<ox::ReshapeOp>(ni.loc(), RankedTensorType::get({n, nb, block * bits / 8}, wT.getElementType()), w,
                                ni.constantI64({n, nb, block * bits / 8}), b.getI64IntegerAttr(0));
  SmallVector<NamedAttribute> attrs;
  attrs.push_back(b.getNamedAttr("storage", moe::StorageAttr::get(b.getContext(), bits == 8 ? moe::Storage::int8
                                                                                             : moe::Storage::int4)));
  attrs.push_back(b.getNamedAttr("block_size", b.getI64IntegerAttr(block)));
  attrs.push_back(b.getNamedAttr("weight_quant", moe::WeightQuantAttr::get(b.getContext(), bits, block)));
  SmallVector<Value> operands{a, w, scales};
  SmallVector<int32_t> segments{1, 1, 1, zeros ? 1 : 0, bias ? 1 : 0, 0, 0, 0};
  if (zeros)
    operands.push_back(zeros);
  if (bias)
    operands.push_back(bias);
  attrs.push_back(b.getNamedAttr("operandSegmentSizes", b.getDenseI32ArrayAttr(segments)));
  SmallVector<int64_t> outShape(aT.getShape());
  outShape.back() = n;
  Operation *op = ni.createOp(moe::LinearOp::getOperationName(), operands, attrs,
                              {RankedTensorType::get(outShape, aT.getElementType())});
  if (!op)
    return failure();
  op->setAttr("moe.source", b.getStringAttr("com.microsoft.MatMulNBits"));
  ni.setOutputs(op->getResult(0));
  return success();
}

// ---- ONNX Runtime's norm and GELU contrib ops (ORT-GenAI's builder and ORT's transformer optimizer write
// them)

namespace {
/// A moe.norm over the last axis of `x` (f32), with the node's epsilon; null after an error.
Value lastAxisNorm(NodeImporter &ni, Value x, Value gamma, Value beta, moe::NormKind kind) {
  auto t = dyn_cast<RankedTensorType>(x.getType());
  if (!t || !t.getElementType().isF32()) {
    (void)ni.fail("needs an f32 input of known rank");
    return nullptr;
  }
  float eps = floatAttr(ni, "epsilon").value_or(1e-5f);
  OpBuilder &b = ni.builder();
  SmallVector<Value> operands{x, gamma};
  if (beta)
    operands.push_back(beta);
  Operation *op = ni.createOp(moe::NormOp::getOperationName(), operands,
                              {b.getNamedAttr("kind", moe::NormKindAttr::get(b.getContext(), kind)),
                               b.getNamedAttr("epsilon", b.getF32FloatAttr(eps))},
                              {t});
  return op ? op->getResult(0) : Value();
}

Value addValues(NodeImporter &ni, Value a, Value b) {
  Operation *op = ni.createOp(moec::onnxir::AddOp::getOperationName(), {a, b}, {}, {a.getType()});
  return op ? op->getResult(0) : Value();
}
} // namespace

/// SimplifiedLayerNormalization (RMSNorm; ORT registers it in the default domain, which OnnxModel moves to
/// com.microsoft): one moe.norm over the last axis. Its optional inv_std_var output is not supported.
LogicalResult moec::frontend::importOrtSimplifiedLayerNorm(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(ni, {"axis", "epsilon", "stash_type"})))
    return failure();
  ni.refineInputs();
  auto rank = dyn_cast<RankedTensorType>(ni.input(0).getType());
  int64_t axis = intAttr(ni, "axis", -1);
  if (!rank)
    return ni.fail("needs an input of known rank at import (the model declares no type for it: value_info)");
  if (axis != -1 && axis != rank.getRank() - 1)
    return ni.fail("only the last axis is supported (axis " + std::to_string(axis) + ")");
  if (intAttr(ni, "stash_type", 1) != 1)
    return ni.fail("stash_type other than 1 (f32) is not supported");
  if (ni.numOutputs() > 1 && !ni.node().output(1).empty())
    return ni.fail("the inv_std_var output is not supported");
  if (!ni.input(1))
    return ni.fail("input 1 (scale) is required");
  Value y = lastAxisNorm(ni, ni.input(0), ni.input(1), nullptr, moe::NormKind::rms);
  if (!y)
    return failure();
  ni.setOutputs({y});
  return success();
}

/// SkipLayerNormalization / SkipSimplifiedLayerNormalization: s = input + skip (+ bias), output = LayerNorm /
/// RMSNorm of s over the last axis (gamma, beta); output 3 is s. The mean and inv_std_var outputs are not
/// supported.
LogicalResult moec::frontend::importOrtSkipLayerNorm(NodeImporter &ni) {
  bool simplified = ni.node().op_type() == "SkipSimplifiedLayerNormalization";
  if (failed(onlyKnownAttributes(ni, {"epsilon"})))
    return failure();
  for (unsigned i : {1u, 2u})
    if (ni.numOutputs() > i && !ni.node().output(i).empty())
      return ni.fail("the mean / inv_std_var outputs are not supported");
  if (ni.numInputs() < 3 || !ni.input(0) || !ni.input(1) || !ni.input(2))
    return ni.fail("inputs input, skip and gamma are required");
  Value beta = simplified ? Value() : (ni.numInputs() > 3 ? ni.input(3) : Value());
  Value bias = ni.numInputs() > (simplified ? 3u : 4u) ? ni.input(simplified ? 3 : 4) : Value();
  Value sum = addValues(ni, ni.input(0), ni.input(1));
  if (sum && bias)
    sum = addValues(ni, sum, bias);
  if (!sum)
    return failure();
  Value y = lastAxisNorm(ni, sum, ni.input(2), beta, simplified ? moe::NormKind::rms : moe::NormKind::layer);
  if (!y)
    return failure();
  SmallVector<Value> outs{y};
  if (ni.numOutputs() > 3) {
    outs.append({y, y}); // placeholders for outputs 1 and 2, refused above when named
    outs.push_back(sum);
  }
  ni.setOutputs(outs);
  return success();
}

/// FastGelu (tanh GELU of X + bias), BiasGelu (erf GELU of A + B), QuickGelu (x * sigmoid(alpha x)).
LogicalResult moec::frontend::importOrtGelu(NodeImporter &ni) {
  const std::string &op = ni.node().op_type();
  OpBuilder &b = ni.builder();
  Value x = ni.input(0);
  if (!x)
    return ni.fail("input 0 is required");
  if (op == "QuickGelu") {
    if (failed(onlyKnownAttributes(ni, {"alpha"})))
      return failure();
    float alpha = floatAttr(ni, "alpha").value_or(1.702f);
    auto t = cast<ShapedType>(x.getType());
    Value a = ni.constant(DenseElementsAttr::get(RankedTensorType::get({}, t.getElementType()),
                                                 FloatAttr::get(t.getElementType(), alpha)));
    Operation *ax = ni.createOp(moec::onnxir::MulOp::getOperationName(), {x, a}, {}, {x.getType()});
    Operation *sg =
        ax ? ni.createOp(moec::onnxir::SigmoidOp::getOperationName(), {ax->getResult(0)}, {}, {x.getType()})
           : nullptr;
    Operation *y = sg ? ni.createOp(moec::onnxir::MulOp::getOperationName(), {x, sg->getResult(0)}, {},
                                    {ni.outputType(0)})
                      : nullptr;
    if (!y)
      return failure();
    ni.setOutputs(y->getResults());
    return success();
  }
  if (failed(onlyKnownAttributes(ni, {})))
    return failure();
  Value bias = ni.numInputs() > 1 ? ni.input(1) : Value();
  if (!bias && op == "BiasGelu")
    return ni.fail("input 1 (bias) is required");
  if (bias && !(x = addValues(ni, x, bias)))
    return failure();
  Operation *y =
      ni.createOp(moec::onnxir::GeluOp::getOperationName(), {x},
                  {b.getNamedAttr("approximate", b.getStringAttr(op == "FastGelu" ? "tanh" : "none"))},
                  {ni.outputType(0)});
  if (!y)
    return failure();
  ni.setOutputs(y->getResults());
  return success();
}
