/* Threshold and pack captured values into firing bits, for every dtype the counter reads.
 *
 * A neuron fires iff its value is > 0 (floats; NaN never fires), > its zero point
 * (integers), or its bit is set (pre-packed bytes). Three layouts of a block of positions:
 *
 * - lanes:   each neuron's positions are contiguous (NCHW conv maps): up to 32 neurons go
 *            into uint32 lanes, lanes[j] |= fires(x[c][j]) << c. A plain loop compiled twice
 *            on x86-64 GCC (AVX2 and baseline, picked at load time by target_clones).
 * - rows:    each position's neurons are contiguous (neurons last: MatMul, Gemm, LSTM,
 *            NHWC): compare a vector of values, movemask it to bits, store the bytes. Explicit
 *            AVX2 where the CPU has it (checked once in os_init), a portable loop elsewhere.
 * - strided: anything else (broadcast, stepped or transposed views), one value at a time.
 *
 * Integer thresholds come as one zero point per neuron, in the value's own type, so every
 * comparison is exact. Words are little-endian: neuron c is bit c % 8 of byte c / 8.
 */
#ifndef ONNX_STATE_PACK_H
#define ONNX_STATE_PACK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define OS_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define OS_CLONES
#endif

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define OS_X86 1
#include <immintrin.h>
#define OS_AVX2 __attribute__((target("avx2")))
#endif

/* Value kinds. bool is read as OS_U8 with zero points 0 (v > 0 iff v != 0 for unsigned). */
enum {
    OS_F32, OS_F64, OS_F16, OS_I8, OS_U8, OS_I16, OS_U16, OS_I32, OS_U32, OS_I64, OS_KINDS
};

typedef void (*os_lanes_fn)(const char *base, ptrdiff_t stride, int n, ptrdiff_t pn,
                            const void *zp, uint32_t *lanes, uint32_t *nans);
typedef void (*os_rows_fn)(const char *base, ptrdiff_t sp, ptrdiff_t pn, ptrdiff_t neurons,
                           const void *zp, uint64_t *out, ptrdiff_t nwords, int64_t *nans);
typedef void (*os_strided_fn)(const char *base, ptrdiff_t sc, ptrdiff_t sp, ptrdiff_t pn,
                              ptrdiff_t neurons, const void *zp, uint64_t *out,
                              ptrdiff_t nwords, int64_t *nans);

typedef struct {
    os_lanes_fn lanes;
    os_rows_fn rows;
    os_strided_fn strided;
} os_kernels;

#define OS_AHEAD 8

/* lanes: *zp points at the zero point of neuron 0 of this group of n <= 32 (NULL: floats) */
#define OS_DEFINE_LANES(NAME, T, FIRES, ISNAN)                                          \
    OS_CLONES static void NAME(const char *base, ptrdiff_t stride, int n, ptrdiff_t pn, \
                               const void *zpv, uint32_t *lanes, uint32_t *nans) {      \
        const T *zp = (const T *)zpv;                                                   \
        for (int c = 0; c < n; c++) {                                                   \
            const T *row = (const T *)(base + c * stride);                              \
            const char *ahead = base + (c + OS_AHEAD) * stride;                         \
            const T z = zp ? zp[c] : (T)0;                                              \
            (void)z;                                                                    \
            for (ptrdiff_t b = 0; b < pn * (ptrdiff_t)sizeof(T); b += 64)               \
                __builtin_prefetch(ahead + b);                                          \
            for (ptrdiff_t j = 0; j < pn; j++) {                                        \
                T v = row[j];                                                           \
                nans[j] += (uint32_t)(ISNAN);                                           \
                lanes[j] |= ((uint32_t)(FIRES)) << c;                                   \
            }                                                                           \
        }                                                                               \
    }

/* strided: pn positions sp bytes apart, neurons sc bytes apart; ORs bits into out, which
 * the caller zeroed. Loops in the order of the smaller stride. */
