//===- NodeImporter.h - what an op-table builder sees -----------*- C++ -*-===//
//
// Internal to frontend/: the interface between the graph walk (Importer.cpp) and the per-op builders in
// the op table (OpTable.cpp).
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_FRONTEND_NODEIMPORTER_H
#define MOEC_FRONTEND_NODEIMPORTER_H

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Value.h"

#include <optional>
#include <string>

namespace onnx {
class NodeProto;
class AttributeProto;
class GraphProto;
class TypeProto;
} // namespace onnx

namespace moec::frontend {

class NodeImporter {
public:
  virtual ~NodeImporter() = default;

  virtual const onnx::NodeProto &node() const = 0;
  /// Opset version of the node's domain in this model.
  virtual int64_t opset() const = 0;
  virtual mlir::OpBuilder &builder() = 0;
  virtual mlir::Location loc() const = 0;

  /// Number of inputs as written (trailing optional inputs may be absent).
  virtual unsigned numInputs() const = 0;
  /// Input `i`, or null when absent or given as "" (an omitted optional input).
  virtual mlir::Value input(unsigned i) const = 0;
  /// For importers that need their inputs' ranks and dims at import (ONNX's opset-23 Attention,
  /// RotaryEmbedding, RMSNormalization): when an input is unranked (a model without value_info for an opset
  /// libonnx does not know), gives the function built so far moec's own result types first (refineShapes),
  /// as the import does for the whole model at its end.
  void refineInputs();
  virtual const onnx::AttributeProto *attribute(llvm::StringRef name) const = 0;
  /// The node's attributes converted to MLIR attributes under their ONNX names; fails with an error
  /// for attribute kinds moec cannot represent.
  virtual mlir::LogicalResult convertAttributes(llvm::SmallVectorImpl<mlir::NamedAttribute> &out) = 0;

  /// Type of output `i` as inferred by libonnx or declared in the model; `fallbackElement` (or the first
  /// input's element type when null) builds an unranked type when neither knows it.
  virtual mlir::Type outputType(unsigned i, mlir::Type fallbackElement = nullptr) const = 0;
  virtual unsigned numOutputs() const = 0;
  /// Binds the node's outputs (in order) to `values`.
  virtual void setOutputs(mlir::ValueRange values) = 0;

  /// Records an error about this node; the message is completed with the node's name, op and opset.
  virtual mlir::LogicalResult fail(const llvm::Twine &message) = 0;

  /// Creates op `name` at the node's location and verifies it; on failure erases it, records an error
  /// naming the node and returns null. An attribute the op cannot hold is an error, not silently dropped.
  /// With `numRegions`, the op gets that many regions, which `fillRegions` builds (importSubgraph) before
  /// the op is verified; its failure (already reported) erases the op.
  mlir::Operation *createOp(llvm::StringRef name, mlir::ValueRange operands,
                            llvm::ArrayRef<mlir::NamedAttribute> attrs, mlir::TypeRange resultTypes,
                            unsigned numRegions = 0,
                            llvm::function_ref<mlir::LogicalResult(mlir::Operation *)> fillRegions = nullptr);

  /// Imports the node's graph attribute `name` (an If branch, a Loop or Scan body) into `region`, one block:
  /// the subgraph's inputs become block arguments (of `argTypes[i]` where given and non-null, else of their
  /// declared types), its initializers and nodes ops, its outputs one onnx.Yield. Values of the enclosing
  /// graphs stay visible (ONNX's outer-scope capture); the subgraph's own names end with it.
  virtual mlir::LogicalResult importSubgraph(llvm::StringRef name, mlir::Region &region,
                                             llvm::ArrayRef<mlir::Type> argTypes) = 0;
  /// The graph attribute `name`, or null.
  const onnx::GraphProto *graphAttribute(llvm::StringRef name) const;

