//===- AttentionImport.cpp - GroupQueryAttention, Attention and RotaryEmbedding ---===//
//
// com.microsoft.GroupQueryAttention (the op ONNX Runtime GenAI's model builder writes for every attention
// layer) becomes graph ops for what it does around attention -- split of a packed QKV, heads to [B, H, S, D],
// rotary embedding from its cos/sin caches (moe.rotary), the causal mask -- a moe.kv_cache_update per present
// cache and one moe.attention. Semantics follow ONNX Runtime's CPU kernel (docs/attention.md):
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
//   - position_ids [B, S], when given, are the rotary positions (the mask still counts past_b + s).
//   - attention_bias adds to the scores (with the causal mask, one additive mask).
//
// com.microsoft.RotaryEmbedding becomes one moe.rotary: input [B, S, H * D] (heads from num_heads, else
// D = 2 * cos_cache.dim(1)) or [B, H, S, D]; cos/sin rows gathered at position_ids [B, S] or, given one
// offset o, at o .. o + S - 1; half-split or interleaved over rotary_embedding_dim (default: all of D).
//
// ONNX's own Attention (opset 23; 24: nonpad_kv_seqlen) becomes one moe.attention (nan_to_zero: a row masked
// entirely is 0, the spec's 1.23 errata) over Q/K/V as [B, H, S, D], K and V after Concat(past, new) (the
// presents), with one additive mask: the causal frontier (key j <= query i + offset; offset the past
// length, nonpad_kv_seqlen[b] - S, else 0), padding keys past nonpad_kv_seqlen[b], attn_mask (bool: -inf
// where false; f32: added). ONNX's RotaryEmbedding (opset 23) is one moe.rotary (cos/sin tables gathered
// at position_ids, or rows already per position without them).
//
//===----------------------------------------------------------------------===//
#include "frontend/GraphBuilder.h"
#include "frontend/NodeImporter.h"
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "onnx/onnx_pb.h"

#include <cmath>
#include <limits>

using namespace mlir;
using namespace moec::frontend;
namespace moe = moec::moe;
namespace ox = moec::onnxir;

namespace {
constexpr int64_t kDyn = ShapedType::kDynamic;
using Graph = GraphBuilder;
} // namespace

