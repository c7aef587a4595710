// conv_depthwise.cl: depthwise convolution (one input channel per group, channel multiplier
// COUT / C >= 1) as a vectorised direct kernel for CPU-like devices (PoCL), one work-item per
// block of output planes x rows x one segment of a row, local size 1.
//
// A work-item keeps a segment of SEG = NV * VW adjacent outputs of one output row in NV vector
// accumulators. Per kernel row (kd, kh) it reads the input line once into the accumulators: per
// tap kw, NV vector loads (unaligned, from L1: the line is reused by KW taps and by the next
// KH - 1 output rows) times the tap broadcast; the taps unroll from the KD/KH/KW defines and are
// loaded once per plane. Segments tile the row's interior [OW_LO, OW_HI) (the outputs whose vector
// loads stay inside the stored line), the last one ending at OW_HI (overlapping its predecessor:
// it stores the same values again), so the hot loop has no bounds checks. The few outputs at the
// padding ([0, OW_LO) and [OW_HI, OW), one or two a row for 3x3) are computed one by one through
// source_coord() (PAD_MODE) by the first and last segment's work-item. Rows whose interior is
// narrower than a segment (the host then picks the shortest vectors; only tiny rows remain) take
// the span path: segments from 0, each span copied into a private zero-filled buffer (through
// source_coord()), the same vector code on it, partial stores. Lines that fall entirely in padding
// along D or H are not read: they add 0 * w (NaN for an Inf or NaN weight, as every path of
// torch's that reads zero padding, and clconv's other kernels). A work-item walks its rows, then
// its planes (several small planes per work-item, so that 7x7 layers do not pay one work-group
// per plane).
//
// A second entry point, conv_depthwise_small (with -D PLANE_ROWS; at the end of the file), takes
// whole small 2-d zero-padded planes (up to 64 padded rows and 4 vectors a row: MobileNet's 7x7
// to 56x56) from a private zero-padded copy: no edge code at all (1.3-2.5x the row segments).
// A third, conv_depthwise_flat (with -D FLAT_LEN; last), takes the smallest of them at stride 1
// (7x7 and 14x14) as one 1-d convolution over the flattened padded plane: chunks of up to 16
// independent vector sums where a row has one or two.
//
// Epilogue (common.cl): + bias[co] (-D HAS_BIAS), + the residual's element (-D HAS_RESIDUAL, an
// operand of y's shape from r_offset), the activation (-D ACT, ACT_A, ACT_B) on whole vectors
// (ACT_APPLY; NaN kept as torch), then a vector store.
//
// Defines: REAL/ACC (common.cl), kernel size KD/KH/KW, stride SD/SH/SW, dilation DD/DH/DW,
// PAD_MODE (common.cl), and the tile:
// -D VW   lanes per vector: 2, 4, 8 or 16 (default 8; at most the device's preferred width)
// -D NV   vectors per segment: 1 .. 4 (default 2); conv_depthwise_flat's chunk: 1 .. 16
// -D FLIP_TAPS  every filter read backwards (the flipped filters of a stride-1 adjoint)
// -D PLANE_ROWS  rows of conv_depthwise_small's buffer (8, 16, 32 or 64: a bucket, so that layers
//                share the program); unset: only conv_depthwise is compiled
// -D FLAT_LEN    elements of conv_depthwise_flat's buffers (a power of two); unset: not compiled
// Sizes (C, COUT, GROUPS = C, ID..OW, PD..PW) are the GEOMETRY_ARGS arguments (RUNTIME_SIZES), and
// the arguments rows (output rows per work-item), planes (output planes per work-item) and
// nplanes (batch * COUT * OD): layers of one kernel size and stride share the program.
// NDRange (segments, ceil(OH / rows), ceil(nplanes / planes)), local size (1, 1, 1); segments:
// ceil((OW_HI - OW_LO) / SEG) when that interior holds a segment, else ceil(OW / SEG)
// (clconv.ops.depthwise.depthwise_launch mirrors this).
// Weight layout (COUT, 1, KD, KH, KW).

#define RUNTIME_SIZES
#include "common.cl"

#ifndef VW
#define VW 8
#endif
#ifndef NV
#define NV 2
#endif
#if NV < 1 || NV > 16
#error "NV must be 1 .. 16"
#endif
#define SEG (NV * VW)
#include "vector.cl"

