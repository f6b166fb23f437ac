//===- onnx_import_fuzzer.cpp - libFuzzer target for the ONNX importer ----===//
//
// Feeds arbitrary bytes to the importer as a binary ONNX model. Whatever the bytes, the importer must
// return a module or an error string: no crash, no sanitizer report. Mutations are mostly structure-aware
// (LLVMFuzzerCustomMutator below: fields of the parsed model edited through protobuf reflection). `make test`
// runs it for a bounded time (tests/fuzz/run-fuzzer.sh); run it longer by hand with
// `build/tests/fuzz/onnx-import-fuzzer CORPUS_DIR`.
//
//===----------------------------------------------------------------------===//
#include "frontend/Importer.h"

#include "mlir/IR/MLIRContext.h"

#include <onnx/onnx_pb.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mlir::MLIRContext context(mlir::MLIRContext::Threading::DISABLED);
  moec::frontend::ImportOptions options;
  std::string error;
  auto module =
      moec::frontend::importOnnxModelFromMemory(llvm::StringRef(reinterpret_cast<const char *>(data), size),
                                                "fuzz-input.onnx", context, options, error);
  // Either a module or an error, never neither.
  if (!module && error.empty())
    __builtin_trap();
  return 0;
}

// ---- A structure-aware mutator: most mutations edit one field of the parsed ModelProto through protobuf
// reflection (a number set to an edge value, a name pointed at another name of the model, an element of a
// repeated field dropped, duplicated or swapped, a sub-message cleared), so the importer's op builders see
// well-formed protobuf with wrong contents instead of bytes that fail to parse. The rest are libFuzzer's
// byte-level mutations.
namespace {
namespace pb = google::protobuf;

struct Site {
  pb::Message *message;
  const pb::FieldDescriptor *field;
};

/// Every set field of `m` and its sub-messages (at most `budget` of them), and every string value seen.
void collect(pb::Message &m, std::vector<Site> &sites, std::vector<std::string> &strings, int &budget) {
  const pb::Reflection *r = m.GetReflection();
  std::vector<const pb::FieldDescriptor *> fields;
  r->ListFields(m, &fields);
  for (const auto *f : fields) {
    if (--budget < 0)
      return;
    sites.push_back({&m, f});
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING && !f->is_repeated() && strings.size() < 4096)
      strings.push_back(r->GetString(m, f).substr(0, 64));
    if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE)
      continue;
    if (f->is_repeated())
      for (int i = 0; i < r->FieldSize(m, f); ++i)
        collect(*r->MutableRepeatedMessage(&m, f, i), sites, strings, budget);
    else
      collect(*r->MutableMessage(&m, f), sites, strings, budget);
  }
}

int64_t edgeInt(std::mt19937_64 &rng, int64_t old) {
  static const int64_t kEdges[] = {0,   1,     -1,        2,         3,         7,        64,
                                   255, 65536, INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN};
  switch (rng() % 3) {
  case 0:
    return kEdges[rng() % (sizeof kEdges / sizeof *kEdges)];
  case 1:
    return old + int64_t(rng() % 5) - 2;
  default:
    return old * -1;
  }
}

double edgeFloat(std::mt19937_64 &rng) {
  static const double kEdges[] = {0.0, -0.0, 1.0, -1.0, 1e-45, 1e38, -1e38};
  switch (rng() % 4) {
  case 0:
    return std::numeric_limits<double>::quiet_NaN();
  case 1:
    return (rng() % 2 ? 1 : -1) * std::numeric_limits<double>::infinity();
  default:
    return kEdges[rng() % (sizeof kEdges / sizeof *kEdges)];
  }
}

