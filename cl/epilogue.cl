// epilogue.cl: the last step of the GEMM paths, in place on a (batch, channels, spatial) tensor:
// adds bias[c] (-D HAS_BIAS) and the residual's element (-D HAS_RESIDUAL: an operand of y's shape
// from element r_offset) and applies the activation (-D ACT) (common.cl's epilogue_residual), in one
// pass over the output, because CLBlast's GEMM has no broadcast term or activation of its own.
// Sizes are arguments (a new batch or image size builds nothing). NDRange: (spatial, channels, batch).

#include "common.cl"

__kernel void epilogue(__global REAL* restrict y, const long y_offset,
                       __global const REAL* restrict bias, const long b_offset,
                       __global const REAL* residual, const long r_offset, const long spatial) {
    const idx_t s = get_global_id(0);  // spatial or the batch may pass 2**31 when INDEX_T is long
    const int c = get_global_id(1);
    const idx_t n = get_global_id(2);
    const idx_t e = ((idx_t)n * get_global_size(1) + c) * (idx_t)spatial + s;
    const idx_t i = y_offset + e;
    y[i] = (REAL)epilogue_residual((ACC)y[i], bias, b_offset, c, residual, r_offset + e);
}
