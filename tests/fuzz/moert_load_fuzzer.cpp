//===- moert_load_fuzzer.cpp - libFuzzer target over the artifact loader ----===//
//
// Each input is an artifact image. The harness reseals its header checksum (so mutations reach the header,
// metadata, section-table and program checks behind it; section checksums it leaves, so their checks run) and
// loads it without its code section; any crash or sanitizer report is a bug in the loader's validation.
// Seeded with artifacts moec compiles.
//
//===----------------------------------------------------------------------===//
#include "runtime/ArtifactFormat.h"
#include "runtime/src/Model.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <unistd.h>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::vector<unsigned char> image(data, data + size);
  if (size >= sizeof(moert::format::FileHeader)) {
    moert::format::FileHeader h;
    std::memcpy(&h, image.data(), sizeof h);
    h.checksum = 0; // the reader checks the metadata's bounds first
    if (h.metadataOffset <= image.size() && h.metadataSize <= image.size() - h.metadataOffset)
      h.checksum = moert::format::headChecksum(h, image.data() + h.metadataOffset);
    std::memcpy(image.data(), &h, sizeof h);
  }
  static std::string path = "/tmp/moert-fuzz-" + std::to_string(getpid()) + ".moex";
  FILE *f = std::fopen(path.c_str(), "wb");
  if (!f)
    return 0;
  std::fwrite(image.data(), 1, image.size(), f);
  std::fclose(f);
  moert_load_options options{sizeof options, 1, 1, MOERT_DEVICE_CPU, nullptr, 0};
  moert_model model;
  if (moert_status st = moert::loadArtifact(path, options, model, /*loadCode=*/false))
    delete st;
  return 0;
}
