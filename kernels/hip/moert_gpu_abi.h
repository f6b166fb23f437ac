/*===- moert_gpu_abi.h - the ABI between moert and generated GPU kernels ---===*
 *
 * `moec compile --target=hip|cuda` builds, per fused MoE dispatch `i`, five to seven kernels into one code
 * object per GPU architecture (kernels/hip/sparse_moe_gpu.h, specialised like the CPU kernels):
 *
 *   moert_gpu_<i>_logits grid (T, ceil(N / warps))     router logits, one warp per column (linear routers
 *                                                       only: the runtime launches it when it exists)
 *   moert_gpu_<i>_route  grid (T)                      norm, router, gate, top-k; output = residual or 0;
 *                                                       the last block to finish groups (token, slot) pairs
 *                                                       by expert into tiles (moert_gpu_tile_entries)
 *   moert_gpu_<i>_predict grid (T, K)                  a low-rank predictor's dim scores, the top KEEP dims
 *                                                       of each (token, chosen expert) (predictors only)
 *   moert_gpu_<i>_up     grid (max_tiles, f_chunks)    gate/up projections of the kept dims + activation
 *   moert_gpu_<i>_down   grid (max_tiles, h_chunks, f_splits)  down projection, weighted combine (atomic
 *                                                       f32 adds into the output), fc2 bias
 *
 *   moert_gpu_<i>_up_mma, moert_gpu_<i>_down_mma   `up` and `down` on matrix cores, on the same grids
 *
 * Decode-sized calls group entries into tiles of MOERT_GPU_TILE (`up` and `down`, FMA: each weight row read
 * once a tile, the grid wide); calls with MOERT_GPU_MMA_MIN_PAIRS (token, slot) pairs an expert or more on
 * average into tiles of MOERT_GPU_MMA_TILE, multiplied on matrix cores (`up_mma`, `down_mma`: prefill).
 *
 * each taking one `moert_gpu_args` by value; per linear and attention dispatch the kernels further below.
 * This header is plain C, included by the kernels (device side)
 * and by libmoert (host side), so both compute the same launch geometry and scratch layout.
 *
 * `--target=emu` builds the same kernels for the host instead (kernels/hip/gpu_emulation.h): a shared object
 * whose kernel symbols are `moert_gpu_emu_entry` functions, run by libmoert's emulated device (--device=emu).
 *
 *===----------------------------------------------------------------------===*/
#ifndef MOERT_GPU_ABI_H
#define MOERT_GPU_ABI_H

#ifndef MOERT_GPU_DEVICE_CODE
#include <stddef.h>
#include <stdint.h>
#endif
/* The weight slots and layouts are the CPU dispatch's (next to this header in generated GPU sources). */
#if __has_include("moert_kernel_abi.h")
#include "moert_kernel_abi.h"
#else
#include "kernels/cpu/moert_kernel_abi.h"
#endif

#define MOERT_GPU_ABI_VERSION 4
#define MOERT_GPU_SLOTS MOERT_MOE_SLOTS /* the CPU dispatch's weight slots: the same weight layouts */
#define MOERT_GPU_BLOCK 256 /* threads per block, every kernel                                         */
#define MOERT_GPU_TILE 4    /* (token, slot) entries per expert tile: each weight row read once a tile  */
#define MOERT_GPU_MMA_TILE 64 /* entries per tile on matrix cores: `up` and `down` blocks of 64 rows     */
#define MOERT_GPU_MMA_MIN_PAIRS 16 /* pairs an expert (mean) from which tiles have MMA_TILE entries */
#define MOERT_GPU_MMA_COLS 64 /* output columns per `down` block on matrix cores                        */
#define MOERT_GPU_FCHUNK 32 /* hidden dims per `up` block                                              */
#define MOERT_GPU_DOWN_COLS 1024 /* output columns per `down` block (4 per thread)                      */
#define MOERT_GPU_TARGET_BLOCKS 1024 /* `down` splits F until about this many blocks (decode parallelism) */

