// conv_grouped.cl: direct convolution for groups with few channels each (depthwise: one), where a
// GEMM per group would have a handful of rows.
//
// A work-item computes a segment of segw adjacent outputs along W for one (n, co, od, oh). The
// outputs whose receptive field lies inside the input along W (the interior, a range known at
// the work-item) are computed VW at a time as one vector: per input line and kernel tap, one vector
// of VW inputs (an unaligned vector load for stride 1, the even lanes of a 2 * VW load for
// stride 2) times the tap, so each loaded line serves VW outputs and the taps unroll from the
// KD/KH/KW defines; the last vector of a segment may overlap the previous one (it stores the same
// values again). The few outputs at the left and right edges, where the padding is, are computed
// one by one through source_coord() (PAD_MODE). Lines that fall entirely in zero padding are
// skipped. Short lines are done `rows` at a time, so that a work-item has a few dozen outputs.
//
// Sizes (C, COUT, GROUPS, ID..OW, PD..PW, and so the channels per group CIN_G <= 16 and COUT_G)
// are the GEOMETRY_ARGS arguments (common.cl's RUNTIME_SIZES): the loop over a group's channels
// runs around the unrolled taps, its bound worked out once; kernel size, stride, dilation and
// PAD_MODE are defines:
// -D VW               outputs per vector: 2, 4, 8 or 16 (default 8; 16 only where the device
//                     prefers 16 floats, AVX-512; at most 4 for double: wider vectors than 256
//                     bits through builtins change the ABI on AVX2 CPUs)
// -D COB              output channels per work-item (default 1; COUT_G a multiple of it): their
//                     COB vector accumulators share every input vector loaded, so a layer of few
//                     input channels (a network's 3-channel stem) loads its input COB times less
// Arguments segw (outputs per work-item along W, a multiple of VW) and rows (output lines per
// work-item).
// -D HAS_BIAS         add bias[co]       -D HAS_RESIDUAL  add the residual's element (an operand
//                     of y's shape from r_offset)   -D ACT (ACT_A, ACT_B)  the activation (common.cl),
//                     on whole vectors in the interior (ACT_APPLY)
// Plus the geometry defines of common.cl (any nd: 1-d and 2-d problems are 3-d ones with
// leading 1s).
// NDRange: (ceil(OW / segw), ceil(OH / rows), batch * COUT / COB * OD).
// Weight layout (COUT, C / GROUPS, KD, KH, KW).

#define RUNTIME_SIZES
#include "common.cl"

#ifndef VW
#define VW 8
#endif
#if VW > 16
#error "VW must be 2, 4, 8 or 16"
#endif
#if defined(USE_FP64) && VW > 4
// 8 doubles are 512 bits: passed to or returned from a builtin, such a vector changes the x86 ABI
// without AVX-512 (a compiler warning on AVX2 CPUs). Lanes are independent, so the results are
// the same with 4; segw stays a multiple of it.
#undef VW
#define VW 4
#endif
#include "vector.cl"

#ifndef COB
#define COB 1
#endif

// VW inputs at stride SW from p, as a VACC.
#if SW == 1
#define LOAD_STRIDED(p) CONVERT_VACC(VLOAD(0, p))
#elif SW == 2 && VW == 2
#define LOAD_STRIDED(p) CONVERT_VACC(vload4(0, p).even)
#elif SW == 2 && VW == 4
// Two 4-wide loads: a double8 (512 bits) through a builtin would change the ABI, as below.
#define LOAD_STRIDED(p) CONVERT_VACC((VREAL)(vload4(0, p).even, vload4(1, p).even))
#elif SW == 2 && VW == 8
// Two 8-wide loads, not one vload16: a 16-wide vector returned by a builtin changes the x86 ABI
// without AVX-512 (a compiler warning on AVX2 CPUs); the lanes and the sums are the same.
#define LOAD_STRIDED(p) CONVERT_VACC((VREAL)(vload8(0, p).even, vload8(1, p).even))
#elif SW == 2 && VW == 16  // (AVX-512 devices only: the host asks for 16 lanes there alone)
#define LOAD_STRIDED(p) CONVERT_VACC((VREAL)(vload16(0, p).even, vload16(1, p).even))
#else
#define LOAD_STRIDED(p) load_strided(p)
inline VACC load_strided(__global const REAL* p) {
    ACC tmp[VW];
    for (int v = 0; v < VW; ++v) tmp[v] = (ACC)p[v * SW];
    return VLOAD(0, tmp);
}
#endif

