//===- Artifact.cpp - writing a .moex artifact file --------------------------===//
#include "codegen/Artifact.h"
#include "codegen/WeightPacking.h"
#include "runtime/ArtifactFormat.h"
#include "runtime/src/GpuPlan.h"

#include "llvm/ADT/SmallString.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <cstring>
#include <functional>

using namespace moec::codegen;
namespace fmt = moert::format;

ArtifactWriter::~ArtifactWriter() {
  if (os_) { // not finished: nothing may be left behind
    os_->close();
    os_->clear_error();
    llvm::sys::fs::remove(tmp_);
  }
}

bool ArtifactWriter::open(llvm::StringRef path, std::string &error) {
  path_ = path.str();
  int fd = -1;
  if (std::error_code ec = llvm::sys::fs::createUniqueFile(path + ".tmp-%%%%%%", fd, tmp_)) {
    error = "cannot write '" + path_ + "': " + ec.message();
    return false;
  }
  os_ = std::make_unique<llvm::raw_fd_ostream>(fd, /*shouldClose=*/true);
  const char zeros[sizeof(fmt::FileHeader)] = {}; // the header, written last
  os_->write(zeros, sizeof zeros);
  at_ = sizeof zeros;
  return true;
}

int ArtifactWriter::addSection(llvm::StringRef name, moert::proto::Section::Kind kind,
                               llvm::ArrayRef<char> bytes, int64_t chunks) {
  auto *s = meta_.add_sections();
  s->set_name(name.str());
  s->set_kind(kind);
  s->set_size(bytes.size());
  if (chunks > 1 && bytes.size() % chunks == 0) {
    const size_t part = bytes.size() / chunks;
    std::vector<uint64_t> sums(chunks);
    parallelFor(chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        sums[c] = fmt::checksum(bytes.data() + c * part, part);
    });
    s->mutable_chunk_checksums()->Add(sums.begin(), sums.end());
  } else {
    s->set_checksum(fmt::checksum(bytes.data(), bytes.size()));
  }
  static const char zeros[fmt::kAlignment] = {};
  const uint64_t offset = fmt::alignUp(at_);
  s->set_offset(offset);
  if (os_ && !os_->has_error()) {
    os_->write(zeros, offset - at_);
    os_->write(bytes.data(), bytes.size());
  }
  at_ = offset + bytes.size();
  return meta_.sections_size() - 1;
}

uint64_t ArtifactWriter::sectionBytes(moert::proto::Section::Kind kind) const {
  uint64_t n = 0;
  for (const auto &s : meta_.sections())
    if (s.kind() == kind)
      n += s.size();
  return n;
}

std::string ArtifactWriter::error() const {
  if (!os_)
    return "cannot write '" + path_ + "': the artifact was not opened";
  return os_->has_error() ? "cannot write '" + path_ + "': " + os_->error().message() : "";
}

bool ArtifactWriter::finish(std::string &error) {
  if (!os_ || os_->has_error()) {
    error = this->error();
    return false;
  }
  // The metadata after the last section, then the header (its checksum covers both) at offset 0.
  std::string metaBytes;
  if (!meta_.SerializeToString(&metaBytes)) {
    error = "cannot serialise the artifact metadata";
    return false;
  }
  fmt::FileHeader h{};
  std::memcpy(h.magic, fmt::kMagic, sizeof h.magic);
  h.version = fmt::kVersion;
  h.headerSize = sizeof(fmt::FileHeader);
  h.metadataOffset = fmt::alignUp(at_);
  h.metadataSize = metaBytes.size();
  h.fileSize = h.metadataOffset + h.metadataSize;
  h.checksum = fmt::headChecksum(h, reinterpret_cast<const unsigned char *>(metaBytes.data()));
  static const char zeros[fmt::kAlignment] = {};
  os_->write(zeros, h.metadataOffset - at_);
  os_->write(metaBytes.data(), metaBytes.size());
  os_->seek(0);
  os_->write(reinterpret_cast<const char *>(&h), sizeof h);
  os_->close();
  std::error_code ec = os_->error();
  os_->clear_error();
  os_.reset();
  if (!ec)
    ec = llvm::sys::fs::rename(tmp_, path_);
  if (!ec)
    return true;
  llvm::sys::fs::remove(tmp_);
  error = "cannot write '" + path_ + "': " + ec.message();
  return false;
}

namespace {
/// libmoert's views (moert::format::viewOp), and the optional ops, which pass their input on (counted as
/// views here: the plan then keeps the input's buffer for as long as the output is read).
bool isViewOp(const std::string &op) {
  return moert::format::viewOp(op.c_str()) || op == "Optional" || op == "OptionalGetElement";
}
} // namespace

