// row_sums.cl: helpers of the kernels that sum products along rows in vectors of VW lanes and add
// the lanes up once at the end (wgrad_stem.cl, wgrad_pointwise.cl). The including file defines VW
// and includes common.cl and vector.cl first.
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
