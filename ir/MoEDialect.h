//===- MoEDialect.h - the moe dialect ---------------------------*- C++ -*-===//
#ifndef MOEC_IR_MOEDIALECT_H
#define MOEC_IR_MOEDIALECT_H

#include "mlir/IR/Dialect.h"

#include "ir/MoEDialect.h.inc"

#endif // MOEC_IR_MOEDIALECT_H