#define OS_DEFINE_STRIDED(NAME, T, FIRES, ISNAN)                                          \
    static void NAME(const char *base, ptrdiff_t sc, ptrdiff_t sp, ptrdiff_t pn,          \
                     ptrdiff_t neurons, const void *zpv, uint64_t *out, ptrdiff_t nwords, \
                     int64_t *nans) {                                                     \
        const T *zp = (const T *)zpv;                                                     \
        int64_t nn = 0;                                                                   \
        if ((sc < 0 ? -sc : sc) <= (sp < 0 ? -sp : sp)) {                                 \
            for (ptrdiff_t j = 0; j < pn; j++)                                            \
                for (ptrdiff_t c = 0; c < neurons; c++) {                                 \
                    T v = *(const T *)(base + j * sp + c * sc);                           \
                    const T z = zp ? zp[c] : (T)0;                                        \
                    (void)z;                                                              \
                    nn += (ISNAN);                                                        \
                    out[j * nwords + (c >> 6)] |= ((uint64_t)(FIRES)) << (c & 63);        \
                }                                                                         \
        } else {                                                                          \
            for (ptrdiff_t c = 0; c < neurons; c++) {                                     \
                const T z = zp ? zp[c] : (T)0;                                            \
                (void)z;                                                                  \
                for (ptrdiff_t j = 0; j < pn; j++) {                                      \
                    T v = *(const T *)(base + j * sp + c * sc);                           \
                    nn += (ISNAN);                                                        \
                    out[j * nwords + (c >> 6)] |= ((uint64_t)(FIRES)) << (c & 63);        \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
        *nans += nn;                                                                      \
    }

/* A step turns STEP contiguous values (and their zero points) into STEP bits. */
#define OS_DEFINE_STEP(NAME, T, STEP, FIRES, ISNAN)                                    \
    static inline uint32_t NAME(const T *x, const T *zp, uint32_t *anynan) {           \
        uint32_t bits = 0, nan = 0;                                                    \
        for (int i = 0; i < STEP; i++) {                                               \
            T v = x[i];                                                                \
            const T z = zp ? zp[i] : (T)0;                                             \
            (void)z;                                                                   \
            bits |= ((uint32_t)(FIRES)) << i;                                          \
            nan |= (uint32_t)(ISNAN);                                                  \
        }                                                                              \
        *anynan |= nan;                                                                \
        return bits;                                                                   \
    }

/* rows: pn positions sp bytes apart, each with `neurons` contiguous values. Whole steps
 * are vector compares read in place; the last partial step is read value by value, so no
 * read goes past the row. A row with a NaN is counted again, value by value. */
#define OS_DEFINE_ROWS(NAME, ATTR, T, STEP, STEPFN, FIRES, ISNAN)                         \
    ATTR static void NAME(const char *base, ptrdiff_t sp, ptrdiff_t pn, ptrdiff_t neurons, \
                          const void *zpv, uint64_t *out, ptrdiff_t nwords,                \
                          int64_t *nans) {                                                 \
        const T *zp = (const T *)zpv;                                                      \
        const ptrdiff_t rem = neurons % STEP, full = neurons - rem;                        \
        int64_t nn = 0;                                                                    \
        for (ptrdiff_t p = 0; p < pn; p++) {                                               \
            const T *row = (const T *)(base + p * sp);                                     \
            uint8_t *o = (uint8_t *)(out + p * nwords);                                    \
            uint32_t anynan = 0, bits;                                                     \
            for (ptrdiff_t c = 0; c < full; c += STEP) {                                   \
                bits = STEPFN(row + c, zp ? zp + c : zp, &anynan);                         \
                memcpy(o + c / 8, &bits, STEP / 8);                                        \
            }                                                                              \
            if (rem) {                                                                     \
                bits = 0;                                                                  \
                for (ptrdiff_t i = 0; i < rem; i++) {                                      \
                    T v = row[full + i];                                                   \
                    const T z = zp ? zp[full + i] : (T)0;                                  \
                    (void)z;                                                               \
                    bits |= ((uint32_t)(FIRES)) << i;                                      \
                    anynan |= (uint32_t)(ISNAN);                                           \
                }                                                                          \
                o[full / 8] = (uint8_t)bits;                                               \
                if (rem > 8)                                                               \
                    o[full / 8 + 1] = (uint8_t)(bits >> 8);                                \
            }                                                                              \
            if (anynan)                                                                    \
                for (ptrdiff_t c = 0; c < neurons; c++) {                                  \
                    T v = row[c];                                                          \
                    (void)v;                                                               \
                    nn += (ISNAN);                                                         \
                }                                                                          \
        }                                                                                  \
        *nans += nn;                                                                       \
    }

/* float16 bits: > 0 iff sign clear, not zero, not NaN (positive NaNs lie above 0x7c00) */
#define OS_F16_FIRES (v != 0 && v <= 0x7c00)
#define OS_F16_ISNAN ((v & 0x7fff) > 0x7c00)
#define OS_GT (v > z)

#define OS_DEFINE_KIND(SUFFIX, T, FIRES, ISNAN)                                 \
    OS_DEFINE_LANES(os_lanes_##SUFFIX, T, FIRES, ISNAN)                         \
    OS_DEFINE_STRIDED(os_strided_##SUFFIX, T, FIRES, ISNAN)                     \
    OS_DEFINE_STEP(os_step_##SUFFIX, T, 8, FIRES, ISNAN)                        \
    OS_DEFINE_ROWS(os_rows_##SUFFIX, , T, 8, os_step_##SUFFIX, FIRES, ISNAN)

OS_DEFINE_KIND(f32, float, v > 0, v != v)
OS_DEFINE_KIND(f64, double, v > 0, v != v)
OS_DEFINE_KIND(f16, uint16_t, OS_F16_FIRES, OS_F16_ISNAN)
OS_DEFINE_KIND(i8, int8_t, OS_GT, 0)
OS_DEFINE_KIND(u8, uint8_t, OS_GT, 0)
OS_DEFINE_KIND(i16, int16_t, OS_GT, 0)
OS_DEFINE_KIND(u16, uint16_t, OS_GT, 0)
OS_DEFINE_KIND(i32, int32_t, OS_GT, 0)
OS_DEFINE_KIND(u32, uint32_t, OS_GT, 0)
OS_DEFINE_KIND(i64, int64_t, OS_GT, 0)

#ifdef OS_X86
/* AVX2 steps: compare a vector, movemask the lanes to bits. Unsigned values compare as
 * signed after flipping the top bit of both sides. */
OS_AVX2 static inline uint32_t os_avx2_f32(const float *x, const float *zp, uint32_t *nan) {
    (void)zp;
    __m256 v = _mm256_loadu_ps(x);
    *nan |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ));
}

OS_AVX2 static inline uint32_t os_avx2_f64(const double *x, const double *zp, uint32_t *nan) {
    (void)zp;
    __m256d a = _mm256_loadu_pd(x), b = _mm256_loadu_pd(x + 4), z = _mm256_setzero_pd();
    *nan |= (uint32_t)(_mm256_movemask_pd(_mm256_cmp_pd(a, a, _CMP_UNORD_Q)) |
                       _mm256_movemask_pd(_mm256_cmp_pd(b, b, _CMP_UNORD_Q)));
    return (uint32_t)(_mm256_movemask_pd(_mm256_cmp_pd(a, z, _CMP_GT_OQ)) |
                      (_mm256_movemask_pd(_mm256_cmp_pd(b, z, _CMP_GT_OQ)) << 4));
}

/* 16 lanes of 0 / -1 (int16) -> 16 bits */
OS_AVX2 static inline uint32_t os_avx2_bits16(__m256i m) {
    uint32_t mm = (uint32_t)_mm256_movemask_epi8(_mm256_packs_epi16(m, m));
    return (mm & 0xFFu) | ((mm >> 8) & 0xFF00u);
}

OS_AVX2 static inline uint32_t os_avx2_f16(const uint16_t *x, const uint16_t *zp,
                                           uint32_t *nan) {
    (void)zp;
    __m256i v = _mm256_loadu_si256((const __m256i *)x);
    __m256i pos = _mm256_cmpgt_epi16(v, _mm256_setzero_si256());
    __m256i fin = _mm256_cmpgt_epi16(_mm256_set1_epi16(0x7c01), v);
    __m256i mag = _mm256_and_si256(v, _mm256_set1_epi16(0x7fff));
    *nan |= (uint32_t)_mm256_movemask_epi8(_mm256_cmpgt_epi16(mag, _mm256_set1_epi16(0x7c00)));
    return os_avx2_bits16(_mm256_and_si256(pos, fin));
}

OS_AVX2 static inline uint32_t os_avx2_i16(const int16_t *x, const int16_t *zp, uint32_t *nan) {
    (void)nan;
    __m256i v = _mm256_loadu_si256((const __m256i *)x);
    __m256i z = _mm256_loadu_si256((const __m256i *)zp);
    return os_avx2_bits16(_mm256_cmpgt_epi16(v, z));
}

OS_AVX2 static inline uint32_t os_avx2_u16(const uint16_t *x, const uint16_t *zp,
                                           uint32_t *nan) {
    (void)nan;
    __m256i flip = _mm256_set1_epi16((short)0x8000);
    __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)x), flip);
    __m256i z = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)zp), flip);
    return os_avx2_bits16(_mm256_cmpgt_epi16(v, z));
}

