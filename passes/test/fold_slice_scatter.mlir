// Canonicalisation of PyTorch's slice_scatter into a new tensor (FoldSliceScatter in ir/ONNXOps.cpp): the
// dynamo exporter writes `k = zeros(...); k[..., :4] = a; k[..., 4:] = b` as ScatterNDs between Transposes over
// a ConstantOfShape; when the index ranges tile the written axis, the result is Concat(a, b).
// RUN: moec-opt %s --split-input-file --canonicalize | FileCheck %s

// DeepSeek-V3's keys as exported: k_nope into dims [0, 4), the expanded k_pe into [4, end).
// CHECK-LABEL: func.func @deepseek_keys
// CHECK: %[[C:.+]] = onnx.Concat %arg0, %arg1 {axis = 3 : i64} : (tensor<1x2x?x4xf32>, tensor<1x2x?x4xf32>) -> tensor<1x2x?x8xf32>
// CHECK-NOT: onnx.ScatterND
// CHECK: return %[[C]]
func.func @deepseek_keys(%a: tensor<1x2x?x4xf32>, %b: tensor<1x2x?x4xf32>, %shape: tensor<4xi64>) -> tensor<1x2x?x8xf32> {
  %zero = onnx.Constant dense<0> : tensor<i64>
  %one = onnx.Constant dense<1> : tensor<i64>
  %three = onnx.Constant dense<3> : tensor<i64>
  %s0 = onnx.Constant dense<0> : tensor<1xi64>
  %s1 = onnx.Constant dense<1> : tensor<1xi64>
  %s4 = onnx.Constant dense<4> : tensor<1xi64>
  %end = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
  %last = onnx.Constant dense<-1> : tensor<1xi64>
  %k0 = onnx.ConstantOfShape %shape : (tensor<4xi64>) -> tensor<1x2x?x8xf32>
  %sh0 = onnx.Shape %k0 : (tensor<1x2x?x8xf32>) -> tensor<4xi64>
  %n0 = onnx.Gather %sh0, %three : (tensor<4xi64>, tensor<i64>) -> tensor<i64>
  %r0 = onnx.Range %zero, %n0, %one : (tensor<i64>, tensor<i64>, tensor<i64>) -> tensor<?xi64>
  %i0 = onnx.Slice %r0, %s0, %s4, %s0, %s1 : (tensor<?xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?xi64>
  %j0 = onnx.Unsqueeze %i0, %last : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
  %u0 = onnx.Transpose %a {perm = [3, 1, 2, 0]} : (tensor<1x2x?x4xf32>) -> tensor<4x2x?x1xf32>
  %d0 = onnx.Transpose %k0 {perm = [3, 1, 2, 0]} : (tensor<1x2x?x8xf32>) -> tensor<8x2x?x1xf32>
  %w0 = onnx.ScatterND %d0, %j0, %u0 : (tensor<8x2x?x1xf32>, tensor<?x1xi64>, tensor<4x2x?x1xf32>) -> tensor<8x2x?x1xf32>
  %k1 = onnx.Transpose %w0 {perm = [3, 1, 2, 0]} : (tensor<8x2x?x1xf32>) -> tensor<1x2x?x8xf32>
  %sh1 = onnx.Shape %k1 : (tensor<1x2x?x8xf32>) -> tensor<4xi64>
  %n1 = onnx.Gather %sh1, %three : (tensor<4xi64>, tensor<i64>) -> tensor<i64>
  %r1 = onnx.Range %zero, %n1, %one : (tensor<i64>, tensor<i64>, tensor<i64>) -> tensor<?xi64>
  %i1 = onnx.Slice %r1, %s4, %end, %s0, %s1 : (tensor<?xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?xi64>
  %j1 = onnx.Unsqueeze %i1, %last : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
  %u1 = onnx.Transpose %b {perm = [3, 1, 2, 0]} : (tensor<1x2x?x4xf32>) -> tensor<4x2x?x1xf32>
  %d1 = onnx.Transpose %k1 {perm = [3, 1, 2, 0]} : (tensor<1x2x?x8xf32>) -> tensor<8x2x?x1xf32>
  %w1 = onnx.ScatterND %d1, %j1, %u1 : (tensor<8x2x?x1xf32>, tensor<?x1xi64>, tensor<4x2x?x1xf32>) -> tensor<8x2x?x1xf32>
  %k2 = onnx.Transpose %w1 {perm = [3, 1, 2, 0]} : (tensor<8x2x?x1xf32>) -> tensor<1x2x?x8xf32>
  return %k2 : tensor<1x2x?x8xf32>
}

// -----

// Writes in the other order (the later range first), along axis 1, with constant indices: still a Concat in
// the axis' order.
// CHECK-LABEL: func.func @reversed_axis1
// CHECK: onnx.Concat %arg0, %arg1 {axis = 1 : i64} : (tensor<2x3x5xf32>, tensor<2x1x5xf32>) -> tensor<2x4x5xf32>
// CHECK-NOT: onnx.ScatterND
func.func @reversed_axis1(%a: tensor<2x3x5xf32>, %b: tensor<2x1x5xf32>, %shape: tensor<3xi64>) -> tensor<2x4x5xf32> {
  %hi = onnx.Constant dense<[[3]]> : tensor<1x1xi64>
  %lo = onnx.Constant dense<[[0], [1], [2]]> : tensor<3x1xi64>
  %k0 = onnx.ConstantOfShape %shape : (tensor<3xi64>) -> tensor<2x4x5xf32>
  %d0 = onnx.Transpose %k0 {perm = [1, 0, 2]} : (tensor<2x4x5xf32>) -> tensor<4x2x5xf32>
  %u0 = onnx.Transpose %b {perm = [1, 0, 2]} : (tensor<2x1x5xf32>) -> tensor<1x2x5xf32>
  %w0 = onnx.ScatterND %d0, %hi, %u0 : (tensor<4x2x5xf32>, tensor<1x1xi64>, tensor<1x2x5xf32>) -> tensor<4x2x5xf32>
  %k1 = onnx.Transpose %w0 {perm = [1, 0, 2]} : (tensor<4x2x5xf32>) -> tensor<2x4x5xf32>
  %d1 = onnx.Transpose %k1 {perm = [1, 0, 2]} : (tensor<2x4x5xf32>) -> tensor<4x2x5xf32>
  %u1 = onnx.Transpose %a {perm = [1, 0, 2]} : (tensor<2x3x5xf32>) -> tensor<3x2x5xf32>
  %w1 = onnx.ScatterND %d1, %lo, %u1 : (tensor<4x2x5xf32>, tensor<3x1xi64>, tensor<3x2x5xf32>) -> tensor<4x2x5xf32>
  %k2 = onnx.Transpose %w1 {perm = [1, 0, 2]} : (tensor<4x2x5xf32>) -> tensor<2x4x5xf32>
  return %k2 : tensor<2x4x5xf32>
}

// -----

// Near misses, left as they are: a range the writes leave out (dim 3 keeps the constant), indices out of order,
// and a Transpose after the ScatterND that does not undo the one before it.
// CHECK-LABEL: func.func @gap
// CHECK: onnx.ScatterND
// CHECK-NOT: onnx.Concat
func.func @gap(%a: tensor<2x3x5xf32>, %shape: tensor<3xi64>) -> tensor<2x4x5xf32> {
  %lo = onnx.Constant dense<[[0], [1], [2]]> : tensor<3x1xi64>
  %k0 = onnx.ConstantOfShape %shape : (tensor<3xi64>) -> tensor<2x4x5xf32>
  %d1 = onnx.Transpose %k0 {perm = [1, 0, 2]} : (tensor<2x4x5xf32>) -> tensor<4x2x5xf32>
  %u1 = onnx.Transpose %a {perm = [1, 0, 2]} : (tensor<2x3x5xf32>) -> tensor<3x2x5xf32>
  %w1 = onnx.ScatterND %d1, %lo, %u1 : (tensor<4x2x5xf32>, tensor<3x1xi64>, tensor<3x2x5xf32>) -> tensor<4x2x5xf32>
  %k2 = onnx.Transpose %w1 {perm = [1, 0, 2]} : (tensor<4x2x5xf32>) -> tensor<2x4x5xf32>
  return %k2 : tensor<2x4x5xf32>
}

// CHECK-LABEL: func.func @unordered
// CHECK: onnx.ScatterND
// CHECK-NOT: onnx.Concat
func.func @unordered(%a: tensor<2x4x5xf32>, %shape: tensor<3xi64>) -> tensor<2x4x5xf32> {
  %idx = onnx.Constant dense<[[1], [0], [2], [3]]> : tensor<4x1xi64>
  %k0 = onnx.ConstantOfShape %shape : (tensor<3xi64>) -> tensor<2x4x5xf32>
  %d1 = onnx.Transpose %k0 {perm = [1, 0, 2]} : (tensor<2x4x5xf32>) -> tensor<4x2x5xf32>
  %u1 = onnx.Transpose %a {perm = [1, 0, 2]} : (tensor<2x4x5xf32>) -> tensor<4x2x5xf32>
  %w1 = onnx.ScatterND %d1, %idx, %u1 : (tensor<4x2x5xf32>, tensor<4x1xi64>, tensor<4x2x5xf32>) -> tensor<4x2x5xf32>
  %k2 = onnx.Transpose %w1 {perm = [1, 0, 2]} : (tensor<4x2x5xf32>) -> tensor<2x4x5xf32>
  return %k2 : tensor<2x4x5xf32>
}

// CHECK-LABEL: func.func @not_undone
// CHECK: onnx.ScatterND
// CHECK-NOT: onnx.Concat
func.func @not_undone(%a: tensor<4x4x4xf32>, %shape: tensor<3xi64>) -> tensor<4x4x4xf32> {
  %idx = onnx.Constant dense<[[0], [1], [2], [3]]> : tensor<4x1xi64>
  %k0 = onnx.ConstantOfShape %shape : (tensor<3xi64>) -> tensor<4x4x4xf32>
  %d1 = onnx.Transpose %k0 {perm = [1, 2, 0]} : (tensor<4x4x4xf32>) -> tensor<4x4x4xf32>
  %u1 = onnx.Transpose %a {perm = [1, 2, 0]} : (tensor<4x4x4xf32>) -> tensor<4x4x4xf32>
  %w1 = onnx.ScatterND %d1, %idx, %u1 : (tensor<4x4x4xf32>, tensor<4x1xi64>, tensor<4x4x4xf32>) -> tensor<4x4x4xf32>
  %k2 = onnx.Transpose %w1 {perm = [1, 2, 0]} : (tensor<4x4x4xf32>) -> tensor<4x4x4xf32>
  return %k2 : tensor<4x4x4xf32>
}
