//===- MoEBase.td - the moe dialect, its enums and attributes -*- tablegen -*-===//
//
// The `moe` dialect holds moec's graph-level MoE ops: one op describes a whole sparse MoE layer (routing,
// fine-grained dim mask, expert FFN, weighted combine) so that passes and codegen can treat it as one unit.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_IR_MOEBASE_TD
#define MOEC_IR_MOEBASE_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/IR/EnumAttr.td"

def MoE_Dialect : Dialect {
  let name = "moe";
  let cppNamespace = "::moec::moe";
  let summary = "Sparse Mixture-of-Experts layers as single ops";
  let description = [{
    The `moe` dialect is moec's graph IR for Mixture-of-Experts layers. The ONNX frontend imports
    `com.microsoft.MoE`, `com.microsoft.QMoE` and `moec.SparseMoE` straight into `moe.sparse_moe`; the fusion
    passes raise decomposed router + expert subgraphs (as PyTorch exports them) into the same op. Everything
    the kernels need to know about a layer (expert count, top-k, gating function, dim mask, activation, weight
    quantisation) is an operand or attribute of that one op, so codegen can specialise one dispatch per layer.

    Tensors use builtin types. Weight tensors are usually constants backed by the mapped model file
    (dense resources), never copies.
  }];
  let useDefaultAttributePrinterParser = 1;
}

//===----------------------------------------------------------------------===//
// Enums
//===----------------------------------------------------------------------===//

def MoE_Activation : I32EnumAttr<"Activation", "activation applied between an expert's up and down projection", [
    I32EnumAttrCase<"identity", 0>,
    I32EnumAttrCase<"relu", 1>,
    I32EnumAttrCase<"gelu", 2>,    // erf GELU
    I32EnumAttrCase<"silu", 3>,
    I32EnumAttrCase<"swiglu", 4>,  // gated: silu(alpha * gate) * gate ... see sparse_moe's description
    I32EnumAttrCase<"geglu", 5>,   // gated: gelu(gate) * (up + beta)
    I32EnumAttrCase<"gelu_tanh", 6> // tanh-approximated GELU (what ONNX Runtime's MoE kernels compute)
  ]> {
  let cppNamespace = "::moec::moe";
  let genSpecializedAttr = 0;
}
def MoE_ActivationAttr : EnumAttr<MoE_Dialect, MoE_Activation, "activation"> {
  let assemblyFormat = "`<` $value `>`";
}

def MoE_GateFunc : I32EnumAttr<"GateFunc", "function turning router logits into expert scores", [
    I32EnumAttrCase<"softmax", 0>,
    I32EnumAttrCase<"sigmoid", 1>,
    I32EnumAttrCase<"identity", 2>,
    I32EnumAttrCase<"sparsemixer", 3>  // PhiMoE's: one masked softmax per slot (see sparse_moe)
  ]> {
  let cppNamespace = "::moec::moe";
  let genSpecializedAttr = 0;
}
def MoE_GateFuncAttr : EnumAttr<MoE_Dialect, MoE_GateFunc, "gate"> {
  let assemblyFormat = "`<` $value `>`";
}

def MoE_GroupScore : I32EnumAttr<"GroupScore", "how grouped top-k scores a group of experts", [
    I32EnumAttrCase<"top2_sum", 0>,  // the sum of the group's two largest biased scores (DeepSeek-V3)
    I32EnumAttrCase<"max", 1>        // the group's largest score (DeepSeek-V2's group_limited_greedy)
  ]> {
  let cppNamespace = "::moec::moe";
  let genSpecializedAttr = 0;
}
def MoE_GroupScoreAttr : EnumAttr<MoE_Dialect, MoE_GroupScore, "group_score"> {
  let assemblyFormat = "`<` $value `>`";
}

