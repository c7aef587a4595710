// conv_implicit.cl: a convolution as an implicit GEMM on the packed micro-kernel of
// cl/gemm_packed.cl: no column buffer. Each work-item gathers its K x NR B panel (NR output
// positions, the receptive fields of im2col_packed.cl's layout) from the NCHW input into local
// memory, then multiplies it by the filters of its group, MR output channels at a time, and
// writes the tiles straight into the NCHW output with the bias and activation (common.cl's
// epilogue_value) fused into the store.
//
//   out[n][g * COUT_G + i][l] = act(sum_p A_g[i][p] * col_g[p][n * OUT_SPATIAL + l]
//                                   + bias[g * COUT_G + i])
//
// A: the filters as given, (COUT, K) row-major (K = CIN_G * KSIZE), group g's COUT_G rows at
// ap + ap_off + g * ap_stride, read in place: each k step broadcasts one value of each of the
// tile's MR rows (MR lines in L1, each serving 64 bytes' worth of k steps), which runs as fast as
// a packed panel and spares the packing pass of every call. Columns: folded over the images of
// the launch, column j is jg = col_start + j (image jg / OUT_SPATIAL counted from x_off / out_off).
// When K * NR values exceed the local-memory budget, K is walked in chunks of kc_rows rows (an
// argument): the first chunk stores its partial sums, later ones load them back and go on (the
// same order of additions), and only the last applies the epilogue. The panel buffer is the
// `panel` argument (kc_rows * NR values). A launch sums only the rows [k_begin, k_end) of K (all
// of them: 0, KG): a driver that caps the loop iterations of a work-item (Mesa llvmpipe: 65535 in
// all) gets K in several launches (clconv.blas.packed.k_ranges), partial sums through the output
// as between chunks.
//
// With A_FLIPPED, A is the adjoint's filters read in place from the layer's own: ap holds the
// layer's (CIN_G-of-this-kernel x COUT_G-of-this-kernel x taps) blocks per group (this kernel's
// input channels are the layer's outputs), and A[i][c * KSIZE + t] is the layer's filter (c, i)
// at tap KSIZE - 1 - t: no flip pass over the filters each call (clconv.ops.adjoint_paths).
//
// A column panel of at most TAIL_DOT columns (the last one of a layer whose columns are not a
// multiple of NR: ResNet's 7x7 outputs at batch 1 are 3 panels of 16 and one column) is computed
// as dot products along K instead: its columns are copied out of the panel contiguous in k (the
// `tail` argument, TAIL_DOT * kc_rows values), and DOT_ROWS filter rows (read in place, contiguous
// in k as well) at a time meet them a vector of k at a time, ncol / NR of the panel's vector FMAs
// (as a full panel, the lone column cost a whole panel's K loop: a quarter of that layer's time).
//
// MR/NR/VW/HAS_BIAS/HAS_RESIDUAL/ACT (gemm_packed.cl; the residual: an operand of the output's
// shape from res_off), and common.cl's kernel size, stride, dilation and PAD_MODE as defines; the
// sizes (C, COUT, GROUPS, ID..OW, PD..PW) are the GEOMETRY_ARGS arguments.
// NDRange (ceil(ncols / NR) + tail_groups - 1, mgroups, GROUPS), local size 1: work-item (t, mg, g)
// does the A panels [mg * panels_per_group, (mg + 1) * panels_per_group) of group g for one column
// panel, except that column panel split_at is split over tail_groups work-items (gemm_packed.cl's
// TASK_PANELS).

#define RUNTIME_SIZES  // sizes as GEOMETRY_ARGS (common.cl): a program per kernel size and stride
#define GEMM_PACKED_NO_KERNELS
#define IM2COL_PACKED_NO_KERNELS
#include "gemm_packed.cl"
#include "im2col_packed.cl"
#include "row_sums.cl"

#define TAIL_DOT 4  // the host's packed_conv.TAIL_DOT
// Narrow last panels as dot products (they read the filters' rows contiguous in k: not with
// A_FLIPPED; the host's packed_conv.narrow_last)
#if defined(A_FLIPPED)
#define NARROW_DOTS_ON 0
#else
#define NARROW_DOTS_ON (NR > TAIL_DOT)
#endif
#define DOT_ROWS (VW >= 16 ? 4 : 2)  // filter rows a dot-product step: DOT_ROWS * TAIL_DOT sums