OS_AVX2 static inline uint32_t os_avx2_i8(const int8_t *x, const int8_t *zp, uint32_t *nan) {
    (void)nan;
    __m128i v = _mm_loadu_si128((const __m128i *)x);
    __m128i z = _mm_loadu_si128((const __m128i *)zp);
    return (uint32_t)_mm_movemask_epi8(_mm_cmpgt_epi8(v, z));
}

OS_AVX2 static inline uint32_t os_avx2_u8(const uint8_t *x, const uint8_t *zp, uint32_t *nan) {
    (void)nan;
    __m128i flip = _mm_set1_epi8((char)0x80);
    __m128i v = _mm_xor_si128(_mm_loadu_si128((const __m128i *)x), flip);
    __m128i z = _mm_xor_si128(_mm_loadu_si128((const __m128i *)zp), flip);
    return (uint32_t)_mm_movemask_epi8(_mm_cmpgt_epi8(v, z));
}

OS_AVX2 static inline uint32_t os_avx2_i32(const int32_t *x, const int32_t *zp, uint32_t *nan) {
    (void)nan;
    __m256i v = _mm256_loadu_si256((const __m256i *)x);
    __m256i z = _mm256_loadu_si256((const __m256i *)zp);
    return (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(v, z)));
}

OS_AVX2 static inline uint32_t os_avx2_u32(const uint32_t *x, const uint32_t *zp,
                                           uint32_t *nan) {
    (void)nan;
    __m256i flip = _mm256_set1_epi32((int)0x80000000u);
    __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)x), flip);
    __m256i z = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)zp), flip);
    return (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(v, z)));
}

