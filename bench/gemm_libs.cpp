// The GEMM libraries Debian packages, timed on the linear kernel's shapes (y[M][N] = x[M][K] w[K][N], K = N =
// 2048), for bench/gemm_candidates.py. Built by that script with the libraries it finds (-DHAVE_DNNL,
// -DHAVE_BLIS, -DHAVE_XSMM); each prints lines "lib <name> M=<m> <ms> ms" (best of the calls after a first).
//
//   oneDNN 2.6 (libdnnl-dev): dnnl_sgemm (f32, row-major); matmul with bf16 inputs and f32 output, weights
//     reordered once into the layout the primitive asks for (as moec packs its panels at compile time);
//     dnnl_gemm_u8s8s32 (u8 activations x s8 weights, s32 sums: what --activations=int8 computes).
//   BLIS 0.9 (libblis-dev, OpenMP build): cblas_sgemm.
//   libxsmm 1.17 (libxsmm-dev): libxsmm_sgemm_omp (its JIT kernels over OpenMP tiles).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "kernels/cpu/moert_kernel_abi.h" // moert_f32_to_bf16: the rounding moec's bf16 storage uses

#ifdef HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl.hpp>
#endif
#ifdef HAVE_BLIS
#include <blis-openmp/cblas.h>
#endif
#ifdef HAVE_XSMM
#include <libxsmm.h>
#endif

namespace {

constexpr int64_t K = 2048, N = 2048;
const int64_t kRows[] = {1, 8, 128, 512};

double bestMs(int64_t m, const std::function<void()> &call) {
  call();
  double best = 1e30;
  for (int i = 0, reps = m < 128 ? 50 : 8; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    call();
    best = std::min(best,
                    std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

void report(const char *lib, int64_t m, double ms) {
  std::printf("lib %s M=%lld %.3f ms\n", lib, (long long)m, ms);
}

} // namespace

int main() {
  std::vector<float> x(512 * K), w(K * N), y(512 * N);
  uint32_t seed = 1;
  for (auto *v : {&x, &w})
    for (float &f : *v)
      f = float(int((seed = seed * 1664525u + 1013904223u) >> 9) % 2001 - 1000) / 1000.0f;
#ifdef HAVE_DNNL
  for (int64_t m : kRows)
    report("onednn-f32", m, bestMs(m, [&] {
             dnnl_sgemm('N', 'N', m, N, K, 1.0f, x.data(), K, w.data(), N, 0.0f, y.data(), N);
           }));
  {
    using namespace dnnl;
    using dt = memory::data_type;
    using tag = memory::format_tag;
    engine eng(engine::kind::cpu, 0);
    stream s(eng);
    std::vector<uint16_t> wb(K * N), xb(512 * K);
    for (size_t i = 0; i < wb.size(); ++i)
      wb[i] = moert_f32_to_bf16(w[i]);
    for (size_t i = 0; i < xb.size(); ++i)
      xb[i] = moert_f32_to_bf16(x[i]);
    for (int64_t m : kRows) {
      memory::desc a({m, K}, dt::bf16, tag::ab), bAny({K, N}, dt::bf16, tag::any),
          bPlain({K, N}, dt::bf16, tag::ab), c({m, N}, dt::f32, tag::ab);
      matmul::primitive_desc pd(matmul::desc(a, bAny, c), eng);
      memory plainW(bPlain, eng, wb.data()), packedW(pd.weights_desc(), eng), A(a, eng, xb.data()),
          C(c, eng, y.data());
      reorder(plainW, packedW).execute(s, plainW, packedW);
      s.wait();
      matmul prim(pd);
      report("onednn-bf16", m, bestMs(m, [&] {
               prim.execute(s, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, packedW}, {DNNL_ARG_DST, C}});
               s.wait();
             }));
    }
    std::vector<uint8_t> xu(512 * K);
    std::vector<int8_t> ws(K * N);
    std::vector<int32_t> yi(512 * N);
    for (size_t i = 0; i < xu.size(); ++i)
      xu[i] = uint8_t(int(x[i] * 127.0f) + 128);
    for (size_t i = 0; i < ws.size(); ++i)
      ws[i] = int8_t(w[i] * 127.0f);
    const int32_t co = 0;
    for (int64_t m : kRows)
      report("onednn-u8s8s32", m, bestMs(m, [&] {
               dnnl_gemm_u8s8s32('N', 'N', 'F', m, N, K, 1.0f, xu.data(), K, 0, ws.data(), N, 0, 0.0f,
                                 yi.data(), N, &co);
             }));
  }
#endif
#ifdef HAVE_BLIS
  for (int64_t m : kRows)
    report("blis-f32", m, bestMs(m, [&] {
             cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(m), int(N), int(K), 1.0f, x.data(),
                         int(K), w.data(), int(N), 0.0f, y.data(), int(N));
           }));
#endif
#ifdef HAVE_XSMM
  libxsmm_init();
  for (int64_t m : kRows) {
    // Column-major: y^T[N][M] = w^T[N][K] x^T[K][M], the row-major product above.
    const libxsmm_blasint mm = libxsmm_blasint(N), nn = libxsmm_blasint(m), kk = libxsmm_blasint(K);
    const float alpha = 1.0f, beta = 0.0f;
    report("libxsmm-f32", m, bestMs(m, [&] {
             libxsmm_sgemm_omp("N", "N", &mm, &nn, &kk, &alpha, w.data(), &mm, x.data(), &kk, &beta, y.data(),
                               &mm);
           }));
  }
  libxsmm_finalize();
#endif
  return 0;
}
