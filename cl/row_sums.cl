// row_sums.cl: helpers of the kernels that sum products along rows in vectors of VW lanes and add
// the lanes up once at the end (wgrad_stem.cl, conv_implicit.cl's and conv_pointwise.cl's narrow
// panels). The including file defines VW and includes common.cl and vector.cl first.
//
// A row of n >= VW values is covered by whole vectors up to n - n % VW and one last vector that
// ends at n, overlapping its predecessor: `last_lanes(n % VW)` keeps only that vector's new lanes
// (select() against it gives 0 in the others, in both operands, so an Inf or NaN there is not
// counted twice nor turned into NaN by 0 * Inf).

#if defined(USE_FP64)
#define VMASK CAT(long, VW)
#define MASK_T long
#else
#define VMASK CAT(int, VW)
#define MASK_T int
#endif

// The lanes VW - tail .. VW - 1 (the last vector's values not summed before): true (-1).
inline VMASK last_lanes(int tail) {
    MASK_T ids[VW];
#pragma unroll
    for (int v = 0; v < VW; ++v) ids[v] = v;
    return CAT(vload, VW)(0, ids) >= (VMASK)(VW - tail);
}

// The lanes of v summed pairwise, halves first (a fixed order: deterministic).
inline REAL lane_sum(VREAL v) {
#if VW == 16
    const CAT(REAL, 8) h8 = v.lo + v.hi;
    const CAT(REAL, 4) h4 = h8.lo + h8.hi;
    const CAT(REAL, 2) h2 = h4.lo + h4.hi;
#elif VW == 8
    const CAT(REAL, 4) h4 = v.lo + v.hi;
    const CAT(REAL, 2) h2 = h4.lo + h4.hi;
#elif VW == 4
    const CAT(REAL, 2) h2 = v.lo + v.hi;
#else
    const VREAL h2 = v;
#endif
    return h2.x + h2.y;
}

// acc[h][s] += held[h] * streamed[s] for the vectors at element p of the rows held[0..NH) and
// streamed[0..NS) (pointers): the NH held vectors loaded once, then each streamed one.
#define ROW_PRODUCTS_STEP(acc, held, NH, streamed, NS, p)           \
    {                                                               \
        VREAL h_[NH];                                               \
        _Pragma("unroll") for (int c_ = 0; c_ < (NH); ++c_)         \
            h_[c_] = VLOAD(0, (held)[c_] + (p));                    \
        _Pragma("unroll") for (int s_ = 0; s_ < (NS); ++s_) {       \
            const VREAL v_ = VLOAD(0, (streamed)[s_] + (p));        \
            _Pragma("unroll") for (int c_ = 0; c_ < (NH); ++c_)     \
                acc[c_][s_] = fma(h_[c_], v_, acc[c_][s_]);         \
        }                                                           \
    }

// A narrow column panel's dot products (conv_implicit.cl's and conv_pointwise.cl's last panels of
// at most TAIL_DOT columns; the including file defines TAIL_DOT and DOT_ROWS): acc[j][i] (vectors,
// lanes not yet summed) of row i (`rows_base` + (i0 + i) * lda, contiguous; rows past `rows` read
// the last one again) times column j (`cols` + j * ld, contiguous; columns past `ncol` the last
// one again) over k < n - n % VW; `p` ends at the first k not summed (the caller adds the rest).
#define NARROW_DOTS(acc, a, b, p, rows_base, i0, rows, lda, cols, ncol, ld, n)             \
    VREAL acc[TAIL_DOT][DOT_ROWS];                                                          \
    _Pragma("unroll") for (int j_ = 0; j_ < TAIL_DOT; ++j_)                                \
        _Pragma("unroll") for (int i_ = 0; i_ < DOT_ROWS; ++i_) acc[j_][i_] = (VREAL)(0);   \
    __global const REAL* a[DOT_ROWS];                                                       \
    _Pragma("unroll") for (int i_ = 0; i_ < DOT_ROWS; ++i_)                                 \
        a[i_] = (rows_base) + (long)((i0) + min(i_, (rows) - 1)) * (lda);                   \
    __local const REAL* b[TAIL_DOT];                                                        \
    _Pragma("unroll") for (int j_ = 0; j_ < TAIL_DOT; ++j_)                                 \
        b[j_] = (cols) + (long)min(j_, (ncol) - 1) * (ld);                                  \
    int p = 0;                                                                              \
    for (; p + VW <= (n); p += VW) ROW_PRODUCTS_STEP(acc, b, TAIL_DOT, a, DOT_ROWS, p)
