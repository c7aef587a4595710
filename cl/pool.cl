// pool.cl: max / average / adaptive pooling and their gradients on the canonical 3-D geometry.
//
// A pooling problem is `planes` = N * C independent planes of ID x IH x IW (1-D and 2-D problems are
// 3-D ones whose leading dims are 1) pooled to OD x OH x OW. Every size, kernel extent, stride,
// padding and dilation is a kernel ARGUMENT (int4 vectors: .x = depth, .y = height, .z = width, .w
// unused), not a -D define: pooling is memory-bound, and all pooling layers of a network then share
// one program per dtype.
//
// Semantics are torch's CPU kernels':
//   max:       window o*s - p + k*d over k < K, clipped to the input; the maximum with NaN winning
//              (`v > best || isnan(v)`), its flat index d*IH*IW + h*IW + w in the plane saved for the
//              gradient (the first maximum; the last NaN).
//   avg:       window [o*s - p, min(o*s - p + K, I + p)) (its size is the count with padding), then
//              clipped to [0, I); divisor: `divisor` if not 0, else that padded count when
//              count_include_pad, else the clipped count; an empty clipped window gives 0.
//   adaptive:  window [floor(o * I / O), ceil((o + 1) * I / O)).
// Gradients are gathers (each input element sums the outputs whose window holds it), so no atomics
// are needed and the result is deterministic.
//
// -D REAL, -D INDEX_T (common.cl). No other define. NDRange: avg_pool (OW, OH, planes * OD),
// max_pool_rows(_indices) (OH, planes * OD), max_pool_backward_rows (IH, planes * ID); the others (elements
// written,) 1-D.

#include "common.cl"

// The output element of a 3-D NDRange (OW, OH, planes * OD) -> (plane, d, h, w) and its flat index
// i: no division but the one by OD (the forward kernels' work-items, a row of outputs along
// dimension 0, are what PoCL vectorises).
#define OUTPUT_OF_NDRANGE(size, plane, d, h, w, i)               \
    const int w = (int)get_global_id(0);                         \
    const int h = (int)get_global_id(1);                         \
    const idx_t pd_ = (idx_t)get_global_id(2);                   \
    const int d = (int)(pd_ % (size).x);                         \
    const idx_t plane = pd_ / (size).x;                          \
    const idx_t i = (pd_ * (size).y + h) * (size).z + w;

// Flat output (or input) index -> (plane, d, h, w) for a plane of extent `size`.
#define DECODE(i, size, plane, d, h, w)                          \
    const int w = (int)((i) % (size).z);                         \
    const int h = (int)(((i) / (size).z) % (size).y);            \
    const int d = (int)(((i) / ((idx_t)(size).z * (size).y)) % (size).x); \
    const idx_t plane = (i) / ((idx_t)(size).z * (size).y * (size).x);

#define VOLUME(size) ((idx_t)(size).x * (size).y * (size).z)

// Adaptive window [start, end) of output o of O over an input of I.
inline int adaptive_start(int o, int in, int out) { return (int)(((long)o * in) / out); }
inline int adaptive_end(int o, int in, int out) {
    return (int)(((long)(o + 1) * in + out - 1) / out);
}

// The max pools' work-item: output row oh of plane * OD + od (pd), its window rows [h0, h1) and
// depths [d0, d1) clipped to the input (dilated steps), and the plane's input `src`.
#define MAX_POOL_ROW_PROLOGUE                                        \
    const int oh = (int)get_global_id(0);                            \
    const idx_t pd = (idx_t)get_global_id(1); /* plane * OD + od */  \
    const int od = (int)(pd % out.x);                                \
    const idx_t plane = pd / out.x;                                  \
    int d0 = od * s.x - p.x, h0 = oh * s.y - p.y;                    \
    const int d1 = min(d0 + (k.x - 1) * dil.x + 1, in.x);            \
    const int h1 = min(h0 + (k.y - 1) * dil.y + 1, in.y);            \
    while (d0 < 0) d0 += dil.x;                                      \
    while (h0 < 0) h0 += dil.y;                                      \
    __global const REAL* src = x + x_offset + plane * VOLUME(in);

