// winograd.cl: 3x3 stride-1 2-d convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin &
// Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). Each 2x2 block of outputs
// (a tile) comes from a 4x4 block of the padded input d and the 3x3 filter g as
//     Y = A^T [ (G g G^T) .* (B^T d B) ] A
// with the 16 element-wise products summed over the input channels: that sum is 16 independent
// matrix products, which the host runs as one strided-batched GEMM (16 * GROUPS matrices):
//     M[e] (COUT x P) = U[e] (COUT x C/GROUPS) @ V[e] (C/GROUPS x P)     (per group)
// for e = 4 * i + j, P tiles. 16 multiplies per 2x2 outputs instead of 36: 2.25x fewer flops.
//
// Buffers (element offsets passed by the host; layouts row-major):
//   U[16][COUT][C / GROUPS]   filter transform  (winograd_filter)
//   V[16][C][P]               input transform   (winograd_input), P = tiles of the chunk
//   M[16][COUT][P]            the GEMMs' output (winograd_output reads it)
// The tiles of a chunk are p = (n * th_chunk + th - th0) * TW + tw for the chunk's images n and
// tile rows th0 <= th < th0 + th_chunk (runtime arguments), TW = ceil(OW / 2).
//
// -D GROUPS, -D COUT     groups and output channels (C, the input channels, from common.cl)
// -D HAS_BIAS, HAS_RESIDUAL, ACT  bias, residual (y's shape, from r_offset) and activation (common.cl's
//                        epilogue), fused into winograd_output
// Plus the geometry defines of common.cl: KH = KW = 3, SH = SW = 1, DH = DW = 1, KD = ID = OD = 1
// (checked by the host); any PH/PW and PAD_MODE (positions read through source_coord()).
//
// Tiles that hang over the output's edge (odd OH or OW) read zeros past the padded input and their
// extra outputs are not stored. Rounding: the transforms add and subtract values of the tile, so
// the result differs from the direct sum by a few ulps of the larger terms; an Inf or NaN input
// spreads to the whole 2x2 tile(s) whose 4x4 input block holds it (Inf - Inf), not just to the
// outputs whose window covers it.

#include "common.cl"

#define TH ((OH + 1) / 2)
#define TW ((OW + 1) / 2)

// U[e][co][ci] = (G g G^T)[e] for the filter g = weight[co][ci] (3x3).
// G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].  NDRange: (C / GROUPS, COUT).
__kernel void winograd_filter(__global const REAL* restrict weight, const long w_offset,
                              __global REAL* restrict u, const long u_offset) {
    const int ci = get_global_id(0);
    const int co = get_global_id(1);
    __global const REAL* g = weight + w_offset + ((idx_t)co * CIN_G + ci) * 9;
    ACC t[4][3];  // G g
    for (int j = 0; j < 3; ++j) {
        const ACC g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
        t[0][j] = g0;
        t[1][j] = (ACC)0.5 * (g0 + g1 + g2);
        t[2][j] = (ACC)0.5 * (g0 - g1 + g2);
        t[3][j] = g2;
    }
    __global REAL* dst = u + u_offset + (idx_t)co * CIN_G + ci;
    const idx_t plane = (idx_t)COUT * CIN_G;
    for (int i = 0; i < 4; ++i) {  // (G g) G^T
        const ACC a = t[i][0], b = t[i][1], c = t[i][2];
        dst[(4 * i + 0) * plane] = (REAL)a;
        dst[(4 * i + 1) * plane] = (REAL)((ACC)0.5 * (a + b + c));
        dst[(4 * i + 2) * plane] = (REAL)((ACC)0.5 * (a - b + c));
        dst[(4 * i + 3) * plane] = (REAL)c;
    }
}

