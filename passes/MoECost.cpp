//===- MoECost.cpp - work and weight traffic of one MoE layer ------------===//
#include "passes/MoECost.h"

#include "ir/MoEOps.h"
#include "kernels/cpu/moert_kernel_abi.h"

using namespace mlir;

namespace moec {

int64_t MoELayerCost::flopsPerToken() const {
  if (routerFlops < 0 || predictorFlops < 0 || expertFlops < 0)
    return -1;
  return routerFlops + predictorFlops + expertFlops + sharedFlops;
}

int64_t MoELayerCost::weightBytesPerToken() const {
  return weightBytesPerExpert < 0 ? -1 : expertsPerToken * weightBytesPerExpert + sharedWeightBytes;
}

double storedWeightBytes(int storage, int64_t block, int scaleBytes) {
  switch (moe::Storage(storage)) {
  case moe::Storage::bf16:
  case moe::Storage::fp16:
    return 2.0;
  case moe::Storage::int8:
    return 1.0 + scaleBytes / double(block);
  case moe::Storage::int4:
    return 0.5 + scaleBytes / double(block);
  default:
    return 4.0;
  }
}

namespace {
/// Bytes of one stored value of a weight tensor: packed bits when quantised, else what `storage` stores (f32
/// weights), scales included.
double valueBytes(RankedTensorType t, moe::WeightQuantAttr q, moe::Storage storage) {
  if (q)
    return q.getBits() / 8.0;
  if (t.getElementType().isF32() && storage != moe::Storage::fp32)
    return storedWeightBytes(int(storage), MOERT_EXPERT_QBLOCK, MOERT_QSCALE_BYTES);
  return t.getElementTypeBitWidth() / 8.0;
}

/// Scale bytes for `rows` rows of reduction length `k` of which `active` values are read.
double scaleBytes(Value scales, moe::WeightQuantAttr q, int64_t rows, int64_t k, int64_t active) {
  if (!scales)
    return 0;
  double perScale = cast<RankedTensorType>(scales.getType()).getElementTypeBitWidth() / 8.0;
  double blocks = q.getBlockSize() == 0 ? 1.0 : double(k) / q.getBlockSize();
  return rows * perScale * blocks * (double(active) / k);
}
} // namespace

MoELayerCost computeMoELayerCost(moe::SparseMoEOp op) {
  MoELayerCost c;
  c.expertsPerToken = op.getK();
  int64_t e = op.getNumExperts();
  int64_t h = op.getInput().getType().getDimSize(1);
  int64_t f = op.getHiddenDim();
  int64_t a = op.getActiveHiddenDim();
  if (ShapedType::isDynamic(e) || ShapedType::isDynamic(h) || ShapedType::isDynamic(f) ||
      ShapedType::isDynamic(a))
    return c;
  c.activeHiddenDim = a;
  int64_t n = e + op.getZeroExperts();
  int64_t gate = op.isGated() ? 2 : 1;
  int64_t k = op.getK();

  c.routerFlops = op.getRouterKind() == moe::RouterKind::linear ? 2 * h * n : 0;
  int64_t r = 0;
  double predictorBytes = 0;
  if (op.getPredA()) {
    auto aT = cast<RankedTensorType>(op.getPredA().getType());
    r = aT.getDimSize(2);
    if (ShapedType::isDynamic(r))
      return c;
    predictorBytes = (h * r) * aT.getElementTypeBitWidth() / 8.0 +
                     (r * f) * cast<RankedTensorType>(op.getPredB().getType()).getElementTypeBitWidth() / 8.0;
  }
  c.predictorFlops = k * (2 * h * r + 2 * r * f);
  c.expertFlops = k * (2 * h * a * gate + 2 * h * a);

  auto fc1 = op.getFc1().getType(), fc2 = op.getFc2().getType();
  auto q1 = op.getFc1QuantAttr(), q2 = op.getFc2QuantAttr();
  double b1 = valueBytes(fc1, q1, op.getStorage()), b2 = valueBytes(fc2, q2, op.getStorage());
  double perExpert = a * gate * h * b1 + scaleBytes(op.getFc1Scales(), q1, a * gate, h, h) + h * a * b2 +
                     scaleBytes(op.getFc2Scales(), q2, h, f, a) + predictorBytes;
  c.weightBytesPerExpert = static_cast<int64_t>(perExpert + 0.5);
  double all = f * gate * h * b1 + scaleBytes(op.getFc1Scales(), q1, f * gate, h, h) + h * f * b2 +
               scaleBytes(op.getFc2Scales(), q2, h, f, f);
  c.totalWeightBytes = static_cast<int64_t>(e * all + 0.5);
  if (op.getSharedFc1()) {
    auto s1 = cast<RankedTensorType>(op.getSharedFc1().getType());
    auto s2 = cast<RankedTensorType>(op.getSharedFc2().getType());
    int64_t rows = s1.getDimSize(0), fs = s2.getDimSize(1);
    if (ShapedType::isDynamic(rows) || ShapedType::isDynamic(fs))
      return c;
    c.sharedFlops = 2 * h * rows + 2 * h * fs + (op.getSharedGate() ? 2 * h : 0);
    c.sharedWeightBytes = int64_t((rows * h) * valueBytes(s1, {}, op.getStorage()) +
                                  (h * fs) * valueBytes(s2, {}, op.getStorage()) + 0.5) +
                          (op.getSharedGate() ? h * s1.getElementTypeBitWidth() / 8 : 0);
    c.totalWeightBytes += c.sharedWeightBytes;
  }
  return c;
}

LinearLayerCost computeLinearLayerCost(moe::LinearOp op) {
  LinearLayerCost c;
  int64_t k = op.getInFeatures(), n = op.getOutFeatures();
  if (ShapedType::isDynamic(k) || ShapedType::isDynamic(n))
    return c;
  c.flopsPerRow = 2 * k * n;
  double bytes;
  if (auto q = op.getWeightQuantAttr()) {
    int64_t blocks = (k + q.getBlockSize() - 1) / q.getBlockSize();
    bytes = double(n) * k * q.getBits() / 8.0 + n * blocks * 4.0 + (op.getZeroPoints() ? n * blocks * 4.0 : 0.0);
  } else {
    bytes = double(k) * n *
            storedWeightBytes(int(op.getStorage()), int64_t(op.getBlockSize()), MOERT_QSCALE_BYTES);
  }
  c.weightBytes = int64_t(bytes + (op.getBias() ? 4.0 * n : 0.0) + 0.5);
  return c;
}

} // namespace moec
