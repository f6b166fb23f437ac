/*===- moert_kernel_abi.h - the C ABI between moert and generated CPU code --===*
 *
 * Generated code (one shared object per artifact, built by `moec compile` from kernels/cpu/) exports, per
 * fused MoE dispatch `i`:
 *
 *   int    moert_dispatch_<i>(const moert_moe_args *args);               0 on success
 *   size_t moert_dispatch_<i>_scratch(int64_t tokens, int threads);      scratch bytes one call needs
 *   uint64_t moert_dispatch_<i>_weight_bytes(int slot);                  bytes each weight slot must hold
 *   int64_t  moert_dispatch_<i>_dims(int which);                         0: H, 1: N (router columns),
 *                                                                        2: E (experts with weights)
 *
 * per linear dispatch `j` (kernels/cpu/linear.h):
 *
 *   int      moert_linear_<j>(const moert_linear_args *args);            0 on success
 *   uint64_t moert_linear_<j>_weight_bytes(int slot);                    bytes each weight slot must hold
 *   int64_t  moert_linear_<j>_dims(int which);                           0: K (input features), 1: N
 *                                                                        (output columns), 2: outputs,
 *                                                                        3 + i: output i's columns
 *   size_t   moert_linear_<j>_scratch(int64_t rows, int threads);        scratch bytes (may be 0)
 *
 * per attention dispatch `j` (kernels/cpu/attention.h):
 *
 *   int      moert_attention_<j>(const moert_attention_args *args);      0 on success
 *   int64_t  moert_attention_<j>_dims(int which);                        0: HQ, 1: HKV, 2: DK, 3: DV
 *   size_t   moert_attention_<j>_scratch(int64_t batch, int64_t q_len, int64_t kv_len, int threads);
 *
 * and `moert_kernel_abi_version()`. The runtime owns threads and memory: it passes a parallel-for and a
 * scratch buffer; generated code allocates nothing and never calls back into libmoert by symbol.
 *
 *===----------------------------------------------------------------------===*/
#ifndef MOERT_KERNEL_ABI_H
#define MOERT_KERNEL_ABI_H

#ifndef MOERT_GPU_DEVICE_CODE /* the GPU kernels include this header too, with their own integer types */
#include <stddef.h>
#include <stdint.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define MOERT_KERNEL_ABI_VERSION 11

/* Runs fn(ctx, i) for i in [0, n) on the runtime's threads; returns when all are done. `thread` is the
 * index of the worker running the call, in [0, threads). */
typedef void (*moert_task_fn)(void *ctx, int64_t i, int thread);
typedef struct moert_exec {
  void (*parallel_for)(void *pool, int64_t n, void *ctx, moert_task_fn fn);
  void *pool;
  int threads;
} moert_exec;

