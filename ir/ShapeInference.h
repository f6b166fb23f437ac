//===- ShapeInference.h - result shapes of ONNX-dialect ops moec computes itself ---===//
//
// libonnx 1.12 infers shapes up to opset 17 only; a newer model without value_info imports with unranked
// results, which the raising passes cannot match. refineShapes() gives such results a ranked type from their
// operands' types and constant operands (broadcasting, MatMul / Gemm, Reshape / Transpose / (Un)Squeeze /
// Concat / Slice / Gather / Expand / Split / Shape, reductions, TopK, the shape-preserving ops), in program
// order, to a fixed point over each block.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_IR_SHAPEINFERENCE_H
#define MOEC_IR_SHAPEINFERENCE_H

#include "mlir/IR/Operation.h"
#include "mlir/IR/ValueRange.h"
#include "llvm/ADT/SmallVector.h"

#include <algorithm>
#include <cstdint>
#include <optional>

namespace moec::onnxir {

/// Refines the unranked results of ONNX-dialect ops under `root`; returns how many it refined.
int refineShapes(mlir::Operation *root);

/// The NumPy broadcast of the operands' shapes (an elementwise op's result), when all are ranked and
/// broadcast; the importer's rule for elementwise results while it builds the graph.
std::optional<llvm::SmallVector<int64_t>> broadcastShape(mlir::ValueRange operands);
/// NumPy matmul's result shape (1-D operands promoted and their dim dropped again), when both are ranked.
std::optional<llvm::SmallVector<int64_t>> matmulShape(mlir::Value a, mlir::Value b);

/// The integers a small shape computation yields at compile time (constants, Shape of static dims, and what
/// Gather / Slice / Concat / (Un)Squeeze / Cast / Reshape / Add / Sub / Mul / Div make of them: the `Shape ->
/// Gather -> Add -> Div` chains exporters write for `chunk` and `view`); nullopt when an element is dynamic.
std::optional<llvm::SmallVector<int64_t>> staticIntValue(mlir::Value v);

/// The longest shape operand inference builds a rank (or a ConstantOfShape value) from: real tensors have a
/// few dims; a longer (or negative) length is a malformed model, whose result is then left unranked (by
/// moec's inference, and hidden from libonnx's, which would build a result of that many dims).
constexpr int64_t kMaxInferredRank = 64;

/// ONNX's ranges for GatherND of data of rank `r` and indices of rank `q`: batch_dims below both ranks, and
/// the index tuple's length (the indices' last dim) from 1 to the dims left after the batch dims. The
/// importer's errors, shape inference and the libonnx guard all ask these.
inline bool gatherNDBatchDimsInRange(int64_t r, int64_t q, int64_t b) { return b >= 0 && b < std::min(r, q); }
inline bool gatherNDIndexLengthInRange(int64_t r, int64_t b, int64_t last) {
  return last >= 1 && last <= r - b;
}

} // namespace moec::onnxir

#endif // MOEC_IR_SHAPEINFERENCE_H
