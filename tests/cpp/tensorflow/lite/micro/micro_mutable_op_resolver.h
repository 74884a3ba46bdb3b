// Test stand-in for TFLite Micro's MicroMutableOpResolver (the real header needs the whole TFLM
// tree, which no package ships). Method names are TFLite Micro's own (micro_mutable_op_resolver.h);
// each records the builtin op it registers, so the test can compare them with the model's ops.
#ifndef TENSORFLOW_LITE_MICRO_MICRO_MUTABLE_OP_RESOLVER_H_
#define TENSORFLOW_LITE_MICRO_MICRO_MUTABLE_OP_RESOLVER_H_

#include <string>
#include <vector>

typedef enum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;

namespace tflite {

// The kernel a registration names: CMSIS-NN's int8-only variants come from Register_<OP>_INT8().
struct TFLMRegistration {
  const char* kernel = "";
};
#define TINYOPS_INT8(op) \
  inline TFLMRegistration Register_##op##_INT8() { return {"int8"}; }
TINYOPS_INT8(ADD)
TINYOPS_INT8(AVERAGE_POOL_2D)
TINYOPS_INT8(BATCH_MATMUL)
TINYOPS_INT8(CONV_2D)
TINYOPS_INT8(DEPTHWISE_CONV_2D)
TINYOPS_INT8(FULLY_CONNECTED)
TINYOPS_INT8(MAX_POOL_2D)
TINYOPS_INT8(MAXIMUM)
TINYOPS_INT8(MINIMUM)
TINYOPS_INT8(MUL)
TINYOPS_INT8(PAD)
TINYOPS_INT8(SOFTMAX)
TINYOPS_INT8(SVDF)
TINYOPS_INT8(TRANSPOSE)
TINYOPS_INT8(TRANSPOSE_CONV)
#undef TINYOPS_INT8

template <unsigned int tOpCount>
class MicroMutableOpResolver {
 public:
  std::vector<std::string> registered;
  std::vector<std::string> kernels;  // "int8" where an int8-only kernel was registered
  static constexpr unsigned int kCapacity = tOpCount;

#define TINYOPS_OP(method, name) \
  TfLiteStatus method(TFLMRegistration registration = {}) { return Add(name, registration); }
  TINYOPS_OP(AddAbs, "ABS")
  TINYOPS_OP(AddAdd, "ADD")
  TINYOPS_OP(AddAddN, "ADD_N")
  TINYOPS_OP(AddArgMax, "ARG_MAX")
  TINYOPS_OP(AddArgMin, "ARG_MIN")
  TINYOPS_OP(AddAveragePool2D, "AVERAGE_POOL_2D")
  TINYOPS_OP(AddBatchMatMul, "BATCH_MATMUL")
  TINYOPS_OP(AddBatchToSpaceNd, "BATCH_TO_SPACE_ND")
  TINYOPS_OP(AddCast, "CAST")
  TINYOPS_OP(AddConcatenation, "CONCATENATION")
  TINYOPS_OP(AddConv2D, "CONV_2D")
  TINYOPS_OP(AddCumSum, "CUMSUM")
  TINYOPS_OP(AddDepthwiseConv2D, "DEPTHWISE_CONV_2D")
  TINYOPS_OP(AddDequantize, "DEQUANTIZE")
  TINYOPS_OP(AddExpandDims, "EXPAND_DIMS")
  TINYOPS_OP(AddFullyConnected, "FULLY_CONNECTED")
  TINYOPS_OP(AddHardSwish, "HARD_SWISH")
  TINYOPS_OP(AddL2Pool2D, "L2_POOL_2D")
  TINYOPS_OP(AddLeakyRelu, "LEAKY_RELU")
  TINYOPS_OP(AddLogistic, "LOGISTIC")
  TINYOPS_OP(AddMaxPool2D, "MAX_POOL_2D")
  TINYOPS_OP(AddMaximum, "MAXIMUM")
  TINYOPS_OP(AddMean, "MEAN")
  TINYOPS_OP(AddMinimum, "MINIMUM")
  TINYOPS_OP(AddMul, "MUL")
  TINYOPS_OP(AddPad, "PAD")
  TINYOPS_OP(AddPadV2, "PADV2")
  TINYOPS_OP(AddPrelu, "PRELU")
  TINYOPS_OP(AddQuantize, "QUANTIZE")
  TINYOPS_OP(AddRelu, "RELU")
  TINYOPS_OP(AddRelu6, "RELU6")
  TINYOPS_OP(AddReshape, "RESHAPE")
  TINYOPS_OP(AddResizeNearestNeighbor, "RESIZE_NEAREST_NEIGHBOR")
  TINYOPS_OP(AddSoftmax, "SOFTMAX")
  TINYOPS_OP(AddSqueeze, "SQUEEZE")
  TINYOPS_OP(AddStridedSlice, "STRIDED_SLICE")
  TINYOPS_OP(AddSub, "SUB")
  TINYOPS_OP(AddTanh, "TANH")
  TINYOPS_OP(AddRsqrt, "RSQRT")
  TINYOPS_OP(AddSlice, "SLICE")
  TINYOPS_OP(AddTranspose, "TRANSPOSE")
#undef TINYOPS_OP

 private:
  TfLiteStatus Add(const char* name, TFLMRegistration registration) {
    if (registered.size() >= tOpCount) return kTfLiteError;  // as TFLM: resolver too small
    registered.emplace_back(name);
    kernels.emplace_back(registration.kernel);
    return kTfLiteOk;
  }
};

}  // namespace tflite

#endif  // TENSORFLOW_LITE_MICRO_MICRO_MUTABLE_OP_RESOLVER_H_
