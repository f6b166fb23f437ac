//===- Passes.h - moec passes -----------------------------------*- C++ -*-===//
#ifndef MOEC_PASSES_PASSES_H
#define MOEC_PASSES_PASSES_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "ir/MoEDialect.h"
#include "mlir/Dialect/PDL/IR/PDL.h"
#include "mlir/Dialect/PDLInterp/IR/PDLInterp.h"
#include "mlir/Pass/Pass.h"
#include <memory>

namespace moec {

#define GEN_PASS_DECL
#include "passes/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "passes/Passes.h.inc"

} // namespace moec

#endif // MOEC_PASSES_PASSES_H
