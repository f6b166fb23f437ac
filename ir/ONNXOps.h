//===- ONNXOps.h - the onnx graph dialect -----------------------*- C++ -*-===//
#ifndef MOEC_IR_ONNXOPS_H
#define MOEC_IR_ONNXOPS_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/Interfaces/ControlFlowInterfaces.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "ir/ONNXDialect.h.inc"

#define GET_OP_CLASSES
#include "ir/ONNXOps.h.inc"

#endif // MOEC_IR_ONNXOPS_H
