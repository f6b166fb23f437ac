//===- ONNXOps.td - the onnx graph dialect -----------------*- tablegen -*-===//
//
// moec's graph IR for standard ONNX ops: one op per ONNX operator, named exactly like it (`onnx.MatMul`),
// with the semantics of the newest opset the importer knows. The importer normalises older opsets into
// this form (e.g. an `axes` attribute of opset 11 becomes the constant `axes` input of opset 13/18, optional
// inputs with defaults are materialised), so passes match one spelling per operator.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_IR_ONNXOPS_TD
#define MOEC_IR_ONNXOPS_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/IR/BuiltinAttributes.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/Interfaces/ControlFlowInterfaces.td"

def ONNX_Dialect : Dialect {
  let name = "onnx";
  let cppNamespace = "::moec::onnxir";
  let summary = "ONNX operators as imported by moec";
  let description = [{
    Standard ONNX operators in moec's graph IR. Each op carries its ONNX attributes under their ONNX names;
    tensor constants (initializers, `Constant` nodes) are `arith.constant`s, large ones backed by the
    mapped model file (`dense_resource`). The importer's op table (`frontend/OpTable.cpp`) lists which
    (domain, op, since-version) map here.
  }];
  let useDefaultTypePrinterParser = 1;
}

//===----------------------------------------------------------------------===//
// ONNX's non-tensor value types: sequences of tensors and optionals.
//===----------------------------------------------------------------------===//

class ONNX_Type<string name, string typeMnemonic> : TypeDef<ONNX_Dialect, name> {
  let mnemonic = typeMnemonic;
}

def ONNX_SeqType : ONNX_Type<"Seq", "seq"> {
  let summary = "an ONNX sequence: a run-time number of tensors of one element type";
  let description = [{
    ONNX's `seq(tensor(T))`. The element type is the tensors' type as far as it is known (their shapes may
    differ from one element to the next; an unranked type says nothing about them). libmoert holds a sequence
    as a list of tensors it owns.
  }];
  let parameters = (ins "::mlir::TensorType":$elementType);
  let assemblyFormat = "`<` $elementType `>`";
}

def ONNX_OptType : ONNX_Type<"Opt", "opt"> {
  let summary = "an ONNX optional: a tensor or a sequence, or nothing";
  let description = [{
    ONNX's `optional(T)` with `T` a tensor type or an `!onnx.seq`. At run time the value holds its content or
    is empty (`OptionalHasElement` tells which).
  }];
  let parameters = (ins "::mlir::Type":$elementType);
  let assemblyFormat = "`<` $elementType `>`";
}

def ONNX_AnySeq : Type<CPred<"::llvm::isa<::moec::onnxir::SeqType>($_self)">, "ONNX sequence",
                       "::moec::onnxir::SeqType">;
def ONNX_AnyOpt : Type<CPred<"::llvm::isa<::moec::onnxir::OptType>($_self)">, "ONNX optional",
                       "::moec::onnxir::OptType">;
// Any value an ONNX graph edge can carry.
def ONNX_AnyValue : AnyTypeOf<[AnyTensor, ONNX_AnySeq, ONNX_AnyOpt]>;

// Attribute values the ONNX spec allows, checked by the ops' verifiers (the importer names the node, the
// attribute and the value given).
class ONNX_OneOf<list<string> values> : AttrConstraint<
    CPred<"::llvm::isa<::mlir::StringAttr>($_self) && ::llvm::is_contained(::llvm::ArrayRef<::llvm::StringRef>{"
          # !interleave(!foreach(v, values, "\"" # v # "\""), ", ") # "}, ::llvm::cast<::mlir::StringAttr>($_self).getValue())">,
    "one of " # !interleave(values, ", ")>;
class ONNX_Str<string dflt, list<string> values>
    : DefaultValuedAttr<ConfinedAttr<StrAttr, [ONNX_OneOf<values>]>, "\"" # dflt # "\"">;
def ONNX_AutoPad : ONNX_Str<"NOTSET", ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]>;
def ONNX_ScatterReduction : ONNX_Str<"none", ["none", "add", "mul", "max", "min"]>;
// A flag: 0 or 1.
def ONNX_ZeroOrOne : AttrConstraint<
    CPred<"::llvm::isa<::mlir::IntegerAttr>($_self) && "
          "::llvm::cast<::mlir::IntegerAttr>($_self).getValue().getZExtValue() <= 1">, "0 or 1">;
class ONNX_Flag<string dflt> : DefaultValuedAttr<ConfinedAttr<I64Attr, [ONNX_ZeroOrOne]>, dflt>;

