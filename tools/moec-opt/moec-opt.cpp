//===- moec-opt.cpp - mlir-opt with moec's dialects and passes -----------===//
//
// Runs moec passes (and every upstream MLIR pass) over .mlir files, for testing and for developing fusion
// passes. Accepts --load-pass-plugin=lib.so and --load-dialect-plugin=lib.so.
//
//===----------------------------------------------------------------------===//
#include "ir/MoEDialect.h"
#include "ir/ONNXOps.h"
#include "passes/Passes.h"
#include "passes/Pipeline.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::registerAllPasses();
  moec::registerMoECPasses();
  moec::registerFusionPipeline();

  mlir::DialectRegistry registry;
  mlir::registerAllDialects(registry);
  mlir::registerAllExtensions(registry);
  registry.insert<moec::moe::MoEDialect, moec::onnxir::ONNXDialect>();

  return mlir::asMainReturnCode(mlir::MlirOptMain(
      argc, argv, "moec-opt: runs moec and MLIR passes over MLIR files (see docs/ARCHITECTURE.md)\n",
      registry));
}
