/* emulation shim for <mma.h> (core/backend/cuda/emu): nvcuda::wmma with every lane holding the
 * whole tile (fragments are opaque on the device, so code that uses them only through
 * load/store/mma/fill and element-wise loops over x[0..num_elements) computes the same thing).
 * Products accumulate in float in k order. store_matrix_sync writes from the warp's first lane
 * between two __syncwarp, so the 32 copies do not race. Shapes: 16x16x16 (half, bf16 -> float). */
#ifndef HYB_EMU_MMA_H
#define HYB_EMU_MMA_H
#include "cuda_fp16.h"
#include "cuda_bf16.h"
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    enum { rows = std::is_same<Use, matrix_b>::value ? K : M,
           cols = std::is_same<Use, matrix_a>::value ? K : N,
           num_elements = rows * cols };
    T x[num_elements]; /* row-major tile */
};
template <class U, int M, int N, int K, class T, class L, class V>
static inline void fill_fragment(fragment<U, M, N, K, T, L> &f, V v) {
    for (int i = 0; i < f.num_elements; i++) f.x[i] = T(v);
}
template <class U, int M, int N, int K, class T, class L>
static inline void load_matrix_sync(fragment<U, M, N, K, T, L> &f, const T *p, unsigned ldm) {
    typedef fragment<U, M, N, K, T, L> F;
    const bool col = std::is_same<L, col_major>::value;
    for (int r = 0; r < F::rows; r++)
        for (int c = 0; c < F::cols; c++) f.x[r * F::cols + c] = col ? p[c * ldm + r] : p[r * ldm + c];
}
template <int M, int N, int K, class T>
static inline void load_matrix_sync(fragment<accumulator, M, N, K, T> &f, const T *p, unsigned ldm, layout_t l) {
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++) f.x[r * N + c] = l == mem_col_major ? p[c * ldm + r] : p[r * ldm + c];
}
template <int M, int N, int K, class T>
static inline void store_matrix_sync(T *p, const fragment<accumulator, M, N, K, T> &f, unsigned ldm, layout_t l) {
    __syncwarp();
    if (threadIdx.x % 32 == __ffs(__activemask()) - 1)
        for (int r = 0; r < M; r++)
            for (int c = 0; c < N; c++) (l == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[r * N + c];
    __syncwarp();
}
template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
static inline void mma_sync(fragment<accumulator, M, N, K, TC> &d, const fragment<matrix_a, M, N, K, TA, LA> &a,
                            const fragment<matrix_b, M, N, K, TB, LB> &b, const fragment<accumulator, M, N, K, TC> &c) {
    TC out[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = (float)c.x[i * N + j];
            for (int k = 0; k < K; k++) acc += (float)a.x[i * K + k] * (float)b.x[k * N + j];
            out[i * N + j] = TC(acc);
        }
    for (int i = 0; i < M * N; i++) d.x[i] = out[i];
}
} // namespace wmma
} // namespace nvcuda
#endif
