//===- Runtime.cpp - the moert C API: load, describe, run --------------------===//
#include "ExpertParallel.h"
#include "Model.h"
#include "Ops.h"
#include "kernels/cpu/simd.h"
#include "ops/OpKernel.h"
#include "runtime/ArtifactFormat.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <sstream>

namespace pb = moert::proto;
using moert::makeError;

namespace {

using moert::dimsString;
using moert::dtypeName;
using moert::dtypeSize;
using Tensor = moert::OpTensor;

/// The most rows (tokens) one dispatch takes in one call: keeps every size the kernels compute from a row
/// count (outputs, scratch, per-thread tiles) far from overflowing 64 bits.
constexpr int64_t kMaxDispatchRows = (int64_t(1) << 31) - 1;

/// How errors name step `s` of program `p`: an op by its kind and first output, a dispatch by its kind and
/// index.
std::string stepLabel(const pb::Program &p, const pb::Step &s) {
  if (s.has_op())
    return s.op().op() + (s.op().outputs_size() && int64_t(s.op().outputs(0)) < p.values_size()
                              ? " '" + p.values(s.op().outputs(0)).name() + "'"
                              : std::string());
  return s.has_linear()      ? "linear dispatch " + std::to_string(s.linear().index())
         : s.has_attention() ? "attention dispatch " + std::to_string(s.attention().index())
         : s.has_moe()       ? "MoE dispatch " + std::to_string(s.moe().index())
                             : std::string("a step");
}

/// "" when `rows` is within kMaxDispatchRows, else the error for dispatch `what`.
std::string checkRows(const std::string &what, int64_t rows) {
  if (rows <= kMaxDispatchRows)
    return "";
  return what + ": " + std::to_string(rows) + " rows in one call; a dispatch takes at most " +
         std::to_string(kMaxDispatchRows) + " (split the input)";
}

int64_t numel(const std::vector<int64_t> &d) {
  int64_t n = 1;
  for (int64_t x : d)
    n *= x;
  return n;
}

void parallelForThunk(void *pool, int64_t n, void *ctx, moert_task_fn fn) {
  static_cast<moert::ThreadPool *>(pool)->parallelFor(n, ctx, fn);
}

} // namespace

extern "C" {

const char *moert_status_message(moert_status status) { return status ? status->message.c_str() : "ok"; }
void moert_status_free(moert_status status) { delete status; }

moert_status moert_load(const char *path, const moert_load_options *options, moert_model **out) {
  if (!path || !out)
    return makeError("moert_load: path and out must not be NULL");
  *out = nullptr;
  moert_load_options opts{sizeof(moert_load_options), 0, 1, MOERT_DEVICE_CPU, nullptr, 0};
  if (options) {
    if (options->struct_size < sizeof(size_t) || options->struct_size > sizeof(moert_load_options))
      return makeError("moert_load: options.struct_size must be sizeof(moert_load_options)");
    std::memcpy(&opts, options, options->struct_size);
  }
  auto *m = new moert_model;
  if (moert_status st = moert::loadArtifact(path, opts, *m)) {
    delete m;
    return st;
  }
  *out = m;
  return nullptr;
}

void moert_free(moert_model *model) { moert::releaseModel(model); }

const char *moert_model_tokenizer(const moert_model *m, size_t *size) {
  const bool has = m && !m->meta.tokenizer_json().empty();
  if (size)
    *size = has ? m->meta.tokenizer_json().size() : 0;
  return has ? m->meta.tokenizer_json().data() : nullptr;
}

void moert_ranks(const moert_model *m, int *rank, int *size) {
  if (rank)
    *rank = m && m->comm ? m->comm->rank : 0;
  if (size)
    *size = m && m->comm ? m->comm->size : 1;
}

void moert_abort_ranks(const moert_model *m, const char *message) {
  if (m && m->comm && m->comm->size > 1)
    m->comm->abort(m->comm->ctx, message);
}

moert_status moert_verify(moert_model *model) {
  if (!model)
    return makeError("moert_verify: model must not be NULL");
  return moert::verifyAllSections(*model);
}

moert_status moert_gpu_time(moert_model *m, size_t dispatch, int repeats, double *us, double *bytes) {
  if (!m || !us || !bytes || repeats < 1)
    return makeError("moert_gpu_time: model, us_per_call and weight_bytes must not be NULL, repeats >= 1");
  if (!m->gpu)
    return makeError("moert_gpu_time: the model was not loaded on a GPU");
  std::string e = moert::gpu::timeKernels(*m->gpu, int(dispatch), repeats, *us, *bytes);
  return e.empty() ? nullptr : makeError(e);
}

moert_status moert_gpu_traffic(const moert_model *m, uint64_t *toDevice, uint64_t *toHost) {
  if (!m || !toDevice || !toHost)
    return makeError("moert_gpu_traffic: model, to_device and to_host must not be NULL");
  if (!m->gpu)
    return makeError("moert_gpu_traffic: the model was not loaded on a GPU");
  *toDevice = m->gpuToDevice, *toHost = m->gpuToHost;
  return nullptr;
}

moert_status moert_gpu_graphs(moert_model *m, moert_gpu_graph_stats *out) {
  if (!m || !out)
    return makeError("moert_gpu_graphs: model and out must not be NULL");
  if (!m->gpu)
    return makeError("moert_gpu_graphs: the model was not loaded on a GPU");
  moert::gpu::GraphStats s;
  m->gpuGraphs = moert::gpu::graphs(*m->gpu, s);
  *out = {m->gpuGraphs.c_str(), s.graphs, s.builds, s.updates, s.staged};
  return nullptr;
}

moert_status moert_gpu_activation_memory(const moert_model *m, uint64_t *arenas, uint64_t *pooled) {
  if (!m || !arenas || !pooled)
    return makeError("moert_gpu_activation_memory: model, arenas and pooled must not be NULL");
  if (!m->gpu)
    return makeError("moert_gpu_activation_memory: the model was not loaded on a GPU");
  moert::gpu::activationBytes(*m->gpu, *arenas, *pooled);
  return nullptr;
}

moert_status moert_gpu_time_linear(moert_model *m, size_t linear, int repeats, double *us, double *bytes) {
  if (!m || !us || !bytes || repeats < 1)
    return makeError(
        "moert_gpu_time_linear: model, us_per_call and weight_bytes must not be NULL, repeats >= 1");
  if (!m->gpu)
    return makeError("moert_gpu_time_linear: the model was not loaded on a GPU");
  std::string e = moert::gpu::timeLinear(*m->gpu, int(linear), repeats, *us, *bytes);
  return e.empty() ? nullptr : makeError(e);
}

moert_status moert_device_probe(moert_device device, int measure_bandwidth, char **description) {
  if (!description)
    return makeError("moert_device_probe: description must not be NULL");
  *description = nullptr;
  if (device == MOERT_DEVICE_CPU) {
    *description = strdup("cpu");
    return nullptr;
  }
  if (device < MOERT_DEVICE_CPU || device > MOERT_DEVICE_EMU)
    return makeError("moert_device_probe: " + std::to_string(int(device)) + " is not a moert_device");
  std::string text;
  std::string e = moert::gpu::probe(device, measure_bandwidth != 0, text);
  if (!e.empty())
    return makeError(e);
  *description = strdup(text.c_str());
  return nullptr;
}

size_t moert_num_inputs(const moert_model *m) { return m ? m->meta.program().inputs_size() : 0; }
size_t moert_num_outputs(const moert_model *m) { return m ? m->meta.program().outputs_size() : 0; }
moert_dtype moert_input_dtype(const moert_model *m, size_t i) {
  if (!m || i >= moert_num_inputs(m))
    return MOERT_DTYPE_UNKNOWN;
  return static_cast<moert_dtype>(m->meta.program().values(m->meta.program().inputs(i)).type().dtype());
}
const char *moert_input_name(const moert_model *m, size_t i) {
  if (!m || i >= moert_num_inputs(m))
    return nullptr;
  return m->meta.program().values(m->meta.program().inputs(i)).name().c_str();
}
const char *moert_output_name(const moert_model *m, size_t i) {
  if (!m || i >= moert_num_outputs(m))
    return nullptr;
  return m->meta.program().values(m->meta.program().outputs(i)).name().c_str();
}
const char *moert_describe(const moert_model *m) { return m ? m->description.c_str() : ""; }
// The C API's kinds are the artifact's and the run-time values' (one numbering, cast across).
static_assert(int(MOERT_TYPE_TENSOR) == pb::Value::TENSOR &&
                  int(MOERT_TYPE_SEQUENCE) == pb::Value::SEQUENCE &&
                  int(MOERT_TYPE_OPTIONAL_TENSOR) == pb::Value::OPTIONAL_TENSOR &&
                  int(MOERT_TYPE_OPTIONAL_SEQUENCE) == pb::Value::OPTIONAL_SEQUENCE,
              "moert_type_kind values are the artifact's Value.Kind");
static_assert(int(MOERT_VALUE_TENSOR) == int(moert::OpTensor::Kind::Tensor) &&
                  int(MOERT_VALUE_SEQUENCE) == int(moert::OpTensor::Kind::Sequence) &&
                  int(MOERT_VALUE_NONE) == int(moert::OpTensor::Kind::None),
              "moert_value_kind values are OpTensor::Kind");

moert_type_kind moert_input_kind(const moert_model *m, size_t i) {
  if (!m || i >= moert_num_inputs(m))
    return MOERT_TYPE_TENSOR;
  return static_cast<moert_type_kind>(m->meta.program().values(m->meta.program().inputs(i)).kind());
}
moert_type_kind moert_output_kind(const moert_model *m, size_t i) {
  if (!m || i >= moert_num_outputs(m))
    return MOERT_TYPE_TENSOR;
  return static_cast<moert_type_kind>(m->meta.program().values(m->meta.program().outputs(i)).kind());
}

moert_status moert_run(moert_model *m, const moert_run_options *options, const moert_tensor *inputs,
                       size_t numInputs, moert_result **out) {
  return moert::runProgram(m, options, inputs, numInputs, nullptr, out);
}

moert_status moert_run_values(moert_model *m, const moert_run_options *options, const moert_value *inputs,
                              size_t numInputs, moert_result **out) {
  return moert::runProgram(m, options, inputs, numInputs, nullptr, out);
}

size_t moert_result_num_outputs(const moert_result *r) { return r ? r->tensors.size() : 0; }
const moert_tensor *moert_result_output(const moert_result *r, size_t i) {
  return r && i < r->tensors.size() && r->kinds[i] == MOERT_VALUE_TENSOR ? &r->tensors[i] : nullptr;
}
const moert_value *moert_result_value(const moert_result *r, size_t i) {
  return r && i < r->values.size() ? &r->values[i] : nullptr;
}
const char *moert_result_profile_json(const moert_result *r) {
  return r && r->hasProfile ? r->profile.c_str() : nullptr;
}
void moert_result_free(moert_result *r) { delete r; }

} // extern "C"

