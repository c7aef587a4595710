// interpolate.cl: torch.nn.functional.interpolate of the NSPATIAL (1-3) spatial dims of a tensor
// viewed as (planes, D, H, W) (fewer dims: leading sizes of 1), with torch's index arithmetic
// (aten/src/ATen/native/UpSample.h) so that results and NaN/Inf patterns follow torch's:
//   MODE 0 'nearest':       src = min(floor(dst * scale), in - 1) (2-d: out == in: dst;
//          out == 2 in: dst / 2)
//   MODE 1 'nearest-exact': src = min(floor((dst + 0.5) * scale), in - 1) (2-d); 1-d and 3-d:
//          min(floor(max(scale * (dst + 0.5) - 0.5, 0) + 0.5), in - 1), as torch's separable
//          kernel (HelperInterpNearestExact) rounds it
//   MODE 2 linear ('linear', 'bilinear', 'trilinear'): src = scale * (dst + 0.5) - 0.5 clamped at 0,
//          or scale * dst with -D ALIGN_CORNERS; the two neighbours i0 = min(floor(src), in - 1),
//          i1 = i0 + (i0 < in - 1) with weights 1 - l, l = src - i0, every dim torch has (two taps
//          even where out == in: then l = 0 and i1 = i0, so that an Inf gives NaN there as in
//          torch), nested as torch's (depth outermost).
//   MODE 3 'bicubic' (NSPATIAL 2): src = scale * (dst + 0.5) - 0.5 (not clamped), or scale * dst
//          with -D ALIGN_CORNERS; i = floor(src), t = src - i; the taps i - 1 .. i + 2 clamped to
//          the input, weighted by Keys' cubic convolution with A = -0.75 (torch's
//          get_cubic_upsample_coefficients); every one of the 16 taps counts (a weight of 0 times
//          NaN is NaN, as in torch); the rows' sums weighted as torch nests them (width inner).
// `scale` per dim: what torch's area_pixel_compute_scale gives (the host works it out in torch's
// type: double for double tensors, but float for the 2-d nearest modes, else float).
// Sizes are arguments: one program per mode, NSPATIAL, ALIGN_CORNERS and dtype.
// NDRange (OW, OH, planes * OD).

#include "common.cl"

#ifndef MODE
#define MODE 0
#endif
#ifndef NSPATIAL
#define NSPATIAL 2
#endif

// The index arithmetic runs in torch's opmath type (double for double tensors), but the 2-d
// nearest modes' in float (as torch's nearest_idx, whatever the dtype).
#if defined(USE_FP64) && (MODE >= 2 || NSPATIAL != 2)
typedef double scale_t;
typedef double4 scale4_t;
#else
typedef float scale_t;
typedef float4 scale4_t;
#endif