class ONNX_Op<string mnemonic, list<Trait> traits = []>
    : Op<ONNX_Dialect, mnemonic, !listconcat([Pure], traits)> {
  let summary = "ONNX " # mnemonic;
  let description = "The ONNX `" # mnemonic # "` operator (newest opset semantics; see the ONNX operator "
                    # "documentation).";
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def ONNX_ConstantOp : ONNX_Op<"Constant", [ConstantLike, AllTypesMatch<["value", "output"]>]> {
  let summary = "a tensor constant (initializer or ONNX Constant node)";
  let description = [{
    Holds an initializer or the value of an ONNX `Constant` node. Small values are inline
    `dense<...>` attributes; large ones are `dense_resource` blobs that point into the mapped model or
    external-data file, so importing a model does not copy its weights. Unlike `arith.constant` it accepts
    unsigned element types (ONNX's `uint8` is `ui8`).
  }];
  let arguments = (ins ElementsAttr:$value);
  let results = (outs AnyTensor:$output);
  let assemblyFormat = "attr-dict $value";
  let hasFolder = 1;
  let builders = [OpBuilder<(ins "::mlir::ElementsAttr":$value), [{
    build($_builder, $_state, value.getShapedType(), value);
  }]>];
}

class ONNX_UnaryOp<string mnemonic> : ONNX_Op<mnemonic> {
  let arguments = (ins AnyTensor:$X);
  let results = (outs AnyTensor:$Y);
}

class ONNX_BinaryOp<string mnemonic> : ONNX_Op<mnemonic> {
  let arguments = (ins AnyTensor:$A, AnyTensor:$B);
  let results = (outs AnyTensor:$C);
}

def ONNX_IdentityOp : ONNX_Op<"Identity"> {
  let arguments = (ins ONNX_AnyValue:$X);
  let results = (outs ONNX_AnyValue:$Y);
}

foreach name = ["Abs", "Ceil", "Cos", "Erf", "Exp", "Floor", "Log", "Neg", "Not", "Reciprocal",
                "Relu", "Sigmoid", "Sin", "Sqrt", "Tanh"] in
  def ONNX_#name#Op : ONNX_UnaryOp<name>;

foreach name = ["Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cosh", "Round", "Sign", "Sinh", "Softplus",
                "Softsign", "Tan"] in
  def ONNX_#name#Op : ONNX_UnaryOp<name>;

def ONNX_IsNaNOp : ONNX_UnaryOp<"IsNaN">;

def ONNX_IsInfOp : ONNX_Op<"IsInf"> {
  let arguments = (ins AnyTensor:$X, ONNX_Flag<"1">:$detect_negative,
                   ONNX_Flag<"1">:$detect_positive);
  let results = (outs AnyTensor:$Y);
}

// Activations with parameters (their ONNX defaults).
class ONNX_AlphaOp<string mnemonic, string alpha> : ONNX_Op<mnemonic> {
  let arguments = (ins AnyTensor:$X, DefaultValuedAttr<F32Attr, alpha>:$alpha);
  let results = (outs AnyTensor:$Y);
}
def ONNX_EluOp : ONNX_AlphaOp<"Elu", "1.0f">;
def ONNX_LeakyReluOp : ONNX_AlphaOp<"LeakyRelu", "0.01f">;
def ONNX_ThresholdedReluOp : ONNX_AlphaOp<"ThresholdedRelu", "1.0f">;

def ONNX_SeluOp : ONNX_Op<"Selu"> {
  let arguments = (ins AnyTensor:$X, DefaultValuedAttr<F32Attr, "1.67326319217681884765625f">:$alpha,
                   DefaultValuedAttr<F32Attr, "1.05070102214813232421875f">:$gamma);
  let results = (outs AnyTensor:$Y);
}

def ONNX_HardSigmoidOp : ONNX_Op<"HardSigmoid"> {
  let arguments = (ins AnyTensor:$X, DefaultValuedAttr<F32Attr, "0.2f">:$alpha,
                   DefaultValuedAttr<F32Attr, "0.5f">:$beta);
  let results = (outs AnyTensor:$Y);
}

def ONNX_ShrinkOp : ONNX_Op<"Shrink"> {
  let arguments = (ins AnyTensor:$input, DefaultValuedAttr<F32Attr, "0.0f">:$bias,
                   DefaultValuedAttr<F32Attr, "0.5f">:$lambd);
  let results = (outs AnyTensor:$output);
}

foreach name = ["Max", "Mean", "Min", "Sum"] in
  def ONNX_#name#Op : ONNX_Op<name> {
    let arguments = (ins Variadic<AnyTensor>:$data_0);
    let results = (outs AnyTensor:$result);
  }

def ONNX_ClipOp : ONNX_Op<"Clip", [AttrSizedOperandSegments]> {
  let arguments = (ins AnyTensor:$input, Optional<AnyTensor>:$min, Optional<AnyTensor>:$max);
  let results = (outs AnyTensor:$output);
}

def ONNX_ConvOp : ONNX_Op<"Conv"> {
  let arguments = (ins AnyTensor:$X, AnyTensor:$W, Optional<AnyTensor>:$B,
                   ONNX_AutoPad:$auto_pad, OptionalAttr<I64ArrayAttr>:$dilations,
                   DefaultValuedAttr<I64Attr, "1">:$group, OptionalAttr<I64ArrayAttr>:$kernel_shape,
                   OptionalAttr<I64ArrayAttr>:$pads, OptionalAttr<I64ArrayAttr>:$strides);
  let results = (outs AnyTensor:$Y);
}

def ONNX_GeluOp : ONNX_Op<"Gelu"> {
  let arguments = (ins AnyTensor:$X, ONNX_Str<"none", ["none", "tanh"]>:$approximate);
  let results = (outs AnyTensor:$Y);
}

foreach name = ["Add", "And", "Div", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Mul", "Or",
                "Pow", "PRelu", "Sub", "Xor"] in
  def ONNX_#name#Op : ONNX_BinaryOp<name>;

def ONNX_ModOp : ONNX_Op<"Mod"> {
  let arguments = (ins AnyTensor:$A, AnyTensor:$B, ONNX_Flag<"0">:$fmod);
  let results = (outs AnyTensor:$C);
}

def ONNX_BitShiftOp : ONNX_Op<"BitShift"> {
  let arguments = (ins AnyTensor:$X, AnyTensor:$Y, StrAttr:$direction);
  let results = (outs AnyTensor:$Z);
}

def ONNX_MatMulOp : ONNX_Op<"MatMul"> {
  let arguments = (ins AnyTensor:$A, AnyTensor:$B);
  let results = (outs AnyTensor:$Y);
}

def ONNX_GemmOp : ONNX_Op<"Gemm"> {
  let arguments = (ins AnyTensor:$A, AnyTensor:$B, Optional<AnyTensor>:$C,
                   DefaultValuedAttr<F32Attr, "1.0f">:$alpha, DefaultValuedAttr<F32Attr, "1.0f">:$beta,
                   ONNX_Flag<"0">:$transA, ONNX_Flag<"0">:$transB);
  let results = (outs AnyTensor:$Y);
}

foreach name = ["Softmax", "LogSoftmax"] in
  def ONNX_#name#Op : ONNX_Op<name> {
    let arguments = (ins AnyTensor:$input, DefaultValuedAttr<I64Attr, "-1">:$axis);
    let results = (outs AnyTensor:$output);
  }

