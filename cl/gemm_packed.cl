// gemm_packed.cl: clconv's own GEMM for CPU-like OpenCL devices (PoCL): operands packed into
// micro-panels, one register-blocked MR x NR tile of C per step, BLIS-style.
//
//   C[z] = alpha * op(A[z]) @ op(B[z]) + beta * C[z]   (z < batch; row-major; op: transposed?)
//
// Packed layouts (zero-padded at the edges, exactly K deep, so no K padding and no K edge):
//   A: [ceil(M / MR)][K][MR]   (panel ip holds rows ip*MR .. ip*MR + MR - 1, one k after the other)
//   B: [ceil(N / NR)][K][NR]   (panel jp holds columns jp*NR .. jp*NR + NR - 1)
// The zero padding never reaches a stored element: a padded row (column) only meets real values in
// its own row (column) of the tile, and the masked store skips those (so 0 * Inf = NaN stays out).
//
// Micro-kernel: one work-item owns one B panel (K x NR, which stays in L2) and walks a range of A
// panels; per A panel the MR x NR tile lives in MR * NR / VW vector accumulators (12 float8 for
// 6x16: 12 of the 16 ymm registers of AVX2), every loop over the tile unrolled so that LLVM keeps
// the private array in registers; per k: NR / VW vector loads of B, MR scalar broadcasts of A, MR *
// NR / VW fma(). The whole K loop runs in registers and C is written once (masked for edge tiles).
// PoCL runs a work-group of one work-item as plain code: no implicit vectorisation across
// work-items (which measured 20x slower for this loop nest), no barriers. Explicit fma() needs no
// fast-math flag.
//
// -D MR, -D NR     register tile (rows of A, columns of B); NR a multiple of VW
// -D VW            vector width of REAL (8 for float on AVX2, 4 for double); 2, 4, 8 or 16
// -D HAS_BIAS      C[i][j] += bias[bias_off + z * bias_stride + i] in the store (after alpha, beta);
//                  -D BIAS_AT_RUN_TIME: the same where the bias buffer is not NULL (common.cl)
// -D HAS_RESIDUAL  C[i][j] += R[i][j] in the store (after the bias; R at residual + res_off, laid out
//                  as C: same ldc, column offsets and c_stride); -D RESIDUAL_AT_RUN_TIME: the same
//                  where the residual buffer is not NULL (common.cl)
// -D ACT (ACT_A, ACT_B)  the activation, last in the store (common.cl's ACT_APPLY, on whole vectors
//                  in full tiles: relu is one select; NaN kept, as torch). -D RELU: ACT=1.
// -D GEMM_PACKED_NO_KERNELS  only the inline functions (for kernels that include this file)
// Plus REAL (common.cl). Sizes (M, N, K, batch) are kernel arguments: one build serves every shape.

#include "common.cl"
#include "tile.cl"

#if NR % VW != 0
#error "NR must be a multiple of VW"
#endif
#define NV (NR / VW)

#include "vector.cl"
#define VEC VREAL
#define PACK_K 8  // k a pack work-item copies (the host's packed.PACK_K)
#define VLOAD_PACK(i, p) vload8(i, p)
#define VSTORE_PACK(v, p) vstore8(v, 0, p)

// Where column j of C lies: C is a row-major M x N matrix whose columns may be split into segments
// of `seg` columns `seg_stride` elements apart (a convolution's batch folded into N: segment =
// image, row i of image s at c + s * seg_stride + i * ldc + j % seg). seg = N gives a plain matrix.
inline long column_offset(long j, long seg, long seg_stride) {
    return (j / seg) * seg_stride + j % seg;
}

// acc = A panel (K x MR) x B panel (K x NR), both packed; k runtime.
#define TILE_DECLARE(acc) VEC acc[MR][NV]
#define TILE_ZERO(acc)                                \
    _Pragma("unroll") for (int i_ = 0; i_ < MR; ++i_) \
        _Pragma("unroll") for (int v_ = 0; v_ < NV; ++v_) acc[i_][v_] = (VEC)(0);

// One k step of the micro-kernel: acc += the MR values of A (A_I: the value of row i_, an
// expression of i_) times B's NR values at brow.
#define TILE_STEP(acc, A_I, brow)                             \
    {                                                         \
        VEC bv_[NV];                                          \
        _Pragma("unroll") for (int v_ = 0; v_ < NV; ++v_)     \
            bv_[v_] = VLOAD(v_, (brow));                      \
        _Pragma("unroll") for (int i_ = 0; i_ < MR; ++i_) {   \
            const VEC av_ = (VEC)(A_I);                       \
            _Pragma("unroll") for (int v_ = 0; v_ < NV; ++v_) \
                acc[i_][v_] = fma(av_, bv_[v_], acc[i_][v_]); \
        }                                                     \
    }