// Rows [r0, r1) of the output for the ncol (<= TAIL_DOT) columns col[] from rows [k0, k0 + kc) of
// K: filter row i (ai + i * KG, contiguous in k) times column j (tail + j * kc, contiguous), a
// vector of k at a time, then the lanes summed; partial sums through the output as the tiles'.
inline void tail_dot(GEO_DECL __global const REAL* restrict ai, __local const REAL* restrict tail,
                     const int kc, const int ncol, const int r0, const int r1, const int k0,
                     const long* col, __global REAL* cg, __global const REAL* bias,
                     const long boff, __global const REAL* rg) {
    for (int i0 = r0; i0 < r1; i0 += DOT_ROWS) {
        const int rows = min(DOT_ROWS, r1 - i0);
        // (column j, row i; rows and columns past the last read the last one again: not stored)
        NARROW_DOTS(acc, a, b, p, ai, i0, rows, KG, tail, ncol, kc, kc)
#pragma unroll
        for (int i = 0; i < DOT_ROWS; ++i) {
            if (i >= rows) break;
            __global REAL* crow = cg + (long)(i0 + i) * OUT_SPATIAL;
            __global const REAL* rrow = RESIDUAL_AT(rg, (long)(i0 + i) * OUT_SPATIAL);
#pragma unroll 1
            for (int j = 0; j < ncol; ++j) {
                REAL sum = lane_sum(acc[j][i]);
                for (int q = p; q < kc; ++q) sum = fma(a[i][q], b[j][q], sum);
                __global REAL* e = crow + col[j];
                if (k0 > 0) sum += *e;  // the partial sums of the chunks before
                *e = (k0 + kc < KG) ? sum : store_value(sum, (REAL)1, (REAL)0, e, bias, boff,
                                                        i0 + i, RESIDUAL_AT(rrow, col[j]));
            }
        }
    }
}

