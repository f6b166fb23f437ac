//===- ExamplePlugin.cpp - a user pass and dialect loaded at run time ----===//
//
// The pass `moe-example-cap-topk` is the kind of fusion-time policy a user writes for a deployment: it
// lowers every MoE layer's top-k to at most `max-k` experts per token (trading accuracy for speed) and
// leaves a `moe_example.note` behind saying what it changed.
//
//   moec-opt --load-pass-plugin=build/lib/MoECExamplePlugin.so \
//            --load-dialect-plugin=build/lib/MoECExamplePlugin.so \
//            --pass-pipeline='builtin.module(moe-example-cap-topk{max-k=1})' model.mlir
//
//===----------------------------------------------------------------------===//
#include "ir/MoEOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/DialectImplementation.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Tools/Plugins/DialectPlugin.h"
#include "mlir/Tools/Plugins/PassPlugin.h"
#include "llvm/Config/llvm-config.h"

#include "ExampleDialect.h.inc"
#define GET_OP_CLASSES
#include "ExampleOps.h.inc"

#include "ExampleDialect.cpp.inc"
#define GET_OP_CLASSES
#include "ExampleOps.cpp.inc"

using namespace mlir;

void moec::example::ExampleDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "ExampleOps.cpp.inc"
      >();
}

namespace {
struct CapTopKPass final : PassWrapper<CapTopKPass, OperationPass<ModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(CapTopKPass)

  CapTopKPass() = default;
  CapTopKPass(const CapTopKPass &other) : PassWrapper(other) {}

  StringRef getArgument() const final { return "moe-example-cap-topk"; }
  StringRef getDescription() const final {
    return "Example plugin pass: use at most max-k experts per token";
  }
  void getDependentDialects(DialectRegistry &registry) const final {
    registry.insert<moec::example::ExampleDialect>();
  }

  void runOnOperation() final {
    ModuleOp module = getOperation();
    int changed = 0;
    module.walk([&](moec::moe::SparseMoEOp op) {
      if (static_cast<int64_t>(op.getK()) <= maxK)
        return;
      op.setK(maxK);
      ++changed;
    });
    if (changed == 0)
      return;
    OpBuilder b(module.getBodyRegion());
    b.create<moec::example::NoteOp>(module.getLoc(), "moe-example-cap-topk: capped top-k to " +
                                                         std::to_string(maxK) + " in " +
                                                         std::to_string(changed) + " layer(s)");
  }

  Option<int64_t> maxK{*this, "max-k", llvm::cl::desc("Largest top-k to keep"), llvm::cl::init(1)};
};
} // namespace

extern "C" LLVM_ATTRIBUTE_WEAK PassPluginLibraryInfo mlirGetPassPluginInfo() {
  return {MLIR_PLUGIN_API_VERSION, "MoECExamplePasses", LLVM_VERSION_STRING,
          [] { PassRegistration<CapTopKPass>(); }};
}

extern "C" LLVM_ATTRIBUTE_WEAK DialectPluginLibraryInfo mlirGetDialectPluginInfo() {
  return {MLIR_PLUGIN_API_VERSION, "MoECExampleDialect", LLVM_VERSION_STRING,
          [](DialectRegistry *registry) { registry->insert<moec::example::ExampleDialect>(); }};
}
