//===- MoEDialectTest.cpp - C++ API of the moe dialect -------------------===//
#include "ir/Constants.h"
#include "ir/MoEOps.h"
#include "passes/MatchUtils.h"
#include "passes/MoECost.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"

#include <gtest/gtest.h>

#include <cstring>

using namespace mlir;

namespace {

struct MoEDialectTest : ::testing::Test {
  MoEDialectTest() { ctx.loadDialect<moec::moe::MoEDialect, func::FuncDialect>(); }

  /// Parses `body` as the body of a function taking `args`; returns the module (null on error) and
  /// collects diagnostics.
  OwningOpRef<ModuleOp> parse(const std::string &src) {
    ScopedDiagnosticHandler handler(&ctx, [&](Diagnostic &d) {
      diagnostics += d.str() + "\n";
      return success();
    });
    return parseSourceString<ModuleOp>(src, &ctx);
  }

  moec::moe::SparseMoEOp firstMoE(ModuleOp m) {
    moec::moe::SparseMoEOp found;
    m.walk([&](moec::moe::SparseMoEOp op) { found = op; });
    return found;
  }

  MLIRContext ctx;
  std::string diagnostics;
};

const char *kMixtralLike = R"mlir(
func.func @f(%x: tensor<?x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x256x64xbf16>, %w2: tensor<8x64x128xbf16>)
    -> tensor<?x64xf32> {
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 2, normalize = true, activation = #moe.activation<swiglu>}
     : (tensor<?x64xf32>, tensor<64x8xf32>, tensor<8x256x64xbf16>, tensor<8x64x128xbf16>) -> tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}
)mlir";

TEST_F(MoEDialectTest, ParsesAndExposesLayerGeometry) {
  auto m = parse(kMixtralLike);
  ASSERT_TRUE(m) << diagnostics;
  auto op = firstMoE(*m);
  ASSERT_TRUE(op);
  EXPECT_EQ(op.getNumExperts(), 8);
  EXPECT_EQ(op.getHiddenDim(), 128);
  EXPECT_EQ(op.getActiveHiddenDim(), 128);
  EXPECT_TRUE(op.isGated());
  EXPECT_EQ(op.getRouterKind(), moec::moe::RouterKind::linear);
  EXPECT_EQ(op.getGate(), moec::moe::GateFunc::softmax);
  EXPECT_TRUE(op.getNormalize());
  EXPECT_FLOAT_EQ(op.getScale().convertToFloat(), 1.0f);
}

TEST_F(MoEDialectTest, CostModelCountsChosenExpertsOnly) {
  auto m = parse(kMixtralLike);
  ASSERT_TRUE(m) << diagnostics;
  moec::MoELayerCost c = moec::computeMoELayerCost(firstMoE(*m));
  // H=64, F=128, E=8, k=2, gated: fc1 reads 2F x H, fc2 reads H x F, bf16 = 2 bytes.
  EXPECT_EQ(c.routerFlops, 2 * 64 * 8);
  EXPECT_EQ(c.expertFlops, 2 * (2 * 64 * 128 * 2 + 2 * 64 * 128));
  EXPECT_EQ(c.weightBytesPerExpert, (256 * 64 + 64 * 128) * 2);
  EXPECT_EQ(c.weightBytesPerToken(), 2 * (256 * 64 + 64 * 128) * 2);
  EXPECT_EQ(c.totalWeightBytes, 8 * (256 * 64 + 64 * 128) * 2);
}

TEST_F(MoEDialectTest, VerifierNamesTheOffendingOperand) {
  // fc2 says H = 32 while the input has H = 64.
  auto m = parse(R"mlir(
func.func @f(%x: tensor<4x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x128x64xf32>, %w2: tensor<8x32x128xf32>)
    -> tensor<4x64xf32> {
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<4x64xf32>, tensor<64x8xf32>, tensor<8x128x64xf32>, tensor<8x32x128xf32>) -> tensor<4x64xf32>
  return %y : tensor<4x64xf32>
}
)mlir");
  EXPECT_FALSE(m);
  EXPECT_NE(diagnostics.find("operand 'fc2'"), std::string::npos) << diagnostics;
  EXPECT_NE(diagnostics.find("must be H = 64, got 32"), std::string::npos) << diagnostics;
}

