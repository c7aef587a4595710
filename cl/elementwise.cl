// elementwise.cl: the memory-bound ops around the convolutions and their gradients: activations,
// broadcast add/mul, bias + residual + activation after a GEMM (linear), inference and training batch
// normalisation, and a row-block copy (cat). Every activation is common.cl's activate() (-D ACT).
//
// -D REAL, ACC, USE_FP64, INDEX_T   precision and flat-offset type (common.cl)
// -D ACT, ACT_A, ACT_B              the activation (common.cl; default none)
// -D OP                             binary: 0 add (default), 1 mul, 2 sub, 3 prelu, 4 div
// -D CLAMP_GRAD_INCLUSIVE           unary_backward of ACT_CLAMP: torch.clamp's gradient (passes
//                                   x == min and x == max) instead of hardtanh's (stops them)
// Shapes, strides, channel counts, eps and momentum are kernel arguments: one program per dtype and
// activation serves every layer. NDRanges are 1-D over the elements written unless noted.

#include "common.cl"

#ifndef OP
#define OP 0
#endif

// y = act(x)
__kernel void unary(__global const REAL* restrict x, const long x_offset,
                    __global REAL* y, const long y_offset) {
    const idx_t i = get_global_id(0);
    y[y_offset + i] = (REAL)activate((ACC)x[x_offset + i]);
}

// d act(x) / dx * g, with torch's backward formulas (in terms of the input x). At x = NaN as
// torch's vectorised CPU kernels (every tensor of 64 elements or more): hardtanh's family 0, the
// exponential ones NaN (their comparisons are written so that NaN takes that branch).
inline ACC activate_grad(ACC x, ACC g) {
#if ACT == ACT_NONE
    return g;
#elif ACT == ACT_RELU
    return (x <= (ACC)0) ? (ACC)0 : g;
#elif ACT == ACT_RELU6
    return (x > (ACC)0 && x < (ACC)6) ? g : (ACC)0;
#elif ACT == ACT_SILU
    const ACC s = (ACC)1 / ((ACC)1 + exp(-x));
    return g * s * ((ACC)1 + x * ((ACC)1 - s));
#elif ACT == ACT_GELU
    const ACC cdf = (ACC)0.5 * ((ACC)1 + erf(x * (ACC)0.70710678118654752440));
    const ACC pdf = (ACC)0.39894228040143267794 * exp((ACC)-0.5 * x * x);
    return g * (cdf + x * pdf);
#elif ACT == ACT_GELU_TANH
    const ACC beta = (ACC)0.79788456080286535588, kappa = (ACC)0.044715;
    const ACC u = beta * (x + kappa * x * x * x);
    const ACC t = SAT_TANH(ACC, u);
    const ACC right = (ACC)0.5 * x * ((ACC)1 - t * t) * beta * ((ACC)1 + (ACC)3 * kappa * x * x);
    return g * ((ACC)0.5 * ((ACC)1 + t) + right);
#elif ACT == ACT_SIGMOID
    const ACC y = (ACC)1 / ((ACC)1 + exp(-x));
    return g * ((ACC)1 - y) * y;
#elif ACT == ACT_TANH
    const ACC y = SAT_TANH(ACC, x);
    return g * ((ACC)1 - y * y);
#elif ACT == ACT_HARDSWISH
    // torch 2.13's vectorised kernel: 0 from x <= -3, g from x >= 3 (NaN: the formula's NaN)
    return (x <= (ACC)-3) ? (ACC)0 : ((x >= (ACC)3) ? g : g * (x / (ACC)3 + (ACC)0.5));
#elif ACT == ACT_HARDSIGMOID
    // torch multiplies by the float constant 1.0f / 6.0f, in double too
    return (x > (ACC)-3 && x < (ACC)3) ? g * (ACC)(1.0f / 6.0f) : (ACC)0;
#elif ACT == ACT_LEAKY_RELU
    return (x > (ACC)0) ? g : g * (ACC)(ACT_A);
#elif ACT == ACT_ELU
    return (x > (ACC)0) ? g : g * (ACC)(ACT_A) * exp(x);
#elif ACT == ACT_CLAMP
#ifdef CLAMP_GRAD_INCLUSIVE
    return (x >= (ACC)(ACT_A) && x <= (ACC)(ACT_B)) ? g : (ACC)0;
#else
    return (x > (ACC)(ACT_A) && x < (ACC)(ACT_B)) ? g : (ACC)0;
#endif
#elif ACT == ACT_SQRT
    return g / ((ACC)2 * sqrt(x));  // torch's sqrt backward: grad / (2 * result)
#elif ACT == ACT_SOFTPLUS && defined(ACT_A_NAN)
    return g * (ACC)NAN;  // (PoCL's exp of the folded NaN gave 0 for some x: torch's NaN)
#elif ACT == ACT_SOFTPLUS && defined(ACT_A_ZERO)
    // beta +-0: z = exp(x * 0) = 1 for finite x (Mesa folds the product), NaN otherwise
    return isfinite(x) ? (((ACC)0 > (ACC)(ACT_B)) ? g : g * (ACC)0.5) : (ACC)NAN;
#elif ACT == ACT_SOFTPLUS
    const ACC z = exp(x * (ACC)(ACT_A));
    return (x * (ACC)(ACT_A) > (ACC)(ACT_B)) ? g : g * z / (z + (ACC)1);
#elif ACT == ACT_MISH
    const ACC s = (ACC)1 / ((ACC)1 + exp(-x));
    const ACC t = SAT_TANH(ACC, log1p(exp(x)));
    return g * (t + x * s * ((ACC)1 - t * t));
#elif ACT == ACT_SELU
    return (x > (ACC)0) ? g * (ACC)(ACT_B) : g * ((ACC)(ACT_A) * (ACC)(ACT_B)) * exp(x);
#elif ACT == ACT_CELU
    return (x > (ACC)0) ? g : g * (ACC)(ACT_B) * (ACC)(ACT_A) * exp(x * (ACC)(ACT_B));
#elif ACT == ACT_LOGSIGMOID
    return g / ((ACC)1 + exp(x));  // g * sigmoid(-x)
#elif ACT == ACT_SOFTSIGN
    const ACC d = (ACC)1 + fabs(x);
    return g / (d * d);
#elif ACT == ACT_TANHSHRINK
    const ACC t = SAT_TANH(ACC, x);
    return g * t * t;
#elif ACT == ACT_HARDSHRINK || ACT == ACT_SOFTSHRINK
    return (x >= -(ACC)(ACT_A) && x <= (ACC)(ACT_A)) ? (ACC)0 : g;
#elif ACT == ACT_ABS
    return g * sign(x);
#elif ACT == ACT_EXP
    return g * exp(x);
#elif ACT == ACT_LOG
    return g / x;
#elif ACT == ACT_RSQRT
    const ACC r = (ACC)1 / sqrt(x);
    return (ACC)-0.5 * g * r * r * r;
#elif ACT == ACT_ERF
    return g * (ACC)1.12837916709551257390 * exp(-x * x);  // 2 / sqrt(pi)
#elif ACT == ACT_THRESHOLD
    return (x <= (ACC)(ACT_A)) ? (ACC)0 : g;
#endif
}