def ONNX_TopKOp : ONNX_Op<"TopK"> {
  let arguments = (ins AnyTensor:$X, AnyTensor:$K, DefaultValuedAttr<I64Attr, "-1">:$axis,
                   ONNX_Flag<"1">:$largest, ONNX_Flag<"1">:$sorted);
  let results = (outs AnyTensor:$Values, AnyTensor:$Indices);
}

foreach name = ["ArgMax", "ArgMin"] in
  def ONNX_#name#Op : ONNX_Op<name> {
    let arguments = (ins AnyTensor:$data, DefaultValuedAttr<I64Attr, "0">:$axis,
                     ONNX_Flag<"1">:$keepdims,
                     ONNX_Flag<"0">:$select_last_index);
    let results = (outs AnyTensor:$reduced);
  }

foreach name = ["ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
                "ReduceProd", "ReduceSum", "ReduceSumSquare"] in
  def ONNX_#name#Op : ONNX_Op<name> {
    let arguments = (ins AnyTensor:$data, Optional<AnyTensor>:$axes,
                     ONNX_Flag<"1">:$keepdims,
                     ONNX_Flag<"0">:$noop_with_empty_axes);
    let results = (outs AnyTensor:$reduced);
  }

def ONNX_GatherOp : ONNX_Op<"Gather"> {
  let arguments = (ins AnyTensor:$data, AnyTensor:$indices, DefaultValuedAttr<I64Attr, "0">:$axis);
  let results = (outs AnyTensor:$output);
}

def ONNX_GatherElementsOp : ONNX_Op<"GatherElements"> {
  let arguments = (ins AnyTensor:$data, AnyTensor:$indices, DefaultValuedAttr<I64Attr, "0">:$axis);
  let results = (outs AnyTensor:$output);
}

def ONNX_GatherNDOp : ONNX_Op<"GatherND"> {
  let arguments = (ins AnyTensor:$data, AnyTensor:$indices, DefaultValuedAttr<I64Attr, "0">:$batch_dims);
  let results = (outs AnyTensor:$output);
}

def ONNX_ScatterElementsOp : ONNX_Op<"ScatterElements"> {
  let arguments = (ins AnyTensor:$data, AnyTensor:$indices, AnyTensor:$updates,
                   DefaultValuedAttr<I64Attr, "0">:$axis, ONNX_ScatterReduction:$reduction);
  let results = (outs AnyTensor:$output);
}

def ONNX_ScatterNDOp : ONNX_Op<"ScatterND"> {
  let arguments = (ins AnyTensor:$data, AnyTensor:$indices, AnyTensor:$updates,
                   ONNX_ScatterReduction:$reduction);
  let results = (outs AnyTensor:$output);
}

def ONNX_OneHotOp : ONNX_Op<"OneHot"> {
  let arguments = (ins AnyTensor:$indices, AnyTensor:$depth, AnyTensor:$values,
                   DefaultValuedAttr<I64Attr, "-1">:$axis);
  let results = (outs AnyTensor:$output);
}

def ONNX_WhereOp : ONNX_Op<"Where"> {
  let arguments = (ins AnyTensor:$condition, AnyTensor:$X, AnyTensor:$Y);
  let results = (outs AnyTensor:$output);
}

def ONNX_CastOp : ONNX_Op<"Cast"> {
  let arguments = (ins AnyTensor:$input, TypeAttr:$to, ONNX_Flag<"1">:$saturate);
  let results = (outs AnyTensor:$output);
  let hasFolder = 1; // a Cast to the type its input has is that input (TorchScript writes `.to(dtype)` so)
}

def ONNX_ReshapeOp : ONNX_Op<"Reshape"> {
  let arguments = (ins AnyTensor:$data, AnyTensor:$shape, ONNX_Flag<"0">:$allowzero);
  let results = (outs AnyTensor:$reshaped);
}

def ONNX_TransposeOp : ONNX_Op<"Transpose"> {
  let arguments = (ins AnyTensor:$data, OptionalAttr<I64ArrayAttr>:$perm);
  let results = (outs AnyTensor:$transposed);
  let hasCanonicalizer = 1; // PyTorch's slice_scatter into a new tensor (ScatterND between Transposes) -> Concat
}

def ONNX_SqueezeOp : ONNX_Op<"Squeeze"> {
  let arguments = (ins AnyTensor:$data, Optional<AnyTensor>:$axes);
  let results = (outs AnyTensor:$squeezed);
}

def ONNX_UnsqueezeOp : ONNX_Op<"Unsqueeze"> {
  let arguments = (ins AnyTensor:$data, AnyTensor:$axes);
  let results = (outs AnyTensor:$expanded);
}

def ONNX_ConcatOp : ONNX_Op<"Concat"> {
  let arguments = (ins Variadic<AnyTensor>:$inputs, I64Attr:$axis);
  let results = (outs AnyTensor:$concat_result);
}

def ONNX_SplitOp : ONNX_Op<"Split"> {
  let arguments = (ins AnyTensor:$input, Optional<AnyTensor>:$split, DefaultValuedAttr<I64Attr, "0">:$axis,
                   OptionalAttr<I64Attr>:$num_outputs);
  let results = (outs Variadic<AnyTensor>:$outputs);
}

def ONNX_SliceOp : ONNX_Op<"Slice"> {
  let arguments = (ins AnyTensor:$data, AnyTensor:$starts, AnyTensor:$ends, AnyTensor:$axes, AnyTensor:$steps);
  let results = (outs AnyTensor:$output);
}

def ONNX_ExpandOp : ONNX_Op<"Expand"> {
  let arguments = (ins AnyTensor:$input, AnyTensor:$shape);
  let results = (outs AnyTensor:$output);
}

def ONNX_ShapeOp : ONNX_Op<"Shape"> {
  let arguments = (ins AnyTensor:$data, DefaultValuedAttr<I64Attr, "0">:$start, OptionalAttr<I64Attr>:$end);
  let results = (outs AnyTensor:$shape);
}

def ONNX_ConstantOfShapeOp : ONNX_Op<"ConstantOfShape"> {
  let arguments = (ins AnyTensor:$input, OptionalAttr<ElementsAttr>:$value);
  let results = (outs AnyTensor:$output);
}