LogicalResult moec::frontend::importOrtGroupQueryAttention(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(ni, {"num_heads", "kv_num_heads", "scale", "softcap", "do_rotary",
                                      "rotary_interleaved", "local_window_size", "smooth_softmax",
                                      "qk_output", "sliding_window_cache"})))
    return failure();
  const int64_t hq = intAttr(ni, "num_heads", 0), hkv = intAttr(ni, "kv_num_heads", 0);
  if (hq <= 0 || hkv <= 0 || hq % hkv)
    return ni.fail("num_heads and kv_num_heads must be positive and num_heads a multiple of kv_num_heads");
  const int64_t window = intAttr(ni, "local_window_size", -1);
  if (window < -1 || window == 0)
    return ni.fail("local_window_size " + std::to_string(window) + " (-1 for none, else positive)");
  const bool windowCache = intAttr(ni, "sliding_window_cache", 0) != 0;
  if (windowCache && window <= 0)
    return ni.fail("sliding_window_cache needs local_window_size > 0 (the window the cache holds)");
  const float softcap = floatAttr(ni, "softcap").value_or(0.0f);
  if (!(softcap >= 0.0f))
    return ni.fail("softcap " + std::to_string(softcap) + " (0 for none, else positive)");
  const bool smooth = intAttr(ni, "smooth_softmax", 0) != 0;
  if (intAttr(ni, "qk_output", 0) != 0)
    return ni.fail("qk_output (returning the scores) is not supported");
  Value positionIds = ni.input(9), bias = ni.input(10);
  if (auto pT = dyn_cast_or_null<RankedTensorType>(positionIds ? positionIds.getType() : Type());
      positionIds && (!pT || pT.getRank() != 2 || !pT.getElementType().isInteger(64)))
    return ni.fail("input 'position_ids' must be i64 [batch, sequence]");
  if (auto bT = dyn_cast_or_null<RankedTensorType>(bias ? bias.getType() : Type());
      bias && (!bT || bT.getRank() != 4 || !bT.getElementType().isF32()))
    return ni.fail("input 'attention_bias' must be f32 [batch or 1, heads or 1, sequence, total length]");
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
  if (windowCache && (!pastK || ni.numOutputs() < 3))
    return ni.fail("sliding_window_cache needs 'past_key' / 'past_value' inputs and 'present_key' / "
                   "'present_value' outputs (window-sized buffers)");
  if (windowCache && bias)
    return ni.fail("attention_bias with sliding_window_cache is not supported");
  if (auto pT = dyn_cast_or_null<RankedTensorType>(pastK ? pastK.getType() : Type());
      windowCache && pT && pT.getRank() == 4 && !pT.isDynamicDim(2) && pT.getDimSize(2) < window)
    return ni.fail("sliding_window_cache: the past buffers hold " + std::to_string(pT.getDimSize(2)) +
                   " positions, fewer than local_window_size " + std::to_string(window));
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
  auto bshd = [&](Value x, int64_t h) {
    return g.op<ox::ReshapeOp>(g.t({kDyn, kDyn, h, d}, g.f32), {x, g.ints({0, 0, h, d})});
  };
  auto heads4 = [&](Value x, int64_t h) {
    return g.op<ox::TransposeOp>(g.t({kDyn, h, kDyn, d}, g.f32), {bshd(x, h)},
                                 {g.b.getNamedAttr("perm", g.b.getI64ArrayAttr({0, 2, 1, 3}))});
  };

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

  // Q and K as [B, H, S, D], rotated at positions `pos` (one moe.rotary each, the head transpose folded in);
  // V transposed.
  Value q, k, v = heads4(value, hkv);
  if (rotary) {
    // Rotary positions: position_ids when given (e.g. a packed or shifted batch), else past_b + s.
    auto table = [&](Value cache) {
      return g.op<ox::GatherOp>(g.t({kDyn, kDyn, rot / 2}, g.f32), {cache, positionIds ? positionIds : pos},
                                {g.attr("axis", 0)});
    };
    Value cos = table(cosCache), sin = table(sinCache);
    auto rotate = [&](Value x, int64_t h) -> Value {
      SmallVector<NamedAttribute> attrs{g.b.getNamedAttr("rotary_dim", g.b.getI64IntegerAttr(rot)),
                                        g.b.getNamedAttr("seq_axis", g.b.getI64IntegerAttr(1)),
                                        g.b.getNamedAttr("transpose", g.b.getUnitAttr())};
      if (interleaved)
        attrs.push_back(g.b.getNamedAttr("interleaved", g.b.getUnitAttr()));
      Operation *op = ni.createOp(moe::RotaryOp::getOperationName(), {bshd(x, h), cos, sin}, attrs,
                                  {g.t({kDyn, h, kDyn, d}, g.f32)});
      return op ? op->getResult(0) : Value();
    };
    q = rotate(query, hq), k = rotate(key, hkv);
    if (!q || !k)
      return failure();
  } else {
    q = heads4(query, hq), k = heads4(key, hkv);
  }

  // The keys and values attended over: sequence b's cached positions, its new ones, zeros up to `len`;
  // query s sits at row `row`[b, s] of them. moe.kv_cache_update writes them (in place in sessions).
  Value pastLen = pastK ? g.shape(pastK, 2, 3) : g.ints({0});
  auto update = [&](Value past, Value fresh, Value filled, Value length) -> Value {
    SmallVector<Value> operands{fresh, filled, length};
    if (past)
      operands.push_back(past);
    Operation *op = ni.createOp(moe::KvCacheUpdateOp::getOperationName(), operands, {},
                                {g.t({kDyn, hkv, kDyn, d}, g.f32)});
    return op ? op->getResult(0) : Value();
  };
  Value len, row, keysK, keysV, presentK, presentV;
  auto bt = [&](Type e) { return g.t({kDyn, kDyn}, e); };
  auto vec = [&](Type e) { return g.t({kDyn}, e); };
  if (!windowCache) {
    // Full-length caches: the past's first past_b positions, then the new ones, zeros up to
    // max(total_sequence_length, past buffer length); they are the presents, and row = position.
    len = g.op<ox::MaxOp>(g.t({1}, g.i64), {tot, pastLen});
    keysK = presentK = update(pastK, k, pastB, len);
    keysV = presentV = update(pastV, v, pastB, len);
    row = pos;
  } else {
    // Window-sized caches (sliding_window_cache, as ONNX Runtime 1.31 defines them): a buffer of capacity C
    // holds L(T) positions of a sequence's T at rows 0 .. L(T) - 1, oldest first, with G = C - W + 1 and
    // L(T) = T if T <= C, else T - G * ceil((T - C) / G). The keys attended over are the L(past_b) cached
    // rows and the S new ones (C + S rows); the presents are each sequence's last L(past_b + S) of them,
    // moved to row 0 (rows past L are unspecified: here later rows, or zeros).
    Value cap = pastLen, one = g.ints({1});
    Value gap =
        g.op<ox::AddOp>(g.t({1}, g.i64), {g.op<ox::SubOp>(g.t({1}, g.i64), {cap, g.ints({window})}), one});
    auto resident = [&](Value t) {
      Value over = g.op<ox::SubOp>(vec(g.i64), {t, cap});
      Value rounds = g.op<ox::DivOp>(
          vec(g.i64), {g.op<ox::SubOp>(vec(g.i64), {g.op<ox::AddOp>(vec(g.i64), {over, gap}), one}), gap});
      Value evicted = g.op<ox::SubOp>(vec(g.i64), {t, g.op<ox::MulOp>(vec(g.i64), {gap, rounds})});
      return g.op<ox::WhereOp>(vec(g.i64), {g.op<ox::LessOrEqualOp>(vec(g.i1), {t, cap}), t, evicted});
    };
    // The graph's past inputs are window-sized: the artifact says so (Decoder.caches' window), so that
    // libmoert does not hold them to the full caches' length.
    for (Value past : {pastK, pastV})
      if (auto arg = dyn_cast<BlockArgument>(past))
        if (auto fn = dyn_cast<func::FuncOp>(arg.getOwner()->getParentOp()))
          fn.setArgAttr(arg.getArgNumber(), "moe.window_cache", g.b.getI64IntegerAttr(window));
    Value lPast = resident(pastB);
    // Sequence b's total T = seqlens_k[b] + 1: past_b + S, but for a right-padded first prompt (a batch of
    // prompts of different lengths, which ONNX Runtime 1.31 refuses with window-sized caches) its tokens
    // only.
    Value total = g.op<ox::AddOp>(vec(g.i64), {lens, g.ints({1})});
    len = g.op<ox::AddOp>(g.t({1}, g.i64), {cap, s});
    keysK = update(pastK, k, lPast, len);
    keysV = update(pastV, v, lPast, len);
    if (!keysK || !keysV)
      return failure();
    row = g.op<ox::AddOp>(bt(g.i64), {g.unsqueeze(lPast, {1}, g.t({kDyn, 1}, g.i64)),
                                      g.unsqueeze(steps, {0}, g.t({1, kDyn}, g.i64))});
    // present row i of sequence b = keys row min(first_b + i, C + S - 1), first_b = L(past_b) + T - past_b -
    // L(T) (T - past_b = S but for a padded prompt).
    Value fresh = g.op<ox::SubOp>(vec(g.i64), {total, pastB});
    Value first = g.op<ox::SubOp>(vec(g.i64), {g.op<ox::AddOp>(vec(g.i64), {lPast, fresh}), resident(total)});
    Value capScalar = g.op<ox::SqueezeOp>(g.t({}, g.i64), {cap, g.ints({0})});
    Value i = g.unsqueeze(g.op<ox::RangeOp>(vec(g.i64), {g.scalarI64(0), capScalar, g.scalarI64(1)}), {0},
                          g.t({1, kDyn}, g.i64));
    Value idx = g.op<ox::MinOp>(
        bt(g.i64), {g.op<ox::AddOp>(bt(g.i64), {g.unsqueeze(first, {1}, g.t({kDyn, 1}, g.i64)), i}),
                    g.op<ox::SubOp>(g.t({1}, g.i64), {len, one})});
    idx = g.unsqueeze(idx, {1, 3}, g.t({kDyn, 1, kDyn, 1}, g.i64));
    Value dims =
        g.op<ox::ConcatOp>(g.t({4}, g.i64), {g.shape(keysK, 0, 2), cap, g.ints({d})}, {g.attr("axis", 0)});
    idx = g.op<ox::ExpandOp>(g.t({kDyn, hkv, kDyn, d}, g.i64), {idx, dims});
    auto keep = [&](Value rows) {
      return g.op<ox::GatherElementsOp>(g.t({kDyn, hkv, kDyn, d}, g.f32), {rows, idx}, {g.attr("axis", 2)});
    };
    presentK = keep(keysK), presentV = keep(keysV);
  }
  if (!keysK || !keysV || !presentK || !presentV)
    return failure();
  Value lenScalar = g.op<ox::SqueezeOp>(g.t({}, g.i64), {len, g.ints({0})});
  Value j = g.unsqueeze(g.op<ox::RangeOp>(g.t({kDyn}, g.i64), {g.scalarI64(0), lenScalar, g.scalarI64(1)}),
                        {0}, g.t({1, kDyn}, g.i64));
  Value zero = g.scalarF32(0.0f);

  // Query s of sequence b sees rows j <= row[b, s]: an additive mask [B, 1, S, len].
  Value limit =
      g.unsqueeze(g.op<ox::AddOp>(bt(g.i64), {row, g.ints({1})}), {1, 3}, g.t({kDyn, 1, kDyn, 1}, g.i64));
  Value keys = g.unsqueeze(j, {0, 1}, g.t({1, 1, 1, kDyn}, g.i64));
  Value allowed = g.op<ox::LessOp>(g.t({kDyn, 1, kDyn, kDyn}, g.i1), {keys, limit});
  if (window > 0) { // and, with local_window_size W, only the last W of them: j > row[b, s] - W
    Value first = g.op<ox::SubOp>(g.t({kDyn, 1, kDyn, 1}, g.i64), {limit, g.ints({window})});
    Value inWindow = g.op<ox::GreaterOrEqualOp>(g.t({kDyn, 1, kDyn, kDyn}, g.i1), {keys, first});
    allowed = g.op<ox::AndOp>(g.t({kDyn, 1, kDyn, kDyn}, g.i1), {allowed, inWindow});
  }
  Value mask = g.op<ox::WhereOp>(g.t({kDyn, 1, kDyn, kDyn}, g.f32),
                                 {allowed, zero, g.scalarF32(std::numeric_limits<float>::lowest())});
  if (bias) { // attention_bias adds to the scores: one mask [B, Hq or 1, S, T]
    auto bT = cast<RankedTensorType>(bias.getType());
    mask = g.op<ox::AddOp>(g.t({kDyn, bT.getDimSize(1) == 1 ? 1 : kDyn, kDyn, kDyn}, g.f32), {mask, bias});
  }

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
  SmallVector<Value> operands{q, keysK, keysV, mask};
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

