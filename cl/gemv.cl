// gemv.cl: linear for a few rows (a classifier at batch 1-4), y (ROWS, out) = act(x (ROWS, k) @
// w (out, k)^T + bias + residual): one work-item an output feature, its weight row read once, as
// vectors of VW, for every row of x (ROWS independent vector sums), then common.cl's epilogue.
// A GEMM's tile computes 16 or more rows: for one it computes 15 it throws away.
//
// -D REAL, ACC, USE_FP64, INDEX_T   precision and flat-offset type (common.cl)
// -D ROWS (1-4)   the rows of x
// -D ACT, ...     the activation; bias and residual are read where their buffers are not NULL
//                 (BIAS_AT_RUN_TIME, RESIDUAL_AT_RUN_TIME: one program with and without them)
// k and out are arguments. NDRange: (out,).

#include "common.cl"
#define VW 8
#include "vector.cl"

__kernel void gemv(__global const REAL* restrict x, const long x_offset,
                   __global const REAL* restrict w, const long w_offset,
                   __global const REAL* bias, const long b_offset,
                   __global const REAL* residual, const long r_offset,
                   __global REAL* restrict y, const long y_offset, const int k, const int n_out) {
    const int o = get_global_id(0);
    __global const REAL* row = w + w_offset + (idx_t)o * k;
    __global const REAL* xs = x + x_offset;
    VACC acc[ROWS];
    for (int r = 0; r < ROWS; ++r) acc[r] = (VACC)0;
    const int chunks = k / VW;
    for (int c = 0; c < chunks; ++c) {
        const VACC wv = CONVERT_VACC(VLOAD(c, row));
        for (int r = 0; r < ROWS; ++r) acc[r] += wv * CONVERT_VACC(VLOAD(c, xs + (idx_t)r * k));
    }
    for (int r = 0; r < ROWS; ++r) {
        ACC sum = lanes_sum(acc[r]);
        for (int i = chunks * VW; i < k; ++i) sum += (ACC)row[i] * (ACC)xs[(idx_t)r * k + i];
        const idx_t e = (idx_t)r * n_out + o;
        y[y_offset + e] = (REAL)epilogue_residual(sum, bias, b_offset, o, residual, r_offset + e);
    }
}
