// wgrad_implicit.cl: the weight gradient of a dense (groups 1) 1-d / 2-d zero-padded convolution on
// the packed micro-kernel of cl/gemm_packed.cl, without an im2col of x:
//
//   dW (COUT x C*KH*KW) = G (COUT x N*OH*OW) @ X^T,  X^T[(n, oh, ow)][(ci, kh, kw)]
//                                                     = x[n][ci][oh*SH - PH + kh*DH][ow*SW - PW + kw*DW]
//
// X^T is KH*KW times larger than x (ResNet's 3x3 layers: 9x); packing it (wg_pack_x) took as long
// as the GEMM. Here neither operand is packed: G's rows are read where they are, and x is copied
// once into a channel-blocked, zero-padded layout in which every B row a tap needs is NR adjacent
// values, from which the GEMM reads its B panels in place:
//
// wg_pack_xp: xp[n][cp][r][c][l] = x[n][cp*NR + l][r - PH][c - PW] (0 in the padding and past C),
//   r < hp = (OH-1)*SH + (KH-1)*DH + 1, c < wp = (OW-1)*SW + (KW-1)*DW + 1 (every row and column
//   a tap reads). NDRange (hp, N * cp_count), local size (1, 1): a work-item per padded row.
// wg_gemm_xp: B panel b = tap * cp_count + cp (tap = kh*KW + kw) holds the NR columns
//   (cp*NR + l, kh, kw); its row for output position (n, oh, ow) is xp[n][cp][oh*SH + kh*DH]
//   [ow*SW + kw*DW][0..NR), so the K loop steps SW*NR values along a row and starts each output row
//   anew. A: G (N, COUT, OH*OW) itself, a k step's MR values one from each of MR rows (a packed
//   panel has them adjacent; reading MR rows measured no slower than packing them first). The K
//   order (n, oh, ow) is the packed path's, so the sums are the same. The tile goes to
//   dW[co][ci][kh][kw] (row-major COUT x C*KH*KW, column ci*KH*KW + tap: scalar stores, KH*KW
//   apart). NDRange (KH*KW * cp_count, mgroups), local size (1, 1): work-item (b, mg) does the A
//   panels of group mg (gemm_packed.cl's PANEL_ROWS).
//
// Defines: MR, NR, VW (the tile, clconv.blas.packed.Tile), REAL/ACC, INDEX_T only: the sizes and
// padding are the GEOMETRY_ARGS arguments (RUNTIME_SIZES), the kernel size, stride and dilation
// wg_gemm_xp's `taps` argument (kh, kw, sh, sw) and `dil` (dh, dw) (1-d: kh = sh = dh = 1,
// IH = OH = 1). They only move the B rows' addresses, so every layer shares the two programs.
// One launch sums all of K: the host takes this path only on drivers without a loop cap
// (Device.loop_limit).

#define RUNTIME_SIZES
#define GEMM_PACKED_NO_KERNELS
#include "gemm_packed.cl"

__kernel void wg_pack_xp(__global const REAL* restrict x, const long x_offset,
                         __global REAL* restrict xp, const long xp_offset, const int hp,
                         const int wp, const int cp_count, GEOMETRY_ARGS) {
    const int r = get_global_id(0);
    const int ncp = get_global_id(1);  // n * cp_count + cp
    const int n = ncp / cp_count, cp = ncp - n * cp_count;
    __global REAL* dst = xp + xp_offset + ((long)ncp * hp + r) * wp * NR;
    const int ih = r - PH;
    // The columns c of x's row: [c_lo, c_hi) (iw = c - PW in [0, IW)); its channels: the first
    // `lanes` of the block (none in a padding row).
    const int c_lo = min(PW, wp), c_hi = clamp(IW + PW, c_lo, wp);
    const int lanes = (ih < 0 || ih >= IH) ? 0 : clamp(C - cp * NR, 0, NR);
    // A column's NR values at a time, stored contiguously (NR values of NR channel rows, each
    // row read in order): stores NR apart, a column of the block at a time, measured slower.
    for (int c = 0; c < c_lo; ++c)
#pragma unroll
        for (int l = 0; l < NR; ++l) dst[(long)c * NR + l] = (REAL)0;
    const __global REAL* src = x + x_offset + (((long)n * C + cp * NR) * IH + ih) * IW - PW;
    const long plane = (long)IH * IW;
    if (lanes == NR) {
        for (int c = c_lo; c < c_hi; ++c)
#pragma unroll
            for (int l = 0; l < NR; ++l) dst[(long)c * NR + l] = src[l * plane + c];
    } else {
        for (int c = c_lo; c < c_hi; ++c)
#pragma unroll
            for (int l = 0; l < NR; ++l)
                dst[(long)c * NR + l] = l < lanes ? src[l * plane + c] : (REAL)0;
    }
    for (int c = c_hi; c < wp; ++c)
#pragma unroll
        for (int l = 0; l < NR; ++l) dst[(long)c * NR + l] = (REAL)0;
}

