// The harness's platform under QEMU: ARM semihosting (bkpt 0xAB) for files, console and exit.
#include <string.h>

#include "tinyops_platform.h"

enum { SYS_OPEN = 0x01, SYS_CLOSE = 0x02, SYS_WRITE0 = 0x04, SYS_WRITE = 0x05, SYS_READ = 0x06,
       SYS_EXIT_EXTENDED = 0x20 };
enum { MODE_RB = 1, MODE_WB = 5, ADP_STOPPED_APPLICATION_EXIT = 0x20026 };

static int semihost(int op, void* arg) {
  register int r0 __asm__("r0") = op;
  register void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

static int in_fd = -1, out_fd = -1;

static int open_file(const char* name, int mode) {
  int args[3] = {(int)name, mode, (int)strlen(name)};
  return semihost(SYS_OPEN, args);
}

int tinyops_open_io(void) {
  in_fd = open_file("tinyops_in.bin", MODE_RB);
  out_fd = open_file("tinyops_out.bin", MODE_WB);
  return (in_fd < 0 || out_fd < 0) ? -1 : 0;
}

int tinyops_read(void* buffer, size_t bytes) {
  int args[3] = {in_fd, (int)buffer, (int)bytes};
  return semihost(SYS_READ, args);  // the number of bytes *not* read
}

int tinyops_write(const void* buffer, size_t bytes) {
  int args[3] = {out_fd, (int)buffer, (int)bytes};
  return semihost(SYS_WRITE, args);
}

void tinyops_log(const char* text) { semihost(SYS_WRITE0, (void*)text); }

// Its address is where the instruction-counting QEMU plugin takes a reading: keep it a real call.
__attribute__((noinline)) void tinyops_mark(void) { __asm__ volatile("" ::: "memory"); }

void tinyops_exit(int code) {
  if (out_fd >= 0) semihost(SYS_CLOSE, &out_fd);
  int args[2] = {ADP_STOPPED_APPLICATION_EXIT, code};
  for (;;) semihost(SYS_EXIT_EXTENDED, args);
}