/* Weight slots of a sparse MoE dispatch (pointers into the artifact's 64-byte-aligned weight sections). */
enum moert_moe_slot {
  MOERT_FC1 = 0,          /* [E][F][2][H] gated (gate, up rows per hidden dim) or [E][F][H]; f32, bf16, fp16,
                             int8, or int4 (two per byte along H, low nibble first, zero point 8); with
                             C::PANELS (CPU targets: f32 / bf16 / fp16 experts, or int8 / int4 ones with
                             int8 activations, where the shapes allow, see codegen) each expert's fc1 is
                             instead a linear layer's weights (K = H, N = F * G) in MOERT_LIN_W's panel layout,
                             panel (f / MOERT_LINEAR_NR) * G + part holding that part of MOERT_LINEAR_NR dims */
  MOERT_FC2 = 1,          /* [E][F][H]: fc2 transposed, so hidden dim f's column is one row; with C::PANELS
                             each expert's fc2 is instead a linear layer's weights (K = F dims, N = H columns)
                             in MOERT_LIN_W's panel layout                                                      */
  MOERT_ROUTER = 2,       /* [N][H]: router weights transposed (router_kind = linear)               */
  MOERT_ROUTER_BIAS = 3,  /* [N]                                                                    */
  MOERT_SEL_BIAS = 4,     /* [N]                                                                    */
  MOERT_FC1_BIAS = 5,     /* [E][F][2] or [E][F]                                                     */
  MOERT_FC2_BIAS = 6,     /* [E][H]                                                                 */
  MOERT_MASK = 7,         /* [E][F] uint8, nonzero = keep                                            */
  MOERT_PRED_A = 8,       /* [E][R][H]: pred_a transposed                                            */
  MOERT_PRED_B = 9,       /* [E][R][F]                                                               */
  MOERT_NORM_W = 10,      /* [H]                                                                    */
  MOERT_NORM_B = 11,      /* [H]                                                                    */
  MOERT_SHARED1 = 12,     /* [Fs][2][H] or [Fs][H]                                                   */
  MOERT_SHARED2 = 13,     /* [Fs][H]: shared_fc2 transposed                                          */
  MOERT_SHARED_GATE = 14, /* [H]                                                                    */
  MOERT_FC1_SCALES = 15,  /* quantised fc1: [E][F][G][ceil(H / QBLOCK1)], one per block of a row: f16
                             with C::SCALE16 (moec quantised them, MOERT_QSCALE_BYTES), else f32 (QMoE);
                             C::PANELS: [E] of MOERT_LIN_SCALES' [NP][KB][NR], the same values        */
  MOERT_FC2_SCALES = 16,  /* quantised fc2: [E][ceil(F / QBLOCK2)][H], one per column per row block
                             (C::PANELS: [E] of MOERT_LIN_SCALES' [NP][KB][NR], the same values);
                             f16 with C::SCALE16, else f32                                             */
  MOERT_SHARED1_SCALES = 17, /* as FC1_SCALES for the shared expert (Fs dims)                        */
  MOERT_SHARED2_SCALES = 18, /* as FC2_SCALES for the shared expert                                  */
  MOERT_MOE_SLOTS = 19
};

/* The activation between an expert's up and down projections and the norm before routing (a MoE dispatch's
 * C::ACT and C::NORM, CPU and GPU kernels alike; the IR's #moe.activation / #moe.norm values, checked by
 * codegen). Gated activations (SWIGLU, GEGLU) read two fc1 rows per hidden dim. */
enum moert_activation {
  MOERT_ACT_IDENTITY = 0,
  MOERT_ACT_RELU = 1,
  MOERT_ACT_GELU = 2, /* erf GELU */
  MOERT_ACT_SILU = 3,
  MOERT_ACT_SWIGLU = 4,
  MOERT_ACT_GEGLU = 5,
  MOERT_ACT_GELU_TANH = 6
};
enum moert_norm { MOERT_NORM_NONE = 0, MOERT_NORM_RMS = 1, MOERT_NORM_LAYER = 2 };

/* What one call of moert_dispatch_<i> computes (moert_moe_args.phase). Expert parallelism runs a layer as
 * ROUTE on each rank's own tokens, the routed experts on the ranks that hold them (moert_dispatch_<i>_rows on
 * the rows each rank received), then SHARED and COMBINE back on the tokens' rank. */
enum moert_moe_phase {
  MOERT_MOE_WHOLE = 0, /* the whole layer                                                                   */
  MOERT_MOE_ROUTE = 1, /* the norm and routing only: routes_out / route_weights_out [T][K] (expert ids in
                          0..N-1, ids >= E zero experts; the weights as the experts' outputs are scaled by)
                          and normed_out [T][H] (the rows the experts read: the normalised input, or the
                          input). The scratch keeps what SHARED and COMBINE need: pass it, and the same
                          tokens, to those calls */
  MOERT_MOE_COMBINE = 2, /* after SHARED: output = residual + each routed slot's result (slot_results +
                            slot_index[t * K + s] * H: the expert's output times its weight; skipped for a
                            zero expert) in slot order + the shared expert's */
  MOERT_MOE_SHARED = 3   /* after ROUTE: the shared expert's outputs, into the scratch (nothing without one),
                            while the routed rows are away */
};

