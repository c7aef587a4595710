// wgrad_pointwise.cl: the weight gradient of a 1x1, stride-1, unpadded convolution (groups 1) with
// few output positions an image (MobileNetV2's 1x1 layers at 14x14 and 7x7), in one launch:
//
//   dW[co][ci] = sum over n, l of G[n][co][l] * x[n][ci][l]   (l < L = the positions of an image)
//
// As a GEMM (G @ X^T) both operands need packing or a transpose first (X^T's rows are x's columns),
// and at L = 196 or 49 the three launches cost more than the arithmetic. Here the sum runs along the
// positions, where both operands are contiguous: VW positions of a G row and of an x row are one
// vector each, read where they are, and a tile of CO_T output channels x CI_T input channels is
// CO_T*CI_T vector accumulators, summed across lanes once at the end (a fixed tree: deterministic).
// An image's last L % VW positions are one vector ending at L whose lanes already summed are zero
// in both operands (so an Inf or NaN is counted once); the host requires L >= VW.
//
// wg_pointwise: work-item (cib, cg) does input channels cib*CI_T .. + CI_T - 1 and the output
//   channel tiles [cg * tiles_per_item, (cg + 1) * tiles_per_item), each over the whole batch.
//   NDRange (ceil(C / CI_T), ceil(tiles / tiles_per_item)), local size (1, 1).
// Defines: CO_T, CI_T (the tile: its loops' bounds), VW, REAL, INDEX_T. Sizes are arguments.

#include "common.cl"
#include "vector.cl"
#include "row_sums.cl"

__kernel void wg_pointwise(__global const REAL* restrict x, const long x_offset,
                           __global const REAL* restrict g, const long g_offset,
                           __global REAL* restrict dw, const long dw_offset, const int batch,
                           const int cin, const int cout, const int l,
                           const int tiles_per_item) {
    const int ci0 = get_global_id(0) * CI_T;
    const int tile0 = get_global_id(1) * tiles_per_item;
    const int tile1 = min(tile0 + tiles_per_item, (cout + CO_T - 1) / CO_T);
    // An image's last vector starts at l - VW (row_sums.cl).
    const int tail = l % VW, full_end = l - tail;
    const VMASK keep = last_lanes(tail);

    for (int t = tile0; t < tile1; ++t) {
        const int co0 = t * CO_T;
        VREAL acc[CO_T][CI_T];
#pragma unroll
        for (int c = 0; c < CO_T; ++c)
#pragma unroll
            for (int i = 0; i < CI_T; ++i) acc[c][i] = (VREAL)0;
        for (int n = 0; n < batch; ++n) {
            // rows past COUT / C repeat the last one: their sums are never stored
            const __global REAL* grow[CO_T];
            const __global REAL* xrow[CI_T];
#pragma unroll
            for (int c = 0; c < CO_T; ++c)
                grow[c] = g + g_offset + ((long)n * cout + min(co0 + c, cout - 1)) * l;
#pragma unroll
            for (int i = 0; i < CI_T; ++i)
                xrow[i] = x + x_offset + ((long)n * cin + min(ci0 + i, cin - 1)) * l;
            for (int p = 0; p < full_end; p += VW) ROW_PRODUCTS_STEP(acc, grow, CO_T, xrow, CI_T, p)
            if (tail) {
                const int p = l - VW;
                VREAL gv[CO_T];
#pragma unroll
                for (int c = 0; c < CO_T; ++c)
                    gv[c] = select((VREAL)0, VLOAD(0, grow[c] + p), keep);
#pragma unroll
                for (int i = 0; i < CI_T; ++i) {
                    const VREAL xv = select((VREAL)0, VLOAD(0, xrow[i] + p), keep);
#pragma unroll
                    for (int c = 0; c < CO_T; ++c) acc[c][i] = fma(gv[c], xv, acc[c][i]);
                }
            }
        }
#pragma unroll
        for (int c = 0; c < CO_T; ++c) {
            if (co0 + c >= cout) break;
            __global REAL* out = dw + dw_offset + (long)(co0 + c) * cin + ci0;
#pragma unroll
            for (int i = 0; i < CI_T; ++i)
                if (ci0 + i < cin) out[i] = lane_sum(acc[c][i]);
        }
    }
}
