//===- Importer.h - ONNX model -> MLIR graph IR -----------------*- C++ -*-===//
#ifndef MOEC_FRONTEND_IMPORTER_H
#define MOEC_FRONTEND_IMPORTER_H

#include "frontend/OnnxModel.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"

#include <string>

namespace mlir {
class DialectRegistry;
class MLIRContext;
} // namespace mlir

namespace moec::frontend {

struct ImportOptions {
  LoadOptions load;
  /// Constants up to this many bytes are inline `dense<...>`; larger ones are `dense_resource` blobs that
  /// point into the model or its mapped external data (no copy).
  size_t inlineConstantBytes = 4096;
};

/// Dialects the imported IR uses.
void registerImportDialects(mlir::DialectRegistry &registry);

/// Imports the ONNX model at `path` as one `func.func` (named after the graph) in a new module. On failure
/// returns null and sets `error` to one line naming the file, node and problem. Non-fatal notes go to
/// `warnings`, what the weights came to in `read`. The module's large constants keep the loaded model alive
/// for as long as the context holds them.
mlir::OwningOpRef<mlir::ModuleOp> importOnnxModel(llvm::StringRef path, mlir::MLIRContext &context,
                                                  const ImportOptions &options, std::string &error,
                                                  std::vector<std::string> *warnings = nullptr,
                                                  WeightsRead *read = nullptr);

/// Same, for a binary model held in memory (used by the fuzzer); `name` stands for the file in messages.
mlir::OwningOpRef<mlir::ModuleOp> importOnnxModelFromMemory(llvm::StringRef bytes, llvm::StringRef name,
                                                            mlir::MLIRContext &context,
                                                            const ImportOptions &options, std::string &error);

/// One row per supported (domain, op, since-version): for `moec import --list-ops` and the docs.
struct SupportedOp {
  llvm::StringRef domain, op;
  int sinceVersion;
};
std::vector<SupportedOp> supportedOps();

} // namespace moec::frontend

#endif // MOEC_FRONTEND_IMPORTER_H