void mutateSite(const Site &s, const std::vector<std::string> &strings, std::mt19937_64 &rng) {
  pb::Message &m = *s.message;
  const pb::Reflection *r = m.GetReflection();
  const pb::FieldDescriptor *f = s.field;
  if (f->is_repeated()) {
    const int n = r->FieldSize(m, f);
    const int op = int(rng() % 4);
    if (n > 0 && op == 0) { // drop the last element (after moving a random one there)
      r->SwapElements(&m, f, int(rng() % n), n - 1);
      r->RemoveLast(&m, f);
      return;
    }
    if (n > 1 && op == 1) {
      r->SwapElements(&m, f, int(rng() % n), int(rng() % n));
      return;
    }
    if (n > 0 && op == 2 && f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) { // duplicate one
      r->AddMessage(&m, f)->CopyFrom(r->GetRepeatedMessage(m, f, int(rng() % n)));
      return;
    }
    if (n == 0)
      return;
    const int i = int(rng() % n); // change one element in place
    switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      r->SetRepeatedInt32(&m, f, i, int32_t(edgeInt(rng, r->GetRepeatedInt32(m, f, i))));
      break;
    case pb::FieldDescriptor::CPPTYPE_INT64:
      r->SetRepeatedInt64(&m, f, i, edgeInt(rng, r->GetRepeatedInt64(m, f, i)));
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      r->SetRepeatedUInt64(&m, f, i, uint64_t(edgeInt(rng, 0)));
      break;
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      r->SetRepeatedFloat(&m, f, i, float(edgeFloat(rng)));
      break;
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      r->SetRepeatedDouble(&m, f, i, edgeFloat(rng));
      break;
    case pb::FieldDescriptor::CPPTYPE_STRING:
      if (!strings.empty())
        r->SetRepeatedString(&m, f, i, strings[rng() % strings.size()]);
      break;
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      r->MutableRepeatedMessage(&m, f, i)->Clear();
      break;
    default:
      break;
    }
    return;
  }
  switch (f->cpp_type()) {
  case pb::FieldDescriptor::CPPTYPE_INT32:
    r->SetInt32(&m, f, int32_t(edgeInt(rng, r->GetInt32(m, f))));
    break;
  case pb::FieldDescriptor::CPPTYPE_INT64:
    r->SetInt64(&m, f, edgeInt(rng, r->GetInt64(m, f)));
    break;
  case pb::FieldDescriptor::CPPTYPE_UINT32:
    r->SetUInt32(&m, f, uint32_t(edgeInt(rng, 0)));
    break;
  case pb::FieldDescriptor::CPPTYPE_UINT64:
    r->SetUInt64(&m, f, uint64_t(edgeInt(rng, 0)));
    break;
  case pb::FieldDescriptor::CPPTYPE_FLOAT:
    r->SetFloat(&m, f, float(edgeFloat(rng)));
    break;
  case pb::FieldDescriptor::CPPTYPE_DOUBLE:
    r->SetDouble(&m, f, edgeFloat(rng));
    break;
  case pb::FieldDescriptor::CPPTYPE_BOOL:
    r->SetBool(&m, f, !r->GetBool(m, f));
    break;
  case pb::FieldDescriptor::CPPTYPE_ENUM:
    r->SetEnumValue(&m, f, int(rng() % 24));
    break;
  case pb::FieldDescriptor::CPPTYPE_STRING: {
    std::string v = r->GetString(m, f);
    if (f->type() == pb::FieldDescriptor::TYPE_BYTES && !v.empty() && rng() % 2)
      v.resize(rng() % v.size()); // truncated raw data
    else if (!strings.empty())
      v = strings[rng() % strings.size()]; // another name of the model
    else
      v.clear();
    r->SetString(&m, f, v);
    break;
  }
  case pb::FieldDescriptor::CPPTYPE_MESSAGE:
    r->ClearField(&m, f);
    break;
  default:
    break;
  }
}
} // namespace

extern "C" size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t maxSize);

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t maxSize, unsigned seed) {
  std::mt19937_64 rng(seed);
  onnx::ModelProto model;
  if (rng() % 4 == 0 || !model.ParseFromArray(data, int(size)))
    return LLVMFuzzerMutate(data, size, maxSize);
  for (int i = 0, n = 1 + int(rng() % 3); i < n; ++i) { // sites again after each edit (it may free some)
    std::vector<Site> sites;
    std::vector<std::string> strings;
    int budget = 20000;
    collect(model, sites, strings, budget);
    if (sites.empty())
      return LLVMFuzzerMutate(data, size, maxSize);
    mutateSite(sites[rng() % sites.size()], strings, rng);
  }
  std::string out;
  if (!model.SerializeToString(&out) || out.size() > maxSize)
    return LLVMFuzzerMutate(data, size, maxSize);
  std::memcpy(data, out.data(), out.size());
  return out.size();
}
