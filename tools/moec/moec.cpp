//===- moec.cpp - the moec compiler driver --------------------------------===//
//
//   moec import MODEL.onnx [-o OUT.mlir]          ONNX -> moec's graph IR (MLIR)
//   moec compile MODEL.onnx --emit=mlir [-o OUT]  same, through the compile driver
//   moec import --list-ops                        the supported (domain, op, since-version) table
//
// Errors are one line on stderr, the exit code is non-zero, and no output file is left behind.
//
//===----------------------------------------------------------------------===//
#include "frontend/Importer.h"
#include "ir/MoEDialect.h"
#include "ir/ONNXOps.h"

#include "mlir/IR/AsmState.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinDialect.h"
#include "mlir/IR/DialectResourceBlobManager.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/OperationSupport.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/WithColor.h"
#include "llvm/Support/raw_ostream.h"

using namespace llvm;

namespace {
cl::SubCommand importCmd("import", "Import an ONNX model (.onnx, or ONNX text syntax .onnxtxt) into moec's "
                                   "graph IR and print it as MLIR");
cl::SubCommand compileCmd("compile", "Compile an ONNX model. Today only --emit=mlir exists (the same as "
                                     "`moec import`); artifacts (.moex) come with code generation");

cl::OptionCategory category("moec options");
cl::opt<std::string> inputPath(cl::Positional, cl::desc("<model.onnx>"), cl::sub(importCmd),
                               cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> outputPath("o", cl::desc("Output file ('-' for stdout, the default)"),
                                cl::value_desc("file"), cl::init("-"), cl::sub(importCmd),
                                cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> emit("emit", cl::desc("What to write: mlir (graph IR after import)"), cl::init("mlir"),
                          cl::sub(compileCmd), cl::cat(category));
cl::opt<bool> noCheck("no-check", cl::desc("Skip libonnx's model checker"), cl::sub(importCmd),
                      cl::sub(compileCmd), cl::cat(category));
cl::opt<bool> noShapeInference("no-shape-inference", cl::desc("Skip libonnx's shape inference"),
                               cl::sub(importCmd), cl::sub(compileCmd), cl::cat(category));
cl::opt<int64_t>
    elideWeights("elide-weights-larger-than",
                 cl::desc("Leave weight blobs over this many bytes out of the printout (default 1024; "
                          "-1 prints every byte, so the output parses back with its weights)"),
                 cl::init(1024), cl::sub(importCmd), cl::sub(compileCmd), cl::cat(category));
cl::opt<bool> listOps("list-ops",
                      cl::desc("Print the supported ONNX ops (domain, op, since-version) and exit"),
                      cl::sub(importCmd), cl::cat(category));

int error(const Twine &message) {
  WithColor::error(errs(), "moec") << message << "\n";
  return 1;
}

int runImport() {
  if (listOps) {
    outs() << "domain\top\tsince_version\n";
    for (const auto &op : moec::frontend::supportedOps())
      outs() << (op.domain.empty() ? "ai.onnx" : op.domain) << "\t" << op.op << "\t" << op.sinceVersion
             << "\n";
    return 0;
  }
  if (inputPath.empty())
    return error("no input model given (usage: moec " + std::string(importCmd ? "import" : "compile") +
                 " MODEL.onnx [-o OUT])");
  if (compileCmd && emit != "mlir")
    return error("--emit=" + emit + " is not available yet; this build can only --emit=mlir");

  mlir::MLIRContext context;
  moec::frontend::ImportOptions options;
  options.load.runChecker = !noCheck;
  options.load.runShapeInference = !noShapeInference;
  std::string message;
  std::vector<std::string> warnings;
  auto module = moec::frontend::importOnnxModel(inputPath, context, options, message, &warnings);
  for (const auto &w : warnings)
    WithColor::warning(errs(), "moec") << inputPath << ": " << w << "\n";
  if (!module)
    return error(message);

  std::error_code ec;
  ToolOutputFile out(outputPath, ec, sys::fs::OF_None);
  if (ec)
    return error("cannot write '" + outputPath + "': " + ec.message());
  mlir::OpPrintingFlags flags;
  if (elideWeights >= 0) {
    // MLIR's own resource elision renders each blob as hex before deciding to drop it (4x a model's size in
    // memory), so when a blob is too large the resource section is left out altogether.
    bool tooLarge = false;
    module->walk([&](moec::onnxir::ConstantOp c) {
      if (auto r = dyn_cast<mlir::DenseResourceElementsAttr>(c.getValue()))
        if (auto *blob = r.getRawHandle().getBlob())
          tooLarge |= static_cast<int64_t>(blob->getData().size()) > elideWeights;
    });
    if (tooLarge)
      flags.useLocalScope();
  }
  module->print(out.os(), flags);
  out.os() << "\n";
  out.os().flush();
  if (out.os().has_error())
    return error("cannot write '" + outputPath + "'");
  out.keep(); // only a complete output survives
  return 0;
}
} // namespace

int main(int argc, char **argv) {
  InitLLVM init(argc, argv);
  cl::HideUnrelatedOptions(category);
  cl::ParseCommandLineOptions(argc, argv,
                              "moec: ahead-of-time compiler for sparse Mixture-of-Experts models\n\n"
                              "  moec import MODEL.onnx [-o OUT.mlir]\n"
                              "  moec compile MODEL.onnx --emit=mlir [-o OUT.mlir]\n");
  if (importCmd || compileCmd)
    return runImport();
  return error("no command given; run `moec --help` (commands: import, compile)");
}
