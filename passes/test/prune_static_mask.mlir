// moe-prune-static-mask: kept rows/columns gathered at compile time, expected constants worked by hand.
// RUN: moec-opt %s --split-input-file --moe-prune-static-mask | FileCheck %s

// Expert 0 keeps dims {0, 2}, expert 1 keeps {1}: F' = 2, expert 1 padded with zeros.
// CHECK-LABEL: func.func @relu_bias
// CHECK-DAG: %[[W1:.+]] = arith.constant dense<{{\[}}{{\[}}[1.000000e+00, 2.000000e+00], [5.000000e+00, 6.000000e+00]], {{\[}}[9.000000e+00, 1.000000e+01], [0.000000e+00, 0.000000e+00]]]> : tensor<2x2x2xf32>
// CHECK-DAG: %[[W2:.+]] = arith.constant dense<{{\[}}{{\[}}[1.000000e+00, 3.000000e+00], [4.000000e+00, 6.000000e+00]], {{\[}}[8.000000e+00, 0.000000e+00], [1.100000e+01, 0.000000e+00]]]> : tensor<2x2x2xf32>
// CHECK-DAG: %[[B1:.+]] = arith.constant dense<{{\[}}[1.000000e-01, 3.000000e-01], [5.000000e-01, 0.000000e+00]]> : tensor<2x2xf32>
// CHECK: moe.sparse_moe %arg0, %arg1, fc1 %[[W1]] fc1_bias %[[B1]], fc2 %[[W2]] {activation = #moe.activation<relu>, k = 1 : i64}
// CHECK-SAME: -> tensor<?x2xf32>
func.func @relu_bias(%x: tensor<?x2xf32>, %r: tensor<2x2xf32>) -> tensor<?x2xf32> {
  %w1 = arith.constant dense<[[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]]]> : tensor<2x3x2xf32>
  %b1 = arith.constant dense<[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]> : tensor<2x3xf32>
  %w2 = arith.constant dense<[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]]> : tensor<2x2x3xf32>
  %m = arith.constant dense<[[true, false, true], [false, true, false]]> : tensor<2x3xi1>
  %y = moe.sparse_moe %x, %r, fc1 %w1 fc1_bias %b1, fc2 %w2 mask %m {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x2xf32>, tensor<2x2xf32>, tensor<2x3x2xf32>, tensor<2x3xf32>, tensor<2x2x3xf32>, tensor<2x3xi1>) -> tensor<?x2xf32>
  return %y : tensor<?x2xf32>
}

// -----

// SwiGLU, block layout: gate rows [0, F), up rows [F, 2F). Keeps dims {1, 2}.
// CHECK-LABEL: func.func @swiglu_block
// CHECK-DAG: %[[W1:.+]] = arith.constant dense<{{\[}}{{\[}}[2.000000e+00], [3.000000e+00], [5.000000e+00], [6.000000e+00]]]> : tensor<1x4x1xf32>
// CHECK-DAG: %[[W2:.+]] = arith.constant dense<{{\[}}{{\[}}[8.000000e+00, 9.000000e+00]]]> : tensor<1x1x2xf32>
// CHECK: moe.sparse_moe %arg0, %arg1, fc1 %[[W1]], fc2 %[[W2]] {activation = #moe.activation<swiglu>, k = 1 : i64}
func.func @swiglu_block(%x: tensor<?x1xf32>, %r: tensor<1x1xf32>) -> tensor<?x1xf32> {
  %w1 = arith.constant dense<[[[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]]> : tensor<1x6x1xf32>
  %w2 = arith.constant dense<[[[7.0, 8.0, 9.0]]]> : tensor<1x1x3xf32>
  %m = arith.constant dense<[[0, 1, 1]]> : tensor<1x3xi8>
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 mask %m {k = 1, activation = #moe.activation<swiglu>}
     : (tensor<?x1xf32>, tensor<1x1xf32>, tensor<1x6x1xf32>, tensor<1x1x3xf32>, tensor<1x3xi8>) -> tensor<?x1xf32>
  return %y : tensor<?x1xf32>
}

// -----

// SwiGLU, interleaved layout (gate, up pairs). Keeps dims {0, 2}.
// CHECK-LABEL: func.func @swiglu_interleaved
// CHECK-DAG: %[[W1:.+]] = arith.constant dense<{{\[}}{{\[}}[1.000000e+00], [2.000000e+00], [5.000000e+00], [6.000000e+00]]]> : tensor<1x4x1xf32>
// CHECK-DAG: %[[W2:.+]] = arith.constant dense<{{\[}}{{\[}}[7.000000e+00, 9.000000e+00]]]> : tensor<1x1x2xf32>
// CHECK: moe.sparse_moe %arg0, %arg1, fc1 %[[W1]], fc2 %[[W2]] {activation = #moe.activation<swiglu>, gated_layout = #moe.gated_layout<interleaved>, k = 1 : i64}
func.func @swiglu_interleaved(%x: tensor<?x1xf32>, %r: tensor<1x1xf32>) -> tensor<?x1xf32> {
  %w1 = arith.constant dense<[[[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]]> : tensor<1x6x1xf32>
  %w2 = arith.constant dense<[[[7.0, 8.0, 9.0]]]> : tensor<1x1x3xf32>
  %m = arith.constant dense<[[1, 0, 1]]> : tensor<1x3xi8>
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 mask %m {k = 1, activation = #moe.activation<swiglu>, gated_layout = #moe.gated_layout<interleaved>}
     : (tensor<?x1xf32>, tensor<1x1xf32>, tensor<1x6x1xf32>, tensor<1x1x3xf32>, tensor<1x3xi8>) -> tensor<?x1xf32>
  return %y : tensor<?x1xf32>
}

// -----

// Negative cases: one expert keeps every dim (nothing to gain), and a mask that is not a constant.
// CHECK-LABEL: func.func @no_gain
// CHECK: moe.sparse_moe {{.*}} mask %{{.*}} {activation = #moe.activation<relu>
func.func @no_gain(%x: tensor<?x2xf32>, %r: tensor<2x2xf32>) -> tensor<?x2xf32> {
  %w1 = arith.constant dense<1.0> : tensor<2x3x2xf32>
  %w2 = arith.constant dense<1.0> : tensor<2x2x3xf32>
  %m = arith.constant dense<[[true, true, true], [false, true, false]]> : tensor<2x3xi1>
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 mask %m {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x2xf32>, tensor<2x2xf32>, tensor<2x3x2xf32>, tensor<2x2x3xf32>, tensor<2x3xi1>) -> tensor<?x2xf32>
  return %y : tensor<?x2xf32>
}

// CHECK-LABEL: func.func @runtime_mask
// CHECK: moe.sparse_moe {{.*}} mask %arg2 {activation = #moe.activation<relu>
func.func @runtime_mask(%x: tensor<?x2xf32>, %r: tensor<2x2xf32>, %m: tensor<2x3xi1>) -> tensor<?x2xf32> {
  %w1 = arith.constant dense<1.0> : tensor<2x3x2xf32>
  %w2 = arith.constant dense<1.0> : tensor<2x2x3xf32>
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 mask %m {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x2xf32>, tensor<2x2xf32>, tensor<2x3x2xf32>, tensor<2x2x3xf32>, tensor<2x3xi1>) -> tensor<?x2xf32>
  return %y : tensor<?x2xf32>
}