typedef struct moert_moe_args {
  int64_t tokens;                        /* T                                                      */
  const float *input;                    /* [T][H]                                                 */
  const float *logits;                   /* [T][N] when router_kind = logits, else NULL            */
  const float *residual;                 /* [T][H] or NULL                                         */
  float *output;                         /* [T][H]                                                 */
  const void *weights[MOERT_MOE_SLOTS];  /* NULL where the layer has no such operand               */
  void *scratch;                         /* moert_dispatch_<i>_scratch(tokens, threads) bytes, 64-aligned */
  const moert_exec *exec;
  uint8_t *touched; /* [E] or NULL: set to 1 for each expert whose weights the call read
                       (the runtime then checks those experts' checksums)    */
  int32_t phase;    /* a moert_moe_phase (0: the whole layer)                                         */
  int32_t *routes_out;        /* ROUTE: [T][K]                                                        */
  float *route_weights_out;   /* ROUTE: [T][K]                                                        */
  float *normed_out;          /* ROUTE: [T][H]                                                        */
  const float *slot_results;  /* COMBINE: rows of H                                                   */
  const int64_t *slot_index;  /* COMBINE: [T][K] row of slot_results per slot (-1: a zero expert)     */
  const int32_t *routes;      /* moert_dispatch_<i>_rows: [T] each row's expert, in 0..E-1             */
  const float *route_weights; /* moert_dispatch_<i>_rows: [T] each row's routing weight: output row t =
                                 route_weights[t] * (expert(input row t) + fc2 bias)                    */
} moert_moe_args;
/* Slots whose sections hold one equal part per expert, expert e's the e-th (checksummed per expert). */
#define MOERT_MOE_SLOT_PER_EXPERT(slot)                                                                      \
  ((slot) == MOERT_FC1 || (slot) == MOERT_FC2 || (slot) == MOERT_FC1_BIAS || (slot) == MOERT_FC2_BIAS ||     \
   (slot) == MOERT_MASK || (slot) == MOERT_PRED_A || (slot) == MOERT_PRED_B || (slot) == MOERT_FC1_SCALES || \
   (slot) == MOERT_FC2_SCALES)

typedef int (*moert_moe_fn)(const moert_moe_args *args);

/* A linear dispatch: output[M][N] = norm(input[M][K]) . W[K][N] (+ bias) (+ residual), M = the rows of the
 * call; norm (C::NORM) is the identity or the RMS / layer norm of each row (as a MoE dispatch's C::NORM).
 * W is packed in panels of MOERT_LINEAR_NR output columns (the last one zero-padded), K-major inside a panel,
 * so a micro-kernel reads one panel row (NR weights of one input feature) per step. NP = ceil(N / NR),
 * KB = ceil(K / QBLOCK) quantisation blocks along K. */
#define MOERT_LINEAR_NR 16
/* Bytes of one panel of plain weights (MOERT_LIN_W) over K features, `elem` bytes a weight; `pairs`: bf16,
 * stored as feature pairs (K rounded up to even). A constant expression for the kernels' configs. */
#define MOERT_LIN_PLAIN_PANEL_BYTES(K, elem, pairs)                                                          \
  ((int64_t)((pairs) ? ((K) + 1) / 2 * 2 : (K)) * MOERT_LINEAR_NR * (int64_t)(elem))

/* How a dispatch stores its weights (the IR's #moe.storage, codegen's packing and the kernels' configs all
 * use these values). Quantised storage is weight-only: integer codes with a scale per block (f16 where moec
 * quantised them, MOERT_QSCALE_BYTES; imported codes keep their f32 scales). */
enum moert_storage {
  MOERT_STORAGE_F32 = 0,
  MOERT_STORAGE_BF16 = 1, /* the upper half of an f32, rounded to nearest even */
  MOERT_STORAGE_F16 = 2,  /* IEEE half, rounded to nearest even */
  MOERT_STORAGE_INT8 = 3,
  MOERT_STORAGE_INT4 = 4
};
/* An f32 value as MOERT_STORAGE_BF16 / _F16 hold it (rounded to nearest even; a NaN stays a quiet NaN, its
 * payload dropped for f16), in integer arithmetic only: one definition for libmoert's host code (Cast,
 * narrow KV caches) and the GPU kernels (a session's cache appended on the device), so both store the same
 * bits. */