// The same from the output y = act(x), for the activations whose gradient the output determines
// (torch computes relu's, sigmoid's and tanh's this way): relu, relu6, leaky_relu (slope >= 0),
// sigmoid, tanh, clamp (min < max, hardtanh's gradient). The host builds it for those only; for the
// others it returns NaN.
inline ACC activate_grad_from_output(ACC y, ACC g) {
#if ACT == ACT_RELU
    return (y <= (ACC)0) ? (ACC)0 : g;
#elif ACT == ACT_RELU6
    return (y > (ACC)0 && y < (ACC)6) ? g : (ACC)0;
#elif ACT == ACT_LEAKY_RELU
    return (y > (ACC)0) ? g : g * (ACC)(ACT_A);
#elif ACT == ACT_SIGMOID
    return g * ((ACC)1 - y) * y;
#elif ACT == ACT_TANH
    return g * ((ACC)1 - y * y);
#elif ACT == ACT_CLAMP
    return (y > (ACC)(ACT_A) && y < (ACC)(ACT_B)) ? g : (ACC)0;
#else
    return (ACC)NAN;
#endif
}

// dx = act'(x) * g given y = act(x)
__kernel void unary_backward_output(__global const REAL* restrict y, const long y_offset,
                                    __global const REAL* restrict g, const long g_offset,
                                    __global REAL* dx, const long dx_offset) {
    const idx_t i = get_global_id(0);
    dx[dx_offset + i] = (REAL)activate_grad_from_output((ACC)y[y_offset + i], (ACC)g[g_offset + i]);
}

