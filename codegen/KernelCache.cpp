//===- KernelCache.cpp - compiled kernel code kept by what it was built from ----------------------------===//
#include "KernelCache.h"

#include "llvm/ADT/SmallString.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Process.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/SHA256.h"
#include "llvm/Support/raw_ostream.h"
#include "llvm/Support/xxhash.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>

using namespace moec::codegen;

namespace {

constexpr char kMagic[8] = {'M', 'O', 'E', 'C', 'K', 'C', '1', '\n'}; // an entry: magic, length, hash, bytes
constexpr size_t kHeader = sizeof kMagic + 2 * sizeof(uint64_t);

bool off(llvm::StringRef v) { return v == "off" || v == "0" || v == "none"; }

/// The key: the compiler (its path, size and modification time, and what `--version` prints: an upgraded
/// compiler, also behind a wrapper script, is another key), the arguments (paths in the staging directory by
/// their names there), the staged files.
std::string keyOf(const KernelCompile &c) {
  llvm::SHA256 h;
  auto add = [&](llvm::StringRef s) {
    uint64_t n = s.size();
    h.update(llvm::ArrayRef<uint8_t>(reinterpret_cast<const uint8_t *>(&n), sizeof n));
    h.update(s);
  };
  add("moec kernel cache 1");
  add(c.compiler);
  llvm::sys::fs::file_status st;
  if (!llvm::sys::fs::status(c.compiler, st)) {
    add(std::to_string(st.getSize()));
    add(std::to_string(st.getLastModificationTime().time_since_epoch().count()));
  }
  llvm::SmallString<256> version(c.stage);
  llvm::sys::path::append(version, "compiler-version.txt");
  std::optional<llvm::StringRef> redirects[] = {std::nullopt, llvm::StringRef(version),
                                                llvm::StringRef(version)};
  llvm::StringRef versionArgs[] = {c.compiler, "--version"};
  add(std::to_string(llvm::sys::ExecuteAndWait(c.compiler, versionArgs, std::nullopt, redirects)));
  if (auto text = llvm::MemoryBuffer::getFile(version))
    add((*text)->getBuffer());
  add(c.context);
  for (llvm::StringRef a : c.args)
    add(a.starts_with(c.stage) ? "<stage>" + a.substr(c.stage.size()).str() : a.str());
  for (const auto &[name, text] : *c.files) {
    add(name);
    add(text);
  }
  return llvm::toHex(h.final(), /*LowerCase=*/true);
}

bool load(const KernelCache &cache, const std::string &key, std::vector<char> &out) {
  llvm::SmallString<256> path(cache.dir);
  llvm::sys::path::append(path, key);
  auto buf = llvm::MemoryBuffer::getFile(path, /*IsText=*/false, /*RequiresNullTerminator=*/false);
  if (!buf)
    return false;
  llvm::StringRef b = (*buf)->getBuffer();
  uint64_t length = 0, hash = 0;
  if (b.size() < kHeader || std::memcmp(b.data(), kMagic, sizeof kMagic) != 0)
    return false;
  std::memcpy(&length, b.data() + sizeof kMagic, sizeof length);
  std::memcpy(&hash, b.data() + sizeof kMagic + sizeof length, sizeof hash);
  llvm::StringRef bytes = b.drop_front(kHeader);
  if (bytes.size() != length || llvm::xxh3_64bits(bytes) != hash)
    return false;
  out.assign(bytes.begin(), bytes.end());
  // Used now: the last to go when the cache is trimmed.
  int fd = -1;
  if (!llvm::sys::fs::openFileForWrite(path, fd, llvm::sys::fs::CD_OpenExisting, llvm::sys::fs::OF_Append)) {
    auto now = std::chrono::system_clock::now();
    (void)llvm::sys::fs::setLastAccessAndModificationTime(fd, now, now);
    llvm::sys::Process::SafelyCloseFileDescriptor(fd);
  }
  return true;
}

/// Oldest entries out until the rest fit the limit.
void trim(const KernelCache &cache) {
  std::vector<std::tuple<llvm::sys::TimePoint<>, uint64_t, std::string>> entries;
  uint64_t total = 0;
  std::error_code ec;
  for (llvm::sys::fs::directory_iterator it(cache.dir, ec), end; !ec && it != end; it.increment(ec)) {
    llvm::sys::fs::file_status st;
    if (llvm::sys::fs::status(it->path(), st) || st.type() != llvm::sys::fs::file_type::regular_file)
      continue;
    entries.emplace_back(st.getLastModificationTime(), st.getSize(), it->path());
    total += st.getSize();
  }
  std::sort(entries.begin(), entries.end());
  for (size_t i = 0; total > cache.limitBytes && i < entries.size(); ++i)
    if (!llvm::sys::fs::remove(std::get<2>(entries[i])))
      total -= std::get<1>(entries[i]);
}

void store(const KernelCache &cache, const std::string &key, const std::vector<char> &bytes) {
  llvm::SmallString<256> path(cache.dir), tmp;
  llvm::sys::path::append(path, key);
  int fd = -1;
  // A unique name beside it, renamed into place when whole (another moec may be storing the same key).
  if (llvm::sys::fs::createUniqueFile(path + ".%%%%%%%%.tmp", fd, tmp))
    return;
  bool ok;
  {
    llvm::raw_fd_ostream os(fd, /*shouldClose=*/true);
    uint64_t length = bytes.size(), hash = llvm::xxh3_64bits(llvm::StringRef(bytes.data(), bytes.size()));
    os.write(kMagic, sizeof kMagic);
    os.write(reinterpret_cast<const char *>(&length), sizeof length);
    os.write(reinterpret_cast<const char *>(&hash), sizeof hash);
    os.write(bytes.data(), bytes.size());
    os.close();
    ok = !os.has_error();
    os.clear_error();
  }
  if (!ok || llvm::sys::fs::rename(tmp, path)) {
    llvm::sys::fs::remove(tmp);
    return;
  }
  trim(cache);
}

} // namespace

