//===- Locations.cpp - where an op came from in the user's model ----------===//
#include "ir/Locations.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/Twine.h"

namespace moec {

mlir::Location nodeLocation(mlir::MLIRContext *context, llvm::StringRef path, llvm::StringRef name,
                            int index) {
  return mlir::NameLoc::get(mlir::StringAttr::get(context, name),
                            mlir::FileLineColLoc::get(mlir::StringAttr::get(context, path), index + 1, 0));
}

namespace {

/// The places a location names, innermost first within each: one entry per node.
void collect(mlir::Location loc, llvm::SmallVectorImpl<std::string> &out) {
  if (auto fused = mlir::dyn_cast<mlir::FusedLoc>(loc)) {
    for (mlir::Location part : fused.getLocations())
      collect(part, out);
    return;
  }
  std::string place;
  if (auto named = mlir::dyn_cast<mlir::NameLoc>(loc)) {
    place = ("'" + named.getName().getValue() + "'").str();
    if (auto file = mlir::dyn_cast<mlir::FileLineColLoc>(named.getChildLoc()); file && file.getLine() > 0)
      place += " (#" + std::to_string(file.getLine() - 1) + ")";
  } else if (auto file = mlir::dyn_cast<mlir::FileLineColLoc>(loc)) {
    place = (file.getFilename().getValue() + ":" + llvm::Twine(file.getLine()) + ":" +
             llvm::Twine(file.getColumn()))
                .str();
  } else if (auto call = mlir::dyn_cast<mlir::CallSiteLoc>(loc)) {
    collect(call.getCallee(), out);
    return;
  }
  if (!place.empty() && !llvm::is_contained(out, place))
    out.push_back(place);
}

} // namespace

std::string describeLocation(mlir::Location loc) {
  llvm::SmallVector<std::string> places;
  collect(loc, places);
  if (places.empty())
    return "an unknown place";
  const bool nodes = places.front().front() == '\'';
  std::string out = nodes ? (places.size() == 1 ? "node " : "nodes ") : "";
  const size_t shown = std::min<size_t>(places.size(), 2);
  for (size_t i = 0; i < shown; ++i)
    out += (i ? (places.size() == 2 ? " and " : ", ") : "") + places[i];
  if (places.size() > shown)
    out += " and " + std::to_string(places.size() - shown) + " more";
  return out;
}

} // namespace moec
