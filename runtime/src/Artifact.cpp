//===- Artifact.cpp - loading and validating a .moex artifact ----------------===//
//
// Everything read from the file is checked before it is used: header fields, the checksum, the metadata,
// section bounds and alignment, value ids in the program, and each dispatch's weight sections against the
// sizes its generated code was compiled for (so a bad file is an error, never an out-of-bounds read).
//
//===----------------------------------------------------------------------===//
#include "ExpertParallel.h"
#include "Model.h"
#include "Ops.h"
#include "ops/OpKernel.h"
#include "runtime/ArtifactFormat.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

namespace fmt = moert::format;
namespace pb = moert::proto;

moert_status moert::makeError(std::string message) { return new moert_status_s{std::move(message)}; }

void *moert::loadFromMemory(const unsigned char *bytes, uint64_t size, const char *name, int &fd,
                            std::string &why) {
  fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0)
    return why = std::string("cannot create a memory file: ") + std::strerror(errno), nullptr;
  for (uint64_t done = 0; done < size;) {
    ssize_t w = write(fd, bytes + done, size - done);
    if (w <= 0)
      return why = "cannot stage it in a memory file", nullptr;
    done += static_cast<uint64_t>(w);
  }
  // dlopen matches loaded objects by path first: a library still loaded as /proc/self/fd/N (its number
  // reused since) would come back instead of this one. Move to a number no loaded object is named by.
  std::vector<int> held;
  for (void *old; (old = dlopen(("/proc/self/fd/" + std::to_string(fd)).c_str(), RTLD_NOW | RTLD_NOLOAD));) {
    dlclose(old);
    held.push_back(fd);
    if ((fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)
      break;
  }
  for (int h : held)
    close(h);
  if (fd < 0)
    return why = std::string("cannot duplicate a memory file: ") + std::strerror(errno), nullptr;
  void *handle = dlopen(("/proc/self/fd/" + std::to_string(fd)).c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle)
    why = dlerror();
  return handle;
}

moert_model::~moert_model() {
  if (freeComm && comm) // the communicator libmoert-mpi opened for this model (the library stays loaded)
    freeComm(const_cast<moert_comm *>(comm));
  gpu.reset();
  dispatches.clear();
  pool.reset();
  if (code)
    dlclose(code);
  if (codeFd >= 0)
    close(codeFd);
  if (map)
    munmap(const_cast<unsigned char *>(map), mapSize);
}

void moert::releaseModel(moert_model *m) {
  if (m && m->holders.fetch_sub(1) == 1)
    delete m;
}

namespace {

/// Whether this libmoert is built with sanitizer `name` (clang's -fsanitize= name): code built with it calls
/// into that sanitizer's runtime, which only a sanitizer build of moert has.
bool builtWithSanitizer(const std::string &name) {
#if defined(__has_feature)
  if (name == "address")
    return __has_feature(address_sanitizer);
  if (name == "thread")
    return __has_feature(thread_sanitizer);
  if (name == "undefined")
    return __has_feature(undefined_behavior_sanitizer);
#endif
  return false;
}

bool cpuHas(const std::string &f) {
  __builtin_cpu_init();
#define MOERT_FEATURE(NAME)                                                                                    \
  if (f == NAME)                                                                                               \
    return __builtin_cpu_supports(NAME);
  MOERT_FEATURE("sse4.2")
  MOERT_FEATURE("popcnt")
  MOERT_FEATURE("avx2")
  MOERT_FEATURE("fma")
  MOERT_FEATURE("bmi2")
  MOERT_FEATURE("f16c")
  MOERT_FEATURE("avx512f")
  MOERT_FEATURE("avx512bw")
  MOERT_FEATURE("avx512vl")
  MOERT_FEATURE("avx512dq")
  MOERT_FEATURE("avx512bf16")
  MOERT_FEATURE("avx512vnni")
#undef MOERT_FEATURE
  return false; // a feature this moert cannot check: refuse rather than risk SIGILL
}

std::string mib(uint64_t bytes) {
  std::ostringstream os;
  os.precision(bytes < 10 * 1048576ull ? 3 : 1);
  os << std::fixed << bytes / 1048576.0 << " MiB";
  return os.str();
}

std::string typeString(const pb::TensorType &t);

/// A value's type as `moert inspect` shows it: f32[T, 64], seq(f32[*]), optional(f32[3]).
std::string typeString(const pb::Value &v) {
  const std::string t = typeString(v.type());
  switch (v.kind()) {
  case pb::Value::SEQUENCE:
    return "seq(" + t + ")";
  case pb::Value::OPTIONAL_TENSOR:
    return "optional(" + t + ")";
  case pb::Value::OPTIONAL_SEQUENCE:
    return "optional(seq(" + t + "))";
  default:
    return t;
  }
}

std::string typeString(const pb::TensorType &t) {
  if (t.unranked())
    return std::string(moert::dtypeName(t.dtype())) + "[*]";
  std::string s = std::string(moert::dtypeName(t.dtype())) + "[";
  for (int i = 0; i < t.dims_size(); ++i) {
    if (i)
      s += ", ";
    s += t.dims(i).size() >= 0 ? std::to_string(t.dims(i).size()) : t.dims(i).symbol();
  }
  return s + "]";
}

template <typename T> bool resolve(void *handle, const std::string &name, T &out) {
  out = reinterpret_cast<T>(dlsym(handle, name.c_str()));
  return out != nullptr;
}

} // namespace

