// conv_direct.cl: convolution as plain loops, one work-item per output element. This is the baseline
// the im2col + GEMM path is measured against: every work-item re-reads its receptive field from global
// memory with irregular strides, and nothing is shared between neighbours.
//
// Sizes (C, COUT, GROUPS, ID..OW, PD..PW) are the GEOMETRY_ARGS arguments (common.cl's
// RUNTIME_SIZES); kernel size, stride, dilation and PAD_MODE are defines.
// -D HAS_BIAS         add bias[co]       -D HAS_RESIDUAL  add residual[r_offset + the element's
//                     offset in y]       -D ACT (ACT_A, ACT_B)  the activation, last (common.cl)
// NDRange: (OW, OH, batch * COUT * OD). Weight layout (COUT, C / GROUPS, KD, KH, KW).

#define RUNTIME_SIZES
#include "common.cl"


__kernel void conv_direct(__global const REAL* restrict x, const long x_offset,
                          __global const REAL* restrict weight, const long w_offset,
                          __global const REAL* restrict bias, const long b_offset,
                          __global const REAL* restrict residual, const long r_offset,
                          __global REAL* restrict y, const long y_offset, GEOMETRY_ARGS) {
    const int ow = get_global_id(0);
    const int oh = get_global_id(1);
    int od, co;
    idx_t nco, n;  // nco = n * COUT + co
    output_plane(GEO_PASS get_global_id(2), &od, &nco, &n, &co);
    const int c0 = (co / COUT_G) * CIN_G;

    // The receptive field's offsets inside one input plane, worked out once (-1: padding), so
    // that the loop over the channels only steps pointers (same order of additions as per tap).
    idx_t line_at[KD * KH], tap[KSIZE];
    input_lines(GEO_PASS od, oh, line_at);
#pragma unroll
    for (int r = 0; r < KD * KH; ++r) {  // r = kd * KH + kh
#pragma unroll
        for (int kw = 0; kw < KW; ++kw) {
            const int sw = source_coord(ow * SW - PW + kw * DW, IW);
            tap[r * KW + kw] = (line_at[r] < 0 || sw < 0) ? -1 : line_at[r] + sw;
        }
    }
    __global const REAL* plane = x + x_offset + n * (C * IN_SPATIAL) + (idx_t)c0 * IN_SPATIAL;
    __global const REAL* filter = weight + w_offset + (idx_t)co * (CIN_G * KSIZE);
    ACC sum = 0;
    for (int ci = 0; ci < CIN_G; ++ci, plane += IN_SPATIAL, filter += KSIZE) {
        // (an int bound: with INDEX_T=long, KSIZE is a long and Mesa's llvmpipe (LLVM 15) summed
        // nothing in this unrolled loop against it)
        // a tap in zero padding adds 0 * w, as torch: an Inf or NaN weight there gives NaN
#pragma unroll
        for (int t = 0; t < KD * KH * KW; ++t)
            sum += (tap[t] >= 0 ? (ACC)plane[tap[t]] : (ACC)0) * (ACC)filter[t];
    }
    const idx_t o = ((nco * OD + od) * OH + oh) * OW + ow;
    y[y_offset + o] = (REAL)epilogue_residual(sum, bias, b_offset, co, residual, r_offset + o);
}
