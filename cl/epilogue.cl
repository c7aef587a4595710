// epilogue.cl: the last step of the GEMM paths, in place on a (batch, CHANNELS, SPATIAL) tensor:
// adds bias[c] (-D HAS_BIAS) and applies the activation (-D RELU), in one pass over the output,
// because CLBlast's GEMM has no broadcast term or activation of its own.
// -D CHANNELS, -D SPATIAL. NDRange: (SPATIAL, CHANNELS, batch).

#include "common.cl"

#ifndef CHANNELS
#define CHANNELS 1
#endif
#ifndef SPATIAL
#define SPATIAL 1
#endif

__kernel void epilogue(__global REAL* restrict y, const long y_offset,
                       __global const REAL* restrict bias, const long b_offset) {
    const idx_t s = get_global_id(0);  // SPATIAL or the batch may pass 2**31 when INDEX_T is long
    const int c = get_global_id(1);
    const idx_t n = get_global_id(2);
    const idx_t i = y_offset + ((idx_t)n * CHANNELS + c) * SPATIAL + s;
    REAL v = y[i];
#ifdef HAS_BIAS
    v += bias[b_offset + c];
#endif
#ifdef RELU
    // fmax would turn NaN into 0; PyTorch's relu keeps NaN, and so does this comparison.
    v = (v < (REAL)0) ? (REAL)0 : v;
#endif
    y[i] = v;
}
