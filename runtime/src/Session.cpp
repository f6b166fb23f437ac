//===- Session.cpp - generation sessions over a decoder with KV caches -------===//
//
// moert_session_* and moert_generate(_batch) (include/moert/moert.h). The artifact's Program.decoder says
// which graph inputs are input_ids / attention_mask / position_ids / past caches and which outputs are logits
// / presents (recorded by moec from the exporters' names). A session keeps a batch of sequences' caches
// between calls, with which of their positions are padding, and runs the program (moert::runProgram) with the
// inputs it makes. When the loader found every cache's append step (moert::findCacheAppends), the caches are
// buffers with room for more positions that runs append to in place; otherwise each run's presents are
// taken over as the next pasts.
//
//===----------------------------------------------------------------------===//
#include "Model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

namespace pb = moert::proto;
using moert::makeError;

struct moert_session {
  moert_model *model = nullptr;
  const pb::Decoder *decoder = nullptr;
  int64_t maxContext = 4096;
  int64_t batch = 1;
  int64_t length = 0;
  // [batch][length]: 1 where a sequence's cached position is a token, 0 where it is padding (the attention
  // mask of the next call begins with it). With perSequence each row is its tokens, then padding.
  std::vector<std::vector<uint8_t>> valid;
  // moert_model::perSequenceCaches (GroupQueryAttention): each sequence's positions sit from row 0 of its
  // caches, as many as the attention mask counts; a padded first prompt goes in right-padded, and later calls
  // append as many tokens to every sequence.
  bool perSequence = false;
  int cacheDtype = moert::proto::F32; // f32, or bf16 / f16 / i8 (in place only; moert::cacheRowBytes)
  struct Cache {
    int64_t heads = 0, dim = 0;
    // [batch][heads][capacity] rows of `dim` values in cacheDtype, the first `length` positions filled. In
    // place: runs append to it (it grows by doubling up to the context). Otherwise: the last run's present,
    // taken over (capacity == length).
    std::shared_ptr<char> data;
    int64_t capacity = 0;
    // > 0: a window-sized buffer (KvCache.window, GroupQueryAttention's sliding_window_cache) of `capacity`
    // (= window) positions, the most recent ones from row 0: each run's present is the next past, whatever
    // the session's length.
    int64_t window = 0;
    // On a GPU whose kernels append and attend in place (gpu::keepsCaches): the buffer's copy in device
    // memory, where runs append to it; host code here asks for the host's bytes first (gpu::cacheToHost).
    moert::gpu::CacheCopyPtr device;
  };
  std::vector<Cache> caches;
  bool inPlace = false; // the model's appends run in place (moert_model::appendsCache)
  std::vector<float> logits; // [batch][vocab]: each sequence's last token's
  bool profile = false;
  std::string trace; // the last call's, when profiling
};

namespace {

const pb::Value &inputValue(const moert_model *m, uint32_t i) {
  return m->meta.program().values(m->meta.program().inputs(i));
}

/// Integer tokens as the input's dtype (i64 or i32).
bool fillIntegers(moert_dtype dtype, const std::vector<int64_t> &v, std::vector<char> &bytes) {
  if (dtype == MOERT_I64) {
    bytes.resize(v.size() * 8);
    std::memcpy(bytes.data(), v.data(), bytes.size());
    return true;
  }
  if (dtype == MOERT_I32) {
    bytes.resize(v.size() * 4);
    for (size_t i = 0; i < v.size(); ++i) {
      int32_t x = static_cast<int32_t>(v[i]);
      std::memcpy(bytes.data() + 4 * i, &x, 4);
    }
    return true;
  }
  return false;
}

} // namespace