namespace {
/// The node's output: one moe.rotary over `x` ([B, S, heads * d], or [B, heads, S, d]) with cos / sin already
/// at each position ([B or 1, S, rot / 2]), in x's shape.
LogicalResult rotaryOutput(NodeImporter &ni, Graph &g, Value x, RankedTensorType xT, int64_t heads, int64_t d,
                           int64_t rot, bool interleaved, Value cos, Value sin) {
  const int64_t seqAxis = xT.getRank() == 3 ? 1 : 2;
  SmallVector<NamedAttribute> attrs{g.b.getNamedAttr("rotary_dim", g.b.getI64IntegerAttr(rot)),
                                    g.b.getNamedAttr("seq_axis", g.b.getI64IntegerAttr(seqAxis))};
  if (interleaved)
    attrs.push_back(g.b.getNamedAttr("interleaved", g.b.getUnitAttr()));
  Value in = xT.getRank() == 4
                 ? x
                 : g.op<ox::ReshapeOp>(g.t({xT.getDimSize(0), xT.getDimSize(1), heads, d}, g.f32),
                                       {x, g.ints({0, 0, heads, d})});
  Operation *op = ni.createOp(moe::RotaryOp::getOperationName(), {in, cos, sin}, attrs, {in.getType()});
  if (!op)
    return failure();
  Value out = op->getResult(0);
  if (xT.getRank() == 3)
    out = g.op<ox::ReshapeOp>(xT, {out, g.ints({0, 0, xT.getDimSize(2)})});
  ni.setOutputs(out);
  return success();
}
} // namespace

