// What the tinyops test harness (main.cc) needs from a board: read input samples, write output
// bytes, mark the start and end of an inference, and exit. Under QEMU these are semihosting calls
// (semihost.c); on a real board, replace them with your sensor and UART code.
#ifndef TINYOPS_PLATFORM_H_
#define TINYOPS_PLATFORM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  TINYOPS_EXIT_OK = 0,
  TINYOPS_EXIT_IO = 3,
  TINYOPS_EXIT_MODEL = 4,
  TINYOPS_EXIT_OPS = 5,
  TINYOPS_EXIT_ARENA = 6,
  TINYOPS_EXIT_SHAPE = 7,
  TINYOPS_EXIT_INVOKE = 8,
  TINYOPS_EXIT_FAULT = 9,
};

int tinyops_open_io(void);                                // 0 on success
int tinyops_read(void* buffer, size_t bytes);             // 0 when all `bytes` were read
int tinyops_write(const void* buffer, size_t bytes);      // 0 when all `bytes` were written
void tinyops_log(const char* text);                        // a line for the console
void tinyops_mark(void);                                   // inference boundary (instruction counter)
uint32_t tinyops_stack_peak_bytes(void);                   // deepest stack use so far
void tinyops_exit(int code) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#endif  // TINYOPS_PLATFORM_H_
