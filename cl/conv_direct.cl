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
    const idx_t ncd = get_global_id(2);  // batch * COUT * OD may pass 2**31 when INDEX_T is long
    // A division pair per work-item at most (the z of a work-group is uniform): none for OD when it
    // is 1, none for the image in the first one.
    const int od = (OD == 1) ? 0 : (int)(ncd % OD);
    const idx_t nco = (OD == 1) ? ncd : ncd / OD;  // n * COUT + co
    const idx_t n = (nco < COUT) ? 0 : nco / COUT;  // (no division for the first image)
    const int co = (int)(nco - n * COUT);
    const int c0 = (co / COUT_G) * CIN_G;

    // The receptive field's offsets inside one input plane, worked out once (-1: padding), so
    // that the loop over the channels only steps pointers (same order of additions as per tap).
    idx_t tap[KSIZE];
#pragma unroll
    for (int kd = 0; kd < KD; ++kd) {
        const int sd = source_coord(od * SD - PD + kd * DD, ID);
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) {
            const int sh = source_coord(oh * SH - PH + kh * DH, IH);
#pragma unroll
            for (int kw = 0; kw < KW; ++kw) {
                const int sw = source_coord(ow * SW - PW + kw * DW, IW);
                tap[(kd * KH + kh) * KW + kw] =
                    (sd < 0 || sh < 0 || sw < 0) ? -1 : ((idx_t)sd * IH + sh) * IW + sw;
            }
        }
    }
    __global const REAL* plane = x + x_offset + n * (C * IN_SPATIAL) + (idx_t)c0 * IN_SPATIAL;
    __global const REAL* filter = weight + w_offset + (idx_t)co * (CIN_G * KSIZE);
    ACC sum = 0;
    for (int ci = 0; ci < CIN_G; ++ci, plane += IN_SPATIAL, filter += KSIZE) {
#pragma unroll
        for (int t = 0; t < KSIZE; ++t)
            if (tap[t] >= 0) sum += (ACC)plane[tap[t]] * (ACC)filter[t];
    }
    const idx_t o = ((nco * OD + od) * OH + oh) * OW + ow;
    y[y_offset + o] = (REAL)epilogue_residual(sum, bias, b_offset, co, residual, r_offset + o);
}
