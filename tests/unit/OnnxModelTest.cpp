//===- OnnxModelTest.cpp - tensor bytes from every ONNX storage form ------===//
//
// The text syntax and onnx.helper mostly write raw_data; these tests build models with the typed fields
// (float_data, int32_data holding f16 bits, int64_data) and broken ones, which lit tests cannot express.
//
//===----------------------------------------------------------------------===//
#include "frontend/OnnxModel.h"

#include "onnx/onnx_pb.h"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/raw_ostream.h"

#include <gtest/gtest.h>

#include <cstring>

using moec::frontend::OnnxModel;
using moec::frontend::TensorBytes;

namespace {

/// A one-node model (Identity of input x) whose initializers are given by the caller.
std::string writeModel(const std::function<void(onnx::GraphProto &)> &addInitializers) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  auto *opset = m.add_opset_import();
  opset->set_domain("");
  opset->set_version(17);
  auto *g = m.mutable_graph();
  g->set_name("g");
  auto *in = g->add_input();
  in->set_name("x");
  in->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  in->mutable_type()->mutable_tensor_type()->mutable_shape()->add_dim()->set_dim_value(2);
  *g->add_output() = *in;
  g->mutable_output(0)->set_name("y");
  auto *n = g->add_node();
  n->set_op_type("Identity");
  n->add_input("x");
  n->add_output("y");
  addInitializers(*g);

  llvm::SmallString<128> path;
  EXPECT_FALSE(llvm::sys::fs::createTemporaryFile("onnxmodeltest", "onnx", path));
  std::error_code ec;
  llvm::raw_fd_ostream os(path, ec);
  EXPECT_FALSE(ec);
  os << m.SerializeAsString();
  return path.str().str();
}

onnx::TensorProto &addTensor(onnx::GraphProto &g, const char *name, int type, std::vector<int64_t> dims) {
  auto *t = g.add_initializer();
  t->set_name(name);
  t->set_data_type(type);
  for (int64_t d : dims)
    t->add_dims(d);
  return *t;
}

TEST(OnnxModel, TypedFieldsGiveLittleEndianBytes) {
  std::string path = writeModel([](onnx::GraphProto &g) {
    auto &f = addTensor(g, "f", onnx::TensorProto::FLOAT, {3});
    for (float v : {1.0f, -2.5f, 3.25f})
      f.add_float_data(v);
    auto &h = addTensor(g, "h", onnx::TensorProto::FLOAT16, {2});
    h.add_int32_data(0x3C00); // 1.0 in f16
    h.add_int32_data(0xC000); // -2.0 in f16
    auto &i = addTensor(g, "i", onnx::TensorProto::INT64, {2});
    i.add_int64_data(-7);
    i.add_int64_data(1LL << 40);
    auto &b = addTensor(g, "b", onnx::TensorProto::BOOL, {3});
    for (int v : {1, 0, 1})
      b.add_int32_data(v);
  });
  std::string error;
  auto model = OnnxModel::load(path, {}, error);
  ASSERT_TRUE(model) << error;
  const auto &inits = model->proto().graph().initializer();

  TensorBytes bytes;
  ASSERT_TRUE(model->tensorBytes(inits[0], bytes, error)) << error;
  ASSERT_EQ(bytes.data.size(), 12u);
  float f[3];
  std::memcpy(f, bytes.data.data(), 12);
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(f[1], -2.5f);
  EXPECT_EQ(f[2], 3.25f);

  ASSERT_TRUE(model->tensorBytes(inits[1], bytes, error)) << error;
  ASSERT_EQ(bytes.data.size(), 4u);
  uint16_t h[2];
  std::memcpy(h, bytes.data.data(), 4);
  EXPECT_EQ(h[0], 0x3C00);
  EXPECT_EQ(h[1], 0xC000);

  ASSERT_TRUE(model->tensorBytes(inits[2], bytes, error)) << error;
  int64_t i[2];
  std::memcpy(i, bytes.data.data(), 16);
  EXPECT_EQ(i[0], -7);
  EXPECT_EQ(i[1], 1LL << 40);

  ASSERT_TRUE(model->tensorBytes(inits[3], bytes, error)) << error;
  ASSERT_EQ(bytes.data.size(), 3u);
  EXPECT_EQ(bytes.data[0], 1);
  EXPECT_EQ(bytes.data[1], 0);
  EXPECT_EQ(bytes.data[2], 1);
  llvm::sys::fs::remove(path);
}

TEST(OnnxModel, ValueCountMustMatchShape) {
  std::string path = writeModel([](onnx::GraphProto &g) {
    auto &f = addTensor(g, "short", onnx::TensorProto::FLOAT, {4});
    f.add_float_data(1.0f);
    auto &r = addTensor(g, "raw", onnx::TensorProto::INT32, {2});
    r.set_raw_data(std::string(7, '\0'));
  });
  std::string error;
  // The checker does not look at value counts; moec must.
  auto model = OnnxModel::load(path, {}, error);
  ASSERT_TRUE(model) << error;
  TensorBytes bytes;
  const auto &inits = model->proto().graph().initializer();
  EXPECT_FALSE(model->tensorBytes(inits[0], bytes, error));
  EXPECT_NE(error.find("tensor 'short': holds 1 values, its shape needs 4"), std::string::npos) << error;
  EXPECT_FALSE(model->tensorBytes(inits[1], bytes, error));
  EXPECT_NE(error.find("tensor 'raw': raw_data has 7 bytes, its shape and type need 8"), std::string::npos)
      << error;
  llvm::sys::fs::remove(path);
}

TEST(OnnxModel, NegativeDimsAndStringsAreRejected) {
  std::string path = writeModel([](onnx::GraphProto &g) {
    addTensor(g, "neg", onnx::TensorProto::FLOAT, {-1});
    auto &s = addTensor(g, "str", onnx::TensorProto::STRING, {1});
    s.add_string_data("hello");
  });
  std::string error;
  auto model = OnnxModel::load(path, {/*runChecker=*/false, /*runShapeInference=*/false}, error);
  ASSERT_TRUE(model) << error;
  TensorBytes bytes;
  const auto &inits = model->proto().graph().initializer();
  EXPECT_FALSE(model->tensorBytes(inits[0], bytes, error));
  EXPECT_NE(error.find("negative dimension -1"), std::string::npos) << error;
  EXPECT_FALSE(model->tensorBytes(inits[1], bytes, error));
  EXPECT_NE(error.find("data type STRING is not supported"), std::string::npos) << error;
  llvm::sys::fs::remove(path);
}

} // namespace
