//===- Constants.cpp - the bytes of tensor constants, both ways ----------===//
#include "ir/Constants.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/DialectResourceBlobManager.h"
#include "mlir/IR/Matchers.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

using namespace mlir;

namespace moec {

std::vector<char> constantTensorBytes(Value v) {
  Attribute attr;
  if (!v || !matchPattern(v, m_Constant(&attr)))
    return {};
  return elementsBytes(attr);
}

std::vector<char> elementsBytes(Attribute attr) {
  auto typed = dyn_cast_if_present<TypedAttr>(attr);
  auto type = typed ? dyn_cast<RankedTensorType>(typed.getType()) : RankedTensorType();
  if (!type || !type.hasStaticShape() || !type.getElementType().isIntOrFloat())
    return {};
  unsigned bits = type.getElementTypeBitWidth();
  if (bits != 1 && bits % 8 != 0)
    return {};
  size_t width = bits == 1 ? 1 : bits / 8, count = type.getNumElements();
  std::vector<char> out(width * count);
  if (out.empty()) // a tensor with a zero dim (memcpy must not see its null data)
    return out;
  if (auto dense = dyn_cast<DenseElementsAttr>(attr)) {
    if (bits == 1) { // MLIR packs i1 as bits; moec's tensors hold one byte per bool
      size_t i = 0;
      for (bool b : dense.getValues<bool>())
        out[i++] = b ? 1 : 0;
      return out;
    }
    ArrayRef<char> raw = dense.getRawData();
    if (dense.isSplat()) {
      for (size_t i = 0; i < count; ++i)
        std::memcpy(out.data() + i * width, raw.data(), width);
    } else {
      std::memcpy(out.data(), raw.data(), out.size());
    }
    return out;
  }
  if (auto res = dyn_cast<DenseResourceElementsAttr>(attr))
    if (AsmResourceBlob *blob = res.getRawHandle().getBlob())
      if (blob->getData().size() == out.size()) {
        std::memcpy(out.data(), blob->getData().data(), out.size());
        return out;
      }
  return {};
}

ArrayRef<char> constantTensorView(Value v) {
  Attribute attr;
  if (!v || !matchPattern(v, m_Constant(&attr)))
    return {};
  auto typed = dyn_cast<TypedAttr>(attr);
  auto type = typed ? dyn_cast<RankedTensorType>(typed.getType()) : RankedTensorType();
  if (!type || !type.hasStaticShape() || !type.getElementType().isIntOrFloat() ||
      type.getElementTypeBitWidth() % 8 != 0)
    return {};
  const size_t size = type.getNumElements() * (type.getElementTypeBitWidth() / 8);
  if (auto dense = dyn_cast<DenseElementsAttr>(attr)) {
    if (dense.isSplat() || dense.getRawData().size() != size)
      return {};
    return dense.getRawData();
  }
  if (auto res = dyn_cast<DenseResourceElementsAttr>(attr))
    if (AsmResourceBlob *blob = res.getRawHandle().getBlob())
      if (blob->getData().size() == size)
        return blob->getData();
  return {};
}

namespace {
std::mutex mappingsLock;
std::vector<ArrayRef<char>> mappings; // registered read-only file mappings

/// The whole pages of `bytes` (rounded outwards) if they lie in a registered file mapping.
bool mappedPages(ArrayRef<char> bytes, char *&begin, size_t &length) {
  if (bytes.empty())
    return false;
  std::lock_guard<std::mutex> guard(mappingsLock);
  for (ArrayRef<char> m : mappings)
    if (bytes.data() >= m.data() && bytes.data() + bytes.size() <= m.data() + m.size()) {
      static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
      uintptr_t lo = uintptr_t(bytes.data()) & ~(page - 1);
      uintptr_t hi = (uintptr_t(bytes.data() + bytes.size()) + page - 1) & ~(page - 1);
      begin = reinterpret_cast<char *>(lo);
      length = hi - lo;
      return true;
    }
  return false;
}
} // namespace

void noteFileMapping(ArrayRef<char> mapped) {
  std::lock_guard<std::mutex> guard(mappingsLock);
  mappings.push_back(mapped);
}

void forgetFileMapping(ArrayRef<char> mapped) {
  std::lock_guard<std::mutex> guard(mappingsLock);
  llvm::erase_if(mappings, [&](ArrayRef<char> m) { return m.data() == mapped.data(); });
}

void releaseConstantPages(Value v) {
  char *begin;
  size_t length;
  // MADV_DONTNEED on a private read-only file mapping unmaps the pages; the next read faults them back in
  // from the file (page cache). Never on anonymous memory, where it would zero them.
  if (mappedPages(constantTensorView(v), begin, length))
    madvise(begin, length, MADV_DONTNEED);
}

void prefetchConstantPages(Value v) {
  char *begin;
  size_t length;
  if (mappedPages(constantTensorView(v), begin, length))
    madvise(begin, length, MADV_WILLNEED);
}

ElementsAttr elementsFromBytes(RankedTensorType type, ArrayRef<char> bytes, StringRef name) {
  if (bytes.size() <= 4096)
    return DenseElementsAttr::getFromRawBuffer(type, bytes);
  return DenseResourceElementsAttr::get(type, name, HeapAsmResourceBlob::allocateAndCopyInferAlign(bytes));
}

} // namespace moec
