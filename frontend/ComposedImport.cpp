//===- ComposedImport.cpp - ONNX ops written out as other graph ops ---------===//
//
// Ops with no kernel of their own, imported as what they compute in ops that have one:
//   - ConvInteger and QLinearConv: the integer convolution as a Conv in f64 (exact: every int8 product and
//     every sum of them fits a double's 53 bits for any real kernel size) of the inputs minus their zero
//     points (w's per output channel when it has M of them); QLinearConv then adds the int32 bias, scales by
//     x_scale * w_scale / y_scale (w_scale per channel), rounds half to even, adds y_zero_point and saturates
//     to its type, as ONNX's reference does.
//   - QLinearMatMul: the same over a MatMul (any rank; a's scale and zero point per row, b's per column).
//   - ONNX Runtime's GatherBlockQuantized (uint8 tables of 2-, 4- or 8-bit codes, packed low-order first, a
//     scale and optional zero point per block of a row): the rows asked for are gathered packed, unpacked,
//     centred and scaled, so only they are read (the table stays quantized in the artifact).
//   - BatchNormalization in training mode: the batch's mean and (population) variance over every axis but
//     the channels', Y normalised by them (the inference-mode op with the batch statistics), and the running
//     statistics input * momentum + batch * (1 - momentum).
//
//===----------------------------------------------------------------------===//
#include "frontend/GraphBuilder.h"
#include "frontend/NodeImporter.h"
#include "ir/ONNXOps.h"

#include "onnx/onnx_pb.h"

using namespace mlir;
using namespace moec::frontend;
namespace ox = moec::onnxir;

namespace {

Type unranked(Type elem) { return UnrankedTensorType::get(elem); }

Value ni32(GraphBuilder &g, int32_t v) {
  return g.ni.constant(DenseElementsAttr::get(RankedTensorType::get({}, g.b.getI32Type()), v));
}

/// A per-channel (1-D, more than one value) scale, bias or zero point as [1, .., M, .., 1] of rank `rank`, M
/// at dim `axis`; else unchanged.
Value perChannel(GraphBuilder &g, Value v, int64_t rank, int64_t axis) {
  auto t = dyn_cast<RankedTensorType>(v.getType());
  if (!t || t.getRank() != 1 || t.getDimSize(0) == 1 || rank < 2)
    return v;
  SmallVector<int64_t> shape(rank, 1);
  shape[axis] = -1;
  return g.op<ox::ReshapeOp>(unranked(t.getElementType()), {v, g.ints(shape)});
}

/// x - zero_point in f64, a zero point of several values along dim `axis` of a rank-`rank` x.
Value centred(GraphBuilder &g, Value x, Value zeroPoint, int64_t rank, int64_t axis) {
  Value xf = g.castLike(x, g.f64);
  if (!zeroPoint)
    return xf;
  return g.op<ox::SubOp>(unranked(g.f64), {xf, perChannel(g, g.castLike(zeroPoint, g.f64), rank, axis)});
}

std::optional<int64_t> rank(Value v) {
  if (auto t = dyn_cast_or_null<RankedTensorType>(v ? v.getType() : Type()))
    return t.getRank();
  return std::nullopt;
}

/// The convolution attributes of the node (ConvInteger, QLinearConv): Conv's, converted as for any node.
LogicalResult convAttributes(NodeImporter &ni, SmallVectorImpl<NamedAttribute> &attrs) {
  if (failed(ni.convertAttributes(attrs)))
    return failure();
  for (NamedAttribute a : attrs)
    if (!llvm::is_contained(ox::ConvOp::getAttributeNames(), a.getName().getValue()))
      return ni.fail("attribute '" + a.getName().getValue() + "' is not supported");
  return success();
}

/// round half to even, + zero point, saturated to the zero point's (else `fallback`'s) integer type.
LogicalResult requantize(NodeImporter &ni, GraphBuilder &g, Value scaled, Value zeroPoint, Type fallback) {
  Type elem = zeroPoint ? cast<ShapedType>(zeroPoint.getType()).getElementType() : fallback;
  auto it = dyn_cast<IntegerType>(elem);
  if (!it || it.getWidth() != 8)
    return ni.fail("the output type must be int8 or uint8");
  const bool isUnsigned = it.isUnsigned();
  Value r = g.op<ox::RoundOp>(unranked(g.f64), {scaled});
  if (zeroPoint)
    r = g.op<ox::AddOp>(unranked(g.f64), {r, g.castLike(zeroPoint, g.f64)});
  r = g.op<ox::ClipOp>(unranked(g.f64),
                       {r, g.scalarF64(isUnsigned ? 0 : -128), g.scalarF64(isUnsigned ? 255 : 127)},
                       {g.b.getNamedAttr("operandSegmentSizes", g.b.getDenseI32ArrayAttr({1, 1, 1}))});
  Operation *out = ni.createOp(ox::CastOp::getOperationName(), {r},
                               {g.b.getNamedAttr("to", TypeAttr::get(elem))}, {ni.outputType(0, elem)});
  if (!out)
    return failure();
  ni.setOutputs(out->getResults());
  return success();
}

/// A Conv of x and w with the node's attributes; null (the error said) when an attribute is not of the kind
/// Conv takes: created through createOp, which checks them (the typed builder aborts on a wrong kind: a
/// STRING 'pads' of a ConvInteger whose opset is newer than libonnx's checker knows, found by the fuzzer).
Value conv(GraphBuilder &g, Value x, Value w, ArrayRef<NamedAttribute> attrs) {
  Operation *op = g.ni.createOp(ox::ConvOp::getOperationName(), {x, w}, attrs, {unranked(g.f64)});
  return op ? op->getResult(0) : Value();
}

} // namespace