// dx = act'(x) * g
__kernel void unary_backward(__global const REAL* restrict x, const long x_offset,
                             __global const REAL* restrict g, const long g_offset,
                             __global REAL* dx, const long dx_offset) {
    const idx_t i = get_global_id(0);
    dx[dx_offset + i] = (REAL)activate_grad((ACC)x[x_offset + i], (ACC)g[g_offset + i]);
}

// y = act(a OP b) with broadcasting: the output (of up to 5 dims after the host merged what it could)
// has sizes (s0), s1..s4; a and b are read with strides ta*, tb* in elements (0 along the dims they
// are broadcast over). NDRange (s4, s0 * s1 * s2 * s3): the innermost dim is the first NDRange dim,
// so that it needs no division and the compiler can vectorise along it.
__kernel void binary(__global const REAL* a, const long a_offset,
                     __global const REAL* b, const long b_offset,
                     __global REAL* y, const long y_offset,
                     const long s1, const long s2, const long s3,
                     const long ta0, const long ta1, const long ta2, const long ta3, const long ta4,
                     const long tb0, const long tb1, const long tb2, const long tb3, const long tb4,
                     const REAL alpha) {
    const idx_t i4 = get_global_id(0);
    idx_t r = get_global_id(1);
    const idx_t row = r;
    idx_t i3 = 0, i2 = 0, i1 = 0;
    if (s3 != 1) { i3 = r % (idx_t)s3; r /= (idx_t)s3; }
    if (s2 != 1) { i2 = r % (idx_t)s2; r /= (idx_t)s2; }
    if (s1 != 1) { i1 = r % (idx_t)s1; r /= (idx_t)s1; }
    const idx_t i0 = r;
    const ACC va = (ACC)a[a_offset + i0 * ta0 + i1 * ta1 + i2 * ta2 + i3 * ta3 + i4 * ta4];
    const ACC vb = (ACC)b[b_offset + i0 * tb0 + i1 * tb1 + i2 * tb2 + i3 * tb3 + i4 * tb4];
// torch.add/sub's alpha (-D HAS_ALPHA): a + alpha * b in one rounding, as torch's, where the
// host passes sub's -alpha as torch negates it (an int 0 gives +0: a -0 input stays -0 only where
// b is negative); alpha is an argument, not a literal, because Mesa folds fma(0, b, a) to a
// (torch: NaN for an infinite b)
#if defined(HAS_ALPHA) && (OP == 0 || OP == 2)
    ACC v = fma((ACC)alpha, vb, va);
    // A zero result: the product is -va exactly (unless it is below ~1e-30 and inexact), so
    // their plain sum has the sign IEEE's fma gives, which llvmpipe's does not (fma(x, y, +0)
    // of a -0 product: -0). Two statements: not contracted to an fma.
    if (v == (ACC)0) {
        const ACC product = (ACC)alpha * vb;
        v = product + va;
    }
#elif OP == 0
    const ACC v = va + vb;
#elif OP == 1
    const ACC v = va * vb;
#elif OP == 2
    const ACC v = va - vb;
#elif OP == 4
    const ACC v = va / vb;
#elif OP == 5  // torch.maximum: NaN from either side, the first of equal values (-0 vs 0)
    const ACC v = isnan(vb) ? vb : ((va < vb) ? vb : va);
#elif OP == 6  // torch.minimum
    const ACC v = isnan(vb) ? vb : ((va > vb) ? vb : va);
#elif OP == 7  // torch.div(rounding_mode='trunc')
    const ACC v = trunc(va / vb);
#elif OP == 8  // torch.div(rounding_mode='floor'): c10's div_floor_floating, step by step
    ACC v;
    if (vb == (ACC)0) {
        v = va / vb;  // IEEE: +-inf or NaN
    } else {
        const ACC mod = fmod(va, vb);
        ACC d = (va - mod) / vb;
        if (mod != (ACC)0 && ((vb < (ACC)0) != (mod < (ACC)0))) d -= (ACC)1;
        if (d != (ACC)0) {
            v = floor(d);
            if (d - v > (ACC)0.5) v += (ACC)1;
        } else {
            v = copysign((ACC)0, va / vb);
        }
    }
#else  // prelu with slope b, as torch's kernel (a > 0 ? a : b * a: NaN and -0 land as torch's)
    const ACC v = (va > (ACC)0) ? va : vb * va;
#endif
    y[y_offset + row * (idx_t)get_global_size(0) + i4] = (REAL)activate(v);
}