void moec::codegen::planMemory(moert::proto::Program &p) {
  namespace pb = moert::proto;
  const int n = p.values_size(), steps = p.steps_size();
  std::vector<int> root(n), def(n, -1), last(n, -1);
  for (int i = 0; i < n; ++i)
    root[i] = i;
  std::vector<char> owns(n, 0);
  for (int s = 0; s < steps; ++s) {
    const pb::Step &st = p.steps(s);
    // What a step reads: a control-flow op's blocks' reads count as read here (a loop reads them on every
    // iteration); the values its blocks define and its own outputs get no buffer (they are allocated as they
    // are made, and an output the runtime finds in the arena is copied out of it).
    const std::vector<int64_t> reads = moert::stepReads(st);
    std::vector<uint32_t> writes = moert::stepWrites(st);
    const bool view = st.has_op() && isViewOp(st.op().op());
    if (st.has_op() && st.op().blocks_size() > 0) {
      for (uint32_t id : writes)
        def[id] = s;
      writes.clear();
    }
    for (int64_t id : reads)
      if (id >= 0)
        last[root[id]] = std::max(last[root[id]], s);
    for (uint32_t id : writes) {
      def[id] = s;
      if (view && !reads.empty() && reads[0] >= 0)
        root[id] = root[reads[0]];
      else
        owns[id] = 1;
    }
  }
  for (uint32_t id : p.outputs())
    last[root[id]] = steps; // read when the results are copied out
  // Greedy interval colouring in step order: a buffer is free again after its value's last read.
  std::vector<int> freeBuffers, owner; // owner: value held by each buffer
  int buffers = 0;
  for (int s = 0; s < steps; ++s) {
    for (int b = 0; b < buffers; ++b)
      if (owner[b] >= 0 && std::max(last[owner[b]], def[owner[b]]) < s) {
        freeBuffers.push_back(b);
        owner[b] = -1;
      }
    for (int id = 0; id < n; ++id) {
      if (def[id] != s || !owns[id] || p.values(id).has_constant_section() ||
          p.values(id).kind() != pb::Value::TENSOR)
        continue;
      int b;
      if (!freeBuffers.empty()) {
        b = freeBuffers.back();
        freeBuffers.pop_back();
      } else {
        b = buffers++;
        owner.push_back(-1);
      }
      owner[b] = id;
      p.mutable_values(id)->set_buffer(b);
    }
  }
  p.set_buffers(buffers);
}

std::string moec::codegen::gpuCrossings(const moert::proto::Program &p) {
  namespace pb = moert::proto;
  std::vector<moert::gpu::PlanStep> steps; // pre-order, a control-flow block's steps after its op
  std::function<void(const pb::Step &)> add = [&](const pb::Step &s) {
    const bool dispatch =
        s.has_moe() || (s.has_linear() && s.linear().has_gpu()) || (s.has_attention() && s.attention().gpu());
    const std::string op = s.has_op() ? s.op().op() : "";
    steps.push_back({&s, dispatch, moert::format::viewOp(op.c_str()), op == "Shape"});
    if (s.has_op())
      for (const pb::Block &b : s.op().blocks())
        for (const pb::Step &inner : b.steps())
          add(inner);
  };
  for (const pb::Step &s : p.steps())
    add(s);
  moert::gpu::OpKernels every; // an artifact with GPU code has every graph-op kernel
  every.strided = every.reduce = every.conv = every.topk = every.rotary = every.norm = every.embedding = true;
  const moert::gpu::Placement plan = moert::gpu::planPlacement(p, steps, every);
  std::string line;
  int back = 0;
  for (const auto &[name, n] : plan.readers)
    if (name != "the caller (outputs)") {
      line += (line.empty() ? "" : ", ") + name + (n > 1 ? " x" + std::to_string(n) : "");
      back += n;
    }
  if (line.empty())
    return "";
  return "on a GPU, " + std::to_string(back) + (back == 1 ? " value comes" : " values come") +
         " back to the host each call for steps the CPU runs: " + line +
         " (`moert inspect --device=gpu` shows where each step runs)";
}

bool moec::codegen::writeFileBytes(llvm::StringRef path, llvm::StringRef bytes) {
  std::error_code ec;
  llvm::raw_fd_ostream os(path, ec);
  if (ec)
    return false;
  os << bytes;
  os.close();
  bool ok = !os.has_error();
  os.clear_error(); // (an error left set is a fatal one when the stream is destroyed)
  return ok;
}

bool moec::codegen::stageSources(llvm::StringRef dir, const std::vector<std::pair<std::string, std::string>> &files,
                                 const std::string &dumpDir, std::string &error) {
  auto writeFile = writeFileBytes;
  for (const auto &[name, text] : files) {
    llvm::SmallString<128> p(dir);
    llvm::sys::path::append(p, name);
    if (!writeFile(p, text)) {
      error = "cannot write '" + std::string(p) + "'";
      return false;
    }
    if (!dumpDir.empty()) {
      llvm::sys::fs::create_directories(dumpDir);
      llvm::SmallString<128> d(dumpDir);
      llvm::sys::path::append(d, name);
      if (!writeFile(d, text)) {
        error = "--dump-kernels: cannot write '" + std::string(d) + "'";
        return false;
      }
    }
  }
  return true;
}

const std::vector<std::string> &moec::codegen::knownSanitizers() {
  static const std::vector<std::string> names = {"address", "undefined", "thread"};
  return names;
}

std::vector<std::string> moec::codegen::sanitizerFlags(const std::vector<std::string> &sanitizers) {
  if (sanitizers.empty())
    return {};
  // Every report fails the run (no recovering UBSan checks); frames kept for the reports' stacks.
  return {"-fsanitize=" + llvm::join(sanitizers, ","), "-fno-sanitize-recover=all",
          "-fno-omit-frame-pointer"};
}

std::string moec::codegen::firstErrorLine(llvm::StringRef logPath) {
  auto buf = llvm::MemoryBuffer::getFile(logPath);
  if (!buf)
    return "";
  llvm::StringRef text = (*buf)->getBuffer();
  size_t at = text.find("error:");
  return (at == llvm::StringRef::npos ? text : text.substr(at)).split('\n').first.str();
}