LogicalResult moec::frontend::importConvInteger(NodeImporter &ni) {
  SmallVector<NamedAttribute> attrs;
  if (failed(convAttributes(ni, attrs)))
    return failure();
  Value x = ni.input(0), w = ni.input(1);
  auto r = rank(w);
  if (!x || !w || !r || *r < 3)
    return ni.fail("needs x and a weight w of known rank >= 3");
  GraphBuilder g(ni);
  Value y = conv(g, centred(g, x, ni.input(2), *r, 1), centred(g, w, ni.input(3), *r, 0), attrs);
  if (!y)
    return failure();
  Operation *out = ni.createOp(ox::CastOp::getOperationName(), {y},
                               {g.b.getNamedAttr("to", TypeAttr::get(g.b.getI32Type()))},
                               {ni.outputType(0, g.b.getI32Type())});
  if (!out)
    return failure();
  ni.setOutputs(out->getResults());
  return success();
}

LogicalResult moec::frontend::importQLinearConv(NodeImporter &ni) {
  SmallVector<NamedAttribute> attrs;
  if (failed(convAttributes(ni, attrs)))
    return failure();
  for (unsigned i = 0; i < 8; ++i)
    if (i != 2 && i != 5 && i != 7 && !ni.input(i))
      return ni.fail("input " + std::to_string(i) + " is required");
  Value x = ni.input(0), w = ni.input(3);
  auto r = rank(w);
  if (!r || *r < 3)
    return ni.fail("needs a weight w of known rank >= 3");
  GraphBuilder g(ni);
  Value acc = conv(g, centred(g, x, ni.input(2), *r, 1), centred(g, w, ni.input(5), *r, 0), attrs);
  if (!acc)
    return failure();
  if (Value bias = ni.numInputs() > 8 ? ni.input(8) : Value())
    acc = g.op<ox::AddOp>(unranked(g.f64), {acc, perChannel(g, g.castLike(bias, g.f64), *r, 1)});
  // x_scale * w_scale / y_scale in f32 (the scales' type), w_scale per output channel.
  Value scale = g.op<ox::DivOp>(
      unranked(g.f32),
      {g.op<ox::MulOp>(unranked(g.f32), {ni.input(1), perChannel(g, ni.input(4), *r, 1)}), ni.input(6)});
  Value scaled = g.op<ox::MulOp>(unranked(g.f64), {acc, g.castLike(scale, g.f64)});
  return requantize(ni, g, scaled, ni.input(7), cast<ShapedType>(x.getType()).getElementType());
}

LogicalResult moec::frontend::importQLinearMatMul(NodeImporter &ni) {
  if (ni.node().attribute_size() != 0)
    return ni.fail("takes no attributes");
  for (unsigned i = 0; i < 8; ++i)
    if (i != 2 && i != 5 && i != 7 && !ni.input(i))
      return ni.fail("input " + std::to_string(i) + " is required");
  Value a = ni.input(0), b = ni.input(3);
  auto ra = rank(a), rb = rank(b);
  if (!ra || !rb || *ra < 2 || *rb < 2)
    return ni.fail("needs a and b of known rank >= 2");
  GraphBuilder g(ni);
  // a's zero point and scale per row (dim -2 of a), b's per column (its last dim: broadcasts as it is).
  Value acc = g.op<ox::MatMulOp>(
      unranked(g.f64), {centred(g, a, ni.input(2), *ra, *ra - 2), centred(g, b, ni.input(5), 1, 0)});
  Value scale = g.op<ox::DivOp>(
      unranked(g.f32),
      {g.op<ox::MulOp>(unranked(g.f32), {perChannel(g, ni.input(1), 2, 0), ni.input(4)}), ni.input(6)});
  Value scaled = g.op<ox::MulOp>(unranked(g.f64), {acc, g.castLike(scale, g.f64)});
  return requantize(ni, g, scaled, ni.input(7), cast<ShapedType>(a.getType()).getElementType());
}

