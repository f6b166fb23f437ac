//===- MatchUtils.h - helpers shared by moec's raising and fusion passes ---===//
//
// Reading constants (inline or resource blobs), seeing through layout-only ops, and making new weight
// constants. Raising passes match def-use chains of `onnx.*` ops; these helpers keep that code about the
// pattern, not about attribute plumbing.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_PASSES_MATCHUTILS_H
#define MOEC_PASSES_MATCHUTILS_H

#include "ir/Constants.h"
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/IR/Value.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/SmallVector.h"

#include <optional>
#include <string>
#include <vector>

namespace moec {

/// Row-major bytes of a constant float tensor (inline `DenseElementsAttr` or a resource blob) with a static
/// shape; empty when `v` is not such a constant.
std::vector<char> constantBytes(mlir::Value v);

/// A constant holding `bytes` of `type`: inline when small, a heap resource blob named `name` otherwise.
mlir::Value makeConstant(mlir::OpBuilder &b, mlir::Location loc, mlir::RankedTensorType type,
                         llvm::ArrayRef<char> bytes, llvm::StringRef name);

/// The integers of a constant integer tensor (any rank), or nullopt.
std::optional<llvm::SmallVector<int64_t>> constantInts(mlir::Value v);

/// The value of a constant float tensor with exactly one element (any rank), or nullopt.
std::optional<double> constantScalar(mlir::Value v);

/// `v` with `onnx.Reshape` and `onnx.Identity` stripped: reshapes keep row-major order, so two values with
/// the same base hold the same data in the same order.
mlir::Value stripReshapes(mlir::Value v);

/// True when `a` and `b` hold the same data in the same row-major order (same value up to reshapes).
bool sameData(mlir::Value a, mlir::Value b);

/// The defining op of `v` as `OpTy`, or null.
template <typename OpTy> OpTy defOp(mlir::Value v) { return v ? v.getDefiningOp<OpTy>() : OpTy(); }

/// The other operand of a commutative binary op given one of them, or null when `known` is neither.
mlir::Value otherOperand(mlir::Operation *op, mlir::Value known);

/// Normalises a possibly negative axis against `rank`; nullopt when out of range.
std::optional<int64_t> normAxis(int64_t axis, int64_t rank);

/// Clamps a Slice / Shape bound against `n` entries (negative ones count from the end).
int64_t clampBound(int64_t b, int64_t n);

/// Rank of `v`'s ranked tensor type, or -1.
int64_t rankOf(mlir::Value v);

/// `x @ W (+ b)` as ONNX writes a linear layer: `Gemm(x, W, C?)` (alpha = beta = 1, no transA) or
/// `MatMul(x, W)` with an optional `Add` of a constant bias, `W` a constant 2-D matrix.
struct LinearMatch {
  mlir::Value x, weight, bias;
  bool weightIsOutIn = false; ///< W stored [out, in] (Gemm transB = 1), else [in, out]
  int64_t stackIndex = -1;    ///< >= 0: W is `weight[stackIndex]` of a stacked [E, ., .] constant
  int64_t in = 0, out = 0;
  llvm::SmallVector<mlir::Operation *, 2> ops; ///< the Gemm / MatMul (+ Add)
};
std::optional<LinearMatch> matchLinear(mlir::Value v);

/// Bytes of stacked weight constants already read, by value (slicing one expert after another reads each
/// once).
using StackCache = llvm::DenseMap<mlir::Value, std::vector<char>>;

/// W as an [out, in] row-major byte matrix (transposing an [in, out] one); a stacked W (reshapes of a
/// constant seen through) read through `cache` when given.
std::vector<char> linearWeightOutIn(const LinearMatch &l, StackCache *cache = nullptr);
/// W as an [in, out] row-major byte matrix (transposing an [out, in] one).
std::vector<char> linearWeightInOut(const LinearMatch &l);

/// Why the ops of a pattern cannot all disappear: the first op of `ops` (other than `except` and constants)
/// with a user outside `ops`, said as "'<op>' inside the pattern is also read by '<user>' outside it"; empty
/// when there is none.
std::string firstUseOutside(llvm::ArrayRef<mlir::Operation *> ops, mlir::Operation *except = nullptr);

/// True when every user of every result of `ops` (other than `except` and constants) is itself in `ops`.
bool usedOnlyWithin(llvm::ArrayRef<mlir::Operation *> ops, mlir::Operation *except = nullptr);

/// Erases the ops of `ops` that have no users (constants stay), repeatedly, until none is left to erase;
/// through `rewriter` when given (inside a rewrite pattern).
void eraseDeadOps(llvm::ArrayRef<mlir::Operation *> ops, mlir::RewriterBase *rewriter = nullptr);

/// True when `v` reaches a func.return, directly or through reshapes (a graph output: the LM head's logits).
bool isGraphOutput(mlir::Value v);

/// Appends `what` to op's `moe.fused` list (what the fusion passes folded into it, for `moec --report`).
void noteFused(mlir::Operation *op, llvm::StringRef what);

/// The Add that `v` feeds through a chain of single-use reshapes, with `reaching` set to the Add's operand
/// that chain ends in; null when some value on the way has another use or the last one feeds no Add.
onnxir::AddOp addThroughReshapes(mlir::Value v, mlir::Value &reaching);

/// What one fusion step did to a MoE layer: fused something into it, found nothing to fuse (no remark), or a
/// near miss with its reason.
struct FusionOutcome {
  bool fused = false;
  std::string why;
  static FusionOutcome done() { return {true, ""}; }
  static FusionOutcome nothing() { return {false, ""}; }
  static FusionOutcome miss(std::string why) { return {false, std::move(why)}; }
};
/// A fusion step on one layer; it changes the IR only through the rewriter, and only when it fuses.
using LayerFusion = FusionOutcome (*)(moe::SparseMoEOp, mlir::PatternRewriter &);

/// Runs each fusion of `fusions` ({step, its remark's prefix}) on every moe.sparse_moe under `root` as an
/// OpRewritePattern under MLIR's greedy driver (a near miss is a `notifyMatchFailure`). With `remarks`, each
/// layer's standing near misses become remarks "<prefix>: <why>", in `fusions` order.
mlir::LogicalResult applyLayerFusions(mlir::Operation *root,
                                      llvm::ArrayRef<std::pair<LayerFusion, llvm::StringRef>> fusions,
                                      bool remarks);

/// A norm over the last axis: `x` normalised, times `weight` (+ `bias`), and the ops computing it (the one
/// producing the result first).
struct NormMatch {
  mlir::Value x, weight, bias;
  moe::NormKind kind = moe::NormKind::none;
  double eps = 0;
  llvm::SmallVector<mlir::Operation *> ops;
};
/// `v` as a norm over its last axis of size `hdim`:
///   RMSNorm:   w * (x * Reciprocal(Sqrt(ReduceMean(x^2, -1) + eps)))   (also x / Sqrt(...), Mul(x, x))
///   LayerNorm: onnx.LayerNormalization(x, w, b?) over the last axis
///   either:    moe.norm (as the importer makes ONNX Runtime's SimplifiedLayerNormalization / Skip* norms)
std::optional<NormMatch> matchNorm(mlir::Value v, int64_t hdim);

/// With `remarks` on and a reason in `why`: a remark at `op`, "<what>: <why>" (why a fusion did not happen).
void remarkIfUnfused(bool remarks, mlir::Operation *op, llvm::StringRef what, const std::string &why);

} // namespace moec

#endif // MOEC_PASSES_MATCHUTILS_H
