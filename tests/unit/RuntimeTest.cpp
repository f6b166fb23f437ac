//===- RuntimeTest.cpp - libmoert's C API: concurrency and input checks ------===//
//
// Compiles a transformers fixture (Qwen2-MoE block: norm, router, experts, shared expert, residual) with the
// moec binary, then drives libmoert through its C API only; concurrency stress over it and over sessions of a
// decoder fixture (bounded by MOERT_STRESS_SECONDS). Sequences in and out: ONNX's SequenceInsert node
// test (libonnx-testdata), against the output its test data holds.
//
//===----------------------------------------------------------------------===//
#include "moert/moert.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

const std::string &artifact() {
  static std::string path = [] {
    std::string p = std::string(::testing::TempDir()) + "moert_runtime_test.moex";
    std::string cmd = std::string(MOEC_BIN) + " compile " + MOEC_FIXTURE + " -o " + p + " --quiet 2>/dev/null";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return p;
  }();
  return path;
}

struct Model {
  moert_model *m = nullptr;
  explicit Model(int threads) {
    moert_load_options o{sizeof o, threads, 1, MOERT_DEVICE_CPU, nullptr, 0};
    moert_status st = moert_load(artifact().c_str(), &o, &m);
    EXPECT_EQ(st, nullptr) << moert_status_message(st);
    moert_status_free(st);
  }
  ~Model() { moert_free(m); }
};

std::vector<float> randomInput(int64_t tokens, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d;
  std::vector<float> x(2 * tokens * 32);
  for (float &v : x)
    v = d(gen);
  return x;
}

std::vector<float> run(moert_model *m, std::vector<float> &x, int64_t tokens) {
  int64_t dims[3] = {2, tokens, 32};
  moert_tensor in{"hidden_states", MOERT_F32, 3, dims, x.data()};
  moert_result *res = nullptr;
  moert_status st = moert_run(m, nullptr, &in, 1, &res);
  EXPECT_EQ(st, nullptr) << moert_status_message(st);
  moert_status_free(st);
  if (!res)
    return {};
  const moert_tensor *out = moert_result_output(res, 0);
  EXPECT_EQ(out->rank, 3);
  EXPECT_EQ(out->dims[1], tokens);
  const float *p = static_cast<const float *>(out->data);
  std::vector<float> y(p, p + 2 * tokens * 32);
  moert_result_free(res);
  return y;
}

std::string runError(moert_model *m, const moert_tensor &in) {
  moert_result *res = nullptr;
  moert_status st = moert_run(m, nullptr, &in, 1, &res);
  EXPECT_EQ(res, nullptr);
  std::string msg = moert_status_message(st);
  moert_status_free(st);
  return msg;
}

} // namespace

TEST(RuntimeTest, DescribesInputsAndOutputs) {
  Model model(1);
  ASSERT_EQ(moert_num_inputs(model.m), 1u);
  EXPECT_STREQ(moert_input_name(model.m, 0), "hidden_states");
  ASSERT_EQ(moert_num_outputs(model.m), 1u);
  EXPECT_STREQ(moert_output_name(model.m, 0), "output");
  EXPECT_NE(std::string(moert_describe(model.m)).find("sparse_moe E=8 k=4 H=32"), std::string::npos);
}

TEST(RuntimeTest, WrongInputsAreOneClearError) {
  Model model(1);
  std::vector<float> x = randomInput(4, 1);
  int64_t good[3] = {2, 4, 32}, wrongHidden[3] = {2, 4, 16}, wrongBatch[3] = {3, 4, 32}, rank2[2] = {8, 32};
  EXPECT_EQ(runError(model.m, {"hidden_states", MOERT_I64, 3, good, x.data()}),
            "input 'hidden_states': dtype i64, the model takes f32");
  EXPECT_EQ(runError(model.m, {"hidden_states", MOERT_F32, 2, rank2, x.data()}),
            "input 'hidden_states': rank 2, the model takes rank 3");
  EXPECT_EQ(runError(model.m, {"hidden_states", MOERT_F32, 3, wrongHidden, x.data()}),
            "input 'hidden_states': dim 2 is 16, the model was compiled for 32");
  EXPECT_EQ(runError(model.m, {"hidden_states", MOERT_F32, 3, wrongBatch, x.data()}),
            "input 'hidden_states': dim 0 is 3, the model was compiled for 2");
  EXPECT_EQ(runError(model.m, {"x", MOERT_F32, 3, good, x.data()}), "input 'hidden_states' is missing");
}