def ONNX_RangeOp : ONNX_Op<"Range"> {
  let arguments = (ins AnyTensor:$start, AnyTensor:$limit, AnyTensor:$delta);
  let results = (outs AnyTensor:$output);
}

def ONNX_CumSumOp : ONNX_Op<"CumSum"> {
  let arguments = (ins AnyTensor:$x, AnyTensor:$axis, ONNX_Flag<"0">:$exclusive,
                   ONNX_Flag<"0">:$reverse);
  let results = (outs AnyTensor:$y);
}

def ONNX_EinsumOp : ONNX_Op<"Einsum"> {
  let arguments = (ins Variadic<AnyTensor>:$Inputs, StrAttr:$equation);
  let results = (outs AnyTensor:$Output);
}

def ONNX_LayerNormalizationOp : ONNX_Op<"LayerNormalization"> {
  let arguments = (ins AnyTensor:$X, AnyTensor:$Scale, Optional<AnyTensor>:$B,
                   DefaultValuedAttr<I64Attr, "-1">:$axis, DefaultValuedAttr<F32Attr, "1e-5f">:$epsilon,
                   DefaultValuedAttr<I64Attr, "1">:$stash_type);
  let results = (outs AnyTensor:$Y, AnyTensor:$Mean, AnyTensor:$InvStdDev);
}

def ONNX_TriluOp : ONNX_Op<"Trilu"> {
  let arguments = (ins AnyTensor:$input, Optional<AnyTensor>:$k, ONNX_Flag<"1">:$upper);
  let results = (outs AnyTensor:$output);
}

// ---- shapes and data movement added for the whole ONNX node-test suite ----

def ONNX_FlattenOp : ONNX_Op<"Flatten"> {
  let arguments = (ins AnyTensor:$input, DefaultValuedAttr<I64Attr, "1">:$axis);
  let results = (outs AnyTensor:$output);
}

def ONNX_TileOp : ONNX_Op<"Tile"> {
  let arguments = (ins AnyTensor:$input, AnyTensor:$repeats);
  let results = (outs AnyTensor:$output);
}

def ONNX_DepthToSpaceOp : ONNX_Op<"DepthToSpace"> {
  let arguments = (ins AnyTensor:$input, I64Attr:$blocksize, ONNX_Str<"DCR", ["DCR", "CRD"]>:$mode);
  let results = (outs AnyTensor:$output);
}

def ONNX_SpaceToDepthOp : ONNX_Op<"SpaceToDepth"> {
  let arguments = (ins AnyTensor:$input, I64Attr:$blocksize);
  let results = (outs AnyTensor:$output);
}

def ONNX_CompressOp : ONNX_Op<"Compress"> {
  let arguments = (ins AnyTensor:$input, AnyTensor:$condition, OptionalAttr<I64Attr>:$axis);
  let results = (outs AnyTensor:$output);
}

def ONNX_NonZeroOp : ONNX_Op<"NonZero"> {
  let arguments = (ins AnyTensor:$X);
  let results = (outs AnyTensor:$Y);
}

def ONNX_EyeLikeOp : ONNX_Op<"EyeLike"> {
  let summary = "ONNX EyeLike (its `dtype` is the result's element type)";
  let arguments = (ins AnyTensor:$input, DefaultValuedAttr<I64Attr, "0">:$k);
  let results = (outs AnyTensor:$output);
}

def ONNX_PadOp : ONNX_Op<"Pad", [AttrSizedOperandSegments]> {
  let arguments = (ins AnyTensor:$data, AnyTensor:$pads, Optional<AnyTensor>:$constant_value,
                   Optional<AnyTensor>:$axes, ONNX_Str<"constant", ["constant", "reflect", "edge"]>:$mode);
  let results = (outs AnyTensor:$output);
}

def ONNX_ReverseSequenceOp : ONNX_Op<"ReverseSequence"> {
  let arguments = (ins AnyTensor:$input, AnyTensor:$sequence_lens, DefaultValuedAttr<I64Attr, "1">:$batch_axis,
                   DefaultValuedAttr<I64Attr, "0">:$time_axis);
  let results = (outs AnyTensor:$Y);
}

def ONNX_HardmaxOp : ONNX_Op<"Hardmax"> {
  let arguments = (ins AnyTensor:$input, DefaultValuedAttr<I64Attr, "-1">:$axis);
  let results = (outs AnyTensor:$output);
}

def ONNX_BatchNormalizationOp : ONNX_Op<"BatchNormalization"> {
  let summary = "ONNX BatchNormalization in inference mode (the running statistics)";
  let arguments = (ins AnyTensor:$X, AnyTensor:$scale, AnyTensor:$B, AnyTensor:$input_mean, AnyTensor:$input_var,
                   DefaultValuedAttr<F32Attr, "1e-5f">:$epsilon, DefaultValuedAttr<F32Attr, "0.9f">:$momentum);
  let results = (outs AnyTensor:$Y);
}

def ONNX_InstanceNormalizationOp : ONNX_Op<"InstanceNormalization"> {
  let arguments = (ins AnyTensor:$input, AnyTensor:$scale, AnyTensor:$B,
                   DefaultValuedAttr<F32Attr, "1e-5f">:$epsilon);
  let results = (outs AnyTensor:$output);
}

def ONNX_QuantizeLinearOp : ONNX_Op<"QuantizeLinear"> {
  let arguments = (ins AnyTensor:$x, AnyTensor:$y_scale, Optional<AnyTensor>:$y_zero_point,
                   DefaultValuedAttr<I64Attr, "1">:$axis);
  let results = (outs AnyTensor:$y);
}

def ONNX_DequantizeLinearOp : ONNX_Op<"DequantizeLinear"> {
  let arguments = (ins AnyTensor:$x, AnyTensor:$x_scale, Optional<AnyTensor>:$x_zero_point,
                   DefaultValuedAttr<I64Attr, "1">:$axis);
  let results = (outs AnyTensor:$y);
}