#if MODE == 2
// (i0, i1, l0, l1) of output coordinate dst along a dim of `in` inputs and `out` outputs.
inline void linear_taps(const int dst, const int in, const int out, const scale_t scale, int* i0,
                        int* i1, ACC* l0, ACC* l1) {
    // As torch's HelperInterpLinear: the source coordinate scale * (dst + 0.5) - 0.5 is one
    // fused multiply-add (the compilers of torch's kernels contract it, in float and double;
    // written out for drivers that would not, llvmpipe: 0.2f * 2.5f - 0.5f gave a weight of 0,
    // not 7.45e-9, and an Inf input NaN), and guard_index_and_lambda takes floorf of it, a float
    // even for double tensors (1/3 * 4.5 - 0.5 fused is 0.9999999999999999: index 1, weight 0).
    // Where a NaN or Inf reaches depends on both.
    if (in == out) {
        *i0 = *i1 = dst;
        *l0 = (ACC)1;
        *l1 = (ACC)0;
        return;
    }
#ifdef ALIGN_CORNERS
    const scale_t real = scale * (scale_t)dst;
#else
    scale_t real = fma(scale, (scale_t)dst + (scale_t)0.5, (scale_t)-0.5);
    real = (real < (scale_t)0) ? (scale_t)0 : real;
#endif
    const int i = min((int)floor((float)real), in - 1);
    const scale_t l = clamp(real - (scale_t)i, (scale_t)0, (scale_t)1);
    *i0 = i;
    *i1 = i + ((i < in - 1) ? 1 : 0);
    *l1 = (ACC)l;
    *l0 = (ACC)1 - (ACC)l;
}
#elif MODE == 3
// The four taps (clamped) and weights of output coordinate dst along a dim of `in` inputs.
inline void cubic_taps(const int dst, const int in, const scale_t scale, int* idx, ACC* wt) {
    // torch's guard_index_and_lambda: the index is floorf of the source coordinate (a float
    // even for double tensors), the weight's t clamped to [0, 1]; the coordinate is one fused
    // multiply-add (the compilers of torch's kernels contract it; written out for drivers that
    // would not, llvmpipe). A tap weight exactly 0 or tiny decides whether an Inf gives NaN.
#ifdef ALIGN_CORNERS
    const scale_t real = scale * (scale_t)dst;
#else
    const scale_t real = fma(scale, (scale_t)dst + (scale_t)0.5, (scale_t)-0.5);
#endif
    const int i = min((int)floor((float)real), in - 1);
    const scale_t t = clamp(real - (scale_t)i, (scale_t)0, (scale_t)1);
    const scale_t A = (scale_t)-0.75;
    // cubic_convolution1(x) for |x| <= 1, cubic_convolution2(x) for 1 < |x| < 2 (torch's)
    const scale_t x0 = t + (scale_t)1, x1 = t, x2 = (scale_t)1 - t, x3 = x2 + (scale_t)1;
    wt[0] = (ACC)(((A * x0 - (scale_t)5 * A) * x0 + (scale_t)8 * A) * x0 - (scale_t)4 * A);
    wt[1] = (ACC)((((A + (scale_t)2) * x1 - (A + (scale_t)3)) * x1 * x1) + (scale_t)1);
    wt[2] = (ACC)((((A + (scale_t)2) * x2 - (A + (scale_t)3)) * x2 * x2) + (scale_t)1);
    wt[3] = (ACC)(((A * x3 - (scale_t)5 * A) * x3 + (scale_t)8 * A) * x3 - (scale_t)4 * A);
    for (int j = 0; j < 4; ++j) idx[j] = clamp(i - 1 + j, 0, in - 1);
}
#else
inline int nearest_source(const int dst, const int in, const int out, const scale_t scale) {
#if NSPATIAL != 2
    // torch's separable kernel (1-d, 3-d): the index in opmath, floorf of it as a float. Its
    // scale * (dst + 0.5) - 0.5 is one fused multiply-add (the compilers of torch's CPU kernels
    // contract it; measured against every size pair of 1..25 -> 1..69 in both dtypes), written
    // out so that drivers that would not contract it (llvmpipe) round as torch does.
#if MODE == 0
    return min((int)floor((float)(scale * (scale_t)dst)), in - 1);
#else
    scale_t src = fma(scale, (scale_t)dst + (scale_t)0.5, (scale_t)-0.5);
    src = src < (scale_t)0 ? (scale_t)0 : src;
    return min((int)floor((float)(src + (scale_t)0.5)), in - 1);
#endif
#elif MODE == 0
    // floor(dst * scale) with torch's float scale (1 / scale_factor when given, else in / out).
    // torch 2.x's CPU kernels differ by rank: the 2-d one copies (out == in) or halves (out ==
    // 2 in) before scaling (ATen's nearest_idx), the 1-d and 3-d ones always scale. That matters
    // only for a scale_factor whose size rounds there (4 * 1.2 -> 4, 5 * 2.19 -> 10); from sizes
    // the scale gives the same.
#if NSPATIAL == 2
    if (out == in) return dst;
    if (out == 2 * in) return dst >> 1;
#endif
    return min((int)floor((float)dst * scale), in - 1);
#else
    return min((int)floor(((float)dst + 0.5f) * scale), in - 1);
#endif
}
#endif