#ifdef __cplusplus
extern "C" {
#endif

/* A kernel of a `--target=emu` code object: runs the (gx, gy, gz) grid of `block`-thread blocks on the
 * calling thread before it returns; params[0] points at the kernel's argument struct (as a driver launch
 * passes it). */
typedef void (*moert_gpu_emu_entry)(unsigned gx, unsigned gy, unsigned gz, unsigned block, void **params);

typedef struct moert_gpu_args {
  int64_t tokens;                        /* T                                                      */
  const float *input;                    /* [T][H] device memory                                   */
  const float *logits;                   /* [T][N] when the router is precomputed, else NULL       */
  const float *residual;                 /* [T][H] or NULL                                         */
  float *output;                         /* [T][H]                                                 */
  const void *weights[MOERT_GPU_SLOTS];  /* device copies of the weight sections, NULL if absent   */
  void *scratch;                         /* moert_gpu_scratch_bytes(shape, T) bytes                */
  void *state;                           /* moert_gpu_state_bytes(shape) bytes, zeroed once at load;
                                            the kernels leave it zeroed after each call            */
  int64_t f_splits;                      /* the `down` grid's z                                    */
} moert_gpu_args;

/* What the launch geometry and the scratch layout depend on (stored per dispatch in the artifact). */
typedef struct moert_gpu_shape {
  int64_t H, F, FS, E, N, K;
  int64_t norm; /* nonzero: the route kernel writes the normalised input to scratch */
  int64_t pred; /* nonzero: a low-rank predictor keeps dims per (token, expert) (the `predict` kernel) */
} moert_gpu_shape;

/* Scratch layout (byte offsets; every part 256-byte aligned). */
typedef struct moert_gpu_layout {
  size_t logits;  /* f32 [T][N] router logits (linear routers: the `logits` kernel)  */
  size_t chosen;  /* int32 [T][K] expert per slot                                  */
  size_t weight;  /* f32 [T][S] combine weight per slot (S = K + shared expert)    */
  size_t entries; /* int32 [T*S] entry = t * S + slot, grouped by expert           */
  size_t tiles;   /* int32 [max_tiles][3] (expert or E for the shared one, begin, end); then the count */
  size_t x;       /* f32 [T][H] normalised input (norm only)                       */
  size_t act;     /* f32 [T*S][max(F, FS)] activations, by entry position          */
  size_t pscore;  /* f32 [T*K][F] the predictor's dim scores (pred only)           */
  size_t keep;    /* uint8 [T*S][F] dims the predictor keeps, by entry (pred only) */
  size_t total;
} moert_gpu_layout;

static inline int64_t moert_gpu_slots(const moert_gpu_shape *s) { return s->K + (s->FS > 0 ? 1 : 0); }

/* Entries per tile of a call with T tokens: MOERT_GPU_MMA_TILE (the tiles run on matrix cores) when the
 * routed experts get MOERT_GPU_MMA_MIN_PAIRS (token, slot) pairs each on average, else MOERT_GPU_TILE. */
static inline int64_t moert_gpu_tile_entries(const moert_gpu_shape *s, int64_t T) {
  return T * s->K >= MOERT_GPU_MMA_MIN_PAIRS * s->E ? MOERT_GPU_MMA_TILE : MOERT_GPU_TILE;
}

/* An upper bound of the tiles a call makes: sum over experts of ceil(count / entries a tile). */
static inline int64_t moert_gpu_max_tiles(const moert_gpu_shape *s, int64_t T) {
  int64_t R = moert_gpu_tile_entries(s, T), pairs = T * s->K, touched = pairs < s->E ? pairs : s->E;
  int64_t tiles = pairs / R + touched;
  if (s->FS > 0)
    tiles += (T + R - 1) / R;
  return tiles < 1 ? 1 : tiles;
}

static inline size_t moert_gpu_align(size_t n) { return (n + 255) & ~(size_t)255; }

static inline moert_gpu_layout moert_gpu_scratch_layout(const moert_gpu_shape *s, int64_t T) {
  moert_gpu_layout l;
  int64_t S = moert_gpu_slots(s), fmax = s->F > s->FS ? s->F : s->FS;
  size_t at = 0;
  l.logits = at, at += moert_gpu_align(sizeof(float) * (size_t)(T * s->N));
  l.chosen = at, at += moert_gpu_align(sizeof(int32_t) * (size_t)(T * s->K));
  l.weight = at, at += moert_gpu_align(sizeof(float) * (size_t)(T * S));
  l.entries = at, at += moert_gpu_align(sizeof(int32_t) * (size_t)(T * S));
  l.tiles = at, at += moert_gpu_align(sizeof(int32_t) * (size_t)(3 * moert_gpu_max_tiles(s, T) + 1));
  l.x = at, at += s->norm ? moert_gpu_align(sizeof(float) * (size_t)(T * s->H)) : 0;
  l.act = at, at += moert_gpu_align(sizeof(float) * (size_t)(T * S * fmax));
  l.pscore = at, at += s->pred ? moert_gpu_align(sizeof(float) * (size_t)(T * s->K * s->F)) : 0;
  l.keep = at, at += s->pred ? moert_gpu_align((size_t)(T * S * s->F)) : 0;
  l.total = at;
  return l;
}

/* State kept between calls: per-expert counts (E), the finished-block ticket. */
static inline size_t moert_gpu_state_bytes(const moert_gpu_shape *s) { return sizeof(int32_t) * (size_t)(s->E + 2); }

/* Launch geometry of one call with T tokens. */
static inline int64_t moert_gpu_f_chunks(const moert_gpu_shape *s) {
  int64_t fmax = s->F > s->FS ? s->F : s->FS;
  return (fmax + MOERT_GPU_FCHUNK - 1) / MOERT_GPU_FCHUNK;
}
static inline int64_t moert_gpu_logit_blocks(const moert_gpu_shape *s, int warps) {
  return (s->N + warps - 1) / warps;
}
/* Output columns per `down` block: 1024 (4 a thread) for FMA tiles, MOERT_GPU_MMA_COLS on matrix cores. */
static inline int64_t moert_gpu_down_cols(const moert_gpu_shape *s, int64_t T) {
  return moert_gpu_tile_entries(s, T) == MOERT_GPU_MMA_TILE ? MOERT_GPU_MMA_COLS : MOERT_GPU_DOWN_COLS;
}
static inline int64_t moert_gpu_h_chunks(const moert_gpu_shape *s, int64_t T) {
  int64_t cols = moert_gpu_down_cols(s, T);
  return (s->H + cols - 1) / cols;
}
/* F is split among `down` blocks (each adds its partial sums atomically) until the grid has about
 * MOERT_GPU_TARGET_BLOCKS blocks for the tiles this call can have; at most one split per FCHUNK dims. */
static inline int64_t moert_gpu_f_splits(const moert_gpu_shape *s, int64_t T) {
  int64_t base = moert_gpu_max_tiles(s, T) * moert_gpu_h_chunks(s, T);
  int64_t want = (MOERT_GPU_TARGET_BLOCKS + base - 1) / base, most = moert_gpu_f_chunks(s);
  return want < 1 ? 1 : want > most ? most : want;
}

/* The launches of one MoE call with T tokens, in order: `logits` on logits_grid (linear routers only: x = 0
 * otherwise; `warps` per block: 8 on 32-lane GPUs, 4 on CDNA's 64-lane wavefronts), `route` on route_blocks,
 * `predict` on predict_grid (a low-rank predictor only: x = 0 otherwise), `up` on up_grid, `down` on
 * down_grid (z = f_splits). `scratch` bytes of scratch. */
typedef struct moert_gpu_moe_launches {
  int64_t logits_grid[2], route_blocks, predict_grid[2], up_grid[2], down_grid[3], f_splits;
  int mma; /* nonzero: `up_mma` and `down_mma` take up_grid and down_grid (tiles of MOERT_GPU_MMA_TILE) */
  size_t scratch;
} moert_gpu_moe_launches;
static inline moert_gpu_moe_launches moert_gpu_moe_plan(const moert_gpu_shape *s, int64_t T,
                                                        int linear_router, int warps) {
  moert_gpu_moe_launches p;
  int64_t tiles = moert_gpu_max_tiles(s, T);
  p.logits_grid[0] = linear_router ? T : 0, p.logits_grid[1] = moert_gpu_logit_blocks(s, warps);
  p.route_blocks = T;
  p.predict_grid[0] = s->pred ? T : 0, p.predict_grid[1] = s->K;
  p.up_grid[0] = tiles, p.up_grid[1] = moert_gpu_f_chunks(s);
  p.f_splits = moert_gpu_f_splits(s, T);
  p.down_grid[0] = tiles, p.down_grid[1] = moert_gpu_h_chunks(s, T), p.down_grid[2] = p.f_splits;
  p.mma = moert_gpu_tile_entries(s, T) == MOERT_GPU_MMA_TILE;
  p.scratch = moert_gpu_scratch_layout(s, T).total;
  return p;
}

/* ---- linear dispatches (kernels/hip/linear_gpu.h), per linear dispatch `j`:
 *
 *   moert_gpu_lin_<j>_norm   grid (M)                            the fused norm's rows into scratch (C::NORM
 * only) moert_gpu_lin_<j>_gemv   grid (NP, k_splits)                 M <= MOERT_GPU_LIN_GEMV_ROWS: one block
 * per panel of 16 columns and slice of K; k_splits > 1 writes partial sums to scratch
 *   moert_gpu_lin_<j>_reduce grid (ceil(M * N / BLOCK))          the partial sums in split order + epilogue
 *   moert_gpu_lin_<j>_gemm   grid (ceil(N / LIN_BN), ceil(M / LIN_BM))  more rows: a tiled GEMM
 *
 * each taking one `moert_gpu_linear_args` by value; weights in the CPU kernel's panel layout
 * (moert_linear_slot). The epilogue adds the bias and the residual and writes each output's columns
 * (C::SPLIT). */
#define MOERT_GPU_LIN_GEMV_ROWS 8 /* rows the GEMV path takes; more go to the GEMM                 */
#define MOERT_GPU_LIN_STAGE 4096  /* f32 inputs a GEMV block stages in shared memory (16 KiB)     */
#define MOERT_GPU_LIN_UNITS 64    /* K units a GEMV block reads per pass (4 threads a unit)       */
#define MOERT_GPU_LIN_BM 64       /* GEMM block tile: rows                                        */
#define MOERT_GPU_LIN_BN 64       /*                  columns (4 panels)                          */
#define MOERT_GPU_LIN_BK 16       /*                  input features per step                     */

typedef struct moert_gpu_linear_args {
  int64_t rows;                          /* M                                                   */
  const float *input;                    /* [M][K] device memory                                */
  const float *residual;                 /* [M][N] or NULL                                      */
  float *outputs[MOERT_LIN_MAX_OUTPUTS]; /* [M][N_j] each                                       */
  const void *weights[MOERT_LIN_SLOTS];  /* device copies of the weight sections, NULL if absent */
  void *scratch;                         /* moert_gpu_linear_layout(...).total bytes             */
  int64_t k_splits;                      /* the GEMV grid's y                                   */
} moert_gpu_linear_args;

/* Input features one K unit of a panel holds: one plain weight row, or a 4-byte group of int8 (4) / int4 (8)
 * codes per column (MOERT_LIN_W). */
#define MOERT_GPU_LIN_UNIT(qbits) ((qbits) == 4 ? 8 : (qbits) == 8 ? 4 : 1) /* a constant expression too */
static inline int64_t moert_gpu_lin_unit(int qbits) { return MOERT_GPU_LIN_UNIT(qbits); }

/* Scratch: the normalised rows (f32 [M][K], a fused norm only), then the GEMV's partial sums
 * (f32 [k_splits][M][N], k_splits > 1 only). */
typedef struct moert_gpu_linear_layout {
  size_t x, partial, total;
} moert_gpu_linear_layout;
static inline moert_gpu_linear_layout moert_gpu_lin_layout(int64_t K, int64_t N, int norm, int64_t M,
                                                           int64_t k_splits) {
  moert_gpu_linear_layout l;
  size_t at = 0;
  l.x = at, at += norm ? moert_gpu_align(sizeof(float) * (size_t)(M * K)) : 0;
  l.partial = at, at += k_splits > 1 ? moert_gpu_align(sizeof(float) * (size_t)(k_splits * M * N)) : 0;
  l.total = at;
  return l;
}

/* The GEMV's K splits for M rows: enough blocks (panels x splits) for about MOERT_GPU_TARGET_BLOCKS, each
 * split's inputs fitting MOERT_GPU_LIN_STAGE floats, at least one pass of units a split. */
static inline int64_t moert_gpu_lin_k_splits(int64_t K, int64_t N, int qbits, int64_t M) {
  int64_t fu = moert_gpu_lin_unit(qbits), ku = (K + fu - 1) / fu,
          np = (N + MOERT_LINEAR_NR - 1) / MOERT_LINEAR_NR;
  int64_t most = (ku + MOERT_GPU_LIN_UNITS - 1) / MOERT_GPU_LIN_UNITS;
  int64_t want = (MOERT_GPU_TARGET_BLOCKS + np - 1) / np;
  int64_t fit = MOERT_GPU_LIN_STAGE / ((M < 1 ? 1 : M) * fu); /* units a split may stage */
  int64_t least = (ku + fit - 1) / fit;
  int64_t s = want < most ? want : most;
  return s < least ? least : s < 1 ? 1 : s;
}
/* Units of K each split reads (the last split may read fewer). */
static inline int64_t moert_gpu_lin_split_units(int64_t K, int qbits, int64_t k_splits) {
  int64_t fu = moert_gpu_lin_unit(qbits), ku = (K + fu - 1) / fu;
  return (ku + k_splits - 1) / k_splits;
}

/* The launches of one call with M rows, in order: `norm` on grid (norm_blocks) when norm_blocks > 0 (a layer
 * with a fused norm, on the GEMM path: the GEMV normalises the rows it stages itself, one launch less a
 * decode step); then either `gemm` on gemm_grid, or `gemv` on gemv_grid followed, when k_splits > 1, by
 * `reduce` on grid (reduce_blocks). `scratch` bytes of scratch. */
typedef struct moert_gpu_linear_launches {
  int gemm;
  int64_t norm_blocks;
  int64_t k_splits;
  int64_t gemv_grid[2], gemm_grid[2], reduce_blocks;
  size_t scratch;
} moert_gpu_linear_launches;
static inline moert_gpu_linear_launches moert_gpu_lin_plan(int64_t K, int64_t N, int qbits, int norm,
                                                           int64_t M) {
  moert_gpu_linear_launches p;
  p.gemm = M > MOERT_GPU_LIN_GEMV_ROWS;
  p.norm_blocks = norm && p.gemm ? M : 0;
  p.k_splits = p.gemm ? 1 : moert_gpu_lin_k_splits(K, N, qbits, M);
  p.gemv_grid[0] = (N + MOERT_LINEAR_NR - 1) / MOERT_LINEAR_NR, p.gemv_grid[1] = p.k_splits;
  p.gemm_grid[0] = (N + MOERT_GPU_LIN_BN - 1) / MOERT_GPU_LIN_BN,
  p.gemm_grid[1] = (M + MOERT_GPU_LIN_BM - 1) / MOERT_GPU_LIN_BM;
  p.reduce_blocks = p.k_splits > 1 ? (M * N + MOERT_GPU_BLOCK - 1) / MOERT_GPU_BLOCK : 0;
  p.scratch = moert_gpu_lin_layout(K, N, norm, M, p.k_splits).total;
  return p;
}

/* ---- attention dispatches (kernels/hip/attention_gpu.h), per attention dispatch `j`:
 *
 *   moert_gpu_attn_<j>_attend grid (row_blocks, B * HKV, splits)  one warp per query row (S * G rows of each
 *                                                       key/value head, `warps` a block), keys split `splits`
 *                                                       ways; splits > 1 writes partial results to scratch
 *                                                       (f32 keys and values; _attend_bf16 / _attend_f16 the
 *                                                       same for bf16 / fp16 ones)
 *   moert_gpu_attn_<j>_merge  grid (merge_blocks)       the splits' partial results in split order
 *
 * each taking one `moert_gpu_attention_args` by value: the CPU kernel's arguments (device addresses; exec
 * unused) and the split count. */
#define MOERT_GPU_ATTN_KEYS 256 /* keys a split reads at least                                   */
#define MOERT_GPU_ATTN_KU 4     /* keys whose scores a warp sums at once                         */

typedef struct moert_gpu_attention_args {
  moert_attention_args a; /* scratch: moert_gpu_attn_plan(...).scratch bytes */
  int64_t splits;
} moert_gpu_attention_args;

typedef struct moert_gpu_attention_launches {
  int64_t attend_grid[3], merge_blocks, splits; /* merge_blocks 0: no merge (one split) */
  size_t scratch;
} moert_gpu_attention_launches;
/* The launches of one call: B batches, S query positions, T keys, G = HQ / HKV query heads per key/value
 * head, `warps` per block. Keys are split until the grid has about MOERT_GPU_TARGET_BLOCKS blocks, each split
 * at least MOERT_GPU_ATTN_KEYS keys; scratch holds (DV outputs, m, l) per row and split. */
static inline moert_gpu_attention_launches moert_gpu_attn_plan(int64_t B, int64_t HKV, int64_t G, int64_t DV,
                                                               int64_t S, int64_t T, int warps) {
  moert_gpu_attention_launches p;
  int64_t rows = S * G, row_blocks = (rows + warps - 1) / warps, base = B * HKV * row_blocks;
  int64_t want = (MOERT_GPU_TARGET_BLOCKS + base - 1) / (base < 1 ? 1 : base);
  int64_t most = (T + MOERT_GPU_ATTN_KEYS - 1) / MOERT_GPU_ATTN_KEYS;
  p.splits = want < most ? want : most;
  if (p.splits < 1)
    p.splits = 1;
  p.attend_grid[0] = row_blocks, p.attend_grid[1] = B * HKV, p.attend_grid[2] = p.splits;
  p.merge_blocks = p.splits > 1 ? (B * HKV * rows + warps - 1) / warps : 0;
  p.scratch =
      p.splits > 1 ? moert_gpu_align(sizeof(float) * (size_t)(B * HKV * rows * p.splits * (DV + 2))) : 0;
  return p;
}

/* ---- graph ops on the device (kernels/hip/ops_gpu.h): in every artifact with GPU code ----------------
 *
 *   moert_gpu_op_strided grid (moert_gpu_op_blocks(n))  out[out_offset + sum c_d out_strides[d]] =
 *                                                       f(a[a_offset + sum c_d a_strides[d]]
 *                                                        [, b[sum c_d b_strides[d]]]) for every coordinate c
 *                                                       of `dims`: a copy, a binary op, or a unary one
 *
 * f32 elements. libmoert plans the strides per op step (runtime/src/Gpu.cpp, planOp): the binary ops with
 * NumPy broadcasting (a stride of 0 along a broadcast dim), the unary ones (alpha / beta: the op's
 * parameters), Transpose (the input's strides permuted), Concat (one launch per input into its place in the
 * output), Slice (a_offset at the starts, strides times the steps), Split (one launch per output), Expand (0
 * strides), Gather of a few indices (one launch per index). The kinds' functions are the CPU ops'
 * (runtime/src/ops/ Elementwise.cpp); exp, erf, tanh and log through the vendor header's exp2 / log2 (no
 * device library). */
#define MOERT_GPU_OP_RANK 6
#define MOERT_GPU_OP_COPY 0
/* binary: a op b */
#define MOERT_GPU_OP_ADD 1
#define MOERT_GPU_OP_SUB 2
#define MOERT_GPU_OP_MUL 3
#define MOERT_GPU_OP_DIV 4
#define MOERT_GPU_OP_POW 5
#define MOERT_GPU_OP_MAX 6
#define MOERT_GPU_OP_MIN 7
#define MOERT_GPU_OP_PRELU 8 /* a < 0 ? a * b : a */
/* unary: f(a) */
#define MOERT_GPU_OP_NEG 16
#define MOERT_GPU_OP_ABS 17
#define MOERT_GPU_OP_RELU 18
#define MOERT_GPU_OP_EXP 19
#define MOERT_GPU_OP_LOG 20
#define MOERT_GPU_OP_SQRT 21
#define MOERT_GPU_OP_RECIPROCAL 22
#define MOERT_GPU_OP_SIGMOID 23
#define MOERT_GPU_OP_TANH 24
#define MOERT_GPU_OP_ERF 25
#define MOERT_GPU_OP_GELU_ERF 26
#define MOERT_GPU_OP_GELU_TANH 27
#define MOERT_GPU_OP_SOFTPLUS 28
#define MOERT_GPU_OP_SOFTSIGN 29
#define MOERT_GPU_OP_LEAKY_RELU 32          /* alpha */
#define MOERT_GPU_OP_ELU 33                 /* alpha */
#define MOERT_GPU_OP_HARD_SIGMOID 34        /* max(0, min(1, alpha a + beta)) */
#define MOERT_GPU_OP_CLIP 35                /* min(max(a, alpha), beta) */
#define MOERT_GPU_OP_UNARY MOERT_GPU_OP_NEG /* kinds from here take no b */
/* A session's KV cache on the device as the destination of the op that makes its new positions (a rotary
 * embedding of the keys, the values' Transpose: libmoert's producer of an append in place, see
 * moert::findCacheAppends): the [B, heads, S, D] result's row (b, h, s) goes to row
 * (b heads + h) capacity + past + s of the cache's D-value rows, in its storage (f32, or rounded to bf16 /
 * fp16 as moert_gpu_op_kv_append rounds), instead of to `out`. */
typedef struct moert_gpu_cache_dest {
  int64_t heads, capacity, past;
  int32_t storage; /* MOERT_STORAGE_F32, _BF16 or _F16 */
  void *cache;     /* NULL: no cache, the op writes `out` */
} moert_gpu_cache_dest;
typedef struct moert_gpu_op_args {
  int64_t n;    /* elements: the product of dims[0 .. rank)                                        */
  int32_t rank; /* <= MOERT_GPU_OP_RANK                                                            */
  int32_t kind; /* MOERT_GPU_OP_*                                                                  */
  int32_t out_storage; /* MOERT_STORAGE_F32, or _BF16 / _F16: `out` holds uint16 values (a cache)   */
  int64_t dims[MOERT_GPU_OP_RANK];
  int64_t a_strides[MOERT_GPU_OP_RANK], b_strides[MOERT_GPU_OP_RANK], out_strides[MOERT_GPU_OP_RANK];
  int64_t a_offset, out_offset;
  float alpha, beta;
  const float *a, *b; /* b: NULL for a copy or a unary op */
  float *out;
} moert_gpu_op_args;

/* Reductions and softmax along axes (kernels/hip/ops_gpu.h), one warp per row:
 *
 *   moert_gpu_op_reduce grid (ceil(rows / warps))       row r (its coordinates c over `dims`, input offset
 *                                                       sum c_d strides[d]) reduces the n elements at the
 *                                                       offsets over red_dims / red_strides; a reduction
 *                                                       writes out[r], SOFTMAX / LOG_SOFTMAX write each
 *                                                       element at its own input offset
 *
 * The CPU ops' definitions (runtime/src/ops/Reduce.cpp): MAX / MIN keep a NaN, MEAN divides the sum by n, L2
 * is the root of the sum of squares. */
#define MOERT_GPU_RED_SUM 0
#define MOERT_GPU_RED_MEAN 1
#define MOERT_GPU_RED_MAX 2
#define MOERT_GPU_RED_MIN 3
#define MOERT_GPU_RED_L1 4
#define MOERT_GPU_RED_L2 5
#define MOERT_GPU_RED_SUM_SQUARE 6
#define MOERT_GPU_RED_LOG_SUM_EXP 7
#define MOERT_GPU_RED_SOFTMAX 8
#define MOERT_GPU_RED_LOG_SOFTMAX 9
typedef struct moert_gpu_reduce_args {
  int64_t rows, n;
  int32_t rank, red_rank; /* <= MOERT_GPU_OP_RANK each */
  int32_t kind;           /* MOERT_GPU_RED_* */
  int32_t pad_;
  int64_t dims[MOERT_GPU_OP_RANK], strides[MOERT_GPU_OP_RANK];
  int64_t red_dims[MOERT_GPU_OP_RANK], red_strides[MOERT_GPU_OP_RANK];
  const float *x;
  float *out;
} moert_gpu_reduce_args;
/* TopK (runtime/src/ops/Reduce.cpp's op), one warp per row along the axis:
 *
 *   moert_gpu_op_topk grid (ceil(rows / warps))         row r = (a, b) of the [outer, n, inner] view: its k
 *                                                       best values (largest or smallest; equal values by
 *                                                       index) in order, to values / indices [outer, k,
 * inner]
 *
 * k passes over the row, each taking the best element after the last one taken (k small: routers). */
typedef struct moert_gpu_topk_args {
  int64_t rows, n, k, inner;
  int32_t largest, pad_;
  const float *x;
  float *values;
  int64_t *indices;
} moert_gpu_topk_args;

/* Conv (runtime/src/ops/Linalg.cpp's op, its geometry moert::planConv):
 *
 *   moert_gpu_op_conv grid (moert_gpu_op_blocks(n))     one thread per output element (n of them) of Y [N,
 *                                                       M, out...]: its bias (or 0), then for each kernel
 *                                                       position inside X, the group's C / group channels
 *                                                       (the CPU op's order of sums)
 *
 * 1 to 3 spatial dims; pads at their starts (the ends only bound the output's dims). */
#define MOERT_GPU_CONV_DIMS 3
typedef struct moert_gpu_conv_args {
  int64_t n, N, C, M, group, sp;
  int64_t in_dims[MOERT_GPU_CONV_DIMS], out_dims[MOERT_GPU_CONV_DIMS], kern[MOERT_GPU_CONV_DIMS];
  int64_t strides[MOERT_GPU_CONV_DIMS], dil[MOERT_GPU_CONV_DIMS], pads[MOERT_GPU_CONV_DIMS];
  const float *x, *w, *b; /* b [M] or NULL */
  float *y;
} moert_gpu_conv_args;

/* The row-wise fused ops (runtime/src/ops/Fused.cpp's contracts, ir/MoEOps.td), planned the same way:
 *
 *   moert_gpu_op_rotary grid (ceil(rows / warps))      moec.Rotary (moe.rotary): one warp per row of D
 *                                                       (rows = B * A1 * A2), the q/k RMSNorm first when
 *                                                       norm_weight is set, heads transposed on the way;
 *                                                       two of them at once (a moert_gpu_rotary_launch:
 *                                                       the queries' and the keys', rows of part[0] then
 *                                                       of part[1]; a single one has part[1].rows 0)
 *   moert_gpu_op_norm   grid (rows)                     moec.Norm (moe.norm): one block per row of d
 */
typedef struct moert_gpu_rotary_args {
  int64_t rows, A1, A2, D; /* input [B, A1, A2, D]; S = A1 or A2 (seq_axis)                          */
  int64_t R, W, S;         /* rotary dims, table width (R or R / 2), positions                        */
  int32_t seq_axis, interleaved, deinterleave, transpose, cos_batch; /* cos_batch: tables per batch  */
  float eps;
  const float *x, *cos, *sin, *norm_weight; /* norm_weight [D] or NULL                               */
  float *out;
  moert_gpu_cache_dest dest; /* dest.cache set: the rows go there ([B, H, S, D] out: transposed, or
                                seq_axis 2), not to `out` */
} moert_gpu_rotary_args;
typedef struct moert_gpu_rotary_launch {
  moert_gpu_rotary_args part[2];
} moert_gpu_rotary_launch;
/* Blocks of a rotary launch: `warps` rows a block over both parts. */
static inline int64_t moert_gpu_rotary_blocks(const moert_gpu_rotary_launch *l, int warps) {
  return (l->part[0].rows + l->part[1].rows + warps - 1) / warps;
}
typedef struct moert_gpu_norm_args {
  int64_t rows, d;
  int32_t kind; /* moert_norm: MOERT_NORM_RMS or MOERT_NORM_LAYER */
  float eps;
  const float *x, *w, *b; /* b [d] or NULL */
  float *out;
} moert_gpu_norm_args;

/* Token embeddings (moec.Embedding, moe.embedding; runtime/src/ops/Movement.cpp's contract):
 *
 *   moert_gpu_op_embedding grid (n)                     one block per index: row idx[j] (negative: from the
 *                                                       end) of the table, widened to f32, to out[j][0 .. h)
 *
 * The table is stored as moert_kernel_abi.h's MOERT_EMBED_* say: rows of h values in the storage's row
 * format, row_bytes each (f32 / bf16 / fp16, int8 codes, int4 codes two to a byte, low nibble first, code -
 * 8), int8 / int4 with f32 scales [rows][nb], one per `block` values. libmoert checks the indices on the host
 * (where they are) before it uploads them: the kernel reads only rows that exist. */
typedef struct moert_gpu_embed_args {
  int64_t n, h, rows, row_bytes, block, nb;
  int32_t storage; /* moert_storage */
  int32_t idx64;   /* indices int64 (1) or int32 (0) */
  const void *table, *idx;
  const float *scales; /* int8 / int4: [rows][nb]; else NULL */
  float *out;          /* [n][h] */
} moert_gpu_embed_args;

/* A session's KV cache kept in device memory (runtime/src/Session.cpp, Gpu.cpp) is appended there, as
 * libmoert appends a host cache in place (runtime/src/Runtime.cpp):
 *
 *   moert_gpu_op_kv_append grid (B * heads * S)          row i of (sequence b, head h)'s S new f32 positions
 *                                                       to row first[b] + i of the buffer (first NULL: past),
 *                                                       in the cache's storage (moert_f32_to_bf16 / _f16);
 *                                                       then rows [max(first[b] + S, past), past + S) zeros
 *
 * The buffer is [B][heads][capacity] rows of D values; f32, bf16 or fp16 (int8 caches stay on the host). */
typedef struct moert_gpu_kv_append_args {
  int64_t heads, S, D, past, capacity;
  int32_t storage;      /* MOERT_STORAGE_F32, _BF16 or _F16 */
  const float *src;     /* [B, heads, S, D] */
  const int64_t *first; /* [B]: where each sequence's new rows go, or NULL (after `past`) */
  void *cache;
} moert_gpu_kv_append_args;

/* Bytes copied device to device inside a graph (runtime/src/Gpu.cpp records a run's launches and replays
 * them as CUDA / HIP graphs; an upload it records goes to a device staging buffer first, and this kernel
 * moves it where the run wanted it, at its place among the kernels):
 *
 *   moert_gpu_op_copy grid (moert_gpu_copy_blocks(bytes))  dst[0 .. bytes) = src[0 .. bytes)
 *
 * Words of 4 bytes when src, dst and bytes are multiples of 4, else bytes. */
typedef struct moert_gpu_copy_args {
  const void *src;
  void *dst;
  int64_t bytes;
} moert_gpu_copy_args;

/* Blocks of MOERT_GPU_BLOCK threads for n elements (a grid-stride loop covers the rest). */
static inline int64_t moert_gpu_op_blocks(int64_t n) {
  int64_t b = (n + MOERT_GPU_BLOCK - 1) / MOERT_GPU_BLOCK;
  return b < 1 ? 1 : b > 65535 ? 65535 : b;
}
/* moert_gpu_op_copy's blocks for `bytes` (a thread a 4-byte word). */
static inline int64_t moert_gpu_copy_blocks(int64_t bytes) { return moert_gpu_op_blocks((bytes + 3) / 4); }

#ifdef __cplusplus
}
#endif

#endif /* MOERT_GPU_ABI_H */
