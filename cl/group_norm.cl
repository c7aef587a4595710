// group_norm.cl: torch.nn.functional.group_norm's normalisation, after the per-(image, group)
// mean and biased variance (elementwise.cl's channel_stats over the (N * G, C / G * inner) view):
//   y[n][c][s] = act((x[n][c][s] - mean) * a + bias[c]),  a = rstd * weight[c],
//   rstd = 1 / sqrt(var + eps)   (x - mean first: x * a + (bias - a * mean) cancels two values
//   of ~x / sqrt(eps) in the working precision, 0.5 for a constant row of 3e4 where torch gives 0;
//   torch's form only where a is infinite, for its NaN and infinities)
// stats: (2, N * G) means then variances. has_weight / has_bias: 0 reads none (any buffer).
// -D ACT (ACT_A, ACT_B): the activation (common.cl), identity by default.
// -D ZERO_RSTD: rstd = 0 where the variance and eps are both 0 (torch's batch-norm statistics,
// InvStd, which instance_norm uses: a constant instance with eps = 0 gives 0, not NaN).
// NDRange (inner, N * C): a row of one channel of one image per NDRange row, no division per
// element.

#include "common.cl"

__kernel void group_norm(__global const REAL* restrict x, const long x_offset,
                         __global const REAL* restrict stats, const long groups_total,
                         __global const REAL* restrict weight, const long w_offset,
                         const int has_weight, __global const REAL* restrict bias,
                         const long b_offset, const int has_bias, __global REAL* restrict y,
                         const long y_offset, const long channels, const long groups,
                         const REAL eps) {
    const idx_t s = get_global_id(0);
    const idx_t nc = get_global_id(1);
    const idx_t inner = get_global_size(0);
    const idx_t n = nc / channels;
    const idx_t c = nc - n * channels;
    const idx_t i = n * groups + c / (channels / groups);
    const ACC mean = (ACC)stats[i];
    const ACC var = (ACC)stats[groups_total + i];
    // A rounding-negative variance is 0; a NaN one (an inf in the group: inf - inf) stays NaN, so
    // that the whole group is NaN as in torch (var > 0 ? var : 0 made it 0 and the outputs +-inf).
    const ACC var0 = var < (ACC)0 ? (ACC)0 : var;
#ifdef ZERO_RSTD
    const ACC rstd = (var0 == (ACC)0 && eps == (REAL)0) ? (ACC)0 : (ACC)1 / sqrt(var0 + (ACC)eps);
#else
    const ACC rstd = (ACC)1 / sqrt(var0 + (ACC)eps);
#endif
    const ACC a = has_weight ? rstd * (ACC)weight[w_offset + c] : rstd;
    const ACC b = has_bias ? (ACC)bias[b_offset + c] : (ACC)0;
    const idx_t at = nc * inner + s;
    const ACC v = (ACC)x[x_offset + at];
    // An infinite scale (an inf weight) in torch's own form, x * a + (b - mean * a): NaN or
    // +-inf as torch's, where (x - mean) * a gave +-inf for the whole channel.
    y[y_offset + at] = (REAL)activate(isinf(a) ? v * a + (b - mean * a) : (v - mean) * a + b);
}
