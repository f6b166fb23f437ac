//===- ONNXOps.cpp - the onnx graph dialect -------------------------------===//
#include "ir/ONNXOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/OpImplementation.h"

using namespace mlir;
using namespace moec::onnxir;

#include "ir/ONNXDialect.cpp.inc"
#define GET_OP_CLASSES
#include "ir/ONNXOps.cpp.inc"

void ONNXDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "ir/ONNXOps.cpp.inc"
      >();
}

OpFoldResult ConstantOp::fold(FoldAdaptor) { return getValue(); }
