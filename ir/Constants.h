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

/// The row-major bytes of a constant tensor where they already lie in memory (a non-splat inline attribute of
/// whole-byte elements, or a resource blob): no copy. Empty when `v` is no such constant; use
/// constantTensorBytes() then.
llvm::ArrayRef<char> constantTensorView(mlir::Value v);

/// Constants whose bytes lie in a read-only file mapping (the model's external data) may have their pages
/// dropped from the process once read: re-reading them faults them back in from the file. The importer
/// registers each mapping here for as long as it is mapped.
void noteFileMapping(llvm::ArrayRef<char> mapped);
void forgetFileMapping(llvm::ArrayRef<char> mapped);
/// Drops the pages of constant `v` from this process's memory if they lie in a registered file mapping (they
/// stay in the page cache); a no-op otherwise. Codegen calls it once a weight is packed, so compiling a model
/// holds the weights being packed, not every weight read so far.
void releaseConstantPages(mlir::Value v);
/// Asks the kernel to start reading constant `v`'s pages from a registered file mapping ahead of use.
void prefetchConstantPages(mlir::Value v);

/// A tensor attribute holding `bytes` (row-major) of `type`: inline when small, else a heap resource blob
/// named `name`.
mlir::ElementsAttr elementsFromBytes(mlir::RankedTensorType type, llvm::ArrayRef<char> bytes,
                                     llvm::StringRef name);

} // namespace moec

#endif // MOEC_IR_CONSTANTS_H
