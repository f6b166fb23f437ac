//===- MoEDialect.cpp - the moe dialect, its attributes -------------------===//
#include "ir/MoEDialect.h"

#include "ir/MoEAttrs.h"
#include "ir/MoEOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/DialectImplementation.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/MathExtras.h"

using namespace mlir;
using namespace moec::moe;

#include "ir/MoEDialect.cpp.inc"
#include "ir/MoEEnums.cpp.inc"
#define GET_ATTRDEF_CLASSES
#include "ir/MoEAttrs.cpp.inc"

void MoEDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "ir/MoEOps.cpp.inc"
      >();
  addAttributes<
#define GET_ATTRDEF_LIST
#include "ir/MoEAttrs.cpp.inc"
      >();
}

LogicalResult WeightQuantAttr::verify(function_ref<InFlightDiagnostic()> emitError, unsigned bits,
                                      unsigned blockSize) {
  if (bits != 4 && bits != 8)
    return emitError() << "#moe.weight_quant: bits must be 4 or 8, got " << bits;
  // Same rule as ONNX Runtime's QMoE: per-row (0) or blocks of a power of two, at least 16 wide.
  if (blockSize != 0 && (blockSize < 16 || !llvm::isPowerOf2_32(blockSize)))
    return emitError() << "#moe.weight_quant: block_size must be 0 (per row) or a power of two >= 16, got "
                       << blockSize;
  return success();
}