// Accumulates k steps of packed panels a (MR a step) and b (NR a step) into acc.
#define TILE_MULTIPLY(acc, a, b, k) TILE_MULTIPLY_STRIDED(acc, a, MR, b, k)
// The same with a's k steps `astep` values apart (A^T read in place: astep = its leading dim).
#define TILE_MULTIPLY_STRIDED(acc, a, astep, b, k) \
    for (int p_ = 0; p_ < (k); ++p_)               \
        TILE_STEP(acc, (a)[(long)p_ * (astep) + i_], (b) + (long)p_ * NR)

// The element of C in the store: alpha * acc + beta * C (C not read when beta == 0, as BLAS: its
// old contents may be NaN), then common.cl's epilogue (bias of row i, the residual's element r,
// activation).
inline REAL store_value(REAL acc, REAL alpha, REAL beta, __global const REAL* c,
                        __global const REAL* bias, const long bias_off, const int i,
                        __global const REAL* r) {
    REAL v = alpha * acc;
    if (beta != (REAL)0) v = fma(beta, *c, v);
    return epilogue_residual(v, bias, bias_off, i, r, 0);
}

// Stores the tile at rows i0.. (mrows of them valid) and the NR columns whose offsets are col[]
// (ncols valid; `contiguous`: col[v] = col[0] + v for all NR, a full panel inside one segment).
// res: the residual, a pointer laid out as c (read only with HAS_RESIDUAL, or when not NULL with
// RESIDUAL_AT_RUN_TIME).
#define TILE_STORE(acc, c, ldc, i0, mrows, col, ncols, contiguous, alpha, beta, bias, bias_off, \
                   res)                                                                         \
    if ((contiguous) && (mrows) == MR) {                                                        \
        _Pragma("unroll") for (int i_ = 0; i_ < MR; ++i_) {                                     \
            __global REAL* row_ = (c) + (long)((i0) + i_) * (ldc) + (col)[0];                   \
            __global const REAL* rrow_ = RESIDUAL_AT(res, (long)((i0) + i_) * (ldc) + (col)[0]);\
            _Pragma("unroll") for (int v_ = 0; v_ < NV; ++v_) {                                 \
                VEC r_ = (alpha) * acc[i_][v_];                                                 \
                if ((beta) != (REAL)0) r_ = fma((VEC)(beta), VLOAD(v_, row_), r_);              \
                TILE_STORE_EPILOGUE_VEC(r_, bias, bias_off, (i0) + i_, rrow_, v_)               \
                VSTORE(r_, v_, row_);                                                           \
            }                                                                                   \
        }                                                                                       \
    } else {                                                                                    \
        _Pragma("unroll") for (int i_ = 0; i_ < MR; ++i_) {                                     \
            if (i_ < (mrows)) {                                                                 \
                __global REAL* row_ = (c) + (long)((i0) + i_) * (ldc);                          \
                __global const REAL* rrow_ = RESIDUAL_AT(res, (long)((i0) + i_) * (ldc));       \
                _Pragma("unroll") for (int v_ = 0; v_ < NV; ++v_) {                             \
                    REAL lanes_[VW];                                                            \
                    VSTORE(acc[i_][v_], 0, lanes_);                                             \
                    _Pragma("unroll 1") for (int l_ = 0; l_ < VW; ++l_) { /* (*) */            \
                        const int j_ = v_ * VW + l_;                                            \
                        if (j_ < (ncols)) {                                                     \
                            __global REAL* e_ = row_ + (col)[j_];                               \
                            *e_ = store_value(lanes_[l_], alpha, beta, e_, bias, bias_off,      \
                                              (i0) + i_, RESIDUAL_AT(rrow_, (col)[j_]));        \
                        }                                                                       \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    }

// (*) The edge tile's lanes are a loop, not unrolled: unrolled (MR * NR scalar stores with their
// epilogue) they made PoCL's first-launch compile of a kernel 2-3x longer (3-7 s against 1.4-2 s
// for conv_implicit.cl, measured), for stores that only edge tiles make.
// The full-tile store's epilogue on a vector r (vector v of its row): + bias of row i, + the
// residual's vector, then the activation on the whole vector (relu: one select, where NaN < 0 is
// false so NaN is kept).
#if defined(HAS_BIAS)
#define TILE_BIAS_VEC(r, bias, bias_off, i) r += (VEC)((bias)[(bias_off) + (i)]);
#elif defined(BIAS_AT_RUN_TIME)
#define TILE_BIAS_VEC(r, bias, bias_off, i) if (bias) r += (VEC)((bias)[(bias_off) + (i)]);
#else
#define TILE_BIAS_VEC(r, bias, bias_off, i)
#endif
#if defined(HAS_RESIDUAL)
#define TILE_RESIDUAL_VEC(r, rrow, v) r += VLOAD(v, rrow);
#elif defined(RESIDUAL_AT_RUN_TIME)
#define TILE_RESIDUAL_VEC(r, rrow, v) if (rrow) r += VLOAD(v, rrow);
#else
#define TILE_RESIDUAL_VEC(r, rrow, v)
#endif
#define TILE_STORE_EPILOGUE_VEC(r, bias, bias_off, i, rrow, v) \
    TILE_BIAS_VEC(r, bias, bias_off, i) TILE_RESIDUAL_VEC(r, rrow, v) r = ACT_APPLY(VEC, r);

// Column panel jp, A-panel group mg and its panels per group for the work-item of dims 0 and 1:
// column panel split_at runs as tail_groups work-items (tail_per A panels each; dim 1 is then of
// size 1), every other one as one work-item (dim 1: mg over panels_per_group); dim 0 counts
// panels + tail_groups - 1 work-items (clconv.blas.packed.tail_split: why and where).
#define TASK_PANELS(jp, mg, per_group, split_at, tail_groups, tail_per, panels_per_group) \
    int jp = get_global_id(0), mg = get_global_id(1), per_group = (panels_per_group);    \
    if (jp >= (split_at)) {                                                                \
        const int t_ = jp - (split_at);                                                    \
        if (t_ < (tail_groups)) {                                                          \
            jp = (split_at);                                                               \
            mg = t_;                                                                       \
            per_group = (tail_per);                                                        \
        } else {                                                                           \
            jp -= (tail_groups) - 1;                                                       \
        }                                                                                  \
    }

// The A panels [ip0, ip1) of work-item group mg (panels_per_group each) of a matrix of m rows.
#define PANEL_ROWS(ip0, ip1, mg, m, panels_per_group) \
    const int ip0 = (mg) * (panels_per_group);        \
    const int ip1 = min(ip0 + (panels_per_group), ((m) + MR - 1) / MR);

// The NR column offsets of B panel jp (and how many of its columns exist), once per work-item.
#define PANEL_COLUMNS(col, ncols, contiguous, jp, n, seg, seg_stride)           \
    long col[NR];                                                               \
    const long j0_ = (long)(jp) * NR;                                           \
    const int ncols = (int)min((long)NR, (long)(n) - j0_);                      \
    _Pragma("unroll") for (int j_ = 0; j_ < NR; ++j_)                           \
        col[j_] = column_offset(min(j0_ + j_, (long)(n) - 1), seg, seg_stride); \
    const bool contiguous = (ncols == NR) && (col[NR - 1] - col[0] == NR - 1);

#ifndef GEMM_PACKED_NO_KERNELS

// The arguments of pack_b (cl/pack_a.cl's pack_a takes the same, then MR): op(X[z]) (extent x k
// for A, k x extent for B) at x + x_off + z * x_stride, leading dim ld (X^T stored when
// transposed); its packed panels at xp + xp_off + z * xp_stride.
#define PACK_ARGS(extent, x, ld, xp)                                                        \
    const int extent, const int k, __global const REAL* restrict x, const long x##_off,     \
    const long x##_stride, const long ld, const int transposed, __global REAL* restrict xp, \
    const long xp##_off, const long xp##_stride

// Its work-item: PACK_K k from p0 (kn of them exist) of matrix z's R-wide panel `panel`, whose
// first row of op(A) (column of op(B)) is `first`; src: op(X[z]); dst: where they go in its panels.
#define PACK_START(R, panel, first, x, xp)                                               \
    const int panel = get_global_id(1);                                                  \
    const int first = panel * (R);                                                       \
    const int p0 = get_global_id(0) * PACK_K;                                            \
    const long z = get_global_id(2);                                                     \
    __global const REAL* src = x + x##_off + z * x##_stride;                             \
    __global REAL* dst = xp + xp##_off + z * xp##_stride + ((long)panel * k + p0) * (R); \
    const int kn = min(PACK_K, k - p0);

// Packs op(B[z]) (k x n; B^T stored n x k when transposed) into [ceil(n / NR)][k][NR].
// NDRange (ceil(k / PACK_K), ceil(n / NR), batch): each work-item packs PACK_K consecutive k of one
// panel: rows of B as vector copies, or (transposed) PACK_K-long runs of B^T's rows, transposed
// here.
__kernel void pack_b(PACK_ARGS(n, b, ldb, bp)) {
    PACK_START(NR, jp, j0, b, bp)
    if (!transposed) {
        for (int q = 0; q < kn; ++q) {
            __global const REAL* row = src + (long)(p0 + q) * ldb + j0;
            if (j0 + NR <= n) {  // a full row segment: plain vector copies
#pragma unroll
                for (int v = 0; v < NV; ++v) VSTORE(VLOAD(v, row), v, dst + q * NR);
            } else {
                for (int j = 0; j < NR; ++j) dst[q * NR + j] = (j0 + j < n) ? row[j] : (REAL)0;
            }
        }
        return;
    }
    for (int j = 0; j < NR; ++j) {  // column j0 + j of op(B) is row j0 + j of B^T
        __global const REAL* col = src + (long)(j0 + j) * ldb + p0;
        REAL t[PACK_K];
        if (j0 + j < n && kn == PACK_K) {
            VSTORE_PACK(VLOAD_PACK(0, col), t);
        } else {
#pragma unroll
            for (int q = 0; q < PACK_K; ++q) t[q] = (j0 + j < n && q < kn) ? col[q] : (REAL)0;
        }
        for (int q = 0; q < kn; ++q) dst[q * NR + j] = t[q];
    }
}

// C[z] = alpha * A[z] @ B[z] + beta * C[z] (+ bias, + residual, activation) from packed A and B,
// or (lda > 0) from A stored transposed, k x m with leading dim lda, read where it is: its MR
// rows of a k step are MR adjacent values, as in a packed panel, so A^T needs no packing pass
// (the host takes this only where every panel is full: m a multiple of MR).
// NDRange (ceil(n / NR), mgroups, batch), local size 1: work-item (jp, g) multiplies B panel jp by
// A panels [g * panels_per_group, (g + 1) * panels_per_group). Column j of C is at
// column_offset(j, seg, seg_stride); row i at i * ldc; matrix z at c_off + z * c_stride.
// Only the products of k in [k_begin, k_end) are summed (the packed panels are k deep): a device
// whose driver caps the loop iterations of a work-item (Mesa llvmpipe, clconv.blas.packed.
// k_ranges) takes K in several launches, beta = 1 after the first, the epilogue in the last.
__kernel void gemm_packed(const int m, const int n, const int k, const int k_begin,
                          const int k_end, const int panels_per_group,
                          __global const REAL* restrict ap, const long ap_off, const long ap_stride,
                          __global const REAL* restrict bp, const long bp_off, const long bp_stride,
                          __global REAL* restrict c, const long c_off, const long c_stride,
                          const long ldc, const long seg, const long seg_stride,
                          const REAL alpha, const REAL beta,
                          __global const REAL* restrict bias, const long bias_off,
                          const long bias_stride, __global const REAL* residual,
                          const long res_off, const long lda) {
    const int jp = get_global_id(0);
    const int g = get_global_id(1);
    const long z = get_global_id(2);
    PANEL_ROWS(ip0, ip1, g, m, panels_per_group)
    __global const REAL* bpanel = bp + bp_off + z * bp_stride + ((long)jp * k + k_begin) * NR;
    __global const REAL* apanels = ap + ap_off + z * ap_stride;
    __global REAL* cz = c + c_off + z * c_stride;
    __global const REAL* rz = RESIDUAL_AT(residual, res_off + z * c_stride);  // laid out as cz
    const long boff = bias_off + z * bias_stride;
    PANEL_COLUMNS(col, ncols, contiguous, jp, n, seg, seg_stride)
    for (int ip = ip0; ip < ip1; ++ip) {
        TILE_DECLARE(acc);
        TILE_ZERO(acc)
        // lda 0: packed panels; else A^T (k x m, leading dim lda) read where it is
        __global const REAL* apanel = lda ? apanels + (long)k_begin * lda + (long)ip * MR
                                          : apanels + ((long)ip * k + k_begin) * MR;
        TILE_MULTIPLY_STRIDED(acc, apanel, lda ? lda : MR, bpanel, k_end - k_begin)
        const int i0 = ip * MR;
        TILE_STORE(acc, cz, ldc, i0, min(MR, m - i0), col, ncols, contiguous, alpha, beta, bias,
                   boff, rz)
    }
}

#endif  // GEMM_PACKED_NO_KERNELS
