// strided_copy.cl: gathers a strided (non-contiguous) view of up to 5 dims into a contiguous buffer, so
// that device arrays with any strides can enter the kernels, which all assume contiguous operands.
// -D S0..S4 shape (leading dims of 1 for fewer dims), -D T0..T4 source strides in elements.
// NDRange: (total elements,).

#include "common.cl"

#ifndef S1
#define S1 1
#endif
#ifndef S2
#define S2 1
#endif
#ifndef S3
#define S3 1
#endif
#ifndef S4
#define S4 1
#endif
#ifndef T0
#define T0 0
#endif
#ifndef T1
#define T1 0
#endif
#ifndef T2
#define T2 0
#endif
#ifndef T3
#define T3 0
#endif
#ifndef T4
#define T4 0
#endif

__kernel void strided_copy(__global const REAL* restrict src, const long src_offset,
                           __global REAL* restrict dst) {
    const idx_t i = get_global_id(0);
    idx_t r = i;
    const idx_t i4 = r % S4; r /= S4;
    const idx_t i3 = r % S3; r /= S3;
    const idx_t i2 = r % S2; r /= S2;
    const idx_t i1 = r % S1; r /= S1;
    const idx_t i0 = r;
    dst[i] = src[src_offset + i0 * T0 + i1 * T1 + i2 * T2 + i3 * T3 + i4 * T4];
}
