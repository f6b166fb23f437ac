//===- moert.cpp - the moert CLI: run and inspect .moex artifacts ------------===//
//
//   moert run MODEL.moex --input NAME=FILE.npy ... [--output-dir DIR] [--threads N] [--repeat N]
//                        [--warmup N] [--profile trace.json] [--verify | --no-verify]
//   moert inspect MODEL.moex
//   moert verify MODEL.moex [--public-key KEY.pub.pem [--signature SIG]]
//   moert generate MODEL.moex --prompt-ids ids.npy [--attention-mask mask.npy] [--max-new-tokens N]
//                  [--greedy | --temperature T --top-k K --top-p P --seed S] [--eos-id ID] [--max-context N]
//                  [--kv-cache f32|bf16|f16|int8] [--threads N] [--profile F] [--output ids.npy]
//   moert generate MODEL.moex --prompt TEXT [--prompt TEXT ...] [--tokenizer tokenizer.json] [options as
//   above] moert tokenize MODEL.moex|tokenizer.json --text TEXT | --file F | --ids "1 2 3" | --jsonl F
//   [--no-special]
//
// Links libmoert, for --public-key libcrypto, and for text its tokenizer.json reader (Tokenizer.h:
// nlohmann-json, PCRE2, ICU; no LLVM, no MLIR). Errors are one line on stderr and a non-zero exit.
//
//===----------------------------------------------------------------------===//
#include "moert/moert.h"
#include "ArtifactSignature.h"
#include "Npy.h"
#include "Tokenizer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

const char *kUsage =
    "moert: runs artifacts compiled by `moec compile` on this CPU or a GPU\n\n"
    "usage:\n"
    "  moert run MODEL.moex --input NAME=FILE.npy ... [options]\n"
    "  moert inspect MODEL.moex [--device D]\n"
    "  moert verify MODEL.moex   check every section's checksum (weights included); name each corrupted "
    "one;\n"
    "                          with --public-key, the file's signature first\n"
    "  moert generate MODEL.moex --prompt-ids IDS.npy [options]   prefill, then decode token by token\n"
    "  moert generate MODEL.moex --prompt TEXT [options]   the same from text (a tokenizer.json next to the\n"
    "                          model, else the one moec put in it, or --tokenizer); the new tokens are\n"
    "                          printed as text too\n"
    "  moert tokenize MODEL.moex|TOKENIZER.json --text TEXT | --file F   text -> token ids (one line);\n"
    "                          --ids \"1 2 3\"  token ids -> text; --jsonl F  each line a JSON string -> "
    "one\n"
    "                          JSON object a line ({\"ids\": [..], \"decoded\": \"..\"}); --no-special: "
    "without the\n"
    "                          special tokens the tokenizer adds (a BOS) or, decoding, keeping special "
    "tokens\n"
    "  moert devices [--device D] [--bandwidth]   the GPU moert would use (and its copy bandwidth)\n"
    "  mpirun -np N moert run|generate MODEL.moex ...   an artifact compiled with --expert-parallel=N: "
    "every\n"
    "                          rank gets the same arguments, rank 0 prints and writes; an error on one rank\n"
    "                          ends them all; MOERT_EP_TIMEOUT=S (default 300) bounds a wait for the other\n"
    "                          ranks (docs/scale-out.md)\n\n"
    "run options:\n"
    "  --input NAME=FILE.npy   an input (repeat for each; NAME as `moert inspect` lists it)\n"
    "  --output-dir DIR        write each output as DIR/<output name>.npy (default: .)\n"
    "  --threads N             worker threads, 1 to 1024 (default: one per core; they spin 500 us between "
    "jobs\n"
    "                          before sleeping, MOERT_SPIN_US=N sets it, 0 sleeps at once)\n"
    "  --device D              where MoE and linear dispatches run: cpu (default), gpu (CUDA, else HIP),\n"
    "                          cuda, hip, emu (a host emulator of the GPU, for artifacts built with\n"
    "                          --target=emu: tests the GPU path without a GPU, slowly); on a GPU also the\n"
    "                          graph ops it has kernels for whose inputs are there (moert inspect --device\n"
    "                          marks them); other ops run on the CPU. No driver or device: an error, never "
    "a\n"
    "                          fallback. Kernels go to the device as CUDA / HIP graphs, updated in place\n"
    "                          from one call to the next (MOERT_GPU_GRAPHS=N kernels a graph, default 16;\n"
    "                          0: each launched directly)\n"
    "  --no-round-trips        on a GPU: a step the CPU runs that reads a value a GPU step made (a copy "
    "back\n"
    "                          inside every call; moert inspect --device lists them) is an error naming it,\n"
    "                          not a copy (also for generate)\n"
    "  --repeat N              time N calls and print best and median (default 1)\n"
    "  --warmup N              untimed calls before timing (default: 1 when --repeat > 1)\n"
    "  --gpu-time N            after the run, time each dispatch's GPU kernels N times back to back\n"
    "                          (device time per call, weight bytes read, GB/s)\n"
    "  --profile FILE.json     write a Chrome trace (chrome://tracing, Perfetto) of each step of the last "
    "call\n"
    "  --verify                check every section's checksum at load (reads the whole file); by default\n"
    "                          the header, metadata and code are checked at load and each weight section\n"
    "                          on its first use, so loading reads no weights\n"
    "  --no-verify             check no checksums\n"
    "  --public-key KEY.pem    load the artifact only if its signature (moec compile --sign-key, or\n"
    "                          openssl pkeyutl -sign -rawin; Ed25519 or Ed448) matches this PEM public key;\n"
    "                          reads the whole file first. Also for inspect and verify. $MOERT_PUBLIC_KEY\n"
    "                          sets it for every command (docs/artifact-format.md, \"Trust model\")\n"
    "  --signature SIG         where that signature is (default: MODEL.moex.sig)\n\n"
    "generate options (a decoder with KV caches: `moert inspect` shows a 'decoder:' line):\n"
    "  --prompt-ids IDS.npy    the prompt's token ids (int64 or int32): shape [n] for one sequence, [B, n] "
    "for\n"
    "                          a batch of B generated side by side\n"
    "  --prompt TEXT           the prompt as text (repeat for a batch: left-padded, the padding masked);\n"
    "                          encoded as Hugging Face's tokenizers does, with the special tokens it adds\n"
    "  --tokenizer FILE        a tokenizer.json (default: the one next to the model, else the one inside it\n"
    "                          from moec compile, if any); with one, the new tokens are also printed as\n"
    "                          text (special tokens skipped). BPE and WordLevel models; other kinds are\n"
    "                          one error naming what is not supported\n"
    "  --stream, --no-stream   print the text as each token comes (one sequence, with a tokenizer); "
    "default:\n"
    "                          when the output is a terminal\n"
    "  --attention-mask M.npy  [B, n] (int64 or int32): 0 at padding, 1 at tokens; prompts of different\n"
    "                          lengths are left-padded (default: no padding)\n"
    "  --max-new-tokens N      tokens to generate (default 32)\n"
    "  --greedy                the most likely token each step (default)\n"
    "  --temperature T         sample instead: logits / T (with --top-k K, --top-p P, --seed S)\n"
    "  --eos-id ID             stop after generating ID\n"
    "  --max-context N         positions the KV caches hold (default 4096)\n"
    "  --kv-cache T            how the KV caches are stored: f32 (default), bf16 or f16 (half the bytes\n"
    "                          read per token; keys and values rounded to nearest even as appended), int8\n"
    "                          (0.28x the bytes at head dim 128: int8 codes, an f32 scale per 32 values)\n"
    "  --profile FILE.json     write a Chrome trace of the last call's steps (the last decode step)\n"
    "  --output IDS.npy        also write the generated ids (int64) there ([B, new] for a batch; a sequence\n"
    "                          that stopped at --eos-id early is padded with that id)\n"
    "  --threads N, --device D, --verify, --no-verify, --public-key K, --signature S as for run\n";

