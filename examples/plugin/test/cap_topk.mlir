// The example plugin (examples/plugin) loads into moec-opt as a pass plugin and a dialect plugin, and its
// pass changes the graph: top-k is capped and a note op from the plugin's own dialect is added.
// REQUIRES: examples
// RUN: moec-opt %s --load-pass-plugin=%moec_lib/MoECExamplePlugin.so --load-dialect-plugin=%moec_lib/MoECExamplePlugin.so \
// RUN:   --pass-pipeline='builtin.module(moe-example-cap-topk{max-k=2})' | FileCheck %s
// The pass's output parses again only with the dialect plugin loaded.
// RUN: moec-opt %s --load-pass-plugin=%moec_lib/MoECExamplePlugin.so --load-dialect-plugin=%moec_lib/MoECExamplePlugin.so \
// RUN:   --pass-pipeline='builtin.module(moe-example-cap-topk{max-k=2})' > %t.mlir
// RUN: moec-opt %t.mlir --load-dialect-plugin=%moec_lib/MoECExamplePlugin.so | FileCheck %s
// RUN: not moec-opt %t.mlir 2>&1 | FileCheck %s --check-prefix=NODIALECT
// Without the pass plugin the pass does not exist.
// RUN: not moec-opt %s --pass-pipeline='builtin.module(moe-example-cap-topk)' 2>&1 | FileCheck %s --check-prefix=NOPASS

// CHECK: moe_example.note "moe-example-cap-topk: capped top-k to 2 in 1 layer(s)"
// CHECK-LABEL: func.func @top4
// CHECK: moe.sparse_moe {{.*}}k = 2 : i64
// CHECK-LABEL: func.func @top1
// CHECK: moe.sparse_moe {{.*}}k = 1 : i64
// NODIALECT: Dialect `moe_example' not found
// NOPASS: 'moe-example-cap-topk' does not refer to a registered pass

func.func @top4(%x: tensor<?x8xf32>, %r: tensor<8x4xf32>, %w1: tensor<4x6x8xf32>, %w2: tensor<4x8x6xf32>) -> tensor<?x8xf32> {
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 4, activation = #moe.activation<relu>}
     : (tensor<?x8xf32>, tensor<8x4xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}

func.func @top1(%x: tensor<?x8xf32>, %r: tensor<8x4xf32>, %w1: tensor<4x6x8xf32>, %w2: tensor<4x8x6xf32>) -> tensor<?x8xf32> {
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x8xf32>, tensor<8x4xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}
