// Minimal Cortex-M startup for the tinyops firmware check: vector table, .data/.bss set-up, FPU
// enable, a painted stack (for the measured stack peak), C++ constructors, then main().
#include <stdint.h>

#include "tinyops_platform.h"

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__;
extern uint32_t __stack_limit__, __stack_top__;
extern void (*__preinit_array_start[])(void), (*__preinit_array_end[])(void);
extern void (*__init_array_start[])(void), (*__init_array_end[])(void);
int main(void);
void* __dso_handle = 0;  // C++ statics register destructors against it; main never returns here

#define STACK_PAINT 0xA5A5A5A5u

static void paint_stack(void) {
  uint32_t* sp;
  __asm__ volatile("mov %0, sp" : "=r"(sp));
  for (uint32_t* p = &__stack_limit__; p < sp - 16; ++p) *p = STACK_PAINT;
}

uint32_t tinyops_stack_peak_bytes(void) {
  const uint32_t* p = &__stack_limit__;
  while (p < &__stack_top__ && *p == STACK_PAINT) ++p;
  return (uint32_t)((const char*)&__stack_top__ - (const char*)p);
}

void Reset_Handler(void) {
  for (uint32_t *src = &__data_load__, *dst = &__data_start__; dst < &__data_end__;) *dst++ = *src++;
  for (uint32_t* dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
#if defined(__ARM_FP)
  *(volatile uint32_t*)0xE000ED88u |= 0xFu << 20;  // CPACR: full access to CP10 and CP11
  __asm__ volatile("dsb\n isb" ::: "memory");
#endif
  paint_stack();
  for (void (**f)(void) = __preinit_array_start; f < __preinit_array_end; ++f) (*f)();
  for (void (**f)(void) = __init_array_start; f < __init_array_end; ++f) (*f)();
  tinyops_exit(main());
}

static void Fault_Handler(void) { tinyops_exit(TINYOPS_EXIT_FAULT); }

__attribute__((section(".vectors"), used)) static void* const vectors[16] = {
    &__stack_top__, (void*)Reset_Handler, (void*)Fault_Handler, (void*)Fault_Handler,
    (void*)Fault_Handler, (void*)Fault_Handler, (void*)Fault_Handler, 0, 0, 0, 0,
    (void*)Fault_Handler, (void*)Fault_Handler, 0, (void*)Fault_Handler, (void*)Fault_Handler,
};
