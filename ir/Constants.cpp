//===- Constants.cpp - the bytes of tensor constants, both ways ----------===//
#include "ir/Constants.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/DialectResourceBlobManager.h"
#include "mlir/IR/Matchers.h"

#include <cstring>

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

ElementsAttr elementsFromBytes(RankedTensorType type, ArrayRef<char> bytes, StringRef name) {
  if (bytes.size() <= 4096)
    return DenseElementsAttr::getFromRawBuffer(type, bytes);
  return DenseResourceElementsAttr::get(type, name, HeapAsmResourceBlob::allocateAndCopyInferAlign(bytes));
}

} // namespace moec
