// bias.cl: adds bias[c] to every element of channel c of a (batch, CHANNELS, SPATIAL) tensor in place,
// as the last step of the GEMM paths (CLBlast's GEMM has no broadcast term).
// -D CHANNELS, -D SPATIAL. NDRange: (SPATIAL, CHANNELS, batch).

#include "common.cl"

#ifndef CHANNELS
#define CHANNELS 1
#endif
#ifndef SPATIAL
#define SPATIAL 1
#endif

__kernel void add_bias(__global REAL* restrict y, const long y_offset,
                       __global const REAL* restrict bias, const long b_offset) {
    const int s = get_global_id(0);
    const int c = get_global_id(1);
    const int n = get_global_id(2);
    y[y_offset + ((idx_t)n * CHANNELS + c) * SPATIAL + s] += bias[b_offset + c];
}
