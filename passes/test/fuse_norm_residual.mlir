// moe-fuse-norm-residual: the norm whose output only the MoE layer reads, and the residual Add after it,
// move into the op.
// RUN: moec-opt %s --split-input-file --moe-fuse-norm-residual | FileCheck %s
// RUN: moec-opt %s --split-input-file --moe-fuse-norm-residual=remarks=true --verify-diagnostics -o /dev/null

// y = x + moe(rmsnorm(x)) on [batch, seq, hidden], as torch.onnx exports a decoder layer's MoE half.
// CHECK-LABEL: func.func @rms_residual
// CHECK: %[[X:.+]] = onnx.Reshape %arg0
// CHECK: %[[Y:.+]] = moe.sparse_moe %[[X]], %arg1, fc1 %arg2, fc2 %arg3 norm_weight %{{.*}} residual %[[X]] {activation = #moe.activation<relu>, k = 1 : i64, moe.fused = ["rms_norm", "residual_add"], norm = #moe.norm<rms>, norm_epsilon = 9.99999997E-7 : f32}
// CHECK: %[[OUT:.+]] = onnx.Reshape %[[Y]]
// CHECK-NOT: onnx.Add
// CHECK: return %[[OUT]]
func.func @rms_residual(%x: tensor<1x?x2xf32>, %r: tensor<2x3xf32>, %w1: tensor<3x2x2xf32>, %w2: tensor<3x2x2xf32>) -> tensor<1x?x2xf32> {
  %two = onnx.Constant dense<2.0> : tensor<f32>
  %last = onnx.Constant dense<-1> : tensor<1xi64>
  %eps = onnx.Constant dense<1.0e-6> : tensor<f32>
  %w = onnx.Constant dense<[1.5, 0.5]> : tensor<2xf32>
  %flat = onnx.Constant dense<[-1, 2]> : tensor<2xi64>
  %back = onnx.Constant dense<[1, -1, 2]> : tensor<3xi64>
  %sq = onnx.Pow %x, %two : (tensor<1x?x2xf32>, tensor<f32>) -> tensor<1x?x2xf32>
  %mean = onnx.ReduceMean %sq, %last : (tensor<1x?x2xf32>, tensor<1xi64>) -> tensor<1x?x1xf32>
  %add = onnx.Add %mean, %eps : (tensor<1x?x1xf32>, tensor<f32>) -> tensor<1x?x1xf32>
  %rt = onnx.Sqrt %add : (tensor<1x?x1xf32>) -> tensor<1x?x1xf32>
  %inv = onnx.Reciprocal %rt : (tensor<1x?x1xf32>) -> tensor<1x?x1xf32>
  %n = onnx.Mul %x, %inv : (tensor<1x?x2xf32>, tensor<1x?x1xf32>) -> tensor<1x?x2xf32>
  %nw = onnx.Mul %w, %n : (tensor<2xf32>, tensor<1x?x2xf32>) -> tensor<1x?x2xf32>
  %in = onnx.Reshape %nw, %flat : (tensor<1x?x2xf32>, tensor<2xi64>) -> tensor<?x2xf32>
  %y = moe.sparse_moe %in, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x2xf32>, tensor<2x3xf32>, tensor<3x2x2xf32>, tensor<3x2x2xf32>) -> tensor<?x2xf32>
  %y3 = onnx.Reshape %y, %back : (tensor<?x2xf32>, tensor<3xi64>) -> tensor<1x?x2xf32>
  %out = onnx.Add %x, %y3 : (tensor<1x?x2xf32>, tensor<1x?x2xf32>) -> tensor<1x?x2xf32>
  return %out : tensor<1x?x2xf32>
}

// -----

// LayerNormalization with a bias, on [T, H]; x / Sqrt form is not involved.
// CHECK-LABEL: func.func @layer_norm
// CHECK: moe.sparse_moe %arg0, %arg1, fc1 %arg2, fc2 %arg3 norm_weight %{{.*}} norm_bias %{{.*}} residual %arg0 {{{.*}}norm = #moe.norm<layer>, norm_epsilon = 1.000000e-03 : f32}
func.func @layer_norm(%x: tensor<?x2xf32>, %r: tensor<2x3xf32>, %w1: tensor<3x2x2xf32>, %w2: tensor<3x2x2xf32>) -> tensor<?x2xf32> {
  %s = onnx.Constant dense<[1.0, 2.0]> : tensor<2xf32>
  %b = onnx.Constant dense<[0.5, 0.5]> : tensor<2xf32>
  %n, %mean, %inv = onnx.LayerNormalization %x, %s, %b {axis = -1 : i64, epsilon = 1.0e-3 : f32}
      : (tensor<?x2xf32>, tensor<2xf32>, tensor<2xf32>) -> (tensor<?x2xf32>, tensor<*xf32>, tensor<*xf32>)
  %y = moe.sparse_moe %n, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x2xf32>, tensor<2x3xf32>, tensor<3x2x2xf32>, tensor<3x2x2xf32>) -> tensor<?x2xf32>
  %out = onnx.Add %y, %x : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  return %out : tensor<?x2xf32>
}