// Max pooling: a work-item per output row (NDRange (OH, planes * OD)), its windows clipped to the
// input, the maximum kept by a select (no branch to mispredict). ~2-3x faster on PoCL than a
// work-item per output (a 3x3 / 2 pool of 64x112x112: 0.8 ms against 2.5 with indices).
// max_pool_rows_indices also writes each maximum's flat index in its plane (int64, for backward;
// the first of equal maxima, the last NaN, as torch's). Two kernels written out: one body with
// the index as a constant flag made the inference kernel 2.5x slower on PoCL (the vectoriser).
__kernel void max_pool_rows(__global const REAL* restrict x, const long x_offset,
                            __global REAL* restrict y, const long y_offset,
                            const int4 in, const int4 out, const int4 k, const int4 s,
                            const int4 p, const int4 dil) {
    MAX_POOL_ROW_PROLOGUE
    __global REAL* dst = y + y_offset + (pd * out.y + oh) * out.z;
    for (int ow = 0; ow < out.z; ++ow) {
        int w0 = ow * s.z - p.z;
        const int w1 = min(w0 + (k.z - 1) * dil.z + 1, in.z);
        while (w0 < 0) w0 += dil.z;
        REAL best = -INFINITY;
        for (int d = d0; d < d1; d += dil.x)
            for (int h = h0; h < h1; h += dil.y) {
                __global const REAL* row = src + ((idx_t)d * in.y + h) * in.z;
                for (int w = w0; w < w1; w += dil.z) {
                    const REAL v = row[w];
                    best = (v > best || isnan(v)) ? v : best;  // NaN propagates, as torch's
                }
            }
        dst[ow] = best;
    }
}

__kernel void max_pool_rows_indices(__global const REAL* restrict x, const long x_offset,
                                    __global REAL* restrict y, const long y_offset,
                                    __global long* restrict indices, const long i_offset,
                                    const int4 in, const int4 out, const int4 k, const int4 s,
                                    const int4 p, const int4 dil) {
    MAX_POOL_ROW_PROLOGUE
    const idx_t first = (pd * out.y + oh) * out.z;
    __global REAL* dst = y + y_offset + first;
    __global long* at = indices + i_offset + first;
    for (int ow = 0; ow < out.z; ++ow) {
        int w0 = ow * s.z - p.z;
        const int w1 = min(w0 + (k.z - 1) * dil.z + 1, in.z);
        while (w0 < 0) w0 += dil.z;
        REAL best = -INFINITY;
        idx_t best_i = ((idx_t)d0 * in.y + h0) * in.z + w0;  // (idx_t holds the tensor's indices)
        for (int d = d0; d < d1; d += dil.x)
            for (int h = h0; h < h1; h += dil.y) {
                const idx_t start = ((idx_t)d * in.y + h) * in.z;
                __global const REAL* row = src + start;
                for (int w = w0; w < w1; w += dil.z) {
                    const REAL v = row[w];
                    const bool take = v > best || isnan(v);  // NaN propagates, as torch's
                    best = take ? v : best;
                    best_i = take ? start + w : best_i;
                }
            }
        dst[ow] = best;
        at[ow] = (long)best_i;
    }
}

__kernel void avg_pool(__global const REAL* restrict x, const long x_offset,
                       __global REAL* restrict y, const long y_offset,
                       const int count_include_pad, const long divisor,
                       const int4 in, const int4 out, const int4 k, const int4 s, const int4 p) {
    OUTPUT_OF_NDRANGE(out, plane, od, oh, ow, i)
    int d0 = od * s.x - p.x, h0 = oh * s.y - p.y, w0 = ow * s.z - p.z;
    int d1 = min(d0 + k.x, in.x + p.x), h1 = min(h0 + k.y, in.y + p.y), w1 = min(w0 + k.z, in.z + p.z);
    const int padded = (d1 - d0) * (h1 - h0) * (w1 - w0);
    d0 = max(d0, 0); h0 = max(h0, 0); w0 = max(w0, 0);
    d1 = min(d1, in.x); h1 = min(h1, in.y); w1 = min(w1, in.z);
    if (d0 >= d1 || h0 >= h1 || w0 >= w1) {
        y[y_offset + i] = (REAL)0;
        return;
    }
    __global const REAL* src = x + x_offset + plane * VOLUME(in);
    ACC sum = 0;
    for (int d = d0; d < d1; ++d)
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w) sum += (ACC)src[((idx_t)d * in.y + h) * in.z + w];
    const long count = divisor != 0 ? divisor
                      : (count_include_pad ? padded : (d1 - d0) * (h1 - h0) * (w1 - w0));
    y[y_offset + i] = (REAL)(sum / (ACC)count);
}

