//===- AttentionImport.cpp - ONNX Runtime's GroupQueryAttention -> moe.attention --===//
//
// com.microsoft.GroupQueryAttention (the op ONNX Runtime GenAI's model builder writes for every attention
// layer) becomes graph ops for what it does around attention -- split of a packed QKV, heads to [B, H, S, D],
// rotary embedding from its cos/sin caches, the causal mask -- a moe.kv_cache_update per present cache and
// one moe.attention. Semantics follow ONNX Runtime's CPU kernel (docs/attention.md):
//   - seqlens_k[b] + 1 is sequence b's total length; total_sequence_length the longest. The call is the
//     first prompt when S == total_sequence_length: no past then. Otherwise sequence b's past length is
//     seqlens_k[b] + 1 - S and its new tokens sit at positions past_b .. past_b + S - 1.
//   - present [B, Hkv, max(total_sequence_length, past buffer length), D]: the past's first past_b positions,
//     then the new keys/values, then zeros. Past and present may be the same fixed-size buffer or a past of
//     exactly past_b positions; moe.kv_cache_update writes both (a session appends in place).
//   - rotary (do_rotary): positions past_b + s; half-split or interleaved over the first 2 * cos_cache.dim(1)
//     dims of each head.
//   - query s of sequence b sees keys 0 .. past_b + s; with local_window_size W only the last W of them (as
//     ONNX Runtime 1.31 computes it).
//   - head_sink [Hq]: one more term per query head in the softmax's denominator (moe.attention's sinks);
//     smooth_softmax without head_sink: sinks of 0.
//   - softcap c: scores c * tanh(score / c) (moe.attention's softcap).
// position_ids and attention_bias inputs are refused by name (not silently ignored).
//
//===----------------------------------------------------------------------===//
#include "frontend/NodeImporter.h"
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"

#include "onnx/onnx_pb.h"

#include <cmath>
#include <limits>

using namespace mlir;
using namespace moec::frontend;
namespace moe = moec::moe;
namespace ox = moec::onnxir;

namespace {

constexpr int64_t kDyn = ShapedType::kDynamic;

/// Builds ONNX-dialect ops at the node's location.
struct Graph {
  NodeImporter &ni;
  OpBuilder &b;
  Type f32, i64, i1;

  explicit Graph(NodeImporter &n)
      : ni(n), b(n.builder()), f32(b.getF32Type()), i64(b.getI64Type()), i1(b.getI1Type()) {}

  RankedTensorType t(ArrayRef<int64_t> shape, Type e) { return RankedTensorType::get(shape, e); }
  template <class OpT> Value op(Type type, ValueRange operands, ArrayRef<NamedAttribute> attrs = {}) {
    return b.create<OpT>(ni.loc(), TypeRange{type}, operands, attrs)->getResult(0);
  }
  Value ints(ArrayRef<int64_t> v) { return ni.constantI64(v); }
  Value scalarI64(int64_t v) { return ni.constant(DenseElementsAttr::get(t({}, i64), ArrayRef<int64_t>{v})); }
  Value scalarF32(float v) { return ni.constant(DenseElementsAttr::get(t({}, f32), ArrayRef<float>{v})); }
  NamedAttribute attr(StringRef name, int64_t v) { return b.getNamedAttr(name, b.getI64IntegerAttr(v)); }

  Value unsqueeze(Value x, ArrayRef<int64_t> axes, RankedTensorType type) {
    return op<ox::UnsqueezeOp>(type, {x, ints(axes)});
  }
  Value slice(Value x, int64_t start, int64_t end, int64_t axis, RankedTensorType type) {
    return op<ox::SliceOp>(type, {x, ints({start}), ints({end}), ints({axis}), ints({1})});
  }
  /// dims [begin, end) of x as an i64 vector.
  Value shape(Value x, int64_t begin, int64_t end) {
    return op<ox::ShapeOp>(t({end - begin}, i64), {x}, {attr("start", begin), attr("end", end)});
  }
  Value cast(Value x, Type elem, ArrayRef<int64_t> shape) {
    return op<ox::CastOp>(t(shape, elem), {x}, {b.getNamedAttr("to", TypeAttr::get(elem))});
  }
};

} // namespace