// Expert parallelism (mpirun -np N moert ...; docs/scale-out.md): once a model runs on several ranks, an
// error on one ends them all (the others would wait for it in their next MoE layer), errors say which rank,
// and only rank 0 prints results and writes files.
const moert_model *gRanksModel = nullptr;
int gRank = 0;

int fail(const std::string &msg) {
  if (gRanksModel)
    std::fprintf(stderr, "moert: error: rank %d: %s\n", gRank, msg.c_str());
  else
    std::fprintf(stderr, "moert: error: %s\n", msg.c_str());
  if (gRanksModel)
    moert_abort_ranks(gRanksModel, "");
  return 1;
}

/// fail(), then frees `m` (after: with expert parallelism fail() ends every rank through it).
int failFreeing(moert_model *m, const std::string &msg) {
  int rc = fail(msg);
  moert_free(m);
  return rc;
}

/// After loading `m` for run or generate: joins its ranks (when it has several). False (after the error) when
/// this process is one of several that mpirun started but the model runs on one process. `printer` is set
/// for the process that prints and writes the results.
bool joinRanks(const moert_model *m, const std::string &model, bool &printer) {
  int rank = 0, size = 1;
  moert_ranks(m, &rank, &size);
  printer = rank == 0;
  if (size > 1) {
    gRanksModel = m, gRank = rank;
    return true;
  }
  const char *launched = std::getenv("OMPI_COMM_WORLD_SIZE");
  if (launched && std::atoi(launched) > 1) {
    fail("started as one of " + std::string(launched) + " processes (mpirun), but " + model +
         " runs on one process: each would run the whole model and write the same files (compile it with "
         "moec compile --expert-parallel=" +
         launched + ", or run it without mpirun)");
    return false;
  }
  return true;
}

int check(moert_status st) {
  if (!st)
    return 0;
  int rc = fail(moert_status_message(st));
  moert_status_free(st);
  return rc;
}

bool parseInt(const char *s, int &out) {
  char *end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (!end || *end || v < 0 || v > 1 << 20)
    return false;
  out = static_cast<int>(v);
  return true;
}

/// --threads N: 1..MOERT_MAX_THREADS (leaving the flag out means one per core); else an error line.
bool validThreads(int n) {
  if (n >= 1 && n <= MOERT_MAX_THREADS)
    return true;
  fail("--threads " + std::to_string(n) + ": expected 1 to " + std::to_string(MOERT_MAX_THREADS) +
       " (leave it out for one thread per core)");
  return false;
}

/// Who produced an artifact: with a public key (--public-key, else $MOERT_PUBLIC_KEY) the file is loaded only
/// if its detached signature matches (tools/signing/ArtifactSignature.h). Checked before moert_load maps it.
struct Provenance {
  std::string publicKey, signature;

  /// Takes --public-key and --signature (true if `flag` was one of them; `value` is null when it lacks one).
  bool parse(const std::string &flag, const char *value, bool &failed) {
    if (flag != "--public-key" && flag != "--signature")
      return false;
    if (!value)
      failed = true;
    else
      (flag == "--public-key" ? publicKey : signature) = value;
    return true;
  }

  /// 0 when there is no key or the signature matches; else an error line's exit code.
  int check(const std::string &model) {
    if (publicKey.empty())
      if (const char *env = std::getenv("MOERT_PUBLIC_KEY"); env && *env)
        publicKey = env;
    if (publicKey.empty())
      return signature.empty() ? 0
                               : fail("--signature " + signature + " needs --public-key KEY.pem to check it");
    std::string error;
    if (!moec::signature::verify(model, publicKey,
                                 signature.empty() ? moec::signature::defaultPath(model) : signature, error))
      return fail(error);
    return 0;
  }
};

bool parseDevice(const std::string &s, int &out) {
  static const std::pair<const char *, int> names[] = {{"cpu", MOERT_DEVICE_CPU},
                                                       {"gpu", MOERT_DEVICE_GPU},
                                                       {"cuda", MOERT_DEVICE_CUDA},
                                                       {"hip", MOERT_DEVICE_HIP},
                                                       {"emu", MOERT_DEVICE_EMU}};
  for (const auto &[n, v] : names)
    if (s == n) {
      out = v;
      return true;
    }
  return false;
}

