// conv_grad_paths.cl: kernels of the gradient / transposed-convolution paths that avoid im2col and
// col2im (clconv.ops.grad_paths).
//
// flip_transpose: the weight of the forward convolution that a stride-1 adjoint is: out (C_in,
//   C_out/groups, *k) with out[g*cin_g + ci, co, t] = w[g*cout_g + co, ci, K - 1 - t] (t the
//   flattened tap: reversing it flips every spatial dim). Sizes are arguments; NDRange (C_in):
//   one work-item per output row block (cout_g filters, written contiguously; a 1x1 layer's
//   transpose would otherwise be one element a work-item).
// dw_weight_grad: the weight gradient of a 2-d depthwise convolution (GROUPS = C, COUT = C * m):
//   dw[co, 0, kh, kw] = sum over n, oh, ow of g[n, co, oh, ow] * x[n, co / m, oh*SH - PH + kh*DH,
//   ow*SW - PW + kw*DW]. One work-item per (co, kh): it walks the batch and the output rows and
//   keeps the KW taps' sums in VW-lane vector accumulators over each row's interior (the outputs
//   whose KW taps all lie inside the stored row: no bounds checks), the few edge outputs one by
//   one. NDRange (COUT, KH), local size (1, 1).
// dw_adjoint: the adjoint of a 2-d depthwise convolution (its input gradient, or a depthwise
//   transposed convolution), gather form for any stride: per input row y of a plane n * C + ci, it finds the kernel rows kh whose (y + PH - kh*DH) lies on the stride grid, then per
//   column phase px (x = px + SW*i) the taps kw on the grid, each reading g column i + c[kw]
//   (unit-stride runs); each output is summed in a register and written once (channel
//   multipliers m > 1 add the later channels to it). The interior [i_in, i_out) of a phase, where
//   every tap's column exists, runs without bounds checks. The row and column phases unroll (SH,
//   SW <= 4), so with PH and PW fixed as defines (this kernel's program is per padding) each
//   phase's taps are known at compile time. Deterministic, no atomics. For strides 1 and 2 along
//   W (dw_adjoint_plane) the columns inside every phase's interior go 4 at a time:
//   a vector per tap and phase, the two phases interleaved into one contiguous store.
//   A work-item walks `planes` whole planes (of nplanes = batch * C) in turn: per-work-item
//   costs dominate small planes (576 planes of 14x14: 0.27 -> see clconv.ops.adjoint_paths).
//   NDRange (ceil(nplanes / planes)), local size 1.
//
// Defines: REAL/ACC, INDEX_T (common.cl), KH/KW, SH/SW, DH/DW (the forward convolution's kernel
// size, stride and dilation; 2-d only, ID = OD = KD = 1); -D VW lanes of dw_weight_grad's vectors
// (4 or 8, default 8); dw_adjoint's program also fixes PH, PW as defines. Sizes (C, COUT, GROUPS, IH, IW, OH, OW, PH, PW) are the GEOMETRY_ARGS
// arguments (RUNTIME_SIZES) of the forward convolution.

#define RUNTIME_SIZES
#include "common.cl"

#ifndef VW
#define VW 8
#endif

#include "vector.cl"

#if SW == 1
#define VEC_OK 1
#define LOAD_STRIDED(p) CONVERT_VACC(VLOAD(0, p))
#elif SW == 2 && VW == 4
#define VEC_OK 1
#define LOAD_STRIDED(p) CONVERT_VACC(vload8(0, p).even)
#elif SW == 2 && VW == 8
#define VEC_OK 1
#define LOAD_STRIDED(p) CONVERT_VACC(vload16(0, p).even)
#else
#define VEC_OK 0
#endif