OS_AVX2 static inline uint32_t os_avx2_i64(const int64_t *x, const int64_t *zp, uint32_t *nan) {
    (void)nan;
    __m256i a = _mm256_loadu_si256((const __m256i *)x);
    __m256i b = _mm256_loadu_si256((const __m256i *)(x + 4));
    __m256i za = _mm256_loadu_si256((const __m256i *)zp);
    __m256i zb = _mm256_loadu_si256((const __m256i *)(zp + 4));
    return (uint32_t)(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(a, za))) |
                      (_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(b, zb))) << 4));
}

OS_DEFINE_ROWS(os_rows_avx2_f32, OS_AVX2, float, 8, os_avx2_f32, v > 0, v != v)
OS_DEFINE_ROWS(os_rows_avx2_f64, OS_AVX2, double, 8, os_avx2_f64, v > 0, v != v)
OS_DEFINE_ROWS(os_rows_avx2_f16, OS_AVX2, uint16_t, 16, os_avx2_f16, OS_F16_FIRES, OS_F16_ISNAN)
OS_DEFINE_ROWS(os_rows_avx2_i8, OS_AVX2, int8_t, 16, os_avx2_i8, OS_GT, 0)
OS_DEFINE_ROWS(os_rows_avx2_u8, OS_AVX2, uint8_t, 16, os_avx2_u8, OS_GT, 0)
OS_DEFINE_ROWS(os_rows_avx2_i16, OS_AVX2, int16_t, 16, os_avx2_i16, OS_GT, 0)
OS_DEFINE_ROWS(os_rows_avx2_u16, OS_AVX2, uint16_t, 16, os_avx2_u16, OS_GT, 0)
OS_DEFINE_ROWS(os_rows_avx2_i32, OS_AVX2, int32_t, 8, os_avx2_i32, OS_GT, 0)
OS_DEFINE_ROWS(os_rows_avx2_u32, OS_AVX2, uint32_t, 8, os_avx2_u32, OS_GT, 0)
OS_DEFINE_ROWS(os_rows_avx2_i64, OS_AVX2, int64_t, 8, os_avx2_i64, OS_GT, 0)
#endif

static os_kernels os_table[OS_KINDS];
static int os_avx2 = 0;

