//===- GraphBuilder.h - ONNX-dialect ops built at a node's location ---------===//
//
// For builders that write one ONNX node out as several graph ops (AttentionImport.cpp, ComposedImport.cpp):
// typed op creation, i64 / f32 constants, and the Shape / Cast / Unsqueeze forms they keep needing.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_FRONTEND_GRAPHBUILDER_H
#define MOEC_FRONTEND_GRAPHBUILDER_H

#include "frontend/NodeImporter.h"
#include "ir/ONNXOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinTypes.h"

namespace moec::frontend {

struct GraphBuilder {
  NodeImporter &ni;
  mlir::OpBuilder &b;
  mlir::Type f32, f64, i64, i1;

  explicit GraphBuilder(NodeImporter &n)
      : ni(n), b(n.builder()), f32(b.getF32Type()), f64(b.getF64Type()), i64(b.getI64Type()),
        i1(b.getI1Type()) {}

  mlir::RankedTensorType t(llvm::ArrayRef<int64_t> shape, mlir::Type e) {
    return mlir::RankedTensorType::get(shape, e);
  }
  template <class OpT>
  mlir::Value op(mlir::Type type, mlir::ValueRange operands,
                 llvm::ArrayRef<mlir::NamedAttribute> attrs = {}) {
    return b.create<OpT>(ni.loc(), mlir::TypeRange{type}, operands, attrs)->getResult(0);
  }
  mlir::Value ints(llvm::ArrayRef<int64_t> v) { return ni.constantI64(v); }
  mlir::Value scalarI64(int64_t v) {
    return ni.constant(mlir::DenseElementsAttr::get(t({}, i64), llvm::ArrayRef<int64_t>{v}));
  }
  mlir::Value scalarF32(float v) {
    return ni.constant(mlir::DenseElementsAttr::get(t({}, f32), llvm::ArrayRef<float>{v}));
  }
  mlir::Value scalarF64(double v) {
    return ni.constant(mlir::DenseElementsAttr::get(t({}, f64), llvm::ArrayRef<double>{v}));
  }
  mlir::NamedAttribute attr(llvm::StringRef name, int64_t v) {
    return b.getNamedAttr(name, b.getI64IntegerAttr(v));
  }

  mlir::Value unsqueeze(mlir::Value x, llvm::ArrayRef<int64_t> axes, mlir::RankedTensorType type) {
    return op<onnxir::UnsqueezeOp>(type, {x, ints(axes)});
  }
  /// dims [begin, end) of x as an i64 vector.
  mlir::Value shape(mlir::Value x, int64_t begin, int64_t end) {
    return op<onnxir::ShapeOp>(t({end - begin}, i64), {x}, {attr("start", begin), attr("end", end)});
  }
  mlir::Value cast(mlir::Value x, mlir::Type elem, llvm::ArrayRef<int64_t> shape) {
    return op<onnxir::CastOp>(t(shape, elem), {x}, {b.getNamedAttr("to", mlir::TypeAttr::get(elem))});
  }
  /// x cast to `elem`, keeping its shape (ranked or not).
  mlir::Value castLike(mlir::Value x, mlir::Type elem) {
    mlir::Type type = mlir::UnrankedTensorType::get(elem);
    if (auto r = llvm::dyn_cast<mlir::RankedTensorType>(x.getType()))
      type = r.clone(elem);
    return op<onnxir::CastOp>(type, {x}, {b.getNamedAttr("to", mlir::TypeAttr::get(elem))});
  }
};

} // namespace moec::frontend

#endif // MOEC_FRONTEND_GRAPHBUILDER_H
