// softmax.cl: torch.softmax / torch.log_softmax along one dim of a contiguous tensor viewed as
// (outer, n, inner): one work-item per (outer, inner) position walks its n values three times
// (max, sum of exp(x - max), write), as torch's kernels do: a NaN anywhere in the slice makes
// the whole slice NaN (the max propagates it), and a slice of -Inf only gives NaN (-Inf - -Inf).
//   softmax:     y = exp(x - max) / sum
//   log_softmax: y = (x - max) - log(sum)     (-D LOG)
// NDRange (inner, outer).

#include "common.cl"

__kernel void softmax(__global const REAL* restrict x, const long x_offset,
                      __global REAL* restrict y, const long y_offset, const long n) {
    const idx_t inner = get_global_size(0);
    const idx_t base = (idx_t)get_global_id(1) * n * inner + get_global_id(0);
    __global const REAL* src = x + x_offset + base;
    __global REAL* dst = y + y_offset + base;
    ACC m = -INFINITY;
    for (idx_t k = 0; k < n; ++k) {
        const ACC v = (ACC)src[k * inner];
        m = (v > m || isnan(v)) ? v : m;
    }
    ACC sum = 0;
    for (idx_t k = 0; k < n; ++k) sum += exp((ACC)src[k * inner] - m);
#ifdef LOG
    const ACC log_sum = log(sum);
    for (idx_t k = 0; k < n; ++k) dst[k * inner] = (REAL)(((ACC)src[k * inner] - m) - log_sum);
#else
    for (idx_t k = 0; k < n; ++k) dst[k * inner] = (REAL)(exp((ACC)src[k * inner] - m) / sum);
#endif
}
