//===- RaiseLinear.cpp - MatMul / Gemm with a constant weight -> moe.linear ----===//
//
// Every linear layer left after the MoE fusion passes (attention projections, dense MLPs, LM heads, MLP
// routers) becomes one `moe.linear`: `MatMul(x, W)` or `Gemm(x, W, C)` with W a constant 2-D matrix (seen
// through a 2-D `Transpose`, as some exporters leave it), a constant bias (`Gemm`'s C or a following `Add`),
// and a residual `Add` of another value of the same type when the layer's result feeds nothing else.
// Codegen turns each into a linear dispatch (kernels/cpu/linear.h). Token embeddings (`Gather` of rows of a
// constant 2-D table) become `moe.embedding`, so the table too is stored as `--weights` says.
//
//===----------------------------------------------------------------------===//
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "kernels/cpu/moert_kernel_abi.h"
#include "passes/MatchUtils.h"
#include "passes/Passes.h"

#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Matchers.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/StringExtras.h"

#include <cstring>

namespace moec {
#define GEN_PASS_DEF_MOERAISELINEARPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
namespace ox = moec::onnxir;
namespace moe = moec::moe;

namespace {

/// W as a constant [K, N] value: the operand itself when it already is one, else a new constant holding the
/// transpose of an [N, K] one.
Value weightInOut(OpBuilder &b, Location loc, const LinearMatch &l) {
  if (!l.weightIsOutIn)
    return l.weight;
  std::vector<char> inOut = linearWeightInOut(l);
  if (inOut.empty())
    return {};
  auto t = cast<RankedTensorType>(l.weight.getType());
  return makeConstant(b, loc, RankedTensorType::get({l.in, l.out}, t.getElementType()), inOut, "linear_weight");
}

/// Raises the MatMul / Gemm `mm`; returns why not, or "" when it did.
std::string raise(Operation *mm) {
  Value out = mm->getResult(0);
  // A bias Add right after (MatMul + Add), when it is the only reader.
  Value end = out;
  if (out.hasOneUse())
    if (auto add = dyn_cast<ox::AddOp>(*out.getUsers().begin()))
      if (isa<ox::MatMulOp>(mm))
        end = add.getResult();
  auto lin = matchLinear(end);
  if (!lin || lin->ops.back() != mm) {
    lin = matchLinear(out);
    end = out;
  }
  // MatMul(x, Transpose(W)) with W a constant [N, K].
  Value wTransposed;
  if (!lin)
    if (auto m = dyn_cast<ox::MatMulOp>(mm))
      if (auto tr = defOp<ox::TransposeOp>(m.getB())) {
        auto perm = tr.getPerm();
        auto wt = dyn_cast<RankedTensorType>(tr.getData().getType());
        bool swap = !perm || (perm->size() == 2 && cast<IntegerAttr>((*perm)[0]).getInt() == 1);
        if (swap && wt && wt.getRank() == 2 && wt.hasStaticShape() && matchPattern(tr.getData(), m_Constant())) {
          LinearMatch l;
          l.x = m.getA();
          l.weight = tr.getData();
          l.weightIsOutIn = true;
          l.out = wt.getDimSize(0), l.in = wt.getDimSize(1);
          l.ops.push_back(mm);
          lin = l;
          wTransposed = tr.getResult();
        }
      }
  if (!lin)
    return "not x @ W with W a constant 2-D matrix (or Gemm with transA / alpha != 1)";
  auto xT = dyn_cast<RankedTensorType>(lin->x.getType());
  auto wT = cast<RankedTensorType>(lin->weight.getType());
  auto outT = dyn_cast<RankedTensorType>(end.getType());
  if (!xT || !outT || xT.getRank() < 1 || outT.getRank() != xT.getRank())
    return "the input or result has no known rank (or a batched weight)";
  if (!xT.getElementType().isF32() || !wT.getElementType().isF32() || !outT.getElementType().isF32())
    return "only f32 activations and weights are raised (got " +
           std::string(xT.getElementType().isF32() ? "non-f32 weights" : "non-f32 activations") + ")";
  if (!xT.isDynamicDim(xT.getRank() - 1) && xT.getShape().back() != lin->in)
    return "the input's last dim does not match the weight";
  OpBuilder b(mm);
  // x @ W means x's last dim is W's K (and the result's N) even where shape inference left them unknown (a
  // reshape to [..., -1] of a value whose dims it could not follow): the types say so through an Identity,
  // a view at run time, where the linear dispatch checks the real dims.
  Value x = lin->x;
  if (xT.isDynamicDim(xT.getRank() - 1)) {
    SmallVector<int64_t> shape(xT.getShape());
    shape.back() = lin->in;
    x = b.create<ox::IdentityOp>(mm->getLoc(), RankedTensorType::get(shape, xT.getElementType()), x);
  }
  RankedTensorType resultT = outT;
  if (outT.isDynamicDim(outT.getRank() - 1)) {
    SmallVector<int64_t> shape(outT.getShape());
    shape.back() = lin->out;
    resultT = RankedTensorType::get(shape, outT.getElementType());
  }
  Value w = weightInOut(b, mm->getLoc(), *lin);
  if (!w)
    return "the weight is not a readable constant";
  Value bias;
  if (lin->bias) {
    auto bt = cast<RankedTensorType>(lin->bias.getType());
    std::vector<char> bytes = constantBytes(lin->bias);
    if (!bt.getElementType().isF32() || bytes.empty())
      return "the bias is not a readable f32 constant";
    auto ft = RankedTensorType::get({lin->out}, bt.getElementType());
    bias = bt == ft ? lin->bias : makeConstant(b, mm->getLoc(), ft, bytes, "linear_bias");
  }
  auto op = b.create<moe::LinearOp>(mm->getLoc(), TypeRange{resultT}, x, w, /*scales=*/Value(),
                                    /*zero_points=*/Value(), bias,
                                    /*residual=*/Value(), /*norm_weight=*/Value(), /*norm_bias=*/Value(),
                                    moe::Storage::fp32, /*block_size=*/32, moe::WeightQuantAttr(),
                                    /*int8_activations=*/false, moe::NormKind::none, APFloat(1e-5f));
  op->setAttr("moe.source", b.getStringAttr(mm->getName().stripDialect()));
  if (lin->bias)
    noteFused(op, "bias");
  end.replaceAllUsesWith(resultT == outT
                             ? op.getOutput()
                             : b.create<ox::IdentityOp>(mm->getLoc(), outT, op.getOutput()).getResult());
  for (Operation *dead : lin->ops)
    if (dead->use_empty())
      dead->erase();
  if (wTransposed && wTransposed.use_empty())
    wTransposed.getDefiningOp()->erase();

  // A residual connection: Add(linear, r) with r of the same type, when the Add is the only reader.
  Value res = op.getOutput();
  if (res.hasOneUse())
    if (auto add = dyn_cast<ox::AddOp>(*res.getUsers().begin())) {
      Value r = otherOperand(add, res);
      if (r && r != res && r.getType() == res.getType() && !matchPattern(r, m_Constant())) {
        op->moveBefore(add);
        op.getResidualMutable().assign(r);
        noteFused(op, "residual");
        add.getResult().replaceAllUsesWith(res);
        add->erase();
      }
    }
  return "";
}

/// Folds the norm in front of linear layers into them (each normalises its own rows: a norm read by Q, K and
/// V projections goes into all three) when the norm's output is read by nothing but linear layers' inputs.
void fuseNorms(Operation *root, bool remarks) {
  llvm::MapVector<Value, SmallVector<moe::LinearOp>> byInput;
  root->walk([&](moe::LinearOp l) {
    if (l.getNorm() == moe::NormKind::none) // MatMulNBits layers (imported, not raised) included
      byInput[l.getInput()].push_back(l);
  });
  for (auto &[v, layers] : byInput) {
    auto n = matchNorm(v, layers.front().getInFeatures());
    if (!n)
      continue;
    std::string why;
    for (OpOperand &use : v.getUses()) {
      auto l = dyn_cast<moe::LinearOp>(use.getOwner());
      if (!l || use.getOperandNumber() != 0 || l.getNorm() != moe::NormKind::none) {
        why = "the norm's output is also read by '" + use.getOwner()->getName().getStringRef().str() + "'";
        break;
      }
    }
    if (why.empty() && !usedOnlyWithin(n->ops, n->ops.front()))
      why = "an intermediate of the norm is also read outside it";
    if (why.empty() &&
        (!matchPattern(n->weight, m_Constant()) || (n->bias && !matchPattern(n->bias, m_Constant()))))
      why = "the norm's weight or bias is not a constant";
    for (Value w : {n->weight, n->bias})
      if (why.empty() && w && !cast<RankedTensorType>(w.getType()).getElementType().isF32())
        why = "the norm's weights are not f32";
    if (!why.empty()) {
      for (moe::LinearOp l : layers)
        remarkIfUnfused(remarks, l, "norm not fused into the linear layer", why);
      continue;
    }
    for (moe::LinearOp l : layers) {
      l.getInputMutable().assign(n->x);
      l.getNormWeightMutable().assign(n->weight);
      if (n->bias)
        l.getNormBiasMutable().assign(n->bias);
      l.setNorm(n->kind);
      l.setNormEpsilon(APFloat(static_cast<float>(n->eps)));
      noteFused(l, n->kind == moe::NormKind::rms ? "rms_norm" : "layer_norm");
    }
    eraseDeadOps(n->ops);
  }
}

/// Merges the linear layers that read one input through one norm (Q, K and V projections; gate and up) into
/// one `moe.linear` with a result per layer, their weights (and biases, zero where a layer has none)
/// concatenated along N, up to MOERT_LIN_MAX_OUTPUTS at a time: one dispatch reads and normalises the input
/// once. Layers with a residual, with weights kept as imported (MatMulNBits) or whose result is a graph
/// output (an LM head: it may be stored wider) stay apart.
void mergeProjections(Operation *root) {
  llvm::MapVector<Value, SmallVector<moe::LinearOp>> byInput;
  root->walk([&](moe::LinearOp l) {
    if (l.getOutputs().size() == 1 && !l.getResidual() && !l.getWeightQuantAttr() &&
        !isGraphOutput(l.getOutput()) && l.getWeight().getType().getElementType().isF32() &&
        l.getWeight().getType().hasStaticShape())
      byInput[l.getInput()].push_back(l);
  });
  for (auto &[x, all] : byInput) {
    // Groups of layers with the same norm (all of them, when the norm was fused into every reader), in order.
    SmallVector<SmallVector<moe::LinearOp>> groups;
    for (moe::LinearOp l : all) {
      auto same = [&](moe::LinearOp o) {
        return o->getBlock() == l->getBlock() && o.getNorm() == l.getNorm() &&
               o.getNormWeight() == l.getNormWeight() && o.getNormBias() == l.getNormBias() &&
               o.getNormEpsilon() == l.getNormEpsilon();
      };
      auto g = llvm::find_if(
          groups, [&](auto &grp) { return same(grp.front()) && grp.size() < size_t(MOERT_LIN_MAX_OUTPUTS); });
      if (g == groups.end())
        groups.push_back({l});
      else
        g->push_back(l);
    }
    for (auto &group : groups) {
      if (group.size() < 2)
        continue;
      const int64_t k = group.front().getInFeatures();
      std::vector<std::vector<char>> weights;
      int64_t n = 0;
      bool bias = false, readable = true;
      for (moe::LinearOp l : group) {
        weights.push_back(constantBytes(l.getWeight()));
        readable &= int64_t(weights.back().size()) == k * l.getOutFeatures() * int64_t(sizeof(float));
        n += l.getOutFeatures();
        bias |= l.getBias() != nullptr;
      }
      std::vector<float> biases(bias ? n : 0, 0.0f);
      for (int64_t j = 0, at = 0; readable && j < int64_t(group.size()); at += group[j].getOutFeatures(), ++j)
        if (Value b = group[j].getBias()) {
          std::vector<char> bytes = constantBytes(b);
          readable &= int64_t(bytes.size()) == group[j].getOutFeatures() * int64_t(sizeof(float));
          if (readable)
            std::memcpy(biases.data() + at, bytes.data(), bytes.size());
        }
      if (!readable)
        continue;
      std::vector<char> w(size_t(k) * n * sizeof(float)); // [K, N]: row k is every layer's row k in turn
      for (int64_t row = 0; row < k; ++row) {
        char *dst = w.data() + size_t(row) * n * sizeof(float);
        for (size_t j = 0; j < group.size(); ++j) {
          const size_t bytes = size_t(group[j].getOutFeatures()) * sizeof(float);
          std::memcpy(dst, weights[j].data() + row * bytes, bytes);
          dst += bytes;
        }
      }
      moe::LinearOp first =
          *llvm::min_element(group, [](moe::LinearOp a, moe::LinearOp b) { return a->isBeforeInBlock(b); });
      OpBuilder b(first);
      Location loc =
          b.getFusedLoc(llvm::to_vector(llvm::map_range(group, [](moe::LinearOp l) { return l.getLoc(); })));
      auto f32 = b.getF32Type();
      Value wc = makeConstant(b, loc, RankedTensorType::get({k, n}, f32), w, "linear_weight");
      Value bc = bias ? makeConstant(b, loc, RankedTensorType::get({n}, f32),
                                     ArrayRef<char>(reinterpret_cast<const char *>(biases.data()), n * 4),
                                     "linear_bias")
                      : Value();
      SmallVector<Type> types;
      for (moe::LinearOp l : group)
        types.push_back(l.getOutput().getType());
      auto op = b.create<moe::LinearOp>(loc, types, x, wc, Value(), Value(), bc, Value(),
                                        first.getNormWeight(), first.getNormBias(), moe::Storage::fp32,
                                        /*block_size=*/32, moe::WeightQuantAttr(), /*int8_activations=*/false,
                                        first.getNorm(), first.getNormEpsilon());
      SmallVector<std::string> sources, fused;
      for (moe::LinearOp l : group) {
        if (auto src = l->getAttrOfType<StringAttr>("moe.source"))
          sources.push_back(src.getValue().str());
        if (auto list = l->getAttrOfType<ArrayAttr>("moe.fused"))
          for (Attribute a : list)
            if (!llvm::is_contained(fused, cast<StringAttr>(a).getValue().str()))
              fused.push_back(cast<StringAttr>(a).getValue().str());
      }
      op->setAttr("moe.source", b.getStringAttr(llvm::join(sources, " + ")));
      for (const std::string &f : fused)
        noteFused(op, f);
      noteFused(op, std::to_string(group.size()) + " layers of one input");
      SmallVector<Operation *> dead;
      for (auto [j, l] : llvm::enumerate(group)) {
        l.getOutput().replaceAllUsesWith(op.getOutputs()[j]);
        for (Value c : {l.getWeight(), l.getBias()})
          if (c && c.getDefiningOp())
            dead.push_back(c.getDefiningOp());
        l->erase();
      }
      eraseDeadOps(dead);
    }
  }
}

/// Raises `Gather(table, indices, axis = 0)` over a constant [V, H] f32 table (the caller passes only tables
/// whose rows have the model's hidden size, so rotary cos/sin caches and other small tables stay exact);
/// returns why not, or "" when it did.
std::string raiseEmbedding(ox::GatherOp g) {
  auto tT = dyn_cast<RankedTensorType>(g.getData().getType());
  auto iT = dyn_cast<RankedTensorType>(g.getIndices().getType());
  auto outT = dyn_cast<RankedTensorType>(g.getOutput().getType());
  if (!tT || tT.getRank() != 2 || !tT.hasStaticShape())
    return "the table is not a 2-D matrix of static shape";
  if (int64_t(g.getAxis()) != 0 && int64_t(g.getAxis()) != -2)
    return "it gathers along axis " + std::to_string(int64_t(g.getAxis())) + ", not the table's rows";
  if (!tT.getElementType().isF32())
    return "only f32 tables are raised";
  if (!iT || !outT || !iT.getElementType().isSignlessInteger() ||
      (iT.getElementType().getIntOrFloatBitWidth() != 64 &&
       iT.getElementType().getIntOrFloatBitWidth() != 32))
    return "the indices are not a ranked int64 / int32 tensor";
  if (outT.getRank() != iT.getRank() + 1)
    return "the result's rank is not the indices' + 1";
  OpBuilder b(g);
  auto op = b.create<moe::EmbeddingOp>(g.getLoc(), outT, g.getData(), g.getIndices(), moe::Storage::fp32,
                                       /*block_size=*/32);
  op->setAttr("moe.source", b.getStringAttr("Gather"));
  g.getOutput().replaceAllUsesWith(op.getResult());
  g->erase();
  return "";
}

struct MoERaiseLinearPass final : moec::impl::MoERaiseLinearPassBase<MoERaiseLinearPass> {
  using Base::Base;
  void runOnOperation() override {
    SmallVector<Operation *> candidates;
    getOperation()->walk([&](Operation *op) {
      if (isa<ox::MatMulOp, ox::GemmOp>(op) ||
          (isa<ox::GatherOp>(op) && matchPattern(op->getOperand(0), m_Constant())))
        candidates.push_back(op);
    });
    llvm::SmallDenseSet<int64_t> hidden; // the model's hidden sizes: MoE layers' H, linear layers' K
    getOperation()->walk(
        [&](moe::SparseMoEOp m) { hidden.insert(m.getInput().getType().getShape().back()); });
    SmallVector<ox::GatherOp> gathers;
    for (Operation *mm : candidates) {
      if (auto g = dyn_cast<ox::GatherOp>(mm)) {
        gathers.push_back(g);
        continue;
      }
      // Only layers with a constant weight are linear layers (activation x activation products are
      // attention's, left to the op kernels).
      Value w = mm->getOperand(1);
      if (auto tr = defOp<ox::TransposeOp>(w))
        w = tr.getData();
      if (!matchPattern(w, m_Constant()))
        continue;
      std::string why = raise(mm);
      remarkIfUnfused(remarks, mm, "linear layer not raised", why);
    }
    fuseNorms(getOperation(), remarks);
    mergeProjections(getOperation());
    getOperation()->walk([&](moe::LinearOp l) { hidden.insert(l.getInFeatures()); });
    for (ox::GatherOp g : gathers) {
      // A table whose rows are not the model's hidden size (the K of a linear layer or the H of a MoE
      // layer) is not a token embedding (rotary cos/sin caches, position tables): nothing to raise or report.
      // Nor is a gather from a rank-3 or higher tensor (an expert's weights picked by its index).
      auto tT = dyn_cast<RankedTensorType>(g.getData().getType());
      if (tT && ((tT.getRank() == 2 && !tT.isDynamicDim(1) && !hidden.contains(tT.getDimSize(1))) ||
                 tT.getRank() > 2))
        continue;
      remarkIfUnfused(remarks, g, "embedding not raised", raiseEmbedding(g));
    }
  }
};

} // namespace