// Tap t of a filter: -D FLIP_TAPS reads every filter backwards (all spatial dims flipped), so that
// the adjoint of a stride-1 depthwise convolution (the forward one with flipped filters) needs no
// flip pass over the weight before it.
// PAD_TERM(w): what a tap on zero padding adds. A forward convolution adds 0 * w (NaN for an Inf
// or NaN weight, as torch's convolutions give: ZERO_TIMES). The adjoint (FLIP_TAPS) adds nothing:
// torch's transposed convolutions and input gradients sum only the taps that exist, so that an
// Inf weight gives no NaN at the borders. The vector code multiplies stored zeros, exact (0 * w =
// 0) for finite taps; a plane with an Inf or NaN tap has its outputs computed by point().
#ifdef FLIP_TAPS
#define TAP(t) (KD * KH * KW - 1 - (t))
#define PAD_TERM(w) ((ACC)0)
#else
#define TAP(t) (t)
#define PAD_TERM(w) ZERO_TIMES(w)
#endif

// Input columns a segment's vector loads touch, from its first (ow0 * SW - PW): the stride-2 loads
// read 2 * VW values for VW outputs (one past the last used).
#if SW == 2
#define SPAN_READ (2 * SEG + (KW - 1) * DW)
#else
#define SPAN_READ ((SEG - 1) * SW + 1 + (KW - 1) * DW)
#endif

// VW inputs at stride SW from p (global or private), as a VACC.
#if SW == 1
#define LOAD_STRIDED(p) CONVERT_VACC(VLOAD(0, p))
#elif SW == 2 && VW == 2
#define LOAD_STRIDED(p) CONVERT_VACC(vload4(0, p).even)
#elif SW == 2 && VW == 4
#define LOAD_STRIDED(p) CONVERT_VACC(vload8(0, p).even)
#elif SW == 2 && VW == 8
// Two 8-wide loads, not one vload16: a 16-wide vector returned by a builtin changes the x86 ABI
// without AVX-512 (as in conv_grouped.cl).
#define LOAD_STRIDED(p) CONVERT_VACC((VREAL)(vload8(0, p).even, vload8(1, p).even))
#elif SW == 2 && VW == 16
#define LOAD_STRIDED(p) CONVERT_VACC((VREAL)(vload16(0, p).even, vload16(1, p).even))
#else
#define LOAD_STRIDED(p) gather_strided(p)
#endif

// One kernel row (taps t[0 .. KW)) of the segment: acc[v] += t[kw] * the VW inputs of vector v.
#define ROW_TAPS(acc, line, t)                                                 \
    _Pragma("unroll") for (int kw_ = 0; kw_ < KW; ++kw_) {                     \
        const VACC tap_ = (VACC)((t)[kw_]);                                    \
        _Pragma("unroll") for (int v_ = 0; v_ < NV; ++v_)                      \
            acc[v_] += tap_ * LOAD_STRIDED((line) + v_ * VW * SW + kw_ * DW);  \
    }

#if !(SW == 1 || SW == 2)
// Other strides: the lanes gathered one by one into a private vector. Two overloads: the line is
// global on the interior path, private on the edge path.
inline VACC __attribute__((overloadable)) gather_strided(__global const REAL* p) {
    ACC tmp[VW];
#pragma unroll
    for (int l = 0; l < VW; ++l) tmp[l] = (ACC)p[l * SW];
    return VLOAD(0, tmp);
}
inline VACC __attribute__((overloadable)) gather_strided(__private const REAL* p) {
    ACC tmp[VW];
#pragma unroll
    for (int l = 0; l < VW; ++l) tmp[l] = (ACC)p[l * SW];
    return VLOAD(0, tmp);
}
#endif

// Outputs at each side's padding that a work-item accumulates alongside its vectors (scalars
// sharing the vectors' kernel-row loop and taps); more (padding wider than 5x5's) go through
// point(). 2, not 4: measured on PoCL (AVX-512), the 112x112 layers ran 6-13% faster (3x3, 5x5;
// 7x7 within noise) and the kernel compiles ~0.2 s faster at its first launch.
#define EMAX 2

