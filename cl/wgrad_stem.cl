// wgrad_stem.cl: the weight gradient of a dense (groups 1) 1-d / 2-d zero-padded convolution with
// few input channels (network stems: 3 -> 64 7x7 stride 2, 3 -> 32 3x3 stride 2), without packing:
//
//   dW[co][ci][kh][kw] = sum over (n, oh, ow) of G[n][co][oh][ow] * x[n][ci][oh*SH - PH + kh*DH]
//                                                                    [ow*SW - PW + kw*DW]
//
// As a GEMM (G @ X^T) these layers have K = batch * output positions in the ten thousands but only
// C*KH*KW (27, 147) columns: packing X^T (KH*KW times x) and G took longer than the GEMM. Here the
// sum runs along output rows instead: VW output columns are one vector of G's row, read where it
// is, and the matching inputs of each tap one vector of a phase-split copy of x, so that a tile of
// CO_T output channels x KW taps is CO_T*KW vector accumulators (summed across lanes once, at the
// end). No operand is packed; the copy of x is x's size.
//
// wg_phase_x: xq[n][ci][p][r][c] = x[n][ci][r - PH][c*SW + p - PW] (0 in the padding), p < SW (the
//   column phase), r < hp = (OH-1)*SH + (KH-1)*DH + 1, c < wq = OW + (KW-1)*DW / SW: tap kw of
//   output column ow reads xq[..][(kw*DW) % SW][..][ow + (kw*DW) / SW], so a vector of VW output
//   columns is VW adjacent values. NDRange (hp, N*C), local size (1, 1): a work-item a row.
// wg_stem: work-item (ci*KH + kh, cb) sums the taps (ci, kh, 0..KW-1) of output channels
//   cb*CO_T .. cb*CO_T + CO_T - 1 over every image and output row, VW columns a step; a row's last
//   OW % VW columns are one vector ending at the row's end whose lanes already summed are masked
//   (0 in both G and x, so that an Inf or NaN is counted once), so OW >= VW (the host's rule).
//   The batch is cut into chunks of `chunk` images, chunk z's sums written to the z-th dW (at
//   dw + dw_offset + z * dw_stride): with one chunk that is dW itself, with more the host adds
//   them up (splitk_reduce.cl) -- so that the G rows of one image, which the C*KH work-items of
//   an output channel block all read, stay in L2 between them (a whole batch's do not).
//   NDRange (C*KH, ceil(COUT / CO_T), chunks), local size (1, 1, 1).
//
// Defines: KW (the taps a tile holds: the inner loop's bound), CO_T (its output channels), VW (the
// vector width), REAL, INDEX_T. The sizes and padding are GEOMETRY_ARGS (RUNTIME_SIZES); KH, the
// strides and the dilation are `taps` (kh, sh, sw, dh) and `dil_w`: layers of a kernel width share
// a program. The sum is one fixed order: results are deterministic.

#define RUNTIME_SIZES
#include "common.cl"
#include "vector.cl"
#include "row_sums.cl"

__kernel void wg_phase_x(__global const REAL* restrict x, const long x_offset,
                         __global REAL* restrict xq, const long xq_offset, const int hp,
                         const int wq, const int sw, GEOMETRY_ARGS) {
    const int r = get_global_id(0);
    const int nci = get_global_id(1);  // n * C + ci
    const int ih = r - PH;
    const bool row_in = ih >= 0 && ih < IH;
    const __global REAL* src = x + x_offset + ((long)nci * IH + ih) * IW;
    for (int p = 0; p < sw; ++p) {
        __global REAL* dst = xq + xq_offset + (((long)nci * sw + p) * hp + r) * wq;
        // Columns c with iw = c*sw + p - PW in [0, IW): [c_lo, c_hi).
        const int c_lo = min(wq, (PW - p + sw - 1 > 0) ? (PW - p + sw - 1) / sw : 0);
        const int c_hi = row_in ? clamp((IW + PW - p + sw - 1) / sw, c_lo, wq) : c_lo;
        for (int c = 0; c < c_lo; ++c) dst[c] = (REAL)0;
        for (int c = c_lo; c < c_hi; ++c) dst[c] = src[c * sw + p - PW];
        for (int c = c_hi; c < wq; ++c) dst[c] = (REAL)0;
    }
}