def ONNX_MatMulIntegerOp : ONNX_Op<"MatMulInteger", [AttrSizedOperandSegments]> {
  let arguments = (ins AnyTensor:$A, AnyTensor:$B, Optional<AnyTensor>:$a_zero_point,
                   Optional<AnyTensor>:$b_zero_point);
  let results = (outs AnyTensor:$Y);
}

def ONNX_MaxPoolOp : ONNX_Op<"MaxPool"> {
  let arguments = (ins AnyTensor:$X, ONNX_AutoPad:$auto_pad,
                   ONNX_Flag<"0">:$ceil_mode, OptionalAttr<I64ArrayAttr>:$dilations,
                   I64ArrayAttr:$kernel_shape, OptionalAttr<I64ArrayAttr>:$pads,
                   ONNX_Flag<"0">:$storage_order, OptionalAttr<I64ArrayAttr>:$strides);
  let results = (outs AnyTensor:$Y, Optional<AnyTensor>:$Indices);
}

def ONNX_AveragePoolOp : ONNX_Op<"AveragePool"> {
  let arguments = (ins AnyTensor:$X, ONNX_AutoPad:$auto_pad,
                   ONNX_Flag<"0">:$ceil_mode, ONNX_Flag<"0">:$count_include_pad,
                   OptionalAttr<I64ArrayAttr>:$dilations, I64ArrayAttr:$kernel_shape,
                   OptionalAttr<I64ArrayAttr>:$pads, OptionalAttr<I64ArrayAttr>:$strides);
  let results = (outs AnyTensor:$Y);
}

def ONNX_ConvTransposeOp : ONNX_Op<"ConvTranspose"> {
  let arguments = (ins AnyTensor:$X, AnyTensor:$W, Optional<AnyTensor>:$B,
                   ONNX_AutoPad:$auto_pad, OptionalAttr<I64ArrayAttr>:$dilations,
                   DefaultValuedAttr<I64Attr, "1">:$group, OptionalAttr<I64ArrayAttr>:$kernel_shape,
                   OptionalAttr<I64ArrayAttr>:$output_padding, OptionalAttr<I64ArrayAttr>:$output_shape,
                   OptionalAttr<I64ArrayAttr>:$pads, OptionalAttr<I64ArrayAttr>:$strides);
  let results = (outs AnyTensor:$Y);
}

def ONNX_ResizeOp : ONNX_Op<"Resize", [AttrSizedOperandSegments]> {
  let arguments = (ins AnyTensor:$X, Optional<AnyTensor>:$roi, Optional<AnyTensor>:$scales,
                   Optional<AnyTensor>:$sizes,
                   ONNX_Str<"half_pixel", ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize"]>:$coordinate_transformation_mode,
                   DefaultValuedAttr<F32Attr, "-0.75f">:$cubic_coeff_a, ONNX_Flag<"0">:$exclude_outside,
                   DefaultValuedAttr<F32Attr, "0.0f">:$extrapolation_value,
                   ONNX_Str<"nearest", ["nearest", "linear", "cubic"]>:$mode,
                   ONNX_Str<"round_prefer_floor", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]>:$nearest_mode);
  let results = (outs AnyTensor:$Y);
}

def ONNX_LRNOp : ONNX_Op<"LRN"> {
  let arguments = (ins AnyTensor:$X, DefaultValuedAttr<F32Attr, "1e-4f">:$alpha,
                   DefaultValuedAttr<F32Attr, "0.75f">:$beta, DefaultValuedAttr<F32Attr, "1.0f">:$bias, I64Attr:$size);
  let results = (outs AnyTensor:$Y);
}

def ONNX_DetOp : ONNX_UnaryOp<"Det">;

def ONNX_UniqueOp : ONNX_Op<"Unique"> {
  let arguments = (ins AnyTensor:$X, OptionalAttr<I64Attr>:$axis, ONNX_Flag<"1">:$sorted);
  let summary = "ONNX Unique (all four results, whichever the node names)";
  let results = (outs AnyTensor:$Y, AnyTensor:$indices, AnyTensor:$inverse_indices, AnyTensor:$counts);
}

def ONNX_MaxUnpoolOp : ONNX_Op<"MaxUnpool"> {
  let arguments = (ins AnyTensor:$X, AnyTensor:$I, Optional<AnyTensor>:$output_shape,
                   I64ArrayAttr:$kernel_shape, OptionalAttr<I64ArrayAttr>:$pads, OptionalAttr<I64ArrayAttr>:$strides);
  let results = (outs AnyTensor:$output);
}

def ONNX_NonMaxSuppressionOp : ONNX_Op<"NonMaxSuppression", [AttrSizedOperandSegments]> {
  let arguments = (ins AnyTensor:$boxes, AnyTensor:$scores, Optional<AnyTensor>:$max_output_boxes_per_class,
                   Optional<AnyTensor>:$iou_threshold, Optional<AnyTensor>:$score_threshold,
                   ONNX_Flag<"0">:$center_point_box);
  let results = (outs AnyTensor:$selected_indices);
}

// Recurrent layers: X [seq, batch, input] (layout 1: [batch, seq, input]), weights per direction; results
// Y [seq, directions, batch, hidden] (layout 1: [batch, seq, directions, hidden]), Y_h (and LSTM's Y_c)
// [directions, batch, hidden] (layout 1: [batch, directions, hidden]), whichever the node names.
def ONNX_RecurrentAttrs {
  dag attrs = (ins OptionalAttr<F32ArrayAttr>:$activation_alpha, OptionalAttr<F32ArrayAttr>:$activation_beta,
                   OptionalAttr<StrArrayAttr>:$activations, OptionalAttr<F32Attr>:$clip,
                   ONNX_Str<"forward", ["forward", "reverse", "bidirectional"]>:$direction,
                   OptionalAttr<I64Attr>:$hidden_size, ONNX_Flag<"0">:$layout);
}