LogicalResult moec::frontend::importBatchNormTraining(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(ni, {"epsilon", "momentum", "training_mode"})))
    return failure();
  Value x = ni.input(0);
  auto r = rank(x);
  if (!r || *r < 2)
    return ni.fail("training mode needs an input of known rank >= 2");
  for (unsigned i = 1; i < 5; ++i)
    if (!ni.input(i))
      return ni.fail("input " + std::to_string(i) + " is required");
  GraphBuilder g(ni);
  Type elem = cast<ShapedType>(x.getType()).getElementType();
  SmallVector<int64_t> axes{0};
  for (int64_t d = 2; d < *r; ++d)
    axes.push_back(d);
  auto mean = [&](Value v, bool keep) {
    return g.op<ox::ReduceMeanOp>(unranked(elem), {v, g.ints(axes)}, {g.attr("keepdims", keep ? 1 : 0)});
  };
  Value centredX = g.op<ox::SubOp>(unranked(elem), {x, mean(x, true)});
  Value batchMean = mean(x, false);
  Value batchVar = mean(g.op<ox::MulOp>(unranked(elem), {centredX, centredX}), false);
  const float eps = floatAttr(ni, "epsilon").value_or(1e-5f),
              momentum = floatAttr(ni, "momentum").value_or(0.9f);
  Operation *y = ni.createOp(ox::BatchNormalizationOp::getOperationName(),
                             {x, ni.input(1), ni.input(2), batchMean, batchVar},
                             {g.b.getNamedAttr("epsilon", g.b.getF32FloatAttr(eps))}, {ni.outputType(0)});
  if (!y)
    return failure();
  SmallVector<Value> outs{y->getResult(0)};
  auto running = [&](Value input, Value batch, unsigned out) -> Value {
    Value m =
        ni.constant(DenseElementsAttr::get(RankedTensorType::get({}, elem), FloatAttr::get(elem, momentum)));
    Value rest = ni.constant(
        DenseElementsAttr::get(RankedTensorType::get({}, elem), FloatAttr::get(elem, 1.0 - momentum)));
    Value a = g.op<ox::MulOp>(unranked(elem), {input, m}), c = g.op<ox::MulOp>(unranked(elem), {batch, rest});
    Operation *sum = ni.createOp(ox::AddOp::getOperationName(), {a, c}, {}, {ni.outputType(out)});
    return sum ? sum->getResult(0) : Value();
  };
  for (unsigned out = 1; out < std::min(3u, ni.numOutputs()); ++out) {
    Value v = out == 1 ? running(ni.input(3), batchMean, 1) : running(ni.input(4), batchVar, 2);
    if (!v)
      return failure();
    outs.push_back(v);
  }
  ni.setOutputs(outs);
  return success();
}

namespace {

/// Packed `bits`-bit codes (low-order first along the last dim) of uint8 `packed` as i32, `count` per row.
Value unpack(GraphBuilder &g, Value packed, int64_t bits, int64_t indicesRank, int64_t count) {
  Value x = g.castLike(packed, g.b.getI32Type());
  if (bits == 8)
    return x;
  const int64_t per = 8 / bits, base = int64_t(1) << bits;
  SmallVector<Value> parts;
  Value rest = x;
  for (int64_t p = 0; p < per; ++p) { // code p of each byte: (byte / base^p) mod base
    Value q = g.op<ox::ModOp>(unranked(g.b.getI32Type()), {rest, ni32(g, base)}, {g.attr("fmod", 0)});
    parts.push_back(g.op<ox::UnsqueezeOp>(unranked(g.b.getI32Type()), {q, g.ints({-1})}));
    rest = g.op<ox::DivOp>(unranked(g.b.getI32Type()), {rest, ni32(g, base)});
  }
  Value all = g.b.create<ox::ConcatOp>(g.ni.loc(), TypeRange{unranked(g.b.getI32Type())}, ValueRange(parts),
                                       ArrayRef<NamedAttribute>{g.attr("axis", -1)})
                  ->getResult(0);
  SmallVector<int64_t> shape(indicesRank, 0);
  shape.push_back(-1);
  Value flat = g.op<ox::ReshapeOp>(unranked(g.b.getI32Type()), {all, g.ints(shape)});
  SmallVector<int64_t> axes{int64_t(indicesRank)};
  return g.op<ox::SliceOp>(unranked(g.b.getI32Type()),
                           {flat, g.ints({0}), g.ints({count}), g.ints(axes), g.ints({1})});
}

} // namespace