TEST(RuntimeTest, MissingFileIsAnError) {
  moert_model *m = nullptr;
  moert_status st = moert_load("/nonexistent/model.moex", nullptr, &m);
  ASSERT_NE(st, nullptr);
  EXPECT_EQ(std::string(moert_status_message(st)), "/nonexistent/model.moex: cannot open: No such file or directory");
  EXPECT_EQ(m, nullptr);
  moert_status_free(st);
}

namespace {
// SequenceInsert(sequence of int64 tensors, tensor, position) -> sequence.
moert_model *loadSequenceModel() {
  std::string p = std::string(::testing::TempDir()) + "moert_sequence_test.moex";
  std::string cmd =
      std::string(MOEC_BIN) + " compile " + MOEC_SEQUENCE_FIXTURE + " -o " + p + " --quiet 2>/dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  moert_model *m = nullptr;
  moert_status st = moert_load(p.c_str(), nullptr, &m);
  EXPECT_EQ(st, nullptr) << moert_status_message(st);
  moert_status_free(st);
  return m;
}

std::string runValuesError(moert_model *m, const moert_value *in, size_t n) {
  moert_result *res = nullptr;
  moert_status st = moert_run_values(m, nullptr, in, n, &res);
  EXPECT_EQ(res, nullptr);
  std::string msg = moert_status_message(st);
  moert_status_free(st);
  return msg;
}
} // namespace

