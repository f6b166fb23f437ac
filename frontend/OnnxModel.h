//===- OnnxModel.h - an ONNX model loaded, checked and shape-inferred -*- C++ -*-===//
//
// The only part of moec that talks to libonnx (compiled with exceptions, which libonnx throws; everything
// it throws is turned into an error string here). Loads binary (.onnx) or textual (.onnxtxt, ONNX's own
// text syntax) models, maps external data files instead of reading them, runs libonnx's checker and shape
// inference, and hands out tensor bytes without copying.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_FRONTEND_ONNXMODEL_H
#define MOEC_FRONTEND_ONNXMODEL_H

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/MemoryBuffer.h"

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace onnx {
class ModelProto;
class NodeProto;
class TensorProto;
class TypeProto;
} // namespace onnx

namespace moec::frontend {

struct LoadOptions {
  bool runChecker = true;
  bool runShapeInference = true;
};

/// Bytes of a tensor's data in little-endian storage order, pointing into the model or a mapped file.
struct TensorBytes {
  llvm::ArrayRef<char> data;
  /// True when `data` points into a mapped external-data file (no copy was made).
  bool external = false;
};

/// What the weights read from a model came to: tensors (initializers and Constant values), bytes held in the
/// model file itself, and bytes mapped from external data files (and how many files).
struct WeightsRead {
  uint64_t tensors = 0, inlineBytes = 0, externalBytes = 0;
  size_t externalFiles = 0;
};

class OnnxModel {
public:
  ~OnnxModel();

  /// Loads `path`. On failure returns null and sets `error` to one line naming the file and the problem.
  static std::unique_ptr<OnnxModel> load(llvm::StringRef path, const LoadOptions &options,
                                         std::string &error);
  /// Loads a binary model held in memory; `name` stands for the file in messages, and external data is
  /// looked up relative to the current directory.
  static std::unique_ptr<OnnxModel> loadFromMemory(llvm::StringRef bytes, llvm::StringRef name,
                                                   const LoadOptions &options, std::string &error);

  const onnx::ModelProto &proto() const { return *model; }
  llvm::StringRef path() const { return modelPath; }
  /// Opset version imported for `domain` ("" and "ai.onnx" are the default domain); 0 if not imported.
  int64_t opsetVersion(llvm::StringRef domain) const;
  /// Inferred or declared type of a value, or null if neither libonnx nor the model knows it.
  const onnx::TypeProto *valueType(llvm::StringRef name) const;
  /// The model's opsets are newer than libonnx knows (its checker and shape inference were skipped).
  bool newerThanLibonnx() const { return inferenceSkipped; }
  /// Notes for the user that are not errors (e.g. a model newer than the checker).
  const std::vector<std::string> &warnings() const { return notes; }

  /// Replaces every node that `imports` says moec does not import, and whose ONNX schema defines it as a
  /// function (its body written in other ONNX ops, e.g. the loss ops, CastLike, HardSwish, Celu), by that
  /// body: values inside it renamed `<node>/<value>`, attribute references bound to the node's attributes
  /// or the schema's defaults, context-dependent bodies built from the inputs' known types. Bodies made of
  /// functions are expanded in turn; shape inference runs again over the result (when it ran at load).
  /// Returns the number of nodes expanded, or -1 with `error` set.
  using ImportsOp = std::function<bool(llvm::StringRef domain, llvm::StringRef op, int64_t opset)>;
  int expandFunctions(const ImportsOp &imports, std::string &error);
  /// The opset a node is read at: the model's for its domain, or the one its function body was written
  /// for when the node comes from an expanded function.
  int64_t nodeOpset(const onnx::NodeProto &node) const;
  /// The op whose function body a node comes from (for messages), or "" for the model's own nodes.
  llvm::StringRef expandedFrom(const onnx::NodeProto &node) const;

  /// Raw bytes of `tensor` (raw_data, typed fields or external data). Returns false and sets `error` when
  /// the data is missing, out of bounds or inconsistent with the tensor's shape.
  bool tensorBytes(const onnx::TensorProto &tensor, TensorBytes &out, std::string &error);
  /// The tensors tensorBytes() handed out so far (each counted once).
  WeightsRead weightsRead() const;

private:
  OnnxModel();
  static std::unique_ptr<OnnxModel> parse(std::unique_ptr<OnnxModel> m, llvm::StringRef bytes, bool text,
                                          const LoadOptions &options, std::string &error);
  std::unique_ptr<onnx::ModelProto> model;
  std::string modelPath, modelDir;
  llvm::StringMap<const onnx::TypeProto *> types;
  llvm::StringMap<std::unique_ptr<llvm::MemoryBuffer>> externalFiles;
  /// Storage for tensors whose data is not laid out as raw bytes in the proto (e.g. f16 in int32_data).
  std::vector<std::unique_ptr<std::vector<char>>> converted;
  std::vector<std::string> notes;
  std::set<const onnx::TensorProto *> counted; // tensors in `read`
  WeightsRead read;
  LoadOptions loadOptions;
  bool inferenceSkipped = false;
  /// Nodes from expanded function bodies whose body was written for another opset: name -> opset.
  std::map<std::string, int64_t> bodyOpsets;
  /// Nodes from expanded function bodies: name -> the op they implement.
  std::map<std::string, std::string> bodyOf;
  void collectTypes();
};

/// Number of bytes one element of ONNX data type `dataType` takes in raw_data (0 if unsupported).
size_t onnxElementSize(int dataType);
/// Name of an ONNX TensorProto data type ("FLOAT", "INT64", ...).
llvm::StringRef onnxDataTypeName(int dataType);

} // namespace moec::frontend

#endif // MOEC_FRONTEND_ONNXMODEL_H
