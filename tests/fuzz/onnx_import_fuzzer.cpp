//===- onnx_import_fuzzer.cpp - libFuzzer target for the ONNX importer ----===//
//
// Feeds arbitrary bytes to the importer as a binary ONNX model. Whatever the bytes, the importer must
// return a module or an error string: no crash, no sanitizer report. `make test` runs it for a bounded time
// (tests/fuzz/run-fuzzer.sh); run it longer by hand with `build/tests/fuzz/onnx-import-fuzzer CORPUS_DIR`.
//
//===----------------------------------------------------------------------===//
#include "frontend/Importer.h"

#include "mlir/IR/MLIRContext.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mlir::MLIRContext context(mlir::MLIRContext::Threading::DISABLED);
  moec::frontend::ImportOptions options;
  std::string error;
  auto module =
      moec::frontend::importOnnxModelFromMemory(llvm::StringRef(reinterpret_cast<const char *>(data), size),
                                                "fuzz-input.onnx", context, options, error);
  // Either a module or an error, never neither.
  if (!module && error.empty())
    __builtin_trap();
  return 0;
}
