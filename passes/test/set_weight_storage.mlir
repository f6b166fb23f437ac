// moe-set-weight-storage: every dispatch's storage on the op; the LM head (a linear whose result is returned)
// can be kept wider; imported quantised weights keep theirs.
// RUN: moec-opt %s --moe-set-weight-storage="experts=int8 dense=int4 lm-head=bf16 block-size=64" | FileCheck %s
// RUN: not moec-opt %s --moe-set-weight-storage="dense=int3" 2>&1 | FileCheck %s --check-prefix=BAD
// RUN: moec-opt %s --moe-set-weight-storage="dense=int8 embeddings=fp16" | FileCheck %s --check-prefix=WIDE
// Narrow activations mark only the dispatches whose storage they apply to: int8 ones int8/int4 weights, bf16
// ones bf16 weights.
// RUN: moec-opt %s --moe-set-weight-storage="experts=bf16 dense=int4 lm-head=bf16 int8-activations=true bf16-activations=true" | FileCheck %s --check-prefix=ACT

// CHECK-LABEL: func.func @model
// CHECK: moe.embedding %{{.+}}, %arg5 {block_size = 64 : i64, storage = #moe.storage<int4>}
// CHECK: moe.linear %arg0, %{{.+}} {block_size = 64 : i64, storage = #moe.storage<int4>}
// CHECK: moe.sparse_moe {{.*}}storage = #moe.storage<int8>
// CHECK: moe.linear %{{.+}}, %{{.+}} {block_size = 64 : i64, storage = #moe.storage<bf16>}
// WIDE: moe.embedding {{.*}}storage = #moe.storage<fp16>
// WIDE: moe.linear {{.*}}storage = #moe.storage<int8>
// ACT: moe.linear %arg0, %{{.+}} {int8_activations, storage = #moe.storage<int4>}
// ACT: moe.sparse_moe {{.*}}bf16_activations{{.*}}storage = #moe.storage<bf16>
// ACT-NOT: int8_activations
// ACT: moe.linear %{{.+}}, %{{.+}} {bf16_activations, storage = #moe.storage<bf16>}
// BAD: error: moe-set-weight-storage: dense='int3' is not a storage (fp32, bf16, fp16, int8, int4)
func.func @model(%x: tensor<?x4xf32>, %r: tensor<4x2xf32>, %w1: tensor<2x2x4xf32>, %w2: tensor<2x4x2xf32>,
                 %head: tensor<4x8xf32>, %ids: tensor<3xi64>) -> (tensor<?x8xf32>, tensor<3x4xf32>) {
  %table = onnx.Constant dense<1.0> : tensor<6x4xf32>
  %e = moe.embedding %table, %ids : (tensor<6x4xf32>, tensor<3xi64>) -> tensor<3x4xf32>
  %w = onnx.Constant dense<1.0> : tensor<4x4xf32>
  %h = moe.linear %x, %w : (tensor<?x4xf32>, tensor<4x4xf32>) -> tensor<?x4xf32>
  %m = moe.sparse_moe %h, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x4xf32>, tensor<4x2xf32>, tensor<2x2x4xf32>, tensor<2x4x2xf32>) -> tensor<?x4xf32>
  %y = moe.linear %m, %head : (tensor<?x4xf32>, tensor<4x8xf32>) -> tensor<?x8xf32>
  return %y, %e : tensor<?x8xf32>, tensor<3x4xf32>
}

// bf16 activations also mark attention (its rounding applies over bf16 caches, a session's choice), when the
// key head dim is even (pairs of dims).
// ACT-LABEL: func.func @attention
// ACT: moe.attention %arg0, %arg1, %arg2 {bf16_activations, scale = 1.000000e+00 : f32}
// ACT: moe.attention %arg3, %arg4, %arg5 {scale = 1.000000e+00 : f32}
// CHECK-LABEL: func.func @attention
// CHECK-NOT: bf16_activations
func.func @attention(%q: tensor<1x2x?x8xf32>, %k: tensor<1x1x?x8xf32>, %v: tensor<1x1x?x8xf32>,
                     %q5: tensor<1x2x?x5xf32>, %k5: tensor<1x1x?x5xf32>, %v5: tensor<1x1x?x5xf32>)
    -> (tensor<1x2x?x8xf32>, tensor<1x2x?x5xf32>) {
  %a = moe.attention %q, %k, %v {scale = 1.0 : f32}
     : (tensor<1x2x?x8xf32>, tensor<1x1x?x8xf32>, tensor<1x1x?x8xf32>) -> tensor<1x2x?x8xf32>
  %b = moe.attention %q5, %k5, %v5 {scale = 1.0 : f32}
     : (tensor<1x2x?x5xf32>, tensor<1x1x?x5xf32>, tensor<1x1x?x5xf32>) -> tensor<1x2x?x5xf32>
  return %a, %b : tensor<1x2x?x8xf32>, tensor<1x2x?x5xf32>
}