moert_status moert::runProgram(moert_model *m, const moert_run_options *options, const moert_tensor *inputs,
                               size_t numInputs, const CacheBinding *caches, moert_result **out,
                               const int64_t *logitsRows) {
  if (numInputs && !inputs)
    return makeError("moert_run: model, inputs and out must not be NULL");
  std::vector<moert_value> values(numInputs);
  for (size_t i = 0; i < numInputs; ++i)
    values[i] = moert_value{inputs[i].name, MOERT_VALUE_TENSOR, inputs[i].dtype, &inputs[i], 1};
  return runProgram(m, options, values.data(), numInputs, caches, out, logitsRows);
}

namespace {
/// Binds input `v` (of the program value `want`) into `t`: kinds, dtypes, ranks and fixed dims checked,
/// symbolic dims bound in `symbols`. Returns an error message, empty on success.
std::string bindInput(const pb::Value &want, const moert_value &v, std::map<std::string, int64_t> &symbols,
                      Tensor &t) {
  const std::string &name = want.name();
  const auto kind = want.kind();
  const bool optional = kind == pb::Value::OPTIONAL_TENSOR || kind == pb::Value::OPTIONAL_SEQUENCE;
  const bool sequence = kind == pb::Value::SEQUENCE || kind == pb::Value::OPTIONAL_SEQUENCE;
  static const char *const kKinds[] = {"a tensor", "a sequence", "an optional tensor",
                                       "an optional sequence"};
  const char *what = kind >= 0 && kind <= 3 ? kKinds[kind] : "?";
  if (v.kind == MOERT_VALUE_NONE) {
    if (!optional)
      return "input '" + name + "': given no value, the model takes " + what;
    t = Tensor{};
    t.dtype = want.type().dtype();
    t.kind = Tensor::Kind::None;
    return "";
  }
  if (v.kind != (sequence ? MOERT_VALUE_SEQUENCE : MOERT_VALUE_TENSOR))
    return "input '" + name + "': given " + (v.kind == MOERT_VALUE_SEQUENCE ? "a sequence" : "a tensor") +
           ", the model takes " + what;
  if (static_cast<int>(v.dtype) != want.type().dtype())
    return "input '" + name + "': dtype " + dtypeName(v.dtype) + ", the model takes " +
           dtypeName(want.type().dtype());
  if (v.count && !v.tensors)
    return "input '" + name + "': tensors must not be NULL";
  if (!sequence && v.count != 1)
    return "input '" + name + "': a tensor value holds one tensor, " + std::to_string(v.count) + " given";
  std::vector<Tensor> elements;
  for (size_t e = 0; e < v.count; ++e) {
    const moert_tensor &x = v.tensors[e];
    const std::string where =
        sequence ? "input '" + name + "' tensor " + std::to_string(e) : "input '" + name + "'";
    if (static_cast<int>(x.dtype) != want.type().dtype())
      return where + ": dtype " + dtypeName(x.dtype) + ", the model takes " + dtypeName(want.type().dtype());
    // A sequence's tensors may differ in shape: only a rank and dims the model fixes are checked.
    if (!want.type().unranked() && (!sequence || want.type().dims_size() > 0) &&
        x.rank != want.type().dims_size())
      return where + ": rank " + std::to_string(x.rank) + ", the model takes rank " +
             std::to_string(want.type().dims_size());
    if (x.rank < 0 || (x.rank > 0 && !x.dims))
      return where + ": dims must not be NULL";
    std::vector<int64_t> dims(x.dims, x.dims + x.rank);
    if (!x.data && numel(dims) != 0)
      return where + ": data must not be NULL";
    for (int d = 0; d < x.rank; ++d) {
      if (dims[d] < 0)
        return where + ": negative dim " + std::to_string(dims[d]);
      if (d >= want.type().dims_size())
        continue;
      const pb::Dim &w = want.type().dims(d);
      if (w.size() >= 0 && dims[d] != w.size())
        return where + ": dim " + std::to_string(d) + " is " + std::to_string(dims[d]) +
               ", the model was compiled for " + std::to_string(w.size());
      if (!sequence && w.size() < 0 && w.symbol() != "?") {
        auto [it, fresh] = symbols.emplace(w.symbol(), dims[d]);
        if (!fresh && it->second != dims[d])
          return where + ": dim " + std::to_string(d) + " ('" + w.symbol() + "') is " +
                 std::to_string(dims[d]) + " but another input gives it " + std::to_string(it->second);
      }
    }
    // Its byte count must fit a 64-bit size (a caller's dims are all the runtime knows of its data).
    uint64_t bytes = std::max<size_t>(moert::dtypeSize(want.type().dtype()), 1);
    for (int64_t d : dims)
      if (__builtin_mul_overflow(bytes, uint64_t(d), &bytes) || bytes > (uint64_t(1) << 62))
        return where + ": dims " + dimsString(dims) + " hold more bytes than a 64-bit size counts";
    static const char kEmpty[64] = {};
    elements.push_back(Tensor{want.type().dtype(), std::move(dims),
                              x.data ? static_cast<const char *>(x.data) : kEmpty, nullptr});
  }
  if (!sequence) {
    t = std::move(elements[0]);
    return "";
  }
  t = Tensor{};
  t.dtype = want.type().dtype();
  t.kind = Tensor::Kind::Sequence;
  t.elements = std::make_shared<const std::vector<Tensor>>(std::move(elements));
  return "";
}
} // namespace

