// moe-print-cost: per-token FLOPs and weight bytes, worked out by hand in the comments.
// RUN: moec-opt %s --split-input-file --moe-print-cost --verify-diagnostics -o /dev/null

// Mixtral-like: H=64, E=8, F=128, SwiGLU (fc1 has 2F rows), top-2, bf16 weights.
//   router 2*64*8 = 1024; experts 2 * (2*64*128*2 + 2*64*128) = 98304; total 99328
//   bytes per expert (256*64 + 64*128) * 2 = 49152; per token 2x = 98304; all 8x = 393216
func.func @mixtral(%x: tensor<?x64xf32>, %r: tensor<64x8xf32>, %w1: tensor<8x256x64xbf16>, %w2: tensor<8x64x128xbf16>) -> tensor<?x64xf32> {
  // expected-remark @+1 {{E=8 zero_experts=0 k=2 H=64 F=128 activation=swiglu active_F=128: per token <= 99328 FLOPs (1024 router, 0 predictor, 98304 experts), <= 98304 weight bytes; all expert weights 393216 bytes}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 2, normalize = true, activation = #moe.activation<swiglu>}
     : (tensor<?x64xf32>, tensor<64x8xf32>, tensor<8x256x64xbf16>, tensor<8x64x128xbf16>) -> tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

// MoE++ with a predictor: H=256, E=128 (+1 zero), F=512, keep=51, R=64, SwiGLU, top-1, f32.
//   router 2*256*129 = 66048; predictor 2*256*64 + 2*64*512 = 98304; experts 2*256*51*2 + 2*256*51 = 78336
//   bytes per expert (51*2*256 + 256*51)*4 + (256*64 + 64*512)*4 = 156672 + 196608 = 353280
//   all experts 128 * (1024*256 + 256*512) * 4 = 201326592
func.func @moepp(%x: tensor<?x256xf32>, %r: tensor<256x129xf32>, %w1: tensor<128x1024x256xf32>,
                 %w2: tensor<128x256x512xf32>, %pa: tensor<128x256x64xf32>, %pb: tensor<128x64x512xf32>) -> tensor<?x256xf32> {
  // expected-remark @+1 {{E=128 zero_experts=1 k=1 H=256 F=512 activation=swiglu active_F=51: per token <= 242688 FLOPs (66048 router, 98304 predictor, 78336 experts), <= 353280 weight bytes; all expert weights 201326592 bytes}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 predictor(%pa, %pb) {k = 1, zero_experts = 1, keep = 51, activation = #moe.activation<swiglu>}
     : (tensor<?x256xf32>, tensor<256x129xf32>, tensor<128x1024x256xf32>, tensor<128x256x512xf32>,
        tensor<128x256x64xf32>, tensor<128x64x512xf32>) -> tensor<?x256xf32>
  return %y : tensor<?x256xf32>
}

// -----

// QMoE int4: H=64, E=4, F=128, SiLU, top-1, logits router (no router FLOPs).
//   experts 2*64*128 + 2*64*128 = 32768
//   bytes per expert: fc1 128*64/2 = 4096 + scales 128 rows * 2 blocks * 2 B = 512;
//                     fc2 64*128/2 = 4096 + scales 64 rows * 2 B = 128  -> 8832; all 4x = 35328
func.func @qmoe_int4(%x: tensor<?x64xbf16>, %logits: tensor<?x4xbf16>, %w1: tensor<4x128x32xui8>, %s1: tensor<4x128x2xbf16>,
                     %w2: tensor<4x64x64xui8>, %s2: tensor<4x64xbf16>) -> tensor<?x64xbf16> {
  // expected-remark @+1 {{E=4 zero_experts=0 k=1 H=64 F=128 activation=silu active_F=128: per token <= 32768 FLOPs (0 router, 0 predictor, 32768 experts), <= 8832 weight bytes; all expert weights 35328 bytes}}
  %y = moe.sparse_moe %x, %logits, fc1 %w1 fc1_scales %s1, fc2 %w2 fc2_scales %s2
       {k = 1, router_kind = #moe.router<logits>, activation = #moe.activation<silu>,
        fc1_quant = #moe.weight_quant<bits = 4, block_size = 32>, fc2_quant = #moe.weight_quant<bits = 4>}
     : (tensor<?x64xbf16>, tensor<?x4xbf16>, tensor<4x128x32xui8>, tensor<4x128x2xbf16>, tensor<4x64x64xui8>,
        tensor<4x64xbf16>) -> tensor<?x64xbf16>
  return %y : tensor<?x64xbf16>
}

// -----

// A constant mask keeping 2 and 3 of 4 dims: cost uses the larger, 3. H=8, E=2, ReLU, f32, top-1.
//   router 2*8*2 = 32; experts 2*8*3 + 2*8*3 = 96; bytes (3*8 + 8*3)*4 = 192; all 2 * (4*8 + 8*4) * 4 = 512
func.func @static_mask(%x: tensor<?x8xf32>, %r: tensor<8x2xf32>, %w1: tensor<2x4x8xf32>, %w2: tensor<2x8x4xf32>) -> tensor<?x8xf32> {
  %m = arith.constant dense<[[1, 1, 0, 0], [1, 1, 1, 0]]> : tensor<2x4xi8>
  // expected-remark @+1 {{E=2 zero_experts=0 k=1 H=8 F=4 activation=relu active_F=3: per token <= 128 FLOPs (32 router, 0 predictor, 96 experts), <= 192 weight bytes; all expert weights 512 bytes}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 mask %m {k = 1, activation = #moe.activation<relu>}
     : (tensor<?x8xf32>, tensor<8x2xf32>, tensor<2x4x8xf32>, tensor<2x8x4xf32>, tensor<2x4xi8>) -> tensor<?x8xf32>
  return %y : tensor<?x8xf32>
}

// -----

func.func @dynamic(%x: tensor<?x?xf32>, %r: tensor<?x?xf32>, %w1: tensor<?x?x?xf32>, %w2: tensor<?x?x?xf32>) -> tensor<?x?xf32> {
  // expected-remark @+1 {{E=? zero_experts=0 k=2 H=? F=? activation=gelu: cost unknown (dynamic weight shapes)}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 2, activation = #moe.activation<gelu>}
     : (tensor<?x?xf32>, tensor<?x?xf32>, tensor<?x?x?xf32>, tensor<?x?x?xf32>) -> tensor<?x?xf32>
  return %y : tensor<?x?xf32>
}

// -----

// A shared expert (SwiGLU, Fs = 3, H = 4, with a gate) adds 2*4*6 + 2*4*3 + 2*4 = 80 FLOPs and
// (6*4 + 4*3 + 4) * 4 = 160 bytes per token to the routed part (k = 1 of 2 experts, F = 2: 2*4*4 + 2*4*2 = 48
// FLOPs, (4*4 + 4*2) * 4 = 96 bytes), and no router matmul (precomputed logits).
func.func @shared(%x: tensor<?x4xf32>, %l: tensor<?x2xf32>, %w1: tensor<2x4x4xf32>, %w2: tensor<2x4x2xf32>,
                  %s1: tensor<6x4xf32>, %s2: tensor<4x3xf32>, %g: tensor<4xf32>) -> tensor<?x4xf32> {
  // expected-remark @+1 {{E=2 zero_experts=0 k=1 H=4 F=2 activation=swiglu active_F=2: per token <= 128 FLOPs (0 router, 0 predictor, 48 experts, 80 shared expert), <= 256 weight bytes; all expert weights 352 bytes}}
  %y = moe.sparse_moe %x, %l, fc1 %w1, fc2 %w2 shared(%s1, %s2) shared_gate %g
       {k = 1, router_kind = #moe.router<logits>, activation = #moe.activation<swiglu>}
     : (tensor<?x4xf32>, tensor<?x2xf32>, tensor<2x4x4xf32>, tensor<2x4x2xf32>, tensor<6x4xf32>, tensor<4x3xf32>,
        tensor<4xf32>) -> tensor<?x4xf32>
  return %y : tensor<?x4xf32>
}

// -----

// Storage on the op decides the bytes: f32 experts stored int4 (0.5 byte + one f16 scale per 32 = 0.5625 byte
// a weight). H=64, E=4, F=32, relu, top-1: experts 2 * (2*64*32) = 8192 FLOPs, router 2*64*4 = 512;
//   bytes per expert (32*64 + 64*32) * 0.5625 = 2304; all 4x = 9216.
// A linear layer K=64, N=32, int8 blocks of 32 with f16 scales (1 + 2/32 = 1.0625 bytes a weight) with a
// bias: 2*64*32 = 4096 FLOPs a row; 64*32*1.0625 + 32*4 = 2304 bytes.
func.func @stored(%x: tensor<?x64xf32>, %r: tensor<64x4xf32>, %w1: tensor<4x32x64xf32>, %w2: tensor<4x64x32xf32>,
                  %w: tensor<64x32xf32>, %b: tensor<32xf32>) -> tensor<?x32xf32> {
  // expected-remark @+1 {{E=4 zero_experts=0 k=1 H=64 F=32 activation=relu active_F=32: per token <= 8704 FLOPs (512 router, 0 predictor, 8192 experts), <= 2304 weight bytes; all expert weights 9216 bytes}}
  %y = moe.sparse_moe %x, %r, fc1 %w1, fc2 %w2 {k = 1, activation = #moe.activation<relu>, storage = #moe.storage<int4>}
     : (tensor<?x64xf32>, tensor<64x4xf32>, tensor<4x32x64xf32>, tensor<4x64x32xf32>) -> tensor<?x64xf32>
  // expected-remark @+1 {{linear K=64 N=32 storage=int8: per row 4096 FLOPs, 2304 weight bytes as stored (read once per call)}}
  %z = moe.linear %y, %w bias %b {storage = #moe.storage<int8>} : (tensor<?x64xf32>, tensor<64x32xf32>, tensor<32xf32>) -> tensor<?x32xf32>
  return %z : tensor<?x32xf32>
}