LogicalResult moec::frontend::importOrtGatherBlockQuantized(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(ni, {"bits", "block_size", "gather_axis", "quantize_axis"})))
    return failure();
  Value data = ni.input(0), indices = ni.input(1), scales = ni.input(2), zeros = ni.input(3);
  auto dT = dyn_cast_or_null<RankedTensorType>(data ? data.getType() : Type());
  auto iT = dyn_cast_or_null<RankedTensorType>(indices ? indices.getType() : Type());
  auto sT = dyn_cast_or_null<RankedTensorType>(scales ? scales.getType() : Type());
  if (!dT || dT.getRank() != 2 || !dT.getElementType().isUnsignedInteger(8) || dT.isDynamicDim(1))
    return ni.fail(
        "data must be a uint8 [rows, packed columns] table (int4 / fp8 data types are not supported)");
  if (!iT || !sT || sT.getRank() != 2 || sT.isDynamicDim(1))
    return ni.fail("indices of known rank and 2-D scales [rows, blocks] are required");
  const int64_t bits = intAttr(ni, "bits", 4), block = intAttr(ni, "block_size", 128);
  const int64_t gatherAxis = intAttr(ni, "gather_axis", 0), quantAxis = intAttr(ni, "quantize_axis", 1);
  if (bits != 4 && bits != 8 && bits != 2)
    return ni.fail("bits " + std::to_string(bits) + " is not supported (2, 4 or 8)");
  if (gatherAxis != 0 || (quantAxis != 1 && quantAxis != -1))
    return ni.fail("only gather_axis 0 and quantize_axis 1 (the last) are supported for uint8 data");
  if (block < 16 || (block & (block - 1)))
    return ni.fail("block_size " + std::to_string(block) + " must be a power of 2, at least 16");
  const int64_t columns = dT.getDimSize(1) * (8 / bits), blocks = sT.getDimSize(1);
  if ((columns + block - 1) / block != blocks)
    return ni.fail("scales have " + std::to_string(blocks) + " blocks per row; " + std::to_string(columns) +
                   " columns in blocks of " + std::to_string(block) + " need " +
                   std::to_string((columns + block - 1) / block));
  if (columns % block)
    return ni.fail("the row length " + std::to_string(columns) + " must be a multiple of block_size");
  GraphBuilder g(ni);
  const int64_t r = iT.getRank();
  Type i32 = g.b.getI32Type();
  auto gather = [&](Value table) {
    return g.op<ox::GatherOp>(unranked(cast<ShapedType>(table.getType()).getElementType()), {table, indices},
                              {g.attr("axis", 0)});
  };
  // [I..., blocks, block] codes minus their zero points, times the scales.
  SmallVector<int64_t> blocked(r, 0);
  blocked.append({blocks, block});
  Value codes =
      g.op<ox::ReshapeOp>(unranked(i32), {unpack(g, gather(data), bits, r, columns), g.ints(blocked)});
  Value zp;
  if (zeros) {
    SmallVector<int64_t> perBlock(r, 0);
    perBlock.append({blocks, 1});
    zp = g.op<ox::ReshapeOp>(unranked(i32), {unpack(g, gather(zeros), bits, r, blocks), g.ints(perBlock)});
  } else {
    zp = ni.constant(DenseElementsAttr::get(RankedTensorType::get({}, i32), int32_t(1) << (bits - 1)));
  }
  Value centredCodes = g.castLike(g.op<ox::SubOp>(unranked(i32), {codes, zp}), g.f32);
  Value scale = g.castLike(gather(scales), g.f32);
  scale = g.op<ox::UnsqueezeOp>(unranked(g.f32), {scale, g.ints({-1})});
  Value values = g.op<ox::MulOp>(unranked(g.f32), {centredCodes, scale});
  SmallVector<int64_t> rows(r, 0);
  rows.push_back(columns);
  values = g.op<ox::ReshapeOp>(unranked(g.f32), {values, g.ints(rows)});
  Type outElem = sT.getElementType();
  Operation *out = ni.createOp(ox::CastOp::getOperationName(), {values},
                               {g.b.getNamedAttr("to", TypeAttr::get(outElem))}, {ni.outputType(0, outElem)});
  if (!out)
    return failure();
  ni.setOutputs(out->getResults());
  return success();
}
