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
