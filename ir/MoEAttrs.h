//===- MoEAttrs.h - moe dialect enums and attributes ------------*- C++ -*-===//
#ifndef MOEC_IR_MOEATTRS_H
#define MOEC_IR_MOEATTRS_H

#include "mlir/IR/Attributes.h"
#include "mlir/IR/BuiltinAttributes.h"

#include "ir/MoEEnums.h.inc"

#define GET_ATTRDEF_CLASSES
#include "ir/MoEAttrs.h.inc"

#endif // MOEC_IR_MOEATTRS_H
