// The verifiers of onnx.If / onnx.Loop / onnx.Scan name what disagrees.
// RUN: moec-opt %s --split-input-file --verify-diagnostics

func.func @if_element_type(%x: tensor<4xf32>, %c: tensor<i1>) -> tensor<4xf32> {
  // expected-error @+1 {{'onnx.If' op else_branch yields 'tensor<4xi64>' as value 0, the op's result is 'tensor<4xf32>'}}
  %y = onnx.If %c : tensor<i1> -> tensor<4xf32> then {
    onnx.Yield %x : tensor<4xf32>
  } else {
    %i = onnx.Constant dense<1> : tensor<4xi64>
    onnx.Yield %i : tensor<4xi64>
  }
  return %y : tensor<4xf32>
}

// -----

func.func @loop_arguments(%m: tensor<i64>, %x: tensor<4xf32>) -> tensor<4xf32> {
  // expected-error @+1 {{'onnx.Loop' op body takes 2 arguments; expected the iteration number, the condition and 1 carried values}}
  %y = onnx.Loop trip %m : tensor<i64> carried(%x : tensor<4xf32>) -> tensor<4xf32> {
  ^bb0(%i: tensor<i64>, %c: tensor<i1>):
    onnx.Yield %c, %x : tensor<i1>, tensor<4xf32>
  }
  return %y : tensor<4xf32>
}

// -----

func.func @scan_axes(%s: tensor<4xf32>, %xs: tensor<3x4xf32>) -> tensor<4xf32> {
  // expected-error @+1 {{'onnx.Scan' op scan_input_axes has 2 entries; expected 1}}
  %y = onnx.Scan(%s, %xs : tensor<4xf32>, tensor<3x4xf32>) -> tensor<4xf32> {
  ^bb0(%a: tensor<4xf32>, %b: tensor<4xf32>):
    onnx.Yield %a : tensor<4xf32>
  } {num_scan_inputs = 1 : i64, scan_input_axes = [0, 1]}
  return %y : tensor<4xf32>
}
