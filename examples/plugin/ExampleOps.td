//===- ExampleOps.td - a dialect loaded as a plugin --------*- tablegen -*-===//
#ifndef MOEC_EXAMPLE_OPS_TD
#define MOEC_EXAMPLE_OPS_TD

include "mlir/IR/OpBase.td"

def Example_Dialect : Dialect {
  let name = "moe_example";
  let cppNamespace = "::moec::example";
  let summary = "Example dialect shipped as a plugin (examples/plugin)";
}

def Example_NoteOp : Op<Example_Dialect, "note"> {
  let summary = "a free-form note attached to the IR by a user pass";
  let arguments = (ins StrAttr:$text);
  let assemblyFormat = "$text attr-dict";
}

#endif // MOEC_EXAMPLE_OPS_TD
