// peak.cl: the device's arithmetic and memory peaks, as clpeak measures them, for the bench's
// "% of peak" figures (clconv.tools.peak). Not used by any operation.
//
// fma_peak: each work-item runs ITERS rounds of 12 independent VEC-wide fma chains (enough in flight
// to hide the FMA latency on CPUs and GPUs), 2 * 12 * VEC flops a round, and stores one sum so the
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
    // 12 independent chains: enough to cover the FMA latency of two pipelines (4-5 cycles each on
    // x86), and 12 accumulators + 1 multiplier fit the 16 vector registers of AVX2.
    const VREAL m = (VREAL)(seed);
    VREAL a[12];
#pragma unroll
    for (int c = 0; c < 12; ++c) a[c] = (VREAL)(get_global_id(0) + c);
    for (int i = 0; i < ITERS; ++i) {
#pragma unroll
        for (int c = 0; c < 12; ++c) a[c] = fma(a[c], m, m);
    }
    VREAL s = a[0];
#pragma unroll
    for (int c = 1; c < 12; ++c) s += a[c];
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
