// tinyops firmware harness: runs the bundle's model on samples the platform supplies and writes
// the raw int8 outputs back, so the host can compare them byte for byte with the Python TFLite
// Micro interpreter. It is also the shortest complete example of integrating the bundle: the
// model, RegisterOps() and kTensorArenaSize come from tinyops_model.h, unchanged.
//
// Input stream:  uint32 magic 'TOPS', uint32 arena bytes (0: the whole arena), uint32 samples,
//                then each sample's input tensor bytes.
// Output stream: each sample's output tensor bytes, then uint32 magic, arena used, stack peak.
#include <cstdint>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "tinyops_model.h"
#include "tinyops_platform.h"

#ifndef TINYOPS_ARENA_CAPACITY
#define TINYOPS_ARENA_CAPACITY tinyops::kTensorArenaSize
#endif

namespace {

constexpr uint32_t kMagic = 0x53504f54;  // "TOPS"
alignas(16) uint8_t tensor_arena[TINYOPS_ARENA_CAPACITY];

int Fail(int code, const char* why) {
  tinyops_log(why);
  return code;
}

}  // namespace

int main() {
  if (tinyops_open_io() != 0) return Fail(TINYOPS_EXIT_IO, "tinyops: cannot open the I/O files\n");
  uint32_t header[3];
  if (tinyops_read(header, sizeof(header)) != 0 || header[0] != kMagic)
    return Fail(TINYOPS_EXIT_IO, "tinyops: bad input header\n");
  const uint32_t arena_bytes = header[1] == 0 || header[1] > sizeof(tensor_arena)
                                   ? sizeof(tensor_arena) : header[1];

  const tflite::Model* model = tflite::GetModel(tinyops::kModelData);
  if (model->version() != TFLITE_SCHEMA_VERSION)
    return Fail(TINYOPS_EXIT_MODEL, "tinyops: model schema version differs from the library's\n");
  static tinyops::OpResolver resolver;
  if (tinyops::RegisterOps(resolver) != kTfLiteOk)
    return Fail(TINYOPS_EXIT_OPS, "tinyops: RegisterOps failed\n");

  tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, arena_bytes);
  if (interpreter.AllocateTensors() != kTfLiteOk)
    return Fail(TINYOPS_EXIT_ARENA, "tinyops: AllocateTensors failed (arena too small?)\n");
  TfLiteTensor* input = interpreter.input(0);
  TfLiteTensor* output = interpreter.output(0);
  if (input->type != kTfLiteInt8 || output->type != kTfLiteInt8)
    return Fail(TINYOPS_EXIT_SHAPE, "tinyops: the model's input and output must be int8\n");

  for (uint32_t i = 0; i < header[2]; ++i) {
    if (tinyops_read(input->data.int8, input->bytes) != 0)
      return Fail(TINYOPS_EXIT_IO, "tinyops: input ended early\n");
    tinyops_mark();
    const TfLiteStatus status = interpreter.Invoke();
    tinyops_mark();
    if (status != kTfLiteOk) return Fail(TINYOPS_EXIT_INVOKE, "tinyops: Invoke failed\n");
    if (tinyops_write(output->data.int8, output->bytes) != 0)
      return Fail(TINYOPS_EXIT_IO, "tinyops: cannot write the output\n");
  }
  const uint32_t trailer[3] = {kMagic, static_cast<uint32_t>(interpreter.arena_used_bytes()),
                               tinyops_stack_peak_bytes()};
  if (tinyops_write(trailer, sizeof(trailer)) != 0)
    return Fail(TINYOPS_EXIT_IO, "tinyops: cannot write the trailer\n");
  return TINYOPS_EXIT_OK;
}