#define OS_SET(KIND, SUFFIX)                                                            \
    os_table[KIND].lanes = os_lanes_##SUFFIX;                                           \
    os_table[KIND].rows = os_rows_##SUFFIX;                                             \
    os_table[KIND].strided = os_strided_##SUFFIX;

/* Fill the kernel table once, at import: the rows kernels follow the CPU. */
static void os_init(void) {
    OS_SET(OS_F32, f32) OS_SET(OS_F64, f64) OS_SET(OS_F16, f16) OS_SET(OS_I8, i8)
    OS_SET(OS_U8, u8) OS_SET(OS_I16, i16) OS_SET(OS_U16, u16) OS_SET(OS_I32, i32)
    OS_SET(OS_U32, u32) OS_SET(OS_I64, i64)
#ifdef OS_X86
    __builtin_cpu_init();
    os_avx2 = __builtin_cpu_supports("avx2");
    if (os_avx2) {
        os_table[OS_F32].rows = os_rows_avx2_f32;
        os_table[OS_F64].rows = os_rows_avx2_f64;
        os_table[OS_F16].rows = os_rows_avx2_f16;
        os_table[OS_I8].rows = os_rows_avx2_i8;
        os_table[OS_U8].rows = os_rows_avx2_u8;
        os_table[OS_I16].rows = os_rows_avx2_i16;
        os_table[OS_U16].rows = os_rows_avx2_u16;
        os_table[OS_I32].rows = os_rows_avx2_i32;
        os_table[OS_U32].rows = os_rows_avx2_u32;
        os_table[OS_I64].rows = os_rows_avx2_i64;
    }
#endif
}

static os_kernels os_kernel(int kind) { return os_table[kind]; }

/* For tests: force the portable rows kernels (0) or the CPU's best (1). */
static int os_use_simd(int on) {
    int was = os_table[OS_F32].rows != os_rows_f32;
    if (on)
        os_init();
    else {
        OS_SET(OS_F32, f32) OS_SET(OS_F64, f64) OS_SET(OS_F16, f16) OS_SET(OS_I8, i8)
        OS_SET(OS_U8, u8) OS_SET(OS_I16, i16) OS_SET(OS_U16, u16) OS_SET(OS_I32, i32)
        OS_SET(OS_U32, u32) OS_SET(OS_I64, i64)
    }
    return was;
}

/* Pre-packed bytes (np.packbits(bitorder='little') along the neuron axis): copied, never
 * unpacked. `last` masks the pad bits of the last byte, which are ignored, as
 * np.unpackbits(count=neurons) ignores them. out is zeroed by the caller. */
static void os_packed_rows(const char *base, ptrdiff_t sp, ptrdiff_t pn, ptrdiff_t nbytes,
                           uint8_t last, uint64_t *out, ptrdiff_t nwords) {
    for (ptrdiff_t p = 0; p < pn; p++) {
        uint8_t *o = (uint8_t *)(out + p * nwords);
        const uint8_t *row = (const uint8_t *)(base + p * sp);
        if (nbytes <= 8) {
            uint64_t w = 0;
            memcpy(&w, row, (size_t)nbytes);
            memcpy(o, &w, 8);
        } else {
            memcpy(o, row, (size_t)nbytes);
        }
        o[nbytes - 1] &= last;
    }
}

static void os_packed_strided(const char *base, ptrdiff_t sc, ptrdiff_t sp, ptrdiff_t pn,
                              ptrdiff_t nbytes, uint8_t last, uint64_t *out,
                              ptrdiff_t nwords) {
    if ((sc < 0 ? -sc : sc) <= (sp < 0 ? -sp : sp)) {
        for (ptrdiff_t p = 0; p < pn; p++) {
            uint8_t *o = (uint8_t *)(out + p * nwords);
            for (ptrdiff_t j = 0; j < nbytes; j++)
                o[j] = *(const uint8_t *)(base + p * sp + j * sc);
            o[nbytes - 1] &= last;
        }
    } else { /* byte j of every position is a row (contiguous when sp == 1) */
        const ptrdiff_t step = nwords * 8;
        for (ptrdiff_t j = 0; j < nbytes; j++) {
            const char *row = base + j * sc;
            uint8_t *o = (uint8_t *)out + j;
            const uint8_t mask = j == nbytes - 1 ? last : 0xFF;
            for (ptrdiff_t p = 0; p < pn; p++)
                o[p * step] = *(const uint8_t *)(row + p * sp) & mask;
        }
    }
}

#endif
