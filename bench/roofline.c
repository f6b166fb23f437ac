/* roofline.c - this machine's roofline, measured with all cores (bench/run.py compiles and runs it).
 *
 *   read:  each thread sums its slice of a buffer far larger than the last-level cache (one pass, bytes read)
 *   triad: a[i] = b[i] + s * c[i] over three such buffers (bytes read + written, STREAM's convention)
 *   fma:   each thread runs 12 independent 8-wide FMA chains in registers (FP32 FLOP/s)
 *   bf16:  where the CPU has AVX512-BF16, 12 independent chains of vdpbf16ps (32 bf16 products each: BF16
 *          FLOP/s); null elsewhere
 *
 * Prints one JSON object: {"threads": N, "read_gbs": ..., "triad_gbs": ..., "fp32_gflops": ...,
 * "bf16_gflops": ... or null}; best of several repetitions for each.
 *   roofline THREADS BUFFER_MIB
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float v8 __attribute__((vector_size(32)));

static int threads;
static size_t n; /* floats per buffer */
static float *a, *b, *c;
static double sink[64];
static int mode;
static pthread_barrier_t start;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx512f,avx512bf16"))) static float bf16Chains(void) {
  __m512 acc[12];
  __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3380); /* 1, ~6e-8 */
  for (int k = 0; k < 12; ++k)
    acc[k] = _mm512_set1_ps((float)k);
  for (long it = 0; it < 20000000; ++it)
    for (int k = 0; k < 12; ++k)
      acc[k] = _mm512_dpbf16_ps(acc[k], x, y);
  float s = 0;
  for (int k = 0; k < 12; ++k)
    s += _mm512_reduce_add_ps(acc[k]);
  return s;
}
static int hasBf16(void) { return __builtin_cpu_supports("avx512bf16"); }
#else
static float bf16Chains(void) { return 0; }
static int hasBf16(void) { return 0; }
#endif

static void *worker(void *arg) {
  long id = (long)arg;
  size_t lo = n / threads * id, hi = id == threads - 1 ? n : n / threads * (id + 1);
  pthread_barrier_wait(&start);
  if (mode == 0) { /* read */
    v8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    size_t i = lo;
    for (; i + 32 <= hi; i += 32) {
      v8 x0, x1, x2, x3;
      memcpy(&x0, a + i, 32);
      memcpy(&x1, a + i + 8, 32);
      memcpy(&x2, a + i + 16, 32);
      memcpy(&x3, a + i + 24, 32);
      s0 += x0;
      s1 += x1;
      s2 += x2;
      s3 += x3;
    }
    v8 s = s0 + s1 + s2 + s3;
    sink[id] = s[0] + s[7];
  } else if (mode == 1) { /* triad */
    for (size_t i = lo; i < hi; ++i)
      a[i] = b[i] + 3.0f * c[i];
  } else if (mode == 3) { /* bf16 dot products */
    sink[id] = bf16Chains();
  } else { /* fma */
    v8 acc[12];
    v8 m = {1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f};
    v8 d = {1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f};
    for (int k = 0; k < 12; ++k)
      acc[k] = d * (float)(k + 1);
    for (long it = 0; it < 20000000; ++it)
      for (int k = 0; k < 12; ++k)
        acc[k] = acc[k] * m + d;
    float s = 0;
    for (int k = 0; k < 12; ++k)
      s += acc[k][0];
    sink[id] = s;
  }
  return NULL;
}

static double timed(int m) {
  pthread_t t[64];
  mode = m;
  pthread_barrier_init(&start, NULL, threads + 1);
  for (long i = 0; i < threads; ++i)
    pthread_create(&t[i], NULL, worker, (void *)i);
  double t0 = now();
  pthread_barrier_wait(&start);
  for (int i = 0; i < threads; ++i)
    pthread_join(t[i], NULL);
  double dt = now() - t0;
  pthread_barrier_destroy(&start);
  return dt;
}

int main(int argc, char **argv) {
  threads = argc > 1 ? atoi(argv[1]) : 1;
  size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 1024;
  if (threads < 1 || threads > 64)
    threads = 1;
  n = mib * 1024 * 1024 / sizeof(float);
  a = aligned_alloc(64, n * sizeof(float));
  b = aligned_alloc(64, n * sizeof(float));
  c = aligned_alloc(64, n * sizeof(float));
  if (!a || !b || !c)
    return 1;
  for (size_t i = 0; i < n; ++i)
    a[i] = b[i] = c[i] = 1.0f;
  double read = 1e30, triad = 1e30, fma = 1e30;
  for (int r = 0; r < 5; ++r) {
    double x = timed(0);
    if (x < read)
      read = x;
    x = timed(1);
    if (x < triad)
      triad = x;
  }
  for (int r = 0; r < 3; ++r) {
    double x = timed(2);
    if (x < fma)
      fma = x;
  }
  char bf16[32] = "null";
  if (hasBf16()) {
    double best = 1e30;
    for (int r = 0; r < 3; ++r) {
      double x = timed(3);
      if (x < best)
        best = x;
    }
    snprintf(bf16, sizeof bf16, "%.1f", threads * 20000000.0 * 12 * 32 * 2 / best / 1e9);
  }
  double bytes = (double)n * sizeof(float);
  printf("{\"threads\": %d, \"buffer_mib\": %zu, \"read_gbs\": %.2f, \"triad_gbs\": %.2f, \"fp32_gflops\": %.1f, "
         "\"bf16_gflops\": %s}\n",
         threads, mib, bytes / read / 1e9, 3 * bytes / triad / 1e9, threads * 20000000.0 * 12 * 8 * 2 / fma / 1e9, bf16);
  return sink[0] == 12345.0 ? 2 : 0;
}
