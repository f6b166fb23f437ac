// One MoE layer in ggml (llama.cpp's tensor library), timed the way bench/run.py times moec's: the peer for
// the single-layer workloads. Built by bench/ggml_peer.py against the ggml that llama-cpp-python installs;
// never part of the moec build.
//
// The graph is the one llama.cpp builds for a MoE FFN without shared experts (softmax gating, top-k, weights
// renormalised over the chosen k, SwiGLU experts):
//   probs = softmax(router x); ids = top_k(probs); w = probs[ids] / sum(probs[ids])
//   y = sum_k w_k * down_k(silu(gate_k x) * up_k x)          gate/up/down through ggml_mul_mat_id
// Expert weights are quantised by ggml itself (ggml_quantize_chunk) from the fp32 weights bench/ggml_peer.py
// writes, and placed in the CPU backend's repacking buffer type where ggml supports it for mul_mat_id (Q4_0
// and Q8_0 repack into interleaved rows, as llama.cpp does when it loads a model); the router stays f32 (as
// in llama.cpp's GGUF files and bench/llama_peer.py).
//
//   ggml_moe DIR H F E K TYPE THREADS T1,T2,... CALLS
// DIR holds gate.f32 [E, F, H], up.f32 [E, F, H], down.f32 [E, H, F], router.f32 [E, H] and, per T, x_T.f32
// ([CALLS + 1, T, H]: a warm-up call, then CALLS timed ones). Prints one JSON line per T (best and median ms,
// whether the experts were repacked) and writes the warm-up call's output to DIR/y_T_TYPE.f32 for the
// caller's NumPy check.
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

[[noreturn]] void fail(const std::string &msg) {
  std::fprintf(stderr, "ggml_moe: %s\n", msg.c_str());
  std::exit(1);
}

std::vector<float> readFloats(const std::string &path, size_t count) {
  std::vector<float> v(count);
  FILE *f = std::fopen(path.c_str(), "rb");
  if (!f)
    fail("cannot open " + path);
  size_t got = std::fread(v.data(), sizeof(float), count, f);
  std::fclose(f);
  if (got != count)
    fail(path + ": expected " + std::to_string(count) + " floats, read " + std::to_string(got));
  return v;
}

ggml_type parseType(const std::string &s) {
  if (s == "f32")
    return GGML_TYPE_F32;
  if (s == "bf16")
    return GGML_TYPE_BF16;
  if (s == "q8_0")
    return GGML_TYPE_Q8_0;
  if (s == "q4_0")
    return GGML_TYPE_Q4_0;
  fail("unknown type '" + s + "' (f32, bf16, q8_0, q4_0)");
}

// Does the device run mul_mat_id with weights `w` living in buffer type `buft`? (llama.cpp asks the same
// before placing a weight in an extra buffer type.)
bool mulMatIdSupported(ggml_backend_dev_t dev, ggml_backend_buffer_type_t buft, ggml_tensor *w, int64_t h,
                       int k) {
  ggml_init_params p = {8 * ggml_tensor_overhead(), nullptr, true};
  ggml_context *ctx = ggml_init(p);
  ggml_tensor *x = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, h, 1, 8);
  ggml_tensor *ids = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, k, 8);
  ggml_tensor *op = ggml_mul_mat_id(ctx, w, x, ids);
  ggml_backend_buffer_t dummy = ggml_backend_buft_alloc_buffer(buft, 0);
  ggml_backend_buffer_t saved = w->buffer;
  w->buffer = dummy;
  bool ok = ggml_backend_dev_supports_op(dev, op);
  w->buffer = saved;
  ggml_backend_buffer_free(dummy);
  ggml_free(ctx);
  return ok;
}

} // namespace