// One output at column ow of line (od, oh), through source_coord() (any padding mode); the taps
// (filter's, through TAP) from global memory, so that the caller's private copy stays in
// registers. Zero padding adds PAD_TERM(w).
inline ACC point(GEO_DECL __global const REAL* image, __global const REAL* filter, int od, int oh,
                 int ow) {
    ACC sum = (ACC)0;
    for (int kd = 0; kd < KD; ++kd) {
        const int sd = source_coord(od * SD - PD + kd * DD, ID);
        for (int kh = 0; kh < KH; ++kh) {
            const int sh = source_coord(oh * SH - PH + kh * DH, IH);
            const int t = (kd * KH + kh) * KW;
            if (sd >= 0 && sh >= 0) {
                __global const REAL* line = image + ((idx_t)sd * IH + sh) * IW;
                for (int kw = 0; kw < KW; ++kw) {
                    const int sw = source_coord(ow * SW - PW + kw * DW, IW);
                    const ACC w = (ACC)filter[TAP(t + kw)];
                    sum += sw >= 0 ? (ACC)line[sw] * w : PAD_TERM(w);
                }
            } else {  // a line of zero padding
                for (int kw = 0; kw < KW; ++kw) sum += PAD_TERM((ACC)filter[TAP(t + kw)]);
            }
        }
    }
    return sum;
}

// Outputs [ow_lo, ow_hi) of line (od, oh) one by one through point() and the epilogue (out and
// res at the line's start).
inline void point_outputs(GEO_DECL __global const REAL* image, __global const REAL* filter,
                          const int od, const int oh, const int ow_lo, const int ow_hi,
                          __global const REAL* bias, const long b_offset, const int co,
                          __global const REAL* res, __global REAL* out) {
    for (int ow = ow_lo; ow < ow_hi; ++ow)
        out[ow] = (REAL)epilogue_residual(point(GEO_PASS image, filter, od, oh, ow), bias,
                                          b_offset, co, res, ow);
}

// Whether every tap of a private filter copy is finite (FLIP_TAPS: else point() computes the
// plane, see PAD_TERM).
inline bool taps_finite(const ACC* taps, const int n) {
    bool finite = true;
    for (int t = 0; t < n; ++t) finite &= isfinite(taps[t]);
    return finite;
}

// Stores the VW outputs r at out (res: the residual at the same place) through the epilogue:
// + bias[co], + the residual, the activation; a whole vector when `full`, else its first n lanes
// one by one.
inline void store_vector(VACC r, const bool full, const int n, __global const REAL* bias,
                         const long b_offset, const int co, __global const REAL* res,
                         __global REAL* out) {
#ifdef HAS_BIAS
    r += (VACC)((ACC)bias[b_offset + co]);
#endif
    if (full) {
#ifdef HAS_RESIDUAL
        r += CONVERT_VACC(VLOAD(0, res));
#endif
        r = ACT_APPLY(VACC, r);
        VSTORE(CONVERT_VREAL(r), 0, out);
    } else {
        ACC lanes[VW];
        VSTORE(r, 0, lanes);
        for (int l = 0; l < VW && l < n; ++l) {
#ifdef HAS_RESIDUAL
            lanes[l] += (ACC)res[l];
#endif
            out[l] = (REAL)activate(lanes[l]);
        }
    }
}

// The arguments of both entry points (conv_depthwise_small takes all rows: it ignores `rows`).
#define DEPTHWISE_ARGS                                                                \
    __global const REAL* restrict x, const long x_offset,                             \
    __global const REAL* restrict weight, const long w_offset,                        \
    __global const REAL* restrict bias, const long b_offset,                          \
    __global const REAL* restrict residual, const long r_offset,                      \
    __global REAL* restrict y, const long y_offset, const int rows, const int planes, \
    const long nplanes, GEOMETRY_ARGS

