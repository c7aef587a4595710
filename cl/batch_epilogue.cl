// batch_epilogue.cl: the last step of the im2col path when a chunk's images were folded into the
// GEMM's N: moves the GEMM result R (channels x images * spatial, image i in columns
// [i * spatial, (i + 1) * spatial)) into the output y (images, channels, spatial), adding bias[c]
// (-D HAS_BIAS), the residual's element (-D HAS_RESIDUAL: an operand of y's shape from res_offset) and
// applying the activation (-D ACT) on the way (common.cl's epilogue_residual): one pass, reads and
// writes both contiguous along spatial.
// Sizes are arguments (a new batch or image size builds nothing). NDRange: (spatial, channels, images).

#include "common.cl"

__kernel void batch_epilogue(__global const REAL* restrict r, const long r_offset,
                             __global REAL* restrict y, const long y_offset,
                             __global const REAL* restrict bias, const long b_offset,
                             __global const REAL* restrict residual, const long res_offset,
                             const long spatial) {
    const idx_t s = get_global_id(0);  // spatial may pass 2**31 when INDEX_T is long
    const int c = get_global_id(1);
    const idx_t i = get_global_id(2);
    const idx_t channels = get_global_size(1);
    const idx_t images = get_global_size(2);
    const ACC v = (ACC)r[r_offset + ((idx_t)c * images + i) * (idx_t)spatial + s];
    const idx_t e = ((idx_t)i * channels + c) * (idx_t)spatial + s;
    y[y_offset + e] = (REAL)epilogue_residual(v, bias, b_offset, c, residual, res_offset + e);
}