/// The model path and options of inspect and verify: MODEL [--device D] [--public-key K] [--signature S].
bool parseSimple(int argc, char **argv, bool takesDevice, std::string &model, int &device,
                 Provenance &provenance, const char *usage) {
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    const char *v = nullptr;
    if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) {
      v = argv[i] + a.find('=') + 1;
      a = a.substr(0, a.find('='));
    } else if (a.rfind("--", 0) == 0 && i + 1 < argc) {
      v = argv[++i];
    }
    bool failed = false;
    if (provenance.parse(a, v, failed)) {
      if (failed)
        return fail(a + " needs a value"), false;
    } else if (takesDevice && a == "--device") {
      if (!v)
        return fail("--device needs a value"), false;
      if (!parseDevice(v, device))
        return fail(std::string("--device ") + v + ": expected cpu, gpu, cuda, hip or emu"), false;
    } else if (a.rfind("-", 0) == 0 || !model.empty()) {
      return fail(std::string("usage: ") + usage), false;
    } else {
      model = a;
    }
  }
  if (model.empty())
    return fail(std::string("usage: ") + usage), false;
  return true;
}

/// inspect and verify: MODEL [options] parsed, its signature checked (with a public key), then loaded with
/// `threads` workers (0: one per core). 0 with `m` set, else the exit code of the error already printed.
int parseAndLoad(int argc, char **argv, bool takesDevice, int threads, const char *usage, std::string &model,
                 Provenance &provenance, moert_model *&m) {
  int device = MOERT_DEVICE_CPU;
  if (!parseSimple(argc, argv, takesDevice, model, device, provenance, usage))
    return 1;
  if (int rc = provenance.check(model))
    return rc;
  moert_load_options lo{sizeof lo, threads, 1, device, nullptr, 0};
  return check(moert_load(model.c_str(), &lo, &m));
}

/// On a GPU: how the runs' kernels went to the device (graphs built, launched, nodes updated); else "".
std::string graphsLine(moert_model *m) {
  moert_gpu_graph_stats g{};
  if (moert_status st = moert_gpu_graphs(m, &g)) {
    moert_status_free(st); // not on a GPU
    return "";
  }
  char line[512];
  std::snprintf(line, sizeof line,
                "gpu graphs: %s: %llu launched, %llu built, %llu nodes updated, %llu uploads "
                "staged\n",
                g.state, (unsigned long long)g.graphs, (unsigned long long)g.builds,
                (unsigned long long)g.updates, (unsigned long long)g.staged);
  return line;
}

int inspect(int argc, char **argv) {
  std::string model;
  Provenance provenance;
  moert_model *m = nullptr;
  if (int rc = parseAndLoad(argc, argv, true, 0,
                            "moert inspect MODEL.moex [--device D] [--public-key KEY.pem [--signature SIG]]",
                            model, provenance, m))
    return rc;
  std::fputs(moert_describe(m), stdout);
  moert_free(m);
  return 0;
}

int verify(int argc, char **argv) {
  std::string model;
  Provenance provenance;
  moert_model *m = nullptr;
  if (int rc = parseAndLoad(argc, argv, false, 1,
                            "moert verify MODEL.moex [--public-key KEY.pem [--signature SIG]]", model,
                            provenance, m))
    return rc;
  moert_status st = moert_verify(m);
  moert_free(m);
  if (int rc = check(st))
    return rc;
  if (!provenance.publicKey.empty())
    std::printf("%s: signed by the holder of %s's private key\n", model.c_str(),
                provenance.publicKey.c_str());
  std::printf("%s: every section's checksum matches\n", model.c_str());
  return 0;
}

int devices(int argc, char **argv) {
  int device = MOERT_DEVICE_GPU, measure = 0;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--bandwidth")
      measure = 1;
    else if (a == "--device" && i + 1 < argc && parseDevice(argv[i + 1], device))
      ++i;
    else
      return fail("usage: moert devices [--device gpu|cuda|hip|emu] [--bandwidth]");
  }
  char *text = nullptr;
  if (int rc = check(moert_device_probe(static_cast<moert_device>(device), measure, &text)))
    return rc;
  std::printf("%s\n", text);
  std::free(text);
  return 0;
}