__kernel void adaptive_pool(__global const REAL* restrict x, const long x_offset,
                            __global REAL* restrict y, const long y_offset,
                            __global long* restrict indices, const long i_offset, const int is_max,
                            const int save, const int4 in, const int4 out) {
    const idx_t i = get_global_id(0);
    DECODE(i, out, plane, od, oh, ow)
    const int d0 = adaptive_start(od, in.x, out.x), d1 = adaptive_end(od, in.x, out.x);
    const int h0 = adaptive_start(oh, in.y, out.y), h1 = adaptive_end(oh, in.y, out.y);
    const int w0 = adaptive_start(ow, in.z, out.z), w1 = adaptive_end(ow, in.z, out.z);
    __global const REAL* src = x + x_offset + plane * VOLUME(in);
    if (is_max) {
        long best_i = ((long)d0 * in.y + h0) * in.z + w0;
        REAL best = -INFINITY;
        for (int d = d0; d < d1; ++d)
            for (int h = h0; h < h1; ++h)
                for (int w = w0; w < w1; ++w) {
                    const long j = ((long)d * in.y + h) * in.z + w;
                    const REAL v = src[j];
                    if (v > best || isnan(v)) {
                        best = v;
                        best_i = j;
                    }
                }
        y[y_offset + i] = best;
        if (save) indices[i_offset + i] = best_i;
    } else {
        ACC sum = 0;
        for (int d = d0; d < d1; ++d)
            for (int h = h0; h < h1; ++h)
                for (int w = w0; w < w1; ++w) sum += (ACC)src[((idx_t)d * in.y + h) * in.z + w];
        y[y_offset + i] = (REAL)(sum / (ACC)((d1 - d0) * (h1 - h0) * (w1 - w0)));
    }
}

// The outputs [lo, hi] along one dim whose window (o*s - p + kk*dl, kk < K) can hold input i.
inline int2 pool_range(int i, int k, int s, int p, int dl, int o_count) {
    const int top = i + p;  // o*s + kk*dl == top for some kk
    const int lo_num = top - (k - 1) * dl;
    const int lo = lo_num <= 0 ? 0 : (lo_num + s - 1) / s;
    return (int2)(lo, min(top / s, o_count - 1));
}

// grad_x of adaptive max pooling: every output whose window holds this input element and whose
// saved index is this element adds its gradient (NDRange (elements,)).
__kernel void adaptive_max_pool_backward(__global const REAL* restrict g, const long g_offset,
                                         __global const long* restrict indices,
                                         const long i_offset, __global REAL* restrict dx,
                                         const long dx_offset, const int4 in, const int4 out) {
    const idx_t i = get_global_id(0);
    DECODE(i, in, plane, id, ih, iw)
    const long self = ((long)id * in.y + ih) * in.z + iw;
    const int2 rd = (int2)((int)(((long)id * out.x) / in.x), adaptive_end(id, out.x, in.x) - 1);
    const int2 rh = (int2)((int)(((long)ih * out.y) / in.y), adaptive_end(ih, out.y, in.y) - 1);
    const int2 rw = (int2)((int)(((long)iw * out.z) / in.z), adaptive_end(iw, out.z, in.z) - 1);
    const idx_t base = plane * VOLUME(out);
    ACC sum = 0;
    for (int od = rd.x; od <= rd.y; ++od)
        for (int oh = rh.x; oh <= rh.y; ++oh)
            for (int ow = rw.x; ow <= rw.y; ++ow) {
                const idx_t o = base + ((idx_t)od * out.y + oh) * out.z + ow;
                if (indices[i_offset + o] == self) sum += (ACC)g[g_offset + o];
            }
    dx[dx_offset + i] = (REAL)sum;
}

// grad_x of max pooling with fixed windows: a work-item per input row (NDRange (IH, planes * ID)),
// each element summing the gradients of the outputs whose window holds it and whose saved index
// is it, in output order (torch's scatter adds them in that order too: the same sums). The
// candidate outputs of an element come from pool_range; ~8x faster on PoCL than a work-item per
// element with 64-bit index arithmetic (a 3x3 / 2 pool of 64x112x112).
__kernel void max_pool_backward_rows(__global const REAL* restrict g, const long g_offset,
                                     __global const long* restrict indices, const long i_offset,
                                     __global REAL* restrict dx, const long dx_offset,
                                     const int4 in, const int4 out, const int4 k, const int4 s,
                                     const int4 p, const int4 dil) {
    const int ih = (int)get_global_id(0);
    const idx_t pd = (idx_t)get_global_id(1);  // plane * ID + id
    const int id = (int)(pd % in.x);
    const idx_t plane = pd / in.x;
    const int2 rd = pool_range(id, k.x, s.x, p.x, dil.x, out.x);
    const int2 rh = pool_range(ih, k.y, s.y, p.y, dil.y, out.y);
    const idx_t base = plane * VOLUME(out);
    __global const REAL* gp = g + g_offset + base;
    __global const long* ip = indices + i_offset + base;
    __global REAL* dst = dx + dx_offset + (pd * in.y + ih) * in.z;
    const long row = ((long)id * in.y + ih) * in.z;
    for (int iw = 0; iw < in.z; ++iw) {
        const int2 rw = pool_range(iw, k.z, s.z, p.z, dil.z, out.z);
        const long self = row + iw;
        ACC sum = 0;
        for (int od = rd.x; od <= rd.y; ++od)
            for (int oh = rh.x; oh <= rh.y; ++oh) {
                const idx_t orow = ((idx_t)od * out.y + oh) * out.z;
                for (int ow = rw.x; ow <= rw.y; ++ow)
                    sum += ip[orow + ow] == self ? (ACC)gp[orow + ow] : (ACC)0;
            }
        dst[iw] = (REAL)sum;
    }
}

