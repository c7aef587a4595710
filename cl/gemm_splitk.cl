// gemm_splitk.cl: a GEMM for few output columns and a long K (small-spatial convolutions at batch
// 1: 512 channels of 7x7, 3x3 kernel: M = 512, K = 4608, N = 49), split over K as well as over
// rows, so that each work-item's slice of B stays in L2 and two cores have work-items enough.
//
//   gemm_splitk:   P[z][s] (M x L) = A[:, K_s] @ B[z][K_s, :]   (s < nsplit, K_s = [s * kc, ...))
//   splitk_reduce: C[z] = act(sum_s P[z][s] + bias + residual)   (cl/splitk_reduce.cl)
//
// A[z]: row-major M x K from a + a_off + z * a_stride (lda = K; a convolution's weight (C_out,
// C_in * prod(kernel)), a_stride 0; or a 1x1 layer's output gradient of image z for its weight
// gradient, clconv.ops.grad_paths.SplitKWeightGrad). B[z]:
// row-major K x L from b + b_off + z * b_stride (ldb = L: the im2col columns of image z). P: the
// workspace, [batch][nsplit][M][L]. The micro-kernel is gemm_packed.cl's (MR x NR tile in registers
// over the work-item's K slice), with A's MR values of one k broadcast from its rows (each a
// sequential stream: no packing pass) and B's rows read where they are; the last column panel ends
// at L (overlapping its predecessor; the host requires L >= NR), rows of A past M read row M - 1
// again and the masked store drops them. The partial tiles are stored plainly; splitk_reduce adds
// them in split order and applies common.cl's epilogue (cl/splitk_reduce.cl: a program of its own,
// so that its epilogue's defines do not build this file again).
//
// Defines: MR, NR, VW (gemm_packed.cl), REAL (common.cl); sizes are arguments: one program per
// tile and dtype. -D FLIP_KS=<taps>: A is not stored as such but read from the weight w (K / taps,
// M, taps) of the stride-1 convolution whose adjoint (input gradient) this GEMM computes as a
// forward one: A[i][co * taps + t] = w[co][i][taps - 1 - t] (the filters flipped and transposed;
// clconv.ops.grad_paths.ForwardAdjoint), so that no pass over the filters precedes the GEMM. Each
// K step then reads MR rows' taps of one co: MR * taps consecutive values. The host makes kc a
// multiple of the taps.
// gemm_splitk NDRange (ceil(panels / col_panels), mgroups, batch * nsplit), local size (1, 1, 1):
// a work-item walks col_panels column panels (all of an image's when its slice of B fits L2) per
// tile of A, so that A, the big operand at batch 1, is read from memory once.

#define GEMM_PACKED_NO_KERNELS
#include "gemm_packed.cl"

__kernel void gemm_splitk(__global const REAL* restrict a, const long a_off, const long a_stride,
                          __global const REAL* restrict b, const long b_off, const long b_stride,
                          __global REAL* restrict p, const long p_off, const int m, const int k,
                          const int l, const int kc, const int nsplit,
                          const int panels_per_group, const int col_panels) {
    const int jg = get_global_id(0);  // column panels [jg * col_panels, (jg + 1) * col_panels)
    const int mg = get_global_id(1);
    const int s = get_global_id(2) % nsplit;
    const long z = get_global_id(2) / nsplit;
    PANEL_ROWS(ip0, ip1, mg, m, panels_per_group)
    const int jpanels = (l + NR - 1) / NR;
    const int jp0 = jg * col_panels;
    const int jp1 = min(jp0 + col_panels, jpanels);
    const int k0 = s * kc;
    const int k1 = min(k0 + kc, k);
    __global const REAL* bz = b + b_off + z * b_stride + (long)k0 * l;
#ifdef FLIP_KS
    // (the weight's filter k0 / FLIP_KS, at its last tap: taps are read backwards)
    __global const REAL* az = a + a_off + z * a_stride + (long)(k0 / FLIP_KS) * m * FLIP_KS +
                              (FLIP_KS - 1);
    const long co_step = (long)m * FLIP_KS;
#else
    __global const REAL* az = a + a_off + z * a_stride + k0;
#endif
    __global REAL* pz = p + p_off + (z * nsplit + s) * (long)m * l;

    for (int ip = ip0; ip < ip1; ++ip) {
        const int i0 = ip * MR;
        __global const REAL* arow[MR];
#ifdef FLIP_KS
#pragma unroll
        for (int i = 0; i < MR; ++i) arow[i] = az + (long)min(i0 + i, m - 1) * FLIP_KS;
#else
#pragma unroll
        for (int i = 0; i < MR; ++i) arow[i] = az + (long)min(i0 + i, m - 1) * k;
#endif
        // Every column panel of the work-item with this A tile (read from memory once, then from
        // L1): at batch 1 the filters are the big operand.
        for (int jp = jp0; jp < jp1; ++jp) {
            const long j0 = min((long)jp * NR, (long)l - NR);  // the last panel ends at l
            long col[NR];
#pragma unroll
            for (int j = 0; j < NR; ++j) col[j] = j0 + j;
            TILE_DECLARE(acc);
            TILE_ZERO(acc)
            __global const REAL* brow = bz + j0;
#ifdef FLIP_KS
            long co_off = 0;
            for (int c = 0; c < (k1 - k0) / FLIP_KS; ++c, co_off += co_step) {
#pragma unroll
                for (int t = 0; t < FLIP_KS; ++t, brow += l)
                    TILE_STEP(acc, arow[i_][co_off - t], brow)
            }
#else
            for (int q = 0; q < k1 - k0; ++q, brow += l) TILE_STEP(acc, arow[i_][q], brow)
#endif
            TILE_STORE(acc, pz, (long)l, i0, min(MR, m - i0), col, NR, true, (REAL)1, (REAL)0,
                       pz, 0, pz)
        }
    }
}
