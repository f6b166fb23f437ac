//===- moec.cpp - the moec compiler driver --------------------------------===//
//
//   moec import MODEL.onnx [-o OUT.mlir]          ONNX -> moec's graph IR (MLIR)
//   moec compile MODEL.onnx -o OUT.moex           import, raise and fuse MoE layers (passes/Pipeline.h, with
//                                                 user plugins and patterns), generate code, write an artifact
//   moec compile MODEL.onnx --emit=mlir [-o OUT]  stop after fusion and print the IR
//   moec import --list-ops                        the supported (domain, op, since-version) table
//
// Errors are one line on stderr, the exit code is non-zero, and no output file is left behind.
//
//===----------------------------------------------------------------------===//
#include "ArtifactSignature.h"
#include "codegen/cpu/CpuCodegen.h"
#include "codegen/hip/GpuCodegen.h"
#include "frontend/Importer.h"
#include "ir/Locations.h"
#include "ir/MoEDialect.h"
#include "ir/MoEOps.h"
#include "ir/ONNXOps.h"
#include "passes/MoECost.h"
#include "passes/Passes.h"
#include "passes/Pipeline.h"
#include "tools/moert/Tokenizer.h"

#include "mlir/IR/AsmState.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinDialect.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/DialectResourceBlobManager.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/OperationSupport.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Tools/Plugins/DialectPlugin.h"
#include "mlir/Tools/Plugins/PassPlugin.h"
#include "mlir/Transforms/Passes.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/WithColor.h"
#include "llvm/Support/raw_ostream.h"

#include <csignal>
#include <map>

using namespace llvm;