LogicalResult moec::frontend::importOrtGroupQueryAttention(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(ni,
                                 {"num_heads", "kv_num_heads", "scale", "softcap", "do_rotary",
                                  "rotary_interleaved", "local_window_size", "smooth_softmax", "qk_output"})))
    return failure();
  const int64_t hq = intAttr(ni, "num_heads", 0), hkv = intAttr(ni, "kv_num_heads", 0);
  if (hq <= 0 || hkv <= 0 || hq % hkv)
    return ni.fail("num_heads and kv_num_heads must be positive and num_heads a multiple of kv_num_heads");
  const int64_t window = intAttr(ni, "local_window_size", -1);
  if (window < -1 || window == 0)
    return ni.fail("local_window_size " + std::to_string(window) + " (-1 for none, else positive)");
  const float softcap = floatAttr(ni, "softcap").value_or(0.0f);
  if (!(softcap >= 0.0f))
    return ni.fail("softcap " + std::to_string(softcap) + " (0 for none, else positive)");
  const bool smooth = intAttr(ni, "smooth_softmax", 0) != 0;
  if (intAttr(ni, "qk_output", 0) != 0)
    return ni.fail("qk_output (returning the scores) is not supported");
  for (unsigned i : {9u, 10u})
    if (ni.input(i))
      return ni.fail(std::string("input ") + (i == 9 ? "'position_ids'" : "'attention_bias'") +
                     " is not supported yet");
  Value headSink = ni.input(11);
  const bool rotary = intAttr(ni, "do_rotary", 0) != 0,
             interleaved = intAttr(ni, "rotary_interleaved", 0) != 0;

  Graph g(ni);
  Value query = ni.input(0), key = ni.input(1), value = ni.input(2), pastK = ni.input(3), pastV = ni.input(4),
        seqlens = ni.input(5), total = ni.input(6), cosCache = ni.input(7), sinCache = ni.input(8);
  auto qT = dyn_cast_or_null<RankedTensorType>(query ? query.getType() : Type());
  if (!qT || qT.getRank() != 3 || !qT.getElementType().isF32() || qT.isDynamicDim(2))
    return ni.fail("input 'query' must be f32 [batch, sequence, hidden] with a known hidden size");
  if (!seqlens || !total)
    return ni.fail("inputs 'seqlens_k' and 'total_sequence_length' are required");
  if (!key != !value || !pastK != !pastV)
    return ni.fail("'key' and 'value' (and 'past_key' and 'past_value') come both or neither");
  const bool packed = !key;
  const int64_t width = qT.getDimSize(2), heads = packed ? hq + 2 * hkv : hq;
  if (width % heads)
    return ni.fail("query hidden size " + std::to_string(width) + " is not a multiple of " +
                   std::to_string(heads) + " heads");
  const int64_t d = width / heads;
  for (Value x : {key, value}) {
    auto xT = dyn_cast_or_null<RankedTensorType>(x ? x.getType() : Type());
    if (x && (!xT || xT.getRank() != 3 || !xT.getElementType().isF32() || xT.getDimSize(2) != hkv * d))
      return ni.fail("inputs 'key' and 'value' must be f32 [batch, sequence, " + std::to_string(hkv * d) +
                     "]");
  }
  for (Value x : {pastK, pastV}) {
    auto xT = dyn_cast_or_null<RankedTensorType>(x ? x.getType() : Type());
    if (x &&
        (!xT || xT.getRank() != 4 || !xT.getElementType().isF32() ||
         (!xT.isDynamicDim(1) && xT.getDimSize(1) != hkv) || (!xT.isDynamicDim(3) && xT.getDimSize(3) != d)))
      return ni.fail("past caches must be f32 [batch, " + std::to_string(hkv) + ", length, " +
                     std::to_string(d) + "] (f16/bf16 caches are not supported yet)");
  }
  if (headSink) {
    auto hT = dyn_cast<RankedTensorType>(headSink.getType());
    if (!hT || hT.getRank() != 1 || !hT.getElementType().isF32() ||
        (!hT.isDynamicDim(0) && hT.getDimSize(0) != hq))
      return ni.fail("input 'head_sink' must be f32 [" + std::to_string(hq) + "] (one per query head)");
  }
  int64_t rot = 0;
  if (rotary) {
    auto cT = dyn_cast_or_null<RankedTensorType>(cosCache ? cosCache.getType() : Type());
    auto sT = dyn_cast_or_null<RankedTensorType>(sinCache ? sinCache.getType() : Type());
    if (!cT || !sT || cT.getRank() != 2 || cT != sT || !cT.getElementType().isF32() || cT.isDynamicDim(1))
      return ni.fail(
          "do_rotary needs f32 'cos_cache' and 'sin_cache' of one shape [positions, rotary dim / 2]");
    rot = 2 * cT.getDimSize(1);
    if (rot <= 0 || rot > d)
      return ni.fail("rotary dim " + std::to_string(rot) + " is not in (0, head size " + std::to_string(d) +
                     "]");
  }

  // Q, K, V as [B, H, S, D].
  auto bsh = [&](int64_t n) { return g.t({kDyn, kDyn, n}, g.f32); };
  if (packed) {
    auto split = g.b.create<ox::SplitOp>(ni.loc(), TypeRange{bsh(hq * d), bsh(hkv * d), bsh(hkv * d)},
                                         ValueRange{query, g.ints({hq * d, hkv * d, hkv * d})},
                                         ArrayRef<NamedAttribute>{g.attr("axis", 2)});
    query = split->getResult(0), key = split->getResult(1), value = split->getResult(2);
  }
  auto heads4 = [&](Value x, int64_t h) {
    Value r = g.op<ox::ReshapeOp>(g.t({kDyn, kDyn, h, d}, g.f32), {x, g.ints({0, 0, h, d})});
    return g.op<ox::TransposeOp>(g.t({kDyn, h, kDyn, d}, g.f32), {r},
                                 {g.b.getNamedAttr("perm", g.b.getI64ArrayAttr({0, 2, 1, 3}))});
  };
  Value q = heads4(query, hq), k = heads4(key, hkv), v = heads4(value, hkv);

  // Lengths: S, each sequence's past (0 on the first prompt), positions [B, S].
  Value s = g.shape(query, 1, 2);
  Value lens = g.cast(seqlens, g.i64, {kDyn});
  Value tot = g.op<ox::ReshapeOp>(g.t({1}, g.i64), {g.cast(total, g.i64, {kDyn}), g.ints({1})});
  Value first = g.op<ox::EqualOp>(g.t({1}, g.i1), {s, tot});
  Value later =
      g.op<ox::SubOp>(g.t({kDyn}, g.i64), {g.op<ox::AddOp>(g.t({kDyn}, g.i64), {lens, g.ints({1})}), s});
  Value pastB = g.op<ox::WhereOp>(g.t({kDyn}, g.i64), {first, g.ints({0}), later});
  Value sScalar = g.op<ox::SqueezeOp>(g.t({}, g.i64), {s, g.ints({0})});
  Value steps = g.op<ox::RangeOp>(g.t({kDyn}, g.i64), {g.scalarI64(0), sScalar, g.scalarI64(1)});
  Value pastCol = g.unsqueeze(pastB, {1}, g.t({kDyn, 1}, g.i64));
  Value pos =
      g.op<ox::AddOp>(g.t({kDyn, kDyn}, g.i64), {pastCol, g.unsqueeze(steps, {0}, g.t({1, kDyn}, g.i64))});

  if (rotary) {
    auto table = [&](Value cache) {
      Value rows = g.op<ox::GatherOp>(g.t({kDyn, kDyn, rot / 2}, g.f32), {cache, pos}, {g.attr("axis", 0)});
      return g.unsqueeze(rows, {1}, g.t({kDyn, 1, kDyn, rot / 2}, g.f32));
    };
    Value cos = table(cosCache), sin = table(sinCache);
    auto rotate = [&](Value x, int64_t h) {
      auto ty = [&](int64_t last) { return g.t({kDyn, h, kDyn, last}, g.f32); };
      Value xr = rot < d ? g.slice(x, 0, rot, 3, ty(rot)) : x;
      Value out;
      if (!interleaved) {
        Value x1 = g.slice(xr, 0, rot / 2, 3, ty(rot / 2)), x2 = g.slice(xr, rot / 2, rot, 3, ty(rot / 2));
        auto mul = [&](Value a, Value c) { return g.op<ox::MulOp>(ty(rot / 2), {a, c}); };
        Value o1 = g.op<ox::SubOp>(ty(rot / 2), {mul(x1, cos), mul(x2, sin)});
        Value o2 = g.op<ox::AddOp>(ty(rot / 2), {mul(x2, cos), mul(x1, sin)});
        out = g.op<ox::ConcatOp>(ty(rot), {o1, o2}, {g.attr("axis", 3)});
      } else {
        auto ty5 = [&](int64_t last) { return g.t({kDyn, h, kDyn, rot / 2, last}, g.f32); };
        Value x5 = g.op<ox::ReshapeOp>(ty5(2), {xr, g.ints({0, 0, 0, rot / 2, 2})});
        Value xe = g.slice(x5, 0, 1, 4, ty5(1)), xo = g.slice(x5, 1, 2, 4, ty5(1));
        Value c5 = g.unsqueeze(cos, {4}, g.t({kDyn, 1, kDyn, rot / 2, 1}, g.f32));
        Value s5 = g.unsqueeze(sin, {4}, g.t({kDyn, 1, kDyn, rot / 2, 1}, g.f32));
        auto mul = [&](Value a, Value c) { return g.op<ox::MulOp>(ty5(1), {a, c}); };
        Value oe = g.op<ox::SubOp>(ty5(1), {mul(xe, c5), mul(xo, s5)});
        Value oo = g.op<ox::AddOp>(ty5(1), {mul(xo, c5), mul(xe, s5)});
        Value pairs = g.op<ox::ConcatOp>(ty5(2), {oe, oo}, {g.attr("axis", 4)});
        out = g.op<ox::ReshapeOp>(ty(rot), {pairs, g.ints({0, 0, 0, rot})});
      }
      if (rot < d)
        out = g.op<ox::ConcatOp>(ty(d), {out, g.slice(x, rot, d, 3, ty(d - rot))}, {g.attr("axis", 3)});
      return out;
    };
    q = rotate(q, hq), k = rotate(k, hkv);
  }

  // The presents: sequence b's first past_b cached positions, its new ones, zeros up to
  // max(total_sequence_length, past buffer length): moe.kv_cache_update (in place in sessions).
  Value pastLen = pastK ? g.shape(pastK, 2, 3) : g.ints({0});
  Value len = g.op<ox::MaxOp>(g.t({1}, g.i64), {tot, pastLen});
  auto present = [&](Value past, Value fresh) -> Value {
    SmallVector<Value> operands{fresh, pastB, len};
    if (past)
      operands.push_back(past);
    Operation *op = ni.createOp(moe::KvCacheUpdateOp::getOperationName(), operands, {},
                                {g.t({kDyn, hkv, kDyn, d}, g.f32)});
    return op ? op->getResult(0) : Value();
  };
  Value presentK = present(pastK, k), presentV = present(pastV, v);
  if (!presentK || !presentV)
    return failure();
  Value lenScalar = g.op<ox::SqueezeOp>(g.t({}, g.i64), {len, g.ints({0})});
  Value j = g.unsqueeze(g.op<ox::RangeOp>(g.t({kDyn}, g.i64), {g.scalarI64(0), lenScalar, g.scalarI64(1)}),
                        {0}, g.t({1, kDyn}, g.i64));
  auto bt = [&](Type e) { return g.t({kDyn, kDyn}, e); };
  Value zero = g.scalarF32(0.0f);

  // Query s of sequence b sees keys j <= past_b + s: an additive mask [B, 1, S, T].
  Value limit =
      g.unsqueeze(g.op<ox::AddOp>(bt(g.i64), {pos, g.ints({1})}), {1, 3}, g.t({kDyn, 1, kDyn, 1}, g.i64));
  Value keys = g.unsqueeze(j, {0, 1}, g.t({1, 1, 1, kDyn}, g.i64));
  Value allowed = g.op<ox::LessOp>(g.t({kDyn, 1, kDyn, kDyn}, g.i1), {keys, limit});
  if (window > 0) { // and, with local_window_size W, only the last W of them: j > past_b + s - W
    Value first = g.op<ox::SubOp>(g.t({kDyn, 1, kDyn, 1}, g.i64), {limit, g.ints({window})});
    Value inWindow = g.op<ox::GreaterOrEqualOp>(g.t({kDyn, 1, kDyn, kDyn}, g.i1), {keys, first});
    allowed = g.op<ox::AndOp>(g.t({kDyn, 1, kDyn, kDyn}, g.i1), {allowed, inWindow});
  }
  Value mask = g.op<ox::WhereOp>(g.t({kDyn, 1, kDyn, kDyn}, g.f32),
                                 {allowed, zero, g.scalarF32(std::numeric_limits<float>::lowest())});

  const float scale = floatAttr(ni, "scale").value_or(0.0f);
  SmallVector<NamedAttribute> attrs{g.b.getNamedAttr(
      "scale", g.b.getF32FloatAttr(scale != 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(d))))};
  if (softcap > 0.0f)
    attrs.push_back(g.b.getNamedAttr("softcap", g.b.getF32FloatAttr(softcap)));
  // smooth_softmax: one more exp(0) in every softmax's denominator, i.e. sinks of 0 (head_sink, when given,
  // says the values).
  if (smooth && !headSink)
    headSink = ni.constant(DenseElementsAttr::get(g.t({hq}, g.f32), 0.0f));
  attrs.push_back(
      g.b.getNamedAttr("operandSegmentSizes", g.b.getDenseI32ArrayAttr({1, 1, 1, 1, headSink ? 1 : 0})));
  SmallVector<Value> operands{q, presentK, presentV, mask};
  if (headSink)
    operands.push_back(headSink);
  Operation *att =
      ni.createOp(moe::AttentionOp::getOperationName(), operands, attrs, {g.t({kDyn, hq, kDyn, d}, g.f32)});
  if (!att)
    return failure();
  att->setAttr("moe.source", g.b.getStringAttr("com.microsoft.GroupQueryAttention"));
  Value out = g.op<ox::TransposeOp>(g.t({kDyn, kDyn, hq, d}, g.f32), {att->getResult(0)},
                                    {g.b.getNamedAttr("perm", g.b.getI64ArrayAttr({0, 2, 1, 3}))});
  out = g.op<ox::ReshapeOp>(g.t({kDyn, kDyn, hq * d}, g.f32), {out, g.ints({0, 0, hq * d})});
  SmallVector<Value> results{out, presentK, presentV};
  ni.setOutputs(ArrayRef<Value>(results).take_front(std::min<unsigned>(ni.numOutputs(), 3)));
  return success();
}