def ONNX_RNNOp : ONNX_Op<"RNN", [AttrSizedOperandSegments]> {
  let arguments = !con((ins AnyTensor:$X, AnyTensor:$W, AnyTensor:$R, Optional<AnyTensor>:$B,
                            Optional<AnyTensor>:$sequence_lens, Optional<AnyTensor>:$initial_h),
                       ONNX_RecurrentAttrs.attrs);
  let results = (outs AnyTensor:$Y, AnyTensor:$Y_h);
}

def ONNX_GRUOp : ONNX_Op<"GRU", [AttrSizedOperandSegments]> {
  let arguments = !con((ins AnyTensor:$X, AnyTensor:$W, AnyTensor:$R, Optional<AnyTensor>:$B,
                            Optional<AnyTensor>:$sequence_lens, Optional<AnyTensor>:$initial_h),
                       ONNX_RecurrentAttrs.attrs, (ins ONNX_Flag<"0">:$linear_before_reset));
  let results = (outs AnyTensor:$Y, AnyTensor:$Y_h);
}

def ONNX_LSTMOp : ONNX_Op<"LSTM", [AttrSizedOperandSegments]> {
  let arguments = !con((ins AnyTensor:$X, AnyTensor:$W, AnyTensor:$R, Optional<AnyTensor>:$B,
                            Optional<AnyTensor>:$sequence_lens, Optional<AnyTensor>:$initial_h,
                            Optional<AnyTensor>:$initial_c, Optional<AnyTensor>:$P),
                       ONNX_RecurrentAttrs.attrs, (ins ONNX_Flag<"0">:$input_forget));
  let results = (outs AnyTensor:$Y, AnyTensor:$Y_h, AnyTensor:$Y_c);
}

// ai.onnx.preview.training's optimizers: one update step of N tensors (inputs R, T, then the N values of
// each group: X, G and the optimizer's states; results the new X, then the new states).
def ONNX_AdagradOp : ONNX_Op<"Adagrad"> {
  let arguments = (ins Variadic<AnyTensor>:$inputs, DefaultValuedAttr<F32Attr, "0.0f">:$decay_factor,
                   DefaultValuedAttr<F32Attr, "0.0f">:$epsilon, DefaultValuedAttr<F32Attr, "0.0f">:$norm_coefficient);
  let results = (outs Variadic<AnyTensor>:$outputs);
}

def ONNX_MomentumOp : ONNX_Op<"Momentum"> {
  let arguments = (ins Variadic<AnyTensor>:$inputs, F32Attr:$alpha, F32Attr:$beta,
                   ConfinedAttr<StrAttr, [ONNX_OneOf<["standard", "nesterov"]>]>:$mode, F32Attr:$norm_coefficient);
  let results = (outs Variadic<AnyTensor>:$outputs);
}

def ONNX_AdamOp : ONNX_Op<"Adam"> {
  let arguments = (ins Variadic<AnyTensor>:$inputs, DefaultValuedAttr<F32Attr, "0.9f">:$alpha,
                   DefaultValuedAttr<F32Attr, "0.999f">:$beta, DefaultValuedAttr<F32Attr, "1e-6f">:$epsilon,
                   DefaultValuedAttr<F32Attr, "0.0f">:$norm_coefficient,
                   DefaultValuedAttr<F32Attr, "0.0f">:$norm_coefficient_post);
  let results = (outs Variadic<AnyTensor>:$outputs);
}

//===----------------------------------------------------------------------===//
// Control flow: ONNX's subgraph attributes are regions. Their ops read values of the enclosing graph
// directly (ONNX's outer-scope capture); each region ends in onnx.Yield with the subgraph's outputs.
//===----------------------------------------------------------------------===//

def ONNX_YieldOp : Op<ONNX_Dialect, "Yield", [Pure, ReturnLike, Terminator,
                                              ParentOneOf<["IfOp", "LoopOp", "ScanOp", "SequenceMapOp"]>]> {
  let summary = "the outputs of an If branch or a Loop / Scan body";
  let arguments = (ins Variadic<ONNX_AnyValue>:$outputs);
  let assemblyFormat = "attr-dict ($outputs^ `:` type($outputs))?";
}

def ONNX_IfOp : ONNX_Op<"If", [NoRegionArguments]> {
  let summary = "ONNX If: one of two subgraphs by a boolean";
  let description = [{
    `then_branch` runs when `cond` (a one-element bool tensor) is true, `else_branch` otherwise; the results
    are the branch's yielded values (the branches may yield different shapes). A constant `cond` is folded
    by canonicalisation: the chosen branch's ops move in front of the op.
  }];
  let arguments = (ins AnyTensor:$cond);
  let results = (outs Variadic<ONNX_AnyValue>:$outputs);
  let regions = (region SizedRegion<1>:$then_branch, SizedRegion<1>:$else_branch);
  let assemblyFormat = "$cond attr-dict `:` type($cond) (`->` type($outputs)^)? `then` $then_branch `else` $else_branch";
  let hasCanonicalizer = 1;
  let hasVerifier = 1;
}

def ONNX_LoopOp : ONNX_Op<"Loop", [AttrSizedOperandSegments]> {
  let summary = "ONNX Loop: a body run while a trip count and a condition allow";
  let description = [{
    The body's arguments are the iteration number (`tensor<i64>`), the condition, then the loop-carried
    values; it yields the next condition, the next carried values, then one slice per scan output. Results:
    the final carried values, then each scan output's slices stacked along a new first axis. `M` (the trip
    count) and `cond` are optional, as in ONNX.
  }];
  let arguments = (ins Optional<AnyTensor>:$M, Optional<AnyTensor>:$cond, Variadic<ONNX_AnyValue>:$v_initial);
  let results = (outs Variadic<ONNX_AnyValue>:$outputs);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = "(`trip` $M^ `:` type($M))? (`cond` $cond^ `:` type($cond))? (`carried` `(` $v_initial^ `:` type($v_initial) `)`)? (`->` type($outputs)^)? $body attr-dict";
  let hasVerifier = 1;
}