int run(int argc, char **argv) {
  std::string model, outDir = ".", profile;
  std::vector<std::pair<std::string, std::string>> inputs;
  int threads = 0, repeat = 1, warmup = -1, verify = 1, device = MOERT_DEVICE_CPU, gpuTime = 0,
      noRoundTrips = 0;
  Provenance provenance;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i], inlineValue;
    bool hasInline = false;
    if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) { // --flag=value
      inlineValue = a.substr(a.find('=') + 1);
      a = a.substr(0, a.find('='));
      hasInline = true;
    }
    auto value = [&](const char *flag) -> const char * {
      if (hasInline)
        return inlineValue.c_str();
      if (i + 1 >= argc) {
        fail(std::string(flag) + " needs a value");
        return nullptr;
      }
      return argv[++i];
    };
    bool failed = false;
    if (provenance.parse(a, a == "--public-key" || a == "--signature" ? value(a.c_str()) : "", failed)) {
      if (failed)
        return 1;
    } else if (a == "--input") {
      const char *v = value("--input");
      if (!v)
        return 1;
      std::string s = v;
      size_t eq = s.find('=');
      if (eq == std::string::npos || eq == 0)
        return fail("--input " + s + ": expected NAME=FILE.npy");
      inputs.emplace_back(s.substr(0, eq), s.substr(eq + 1));
    } else if (a == "--output-dir") {
      const char *v = value("--output-dir");
      if (!v)
        return 1;
      outDir = v;
    } else if (a == "--profile") {
      const char *v = value("--profile");
      if (!v)
        return 1;
      profile = v;
    } else if (a == "--threads" || a == "--repeat" || a == "--warmup" || a == "--gpu-time") {
      const char *v = value(a.c_str());
      int n;
      if (!v || !parseInt(v, n))
        return fail(a + " needs a non-negative integer");
      if (a == "--threads" && !validThreads(n))
        return 1;
      (a == "--threads" ? threads : a == "--repeat" ? repeat : a == "--warmup" ? warmup : gpuTime) = n;
    } else if (a == "--device") {
      const char *v = value("--device");
      if (!v)
        return 1;
      if (!parseDevice(v, device))
        return fail(std::string("--device ") + v + ": expected cpu, gpu, cuda, hip or emu");
    } else if (a == "--no-verify") {
      verify = 0;
    } else if (a == "--verify") {
      verify = 2;
    } else if (a == "--no-round-trips") {
      noRoundTrips = 1;
    } else if (!a.empty() && a[0] == '-') {
      return fail("unknown option " + a + " (see moert --help)");
    } else if (model.empty()) {
      model = a;
    } else {
      return fail("more than one model given ('" + model + "', '" + a + "')");
    }
  }
  if (model.empty())
    return fail("no model given (usage: moert run MODEL.moex --input NAME=FILE.npy ...)");
  if (repeat < 1)
    repeat = 1;
  if (warmup < 0)
    warmup = repeat > 1 ? 1 : 0;

  if (int rc = provenance.check(model))
    return rc;
  moert_model *m = nullptr;
  moert_load_options lo{sizeof lo, threads, verify, device, nullptr, noRoundTrips};
  auto t0 = std::chrono::steady_clock::now();
  if (int rc = check(moert_load(model.c_str(), &lo, &m)))
    return rc;
  double loadMs = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  bool printer = true;
  if (!joinRanks(m, model, printer)) {
    moert_free(m);
    return 1;
  }

  std::vector<moert::npy::Array> arrays(inputs.size());
  std::vector<moert_tensor> tensors;
  for (size_t i = 0; i < inputs.size(); ++i) {
    std::string err;
    if (!moert::npy::read(inputs[i].second, arrays[i], err)) {
      return failFreeing(m, "--input " + inputs[i].first + ": " + err);
    }
    tensors.push_back(moert_tensor{inputs[i].first.c_str(), arrays[i].dtype,
                                   static_cast<int32_t>(arrays[i].dims.size()), arrays[i].dims.data(),
                                   const_cast<char *>(arrays[i].data)});
  }
  for (size_t i = 0; i < moert_num_inputs(m); ++i) {
    std::string name = moert_input_name(m, i);
    const moert_type_kind kind = moert_input_kind(m, i);
    if (kind == MOERT_TYPE_SEQUENCE || kind == MOERT_TYPE_OPTIONAL_SEQUENCE) {
      return failFreeing(m, "input '" + name +
                                "' is a sequence of tensors; `moert run` takes one .npy per input (run it "
                                "through the C API's moert_run_values or the Python binding)");
    }
    bool given = std::any_of(inputs.begin(), inputs.end(), [&](auto &p) { return p.first == name; });
    if (!given) {
      return failFreeing(m, "input '" + name + "' is missing (--input " + name + "=FILE.npy)");
    }
  }
  for (const auto &[name, file] : inputs) {
    bool known = false;
    for (size_t i = 0; i < moert_num_inputs(m); ++i)
      known |= name == moert_input_name(m, i);
    if (!known) {
      return failFreeing(m, "the model has no input '" + name + "'");
    }
  }

  moert_run_options ro{sizeof ro, 0};
  moert_result *res = nullptr;
  std::vector<double> times;
  for (int r = 0; r < warmup + repeat; ++r) {
    if (res)
      moert_result_free(res);
    res = nullptr;
    ro.profile = !profile.empty() && r == warmup + repeat - 1;
    auto s = std::chrono::steady_clock::now();
    if (int rc = check(moert_run(m, &ro, tensors.data(), tensors.size(), &res))) {
      moert_free(m);
      return rc;
    }
    if (r >= warmup)
      times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - s).count());
  }

  if (printer)
    mkdir(outDir.c_str(), 0755);
  for (size_t i = 0; printer && i < moert_result_num_outputs(res); ++i) {
    // A tensor goes to NAME.npy; a sequence's tensors to NAME.0.npy, NAME.1.npy, ...; an empty optional
    // nowhere.
    const moert_value *v = moert_result_value(res, i);
    if (v->kind == MOERT_VALUE_NONE) {
      std::printf("output %s: an optional holding no value\n", v->name);
      continue;
    }
    if (v->kind == MOERT_VALUE_SEQUENCE)
      std::printf("output %s: a sequence of %zu tensors\n", v->name, v->count);
    for (size_t e = 0; e < v->count; ++e) {
      const moert_tensor &t = v->tensors[e];
      std::string file =
          v->kind == MOERT_VALUE_SEQUENCE ? std::string(v->name) + "." + std::to_string(e) : v->name;
      std::string path = outDir + "/" + file + ".npy", err;
      if (!moert::npy::write(path, t, err)) {
        moert_result_free(res);
        return failFreeing(m, err);
      }
      std::string shape;
      for (int d = 0; d < t.rank; ++d)
        shape += (d ? "x" : "") + std::to_string(t.dims[d]);
      std::printf("output %s: %s -> %s\n", file.c_str(), shape.c_str(), path.c_str());
    }
  }
  if (!printer) { // another rank prints the results
    moert_result_free(res);
    moert_free(m);
    return 0;
  }
  if (!profile.empty()) {
    FILE *f = std::fopen(profile.c_str(), "w");
    const char *json = moert_result_profile_json(res);
    if (!f || !json || std::fputs(json, f) < 0) {
      if (f)
        std::fclose(f);
      moert_result_free(res);
      return failFreeing(m, "cannot write the profile to " + profile);
    }
    std::fclose(f);
    std::printf("profile: %s\n", profile.c_str());
  }
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  std::printf("load %.2f ms; %d call%s: best %.3f ms, median %.3f ms per call\n", loadMs, repeat,
              repeat == 1 ? "" : "s", sorted.front(), sorted[sorted.size() / 2]);
  uint64_t toDevice = 0, toHost = 0;
  if (moert_status st = moert_gpu_traffic(m, &toDevice, &toHost))
    moert_status_free(st); // not on a GPU
  else
    std::printf("gpu copies (last call): %llu bytes to the device, %llu bytes to the host\n",
                (unsigned long long)toDevice, (unsigned long long)toHost);
  std::fputs(graphsLine(m).c_str(), stdout);
  uint64_t arenas = 0, pooled = 0;
  if (moert_status st = moert_gpu_activation_memory(m, &arenas, &pooled))
    moert_status_free(st);
  else
    std::printf("gpu activations: %llu bytes in arenas, %llu bytes in pooled buffers\n",
                (unsigned long long)arenas, (unsigned long long)pooled);
  // One line per MoE dispatch, then per linear dispatch, that ran on the GPU.
  size_t timed = 0;
  std::string lastError;
  for (int linear = 0; gpuTime > 0 && linear < 2; ++linear)
    for (size_t d = 0;; ++d) {
      double us = 0, bytes = 0;
      moert_status st = linear ? moert_gpu_time_linear(m, d, gpuTime, &us, &bytes)
                               : moert_gpu_time(m, d, gpuTime, &us, &bytes);
      if (st) {
        if (d == 0)
          lastError = moert_status_message(st);
        moert_status_free(st);
        break;
      }
      ++timed;
      std::printf("gpu %s %zu: %.2f us per call (%d back to back), %.2f MB of weights read, %.0f GB/s\n",
                  linear ? "linear" : "dispatch", d, us, gpuTime, bytes / 1e6, bytes / (us * 1e-6) / 1e9);
    }
  if (gpuTime > 0 && timed == 0) {
    std::fprintf(stderr, "moert: --gpu-time: %s\n", lastError.c_str());
    moert_result_free(res);
    moert_free(m);
    return 1;
  }
  moert_result_free(res);
  moert_free(m);
  return 0;
}

