//===- PruneStaticMask.cpp - remove masked hidden dims from expert weights -===//
#include "ir/MoEOps.h"
#include "passes/MatchUtils.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/IR/DialectResourceBlobManager.h"
#include "mlir/IR/Matchers.h"

#include <cstring>

namespace moec {
#define GEN_PASS_DEF_MOEPRUNESTATICMASKPASS
#include "passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using moec::constantBytes;
using moec::makeConstant;
using moec::moe::SparseMoEOp;

namespace {

LogicalResult prune(SparseMoEOp op) {
  if (!op.getMask() || op.getFc1QuantAttr() || op.getFc2QuantAttr())
    return failure();
  DenseElementsAttr mask;
  if (!matchPattern(op.getMask(), m_Constant(&mask)))
    return failure();
  auto fc1T = op.getFc1().getType(), fc2T = op.getFc2().getType();
  if (!fc1T.hasStaticShape() || !fc2T.hasStaticShape())
    return failure();
  int64_t e = fc2T.getDimSize(0), h = fc2T.getDimSize(1), f = fc2T.getDimSize(2);
  int64_t g = op.isGated() ? 2 : 1;
  bool interleaved = op.isGated() && op.getGatedLayout() == moec::moe::GatedLayout::interleaved;

  SmallVector<SmallVector<int64_t>> kept(e);
  auto values = llvm::to_vector(mask.getValues<APInt>());
  int64_t newF = 0;
  for (int64_t x = 0; x < e; ++x) {
    for (int64_t j = 0; j < f; ++j)
      if (!values[x * f + j].isZero())
        kept[x].push_back(j);
    newF = std::max<int64_t>(newF, kept[x].size());
  }
  if (newF == f)
    return failure();
  newF = std::max<int64_t>(newF, 1); // keep a non-empty hidden dim: an all-masked expert adds zero

  std::vector<char> w1 = constantBytes(op.getFc1()), w2 = constantBytes(op.getFc2());
  std::vector<char> b1 = op.getFc1Bias() ? constantBytes(op.getFc1Bias()) : std::vector<char>();
  if (w1.empty() || w2.empty() || (op.getFc1Bias() && b1.empty()))
    return failure();
  size_t s1 = fc1T.getElementTypeBitWidth() / 8, s2 = fc2T.getElementTypeBitWidth() / 8;
  // fc1 row of hidden dim j (part 0 = gate or the only row, part 1 = up) in a layout with hidden size n.
  auto row = [&](int64_t j, int64_t part, int64_t n) { return interleaved ? 2 * j + part : part * n + j; };

  std::vector<char> nw1(e * g * newF * h * s1, 0), nw2(e * h * newF * s2, 0), nb1;
  size_t sb = 0;
  if (op.getFc1Bias()) {
    sb = cast<RankedTensorType>(op.getFc1Bias().getType()).getElementTypeBitWidth() / 8;
    nb1.assign(e * g * newF * sb, 0);
  }
  for (int64_t x = 0; x < e; ++x) {
    for (auto [slot, j] : llvm::enumerate(kept[x])) {
      for (int64_t part = 0; part < g; ++part) {
        int64_t from = x * g * f + row(j, part, f), to = x * g * newF + row(slot, part, newF);
        std::memcpy(&nw1[to * h * s1], &w1[from * h * s1], h * s1);
        if (!nb1.empty())
          std::memcpy(&nb1[to * sb], &b1[from * sb], sb);
      }
      for (int64_t r = 0; r < h; ++r)
        std::memcpy(&nw2[((x * h + r) * newF + slot) * s2], &w2[((x * h + r) * f + j) * s2], s2);
    }
  }

  OpBuilder b(op);
  Location loc = op.getLoc();
  auto fc1New = RankedTensorType::get({e, g * newF, h}, fc1T.getElementType());
  auto fc2New = RankedTensorType::get({e, h, newF}, fc2T.getElementType());
  Value c1 = makeConstant(b, loc, fc1New, nw1, "pruned_fc1");
  Value c2 = makeConstant(b, loc, fc2New, nw2, "pruned_fc2");
  Value cb;
  if (!nb1.empty()) {
    auto bt = cast<RankedTensorType>(op.getFc1Bias().getType());
    cb = makeConstant(b, loc, RankedTensorType::get({e, g * newF}, bt.getElementType()), nb1,
                      "pruned_fc1_bias");
  }
  op.getFc1Mutable().assign(c1);
  op.getFc2Mutable().assign(c2);
  if (cb)
    op.getFc1BiasMutable().assign(cb);
  op.getMaskMutable().clear();
  return success();
}

struct MoEPruneStaticMaskPass final : moec::impl::MoEPruneStaticMaskPassBase<MoEPruneStaticMaskPass> {
  void runOnOperation() override {
    getOperation()->walk([](SparseMoEOp op) { (void)prune(op); });
  }
};

} // namespace