def ONNX_ScanOp : ONNX_Op<"Scan"> {
  let summary = "ONNX Scan (opset 9 and later): a body run once per slice of its scan inputs";
  let description = [{
    Operands: the initial states, then `num_scan_inputs` scan inputs. The body's arguments are the states
    and one slice of each scan input (along `scan_input_axes`, reversed per `scan_input_directions`); it
    yields the next states and one slice per scan output. Results: the final states, then the scan outputs
    (slices stacked along `scan_output_axes`, reversed per `scan_output_directions`). `batched` (Scan-8's
    form, without its sequence_lens): every operand and result has a batch dim first, the scan runs per batch
    entry (scan inputs along their dim 1, outputs stacked along dim 1) and the body sees one entry's values.
  }];
  let arguments = (ins Variadic<AnyTensor>:$initial_state_and_scan_inputs, I64Attr:$num_scan_inputs,
                   ONNX_Flag<"0">:$batched,
                   OptionalAttr<I64ArrayAttr>:$scan_input_axes, OptionalAttr<I64ArrayAttr>:$scan_input_directions,
                   OptionalAttr<I64ArrayAttr>:$scan_output_axes,
                   OptionalAttr<I64ArrayAttr>:$scan_output_directions);
  let results = (outs Variadic<AnyTensor>:$outputs);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = "`(` $initial_state_and_scan_inputs `:` type($initial_state_and_scan_inputs) `)` (`->` type($outputs)^)? $body attr-dict";
  let hasVerifier = 1;
}

// Signal processing (audio front ends): reference kernels in double (runtime/src/ops/Signal.cpp).
def ONNX_DFTOp : ONNX_Op<"DFT"> {
  let arguments = (ins AnyTensor:$input, Optional<AnyTensor>:$dft_length, DefaultValuedAttr<I64Attr, "1">:$axis,
                   ONNX_Flag<"0">:$inverse, ONNX_Flag<"0">:$onesided);
  let results = (outs AnyTensor:$output);
}

def ONNX_STFTOp : ONNX_Op<"STFT", [AttrSizedOperandSegments]> {
  let arguments = (ins AnyTensor:$signal, AnyTensor:$frame_step, Optional<AnyTensor>:$window,
                   Optional<AnyTensor>:$frame_length, ONNX_Flag<"1">:$onesided);
  let results = (outs AnyTensor:$output);
}

def ONNX_MelWeightMatrixOp : ONNX_Op<"MelWeightMatrix"> {
  let arguments = (ins AnyTensor:$num_mel_bins, AnyTensor:$dft_length, AnyTensor:$sample_rate,
                   AnyTensor:$lower_edge_hertz, AnyTensor:$upper_edge_hertz,
                   DefaultValuedAttr<I64Attr, "1">:$output_datatype);
  let results = (outs AnyTensor:$output);
}

// Sampling ops of vision towers (runtime/src/ops/Vision.cpp).
def ONNX_GridSampleOp : ONNX_Op<"GridSample"> {
  let summary = "ONNX GridSample (opset 16's mode names; opset 20's linear / cubic are the same modes)";
  let arguments = (ins AnyTensor:$X, AnyTensor:$grid, ONNX_Flag<"0">:$align_corners,
                   ONNX_Str<"bilinear", ["bilinear", "nearest", "bicubic", "linear", "cubic"]>:$mode,
                   ONNX_Str<"zeros", ["zeros", "border", "reflection"]>:$padding_mode);
  let results = (outs AnyTensor:$Y);
}

def ONNX_RoiAlignOp : ONNX_Op<"RoiAlign"> {
  let summary = "ONNX RoiAlign (opset 10 imports with coordinate_transformation_mode output_half_pixel)";
  let arguments = (ins AnyTensor:$X, AnyTensor:$rois, AnyTensor:$batch_indices,
                   ONNX_Str<"half_pixel", ["half_pixel", "output_half_pixel"]>:$coordinate_transformation_mode,
                   ONNX_Str<"avg", ["avg", "max"]>:$mode, DefaultValuedAttr<I64Attr, "1">:$output_height,
                   DefaultValuedAttr<I64Attr, "1">:$output_width, DefaultValuedAttr<I64Attr, "0">:$sampling_ratio,
                   DefaultValuedAttr<F32Attr, "1.0f">:$spatial_scale);
  let results = (outs AnyTensor:$Y);
}

// Text features over integer tokens (runtime/src/ops/Text.cpp); string pools are out of scope.
def ONNX_TfIdfVectorizerOp : ONNX_Op<"TfIdfVectorizer"> {
  let arguments = (ins AnyTensor:$X, I64Attr:$max_gram_length, I64Attr:$max_skip_count, I64Attr:$min_gram_length,
                   ONNX_Str<"TF", ["TF", "IDF", "TFIDF"]>:$mode, I64ArrayAttr:$ngram_counts,
                   I64ArrayAttr:$ngram_indexes, OptionalAttr<I64ArrayAttr>:$pool_int64s,
                   OptionalAttr<F32ArrayAttr>:$weights);
  let results = (outs AnyTensor:$Y);
}

// Ops that draw random values: not Pure (two alike must not be merged), so not ONNX_Op.
class ONNX_RandomOp<string mnemonic, list<Trait> traits = []>
    : Op<ONNX_Dialect, mnemonic, !listconcat([MemoryEffects<[MemAlloc, MemWrite]>], traits)> {
  let summary = "ONNX " # mnemonic # " (random values: seeded by `seed`, else from the system)";
  let description = "The ONNX `" # mnemonic # "` operator (runtime/src/ops/Random.cpp).";
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results)";
}

def ONNX_RandomUniformOp : ONNX_RandomOp<"RandomUniform"> {
  let arguments = (ins DefaultValuedAttr<I64Attr, "1">:$dtype, DefaultValuedAttr<F32Attr, "1.0f">:$high,
                   DefaultValuedAttr<F32Attr, "0.0f">:$low, OptionalAttr<F32Attr>:$seed, I64ArrayAttr:$shape);
  let results = (outs AnyTensor:$output);
}