// One output at column ow (any position; the padding is read through source_coord()). A tap in
// zero padding adds 0 * w, as torch's convolutions do: an Inf or NaN weight there gives NaN.
inline ACC conv_point(GEO_DECL __global const REAL* image, __global const REAL* filter, int od,
                      int oh, int ow) {
    ACC sum = (ACC)0;
    for (int ci = 0; ci < CIN_G; ++ci) {
        for (int kd = 0; kd < KD; ++kd) {
            const int sd = source_coord(od * SD - PD + kd * DD, ID);
            for (int kh = 0; kh < KH; ++kh) {
                const int sh = source_coord(oh * SH - PH + kh * DH, IH);
                __global const REAL* taps = filter + (((idx_t)ci * KD + kd) * KH + kh) * KW;
                if (sd < 0 || sh < 0) {  // a line of zero padding
                    for (int kw = 0; kw < KW; ++kw) sum += ZERO_TIMES((ACC)taps[kw]);
                    continue;
                }
                __global const REAL* line = image + ((idx_t)ci * ID + sd) * ((idx_t)IH * IW) +
                                            (idx_t)sh * IW;
                for (int kw = 0; kw < KW; ++kw) {
                    const int sw = source_coord(ow * SW - PW + kw * DW, IW);
                    sum += (sw >= 0 ? (ACC)line[sw] : (ACC)0) * (ACC)taps[kw];
                }
            }
        }
    }
    return sum;
}

