// channel_norm.cl: layer normalisation over the channel dim of an NC* (channels-first) tensor, as
// ConvNeXt's channels-first LayerNorm computes it (torch: x.permute(0,2,3,1), F.layer_norm over (C,),
// permute back): y[n,c,s] = (x[n,c,s] - mean_c) / sqrt(var_c + eps) * weight[c] + bias[c], with the
// biased variance (torch's layer_norm). Used by clconv.torch.compile (clconv/torch_graph/channel_norm.py).
//
// -D REAL, ACC, USE_FP64/USE_FP16  precision (common.cl; defaults float)
// -D HAS_AFFINE  weight and bias are applied (0: plain normalisation; default 1)
// Sizes are arguments (channels C, spatial positions S per image, total N*S positions), so every
// layer shares one program. NDRange: (N * S,): one work-item per (image, position); neighbouring
// work-items read neighbouring positions of a channel plane (coalesced), each loops over C twice
// (mean, then the centred variance: two passes, as torch's, for accuracy).

#include "common.cl"

#ifndef HAS_AFFINE
#define HAS_AFFINE 1
#endif

__kernel void channel_norm(__global const REAL* restrict x, __global REAL* restrict y,
                           __global const REAL* restrict weight, __global const REAL* restrict bias,
                           const long channels, const long spatial, const long positions,
                           const ACC eps) {
    const long p = get_global_id(0);
    if (p >= positions) return;
    const long n = p / spatial;
    const long s = p - n * spatial;
    const long base = n * channels * spatial + s;
    ACC mean = 0;
    for (long c = 0; c < channels; ++c) mean += (ACC)x[base + c * spatial];
    mean /= (ACC)channels;
    ACC var = 0;
    for (long c = 0; c < channels; ++c) {
        const ACC d = (ACC)x[base + c * spatial] - mean;
        var += d * d;
    }
    var /= (ACC)channels;
    const ACC rstd = (ACC)1 / sqrt(var + (ACC)eps);
    for (long c = 0; c < channels; ++c) {
        ACC v = ((ACC)x[base + c * spatial] - mean) * rstd;
#if HAS_AFFINE
        v = v * (ACC)weight[c] + (ACC)bias[c];
#endif
        y[base + c * spatial] = (REAL)v;
    }
}
