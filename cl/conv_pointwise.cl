// conv_pointwise.cl: 1x1 convolutions (stride 1, no padding; the host subsamples strided ones
// into a contiguous input first) as a plain GEMM on the input, for CPU-like devices (PoCL): no
// gather, no packing pass.
//
//   out[n][g * COUT_G + i][l] = act(sum_k W[g * COUT_G + i][k] * x[n][g * CIN_G + k][l]
//                                   + bias[g * COUT_G + i] + residual[n][g * COUT_G + i][l])
//
// Per image and group the input (CIN_G, L) (L = OD * OH * OW = ID * IH * IW) IS the GEMM's B
// matrix, row-major with leading dim L, and the weight (COUT, CIN_G) its A, row-major with leading
// dim CIN_G. A work-item owns NR adjacent columns of one image and group and walks a range of
// MR-row tiles of A, each MR x NR tile in MR * NV vector registers over the whole K loop (the
// micro-kernel of gemm_packed.cl, with B's rows read straight from the input, L apart, and A's MR
// values of one k broadcast from the weight's MR rows, each a sequential stream), then stored once
// through gemm_packed.cl's TILE_STORE (bias, residual, activation fused). The last column panel of
// an image ends at L (overlapping its predecessor when L is not a multiple of NR: it stores the
// same values again), so every panel is full and every B load a whole vector; rows of A past COUT_G
// read row COUT_G - 1 again, and the masked store drops them. The host requires L >= NR.
//
// Defines: MR, NR, VW (gemm_packed.cl's register tile), REAL/ACC, HAS_BIAS, HAS_RESIDUAL, ACT
// (ACT_A, ACT_B) (common.cl); A_TRANSPOSED: the weight is read as its transpose per group, a group
// (COUT_G, CIN_G) stored as (CIN_G, COUT_G) row-major (row i's k-th value at k * COUT_G + i): the
// adjoint of a 1x1 layer with the layer's own weight, so that no pass transposes it first. Sizes (C, COUT, GROUPS, ID..OW) are the GEOMETRY_ARGS arguments
// (RUNTIME_SIZES): one program per tile, stride, dtype and epilogue serves every 1x1 layer (the
// strides SD, SH, SW are defines for the subsample kernel at the end only).
// NDRange (ceil(L / NR), mgroups, batch * GROUPS), local size (1, 1, 1): work-item (jp, mg, z) does
// the A tiles [mg * panels_per_group, (mg + 1) * panels_per_group) of image z / GROUPS, group
// z % GROUPS.
//
// A last panel of at most TAIL_DOT columns (L = 49 at 7x7: 3 panels of 16 and one column; 196 at
// 14x14: 12 and four) is computed as dot products along K where the host gives `tail` room for
// TAIL_DOT * CIN_G values (use_tail; not with A_TRANSPOSED, whose weight rows are not contiguous in
// k): its columns copied out contiguous in k, DOT_ROWS weight rows (contiguous in k where they lie)
// met a vector of k at a time, ncol / NR of a panel's vector FMAs (as conv_implicit.cl's narrow
// panels), where the overlapping panel computed NR columns for them. It runs first in the launch
// (work-item 0 of dim 0), so that PoCL's guided chunks share the full panels evenly.

#define RUNTIME_SIZES
#define GEMM_PACKED_NO_KERNELS
#include "gemm_packed.cl"
#include "row_sums.cl"

#define TAIL_DOT 4  // the host's pointwise.TAIL_DOT
#define DOT_ROWS (VW >= 16 ? 4 : 2)  // weight rows a dot-product step: DOT_ROWS * TAIL_DOT sums

// Where A's (row, k) values lie: row * A_ROW_STRIDE + k * A_K_STRIDE (m = COUT_G, k = CIN_G)
#ifdef A_TRANSPOSED
#define A_ROW_STRIDE 1
#define A_K_STRIDE m
#else
#define A_ROW_STRIDE k
#define A_K_STRIDE 1
#endif