LogicalResult moec::frontend::importOrtRotaryEmbedding(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(
          ni, {"interleaved", "is_packed_batching", "num_heads", "rotary_embedding_dim", "scale"})))
    return failure();
  if (intAttr(ni, "is_packed_batching", 0) != 0)
    return ni.fail("is_packed_batching (sequences packed without padding) is not supported");
  if (float sc = floatAttr(ni, "scale").value_or(1.0f); sc != 1.0f)
    return ni.fail("scale " + std::to_string(sc) + " (only 1 is supported)");
  const bool interleaved = intAttr(ni, "interleaved", 0) != 0;
  int64_t heads = intAttr(ni, "num_heads", 0), rot = intAttr(ni, "rotary_embedding_dim", 0);
  Graph g(ni);
  Value x = ni.input(0), posIds = ni.input(1), cosCache = ni.input(2), sinCache = ni.input(3);
  auto xT = dyn_cast_or_null<RankedTensorType>(x ? x.getType() : Type());
  auto pT = dyn_cast_or_null<RankedTensorType>(posIds ? posIds.getType() : Type());
  auto cT = dyn_cast_or_null<RankedTensorType>(cosCache ? cosCache.getType() : Type());
  auto sT = dyn_cast_or_null<RankedTensorType>(sinCache ? sinCache.getType() : Type());
  if (!xT || !xT.getElementType().isF32() || (xT.getRank() != 3 && xT.getRank() != 4) ||
      xT.isDynamicDim(xT.getRank() - 1))
    return ni.fail(
        "input 'input' must be f32 [batch, sequence, hidden] or [batch, heads, sequence, head size] "
        "with a known last dim");
  if (!cT || !sT || cT != sT || cT.getRank() != 2 || !cT.getElementType().isF32() || cT.isDynamicDim(1))
    return ni.fail("'cos_cache' and 'sin_cache' must be f32 of one shape [positions, rotary dim / 2]");
  if (!pT || !pT.getElementType().isInteger(64) || pT.getRank() > 2)
    return ni.fail("input 'position_ids' must be i64 [batch, sequence] or one offset");
  const int64_t half = cT.getDimSize(1);
  int64_t d;
  if (xT.getRank() == 4) {
    d = xT.getDimSize(3);
  } else if (heads > 0) {
    if (xT.getDimSize(2) % heads)
      return ni.fail("hidden size " + std::to_string(xT.getDimSize(2)) + " is not a multiple of num_heads " +
                     std::to_string(heads));
    d = xT.getDimSize(2) / heads;
  } else if (rot == 0) {
    d = 2 * half; // ONNX Runtime's reading: the caches span the whole head
  } else {
    return ni.fail("a 3-D input with rotary_embedding_dim needs num_heads");
  }
  if (rot == 0)
    rot = d;
  if (rot != 2 * half || rot > d || d <= 0 || (xT.getRank() == 3 && xT.getDimSize(2) % d))
    return ni.fail("rotary dim " + std::to_string(rot) + ", cos_cache of " + std::to_string(half) +
                   " per position and head size " + std::to_string(d) + " do not agree");
  heads = xT.getRank() == 3 ? xT.getDimSize(2) / d : xT.getDimSize(1);

  // Positions: position_ids [B, S], or one offset o (positions o .. o + S - 1 for every sequence).
  const int64_t seqAxis = xT.getRank() == 3 ? 1 : 2;
  Value pos = posIds;
  if (pT.getRank() < 2) {
    if (pT.getRank() == 1 && pT.getDimSize(0) != 1 && !pT.isDynamicDim(0))
      return ni.fail("input 'position_ids' must be i64 [batch, sequence] or one offset");
    Value s = g.op<ox::SqueezeOp>(g.t({}, g.i64), {g.shape(x, seqAxis, seqAxis + 1), g.ints({0})});
    Value steps = g.op<ox::RangeOp>(g.t({kDyn}, g.i64), {g.scalarI64(0), s, g.scalarI64(1)});
    Value offset = g.op<ox::ReshapeOp>(g.t({1}, g.i64), {posIds, g.ints({1})});
    pos = g.unsqueeze(g.op<ox::AddOp>(g.t({kDyn}, g.i64), {steps, offset}), {0}, g.t({1, kDyn}, g.i64));
  }
  auto table = [&](Value cache) {
    return g.op<ox::GatherOp>(g.t({kDyn, kDyn, half}, g.f32), {cache, pos}, {g.attr("axis", 0)});
  };
  return rotaryOutput(ni, g, x, xT, heads, d, rot, interleaved, table(cosCache), table(sinCache));
}

