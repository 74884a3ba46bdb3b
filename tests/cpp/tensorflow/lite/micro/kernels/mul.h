// Test stand-in for TFLite Micro's kernels/mul.h: its Register_*_INT8() live in the resolver stand-in.
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
