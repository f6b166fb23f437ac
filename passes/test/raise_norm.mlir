// moe-raise-norm: the RMSNorms and LayerNorms left in the graph -> moe.norm.
// RUN: moec-opt %s --split-input-file --moe-raise-norm=remarks=true --verify-diagnostics | FileCheck %s

// An attention layer's input RMSNorm as exported ([B, S, H]; the weight multiplies on the left).
// CHECK-LABEL: func.func @rms
// CHECK: %[[N:.+]] = moe.norm %arg0, %{{.*}} {epsilon = 9.99999997E-7 : f32, kind = #moe.norm<rms>} : (tensor<1x?x8xf32>, tensor<8xf32>) -> tensor<1x?x8xf32>
// CHECK-NOT: onnx.ReduceMean
// CHECK: return %[[N]]
func.func @rms(%x: tensor<1x?x8xf32>) -> tensor<1x?x8xf32> {
  %two = onnx.Constant dense<2.0> : tensor<f32>
  %last = onnx.Constant dense<-1> : tensor<1xi64>
  %eps = onnx.Constant dense<1.0e-6> : tensor<f32>
  %w = onnx.Constant dense<0.5> : tensor<8xf32>
  %sq = onnx.Pow %x, %two : (tensor<1x?x8xf32>, tensor<f32>) -> tensor<1x?x8xf32>
  %mean = onnx.ReduceMean %sq, %last : (tensor<1x?x8xf32>, tensor<1xi64>) -> tensor<1x?x1xf32>
  %add = onnx.Add %mean, %eps : (tensor<1x?x1xf32>, tensor<f32>) -> tensor<1x?x1xf32>
  %rt = onnx.Sqrt %add : (tensor<1x?x1xf32>) -> tensor<1x?x1xf32>
  %inv = onnx.Reciprocal %rt : (tensor<1x?x1xf32>) -> tensor<1x?x1xf32>
  %n = onnx.Mul %x, %inv : (tensor<1x?x8xf32>, tensor<1x?x1xf32>) -> tensor<1x?x8xf32>
  %nw = onnx.Mul %w, %n : (tensor<8xf32>, tensor<1x?x8xf32>) -> tensor<1x?x8xf32>
  return %nw : tensor<1x?x8xf32>
}

// -----

// LayerNormalization over the last axis, with a bias.
// CHECK-LABEL: func.func @layer
// CHECK: moe.norm %arg0, %arg1 bias %arg2 {epsilon = 1.000000e-03 : f32, kind = #moe.norm<layer>}
// CHECK-NOT: onnx.LayerNormalization
func.func @layer(%x: tensor<?x8xf32>, %s: tensor<8xf32>, %b: tensor<8xf32>) -> tensor<?x8xf32> {
  %n, %mean, %inv = onnx.LayerNormalization %x, %s, %b {axis = -1 : i64, epsilon = 1.0e-3 : f32}
     : (tensor<?x8xf32>, tensor<8xf32>, tensor<8xf32>) -> (tensor<?x8xf32>, tensor<*xf32>, tensor<*xf32>)
  return %n : tensor<?x8xf32>
}

// -----

// Near miss: the mean of squares is also returned, so the chain stays.
// CHECK-LABEL: func.func @shared
// CHECK-NOT: moe.norm
func.func @shared(%x: tensor<?x8xf32>) -> (tensor<?x8xf32>, tensor<?x1xf32>) {
  %two = onnx.Constant dense<2.0> : tensor<f32>
  %last = onnx.Constant dense<-1> : tensor<1xi64>
  %eps = onnx.Constant dense<1.0e-6> : tensor<f32>
  %w = onnx.Constant dense<0.5> : tensor<8xf32>
  %sq = onnx.Pow %x, %two : (tensor<?x8xf32>, tensor<f32>) -> tensor<?x8xf32>
  %mean = onnx.ReduceMean %sq, %last : (tensor<?x8xf32>, tensor<1xi64>) -> tensor<?x1xf32>
  %add = onnx.Add %mean, %eps : (tensor<?x1xf32>, tensor<f32>) -> tensor<?x1xf32>
  %rt = onnx.Sqrt %add : (tensor<?x1xf32>) -> tensor<?x1xf32>
  %inv = onnx.Reciprocal %rt : (tensor<?x1xf32>) -> tensor<?x1xf32>
  %n = onnx.Mul %x, %inv : (tensor<?x8xf32>, tensor<?x1xf32>) -> tensor<?x8xf32>
  // expected-remark @+1 {{norm not raised: an intermediate of the norm is also read outside it}}
  %nw = onnx.Mul %w, %n : (tensor<8xf32>, tensor<?x8xf32>) -> tensor<?x8xf32>
  return %nw, %mean : tensor<?x8xf32>, tensor<?x1xf32>
}