LogicalResult moec::frontend::importOnnxRotaryEmbedding(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(ni, {"interleaved", "num_heads", "rotary_embedding_dim"})))
    return failure();
  const bool interleaved = intAttr(ni, "interleaved", 0) != 0;
  int64_t heads = intAttr(ni, "num_heads", 0), rot = intAttr(ni, "rotary_embedding_dim", 0);
  ni.refineInputs();
  Graph g(ni);
  Value x = ni.input(0), cosCache = ni.input(1), sinCache = ni.input(2), posIds = ni.input(3);
  auto xT = dyn_cast_or_null<RankedTensorType>(x ? x.getType() : Type());
  auto cT = dyn_cast_or_null<RankedTensorType>(cosCache ? cosCache.getType() : Type());
  auto sT = dyn_cast_or_null<RankedTensorType>(sinCache ? sinCache.getType() : Type());
  if (!xT || !xT.getElementType().isF32() || (xT.getRank() != 3 && xT.getRank() != 4) ||
      xT.isDynamicDim(xT.getRank() - 1) || (xT.getRank() == 4 && xT.isDynamicDim(1)))
    return ni.fail("input 'X' must be f32 [batch, sequence, hidden] or [batch, heads, sequence, head size] "
                   "with known heads and last dim");
  // With position_ids the caches are tables [positions, rot / 2]; without, rows already at each position
  // [batch, sequence, rot / 2].
  const int64_t cacheRank = posIds ? 2 : 3;
  if (!cT || !sT || cT != sT || cT.getRank() != cacheRank || !cT.getElementType().isF32() ||
      cT.isDynamicDim(cacheRank - 1))
    return ni.fail(std::string("'cos_cache' and 'sin_cache' must be f32 of one shape ") +
                   (posIds ? "[positions, rotary dim / 2] (with position_ids)"
                           : "[batch, sequence, rotary dim / 2] (without position_ids)"));
  if (auto pT = dyn_cast_or_null<RankedTensorType>(posIds ? posIds.getType() : Type());
      posIds && (!pT || pT.getRank() != 2 || !isa<IntegerType>(pT.getElementType())))
    return ni.fail("input 'position_ids' must be integer [batch, sequence]");
  int64_t d;
  if (xT.getRank() == 4) {
    d = xT.getDimSize(3);
    heads = xT.getDimSize(1);
  } else {
    if (heads <= 0 || xT.getDimSize(2) % heads)
      return ni.fail("a 3-D input needs num_heads dividing its hidden size " +
                     std::to_string(xT.getDimSize(2)));
    d = xT.getDimSize(2) / heads;
  }
  if (rot == 0)
    rot = d;
  const int64_t half = cT.getDimSize(cacheRank - 1);
  if (rot != 2 * half || rot > d || rot <= 0)
    return ni.fail("rotary dim " + std::to_string(rot) + ", cos_cache of " + std::to_string(half) +
                   " per position and head size " + std::to_string(d) + " do not agree");
  Value cos = cosCache, sin = sinCache;
  if (posIds) {
    Value pos = cast<RankedTensorType>(posIds.getType()).getElementType().isInteger(64)
                    ? posIds
                    : g.castLike(posIds, g.i64);
    cos = g.op<ox::GatherOp>(g.t({kDyn, kDyn, half}, g.f32), {cosCache, pos}, {g.attr("axis", 0)});
    sin = g.op<ox::GatherOp>(g.t({kDyn, kDyn, half}, g.f32), {sinCache, pos}, {g.attr("axis", 0)});
  }
  return rotaryOutput(ni, g, x, xT, heads, d, rot, interleaved, cos, sin);
}

