/*===- moert_gpu_abi.h - the ABI between moert and generated GPU kernels ---===*
 *
 * `moec compile --target=hip|cuda` builds, per fused MoE dispatch `i`, three or four kernels into one code
 * object per GPU architecture (kernels/hip/sparse_moe_gpu.h, specialised like the CPU kernels):
 *
 *   moert_gpu_<i>_logits grid (T, ceil(N / warps))     router logits, one warp per column (linear routers
 *                                                       only: the runtime launches it when it exists)
 *   moert_gpu_<i>_route  grid (T)                      norm, router, gate, top-k; output = residual or 0;
 *                                                       the last block to finish groups (token, slot) pairs
 *                                                       by expert into tiles of MOERT_GPU_TILE entries
 *   moert_gpu_<i>_up     grid (max_tiles, f_chunks)    gate/up projections of the kept dims + activation
 *   moert_gpu_<i>_down   grid (max_tiles, h_chunks, f_splits)  down projection, weighted combine (atomic
 *                                                       f32 adds into the output), fc2 bias
 *
 * each taking one `moert_gpu_args` by value. This header is plain C, included by the kernels (device side)
 * and by libmoert (host side), so both compute the same launch geometry and scratch layout.
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

#define MOERT_GPU_ABI_VERSION 1
#define MOERT_GPU_SLOTS MOERT_MOE_SLOTS /* the CPU dispatch's weight slots: the same weight layouts */
#define MOERT_GPU_BLOCK 256 /* threads per block, every kernel                                         */
#define MOERT_GPU_TILE 4    /* (token, slot) entries per expert tile: each weight row read once a tile  */
#define MOERT_GPU_FCHUNK 32 /* hidden dims per `up` block                                              */
#define MOERT_GPU_DOWN_COLS 1024 /* output columns per `down` block (4 per thread)                      */
#define MOERT_GPU_TARGET_BLOCKS 1024 /* `down` splits F until about this many blocks (decode parallelism) */

#ifdef __cplusplus
extern "C" {
#endif

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
  size_t total;
} moert_gpu_layout;

static inline int64_t moert_gpu_slots(const moert_gpu_shape *s) { return s->K + (s->FS > 0 ? 1 : 0); }

/* An upper bound of the tiles a call makes: sum over experts of ceil(count / TILE). */
static inline int64_t moert_gpu_max_tiles(const moert_gpu_shape *s, int64_t T) {
  int64_t pairs = T * s->K, touched = pairs < s->E ? pairs : s->E;
  int64_t tiles = pairs / MOERT_GPU_TILE + touched;
  if (s->FS > 0)
    tiles += (T + MOERT_GPU_TILE - 1) / MOERT_GPU_TILE;
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
static inline int64_t moert_gpu_h_chunks(const moert_gpu_shape *s) {
  return (s->H + MOERT_GPU_DOWN_COLS - 1) / MOERT_GPU_DOWN_COLS;
}
/* F is split among `down` blocks (each adds its partial sums atomically) until the grid has about
 * MOERT_GPU_TARGET_BLOCKS blocks for the tiles this call can have; at most one split per FCHUNK dims. */
static inline int64_t moert_gpu_f_splits(const moert_gpu_shape *s, int64_t T) {
  int64_t base = moert_gpu_max_tiles(s, T) * moert_gpu_h_chunks(s);
  int64_t want = (MOERT_GPU_TARGET_BLOCKS + base - 1) / base, most = moert_gpu_f_chunks(s);
  return want < 1 ? 1 : want > most ? most : want;
}

#ifdef __cplusplus
}
#endif

#endif /* MOERT_GPU_ABI_H */