__kernel void wg_gemm_xp(__global const REAL* restrict g, const long g_offset,
                         __global const REAL* restrict xp, const long xp_offset,
                         __global REAL* restrict dw, const long dw_offset, const int batch, const int hp, const int wp, const int cp_count,
                         const int panels_per_group, const int4 taps, const int2 dil,
                         GEOMETRY_ARGS) {
    const int b = get_global_id(0);
    const int mg = get_global_id(1);
    const int ntaps = taps.s0 * taps.s1, sh = taps.s2, sw = taps.s3;
    const int tap = b / cp_count, cp = b - tap * cp_count;
    const int kh = tap / taps.s1, kw = tap - kh * taps.s1;
    PANEL_ROWS(ip0, ip1, mg, COUT, panels_per_group)
    // The panel's columns in dW: ci * KH*KW + tap for its ncols channels.
    const int ncols = min(NR, C - cp * NR);
    long col[NR];
#pragma unroll
    for (int j = 0; j < NR; ++j) col[j] = (long)(cp * NR + min(j, ncols - 1)) * ntaps + tap;
    const long block = (long)hp * wp * NR;  // xp's values per (n, cp)
    const __global REAL* b0 = xp + xp_offset + cp * block +
                              ((long)kh * dil.s0 * wp + kw * dil.s1) * NR;
    const int bstep = sw * NR;
    for (int ip = ip0; ip < ip1; ++ip) {
        TILE_DECLARE(acc);
        TILE_ZERO(acc)
        const int i0 = ip * MR, mrows = min(MR, COUT - i0);
        for (int n = 0; n < batch; ++n) {
            // The panel's MR rows of G for image n, read where they are (rows past COUT repeat
            // the last one: their sums are never stored)
            const __global REAL* grow[MR];
#pragma unroll
            for (int i = 0; i < MR; ++i)
                grow[i] = g + g_offset + ((long)n * COUT + min(i0 + i, COUT - 1)) * (OH * OW);
            const __global REAL* bn = b0 + (long)n * cp_count * block;
            int l = 0;
            for (int oh = 0; oh < OH; ++oh) {
                const __global REAL* brow = bn + (long)oh * sh * wp * NR;
                for (int ow = 0; ow < OW; ++ow) {
                    TILE_STEP(acc, grow[i_][l], brow)
                    ++l;
                    brow += bstep;
                }
            }
        }
        // The tile's columns are KH*KW apart in dW: plain scalar stores (no epilogue).
#pragma unroll
        for (int i = 0; i < MR; ++i) {
            if (i >= mrows) break;
            __global REAL* row = dw + dw_offset + (long)(i0 + i) * C * ntaps;
#pragma unroll
            for (int v = 0; v < NV; ++v) {
                REAL lanes[VW];
                VSTORE(acc[i][v], 0, lanes);
#pragma unroll
                for (int l = 0; l < VW; ++l)
                    if (v * VW + l < ncols) row[col[v * VW + l]] = lanes[l];
            }
        }
    }
}

// wg_gemm_1x1: the weight gradient of a 1x1, stride-1, unpadded layer (dW = sum over n of G_n @
// X_n^T, COUT x C) whose channel block's positions (batch * L rows of NR values) fit in local
// memory, in one launch (MobileNetV2's 1x1 layers at 7x7: the copy launch cost as much as the
// GEMM). Work-item (cp, mg) copies x's channels cp*NR .. + NR - 1 transposed into `panel` (row
// n * L + l: the block's values at position l of image n, wg_pack_xp's layout for a 1x1 layer;
// 0 past C), then runs wg_gemm_xp's K loop over it with G's rows read in place, in the same
// order (n, l). dW's rows are contiguous in ci: a full panel's row is NV vector stores.
// NDRange (ceil(C / NR), mgroups), local size (1, 1). Sizes are arguments.
__kernel void wg_gemm_1x1(__global const REAL* restrict g, const long g_offset,
                          __global const REAL* restrict x, const long x_offset,
                          __global REAL* restrict dw, const long dw_offset, const int batch,
                          const int cin, const int cout, const int l,
                          const int panels_per_group, __local REAL* restrict panel) {
    const int cp = get_global_id(0);
    const int mg = get_global_id(1);
    PANEL_ROWS(ip0, ip1, mg, cout, panels_per_group)
    const int ncols = min(NR, cin - cp * NR);
    for (int n = 0; n < batch; ++n) {
        __local REAL* dst = panel + (long)n * l * NR;
        for (int j = 0; j < NR; ++j) {
            if (j < ncols) {
                const __global REAL* src = x + x_offset + ((long)n * cin + cp * NR + j) * l;
                for (int p = 0; p < l; ++p) dst[p * NR + j] = src[p];
            } else {
                for (int p = 0; p < l; ++p) dst[p * NR + j] = (REAL)0;
            }
        }
    }
    for (int ip = ip0; ip < ip1; ++ip) {
        TILE_DECLARE(acc);
        TILE_ZERO(acc)
        const int i0 = ip * MR, mrows = min(MR, cout - i0);
        __local const REAL* brow = panel;
        for (int n = 0; n < batch; ++n) {
            // rows past COUT repeat the last one: their sums are never stored
            const __global REAL* grow[MR];
#pragma unroll
            for (int i = 0; i < MR; ++i)
                grow[i] = g + g_offset + ((long)n * cout + min(i0 + i, cout - 1)) * l;
            for (int p = 0; p < l; ++p) {
                TILE_STEP(acc, grow[i_][p], brow)
                brow += NR;
            }
        }
#pragma unroll
        for (int i = 0; i < MR; ++i) {
            if (i >= mrows) break;
            __global REAL* row = dw + dw_offset + (long)(i0 + i) * cin + cp * NR;
            if (ncols == NR) {
#pragma unroll
                for (int v = 0; v < NV; ++v) VSTORE(acc[i][v], v, row);
            } else {
#pragma unroll
                for (int v = 0; v < NV; ++v) {
                    REAL lanes[VW];
                    VSTORE(acc[i][v], 0, lanes);
#pragma unroll
                    for (int q = 0; q < VW; ++q)
                        if (v * VW + q < ncols) row[v * VW + q] = lanes[q];
                }
            }
        }
    }
}