TEST(RuntimeTest, SequencesInAndOut) {
  moert_model *m = loadSequenceModel();
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(moert_input_kind(m, 0), MOERT_TYPE_SEQUENCE);
  EXPECT_EQ(moert_input_kind(m, 1), MOERT_TYPE_TENSOR);
  EXPECT_EQ(moert_output_kind(m, 0), MOERT_TYPE_SEQUENCE);
  // The test data: [[1, 2, 3, 4], [5, 6, 7], [8, 9]] with [-2, -1, 0] inserted at position 0.
  int64_t a[] = {1, 2, 3, 4}, b[] = {5, 6, 7}, c[] = {8, 9}, t[] = {-2, -1, 0}, pos[] = {0};
  int64_t da[] = {4}, db[] = {3}, dc[] = {2}, dt[] = {3}, dp[] = {1};
  moert_tensor elems[] = {
      {nullptr, MOERT_I64, 1, da, a}, {nullptr, MOERT_I64, 1, db, b}, {nullptr, MOERT_I64, 1, dc, c}};
  moert_tensor tensor{nullptr, MOERT_I64, 1, dt, t}, position{nullptr, MOERT_I64, 1, dp, pos};
  moert_value in[] = {{"sequence", MOERT_VALUE_SEQUENCE, MOERT_I64, elems, 3},
                      {"tensor", MOERT_VALUE_TENSOR, MOERT_I64, &tensor, 1},
                      {"position", MOERT_VALUE_TENSOR, MOERT_I64, &position, 1}};
  moert_result *res = nullptr;
  moert_status st = moert_run_values(m, nullptr, in, 3, &res);
  ASSERT_EQ(st, nullptr) << moert_status_message(st);
  EXPECT_EQ(moert_result_output(res, 0), nullptr); // not a tensor
  const moert_value *out = moert_result_value(res, 0);
  ASSERT_NE(out, nullptr);
  EXPECT_STREQ(out->name, "output_sequence");
  ASSERT_EQ(out->kind, MOERT_VALUE_SEQUENCE);
  ASSERT_EQ(out->count, 4u);
  const std::vector<std::vector<int64_t>> want = {{-2, -1, 0}, {1, 2, 3, 4}, {5, 6, 7}, {8, 9}};
  for (size_t i = 0; i < 4; ++i) {
    const moert_tensor &e = out->tensors[i];
    ASSERT_EQ(e.dtype, MOERT_I64);
    ASSERT_EQ(e.rank, 1);
    ASSERT_EQ(e.dims[0], int64_t(want[i].size()));
    EXPECT_EQ(
        std::vector<int64_t>(static_cast<int64_t *>(e.data), static_cast<int64_t *>(e.data) + e.dims[0]),
        want[i])
        << "tensor " << i;
  }
  moert_result_free(res);

  // Wrong kinds, dtypes and positions: one error line each.
  moert_value asTensor[] = {{"sequence", MOERT_VALUE_TENSOR, MOERT_I64, elems, 1}, in[1], in[2]};
  EXPECT_EQ(runValuesError(m, asTensor, 3), "input 'sequence': given a tensor, the model takes a sequence");
  moert_value none[] = {{"sequence", MOERT_VALUE_NONE, MOERT_I64, nullptr, 0}, in[1], in[2]};
  EXPECT_EQ(runValuesError(m, none, 3), "input 'sequence': given no value, the model takes a sequence");
  moert_tensor f32Elem{nullptr, MOERT_F32, 1, da, a};
  moert_tensor mixed[] = {elems[0], f32Elem};
  moert_value wrongDtype[] = {{"sequence", MOERT_VALUE_SEQUENCE, MOERT_I64, mixed, 2}, in[1], in[2]};
  EXPECT_EQ(runValuesError(m, wrongDtype, 3), "input 'sequence' tensor 1: dtype f32, the model takes i64");
  int64_t far[] = {5};
  moert_tensor farPosition{nullptr, MOERT_I64, 1, dp, far};
  moert_value outOfRange[] = {in[0], in[1], {"position", MOERT_VALUE_TENSOR, MOERT_I64, &farPosition, 1}};
  EXPECT_EQ(runValuesError(m, outOfRange, 3),
            "SequenceInsert 'output_sequence': position 5 is out of range for a sequence of 3 tensors");
  // The tensor-only entry point cannot give a sequence.
  moert_tensor flat[] = {elems[0], tensor, position};
  moert_result *r2 = nullptr;
  st = moert_run(m, nullptr, flat, 3, &r2);
  ASSERT_NE(st, nullptr);
  EXPECT_EQ(std::string(moert_status_message(st)),
            "input 'sequence': given a tensor, the model takes a sequence");
  moert_status_free(st);
  moert_free(m);
}

namespace {
/// Seconds each stress test runs (MOERT_STRESS_SECONDS; default 4).
double stressSeconds() {
  const char *s = std::getenv("MOERT_STRESS_SECONDS");
  return s && std::atof(s) > 0 ? std::atof(s) : 4.0;
}

/// Runs `body(thread, iteration)` on `threads` threads until `seconds` have passed (each thread at least
/// once); returns the calls made.
template <class F> long hammer(int threads, double seconds, F body) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::atomic<long> calls{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (long i = 0; i == 0 || std::chrono::steady_clock::now() < end; ++i, ++calls)
        body(t, i);
    });
  for (auto &t : pool)
    t.join();
  return calls.load();
}

/// A decoder with KV caches (the Qwen3-MoE-like fixture with past_key_values inputs, vocabulary 32).
moert_model *loadDecoder(int threads) {
  static std::string path = [] {
    std::string p = std::string(::testing::TempDir()) + "moert_decoder_test.moex";
    std::string cmd =
        std::string(MOEC_BIN) + " compile " + MOEC_DECODER_FIXTURE + " -o " + p + " --quiet 2>/dev/null";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return p;
  }();
  moert_load_options o{sizeof o, threads, 1, MOERT_DEVICE_CPU, nullptr, 0};
  moert_model *m = nullptr;
  moert_status st = moert_load(path.c_str(), &o, &m);
  EXPECT_EQ(st, nullptr) << moert_status_message(st);
  moert_status_free(st);
  return m;
}