// V[e][c][p] = (B^T d B)[e] for the 4x4 input block d of tile p, channel c.
// B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].  NDRange: (TW, th_chunk, batch * C).
__kernel void winograd_input(__global const REAL* restrict x, const long x_offset,
                             __global REAL* restrict v, const long v_offset,
                             const int th0, const int th_chunk, const long tiles) {
    const int tw = get_global_id(0);
    const int tr = get_global_id(1);  // th - th0
    const idx_t nc = get_global_id(2);  // batch * C may pass 2**31 when INDEX_T is long
    const int c = nc % C;
    const idx_t n = nc / C;
    const int th = th0 + tr;
    __global const REAL* image = x + x_offset + nc * ((idx_t)IH * IW);

    ACC d[4][4];
    for (int i = 0; i < 4; ++i) {
        const int ph = 2 * th + i;  // row of the padded input
        const int sh = (ph < OH + 2) ? source_coord(ph - PH, IH) : -1;
        for (int j = 0; j < 4; ++j) {
            const int pw = 2 * tw + j;
            const int sw = (pw < OW + 2) ? source_coord(pw - PW, IW) : -1;
            d[i][j] = (sh < 0 || sw < 0) ? (ACC)0 : (ACC)image[(idx_t)sh * IW + sw];
        }
    }
    ACC t[4][4];  // B^T d
    for (int j = 0; j < 4; ++j) {
        t[0][j] = d[0][j] - d[2][j];
        t[1][j] = d[1][j] + d[2][j];
        t[2][j] = d[2][j] - d[1][j];
        t[3][j] = d[1][j] - d[3][j];
    }
    const idx_t p = (n * th_chunk + tr) * TW + tw;
    __global REAL* dst = v + v_offset + (idx_t)c * tiles + p;
    const idx_t plane = (idx_t)C * tiles;
    for (int i = 0; i < 4; ++i) {  // (B^T d) B
        dst[(4 * i + 0) * plane] = (REAL)(t[i][0] - t[i][2]);
        dst[(4 * i + 1) * plane] = (REAL)(t[i][1] + t[i][2]);
        dst[(4 * i + 2) * plane] = (REAL)(t[i][2] - t[i][1]);
        dst[(4 * i + 3) * plane] = (REAL)(t[i][1] - t[i][3]);
    }
}

// y[n][co][2 th + i][2 tw + j] = act((A^T M A)[i][j] + bias[co] + residual[same element]) for the
// GEMM outputs M[e][co][p].
// A^T = [1 1 1 0; 0 1 -1 -1].  NDRange: (TW, th_chunk, batch * COUT).
__kernel void winograd_output(__global const REAL* restrict m, const long m_offset,
                              __global const REAL* restrict bias, const long b_offset,
                              __global const REAL* restrict residual, const long r_offset,
                              __global REAL* restrict y, const long y_offset,
                              const int th0, const int th_chunk, const long tiles) {
    const int tw = get_global_id(0);
    const int tr = get_global_id(1);
    const idx_t nco = get_global_id(2);  // batch * COUT may pass 2**31 when INDEX_T is long
    const int co = nco % COUT;
    const idx_t n = nco / COUT;
    const int th = th0 + tr;

    const idx_t p = (n * th_chunk + tr) * TW + tw;
    __global const REAL* src = m + m_offset + (idx_t)co * tiles + p;
    const idx_t plane = (idx_t)COUT * tiles;
    ACC t[2][4];  // A^T M
    for (int j = 0; j < 4; ++j) {
        const ACC m0 = src[(0 + j) * plane], m1 = src[(4 + j) * plane];
        const ACC m2 = src[(8 + j) * plane], m3 = src[(12 + j) * plane];
        t[0][j] = m0 + m1 + m2;
        t[1][j] = m1 - m2 - m3;
    }
    __global REAL* dst = y + y_offset + nco * ((idx_t)OH * OW);
    const long res = r_offset + nco * ((idx_t)OH * OW);  // the residual's plane, laid out as dst
    for (int i = 0; i < 2; ++i) {  // (A^T M) A
        const int oh = 2 * th + i;
        if (oh >= OH) break;
        ACC o[2];
        o[0] = t[i][0] + t[i][1] + t[i][2];
        o[1] = t[i][1] - t[i][2] - t[i][3];
        for (int j = 0; j < 2; ++j) {
            const int ow = 2 * tw + j;
            if (ow >= OW) break;
            const idx_t e = (idx_t)oh * OW + ow;
            dst[e] = (REAL)epilogue_residual(o[j], bias, b_offset, co, residual, res + e);
        }
    }
}