__kernel void conv_depthwise(DEPTHWISE_ARGS) {
    const int k = get_global_id(0);
    const int oh0 = get_global_id(1) * rows;
    const int oh1 = (OH - oh0 > rows) ? oh0 + rows : OH;
    const idx_t p0 = (idx_t)get_global_id(2) * planes;
    const idx_t p1 = (nplanes - p0 > planes) ? p0 + planes : nplanes;
    const int lo = OW_LO, hi = OW_HI;
    const bool vectors = hi - lo >= SEG;  // the interior holds a segment: no span path
    int ow0, nout, edge0 = 0, edge1 = 0, edge2 = 0;  // scalar outputs [0, edge0), [edge1, edge2)
    if (vectors) {
        ow0 = min(lo + k * SEG, hi - SEG);
        nout = SEG;
        if (k == 0) edge0 = lo;
        if (ow0 + SEG == hi) {
            edge1 = hi;
            edge2 = OW;
        }
    } else {
        ow0 = k * SEG;
        nout = min(SEG, OW - ow0);
    }
    const int iw0 = ow0 * SW - PW;  // the segment's first input column
    const int nleft = min(edge0, EMAX), nright = min(edge2 - edge1, EMAX);
    const int mult = COUT / C;  // channel multiplier: output channel co reads input co / mult

    for (idx_t p = p0; p < p1; ++p) {
        const int od = p % OD;
        const idx_t nco = p / OD;  // n * COUT + co
        const int co = nco % COUT;
        const idx_t n = nco / COUT;
        __global const REAL* image = x + x_offset + (n * C + co / mult) * IN_SPATIAL;
        __global const REAL* filter = weight + w_offset + (idx_t)co * KSIZE;
        ACC taps[KD * KH * KW];
#pragma unroll
        for (int t = 0; t < KD * KH * KW; ++t) taps[t] = (ACC)filter[TAP(t)];
        const idx_t plane = p * ((idx_t)OH * OW);
#ifdef FLIP_TAPS
        if (!taps_finite(taps, KD * KH * KW)) {  // this work-item's outputs one by one
            for (int oh = oh0; oh < oh1; ++oh) {
                const idx_t row = plane + (idx_t)oh * OW;
                __global REAL* out = y + y_offset + row;
                __global const REAL* res = residual + r_offset + row;
                point_outputs(GEO_PASS image, filter, od, oh, ow0, ow0 + nout, bias, b_offset,
                              co, res, out);
                point_outputs(GEO_PASS image, filter, od, oh, 0, edge0, bias, b_offset, co, res,
                              out);
                point_outputs(GEO_PASS image, filter, od, oh, edge1, edge2, bias, b_offset, co,
                              res, out);
            }
            continue;
        }
#endif
        for (int oh = oh0; oh < oh1; ++oh) {
            VACC acc[NV];
#pragma unroll
            for (int v = 0; v < NV; ++v) acc[v] = (VACC)0;
            ACC eacc[2 * EMAX];  // the left edge's outputs 0.., then the right edge's edge1..
#pragma unroll
            for (int e = 0; e < 2 * EMAX; ++e) eacc[e] = (ACC)0;
            for (int kd = 0; kd < KD; ++kd) {
                const int sd = source_coord(od * SD - PD + kd * DD, ID);
#pragma unroll
                for (int kh = 0; kh < KH; ++kh) {
                    const int sh = source_coord(oh * SH - PH + kh * DH, IH);
                    const ACC* t = taps + (kd * KH + kh) * KW;
                    if (sd < 0 || sh < 0) {
                        // A line of zero padding: 0 * w for every output (NaN for an Inf or NaN
                        // weight, as torch's convolutions give).
                        ACC z = (ACC)0;
#pragma unroll
                        for (int kw = 0; kw < KW; ++kw) z += PAD_TERM(t[kw]);
#pragma unroll
                        for (int v = 0; v < NV; ++v) acc[v] += (VACC)z;
#pragma unroll
                        for (int e = 0; e < 2 * EMAX; ++e) eacc[e] += z;
                    } else {
                        __global const REAL* line = image + ((idx_t)sd * IH + sh) * IW;
                        if (vectors) {
                            ROW_TAPS(acc, line + iw0, t)
                            // The outputs at the padding, as scalars on the same line and taps.
#pragma unroll
                            for (int e = 0; e < 2 * EMAX; ++e) {
                                const int ow = e < EMAX ? e : edge1 + e - EMAX;
                                if (e < EMAX ? e < nleft : e - EMAX < nright) {
#pragma unroll
                                    for (int kw = 0; kw < KW; ++kw) {
                                        const int sw = source_coord(ow * SW - PW + kw * DW, IW);
                                        eacc[e] += sw >= 0 ? (ACC)line[sw] * t[kw]
                                                           : PAD_TERM(t[kw]);
                                    }
                                }
                            }
                        } else {
                            // The span with its padding (zero past the stored line and for
                            // lanes past OW, which are not stored).
                            REAL span[SPAN_READ];
                            for (int j = 0; j < SPAN_READ; ++j) {
                                const int sw = source_coord(iw0 + j, IW);
                                span[j] = sw >= 0 ? line[sw] : (REAL)0;
                            }
                            ROW_TAPS(acc, span, t)
                        }
                    }
                }
            }
            const idx_t row = plane + (idx_t)oh * OW;
            __global REAL* out = y + y_offset + row;
            __global const REAL* res = residual + r_offset + row;
#pragma unroll
            for (int v = 0; v < NV; ++v)
                store_vector(acc[v], nout == SEG, nout - v * VW, bias, b_offset, co,
                             res + ow0 + v * VW, out + ow0 + v * VW);
#pragma unroll
            for (int e = 0; e < 2 * EMAX; ++e) {
                const int ow = e < EMAX ? e : edge1 + e - EMAX;
                if (e < EMAX ? e < nleft : e - EMAX < nright)
                    out[ow] = (REAL)epilogue_residual(eacc[e], bias, b_offset, co, res, ow);
            }
            for (int ow = nleft; ow < edge0; ++ow)  // wider padding than EMAX outputs (rare)
                out[ow] = (REAL)epilogue_residual(point(GEO_PASS image, filter, od, oh, ow), bias,
                                                  b_offset, co, res, ow);
            for (int ow = edge1 + nright; ow < edge2; ++ow)
                out[ow] = (REAL)epilogue_residual(point(GEO_PASS image, filter, od, oh, ow), bias,
                                                  b_offset, co, res, ow);
        }
    }
}