moert_status moert::runProgram(moert_model *m, const moert_run_options *options, const moert_value *inputs,
                               size_t numInputs, const CacheBinding *caches, moert_result **out,
                               const int64_t *logitsRows) {
  if (!m || !out || (numInputs && !inputs))
    return makeError("moert_run: model, inputs and out must not be NULL");
  *out = nullptr;
  if (!m->epError.empty())
    return makeError(m->path + ": " + m->epError);
  // Expert parallelism: every rank makes the same calls in the same order (their MoE layers exchange tokens).
  std::unique_lock<std::mutex> ranksInStep(m->commMutex, std::defer_lock);
  if (m->comm)
    ranksInStep.lock();
  bool profile = options && options->struct_size >= offsetof(moert_run_options, profile) + sizeof(int) &&
                 options->profile;
  const pb::Program &p = m->meta.program();
  if (numInputs != static_cast<size_t>(p.inputs_size()))
    return makeError("the model takes " + std::to_string(p.inputs_size()) + " input(s), " +
                     std::to_string(numInputs) + " given");
  std::vector<Tensor> values(p.values_size());
  std::map<std::string, int64_t> symbols;

  // Bind inputs (by name when every given tensor has one, else by position), checking dtype and shape.
  bool byName = true;
  for (size_t i = 0; i < numInputs; ++i)
    byName &= inputs[i].name != nullptr;
  for (int i = 0; i < p.inputs_size(); ++i) {
    const pb::Value &v = p.values(p.inputs(i));
    const moert_value *t = nullptr;
    if (byName) {
      for (size_t j = 0; j < numInputs && !t; ++j)
        if (v.name() == inputs[j].name)
          t = &inputs[j];
      if (!t)
        return makeError("input '" + v.name() + "' is missing");
    } else {
      t = &inputs[i];
    }
    if (std::string why = bindInput(v, *t, symbols, values[p.inputs(i)]); !why.empty())
      return makeError(why);
  }
  // A decoder's caches share one length and the ids' batch; when its presents are Concat(past, new), its
  // attention mask covers the cached positions and the new ones (the exporters give its length a symbol of
  // its own, so the dim check above does not see a mismatch; fixed-size cache buffers, as GroupQueryAttention
  // takes, are longer than the mask).
  // Window-sized caches (KvCache.window) have a capacity of their own.
  const pb::KvCache *full = nullptr;
  if (p.has_decoder())
    for (const pb::KvCache &c : p.decoder().caches())
      if (c.window() == 0) {
        full = &c;
        break;
      }
  if (full) {
    const pb::Decoder &d = p.decoder();
    const Tensor &ids = values[p.inputs(d.input_ids())];
    const Tensor &past = values[p.inputs(full->past())];
    for (const pb::KvCache &c : d.caches()) {
      const Tensor &other = values[p.inputs(c.past())];
      const std::string name = p.values(p.inputs(c.past())).name();
      if (c.window() == 0 && other.dims.size() == 4 && past.dims.size() == 4 && other.dims[2] != past.dims[2])
        return makeError("input '" + name + "': " + std::to_string(other.dims[2]) +
                         " cached positions, but '" + p.values(p.inputs(full->past())).name() + "' holds " +
                         std::to_string(past.dims[2]) + " (every layer's cache has one length)");
      if (other.dims.size() == 4 && ids.dims.size() == 2 && other.dims[0] != ids.dims[0])
        return makeError("input '" + name + "': batch " + std::to_string(other.dims[0]) + ", but '" +
                         p.values(p.inputs(d.input_ids())).name() + "' has " + std::to_string(ids.dims[0]) +
                         " sequences");
    }
    const Tensor *mask = d.attention_mask() >= 0 ? &values[p.inputs(d.attention_mask())] : nullptr;
    if (m->cachesConcatenated && mask && mask->dims.size() == 2 && ids.dims.size() == 2 &&
        past.dims.size() == 4 && mask->dims[1] != past.dims[2] + ids.dims[1])
      return makeError("input '" + p.values(p.inputs(d.attention_mask())).name() +
                       "': " + std::to_string(mask->dims[1]) + " positions, but the past caches hold " +
                       std::to_string(past.dims[2]) + " and '" + p.values(p.inputs(d.input_ids())).name() +
                       "' adds " + std::to_string(ids.dims[1]) + " (the mask covers both)");
  }

  if (m->comm) { // every rank must run the same data (a session's own caches are not inputs to compare)
    std::vector<char> cache(p.inputs_size(), 0);
    if (caches && p.has_decoder())
      for (const pb::KvCache &c : p.decoder().caches())
        cache[c.past()] = 1;
    uint64_t h = 0; // each input's dims and bytes, chained through the artifact checksum's seed
    auto add = [&](const Tensor &t) {
      h = moert::format::checksum(t.dims.data(), sizeof(int64_t) * t.dims.size(), h);
      if (t.data)
        h = moert::format::checksum(t.data, t.bytes(), h);
    };
    for (int i = 0; i < p.inputs_size(); ++i) {
      const Tensor &t = values[p.inputs(i)];
      if (cache[i])
        continue;
      h = moert::format::checksum(&t.kind, sizeof t.kind, h);
      if (t.kind == Tensor::Kind::Tensor)
        add(t);
      for (size_t e = 0; t.elements && e < t.elements->size(); ++e)
        add((*t.elements)[e]);
    }
    if (std::string why = moert::sameOnEveryRank(*m, h); !why.empty())
      return makeError(why);
  }

  for (int i = 0; i < p.values_size(); ++i) {
    const pb::Value &v = p.values(i);
    if (!v.has_constant_section())
      continue;
    std::vector<int64_t> dims;
    for (const auto &d : v.type().dims())
      dims.push_back(d.size());
    values[i] = Tensor{v.type().dtype(), std::move(dims),
                       reinterpret_cast<const char *>(m->map + m->meta.sections(v.constant_section()).offset()),
                       nullptr};
  }
  // The memory plan: every planned value goes to its buffer in one arena, sized as runs with this input shape
  // measured them (a shape not seen before: moert_model::grownBufferBytes; what does not fit goes elsewhere).
  std::vector<int64_t> signature;
  for (int i = 0; i < p.inputs_size(); ++i) {
    const Tensor &t = values[p.inputs(i)];
    auto add = [&](const std::vector<int64_t> &d) {
      signature.push_back(static_cast<int64_t>(d.size()));
      signature.insert(signature.end(), d.begin(), d.end());
    };
    if (t.kind == Tensor::Kind::Tensor) {
      add(t.dims);
    } else { // -1 - the kind, then a sequence's tensors' shapes
      signature.push_back(-1 - int64_t(t.kind));
      if (t.elements) {
        signature.push_back(int64_t(t.elements->size()));
        for (const Tensor &e : *t.elements)
          add(e.dims);
      }
    }
  }
  const int buffers = m->planIgnoresViews ? 0 : p.buffers(); // no plan: every value in a block of its own
  std::vector<uint64_t> planned, offset(buffers, 0), observed(buffers, 0);
  std::shared_ptr<char> arena;
  size_t arenaBytes = 0;
  {
    std::lock_guard<std::mutex> lock(m->planMutex);
    auto it = m->bufferBytes.find(signature);
    if (it != m->bufferBytes.end() || !m->grownBufferBytes.empty()) {
      planned = it != m->bufferBytes.end() ? it->second : m->grownBufferBytes;
      for (int b = 0; b < buffers; ++b) {
        offset[b] = arenaBytes;
        arenaBytes += (planned[b] + 63) & ~uint64_t(63);
      }
      if (m->spareArena && moert::spareArenaServes(m->spareArenaBytes, arenaBytes)) {
        arena = std::move(m->spareArena);
        arenaBytes = m->spareArenaBytes;
        m->spareArena.reset();
      } else if (m->spareArenaBytes > arenaBytes) { // kept for larger shapes than these: let it go
        m->spareArena.reset();
        m->spareArenaBytes = 0;
      }
    }
  }
  if (!planned.empty() && !arena)
    arena = moert::allocBlock(arenaBytes); // null on failure: values then go to the heap one by one
  auto place = [&](uint32_t id, Tensor &t) {
    const pb::Value &v = p.values(id);
    if (!arena || !v.has_buffer() || v.buffer() < 0 || v.buffer() >= buffers || planned[v.buffer()] == 0)
      return;
    t.owned = std::shared_ptr<char>(arena, arena.get() + offset[v.buffer()]);
    t.capacity = planned[v.buffer()];
  };
  auto measure = [&](uint32_t id) {
    const pb::Value &v = p.values(id);
    if (v.has_buffer() && v.buffer() >= 0 && v.buffer() < buffers)
      observed[v.buffer()] = std::max<uint64_t>(observed[v.buffer()], values[id].bytes());
  };

  moert_exec exec{&parallelForThunk, m->pool.get(), m->pool->threads()};
  std::ostringstream trace;
  auto t0 = std::chrono::steady_clock::now();
  auto us = [&](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::micro>(t - t0).count();
  };
  bool firstEvent = true;
  struct InPlace {
    uint32_t id;      // a cache view appended in place
    int64_t capacity; // positions apart per head
    bool device;      // appended on the device (the session's device copy)
  };
  std::vector<InPlace> inPlace;
  // Per decoder cache: this run's new positions are in its device copy already, written by the step that
  // made them (moert_model::cacheProducer), so its append launches nothing.
  std::vector<char> writtenEarly(caches ? size_t(p.decoder().caches_size()) : 0, 0);
  // On a GPU: the run's device copies of activations (a GPU step's output stays on the device until a host
  // step reads it). Host steps bring what they read up to date first and drop the copies of what they write.
  moert::gpu::ResidencyPtr residency =
      m->gpu ? moert::gpu::beginRun(*m->gpu, arena.get(), arenaBytes) : nullptr;
  // A session's caches kept on the device: their host buffers map to the session's device copies this run.
  for (int c = 0; residency && caches && c < p.decoder().caches_size(); ++c)
    if (caches[c].device)
      if (std::string why = moert::gpu::bindCache(*residency, *caches[c].device, caches[c].data);
          !why.empty())
        return makeError(why);
  // A value whose bytes are in the arena (a planned buffer, or a view of one).
  auto inArena = [&](const Tensor &t) {
    return arena && t.owned && !t.owned.owner_before(arena) && !arena.owner_before(t.owned);
  };
  // The host bytes a value's device copies are kept for: its own; a session cache's past or present (a view
  // whose dims say the filled positions: rows `capacity` apart, int8 rows with their scales, the past typed
  // as the program declares it, f32) the cache's whole buffer. Never more than the value's memory: a copy
  // brought back over a longer range would write into memory the value does not own.
  auto cacheOf = [&](const Tensor &t) -> const CacheBinding * { // a view of a session cache's buffer
    for (int c = 0; caches && c < p.decoder().caches_size(); ++c)
      if (t.data == caches[c].data)
        return &caches[c];
    return nullptr;
  };
  auto hostRange = [&](const Tensor &t) -> std::pair<const char *, size_t> {
    const CacheBinding *cb = cacheOf(t);
    return cb ? std::pair<const char *, size_t>{cb->data, cb->bytes} : std::pair{t.data, t.bytes()};
  };
  // Whether a value owns a heap block from its start (allocBlock's, not an arena slot); with `last`, with no
  // view of it left either (releasing it frees the block).
  auto ownBlock = [&](const Tensor &t, bool last = false) {
    return t.owned && t.data == t.owned.get() && !inArena(t) && (!last || t.owned.use_count() == 1);
  };
  // The heap block a value's range must end within: a session cache's buffer, or its own block (none for an
  // arena slot, a caller's input or a constant).
  auto blockOf = [&](const Tensor &t) -> const char * {
    const CacheBinding *cb = cacheOf(t);
    return cb ? cb->data : ownBlock(t) ? t.data : nullptr;
  };
  auto readOnHost = [&](const Tensor &t) -> std::string {
    if (!residency || !t.isTensor() || !t.data)
      return "";
    auto [data, bytes] = hostRange(t);
    if (const char *block = blockOf(t); block && bytes > moert::blockBytes(block))
      return "internal: a value of " + dimsString(t.dims) + " " + dtypeName(t.dtype) +
             " would be brought to the host over " + std::to_string(bytes) + " bytes, past the " +
             std::to_string(moert::blockBytes(block)) + " of its memory";
    return moert::gpu::toHost(*residency, data, bytes);
  };
  // Host step `step` (of the flat program) reads value `id` (its current bytes brought to the host first);
  // loaded with no_round_trips, bytes only the device has are an error instead.
  auto hostReads = [&](int step, int64_t id) -> std::string {
    const Tensor &t = values[id];
    if (m->noRoundTrips && residency && t.isTensor() && t.data) {
      auto [data, bytes] = hostRange(t);
      if (moert::gpu::deviceNewer(*residency, data, bytes))
        return stepLabel(p, *m->flat[step]) + " runs on the CPU and reads '" + p.values(id).name() +
               "', which a GPU step made: a copy back to the host in every call, refused (the model was "
               "loaded with no_round_trips; `moert inspect --device=gpu` shows where each step runs)";
    }
    return readOnHost(t);
  };
  std::function<moert_status(int)> runStep;
  // Block `b` of control-flow step `si`: binds its inputs, runs its steps, hands back what it yields and
  // drops the values it defined (they live for one run of the block).
  auto runBlock = [&](int si, int b, const std::vector<Tensor> &bound, std::vector<Tensor> &yielded) {
    const pb::Block &blk = m->flat[si]->op().blocks(b);
    const moert::BlockSteps &info = m->blocks[si][b];
    std::string why;
    if (bound.size() != size_t(blk.inputs_size()))
      why = m->flat[si]->op().op() + ": its block takes " + std::to_string(blk.inputs_size()) + " inputs, " +
            std::to_string(bound.size()) + " given";
    for (int k = 0; why.empty() && k < blk.inputs_size(); ++k)
      values[blk.inputs(k)] = bound[k];
    for (size_t k = 0; why.empty() && k < info.steps.size(); ++k)
      if (moert_status st = runStep(info.steps[k])) {
        why = st->message;
        moert_status_free(st);
      }
    for (int k = 0; why.empty() && k < blk.outputs_size(); ++k) {
      if (!values[blk.outputs(k)].present() || !values[blk.outputs(k)].computed())
        why = "internal: " + m->flat[si]->op().op() + " block yields a value not computed";
      else
        why = hostReads(si, blk.outputs(k)); // the control-flow op reads it on the host
      yielded.push_back(values[blk.outputs(k)]);
    }
    for (uint32_t id : info.defined)
      values[id] = Tensor{};
    return why;
  };
  // Whether op step `si` runs on the device now (its inputs computed and where the kernels want them), and
  // its plan (gpu::planOp).
  auto planGpuOp = [&](int si, moert::gpu::OpPlan &plan) {
    const pb::OpStep &o = m->flat[si]->op();
    std::vector<std::vector<int64_t>> dims;
    std::vector<int> dtypes;
    std::vector<const void *> host; // what planOp may read on the host: integers and constants
    std::vector<moert::gpu::OpInput> where;
    for (int k = 0; k < o.inputs_size(); ++k) {
      const int64_t id = o.inputs(k);
      dims.emplace_back();
      dtypes.push_back(-1);
      host.push_back(nullptr);
      where.emplace_back();
      if (id < 0) // an absent optional input
        continue;
      const Tensor &t = values[id];
      if (!t.isTensor() || !t.computed())
        return false;
      const bool constant = p.values(id).has_constant_section();
      where.back() = {true, t.dtype, constant, moert::gpu::onDevice(*residency, t.data, t.bytes())};
      dims.back() = t.dims;
      dtypes.back() = t.dtype;
      if (constant || t.dtype == moert::proto::I64 || t.dtype == moert::proto::I32)
        host.back() = t.data;
    }
    return moert::gpu::opQualifies(o, where) && moert::gpu::planOp(o, dims, dtypes, host, plan);
  };
  // The session cache op step `si` writes its [B, H, S, D] result into on the device (moert_model::
  // cacheProducer), when the cache is there and the new positions fit (the append step checks the same and
  // reports what does not); else none (`into.cache` null).
  auto cacheWrite = [&](int si, const moert::gpu::OpPlan &plan, moert::gpu::CacheWrite &into) {
    const int c = caches ? m->cacheProducer[si] : -1;
    into = {};
    if (c < 0 || !caches[c].device)
      return;
    const Tensor &past = values[p.inputs(p.decoder().caches(c).past())];
    const std::vector<int64_t> &nd = plan.outDims[0];
    if (past.dims.size() == 4 && nd.size() == 4 && nd[0] == past.dims[0] && nd[1] == past.dims[1] &&
        nd[3] == past.dims[3] && past.dims[2] + nd[2] <= caches[c].capacity)
      into = {caches[c].device,   caches[c].data, past.dims[1],
              caches[c].capacity, past.dims[2],   caches[c].dtype};
  };
  // The host ranges an op step's device kernels read (parameters stay on the host: planOp read them).
  auto gpuOpInputs = [&](const pb::OpStep &o) {
    std::vector<std::pair<const void *, size_t>> ranges;
    for (int k = 0; k < o.inputs_size(); ++k) {
      const int64_t id = o.inputs(k);
      ranges.push_back(id < 0 || moert::gpu::parameterInput(o, k)
                           ? std::pair<const void *, size_t>{nullptr, 0}
                           : std::pair<const void *, size_t>{values[id].data, values[id].bytes()});
    }
    return ranges;
  };
  // Rotary embeddings launched with an earlier one (moert_model::rotaryPartner): nothing to launch at their
  // own step.
  std::vector<char> launchedEarly(m->flat.size(), 0);
  moert::gpu::OpPlan earlyPlan; // the plan of the one launched early, kept for its own step
  runStep = [&](int si) -> moert_status {
    // Weights are checked before their first use; a CPU MoE dispatch's experts after the dispatch has said
    // which it read (before its output is used: a corrupted expert fails the run, as a section does).
    if (m->verifyLevel == 1 && !m->stepSections[si].empty())
      if (moert_status st =
              moert::verifyStepSections(*m, si, /*deferExperts=*/m->flat[si]->has_moe() && !m->gpu))
        return st;
    const pb::Step &s = *m->flat[si];
    const auto start = profile ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    std::string label; // the profile's name for the step (built only when profiling)
    // A graph op the device runs (gpu::graphOpCandidate: f32 elementwise ops, movement, reductions, softmax,
    // moec.Rotary, moec.Norm, moec.Embedding), when its inputs are there already (constants and side inputs
    // aside: those are uploaded; parameters are read here): it then adds no copy, and its results stay there.
    moert::gpu::OpPlan opPlan;
    bool gpuOp = residency && m->gpuOps[si] &&          // a candidate the load-time plan leaves to the device
                 !(caches && m->appendsCache[si] >= 0); // a cache append writes its buffer here
    if (gpuOp && launchedEarly[si])                     // planned (and launched) at the step before
      opPlan = std::move(earlyPlan);
    else
      gpuOp = gpuOp && planGpuOp(si, opPlan);
    // An attention over a session's cache appended in place reads the cache's host buffer (CPU kernel),
    // unless the session keeps that cache on the device too.
    bool kvInPlace = false, kvHost = false;
    if (s.has_attention())
      for (const InPlace &c : inPlace)
        if (c.id == s.attention().key() || c.id == s.attention().value())
          kvInPlace = true, kvHost |= !c.device;
    // A session cache's append runs where the session keeps the cache.
    const bool deviceAppend =
        residency && caches && m->appendsCache[si] >= 0 && caches[m->appendsCache[si]].device;
    const bool onDevice =
        residency && (gpuOp || deviceAppend || (moert::gpu::runsDispatch(*m->gpu, s) && !kvHost));
    // A step on the host reads current host bytes; a view op (its output aliases its first input) neither
    // reads nor writes that input's bytes, and Shape reads only dims.
    const bool view = s.has_op() && moert::isView(m->opKernels[si]);
    const bool dimsOnly = s.has_op() && moert::readsDimsOnly(m->opKernels[si]);
    if (residency && !onDevice && !dimsOnly) {
      const std::vector<int64_t> reads = moert::stepReads(s);
      for (size_t k = view ? 1 : 0; k < reads.size(); ++k)
        if (reads[k] >= 0)
          if (std::string why = hostReads(si, reads[k]); !why.empty())
            return makeError(why);
    }
    if (caches && m->appendsCache[si] >= 0) {
      // A session's cache: the new positions go into its buffer after the past ones; the present is a view
      // of the buffer (rows `capacity` apart per head) that only attention dispatches and Shape read.
      const int c = m->appendsCache[si];
      const auto &o = s.op();
      const bool update = o.op() == "moec.KvCacheUpdate"; // else a Concat(past, new)
      const Tensor &past = values[o.inputs(update ? MOERT_KV_UPDATE_PAST : 0)],
                   &add = values[o.inputs(update ? MOERT_KV_UPDATE_FRESH : 1)];
      const CacheBinding &cb = caches[c];
      // Where each sequence's new positions go: after the past's (a Concat's), or after its own past length
      // (moec.KvCacheUpdate: GroupQueryAttention's seqlens_k, at most the past's; then the present's rows
      // past them are zeros up to its length, which must be just past + new: the buffer's rows).
      std::vector<int64_t> at;
      if (update) {
        const Tensor &lens = values[o.inputs(MOERT_KV_UPDATE_PAST_LENGTHS)],
                     &len = values[o.inputs(MOERT_KV_UPDATE_LENGTH)];
        for (int input : {MOERT_KV_UPDATE_PAST_LENGTHS, MOERT_KV_UPDATE_LENGTH}) // read here, either way
          if (std::string why = hostReads(si, o.inputs(input)); !why.empty())
            return makeError(why);
        bool fits = lens.dtype == moert::proto::I64 && lens.dims.size() == 1 && past.dims.size() == 4 &&
                    lens.dims[0] == past.dims[0] && len.dtype == moert::proto::I64 && len.numel() == 1 &&
                    add.dims.size() == 4 && len.as<int64_t>()[0] == past.dims[2] + add.dims[2];
        for (int64_t b = 0; fits && b < lens.dims[0]; ++b) {
          at.push_back(lens.as<int64_t>()[b]);
          fits = at.back() >= 0 && at.back() <= past.dims[2];
        }
        if (!fits)
          return makeError("cache '" + p.values(o.outputs(0)).name() +
                           "': the new positions do not fit the session's cache (past lengths beyond the "
                           "cached positions, or a present longer than past + new)");
      }
      if (add.dtype != moert::proto::F32 || add.dims.size() != 4 || past.dims.size() != 4 ||
          add.dims[0] != past.dims[0] || add.dims[1] != past.dims[1] || add.dims[3] != past.dims[3] ||
          past.dims[2] + add.dims[2] > cb.capacity)
        return makeError("cache '" + p.values(o.outputs(0)).name() + "': new keys/values " +
                         dimsString(add.dims) + " do not extend the session's cache " +
                         dimsString(past.dims) + " (room for " + std::to_string(cb.capacity) + " positions)");
      const int64_t B = past.dims[0], H = past.dims[1], P = past.dims[2], S = add.dims[2], D = past.dims[3];
      const size_t row = moert::cacheRowBytes(cb.dtype, D);
      if (deviceAppend && !writtenEarly[c]) { // into the session's device copy (ops_gpu.h, kvAppend)
        if (std::string why = moert::gpu::appendCache(
                *m->gpu, *residency, *cb.device, cb.data, add.as<float>(), add.bytes(),
                at.empty() ? nullptr : at.data(), B, H, S, D, P, cb.capacity, cb.dtype);
            !why.empty())
          return makeError("cache '" + p.values(o.outputs(0)).name() + "': " + why);
      }
      for (int64_t h = 0; h < B * H && !deviceAppend; ++h) { // every (sequence, head)
        const float *src = add.as<float>() + h * S * D;
        const int64_t first = at.empty() ? P : at[h / H];
        char *dst = cb.data + (size_t(h * cb.capacity) + first) * row;
        if (cb.dtype == moert::proto::F32)
          std::memcpy(dst, src, sizeof(float) * S * D);
        else if (cb.dtype == moert::proto::I8)
          for (int64_t i = 0; i < S; ++i)
            moert_cpu::encodeKvInt8Row(src + i * D, D, dst + i * row);
        else
          moert::ops::narrowInto(src, S * D, cb.dtype, reinterpret_cast<uint16_t *>(dst));
        // Rows past the new ones are zeros in the present. Those below P already are (a session zeroes
        // what a sequence's padding wrote); the ones the buffer grows by are not yet.
        const int64_t zeroFrom = std::max(first + S, P);
        std::memset(cb.data + (size_t(h * cb.capacity) + zeroFrom) * row, 0, size_t(P + S - zeroFrom) * row);
      }
      values[o.outputs(0)] = Tensor{cb.dtype, {B, H, P + S, D}, cb.data, nullptr};
      inPlace.push_back({o.outputs(0), cb.capacity, deviceAppend});
      if (profile)
        label = o.op() + (writtenEarly[c] ? " (cache append in place: written by the step making it, gpu)"
                          : deviceAppend  ? " (cache append in place, gpu)"
                                          : " (cache append in place)");
    } else if (s.has_op()) {
      const auto &o = s.op();
      std::vector<Tensor> ins;
      for (int64_t id : o.inputs()) {
        if (id >= 0 && !values[id].computed())
          return makeError("internal: op " + o.op() + " reads a value not computed yet");
        ins.push_back(id >= 0 ? values[id] : Tensor{});
      }
      std::vector<Tensor> outs(o.outputs_size());
      for (int k = 0; k < o.outputs_size(); ++k) {
        outs[k].dtype = p.values(o.outputs(k)).type().dtype();
        place(o.outputs(k), outs[k]);
      }
      if (gpuOp) {
        std::vector<std::pair<void *, size_t>> made;
        for (int k = 0; k < o.outputs_size(); ++k) {
          if (!outs[k].alloc(p.values(o.outputs(k)).type().dtype(), opPlan.outDims[k]))
            return makeError("out of memory for " + o.op() + " '" + p.values(o.outputs(k)).name() + "'");
          made.push_back({outs[k].mut<char>(), outs[k].bytes()});
        }
        // The new positions of a session cache kept on the device go straight into it (cacheWrite).
        moert::gpu::CacheWrite into;
        cacheWrite(si, opPlan, into);
        // The keys' rotary embedding in the same launch as the queries' when it can run now (its inputs are
        // made before this step: moert_model::rotaryPartner) and writes its cache.
        const int partner = m->rotaryPartner.empty() ? -1 : m->rotaryPartner[si];
        moert::gpu::OpPlan partnerPlan;
        moert::gpu::CacheWrite partnerInto;
        if (partner >= 0 && !launchedEarly[si] && m->gpuOps[partner] && planGpuOp(partner, partnerPlan))
          cacheWrite(partner, partnerPlan, partnerInto);
        const auto partnerRanges = partnerInto.cache ? gpuOpInputs(m->flat[partner]->op())
                                                     : std::vector<std::pair<const void *, size_t>>{};
        const std::vector<std::pair<void *, size_t>> noOutputs;
        const moert::gpu::OpRun with{partnerPlan, partnerRanges, noOutputs, &partnerInto};
        std::string why = launchedEarly[si] ? ""
                                            : moert::gpu::runOp(*m->gpu, *residency, opPlan, gpuOpInputs(o),
                                                                made, into.cache ? &into : nullptr,
                                                                partnerInto.cache ? &with : nullptr);
        if (!why.empty())
          return makeError(o.op() + " '" + p.values(o.outputs(0)).name() + "': " + why);
        if (into.cache)
          writtenEarly[m->cacheProducer[si]] = 1;
        if (partnerInto.cache)
          launchedEarly[partner] = 1, earlyPlan = std::move(partnerPlan);
      } else if (o.blocks_size() > 0) { // If / Loop / Scan
        bool blockError = false;
        std::string why = moert::runControlFlow(
            o, ins, outs,
            [&](int b, const std::vector<Tensor> &bound, std::vector<Tensor> &yielded) {
              return runBlock(si, b, bound, yielded);
            },
            blockError);
        if (!why.empty())
          return makeError(blockError ? why : o.op() + " '" + p.values(o.outputs(0)).name() + "': " + why);
        // An output that is a value of the enclosing program (or a view of one) in the arena is copied: that
        // buffer is reused once its own value is dead, and the op's output has no buffer of its own.
        for (Tensor &t : outs)
          if (inArena(t)) {
            Tensor copy;
            if (!copy.copyOf(t))
              return makeError("out of memory for " + o.op() + " '" + p.values(o.outputs(0)).name() + "'");
            t = std::move(copy);
          }
      } else {
        std::string why = moert::runOp(m->opKernels[si], o, ins, outs, m->pool.get());
        if (!why.empty())
          return makeError(o.op() + " '" + p.values(o.outputs(0)).name() + "': " + why);
      }
      for (int k = 0; k < o.outputs_size(); ++k) {
        const pb::Value &want = p.values(o.outputs(k));
        if (!outs[k].computed() || outs[k].dtype != want.type().dtype())
          return makeError("internal: op " + o.op() + " left output " + std::to_string(k) + " uncomputed");
        const bool kindOk = want.kind() == pb::Value::TENSOR     ? outs[k].isTensor()
                            : want.kind() == pb::Value::SEQUENCE ? outs[k].kind == Tensor::Kind::Sequence
                            : want.kind() == pb::Value::OPTIONAL_TENSOR
                                ? outs[k].kind != Tensor::Kind::Sequence
                                : !outs[k].isTensor();
        if (!kindOk)
          return makeError(o.op() + " '" + want.name() + "': made a " +
                           (outs[k].kind == Tensor::Kind::Sequence ? "sequence"
                            : outs[k].kind == Tensor::Kind::None   ? "empty optional"
                                                                   : "tensor") +
                           " where the program has another kind of value");
        values[o.outputs(k)] = std::move(outs[k]);
        measure(o.outputs(k));
      }
      if (profile)
        label =
            gpuOp
                ? o.op() + (caches && m->cacheProducer[si] >= 0 && writtenEarly[m->cacheProducer[si]]
                                ? (launchedEarly[si] ? " (into the cache, launched with the step before, gpu)"
                                                     : " (into the cache, gpu)")
                                : " (gpu)")
                : o.op();
    } else if (s.has_linear()) {
      const auto &d = s.linear();
      const moert::Linear &x = m->linears[d.index()];
      const Tensor &in = values[d.input()];
      auto what = [&] { return "linear dispatch " + std::to_string(d.index()); }; // built only for an error
      if (in.dtype != moert::proto::F32)
        return makeError(what() + ": input of dtype " + dtypeName(in.dtype) + ", expected f32");
      if (in.dims.empty() || in.dims.back() != x.k)
        return makeError(what() + ": input " + dimsString(in.dims) + ", expected [..., " + std::to_string(x.k) + "]");
      std::vector<int64_t> outDims = in.dims; // [..., N] (each output: [..., N_j])
      outDims.back() = x.n;
      int64_t rows = 1;
      for (size_t i = 0; i + 1 < in.dims.size(); ++i)
        rows *= in.dims[i]; // within 2^62 (every value's bytes are)
      if (std::string why = checkRows(what(), rows); !why.empty())
        return makeError(why);
      const float *input = reinterpret_cast<const float *>(in.data);
      std::shared_ptr<char> lastRows; // a session's logits: one input row per sequence, [batch][k]
      if (logitsRows && si == m->logitsStep && in.dims.size() == 3 && in.dims[1] > 1) {
        const int64_t B = in.dims[0], S = in.dims[1];
        for (int64_t b = 0; b < B; ++b)
          if (logitsRows[b] < 0 || logitsRows[b] >= S)
            return makeError("internal: logits row " + std::to_string(logitsRows[b]) + " of " +
                             std::to_string(S));
        if (!(lastRows = moert::allocBlock(sizeof(float) * B * x.k)))
          return makeError("out of memory for " + what());
        if (onDevice && moert::gpu::onDevice(*residency, in.data, in.bytes())) { // gathered there
          std::vector<int64_t> at(B);
          for (int64_t b = 0; b < B; ++b)
            at[b] = b * S + logitsRows[b];
          if (std::string why = moert::gpu::gatherRows(*m->gpu, *residency, in.data, in.bytes(),
                                                       lastRows.get(), sizeof(float) * x.k, at);
              !why.empty())
            return makeError(what() + ": " + why);
        } else { // gathered on the host
          if (std::string why = hostReads(si, d.input()); !why.empty())
            return makeError(why);
          for (int64_t b = 0; b < B; ++b)
            std::memcpy(lastRows.get() + sizeof(float) * b * x.k, input + (b * S + logitsRows[b]) * x.k,
                        sizeof(float) * x.k);
          if (residency) // new host bytes in a fresh block: any device copy of that range is stale
            moert::gpu::hostWrote(*residency, lastRows.get(), sizeof(float) * B * x.k);
        }
        input = reinterpret_cast<const float *>(lastRows.get());
        rows = B;
        outDims = {B, 1, x.n};
      }
      const float *residual = nullptr;
      if (d.residual() >= 0) {
        const Tensor &r = values[d.residual()];
        if (r.dtype != moert::proto::F32 || r.dims != outDims)
          return makeError(what() + ": residual " + dimsString(r.dims) + ", expected " + dimsString(outDims));
        residual = reinterpret_cast<const float *>(r.data);
      }
      const int outputs = d.outputs_size();
      Tensor out[MOERT_LIN_MAX_OUTPUTS];
      const bool onGpu = onDevice; // GPU kernels for this dispatch (runsDispatch)
      const size_t scratchBytes = onGpu ? 0 : x.scratch(rows, exec.threads);
      auto scratch = scratchBytes ? moert::allocBlock(scratchBytes) : nullptr;
      if (scratchBytes && !scratch)
        return makeError("out of memory for " + what());
      moert_linear_args args{};
      for (int j = 0; j < outputs; ++j) {
        place(d.outputs(j), out[j]);
        outDims.back() = d.output_columns(j);
        if (!out[j].alloc(moert::proto::F32, outDims))
          return makeError("out of memory for " + what());
        args.outputs[j] = out[j].mut<float>();
      }
      args.scratch = scratch.get();
      args.rows = rows;
      args.input = input;
      args.residual = residual;
      std::memcpy(args.weights, x.weights, sizeof args.weights);
      args.exec = &exec;
      double gpuMs = 0;
      if (onGpu) {
        std::string why = moert::gpu::runLinear(*m->gpu, *residency, int(d.index()), rows, input, residual,
                                                args.outputs, profile ? &gpuMs : nullptr);
        if (!why.empty())
          return makeError(why);
      } else if (int rc = x.run(&args)) {
        return makeError(what() + " failed (code " + std::to_string(rc) + ")");
      }
      if (residency && lastRows) // freed at the end of this step
        moert::gpu::hostWrote(*residency, lastRows.get(), sizeof(float) * rows * x.k);
      for (int j = 0; j < outputs; ++j) {
        values[d.outputs(j)] = std::move(out[j]);
        measure(d.outputs(j));
      }
      if (profile) {
        label = "linear " + std::to_string(d.index()) + " (" + std::to_string(rows) + "x" +
                std::to_string(x.k) + "x" + std::to_string(x.n) + (onGpu ? ", gpu)" : ")");
        if (onGpu) {
          trace << (firstEvent ? "" : ",\n") << "  {\"name\": \"gpu linear " << d.index() << " (M=" << rows
                << ")\", \"ph\": \"X\", \"pid\": 0, \"tid\": 1, \"ts\": " << us(start)
                << ", \"dur\": " << gpuMs * 1000.0 << "}";
          firstEvent = false;
        }
      }
    } else if (s.has_attention()) {
      const auto &d = s.attention();
      const moert::Attention &x = m->attentions[d.index()];
      const Tensor &q = values[d.query()], &k = values[d.key()], &v = values[d.value()];
      auto what = [&] { return "attention dispatch " + std::to_string(d.index()); };
      // Keys and values are f32, or both bf16 / f16 / int8 rows when they are a session's narrow cache.
      const bool kvOk = (k.dtype == moert::proto::F32 || moert::ops::isHalf(k.dtype) ||
                         (kvInPlace && k.dtype == moert::proto::I8)) &&
                        v.dtype == k.dtype;
      for (auto [t, name] :
           {std::pair<const Tensor *, const char *>{&q, "query"}, {&k, "key"}, {&v, "value"}})
        if ((t == &q ? t->dtype != moert::proto::F32 : !kvOk) || t->dims.size() != 4)
          return makeError(what() + ": " + name + " " + dimsString(t->dims) + " of dtype " +
                           dtypeName(t->dtype) + ", expected a rank-4 f32 tensor");
      const int64_t B = q.dims[0], S = q.dims[2], T = k.dims[2];
      if (q.dims[1] != x.qHeads || q.dims[3] != x.keyDim ||
          k.dims != std::vector<int64_t>{B, x.kvHeads, T, x.keyDim} ||
          v.dims != std::vector<int64_t>{B, x.kvHeads, T, x.valueDim})
        return makeError(what() + ": query " + dimsString(q.dims) + ", key " + dimsString(k.dims) +
                         ", value " + dimsString(v.dims) + "; expected [B, " + std::to_string(x.qHeads) +
                         ", S, " + std::to_string(x.keyDim) + "], [B, " + std::to_string(x.kvHeads) +
                         ", T, " + std::to_string(x.keyDim) + "], [B, " + std::to_string(x.kvHeads) +
                         ", T, " + std::to_string(x.valueDim) + "]");
      if (std::string why = checkRows(what(), std::max(B * S, B * T)); !why.empty())
        return makeError(why);
      moert_attention_args args{};
      args.batch = B, args.q_len = S, args.kv_len = T;
      args.query = reinterpret_cast<const float *>(q.data);
      args.key = k.data;
      args.value = v.data;
      args.kv_storage = moert::kvStorage(k.dtype);
      auto strides = [](const std::vector<int64_t> &dims, int64_t *out, int64_t row) {
        out[2] = row, out[1] = dims[2] * out[2], out[0] = dims[1] * out[1];
      };
      // Elements apart (an int8 cache's rows: bytes, scales included).
      auto rowStride = [&](const Tensor &t) {
        return int64_t(moert::cacheRowBytes(t.dtype, t.dims[3]) / moert::dtypeSize(t.dtype));
      };
      strides(q.dims, args.q_strides, q.dims[3]);
      strides(k.dims, args.k_strides, rowStride(k));
      strides(v.dims, args.v_strides, rowStride(v));
      for (const InPlace &c : inPlace) // a session's cache: `capacity` positions apart per head
        for (auto [kv, st] :
             {std::pair<uint32_t, int64_t *>{d.key(), args.k_strides}, {d.value(), args.v_strides}})
          if (kv == c.id)
            st[1] = c.capacity * st[2], st[0] = x.kvHeads * st[1];
      // [B, HQ, S, DV], or [B, S, HQ, DV] when the model's Transpose after attention was folded in
      const std::vector<int64_t> outDims = d.transpose_output()
                                               ? std::vector<int64_t>{B, S, x.qHeads, x.valueDim}
                                               : std::vector<int64_t>{B, x.qHeads, S, x.valueDim};
      strides({B, x.qHeads, S, x.valueDim}, args.out_strides, x.valueDim);
      if (d.transpose_output())
        args.out_strides[1] = x.valueDim, args.out_strides[2] = x.qHeads * x.valueDim;
      if (d.mask() >= 0) {
        const Tensor &mk = values[d.mask()];
        const int64_t full[4] = {B, x.qHeads, S, T};
        bool ok = mk.dtype == moert::proto::F32 && mk.dims.size() == 4;
        for (int i = 0; ok && i < 4; ++i)
          ok = mk.dims[i] == 1 || mk.dims[i] == full[i];
        if (!ok)
          return makeError(what() + ": mask " + dimsString(mk.dims) + " of dtype " + dtypeName(mk.dtype) +
                           ", expected f32 broadcastable to " +
                           dimsString(std::vector<int64_t>(full, full + 4)));
        int64_t stride = 1;
        for (int i = 3; i >= 0; --i) {
          args.mask_strides[i] = mk.dims[i] == 1 ? 0 : stride;
          stride *= mk.dims[i];
        }
        args.mask = reinterpret_cast<const float *>(mk.data);
      }
      if (d.sinks() >= 0) {
        const Tensor &sk = values[d.sinks()];
        if (sk.dtype != moert::proto::F32 || sk.dims != std::vector<int64_t>{x.qHeads})
          return makeError(what() + ": sinks " + dimsString(sk.dims) + " of dtype " + dtypeName(sk.dtype) +
                           ", expected f32 [" + std::to_string(x.qHeads) + "]");
        args.sinks = sk.as<float>();
      }
      Tensor out;
      place(d.output(), out);
      if (!out.alloc(moert::proto::F32, outDims))
        return makeError("out of memory for " + what());
      args.output = out.mut<float>();
      double gpuMs = 0.0;
      if (onDevice) { // the GPU kernels (kernels/hip/attention_gpu.h) on the residency's copies
        const size_t maskBytes = d.mask() >= 0 ? values[d.mask()].bytes() : 0;
        const size_t sinkBytes = d.sinks() >= 0 ? values[d.sinks()].bytes() : 0;
        if (std::string why = moert::gpu::runAttention(*m->gpu, *residency, int(d.index()), args, q.bytes(),
                                                       k.bytes(), v.bytes(), maskBytes, sinkBytes,
                                                       out.bytes(), profile ? &gpuMs : nullptr);
            !why.empty())
          return makeError(why);
      } else {
        const size_t scratchBytes = x.scratch(B, S, T, exec.threads);
        auto scratch = scratchBytes ? moert::allocBlock(scratchBytes) : nullptr;
        if (scratchBytes && !scratch)
          return makeError("out of memory for " + what());
        args.scratch = scratch.get();
        args.exec = &exec;
        if (int rc = x.run(&args))
          return makeError(what() + " failed (code " + std::to_string(rc) + ")" +
                           (rc == 2 ? std::string(": its kernel does not read ") + dtypeName(k.dtype) +
                                          " caches (compiled by an older moec; compile the model again)"
                                    : ""));
      }
      values[d.output()] = std::move(out);
      measure(d.output());
      if (profile) {
        label = "attention " + std::to_string(d.index()) + " (" + std::to_string(S) + "x" +
                std::to_string(T) + (onDevice ? ", gpu)" : ")");
        if (onDevice) {
          trace << (firstEvent ? "" : ",\n") << "  {\"name\": \"gpu attention " << d.index() << " (" << S
                << "x" << T << ")\", \"ph\": \"X\", \"pid\": 0, \"tid\": 1, \"ts\": " << us(start)
                << ", \"dur\": " << gpuMs * 1000.0 << "}";
          firstEvent = false;
        }
      }
    } else {
      const auto &d = s.moe();
      const moert::Dispatch &x = m->dispatches[d.index()];
      const Tensor &in = values[d.input()];
      if (in.dtype != moert::proto::F32)
        return makeError("dispatch " + std::to_string(d.index()) + ": input of dtype " + dtypeName(in.dtype) +
                         ", expected f32");
      if (in.dims.size() != 2 || in.dims[1] != x.hidden)
        return makeError("dispatch " + std::to_string(d.index()) + ": input " + dimsString(in.dims) +
                         ", expected [T, " + std::to_string(x.hidden) + "]");
      int64_t T = in.dims[0];
      if (std::string why = checkRows("dispatch " + std::to_string(d.index()), T); !why.empty())
        return makeError(why);
      const float *logits = nullptr, *residual = nullptr;
      if (d.logits() >= 0) {
        const Tensor &l = values[d.logits()];
        if (l.dims != std::vector<int64_t>{T, x.routerColumns})
          return makeError("dispatch " + std::to_string(d.index()) + ": router logits " + dimsString(l.dims) +
                           ", expected [" + std::to_string(T) + ", " + std::to_string(x.routerColumns) + "]");
        logits = reinterpret_cast<const float *>(l.data);
      }
      if (d.residual() >= 0) {
        const Tensor &r = values[d.residual()];
        if (r.dims != in.dims)
          return makeError("dispatch " + std::to_string(d.index()) + ": residual " + dimsString(r.dims) +
                           ", expected " + dimsString(in.dims));
        residual = reinterpret_cast<const float *>(r.data);
      }
      Tensor planned;
      place(d.output(), planned);
      size_t outBytes = sizeof(float) * T * x.hidden;
      auto output = planned.capacity >= outBytes ? planned.owned : moert::allocBlock(outBytes);
      if (m->gpu) {
        if (!output)
          return makeError("out of memory for dispatch " + std::to_string(d.index()));
        double gpuMs = 0;
        std::string why = moert::gpu::run(
            *m->gpu, *residency, int(d.index()), T, reinterpret_cast<const float *>(in.data), logits,
            residual, reinterpret_cast<float *>(output.get()), profile ? &gpuMs : nullptr);
        if (!why.empty())
          return makeError(why);
        values[d.output()] = Tensor{moert::proto::F32, in.dims, output.get(), output};
        measure(d.output());
        if (profile) {
          label = "moe dispatch " + std::to_string(d.index()) + " (T=" + std::to_string(T) + ", gpu)";
          trace << (firstEvent ? "" : ",\n") << "  {\"name\": \"gpu kernels " << d.index() << " (T=" << T
                << ")\", \"ph\": \"X\", \"pid\": 0, \"tid\": 1, \"ts\": " << us(start)
                << ", \"dur\": " << gpuMs * 1000.0 << "}";
          firstEvent = false;
        }
      } else {
        if (!output)
          return makeError("out of memory for dispatch " + std::to_string(d.index()));
        std::vector<uint8_t> touched(m->verifyLevel == 1 && !moert::expertsChecked(*m, si) ? x.experts : 0,
                                     0);
        label = "moe dispatch " + std::to_string(d.index()) + " (T=" + std::to_string(T);
        if (m->comm) { // expert parallelism: the experts on their ranks
          moert::ExchangeStats ex;
          std::string why = moert::runExpertParallel(
              *m, x, int(d.index()), T, reinterpret_cast<const float *>(in.data), logits, residual,
              reinterpret_cast<float *>(output.get()), exec, touched.empty() ? nullptr : touched.data(), ex);
          if (!why.empty())
            return makeError(why);
          label += ", rank " + std::to_string(m->comm->rank) + " of " + std::to_string(m->comm->size);
          if (profile) { // the exchanges' share, for bench/expert_parallel.py
            trace << (firstEvent ? "" : ",\n") << "  {\"name\": \"exchange " << d.index()
                  << "\", \"ph\": \"X\", "
                  << "\"pid\": 0, \"tid\": 2, \"ts\": " << us(start) << ", \"dur\": " << ex.seconds * 1e6
                  << ", \"args\": {\"bytes_sent\": " << ex.bytes << ", \"rows_sent\": " << ex.rowsSent
                  << ", \"rows_received\": " << ex.rowsReceived << "}}";
            firstEvent = false;
          }
        } else {
          auto scratch = moert::allocBlock(x.scratch(T, exec.threads));
          if (!scratch)
            return makeError("out of memory for dispatch " + std::to_string(d.index()));
          moert_moe_args args{};
          args.tokens = T;
          args.input = reinterpret_cast<const float *>(in.data);
          args.logits = logits;
          args.residual = residual;
          args.output = reinterpret_cast<float *>(output.get());
          std::memcpy(args.weights, x.weights, sizeof args.weights);
          args.scratch = scratch.get();
          args.exec = &exec;
          args.touched = touched.empty() ? nullptr : touched.data();
          if (int rc = x.run(&args))
            return makeError("dispatch " + std::to_string(d.index()) + " failed (code " + std::to_string(rc) +
                             ")");
        }
        label += ")";
        if (!touched.empty())
          if (moert_status st = moert::verifyStepExperts(*m, si, touched.data(), x.experts))
            return st;
        values[d.output()] = Tensor{moert::proto::F32, in.dims, output.get(), output};
        measure(d.output());
      }
    }
    if (residency && !onDevice && !view) // what the host wrote: the device copies of those bytes are stale
      for (uint32_t id : moert::stepWrites(s))
        if (const Tensor &t = values[id]; t.isTensor() && t.data) {
          auto [data, bytes] = hostRange(t);
          moert::gpu::hostWrote(*residency, data, bytes);
        }
    for (uint32_t id : m->releaseAfter[si]) {
      // A block freed now (no view of it left, not the arena): its device copies go too, back to the pool
      // for the steps after, and none is left to be brought back into memory that is no longer the value's.
      if (Tensor &t = values[id]; residency && t.isTensor() && ownBlock(t, /*last=*/true))
        moert::gpu::hostWrote(*residency, t.data, t.bytes());
      values[id] = Tensor{};
    }
    if (profile) {
      auto end = std::chrono::steady_clock::now();
      trace << (firstEvent ? "" : ",\n") << "  {\"name\": \"" << label << "\", \"ph\": \"X\", \"pid\": 0, \"tid\": 0, "
            << "\"ts\": " << us(start) << ", \"dur\": " << us(end) - us(start) << "}";
      firstEvent = false;
    }
    return nullptr;
  };
  for (int si : m->topSteps)
    if (moert_status st = runStep(si))
      return st;
  // Outputs that are a session's caches: already in its buffers (on the device too, where it keeps them).
  std::vector<char> inSession(p.outputs_size(), 0);
  for (int c = 0; caches && c < p.decoder().caches_size(); ++c)
    if (p.decoder().caches(c).present() < uint32_t(p.outputs_size()))
      inSession[p.decoder().caches(c).present()] = 1;
  for (int i = 0; i < p.outputs_size(); ++i) { // the caller reads the outputs on the host
    if (inSession[i])
      continue;
    const Tensor &t = values[p.outputs(i)];
    std::string why = readOnHost(t);
    for (size_t e = 0; why.empty() && t.elements && e < t.elements->size(); ++e)
      why = readOnHost((*t.elements)[e]);
    if (!why.empty())
      return makeError(why);
  }
  if (residency) {
    uint64_t up = 0, down = 0;
    moert::gpu::traffic(*residency, up, down);
    m->gpuToDevice = up, m->gpuToHost = down;
  }

  auto *res = new moert_result;
  // An output in its own allocation is handed over as it is; one in the arena (which the next run reuses),
  // borrowed from an input, or aliasing another value is copied out.
  auto handOver = [&](const Tensor &t, std::shared_ptr<char> &buf) {
    const size_t bytes = t.bytes();
    const bool own = t.owned && t.data == t.owned.get() && t.capacity == 0 &&
                     !(arena && !t.owned.owner_before(arena) && !arena.owner_before(t.owned));
    buf = own ? t.owned : moert::allocBlock(bytes);
    if (!buf)
      return false;
    if (!own && bytes)
      std::memcpy(buf.get(), t.data, bytes);
    return true;
  };
  const size_t numOutputs = p.outputs_size();
  res->elementDims.resize(numOutputs);
  res->elementData.resize(numOutputs);
  res->elementTensors.resize(numOutputs);
  for (size_t i = 0; i < numOutputs; ++i) {
    const pb::Value &v = p.values(p.outputs(i));
    const Tensor &t = values[p.outputs(i)];
    res->names.push_back(v.name());
    res->kinds.push_back(int(t.kind));
    if (!t.isTensor()) {
      res->dims.emplace_back();
      res->data.emplace_back();
      if (t.elements)
        for (const Tensor &e : *t.elements) {
          res->elementDims[i].push_back(e.dims);
          res->elementData[i].emplace_back();
          if (!handOver(e, res->elementData[i].back())) {
            delete res;
            return makeError("out of memory for output '" + v.name() + "'");
          }
        }
      continue;
    }
    size_t bytes = numel(t.dims) * dtypeSize(v.type().dtype());
    if (!t.data && bytes) {
      delete res;
      return makeError("output '" + v.name() + "' was not computed");
    }
    res->dims.push_back(t.dims);
    if (inSession[i]) {
      res->data.emplace_back();
      continue;
    }
    res->data.emplace_back();
    if (!handOver(t, res->data.back())) {
      delete res;
      return makeError("out of memory for output '" + v.name() + "'");
    }
  }
  for (size_t i = 0; i < numOutputs; ++i) {
    const auto dtype = static_cast<moert_dtype>(p.values(p.outputs(i)).type().dtype());
    res->tensors.push_back(moert_tensor{res->names[i].c_str(), dtype,
                                        static_cast<int32_t>(res->dims[i].size()), res->dims[i].data(),
                                        res->data[i].get()});
    for (size_t e = 0; e < res->elementDims[i].size(); ++e)
      res->elementTensors[i].push_back(
          moert_tensor{nullptr, dtype, static_cast<int32_t>(res->elementDims[i][e].size()),
                       res->elementDims[i][e].data(), res->elementData[i][e].get()});
  }
  for (size_t i = 0; i < numOutputs; ++i) {
    const bool tensor = res->kinds[i] == MOERT_VALUE_TENSOR;
    res->values.push_back(moert_value{res->names[i].c_str(), static_cast<moert_value_kind>(res->kinds[i]),
                                      res->tensors[i].dtype,
                                      tensor ? &res->tensors[i] : res->elementTensors[i].data(),
                                      tensor ? 1 : res->elementTensors[i].size()});
  }
  // Learn (or grow) this shape's buffer sizes; keep the arena for the next run.
  values.clear();
  {
    std::lock_guard<std::mutex> lock(m->planMutex);
    if (m->bufferBytes.size() >= 64 && !m->bufferBytes.count(signature))
      m->bufferBytes.clear(); // many shapes: forget the others
    std::vector<uint64_t> &sizes = m->bufferBytes[signature];
    sizes.resize(buffers, 0);
    m->grownBufferBytes.resize(buffers, 0);
    // Powers of two: buffers whose values grow with the past step up together, and seldom.
    auto pow2 = [](uint64_t x) {
      uint64_t p = 64;
      while (p < x)
        p *= 2;
      return p;
    };
    for (int b = 0; b < buffers; ++b) {
      sizes[b] = std::max(sizes[b], observed[b]);
      if (uint64_t &grown = m->grownBufferBytes[b]; observed[b] > grown)
        grown = pow2(observed[b]);
      else if (observed[b] && observed[b] < grown / 4) // far smaller shapes now (decode after a long prompt)
        grown = pow2(observed[b]);
    }
    if (arena && arena.use_count() == 1 && arenaBytes > m->spareArenaBytes) {
      m->spareArena = std::move(arena);
      m->spareArenaBytes = arenaBytes;
    }
  }
  if (profile) {
    res->hasProfile = true;
    res->profile = "{\"traceEvents\": [\n" + trace.str() + "\n], \"displayTimeUnit\": \"ms\"}\n";
  }
  *out = res;
  return nullptr;
}