extern "C" {

moert_status moert_session_create(moert_model *model, const moert_session_options *options,
                                  moert_session **out) {
  if (!model || !out)
    return makeError("moert_session_create: model and out must not be NULL");
  *out = nullptr;
  moert_session_options opts{sizeof(moert_session_options), 0, 0, MOERT_F32, 0};
  if (options) {
    if (options->struct_size < sizeof(size_t) || options->struct_size > sizeof(moert_session_options))
      return makeError("moert_session_create: options.struct_size must be sizeof(moert_session_options)");
    std::memcpy(&opts, options, options->struct_size);
  }
  if (opts.max_context < 0)
    return makeError("moert_session_create: max_context " + std::to_string(opts.max_context) +
                     " is negative");
  if (opts.batch < 0 || opts.batch > 4096)
    return makeError("moert_session_create: batch " + std::to_string(opts.batch) + " is not in 0..4096");
  const pb::Program &p = model->meta.program();
  if (!p.has_decoder())
    return makeError(
        "moert_session_create: " + model->path +
        " is not a decoder with KV caches (it needs input_ids, logits and past_key_values.* / present.* "
        "pairs; `moert inspect` lists its inputs and outputs)");
  auto s = std::make_unique<moert_session>();
  s->model = model;
  s->decoder = &p.decoder();
  s->maxContext = opts.max_context ? opts.max_context : 4096;
  s->batch = opts.batch ? opts.batch : 1;
  s->valid.assign(size_t(s->batch), {});
  s->profile = opts.profile != 0;
  s->inPlace =
      std::any_of(model->appendsCache.begin(), model->appendsCache.end(), [](int c) { return c >= 0; });
  s->perSequence = model->perSequenceCaches;
  switch (opts.cache_dtype) {
  case MOERT_DTYPE_UNKNOWN:
  case MOERT_F32:
    break;
  case MOERT_BF16:
  case MOERT_F16:
  case MOERT_I8:
    if (!s->inPlace)
      return makeError(
          "moert_session_create: " + model->path +
          " does not append to its caches in place (an op step reads them; `moert inspect`), so "
          "they stay f32: a bf16/f16/int8 cache needs a model compiled with attention dispatches");
    static_assert(int(MOERT_BF16) == moert::proto::BF16 && int(MOERT_F16) == moert::proto::F16 &&
                      int(MOERT_I8) == moert::proto::I8,
                  "moert_dtype values are the artifact's dtypes");
    s->cacheDtype = opts.cache_dtype;
    break;
  default:
    return makeError("moert_session_create: cache_dtype " + std::to_string(int(opts.cache_dtype)) +
                     " is not MOERT_F32, MOERT_BF16, MOERT_F16 or MOERT_I8");
  }
  const pb::Value &ids = inputValue(model, p.decoder().input_ids());
  if (ids.type().dims_size() == 2 && ids.type().dims(0).size() > 0 && ids.type().dims(0).size() != s->batch)
    return makeError("moert_session_create: " + model->path + " was exported for a batch of " +
                     std::to_string(ids.type().dims(0).size()) + " ('" + ids.name() +
                     "' dim 0 is static); the " + "session asks for " + std::to_string(s->batch) +
                     " sequences");
  for (const pb::KvCache &c : p.decoder().caches()) {
    const pb::Value &v = inputValue(model, c.past());
    const pb::TensorType &present = p.values(p.outputs(c.present())).type();
    moert_session::Cache cache;
    // Static in the past or (ORT-GenAI names the head dim of its pasts) in the present.
    auto dim = [&](int i) {
      const int64_t d = v.type().dims(i).size();
      return d > 0 || present.dims_size() != 4 ? d : present.dims(i).size();
    };
    cache.heads = dim(1);
    cache.dim = dim(3);
    if (cache.heads <= 0 || cache.dim <= 0)
      return makeError("moert_session_create: past cache '" + v.name() +
                       "' has no static head count and head dim (dims 1 and 3, of it or its present)");
    if (c.window() > 0) {
      // A window-sized buffer: `window` positions (the least ONNX Runtime allows), zeros to begin with; the
      // runs' presents (never appended in place) take its place.
      if (s->inPlace || s->cacheDtype != moert::proto::F32)
        return makeError(
            "moert_session_create: " + model->path + ": cache '" + v.name() +
            "' is a window-sized buffer, which a session keeps in f32 and does not append in place");
      cache.window = cache.capacity = c.window();
      const size_t bytes = size_t(s->batch * cache.heads * cache.capacity * cache.dim) * sizeof(float);
      if (!(cache.data = moert::allocBlock(bytes)))
        return makeError("moert_session_create: out of memory for the KV caches");
      std::memset(cache.data.get(), 0, bytes);
    }
    s->caches.push_back(std::move(cache));
  }
  ++model->holders; // the session keeps the model loaded (moert_model::holders)
  *out = s.release();
  return nullptr;
}

void moert_session_free(moert_session *s) {
  if (!s)
    return;
  moert_model *m = s->model;
  delete s; // its device copies first: they need the model's device
  moert::releaseModel(m);
}

const char *moert_session_profile_json(const moert_session *s) {
  return s && s->profile && !s->trace.empty() ? s->trace.c_str() : nullptr;
}

size_t moert_session_length(const moert_session *s) { return s ? static_cast<size_t>(s->length) : 0; }

moert_status moert_session_rewind(moert_session *s, size_t length) {
  if (!s)
    return makeError("moert_session_rewind: session must not be NULL");
  if (static_cast<int64_t>(length) > s->length)
    return makeError("moert_session_rewind: " + std::to_string(length) +
                     " positions asked for, the session holds " + std::to_string(s->length));
  const int64_t keep = static_cast<int64_t>(length);
  for (const auto &c : s->caches) // a window-sized buffer has lost positions once it holds fewer than all
    if (c.window > 0 && keep < s->length && s->length > c.capacity)
      return makeError(
          "moert_session_rewind: the window-sized KV caches (sliding_window_cache) hold only the last "
          "positions of " +
          std::to_string(s->length) + "; the earlier ones a rewind to " + std::to_string(keep) +
          " needs are gone");
  for (auto &v : s->valid)
    v.resize(size_t(keep));
  if (s->inPlace) { // the positions past `keep` are simply overwritten by the next append
    s->length = keep;
    return nullptr;
  }
  for (auto &c : s->caches) {
    if (c.window >
        0) // its first `keep` rows are the kept positions; the rest is not read (the mask's length)
      continue;
    const size_t row = moert::cacheRowBytes(s->cacheDtype, c.dim);
    std::shared_ptr<char> kept = moert::allocBlock(size_t(s->batch * c.heads) * keep * row);
    if (!kept)
      return makeError("moert_session_rewind: out of memory");
    for (int64_t h = 0; h < s->batch * c.heads && s->length > 0; ++h) // every (sequence, head)
      std::memcpy(kept.get() + size_t(h) * keep * row, c.data.get() + size_t(h) * s->length * row,
                  keep * row);
    c.data = std::move(kept);
    c.capacity = keep;
  }
  s->length = keep;
  return nullptr;
}

namespace {

/// Drops padding: each sequence's cached tokens move to the end of the first L positions, in order, L the
/// most tokens any sequence holds, and the session's length becomes L. Attention reads a past position only
/// through the mask and its key, rotated at its own position id (a count of the sequence's earlier tokens),
/// so where a token's key sits does not matter, only the order; a sequence's next token still follows all of
/// them. No-op when no sequence has padding to lose.
moert_status compact(moert_session *s, const char *fn) {
  std::vector<int64_t> count(size_t(s->batch));
  int64_t keep = 0;
  for (int64_t b = 0; b < s->batch; ++b) {
    count[b] = std::count(s->valid[b].begin(), s->valid[b].end(), uint8_t(1));
    keep = std::max(keep, count[b]);
  }
  if (keep == s->length)
    return nullptr;
  for (const auto &c : s->caches)
    if (c.window > 0)
      return makeError(std::string(fn) + ": padding cannot be dropped from window-sized KV caches "
                                         "(sliding_window_cache), which keep the last positions only");
  for (auto &c : s->caches) {
    const size_t row = moert::cacheRowBytes(s->cacheDtype, c.dim);
    if (c.device) // the moves below are the host's
      if (std::string why = moert::gpu::cacheToHost(*c.device, c.data.get(), true); !why.empty())
        return makeError(std::string(fn) + ": " + why);
    // In place: within the buffer (room for `capacity` positions); else a new [batch, heads, keep, dim]
    // block.
    std::shared_ptr<char> dst =
        s->inPlace ? c.data : moert::allocBlock(size_t(s->batch * c.heads) * keep * row);
    const int64_t dstCap = s->inPlace ? c.capacity : keep;
    if (!dst && keep > 0)
      return makeError(std::string(fn) + ": out of memory");
    std::vector<char> tmp(size_t(keep) * row);
    if (keep == 0) { // every sequence ended: nothing to move
      c.data = std::move(dst);
      c.capacity = dstCap;
      continue;
    }
    for (int64_t b = 0; b < s->batch; ++b)
      for (int64_t h = 0; h < c.heads; ++h) {
        const char *src = c.data.get() + size_t(b * c.heads + h) * c.capacity * row;
        size_t n = 0;
        for (int64_t i = 0; i < s->length; ++i)
          if (s->valid[b][i])
            std::memcpy(tmp.data() + (n++) * row, src + i * row, row);
        char *out = dst.get() + size_t(b * c.heads + h) * dstCap * row;
        // the padding in front is zeros: masked out, but attention still multiplies its values by a
        // probability of 0, and a new block's bytes could be a NaN
        std::memset(out, 0, size_t(keep - count[b]) * row);
        std::memcpy(out + (keep - count[b]) * row, tmp.data(), n * row);
      }
    c.data = std::move(dst);
    c.capacity = dstCap;
  }
  for (int64_t b = 0; b < s->batch; ++b) {
    s->valid[b].assign(size_t(keep - count[b]), 0);
    s->valid[b].resize(size_t(keep), 1);
  }
  s->length = keep;
  return nullptr;
}

} // namespace

moert_status moert_session_reset_sequence(moert_session *s, size_t sequence) {
  if (!s)
    return makeError("moert_session_reset_sequence: session must not be NULL");
  if (static_cast<int64_t>(sequence) >= s->batch)
    return makeError("moert_session_reset_sequence: sequence " + std::to_string(sequence) +
                     " is not in the session's batch of " + std::to_string(s->batch));
  if (s->batch > 1 && s->perSequence)
    return makeError(
        "moert_session_reset_sequence: " + s->model->path +
        " keeps each sequence's positions from the start of its caches (GroupQueryAttention's "
        "seqlens_k), and every call after the first prompt takes as many tokens for each sequence: "
        "sequences cannot leave or join a running batch (reset the whole session with "
        "moert_session_rewind(s, 0))");
  if (s->batch > 1 && s->decoder->position_ids() < 0)
    return makeError("moert_session_reset_sequence: " + s->model->path +
                     " takes no position_ids input, so its rotary positions are cache indices: a sequence "
                     "starting in a running batch would not start at position 0, and dropping padding would "
                     "move the others' positions (export the decoder with position_ids)");
  std::fill(s->valid[sequence].begin(), s->valid[sequence].end(), uint8_t(0));
  return compact(s, "moert_session_reset_sequence");
}

namespace {

/// moert_session_append(_batch)'s body: `tokens` and `mask` (or NULL) [batch][n]; `fn` names the caller in
/// errors.
moert_status appendTokens(moert_session *s, const int64_t *tokens, size_t n, const int64_t *mask,
                          const float **logits, size_t *vocab, const char *fn) {
  if (!s || !tokens || !logits || !vocab)
    return makeError(std::string(fn) + ": session, tokens, logits and vocab must not be NULL");
  if (n == 0)
    return makeError(std::string(fn) + ": no tokens given");
  const int64_t B = s->batch;
  // Dropping padding may make room (not when positions are cache indices: it would move them; with
  // per-sequence lengths there is none to drop).
  if (s->length + static_cast<int64_t>(n) > s->maxContext && s->decoder->position_ids() >= 0 &&
      !s->perSequence)
    if (moert_status st = compact(s, fn))
      return st;
  const int64_t total = s->length + static_cast<int64_t>(n);
  if (total > s->maxContext)
    return makeError(std::string(fn) + ": " + std::to_string(n) + " tokens after " +
                     std::to_string(s->length) + " cached exceed the session's context of " +
                     std::to_string(s->maxContext) +
                     " positions (moert_session_options.max_context, moert generate --max-context)");
  if (mask)
    for (int64_t b = 0; b < B; ++b) {
      for (size_t i = 0; i < n; ++i)
        if (mask[b * n + i] != 0 && mask[b * n + i] != 1)
          return makeError(std::string(fn) + ": mask[" + std::to_string(b) + "][" + std::to_string(i) +
                           "] is " + std::to_string(mask[b * n + i]) +
                           "; a padding mask holds 0 (padding) or 1");
      // A row of padding only: the sequence sits the call out (an idle slot of the batch; its logits are
      // NaN).
      if (mask[b * n + n - 1] != 1 && std::find(mask + b * n, mask + b * n + n, 1) != mask + b * n + n)
        return makeError(std::string(fn) + ": sequence " + std::to_string(b) +
                         "'s last new token is padding (mask 0); pad on the left");
    }
  moert_model *m = s->model;
  const pb::Decoder &d = *s->decoder;
  const bool padded = mask && std::find(mask, mask + B * n, 0) != mask + B * n;
  if (padded && d.attention_mask() < 0)
    return makeError(std::string(fn) + ": the decoder takes no attention_mask input, so padding cannot be "
                                       "masked; give sequences of one length");
  // Per-sequence lengths: a padded first prompt goes in right-padded (each sequence's tokens to the front of
  // its row, as ONNX Runtime's GroupQueryAttention reads a batch of prompts); later calls take no padding.
  std::vector<int64_t> movedTokens, movedMask;
  if (padded && s->perSequence) {
    if (s->length > 0)
      return makeError(std::string(fn) + ": " + m->path +
                       " keeps each sequence's positions from the start of its caches (GroupQueryAttention's "
                       "seqlens_k), so after the first prompt every sequence takes the same number of new "
                       "tokens: no padding (mask 0) then");
    movedTokens.assign(tokens, tokens + B * n);
    movedMask.assign(size_t(B * n), 0);
    for (int64_t b = 0; b < B; ++b) {
      size_t k = 0;
      for (size_t i = 0; i < n; ++i)
        if (mask[b * n + i])
          movedTokens[b * n + k] = tokens[b * n + i], movedMask[b * n + k++] = 1;
      if (k == 0)
        return makeError(std::string(fn) + ": sequence " + std::to_string(b) +
                         "'s prompt is padding only (mask 0); a decoder whose caches hold each sequence "
                         "from row 0 needs a token in every sequence");
      for (size_t i = 0, j = k; i < n; ++i) // the padding's ids after the tokens, in order
        if (!mask[b * n + i])
          movedTokens[b * n + j++] = tokens[b * n + i];
    }
    tokens = movedTokens.data();
    mask = movedMask.data();
  }
  std::vector<moert::CacheBinding> bindings;
  if (s->inPlace) {
    for (auto &c : s->caches) {
      const size_t row = moert::cacheRowBytes(s->cacheDtype, c.dim);
      if (total > c.capacity) { // grow by doubling, up to the context
        const int64_t cap = std::min(s->maxContext, std::max({total, 2 * c.capacity, int64_t(256)}));
        if (c.device) { // grown on the host from its newest bytes; a new device copy of the new size below
          if (std::string why = moert::gpu::cacheToHost(*c.device, c.data.get(), false); !why.empty())
            return makeError(std::string(fn) + ": " + why);
          c.device.reset();
        }
        std::shared_ptr<char> grown = moert::allocBlock(size_t(B * c.heads) * cap * row);
        if (!grown)
          return makeError(std::string(fn) + ": out of memory for the KV caches (" + std::to_string(cap) +
                           " positions)");
        for (int64_t h = 0; h < B * c.heads && s->length > 0; ++h) // every (sequence, head)
          std::memcpy(grown.get() + size_t(h) * cap * row, c.data.get() + size_t(h) * c.capacity * row,
                      s->length * row);
        c.data = std::move(grown);
        c.capacity = cap;
      }
      const size_t bytes = size_t(B * c.heads) * c.capacity * row; // the buffer's
      if (!c.device && m->gpu && c.window == 0 && moert::gpu::keepsCaches(*m->gpu, s->cacheDtype))
        if (std::string why = moert::gpu::newCacheCopy(*m->gpu, bytes, c.device); !why.empty())
          return makeError(std::string(fn) + ": the KV caches on the device (" + std::to_string(c.capacity) +
                           " positions): " + why);
      bindings.push_back({c.data.get(), c.capacity, s->cacheDtype, c.device.get(), bytes});
    }
  }
  const size_t numInputs = moert_num_inputs(m);
  std::vector<moert_tensor> ins(numInputs);
  std::vector<std::vector<int64_t>> dims(numInputs);
  std::vector<std::vector<char>> owned(numInputs);
  std::vector<int> cacheOf(numInputs, -1);
  for (int c = 0; c < d.caches_size(); ++c)
    cacheOf[d.caches(c).past()] = c;
  const int64_t N = static_cast<int64_t>(n);
  auto isToken = [&](int64_t b, int64_t i) { return !mask || mask[b * N + i] != 0; };
  // Each sequence's logits row: its last token's (N - 1 but for right-padded prompts), and its count of
  // tokens before the call and after it.
  std::vector<int64_t> logitsRow(size_t(B), N - 1), before(static_cast<size_t>(B)), after(before);
  for (int64_t b = 0; b < B; ++b) {
    before[b] = std::count(s->valid[b].begin(), s->valid[b].end(), uint8_t(1));
    after[b] = before[b];
    for (int64_t j = 0; j < N; ++j)
      if (isToken(b, j))
        logitsRow[b] = j, ++after[b];
  }
  for (size_t i = 0; i < numInputs; ++i) {
    const moert_dtype dtype = moert_input_dtype(m, i);
    ins[i].name = moert_input_name(m, i);
    ins[i].dtype = dtype;
    std::vector<int64_t> values;
    if (i == d.input_ids()) {
      values.assign(tokens, tokens + B * N);
      dims[i] = {B, N};
    } else if (static_cast<int>(i) == d.attention_mask()) {
      for (int64_t b = 0; b < B; ++b) {
        if (s->perSequence) { // its tokens, then padding
          values.insert(values.end(), size_t(after[b]), 1);
          values.insert(values.end(), size_t(total - after[b]), 0);
          continue;
        }
        values.insert(values.end(), s->valid[b].begin(), s->valid[b].end());
        for (int64_t j = 0; j < N; ++j)
          values.push_back(isToken(b, j));
      }
      dims[i] = {B, total};
    } else if (static_cast<int>(i) == d.position_ids()) {
      for (int64_t b = 0; b < B; ++b) { // earlier tokens of the sequence; padding at 1
        int64_t at = before[b];
        for (int64_t j = 0; j < N; ++j)
          values.push_back(isToken(b, j) ? at++ : 1);
      }
      dims[i] = {B, N};
    } else if (cacheOf[i] >= 0) {
      auto &c = s->caches[cacheOf[i]];
      dims[i] = {B, c.heads, c.window > 0 ? c.capacity : s->length, c.dim};
      ins[i].data = c.data.get();
      ins[i].rank = 4;
      ins[i].dims = dims[i].data();
      continue;
    } else if (std::strcmp(ins[i].name, "use_cache_branch") == 0 && dtype == MOERT_BOOL) {
      // Optimum's merged decoders pick the decoder with or without past by this flag; the one with past
      // also runs a prompt (zero cached positions), so a session always takes it.
      owned[i].assign(1, 1);
      dims[i] = {1};
      ins[i].data = owned[i].data();
      ins[i].rank = 1;
      ins[i].dims = dims[i].data();
      continue;
    } else {
      return makeError(std::string(fn) + ": the decoder takes input '" + ins[i].name +
                       "', which a session does not know how to fill");
    }
    if (!fillIntegers(dtype, values, owned[i]))
      return makeError(std::string(fn) + ": input '" + ins[i].name +
                       "' is not int64 or int32, as token ids, masks and positions must be");
    ins[i].data = owned[i].data();
    ins[i].rank = static_cast<int32_t>(dims[i].size());
    ins[i].dims = dims[i].data();
  }
  moert_result *res = nullptr;
  moert_run_options ro{sizeof(moert_run_options), s->profile ? 1 : 0};
  if (moert_status st = moert::runProgram(m, &ro, ins.data(), ins.size(),
                                          s->inPlace ? bindings.data() : nullptr, &res, logitsRow.data()))
    return st;
  std::unique_ptr<moert_result, void (*)(moert_result *)> hold(res, moert_result_free);
  const moert_tensor *lt = moert_result_output(res, d.logits());
  // [B, N, vocab], or [B, 1, vocab] when the logits' linear dispatch ran on each sequence's last row only.
  const int64_t rowsPer = lt && lt->rank == 3 ? lt->dims[1] : 0;
  if (!lt || lt->dtype != MOERT_F32 || lt->rank != 3 || lt->dims[0] != B || (rowsPer != N && rowsPer != 1))
    return makeError(std::string(fn) + ": the logits output is not f32 [" + std::to_string(B) + ", " +
                     std::to_string(n) + ", vocab]");
  const int64_t v = lt->dims[2];
  // Presents become the caches (checked: [batch, heads, past + new, head dim]; their buffers taken, not
  // copied).
  for (int c = 0; c < d.caches_size(); ++c) {
    const moert_tensor *t = moert_result_output(res, d.caches(c).present());
    const auto &cache = s->caches[c];
    const int64_t rows = cache.window > 0 ? cache.capacity : total;
    if (!t || t->dtype != MOERT_F32 || t->rank != 4 || t->dims[0] != B || t->dims[1] != cache.heads ||
        t->dims[2] != rows || t->dims[3] != cache.dim)
      return makeError(std::string(fn) + ": output '" + (t ? t->name : "?") + "' is not [" +
                       std::to_string(B) + ", " + std::to_string(cache.heads) + ", " + std::to_string(rows) +
                       ", " + std::to_string(cache.dim) +
                       (cache.window > 0 ? "] (the window-sized cache)"
                                         : "] (the past cache with the new positions appended)"));
  }
  s->logits.resize(size_t(B * v));
  for (int64_t b = 0; b < B; ++b) {
    const float *last =
        static_cast<const float *>(lt->data) + (b * rowsPer + (rowsPer == 1 ? 0 : logitsRow[b])) * v;
    if (after[b] > before[b])
      std::copy(last, last + v, s->logits.begin() + b * v);
    else // sat the call out
      std::fill(s->logits.begin() + b * v, s->logits.begin() + (b + 1) * v, std::nanf(""));
    if (s->perSequence) {
      s->valid[b].assign(size_t(after[b]), 1);
      s->valid[b].resize(size_t(total), 0);
    } else {
      for (int64_t j = 0; j < N; ++j)
        s->valid[b].push_back(isToken(b, j));
    }
  }
  // A right-padded prompt appended in place wrote its padding's keys and values after each sequence's
  // tokens: those rows become zeros, as the present past a sequence's length is (moec.KvCacheUpdate), so
  // that the next append's present is the buffer as it stands.
  for (size_t c = 0; padded && s->perSequence && s->inPlace && c < s->caches.size(); ++c) {
    const auto &cache = s->caches[c];
    const size_t row = moert::cacheRowBytes(s->cacheDtype, cache.dim);
    if (cache.device)
      if (std::string why = moert::gpu::cacheToHost(*cache.device, cache.data.get(), true); !why.empty())
        return makeError(std::string(fn) + ": " + why);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < cache.heads; ++h)
        std::memset(cache.data.get() + (size_t(b * cache.heads + h) * cache.capacity + after[b]) * row, 0,
                    size_t(total - after[b]) * row);
  }
  if (s->profile)
    s->trace = res->profile;
  for (int c = 0; c < d.caches_size() && !s->inPlace; ++c) {
    std::swap(s->caches[c].data, res->data[d.caches(c).present()]);
    if (s->caches[c].window == 0)
      s->caches[c].capacity = total;
  }
  s->length = total;
  *logits = s->logits.data();
  *vocab = static_cast<size_t>(v);
  return nullptr;
}

} // namespace

