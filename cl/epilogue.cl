// epilogue.cl: the last step of the GEMM paths, in place on a (batch, channels, spatial) tensor:
// adds bias[c] (-D HAS_BIAS) and applies the activation (-D RELU) (common.cl's epilogue_value), in one
// pass over the output, because CLBlast's GEMM has no broadcast term or activation of its own.
// Sizes are arguments (a new batch or image size builds nothing). NDRange: (spatial, channels, batch).

#include "common.cl"

__kernel void epilogue(__global REAL* restrict y, const long y_offset,
                       __global const REAL* restrict bias, const long b_offset, const long spatial) {
    const idx_t s = get_global_id(0);  // spatial or the batch may pass 2**31 when INDEX_T is long
    const int c = get_global_id(1);
    const idx_t n = get_global_id(2);
    const idx_t i = y_offset + ((idx_t)n * get_global_size(1) + c) * (idx_t)spatial + s;
    y[i] = (REAL)epilogue_value((ACC)y[i], bias, b_offset, c);
}