  /// ONNX TensorProto data type -> MLIR element type (null if unsupported).
  virtual mlir::Type elementType(int onnxDataType) const = 0;
  /// An ONNX TypeProto as an MLIR type: a tensor type, !onnx.seq or !onnx.opt (null if unsupported); a tensor
  /// of unknown element type takes `fallbackElement`.
  virtual mlir::Type typeFromProto(const onnx::TypeProto *type, mlir::Type fallbackElement) const = 0;
  /// A constant tensor op holding `value`.
  mlir::Value constant(mlir::ElementsAttr value);
  /// A constant 1-D i64 tensor.
  mlir::Value constantI64(llvm::ArrayRef<int64_t> values);
};

using OpBuilderFn = mlir::LogicalResult (*)(NodeImporter &);

struct OpTableEntry {
  llvm::StringRef domain; // "" for the default ONNX domain
  llvm::StringRef op;
  int sinceVersion;
  OpBuilderFn build;
  bool takesValues = false; // its inputs may be sequences or optionals (every other builder sees tensors)
};

/// The importer's op table: every supported (domain, op, since-version).
llvm::ArrayRef<OpTableEntry> opTable();

/// A node's attribute by name, or the default when absent (MoEImport.cpp).
int64_t intAttr(NodeImporter &ni, llvm::StringRef name, int64_t dflt);
std::optional<float> floatAttr(NodeImporter &ni, llvm::StringRef name);
std::string stringAttr(NodeImporter &ni, llvm::StringRef name, llvm::StringRef dflt);
/// Fails on attributes of the node that `known` does not list (a typo must not be ignored).
mlir::LogicalResult onlyKnownAttributes(NodeImporter &ni, llvm::ArrayRef<llvm::StringRef> known);

/// Builders for the MoE ops (MoEImport.cpp): ONNX Runtime's com.microsoft.MoE / QMoE and moec.SparseMoE,
/// all imported as one moe.sparse_moe.
mlir::LogicalResult importOrtMoE(NodeImporter &ni);
mlir::LogicalResult importOrtQMoE(NodeImporter &ni);
mlir::LogicalResult importSparseMoE(NodeImporter &ni);
/// ONNX Runtime's com.microsoft.MatMulNBits, imported as a moe.linear keeping its quantised weights.
mlir::LogicalResult importOrtMatMulNBits(NodeImporter &ni);
/// ONNX Runtime's norm and GELU contrib ops (MoEImport.cpp): SimplifiedLayerNormalization and
/// Skip(Simplified)LayerNormalization as a moe.norm over the last axis, FastGelu / BiasGelu / QuickGelu as
/// graph ops.
mlir::LogicalResult importOrtSimplifiedLayerNorm(NodeImporter &ni);
mlir::LogicalResult importOrtSkipLayerNorm(NodeImporter &ni);
mlir::LogicalResult importOrtGelu(NodeImporter &ni);
/// ONNX Runtime's com.microsoft.GroupQueryAttention (AttentionImport.cpp): its cache update, rotary embedding
/// and causal mask as graph ops around one moe.attention.
mlir::LogicalResult importOrtGroupQueryAttention(NodeImporter &ni);
/// ONNX Runtime's com.microsoft.RotaryEmbedding (AttentionImport.cpp): one moe.rotary.
mlir::LogicalResult importOrtRotaryEmbedding(NodeImporter &ni);
/// ONNX's own Attention (opset 23, 24: nonpad_kv_seqlen) and RotaryEmbedding (opset 23), as torch.onnx's
/// dynamo exporter writes them at opset 23 (AttentionImport.cpp): one moe.attention with its present caches
/// as Concats and its causal / padding / attn_mask as one additive mask; one moe.rotary.
mlir::LogicalResult importOnnxAttention(NodeImporter &ni);
mlir::LogicalResult importOnnxRotaryEmbedding(NodeImporter &ni);
/// Ops written out as other graph ops (ComposedImport.cpp): the quantized convolutions and matmul through
/// f64 Conv / MatMul, training-mode BatchNormalization through the batch statistics.
mlir::LogicalResult importConvInteger(NodeImporter &ni);
mlir::LogicalResult importQLinearConv(NodeImporter &ni);
mlir::LogicalResult importQLinearMatMul(NodeImporter &ni);
mlir::LogicalResult importBatchNormTraining(NodeImporter &ni);
/// Sequences and optionals (SequenceImport.cpp): Identity (of any value), SequenceConstruct / Empty / Insert
/// / At / Erase / Length, SplitToSequence, ConcatFromSequence, Optional, OptionalHasElement / GetElement, and
/// SequenceMap (its body a region).
mlir::LogicalResult importIdentity(NodeImporter &ni);
mlir::LogicalResult importSequenceOp(NodeImporter &ni);
mlir::LogicalResult importOptionalOp(NodeImporter &ni);
mlir::LogicalResult importSequenceMap(NodeImporter &ni);
/// ONNX Runtime's com.microsoft.GatherBlockQuantized (ComposedImport.cpp): gather, unpack, dequantize.
mlir::LogicalResult importOrtGatherBlockQuantized(NodeImporter &ni);

} // namespace moec::frontend

#endif // MOEC_FRONTEND_NODEIMPORTER_H