TEST_F(MoEDialectTest, WeightQuantAttrRejectsUnsupportedBits) {
  std::string errors;
  auto emit = [&]() -> InFlightDiagnostic { return mlir::emitError(UnknownLoc::get(&ctx)); };
  ScopedDiagnosticHandler handler(&ctx, [&](Diagnostic &d) {
    errors += d.str();
    return success();
  });
  EXPECT_TRUE(succeeded(moec::moe::WeightQuantAttr::verify(emit, 4, 32)));
  EXPECT_TRUE(succeeded(moec::moe::WeightQuantAttr::verify(emit, 8, 0)));
  EXPECT_TRUE(failed(moec::moe::WeightQuantAttr::verify(emit, 3, 0)));
  EXPECT_TRUE(failed(moec::moe::WeightQuantAttr::verify(emit, 4, 24)));
  EXPECT_NE(errors.find("bits must be 4 or 8"), std::string::npos) << errors;
}

} // namespace

// moec::eraseDeadOps with an op listed twice (matchers reach some ops along two paths): each erased once.
// Under AddressSanitizer (make test SANITIZE=address,undefined) this read freed memory before the fix.
TEST_F(MoEDialectTest, EraseDeadOpsTakesAnOpListedTwice) {
  ctx.loadDialect<arith::ArithDialect>();
  auto m = parse(R"mlir(
    func.func @f(%a: f32) -> f32 {
      %0 = arith.addf %a, %a : f32
      %1 = arith.mulf %0, %0 : f32
      return %a : f32
    })mlir");
  ASSERT_TRUE(m) << diagnostics;
  SmallVector<Operation *> ops;
  m->walk([&](Operation *op) {
    if (isa<arith::AddFOp, arith::MulFOp>(op))
      ops.push_back(op);
  });
  ASSERT_EQ(ops.size(), 2u);
  SmallVector<Operation *> twice = {ops[1], ops[0], ops[1], ops[0]};
  moec::eraseDeadOps(twice);
  int left = 0;
  m->walk([&](Operation *op) { left += isa<arith::AddFOp, arith::MulFOp>(op); });
  EXPECT_EQ(left, 0);
}

// moec::elementsBytes of a constant with a zero dim (ONNX Resize's empty roi) is no bytes; a small one is its
// row-major bytes. Under UndefinedBehaviorSanitizer the empty case passed a null pointer to memcpy before the
// fix (found by onnx-node-tests-run in the SANITIZE=address,undefined tree).
TEST_F(MoEDialectTest, ElementsBytesOfEmptyAndSmallConstants) {
  Builder b(&ctx);
  auto empty = DenseElementsAttr::get(RankedTensorType::get({0}, b.getF32Type()), ArrayRef<float>{});
  EXPECT_TRUE(moec::elementsBytes(empty).empty());
  auto emptyRows = DenseElementsAttr::get(RankedTensorType::get({2, 0}, b.getI64Type()), ArrayRef<int64_t>{});
  EXPECT_TRUE(moec::elementsBytes(emptyRows).empty());
  const float values[3] = {1.5f, -2.0f, 0.25f};
  auto small = DenseElementsAttr::get(RankedTensorType::get({3}, b.getF32Type()), ArrayRef<float>(values));
  std::vector<char> bytes = moec::elementsBytes(small);
  ASSERT_EQ(bytes.size(), sizeof values);
  EXPECT_EQ(std::memcmp(bytes.data(), values, sizeof values), 0);
  auto splat = DenseElementsAttr::get(RankedTensorType::get({2, 2}, b.getF32Type()), 3.0f);
  std::vector<char> splatBytes = moec::elementsBytes(splat);
  ASSERT_EQ(splatBytes.size(), 4 * sizeof(float));
  for (int i = 0; i < 4; ++i) {
    float x;
    std::memcpy(&x, splatBytes.data() + i * sizeof x, sizeof x);
    EXPECT_EQ(x, 3.0f);
  }
}