static inline uint16_t moert_f32_to_bf16(float f) {
  union {
    float f;
    uint32_t u;
  } w;
  w.f = f;
  /* both results, then a select: no branch (a divergent one on a GPU: the GEMMs stage values through it) */
  const uint16_t nan = (uint16_t)((w.u >> 16) | 0x40u);
  const uint16_t rounded = (uint16_t)((w.u + 0x7fffu + ((w.u >> 16) & 1u)) >> 16);
  return (w.u & 0x7fffffffu) > 0x7f800000u ? nan : rounded;
}
static inline uint16_t moert_f32_to_f16(float f) {
  union {
    float f;
    uint32_t u;
  } w;
  w.f = f;
  const uint32_t sign = (w.u >> 16) & 0x8000u, ax = w.u & 0x7fffffffu;
  if (ax >= 0x7f800000u) /* inf or NaN */
    return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  if (ax >= 0x477ff000u) /* rounds to 65520 or more: inf */
    return (uint16_t)(sign | 0x7c00u);
  if (ax < 0x38800000u) { /* a subnormal half (or zero): the value in units of 2^-24, rounded */
    if (ax < 0x33000000u) /* below 2^-25 (2^-25 itself ties to 0) */
      return (uint16_t)sign;
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u, shift = 126u - (ax >> 23); /* 14 .. 24 */
    const uint32_t r = m >> shift, rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    return (uint16_t)(sign | (r + (rest > half || (rest == half && (r & 1u)) ? 1u : 0u)));
  }
  uint32_t h = (((ax >> 23) - 127u + 15u) << 10) | ((ax & 0x7fffffu) >> 13);
  const uint32_t rest = ax & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
    ++h; /* a carry into the exponent is the next binade (or inf), as it should be */
  return (uint16_t)(sign | h);
}
/* Input features per scale of expert weights stored int8/int4 by moec (fc1 rows; fc2 column blocks). */
#define MOERT_EXPERT_QBLOCK 32
enum moert_linear_slot {
  MOERT_LIN_W = 0, /* f32 / fp16: [NP][K][NR]. bf16: [NP][KP][NR] 32-bit feature pairs (KP = ceil(K / 2)):
                      features 2q (low half) and 2q + 1 (high half, zero past K) of a column in one lane,
                      the operand order of a bf16 pair product (vdpbf16ps); widening a lane is a shift and a
                      mask, no permute. int8/int4: [NP][KG][NR][4] bytes, a column's
                      features in groups of GK (4 for int8, 8 for int4; KG = ceil(K / GK), the last group
                      zero-padded) of 4 bytes: int8 feature GK g + q is byte q (a signed code); int4 feature
                      GK g + q (q < 4) is byte q's low nibble and GK g + 4 + q its high one (unsigned codes;
                      zero point 8 without offsets)                                               */
  MOERT_LIN_SCALES = 1,  /* quantised: [NP][KB][NR] f32, one per column per block of QBLOCK input features;
                            f16 with C::SCALE16 (the layers moec quantises itself, MOERT_QSCALE_BYTES) */
  MOERT_LIN_OFFSETS = 2, /* quantised with zero points: [NP][KB][NR] f32; w = code * scale + offset        */
  MOERT_LIN_BIAS = 3,    /* [NP * NR] f32 (zero-padded)                                                    */
  MOERT_LIN_NORM_W = 4,  /* [K] f32: the norm in front of the layer (C::NORM, a moert_norm), its weight  */
  MOERT_LIN_NORM_B = 5, /* [K] f32: a layer norm's bias                                                     */
  MOERT_LIN_SLOTS = 6
};
/* int8/int4 weights compiled with int8 activations (moec --activations=int8) multiply integers: each input
 * row is first rounded to int8 per block of MOERT_INT8_ACT_BLOCK features (or of QBLOCK when that is not a
 * multiple of it): q = round-half-even(x * (127 / max|x|)), x ~ q * max|x| / 127. The result is then sum_k
 * w[k][n] * x~[k] with exact integer sums per block and f32 across blocks, as ggml computes Q8_0 x Q4_0 /
 * Q8_0, whatever the number of rows. Without it inputs are multiplied as they are. In a MoE dispatch with
 * C::PANELS every expert rounds its tokens (fc1's input) and its fc2 input (routing weight x activation,
 * per block of 32 dims counted from dim 0, dims not kept 0), whatever its token count; without panels
 * (a GPU target, or shapes that do not allow them) an expert computing fewer than 16 tokens of a call (a
 * token tile below a GEMM's) rounds its tokens only, and bigger tiles multiply f32. */
