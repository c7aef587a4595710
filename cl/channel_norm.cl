// channel_norm.cl: layer normalisation over the channel dim of an NC* (channels-first) tensor, as
// ConvNeXt's channels-first LayerNorm computes it (torch: x.permute(0,2,3,1), F.layer_norm over (C,),
// permute back): y[n,c,s] = (x[n,c,s] - mean_c) / sqrt(var_c + eps) * weight[c] + bias[c], with the
// biased variance (torch's layer_norm). Run by clconv.ops.channels.ChannelNormPlan: compile's and
// convert's channels-last LayerNorm (clconv/torch_graph/channel_norm.py, clconv/torch_fuse.py).
//
// -D REAL, ACC, USE_FP64/USE_FP16  precision (common.cl; defaults float)
// -D HAS_WEIGHT, HAS_BIAS  the affine weight / bias are applied (each 0 or 1; default 1)
// Sizes and the operands' offsets (in elements) are arguments (channels C, spatial positions S per
// image, total N*S positions), so every layer shares one program.
// NDRange: (N * S,): one work-item per (image, position); neighbouring
// work-items read neighbouring positions of a channel plane (coalesced), each loops over C twice
// (mean, then the centred variance: two passes, as torch's, for accuracy).

#include "common.cl"

#ifndef HAS_WEIGHT
#define HAS_WEIGHT 1
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 1
#endif

__kernel void channel_norm(__global const REAL* restrict x, const long x_off,
                           __global REAL* restrict y, const long y_off,
                           __global const REAL* restrict weight, const long w_off,
                           __global const REAL* restrict bias, const long b_off,
                           const long channels, const long spatial, const long positions,
                           const ACC eps) {
    const long p = get_global_id(0);
    if (p >= positions) return;
    x += x_off;
    y += y_off;
    weight += w_off;
    bias += b_off;
    const long n = p / spatial;
    const long s = p - n * spatial;
    const long base = n * channels * spatial + s;
    // The mean as the first value plus the mean offset from it: exact where every channel holds
    // the same value (torch's moments give 0 there; a plain sum rounded 1000.1 * 8 / 8 off by an
    // ulp, which rsqrt(eps) then scaled up), and less cancellation elsewhere.
    const ACC first = (ACC)x[base];
    ACC shift = 0;
    for (long c = 1; c < channels; ++c) shift += (ACC)x[base + c * spatial] - first;
    const ACC mean = first + shift / (ACC)channels;
    ACC var = 0;
    for (long c = 0; c < channels; ++c) {
        const ACC d = (ACC)x[base + c * spatial] - mean;
        var += d * d;
    }
    var /= (ACC)channels;
    const ACC rstd = (ACC)1 / sqrt(var + (ACC)eps);
    for (long c = 0; c < channels; ++c) {
        ACC v = ((ACC)x[base + c * spatial] - mean) * rstd;
#if HAS_WEIGHT
        v = v * (ACC)weight[c];
#endif
#if HAS_BIAS
        v = v + (ACC)bias[c];
#endif
        y[base + c * spatial] = (REAL)v;
    }
}