void moert::findCacheAppends(moert_model &m) {
  const pb::Program &p = m.meta.program();
  m.appendsCache.assign(m.flat.size(), -1);
  m.cacheProducer.assign(m.flat.size(), -1);
  m.rotaryPartner.assign(m.flat.size(), -1);
  m.cachesConcatenated = false;
  m.perSequenceCaches = false;
  if (!p.has_decoder())
    return;
  const pb::Decoder &d = p.decoder();
  for (const pb::KvCache &c : d.caches())
    for (const pb::Step &s : p.steps())
      m.perSequenceCaches |= s.has_op() && s.op().op() == "moec.KvCacheUpdate" &&
                             s.op().inputs_size() == MOERT_KV_UPDATE_INPUTS &&
                             s.op().inputs(MOERT_KV_UPDATE_PAST) == int64_t(p.inputs(c.past()));
  auto isConcat = [&](const pb::OpStep &o, uint32_t past, uint32_t present) {
    return o.op() == "Concat" && o.inputs_size() == 2 && o.inputs(0) == int64_t(past) &&
           o.outputs_size() == 1 && o.outputs(0) == present &&
           (moert::ops::Attrs{o}.i("axis", 0) == 2 || moert::ops::Attrs{o}.i("axis", 0) == -2);
  };
  // The step's input `k` is the past of an append: a Concat's first, or a moec.KvCacheUpdate's fourth.
  auto isAppend = [&](const pb::OpStep &o, int k, uint32_t past, uint32_t present) {
    if (k == 0 && isConcat(o, past, present))
      return true;
    return k == MOERT_KV_UPDATE_PAST && o.op() == "moec.KvCacheUpdate" &&
           o.inputs_size() == MOERT_KV_UPDATE_INPUTS && o.inputs(k) == int64_t(past) &&
           o.outputs_size() == 1 && o.outputs(0) == present;
  };
  m.cachesConcatenated = true;
  for (const pb::KvCache &c : d.caches()) {
    const uint32_t past = p.inputs(c.past()), present = p.outputs(c.present());
    bool found = false;
    for (const pb::Step &s : p.steps())
      found |= s.has_op() && isConcat(s.op(), past, present);
    m.cachesConcatenated &= found;
  }
  std::vector<int> found(m.flat.size(), -1);
  for (int c = 0; c < d.caches_size(); ++c) {
    const uint32_t past = p.inputs(d.caches(c).past()), present = p.outputs(d.caches(c).present());
    for (uint32_t id : p.outputs())
      if (id == past)
        return; // the past is also an output: it must stay a plain tensor
    int append = -1;
    for (int si : m.topSteps) {
      const pb::Step &s = *m.flat[si];
      if (s.has_op() && s.op().blocks_size() > 0) { // control flow: may not touch a cache
        std::vector<int64_t> ids = stepReads(s);
        ids.insert(ids.end(), s.op().outputs().begin(), s.op().outputs().end());
        for (int64_t id : ids)
          if (id == int64_t(past) || id == int64_t(present))
            return;
      } else if (s.has_op()) {
        const pb::OpStep &o = s.op();
        for (int k = 0; k < o.inputs_size(); ++k) {
          if (o.inputs(k) != int64_t(past) && o.inputs(k) != int64_t(present))
            continue;
          if (o.op() == "Shape")
            continue; // reads dims only
          if (!isAppend(o, k, past, present) || append >= 0)
            return;
          append = si;
        }
        for (uint32_t out : o.outputs())
          if (out == present && append != si)
            return;
      } else if (s.has_attention()) {
        const auto &a = s.attention();
        for (int64_t id : {int64_t(a.query()), a.mask(), a.sinks()})
          if (id == int64_t(past) || id == int64_t(present))
            return;
        if (a.key() == past || a.value() == past || a.output() == present)
          return;
      } else if (s.has_linear() || s.has_moe()) { // neither may read or write a cache
        std::vector<int64_t> ids = stepReads(s);
        if (s.has_linear())
          ids.insert(ids.end(), s.linear().outputs().begin(), s.linear().outputs().end());
        else
          ids.push_back(s.moe().output());
        for (int64_t id : ids)
          if (id == int64_t(past) || id == int64_t(present))
            return;
      }
    }
    if (append < 0)
      return;
    found[append] = c;
  }
  m.appendsCache = std::move(found);
  // The top-level step making each value (-1: an input or a constant).
  std::vector<int> madeAt(p.values_size(), -1);
  for (int si : m.topSteps)
    for (uint32_t id : stepWrites(*m.flat[si]))
      if (id < madeAt.size())
        madeAt[id] = si;
  // The producers of the appended positions: a top-level moec.Rotary writing [B, H, S, D] (heads transposed
  // from [B, S, H, D], or not transposed over [B, H, S, D]) or Transpose(perm [0, 2, 1, 3]), whose output
  // only the append reads.
  std::vector<int> readers(p.values_size(), 0);
  for (const pb::Step *s : m.flat)
    for (int64_t id : stepReads(*s))
      if (id >= 0 && id < int64_t(readers.size()))
        ++readers[id];
  for (uint32_t id : p.outputs())
    ++readers[id];
  for (int si : m.topSteps) {
    if (m.appendsCache[si] < 0 || m.flat[si]->op().op() != "Concat")
      continue;
    const int64_t fresh = m.flat[si]->op().inputs(1);
    const int pi = fresh >= 0 && fresh < int64_t(madeAt.size()) ? madeAt[fresh] : -1;
    if (pi < 0 || !m.flat[pi]->has_op() || m.flat[pi]->op().outputs_size() != 1 || readers[fresh] != 1)
      continue;
    const pb::OpStep &o = m.flat[pi]->op();
    const moert::ops::Attrs attrs{o};
    const bool rotary =
        o.op() == "moec.Rotary" && (attrs.i("transpose", 0) != 0) == (attrs.i("seq_axis", 2) == 1);
    const bool transpose = o.op() == "Transpose" && attrs.ints("perm") == std::vector<int64_t>{0, 2, 1, 3};
    if (rotary || transpose)
      m.cacheProducer[pi] = m.appendsCache[si];
  }
  // Each such rotary embedding (the keys') and the rotary embedding before it over the same tables (the
  // queries'), when everything the keys' reads is made before the queries' step.
  auto isRotary = [&](int si) {
    return m.flat[si]->has_op() && m.flat[si]->op().op() == "moec.Rotary" &&
           m.flat[si]->op().inputs_size() == MOERT_ROTARY_INPUTS;
  };
  int previous = -1; // the last top-level rotary embedding seen
  for (int si : m.topSteps) {
    if (!isRotary(si))
      continue;
    if (m.cacheProducer[si] >= 0 && previous >= 0 && m.cacheProducer[previous] < 0 &&
        m.rotaryPartner[previous] < 0) {
      const pb::OpStep &k = m.flat[si]->op(), &q = m.flat[previous]->op();
      bool ready = k.inputs(MOERT_ROTARY_COS) == q.inputs(MOERT_ROTARY_COS) &&
                   k.inputs(MOERT_ROTARY_SIN) == q.inputs(MOERT_ROTARY_SIN);
      for (int64_t id : k.inputs())
        ready &= id < 0 || madeAt[id] < previous;
      if (ready)
        m.rotaryPartner[previous] = si;
    }
    previous = si;
  }
}

void moert::findLogitsStep(moert_model &m) {
  const pb::Program &p = m.meta.program();
  m.logitsStep = -1;
  if (!p.has_decoder())
    return;
  const int64_t logits = p.outputs(p.decoder().logits());
  int writer = -1;
  for (int si : m.topSteps) {
    const pb::Step &s = *m.flat[si];
    if (s.has_linear() && s.linear().outputs_size() == 1 && int64_t(s.linear().outputs(0)) == logits &&
        s.linear().residual() < 0)
      writer = si;
    const std::vector<int64_t> reads = stepReads(s);
    if (std::find(reads.begin(), reads.end(), logits) != reads.end())
      return; // something else reads the logits: they stay whole
  }
  for (int i = 0; i < p.outputs_size(); ++i)
    if (int64_t(p.outputs(i)) == logits && uint32_t(i) != p.decoder().logits())
      return; // the same value is also another output
  m.logitsStep = writer;
}