/* bf16 weights compiled with bf16 activations (moec --activations=bf16, C::BF16_ACT) multiply bf16 pairs:
 * a linear dispatch called with more than kGemmMR (6) rows, and a MoE dispatch's experts computing at least
 * 16 tokens of a call (GEMM tiles; the experts stored in panels, C::PANELS), round each input (the tokens;
 * fc2's input, routing weight x activation) to bf16 as moert_f32_to_bf16 does and sum products of bf16
 * values in f32: sum_k w[k][n] * bf16(x[k]), two products per step (AVX512-BF16's vdpbf16ps; elsewhere the
 * same sums by f32 FMAs). Fewer rows (decode) take the inputs as they are. An attention dispatch compiled
 * so (C::BF16_ACT, an even key head dim) and called over MOERT_STORAGE_BF16 caches rounds each query to bf16
 * for its scores and each softmax term exp(score - running max) to bf16 for its sum of values (the
 * denominator sums the f32 terms), decode and prefill alike; over other caches it computes as without. */
/* Bytes of each block scale of the weights moec quantises itself (--weights / --dense-weights int8, int4:
 * linear layers' MOERT_LIN_SCALES and experts' MOERT_FC1_SCALES ... MOERT_SHARED2_SCALES, the kernels'
 * C::SCALE16): IEEE f16, as ggml's Q8_0 / Q4_0 keep theirs (scale = f16(max|w| / qmax), at most 65504, codes
 * from that scale). Imported codes (MatMulNBits, QMoE) keep f32 scales, token-embedding tables f32 ones. */
#define MOERT_QSCALE_BYTES 2
/* Input features per int8-activation scale, linear and MoE dispatches alike. */
#define MOERT_INT8_ACT_BLOCK 32

/* A token-embedding table (`moe.embedding`, run by libmoert's `moec.Embedding` step; no generated code): V
 * rows of H values in the storage's row format, each row on its own (MOERT_EMBED_ROWS: [V][row bytes]): f32,
 * bf16 or fp16 values; int8 signed codes; int4 codes two per byte, value 2i in byte i's low nibble, zero
 * point 8 (an odd row padded with one code). Quantised rows have one f32 scale per block of `block` values
 * (MOERT_EMBED_SCALES: [V][ceil(H / block)]): w = code * scale (int4: (nibble - 8) * scale), as expert fc1
 * rows. */
enum moert_embed_slot { MOERT_EMBED_ROWS = 0, MOERT_EMBED_SCALES = 1, MOERT_EMBED_SLOTS = 2 };

/* The inputs of libmoert's `moec.KvCacheUpdate` step (`moe.kv_cache_update`; no generated code), in order:
 * the new keys or values [B][H][S][D] f32, each sequence's filled past length [B] i64, the present's length
 * [1] i64, and the past [B][H][P][D] f32 (-1 when there is none). */
enum moert_kv_update_input {
  MOERT_KV_UPDATE_FRESH = 0,
  MOERT_KV_UPDATE_PAST_LENGTHS = 1,
  MOERT_KV_UPDATE_LENGTH = 2,
  MOERT_KV_UPDATE_PAST = 3,
  MOERT_KV_UPDATE_INPUTS = 4
};

/* The inputs of libmoert's `moec.Norm` step (`moe.norm`; no generated code), in order: the input [..][D] f32,
 * the weight [D] f32 and the bias [D] f32 (-1 when there is none). Attributes: kind (1 rms, 2 layer: the
 * moe dialect's NormKind), epsilon. */
enum moert_norm_input {
  MOERT_NORM_INPUT = 0,
  MOERT_NORM_WEIGHT = 1,
  MOERT_NORM_BIAS = 2,
  MOERT_NORM_INPUTS = 3
};

/* The inputs of libmoert's `moec.Rotary` step (`moe.rotary`; no generated code), in order: the input
 * [B][A1][A2][D] f32, cos and sin [1 or B][S][R or R/2] f32 and the q/k RMSNorm weight [D] f32 (-1 when there
 * is none). Attributes: rotary_dim (R), interleaved, seq_axis (1 or 2), transpose, norm_epsilon. */
enum moert_rotary_input {
  MOERT_ROTARY_INPUT = 0,
  MOERT_ROTARY_COS = 1,
  MOERT_ROTARY_SIN = 2,
  MOERT_ROTARY_NORM_WEIGHT = 3,
  MOERT_ROTARY_INPUTS = 4
};

