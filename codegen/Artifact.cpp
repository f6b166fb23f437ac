//===- Artifact.cpp - writing a .moex artifact file --------------------------===//
#include "codegen/Artifact.h"
#include "runtime/ArtifactFormat.h"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/raw_ostream.h"

#include <cstring>

using namespace moec::codegen;
namespace fmt = moert::format;

int ArtifactWriter::addSection(llvm::StringRef name, moert::proto::Section::Kind kind, std::vector<char> bytes) {
  auto *s = meta_.add_sections();
  s->set_name(name.str());
  s->set_kind(kind);
  s->set_size(bytes.size());
  payloads_.push_back(std::move(bytes));
  return meta_.sections_size() - 1;
}

uint64_t ArtifactWriter::sectionBytes(moert::proto::Section::Kind kind) const {
  uint64_t n = 0;
  for (const auto &s : meta_.sections())
    if (s.kind() == kind)
      n += s.size();
  return n;
}

bool ArtifactWriter::write(llvm::StringRef path, std::string &error) {
  // Offsets depend on the metadata's size, which depends on the offsets' varint widths: iterate until the
  // layout is stable (two rounds in practice).
  uint64_t metaSize = 0;
  std::string metaBytes;
  for (int round = 0; round < 8; ++round) {
    uint64_t at = fmt::alignUp(sizeof(fmt::FileHeader) + metaSize);
    for (auto &s : *meta_.mutable_sections()) {
      s.set_offset(at);
      at = fmt::alignUp(at + s.size());
    }
    metaBytes.clear();
    if (!meta_.SerializeToString(&metaBytes)) {
      error = "cannot serialise the artifact metadata";
      return false;
    }
    if (metaBytes.size() == metaSize)
      break;
    metaSize = metaBytes.size();
  }
  uint64_t fileSize = fmt::alignUp(sizeof(fmt::FileHeader) + metaBytes.size());
  for (const auto &s : meta_.sections())
    fileSize = std::max<uint64_t>(fileSize, s.offset() + s.size());

  std::vector<unsigned char> image(fileSize, 0);
  fmt::FileHeader h{};
  std::memcpy(h.magic, fmt::kMagic, sizeof h.magic);
  h.version = fmt::kVersion;
  h.headerSize = sizeof(fmt::FileHeader);
  h.fileSize = fileSize;
  h.metadataOffset = sizeof(fmt::FileHeader);
  h.metadataSize = metaBytes.size();
  std::memcpy(image.data(), &h, sizeof h);
  std::memcpy(image.data() + h.metadataOffset, metaBytes.data(), metaBytes.size());
  for (int i = 0; i < meta_.sections_size(); ++i)
    if (!payloads_[i].empty())
      std::memcpy(image.data() + meta_.sections(i).offset(), payloads_[i].data(), payloads_[i].size());
  h.checksum = fmt::fileChecksum(image.data(), image.size());
  std::memcpy(image.data(), &h, sizeof h);

  std::error_code ec;
  llvm::ToolOutputFile out(path, ec, llvm::sys::fs::OF_None);
  if (ec) {
    error = "cannot write '" + path.str() + "': " + ec.message();
    return false;
  }
  out.os().write(reinterpret_cast<const char *>(image.data()), image.size());
  out.os().flush();
  if (out.os().has_error()) {
    error = "cannot write '" + path.str() + "'";
    out.os().clear_error();
    return false;
  }
  out.keep();
  return true;
}
