// splitk_reduce.cl: the second step of clconv.ops.splitk (see cl/gemm_splitk.cl): the K slices'
// partial products added in split order, then common.cl's epilogue:
//
//   C[z] = act(sum_s P[z][s] + bias + residual)   (P: [batch][nsplit][M][L], C: (batch, M, L))
//
// NDRange (L, M, batch), one output element a work-item. Defines: REAL/ACC (common.cl), HAS_BIAS,
// ACT (ACT_A, ACT_B), and RESIDUAL_AT_RUN_TIME: the residual (laid out as C) is added where its
// buffer is not NULL, so that layers with and without one share the program.

#include "common.cl"

__kernel void splitk_reduce(__global const REAL* restrict p, const long p_off, const int nsplit,
                            __global REAL* restrict y, const long y_off,
                            __global const REAL* restrict bias, const long b_off,
                            __global const REAL* restrict residual, const long r_off) {
    const int j = get_global_id(0);
    const int i = get_global_id(1);
    const long z = get_global_id(2);
    const int l = get_global_size(0), m = get_global_size(1);
    const long e = (long)i * l + j;  // the element within one M x L matrix
    __global const REAL* pz = p + p_off + z * nsplit * (long)m * l + e;
    ACC v = (ACC)0;
    for (int s = 0; s < nsplit; ++s) v += (ACC)pz[(long)s * m * l];
    const long o = z * (long)m * l + e;
    y[y_off + o] = (REAL)epilogue_residual(v, bias, b_off, i, residual, r_off + o);
}
