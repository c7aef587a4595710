// peak.cl: the device's arithmetic and memory peaks, as clpeak measures them, for the bench's
// "% of peak" figures (clconv.tools.peak). Not used by any operation.
//
// fma_peak: each work-item runs ITERS rounds of 8 independent VEC-wide fma chains (enough in flight
// to hide the FMA latency on CPUs and GPUs), 2 * 8 * VEC flops a round, and stores one sum so the
// compiler keeps the work. copy_peak: dst = src in VEC-wide loads and stores (bytes moved: both).
// -D REAL (float or double), -D VEC (vector width: 1, 2, 4, 8, 16), -D ITERS.

#ifdef USE_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif
#ifndef REAL
#define REAL float
#endif
#ifndef VEC
#define VEC 8
#endif
#ifndef ITERS
#define ITERS 1024
#endif

#define CAT(a, b) a##b
#define VTYPE(t, n) CAT(t, n)
#if VEC == 1
#define VREAL REAL
#else
#define VREAL VTYPE(REAL, VEC)
#endif

__kernel void fma_peak(__global REAL* restrict out, const REAL seed) {
    const VREAL m = (VREAL)(seed);
    VREAL a0 = (VREAL)(get_global_id(0)), a1 = a0 + (REAL)1, a2 = a0 + (REAL)2, a3 = a0 + (REAL)3;
    VREAL a4 = a0 + (REAL)4, a5 = a0 + (REAL)5, a6 = a0 + (REAL)6, a7 = a0 + (REAL)7;
    for (int i = 0; i < ITERS; ++i) {
        a0 = fma(a0, m, m); a1 = fma(a1, m, m); a2 = fma(a2, m, m); a3 = fma(a3, m, m);
        a4 = fma(a4, m, m); a5 = fma(a5, m, m); a6 = fma(a6, m, m); a7 = fma(a7, m, m);
    }
    const VREAL s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
#if VEC == 1
    out[get_global_id(0)] = s;
#else
    REAL t = 0;
    for (int j = 0; j < VEC; ++j) t += ((REAL*)&s)[j];
    out[get_global_id(0)] = t;
#endif
}

__kernel void copy_peak(__global const VREAL* restrict src, __global VREAL* restrict dst) {
    const size_t i = get_global_id(0);
    dst[i] = src[i];
}