namespace {
cl::SubCommand importCmd("import", "Import an ONNX model (.onnx, or ONNX text syntax .onnxtxt) into moec's "
                                   "graph IR and print it as MLIR");
cl::SubCommand compileCmd("compile", "Compile an ONNX model: import, raise every MoE layer to one fused "
                                     "moe.sparse_moe dispatch, generate code and write an artifact (.moex) "
                                     "that `moert run` executes; or stop after fusion with --emit=mlir");

cl::OptionCategory category("moec options");
cl::opt<std::string> inputPath(cl::Positional, cl::desc("<model.onnx>"), cl::sub(importCmd),
                               cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> outputPath("o", cl::desc("Output file ('-' for stdout, the default)"),
                                cl::value_desc("file"), cl::init("-"), cl::sub(importCmd),
                                cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> emit("emit",
                          cl::desc("What to write: artifact (a .moex file for moert), mlir (the IR after fusion), "
                                   "or auto (default: mlir when writing to stdout or a .mlir file, else artifact)"),
                          cl::init("auto"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string>
    target("target",
           cl::desc("Code generation targets, comma-separated: cpu (default; always built: the "
                    "program runs anywhere), hip (AMD GPU code objects for --hip-arch), cuda "
                    "(NVIDIA PTX for --cuda-arch), emu (the GPU kernels built for this CPU "
                    "against a GPU emulator, for `moert --device=emu`: tests the GPU path "
                    "without a GPU, slowly)"),
           cl::init("cpu"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> hipArch("hip-arch",
                             cl::desc("AMD GPU architectures for --target=hip (default gfx90a,gfx942,gfx1100)"),
                             cl::init("gfx90a,gfx942,gfx1100"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> cudaArch("cuda-arch",
                              cl::desc("NVIDIA GPU architectures for --target=cuda (default sm_80,sm_90)"),
                              cl::init("sm_80,sm_90"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string>
    emuArch("emu-arch",
            cl::desc("Emulated GPUs for --target=emu: emu-w32 (32-lane warps, as NVIDIA and "
                     "gfx1100; the default), emu-w64 (64-lane wavefronts, as gfx90a/gfx942)"),
            cl::init("emu-w32"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> cpu("cpu",
                         cl::desc("CPU the code is generated for (-march): x86-64-v3 (default: AVX2, runs on "
                                  "most x86-64 machines of the last decade), x86-64-v4 (AVX-512), native (this "
                                  "machine), x86-64, znver4, sapphirerapids, ..."),
                         cl::init("x86-64-v3"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> weightsType(
    "weights",
    cl::desc("Storage of all weights in the artifact (experts, linear layers and token embeddings, as "
             "llama.cpp quantises a whole model): fp32 (default), bf16 (half the bytes), fp16 (IEEE "
             "half), int8 or int4 (symmetric, one f16 scale per block of 32, as llama.cpp's "
             "Q8_0 / Q4_0: 8.5 / 4.5 bits a weight). Accumulation is f32. Weights that arrive quantised "
             "(QMoE, MatMulNBits) are "
             "kept as they are"),
    cl::init("fp32"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> expertWeights("expert-weights",
                                   cl::desc("Storage of MoE expert weights only (default: --weights)"),
                                   cl::init(""), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> denseWeights("dense-weights",
                                  cl::desc("Storage of linear-layer weights (attention projections, dense MLPs, "
                                           "routers left outside MoE layers; default: --weights)"),
                                  cl::init(""), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> lmHeadWeights("lm-head-weights",
                                   cl::desc("Storage of linear layers whose result is a graph output (the LM head; "
                                            "default: --dense-weights), e.g. to keep it wider than the rest"),
                                   cl::init(""), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string>
    embeddingWeights("embedding-weights",
                     cl::desc("Storage of token-embedding tables (constant tables a Gather reads rows of; "
                              "default: --dense-weights), e.g. to keep them wider"),
                     cl::init(""), cl::sub(compileCmd), cl::cat(category));
cl::opt<int64_t> weightBlock(
    "weight-block",
    cl::desc("Input features per scale for int8/int4 linear layers and embedding rows (default 32)"),
    cl::init(32), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> activations(
    "activations",
    cl::desc(
        "How narrow weights multiply their inputs: f32 (default: inputs as they are); int8 (int8/int4 "
        "weights: "
        "inputs rounded per block of 32 and multiplied as integers, as llama.cpp's Q8_0 x Q4_0; 2-3x faster "
        "int4 decode, 1.5-2x faster MoE prefill on CPUs, outputs about 1e-2 relative from f32's); bf16 (bf16 "
        "weights: prefill rounds its inputs to bf16 and multiplies bf16 pairs, as llama.cpp's BF16 does; "
        "1.4-1.7x faster prefill on CPUs with AVX512-BF16, inputs within 2^-9 relative; attention over bf16 "
        "KV caches also rounds its queries; on GPUs the linear layers' prefill GEMM takes one matrix-core "
        "product instead of three, and so do MoE layers' prefill-sized calls (their CPU kernels in an "
        "artifact with GPU code take f32 inputs)); or int8,bf16 for both"),
    cl::init("f32"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> dumpKernels("dump-kernels", cl::desc("Also write the generated kernel sources to this folder"),
                                 cl::value_desc("dir"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> kernelCache(
    "kernel-cache",
    cl::desc("Where compiled kernel code is kept and reused when the same kernels are compiled again "
             "(default: $MOEC_KERNEL_CACHE, else ~/.cache/moec/kernels, 1 GiB at most: "
             "$MOEC_KERNEL_CACHE_MB); 'off' compiles every time"),
    cl::value_desc("dir|off"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> cxxPath("cxx",
                             cl::desc("C++ compiler for the CPU kernels: a path, or a name looked up on PATH "
                                      "(default: $MOEC_CXX, clang++-19)"),
                             cl::value_desc("path"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> sanitize(
    "sanitize",
    cl::desc(
        "Build the generated kernels (CPU and emulated GPU) with these sanitizers, comma-separated: address, "
        "undefined, thread (clang's -fsanitize=; default: $MOEC_SANITIZE, else none). Only a sanitizer build "
        "of moert (make SANITIZE=...) loads such an artifact; for testing kernels, not for use"),
    cl::value_desc("list"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> signKey(
    "sign-key",
    cl::desc(
        "Sign the artifact with this PEM private key (Ed25519 or Ed448; openssl genpkey -algorithm ed25519): "
        "writes OUT.moex.sig, which moert --public-key checks before loading (docs/artifact-format.md)"),
    cl::value_desc("key.pem"), cl::sub(compileCmd), cl::cat(category));
cl::opt<int> expertParallel(
    "expert-parallel",
    cl::desc("Split every MoE layer's experts between N ranks (processes: mpirun -np N moert ...): each rank "
             "reads only its experts' weights; tokens go to their experts' ranks and back (MPI all-to-all). "
             "CPU targets; docs/scale-out.md"),
    cl::value_desc("N"), cl::init(0), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> expertMap(
    "expert-map",
    cl::desc("With --expert-parallel: the rank holding each expert, comma-separated in expert order (e.g. "
             "0,0,1,0,1,1,...; the same for every MoE layer). Default: contiguous ranges of experts"),
    cl::value_desc("list"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> expertWire(
    "expert-wire",
    cl::desc(
        "With --expert-parallel: the dtype token rows and expert results cross between ranks in: f32 (the "
        "default: outputs as one process gives them) or bf16 (half the bytes; each row and result rounded "
        "to bf16 on the way, about 4e-3 relative)"),
    cl::value_desc("f32|bf16"), cl::init("f32"), cl::sub(compileCmd), cl::cat(category));
cl::opt<std::string> tokenizerFile(
    "tokenizer",
    cl::desc("Embed this tokenizer.json (Hugging Face tokenizers' file) in the artifact; default: the "
             "tokenizer.json next to the model, if there is one. moert generate --prompt, moert tokenize and "
             "the Python binding use it when no tokenizer.json sits next to the artifact"),
    cl::value_desc("tokenizer.json"), cl::sub(compileCmd), cl::cat(category));
cl::opt<bool> noTokenizer("no-tokenizer", cl::desc("Embed no tokenizer, even one next to the model"),
                          cl::sub(compileCmd), cl::cat(category));
cl::opt<bool> quiet("quiet", cl::desc("No progress lines on stderr"), cl::sub(compileCmd), cl::cat(category));
cl::opt<bool> noCheck("no-check", cl::desc("Skip libonnx's model checker"), cl::sub(importCmd),
                      cl::sub(compileCmd), cl::cat(category));
cl::opt<bool> noShapeInference("no-shape-inference", cl::desc("Skip libonnx's shape inference"),
                               cl::sub(importCmd), cl::sub(compileCmd), cl::cat(category));
cl::opt<int64_t>
    elideWeights("elide-weights-larger-than",
                 cl::desc("Leave weight blobs over this many bytes out of the printout (default 1024; "
                          "-1 prints every byte, so the output parses back with its weights)"),
                 cl::init(1024), cl::sub(importCmd), cl::sub(compileCmd), cl::cat(category));
cl::OptionCategory passCategory("moec compile: passes, plugins and visibility");
cl::opt<bool> report("report",
                     cl::desc("Print to stderr which MoE layers were found, in which form, what was fused "
                              "into each, and why near misses were not"),
                     cl::sub(compileCmd), cl::cat(passCategory));
cl::list<std::string> passPlugins("load-pass-plugin",
                                  cl::desc("Load a pass plugin (shared library exporting "
                                           "mlirGetPassPluginInfo); its passes can be named in --passes"),
                                  cl::value_desc("lib.so"), cl::sub(compileCmd), cl::cat(passCategory));
cl::list<std::string> dialectPlugins("load-dialect-plugin",
                                     cl::desc("Load a dialect plugin (shared library exporting "
                                              "mlirGetDialectPluginInfo)"),
                                     cl::value_desc("lib.so"), cl::sub(compileCmd), cl::cat(passCategory));
cl::opt<std::string> userPasses("passes",
                                cl::desc("A pass pipeline to run at the --hook point, in MLIR's textual form "
                                         "(e.g. 'moe-example-cap-topk{max-k=1},canonicalize')"),
                                cl::value_desc("pipeline"), cl::sub(compileCmd), cl::cat(passCategory));
cl::list<std::string> patternFiles("patterns",
                                   cl::desc("Apply the PDL patterns of this file (mlir-pdll-19 -x=mlir output) "
                                            "at the --hook point; may be repeated"),
                                   cl::value_desc("file.mlir"), cl::sub(compileCmd), cl::cat(passCategory));
cl::opt<std::string> hookPoint("hook",
                               cl::desc("Where --passes and --patterns run: before-fusion (default; after "
                                        "import cleanup, so moec's raising and fusion see their result) or "
                                        "after-fusion (on the fused dispatches, before codegen)"),
                               cl::init("before-fusion"), cl::sub(compileCmd), cl::cat(passCategory));
cl::opt<bool> printAfterAll("print-ir-after-all", cl::desc("Print the IR after every pass (to stderr)"),
                            cl::sub(compileCmd), cl::cat(passCategory));
cl::list<std::string> printAfter("print-ir-after",
                                 cl::desc("Print the IR after each pass with this name (e.g. "
                                          "moe-raise-decomposed); may be repeated"),
                                 cl::value_desc("pass"), cl::sub(compileCmd), cl::cat(passCategory));
cl::opt<bool> noFusion("no-fusion", cl::desc("Skip moec's raising and fusion passes (user hooks still run)"),
                       cl::sub(compileCmd), cl::cat(passCategory));

cl::opt<bool> listOps("list-ops",
                      cl::desc("Print the supported ONNX ops (domain, op, since-version) and exit"),
                      cl::sub(importCmd), cl::cat(category));

int error(const Twine &message) {
  WithColor::error(errs(), "moec") << message << "\n";
  return 1;
}

/// A byte count for people: KiB below a MiB, MiB above.
std::string bytesText(int64_t b) {
  std::string out;
  raw_string_ostream os(out);
  if (b < (1 << 20))
    os << format("%.1f KiB", b / 1024.0);
  else
    os << format("%.1f MiB", b / 1048576.0);
  return out;
}

/// One line per MoE layer: where, from which form, its shape and what was fused into it.
void printReport(mlir::ModuleOp module, ArrayRef<std::string> misses) {
  using namespace moec::moe;
  SmallVector<SparseMoEOp> layers;
  module.walk([&](SparseMoEOp op) { layers.push_back(op); });
  errs() << "moec report: " << inputPath << ": " << layers.size() << " MoE layer"
         << (layers.size() == 1 ? "" : "s") << " (one fused dispatch each)\n";
  auto dim = [](int64_t d) { return mlir::ShapedType::isDynamic(d) ? std::string("?") : std::to_string(d); };
  for (auto [i, op] : llvm::enumerate(layers)) {
    const std::string loc = moec::describeLocation(op.getLoc());
    auto source = op->getAttrOfType<mlir::StringAttr>("moe.source");
    errs() << "  [" << i << "] " << loc << "\n      form: " << (source ? source.getValue() : "moe.sparse_moe")
           << "; E=" << dim(op.getNumExperts());
    if (op.getZeroExperts())
      errs() << " (+" << op.getZeroExperts() << " zero)";
    errs() << " k=" << op.getK() << " H=" << dim(op.getInput().getType().getDimSize(1))
           << " F=" << dim(op.getHiddenDim()) << " " << stringifyActivation(op.getActivation()) << "; router "
           << stringifyRouterKind(op.getRouterKind()) << ", " << stringifyGateFunc(op.getGate());
    if (op.getExpertGroups() > 1)
      errs() << ", grouped top-" << *op.getGroupTopk() << " of " << op.getExpertGroups() << " groups (by "
             << (op.getGroupScore() == moec::moe::GroupScore::max ? "max" : "top-2 sum") << ")";
    if (op.getNormalize())
      errs() << ", renormalised";
    if (op.getScale().convertToDouble() != 1.0)
      errs() << ", scale " << op.getScale().convertToDouble();
    errs() << "\n      fused:";
    auto fused = op->getAttrOfType<mlir::ArrayAttr>("moe.fused");
    if (!fused || fused.empty())
      errs() << " (nothing beyond the layer itself)";
    else
      for (auto f : fused.getAsRange<mlir::StringAttr>())
        errs() << " " << f.getValue();
    errs() << "\n";
    moec::MoELayerCost cost = moec::computeMoELayerCost(op);
    if (cost.totalWeightBytes >= 0)
      errs() << "      weights: " << (op.getFc1QuantAttr() ? "kept as imported" : stringifyStorage(op.getStorage()))
             << ", " << bytesText(cost.totalWeightBytes) << " as stored, <= " << bytesText(cost.weightBytesPerToken())
             << " read per token\n";
  }
  // Linear layers (moe.linear): how many, their weights as stored, by storage.
  std::map<std::string, std::pair<int, int64_t>> linear;
  module.walk([&](LinearOp op) {
    auto &e = linear[stringifyStorage(op.getStorage()).str()];
    e.first += 1;
    e.second += std::max<int64_t>(0, moec::computeLinearLayerCost(op).weightBytes);
  });
  if (!linear.empty()) {
    errs() << "  linear layers (one dispatch each):";
    for (auto &[storage, e] : linear)
      errs() << " " << e.first << " " << storage << " (" << bytesText(e.second) << ")";
    errs() << "\n";
  }
  int attention = 0;
  std::string attentionForm;
  module.walk([&](AttentionOp op) {
    if (attention++ == 0) {
      raw_string_ostream os(attentionForm);
      os << op.getQuery().getType().getDimSize(1) << " query / " << op.getKey().getType().getDimSize(1)
         << " key-value heads of " << op.getQuery().getType().getDimSize(3);
      if (auto fused = op->getAttrOfType<mlir::ArrayAttr>("moe.fused"))
        for (auto f : fused.getAsRange<mlir::StringAttr>())
          os << ", " << f.getValue();
    }
  });
  if (attention)
    errs() << "  attention layers (one dispatch each): " << attention << " (the first: " << attentionForm
           << ")\n";
  int rotary = 0, norms = 0;
  std::string rotaryForm;
  module.walk([&](RotaryOp op) {
    if (rotary++ == 0) {
      raw_string_ostream os(rotaryForm);
      os << op.getRotaryDim() << " of " << op.getInput().getType().getDimSize(3) << " dims"
         << (op.getInterleaved()
                 ? (op.getDeinterleave() ? ", interleaved, written as halves" : ", interleaved")
                 : ", half-split");
      if (auto fused = op->getAttrOfType<mlir::ArrayAttr>("moe.fused"))
        for (auto f : fused.getAsRange<mlir::StringAttr>())
          os << ", " << f.getValue();
    }
  });
  module.walk([&](NormOp) { ++norms; });
  if (rotary)
    errs() << "  rotary embeddings (one step each): " << rotary << " (the first: " << rotaryForm << ")\n";
  if (norms)
    errs() << "  norms outside dispatches (one step each): " << norms << "\n";
  module.walk([&](EmbeddingOp op) {
    auto t = op.getTable().getType();
    double bytes = double(t.getNumElements()) *
                   moec::storedWeightBytes(int(op.getStorage()), op.getBlockSize(), /*f32 scales*/ 4);
    errs() << "  embedding: " << t.getDimSize(0) << " rows of " << t.getDimSize(1) << ", "
           << stringifyStorage(op.getStorage()) << " (" << bytesText(int64_t(bytes + 0.5))
           << "), only the rows asked for are read\n";
  });
  if (!misses.empty()) {
    errs() << "  not fused (near misses):\n";
    for (const auto &m : misses)
      errs() << "    " << m << "\n";
  }
}

mlir::LogicalResult runCompilePipeline(mlir::ModuleOp module) {
  mlir::MLIRContext *ctx = module.getContext();
  mlir::PassManager pm(ctx);
  if (hookPoint != "before-fusion" && hookPoint != "after-fusion")
    return error("--hook=" + hookPoint + ": expected before-fusion or after-fusion"), mlir::failure();
  moec::HookPoint where =
      hookPoint == "after-fusion" ? moec::HookPoint::AfterFusion : moec::HookPoint::BeforeFusion;
  std::string pipelineError;
  moec::PipelineOptions options;
  options.remarks = report;
  options.hook = [&](mlir::OpPassManager &opm, moec::HookPoint at) {
    if (at != where)
      return;
    for (const auto &file : patternFiles) {
      moec::MoEApplyPatternsPassOptions po;
      po.file = file;
      opm.addPass(moec::createMoEApplyPatternsPass(po));
    }
    if (!userPasses.empty()) {
      std::string message;
      raw_string_ostream os(message);
      if (mlir::failed(mlir::parsePassPipeline(userPasses, opm, os)))
        pipelineError = "--passes='" + userPasses + "': " + message;
    }
  };
  if (noFusion) {
    options.hook(pm, where);
  } else {
    moec::buildFusionPipeline(pm, options);
  }
  // How every dispatch stores its weights, recorded on the ops (with or without fusion).
  for (auto [flag, value] : {std::pair<const char *, std::string>{"weights", weightsType},
                             {"expert-weights", expertWeights},
                             {"dense-weights", denseWeights},
                             {"lm-head-weights", lmHeadWeights},
                             {"embedding-weights", embeddingWeights}})
    if (!value.empty() && !moec::moe::symbolizeStorage(value))
      return error("--" + std::string(flag) + "=" + value + ": weights are stored as fp32, bf16, fp16, int8 or int4"),
             mlir::failure();
  if (weightBlock < 16 || weightBlock % 8)
    return error("--weight-block=" + std::to_string(weightBlock) + ": a multiple of 8 input features, >= 16"),
           mlir::failure();
  bool int8Act = false, bf16Act = false;
  if (activations != "f32") {
    SmallVector<StringRef> kinds;
    StringRef(activations).split(kinds, ',');
    for (StringRef kind : kinds) {
      bool &flag = kind == "int8" ? int8Act : bf16Act;
      if ((kind != "int8" && kind != "bf16") || flag)
        return error("--activations=" + activations + ": f32, int8, bf16 or int8,bf16"), mlir::failure();
      flag = true;
    }
  }
  moec::MoESetWeightStoragePassOptions storage;
  storage.experts = expertWeights.empty() ? weightsType : expertWeights;
  storage.dense = denseWeights.empty() ? weightsType : denseWeights;
  storage.lmHead = lmHeadWeights;
  storage.embeddings = embeddingWeights;
  storage.blockSize = weightBlock;
  storage.int8Activations = int8Act;
  storage.bf16Activations = bf16Act;
  pm.addPass(moec::createMoESetWeightStoragePass(storage));
  if (!pipelineError.empty())
    return error(StringRef(pipelineError).rtrim()), mlir::failure();
  if (printAfterAll || !printAfter.empty()) {
    ctx->disableMultithreading();
    auto after = [](mlir::Pass *pass, mlir::Operation *) {
      return printAfterAll || llvm::is_contained(printAfter, pass->getArgument().str());
    };
    pm.enableIRPrinting([](mlir::Pass *, mlir::Operation *) { return false; }, after,
                        /*printModuleScope=*/true, /*printAfterOnlyOnChange=*/false,
                        /*printAfterOnlyOnFailure=*/false, errs(),
                        mlir::OpPrintingFlags().elideLargeElementsAttrs(16).elideLargeResourceString(64));
  }
  SmallVector<std::string> misses;
  mlir::ScopedDiagnosticHandler handler(ctx, [&](mlir::Diagnostic &d) {
    if (d.getSeverity() != mlir::DiagnosticSeverity::Remark || !report)
      return mlir::failure(); // the default handler prints it
    misses.push_back(moec::describeLocation(d.getLocation()) + ": " + d.str());
    return mlir::success();
  });
  if (mlir::failed(pm.run(module)))
    return error(inputPath + ": compilation failed (see the errors above)"), mlir::failure();
  if (report)
    printReport(module, misses);
  return mlir::success();
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
  bool artifact = false;
  if (compileCmd) {
    if (emit == "auto")
      artifact = outputPath != "-" && !StringRef(outputPath).ends_with(".mlir");
    else if (emit == "artifact")
      artifact = true;
    else if (emit != "mlir")
      return error("--emit=" + emit + ": expected artifact, mlir or auto");
    if (artifact && outputPath == "-")
      return error("an artifact is a binary file: give its path with -o OUT.moex (or --emit=mlir for the IR)");
  }
  // The signing key is read before the compile: a bad one fails in a moment, not after it.
  std::unique_ptr<moec::signature::SigningKey> signingKey;
  if (!signKey.empty()) {
    if (!artifact)
      return error("--sign-key signs artifacts: give -o OUT.moex");
    std::string message;
    if (!(signingKey = moec::signature::SigningKey::load(signKey, message)))
      return error("--sign-key " + message);
  }
  std::vector<std::string> hipArchs, cudaArchs, emuArchs, sanitizers;
  if (compileCmd) {
    SmallVector<StringRef> targets, archs;
    StringRef(target).split(targets, ',', -1, false);
    if (targets.empty())
      return error("--target is empty (expected cpu, hip, cuda, emu or a comma-separated list)");
    auto archList = [&](StringRef flag, StringRef value, const std::vector<std::string> &known,
                        std::vector<std::string> &out) {
      archs.clear();
      value.split(archs, ',', -1, false);
      for (StringRef a : archs) {
        if (!llvm::is_contained(known, a.str())) {
          error("--" + flag.str() + "=" + a.str() + ": not an architecture this build compiles for (" +
                llvm::join(known, ", ") + ")");
          return false;
        }
        out.push_back(a.str());
      }
      if (out.empty()) {
        error("--" + flag.str() + " is empty");
        return false;
      }
      return true;
    };
    for (StringRef t : targets) {
      if (t == "hip") {
        if (!archList("hip-arch", hipArch, moec::codegen::knownHipArchs(), hipArchs))
          return 1;
      } else if (t == "cuda") {
        if (!archList("cuda-arch", cudaArch, moec::codegen::knownCudaArchs(), cudaArchs))
          return 1;
      } else if (t == "emu") {
        if (!archList("emu-arch", emuArch, moec::codegen::knownEmuArchs(), emuArchs))
          return 1;
      } else if (t != "cpu") {
        return error("--target=" + t.str() + ": expected cpu, hip, cuda or emu (or a comma-separated list)");
      }
    }
    if (!artifact && (!hipArchs.empty() || !cudaArchs.empty() || !emuArchs.empty()) && emit == "mlir")
      return error("--target=" + target + " needs an artifact (-o OUT.moex), not --emit=mlir");
    // --sanitize, else $MOEC_SANITIZE, else the sanitizers moec itself is built with (a sanitizer build).
    std::string list = sanitize.getValue();
    const char *from = "--sanitize";
    if (!sanitize.getNumOccurrences()) {
      const char *env = std::getenv("MOEC_SANITIZE");
      list = env ? env : MOEC_DEFAULT_SANITIZE;
      from = env ? "$MOEC_SANITIZE" : "this moec's build (MOEC_SANITIZE)";
    }
    SmallVector<StringRef> names;
    StringRef(list).split(names, ',', -1, false);
    for (StringRef n : names) {
      if (!llvm::is_contained(moec::codegen::knownSanitizers(), n.str()))
        return error(std::string(from) + "=" + list + ": '" + n.str() +
                     "' is not a sanitizer moec builds with (" +
                     llvm::join(moec::codegen::knownSanitizers(), ", ") + ")");
      if (!llvm::is_contained(sanitizers, n.str()))
        sanitizers.push_back(n.str());
    }
    if (llvm::is_contained(sanitizers, "thread") && llvm::is_contained(sanitizers, "address"))
      return error(std::string(from) + "=" + list + ": address and thread cannot be combined");
  }
  // The tokenizer to embed: --tokenizer, else the tokenizer.json next to the model; read before the compile,
  // so a bad one fails at once. A JSON file moert's reader cannot use is still embedded (with a warning): the
  // Python binding reads it with `tokenizers`.
  std::string tokenizerJson, tokenizerFrom;
  if (tokenizerFile.getNumOccurrences() && noTokenizer)
    return error("--tokenizer and --no-tokenizer: give one");
  if (tokenizerFile.getNumOccurrences() && !artifact)
    return error("--tokenizer embeds a tokenizer in an artifact: give -o OUT.moex");
  if (compileCmd && artifact && !noTokenizer) {
    std::string file = tokenizerFile;
    if (file.empty()) {
      SmallString<256> next = sys::path::parent_path(inputPath);
      sys::path::append(next, moert::text::kTokenizerFile);
      if (sys::fs::is_regular_file(next))
        file = next.str().str();
    }
    if (!file.empty()) {
      auto buffer = MemoryBuffer::getFile(file, /*IsText=*/false, /*RequiresNullTerminator=*/false);
      if (!buffer)
        return error("--tokenizer " + file + ": cannot read it: " + buffer.getError().message());
      tokenizerJson = (*buffer)->getBuffer().str();
      std::string why;
      bool isJson = false;
      if (!moert::text::Tokenizer::parse(tokenizerJson, file, why, &isJson) && !isJson)
        return error(why);
      if (!why.empty())
        WithColor::warning(errs(), "moec") << why << " (moert's own reader cannot use it; embedded for the "
                                           << "Python binding, whose tokenizers package may)\n";
      tokenizerFrom = file;
    }
  }
  std::vector<int> expertRanks;
  if (expertParallel.getNumOccurrences()) {
    if (expertParallel < 1 || expertParallel > 65536)
      return error("--expert-parallel=" + std::to_string(expertParallel) +
                   ": expected a rank count, 1 to 65536");
    if (!artifact)
      return error("--expert-parallel splits an artifact's experts: give -o OUT.moex");
    if (!hipArchs.empty() || !cudaArchs.empty() || !emuArchs.empty())
      return error("--expert-parallel runs on CPU ranks only (--target=cpu); GPU expert parallelism is not "
                   "built yet (docs/scale-out.md)");
  }
  if (expertWire.getNumOccurrences()) {
    if (!expertParallel.getNumOccurrences())
      return error("--expert-wire needs --expert-parallel=N");
    if (expertWire != "f32" && expertWire != "bf16")
      return error("--expert-wire=" + expertWire + ": expected f32 or bf16");
  }
  if (!expertMap.empty()) {
    if (!expertParallel.getNumOccurrences())
      return error("--expert-map needs --expert-parallel=N");
    SmallVector<StringRef> items;
    StringRef(expertMap).split(items, ',', -1, true);
    for (StringRef item : items) {
      unsigned rank = 0;
      if (item.trim().getAsInteger(10, rank) || rank >= unsigned(expertParallel))
        return error("--expert-map: '" + item.str() + "' (expert " + std::to_string(expertRanks.size()) +
                     ") is not a rank in 0.." + std::to_string(expertParallel - 1));
      expertRanks.push_back(int(rank));
    }
  }

  mlir::DialectRegistry registry;
  for (const auto &path : dialectPlugins) {
    auto plugin = mlir::DialectPlugin::load(path);
    if (!plugin)
      return error("cannot load dialect plugin '" + path + "': " + toString(plugin.takeError()));
    plugin->registerDialectRegistryCallbacks(registry);
  }
  for (const auto &path : passPlugins) {
    auto plugin = mlir::PassPlugin::load(path);
    if (!plugin)
      return error("cannot load pass plugin '" + path + "': " + toString(plugin.takeError()));
    plugin->registerPassRegistryCallbacks();
  }
  // A ThreadSanitizer build of moec runs MLIR's passes on one thread: Debian's libMLIR is not instrumented, so
  // TSan cannot see the synchronisation inside it (its storage uniquer publishes through atomics) and reports
  // races between MLIR's own worker threads. moec's own threads (weight packing) stay checked.
  mlir::MLIRContext context(registry, StringRef(MOEC_DEFAULT_SANITIZE).contains("thread")
                                          ? mlir::MLIRContext::Threading::DISABLED
                                          : mlir::MLIRContext::Threading::ENABLED);
  moec::frontend::ImportOptions options;
  options.load.runChecker = !noCheck;
  options.load.runShapeInference = !noShapeInference;
  std::string message;
  std::vector<std::string> warnings;
  moec::frontend::WeightsRead read;
  auto module = moec::frontend::importOnnxModel(inputPath, context, options, message, &warnings, &read);
  for (const auto &w : warnings)
    WithColor::warning(errs(), "moec") << inputPath << ": " << w << "\n";
  if (!module)
    return error(message);
  if (compileCmd && !quiet) {
    auto size = [](uint64_t b) {
      return b >= (uint64_t(1) << 30) ? formatv("{0:f2} GiB", b / double(1 << 30)).str()
                                      : formatv("{0:f1} MiB", b / double(1 << 20)).str();
    };
    errs() << "moec: read " << inputPath << ": " << read.tensors << " weight tensor"
           << (read.tensors == 1 ? "" : "s") << ", " << size(read.inlineBytes) << " in the model file";
    if (read.externalFiles)
      errs() << ", " << size(read.externalBytes) << " mapped from " << read.externalFiles
             << " external data file" << (read.externalFiles == 1 ? "" : "s");
    errs() << "\n";
  }

  if (compileCmd && failed(runCompilePipeline(*module)))
    return 1;
  if (artifact) {
    moec::codegen::CpuOptions cpuOptions;
    cpuOptions.cpu = cpu;
    cpuOptions.cxx = cxxPath;
    cpuOptions.dumpKernelsDir = dumpKernels;
    cpuOptions.kernelCache = kernelCache;
    cpuOptions.hipArchs = hipArchs;
    cpuOptions.cudaArchs = cudaArchs;
    cpuOptions.emuArchs = emuArchs;
    cpuOptions.sanitizers = sanitizers;
    cpuOptions.expertParallel = expertParallel;
    cpuOptions.expertMap = expertRanks;
    cpuOptions.expertWireBf16 = expertWire == "bf16";
    cpuOptions.tokenizerJson = tokenizerJson;
    if (!tokenizerFrom.empty() && !quiet)
      errs() << "moec: embedding the tokenizer " << tokenizerFrom << " ("
             << formatv("{0:f1} MiB", tokenizerJson.size() / double(1 << 20)) << ")\n";
    std::string message;
    if (!moec::codegen::compileCpuArtifact(*module, cpuOptions, outputPath, inputPath, message,
                                           quiet ? nullptr : &errs()))
      return error(inputPath + ": " + message);
    if (signingKey) {
      const std::string signature = moec::signature::defaultPath(outputPath);
      if (!signingKey->sign(outputPath, signature, message)) {
        sys::fs::remove(outputPath); // an artifact asked to be signed is not left unsigned
        return error(message);
      }
      if (!quiet)
        errs() << "moec: signed it: " << signature << "\n";
    }
    if (!quiet)
      errs() << "moec: wrote " << outputPath << "\n";
    return 0;
  }

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
  // Past a file-size limit (ulimit -f) a write fails with EFBIG, reported as one error, instead of SIGXFSZ
  // ending the process mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  moec::registerMoECPasses();
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
  mlir::registerSymbolDCEPass();
  mlir::registerInlinerPass();
  cl::HideUnrelatedOptions({&category, &passCategory});
  cl::ParseCommandLineOptions(argc, argv,
                              "moec: ahead-of-time compiler for sparse Mixture-of-Experts models\n\n"
                              "  moec import MODEL.onnx [-o OUT.mlir]\n"
                              "  moec compile MODEL.onnx -o OUT.moex [--cpu=native] [--report]\n"
                              "  moec compile MODEL.onnx -o OUT.moex --target=cpu,hip,cuda [--hip-arch=gfx942] "
                              "[--weights=bf16]\n"
                              "  moec compile MODEL.onnx --emit=mlir [-o OUT.mlir] [--report]\n"
                              "               [--load-pass-plugin=lib.so --passes=PIPELINE] [--patterns=p.mlir]\n");
  if (importCmd || compileCmd)
    return runImport();
  return error("no command given; run `moec --help` (commands: import, compile)");
}