// The whole-plane kernels' operands of plane p (2-d): its output channel co, its image and
// filter, the filter's taps in registers (in TAP's order), its first output element `plane`.
#define PLANE_OPERANDS(p)                                                                   \
    const int co = (p) % COUT;                                                              \
    const idx_t n = (p) / COUT;                                                             \
    __global const REAL* image = x + x_offset + (n * C + co / mult) * IN_SPATIAL;           \
    __global const REAL* filter = weight + w_offset + (idx_t)co * KSIZE;                    \
    ACC taps[KH * KW];                                                                      \
    _Pragma("unroll") for (int t = 0; t < KH * KW; ++t) taps[t] = (ACC)filter[TAP(t)];      \
    const idx_t plane = (p) * ((idx_t)OH * OW);

#ifdef PLANE_ROWS
// conv_depthwise_small: whole small planes (2-d, zero padding; -D PLANE_ROWS set by the host),
// e.g. MobileNet's 7x7 and 14x14 layers, where a row's padding would be most of its work. Each
// plane is first copied into a private zero-filled buffer of PLANE_ROWS rows of SPAN_READ columns
// (the padding is then plain zeros: no edge code at all), then every output row is NV vectors from
// that buffer, ROW_TAPS as above, and stored (masked past OW). The host requires OW <= SEG,
// PW + IW <= SPAN_READ and (OH - 1) * SH + (KH - 1) * DH + 1 <= PLANE_ROWS. NDRange
// (1, 1, ceil(nplanes / planes)), local size (1, 1, 1).
#if SW == 2 && KW >= 5
#define DEINTERLEAVED
// Stride 2, 5 taps a row or more: each buffer row holds its even padded columns, then its odd ones
// (from HALF_SPAN), so that a tap's VW inputs at stride 2 are VW adjacent values of one half: a
// plain vector load where LOAD_STRIDED's two loads and a shuffle were, KW of them an output row
// (EfficientNet's 5x5 at stride 2 ran 1.1-1.8x faster; 3x3 ones, whose copy of the plane weighs
// more than their 3 taps, 0.9-1.0x: they keep LOAD_STRIDED).
// Padded column c: output j's tap kw reads c = 2j + kw * DW, at (c & 1) * HALF_SPAN + (c >> 1).
#define HALF_SPAN ((SPAN_READ + 1) / 2)
#define BUF_COL(c) (((c) & 1) * HALF_SPAN + ((c) >> 1))
#define SMALL_ROW_TAPS(acc, line, t)                                                  \
    _Pragma("unroll") for (int kw_ = 0; kw_ < KW; ++kw_) {                            \
        const VACC tap_ = (VACC)((t)[kw_]);                                           \
        const REAL* src_ = (line) + BUF_COL(kw_ * DW);                                \
        _Pragma("unroll") for (int v_ = 0; v_ < NV; ++v_)                             \
            acc[v_] += tap_ * CONVERT_VACC(VLOAD(0, src_ + v_ * VW));                 \
    }

