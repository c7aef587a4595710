// batch_epilogue.cl: the last step of the im2col path when a chunk's images were folded into the
// GEMM's N: moves the GEMM result R (CHANNELS x images * SPATIAL, image i in columns
// [i * SPATIAL, (i + 1) * SPATIAL)) into the output y (images, CHANNELS, SPATIAL), adding bias[c]
// (-D HAS_BIAS) and applying the activation (-D RELU) on the way: one pass, reads and writes both
// contiguous along SPATIAL.
// -D CHANNELS, -D SPATIAL. NDRange: (SPATIAL, CHANNELS, images).

#include "common.cl"

#ifndef CHANNELS
#define CHANNELS 1
#endif
#ifndef SPATIAL
#define SPATIAL 1
#endif

__kernel void batch_epilogue(__global const REAL* restrict r, const long r_offset,
                             __global REAL* restrict y, const long y_offset,
                             __global const REAL* restrict bias, const long b_offset) {
    const idx_t s = get_global_id(0);  // SPATIAL may pass 2**31 when INDEX_T is long
    const int c = get_global_id(1);
    const idx_t i = get_global_id(2);
    const idx_t images = get_global_size(2);
    REAL v = r[r_offset + ((idx_t)c * images + i) * SPATIAL + s];
#ifdef HAS_BIAS
    v += bias[b_offset + c];
#endif
#ifdef RELU
    v = (v < (REAL)0) ? (REAL)0 : v;  // NaN < 0 is false: NaN stays NaN (as torch's relu)
#endif
    y[y_offset + ((idx_t)i * CHANNELS + c) * SPATIAL + s] = v;
}