moert_session *newSession(moert_model *m, moert_dtype cache) {
  moert_session_options so{sizeof so, 256, 0, cache, 1};
  moert_session *s = nullptr;
  moert_status st = moert_session_create(m, &so, &s);
  EXPECT_EQ(st, nullptr) << moert_status_message(st);
  moert_status_free(st);
  return s;
}

/// One conversation with a session: a prompt, then greedy tokens one at a time with a rewind in the middle
/// (the last `back` positions forgotten and decoded again); every call's logits in order. `s` stays the
/// caller's to free.
std::vector<float> converseOn(moert_session *s, const std::vector<int64_t> &prompt, int steps, size_t back) {
  moert_status st = nullptr;
  std::vector<float> all;
  if (!s)
    return all;
  std::vector<int64_t> tokens = prompt;
  size_t fed = 0;
  for (int i = 0; i < steps; ++i) {
    if (i == steps / 2 && back) { // forget the last `back` positions, feed them again
      st = moert_session_rewind(s, moert_session_length(s) - back);
      EXPECT_EQ(st, nullptr) << moert_status_message(st);
      moert_status_free(st);
      fed -= back;
    }
    const float *logits = nullptr;
    size_t vocab = 0;
    st = moert_session_append(s, tokens.data() + fed, tokens.size() - fed, &logits, &vocab);
    EXPECT_EQ(st, nullptr) << moert_status_message(st);
    moert_status_free(st);
    if (!logits)
      break;
    fed = tokens.size();
    all.insert(all.end(), logits, logits + vocab);
    tokens.push_back(std::max_element(logits, logits + vocab) - logits);
  }
  return all;
}

/// The same conversation on a new session of `m`.
std::vector<float> converse(moert_model *m, const std::vector<int64_t> &prompt, moert_dtype cache, int steps,
                            size_t back) {
  moert_session *s = newSession(m, cache);
  std::vector<float> all = converseOn(s, prompt, steps, back);
  moert_session_free(s);
  return all;
}
} // namespace

// Stress: one loaded model called from 8 threads at once for a bounded time, each call a token count from 1 to
// 64 and one of 16 inputs: every result bitwise the one the same input gives alone (results do not depend on
// scheduling). Under ThreadSanitizer
// (make test SANITIZE=thread) this also checks the runtime's locking.
TEST(RuntimeTest, StressRunsFromEightThreads) {
  Model model(2);
  ASSERT_NE(model.m, nullptr);
  constexpr int kInputs = 16;
  std::vector<std::vector<float>> inputs, expected;
  std::vector<int64_t> tokens;
  for (int i = 0; i < kInputs; ++i) {
    tokens.push_back(1 + (i * 37) % 64);
    inputs.push_back(randomInput(tokens[i], 500 + i));
    expected.push_back(run(model.m, inputs[i], tokens[i]));
  }
  std::atomic<int> mismatches{0};
  long calls = hammer(8, stressSeconds(), [&](int t, long i) {
    const int k = int((t * 7 + i * 5) % kInputs);
    std::vector<float> got = run(model.m, inputs[k], tokens[k]);
    if (got.size() != expected[k].size() ||
        std::memcmp(got.data(), expected[k].data(), got.size() * sizeof(float)) != 0)
      ++mismatches;
  });
  std::printf("stress: %ld calls from 8 threads in %.1f s\n", calls, stressSeconds());
  EXPECT_EQ(mismatches.load(), 0) << "of " << calls << " calls";
}