def MoE_RouterKind : I32EnumAttr<"RouterKind", "what the router operand of a MoE layer holds", [
    I32EnumAttrCase<"linear", 0>,  // router weights [H, N]; logits = input x router (+ router_bias)
    I32EnumAttrCase<"logits", 1>   // precomputed logits [T, N] from any router subgraph
  ]> {
  let cppNamespace = "::moec::moe";
  let genSpecializedAttr = 0;
}
def MoE_RouterKindAttr : EnumAttr<MoE_Dialect, MoE_RouterKind, "router"> {
  let assemblyFormat = "`<` $value `>`";
}

def MoE_GatedLayout : I32EnumAttr<"GatedLayout", "row layout of fc1 for gated activations", [
    I32EnumAttrCase<"block", 0>,       // rows [0, F) are the gate, rows [F, 2F) the up projection
    I32EnumAttrCase<"interleaved", 1>  // even rows gate, odd rows up (ONNX Runtime's swiglu_fusion=1)
  ]> {
  let cppNamespace = "::moec::moe";
  let genSpecializedAttr = 0;
}
def MoE_GatedLayoutAttr : EnumAttr<MoE_Dialect, MoE_GatedLayout, "gated_layout"> {
  let assemblyFormat = "`<` $value `>`";
}

def MoE_Norm : I32EnumAttr<"NormKind", "normalisation applied to a MoE layer's input before routing", [
    I32EnumAttrCase<"none", 0>,
    I32EnumAttrCase<"rms", 1>,   // x / sqrt(mean(x^2) + eps) * norm_weight
    I32EnumAttrCase<"layer", 2>  // (x - mean) / sqrt(var + eps) * norm_weight + norm_bias
  ]> {
  let cppNamespace = "::moec::moe";
  let genSpecializedAttr = 0;
}
def MoE_NormAttr : EnumAttr<MoE_Dialect, MoE_Norm, "norm"> {
  let assemblyFormat = "`<` $value `>`";
}

def MoE_Storage : I32EnumAttr<"Storage", "how a dispatch stores its weights in the artifact", [
    I32EnumAttrCase<"fp32", 0>, I32EnumAttrCase<"bf16", 1>, I32EnumAttrCase<"fp16", 2>,
    I32EnumAttrCase<"int8", 3>, I32EnumAttrCase<"int4", 4>]> {
  // The values are moert_storage's (kernels/cpu/moert_kernel_abi.h); codegen checks they agree.
  let cppNamespace = "::moec::moe";
  let genSpecializedAttr = 0;
}
def MoE_StorageAttr : EnumAttr<MoE_Dialect, MoE_Storage, "storage"> {
  let assemblyFormat = "`<` $value `>`";
}

//===----------------------------------------------------------------------===//
// Attributes
//===----------------------------------------------------------------------===//

class MoE_Attr<string name, string attrMnemonic, list<Trait> traits = []>
    : AttrDef<MoE_Dialect, name, traits> {
  let mnemonic = attrMnemonic;
}

def MoE_WeightQuantAttr : MoE_Attr<"WeightQuant", "weight_quant"> {
  let summary = "weight-only quantisation of an expert weight tensor";
  let description = [{
    Describes how integer expert weights map back to real values, the way ONNX Runtime's `QMoE` stores
    them: `w = scale * (q - zero_point)` where `q` is a `bits`-wide integer. Quantised weights are stored
    packed along their last (reduction) dim: a logical `[E, rows, K]` weight of 4-bit values is an
    `[E, rows, K / 2]` tensor of `i8`/`ui8` (low nibble first). Scales have shape `[E, rows]` when
    `block_size` is 0 (one scale per row) and `[E, rows, K / block_size]` otherwise. Symmetric quantisation
    uses zero point `2^(bits-1)` for unsigned storage, 0 for signed storage.

    Example: `#moe.weight_quant<bits = 4, block_size = 32>`
  }];
  let parameters = (ins "unsigned":$bits, DefaultValuedParameter<"unsigned", "0">:$block_size);
  let assemblyFormat = "`<` struct(params) `>`";
  let genVerifyDecl = 1;
}

#endif // MOEC_IR_MOEBASE_TD