// In place after a GEMM: y = act(y + bias[(i / inner) % channels] + residual[i]) (flags has_bias,
// has_residual; the unused buffers are never read).
__kernel void bias_act(__global REAL* y, const long y_offset,
                       __global const REAL* restrict bias, const long b_offset, const int has_bias,
                       __global const REAL* restrict residual, const long r_offset,
                       const int has_residual, const long channels, const long inner) {
    const idx_t i = get_global_id(0);
    ACC v = (ACC)y[y_offset + i];
    if (has_bias) v += (ACC)bias[b_offset + (i / (idx_t)inner) % (idx_t)channels];
    if (has_residual) v += (ACC)residual[r_offset + i];
    y[y_offset + i] = (REAL)activate(v);
}

// Batch normalisation with given statistics (inference; training passes the batch's), (N, C, inner):
//   y = act(x * alpha + beta), alpha = weight / sqrt(var + eps), beta = bias - mean * alpha (torch's
//   CPU order of operations); weight 1 and bias 0 when absent. NDRange (inner, N * C): a row of one
//   channel per global row (no per-element division; consecutive work-items read consecutive values).
__kernel void batch_norm(__global const REAL* restrict x, const long x_offset,
                         __global const REAL* restrict mean, const long m_offset,
                         __global const REAL* restrict var, const long v_offset,
                         __global const REAL* restrict weight, const long w_offset,
                         const int has_weight,
                         __global const REAL* restrict bias, const long b_offset, const int has_bias,
                         __global REAL* y, const long y_offset, const long channels,
                         const long inner, const REAL eps) {
    const idx_t row = get_global_id(1);
    const idx_t i = row * (idx_t)inner + get_global_id(0);
    const idx_t c = row % (idx_t)channels;
    const ACC invstd = (ACC)1 / sqrt((ACC)var[v_offset + c] + (ACC)eps);
    const ACC alpha = has_weight ? (ACC)weight[w_offset + c] * invstd : invstd;
    const ACC beta = (has_bias ? (ACC)bias[b_offset + c] : (ACC)0) - (ACC)mean[m_offset + c] * alpha;
    y[y_offset + i] = (REAL)activate((ACC)x[x_offset + i] * alpha + beta);
}

// The per-channel reductions below run one work-group of GROUP work-items per channel (NDRange
// (GROUP, channels), local (GROUP, 1)); GROUP is a power of two: 1 on CPUs, 64 on GPUs for long
// rows. Work-item l takes the runs of LANES consecutive values starting at LANES * (l + GROUP * i)
// of each image's row of the channel, adding value j of a run into its partial sum j: LANES
// independent sums that the compiler turns into vector adds without reassociating anything (a
// single running sum does not vectorise without fast math), in a fixed order on every device. The
// lanes, then the group's work-items (in local memory), are added at the end.
#ifndef GROUP
#define GROUP 64
#endif
#define LANES 8

// The sum of v over the work-group, in every work-item (scratch: GROUP values of local memory).
inline ACC group_sum(ACC v, __local ACC* scratch) {
#if GROUP == 1
    return v;
#else
    const int l = (int)get_local_id(0);
    scratch[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int step = GROUP / 2; step > 0; step >>= 1) {
        if (l < step) scratch[l] += scratch[l + step];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const ACC sum = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);  // scratch is reused by the next call
    return sum;
#endif
}