static std::string corrupted(const pb::Section &s, const std::string &part, uint64_t bytes, uint64_t offset) {
  return "is corrupted: section '" + s.name() + "'" + part + " (" +
         (s.kind() == pb::Section::CODE ? "code" : "weights") + ", " + std::to_string(bytes) +
         " bytes at offset " + std::to_string(offset) + ") fails its checksum";
}

/// Checks chunk `c` of chunked section `i` once; empty when it matches, else the reason.
static std::string checkChunk(moert_model &m, int i, int c) {
  const pb::Section &s = m.meta.sections(i);
  const uint64_t part = s.size() / s.chunk_checksums_size(), offset = s.offset() + c * part;
  std::atomic<uint8_t> &st = m.chunkState[m.chunkBase[i] + c];
  uint8_t state = st.load(std::memory_order_acquire);
  if (state == 0) {
    state = fmt::checksum(m.map + offset, part) == s.chunk_checksums(c) ? 1 : 2;
    st.store(state, std::memory_order_release);
  }
  return state == 1 ? "" : corrupted(s, " expert " + std::to_string(c), part, offset);
}

/// Checks section `i` once (its state says whether it was; a chunked one chunk by chunk); empty when it
/// matches, else the reason.
static std::string checkSection(moert_model &m, int i) {
  const pb::Section &s = m.meta.sections(i);
  uint8_t state = m.sectionState[i].load(std::memory_order_acquire);
  if (state == 0 && s.chunk_checksums_size() > 0) {
    for (int c = 0; c < s.chunk_checksums_size(); ++c)
      if (std::string why = checkChunk(m, i, c); !why.empty())
        return why;
    m.sectionState[i].store(1, std::memory_order_release);
    return "";
  }
  if (state == 0) {
    state = fmt::checksum(m.map + s.offset(), s.size()) == s.checksum() ? 1 : 2;
    m.sectionState[i].store(state, std::memory_order_release);
  }
  return state == 1 ? "" : corrupted(s, "", s.size(), s.offset());
}

/// Asks the kernel to read [offset, offset + bytes) of the artifact ahead: a first check reads it whole,
/// most likely for the first time since the file was written (large requests instead of a fault a page).
static void readAhead(const moert_model &m, uint64_t offset, uint64_t bytes) {
  const uintptr_t page = 4096, lo = uintptr_t(m.map + offset) & ~(page - 1);
  madvise(reinterpret_cast<void *>(lo), uintptr_t(m.map + offset + bytes) - lo, MADV_WILLNEED);
}

moert_status moert::verifyStepSections(moert_model &m, int step, bool deferExperts) {
  auto deferred = [&](int sec) { return deferExperts && m.meta.sections(sec).chunk_checksums_size() > 0; };
  for (int sec : m.stepSections[step])
    if (m.sectionState[sec].load(std::memory_order_acquire) == 0 && !deferred(sec))
      readAhead(m, m.meta.sections(sec).offset(), m.meta.sections(sec).size());
  for (int sec : m.stepSections[step])
    if (m.sectionState[sec].load(std::memory_order_acquire) != 1 && !deferred(sec))
      if (std::string why = checkSection(m, sec); !why.empty())
        return makeError(m.path + ": " + why +
                         " (found on its first use; `moert verify` checks every section)");
  return nullptr;
}

moert_status moert::verifyStepExperts(moert_model &m, int step, const uint8_t *touched, int64_t experts) {
  for (int pass = 0; pass < 2; ++pass) // read ahead, then check
    for (int sec : m.stepSections[step]) {
      const pb::Section &s = m.meta.sections(sec);
      if (s.chunk_checksums_size() != experts || m.sectionState[sec].load(std::memory_order_acquire) == 1)
        continue;
      const uint64_t part = s.size() / experts;
      for (int64_t e = 0; e < experts; ++e) {
        if (!touched[e] || m.chunkState[m.chunkBase[sec] + e].load(std::memory_order_acquire) == 1)
          continue;
        if (pass == 0)
          readAhead(m, s.offset() + e * part, part);
        else if (std::string why = checkChunk(m, sec, int(e)); !why.empty())
          return makeError(m.path + ": " + why +
                           " (found on its first use; `moert verify` checks every section)");
      }
      if (pass == 1) { // every expert good: the section is, and later runs skip it
        bool all = true;
        for (int64_t e = 0; all && e < experts; ++e)
          all = m.chunkState[m.chunkBase[sec] + e].load(std::memory_order_acquire) == 1;
        if (all)
          m.sectionState[sec].store(1, std::memory_order_release);
      }
    }
  return nullptr;
}

bool moert::expertsChecked(const moert_model &m, int step) {
  for (int sec : m.stepSections[step])
    if (m.meta.sections(sec).chunk_checksums_size() > 0 &&
        m.sectionState[sec].load(std::memory_order_acquire) != 1)
      return false;
  return true;
}

moert_status moert::verifyAllSections(moert_model &m) {
  std::string all;
  int bad = 0;
  for (int i = 0; i < m.meta.sections_size(); ++i)
    if (std::string why = checkSection(m, i); !why.empty()) {
      all += (bad ? "; " : "") + why.substr(why.find("section"));
      ++bad;
    }
  if (!bad)
    return nullptr;
  return makeError(m.path + ": is corrupted: " + std::to_string(bad) + " of " +
                   std::to_string(m.meta.sections_size()) + " sections fail their checksums: " + all);
}