// transpose_rows: dst[z] (cols x rows) = src[z] (rows x cols) transposed, z < get_global_size(2)
//   (SplitKWeightGrad's x^T, for gemm_splitk's row-major B). A 16 x 16 tile a work-item: rows of
//   16 read and written contiguously. NDRange (ceil(cols / 16), ceil(rows / 16), batch).
__kernel void transpose_rows(__global const REAL* restrict src, const long src_offset,
                             __global REAL* restrict dst, const long dst_offset, const int rows,
                             const long cols) {
    const long p0 = (long)get_global_id(0) * 16;
    const int c0 = get_global_id(1) * 16;
    const long z = get_global_id(2);
    const int nc = min(16, rows - c0);
    const int np = (int)min((long)16, cols - p0);
    const __global REAL* s = src + src_offset + z * rows * cols + (long)c0 * cols + p0;
    __global REAL* d = dst + dst_offset + z * rows * cols + p0 * rows + c0;
    REAL t[16][16];
    for (int c = 0; c < nc; ++c)
        for (int p = 0; p < np; ++p) t[c][p] = s[(long)c * cols + p];
    for (int p = 0; p < np; ++p)
        for (int c = 0; c < nc; ++c) d[(long)p * rows + c] = t[c][p];
}

__kernel void flip_transpose(__global const REAL* restrict w, const long w_offset,
                             __global REAL* restrict out, const long out_offset,
                             const int cout_g, const int cin_g, const int ksize) {
    const int gci = get_global_id(0);  // g * cin_g + ci: one output filter row block each
    const int g = gci / cin_g, ci = gci - g * cin_g;
    const __global REAL* src = w + w_offset + ((long)g * cout_g * cin_g + ci) * ksize;
    __global REAL* dst = out + out_offset + (long)gci * cout_g * ksize;
    for (int co = 0; co < cout_g; ++co) {
        const __global REAL* f = src + (long)co * cin_g * ksize;
        for (int t = 0; t < ksize; ++t) dst[co * ksize + t] = f[ksize - 1 - t];
    }
}

__kernel void dw_weight_grad(__global const REAL* restrict x, const long x_offset,
                             __global const REAL* restrict g, const long g_offset,
                             __global REAL* restrict dw, const long dw_offset, const int batch,
                             GEOMETRY_ARGS) {
    const int co = get_global_id(0);
    const int kh = get_global_id(1);
    const int ci = co / (COUT / C);
    // Interior: ow * SW - PW >= 0 and ow * SW - PW + (KW - 1) * DW <= IW - 1.
    const int ow_lo = min((PW + SW - 1) / SW, OW);
    const int num = IW - 1 - (KW - 1) * DW + PW;
    const int ow_hi = max(min(num < 0 ? 0 : num / SW + 1, OW), ow_lo);
#if SW == 1
    const int ow_vec = ow_hi;  // the vector loop may end at the interior's end
#else
    const int ow_vec = ow_hi - 1;  // .even loads read one past the last tap: stop one earlier
#endif
    ACC acc[KW];
#if VEC_OK
    VACC vacc[KW];
#endif
#pragma unroll
    for (int kw = 0; kw < KW; ++kw) {
        acc[kw] = (ACC)0;
#if VEC_OK
        vacc[kw] = (VACC)0;
#endif
    }
    // The rows whose taps read zero padding add g * 0 to every tap of this kernel row: 0, or NaN
    // for a non-finite g, as torch (a few rows: a loop of its own, outside the vector loop).
    ACC padded = (ACC)0;
    for (int n = 0; n < batch; ++n) {
        const __global REAL* gp = g + g_offset + ((idx_t)n * COUT + co) * OH * OW;
        for (int oh = 0; oh < OH; ++oh) {
            const int ih = oh * SH - PH + kh * DH;
            if (ih >= 0 && ih < IH) continue;
            for (int ow = 0; ow < OW; ++ow) padded += ZERO_TIMES((ACC)gp[(idx_t)oh * OW + ow]);
        }
    }
    for (int n = 0; n < batch; ++n) {
        const __global REAL* gp = g + g_offset + ((idx_t)n * COUT + co) * OH * OW;
        const __global REAL* xp = x + x_offset + ((idx_t)n * C + ci) * IH * IW;
        for (int oh = 0; oh < OH; ++oh) {
            const int ih = oh * SH - PH + kh * DH;
            if (ih < 0 || ih >= IH) continue;
            const __global REAL* gr = gp + (idx_t)oh * OW;
            const __global REAL* xr = xp + (idx_t)ih * IW - PW;  // xr[ow * SW + kw * DW]
            int ow = ow_lo;
#if VEC_OK
            for (; ow + VW <= ow_vec; ow += VW) {
                const VACC gv = CONVERT_VACC(VLOAD(0, gr + ow));
#pragma unroll
                for (int kw = 0; kw < KW; ++kw)
                    vacc[kw] = fma(gv, LOAD_STRIDED(xr + ow * SW + kw * DW), vacc[kw]);
            }
#endif
            for (; ow < ow_hi; ++ow) {
                const ACC gv = (ACC)gr[ow];
#pragma unroll
                for (int kw = 0; kw < KW; ++kw)
                    acc[kw] = fma(gv, (ACC)xr[ow * SW + kw * DW], acc[kw]);
            }
            // The edges: outputs with a tap in the padding.
            for (int e = 0; e < OW; ++e) {
                if (e == ow_lo) e = ow_hi;
                if (e >= OW) break;
                const ACC gv = (ACC)gr[e];
#pragma unroll
                for (int kw = 0; kw < KW; ++kw) {
                    const int iw = e * SW - PW + kw * DW;
                    acc[kw] = fma(gv, (iw >= 0 && iw < IW) ? (ACC)xr[iw + PW] : (ACC)0, acc[kw]);
                }
            }
        }
    }
#pragma unroll
    for (int kw = 0; kw < KW; ++kw) {
        ACC s = acc[kw] + padded;
#if VEC_OK
        ACC lanes[VW];
        VSTORE(vacc[kw], 0, lanes);
        for (int l = 0; l < VW; ++l) s += lanes[l];
#endif
        dw[dw_offset + ((idx_t)co * KH + kh) * KW + kw] = (REAL)s;
    }
}

