/* Pack up to 32 neurons of contiguous rows into uint32 lanes: lanes[j] |= (x[c][j] > 0) << c.
 *
 * The loop is compiled twice on x86-64 GCC (AVX2 and baseline) and picked at load time
 * (target_clones), so wheels stay portable while AVX2 machines pack twice as many values
 * per instruction.
 */
#ifndef ONNX_STATE_PACK_H
#define ONNX_STATE_PACK_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define OS_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define OS_CLONES
#endif

#define OS_AHEAD 8

#define OS_DEFINE_PACK(NAME, T, FIRES, ISNAN)                                           \
    OS_CLONES static void NAME(const char *base, ptrdiff_t stride, int n, ptrdiff_t pn,  \
                               uint32_t *lanes, uint32_t *nans) {                       \
        for (int c = 0; c < n; c++) {                                                   \
            const T *row = (const T *)(base + c * stride);                              \
            const char *ahead = base + (c + OS_AHEAD) * stride;                         \
            for (ptrdiff_t b = 0; b < pn * (ptrdiff_t)sizeof(T); b += 64)               \
                __builtin_prefetch(ahead + b);                                          \
            for (ptrdiff_t j = 0; j < pn; j++) {                                        \
                T v = row[j];                                                           \
                nans[j] += (uint32_t)(ISNAN);                                           \
                lanes[j] |= ((uint32_t)(FIRES)) << c;                                   \
            }                                                                           \
        }                                                                               \
    }

OS_DEFINE_PACK(os_pack_f32, float, v > 0, v != v)
OS_DEFINE_PACK(os_pack_f64, double, v > 0, v != v)
OS_DEFINE_PACK(os_pack_u8, uint8_t, v != 0, 0)
/* float16 bits: > 0 iff sign clear, not zero, not NaN (positive NaNs lie above 0x7c00) */
OS_DEFINE_PACK(os_pack_f16, uint16_t, v != 0 && v <= 0x7c00, (v & 0x7fff) > 0x7c00)

#endif