// grad_x of average pooling (arguments as avg_pool's): each output's gradient over its divisor, summed
// over the outputs whose clipped window holds this element.
__kernel void avg_pool_backward(__global const REAL* restrict g, const long g_offset,
                                __global REAL* restrict dx, const long dx_offset,
                                const int count_include_pad, const long divisor,
                                const int4 in, const int4 out, const int4 k, const int4 s,
                                const int4 p) {
    const idx_t i = get_global_id(0);
    DECODE(i, in, plane, id, ih, iw)
    const int2 rd = pool_range(id, k.x, s.x, p.x, 1, out.x);
    const int2 rh = pool_range(ih, k.y, s.y, p.y, 1, out.y);
    const int2 rw = pool_range(iw, k.z, s.z, p.z, 1, out.z);
    const idx_t base = plane * VOLUME(out);
    ACC sum = 0;
    for (int od = rd.x; od <= rd.y; ++od)
        for (int oh = rh.x; oh <= rh.y; ++oh)
            for (int ow = rw.x; ow <= rw.y; ++ow) {
                int d0 = od * s.x - p.x, h0 = oh * s.y - p.y, w0 = ow * s.z - p.z;
                int d1 = min(d0 + k.x, in.x + p.x), h1 = min(h0 + k.y, in.y + p.y);
                int w1 = min(w0 + k.z, in.z + p.z);
                const int padded = (d1 - d0) * (h1 - h0) * (w1 - w0);
                d0 = max(d0, 0); h0 = max(h0, 0); w0 = max(w0, 0);
                d1 = min(d1, in.x); h1 = min(h1, in.y); w1 = min(w1, in.z);
                const long count = divisor != 0 ? divisor
                                  : (count_include_pad ? padded : (d1 - d0) * (h1 - h0) * (w1 - w0));
                sum += (ACC)g[g_offset + base + ((idx_t)od * out.y + oh) * out.z + ow] / (ACC)count;
            }
    dx[dx_offset + i] = (REAL)sum;
}

// grad_x of adaptive average pooling: the outputs whose window [start, end) holds this element are
// o in [floor(i * O / I), ceil((i + 1) * O / I)) along each dim.
__kernel void adaptive_avg_pool_backward(__global const REAL* restrict g, const long g_offset,
                                         __global REAL* restrict dx, const long dx_offset,
                                         const int4 in, const int4 out) {
    const idx_t i = get_global_id(0);
    DECODE(i, in, plane, id, ih, iw)
    const int od0 = (int)(((long)id * out.x) / in.x), od1 = adaptive_end(id, out.x, in.x);
    const int oh0 = (int)(((long)ih * out.y) / in.y), oh1 = adaptive_end(ih, out.y, in.y);
    const int ow0 = (int)(((long)iw * out.z) / in.z), ow1 = adaptive_end(iw, out.z, in.z);
    const idx_t base = plane * VOLUME(out);
    ACC sum = 0;
    for (int od = od0; od < od1; ++od) {
        const int nd = adaptive_end(od, in.x, out.x) - adaptive_start(od, in.x, out.x);
        for (int oh = oh0; oh < oh1; ++oh) {
            const int nh = adaptive_end(oh, in.y, out.y) - adaptive_start(oh, in.y, out.y);
            for (int ow = ow0; ow < ow1; ++ow) {
                const int nw = adaptive_end(ow, in.z, out.z) - adaptive_start(ow, in.z, out.z);
                sum += (ACC)g[g_offset + base + ((idx_t)od * out.y + oh) * out.z + ow] /
                       (ACC)(nd * nh * nw);
            }
        }
    }
    dx[dx_offset + i] = (REAL)sum;
}
