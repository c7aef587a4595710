// local_response_norm.cl: torch.nn.functional.local_response_norm over dim 1 of (N, C, *) data
// (AlexNet, GoogLeNet v1): y = x / (k + alpha * mean_window(x^2)) ^ beta. The window of channel c is
// [c - size / 2, c + (size - 1) / 2], clipped to the channels, and its sum is divided by `size`
// whatever was clipped (torch pads with zeros and average-pools with the padding counted).
//
// -D REAL, ACC, USE_FP64, INDEX_T   precision and flat-offset type (common.cl)
// The channel count, the positions per channel, the window and alpha, beta, k are arguments: one
// program per dtype serves every layer. NDRange: 1-D over the elements of the output.

#include "common.cl"

__kernel void local_response_norm(__global const REAL* restrict x, const long x_offset,
                                  __global REAL* y, const long y_offset, const int channels,
                                  const long inner, const int size, const ACC alpha,
                                  const ACC beta, const ACC k) {
    const idx_t i = get_global_id(0);
    const int c = (int)((i / inner) % channels);
    const idx_t first = x_offset + i - (idx_t)c * inner;  // channel 0 at this position
    const int lo = max(c - size / 2, 0), hi = min(c + (size - 1) / 2, channels - 1);
    ACC sum = (ACC)0;
    for (int j = lo; j <= hi; ++j) {
        const ACC v = (ACC)x[first + (idx_t)j * inner];
        sum += v * v;
    }
    // torch's order: the average, * alpha, + k, ** beta; pow of a negative base is NaN as torch's
    const ACC div = pow(sum / (ACC)size * alpha + k, beta);
    y[y_offset + i] = (REAL)((ACC)x[x_offset + i] / div);
}