#define MODP(a, s) ((((a) % (s)) + (s)) % (s))
#define FLOORDIV(a, s) (((a) - MODP(a, s)) / (s))
// Tap (kh, kw) reaches the rows of phase py / the columns of phase px (compile-time after unrolling:
// PH, PW are defines for this kernel).
#define ROW_ON(py, kh) (MODP((py) + PH - (kh) * DH, SH) == 0)
#define COL_ON(px, kw) (MODP((px) + PW - (kw) * DW, SW) == 0)
#define COL_SHIFT(px, kw) FLOORDIV((px) + PW - (kw) * DW, SW)

// The gather form's rows (dw_adjoint, col2im_phase): for input row y0 + py of row phase py (yy =
// y0 / SH), kernel row kh reads row oh = yy + FLOORDIV(py + PH - kh * DH, SH) of its operand, at
// gr[kh] = base + kh * kh_stride + oh * OW; rok[kh]: the tap row is on the phase's grid and oh
// exists. Returns whether every row on the grid exists.
inline bool phase_rows(GEO_DECL const int py, const int yy, const __global REAL* base,
                       const idx_t kh_stride, const __global REAL** gr, bool* rok) {
    bool all_rows = true;
#pragma unroll
    for (int kh = 0; kh < KH; ++kh) {
        const int oh = yy + FLOORDIV(py + PH - kh * DH, SH);
        rok[kh] = ROW_ON(py, kh) && oh >= 0 && oh < OH;
        if (ROW_ON(py, kh) && !rok[kh]) all_rows = false;
        gr[kh] = base + kh * kh_stride + (idx_t)oh * OW;  // read only when rok[kh]
    }
    return all_rows;
}

// The interior [s0, s1) of column phase px's `count` columns x = px + SW * i: the i where every
// tap's column exists (none unless all_rows: edge rows check every column).
inline int2 phase_interior(GEO_DECL const int px, const int count, const bool all_rows) {
    int i_in = 0, i_out = count;
#pragma unroll
    for (int kw = 0; kw < KW; ++kw) {
        if (COL_ON(px, kw)) {
            i_in = max(i_in, -COL_SHIFT(px, kw));
            i_out = min(i_out, OW - COL_SHIFT(px, kw));
        }
    }
    if (!all_rows) i_in = i_out = count;
    i_out = max(i_out, min(i_in, count));
    i_in = min(i_in, count);
    return (int2)(i_in, i_out);
}

// An output channel's filter into taps; whether every tap is finite.
inline bool dw_taps(const __global REAL* wp, REAL taps[KH][KW]) {
    bool finite = true;
#pragma unroll
    for (int kh = 0; kh < KH; ++kh)
#pragma unroll
        for (int kw = 0; kw < KW; ++kw) {
            taps[kh][kw] = wp[kh * KW + kw];
            finite &= isfinite(taps[kh][kw]);
        }
    return finite;
}