__kernel void conv_implicit(__global const REAL* restrict x, const long x_off,
                            __global const REAL* restrict ap, const long ap_off,
                            const long ap_stride,
                            __global REAL* restrict out, const long out_off,
                            const long col_start, const long ncols, const int panels_per_group,
                            const int split_at, const int tail_groups, const int tail_per,
                            __global const REAL* restrict bias, const long bias_off,
                            __global const REAL* residual, const long res_off,
                            __local REAL* restrict panel, __local REAL* restrict tail,
                            const int kc_rows, const int k_begin,
                            const int k_end, GEOMETRY_ARGS) {
    const int g = get_global_id(2);
    TASK_PANELS(jp, mg, per_group, split_at, tail_groups, tail_per, panels_per_group)
    {  // a narrow last panel (tail_dot) runs first: PoCL's guided chunks then share the full ones
        const int panels = (int)((ncols + NR - 1) / NR);  // (packed.tail_split, narrow_first)
        if (NARROW_DOTS_ON && ncols - (long)(panels - 1) * NR <= TAIL_DOT)
            jp = (jp == 0) ? panels - 1 : jp - 1;
    }
    PANEL_ROWS(ip0, ip1, mg, COUT_G, per_group)
    panel_columns pc;
    decode_columns(GEO_PASS &pc, x_off, col_start, ncols, jp);

    // The output offsets of the NR columns: image jg / OUT_SPATIAL, position jg % OUT_SPATIAL
    // (divided once, then stepped; columns past the last repeat it).
    long col[NR];
    const long j0 = (long)jp * NR;
    const int ncol = (int)min((long)NR, ncols - j0);
    const long spatial = OUT_SPATIAL, image_stride = (long)COUT * OUT_SPATIAL;
    long image = (col_start + j0) / spatial, pos = (col_start + j0) % spatial;
#pragma unroll
    for (int v = 0; v < NR; ++v) {
        col[v] = image * image_stride + pos;
        if (v + 1 < ncol && ++pos == spatial) {
            pos = 0;
            ++image;
        }
    }
    const bool contiguous = (ncol == NR) && (col[NR - 1] - col[0] == NR - 1);

    __global const REAL* afilters = ap + ap_off + g * ap_stride;
    __global REAL* cg = out + out_off + (long)g * COUT_G * OUT_SPATIAL;
    // laid out as cg (NULL: none, with RESIDUAL_AT_RUN_TIME)
    __global const REAL* rg = RESIDUAL_AT(residual, res_off + (long)g * COUT_G * OUT_SPATIAL);
    const long boff = bias_off + g * COUT_G;
    for (int k0 = k_begin; k0 < k_end; k0 += kc_rows) {
        const int kc = min(kc_rows, k_end - k0);
        gather_rows_local(GEO_PASS x, &pc, g, k0, k0 + kc, panel);
        if (NARROW_DOTS_ON && ncol <= TAIL_DOT) {  // a few columns: dot products along K
            for (int p = 0; p < kc; ++p)
                for (int j = 0; j < ncol; ++j) tail[j * kc + p] = panel[p * NR + j];
            tail_dot(GEO_PASS afilters + k0, tail, kc, ncol, ip0 * MR,
                     min(ip1 * MR, (int)COUT_G), k0, col, cg, bias, boff, rg);
            continue;
        }
        for (int ip = ip0; ip < ip1; ++ip) {
            const int i0 = ip * MR;
            const int mrows = min(MR, COUT_G - i0);
            TILE_DECLARE(acc);
            TILE_ZERO(acc)
            if (k0 > 0) {  // go on from the partial sums of the previous chunks
#pragma unroll
                for (int i = 0; i < MR; ++i) {
                    REAL lanes[NR];
#pragma unroll 1  // (as the edge tiles' store in gemm_packed.cl: a loop keeps the compile short)
                    for (int j = 0; j < NR; ++j)
                        lanes[j] = (i < mrows && j < ncol)
                                       ? cg[(long)(i0 + i) * OUT_SPATIAL + col[j]] : (REAL)0;
#pragma unroll
                    for (int v = 0; v < NV; ++v) acc[i][v] = VLOAD(v, lanes);
                }
            }
#if defined(A_FLIPPED)
            // A (row i, k = c * KSIZE + t) read in place from the layer's filters (c, i, *k)
            // taps backwards: k's taps of channel c are the KSIZE values before wc, the tile's
            // rows KSIZE apart (constant offsets); the edge tile's rows past the last repeat it.
            for (int p_ = 0; p_ < kc;) {
                const int c = (k0 + p_) / KSIZE, t0 = k0 + p_ - c * KSIZE;
                const int steps = min((int)KSIZE - t0, kc - p_);
                __global const REAL* wc = afilters + ((long)c * COUT_G + i0) * KSIZE + KSIZE - 1 -
                                          t0;
                __local const REAL* bp = panel + (long)p_ * NR;
                if (mrows == MR) {
                    for (int s = 0; s < steps; ++s)
                        TILE_STEP(acc, wc[i_ * KSIZE - s], bp + s * NR)
                } else {
                    for (int s = 0; s < steps; ++s)
                        TILE_STEP(acc, wc[min(i_, mrows - 1) * KSIZE - s], bp + s * NR)
                }
                p_ += steps;
            }
#else
            // The filters' rows read where they are (no packing pass): row i of the tile at
            // i * KG; an edge tile reads its last row again for the rows past it (not stored).
            __global const REAL* arows = afilters + (long)i0 * KG + k0;
            if (mrows == MR) {
                for (int p_ = 0; p_ < kc; ++p_)
                    TILE_STEP(acc, arows[(long)i_ * KG + p_], panel + (long)p_ * NR)
            } else {
                for (int p_ = 0; p_ < kc; ++p_)
                    TILE_STEP(acc, arows[(long)min(i_, mrows - 1) * KG + p_],
                              panel + (long)p_ * NR)
            }
#endif
            if (k0 + kc < KG) {  // partial sums: stored as they are
#pragma unroll
                for (int i = 0; i < MR; ++i) {
                    REAL lanes[NR];
#pragma unroll
                    for (int v = 0; v < NV; ++v) VSTORE(acc[i][v], v, lanes);
#pragma unroll 1
                    for (int j = 0; j < NR; ++j)
                        if (i < mrows && j < ncol)
                            cg[(long)(i0 + i) * OUT_SPATIAL + col[j]] = lanes[j];
                }
            } else {
                TILE_STORE(acc, cg, (long)OUT_SPATIAL, i0, mrows, col, ncol, contiguous, (REAL)1,
                           (REAL)0, bias, boff, rg)
            }
        }
    }
}