LogicalResult moec::frontend::importOnnxAttention(NodeImporter &ni) {
  if (failed(onlyKnownAttributes(ni, {"is_causal", "kv_num_heads", "q_num_heads", "qk_matmul_output_mode",
                                      "scale", "softcap", "softmax_precision"})))
    return failure();
  if (ni.numOutputs() > 3 && !ni.node().output(3).empty())
    return ni.fail("output 'qk_matmul_output' (the scores) is not supported");
  const bool causal = intAttr(ni, "is_causal", 0) != 0;
  const float softcap = floatAttr(ni, "softcap").value_or(0.0f);
  if (!(softcap >= 0.0f))
    return ni.fail("softcap " + std::to_string(softcap) + " (0 for none, else positive)");
  ni.refineInputs();
  Graph g(ni);
  Value query = ni.input(0), key = ni.input(1), value = ni.input(2), attnMask = ni.input(3),
        pastK = ni.input(4), pastV = ni.input(5), nonpad = ni.input(6);
  if (!pastK != !pastV)
    return ni.fail("'past_key' and 'past_value' come both or neither");
  const bool presents = ni.numOutputs() > 1 && !ni.node().output(1).empty();
  if (presents != (ni.numOutputs() > 2 && !ni.node().output(2).empty()))
    return ni.fail("outputs 'present_key' and 'present_value' come both or neither");
  if (nonpad && (pastK || presents))
    return ni.fail("'nonpad_kv_seqlen' (a cache updated outside the op) with past / present caches");
  auto typeOf = [](Value v) { return dyn_cast_or_null<RankedTensorType>(v ? v.getType() : Type()); };
  auto qT = typeOf(query), kT = typeOf(key), vT = typeOf(value);
  if (!qT || !kT || !vT || !qT.getElementType().isF32() || !kT.getElementType().isF32() ||
      !vT.getElementType().isF32())
    return ni.fail("Q, K and V must be f32 tensors of known rank (f16 / bf16 are not supported)");
  const int64_t rank = qT.getRank();
  if ((rank != 3 && rank != 4) || kT.getRank() != rank || vT.getRank() != rank)
    return ni.fail("Q, K and V must all be 3-D [batch, sequence, heads * head size] or all 4-D [batch, "
                   "heads, sequence, head size]");
  int64_t hq, hkv, d, dv;
  if (rank == 4) {
    hq = qT.getDimSize(1), hkv = kT.getDimSize(1), d = qT.getDimSize(3), dv = vT.getDimSize(3);
    if (ShapedType::isDynamic(hq) || ShapedType::isDynamic(hkv) || ShapedType::isDynamic(d) ||
        ShapedType::isDynamic(dv) || vT.getDimSize(1) != hkv || kT.getDimSize(3) != d)
      return ni.fail("4-D Q [B, Hq, S, D], K [B, Hkv, L, D] and V [B, Hkv, L, Dv] need known, agreeing head "
                     "counts and sizes");
  } else {
    hq = intAttr(ni, "q_num_heads", 0), hkv = intAttr(ni, "kv_num_heads", 0);
    if (hq <= 0 || hkv <= 0)
      return ni.fail("3-D inputs need the q_num_heads and kv_num_heads attributes");
    const int64_t wq = qT.getDimSize(2), wk = kT.getDimSize(2), wv = vT.getDimSize(2);
    if (ShapedType::isDynamic(wq) || ShapedType::isDynamic(wk) || ShapedType::isDynamic(wv) || wq % hq ||
        wk % hkv || wv % hkv || wq / hq != wk / hkv)
      return ni.fail("3-D Q, K and V widths must be known multiples of their head counts, with one head size "
                     "for Q and K");
    d = wq / hq, dv = wv / hkv;
  }
  if (hq % hkv)
    return ni.fail("q heads " + std::to_string(hq) + " must be a multiple of kv heads " +
                   std::to_string(hkv));
  for (auto [past, width] : {std::pair{pastK, d}, std::pair{pastV, dv}}) {
    auto pT = typeOf(past);
    if (past && (!pT || pT.getRank() != 4 || !pT.getElementType().isF32() ||
                 (!pT.isDynamicDim(1) && pT.getDimSize(1) != hkv) ||
                 (!pT.isDynamicDim(3) && pT.getDimSize(3) != width)))
      return ni.fail("past caches must be f32 [batch, " + std::to_string(hkv) + ", past length, head size]");
  }
  auto mT = typeOf(attnMask);
  if (attnMask && (!mT || mT.getRank() < 2 || mT.getRank() > 4 ||
                   !(mT.getElementType().isF32() || mT.getElementType().isInteger(1))))
    return ni.fail("input 'attn_mask' must be bool or f32 of rank 2 to 4, broadcastable to [batch, heads, "
                   "sequence, total length]");
  if (auto nT = typeOf(nonpad); nonpad && (!nT || nT.getRank() != 1 || !nT.getElementType().isInteger(64)))
    return ni.fail("input 'nonpad_kv_seqlen' must be i64 [batch]");

  // Q, K, V as [B, H, S, D].
  auto heads4 = [&](Value x, int64_t h, int64_t w) -> Value {
    if (rank == 4)
      return x;
    Value r = g.op<ox::ReshapeOp>(g.t({kDyn, kDyn, h, w}, g.f32), {x, g.ints({0, 0, h, w})});
    return g.op<ox::TransposeOp>(g.t({kDyn, h, kDyn, w}, g.f32), {r},
                                 {g.b.getNamedAttr("perm", g.b.getI64ArrayAttr({0, 2, 1, 3}))});
  };
  Value q = heads4(query, hq, d), k = heads4(key, hkv, d), v = heads4(value, hkv, dv);
  // present = past ++ new along the sequence (the Concat libmoert's sessions append in place).
  if (pastK) {
    k = g.op<ox::ConcatOp>(g.t({kDyn, hkv, kDyn, d}, g.f32), {pastK, k}, {g.attr("axis", 2)});
    v = g.op<ox::ConcatOp>(g.t({kDyn, hkv, kDyn, dv}, g.f32), {pastV, v}, {g.attr("axis", 2)});
  }

  // The additive mask [B or 1, 1 or Hq, S, L]: -inf where the causal frontier (query i sees key j iff
  // j <= i + offset: offset = past length, nonpad_kv_seqlen[b] - S, else 0) or padding keys (j >=
  // nonpad_kv_seqlen[b]) or a false attn_mask entry rules a key out; a float attn_mask added.
  const float inf = std::numeric_limits<float>::infinity();
  Value mask;
  auto additive = [&](Value allowed, RankedTensorType t) {
    return g.op<ox::WhereOp>(t.clone(g.f32), {allowed, g.scalarF32(0.0f), g.scalarF32(-inf)});
  };
  if (causal || nonpad) {
    Value s = g.op<ox::SqueezeOp>(g.t({}, g.i64), {g.shape(q, 2, 3), g.ints({0})});
    Value l = g.op<ox::SqueezeOp>(g.t({}, g.i64), {g.shape(k, 2, 3), g.ints({0})});
    auto range = [&](Value n, RankedTensorType t, ArrayRef<int64_t> axes) {
      return g.unsqueeze(g.op<ox::RangeOp>(g.t({kDyn}, g.i64), {g.scalarI64(0), n, g.scalarI64(1)}), axes, t);
    };
    Value i = range(s, g.t({1, 1, kDyn, 1}, g.i64), {0, 1, 3}),
          j = range(l, g.t({1, 1, 1, kDyn}, g.i64), {0, 1, 2});
    Value nb = nonpad ? g.unsqueeze(nonpad, {1, 2, 3}, g.t({kDyn, 1, 1, 1}, g.i64)) : Value();
    const int64_t bDim = nonpad ? kDyn : 1;
    auto bsl = g.t({bDim, 1, kDyn, kDyn}, g.i1);
    Value allowed;
    if (causal) {
      Value offset = pastK ? g.shape(pastK, 2, 3) : g.ints({0});
      if (nonpad)
        offset = g.op<ox::SubOp>(g.t({kDyn, 1, 1, 1}, g.i64), {nb, s});
      Value limit = g.op<ox::AddOp>(g.t({bDim, 1, kDyn, 1}, g.i64), {i, offset});
      allowed = g.op<ox::LessOrEqualOp>(bsl, {j, limit});
    }
    if (nonpad) {
      Value real = g.op<ox::LessOp>(g.t({kDyn, 1, 1, kDyn}, g.i1), {j, nb});
      allowed = allowed ? g.op<ox::AndOp>(bsl, {allowed, real}) : real;
    }
    mask = additive(allowed, cast<RankedTensorType>(allowed.getType()));
  }
  if (attnMask) {
    SmallVector<int64_t> front;
    for (int64_t a = 0; a < 4 - mT.getRank(); ++a)
      front.push_back(a);
    SmallVector<int64_t> dims(front.size(), 1);
    dims.append(mT.getShape().begin(), mT.getShape().end());
    Value m = front.empty() ? attnMask : g.unsqueeze(attnMask, front, g.t(dims, mT.getElementType()));
    if (mT.getElementType().isInteger(1))
      m = additive(m, g.t(dims, g.i1));
    auto size = [&](int64_t a, int64_t b) { return a == 1 ? b : b == 1 ? a : a == b ? a : kDyn; };
    if (mask) {
      auto aT = cast<RankedTensorType>(mask.getType());
      SmallVector<int64_t> out;
      for (int64_t a = 0; a < 4; ++a)
        out.push_back(size(aT.getDimSize(a), dims[a]));
      mask = g.op<ox::AddOp>(g.t(out, g.f32), {mask, m});
    } else {
      mask = m;
    }
  }

  const float scale = floatAttr(ni, "scale").value_or(1.0f / std::sqrt(static_cast<float>(d)));
  SmallVector<NamedAttribute> attrs{g.b.getNamedAttr("scale", g.b.getF32FloatAttr(scale)),
                                    g.b.getNamedAttr("nan_to_zero", g.b.getUnitAttr())};
  if (softcap > 0.0f)
    attrs.push_back(g.b.getNamedAttr("softcap", g.b.getF32FloatAttr(softcap)));
  attrs.push_back(
      g.b.getNamedAttr("operandSegmentSizes", g.b.getDenseI32ArrayAttr({1, 1, 1, mask ? 1 : 0, 0})));
  SmallVector<Value> operands{q, k, v};
  if (mask)
    operands.push_back(mask);
  Operation *att =
      ni.createOp(moe::AttentionOp::getOperationName(), operands, attrs, {g.t({kDyn, hq, kDyn, dv}, g.f32)});
  if (!att)
    return failure();
  att->setAttr("moe.source", g.b.getStringAttr("Attention"));
  Value out = att->getResult(0);
  if (rank == 3) {
    out = g.op<ox::TransposeOp>(g.t({kDyn, kDyn, hq, dv}, g.f32), {out},
                                {g.b.getNamedAttr("perm", g.b.getI64ArrayAttr({0, 2, 1, 3}))});
    out = g.op<ox::ReshapeOp>(g.t({kDyn, kDyn, hq * dv}, g.f32), {out, g.ints({0, 0, hq * dv})});
  }
  SmallVector<Value> results{out, k, v, out}; // the last a placeholder: qk_matmul_output is refused above
  ni.setOutputs(ArrayRef<Value>(results).take_front(std::min<unsigned>(ni.numOutputs(), 4)));
  return success();
}