// TERM(kh, kw) for every tap of row phase py and column phase px (compile-time after unrolling).
#define PHASE_TAPS(py, px, TERM)                        \
    _Pragma("unroll") for (int kh_ = 0; kh_ < KH; ++kh_) { \
        if (!ROW_ON(py, kh_)) continue;                   \
        _Pragma("unroll") for (int kw_ = 0; kw_ < KW; ++kw_) \
            if (COL_ON(px, kw_)) TERM(kh_, kw_);          \
    }

// The gather walk of dw_adjoint and col2im_phase over output plane `plane` of dst (IH x IW rows):
// per input row y of row phase py its kernel rows (phase_rows from base, kh_stride apart), per
// column phase px the interior [i_in, i_out) without checks, then the rest checked. Output x =
// px + SW * i starts from o[x] when `accumulate` (else 0) and takes TERM(acc, kh, kw, row, ox)
// for each tap (kh, kw) on the phase's grid whose operand row (gr[kh]) and column ox exist.
#define GATHER_PLANE(dst, plane, base, kh_stride, accumulate, TERM)                      \
    for (int y0 = 0; y0 < IH; y0 += SH) {                                                \
        _Pragma("unroll") for (int py = 0; py < SH; ++py) {                              \
            const int y = y0 + py;                                                       \
            if (y >= IH) break;                                                          \
            const int yy = y0 / SH;                                                      \
            const __global REAL* gr[KH];                                                 \
            bool rok[KH];                                                                \
            const bool all_rows = phase_rows(GEO_PASS py, yy, base, kh_stride, gr, rok); \
            __global REAL* o = (dst) + ((plane) * IH + y) * IW;                          \
            _Pragma("unroll") for (int px = 0; px < SW; ++px) {                          \
                if (px >= IW) break;                                                     \
                const int count = (IW - px + SW - 1) / SW; /* columns x = px + SW * i */ \
                const int2 interior = phase_interior(GEO_PASS px, count, all_rows);      \
                const int i_in = interior.s0, i_out = interior.s1;                       \
                /* Interior: every tap's row and column exist, no checks. */             \
                for (int i = i_in; i < i_out; ++i) {                                     \
                    ACC acc = (accumulate) ? (ACC)o[px + SW * i] : (ACC)0;               \
                    _Pragma("unroll") for (int kh = 0; kh < KH; ++kh) {                  \
                        if (!ROW_ON(py, kh)) continue;                                   \
                        _Pragma("unroll") for (int kw = 0; kw < KW; ++kw)                \
                            if (COL_ON(px, kw))                                          \
                                TERM(acc, kh, kw, gr[kh], i + COL_SHIFT(px, kw));        \
                    }                                                                    \
                    o[px + SW * i] = (REAL)acc;                                          \
                }                                                                        \
                /* The rest, checked. */                                                 \
                for (int i = 0; i < count; ++i) {                                        \
                    if (i == i_in) i = i_out;                                            \
                    if (i >= count) break;                                               \
                    ACC acc = (accumulate) ? (ACC)o[px + SW * i] : (ACC)0;               \
                    _Pragma("unroll") for (int kh = 0; kh < KH; ++kh) {                  \
                        if (!rok[kh]) continue;                                          \
                        _Pragma("unroll") for (int kw = 0; kw < KW; ++kw) {              \
                            const int ox = i + COL_SHIFT(px, kw);                        \
                            if (COL_ON(px, kw) && ox >= 0 && ox < OW)                    \
                                TERM(acc, kh, kw, gr[kh], ox);                           \
                        }                                                                \
                    }                                                                    \
                    o[px + SW * i] = (REAL)acc;                                          \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    }

#if SW <= 2
// dw_adjoint's plane for strides 1 and 2 along W: GATHER_PLANE's walk, with the outputs whose every
// tap (of both column phases) exists computed AVW columns i at a time: per phase, one vector of
// AVW consecutive g values (unit stride) per tap, and for stride 2 the two phases' vectors
// interleaved into 2 * AVW adjacent outputs (x = 2i and 2i + 1), so the stores are contiguous.
// The rest (the edges, the last columns short of a vector) goes through the checked scalar walk.
// AVW = 4 columns (measured on AVX-512 against 8: as fast on wide rows, faster on the 7-column
// rows of 14x14 outputs; and 4 doubles keep to 256 bits, the widest AVX2 passes to builtins).
// (AVW_OUT = AVW * SW, written out: it is pasted into type names)
#define AVW 4
#if SW == 1
#define AVW_OUT 4
#else
#define AVW_OUT 8
#endif
#define AVACC CAT(ACC, AVW)
#define AVACC_OUT CAT(ACC, AVW_OUT)
#define AVLOAD CAT(vload, AVW)
#define AVLOAD_OUT CAT(vload, AVW_OUT)
#define AVSTORE_OUT CAT(vstore, AVW_OUT)
#define CONVERT_AVACC CAT(convert_, AVACC)
#define CONVERT_AVACC_OUT CAT(convert_, AVACC_OUT)
#define CONVERT_AVREAL_OUT CAT(convert_, CAT(REAL, AVW_OUT))

// Column phase px's sums for the AVW columns from i (rows of phase py): every tap on the grid.
inline AVACC dw_phase_vector(GEO_DECL const int py, const int px, const int i, const __global REAL** gr,
                             const REAL taps[KH][KW]) {
    AVACC v = (AVACC)0;
#define VECTOR_TERM(kh, kw) \
    v = fma((AVACC)(ACC)taps[kh][kw], CONVERT_AVACC(AVLOAD(0, gr[kh] + i + COL_SHIFT(px, kw))), v)
    PHASE_TAPS(py, px, VECTOR_TERM)
#undef VECTOR_TERM
    return v;
}

inline void dw_adjoint_plane(GEO_DECL __global REAL* dst, const idx_t plane,
                             const __global REAL* base, const bool accumulate,
                             const REAL taps[KH][KW]) {
    for (int y0 = 0; y0 < IH; y0 += SH) {
#pragma unroll
        for (int py = 0; py < SH; ++py) {
            const int y = y0 + py;
            if (y >= IH) break;
            const __global REAL* gr[KH];
            bool rok[KH];
            const bool all_rows = phase_rows(GEO_PASS py, y0 / SH, base, 0, gr, rok);
            __global REAL* o = dst + (plane * IH + y) * IW;
            // [v0, v1): the columns i inside every phase's interior, whole vectors of them
            int v0 = 0, v1 = IW;
#pragma unroll
            for (int px = 0; px < SW; ++px) {
                const int2 r = phase_interior(GEO_PASS px, (IW - px + SW - 1) / SW, all_rows);
                v0 = max(v0, r.s0);
                v1 = min(v1, r.s1);
            }
            v1 = v0 + max(v1 - v0, 0) / AVW * AVW;
            for (int i = v0; i < v1; i += AVW) {
                AVACC_OUT v;
#if SW == 1
                v = dw_phase_vector(GEO_PASS py, 0, i, gr, taps);
#else
                v.even = dw_phase_vector(GEO_PASS py, 0, i, gr, taps);
                v.odd = dw_phase_vector(GEO_PASS py, 1, i, gr, taps);
#endif
                if (accumulate) v += CONVERT_AVACC_OUT(AVLOAD_OUT(0, o + SW * i));
                AVSTORE_OUT(CONVERT_AVREAL_OUT(v), 0, o + SW * i);
            }
            // The rest one output at a time: the phase's interior without checks, then its edges.
#pragma unroll
            for (int px = 0; px < SW; ++px) {
                if (px >= IW) break;
                const int count = (IW - px + SW - 1) / SW;
                const int2 interior = phase_interior(GEO_PASS px, count, all_rows);
                for (int i = interior.s0; i < interior.s1; ++i) {
                    if (i == v0 && v1 > v0) i = v1;  // [v0, v1) lies inside every interior
                    if (i >= interior.s1) break;
                    ACC acc = accumulate ? (ACC)o[px + SW * i] : (ACC)0;
#define SCALAR_TERM(kh, kw) acc = fma((ACC)taps[kh][kw], (ACC)gr[kh][i + COL_SHIFT(px, kw)], acc)
                    PHASE_TAPS(py, px, SCALAR_TERM)
#undef SCALAR_TERM
                    o[px + SW * i] = (REAL)acc;
                }
                for (int i = 0; i < count; ++i) {
                    if (i == interior.s0) i = interior.s1;
                    if (i >= count) break;
                    ACC acc = accumulate ? (ACC)o[px + SW * i] : (ACC)0;
#pragma unroll
                    for (int kh = 0; kh < KH; ++kh) {
                        if (!rok[kh]) continue;
#pragma unroll
                        for (int kw = 0; kw < KW; ++kw) {
                            const int ox = i + COL_SHIFT(px, kw);
                            if (COL_ON(px, kw) && ox >= 0 && ox < OW)
                                acc = fma((ACC)taps[kh][kw], (ACC)gr[kh][ox], acc);
                        }
                    }
                    o[px + SW * i] = (REAL)acc;
                }
            }
        }
    }
}

#ifdef ADJ_ROWS
// dw_adjoint with -D ADJ_ROWS, ADJ_COLS (the buffer's size, buckets set by the host): the same
// adjoint for small planes (MobileNetV2's strided layers at 14x14 to 56x56) from a private
// zero-bordered copy of each g plane, so every row's phases go AVW columns at a time with no
// edge code (the scalar edges were most of dw_adjoint's time there: 576 planes of 14x14, 0.22
// ms). The buffer holds g's plane at (ADJ_TOP, ADJ_LEFT); the zeros around it stay from the
// first fill. A zero read adds 0 * w, exact for a finite w; a plane with an Inf or NaN tap takes
// the gather (torch sums only the taps that exist).
#define RS_MIN FLOORDIV(PH - (KH - 1) * DH, SH)  // the smallest row shift of any phase's tap
#define CS_MIN FLOORDIV(PW - (KW - 1) * DW, SW)  // the smallest column shift
#define ADJ_TOP (RS_MIN < 0 ? -RS_MIN : 0)
#define ADJ_LEFT (CS_MIN < 0 ? -CS_MIN : 0)

// Column phase px's sums for the AVW columns from i, of the buffer rows of row phase py (yy).
inline AVACC dw_small_vector(const int py, const int px, const int yy, const int i,
                             const REAL* buf, const REAL taps[KH][KW]) {
    AVACC v = (AVACC)0;
#define SMALL_TERM(kh, kw)                                                                \
    v = fma((AVACC)(ACC)taps[kh][kw],                                                     \
            CONVERT_AVACC(AVLOAD(0, buf + (yy + FLOORDIV(py + PH - (kh) * DH, SH) + ADJ_TOP) * \
                                          ADJ_COLS + i + COL_SHIFT(px, kw) + ADJ_LEFT)), v)
    PHASE_TAPS(py, px, SMALL_TERM)
#undef SMALL_TERM
    return v;
}

// The plane of output channel co (its taps finite) from g's plane gp, through buf; added to the
// output when `accumulate` (the later channels of a channel multiplier).
inline void dw_small_plane(GEO_DECL REAL* buf, const __global REAL* gp, const REAL taps[KH][KW],
                           __global REAL* dst, const idx_t plane, const bool accumulate) {
    for (int oh = 0; oh < OH; ++oh)
        for (int ow = 0; ow < OW; ++ow)
            buf[(oh + ADJ_TOP) * ADJ_COLS + ADJ_LEFT + ow] = gp[(idx_t)oh * OW + ow];
    for (int y0 = 0; y0 < IH; y0 += SH) {
#pragma unroll
        for (int py = 0; py < SH; ++py) {
            const int y = y0 + py;
            if (y >= IH) break;
            __global REAL* o = dst + (plane * IH + y) * IW;
            for (int i = 0; SW * i < IW; i += AVW) {  // outputs x = SW * i .. + AVW_OUT
                AVACC_OUT v;
#if SW == 1
                v = dw_small_vector(py, 0, y0 / SH, i, buf, taps);
#else
                v.even = dw_small_vector(py, 0, y0 / SH, i, buf, taps);
                v.odd = dw_small_vector(py, 1, y0 / SH, i, buf, taps);
#endif
                if (SW * i + AVW_OUT <= IW) {
                    if (accumulate) v += CONVERT_AVACC_OUT(AVLOAD_OUT(0, o + SW * i));
                    AVSTORE_OUT(CONVERT_AVREAL_OUT(v), 0, o + SW * i);
                } else {  // the row's last, partial vector
                    ACC lanes[AVW_OUT];
                    AVSTORE_OUT(v, 0, lanes);
                    for (int l = 0; SW * i + l < IW; ++l)
                        o[SW * i + l] = (REAL)(lanes[l] + (accumulate ? (ACC)o[SW * i + l]
                                                                      : (ACC)0));
                }
            }
        }
    }
}
#endif  // ADJ_ROWS
#endif

__kernel void dw_adjoint(__global const REAL* restrict g, const long g_offset,
                         __global const REAL* restrict w, const long w_offset,
                         __global REAL* restrict out, const long out_offset, GEOMETRY_ARGS,
                         const int planes, const long nplanes) {
    const idx_t p0 = (idx_t)get_global_id(0) * planes;
    const idx_t p1 = min(p0 + planes, (idx_t)nplanes);
#ifdef ADJ_ROWS
    REAL buf[ADJ_ROWS * ADJ_COLS];
    for (int j = 0; j < ADJ_ROWS * ADJ_COLS; ++j) buf[j] = (REAL)0;
#endif
    for (idx_t plane = p0; plane < p1; ++plane) {  // n * C + ci
        const int m = COUT / C;
        const idx_t n = plane / C;
        const int ci = plane % C;
        for (int j = 0; j < m; ++j) {
            const int co = ci * m + j;
            const __global REAL* gp = g + g_offset + (n * COUT + co) * OH * OW;
            REAL taps[KH][KW];
            const bool finite = dw_taps(w + w_offset + (idx_t)co * KH * KW, taps);
#ifdef ADJ_ROWS
            if (finite) {  // (else the gather below: the taps that exist)
                dw_small_plane(GEO_PASS buf, gp, taps, out + out_offset, plane, j > 0);
                continue;
            }
#endif
            // Tap (kh, kw) weighs g's column ox; later channels (j > 0) add to the output.
#if SW <= 2
            dw_adjoint_plane(GEO_PASS out + out_offset, plane, gp, j > 0, taps);
#else
#define DW_TERM(acc, kh, kw, row, ox) acc = fma((ACC)taps[kh][kw], (ACC)(row)[ox], acc)
            GATHER_PLANE(out + out_offset, plane, gp, 0, j, DW_TERM)
#undef DW_TERM
#endif
        }
    }
}

// The weight gradient of a dense (groups = 1) convolution as one packed GEMM (cl/gemm_packed.cl's
// micro-kernel), dW (COUT x C*KH*KW) = G (COUT x N*L) @ X^T, with K = N * L the batch's output
// positions: the images' products are summed inside the GEMM's K loop. Both operands are written
// straight into the micro-kernel's packed layouts, so there is neither an im2col buffer nor a
// transposed packing pass (the slow part of packing B = cols^T: one 8-long run per work-item):
// wg_pack_g: A panels [ceil(COUT / MR)][N*L][MR] from g (N, COUT, L). NDRange (ceil(N*L / RUN),
//   ceil(COUT / MR)), local size 1.
// wg_pack_x: B panels [ceil(C*KH*KW / NR)][N*L][NR], column j = (ci*KH + kh)*KW + kw of row
//   (n, oh, ow) = x[n, ci, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW] (0 in the padding); each
//   work-item fills RUN rows of one panel, one column at a time, an output row's segment at a
//   time: zeros, a strided copy of the image row, zeros (the bounds worked out once a segment).
//   NDRange (ceil(N*L / RUN), ceil(C*KH*KW / NR)), local size 1.
// -D MR, NR: the GEMM's tile (clconv.blas.packed.Tile); RUN: rows a work-item packs (256: fewer,
// longer work-items; PoCL pays per work-group).
#include "tile.cl"
#ifndef RUN
#define RUN 256
#endif

__kernel void wg_pack_g(__global const REAL* restrict g, const long g_offset,
                        __global REAL* restrict ap, const long ap_offset, const int m,
                        const int l, const int k_total) {
    const int kb = get_global_id(0) * RUN;
    const int ip = get_global_id(1);
    const int ke = min(kb + RUN, k_total);
    __global REAL* dst = ap + ap_offset + (long)ip * k_total * MR;
    int n = kb / l, li = kb - n * l;
    for (int kk = kb; kk < ke; ++kk) {
#pragma unroll
        for (int r = 0; r < MR; ++r) {
            const int row = ip * MR + r;
            dst[(long)kk * MR + r] = row < m ? g[g_offset + ((long)n * m + row) * l + li]
                                             : (REAL)0;
        }
        if (++li == l) {
            li = 0;
            ++n;
        }
    }
}

__kernel void wg_pack_x(__global const REAL* restrict x, const long x_offset,
                        __global REAL* restrict bp, const long bp_offset, const int ncols,
                        const int k_total, GEOMETRY_ARGS) {
    const int kb = get_global_id(0) * RUN;
    const int jp = get_global_id(1);
    const int ke = min(kb + RUN, k_total);
    __global REAL* dst = bp + bp_offset + (long)jp * k_total * NR;
    const int l = OH * OW;
    const int n0 = kb / l, l0 = kb - n0 * l;
    const int oh0 = l0 / OW, ow0 = l0 - oh0 * OW;
    for (int jj = 0; jj < NR; ++jj) {
        const int j = jp * NR + jj;
        if (j >= ncols) {
            for (int kk = kb; kk < ke; ++kk) dst[(long)kk * NR + jj] = (REAL)0;
            continue;
        }
        const int kw = j % KW, kh = (j / KW) % KH, ci = j / (KW * KH);
        const int shift = kw * DW - PW;  // iw = ow * SW + shift
        // Output columns whose iw lies in [0, IW): [ow_lo, ow_hi).
        const int ow_lo = max(0, -FLOORDIV(shift, SW));
        const int ow_hi = max(ow_lo, min(OW, FLOORDIV(IW - 1 - shift, SW) + 1));
        int n = n0, oh = oh0, ow = ow0;
        for (int kk = kb; kk < ke;) {
            // One segment: the rest of output row (n, oh) within this run.
            const int len = min(OW - ow, ke - kk);
            __global REAL* d = dst + (long)kk * NR + jj;
            const int ih = oh * SH - PH + kh * DH;
            if (ih < 0 || ih >= IH) {
                for (int o = 0; o < len; ++o) d[o * NR] = (REAL)0;
            } else {
                const __global REAL* src = x + x_offset + (((long)n * C + ci) * IH + ih) * IW +
                                           shift;  // src[ow * SW]
                const int lo = clamp(ow_lo - ow, 0, len), hi = clamp(ow_hi - ow, lo, len);
                for (int o = 0; o < lo; ++o) d[o * NR] = (REAL)0;
                for (int o = lo; o < hi; ++o) d[o * NR] = src[(ow + o) * SW];
                for (int o = hi; o < len; ++o) d[o * NR] = (REAL)0;
            }
            kk += len;
            ow += len;
            if (ow == OW) {
                ow = 0;
                if (++oh == OH) {
                    oh = 0;
                    ++n;
                }
            }
        }
    }
}

// col2im_phase: col2im (cl/col2im.cl's result) in dw_adjoint's gather form, for transpose.Adjoint
// when one image's columns are in the buffer at once: out[n, ci, y, x] = sum over the taps (kh, kw)
// that reach (y, x) of col[n][(ci*KH + kh)*KW + kw][oh*OW + ow]. Row and column phases unroll
// (SH, SW <= 4; PH, PW defines), so each phase's taps are compile-time and its interior runs
// without checks; each output is written once (no zero fill, no atomics). One work-item per plane
// n * C + ci; NDRange (batch * C), local size 1. Columns of image n at col_offset + n * C*KH*KW*L.
__kernel void col2im_phase(__global const REAL* restrict col, const long col_offset,
                           __global REAL* restrict out, const long out_offset, GEOMETRY_ARGS) {
    const idx_t plane = get_global_id(0);  // n * C + ci
    const idx_t l = (idx_t)OH * OW;
    const __global REAL* cp = col + col_offset + plane * KH * KW * l;  // (n*C + ci)*KH*KW rows
    // Tap (kh, kw)'s column ox: kw * l + ox in its kernel row's block of columns.
#define COL_TERM(acc, kh, kw, row, ox) acc += (ACC)(row)[(kw) * l + (ox)]
    GATHER_PLANE(out + out_offset, plane, cp, KW * l, false, COL_TERM)
#undef COL_TERM
}
