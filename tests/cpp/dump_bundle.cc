// Host check of a generated bundle: writes the embedded model bytes to argv[1], then prints the
// arena size, the alignment, the labels and the ops RegisterOps registers.
#include <cstdint>
#include <cstdio>

#include "tinyops_model.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  FILE* out = std::fopen(argv[1], "wb");
  if (!out) return 3;
  std::fwrite(tinyops::kModelData, 1, tinyops::kModelDataLen, out);
  std::fclose(out);
  std::printf("arena %zu\n", tinyops::kTensorArenaSize);
  std::printf("aligned16 %d\n", static_cast<int>(reinterpret_cast<uintptr_t>(tinyops::kModelData) % 16 == 0));
  std::printf("labels %d\n", tinyops::kNumClasses);
  tinyops::OpResolver resolver;
  if (tinyops::RegisterOps(resolver) != kTfLiteOk) return 4;
  for (size_t i = 0; i < resolver.registered.size(); ++i)
    std::printf("op %s%s%s\n", resolver.registered[i].c_str(), resolver.kernels[i].empty() ? "" : " ",
                resolver.kernels[i].c_str());
  return 0;
}
