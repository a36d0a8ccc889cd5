/* core/backend/cpu/cpu_quant.h: y = x W^T with W kept in GGUF blocks (issue 22, kernel half).
 *
 *   hyb_quant_config c = hyb_quant_get();          // mode from HYB_QUANT, scheme from HYB_QUANT_ACT
 *   hyb_cpu_quant_matmul(HYB_Q4_1, Wblocks, x, y, M, N, K, &c);   // y[M,N] = x[M,K] W[N,K]^T
 *
 * W: N rows of K/32 (or K/256) blocks, row-major, exactly the bytes of a GGUF tensor with
 * shape {N, K}. Supported weight types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
 * Q6_K
 * (hyb_quant_supported()).
 *
 * Activation paths (c->mode):
 *   PRECISE  x stays f32; each weight block is decoded to f32 in registers and multiplied with FMA.
 *            Differs from dequantise-then-f32-dot only by the order of f32 roundings.
 *   FAST     x is rounded on the fly to int8 per block of 32 values; the scale is per group of
 *            c->group values (4, 8, 16 or 32) = absmax/127 (f32, or rounded to f16 when
 *            c->f16_scale); the block products are integer (AVX2 maddubs/madd), then scaled in f32.
 *            Q4_1's offset term m * sum(x') uses the block sums of the rounded x' (= EMUL's).
 *   EMUL     the FAST scheme's rounding of x, emulated in f32: x' = dequant(quant(x)), then the
 *            PRECISE kernel. With group 32 + f16 scale this is llama.cpp's rounding of activations
 *            for these weight types; it exists to measure the error of a scheme apart from kernels.
 * M > HYB_QUANT_GEMV_MAX_M rows (prefill): W is decoded to f32 in tiles of rows and multiplied with
 * sgemm, in every mode (the activations stay f32 there).
 *
 * Instruction sets: the AVX2+FMA+F16C kernels are picked at run time from cpuid; the portable
 * scalar kernels compute the same lanes in the same order (fmaf where the SIMD code fuses), so the
 * two give bit-identical results (tests/test_quant.c checks every type and mode). HYB_QUANT_ISA=
 * scalar forces the portable path. */
#ifndef HYB_BACKEND_CPU_QUANT_H
#define HYB_BACKEND_CPU_QUANT_H
#include <stdint.h>

#include "hyb/tensor.h"

#define HYB_QUANT_GEMV_MAX_M 16

typedef enum hyb_quant_mode {
    HYB_QUANT_OFF = 0, /* the loader dequantises to f32 (today's behaviour) */
    HYB_QUANT_PRECISE,
    HYB_QUANT_FAST,
    HYB_QUANT_EMUL,
} hyb_quant_mode;

typedef enum hyb_quant_isa { HYB_QISA_AUTO = 0, HYB_QISA_SCALAR, HYB_QISA_AVX2 } hyb_quant_isa;

typedef struct hyb_quant_config {
    hyb_quant_mode mode;
    int group;      /* FAST/EMUL: values per activation scale: 4, 8, 16 or 32 */
    int f16_scale;  /* FAST/EMUL: round each scale to f16 (llama.cpp stores it so) */
    hyb_quant_isa isa;
} hyb_quant_config;

/* The process-wide setting: read once from the environment (HYB_QUANT=off|precise|fast|emul,
 * HYB_QUANT_ACT=g4|g8|g16|g32 with an optional 'h' suffix for f16 scales, default g4,
 * HYB_QUANT_ISA=auto|scalar), then changed only through hyb_quant_set(). */
hyb_quant_config hyb_quant_get(void);
void hyb_quant_set(const hyb_quant_config *c);
/* 1 when the mode was chosen: HYB_QUANT set in the environment, or hyb_quant_set called */
int hyb_quant_is_chosen(void);
/* Parse "off|precise|fast|emul" and "g<N>[h]"; HYB_OK or HYB_ERR_ARG naming the bad text. */
int hyb_quant_parse(const char *mode, const char *act, hyb_quant_config *c);
const char *hyb_quant_mode_name(hyb_quant_mode m);
/* 1 when the running CPU has AVX2, FMA and F16C. */
int hyb_quant_have_avx2(void);
/* 1 when hyb_cpu_quant_matmul computes from weights of this dtype. */
int hyb_quant_supported(hyb_dtype t);
/* Bytes of one row of K values of type t (K a multiple of the block size). */
int64_t hyb_quant_row_bytes(hyb_dtype t, int64_t K);

/* y[M,N] = x[M,K] W[N,K]^T. OpenMP over the rows of W when called outside a parallel region.
 * Returns HYB_OK, or an error (unsupported type, K not a multiple of 32, OOM, c->isa = AVX2 on a
 * CPU without it). */
int hyb_cpu_quant_matmul(hyb_dtype wt, const void *W, const float *x, float *y, int M, int N,
                         int K, const hyb_quant_config *c);

/* The activation rounding of FAST/EMUL for one row of K values (K % 32 == 0): q[K] int8,
 * scale[K/4] (one per 4 consecutive values: group > 4 repeats it). Exposed for the tests. */
void hyb_quant_act_row(const float *x, int K, int group, int f16_scale, int8_t *q, float *scale);
#endif