// src[2k] to a[k] and src[2k + 1] to b[k], k < pairs
inline void deinterleave(__global const REAL* restrict src, const int pairs, REAL* restrict a,
                         REAL* restrict b) {
    for (int k = 0; k < pairs; ++k) {
        a[k] = src[2 * k];
        b[k] = src[2 * k + 1];
    }
}
#else
#define BUF_COL(c) (c)
#define SMALL_ROW_TAPS(acc, line, t) ROW_TAPS(acc, line, t)
#endif

__kernel void conv_depthwise_small(DEPTHWISE_ARGS) {
    const idx_t p0 = (idx_t)get_global_id(2) * planes;
    const idx_t p1 = (nplanes - p0 > planes) ? p0 + planes : nplanes;
    const int mult = COUT / C;
    const int ih_hi = min(IH, PLANE_ROWS - PH);  // input rows the buffer holds
    REAL buf[PLANE_ROWS * SPAN_READ];
    for (int j = 0; j < PLANE_ROWS * SPAN_READ; ++j) buf[j] = (REAL)0;
    for (idx_t p = p0; p < p1; ++p) {
        PLANE_OPERANDS(p)
#ifdef FLIP_TAPS
        if (!taps_finite(taps, KH * KW)) {  // the plane one output at a time
            for (int oh = 0; oh < OH; ++oh) {
                const idx_t row = plane + (idx_t)oh * OW;
                point_outputs(GEO_PASS image, filter, 0, oh, 0, OW, bias, b_offset, co,
                              residual + r_offset + row, y + y_offset + row);
            }
            continue;
        }
#endif
        // The plane into the buffer at (PH, PW); the zeros around it stay from the first fill.
        for (int ih = 0; ih < ih_hi; ++ih) {
            __global const REAL* src = image + (idx_t)ih * IW;
            REAL* dst = buf + (ih + PH) * SPAN_READ;
#ifdef DEINTERLEAVED
            // input pairs (iw 2k, 2k + 1) into the halves: a loop of constant stride 2 for
            // the compiler's interleaved vector loads, its halves swapped by PW's parity
            REAL* even = dst + BUF_COL(PW + (PW & 1));      // where iw with PW + iw even go
            REAL* odd = dst + BUF_COL(PW + 1 - (PW & 1));   // ... and odd
            if (PW & 1)
                deinterleave(src, IW / 2, odd, even);
            else
                deinterleave(src, IW / 2, even, odd);
            if (IW & 1) dst[BUF_COL(PW + IW - 1)] = src[IW - 1];
#else
            for (int iw = 0; iw < IW; ++iw) dst[PW + iw] = src[iw];
#endif
        }
        for (int oh = 0; oh < OH; ++oh) {
            VACC acc[NV];
#pragma unroll
            for (int v = 0; v < NV; ++v) acc[v] = (VACC)0;
#pragma unroll
            for (int kh = 0; kh < KH; ++kh) {
                const REAL* line = buf + (oh * SH + kh * DH) * SPAN_READ;
                const ACC* t = taps + kh * KW;
                SMALL_ROW_TAPS(acc, line, t)
            }
            __global REAL* out = y + y_offset + plane + (idx_t)oh * OW;
            __global const REAL* res = residual + r_offset + plane + (idx_t)oh * OW;
#pragma unroll
            for (int v = 0; v < NV; ++v)
                store_vector(acc[v], (v + 1) * VW <= OW, OW - v * VW, bias, b_offset, co,
                             res + v * VW, out + v * VW);
        }
    }
}
#endif  // PLANE_ROWS

