// squeeze_excitation.cl: a squeeze-excitation block (MobileNetV3, EfficientNet, SE-ResNet) in one
// launch, on x of (N, C, spatial):
//   s = mean of x over its positions            (N, C)   adaptive average pooling to 1
//   h = act(W1 s + b1)                          (N, R)   the first 1x1 convolution, W1 (R, C)
//   g = gate(W2 h + b2)                         (N, C)   the second, W2 (C, R)
//   y = x * g                                   (N, C, spatial), broadcast over the positions
// Each step rounds to REAL as torch's ops do one by one: the mean as clconv's adaptive pool (the
// positions summed in order, then divided), each dot product in order, the bias added last.
//
// -D REAL, ACC, USE_FP64, INDEX_T   precision and flat-offset type (common.cl)
// -D ACT, ACT_A, ... the gate's activation (common.cl's activate())
// -D HIDDEN_ACT, HIDDEN_ACT_A, HIDDEN_ACT_B, HIDDEN_ACT_A_ZERO, HIDDEN_ACT_A_NAN,
//    HIDDEN_ACT_ALL_NAN   the first convolution's activation, as activation.cl takes them
// Sizes (C, R, positions) are arguments: one program per dtype and pair of activations serves
// every block. NDRange: one work-group per sample, (N * local,); local memory: C + R values
// and max(C, R) partial sums a work-item.
// A NULL bias is none.

#include "common.cl"
#define VW 8
#include "vector.cl"

inline ACC gate_activation(ACC v) {
    return ACT_APPLY(ACC, v);
}

// The first convolution's activation: activation.cl once more, on HIDDEN_ACT's defines.
#undef ACT
#undef ACT_A
#undef ACT_B
#undef ACT_A_ZERO
#undef ACT_A_NAN
#undef ACT_ALL_NAN
#ifdef HIDDEN_ACT
#define ACT HIDDEN_ACT
#endif
#ifdef HIDDEN_ACT_A
#define ACT_A HIDDEN_ACT_A
#endif
#ifdef HIDDEN_ACT_B
#define ACT_B HIDDEN_ACT_B
#endif
#ifdef HIDDEN_ACT_A_ZERO
#define ACT_A_ZERO HIDDEN_ACT_A_ZERO
#endif
#ifdef HIDDEN_ACT_A_NAN
#define ACT_A_NAN
#endif
#ifdef HIDDEN_ACT_ALL_NAN
#define ACT_ALL_NAN
#endif
#include "activation.cl"

inline ACC hidden_activation(ACC v) {
    return ACT_APPLY(ACC, v);
}

// A work-item's share of a sum over [0, n): the chunks of VW consecutive elements lid, lid +
// count, ... as vectors (VW independent sums: a dependency chain of one add a step would bound it
// by the add's latency), then the tail's elements lid, lid + count, ... after the last chunk.

inline ACC share_sum(__global const REAL* a, const idx_t n, const int lid, const int count) {
    VACC acc = 0;
    const idx_t chunks = n / VW;
    for (idx_t k = lid; k < chunks; k += count) acc += CONVERT_VACC(VLOAD(k, a));
    ACC sum = lanes_sum(acc);
    for (idx_t i = chunks * VW + lid; i < n; i += count) sum += (ACC)a[i];
    return sum;
}

inline ACC share_dot(__global const REAL* a, __local const REAL* b, const int n, const int lid,
                     const int count) {
    VACC acc = 0;
    const int chunks = n / VW;
    for (int k = lid; k < chunks; k += count)
        acc += CONVERT_VACC(VLOAD(k, a)) * CONVERT_VACC(VLOAD(k, b));
    ACC sum = lanes_sum(acc);
    for (int i = chunks * VW + lid; i < n; i += count) sum += (ACC)a[i] * (ACC)b[i];
    return sum;
}

// A layer's output r: its partial sums (one a work-item) added in work-item order, the bias
// (where not NULL) last, rounded to REAL as torch's layer rounds its output.
inline ACC layer_output(__local const ACC* partial, const int r, const int count,
                        __global const REAL* bias, const long b_offset) {
    ACC sum = 0;
    for (int l = 0; l < count; ++l) sum += partial[r * count + l];
    if (bias) sum += (ACC)bias[b_offset + r];
    return (ACC)(REAL)sum;
}

__kernel void squeeze_excitation(__global const REAL* restrict x, const long x_offset,
                                 __global const REAL* restrict w1, const long w1_offset,
                                 __global const REAL* b1, const long b1_offset,
                                 __global const REAL* restrict w2, const long w2_offset,
                                 __global const REAL* b2, const long b2_offset,
                                 __global REAL* restrict y, const long y_offset,
                                 const int channels, const int hidden, const long positions,
                                 __local REAL* restrict pooled, __local REAL* restrict h,
                                 __local ACC* restrict partial) {
    // Each reduction runs along contiguous memory, the work-items striding it, each keeping a
    // partial sum of every row (`partial`, rows x work-items), which one work-item a row then
    // adds up (CPU devices run one work-item a group: PoCL's loop over a group's work-items did
    // not vectorise these loops, 2-2.5x slower with 16).
    const int lid = get_local_id(0), count = get_local_size(0);
    const idx_t sample = (idx_t)get_group_id(0) * channels * positions;
    __global const REAL* src = x + x_offset + sample;
    for (int c = 0; c < channels; ++c) {
        partial[c * count + lid] = share_sum(src + (idx_t)c * positions, positions, lid, count);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int c = lid; c < channels; c += count) {
        ACC sum = 0;
        for (int l = 0; l < count; ++l) sum += partial[c * count + l];
        pooled[c] = (REAL)(sum / (ACC)positions);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    __global const REAL* w = w1 + w1_offset;
    for (int j = 0; j < hidden; ++j)
        partial[j * count + lid] = share_dot(w + (idx_t)j * channels, pooled, channels, lid, count);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int j = lid; j < hidden; j += count)
        h[j] = (REAL)hidden_activation(layer_output(partial, j, count, b1, b1_offset));
    barrier(CLK_LOCAL_MEM_FENCE);
    w = w2 + w2_offset;
    for (int c = 0; c < channels; ++c)
        partial[c * count + lid] = share_dot(w + (idx_t)c * hidden, h, hidden, lid, count);
    barrier(CLK_LOCAL_MEM_FENCE);
    // the gates overwrite the means: every mean was read above
    for (int c = lid; c < channels; c += count)
        pooled[c] = (REAL)gate_activation(layer_output(partial, c, count, b2, b2_offset));
    barrier(CLK_LOCAL_MEM_FENCE);
    __global REAL* dst = y + y_offset + sample;
    for (int c = 0; c < channels; ++c) {
        const ACC g = (ACC)pooled[c];
        const idx_t base = (idx_t)c * positions;
        for (idx_t p = lid; p < positions; p += count)
            dst[base + p] = (REAL)((ACC)src[base + p] * g);
    }
}