__kernel void interpolate(__global const REAL* restrict x, const long x_offset,
                          __global REAL* restrict y, const long y_offset,
                          const int4 in_size, const int4 out_size, const scale4_t scale) {
    // in_size / out_size / scale: (unused, D, H, W)
    GATHER_POSITION(out_size, y_offset)
    const int ih = in_size.s2, iw = in_size.s3;
    __global const REAL* src = x + x_offset + plane * ((idx_t)in_size.s1 * ih * iw);
#if MODE == 2
    int w0, w1, h0 = 0, h1 = 0, d0 = 0, d1 = 0;
    ACC lw0, lw1, lh0 = 1, lh1 = 0, ld0 = 1, ld1 = 0;
    linear_taps(w, iw, out_size.s3, scale.s3, &w0, &w1, &lw0, &lw1);
#if NSPATIAL >= 2
    linear_taps(h, ih, out_size.s2, scale.s2, &h0, &h1, &lh0, &lh1);
#endif
#if NSPATIAL == 3
    linear_taps(d, in_size.s1, od, scale.s1, &d0, &d1, &ld0, &ld1);
#endif
#define AT(dd, hh, ww) ((ACC)src[((idx_t)(dd) * ih + (hh)) * iw + (ww)])
#define ROW(dd, hh) (lw0 * AT(dd, hh, w0) + lw1 * AT(dd, hh, w1))
#if NSPATIAL == 1
    const ACC v = ROW(0, 0);
#elif NSPATIAL == 2
    const ACC v = lh0 * ROW(0, h0) + lh1 * ROW(0, h1);
#else
    const ACC v = ld0 * (lh0 * ROW(d0, h0) + lh1 * ROW(d0, h1)) +
                  ld1 * (lh0 * ROW(d1, h0) + lh1 * ROW(d1, h1));
#endif
    y[at] = (REAL)v;
#elif MODE == 3
    int wi[4], hi[4];
    ACC ww[4], wh[4];
    cubic_taps(w, iw, scale.s3, wi, ww);
    cubic_taps(h, ih, scale.s2, hi, wh);
    ACC v = (ACC)0;
    for (int a = 0; a < 4; ++a) {
        __global const REAL* row = src + (idx_t)hi[a] * iw;
        ACC r = (ACC)row[wi[0]] * ww[0];
        for (int b = 1; b < 4; ++b) r += (ACC)row[wi[b]] * ww[b];
        v = a == 0 ? r * wh[0] : v + r * wh[a];
    }
    y[at] = (REAL)v;
#else
    const int sw = nearest_source(w, iw, out_size.s3, scale.s3);
    const int sh = nearest_source(h, ih, out_size.s2, scale.s2);
    const int sd = nearest_source(d, in_size.s1, od, scale.s1);
    y[at] = src[((idx_t)sd * ih + sh) * iw + sw];
#endif
}

// F.interpolate(antialias=True) along one dim (torch's separable resampling for 'bilinear' and
// 'bicubic', aten/src/ATen/native/cpu/UpSampleKernel.cpp): the tensor viewed as (outer, in_len,
// inner) -> (outer, out_len, inner), output o the weighted sum of inputs first[o] ..
// first[o] + count[o] - 1 along the dim with weights[o * taps + j] (the host works out torch's
// filter support, taps and normalised weights in torch's type). Summed as torch's loop: the
// first product, then one fused multiply-add a tap (the compilers of torch's kernels contract
// `output += t * w`); every tap counts (a weight of 0 times an Inf is NaN, as in torch). The
// host runs the width, then the height (torch's order, each rounded to REAL), and leaves out a
// dim whose size stays. NDRange (outer * out_len * inner,).
__kernel void resample_aa(__global const REAL* restrict x, const long x_offset,
                          __global REAL* restrict y, const long y_offset,
                          __global const int* restrict first, __global const int* restrict count,
                          __global const REAL* restrict weights, const int taps,
                          const int in_len, const int out_len, const long inner) {
    const idx_t at = get_global_id(0);
    const idx_t i = at % inner;
    const idx_t r = at / inner;
    const int o = (int)(r % out_len);
    const idx_t outer = r / out_len;
    __global const REAL* src = x + x_offset + (outer * in_len + first[o]) * inner + i;
    __global const REAL* w = weights + (idx_t)o * taps;
    ACC v = (ACC)src[0] * (ACC)w[0];
    const int n = count[o];
    for (int j = 1; j < n; ++j) v = fma((ACC)src[(idx_t)j * inner], (ACC)w[j], v);
    y[y_offset + at] = (REAL)v;
}