/* Outputs a linear dispatch splits its N columns into, at most (moe.linear's results: Q, K and V projections
 * of one input merged, say): output j is [M][N_j], columns N_0 + ... + N_{j-1} on (C::SPLIT). */
#define MOERT_LIN_MAX_OUTPUTS 4

typedef struct moert_linear_args {
  int64_t rows;                          /* M                                                      */
  const float *input;                    /* [M][K]                                                 */
  const float *residual;                 /* [M][N] added to the result, or NULL (one output only)  */
  float *outputs[MOERT_LIN_MAX_OUTPUTS]; /* [M][N_j] each; NULL past the layer's outputs           */
  const void *weights[MOERT_LIN_SLOTS];  /* NULL where the layer has no such operand               */
  void *scratch;                         /* moert_linear_<j>_scratch(rows, threads) bytes, 64-aligned */
  const moert_exec *exec;
} moert_linear_args;

typedef int (*moert_linear_fn)(const moert_linear_args *args);
typedef size_t (*moert_scratch_fn)(int64_t tokens, int threads);

/* An attention dispatch (kernels/cpu/attention.h; moe.attention's contract): for every batch b, query head h
 * (key/value head h / (HQ / HKV)) and query position s,
 *   out[b][h][s] = sum_t softmax_t(scale * q[b][h][s] . k[b][h / G][t] + mask[b][h][s][t]) v[b][h / G][t].
 * Each tensor is addressed by element strides per dim (batch, head, position); its head dim is contiguous.
 * The mask is optional (NULL); its strides are 0 along broadcast dims. */
/* Mask values at or below this make a score's term exactly 0 after the exponential (against any kept key's):
 * the kernels skip such keys when the row keeps some key (the row's softmax is over every key otherwise). */
#define MOERT_ATTN_MASKED (-1e30f)

typedef struct moert_attention_args {
  int64_t batch, q_len, kv_len;     /* B, S, T                                                */
  const float *query;               /* [B][HQ][S][DK]                                         */
  const void *key, *value;          /* [B][HKV][T][DK], [B][HKV][T][DV]: kv_storage elements   */
  int32_t kv_storage; /* MOERT_STORAGE_F32, _BF16, _F16 or _INT8 (a session's narrow cache; int8: rows of
                         moert_kv_int8_row_bytes(D) bytes, the strides counting bytes)                  */
  int64_t q_strides[3], k_strides[3], v_strides[3], out_strides[3];
  const float *mask; /* additive, broadcast to [B][HQ][S][T], or NULL           */
  int64_t mask_strides[4];
  const float *sinks; /* [HQ]: one more softmax term per query head, or NULL  */
  float *output; /* [B][HQ][S][DV]                                          */
  void *scratch; /* moert_attention_<j>_scratch(...) bytes, 64-aligned      */
  const moert_exec *exec;
} moert_attention_args;

/* A session's int8 KV cache (moert_session_options.cache_dtype MOERT_I8) holds each position's key or value
 * row of D dims as D int8 codes (padded to a multiple of 4 bytes) followed by ceil(D / MOERT_KV_INT8_BLOCK)
 * f32 scales, block j covering dims [32 j, min(32 j + 32, D)): each block rounded as int8 activations are
 * (q = round-half-even(x * (127 / max|x|)), scale max|x| / 127; roundInt8 in simd.h), read as q * scale. */
#define MOERT_KV_INT8_BLOCK 32
static inline int64_t moert_kv_int8_codes_bytes(int64_t dim) { return (dim + 3) / 4 * 4; }
static inline int64_t moert_kv_int8_row_bytes(int64_t dim) {
  return moert_kv_int8_codes_bytes(dim) + 4 * ((dim + MOERT_KV_INT8_BLOCK - 1) / MOERT_KV_INT8_BLOCK);
}

typedef int (*moert_attention_fn)(const moert_attention_args *args);
typedef size_t (*moert_attention_scratch_fn)(int64_t batch, int64_t q_len, int64_t kv_len, int threads);

#ifdef __cplusplus
}
#endif

#endif /* MOERT_KERNEL_ABI_H */