bool parseFloat(const char *s, float &out) {
  char *end = nullptr;
  out = std::strtof(s, &end);
  return end && !*end && std::isfinite(out);
}

/// The tokenizer.json next to `model` (in its directory), or "" when there is none.
std::string tokenizerNextTo(const std::string &model) {
  const size_t slash = model.rfind('/');
  const std::string path = (slash == std::string::npos ? std::string(".") : model.substr(0, slash)) + "/" +
                           moert::text::kTokenizerFile;
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) ? path : "";
}

/// The tokenizer for `model`: `path` (--tokenizer), else the tokenizer.json next to the model, else the one
/// moec embedded in the artifact (`m`, loaded); null without one (`err` empty) or when it cannot be read.
std::unique_ptr<moert::text::Tokenizer> tokenizerFor(const std::string &model, std::string path,
                                                     const moert_model *m, std::string &err) {
  err.clear();
  if (path.empty())
    path = tokenizerNextTo(model);
  if (!path.empty())
    return moert::text::Tokenizer::load(path, err);
  size_t size = 0;
  const char *json = m ? moert_model_tokenizer(m, &size) : nullptr;
  if (!json)
    return nullptr;
  return moert::text::Tokenizer::parse(std::string(json, size), model + " (its tokenizer.json)", err);
}

bool readFile(const std::string &path, std::string &out) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return false;
  std::stringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return !in.bad();
}

/// Token ids written "1 2 3" or "1,2,3"; false on anything else.
bool parseIdList(const std::string &text, std::vector<int64_t> &ids) {
  std::string t = text;
  std::replace(t.begin(), t.end(), ',', ' ');
  std::istringstream in(t);
  std::string word;
  while (in >> word) {
    char *end = nullptr;
    errno = 0;
    const long long v = std::strtoll(word.c_str(), &end, 10);
    if (!end || *end || errno)
      return false;
    ids.push_back(v);
  }
  return true;
}

// `moert tokenize SOURCE ...`: text <-> token ids with the tokenizer.json SOURCE is or sits next to.
int tokenize(int argc, char **argv) {
  std::string source, text, file, idsText, jsonl;
  int given = 0;
  bool special = true;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--text" || a == "--file" || a == "--ids" || a == "--jsonl") {
      if (i + 1 >= argc)
        return fail(a + " needs a value");
      (a == "--text" ? text : a == "--file" ? file : a == "--ids" ? idsText : jsonl) = argv[++i];
      ++given;
    } else if (a == "--no-special") {
      special = false;
    } else if (!a.empty() && a[0] == '-') {
      return fail("unknown option " + a + " (see moert --help)");
    } else if (source.empty()) {
      source = a;
    } else {
      return fail("more than one tokenizer or model given ('" + source + "', '" + a + "')");
    }
  }
  if (source.empty() || given != 1)
    return fail("usage: moert tokenize MODEL.moex|TOKENIZER.json (--text TEXT | --file F | --ids \"1 2 3\" | "
                "--jsonl F) [--no-special]");
  const bool isJson = source.size() >= 5 && source.compare(source.size() - 5, 5, ".json") == 0;
  std::string err;
  std::unique_ptr<moert::text::Tokenizer> tok = tokenizerFor(source, isJson ? source : "", nullptr, err);
  if (!tok && err.empty()) { // none next to the artifact: the one moec embedded in it
    moert_model *m = nullptr;
    moert_load_options lo{sizeof lo, 1, 1, MOERT_DEVICE_CPU, nullptr, 0};
    if (int rc = check(moert_load(source.c_str(), &lo, &m)))
      return rc;
    tok = tokenizerFor(source, "", m, err);
    moert_free(m);
    if (!tok && err.empty())
      return fail(source + ": no tokenizer.json next to it or in it (moec compile --tokenizer)");
  }
  if (!tok)
    return fail(err);
  if (!idsText.empty()) {
    std::vector<int64_t> ids;
    std::string out;
    if (!parseIdList(idsText, ids))
      return fail("--ids '" + idsText + "': expected token ids (integers separated by spaces or commas)");
    if (!tok->decode(ids, special, out, err))
      return fail(err);
    std::printf("%s\n", out.c_str());
    return 0;
  }
  if (!file.empty() || !jsonl.empty()) {
    const std::string &f = file.empty() ? jsonl : file;
    if (!readFile(f, text))
      return fail((file.empty() ? "--jsonl " : "--file ") + f + ": cannot read it");
  }
  if (!jsonl.empty()) {
    std::string out;
    if (!tok->encodeJsonLines(text, special, out, err))
      return fail("--jsonl " + jsonl + ": " + err);
    std::fputs(out.c_str(), stdout);
    return 0;
  }
  std::vector<int64_t> ids;
  if (!tok->encode(text, special, ids, err))
    return fail(err);
  for (size_t i = 0; i < ids.size(); ++i)
    std::printf(i ? " %lld" : "%lld", static_cast<long long>(ids[i]));
  std::printf("\n");
  return 0;
}

