// conv_direct.cl: convolution as plain loops, one work-item per output element. This is the baseline
// the im2col + GEMM path is measured against: every work-item re-reads its receptive field from global
// memory with irregular strides, and nothing is shared between neighbours.
//
// -D GROUPS, -D COUT  groups and output channels (C, the input channels, comes from common.cl)
// -D HAS_BIAS         add bias[co]       -D RELU  apply max(0, .) last (NaN stays NaN)
// NDRange: (OW, OH, batch * COUT * OD). Weight layout (COUT, C / GROUPS, KD, KH, KW).

#include "common.cl"


__kernel void conv_direct(__global const REAL* restrict x, const long x_offset,
                          __global const REAL* restrict weight, const long w_offset,
                          __global const REAL* restrict bias, const long b_offset,
                          __global REAL* restrict y, const long y_offset) {
    const int ow = get_global_id(0);
    const int oh = get_global_id(1);
    const idx_t ncd = get_global_id(2);  // batch * COUT * OD may pass 2**31 when INDEX_T is long
    const int od = ncd % OD;
    const idx_t nco = ncd / OD;  // n * COUT + co
    const int co = nco % COUT;
    const idx_t n = nco / COUT;
    const int c0 = (co / COUT_G) * CIN_G;

    __global const REAL* image = x + x_offset + n * (C * IN_SPATIAL);
    __global const REAL* filter = weight + w_offset + (idx_t)co * (CIN_G * KSIZE);
    ACC sum = 0;
    for (int ci = 0; ci < CIN_G; ++ci) {
        for (int kd = 0; kd < KD; ++kd) {
            for (int kh = 0; kh < KH; ++kh) {
                for (int kw = 0; kw < KW; ++kw) {
                    const idx_t src = input_offset(c0 + ci, od * SD - PD + kd * DD,
                                                   oh * SH - PH + kh * DH, ow * SW - PW + kw * DW);
                    if (src >= 0)
                        sum += (ACC)image[src] *
                               (ACC)filter[(((idx_t)ci * KD + kd) * KH + kh) * KW + kw];
                }
            }
        }
    }
    y[y_offset + ((nco * OD + od) * OH + oh) * OW + ow] =
        (REAL)epilogue_value(sum, bias, b_offset, co);
}