moert_status moert::loadArtifact(const std::string &path, const moert_load_options &options, moert_model &m,
                                 bool loadCode) {
  auto bad = [&](const std::string &why) { return makeError(path + ": " + why); };
  if (options.threads < 0 || options.threads > MOERT_MAX_THREADS)
    return makeError("threads = " + std::to_string(options.threads) + ": expected 1 to " +
                     std::to_string(MOERT_MAX_THREADS) + " (or 0: one per core)");
  m.path = path;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return bad(std::string("cannot open: ") + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return bad("not a regular file");
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size < sizeof(fmt::FileHeader)) {
    close(fd);
    return bad("is not a moec artifact: " + std::to_string(size) + " bytes, shorter than the 64-byte header");
  }
  void *map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED)
    return bad(std::string("cannot map: ") + std::strerror(errno));
  m.map = static_cast<const unsigned char *>(map);
  m.mapSize = size;

  fmt::FileHeader h;
  std::memcpy(&h, m.map, sizeof h);
  if (std::memcmp(h.magic, fmt::kMagic, sizeof h.magic) != 0)
    return bad("is not a moec artifact (wrong magic bytes)");
  if (h.version > fmt::kVersion)
    return bad("was written by a newer moec (artifact format " + std::to_string(h.version) +
               "; this moert reads formats " + std::to_string(fmt::kOldestVersion) + " to " +
               std::to_string(fmt::kVersion) + "): recompile it or update moert");
  if (h.version < fmt::kOldestVersion)
    return bad("has unsupported artifact format " + std::to_string(h.version) +
               " (recompile it with this moec)");
  if (h.headerSize != sizeof(fmt::FileHeader))
    return bad("has a corrupted header (header size " + std::to_string(h.headerSize) + ")");
  if (h.fileSize != size)
    return bad(h.fileSize > size ? "is truncated: the header says " + std::to_string(h.fileSize) +
                                       " bytes, the file has " + std::to_string(size)
                                 : "has " + std::to_string(size - h.fileSize) + " unexpected bytes after its end");
  // Version 2 put the metadata right after the header, versions 3 and 4 after the sections.
  if (h.metadataOffset < sizeof(fmt::FileHeader) || h.metadataOffset > size ||
      h.metadataSize > size - h.metadataOffset ||
      (h.version == 2 && h.metadataOffset != sizeof(fmt::FileHeader)))
    return bad("has a corrupted header (metadata out of bounds)");
  m.verifyLevel = std::clamp(options.verify_checksum, 0, 2);
  if (m.verifyLevel && fmt::headChecksum(h, m.map + h.metadataOffset) != h.checksum)
    return bad("is corrupted (checksum mismatch in its header or metadata)");
  if (!m.meta.ParseFromArray(m.map + h.metadataOffset, static_cast<int>(h.metadataSize)))
    return bad("has corrupted metadata");

  const pb::Artifact &a = m.meta;
  if (a.target() != "cpu")
    return bad("targets '" + a.target() + "'; this moert runs cpu artifacts");
  if (a.kernel_abi() != MOERT_KERNEL_ABI_VERSION)
    return bad("uses kernel ABI " + std::to_string(a.kernel_abi()) + "; this moert speaks " +
               std::to_string(MOERT_KERNEL_ABI_VERSION));
  for (const auto &f : a.cpu_features())
    if (!cpuHas(f))
      return bad("was compiled for --cpu=" + a.cpu() + ", which needs the CPU feature '" + f +
                 "' this machine lacks; recompile with --cpu=native (or x86-64-v3)");
  for (const auto &s : a.sanitizers())
    if (!builtWithSanitizer(s))
      return bad(
          "has kernels built with -fsanitize=" + s +
          " (moec --sanitize), which only a moert built with that sanitizer (make SANITIZE=...) loads; "
          "recompile without --sanitize");
  for (int i = 0; i < a.sections_size(); ++i) {
    const auto &s = a.sections(i);
    const bool overlapsMetadata =
        s.offset() < h.metadataOffset + h.metadataSize && h.metadataOffset < s.offset() + s.size();
    if (s.offset() % fmt::kAlignment != 0 || s.offset() < sizeof(fmt::FileHeader) || s.offset() > size ||
        s.size() > size - s.offset() || overlapsMetadata)
      return bad("has a corrupted section table (section '" + s.name() + "' out of bounds)");
    if (s.kind() != pb::Section::WEIGHTS && s.kind() != pb::Section::CODE)
      return bad("has a section of unknown kind ('" + s.name() + "')");
    if (s.chunk_checksums_size() > 0 && s.size() % s.chunk_checksums_size() != 0)
      return bad("has a corrupted section table (section '" + s.name() + "': " + std::to_string(s.size()) +
                 " bytes in " + std::to_string(s.chunk_checksums_size()) + " equal chunks)");
  }
  m.sectionState = std::make_unique<std::atomic<uint8_t>[]>(a.sections_size());
  m.chunkBase.assign(a.sections_size() + 1, 0);
  for (int i = 0; i < a.sections_size(); ++i)
    m.chunkBase[i + 1] = m.chunkBase[i] + uint32_t(a.sections(i).chunk_checksums_size());
  m.chunkState = std::make_unique<std::atomic<uint8_t>[]>(m.chunkBase.back());
  // The program: every id in range, every value computed before it is read.
  const pb::Program &p = a.program();
  auto validId = [&](int64_t id) { return id >= 0 && id < p.values_size(); };
  std::vector<char> ready(p.values_size(), 0);
  if (p.buffers() < 0 || p.buffers() > p.values_size())
    return bad("has a corrupted memory plan (" + std::to_string(p.buffers()) + " buffers)");
  for (int i = 0; i < p.values_size(); ++i) {
    const auto &v = p.values(i);
    if (moert::dtypeSize(v.type().dtype()) == 0)
      return bad("has a value of unknown dtype ('" + v.name() + "')");
    if (!pb::Value::Kind_IsValid(v.kind()) ||
        (v.kind() != pb::Value::TENSOR && (v.has_constant_section() || v.has_buffer())))
      return bad("has a value of unknown kind ('" + v.name() + "')");
    if (v.has_buffer() && (v.buffer() < 0 || v.buffer() >= p.buffers() || v.has_constant_section()))
      return bad("has a corrupted memory plan (value '" + v.name() + "')");
    ready[i] = v.has_constant_section();
  }
  for (uint32_t id : p.inputs()) {
    if (!validId(id))
      return bad("has a corrupted program (input id)");
    ready[id] = 1;
  }
  int dispatchCount = 0, linearCount = 0, attentionCount = 0;
  m.flat.clear();
  m.depth.clear();
  m.topSteps.clear();
  m.blocks.clear();
  int level = 0; // nesting depth of the steps being validated
  std::vector<int> lastUse(p.values_size(), -1);
  // A read inside a control-flow block counts as a read by the block's top-level step (`top`): values of
  // the enclosing program stay alive while a loop runs its body again.
  auto read = [&](int64_t id, int top) {
    if (!validId(id) || !ready[id])
      return false;
    lastUse[id] = top;
    return true;
  };
  // What dispatches read and write are tensors.
  auto tensor = [&](int64_t id) { return validId(id) && p.values(id).kind() == pb::Value::TENSOR; };
  std::string why;
  // Validates `steps` in order (values they define become readable after them), numbering them in
  // pre-order into m.flat; `top` is the top-level step they belong to (-1: they are top-level);
  // `defined` collects the values they define (with those of nested blocks).
  std::function<bool(const google::protobuf::RepeatedPtrField<pb::Step> &, int, std::vector<int> &,
                     std::vector<uint32_t> &)>
      validate = [&](const google::protobuf::RepeatedPtrField<pb::Step> &steps, int topOf,
                     std::vector<int> &direct, std::vector<uint32_t> &defined) -> bool {
    for (const pb::Step &s : steps) {
      const int si = int(m.flat.size());
      m.flat.push_back(&s);
      m.depth.push_back(level);
      m.blocks.emplace_back();
      m.opKernels.push_back(nullptr);
      direct.push_back(si);
      const int top = topOf < 0 ? si : topOf;
      if (topOf < 0)
        m.topSteps.push_back(si);
      auto define = [&](uint32_t id) {
        ready[id] = 1;
        defined.push_back(id);
      };
      if (s.has_moe()) {
        const auto &d = s.moe();
        if (!read(d.input(), top) || !tensor(d.input()) || !tensor(d.output()) ||
            (d.logits() != -1 && !(read(d.logits(), top) && tensor(d.logits()))) ||
            (d.residual() != -1 && !(read(d.residual(), top) && tensor(d.residual()))) ||
            d.weight_sections_size() != MOERT_MOE_SLOTS || static_cast<int>(d.index()) != dispatchCount ||
            p.values(d.output()).type().dtype() != pb::F32)
          return why = "has a corrupted program (dispatch " + std::to_string(dispatchCount) + ")", false;
        define(d.output());
        ++dispatchCount;
      } else if (s.has_linear()) {
        const auto &d = s.linear();
        bool ok = read(d.input(), top) && tensor(d.input()) &&
                  (d.residual() == -1 || (read(d.residual(), top) && tensor(d.residual()))) &&
                  d.weight_sections_size() == MOERT_LIN_SLOTS && static_cast<int>(d.index()) == linearCount &&
                  d.k() > 0 && d.n() > 0 && d.outputs_size() >= 1 &&
                  d.outputs_size() <= MOERT_LIN_MAX_OUTPUTS && d.output_columns_size() == d.outputs_size() &&
                  (d.outputs_size() == 1 || d.residual() == -1);
        int64_t columns = 0;
        for (int j = 0; ok && j < d.outputs_size(); ++j) {
          ok = tensor(d.outputs(j)) && p.values(d.outputs(j)).type().dtype() == pb::F32 &&
               d.output_columns(j) > 0 && d.output_columns(j) <= d.n();
          columns += ok ? d.output_columns(j) : 0;
        }
        if (!ok || columns != d.n())
          return why = "has a corrupted program (linear dispatch " + std::to_string(linearCount) + ")", false;
        for (uint32_t id : d.outputs())
          define(id);
        ++linearCount;
      } else if (s.has_attention()) {
        const auto &d = s.attention();
        auto f32 = [&](int64_t id) { return p.values(id).type().dtype() == pb::F32; };
        auto in = [&](int64_t id) { return read(id, top) && tensor(id); };
        if (!in(d.query()) || !in(d.key()) || !in(d.value()) || (d.mask() != -1 && !in(d.mask())) ||
            (d.sinks() != -1 && !in(d.sinks())) || !tensor(d.output()) ||
            static_cast<int>(d.index()) != attentionCount || d.q_heads() <= 0 || d.kv_heads() <= 0 ||
            d.q_heads() % d.kv_heads() || d.key_dim() <= 0 || d.value_dim() <= 0 || !f32(d.output()))
          return why = "has a corrupted program (attention dispatch " + std::to_string(attentionCount) + ")",
                 false;
        define(d.output());
        ++attentionCount;
      } else if (s.has_op()) {
        const auto &o = s.op();
        const int wantBlocks = moert::controlFlowBlocks(o.op());
        if (wantBlocks == 0) {
          m.opKernels[si] = findOpKernel(o.op());
          if (!m.opKernels[si])
            return why = "uses op '" + o.op() + "', which this moert cannot run (written by a newer moec?)",
                   false;
          // A view with a buffer of its own: a memory plan made without knowing it aliases its input (moec
          // before Flatten was one), which could give that input's buffer away while the view is still read.
          for (int64_t id : o.outputs())
            if (moert::isView(m.opKernels[si]) && validId(id) && p.values(id).has_buffer() &&
                p.values(id).buffer() >= 0)
              m.planIgnoresViews = true;
        }
        if (o.blocks_size() != std::max(wantBlocks, 0))
          return why = "has a corrupted program (op " + o.op() + " with " + std::to_string(o.blocks_size()) +
                       " blocks)",
                 false;
        for (int64_t id : o.inputs())
          if (id != -1 && !read(id, top))
            return why = "has a corrupted program (op " + o.op() + " reads an unknown value)", false;
        if (o.outputs_size() == 0)
          return why = "has a corrupted program (op " + o.op() + " without outputs)", false;
        for (const pb::Block &b : o.blocks()) {
          BlockSteps info;
          for (uint32_t id : b.inputs()) {
            if (!validId(id) || ready[id])
              return why = "has a corrupted program (op " + o.op() + " block input)", false;
            ready[id] = 1;
            info.defined.push_back(id);
          }
          ++level;
          const bool ok = validate(b.steps(), top, info.steps, info.defined);
          --level;
          if (!ok)
            return false;
          for (uint32_t id : b.outputs())
            if (!read(id, top))
              return why = "has a corrupted program (op " + o.op() + " yields an unknown value)", false;
          for (uint32_t id : info.defined) // a block's values are gone after it
            ready[id] = 0;
          defined.insert(defined.end(), info.defined.begin(), info.defined.end());
          m.blocks[si].push_back(std::move(info));
        }
        for (uint32_t id : o.outputs()) {
          if (!validId(id))
            return why = "has a corrupted program (op output id)", false;
          define(id);
        }
      } else {
        return why = "has a program step this moert does not know (written by a newer moec?)", false;
      }
    }
    return true;
  };
  {
    std::vector<int> direct;
    std::vector<uint32_t> defined;
    m.opKernels.clear();
    if (!validate(p.steps(), -1, direct, defined))
      return bad(why);
  }
  m.releaseAfter.assign(m.flat.size(), {});
  for (uint32_t id : p.outputs()) {
    if (!validId(id) || !ready[id])
      return bad("has a corrupted program (output id)");
    lastUse[id] = int(m.flat.size()); // kept to the end
  }
  if (p.has_decoder()) {
    const pb::Decoder &d = p.decoder();
    auto in = [&](int64_t i) { return i >= 0 && i < p.inputs_size(); };
    bool ok = in(d.input_ids()) && (d.attention_mask() == -1 || in(d.attention_mask())) &&
              (d.position_ids() == -1 || in(d.position_ids())) && d.logits() < uint32_t(p.outputs_size()) &&
              d.caches_size() > 0;
    for (const pb::KvCache &c : d.caches()) {
      ok = ok && in(c.past()) && c.present() < uint32_t(p.outputs_size());
      if (!ok)
        break;
      const auto &t = p.values(p.inputs(c.past())).type();
      ok = t.dtype() == pb::F32 && t.dims_size() == 4;
    }
    if (!ok)
      return bad("has a corrupted decoder record");
  }
  findCacheAppends(m);
  findLogitsStep(m);
  // Intermediates are released after the step that reads them last.
  for (int i = 0; i < p.values_size(); ++i)
    if (lastUse[i] >= 0 && lastUse[i] < int(m.flat.size()) && !p.values(i).has_constant_section())
      m.releaseAfter[lastUse[i]].push_back(i);
  // The weight sections each step reads: its dispatch's, and the constants it (or a block of it) reads.
  m.stepSections.assign(m.flat.size(), {});
  for (size_t si = 0; si < m.flat.size(); ++si) {
    const pb::Step &s = *m.flat[si];
    std::vector<int> &secs = m.stepSections[si];
    auto add = [&](int64_t sec) {
      if (sec >= 0 && sec < a.sections_size() && std::find(secs.begin(), secs.end(), int(sec)) == secs.end())
        secs.push_back(int(sec));
    };
    if (s.has_moe())
      for (int64_t sec : s.moe().weight_sections())
        add(sec);
    if (s.has_linear())
      for (int64_t sec : s.linear().weight_sections())
        add(sec);
    for (int64_t id : stepReads(s))
      if (id >= 0 && id < p.values_size() && p.values(id).has_constant_section())
        add(p.values(id).constant_section());
  }
  const bool hasCode = dispatchCount + linearCount + attentionCount > 0;
  if (hasCode && (a.code_section() < 0 || a.code_section() >= a.sections_size() ||
                            a.sections(a.code_section()).kind() != pb::Section::CODE))
    return bad("has no code section");
  if (!hasCode && a.code_section() != -1)
    return bad("has a corrupted program (code without dispatches)");
  for (const auto &v : p.values()) {
    if (!v.has_constant_section())
      continue;
    int64_t sec = v.constant_section(), count = 1;
    for (const auto &d : v.type().dims())
      count = d.size() < 0 || count > (int64_t(1) << 40) ? -1 : count * d.size();
    if (sec < 0 || sec >= a.sections_size() || a.sections(sec).kind() != pb::Section::WEIGHTS || count < 0 ||
        v.type().unranked() || a.sections(sec).size() != uint64_t(count) * moert::dtypeSize(v.type().dtype()))
      return bad("has a corrupted constant '" + v.name() + "'");
  }

  // Code is checked before anything runs it; weights at load only when asked (2), else on first use.
  for (int i = 0; m.verifyLevel && i < a.sections_size(); ++i)
    if (a.sections(i).kind() == pb::Section::CODE || m.verifyLevel == 2)
      if (std::string why = checkSection(m, i); !why.empty())
        return bad(why);
  if (!loadCode)
    return nullptr;
  uint64_t codeBytes = hasCode ? a.sections(a.code_section()).size() : 0;
  if (hasCode) {
  const auto &cs = a.sections(a.code_section());
  std::string why;
  m.code = moert::loadFromMemory(m.map + cs.offset(), cs.size(), "moex-code", m.codeFd, why);
  if (!m.code)
    return bad("cannot load its code section: " + why);
  uint32_t (*abi)() = nullptr;
  if (!resolve(m.code, "moert_kernel_abi_version", abi) || abi() != MOERT_KERNEL_ABI_VERSION)
    return bad("has a code section of another kernel ABI");

  m.dispatches.resize(dispatchCount);
  for (const pb::Step *sp : m.flat) {
    const pb::Step &s = *sp;
    if (!s.has_moe())
      continue;
    const auto &d = s.moe();
    moert::Dispatch &x = m.dispatches[d.index()];
    std::string base = "moert_dispatch_" + std::to_string(d.index());
    uint64_t (*expected)(int) = nullptr;
    int64_t (*dims)(int) = nullptr;
    if (!resolve(m.code, base, x.run) || !resolve(m.code, base + "_scratch", x.scratch) ||
        !resolve(m.code, base + "_weight_bytes", expected) || !resolve(m.code, base + "_dims", dims))
      return bad("its code lacks dispatch " + std::to_string(d.index()));
    x.hidden = dims(0);
    x.routerColumns = dims(1);
    x.experts = dims(2);
    x.topK = d.top_k();
    if (x.hidden != d.hidden() || x.experts != d.experts() || x.experts <= 0 || x.experts > x.routerColumns)
      return bad("has dispatch " + std::to_string(d.index()) + " metadata that disagrees with its code");
    for (int slot = 0; slot < MOERT_MOE_SLOTS; ++slot) {
      int64_t sec = d.weight_sections(slot);
      uint64_t want = expected(slot);
      if (sec < 0) {
        if (want != 0)
          return bad("lacks a weight section dispatch " + std::to_string(d.index()) + " needs");
        continue;
      }
      if (sec >= a.sections_size() || a.sections(sec).kind() != pb::Section::WEIGHTS || a.sections(sec).size() != want)
        return bad("has a weight section of the wrong size for dispatch " + std::to_string(d.index()));
      const int chunks = a.sections(sec).chunk_checksums_size();
      if (chunks != 0 && (chunks != x.experts || !MOERT_MOE_SLOT_PER_EXPERT(slot)))
        return bad("has a weight section checksummed in " + std::to_string(chunks) + " parts for dispatch " +
                   std::to_string(d.index()) + " of " + std::to_string(x.experts) + " experts");
      x.weights[slot] = m.map + a.sections(sec).offset();
    }
  }

  m.linears.resize(linearCount);
  for (const pb::Step *sp : m.flat) {
    const pb::Step &s = *sp;
    if (!s.has_linear())
      continue;
    const auto &d = s.linear();
    moert::Linear &x = m.linears[d.index()];
    std::string base = "moert_linear_" + std::to_string(d.index());
    uint64_t (*expected)(int) = nullptr;
    int64_t (*dims)(int) = nullptr;
    if (!resolve(m.code, base, x.run) || !resolve(m.code, base + "_weight_bytes", expected) ||
        !resolve(m.code, base + "_dims", dims) || !resolve(m.code, base + "_scratch", x.scratch))
      return bad("its code lacks linear dispatch " + std::to_string(d.index()));
    x.k = dims(0);
    x.n = dims(1);
    bool same = x.k == d.k() && x.n == d.n() && dims(2) == d.outputs_size();
    for (int j = 0; same && j < d.outputs_size(); ++j)
      same = dims(3 + j) == d.output_columns(j);
    if (!same)
      return bad("has linear dispatch " + std::to_string(d.index()) + " metadata that disagrees with its code");
    for (int slot = 0; slot < MOERT_LIN_SLOTS; ++slot) {
      int64_t sec = d.weight_sections(slot);
      uint64_t want = expected(slot);
      if (sec < 0) {
        if (want != 0)
          return bad("lacks a weight section linear dispatch " + std::to_string(d.index()) + " needs");
        continue;
      }
      if (sec >= a.sections_size() || a.sections(sec).kind() != pb::Section::WEIGHTS || a.sections(sec).size() != want)
        return bad("has a weight section of the wrong size for linear dispatch " + std::to_string(d.index()));
      x.weights[slot] = m.map + a.sections(sec).offset();
    }
  }
  m.attentions.resize(attentionCount);
  for (const pb::Step *sp : m.flat) {
    const pb::Step &s = *sp;
    if (!s.has_attention())
      continue;
    const auto &d = s.attention();
    moert::Attention &x = m.attentions[d.index()];
    std::string base = "moert_attention_" + std::to_string(d.index());
    int64_t (*dims)(int) = nullptr;
    if (!resolve(m.code, base, x.run) || !resolve(m.code, base + "_dims", dims) ||
        !resolve(m.code, base + "_scratch", x.scratch))
      return bad("its code lacks attention dispatch " + std::to_string(d.index()));
    x.qHeads = dims(0), x.kvHeads = dims(1), x.keyDim = dims(2), x.valueDim = dims(3);
    if (x.qHeads != d.q_heads() || x.kvHeads != d.kv_heads() || x.keyDim != d.key_dim() ||
        x.valueDim != d.value_dim())
      return bad("has attention dispatch " + std::to_string(d.index()) +
                 " metadata that disagrees with its code");
  }
  } // hasCode

  if (options.device != MOERT_DEVICE_CPU) {
    if (options.device < MOERT_DEVICE_CPU || options.device > MOERT_DEVICE_EMU)
      return moert::makeError("moert_load: options.device " + std::to_string(options.device) + " is not a moert_device");
    for (const auto &g : a.gpu_code())
      if (g.section() < 0 || g.section() >= a.sections_size() || a.sections(g.section()).kind() != pb::Section::CODE ||
          (g.kind() == pb::GpuCode::PTX && (a.sections(g.section()).size() == 0 ||
                                            m.map[a.sections(g.section()).offset() + a.sections(g.section()).size() - 1] != 0)))
        return bad("has a corrupted GPU code entry (" + g.arch() + ")");
    for (int si = 0; m.verifyLevel == 1 && si < int(m.flat.size()); ++si) // uploaded now: checked now
      if (m.flat[si]->has_moe() || (m.flat[si]->has_linear() && m.flat[si]->linear().has_gpu()))
        if (moert_status st = moert::verifyStepSections(m, si)) {
          std::string why = st->message;
          delete st;
          return moert::makeError(why);
        }
    // Every artifact asked for a GPU opens it (one without GPU code: one error line, gpu::open's).
    std::string e = moert::gpu::open(options.device, a, m.flat, m.map, m.gpu);
    if (!e.empty())
      return moert::makeError(path + ": " + e);
  }

  m.noRoundTrips = m.gpu && options.no_round_trips;

  if (a.expert_parallel()) {
    if (!hasCode || dispatchCount == 0)
      return bad("is corrupted: compiled for expert parallelism without a MoE dispatch");
    if (m.gpu)
      return moert::makeError(path +
                              ": expert parallelism (--expert-parallel) runs on CPU ranks; load it with "
                              "device cpu");
    if (std::string why = moert::openExpertParallel(m, options.comm); !why.empty())
      return bad(why);
  }
  int threads = options.threads > 0 ? options.threads : moert::defaultThreads(m);
  m.pool = std::make_unique<moert::ThreadPool>(std::max(1, threads));

  // The summary `moert inspect` prints.
  std::ostringstream os;
  uint64_t weights = 0;
  for (const auto &s : a.sections())
    if (s.kind() == pb::Section::WEIGHTS)
      weights += s.size();
  os << "artifact: " << path << " (" << mib(size) << ", format " << h.version << ", " << a.producer()
     << ", from " << a.source_model() << ")\n";
  os << "target:   " << a.target() << " --cpu=" << a.cpu();
  if (a.cpu_features_size()) {
    os << " (needs";
    for (const auto &f : a.cpu_features())
      os << " " << f;
    os << ")";
  }
  os << "; kernel ABI " << a.kernel_abi();
  for (int i = 0; i < a.sanitizers_size(); ++i)
    os << (i ? "," : "; built with -fsanitize=") << a.sanitizers(i);
  os << "; " << m.pool->threads() << " threads\n";
  if (!a.tokenizer_json().empty()) // moec compile --tokenizer: moert generate --prompt reads it
    os << "tokenizer: tokenizer.json inside (" << mib(a.tokenizer_json().size()) << ")\n";
  if (a.gpu_code_size()) {
    os << "gpu code: ";
    for (int i = 0; i < a.gpu_code_size(); ++i)
      os << (i ? ", " : "") << a.gpu_code(i).arch() << " (" << mib(a.sections(a.gpu_code(i).section()).size()) << ")";
    os << "; GPU ABI " << a.gpu_abi() << "\n";
  }
  os << "runs on:  "
     << (m.gpu ? moert::gpu::describe(*m.gpu) + " (the steps marked [gpu]; other ops on the CPU)" : "cpu")
     << "\n";
  if (a.expert_parallel()) {
    os << "experts:  split between " << a.expert_parallel() << " ranks (--expert-parallel); ";
    if (m.epError.empty())
      os << "this process is rank " << m.comm->rank << " of " << m.comm->size << "\n";
    else
      os << "not runnable here: " << m.epError << "\n";
  }
  os << "inputs:\n";
  for (uint32_t id : p.inputs())
    os << "  " << p.values(id).name() << ": " << typeString(p.values(id)) << "\n";
  os << "outputs:\n";
  for (uint32_t id : p.outputs())
    os << "  " << p.values(id).name() << ": " << typeString(p.values(id)) << "\n";
  // On a GPU: the steps that run there and the crossings a call makes, as the run's Residency will make them
  // (where each value's current bytes are).
  std::vector<char> devStep(m.flat.size(), 0);
  std::string gpuCopies;
  if (m.gpu) {
    std::vector<moert::gpu::PlanStep> steps(m.flat.size());
    for (size_t fi = 0; fi < m.flat.size(); ++fi)
      steps[fi] = {m.flat[fi], moert::gpu::runsDispatch(*m.gpu, *m.flat[fi]),
                   m.flat[fi]->has_op() && moert::isView(m.opKernels[fi]),
                   m.flat[fi]->has_op() && moert::readsDimsOnly(m.opKernels[fi])};
    moert::gpu::Placement plan = moert::gpu::planPlacement(p, steps, moert::gpu::opKernels(*m.gpu));
    devStep = plan.device;
    m.gpuOps = plan.gpuOps;
    const int uploads = plan.uploads, downloads = plan.downloads;
    const std::map<std::string, int> &readers = plan.readers;
    std::ostringstream g;
    g << "gpu copies per call: " << uploads << (uploads == 1 ? " value" : " values") << " to the device, "
      << downloads << " back";
    std::string sep = " (read on the host by ";
    for (const auto &[name, n] : readers)
      g << sep << name << (n > 1 ? " x" + std::to_string(n) : ""), sep = ", ";
    g << (readers.empty() ? "" : ")") << "\n";
    moert::gpu::GraphStats stats;
    g << "gpu graphs: " << moert::gpu::graphs(*m.gpu, stats) << "\n";
    gpuCopies = g.str();
  }
  os << "steps:\n";
  std::map<int, const char *> blockLabel; // the first step of each control-flow block
  for (size_t fi = 0; fi < m.flat.size(); ++fi)
    for (size_t b = 0; b < m.blocks[fi].size(); ++b)
      if (!m.blocks[fi][b].steps.empty())
        blockLabel[m.blocks[fi][b].steps[0]] = m.flat[fi]->op().op() != "If" ? "body:"
                                               : b                           ? "else:"
                                                                             : "then:";
  for (size_t fi = 0; fi < m.flat.size(); ++fi) {
    const pb::Step &s = *m.flat[fi];
    if (blockLabel.count(int(fi)))
      os << std::string(2 * m.depth[fi], ' ') << blockLabel[int(fi)] << "\n";
    os << std::string(2 * m.depth[fi], ' '); // steps of a control-flow block indented under it
    if (s.has_op()) {
      os << "  op " << s.op().op() << " -> " << p.values(s.op().outputs(0)).name();
      if (s.op().blocks_size())
        os << " (" << (s.op().op() == "If" ? "then and else blocks" : "body") << " below)";
      // Constant inputs (weights a compiled dispatch did not take: worth knowing when reading a profile).
      std::string consts;
      for (int i = 0; i < s.op().inputs_size(); ++i)
        if (s.op().inputs(i) >= 0 && p.values(s.op().inputs(i)).has_constant_section())
          consts += (consts.empty() ? "" : ", ") + std::to_string(i);
      if (s.op().op() == "moec.Embedding") { // the table is the step's weights, in their storage
        static const char *const kStorage[] = {"fp32", "bf16", "fp16", "int8", "int4"};
        int64_t storage = -1, block = 0, width = 0;
        for (const auto &at : s.op().attributes())
          (at.name() == "storage" ? storage
           : at.name() == "block" ? block
                                  : width) = at.ints_size() ? at.ints(0) : -1;
        uint64_t bytes = 0;
        for (int i = 0; i < 2 && i < s.op().inputs_size(); ++i)
          if (s.op().inputs(i) >= 0 && p.values(s.op().inputs(i)).has_constant_section())
            bytes += a.sections(int(p.values(s.op().inputs(i)).constant_section())).size();
        const auto &rows = p.values(s.op().inputs(0)).type();
        os << ": embedding table of " << (rows.dims_size() ? rows.dims(0).size() : -1) << " rows of " << width
           << ", " << (storage >= 0 && storage < 5 ? kStorage[storage] : "?");
        if (storage >= MOERT_STORAGE_INT8)
          os << "/" << block;
        os << " (" << mib(bytes) << ")";
      } else if (s.op().op() == "moec.Rotary" || s.op().op() == "moec.Norm") {
        int64_t rot = 0, interleaved = 0, deinterleave = 0, transpose = 0, kind = 0;
        for (const auto &at : s.op().attributes()) {
          int64_t v = at.ints_size() ? at.ints(0) : 0;
          if (at.name() == "rotary_dim")
            rot = v;
          else if (at.name() == "interleaved")
            interleaved = v;
          else if (at.name() == "deinterleave")
            deinterleave = v;
          else if (at.name() == "transpose")
            transpose = v;
          else if (at.name() == "kind")
            kind = v;
        }
        if (s.op().op() == "moec.Norm")
          os << ": " << (kind == 2 ? "LayerNorm" : "RMSNorm") << " rows";
        else
          os << ": rotary embedding of " << rot << " dims"
             << (interleaved ? (deinterleave ? " (interleaved, written as halves)" : " (interleaved)") : "")
             << (s.op().inputs_size() > MOERT_ROTARY_NORM_WEIGHT &&
                         s.op().inputs(MOERT_ROTARY_NORM_WEIGHT) >= 0
                     ? ", RMSNorm first"
                     : "")
             << (transpose ? ", heads transposed" : "");
      } else if (!consts.empty()) {
        os << " (constant input" << (consts.find(',') == std::string::npos ? " " : "s ") << consts << ")";
      }
      os << (devStep[fi] ? " [gpu]" : "") << "\n";
    } else if (s.has_attention())
      os << "  attention " << s.attention().index() << ": " << s.attention().description()
         << (devStep[fi] ? " [gpu]" : "") << "\n";
    else if (s.has_linear())
      os << "  linear " << s.linear().index() << ": " << s.linear().description() << " ("
         << mib(s.linear().weight_bytes()) << " of weights)" << (devStep[fi] ? " [gpu]" : "") << "\n";
    else
      os << "  dispatch " << s.moe().index() << ": " << s.moe().description() << " ("
         << mib(s.moe().weight_bytes()) << " of weights)" << (devStep[fi] ? " [gpu]" : "") << "\n";
  }
  os << gpuCopies;
  if (p.has_decoder()) {
    const pb::Decoder &d = p.decoder();
    os << "decoder: " << d.caches_size() << " KV caches (" << p.values(p.inputs(d.caches(0).past())).name()
       << " -> " << p.values(p.outputs(d.caches(0).present())).name() << ", ...), logits '"
       << p.values(p.outputs(d.logits())).name() << "': `moert generate` and moert_session_* drive it, "
       << (std::any_of(m.appendsCache.begin(), m.appendsCache.end(), [](int c) { return c >= 0; })
               ? "appending to the caches in place"
               : "copying the caches each call (a cache is read by more than its Concat, attention and "
                 "Shape)")
       << (m.perSequenceCaches ? "; each sequence's positions from row 0 (seqlens_k)" : "") << "\n";
    const auto producers =
        std::count_if(m.cacheProducer.begin(), m.cacheProducer.end(), [](int c) { return c >= 0; });
    if (producers && m.gpu)
      os << "  on the device, " << producers << " of its appends launch nothing: the rotary embedding or "
         << "Transpose making the new positions writes them into the cache\n";
  }
  os << "memory plan: " << p.buffers() << " buffers for the intermediates (sized per input shape at run time)\n";
  os << "sections: " << a.sections_size() << " (weights " << mib(weights) << ", code " << mib(codeBytes)
     << "), 64-byte aligned, mapped from the file\n";
  m.description = os.str();
  return nullptr;
}