/// `moert generate`'s streamed text: each new token's text printed as it comes (the decoded text so far minus
/// what is printed; an incomplete UTF-8 character at the end waits for its next byte).
struct TextStream {
  const moert::text::Tokenizer *tok;
  std::vector<int64_t> ids;
  std::string printed;
  bool diverged = false; // a decoder rewrote printed text (WordPiece's cleanup): the rest comes at the end

  static int onToken(void *self, int64_t, int64_t token) {
    auto &s = *static_cast<TextStream *>(self);
    s.ids.push_back(token);
    std::string text, err;
    if (s.diverged || !s.tok->decode(s.ids, true, text, err))
      return 0;
    static const std::string kReplacement = "\xef\xbf\xbd"; // U+FFFD: a character still missing bytes
    while (text.size() >= kReplacement.size() &&
           !text.compare(text.size() - kReplacement.size(), kReplacement.size(), kReplacement))
      text.resize(text.size() - kReplacement.size());
    s.emit(text);
    return 0;
  }
  void emit(const std::string &text) {
    if (diverged || text.compare(0, printed.size(), printed) != 0) {
      diverged = true;
      return;
    }
    std::fwrite(text.data() + printed.size(), 1, text.size() - printed.size(), stdout);
    std::fflush(stdout);
    printed = text;
  }
  /// The whole text at the end: what is not printed yet, or (diverged) the whole line again.
  void finish(const std::string &text) {
    emit(text);
    if (diverged)
      std::printf("\ntext: %s", text.c_str());
    std::printf("\n");
  }
};

