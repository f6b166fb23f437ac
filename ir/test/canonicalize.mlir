// Canonicalisation drops operands of moe.sparse_moe that cannot change the result, and only those.
// RUN: moec-opt %s --split-input-file --canonicalize | FileCheck %s

// CHECK-LABEL: func.func @drops_noops
// CHECK: moe.sparse_moe %{{[^,]*}}, %{{[^ ]*}}, fc1 %{{[^ ]*}}, fc2 %{{[^ ]*}} {
// CHECK-NOT: mask
// CHECK-NOT: bias
func.func @drops_noops(%x: tensor<?x8xf32>, %r: tensor<8x4xf32>, %w1: tensor<4x6x8xf32>, %w2: tensor<4x8x6xf32>) -> tensor<?x8xf32> {
  %rb = arith.constant dense<0.0> : tensor<4xf32>
  %sb = arith.constant dense<[0.0, -0.0, 0.0, 0.0]> : tensor<4xf32>
  %b1 = arith.constant dense<0.0> : tensor<4x6xf32>
  %b2 = arith.constant dense<0.0> : tensor<4x8xf32>
  %m = arith.constant dense<[[1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 1], [7, 7, 7, 7, 7, 7], [1, 1, 1, 1, 1, 255]]> : tensor<4x6xui8>
  %y = moe.sparse_moe %x, %r router_bias %rb selection_bias %sb, fc1 %w1 fc1_bias %b1, fc2 %w2 fc2_bias %b2 mask %m
       {k = 2, activation = #moe.activation<relu>}
     : (tensor<?x8xf32>, tensor<8x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4x6x8xf32>, tensor<4x6xf32>,
        tensor<4x8x6xf32>, tensor<4x8xf32>, tensor<4x6xui8>) -> tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}

// -----

// A mask with one zero, a bias with one nonzero value, and non-constant operands all stay.
// CHECK-LABEL: func.func @keeps_live_operands
// CHECK: %[[RB:.+]] = arith.constant dense<[0.000000e+00, 0.000000e+00, 0.000000e+00, 1.000000e+00]>
// CHECK: %[[M:.+]] = arith.constant dense<{{.*}}> : tensor<4x6xi1>
// CHECK: moe.sparse_moe %{{.*}}, %{{.*}} router_bias %[[RB]], fc1 %{{.*}} fc1_bias %arg4, fc2 %{{.*}} mask %[[M]]
func.func @keeps_live_operands(%x: tensor<?x8xf32>, %r: tensor<8x4xf32>, %w1: tensor<4x6x8xf32>, %w2: tensor<4x8x6xf32>,
                               %b1: tensor<4x6xf32>) -> tensor<?x8xf32> {
  %rb = arith.constant dense<[0.0, 0.0, 0.0, 1.0]> : tensor<4xf32>
  %m = arith.constant dense<[[true, true, true, true, true, true], [true, true, true, true, true, true],
                             [true, true, true, true, true, true], [true, true, true, true, true, false]]> : tensor<4x6xi1>
  %y = moe.sparse_moe %x, %r router_bias %rb, fc1 %w1 fc1_bias %b1, fc2 %w2 mask %m
       {k = 2, activation = #moe.activation<relu>}
     : (tensor<?x8xf32>, tensor<8x4xf32>, tensor<4xf32>, tensor<4x6x8xf32>, tensor<4x6xf32>, tensor<4x8x6xf32>,
        tensor<4x6xi1>) -> tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}

// -----

// An unused layer is pure and disappears.
// CHECK-LABEL: func.func @dead_layer
// CHECK-NOT: moe.sparse_moe
// CHECK: return %arg0
func.func @dead_layer(%x: tensor<?x8xf32>, %r: tensor<8x4xf32>, %w1: tensor<4x6x8xf32>, %w2: tensor<4x8x6xf32>) -> tensor<?x8xf32> {
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 2, activation = #moe.activation<relu>}
     : (tensor<?x8xf32>, tensor<8x4xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<?x8xf32>
  return %x : tensor<?x8xf32>
}

// -----

// onnx.If on a constant condition: the taken branch's ops move in front of it; a condition computed at run
// time keeps the op.
// CHECK-LABEL: func.func @constant_if
// CHECK-NOT: onnx.If
// CHECK: %[[N:.+]] = onnx.Neg %arg0
// CHECK: return %[[N]]
func.func @constant_if(%x: tensor<4xf32>) -> tensor<4xf32> {
  %c = onnx.Constant dense<false> : tensor<i1>
  %y = onnx.If %c : tensor<i1> -> tensor<4xf32> then {
    %a = onnx.Relu %x : (tensor<4xf32>) -> tensor<4xf32>
    onnx.Yield %a : tensor<4xf32>
  } else {
    %b = onnx.Neg %x : (tensor<4xf32>) -> tensor<4xf32>
    onnx.Yield %b : tensor<4xf32>
  }
  return %y : tensor<4xf32>
}

// -----

// CHECK-LABEL: func.func @runtime_if
// CHECK: onnx.If %arg1
func.func @runtime_if(%x: tensor<4xf32>, %c: tensor<1xi1>) -> tensor<4xf32> {
  %y = onnx.If %c : tensor<1xi1> -> tensor<4xf32> then {
    %a = onnx.Relu %x : (tensor<4xf32>) -> tensor<4xf32>
    onnx.Yield %a : tensor<4xf32>
  } else {
    onnx.Yield %x : tensor<4xf32>
  }
  return %y : tensor<4xf32>
}

// -----

// A condition computed from static dims (LongRoPE's `seq_len > original_max_position_embeddings`) folds too;
// with the dim dynamic the If stays.
// CHECK-LABEL: func.func @shape_only_if
// CHECK-NOT: onnx.If
// CHECK: %[[S:.+]] = onnx.Sin %arg0
// CHECK: return %[[S]]
func.func @shape_only_if(%x: tensor<1x8x4xf32>) -> tensor<1x8x4xf32> {
  %s = onnx.Shape %x {start = 1 : i64} : (tensor<1x8x4xf32>) -> tensor<2xi64>
  %i = onnx.Constant dense<0> : tensor<i64>
  %len = onnx.Gather %s, %i : (tensor<2xi64>, tensor<i64>) -> tensor<i64>
  %lim = onnx.Constant dense<4096> : tensor<i64>
  %c = onnx.Greater %len, %lim : (tensor<i64>, tensor<i64>) -> tensor<i1>
  %y = onnx.If %c : tensor<i1> -> tensor<1x8x4xf32> then {
    %a = onnx.Cos %x : (tensor<1x8x4xf32>) -> tensor<1x8x4xf32>
    onnx.Yield %a : tensor<1x8x4xf32>
  } else {
    %b = onnx.Sin %x : (tensor<1x8x4xf32>) -> tensor<1x8x4xf32>
    onnx.Yield %b : tensor<1x8x4xf32>
  }
  return %y : tensor<1x8x4xf32>
}

// -----

// CHECK-LABEL: func.func @dynamic_shape_if
// CHECK: onnx.If
func.func @dynamic_shape_if(%x: tensor<1x?x4xf32>) -> tensor<1x?x4xf32> {
  %s = onnx.Shape %x : (tensor<1x?x4xf32>) -> tensor<3xi64>
  %i = onnx.Constant dense<1> : tensor<i64>
  %len = onnx.Gather %s, %i : (tensor<3xi64>, tensor<i64>) -> tensor<i64>
  %lim = onnx.Constant dense<4096> : tensor<i64>
  %c = onnx.Greater %len, %lim : (tensor<i64>, tensor<i64>) -> tensor<i1>
  %y = onnx.If %c : tensor<i1> -> tensor<1x?x4xf32> then {
    %a = onnx.Cos %x : (tensor<1x?x4xf32>) -> tensor<1x?x4xf32>
    onnx.Yield %a : tensor<1x?x4xf32>
  } else {
    onnx.Yield %x : tensor<1x?x4xf32>
  }
  return %y : tensor<1x?x4xf32>
}

// -----

// A Cast to the type its input already has is its input; a Cast that changes the type (or only the shape's
// knowledge) stays.
// CHECK-LABEL: func.func @noop_cast
// CHECK-NOT: onnx.Cast %arg0
// CHECK: %[[I:.+]] = onnx.Cast %arg1 {to = i64}
// CHECK: %[[S:.+]] = onnx.Cast %arg0 {to = f32} : (tensor<?x8xf32>) -> tensor<2x8xf32>
// CHECK: return %arg0, %[[I]], %[[S]]
func.func @noop_cast(%x: tensor<?x8xf32>, %i: tensor<4xi32>) -> (tensor<?x8xf32>, tensor<4xi64>, tensor<2x8xf32>) {
  %a = onnx.Cast %x {to = f32} : (tensor<?x8xf32>) -> tensor<?x8xf32>
  %b = onnx.Cast %i {to = i64} : (tensor<4xi32>) -> tensor<4xi64>
  %c = onnx.Cast %x {to = f32} : (tensor<?x8xf32>) -> tensor<2x8xf32>
  return %a, %b, %c : tensor<?x8xf32>, tensor<4xi64>, tensor<2x8xf32>
}