moert_status moert_session_append(moert_session *s, const int64_t *tokens, size_t n, const float **logits,
                                  size_t *vocab) {
  if (s && s->batch != 1)
    return makeError("moert_session_append: the session holds a batch of " + std::to_string(s->batch) +
                     " sequences; use moert_session_append_batch");
  return appendTokens(s, tokens, n, nullptr, logits, vocab, "moert_session_append");
}

moert_status moert_session_append_batch(moert_session *s, const int64_t *tokens, size_t n,
                                        const int64_t *mask, const float **logits, size_t *vocab) {
  return appendTokens(s, tokens, n, mask, logits, vocab, "moert_session_append_batch");
}

namespace {

/// moert_generate(_batch)'s body: prompts and mask (or NULL) [batch][n]; sequence b's tokens to
/// out[b * capacity ...].
moert_status generateTokens(moert_session *s, const int64_t *prompt, size_t n, const int64_t *mask,
                            const moert_generate_options *options, int64_t *out, size_t capacity,
                            size_t *numOut, moert_generate_stats *stats, const char *fn) {
  if (!s || !prompt || !out || !numOut)
    return makeError(std::string(fn) + ": session, prompt, out and num_out must not be NULL");
  const int64_t B = s->batch;
  std::fill(numOut, numOut + B, size_t(0));
  moert_generate_options o{sizeof(moert_generate_options), 32, 1, 1.0f, 0, 1.0f, 0, -1, nullptr, nullptr};
  if (options) {
    if (options->struct_size < sizeof(size_t) || options->struct_size > sizeof(moert_generate_options))
      return makeError(std::string(fn) + ": options.struct_size must be sizeof(moert_generate_options)");
    std::memcpy(&o, options, options->struct_size);
  }
  if (n == 0)
    return makeError(std::string(fn) + ": the prompt is empty");
  for (int64_t b = 0; mask && b < B; ++b) // (appending alone takes a row of padding only: an idle place)
    if (std::find(mask + b * n, mask + (b + 1) * n, 1) == mask + (b + 1) * n)
      return makeError(std::string(fn) + ": sequence " + std::to_string(b) +
                       "'s prompt is padding only (mask 0); each sequence needs a token to start from");
  if (o.max_new_tokens < 0)
    return makeError(std::string(fn) + ": max_new_tokens " + std::to_string(o.max_new_tokens) +
                     " is negative");
  if (capacity < static_cast<size_t>(o.max_new_tokens))
    return makeError(std::string(fn) + ": room for " + std::to_string(capacity) +
                     " tokens, max_new_tokens is " + std::to_string(o.max_new_tokens));
  if (!o.greedy && (!(o.temperature > 0.0f) || o.top_k < 0 || !(o.top_p > 0.0f && o.top_p <= 1.0f)))
    return makeError(std::string(fn) + ": sampling needs temperature > 0, top_k >= 0 and top_p in (0, 1]");
  const int64_t need = s->length + static_cast<int64_t>(n) + std::max(0, o.max_new_tokens - 1);
  if (need > s->maxContext)
    return makeError(std::string(fn) + ": " + std::to_string(s->length) + " cached + " + std::to_string(n) +
                     " prompt tokens + " + std::to_string(o.max_new_tokens) + " new tokens need " +
                     std::to_string(need) + " positions; the session's context is " +
                     std::to_string(s->maxContext));
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::time_point a, clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  std::mt19937_64 rng(o.seed);
  std::vector<std::pair<float, int64_t>> order;
  auto pick = [&](const float *logits, size_t v) -> int64_t {
    if (o.greedy)
      return std::max_element(logits, logits + v) - logits; // the first maximum: the lowest id on ties
    order.resize(v);
    for (size_t i = 0; i < v; ++i)
      order[i] = {logits[i] / o.temperature, static_cast<int64_t>(i)};
    // Only the kept tokens need ordering: the k most likely (top-k), or all of them.
    const auto likelier = [](const auto &a, const auto &b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    size_t keep = o.top_k > 0 ? std::min(v, static_cast<size_t>(o.top_k)) : v;
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), likelier);
    std::vector<double> prob(keep);
    double sum = 0.0;
    for (size_t i = 0; i < keep; ++i)
      sum += prob[i] = std::exp(double(order[i].first) - double(order[0].first));
    if (o.top_p < 1.0f) {
      double acc = 0.0;
      size_t i = 0;
      while (i < keep && acc < o.top_p * sum)
        acc += prob[i++];
      keep = std::max<size_t>(1, i);
      sum = acc;
    }
    double u = double(rng() >> 11) * 0x1.0p-53 * sum;
    for (size_t i = 0; i < keep; ++i) {
      if (u < prob[i])
        return order[i].second;
      u -= prob[i];
    }
    return order[keep - 1].second;
  };
  const float *logits = nullptr;
  size_t vocab = 0;
  auto t0 = clock::now();
  if (moert_status st = appendTokens(s, prompt, n, mask, &logits, &vocab, fn))
    return st;
  auto t1 = clock::now();
  std::vector<int64_t> last(static_cast<size_t>(B));
  std::vector<bool> done(static_cast<size_t>(B), false);
  int64_t running = B;
  bool stop = false; // the caller's on_token asked to stop
  for (int i = 0; i < o.max_new_tokens && running > 0; ++i) {
    for (int64_t b = 0; b < B; ++b) {
      if (done[b])
        continue;
      last[b] = pick(logits + b * vocab, vocab);
      out[b * capacity + numOut[b]++] = last[b];
      if (last[b] == o.eos_token_id)
        done[b] = true, --running;
      if (o.on_token && o.on_token(o.user_data, b, last[b]) != 0)
        stop = true;
    }
    if (stop || running == 0 || i + 1 == o.max_new_tokens)
      break;
    if (moert_status st = appendTokens(s, last.data(), 1, nullptr, &logits, &vocab, fn))
      return st;
  }
  auto t2 = clock::now();
  if (stats) {
    size_t promptTokens = 0, newTokens = 0;
    for (int64_t b = 0; b < B; ++b) {
      for (size_t j = 0; j < n; ++j)
        promptTokens += !mask || mask[b * n + j] != 0;
      newTokens += numOut[b];
    }
    stats->prompt_tokens = promptTokens;
    stats->new_tokens = newTokens;
    stats->prefill_ms = ms(t0, t1);
    stats->decode_ms = ms(t1, t2);
  }
  return nullptr;
}

} // namespace

moert_status moert_generate(moert_session *s, const int64_t *prompt, size_t n,
                            const moert_generate_options *options, int64_t *out, size_t capacity,
                            size_t *numOut, moert_generate_stats *stats) {
  if (s && s->batch != 1)
    return makeError("moert_generate: the session holds a batch of " + std::to_string(s->batch) +
                     " sequences; use moert_generate_batch");
  return generateTokens(s, prompt, n, nullptr, options, out, capacity, numOut, stats, "moert_generate");
}

moert_status moert_generate_batch(moert_session *s, const int64_t *prompts, size_t n, const int64_t *mask,
                                  const moert_generate_options *options, int64_t *out, size_t capacity,
                                  size_t *numOut, moert_generate_stats *stats) {
  return generateTokens(s, prompts, n, mask, options, out, capacity, numOut, stats, "moert_generate_batch");
}

} // extern "C"