inline ACC lanes_sum(const ACC* v) {
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// for each value s of work-item l's runs in a row of `inner`: STEP(j, s), j its lane
#define FOR_ROW_RUNS(inner, l, STEP)                                                      \
    {                                                                                      \
        idx_t s0 = LANES * (l);                                                            \
        for (; s0 + LANES <= (inner); s0 += LANES * GROUP) {                               \
            _Pragma("unroll") for (int j = 0; j < LANES; ++j) { STEP(j, s0 + j) }          \
        }                                                                                  \
        if (s0 < (inner)) {                                                                \
            for (int j = 0; s0 + j < (inner); ++j) { STEP(j, s0 + j) }                     \
        }                                                                                  \
    }

// The gradient through the activation from its output y (its defined ACT), or g without one.
#if ACT == ACT_NONE
#define GRAD_THROUGH_OUTPUT(y, g) (g)
#else
#define GRAD_THROUGH_OUTPUT(y, g) activate_grad_from_output(y, g)
#endif

// Per channel: the batch mean and biased variance of x (batch, channels, inner) into stats[c] and
// stats[channels + c] (two passes, for accuracy); with `update`, the running statistics move by
// `momentum` towards them (the variance unbiased: count / (count - 1)), as torch.
__kernel __attribute__((reqd_work_group_size(GROUP, 1, 1)))
void channel_stats(__global const REAL* restrict x, const long x_offset, const long batch,
                   const long channels, const long inner, __global REAL* stats,
                   __global REAL* running_mean, const long rm_offset,
                   __global REAL* running_var, const long rv_offset, const int update,
                   const REAL momentum) {
    __local ACC scratch[GROUP];
    const idx_t c = get_global_id(1);
    const idx_t l = get_local_id(0);
    const idx_t count = (idx_t)batch * inner;
    // The first pass sums the values less the channel's first one (shifted data): a constant
    // channel's mean is then that value exactly, and its normalised values exactly 0 as torch's
    // (a plain sum of 1000 values of 7.7 rounded the mean, and (x - mean) * rstd gave 0.0027).
    // A non-finite first value shifts nothing (an Inf channel's mean stays Inf, as torch).
    const ACC first = count > 0 ? (ACC)x[x_offset + c * inner] : (ACC)0;
    const ACC shift = fabs(first) < (ACC)INFINITY ? first : (ACC)0;
    ACC acc[LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (idx_t n = 0; n < batch; ++n) {
        __global const REAL* row = x + x_offset + (n * channels + c) * inner;
#define SUM_STEP(j, s) acc[j] += (ACC)row[s] - shift;
        FOR_ROW_RUNS(inner, l, SUM_STEP)
#undef SUM_STEP
    }
    const ACC mean = shift + group_sum(lanes_sum(acc), scratch) / (ACC)count;
    for (int j = 0; j < LANES; ++j) acc[j] = 0;
    for (idx_t n = 0; n < batch; ++n) {
        __global const REAL* row = x + x_offset + (n * channels + c) * inner;
#define SQ_STEP(j, s) { const ACC d = (ACC)row[s] - mean; acc[j] += d * d; }
        FOR_ROW_RUNS(inner, l, SQ_STEP)
#undef SQ_STEP
    }
    const ACC sq = group_sum(lanes_sum(acc), scratch);
    if (l != 0) return;
    const ACC var = sq / (ACC)count;
    stats[c] = (REAL)mean;
    stats[channels + c] = (REAL)var;
    if (update) {
        const ACC m = (ACC)momentum;
        const ACC unbiased = count > 1 ? sq / (ACC)(count - 1) : var;
        running_mean[rm_offset + c] = (REAL)(((ACC)1 - m) * (ACC)running_mean[rm_offset + c] + m * mean);
        running_var[rv_offset + c] = (REAL)(((ACC)1 - m) * (ACC)running_var[rv_offset + c] + m * unbiased);
    }
}

// Per channel, for the batch-norm gradient, with gz = the gradient through the activation whose
// output is y (GRAD_THROUGH_OUTPUT; g itself without ACT): sums[c] = sum gz,
// sums[channels + c] = sum gz * (x - mean); weight_grad[c] = that * invstd, bias_grad[c] = sum gz.
__kernel __attribute__((reqd_work_group_size(GROUP, 1, 1)))
void channel_grad_sums(__global const REAL* restrict g, const long g_offset,
                       __global const REAL* restrict y, const long y_offset,
                       __global const REAL* restrict x, const long x_offset,
                       __global const REAL* restrict mean, const long m_offset,
                       __global const REAL* restrict var, const long v_offset,
                       const REAL eps, const long batch, const long channels,
                       const long inner, __global REAL* sums,
                       __global REAL* weight_grad, const long wg_offset,
                       __global REAL* bias_grad, const long bg_offset) {
    __local ACC scratch[GROUP];
    const idx_t c = get_global_id(1);
    const idx_t l = get_local_id(0);
    const ACC mu = (ACC)mean[m_offset + c];
    ACC sg[LANES] = {0, 0, 0, 0, 0, 0, 0, 0}, sgx[LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (idx_t n = 0; n < batch; ++n) {
        const idx_t base = (n * channels + c) * inner;
        __global const REAL* gr = g + g_offset + base;
        __global const REAL* yr = y + y_offset + base;
        __global const REAL* xr = x + x_offset + base;
#define GRAD_STEP(j, s) {                                            \
            const ACC gv = GRAD_THROUGH_OUTPUT((ACC)yr[s], (ACC)gr[s]); \
            sg[j] += gv;                                             \
            sgx[j] += gv * ((ACC)xr[s] - mu);                        \
        }
        FOR_ROW_RUNS(inner, l, GRAD_STEP)
#undef GRAD_STEP
    }
    const ACC sum_g = group_sum(lanes_sum(sg), scratch);
    const ACC sum_gx = group_sum(lanes_sum(sgx), scratch);
    if (l != 0) return;
    const ACC invstd = (ACC)1 / sqrt((ACC)var[v_offset + c] + (ACC)eps);
    sums[c] = (REAL)sum_g;
    sums[channels + c] = (REAL)sum_gx;
    weight_grad[wg_offset + c] = (REAL)(sum_gx * invstd);
    bias_grad[bg_offset + c] = (REAL)sum_g;
}

// The batch-norm input gradient (N, C, inner), gz as in channel_grad_sums: with batch statistics
// (`training`),
//   dx = w * invstd * (gz - sum_gz / M - (x - mean) * invstd^2 * sum_gzx / M),  M = N * inner;
// with fixed (running) statistics dx = w * invstd * gz. `write_gz`: gz itself goes to gz_out too
// (the gradient of a residual added before the activation). NDRange (inner, N * C).
__kernel void batch_norm_backward(__global const REAL* restrict g, const long g_offset,
                                  __global const REAL* restrict y, const long y_offset,
                                  __global const REAL* restrict x, const long x_offset,
                                  __global const REAL* restrict mean, const long m_offset,
                                  __global const REAL* restrict var, const long v_offset,
                                  __global const REAL* restrict weight, const long w_offset,
                                  const int has_weight, __global const REAL* restrict sums,
                                  const int training, __global REAL* dx, const long dx_offset,
                                  __global REAL* gz_out, const long gz_offset, const int write_gz,
                                  const long channels, const long inner, const long count,
                                  const REAL eps) {
    const idx_t row = get_global_id(1);
    const idx_t i = row * (idx_t)inner + get_global_id(0);
    const idx_t c = row % (idx_t)channels;
    const ACC invstd = (ACC)1 / sqrt((ACC)var[v_offset + c] + (ACC)eps);
    const ACC scale = has_weight ? (ACC)weight[w_offset + c] * invstd : invstd;
    ACC v = GRAD_THROUGH_OUTPUT((ACC)y[y_offset + i], (ACC)g[g_offset + i]);
    if (write_gz) gz_out[gz_offset + i] = (REAL)v;
    if (training) {
        const ACC xc = (ACC)x[x_offset + i] - (ACC)mean[m_offset + c];
        v -= ((ACC)sums[c] + xc * invstd * invstd * (ACC)sums[channels + c]) / (ACC)count;
    }
    dx[dx_offset + i] = (REAL)(scale * v);
}

// Column sums of a (rows x cols) matrix (a linear layer's bias gradient), one work-item per column:
// out[j] = sum_r g[r * cols + j]. NDRange (cols,).
__kernel void column_sums(__global const REAL* restrict g, const long g_offset, const long rows,
                          __global REAL* restrict out, const long out_offset) {
    const idx_t j = get_global_id(0);
    const idx_t cols = get_global_size(0);
    ACC sum = 0;
    for (idx_t r = 0; r < rows; ++r) sum += (ACC)g[g_offset + r * cols + j];
    out[out_offset + j] = (REAL)sum;
}

// A block of rows into a wider matrix (cat): dst[dst_offset + r * dst_ld + j] =
// src[src_offset + r * src_ld + j] for j < cols. NDRange (cols, rows).
__kernel void copy_rows(__global const REAL* restrict src, const long src_offset, const long src_ld,
                        __global REAL* restrict dst, const long dst_offset, const long dst_ld) {
    const idx_t j = get_global_id(0);
    const idx_t r = get_global_id(1);
    dst[dst_offset + r * dst_ld + j] = src[src_offset + r * src_ld + j];
}
