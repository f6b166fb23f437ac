//===- MoEOps.h - moe dialect ops -------------------------------*- C++ -*-===//
#ifndef MOEC_IR_MOEOPS_H
#define MOEC_IR_MOEOPS_H

#include "ir/MoEAttrs.h"
#include "ir/MoEDialect.h"
#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#define GET_OP_CLASSES
#include "ir/MoEOps.h.inc"

#include "mlir/IR/Builders.h"

namespace moec::moe {

/// moe.sparse_moe's operands by name (null: absent), in the op's order (MoEOps.td): what importers and
/// raising passes fill in instead of positional operand lists and segment-size arrays.
struct SparseMoEOperands {
  mlir::Value input, router, routerBias, selectionBias, fc1, fc1Bias, fc1Scales, fc2, fc2Bias, fc2Scales,
      mask, predA, predB, normWeight, normBias, sharedFc1, sharedFc2, sharedGate, residual;

  /// The present operands in order and the `operandSegmentSizes` attribute saying which they are.
  mlir::NamedAttribute flatten(mlir::Builder &b, llvm::SmallVectorImpl<mlir::Value> &operands) const;
};

/// A moe.sparse_moe of `operands` with `attrs` (without `operandSegmentSizes`) returning `result`. The op is
/// not verified here; callers that build from matched graphs verify it and erase it on failure.
SparseMoEOp buildSparseMoE(mlir::OpBuilder &b, mlir::Location loc, mlir::Type result,
                           const SparseMoEOperands &operands, llvm::ArrayRef<mlir::NamedAttribute> attrs);

} // namespace moec::moe

#endif // MOEC_IR_MOEOPS_H