int main(int argc, char **argv) {
  if (argc != 10)
    fail("usage: ggml_moe DIR H F E K TYPE THREADS T1,T2,... CALLS");
  const std::string dir = argv[1];
  const int64_t h = std::atoll(argv[2]), f = std::atoll(argv[3]), e = std::atoll(argv[4]);
  const int k = std::atoi(argv[5]);
  const std::string typeName = argv[6];
  const ggml_type type = parseType(typeName);
  const int threads = std::atoi(argv[7]);
  std::vector<int64_t> tokens;
  for (char *s = std::strtok(argv[8], ","); s; s = std::strtok(nullptr, ","))
    tokens.push_back(std::atoll(s));
  const int calls = std::atoi(argv[9]);
  if (h <= 0 || f <= 0 || e <= 0 || k <= 0 || k > e || threads <= 0 || tokens.empty() || calls <= 0)
    fail("bad arguments");
  if (h % ggml_blck_size(type) || f % ggml_blck_size(type))
    fail("H and F must be multiples of the type's block size");

  ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
  if (!dev)
    fail("no CPU backend in this ggml");
  ggml_backend_t backend = ggml_backend_dev_init(dev, nullptr);
  ggml_backend_cpu_set_n_threads(backend, threads);

  // Weights: a context of their own, allocated in the repacking buffer type when it takes mul_mat_id.
  ggml_init_params wp = {8 * ggml_tensor_overhead(), nullptr, true};
  ggml_context *ctxExperts = ggml_init(wp);
  ggml_context *ctxRouter = ggml_init(wp);
  ggml_tensor *gate = ggml_new_tensor_3d(ctxExperts, type, h, f, e);
  ggml_tensor *up = ggml_new_tensor_3d(ctxExperts, type, h, f, e);
  ggml_tensor *down = ggml_new_tensor_3d(ctxExperts, type, f, h, e);
  ggml_tensor *router = ggml_new_tensor_2d(ctxRouter, GGML_TYPE_F32, h, e);

  ggml_backend_buffer_type_t expertBuft = ggml_backend_cpu_buffer_type();
  bool repacked = false;
  auto getExtra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(ggml_backend_reg_get_proc_address(
      ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts"));
  if (getExtra) {
    for (ggml_backend_buffer_type_t *b = getExtra(dev); b && *b; ++b) {
      if (mulMatIdSupported(dev, *b, gate, h, k) && mulMatIdSupported(dev, *b, down, f, k)) {
        expertBuft = *b;
        repacked = true;
        break;
      }
    }
  }
  ggml_backend_buffer_t expertBuf = ggml_backend_alloc_ctx_tensors_from_buft(ctxExperts, expertBuft);
  ggml_backend_buffer_t routerBuf =
      ggml_backend_alloc_ctx_tensors_from_buft(ctxRouter, ggml_backend_cpu_buffer_type());
  if (!expertBuf || !routerBuf)
    fail("cannot allocate the weights");

  auto load = [&](ggml_tensor *t, const char *name, int64_t rows, int64_t cols) {
    std::vector<float> src = readFloats(dir + "/" + name, size_t(rows) * cols);
    if (t->type == GGML_TYPE_F32) {
      ggml_backend_tensor_set(t, src.data(), 0, ggml_nbytes(t));
      return;
    }
    std::vector<char> q(ggml_nbytes(t));
    size_t written = ggml_quantize_chunk(t->type, src.data(), q.data(), 0, rows, cols, nullptr);
    if (written != q.size())
      fail(std::string("quantising ") + name + " wrote an unexpected size");
    ggml_backend_tensor_set(t, q.data(), 0, q.size());
  };
  load(gate, "gate.f32", e * f, h);
  load(up, "up.f32", e * f, h);
  load(down, "down.f32", e * h, f);
  load(router, "router.f32", e, h);

  for (int64_t t : tokens) {
    const size_t graphSize = 256;
    ggml_init_params gp = {graphSize * ggml_tensor_overhead() + ggml_graph_overhead_custom(graphSize, false),
                           nullptr, true};
    ggml_context *ctx = ggml_init(gp);
    ggml_tensor *x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, h, t);
    ggml_set_input(x);
    ggml_tensor *probs = ggml_soft_max(ctx, ggml_mul_mat(ctx, router, x));          // [E, T]
    ggml_tensor *ids = ggml_argsort_top_k(ctx, probs, k);                           // [k, T]
    ggml_tensor *w = ggml_get_rows(ctx, ggml_reshape_3d(ctx, probs, 1, e, t), ids); // [1, k, T]
    { // renormalised over the chosen k (ORT's normalize_routing_weights; llama.cpp's norm_w)
      ggml_tensor *w2 = ggml_reshape_2d(ctx, w, k, t);
      w = ggml_reshape_3d(ctx, ggml_div(ctx, w2, ggml_sum_rows(ctx, w2)), 1, k, t);
    }
    ggml_tensor *x3 = ggml_reshape_3d(ctx, x, h, 1, t);
    ggml_tensor *g = ggml_mul_mat_id(ctx, gate, x3, ids); // [F, k, T]
    ggml_tensor *u = ggml_mul_mat_id(ctx, up, x3, ids);
    ggml_tensor *act = ggml_swiglu_split(ctx, g, u);
    ggml_tensor *experts = ggml_mul(ctx, ggml_mul_mat_id(ctx, down, act, ids), w); // [H, k, T]
    ggml_tensor *y = ggml_view_2d(ctx, experts, h, t, experts->nb[2], 0);
    for (int j = 1; j < k; ++j)
      y = ggml_add(ctx, y, ggml_view_2d(ctx, experts, h, t, experts->nb[2], j * experts->nb[1]));
    if (k == 1)
      y = ggml_cont(ctx, y);
    ggml_set_output(y);
    ggml_cgraph *gf = ggml_new_graph_custom(ctx, graphSize, false);
    ggml_build_forward_expand(gf, y);
    ggml_gallocr_t alloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    if (!ggml_gallocr_alloc_graph(alloc, gf))
      fail("cannot allocate the graph at T=" + std::to_string(t));

    std::vector<float> xs = readFloats(dir + "/x_" + std::to_string(t) + ".f32", size_t(calls + 1) * t * h);
    std::vector<double> ms;
    for (int c = 0; c <= calls; ++c) {
      ggml_backend_tensor_set(x, xs.data() + size_t(c) * t * h, 0, ggml_nbytes(x));
      auto t0 = std::chrono::steady_clock::now();
      if (ggml_backend_graph_compute(backend, gf) != GGML_STATUS_SUCCESS)
        fail("graph compute failed at T=" + std::to_string(t));
      auto t1 = std::chrono::steady_clock::now();
      if (c == 0) { // the warm-up call's output, for the caller's check
        std::vector<float> out(size_t(t) * h);
        ggml_backend_tensor_get(y, out.data(), 0, out.size() * sizeof(float));
        std::string path = dir + "/y_" + std::to_string(t) + "_" + typeName + ".f32";
        FILE *o = std::fopen(path.c_str(), "wb");
        if (!o || std::fwrite(out.data(), sizeof(float), out.size(), o) != out.size())
          fail("cannot write " + path);
        std::fclose(o);
      } else {
        ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
    }
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    double median = sorted.size() % 2 ? sorted[sorted.size() / 2]
                                      : 0.5 * (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
    std::printf("{\"tokens\": %lld, \"best_ms\": %.4f, \"median_ms\": %.4f, \"repacked\": %s}\n",
                (long long)t, sorted.front(), median, repacked ? "true" : "false");
    std::fflush(stdout);
    ggml_gallocr_free(alloc);
    ggml_free(ctx);
  }
  ggml_backend_buffer_free(expertBuf);
  ggml_backend_buffer_free(routerBuf);
  ggml_free(ctxExperts);
  ggml_free(ctxRouter);
  ggml_backend_free(backend);
  return 0;
}
