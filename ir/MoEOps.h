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

#endif // MOEC_IR_MOEOPS_H
