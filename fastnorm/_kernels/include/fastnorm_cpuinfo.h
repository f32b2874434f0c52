/* x86 CPU features the kernel targets need, read with CPUID and checked against the OS (XGETBV), so a
 * target is chosen only if both the CPU and the OS (saved AVX / AVX-512 register state) support it.
 * fn_cpu_features() sets one bit per FN_F_* feature; on other architectures or compilers it returns 0
 * (only the baseline target is then built and chosen). This file must compile for the baseline ISA.
 */
#ifndef FASTNORM_CPUINFO_H
#define FASTNORM_CPUINFO_H

enum {
    FN_F_SSE3 = 1u << 0, FN_F_SSSE3 = 1u << 1, FN_F_SSE4_1 = 1u << 2, FN_F_SSE4_2 = 1u << 3,
    FN_F_POPCNT = 1u << 4, FN_F_CX16 = 1u << 5, FN_F_LAHF = 1u << 6, FN_F_AVX = 1u << 7,
    FN_F_AVX2 = 1u << 8, FN_F_FMA = 1u << 9, FN_F_F16C = 1u << 10, FN_F_BMI1 = 1u << 11,
    FN_F_BMI2 = 1u << 12, FN_F_LZCNT = 1u << 13, FN_F_MOVBE = 1u << 14, FN_F_XSAVE = 1u << 15,
    FN_F_AVX512F = 1u << 16, FN_F_AVX512DQ = 1u << 17, FN_F_AVX512CD = 1u << 18, FN_F_AVX512BW = 1u << 19,
    FN_F_AVX512VL = 1u << 20
};

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define FN_CPUINFO_X86 1

static inline unsigned long long fn_xgetbv0(void) {
    unsigned int lo, hi;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));  /* xgetbv, ecx = 0 */
    return ((unsigned long long)hi << 32) | lo;
}

static inline unsigned int fn_cpu_features(void) {
    unsigned int a, b, c, d, f = 0, max_leaf = __get_cpuid_max(0, 0);
    if (max_leaf < 1 || !__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (c & (1u << 0)) f |= FN_F_SSE3;
    if (c & (1u << 9)) f |= FN_F_SSSE3;
    if (c & (1u << 12)) f |= FN_F_FMA;
    if (c & (1u << 13)) f |= FN_F_CX16;
    if (c & (1u << 19)) f |= FN_F_SSE4_1;
    if (c & (1u << 20)) f |= FN_F_SSE4_2;
    if (c & (1u << 22)) f |= FN_F_MOVBE;
    if (c & (1u << 23)) f |= FN_F_POPCNT;
    if (c & (1u << 26)) f |= FN_F_XSAVE;
    if (c & (1u << 28)) f |= FN_F_AVX;
    if (c & (1u << 29)) f |= FN_F_F16C;
    int osxsave = (c >> 27) & 1;
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        if (b & (1u << 3)) f |= FN_F_BMI1;
        if (b & (1u << 5)) f |= FN_F_AVX2;
        if (b & (1u << 8)) f |= FN_F_BMI2;
        if (b & (1u << 16)) f |= FN_F_AVX512F;
        if (b & (1u << 17)) f |= FN_F_AVX512DQ;
        if (b & (1u << 28)) f |= FN_F_AVX512CD;
        if (b & (1u << 30)) f |= FN_F_AVX512BW;
        if (b & (1u << 31)) f |= FN_F_AVX512VL;
    }
    if (__get_cpuid(0x80000001u, &a, &b, &c, &d)) {
        if (c & (1u << 0)) f |= FN_F_LAHF;
        if (c & (1u << 5)) f |= FN_F_LZCNT;
    }
    /* The OS must save the vector registers: XCR0 bits 1-2 (SSE, AVX) for AVX, and 5-7 (opmask, upper
     * ZMM0-15, ZMM16-31) for AVX-512. */
    unsigned long long xcr0 = osxsave ? fn_xgetbv0() : 0;
    const unsigned int avx_bits = FN_F_AVX | FN_F_AVX2 | FN_F_FMA | FN_F_F16C;
    const unsigned int avx512_bits = FN_F_AVX512F | FN_F_AVX512DQ | FN_F_AVX512CD | FN_F_AVX512BW | FN_F_AVX512VL;
    if ((xcr0 & 0x6) != 0x6) f &= ~(avx_bits | avx512_bits);
    if ((xcr0 & 0xe6) != 0xe6) f &= ~avx512_bits;
    return f;
}
#else
#define FN_CPUINFO_X86 0
static inline unsigned int fn_cpu_features(void) { return 0; }
#endif

#endif
