//===- ONNXOps.h - the onnx graph dialect -----------------------*- C++ -*-===//
#ifndef MOEC_IR_ONNXOPS_H
#define MOEC_IR_ONNXOPS_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/DialectImplementation.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/ControlFlowInterfaces.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include <optional>

#include "ir/ONNXDialect.h.inc"

#define GET_TYPEDEF_CLASSES
#include "ir/ONNXTypes.h.inc"

namespace moec::onnxir {
/// What an ONNX graph edge carries: a tensor, a sequence of tensors, or an optional of either.
enum class ValueKind { Tensor, Sequence, OptionalTensor, OptionalSequence };
/// `t`'s kind; a type that is none of these is a Tensor when it is a TensorType and nullopt otherwise.
std::optional<ValueKind> valueKind(mlir::Type t);
/// The tensor type inside `t`: `t` itself for a tensor, a sequence's element type, an optional's content's.
/// Null for other types.
mlir::TensorType innerTensorType(mlir::Type t);
/// The element type of innerTensorType(t) (null when there is none).
mlir::Type innerElementType(mlir::Type t);
} // namespace moec::onnxir

#define GET_OP_CLASSES
#include "ir/ONNXOps.h.inc"

#endif // MOEC_IR_ONNXOPS_H
