// pack_a.cl: packs the left operand of gemm_packed.cl (a convolution's filters, a linear layer's
// weight) into its MR-row micro-panels, MR given at run time.
//
//   op(A[z]) (m x k; row-major with leading dim lda; A^T stored k x m when transposed)
//     -> [ceil(m / mr)][k][mr] at ap + ap_off + z * ap_stride (rows past m zero)
//
// The tile's MR is an argument, not a define, so that one program packs for every tile of a
// network (a 7x7 stem's MR = 8 and the 3x3 layers' MR = 16 alike): PoCL compiles each kernel again
// at its first launch (0.4-1.0 s for gemm_packed.cl's MR-unrolled pack_a, measured on AVX-512),
// and A is packed once per weight version, so the plain loops cost little.
// NDRange (ceil(k / K_RUN), ceil(m / mr), batch), local size 1: a work-item copies K_RUN
// consecutive k of one panel's mr rows (contiguous runs of A's rows, or of A^T's when transposed)
// into the panel's K_RUN * mr consecutive values, written in order. K_RUN = PACK_A_K (32) for A,
// PACK_A_K_T (8) for A^T: measured on a 512 x 4608 filter, A 0.80 ms (1.6 ms with 8 k a
// work-item written row by row), A^T 0.71 ms (1.1 ms with 32).
// Defines: REAL (common.cl).

#include "common.cl"

#define PACK_A_K 32   // k a work-item copies (the host's clconv.blas.packed.PACK_A_K)
#define PACK_A_K_T 8  // ... when A is given transposed (the host's packed.PACK_A_K_T)

// A whole run (PACK_A_K k) of a whole panel when mr == MRV: the same copy as the loop at the end
// of pack_a, a k's MRV values gathered into a private vector and stored as one (ResNet's 256 x
// 2304 filters, MR 16: 0.10-0.11 -> 0.05-0.06 ms; the row loop merely unrolled, with scalar
// stores, measured 0.48-0.51 ms).
#define PACK_WHOLE_RUN(MRV)                                                      \
    if (mr == MRV && rows == MRV && kn == PACK_A_K) {                            \
        for (int q = 0; q < PACK_A_K; ++q) {                                     \
            REAL v_[MRV];                                                        \
            _Pragma("unroll") for (int i = 0; i < MRV; ++i)                      \
                v_[i] = block[(long)i * lda + q];                                \
            vstore##MRV(vload##MRV(0, v_), q, dst);                              \
        }                                                                        \
        return;                                                                  \
    }

__kernel void pack_a(const int m, const int k, __global const REAL* restrict a, const long a_off,
                     const long a_stride, const long lda, const int transposed,
                     __global REAL* restrict ap, const long ap_off, const long ap_stride,
                     const int mr) {
    const int panel = get_global_id(1);
    const int r0 = panel * mr;
    const int run = transposed ? PACK_A_K_T : PACK_A_K;
    const int p0 = get_global_id(0) * run;
    const long z = get_global_id(2);
    __global const REAL* src = a + a_off + z * a_stride;
    __global REAL* dst = ap + ap_off + z * ap_stride + ((long)panel * k + p0) * mr;
    const int kn = min(run, k - p0);
    const int rows = min(mr, m - r0);  // real rows of the panel; the others are zero
    if (transposed) {  // A^T is k x m: a panel's values of one k are adjacent in memory
        for (int q = 0; q < kn; ++q) {
            __global const REAL* col = src + (long)(p0 + q) * lda + r0;
            for (int i = 0; i < rows; ++i) dst[q * mr + i] = col[i];
            for (int i = rows; i < mr; ++i) dst[q * mr + i] = (REAL)0;
        }
        return;
    }
    __global const REAL* block = src + (long)r0 * lda + p0;
    // Whole runs of whole panels of the AVX-512 tiles (MR 16, 8): one vector store a k
    PACK_WHOLE_RUN(16)
    PACK_WHOLE_RUN(8)
    for (int q = 0; q < kn; ++q) {  // the destination in order; the rows' runs stay cached
        for (int i = 0; i < rows; ++i) dst[q * mr + i] = block[(long)i * lda + q];
        for (int i = rows; i < mr; ++i) dst[q * mr + i] = (REAL)0;
    }
}