int generate(int argc, char **argv) {
  std::string model, promptPath, outPath, profile, maskPath, tokenizerPath;
  std::vector<std::string> prompts;
  int streamMode = -1; // --stream 1, --no-stream 0, default: when stdout is a terminal
  int threads = 0, verify = 1, maxNew = 32, topK = 0, maxContext = 0, device = MOERT_DEVICE_CPU,
      noRoundTrips = 0;
  moert_dtype cacheDtype = MOERT_F32;
  float temperature = 1.0f, topP = 1.0f;
  bool greedy = true;
  unsigned long long seed = 0;
  long long eos = -1;
  Provenance provenance;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i], inlineValue;
    bool hasInline = false;
    if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) { // --flag=value, as for run
      inlineValue = a.substr(a.find('=') + 1);
      a = a.substr(0, a.find('='));
      hasInline = true;
    }
    auto value = [&]() -> const char * {
      if (hasInline)
        return inlineValue.c_str();
      if (i + 1 >= argc) {
        fail(a + " needs a value");
        return nullptr;
      }
      return argv[++i];
    };
    const char *v = nullptr;
    if (hasInline &&
        (a == "--greedy" || a == "--verify" || a == "--no-verify" || a == "--stream" || a == "--no-stream"))
      return fail(a + " takes no value");
    bool failed = false;
    if (provenance.parse(a, a == "--public-key" || a == "--signature" ? value() : "", failed)) {
      if (failed)
        return 1;
    } else if (a == "--prompt-ids" || a == "--output" || a == "--profile" || a == "--attention-mask" ||
               a == "--tokenizer") {
      if (!(v = value()))
        return 1;
      (a == "--prompt-ids"  ? promptPath
       : a == "--output"    ? outPath
       : a == "--profile"   ? profile
       : a == "--tokenizer" ? tokenizerPath
                            : maskPath) = v;
    } else if (a == "--prompt") {
      if (!(v = value()))
        return 1;
      prompts.push_back(v);
    } else if (a == "--max-new-tokens" || a == "--top-k" || a == "--threads" || a == "--max-context") {
      int n;
      if (!(v = value()))
        return 1;
      if (!parseInt(v, n))
        return fail(a + " needs a non-negative integer");
      if (a == "--threads" && !validThreads(n))
        return 1;
      (a == "--max-new-tokens" ? maxNew
       : a == "--top-k"        ? topK
       : a == "--threads"      ? threads
                               : maxContext) = n;
    } else if (a == "--temperature" || a == "--top-p") {
      float f;
      if (!(v = value()))
        return 1;
      if (!parseFloat(v, f))
        return fail(a + " needs a number");
      (a == "--temperature" ? temperature : topP) = f;
      greedy = false;
    } else if (a == "--seed" || a == "--eos-id") {
      if (!(v = value()))
        return 1;
      char *end = nullptr;
      long long n = std::strtoll(v, &end, 10);
      if (!end || *end || (a == "--seed" && n < 0))
        return fail(a + " needs an integer");
      if (a == "--seed")
        seed = static_cast<unsigned long long>(n);
      else
        eos = n;
    } else if (a == "--kv-cache") {
      if (!(v = value()))
        return 1;
      const std::string t = v;
      if (t == "f32" || t == "fp32")
        cacheDtype = MOERT_F32;
      else if (t == "bf16")
        cacheDtype = MOERT_BF16;
      else if (t == "f16" || t == "fp16")
        cacheDtype = MOERT_F16;
      else if (t == "int8" || t == "i8")
        cacheDtype = MOERT_I8;
      else
        return fail("--kv-cache " + t + ": expected f32, bf16, f16 or int8");
    } else if (a == "--device") {
      if (!(v = value()))
        return 1;
      if (!parseDevice(v, device))
        return fail(std::string("--device ") + v + ": expected cpu, gpu, cuda, hip or emu");
    } else if (a == "--greedy") {
      greedy = true;
    } else if (a == "--stream" || a == "--no-stream") {
      streamMode = a == "--stream";
    } else if (a == "--no-verify") {
      verify = 0;
    } else if (a == "--verify") {
      verify = 2;
    } else if (a == "--no-round-trips") {
      noRoundTrips = 1;
    } else if (!a.empty() && a[0] == '-') {
      return fail("unknown option " + a + " (see moert --help)");
    } else if (model.empty()) {
      model = a;
    } else {
      return fail("more than one model given ('" + model + "', '" + a + "')");
    }
  }
  if (model.empty() || (promptPath.empty() && prompts.empty()))
    return fail(
        "usage: moert generate MODEL.moex --prompt-ids IDS.npy | --prompt TEXT [--max-new-tokens N] ... "
        "(see moert --help)");
  if (!promptPath.empty() && !prompts.empty())
    return fail("--prompt-ids and --prompt: give the prompt one way");
  if (!prompts.empty() && !maskPath.empty())
    return fail(
        "--attention-mask is for --prompt-ids (text prompts of different lengths are padded and masked "
        "by moert)");
  if (int rc = provenance.check(model))
    return rc;
  moert_model *m = nullptr;
  moert_load_options lo{sizeof lo, threads, verify, device, nullptr, noRoundTrips};
  if (int rc = check(moert_load(model.c_str(), &lo, &m)))
    return rc;
  if (std::any_of(argv, argv + argc, [](const char *x) { return !std::strcmp(x, "--greedy"); }))
    greedy = true;
  // The tokenizer (text out too when there is one) and the prompt: after loading the model, whose artifact
  // may carry the tokenizer; an error here frees it.
  std::unique_ptr<moert::text::Tokenizer> tok;
  std::string err;
  std::vector<int64_t> ids, idsDims, mask, maskDims;
  const int prepared = [&]() -> int {
    if (!(tok = tokenizerFor(model, tokenizerPath, m, err)) && !err.empty())
      return fail(err);
    if (!tok && !prompts.empty())
      return fail("--prompt needs a tokenizer: a tokenizer.json next to " + model +
                  " or in it (moec compile --tokenizer), or --tokenizer FILE");
    // Token ids and the padding mask: [n] or [B, n] integers.
    auto readIds = [&](const std::string &flag, const std::string &path, std::vector<int64_t> &out,
                       std::vector<int64_t> &dims) -> bool {
      moert::npy::Array arr;
      if (!moert::npy::read(path, arr, err)) {
        fail(flag + ": " + err);
        return false;
      }
      if (arr.dims.empty() || arr.dims.size() > 2) {
        fail(flag + " " + path + ": expected shape [n] or [B, n]");
        return false;
      }
      dims = arr.dims.size() == 2 ? arr.dims : std::vector<int64_t>{1, arr.dims[0]};
      const size_t count = static_cast<size_t>(dims[0] * dims[1]);
      if (arr.dtype == MOERT_I64) {
        out.resize(count);
        if (count) // an empty prompt maps no data (memcpy must not see a null pointer)
          std::memcpy(out.data(), arr.data, count * 8);
      } else if (arr.dtype == MOERT_I32) {
        for (size_t i = 0; i < count; ++i) {
          int32_t x;
          std::memcpy(&x, arr.data + 4 * i, 4);
          out.push_back(x);
        }
      } else {
        fail(flag + " " + path + ": expected int64 or int32 values");
        return false;
      }
      return true;
    };
    if (!prompts.empty()) { // text: each prompt encoded; a batch left-padded with id 0, the padding masked
      std::vector<std::vector<int64_t>> enc(prompts.size());
      size_t longest = 0;
      for (size_t b = 0; b < prompts.size(); ++b) {
        if (!tok->encode(prompts[b], true, enc[b], err))
          return fail("--prompt " + std::to_string(b + 1) + ": " + err);
        if (enc[b].empty())
          return fail("--prompt " + std::to_string(b + 1) + ": the text is no tokens");
        longest = std::max(longest, enc[b].size());
      }
      idsDims = {static_cast<int64_t>(prompts.size()), static_cast<int64_t>(longest)};
      bool padded = false;
      for (const auto &e : enc) {
        ids.insert(ids.end(), longest - e.size(), 0);
        ids.insert(ids.end(), e.begin(), e.end());
        mask.insert(mask.end(), longest - e.size(), 0);
        mask.insert(mask.end(), e.size(), 1);
        padded = padded || e.size() < longest;
      }
      if (!padded)
        mask.clear();
    } else if (!readIds("--prompt-ids", promptPath, ids, idsDims)) {
      return 1;
    }
    if (ids.empty())
      return fail("--prompt-ids " + promptPath + ": the prompt is empty");
    const int64_t batch = idsDims[0];
    const size_t n = static_cast<size_t>(idsDims[1]);
    if (!maskPath.empty()) {
      if (!readIds("--attention-mask", maskPath, mask, maskDims))
        return 1;
      if (maskDims != idsDims)
        return fail("--attention-mask " + maskPath + ": shape [" + std::to_string(maskDims[0]) + ", " +
                    std::to_string(maskDims[1]) + "], the prompt ids are [" + std::to_string(batch) + ", " +
                    std::to_string(n) + "]");
      for (int64_t b = 0; b < batch; ++b)
        for (size_t j = 1; j < n; ++j)
          if (mask[b * n + j - 1] != 0 && mask[b * n + j] == 0)
            return fail("--attention-mask " + maskPath + ": sequence " + std::to_string(b) +
                        " has padding after a token; prompts are left-padded (zeros first)");
    }
    return 0;
  }();
  if (prepared) {
    moert_free(m);
    return prepared;
  }
  const int64_t batch = idsDims[0];
  const size_t n = static_cast<size_t>(idsDims[1]);

  bool printer = true;
  if (!joinRanks(m, model, printer)) {
    moert_free(m);
    return 1;
  }
  moert_session *s = nullptr;
  moert_session_options so{sizeof so, maxContext, profile.empty() ? 0 : 1, cacheDtype, batch};
  if (int rc = check(moert_session_create(m, &so, &s))) {
    moert_free(m);
    return rc;
  }
  moert_generate_options go{sizeof go, maxNew, greedy ? 1 : 0, temperature, topK, topP,
                            seed,      eos,    nullptr,        nullptr};
  // Streaming (one sequence, a tokenizer, this process prints): the text as each token comes.
  TextStream stream{tok.get(), {}, {}, false};
  if (tok && batch == 1 && printer && (streamMode > 0 || (streamMode < 0 && isatty(STDOUT_FILENO)))) {
    go.on_token = &TextStream::onToken;
    go.user_data = &stream;
    std::fputs("text: ", stdout);
    std::fflush(stdout);
  }
  const size_t cap = static_cast<size_t>(std::max(1, maxNew));
  std::vector<int64_t> out(static_cast<size_t>(batch) * cap);
  std::vector<size_t> made(static_cast<size_t>(batch));
  moert_generate_stats st{};
  int rc = check(moert_generate_batch(s, ids.data(), n, mask.empty() ? nullptr : mask.data(), &go, out.data(),
                                      cap, made.data(), &st));
  if (go.on_token) { // the streamed line ends before anything else is printed
    std::string text;
    if (rc == 0 && tok->decode(std::vector<int64_t>(out.begin(), out.begin() + made[0]), true, text, err))
      stream.finish(text);
    else
      std::printf("\n");
  }
  const std::string graphs = device == MOERT_DEVICE_CPU ? "" : graphsLine(m);
  unsigned long long copies[2] = {0, 0}; // the last step's host <-> device bytes (GPU only)
  uint64_t toDevice = 0, toHost = 0;
  if (moert_status gs = device == MOERT_DEVICE_CPU ? nullptr : moert_gpu_traffic(m, &toDevice, &toHost))
    moert_status_free(gs);
  else
    copies[0] = toDevice, copies[1] = toHost;
  if (!rc && !profile.empty() && printer) {
    const char *json = moert_session_profile_json(s);
    FILE *f = std::fopen(profile.c_str(), "w");
    bool ok = f && json && std::fputs(json, f) >= 0;
    if (f)
      ok = std::fclose(f) == 0 && ok;
    if (!ok)
      rc = fail("cannot write the profile to " + profile);
  }
  moert_session_free(s);
  moert_free(m);
  gRanksModel = nullptr;
  if (rc || !printer) // another rank prints the tokens
    return rc;
  size_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) {
    std::printf(batch == 1 ? "tokens:" : "tokens[%lld]:", static_cast<long long>(b));
    for (size_t i = 0; i < made[b]; ++i)
      std::printf(" %lld", static_cast<long long>(out[b * cap + i]));
    std::printf("\n");
    longest = std::max(longest, made[b]);
  }
  // The new tokens as text (special tokens skipped); a streamed sequence's text is printed already.
  for (int64_t b = 0; tok && !go.on_token && b < batch; ++b) {
    std::string text;
    if (!tok->decode(std::vector<int64_t>(out.begin() + b * cap, out.begin() + b * cap + made[b]), true, text,
                     err))
      return fail(err);
    if (batch == 1)
      std::printf("text: %s\n", text.c_str());
    else
      std::printf("text[%lld]: %s\n", static_cast<long long>(b), text.c_str());
  }
  std::printf("prefill: %zu tokens in %.2f ms (%.1f tokens/s)\n", st.prompt_tokens, st.prefill_ms,
              st.prompt_tokens / (st.prefill_ms * 1e-3));
  if (device != MOERT_DEVICE_CPU && copies[0] + copies[1] > 0)
    std::printf("gpu copies (last decode step): %llu bytes to the device, %llu bytes to the host\n",
                copies[0], copies[1]);
  std::fputs(graphs.c_str(), stdout);
  // Each decode call after the prefill makes one more token per running sequence.
  const size_t decoded = st.new_tokens - std::min<size_t>(st.new_tokens, static_cast<size_t>(batch));
  if (longest > 1)
    std::printf("decode: %zu tokens in %.2f ms (%.1f tokens/s)\n", decoded, st.decode_ms,
                decoded / (st.decode_ms * 1e-3));
  if (!outPath.empty()) {
    // [new] for one sequence, [B, longest] for a batch (a sequence that stopped early padded with eos)
    std::vector<int64_t> grid(static_cast<size_t>(batch) * longest, eos);
    for (int64_t b = 0; b < batch; ++b)
      std::copy(out.begin() + b * cap, out.begin() + b * cap + made[b], grid.begin() + b * longest);
    int64_t dims[2] = {batch, static_cast<int64_t>(longest)};
    moert_tensor t{"tokens", MOERT_I64, batch == 1 ? 1 : 2, batch == 1 ? dims + 1 : dims, grid.data()};
    if (!moert::npy::write(outPath, t, err))
      return fail(err);
  }
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 1;
  }
  for (int i = 1; i < argc; ++i) // `moert --help`, `moert run --help`, ...: the usage
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
  std::string cmd = argv[1];
  if (cmd == "run")
    return run(argc - 2, argv + 2);
  if (cmd == "inspect")
    return inspect(argc - 2, argv + 2);
  if (cmd == "devices")
    return devices(argc - 2, argv + 2);
  if (cmd == "verify")
    return verify(argc - 2, argv + 2);
  if (cmd == "generate")
    return generate(argc - 2, argv + 2);
  if (cmd == "tokenize")
    return tokenize(argc - 2, argv + 2);
  return fail("unknown command '" + cmd +
              "' (commands: run, inspect, verify, generate, tokenize, devices; see moert --help)");
}
