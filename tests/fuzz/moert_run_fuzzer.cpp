//===- moert_run_fuzzer.cpp - libFuzzer target over moert_run's inputs -------===//
//
// Loads small real artifacts once (paths in $MOERT_FUZZ_ARTIFACTS, colon-separated; run-run-fuzzer.sh
// compiles them with their kernels instrumented too) and calls moert_run with inputs decoded from each fuzz
// input: which model, how many inputs, each input's name (one the model takes, or not), dtype, rank and dims
// (token counts 0 and large, dims the model was not compiled for), and its values from the input's bytes
// (NaN, Inf, out-of-range token ids...). Any crash or sanitizer report is a bug: every such call must give a
// result or one error. The data buffer always holds what the dims say (a caller's buffer is the runtime's
// contract), up to 1 MiB; dims claiming more than 2^62 bytes are passed with a small buffer, as the runtime
// must refuse them before reading.
//
//===----------------------------------------------------------------------===//
#include "moert/moert.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

std::vector<moert_model *> models;

/// Reads the fuzz input front to back; past its end, zeros.
struct Reader {
  const uint8_t *p;
  size_t n;
  uint8_t byte() { return n ? (--n, *p++) : 0; }
  uint64_t wide() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
      v = v << 8 | byte();
    return v;
  }
};

size_t dtypeBytes(int dt) {
  switch (dt) {
  case MOERT_F64:
  case MOERT_I64:
  case MOERT_U64:
    return 8;
  case MOERT_F32:
  case MOERT_I32:
  case MOERT_U32:
    return 4;
  case MOERT_F16:
  case MOERT_BF16:
  case MOERT_I16:
  case MOERT_U16:
    return 2;
  default:
    return 1;
  }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  const char *list = std::getenv("MOERT_FUZZ_ARTIFACTS");
  std::string all = list ? list : "";
  for (size_t at = 0; at < all.size();) {
    size_t end = all.find(':', at);
    std::string path = all.substr(at, end == std::string::npos ? std::string::npos : end - at);
    at = end == std::string::npos ? all.size() : end + 1;
    moert_load_options o{sizeof o, 2, 1, MOERT_DEVICE_CPU, nullptr, 0};
    moert_model *m = nullptr;
    if (moert_status st = moert_load(path.c_str(), &o, &m)) {
      std::fprintf(stderr, "moert_run_fuzzer: %s\n", moert_status_message(st));
      std::abort();
    }
    models.push_back(m);
  }
  std::atexit([] { // freed at exit, so that LeakSanitizer judges only what the runs leave behind
    for (moert_model *m : models)
      moert_free(m);
  });
  if (models.empty()) {
    std::fprintf(stderr, "moert_run_fuzzer: set MOERT_FUZZ_ARTIFACTS to artifacts to run\n");
    std::abort();
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Reader r{data, size};
  moert_model *m = models[r.byte() % models.size()];
  const size_t wanted = moert_num_inputs(m);
  const int count = r.byte() % (wanted + 2);
  std::vector<std::vector<int64_t>> dims(count);
  std::vector<std::vector<char>> buffers(count);
  std::vector<std::string> names(count);
  std::vector<moert_tensor> inputs(count);
  for (int i = 0; i < count; ++i) {
    const uint8_t how = r.byte();
    // Mostly the model's own inputs in order, sometimes another of them or a name it does not take.
    names[i] = how % 8 == 7 ? "no such input" : moert_input_name(m, (how % 8 < 5 ? i : how) % wanted);
    const int dtype = how % 5 == 0 ? r.byte() % 16 : moert_input_dtype(m, (how % 8 < 5 ? i : how) % wanted);
    const int rank = r.byte() % 7;
    uint64_t bytes = dtypeBytes(dtype);
    bool overflows = false;
    for (int d = 0; d < rank; ++d) {
      const uint8_t kind = r.byte();
      int64_t v = kind < 200 ? kind % 48 : kind < 250 ? int64_t(r.wide() % 4096) : int64_t(r.wide());
      dims[i].push_back(v);
      if (v >= 0)
        overflows |= __builtin_mul_overflow(bytes, uint64_t(v), &bytes) || bytes > (uint64_t(1) << 62);
    }
    if (!overflows && bytes > (1u << 20))
      return 0; // a buffer this harness will not allocate (and a caller's buffer must hold its dims)
    buffers[i].resize(overflows ? 64 : bytes + 1);
    for (char &c : buffers[i])
      c = char(r.byte() ^ uint8_t(&c - buffers[i].data()));
    inputs[i] = moert_tensor{names[i].c_str(), moert_dtype(dtype), rank, dims[i].data(), buffers[i].data()};
  }
  moert_result *res = nullptr;
  if (moert_status st = moert_run(m, nullptr, inputs.data(), inputs.size(), &res)) {
    if (res || !moert_status_message(st) || !*moert_status_message(st))
      std::abort(); // an error is one non-empty message and no result
    moert_status_free(st);
    return 0;
  }
  for (size_t i = 0; i < moert_result_num_outputs(res); ++i)
    if (const moert_tensor *t = moert_result_output(res, i)) { // read every output byte
      uint64_t n = dtypeBytes(t->dtype);
      for (int d = 0; d < t->rank; ++d)
        n *= uint64_t(t->dims[d]);
      volatile uint8_t sink = 0;
      for (uint64_t b = 0; b < n; b += 61)
        sink ^= static_cast<const uint8_t *>(t->data)[b];
    }
  moert_result_free(res);
  return 0;
}
