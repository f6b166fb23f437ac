// moe-raise-decomposed: a Mixtral block exported by torch.onnx (dynamo, batched_mm experts; 3 experts,
// top-2 renormalised, SwiGLU) becomes one moe.sparse_moe; near misses stay as they are, with a remark.
// RUN: moec-opt %s --split-input-file --moe-raise-decomposed | FileCheck %s
// RUN: moec-opt %s --split-input-file --moe-raise-decomposed=remarks=true --verify-diagnostics -o /dev/null

// CHECK-LABEL: func.func @mixtral
// CHECK: %[[X:.+]] = onnx.Reshape %arg0
// CHECK: %[[LOGITS:.+]] = onnx.Gemm
// CHECK-NOT: onnx.Softmax
// CHECK-NOT: onnx.TopK
// CHECK-NOT: onnx.GatherND
// CHECK: %[[Y:.+]] = moe.sparse_moe %[[X]], %[[LOGITS]], fc1 %{{.*}}, fc2 %{{.*}} {activation = #moe.activation<swiglu>, k = 2 : i64, moe.source = "pytorch-batched-mm", normalize = true, router_kind = #moe.router<logits>}
// CHECK-SAME: (tensor<?x4xf32>, tensor<?x3xf32>, tensor<3x4x4xf32>, tensor<3x4x2xf32>) -> tensor<?x4xf32>
// CHECK-NOT: onnx.MatMul
// CHECK: onnx.Reshape %[[Y]]
func.func @mixtral(%arg0: tensor<1x?x4xf32>) -> tensor<1x?x4xf32> {
    %0 = onnx.Constant dense<1.000000e+00> : tensor<3x4xf32>
    %1 = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %2 = onnx.Constant dense<-1> : tensor<1xi64>
    %3 = onnx.Constant dense<5.000000e-01> : tensor<3x4x4xf32>
    %4 = onnx.Constant dense<2.500000e-01> : tensor<3x4x2xf32>
    %5 = onnx.Constant dense<2> : tensor<1xi64>
    %6 = onnx.Constant dense<1> : tensor<1xi64>
    %7 = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %8 = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %9 = onnx.Constant dense<[1, -1, 4]> : tensor<3xi64>
    %10 = onnx.Reshape %arg0, %1 {allowzero = 1 : i64} : (tensor<1x?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %11 = onnx.Reshape %10, %1 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %12 = onnx.Gemm %11, %0 {transB = 1 : i64} : (tensor<?x4xf32>, tensor<3x4xf32>) -> tensor<?x3xf32>
    %13 = onnx.Softmax %12 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %Values, %Indices = onnx.TopK %13, %5 : (tensor<?x3xf32>, tensor<1xi64>) -> (tensor<?x2xf32>, tensor<?x2xi64>)
    %14 = onnx.ReduceSum %Values, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %15 = onnx.Div %Values, %14 : (tensor<?x2xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %16 = onnx.Unsqueeze %10, %6 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %17 = onnx.Expand %16, %7 : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %18 = onnx.Reshape %17, %1 : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %19 = onnx.Reshape %Indices, %2 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %20 = onnx.Unsqueeze %19, %2 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %21 = onnx.GatherND %3, %20 : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %22 = onnx.Unsqueeze %18, %2 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x4x1xf32>
    %23 = onnx.MatMul %21, %22 : (tensor<?x4x4xf32>, tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
    %24 = onnx.Squeeze %23, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %25:2 = onnx.Split %24 {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<?x4xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>)
    %26 = onnx.Sigmoid %25#0 : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %27 = onnx.Mul %25#0, %26 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %28 = onnx.Mul %27, %25#1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %29 = onnx.GatherND %4, %20 : (tensor<3x4x2xf32>, tensor<?x1xi64>) -> tensor<?x4x2xf32>
    %30 = onnx.Unsqueeze %28, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x2x1xf32>
    %31 = onnx.MatMul %29, %30 : (tensor<?x4x2xf32>, tensor<?x2x1xf32>) -> tensor<?x4x1xf32>
    %32 = onnx.Squeeze %31, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %33 = onnx.Reshape %15, %2 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %34 = onnx.Unsqueeze %33, %2 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %35 = onnx.Mul %32, %34 : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %36 = onnx.Reshape %35, %8 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %37 = onnx.ReduceSum %36, %6 {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %38 = onnx.Reshape %37, %9 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<1x?x4xf32>
    return %38 : tensor<1x?x4xf32>
}

// -----

// Softmax over tokens instead of experts.
// CHECK-LABEL: func.func @softmax_wrong_axis
// CHECK-NOT: moe.sparse_moe
// CHECK: onnx.GatherND
func.func @softmax_wrong_axis(%arg0: tensor<1x?x4xf32>) -> tensor<1x?x4xf32> {
    %0 = onnx.Constant dense<1.000000e+00> : tensor<3x4xf32>
    %1 = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %2 = onnx.Constant dense<-1> : tensor<1xi64>
    %3 = onnx.Constant dense<5.000000e-01> : tensor<3x4x4xf32>
    %4 = onnx.Constant dense<2.500000e-01> : tensor<3x4x2xf32>
    %5 = onnx.Constant dense<2> : tensor<1xi64>
    %6 = onnx.Constant dense<1> : tensor<1xi64>
    %7 = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %8 = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %9 = onnx.Constant dense<[1, -1, 4]> : tensor<3xi64>
    %10 = onnx.Reshape %arg0, %1 {allowzero = 1 : i64} : (tensor<1x?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %11 = onnx.Reshape %10, %1 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %12 = onnx.Gemm %11, %0 {transB = 1 : i64} : (tensor<?x4xf32>, tensor<3x4xf32>) -> tensor<?x3xf32>
    %13 = onnx.Softmax %12 {axis = 0 : i64} : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %Values, %Indices = onnx.TopK %13, %5 : (tensor<?x3xf32>, tensor<1xi64>) -> (tensor<?x2xf32>, tensor<?x2xi64>)
    %14 = onnx.ReduceSum %Values, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %15 = onnx.Div %Values, %14 : (tensor<?x2xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %16 = onnx.Unsqueeze %10, %6 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %17 = onnx.Expand %16, %7 : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %18 = onnx.Reshape %17, %1 : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %19 = onnx.Reshape %Indices, %2 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %20 = onnx.Unsqueeze %19, %2 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %21 = onnx.GatherND %3, %20 : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %22 = onnx.Unsqueeze %18, %2 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x4x1xf32>
    %23 = onnx.MatMul %21, %22 : (tensor<?x4x4xf32>, tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
    %24 = onnx.Squeeze %23, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %25:2 = onnx.Split %24 {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<?x4xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>)
    %26 = onnx.Sigmoid %25#0 : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %27 = onnx.Mul %25#0, %26 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %28 = onnx.Mul %27, %25#1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %29 = onnx.GatherND %4, %20 : (tensor<3x4x2xf32>, tensor<?x1xi64>) -> tensor<?x4x2xf32>
    %30 = onnx.Unsqueeze %28, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x2x1xf32>
    %31 = onnx.MatMul %29, %30 : (tensor<?x4x2xf32>, tensor<?x2x1xf32>) -> tensor<?x4x1xf32>
    %32 = onnx.Squeeze %31, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %33 = onnx.Reshape %15, %2 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %34 = onnx.Unsqueeze %33, %2 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %35 = onnx.Mul %32, %34 : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %36 = onnx.Reshape %35, %8 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    // expected-remark @+1 {{MoE experts not raised: softmax over the wrong axis (0; experts are the last dim)}}
    %37 = onnx.ReduceSum %36, %6 {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %38 = onnx.Reshape %37, %9 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<1x?x4xf32>
    return %38 : tensor<1x?x4xf32>
}

// -----

// Top-k over tokens instead of experts.
// CHECK-LABEL: func.func @topk_wrong_dim
// CHECK-NOT: moe.sparse_moe
func.func @topk_wrong_dim(%arg0: tensor<1x?x4xf32>) -> tensor<1x?x4xf32> {
    %0 = onnx.Constant dense<1.000000e+00> : tensor<3x4xf32>
    %1 = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %2 = onnx.Constant dense<-1> : tensor<1xi64>
    %3 = onnx.Constant dense<5.000000e-01> : tensor<3x4x4xf32>
    %4 = onnx.Constant dense<2.500000e-01> : tensor<3x4x2xf32>
    %5 = onnx.Constant dense<2> : tensor<1xi64>
    %6 = onnx.Constant dense<1> : tensor<1xi64>
    %7 = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %8 = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %9 = onnx.Constant dense<[1, -1, 4]> : tensor<3xi64>
    %10 = onnx.Reshape %arg0, %1 {allowzero = 1 : i64} : (tensor<1x?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %11 = onnx.Reshape %10, %1 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %12 = onnx.Gemm %11, %0 {transB = 1 : i64} : (tensor<?x4xf32>, tensor<3x4xf32>) -> tensor<?x3xf32>
    %13 = onnx.Softmax %12 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %Values, %Indices = onnx.TopK %13, %5 {axis = 0 : i64} : (tensor<?x3xf32>, tensor<1xi64>) -> (tensor<?x2xf32>, tensor<?x2xi64>)
    %14 = onnx.ReduceSum %Values, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %15 = onnx.Div %Values, %14 : (tensor<?x2xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %16 = onnx.Unsqueeze %10, %6 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %17 = onnx.Expand %16, %7 : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %18 = onnx.Reshape %17, %1 : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %19 = onnx.Reshape %Indices, %2 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %20 = onnx.Unsqueeze %19, %2 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %21 = onnx.GatherND %3, %20 : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %22 = onnx.Unsqueeze %18, %2 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x4x1xf32>
    %23 = onnx.MatMul %21, %22 : (tensor<?x4x4xf32>, tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
    %24 = onnx.Squeeze %23, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %25:2 = onnx.Split %24 {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<?x4xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>)
    %26 = onnx.Sigmoid %25#0 : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %27 = onnx.Mul %25#0, %26 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %28 = onnx.Mul %27, %25#1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %29 = onnx.GatherND %4, %20 : (tensor<3x4x2xf32>, tensor<?x1xi64>) -> tensor<?x4x2xf32>
    %30 = onnx.Unsqueeze %28, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x2x1xf32>
    %31 = onnx.MatMul %29, %30 : (tensor<?x4x2xf32>, tensor<?x2x1xf32>) -> tensor<?x4x1xf32>
    %32 = onnx.Squeeze %31, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %33 = onnx.Reshape %15, %2 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %34 = onnx.Unsqueeze %33, %2 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %35 = onnx.Mul %32, %34 : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %36 = onnx.Reshape %35, %8 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    // expected-remark @+1 {{MoE experts not raised: top-k over the wrong dim (axis 0 of a rank-2 tensor; experts are the last dim)}}
    %37 = onnx.ReduceSum %36, %6 {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %38 = onnx.Reshape %37, %9 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<1x?x4xf32>
    return %38 : tensor<1x?x4xf32>
}

// -----

// The router scores 4 experts, the weights hold 3.
// CHECK-LABEL: func.func @expert_count_mismatch
// CHECK-NOT: moe.sparse_moe
func.func @expert_count_mismatch(%arg0: tensor<1x?x4xf32>) -> tensor<1x?x4xf32> {
    %0 = onnx.Constant dense<1.000000e+00> : tensor<4x4xf32>
    %1 = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %2 = onnx.Constant dense<-1> : tensor<1xi64>
    %3 = onnx.Constant dense<5.000000e-01> : tensor<3x4x4xf32>
    %4 = onnx.Constant dense<2.500000e-01> : tensor<3x4x2xf32>
    %5 = onnx.Constant dense<2> : tensor<1xi64>
    %6 = onnx.Constant dense<1> : tensor<1xi64>
    %7 = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %8 = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %9 = onnx.Constant dense<[1, -1, 4]> : tensor<3xi64>
    %10 = onnx.Reshape %arg0, %1 {allowzero = 1 : i64} : (tensor<1x?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %11 = onnx.Reshape %10, %1 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %12 = onnx.Gemm %11, %0 {transB = 1 : i64} : (tensor<?x4xf32>, tensor<4x4xf32>) -> tensor<?x4xf32>
    %13 = onnx.Softmax %12 : (tensor<?x4xf32>) -> tensor<?x4xf32>
    %Values, %Indices = onnx.TopK %13, %5 : (tensor<?x4xf32>, tensor<1xi64>) -> (tensor<?x2xf32>, tensor<?x2xi64>)
    %14 = onnx.ReduceSum %Values, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %15 = onnx.Div %Values, %14 : (tensor<?x2xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %16 = onnx.Unsqueeze %10, %6 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %17 = onnx.Expand %16, %7 : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %18 = onnx.Reshape %17, %1 : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %19 = onnx.Reshape %Indices, %2 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %20 = onnx.Unsqueeze %19, %2 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %21 = onnx.GatherND %3, %20 : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %22 = onnx.Unsqueeze %18, %2 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x4x1xf32>
    %23 = onnx.MatMul %21, %22 : (tensor<?x4x4xf32>, tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
    %24 = onnx.Squeeze %23, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %25:2 = onnx.Split %24 {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<?x4xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>)
    %26 = onnx.Sigmoid %25#0 : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %27 = onnx.Mul %25#0, %26 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %28 = onnx.Mul %27, %25#1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %29 = onnx.GatherND %4, %20 : (tensor<3x4x2xf32>, tensor<?x1xi64>) -> tensor<?x4x2xf32>
    %30 = onnx.Unsqueeze %28, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x2x1xf32>
    %31 = onnx.MatMul %29, %30 : (tensor<?x4x2xf32>, tensor<?x2x1xf32>) -> tensor<?x4x1xf32>
    %32 = onnx.Squeeze %31, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %33 = onnx.Reshape %15, %2 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %34 = onnx.Unsqueeze %33, %2 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %35 = onnx.Mul %32, %34 : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %36 = onnx.Reshape %35, %8 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    // expected-remark @+1 {{MoE experts not raised: mismatched expert count: the router scores 4 experts, the weights hold 3}}
    %37 = onnx.ReduceSum %36, %6 {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %38 = onnx.Reshape %37, %9 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<1x?x4xf32>
    return %38 : tensor<1x?x4xf32>
}

// -----

// The router probabilities are also a graph output: fusing would lose them.
// CHECK-LABEL: func.func @probs_read_outside
// CHECK-NOT: moe.sparse_moe
func.func @probs_read_outside(%arg0: tensor<1x?x4xf32>) -> (tensor<1x?x4xf32>, tensor<?x3xf32>) {
    %0 = onnx.Constant dense<1.000000e+00> : tensor<3x4xf32>
    %1 = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %2 = onnx.Constant dense<-1> : tensor<1xi64>
    %3 = onnx.Constant dense<5.000000e-01> : tensor<3x4x4xf32>
    %4 = onnx.Constant dense<2.500000e-01> : tensor<3x4x2xf32>
    %5 = onnx.Constant dense<2> : tensor<1xi64>
    %6 = onnx.Constant dense<1> : tensor<1xi64>
    %7 = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %8 = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %9 = onnx.Constant dense<[1, -1, 4]> : tensor<3xi64>
    %10 = onnx.Reshape %arg0, %1 {allowzero = 1 : i64} : (tensor<1x?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %11 = onnx.Reshape %10, %1 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %12 = onnx.Gemm %11, %0 {transB = 1 : i64} : (tensor<?x4xf32>, tensor<3x4xf32>) -> tensor<?x3xf32>
    %13 = onnx.Softmax %12 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %Values, %Indices = onnx.TopK %13, %5 : (tensor<?x3xf32>, tensor<1xi64>) -> (tensor<?x2xf32>, tensor<?x2xi64>)
    %14 = onnx.ReduceSum %Values, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %15 = onnx.Div %Values, %14 : (tensor<?x2xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %16 = onnx.Unsqueeze %10, %6 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %17 = onnx.Expand %16, %7 : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %18 = onnx.Reshape %17, %1 : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %19 = onnx.Reshape %Indices, %2 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %20 = onnx.Unsqueeze %19, %2 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %21 = onnx.GatherND %3, %20 : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %22 = onnx.Unsqueeze %18, %2 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x4x1xf32>
    %23 = onnx.MatMul %21, %22 : (tensor<?x4x4xf32>, tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
    %24 = onnx.Squeeze %23, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %25:2 = onnx.Split %24 {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<?x4xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>)
    %26 = onnx.Sigmoid %25#0 : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %27 = onnx.Mul %25#0, %26 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %28 = onnx.Mul %27, %25#1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %29 = onnx.GatherND %4, %20 : (tensor<3x4x2xf32>, tensor<?x1xi64>) -> tensor<?x4x2xf32>
    %30 = onnx.Unsqueeze %28, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x2x1xf32>
    %31 = onnx.MatMul %29, %30 : (tensor<?x4x2xf32>, tensor<?x2x1xf32>) -> tensor<?x4x1xf32>
    %32 = onnx.Squeeze %31, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %33 = onnx.Reshape %15, %2 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %34 = onnx.Unsqueeze %33, %2 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %35 = onnx.Mul %32, %34 : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %36 = onnx.Reshape %35, %8 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    // expected-remark @+1 {{MoE experts not raised: 'onnx.Softmax' inside the pattern is also read by 'func.return' outside it}}
    %37 = onnx.ReduceSum %36, %6 {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %38 = onnx.Reshape %37, %9 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<1x?x4xf32>
    return %38, %13 : tensor<1x?x4xf32>, tensor<?x3xf32>
}

// -----

// The down projection gathers experts with other ids than the flattened top-k ones.
// CHECK-LABEL: func.func @down_ids_differ
// CHECK-NOT: moe.sparse_moe
func.func @down_ids_differ(%arg0: tensor<1x?x4xf32>) -> tensor<1x?x4xf32> {
    %0 = onnx.Constant dense<1.000000e+00> : tensor<3x4xf32>
    %1 = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %2 = onnx.Constant dense<-1> : tensor<1xi64>
    %3 = onnx.Constant dense<5.000000e-01> : tensor<3x4x4xf32>
    %4 = onnx.Constant dense<2.500000e-01> : tensor<3x4x2xf32>
    %5 = onnx.Constant dense<2> : tensor<1xi64>
    %6 = onnx.Constant dense<1> : tensor<1xi64>
    %7 = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %8 = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %9 = onnx.Constant dense<[1, -1, 4]> : tensor<3xi64>
    %10 = onnx.Reshape %arg0, %1 {allowzero = 1 : i64} : (tensor<1x?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %11 = onnx.Reshape %10, %1 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %12 = onnx.Gemm %11, %0 {transB = 1 : i64} : (tensor<?x4xf32>, tensor<3x4xf32>) -> tensor<?x3xf32>
    %13 = onnx.Softmax %12 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %Values, %Indices = onnx.TopK %13, %5 : (tensor<?x3xf32>, tensor<1xi64>) -> (tensor<?x2xf32>, tensor<?x2xi64>)
    %14 = onnx.ReduceSum %Values, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %15 = onnx.Div %Values, %14 : (tensor<?x2xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %16 = onnx.Unsqueeze %10, %6 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %17 = onnx.Expand %16, %7 : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %18 = onnx.Reshape %17, %1 : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %19 = onnx.Reshape %Indices, %2 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %20 = onnx.Unsqueeze %19, %2 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %col = onnx.Constant dense<[-1, 1]> : tensor<2xi64>
    %ids2 = onnx.Reshape %Indices, %col : (tensor<?x2xi64>, tensor<2xi64>) -> tensor<?x1xi64>
    %21 = onnx.GatherND %3, %20 : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %22 = onnx.Unsqueeze %18, %2 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x4x1xf32>
    %23 = onnx.MatMul %21, %22 : (tensor<?x4x4xf32>, tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
    %24 = onnx.Squeeze %23, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %25:2 = onnx.Split %24 {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<?x4xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>)
    %26 = onnx.Sigmoid %25#0 : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %27 = onnx.Mul %25#0, %26 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %28 = onnx.Mul %27, %25#1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %29 = onnx.GatherND %4, %ids2 : (tensor<3x4x2xf32>, tensor<?x1xi64>) -> tensor<?x4x2xf32>
    %30 = onnx.Unsqueeze %28, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x2x1xf32>
    %31 = onnx.MatMul %29, %30 : (tensor<?x4x2xf32>, tensor<?x2x1xf32>) -> tensor<?x4x1xf32>
    %32 = onnx.Squeeze %31, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %33 = onnx.Reshape %15, %2 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %34 = onnx.Unsqueeze %33, %2 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %35 = onnx.Mul %32, %34 : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %36 = onnx.Reshape %35, %8 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    // expected-remark @+1 {{MoE experts not raised: the down projection's expert gather is not indexed by the flattened top-k ids}}
    %37 = onnx.ReduceSum %36, %6 {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %38 = onnx.Reshape %37, %9 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<1x?x4xf32>
    return %38 : tensor<1x?x4xf32>
}

// -----

// GPT-OSS (dynamo, batched_mm): a router with a bias and a softmax over the top-k logits (= a renormalised
// softmax gate); experts stored [E, in, out] (a transposed batched matmul) with per-expert biases; gate and up
// interleaved (step-2 Slices), gate clamped from above, up clamped to [-limit, limit],
// gate * sigmoid(1.702 gate) * (up + 1).
// CHECK-LABEL: func.func @gpt_oss
// CHECK-NOT: onnx.TopK
// CHECK: moe.sparse_moe %{{.*}}, %{{.*}}, fc1 %{{.*}} fc1_bias %{{.*}}, fc2 %{{.*}} fc2_bias %{{.*}} {activation = #moe.activation<swiglu>, activation_alpha = 1.702000e+00 : f32, activation_beta = 1.000000e+00 : f32, activation_limit = 1.500000e+00 : f32, gated_layout = #moe.gated_layout<interleaved>, k = 2 : i64, moe.source = "pytorch-batched-mm", normalize = true, router_kind = #moe.router<logits>}
// CHECK-SAME: (tensor<?x4xf32>, tensor<?x3xf32>, tensor<3x4x4xf32>, tensor<3x4xf32>, tensor<3x4x2xf32>, tensor<3x4xf32>) -> tensor<?x4xf32>
// CHECK-NOT: onnx.GatherND
func.func @gpt_oss(%arg0: tensor<?x4xf32>) -> tensor<?x4xf32> {
    %w = onnx.Constant dense<0.5> : tensor<3x4xf32>
    %b = onnx.Constant dense<0.1> : tensor<3xf32>
    %m1 = onnx.Constant dense<-1> : tensor<1xi64>
    %flat = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %fc1 = onnx.Constant dense<0.25> : tensor<3x4x4xf32>
    %fc1b = onnx.Constant dense<0.01> : tensor<3x4xf32>
    %fc2 = onnx.Constant dense<0.125> : tensor<3x2x4xf32>
    %fc2b = onnx.Constant dense<0.02> : tensor<3x4xf32>
    %zero = onnx.Constant dense<0> : tensor<1xi64>
    %big = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
    %one = onnx.Constant dense<1> : tensor<1xi64>
    %two = onnx.Constant dense<2> : tensor<1xi64>
    %lim = onnx.Constant dense<1.5> : tensor<f32>
    %nlim = onnx.Constant dense<-1.5> : tensor<f32>
    %onef = onnx.Constant dense<1.0> : tensor<f32>
    %alpha = onnx.Constant dense<1.702> : tensor<f32>
    %rep = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %kh = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %logits = onnx.Gemm %arg0, %w, %b {transB = 1 : i64} : (tensor<?x4xf32>, tensor<3x4xf32>, tensor<3xf32>) -> tensor<?x3xf32>
    %vals, %ids = onnx.TopK %logits, %two : (tensor<?x3xf32>, tensor<1xi64>) -> (tensor<?x2xf32>, tensor<?x2xi64>)
    %probs = onnx.Softmax %vals {axis = 1 : i64} : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %u0 = onnx.Unsqueeze %arg0, %one : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %e0 = onnx.Expand %u0, %rep : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %x = onnx.Reshape %e0, %flat : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %wf = onnx.Reshape %probs, %m1 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %idf = onnx.Reshape %ids, %m1 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %idc = onnx.Unsqueeze %idf, %m1 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %g1 = onnx.GatherND %fc1, %idc : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %g1b = onnx.GatherND %fc1b, %idc : (tensor<3x4xf32>, tensor<?x1xi64>) -> tensor<?x4xf32>
    %xu = onnx.Unsqueeze %x, %one : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %mm1 = onnx.MatMul %xu, %g1 : (tensor<?x1x4xf32>, tensor<?x4x4xf32>) -> tensor<?x1x4xf32>
    %s1 = onnx.Squeeze %mm1, %one : (tensor<?x1x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %h1 = onnx.Add %s1, %g1b : (tensor<?x4xf32>, tensor<?x4xf32>) -> tensor<?x4xf32>
    %v1 = onnx.Unsqueeze %h1, %one : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %v2 = onnx.Squeeze %v1, %one : (tensor<?x1x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %gate = onnx.Slice %v2, %zero, %big, %one, %two : (tensor<?x4xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?x2xf32>
    %gc = onnx.Clip %gate, %lim {operandSegmentSizes = array<i32: 1, 0, 1>} : (tensor<?x2xf32>, tensor<f32>) -> tensor<?x2xf32>
    %up = onnx.Slice %v2, %one, %big, %one, %two : (tensor<?x4xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?x2xf32>
    %uc = onnx.Clip %up, %nlim, %lim {operandSegmentSizes = array<i32: 1, 1, 1>} : (tensor<?x2xf32>, tensor<f32>, tensor<f32>) -> tensor<?x2xf32>
    %ga = onnx.Mul %gc, %alpha : (tensor<?x2xf32>, tensor<f32>) -> tensor<?x2xf32>
    %sg = onnx.Sigmoid %ga : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %glu = onnx.Mul %gc, %sg : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %up1 = onnx.Add %uc, %onef : (tensor<?x2xf32>, tensor<f32>) -> tensor<?x2xf32>
    %act = onnx.Mul %up1, %glu : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %g2 = onnx.GatherND %fc2, %idc : (tensor<3x2x4xf32>, tensor<?x1xi64>) -> tensor<?x2x4xf32>
    %g2b = onnx.GatherND %fc2b, %idc : (tensor<3x4xf32>, tensor<?x1xi64>) -> tensor<?x4xf32>
    %au = onnx.Unsqueeze %act, %one : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x1x2xf32>
    %mm2 = onnx.MatMul %au, %g2 : (tensor<?x1x2xf32>, tensor<?x2x4xf32>) -> tensor<?x1x4xf32>
    %s2 = onnx.Squeeze %mm2, %one : (tensor<?x1x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %h2 = onnx.Add %s2, %g2b : (tensor<?x4xf32>, tensor<?x4xf32>) -> tensor<?x4xf32>
    %wc = onnx.Unsqueeze %wf, %m1 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %y = onnx.Mul %h2, %wc : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %yk = onnx.Reshape %y, %kh {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %out = onnx.ReduceSum %yk, %one {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    return %out : tensor<?x4xf32>
}

// -----

// The gate half clamped, the up half not: no moe.sparse_moe activation says that.
// CHECK-LABEL: func.func @gpt_oss_up_not_clamped
// CHECK-NOT: moe.sparse_moe
func.func @gpt_oss_up_not_clamped(%arg0: tensor<?x4xf32>) -> tensor<?x4xf32> {
    %w = onnx.Constant dense<0.5> : tensor<3x4xf32>
    %b = onnx.Constant dense<0.1> : tensor<3xf32>
    %m1 = onnx.Constant dense<-1> : tensor<1xi64>
    %flat = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %fc1 = onnx.Constant dense<0.25> : tensor<3x4x4xf32>
    %fc1b = onnx.Constant dense<0.01> : tensor<3x4xf32>
    %fc2 = onnx.Constant dense<0.125> : tensor<3x2x4xf32>
    %fc2b = onnx.Constant dense<0.02> : tensor<3x4xf32>
    %zero = onnx.Constant dense<0> : tensor<1xi64>
    %big = onnx.Constant dense<9223372036854775807> : tensor<1xi64>
    %one = onnx.Constant dense<1> : tensor<1xi64>
    %two = onnx.Constant dense<2> : tensor<1xi64>
    %lim = onnx.Constant dense<1.5> : tensor<f32>
    %nlim = onnx.Constant dense<-1.5> : tensor<f32>
    %onef = onnx.Constant dense<1.0> : tensor<f32>
    %alpha = onnx.Constant dense<1.702> : tensor<f32>
    %rep = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %kh = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %logits = onnx.Gemm %arg0, %w, %b {transB = 1 : i64} : (tensor<?x4xf32>, tensor<3x4xf32>, tensor<3xf32>) -> tensor<?x3xf32>
    %vals, %ids = onnx.TopK %logits, %two : (tensor<?x3xf32>, tensor<1xi64>) -> (tensor<?x2xf32>, tensor<?x2xi64>)
    %probs = onnx.Softmax %vals {axis = 1 : i64} : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %u0 = onnx.Unsqueeze %arg0, %one : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %e0 = onnx.Expand %u0, %rep : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %x = onnx.Reshape %e0, %flat : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %wf = onnx.Reshape %probs, %m1 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %idf = onnx.Reshape %ids, %m1 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %idc = onnx.Unsqueeze %idf, %m1 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %g1 = onnx.GatherND %fc1, %idc : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %g1b = onnx.GatherND %fc1b, %idc : (tensor<3x4xf32>, tensor<?x1xi64>) -> tensor<?x4xf32>
    %xu = onnx.Unsqueeze %x, %one : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %mm1 = onnx.MatMul %xu, %g1 : (tensor<?x1x4xf32>, tensor<?x4x4xf32>) -> tensor<?x1x4xf32>
    %s1 = onnx.Squeeze %mm1, %one : (tensor<?x1x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %h1 = onnx.Add %s1, %g1b : (tensor<?x4xf32>, tensor<?x4xf32>) -> tensor<?x4xf32>
    %v1 = onnx.Unsqueeze %h1, %one : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %v2 = onnx.Squeeze %v1, %one : (tensor<?x1x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %gate = onnx.Slice %v2, %zero, %big, %one, %two : (tensor<?x4xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?x2xf32>
    %gc = onnx.Clip %gate, %lim {operandSegmentSizes = array<i32: 1, 0, 1>} : (tensor<?x2xf32>, tensor<f32>) -> tensor<?x2xf32>
    %up = onnx.Slice %v2, %one, %big, %one, %two : (tensor<?x4xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?x2xf32>
    %ga = onnx.Mul %gc, %alpha : (tensor<?x2xf32>, tensor<f32>) -> tensor<?x2xf32>
    %sg = onnx.Sigmoid %ga : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %glu = onnx.Mul %gc, %sg : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %up1 = onnx.Add %up, %onef : (tensor<?x2xf32>, tensor<f32>) -> tensor<?x2xf32>
    %act = onnx.Mul %up1, %glu : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %g2 = onnx.GatherND %fc2, %idc : (tensor<3x2x4xf32>, tensor<?x1xi64>) -> tensor<?x2x4xf32>
    %g2b = onnx.GatherND %fc2b, %idc : (tensor<3x4xf32>, tensor<?x1xi64>) -> tensor<?x4xf32>
    %au = onnx.Unsqueeze %act, %one : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x1x2xf32>
    %mm2 = onnx.MatMul %au, %g2 : (tensor<?x1x2xf32>, tensor<?x2x4xf32>) -> tensor<?x1x4xf32>
    %s2 = onnx.Squeeze %mm2, %one : (tensor<?x1x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %h2 = onnx.Add %s2, %g2b : (tensor<?x4xf32>, tensor<?x4xf32>) -> tensor<?x4xf32>
    %wc = onnx.Unsqueeze %wf, %m1 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %y = onnx.Mul %h2, %wc : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %yk = onnx.Reshape %y, %kh {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    // expected-remark @+1 {{MoE experts not raised: the gate half is clamped but the up half is not}}
    %out = onnx.ReduceSum %yk, %one {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    return %out : tensor<?x4xf32>
}

// -----

// Ernie-4.5 renormalises by Clip(sum, min = 1e-12): below the smallest sum of the top-2 of 3 softmax scores
// (2/3), so it never bites and the layer is renormalised.
// CHECK-LABEL: func.func @renorm_clip_inactive
// CHECK: moe.sparse_moe {{.*}}normalize = true
func.func @renorm_clip_inactive(%arg0: tensor<1x?x4xf32>) -> tensor<1x?x4xf32> {
    %0 = onnx.Constant dense<1.000000e+00> : tensor<3x4xf32>
    %1 = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %2 = onnx.Constant dense<-1> : tensor<1xi64>
    %3 = onnx.Constant dense<5.000000e-01> : tensor<3x4x4xf32>
    %4 = onnx.Constant dense<2.500000e-01> : tensor<3x4x2xf32>
    %5 = onnx.Constant dense<2> : tensor<1xi64>
    %6 = onnx.Constant dense<1> : tensor<1xi64>
    %7 = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %8 = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %9 = onnx.Constant dense<[1, -1, 4]> : tensor<3xi64>
    %10 = onnx.Reshape %arg0, %1 {allowzero = 1 : i64} : (tensor<1x?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %11 = onnx.Reshape %10, %1 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %12 = onnx.Gemm %11, %0 {transB = 1 : i64} : (tensor<?x4xf32>, tensor<3x4xf32>) -> tensor<?x3xf32>
    %13 = onnx.Softmax %12 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %Values, %Indices = onnx.TopK %13, %5 : (tensor<?x3xf32>, tensor<1xi64>) -> (tensor<?x2xf32>, tensor<?x2xi64>)
    %14 = onnx.ReduceSum %Values, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %clipmin = onnx.Constant dense<1.0e-12> : tensor<f32>
    %den = onnx.Clip %14, %clipmin {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x1xf32>, tensor<f32>) -> tensor<?x1xf32>
    %15 = onnx.Div %Values, %den : (tensor<?x2xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %16 = onnx.Unsqueeze %10, %6 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %17 = onnx.Expand %16, %7 : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %18 = onnx.Reshape %17, %1 : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %19 = onnx.Reshape %Indices, %2 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %20 = onnx.Unsqueeze %19, %2 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %21 = onnx.GatherND %3, %20 : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %22 = onnx.Unsqueeze %18, %2 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x4x1xf32>
    %23 = onnx.MatMul %21, %22 : (tensor<?x4x4xf32>, tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
    %24 = onnx.Squeeze %23, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %25:2 = onnx.Split %24 {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<?x4xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>)
    %26 = onnx.Sigmoid %25#0 : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %27 = onnx.Mul %25#0, %26 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %28 = onnx.Mul %27, %25#1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %29 = onnx.GatherND %4, %20 : (tensor<3x4x2xf32>, tensor<?x1xi64>) -> tensor<?x4x2xf32>
    %30 = onnx.Unsqueeze %28, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x2x1xf32>
    %31 = onnx.MatMul %29, %30 : (tensor<?x4x2xf32>, tensor<?x2x1xf32>) -> tensor<?x4x1xf32>
    %32 = onnx.Squeeze %31, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %33 = onnx.Reshape %15, %2 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %34 = onnx.Unsqueeze %33, %2 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %35 = onnx.Mul %32, %34 : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %36 = onnx.Reshape %35, %8 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %37 = onnx.ReduceSum %36, %6 {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %38 = onnx.Reshape %37, %9 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<1x?x4xf32>
    return %38 : tensor<1x?x4xf32>
}


// -----

// The same with min = 0.9, which a sum of two of three softmax scores can fall below: not raised.
// CHECK-LABEL: func.func @renorm_clip_reachable
// CHECK-NOT: moe.sparse_moe
func.func @renorm_clip_reachable(%arg0: tensor<1x?x4xf32>) -> tensor<1x?x4xf32> {
    %0 = onnx.Constant dense<1.000000e+00> : tensor<3x4xf32>
    %1 = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %2 = onnx.Constant dense<-1> : tensor<1xi64>
    %3 = onnx.Constant dense<5.000000e-01> : tensor<3x4x4xf32>
    %4 = onnx.Constant dense<2.500000e-01> : tensor<3x4x2xf32>
    %5 = onnx.Constant dense<2> : tensor<1xi64>
    %6 = onnx.Constant dense<1> : tensor<1xi64>
    %7 = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %8 = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %9 = onnx.Constant dense<[1, -1, 4]> : tensor<3xi64>
    %10 = onnx.Reshape %arg0, %1 {allowzero = 1 : i64} : (tensor<1x?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %11 = onnx.Reshape %10, %1 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %12 = onnx.Gemm %11, %0 {transB = 1 : i64} : (tensor<?x4xf32>, tensor<3x4xf32>) -> tensor<?x3xf32>
    %13 = onnx.Softmax %12 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %Values, %Indices = onnx.TopK %13, %5 : (tensor<?x3xf32>, tensor<1xi64>) -> (tensor<?x2xf32>, tensor<?x2xi64>)
    %14 = onnx.ReduceSum %Values, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %clipmin = onnx.Constant dense<0.9> : tensor<f32>
    %den = onnx.Clip %14, %clipmin {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x1xf32>, tensor<f32>) -> tensor<?x1xf32>
    %15 = onnx.Div %Values, %den : (tensor<?x2xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %16 = onnx.Unsqueeze %10, %6 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %17 = onnx.Expand %16, %7 : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %18 = onnx.Reshape %17, %1 : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %19 = onnx.Reshape %Indices, %2 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %20 = onnx.Unsqueeze %19, %2 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %21 = onnx.GatherND %3, %20 : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %22 = onnx.Unsqueeze %18, %2 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x4x1xf32>
    %23 = onnx.MatMul %21, %22 : (tensor<?x4x4xf32>, tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
    %24 = onnx.Squeeze %23, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %25:2 = onnx.Split %24 {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<?x4xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>)
    %26 = onnx.Sigmoid %25#0 : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %27 = onnx.Mul %25#0, %26 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %28 = onnx.Mul %27, %25#1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %29 = onnx.GatherND %4, %20 : (tensor<3x4x2xf32>, tensor<?x1xi64>) -> tensor<?x4x2xf32>
    %30 = onnx.Unsqueeze %28, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x2x1xf32>
    %31 = onnx.MatMul %29, %30 : (tensor<?x4x2xf32>, tensor<?x2x1xf32>) -> tensor<?x4x1xf32>
    %32 = onnx.Squeeze %31, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %33 = onnx.Reshape %15, %2 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %34 = onnx.Unsqueeze %33, %2 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %35 = onnx.Mul %32, %34 : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %36 = onnx.Reshape %35, %8 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    // expected-remark @+1 {{MoE experts not raised: the renormalisation's denominator is clamped at a minimum the sum can reach}}
    %37 = onnx.ReduceSum %36, %6 {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %38 = onnx.Reshape %37, %9 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<1x?x4xf32>
    return %38 : tensor<1x?x4xf32>
}


// -----

// A hand-written dense MoE: every expert (its own linear layers) on every token, weighted by column e of a
// routing matrix that is zero outside each token's top k (the top-k weights scattered into zeros).
// CHECK-LABEL: func.func @dense_scatter
// CHECK: moe.sparse_moe %arg0, %{{.*}}, fc1 %{{.*}}, fc2 %{{.*}} {activation = #moe.activation<relu>, k = 1 : i64, moe.source = "dense", router_kind = #moe.router<logits>}
// CHECK-SAME: (tensor<?x2xf32>, tensor<?x2xf32>, tensor<2x3x2xf32>, tensor<2x2x3xf32>) -> tensor<?x2xf32>
// CHECK-NOT: onnx.ScatterElements
// CHECK-NOT: onnx.Relu
func.func @dense_scatter(%x: tensor<?x2xf32>) -> tensor<?x2xf32> {
    %wr = onnx.Constant dense<[[1.0, -1.0], [0.5, 2.0]]> : tensor<2x2xf32>
    %one = onnx.Constant dense<1> : tensor<1xi64>
    %c0 = onnx.Constant dense<0> : tensor<1xi64>
    %c2 = onnx.Constant dense<2> : tensor<1xi64>
    %zero = onnx.Constant dense<0.0> : tensor<f32>
    %u0 = onnx.Constant dense<0.5> : tensor<3x2xf32>
    %d0 = onnx.Constant dense<0.25> : tensor<2x3xf32>
    %u1 = onnx.Constant dense<-0.5> : tensor<3x2xf32>
    %d1 = onnx.Constant dense<0.75> : tensor<2x3xf32>
    %logits = onnx.Gemm %x, %wr {transB = 1 : i64} : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
    %probs = onnx.Softmax %logits : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %vals, %ids = onnx.TopK %probs, %one : (tensor<?x2xf32>, tensor<1xi64>) -> (tensor<?x1xf32>, tensor<?x1xi64>)
    %shape = onnx.Shape %probs : (tensor<?x2xf32>) -> tensor<2xi64>
    %zeros = onnx.Expand %zero, %shape : (tensor<f32>, tensor<2xi64>) -> tensor<?x2xf32>
    %dense = onnx.ScatterElements %zeros, %ids, %vals {axis = 1 : i64} : (tensor<?x2xf32>, tensor<?x1xi64>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %col0 = onnx.Slice %dense, %c0, %one, %one, %one : (tensor<?x2xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?x1xf32>
    %h0 = onnx.Gemm %x, %u0 {transB = 1 : i64} : (tensor<?x2xf32>, tensor<3x2xf32>) -> tensor<?x3xf32>
    %a0 = onnx.Relu %h0 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %y0 = onnx.Gemm %a0, %d0 {transB = 1 : i64} : (tensor<?x3xf32>, tensor<2x3xf32>) -> tensor<?x2xf32>
    %t0 = onnx.Mul %col0, %y0 : (tensor<?x1xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %col1 = onnx.Slice %dense, %one, %c2, %one, %one : (tensor<?x2xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?x1xf32>
    %h1 = onnx.Gemm %x, %u1 {transB = 1 : i64} : (tensor<?x2xf32>, tensor<3x2xf32>) -> tensor<?x3xf32>
    %a1 = onnx.Relu %h1 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %y1 = onnx.Gemm %a1, %d1 {transB = 1 : i64} : (tensor<?x3xf32>, tensor<2x3xf32>) -> tensor<?x2xf32>
    %t1 = onnx.Mul %col1, %y1 : (tensor<?x1xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %out = onnx.Add %t0, %t1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    return %out : tensor<?x2xf32>
}

// -----

// Soft MoE: every expert weighted by the whole softmax, which is not zero outside a top k: not a sparse MoE.
// CHECK-LABEL: func.func @dense_soft
// CHECK-NOT: moe.sparse_moe
func.func @dense_soft(%x: tensor<?x2xf32>) -> tensor<?x2xf32> {
    %wr = onnx.Constant dense<[[1.0, -1.0], [0.5, 2.0]]> : tensor<2x2xf32>
    %one = onnx.Constant dense<1> : tensor<1xi64>
    %c0 = onnx.Constant dense<0> : tensor<1xi64>
    %c2 = onnx.Constant dense<2> : tensor<1xi64>
    %zero = onnx.Constant dense<0.0> : tensor<f32>
    %u0 = onnx.Constant dense<0.5> : tensor<3x2xf32>
    %d0 = onnx.Constant dense<0.25> : tensor<2x3xf32>
    %u1 = onnx.Constant dense<-0.5> : tensor<3x2xf32>
    %d1 = onnx.Constant dense<0.75> : tensor<2x3xf32>
    %logits = onnx.Gemm %x, %wr {transB = 1 : i64} : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
    %probs = onnx.Softmax %logits : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %col0 = onnx.Slice %probs, %c0, %one, %one, %one : (tensor<?x2xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?x1xf32>
    %h0 = onnx.Gemm %x, %u0 {transB = 1 : i64} : (tensor<?x2xf32>, tensor<3x2xf32>) -> tensor<?x3xf32>
    %a0 = onnx.Relu %h0 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %y0 = onnx.Gemm %a0, %d0 {transB = 1 : i64} : (tensor<?x3xf32>, tensor<2x3xf32>) -> tensor<?x2xf32>
    %t0 = onnx.Mul %col0, %y0 : (tensor<?x1xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %col1 = onnx.Slice %probs, %one, %c2, %one, %one : (tensor<?x2xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?x1xf32>
    %h1 = onnx.Gemm %x, %u1 {transB = 1 : i64} : (tensor<?x2xf32>, tensor<3x2xf32>) -> tensor<?x3xf32>
    %a1 = onnx.Relu %h1 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %y1 = onnx.Gemm %a1, %d1 {transB = 1 : i64} : (tensor<?x3xf32>, tensor<2x3xf32>) -> tensor<?x2xf32>
    %t1 = onnx.Mul %col1, %y1 : (tensor<?x1xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    // expected-remark @+1 {{MoE experts not raised: the experts are weighted by a routing matrix not known to be zero outside the top k (a ScatterElements of the top-k weights into zeros, or a one-hot sum)}}
    %out = onnx.Add %t0, %t1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    return %out : tensor<?x2xf32>
}

// -----

// Both experts weighted by column 0 of the routing matrix.
// CHECK-LABEL: func.func @dense_column_twice
// CHECK-NOT: moe.sparse_moe
func.func @dense_column_twice(%x: tensor<?x2xf32>) -> tensor<?x2xf32> {
    %wr = onnx.Constant dense<[[1.0, -1.0], [0.5, 2.0]]> : tensor<2x2xf32>
    %one = onnx.Constant dense<1> : tensor<1xi64>
    %c0 = onnx.Constant dense<0> : tensor<1xi64>
    %c2 = onnx.Constant dense<2> : tensor<1xi64>
    %zero = onnx.Constant dense<0.0> : tensor<f32>
    %u0 = onnx.Constant dense<0.5> : tensor<3x2xf32>
    %d0 = onnx.Constant dense<0.25> : tensor<2x3xf32>
    %u1 = onnx.Constant dense<-0.5> : tensor<3x2xf32>
    %d1 = onnx.Constant dense<0.75> : tensor<2x3xf32>
    %logits = onnx.Gemm %x, %wr {transB = 1 : i64} : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
    %probs = onnx.Softmax %logits : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %vals, %ids = onnx.TopK %probs, %one : (tensor<?x2xf32>, tensor<1xi64>) -> (tensor<?x1xf32>, tensor<?x1xi64>)
    %shape = onnx.Shape %probs : (tensor<?x2xf32>) -> tensor<2xi64>
    %zeros = onnx.Expand %zero, %shape : (tensor<f32>, tensor<2xi64>) -> tensor<?x2xf32>
    %dense = onnx.ScatterElements %zeros, %ids, %vals {axis = 1 : i64} : (tensor<?x2xf32>, tensor<?x1xi64>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %col0 = onnx.Slice %dense, %c0, %one, %one, %one : (tensor<?x2xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?x1xf32>
    %h0 = onnx.Gemm %x, %u0 {transB = 1 : i64} : (tensor<?x2xf32>, tensor<3x2xf32>) -> tensor<?x3xf32>
    %a0 = onnx.Relu %h0 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %y0 = onnx.Gemm %a0, %d0 {transB = 1 : i64} : (tensor<?x3xf32>, tensor<2x3xf32>) -> tensor<?x2xf32>
    %t0 = onnx.Mul %col0, %y0 : (tensor<?x1xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %col1 = onnx.Slice %dense, %c0, %one, %one, %one : (tensor<?x2xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<?x1xf32>
    %h1 = onnx.Gemm %x, %u1 {transB = 1 : i64} : (tensor<?x2xf32>, tensor<3x2xf32>) -> tensor<?x3xf32>
    %a1 = onnx.Relu %h1 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %y1 = onnx.Gemm %a1, %d1 {transB = 1 : i64} : (tensor<?x3xf32>, tensor<2x3xf32>) -> tensor<?x2xf32>
    %t1 = onnx.Mul %col1, %y1 : (tensor<?x1xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    // expected-remark @+1 {{MoE experts not raised: the dense sum's routing columns are not each of the 2 experts once}}
    %out = onnx.Add %t0, %t1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    return %out : tensor<?x2xf32>
}

// -----

// Llama-4: every expert on every token (batched matmuls over [E, in, out] weights), each token's input scaled
// by sigmoid of its top-1 logit scattered into -inf (zero for the experts not chosen). One op over
// x * sigmoid(top value), routed by the logits with a sigmoid gate renormalised over its one expert.
// CHECK-LABEL: func.func @llama4
// CHECK: %[[LOGITS:.+]] = onnx.Gemm
// CHECK: %[[V:.+]], %[[I:.+]] = onnx.TopK %[[LOGITS]]
// CHECK: %[[S:.+]] = onnx.Sigmoid %[[V]]
// CHECK: %[[X:.+]] = onnx.Mul %arg0, %[[S]]
// CHECK: moe.sparse_moe %[[X]], %[[LOGITS]], fc1 %{{.*}}, fc2 %{{.*}} {activation = #moe.activation<swiglu>, gate = #moe.gate<sigmoid>, k = 1 : i64, moe.source = "input-weighted (Llama-4)", normalize = true, router_kind = #moe.router<logits>}
// CHECK-SAME: (tensor<?x2xf32>, tensor<?x2xf32>, tensor<2x2x2xf32>, tensor<2x2x1xf32>) -> tensor<?x2xf32>
// CHECK-NOT: onnx.ScatterElements
// CHECK-NOT: onnx.MatMul
func.func @llama4(%x: tensor<?x2xf32>) -> tensor<?x2xf32> {
    %wr = onnx.Constant dense<[[1.0, -1.0], [0.5, 2.0]]> : tensor<2x2xf32>
    %k = onnx.Constant dense<1> : tensor<1xi64>
    %ninf = onnx.Constant dense<0xFF800000> : tensor<f32>
    %ones = onnx.Constant dense<[1, 1]> : tensor<2xi64>
    %reps = onnx.Constant dense<[2, 1]> : tensor<2xi64>
    %col = onnx.Constant dense<[-1, 1]> : tensor<2xi64>
    %ehx = onnx.Constant dense<[2, -1, 2]> : tensor<3xi64>
    %zero = onnx.Constant dense<0> : tensor<1xi64>
    %gu = onnx.Constant dense<0.5> : tensor<2x2x2xf32>
    %dn = onnx.Constant dense<0.25> : tensor<2x1x2xf32>
    %logits = onnx.Gemm %x, %wr {transB = 1 : i64} : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
    %vals, %ids = onnx.TopK %logits, %k {axis = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> (tensor<?x1xf32>, tensor<?x1xi64>)
    %shape = onnx.Shape %logits : (tensor<?x2xf32>) -> tensor<2xi64>
    %full = onnx.Expand %ninf, %shape : (tensor<f32>, tensor<2xi64>) -> tensor<?x2xf32>
    %sc = onnx.ScatterElements %full, %ids, %vals {axis = 1 : i64} : (tensor<?x2xf32>, tensor<?x1xi64>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %r = onnx.Sigmoid %sc : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %xe = onnx.Expand %x, %ones : (tensor<?x2xf32>, tensor<2xi64>) -> tensor<?x2xf32>
    %rep = onnx.Tile %xe, %reps : (tensor<?x2xf32>, tensor<2xi64>) -> tensor<?x2xf32>
    %rt = onnx.Transpose %r {perm = [1, 0]} : (tensor<?x2xf32>) -> tensor<2x?xf32>
    %rc = onnx.Reshape %rt, %col {allowzero = 1 : i64} : (tensor<2x?xf32>, tensor<2xi64>) -> tensor<?x1xf32>
    %in = onnx.Mul %rep, %rc : (tensor<?x2xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %in3 = onnx.Reshape %in, %ehx {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<3xi64>) -> tensor<2x?x2xf32>
    %h = onnx.MatMul %in3, %gu : (tensor<2x?x2xf32>, tensor<2x2x2xf32>) -> tensor<2x?x2xf32>
    %p:2 = onnx.Split %h {axis = 2 : i64, num_outputs = 2 : i64} : (tensor<2x?x2xf32>) -> (tensor<2x?x1xf32>, tensor<2x?x1xf32>)
    %sg = onnx.Sigmoid %p#0 : (tensor<2x?x1xf32>) -> tensor<2x?x1xf32>
    %silu = onnx.Mul %p#0, %sg : (tensor<2x?x1xf32>, tensor<2x?x1xf32>) -> tensor<2x?x1xf32>
    %a = onnx.Mul %p#1, %silu : (tensor<2x?x1xf32>, tensor<2x?x1xf32>) -> tensor<2x?x1xf32>
    %o = onnx.MatMul %a, %dn : (tensor<2x?x1xf32>, tensor<2x1x2xf32>) -> tensor<2x?x2xf32>
    %o3 = onnx.Reshape %o, %ehx : (tensor<2x?x2xf32>, tensor<3xi64>) -> tensor<2x?x2xf32>
    %out = onnx.ReduceSum %o3, %zero {keepdims = 0 : i64} : (tensor<2x?x2xf32>, tensor<1xi64>) -> tensor<?x2xf32>
    return %out : tensor<?x2xf32>
}

// -----

// The same with top-2: each chosen expert reads its input scaled by its own weight; not raised.
// CHECK-LABEL: func.func @llama4_top2
// CHECK-NOT: moe.sparse_moe
func.func @llama4_top2(%x: tensor<?x2xf32>) -> tensor<?x2xf32> {
    %wr = onnx.Constant dense<[[1.0, -1.0], [0.5, 2.0]]> : tensor<2x2xf32>
    %k = onnx.Constant dense<2> : tensor<1xi64>
    %ninf = onnx.Constant dense<0xFF800000> : tensor<f32>
    %ones = onnx.Constant dense<[1, 1]> : tensor<2xi64>
    %reps = onnx.Constant dense<[2, 1]> : tensor<2xi64>
    %col = onnx.Constant dense<[-1, 1]> : tensor<2xi64>
    %ehx = onnx.Constant dense<[2, -1, 2]> : tensor<3xi64>
    %zero = onnx.Constant dense<0> : tensor<1xi64>
    %gu = onnx.Constant dense<0.5> : tensor<2x2x2xf32>
    %dn = onnx.Constant dense<0.25> : tensor<2x1x2xf32>
    %logits = onnx.Gemm %x, %wr {transB = 1 : i64} : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
    %vals, %ids = onnx.TopK %logits, %k {axis = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> (tensor<?x2xf32>, tensor<?x2xi64>)
    %shape = onnx.Shape %logits : (tensor<?x2xf32>) -> tensor<2xi64>
    %full = onnx.Expand %ninf, %shape : (tensor<f32>, tensor<2xi64>) -> tensor<?x2xf32>
    %sc = onnx.ScatterElements %full, %ids, %vals {axis = 1 : i64} : (tensor<?x2xf32>, tensor<?x2xi64>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %r = onnx.Sigmoid %sc : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %xe = onnx.Expand %x, %ones : (tensor<?x2xf32>, tensor<2xi64>) -> tensor<?x2xf32>
    %rep = onnx.Tile %xe, %reps : (tensor<?x2xf32>, tensor<2xi64>) -> tensor<?x2xf32>
    %rt = onnx.Transpose %r {perm = [1, 0]} : (tensor<?x2xf32>) -> tensor<2x?xf32>
    %rc = onnx.Reshape %rt, %col {allowzero = 1 : i64} : (tensor<2x?xf32>, tensor<2xi64>) -> tensor<?x1xf32>
    %in = onnx.Mul %rep, %rc : (tensor<?x2xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %in3 = onnx.Reshape %in, %ehx {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<3xi64>) -> tensor<2x?x2xf32>
    %h = onnx.MatMul %in3, %gu : (tensor<2x?x2xf32>, tensor<2x2x2xf32>) -> tensor<2x?x2xf32>
    %p:2 = onnx.Split %h {axis = 2 : i64, num_outputs = 2 : i64} : (tensor<2x?x2xf32>) -> (tensor<2x?x1xf32>, tensor<2x?x1xf32>)
    %sg = onnx.Sigmoid %p#0 : (tensor<2x?x1xf32>) -> tensor<2x?x1xf32>
    %silu = onnx.Mul %p#0, %sg : (tensor<2x?x1xf32>, tensor<2x?x1xf32>) -> tensor<2x?x1xf32>
    %a = onnx.Mul %p#1, %silu : (tensor<2x?x1xf32>, tensor<2x?x1xf32>) -> tensor<2x?x1xf32>
    %o = onnx.MatMul %a, %dn : (tensor<2x?x1xf32>, tensor<2x1x2xf32>) -> tensor<2x?x2xf32>
    %o3 = onnx.Reshape %o, %ehx : (tensor<2x?x2xf32>, tensor<3xi64>) -> tensor<2x?x2xf32>
    // expected-remark @+1 {{MoE experts not raised: routing weights multiply the experts' inputs with k = 2 > 1, which moe.sparse_moe cannot express}}
    %out = onnx.ReduceSum %o3, %zero {keepdims = 0 : i64} : (tensor<2x?x2xf32>, tensor<1xi64>) -> tensor<?x2xf32>
    return %out : tensor<?x2xf32>
}

// -----

// PhiMoE's sparsemixer (dynamo export, inference): per slot the first ArgMax of the logits not yet taken,
// weighted by a softmax over the experts whose logit is within 0.4 (relative) of it; the second slot's input
// masks the first slot's expert with -inf.
// CHECK-LABEL: func.func @sparsemixer
// CHECK: moe.sparse_moe {{.*}}gate = #moe.gate<sparsemixer>, jitter_eps = 2.000000e-01 : f32, k = 2 : i64
// CHECK-NOT: onnx.ArgMax
func.func @sparsemixer(%arg0: tensor<1x?x4xf32>) -> tensor<1x?x4xf32> {
    %0 = onnx.Constant dense<1.000000e+00> : tensor<3x4xf32>
    %1 = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %2 = onnx.Constant dense<-1> : tensor<1xi64>
    %3 = onnx.Constant dense<5.000000e-01> : tensor<3x4x4xf32>
    %4 = onnx.Constant dense<2.500000e-01> : tensor<3x4x2xf32>
    %5 = onnx.Constant dense<2> : tensor<1xi64>
    %6 = onnx.Constant dense<1> : tensor<1xi64>
    %7 = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %8 = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %9 = onnx.Constant dense<[1, -1, 4]> : tensor<3xi64>
    %10 = onnx.Reshape %arg0, %1 {allowzero = 1 : i64} : (tensor<1x?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %11 = onnx.Reshape %10, %1 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %12 = onnx.Gemm %11, %0 {transB = 1 : i64} : (tensor<?x4xf32>, tensor<3x4xf32>) -> tensor<?x3xf32>
    %ninf = onnx.Constant dense<0xFF800000> : tensor<f32>
    %thr1 = onnx.Constant dense<0.4> : tensor<f32>
    %thr2 = onnx.Constant dense<0.4> : tensor<f32>
    %ab = onnx.Abs %12 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %m1 = onnx.ReduceMax %12, %2 : (tensor<?x3xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %i1 = onnx.ArgMax %12 {axis = -1 : i64} : (tensor<?x3xf32>) -> tensor<?x1xi64>
    %f1 = onnx.Max %ab, %m1 : (tensor<?x3xf32>, tensor<?x1xf32>) -> tensor<?x3xf32>
    %d1 = onnx.Sub %m1, %12 : (tensor<?x1xf32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %q1 = onnx.Div %d1, %f1 : (tensor<?x3xf32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %g1 = onnx.Greater %q1, %thr1 : (tensor<?x3xf32>, tensor<f32>) -> tensor<?x3xi1>
    %k1 = onnx.Where %g1, %ninf, %12 : (tensor<?x3xi1>, tensor<f32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %s1 = onnx.Softmax %k1 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %w1 = onnx.GatherElements %s1, %i1 {axis = -1 : i64} : (tensor<?x3xf32>, tensor<?x1xi64>) -> tensor<?x1xf32>
    %fill = onnx.Expand %ninf, %6 : (tensor<f32>, tensor<1xi64>) -> tensor<?x1xf32>
    %p2 = onnx.ScatterElements %12, %i1, %fill {axis = -1 : i64} : (tensor<?x3xf32>, tensor<?x1xi64>, tensor<?x1xf32>) -> tensor<?x3xf32>
    %m2 = onnx.ReduceMax %p2, %2 : (tensor<?x3xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %i2 = onnx.ArgMax %p2 {axis = -1 : i64} : (tensor<?x3xf32>) -> tensor<?x1xi64>
    %f2 = onnx.Max %ab, %m2 : (tensor<?x3xf32>, tensor<?x1xf32>) -> tensor<?x3xf32>
    %d2 = onnx.Sub %m2, %12 : (tensor<?x1xf32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %q2 = onnx.Div %d2, %f2 : (tensor<?x3xf32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %g2 = onnx.Greater %q2, %thr2 : (tensor<?x3xf32>, tensor<f32>) -> tensor<?x3xi1>
    %k2 = onnx.Where %g2, %ninf, %p2 : (tensor<?x3xi1>, tensor<f32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %s2 = onnx.Softmax %k2 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %w2 = onnx.GatherElements %s2, %i2 {axis = -1 : i64} : (tensor<?x3xf32>, tensor<?x1xi64>) -> tensor<?x1xf32>
    %15 = onnx.Concat %w1, %w2 {axis = -1 : i64} : (tensor<?x1xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %Indices = onnx.Concat %i1, %i2 {axis = -1 : i64} : (tensor<?x1xi64>, tensor<?x1xi64>) -> tensor<?x2xi64>
    %16 = onnx.Unsqueeze %10, %6 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %17 = onnx.Expand %16, %7 : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %18 = onnx.Reshape %17, %1 : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %19 = onnx.Reshape %Indices, %2 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %20 = onnx.Unsqueeze %19, %2 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %21 = onnx.GatherND %3, %20 : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %22 = onnx.Unsqueeze %18, %2 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x4x1xf32>
    %23 = onnx.MatMul %21, %22 : (tensor<?x4x4xf32>, tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
    %24 = onnx.Squeeze %23, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %25:2 = onnx.Split %24 {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<?x4xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>)
    %26 = onnx.Sigmoid %25#0 : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %27 = onnx.Mul %25#0, %26 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %28 = onnx.Mul %27, %25#1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %29 = onnx.GatherND %4, %20 : (tensor<3x4x2xf32>, tensor<?x1xi64>) -> tensor<?x4x2xf32>
    %30 = onnx.Unsqueeze %28, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x2x1xf32>
    %31 = onnx.MatMul %29, %30 : (tensor<?x4x2xf32>, tensor<?x2x1xf32>) -> tensor<?x4x1xf32>
    %32 = onnx.Squeeze %31, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %33 = onnx.Reshape %15, %2 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %34 = onnx.Unsqueeze %33, %2 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %35 = onnx.Mul %32, %34 : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %36 = onnx.Reshape %35, %8 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %37 = onnx.ReduceSum %36, %6 {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %38 = onnx.Reshape %37, %9 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<1x?x4xf32>
    return %38 : tensor<1x?x4xf32>
}


// -----

// The same with a different threshold in the second slot: not one sparsemixer.
// CHECK-LABEL: func.func @sparsemixer_thresholds_differ
// CHECK-NOT: moe.sparse_moe
func.func @sparsemixer_thresholds_differ(%arg0: tensor<1x?x4xf32>) -> tensor<1x?x4xf32> {
    %0 = onnx.Constant dense<1.000000e+00> : tensor<3x4xf32>
    %1 = onnx.Constant dense<[-1, 4]> : tensor<2xi64>
    %2 = onnx.Constant dense<-1> : tensor<1xi64>
    %3 = onnx.Constant dense<5.000000e-01> : tensor<3x4x4xf32>
    %4 = onnx.Constant dense<2.500000e-01> : tensor<3x4x2xf32>
    %5 = onnx.Constant dense<2> : tensor<1xi64>
    %6 = onnx.Constant dense<1> : tensor<1xi64>
    %7 = onnx.Constant dense<[1, 2, 1]> : tensor<3xi64>
    %8 = onnx.Constant dense<[-1, 2, 4]> : tensor<3xi64>
    %9 = onnx.Constant dense<[1, -1, 4]> : tensor<3xi64>
    %10 = onnx.Reshape %arg0, %1 {allowzero = 1 : i64} : (tensor<1x?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %11 = onnx.Reshape %10, %1 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %12 = onnx.Gemm %11, %0 {transB = 1 : i64} : (tensor<?x4xf32>, tensor<3x4xf32>) -> tensor<?x3xf32>
    %ninf = onnx.Constant dense<0xFF800000> : tensor<f32>
    %thr1 = onnx.Constant dense<0.4> : tensor<f32>
    %thr2 = onnx.Constant dense<0.2> : tensor<f32>
    %ab = onnx.Abs %12 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %m1 = onnx.ReduceMax %12, %2 : (tensor<?x3xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %i1 = onnx.ArgMax %12 {axis = -1 : i64} : (tensor<?x3xf32>) -> tensor<?x1xi64>
    %f1 = onnx.Max %ab, %m1 : (tensor<?x3xf32>, tensor<?x1xf32>) -> tensor<?x3xf32>
    %d1 = onnx.Sub %m1, %12 : (tensor<?x1xf32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %q1 = onnx.Div %d1, %f1 : (tensor<?x3xf32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %g1 = onnx.Greater %q1, %thr1 : (tensor<?x3xf32>, tensor<f32>) -> tensor<?x3xi1>
    %k1 = onnx.Where %g1, %ninf, %12 : (tensor<?x3xi1>, tensor<f32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %s1 = onnx.Softmax %k1 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %w1 = onnx.GatherElements %s1, %i1 {axis = -1 : i64} : (tensor<?x3xf32>, tensor<?x1xi64>) -> tensor<?x1xf32>
    %fill = onnx.Expand %ninf, %6 : (tensor<f32>, tensor<1xi64>) -> tensor<?x1xf32>
    %p2 = onnx.ScatterElements %12, %i1, %fill {axis = -1 : i64} : (tensor<?x3xf32>, tensor<?x1xi64>, tensor<?x1xf32>) -> tensor<?x3xf32>
    %m2 = onnx.ReduceMax %p2, %2 : (tensor<?x3xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %i2 = onnx.ArgMax %p2 {axis = -1 : i64} : (tensor<?x3xf32>) -> tensor<?x1xi64>
    %f2 = onnx.Max %ab, %m2 : (tensor<?x3xf32>, tensor<?x1xf32>) -> tensor<?x3xf32>
    %d2 = onnx.Sub %m2, %12 : (tensor<?x1xf32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %q2 = onnx.Div %d2, %f2 : (tensor<?x3xf32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %g2 = onnx.Greater %q2, %thr2 : (tensor<?x3xf32>, tensor<f32>) -> tensor<?x3xi1>
    %k2 = onnx.Where %g2, %ninf, %p2 : (tensor<?x3xi1>, tensor<f32>, tensor<?x3xf32>) -> tensor<?x3xf32>
    %s2 = onnx.Softmax %k2 : (tensor<?x3xf32>) -> tensor<?x3xf32>
    %w2 = onnx.GatherElements %s2, %i2 {axis = -1 : i64} : (tensor<?x3xf32>, tensor<?x1xi64>) -> tensor<?x1xf32>
    %15 = onnx.Concat %w1, %w2 {axis = -1 : i64} : (tensor<?x1xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %Indices = onnx.Concat %i1, %i2 {axis = -1 : i64} : (tensor<?x1xi64>, tensor<?x1xi64>) -> tensor<?x2xi64>
    %16 = onnx.Unsqueeze %10, %6 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x1x4xf32>
    %17 = onnx.Expand %16, %7 : (tensor<?x1x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    %18 = onnx.Reshape %17, %1 : (tensor<?x2x4xf32>, tensor<2xi64>) -> tensor<?x4xf32>
    %19 = onnx.Reshape %Indices, %2 {allowzero = 1 : i64} : (tensor<?x2xi64>, tensor<1xi64>) -> tensor<?xi64>
    %20 = onnx.Unsqueeze %19, %2 : (tensor<?xi64>, tensor<1xi64>) -> tensor<?x1xi64>
    %21 = onnx.GatherND %3, %20 : (tensor<3x4x4xf32>, tensor<?x1xi64>) -> tensor<?x4x4xf32>
    %22 = onnx.Unsqueeze %18, %2 : (tensor<?x4xf32>, tensor<1xi64>) -> tensor<?x4x1xf32>
    %23 = onnx.MatMul %21, %22 : (tensor<?x4x4xf32>, tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
    %24 = onnx.Squeeze %23, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %25:2 = onnx.Split %24 {axis = 1 : i64, num_outputs = 2 : i64} : (tensor<?x4xf32>) -> (tensor<?x2xf32>, tensor<?x2xf32>)
    %26 = onnx.Sigmoid %25#0 : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %27 = onnx.Mul %25#0, %26 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %28 = onnx.Mul %27, %25#1 : (tensor<?x2xf32>, tensor<?x2xf32>) -> tensor<?x2xf32>
    %29 = onnx.GatherND %4, %20 : (tensor<3x4x2xf32>, tensor<?x1xi64>) -> tensor<?x4x2xf32>
    %30 = onnx.Unsqueeze %28, %2 : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?x2x1xf32>
    %31 = onnx.MatMul %29, %30 : (tensor<?x4x2xf32>, tensor<?x2x1xf32>) -> tensor<?x4x1xf32>
    %32 = onnx.Squeeze %31, %2 : (tensor<?x4x1xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %33 = onnx.Reshape %15, %2 {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> tensor<?xf32>
    %34 = onnx.Unsqueeze %33, %2 : (tensor<?xf32>, tensor<1xi64>) -> tensor<?x1xf32>
    %35 = onnx.Mul %32, %34 : (tensor<?x4xf32>, tensor<?x1xf32>) -> tensor<?x4xf32>
    %36 = onnx.Reshape %35, %8 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<?x2x4xf32>
    // expected-remark @+1 {{MoE experts not raised: sparsemixer slots with different thresholds}}
    %37 = onnx.ReduceSum %36, %6 {keepdims = 0 : i64} : (tensor<?x2x4xf32>, tensor<1xi64>) -> tensor<?x4xf32>
    %38 = onnx.Reshape %37, %9 {allowzero = 1 : i64} : (tensor<?x4xf32>, tensor<3xi64>) -> tensor<1x?x4xf32>
    return %38 : tensor<1x?x4xf32>
}


// -----

// Every expert on every token, summed with no routing weight at all: not a MoE layer the op can be.
// CHECK-LABEL: func.func @all_experts_unweighted
// CHECK-NOT: moe.sparse_moe
func.func @all_experts_unweighted(%x: tensor<?x2xf32>) -> tensor<?x2xf32> {
    %wr = onnx.Constant dense<[[1.0, -1.0], [0.5, 2.0]]> : tensor<2x2xf32>
    %k = onnx.Constant dense<1> : tensor<1xi64>
    %ninf = onnx.Constant dense<0xFF800000> : tensor<f32>
    %ones = onnx.Constant dense<[1, 1]> : tensor<2xi64>
    %reps = onnx.Constant dense<[2, 1]> : tensor<2xi64>
    %col = onnx.Constant dense<[-1, 1]> : tensor<2xi64>
    %ehx = onnx.Constant dense<[2, -1, 2]> : tensor<3xi64>
    %zero = onnx.Constant dense<0> : tensor<1xi64>
    %gu = onnx.Constant dense<0.5> : tensor<2x2x2xf32>
    %dn = onnx.Constant dense<0.25> : tensor<2x1x2xf32>
    %logits = onnx.Gemm %x, %wr {transB = 1 : i64} : (tensor<?x2xf32>, tensor<2x2xf32>) -> tensor<?x2xf32>
    %vals, %ids = onnx.TopK %logits, %k {axis = 1 : i64} : (tensor<?x2xf32>, tensor<1xi64>) -> (tensor<?x1xf32>, tensor<?x1xi64>)
    %shape = onnx.Shape %logits : (tensor<?x2xf32>) -> tensor<2xi64>
    %full = onnx.Expand %ninf, %shape : (tensor<f32>, tensor<2xi64>) -> tensor<?x2xf32>
    %sc = onnx.ScatterElements %full, %ids, %vals {axis = 1 : i64} : (tensor<?x2xf32>, tensor<?x1xi64>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %r = onnx.Sigmoid %sc : (tensor<?x2xf32>) -> tensor<?x2xf32>
    %xe = onnx.Expand %x, %ones : (tensor<?x2xf32>, tensor<2xi64>) -> tensor<?x2xf32>
    %rep = onnx.Tile %xe, %reps : (tensor<?x2xf32>, tensor<2xi64>) -> tensor<?x2xf32>
    %rt = onnx.Transpose %r {perm = [1, 0]} : (tensor<?x2xf32>) -> tensor<2x?xf32>
    %rc = onnx.Reshape %rt, %col {allowzero = 1 : i64} : (tensor<2x?xf32>, tensor<2xi64>) -> tensor<?x1xf32>
    %in = onnx.Mul %rep, %rc : (tensor<?x2xf32>, tensor<?x1xf32>) -> tensor<?x2xf32>
    %in3 = onnx.Reshape %rep, %ehx {allowzero = 1 : i64} : (tensor<?x2xf32>, tensor<3xi64>) -> tensor<2x?x2xf32>
    %h = onnx.MatMul %in3, %gu : (tensor<2x?x2xf32>, tensor<2x2x2xf32>) -> tensor<2x?x2xf32>
    %p:2 = onnx.Split %h {axis = 2 : i64, num_outputs = 2 : i64} : (tensor<2x?x2xf32>) -> (tensor<2x?x1xf32>, tensor<2x?x1xf32>)
    %sg = onnx.Sigmoid %p#0 : (tensor<2x?x1xf32>) -> tensor<2x?x1xf32>
    %silu = onnx.Mul %p#0, %sg : (tensor<2x?x1xf32>, tensor<2x?x1xf32>) -> tensor<2x?x1xf32>
    %a = onnx.Mul %p#1, %silu : (tensor<2x?x1xf32>, tensor<2x?x1xf32>) -> tensor<2x?x1xf32>
    %o = onnx.MatMul %a, %dn : (tensor<2x?x1xf32>, tensor<2x1x2xf32>) -> tensor<2x?x2xf32>
    %o3 = onnx.Reshape %o, %ehx : (tensor<2x?x2xf32>, tensor<3xi64>) -> tensor<2x?x2xf32>
    // expected-remark @+1 {{MoE experts not raised: the experts' outputs are summed without routing weights}}
    %out = onnx.ReduceSum %o3, %zero {keepdims = 0 : i64} : (tensor<2x?x2xf32>, tensor<1xi64>) -> tensor<?x2xf32>
    return %out : tensor<?x2xf32>
}

