//===- Locations.h - where an op came from in the user's model ---*- C++ -*-===//
//
// The importer gives every op the location of the ONNX node it came from: the node's name (its op type when
// unnamed) around the model file and the node's index + 1 as the line. Passes keep it (fusions make FusedLocs
// of their nodes). Errors and reports name that place for a user through describeLocation(), not MLIR's
// `loc(...)` syntax.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_IR_LOCATIONS_H
#define MOEC_IR_LOCATIONS_H

#include "mlir/IR/Location.h"
#include "llvm/ADT/StringRef.h"

#include <string>

namespace moec {

/// The location of node `index` (0-based, in its graph) named `name` of the model file `path`.
mlir::Location nodeLocation(mlir::MLIRContext *context, llvm::StringRef path, llvm::StringRef name,
                            int index);

/// A location as a user reads it: "node 'n' (#3)" for an imported node (the index as the importer's errors
/// give it), "nodes 'a' (#1), 'b' (#4) and 2 more" for a fusion of several, "file.mlir:12:5" for a location
/// in an MLIR file, "an unknown place" when nothing is known.
std::string describeLocation(mlir::Location loc);

} // namespace moec

#endif // MOEC_IR_LOCATIONS_H