__kernel void conv_pointwise(__global const REAL* restrict x, const long x_offset,
                             __global const REAL* restrict weight, const long w_offset,
                             __global const REAL* restrict bias, const long b_offset,
                             __global const REAL* restrict residual, const long r_offset,
                             __global REAL* restrict y, const long y_offset,
                             const int panels_per_group, __local REAL* restrict tail,
                             const int use_tail, GEOMETRY_ARGS) {
    int jp = get_global_id(0);
    const int mg = get_global_id(1);
    const idx_t z = get_global_id(2);
    const int g = z % GROUPS;
    const idx_t n = z / GROUPS;
    const idx_t l = OUT_SPATIAL;
    const int m = COUT_G, k = CIN_G;
    PANEL_ROWS(ip0, ip1, mg, m, panels_per_group)
    const int panels = (int)((l + NR - 1) / NR);
#ifndef A_TRANSPOSED
    // a narrow last panel: dot products along K, first in the launch
    const int ncol = (int)(l - (idx_t)(panels - 1) * NR);
    const bool narrow = use_tail && NR > TAIL_DOT && panels > 1 && ncol <= TAIL_DOT;
    if (narrow) jp = (jp == 0) ? panels - 1 : jp - 1;
#endif
    const idx_t j0 = min((idx_t)jp * NR, l - NR);  // the last panel ends at l

    __global const REAL* b = x + x_offset + (n * C + (idx_t)g * CIN_G) * IN_SPATIAL + j0;
    __global const REAL* a = weight + w_offset + (idx_t)g * COUT_G * CIN_G;
    const idx_t plane = (n * COUT + (idx_t)g * COUT_G) * l;
    __global REAL* c = y + y_offset + plane;
    // laid out as c (NULL: none, with RESIDUAL_AT_RUN_TIME)
    __global const REAL* res = RESIDUAL_AT(residual, r_offset + plane);
#ifndef A_TRANSPOSED
    if (narrow && jp == panels - 1) {
        const idx_t t0 = (idx_t)jp * NR;  // its columns t0 .. l - 1
        __global const REAL* bt = b - j0 + t0;
        for (int p = 0; p < k; ++p)
            for (int j = 0; j < ncol; ++j) tail[j * k + p] = bt[(idx_t)p * l + j];
        const int r1 = min(ip1 * MR, m);
        for (int i0 = ip0 * MR; i0 < r1; i0 += DOT_ROWS) {
            const int rows = min(DOT_ROWS, r1 - i0);
            // (column j, row i; rows and columns past the last read the last one again: not
            // stored)
            NARROW_DOTS(acc, ar, bc, p, a, i0, rows, k, tail, ncol, k, k)
#pragma unroll
            for (int i = 0; i < DOT_ROWS; ++i) {
                if (i >= rows) break;
                __global REAL* crow = c + (idx_t)(i0 + i) * l + t0;
                __global const REAL* rrow = RESIDUAL_AT(res, (idx_t)(i0 + i) * l + t0);
#pragma unroll 1
                for (int j = 0; j < ncol; ++j) {
                    REAL sum = lane_sum(acc[j][i]);
                    for (int q = p; q < k; ++q) sum = fma(ar[i][q], bc[j][q], sum);
                    crow[j] = store_value(sum, (REAL)1, (REAL)0, crow + j, bias,
                                          b_offset + (long)g * COUT_G, i0 + i,
                                          RESIDUAL_AT(rrow, j));
                }
            }
        }
        return;
    }
#endif
    long col[NR];
#pragma unroll
    for (int j = 0; j < NR; ++j) col[j] = j0 + j;

    for (int ip = ip0; ip < ip1; ++ip) {
        const int i0 = ip * MR;
        __global const REAL* arow[MR];
#pragma unroll
        for (int i = 0; i < MR; ++i) arow[i] = a + (idx_t)min(i0 + i, m - 1) * A_ROW_STRIDE;
        TILE_DECLARE(acc);
        TILE_ZERO(acc)
        __global const REAL* brow = b;
        for (int p = 0; p < k; ++p, brow += l) TILE_STEP(acc, arow[i_][(idx_t)p * A_K_STRIDE], brow)
        TILE_STORE(acc, c, l, i0, min(MR, m - i0), col, NR, true, (REAL)1, (REAL)0, bias,
                   b_offset + (long)g * COUT_G, res)
    }
}

// The input a strided 1x1 convolution reads, subsampled into a contiguous (N, C, OD, OH, OW)
// buffer at dst (stride SD/SH/SW from the defines, no padding): one work-item per `rows` output
// rows (n * C * OD * OH + ...), a plain loop along each. NDRange (ceil(N * C * OD * OH / rows),).
__kernel void subsample(__global const REAL* restrict x, const long x_offset,
                        __global REAL* restrict dst, const long nrows, const int rows,
                        GEOMETRY_ARGS) {
    const idx_t r0 = (idx_t)get_global_id(0) * rows;
    const idx_t r1 = (nrows - r0 > rows) ? r0 + rows : nrows;
    for (idx_t r = r0; r < r1; ++r) {  // r = ((n * C + c) * OD + od) * OH + oh
        const int oh = r % OH;
        const idx_t rd = r / OH;
        const int od = rd % OD;
        const idx_t plane = rd / OD;  // n * C + c
        __global const REAL* src = x + x_offset + plane * IN_SPATIAL +
                                   ((idx_t)od * SD * IH + (idx_t)oh * SH) * IW;
        __global REAL* out = dst + r * OW;
        for (int ow = 0; ow < OW; ++ow) out[ow] = src[(idx_t)ow * SW];
    }
}