// Stress: 8 sessions of one decoder at once (f32 and f16 caches, prompts of 1 to 9 tokens, a rewind mid-way)
// for a bounded time: every call's logits bitwise those of the same conversation alone.
TEST(RuntimeTest, StressSessionsFromEightThreads) {
  moert_model *m = loadDecoder(2);
  ASSERT_NE(m, nullptr);
  constexpr int kConversations = 8;
  std::vector<std::vector<int64_t>> prompts;
  std::vector<std::vector<float>> expected;
  for (int i = 0; i < kConversations; ++i) {
    std::vector<int64_t> p;
    for (int j = 0; j <= i; ++j)
      p.push_back((i * 11 + j * 5) % 32);
    prompts.push_back(p);
    expected.push_back(converse(m, p, i % 2 ? MOERT_F16 : MOERT_F32, 10, size_t(i % 3)));
    ASSERT_EQ(expected.back().size(), 10u * 32u) << "conversation " << i;
  }
  std::atomic<int> mismatches{0};
  long calls = hammer(8, stressSeconds(), [&](int t, long i) {
    const int k = int((t + i * 3) % kConversations);
    std::vector<float> got = converse(m, prompts[k], k % 2 ? MOERT_F16 : MOERT_F32, 10, size_t(k % 3));
    if (got.size() != expected[k].size() ||
        std::memcmp(got.data(), expected[k].data(), got.size() * sizeof(float)) != 0)
      ++mismatches;
  });
  std::printf("stress: %ld conversations (10 calls each) from 8 threads in %.1f s\n", calls, stressSeconds());
  EXPECT_EQ(mismatches.load(), 0) << "of " << calls << " conversations";
  moert_free(m);
}

// A session keeps its model loaded: moert_free while sessions are open leaves them working (the same logits,
// bitwise, as before it), and the last moert_session_free unloads the model (under ASan + LeakSanitizer,
// sanitize-runtime-unit: no use after free, no leak).
TEST(RuntimeTest, SessionsOutliveMoertFree) {
  moert_model *m = loadDecoder(2);
  ASSERT_NE(m, nullptr);
  const std::vector<int64_t> prompt{3, 17, 5, 29};
  const std::vector<float> f32 = converse(m, prompt, MOERT_F32, 8, 2),
                           f16 = converse(m, prompt, MOERT_F16, 8, 2);
  ASSERT_EQ(f32.size(), 8u * 32u);
  moert_session *a = newSession(m, MOERT_F32), *b = newSession(m, MOERT_F16);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  moert_free(m); // the caller's hold only
  const std::vector<float> gotA = converseOn(a, prompt, 8, 2);
  moert_session_free(a);
  const std::vector<float> gotB = converseOn(b, prompt, 8, 2); // the model is still loaded for b
  moert_session_free(b);                                       // and unloaded here
  ASSERT_EQ(gotA.size(), f32.size());
  ASSERT_EQ(gotB.size(), f16.size());
  EXPECT_EQ(std::memcmp(gotA.data(), f32.data(), f32.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(gotB.data(), f16.data(), f16.size() * sizeof(float)), 0);
}

// Worker counts outside 1..MOERT_MAX_THREADS are one clear error at load (0 means one per core).
TEST(RuntimeTest, ThreadCountsOutOfRangeAreAnError) {
  for (int threads : {-1, MOERT_MAX_THREADS + 1, 10000}) {
    moert_load_options o{sizeof o, threads, 1, MOERT_DEVICE_CPU, nullptr, 0};
    moert_model *m = nullptr;
    moert_status st = moert_load(artifact().c_str(), &o, &m);
    ASSERT_NE(st, nullptr) << threads;
    EXPECT_EQ(std::string(moert_status_message(st)),
              "threads = " + std::to_string(threads) + ": expected 1 to 1024 (or 0: one per core)");
    EXPECT_EQ(m, nullptr);
    moert_status_free(st);
  }
}

// A caller's dims whose byte count overflows 64 bits are refused before anything reads the data.
TEST(RuntimeTest, OverflowingInputDimsAreAnError) {
  Model model(1);
  std::vector<float> x = randomInput(1, 1);
  int64_t dims[3] = {2, int64_t(1) << 60, 32};
  EXPECT_EQ(
      runError(model.m, {"hidden_states", MOERT_F32, 3, dims, x.data()}),
      "input 'hidden_states': dims [2, 1152921504606846976, 32] hold more bytes than a 64-bit size counts");
}