#ifdef FLAT_LEN
// conv_depthwise_flat: whole small planes at stride 1 (2-d, zero padding; -D FLAT_LEN set by the
// host), e.g. MobileNetV2's and EfficientNet's 7x7 and 14x14 layers. The plane is copied into a
// private zero-filled buffer of row pitch P = OW + (KW - 1) * DW (its padding then plain zeros);
// output (oh, ow) is element f = oh * P + ow of the flattened rows, and tap (kh, kw) reads
// f + kh * DH * P + kw * DW of the buffer: a 1-d convolution over the whole plane. Chunks of NV
// vectors of consecutive f (up to 16 accumulators: independent sums, where conv_depthwise_small's
// row of one or two vectors chains its KH * KW FMAs), each tap one broadcast and NV plain vector
// loads; the lanes at ow >= OW (P - OW a row) are computed and dropped. The sums go to a private
// buffer of the same pitch, and out row by row through the epilogue; a row's last vector may run
// into the next rows (its lanes past OW), which are stored after it (the plane's own outputs; the
// plane's last row stores only its own lanes). Each output sums its taps in conv_depthwise_small's
// order: the same bits.
// FLAT_LEN: the buffers' elements, a power of two (layers share the program): at least
// ceil(F / SEG) * SEG + (KH - 1) * DH * P + (KW - 1) * DW for F = (OH - 1) * P + OW flat outputs,
// and (OH - 1) * P + ceil(OW / VW) * VW (clconv.ops.depthwise.flat_plane). NDRange
// (1, 1, ceil(nplanes / planes)), local size (1, 1, 1).
__kernel void conv_depthwise_flat(DEPTHWISE_ARGS) {
    const idx_t p0 = (idx_t)get_global_id(2) * planes;
    const idx_t p1 = (nplanes - p0 > planes) ? p0 + planes : nplanes;
    const int mult = COUT / C;
    const int P = OW + (KW - 1) * DW;  // the buffers' row pitch
    const int F = (OH - 1) * P + OW;   // flat outputs
    const int ih_hi = min(IH, OH + (KH - 1) * DH - PH);  // the input rows and columns read
    const int iw_hi = min(IW, P - PW);
    REAL buf[FLAT_LEN];
    ACC sums[FLAT_LEN];
    for (int j = 0; j < FLAT_LEN; ++j) buf[j] = (REAL)0;
    for (idx_t p = p0; p < p1; ++p) {
        PLANE_OPERANDS(p)
        __global REAL* out = y + y_offset + plane;
        __global const REAL* res = residual + r_offset + plane;
#ifdef FLIP_TAPS
        if (!taps_finite(taps, KH * KW)) {  // the plane one output at a time
            for (int oh = 0; oh < OH; ++oh)
                point_outputs(GEO_PASS image, filter, 0, oh, 0, OW, bias, b_offset, co,
                              res + oh * OW, out + oh * OW);
            continue;
        }
#endif
        // The plane into the buffer at (PH, PW); the zeros around it stay from the first fill.
        for (int ih = 0; ih < ih_hi; ++ih) {
            __global const REAL* src = image + (idx_t)ih * IW;
            REAL* dst = buf + (ih + PH) * P + PW;
            for (int iw = 0; iw < iw_hi; ++iw) dst[iw] = src[iw];
        }
        for (int f0 = 0; f0 < F; f0 += SEG) {
            VACC acc[NV];
#pragma unroll
            for (int v = 0; v < NV; ++v) acc[v] = (VACC)0;
#pragma unroll
            for (int kh = 0; kh < KH; ++kh) {
                const REAL* line = buf + f0 + kh * DH * P;
                const ACC* t = taps + kh * KW;
                ROW_TAPS(acc, line, t)
            }
#pragma unroll
            for (int v = 0; v < NV; ++v) VSTORE(acc[v], 0, sums + f0 + v * VW);
        }
        const int total = OH * OW;
        for (int oh = 0; oh < OH; ++oh) {
            for (int s = 0; s < OW; s += VW) {
                const int o = oh * OW + s;
                store_vector(VLOAD(0, sums + oh * P + s), o + VW <= total, total - o, bias,
                             b_offset, co, res + o, out + o);
            }
        }
    }
}
#endif  // FLAT_LEN