// -----

// A norm imported as one op already (ONNX Runtime's SimplifiedLayerNormalization becomes moe.norm): it fuses
// the same way.
// CHECK-LABEL: func.func @imported_norm
// CHECK-NOT: moe.norm
// CHECK: moe.sparse_moe %arg0, %arg1, fc1 %arg2, fc2 %arg3 norm_weight %{{.*}} residual %arg0 {{{.*}}moe.fused = ["rms_norm", "residual_add"], norm = #moe.norm<rms>, norm_epsilon = 9.99999997E-7 : f32}
func.func @imported_norm(%x: tensor<?x2xf32>, %r: tensor<2x3xf32>, %w1: tensor<3x2x2xf32>, %w2: tensor<3x2x2xf32>) -> tensor<?x2xf32> {
  %s = onnx.Constant dense<[1.0, 2.0]> : tensor<2xf32>
  %n = moe.norm %x, %s {kind = #moe.norm<rms>, epsilon = 1.0e-6 : f32} : (tensor<?x2xf32>, tensor<2xf32>) -> tensor<?x2xf32>
  %y = moe.sparse_moe %n, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x2xf32>, tensor<2x3xf32>, tensor<3x2x2xf32>, tensor<3x2x2xf32>) -> tensor<?x2xf32>
  %out = onnx.Add %x, %y : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  return %out : tensor<?x2xf32>
}

// -----

// Another op reads the normalised tensor: the norm stays, the residual still fuses.
// CHECK-LABEL: func.func @norm_read_outside
// CHECK: onnx.LayerNormalization
// CHECK: moe.sparse_moe %{{.*}} residual %arg0 {activation = #moe.activation<relu>, k = 1 : i64, moe.fused = ["residual_add"]}
func.func @norm_read_outside(%x: tensor<?x2xf32>, %r: tensor<2x3xf32>, %w1: tensor<3x2x2xf32>, %w2: tensor<3x2x2xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>) {
  %s = onnx.Constant dense<[1.0, 2.0]> : tensor<2xf32>
  %n, %mean, %inv = onnx.LayerNormalization %x, %s {axis = -1 : i64}
      : (tensor<?x2xf32>, tensor<2xf32>) -> (tensor<?x2xf32>, tensor<*xf32>, tensor<*xf32>)
  %z = onnx.Relu %n : (tensor<?x2xf32>) -> tensor<?x2xf32>
  // expected-remark @+1 {{norm not fused into the MoE layer: the norm's output is also read by 'onnx.Relu' outside the MoE layer}}
  %y = moe.sparse_moe %n, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x2xf32>, tensor<2x3xf32>, tensor<3x2x2xf32>, tensor<3x2x2xf32>) -> tensor<?x2xf32>
  %out = onnx.Add %y, %x : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
  return %out, %z : tensor<?x2xf32>, tensor<?x2xf32>
}

// -----

// A LayerNormalization over the first axis is not a per-token norm; a broadcasting Add is not a residual.
// CHECK-LABEL: func.func @wrong_axis_broadcast
// CHECK: onnx.LayerNormalization
// CHECK: onnx.Add
func.func @wrong_axis_broadcast(%x: tensor<4x2xf32>, %r: tensor<2x3xf32>, %w1: tensor<3x2x2xf32>, %w2: tensor<3x2x2xf32>) -> tensor<4x2xf32> {
  %s = onnx.Constant dense<[1.0, 2.0, 3.0, 4.0]> : tensor<4xf32>
  %bias = onnx.Constant dense<[1.0, 2.0]> : tensor<2xf32>
  %n, %mean, %inv = onnx.LayerNormalization %x, %s {axis = 0 : i64}
      : (tensor<4x2xf32>, tensor<4xf32>) -> (tensor<4x2xf32>, tensor<*xf32>, tensor<*xf32>)
  // expected-remark @+1 {{residual Add not fused into the MoE layer: the residual Add broadcasts}}
  %y = moe.sparse_moe %n, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<4x2xf32>, tensor<2x3xf32>, tensor<3x2x2xf32>, tensor<3x2x2xf32>) -> tensor<4x2xf32>
  %out = onnx.Add %y, %bias : (tensor<4x2xf32>, tensor<2xf32>) -> tensor<4x2xf32>
  return %out : tensor<4x2xf32>
}
