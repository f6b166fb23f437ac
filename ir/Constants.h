//===- Constants.h - the bytes of tensor constants, both ways ----*- C++ -*-===//
//
// Weight constants are inline `DenseElementsAttr`s when small and resource blobs (`dense_resource`, pointing
// into the mapped model or a heap copy) when large. The importer, the passes and codegen read and make them
// through these, whichever form they take.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_IR_CONSTANTS_H
#define MOEC_IR_CONSTANTS_H

#include "mlir/IR/BuiltinAttributeInterfaces.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Value.h"
#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"

#include <vector>

namespace moec {

/// Row-major bytes of a constant tensor of any int or float element type with a static shape (bools one byte
/// each); empty when `v` is not such a constant.
std::vector<char> constantTensorBytes(mlir::Value v);

/// The same for a tensor attribute itself (an op's `value`-like attribute): inline or resource-backed.
std::vector<char> elementsBytes(mlir::Attribute attr);

/// A tensor attribute holding `bytes` (row-major) of `type`: inline when small, else a heap resource blob
/// named `name`.
mlir::ElementsAttr elementsFromBytes(mlir::RankedTensorType type, llvm::ArrayRef<char> bytes,
                                     llvm::StringRef name);

} // namespace moec

#endif // MOEC_IR_CONSTANTS_H