// Outputs [seg0, seg1) of line (od, oh) of output channel co into out (the line's start); res: the
// same line of the residual (read only with HAS_RESIDUAL).
inline void conv_segment(GEO_DECL __global const REAL* image, __global const REAL* filter,
                         __global const REAL* bias, long b_offset, __global const REAL* res,
                         __global REAL* out, const idx_t cstride, int co, int od, int oh,
                         int seg0, int seg1) {
    // COB output channels co.. (their filters CIN_G * KSIZE apart, their planes cstride apart).
    const idx_t fstride = (idx_t)CIN_G * KSIZE;
    // The segment's interior part [a, b), done by vectors when it holds at least one.
    int a = max(seg0, OW_LO), b = min(seg1, OW_HI);
    if (b - a < VW) a = b = seg1;
    for (int ow = seg0; ow < a; ++ow)
#pragma unroll
        for (int j = 0; j < COB; ++j)
            out[j * cstride + ow] = (REAL)epilogue_residual(
                conv_point(GEO_PASS image, filter + j * fstride, od, oh, ow), bias, b_offset,
                co + j, res + j * cstride, ow);
    // The input line each kernel row (kd, kh) reads (common.cl's input_lines), worked out once for
    // the segment.
    idx_t line_at[KD * KH];
    input_lines(GEO_PASS od, oh, line_at);
    for (int ow0 = a; ow0 < b; ow0 += VW) {
        const int s = min(ow0, b - VW);  // the last vector ends at b (overlapping its predecessor)
        __global const REAL* strip = image + (s * SW - PW);
        VACC acc[COB];
#pragma unroll
        for (int j = 0; j < COB; ++j) acc[j] = (VACC)0;
        for (int ci = 0; ci < CIN_G; ++ci) {
#pragma unroll
            for (int r = 0; r < KD * KH; ++r) {  // r = kd * KH + kh
                __global const REAL* taps = filter + ((idx_t)ci * (KD * KH) + r) * KW;
                if (line_at[r] >= 0) {
                    __global const REAL* line = strip + (idx_t)ci * IN_SPATIAL + line_at[r];
#pragma unroll
                    for (int kw = 0; kw < KW; ++kw) {
                        const VACC v = LOAD_STRIDED(line + kw * DW);  // shared by the COB channels
#pragma unroll
                        for (int j = 0; j < COB; ++j) acc[j] += (ACC)taps[j * fstride + kw] * v;
                    }
                } else {  // a line of zero padding: 0 * w (NaN for an Inf or NaN weight, as torch)
#pragma unroll
                    for (int kw = 0; kw < KW; ++kw)
#pragma unroll
                        for (int j = 0; j < COB; ++j) acc[j] += ZERO_TIMES((ACC)taps[j * fstride + kw]);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < COB; ++j) {
#ifdef HAS_BIAS
            acc[j] += (ACC)bias[b_offset + co + j];
#endif
#ifdef HAS_RESIDUAL
            acc[j] += CONVERT_VACC(VLOAD(0, res + j * cstride + s));
#endif
            acc[j] = ACT_APPLY(VACC, acc[j]);  // relu: one select (NaN < 0 is false: NaN stays NaN)
            VSTORE(CONVERT_VREAL(acc[j]), 0, out + j * cstride + s);
        }
    }
    for (int ow = max(b, seg0); ow < seg1; ++ow)
#pragma unroll
        for (int j = 0; j < COB; ++j)
            out[j * cstride + ow] = (REAL)epilogue_residual(
                conv_point(GEO_PASS image, filter + j * fstride, od, oh, ow), bias, b_offset,
                co + j, res + j * cstride, ow);
}

__kernel void conv_grouped(__global const REAL* restrict x, const long x_offset,
                           __global const REAL* restrict weight, const long w_offset,
                           __global const REAL* restrict bias, const long b_offset,
                           __global const REAL* restrict residual, const long r_offset,
                           __global REAL* restrict y, const long y_offset, const int segw,
                           const int rows, GEOMETRY_ARGS) {
    const int seg0 = get_global_id(0) * segw;
    const int seg1 = (OW - seg0 > segw) ? seg0 + segw : OW;  // no seg0 + segw past 2**31 - 1
    const int oh0 = get_global_id(1) * rows;
    const int oh1 = (OH - oh0 > rows) ? oh0 + rows : OH;
    int od, co;
    idx_t nco, n;  // nco = n * COUT + co
#if COB == 1
    output_plane(GEO_PASS get_global_id(2), &od, &nco, &n, &co);
#else
    {  // z = (n * COUT / COB + block) * OD + od: the work-item's channels are co.. co + COB - 1
        const idx_t z = get_global_id(2);
        od = (OD == 1) ? 0 : (int)(z % OD);
        const idx_t nb = (OD == 1) ? z : z / OD;
        const int blocks = COUT / COB;
        n = (nb < blocks) ? 0 : nb / blocks;
        co = (int)(nb - n * blocks) * COB;
        nco = n * COUT + co;
    }
#endif
    const int c0 = (co / COUT_G) * CIN_G;

    __global const REAL* image = x + x_offset + (n * C + c0) * IN_SPATIAL;
    __global const REAL* filter = weight + w_offset + (idx_t)co * (CIN_G * KSIZE);
    const idx_t plane = (nco * OD + od) * ((idx_t)OH * OW);
    __global REAL* out = y + y_offset + plane;
    __global const REAL* res = residual + r_offset + plane;  // parallel to out
    const idx_t cstride = (idx_t)OD * OH * OW;  // from one output channel's plane to the next
    for (int oh = oh0; oh < oh1; ++oh)
        conv_segment(GEO_PASS image, filter, bias, b_offset, res + (idx_t)oh * OW,
                     out + (idx_t)oh * OW, cstride, co, od, oh, seg0, seg1);
}