def ONNX_RandomNormalOp : ONNX_RandomOp<"RandomNormal"> {
  let arguments = (ins DefaultValuedAttr<I64Attr, "1">:$dtype, DefaultValuedAttr<F32Attr, "0.0f">:$mean,
                   DefaultValuedAttr<F32Attr, "1.0f">:$scale, OptionalAttr<F32Attr>:$seed, I64ArrayAttr:$shape);
  let results = (outs AnyTensor:$output);
}

def ONNX_RandomUniformLikeOp : ONNX_RandomOp<"RandomUniformLike"> {
  let arguments = (ins AnyTensor:$input, OptionalAttr<I64Attr>:$dtype, DefaultValuedAttr<F32Attr, "1.0f">:$high,
                   DefaultValuedAttr<F32Attr, "0.0f">:$low, OptionalAttr<F32Attr>:$seed);
  let results = (outs AnyTensor:$output);
}

def ONNX_RandomNormalLikeOp : ONNX_RandomOp<"RandomNormalLike"> {
  let arguments = (ins AnyTensor:$input, OptionalAttr<I64Attr>:$dtype, DefaultValuedAttr<F32Attr, "0.0f">:$mean,
                   DefaultValuedAttr<F32Attr, "1.0f">:$scale, OptionalAttr<F32Attr>:$seed);
  let results = (outs AnyTensor:$output);
}

def ONNX_DropoutOp : ONNX_RandomOp<"Dropout", [AttrSizedOperandSegments]> {
  let summary = "ONNX Dropout with a run-time training_mode (inference-mode Dropout imports as Identity)";
  let arguments = (ins AnyTensor:$data, Optional<AnyTensor>:$ratio, Optional<AnyTensor>:$training_mode,
                   OptionalAttr<I64Attr>:$seed);
  let results = (outs AnyTensor:$output, AnyTensor:$mask);
}

//===----------------------------------------------------------------------===//
// Sequences and optionals
//===----------------------------------------------------------------------===//

def ONNX_SequenceConstructOp : ONNX_Op<"SequenceConstruct"> {
  let arguments = (ins Variadic<AnyTensor>:$inputs);
  let results = (outs ONNX_AnySeq:$output_sequence);
}

def ONNX_SequenceEmptyOp : ONNX_Op<"SequenceEmpty"> {
  let summary = "ONNX SequenceEmpty (its `dtype` is the result type's element type)";
  let arguments = (ins);
  let results = (outs ONNX_AnySeq:$output);
  let assemblyFormat = "attr-dict `:` qualified(type($output))";
}

def ONNX_SequenceInsertOp : ONNX_Op<"SequenceInsert"> {
  let arguments = (ins ONNX_AnySeq:$input_sequence, AnyTensor:$tensor, Optional<AnyTensor>:$position);
  let results = (outs ONNX_AnySeq:$output_sequence);
}

def ONNX_SequenceAtOp : ONNX_Op<"SequenceAt"> {
  let arguments = (ins ONNX_AnySeq:$input_sequence, AnyTensor:$position);
  let results = (outs AnyTensor:$tensor);
}

def ONNX_SequenceEraseOp : ONNX_Op<"SequenceErase"> {
  let arguments = (ins ONNX_AnySeq:$input_sequence, Optional<AnyTensor>:$position);
  let results = (outs ONNX_AnySeq:$output_sequence);
}

def ONNX_SequenceLengthOp : ONNX_Op<"SequenceLength"> {
  let arguments = (ins ONNX_AnySeq:$input_sequence);
  let results = (outs AnyTensor:$length);
}

def ONNX_SplitToSequenceOp : ONNX_Op<"SplitToSequence"> {
  let arguments = (ins AnyTensor:$input, Optional<AnyTensor>:$split, DefaultValuedAttr<I64Attr, "0">:$axis,
                   ONNX_Flag<"1">:$keepdims);
  let results = (outs ONNX_AnySeq:$output_sequence);
}

def ONNX_ConcatFromSequenceOp : ONNX_Op<"ConcatFromSequence"> {
  let arguments = (ins ONNX_AnySeq:$input_sequence, I64Attr:$axis, ONNX_Flag<"0">:$new_axis);
  let results = (outs AnyTensor:$concat_result);
}

def ONNX_OptionalOp : ONNX_Op<"Optional"> {
  let summary = "ONNX Optional: wraps a value, or (without one) is empty; its `type` is the result type's";
  let arguments = (ins Optional<ONNX_AnyValue>:$input);
  let results = (outs ONNX_AnyOpt:$output);
}

def ONNX_OptionalHasElementOp : ONNX_Op<"OptionalHasElement"> {
  let summary = "ONNX OptionalHasElement (opset 18: a tensor or a sequence counts as holding one; none "
                "given: false)";
  let arguments = (ins Optional<ONNX_AnyValue>:$input);
  let results = (outs AnyTensor:$output);
}

def ONNX_OptionalGetElementOp : ONNX_Op<"OptionalGetElement"> {
  let summary = "ONNX OptionalGetElement (an empty optional is a run-time error; opset 18: a tensor or a "
                "sequence is returned as it is)";
  let arguments = (ins ONNX_AnyValue:$input);
  let results = (outs ONNX_AnyValue:$output);
}

def ONNX_SequenceMapOp : ONNX_Op<"SequenceMap"> {
  let summary = "ONNX SequenceMap: a body run once per position of its sequences";
  let description = [{
    Operands: `input_sequence`, then `additional_inputs` (sequences, whose element at the same position the
    body takes, or tensors, which it takes whole; every sequence must be as long as `input_sequence`). The
    body's arguments are one tensor per operand; it yields one tensor per result, and result `i` is the
    sequence of the body's `i`-th yields in order.
  }];
  let arguments = (ins ONNX_AnySeq:$input_sequence, Variadic<ONNX_AnyValue>:$additional_inputs);
  let results = (outs Variadic<ONNX_AnySeq>:$out_sequence);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = "operands attr-dict `:` functional-type(operands, results) $body";
  let hasVerifier = 1;
}

#endif // MOEC_IR_ONNXOPS_TD