KernelCache KernelCache::open(const std::string &option) {
  KernelCache c;
  std::string where = option;
  if (where.empty())
    if (const char *env = std::getenv("MOEC_KERNEL_CACHE"))
      where = env;
  if (off(where))
    return c;
  if (where.empty()) {
    llvm::SmallString<256> d;
    if (const char *xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg)
      d = xdg;
    else if (const char *home = std::getenv("HOME"); home && *home)
      llvm::sys::path::append(d, home, ".cache");
    else
      return c;
    llvm::sys::path::append(d, "moec", "kernels");
    where = std::string(d);
  }
  if (llvm::sys::fs::create_directories(where))
    return c;
  c.dir = where;
  if (const char *mb = std::getenv("MOEC_KERNEL_CACHE_MB")) {
    char *end = nullptr;
    long long v = std::strtoll(mb, &end, 10);
    if (end != mb && *end == 0 && v >= 0)
      c.limitBytes = uint64_t(v) << 20;
  }
  return c;
}

KernelCompileResult moec::codegen::compileOrReuse(const KernelCache &cache, const KernelCompile &c,
                                                  std::vector<char> &code) {
  KernelCompileResult r;
  const std::string key = cache.dir.empty() ? "" : keyOf(c);
  if (!key.empty() && load(cache, key, code)) {
    r.reused = true;
    return r;
  }
  if (c.starting)
    c.starting();
  std::optional<llvm::StringRef> redirects[] = {std::nullopt, c.log, c.log};
  r.rc = llvm::sys::ExecuteAndWait(c.compiler, c.args, std::nullopt, redirects, 0, 0, &r.execError);
  if (r.rc != 0)
    return r;
  auto out = llvm::MemoryBuffer::getFile(c.output, /*IsText=*/false, /*RequiresNullTerminator=*/false);
  if (!out) {
    r.rc = -1;
    r.execError = "cannot read what it wrote";
    return r;
  }
  code.assign((*out)->getBufferStart(), (*out)->getBufferEnd());
  if (!key.empty())
    store(cache, key, code);
  return r;
}