__kernel void wg_stem(__global const REAL* restrict g, const long g_offset,
                      __global const REAL* restrict xq, const long xq_offset,
                      __global REAL* restrict dw, const long dw_offset, const int batch,
                      const int chunk, const long dw_stride, const int hp, const int wq,
                      const int4 taps, const int dil_w, GEOMETRY_ARGS) {
    const int kh_count = taps.s0, sh = taps.s1, sw = taps.s2, dh = taps.s3;
    const int cikh = get_global_id(0);
    const int ci = cikh / kh_count, kh = cikh - ci * kh_count;
    const int co0 = get_global_id(1) * CO_T;
    // Tap kw's offset from output column ow in its phase row: phase * hp * wq + (kw*DW) / SW.
    int tap_off[KW];
#pragma unroll
    for (int kw = 0; kw < KW; ++kw) {
        const int d = kw * dil_w;
        tap_off[kw] = (d % sw) * hp * wq + d / sw;
    }
    // The last vector of a row (OW % VW columns left): it starts at OW - VW, and the lanes below
    // `first` were summed by the step before.
    const int tail = OW % VW;
    const VMASK keep = last_lanes(tail);
    const int full_end = OW - tail;

    VREAL acc[CO_T][KW];
#pragma unroll
    for (int c = 0; c < CO_T; ++c)
#pragma unroll
        for (int kw = 0; kw < KW; ++kw) acc[c][kw] = (VREAL)0;

    // This work-item's images: chunk z of `chunk` images; its sums go to dW number z.
    const int z = get_global_id(2);
    const int n_end = min(batch, (z + 1) * chunk);
    for (int n = z * chunk; n < n_end; ++n) {
        const __global REAL* gimg[CO_T];
#pragma unroll
        for (int c = 0; c < CO_T; ++c)  // channels past COUT repeat the last: never stored
            gimg[c] = g + g_offset + ((long)n * COUT + min(co0 + c, COUT - 1)) * OH * OW;
        const __global REAL* ximg = xq + xq_offset + ((long)n * C + ci) * sw * hp * wq;
        for (int oh = 0; oh < OH; ++oh) {
            const __global REAL* xrow = ximg + (long)(oh * sh + kh * dh) * wq;
            const int grow = oh * OW;
            for (int ow = 0; ow < full_end; ow += VW) {
                VREAL gv[CO_T];
#pragma unroll
                for (int c = 0; c < CO_T; ++c) gv[c] = VLOAD(0, gimg[c] + grow + ow);
#pragma unroll
                for (int kw = 0; kw < KW; ++kw) {
                    const VREAL xv = VLOAD(0, xrow + tap_off[kw] + ow);
#pragma unroll
                    for (int c = 0; c < CO_T; ++c) acc[c][kw] = fma(gv[c], xv, acc[c][kw]);
                }
            }
            if (tail) {
                const int ow = OW - VW;
                VREAL gv[CO_T];
#pragma unroll
                for (int c = 0; c < CO_T; ++c)
                    gv[c] = select((VREAL)0, VLOAD(0, gimg[c] + grow + ow), keep);
#pragma unroll
                for (int kw = 0; kw < KW; ++kw) {
                    const VREAL xv = select((VREAL)0, VLOAD(0, xrow + tap_off[kw] + ow), keep);
#pragma unroll
                    for (int c = 0; c < CO_T; ++c) acc[c][kw] = fma(gv[c], xv, acc[c][kw]);
                }
            }
        }
    }
    // dW (COUT, C, KH, KW): this work-item's CO_T x KW values, each its lanes' sum.
#pragma unroll
    for (int c = 0; c < CO_T; ++c) {
        if (co0 + c >= COUT) break;
        __global REAL* out = dw + dw_offset + z * dw_stride +
                             (((long)(co0 + c) * C + ci) * kh_count + kh) * KW;
#pragma unroll
        for (int kw = 0; kw < KW; ++kw) out[kw] = lane_sum(acc[c][kw]);
    }
}
