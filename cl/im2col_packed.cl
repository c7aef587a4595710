// im2col_packed.cl: the column matrix of a convolution written straight into the packed B layout of
// cl/gemm_packed.cl, so that the GEMM needs no separate packing pass.
//
// Column matrix per group g (rows p < CIN_G * KSIZE, folded columns j over the images of a launch):
//   row p = ci * KSIZE + (kd * KH + kh) * KW + kw      (input channel c = g * CIN_G + ci)
//   column j -> jg = col_start + j, image n = jg / OUT_SPATIAL,
//               l = jg % OUT_SPATIAL = (od * OH + oh) * OW + ow
//   value = x[n][c][od*SD - PD + kd*DD][oh*SH - PH + kh*DH][ow*SW - PW + kw*DW] through
//           source_coord() (PAD_MODE: zeros / reflect / replicate / circular); 0 past the end
// Packed: bp[bp_off + g * group_stride + (j / NR) * K * NR + p * NR + j % NR], K = CIN_G * KSIZE,
// group_stride = ceil(ncols / NR) * K * NR: [GROUPS][panels][K][NR] (the padded columns are zeros).
//
// -D NR, -D VW       panel width and vector width (the GEMM's)
// -D ROWS_PER_ITEM   rows a work-item writes
// Plus common.cl's kernel size, stride, dilation and PAD_MODE defines, REAL, INDEX_T; the sizes
// (C, COUT, GROUPS, ID..OW, PD..PW) are the GEOMETRY_ARGS arguments (RUNTIME_SIZES), so that layers
// of one kernel size and stride share the program.
// NDRange (ceil(ncols / NR), ceil(K / ROWS_PER_ITEM), GROUPS), local size 1. The batch and the
// column counts are arguments.
//
// A work-item decodes its NR columns once into runs that lie in one output line each (image offset
// and the window's corner in the padded input) and then writes ROWS_PER_ITEM rows of NR values,
// kernel offset by kernel offset: the coordinates of an offset serve all its channels (see
// DEFINE_GATHER), or, for float with stride 1 or 2 and zero padding, row by row as vectors
// (DEFINE_GATHER_ROWS).

#define RUNTIME_SIZES
#include "common.cl"
#include "tile.cl"
#include "vector.cl"

#ifndef ROWS_PER_ITEM
#define ROWS_PER_ITEM 64
#endif
#define KG ((int)(CIN_G * KSIZE))

// The NR columns of panel jp, as runs of consecutive columns that lie in one output line (same
// image, od and oh: the same input rows for every kernel offset): each run's image offset, window
// corner in the padded input and length. Columns past the last one form no run (their values are
// zeros).
typedef struct {
    idx_t base[NR];        // offset of the run's image in x (x_off included)
    int d0[NR], h0[NR], w0[NR];
    int start[NR], len[NR];
    int runs;
    idx_t end;  // where the launch's last image ends in x (x_off included): x is read below it
} panel_columns;

inline void decode_columns(GEO_DECL panel_columns* pc, const long x_off, const long col_start,
                           const long ncols, const int jp) {
    const long j0 = (long)jp * NR;
    const int count = (int)min((long)NR, ncols - j0);
    // The first column's image and position are divided out once; every later run starts a line.
    const idx_t jg = (idx_t)(col_start + j0);
    idx_t n = jg / OUT_SPATIAL;
    const idx_t l = jg % OUT_SPATIAL;
    const idx_t line = l / OW;
    int ow = (int)(l % OW);
    int oh = (int)(line % OH);
    int od = (int)(line / OH);
    int runs = 0;
    int v = 0;
    while (v < count) {
        const int len = min(count - v, OW - ow);
        pc->base[runs] = (idx_t)x_off + n * (C * IN_SPATIAL);
        pc->d0[runs] = od * SD - PD;
        pc->h0[runs] = oh * SH - PH;
        pc->w0[runs] = ow * SW - PW;
        pc->start[runs] = v;
        pc->len[runs] = len;
        ++runs;
        v += len;
        ow = 0;  // the next run starts the next output line
        if (++oh == OH) {
            oh = 0;
            if (++od == OD) {
                od = 0;
                ++n;
            }
        }
    }
    pc->runs = runs;
    pc->end = (idx_t)x_off
              + ((idx_t)((col_start + ncols - 1) / OUT_SPATIAL) + 1) * (C * IN_SPATIAL);
    for (int r = runs; r < NR; ++r) pc->start[r] = count;  // where the zero tail begins
}

// o[v] = src[v * SW] for v in [a, b), as vectors where SW is 1 or 2: whole vectors of W lanes from
// a, and one more ending at b that overlaps the last (it writes the same values again), so that a
// run of any length >= W is all vectors (runs are short: an output line, often 7-56 columns);
// W = VW, else 8 or 4 for shorter runs; stride 2 loads 2W and keeps the even lanes (the caller keeps
// b's last read, src[2b - 1], inside the row). Other strides, and runs under 4, element by element.
#define COPY_RUN_W(o, src, a, b, W)                                                                \
    {                                                                                              \
        int v_ = (a);                                                                              \
        for (; v_ + (W) <= (b); v_ += (W)) COPY_VEC_##W(o, src, v_)                                \
        if (v_ < (b)) COPY_VEC_##W(o, src, (b) - (W))                                              \
    }
#if SW == 1
#define COPY_VEC_4(o, src, v) vstore4(vload4(0, (src) + (v)), 0, (o) + (v));
#define COPY_VEC_8(o, src, v) vstore8(vload8(0, (src) + (v)), 0, (o) + (v));
#define COPY_VEC_VW(o, src, v) VSTORE(VLOAD(0, (src) + (v)), 0, (o) + (v));
#elif SW == 2
#define COPY_VEC_4(o, src, v) vstore4(vload8(0, (src) + 2 * (v)).even, 0, (o) + (v));
#define COPY_VEC_8(o, src, v) vstore8(vload16(0, (src) + 2 * (v)).even, 0, (o) + (v));
#if VW == 16
#define COPY_VEC_VW(o, src, v)                                                                     \
    vstore16((CAT(REAL, 16))(vload16(0, (src) + 2 * (v)).even,                                     \
                             vload16(0, (src) + 2 * (v) + 16).even), 0, (o) + (v));
#else
#if VW == 8
#define VLOAD_2VW vload16
#elif VW == 4
#define VLOAD_2VW vload8
#else
#define VLOAD_2VW vload4
#endif
#define COPY_VEC_VW(o, src, v) VSTORE(VLOAD_2VW(0, (src) + 2 * (v)).even, 0, (o) + (v));
#endif
#endif
#if SW == 1 || SW == 2
#define COPY_RUN(o, src, a, b)                                                                     \
    if ((b) - (a) >= VW) COPY_RUN_W(o, src, a, b, VW)                                              \
    else if (VW > 8 && (b) - (a) >= 8) COPY_RUN_W(o, src, a, b, 8)                                 \
    else if ((b) - (a) >= 4) COPY_RUN_W(o, src, a, b, 4)                                           \
    else for (int v_ = (a); v_ < (b); ++v_) (o)[v_] = (src)[v_ * SW];
#else
#define COPY_RUN(o, src, a, b) for (int v_ = (a); v_ < (b); ++v_) (o)[v_] = (src)[v_ * SW];
#endif

// Rows [p0, p1) as whole panel rows (float, stride 1 or 2, zero padding, at most GATHER_KSIZE
// kernel offsets): each run's values sit in lanes [start + a, start + b) of a row (a, b: the
// columns that read inside the input row), so lane v of run r reads src_r[SW * v], src_r = the
// run's input row + shift - SW * start. A row is NR / VW vectors, each the select over the runs of
// a vector load, stored once (the zeros of the padding and of the columns past the last: lanes no
// run selects). The runs of every kernel offset are worked out first; then the rows go in order,
// channel by channel, so that a channel's few input rows serve all its kernel offsets from L1
// (offset by offset over all channels, the per-run copies below, each load missed L1: ~10% of
// 'implicit''s time on ResNet-18's 3x3 layers at batch 8, profiled; now ~6%, and 3-14% off the
// strided and stem layers' times). Taken when every load stays inside x's elements up to the end of
// the launch's last image (a load at an image's edge reads its neighbour's values into lanes no run
// selects) and no kernel offset has more than GATHER_RUNS runs with values; returns false before
// writing anything otherwise (the caller copies run by run).
#define GATHER_RUNS 4
#define GATHER_KSIZE 49
#if (SW == 1 || SW == 2) && PAD_MODE == PAD_ZEROS && !defined(USE_FP64) && !defined(USE_FP16) && \
    (VW == 4 || VW == 8 || VW == 16) && KD * KH * KW <= GATHER_KSIZE
#define GATHER_VECTOR_ROWS 1
#define VINT CAT(int, VW)
#if VW == 16
#define LANES ((int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))
#elif VW == 8
#define LANES ((int8)(0, 1, 2, 3, 4, 5, 6, 7))
#else
#define LANES ((int4)(0, 1, 2, 3))
#endif
// Vector q of a row whose lane v reads p[SW * v] (stride 2: two loads, their even lanes).
#if SW == 1
#define VLOAD_ROW(q, p) VLOAD(q, p)
#elif VW == 16
#define VLOAD_ROW(q, p) \
    (float16)(vload16(0, (p) + 32 * (q)).even, vload16(0, (p) + 32 * (q) + 16).even)
#elif VW == 8
#define VLOAD_ROW(q, p) vload16(0, (p) + 16 * (q)).even
#else
#define VLOAD_ROW(q, p) vload8(0, (p) + 8 * (q)).even
#endif
#define DEFINE_GATHER_ROWS(name, AS)                                                               \
inline bool name(GEO_DECL __global const REAL* restrict x, const panel_columns* pc,               \
                 const idx_t group, const int p0, const int p1, AS REAL* restrict dst) {           \
    idx_t src[KD * KH * KW][GATHER_RUNS]; /* x + src: the run's load for channel 0 */              \
    int lo[KD * KH * KW][GATHER_RUNS], hi[KD * KH * KW][GATHER_RUNS], runs[KD * KH * KW];          \
    const idx_t first = (idx_t)(p0 / (int)KSIZE) * IN_SPATIAL;                                     \
    const idx_t last = (idx_t)((p1 - 1) / (int)KSIZE) * IN_SPATIAL;                                \
    for (int kk = 0; kk < (int)KSIZE; ++kk) {                                                      \
        const int kd = kk / (KH * KW), kh = (kk / KW) % KH, kw = kk % KW;                          \
        int n = 0;                                                                                 \
        for (int r = 0; r < pc->runs; ++r) {                                                       \
            const int sd = source_coord(pc->d0[r] + kd * DD, ID);                                  \
            const int sh = source_coord(pc->h0[r] + kh * DH, IH);                                  \
            if (sd < 0 || sh < 0) continue;  /* zero padding rows: no lane of the run is read */   \
            const int len = pc->len[r], shift = pc->w0[r] + kw * DW;                               \
            const int a = (shift >= 0) ? 0 : min(len, (SW - 1 - shift) / SW);                      \
            const int b = (shift > IW - 1) ? a : clamp((IW - 1 - shift) / SW + 1, a, len);         \
            if (a == b) continue;                                                                  \
            const idx_t rel = group + ((idx_t)sd * IH + sh) * IW + shift - SW * pc->start[r];      \
            const idx_t at = pc->base[r] + rel;                                                    \
            if (n == GATHER_RUNS || at + first < 0 || at + last + SW * NR > pc->end)               \
                return false;                                                                      \
            src[kk][n] = at;                                                                       \
            lo[kk][n] = pc->start[r] + a;                                                          \
            hi[kk][n] = pc->start[r] + b;                                                          \
            ++n;                                                                                   \
        }                                                                                          \
        runs[kk] = n;                                                                              \
    }                                                                                              \
    int kk = p0 % (int)KSIZE;                                                                      \
    idx_t channel = (idx_t)(p0 / (int)KSIZE) * IN_SPATIAL;                                         \
    for (int p = p0; p < p1; ++p, dst += NR) {                                                     \
        if (runs[kk] == 1 && lo[kk][0] == 0 && hi[kk][0] == NR) {  /* one run, every lane */       \
            _Pragma("unroll") for (int q = 0; q < NR / VW; ++q)                                    \
                VSTORE(VLOAD_ROW(q, x + src[kk][0] + channel), q, dst);                            \
        } else {                                                                                   \
            _Pragma("unroll") for (int q = 0; q < NR / VW; ++q) {                                  \
                const VINT lane = LANES + q * VW;                                                  \
                VREAL v = (VREAL)(0);                                                              \
                for (int t = 0; t < runs[kk]; ++t)                                                 \
                    v = select(v, VLOAD_ROW(q, x + src[kk][t] + channel),                          \
                               (lane >= (VINT)(lo[kk][t])) & (lane < (VINT)(hi[kk][t])));          \
                VSTORE(v, q, dst);                                                                 \
            }                                                                                      \
        }                                                                                          \
        if (++kk == (int)KSIZE) {                                                                  \
            kk = 0;                                                                                \
            channel += IN_SPATIAL;                                                                 \
        }                                                                                          \
    }                                                                                              \
    return true;                                                                                   \
}
#else
#define GATHER_VECTOR_ROWS 0
#define DEFINE_GATHER_ROWS(name, AS)
#endif
DEFINE_GATHER_ROWS(gather_offset_rows_global, __global)
DEFINE_GATHER_ROWS(gather_offset_rows_local, __local)

// Writes rows [p0, p1) of group g's panel (K x NR, row p at dst[(p - p0) * NR]) from the input.
// Rows are p = ci * KSIZE + kk: for each kernel offset kk and each run, the input coordinates are
// worked out once and then serve every channel ci of the range (only the channel's offset changes):
// a run inside one input row with stride 1 is NR / VW vector copies a channel, otherwise each
// column's source (source_coord(), -1 for a zero) is kept in idx[] and gathered per channel.
#if GATHER_VECTOR_ROWS
#define GATHER_ROWS_CALL(rows_name, ...) rows_name(GEO_PASS __VA_ARGS__)
#else
#define GATHER_ROWS_CALL(rows_name, ...) false
#endif
#define DEFINE_GATHER(name, AS, rows_name)                                                         \
inline void name(GEO_DECL __global const REAL* restrict x, const panel_columns* pc, const int g,   \
                 const int p0, const int p1, AS REAL* restrict dst) {                              \
    const int tail = pc->runs > 0 ? pc->start[pc->runs - 1] + pc->len[pc->runs - 1] : 0;           \
    const idx_t group = (idx_t)g * CIN_G * IN_SPATIAL;                                             \
    if (GATHER_ROWS_CALL(rows_name, x, pc, group, p0, p1, dst)) return;                            \
    for (int kk = 0; kk < (int)KSIZE; ++kk) {                                                      \
        /* the channels ci with p0 <= ci * KSIZE + kk < p1 */                                      \
        const int ci0 = (p0 <= kk) ? 0 : (p0 - kk + (int)KSIZE - 1) / (int)KSIZE;                  \
        const int ci1 = (p1 <= kk) ? 0 : (p1 - kk + (int)KSIZE - 1) / (int)KSIZE;                  \
        if (ci0 >= ci1) continue;                                                                  \
        const int kd = kk / (KH * KW), kh = (kk / KW) % KH, kw = kk % KW;                          \
        AS REAL* rows = dst + (ci0 * (int)KSIZE + kk - p0) * NR;  /* row of channel ci0 */         \
        for (int r = 0; r < pc->runs; ++r) {                                                       \
            AS REAL* o = rows + pc->start[r];                                                      \
            const int len = pc->len[r];                                                            \
            const int sd = source_coord(pc->d0[r] + kd * DD, ID);                                  \
            const int sh = source_coord(pc->h0[r] + kh * DH, IH);                                  \
            if (sd < 0 || sh < 0) {  /* the run reads zero padding rows */                         \
                for (int ci = ci0; ci < ci1; ++ci, o += KSIZE * NR)                                \
                    for (int v = 0; v < len; ++v) o[v] = (REAL)0;                                  \
                continue;                                                                          \
            }                                                                                      \
            __global const REAL* src = x + pc->base[r] + group + (idx_t)ci0 * IN_SPATIAL           \
                                       + ((idx_t)sd * IH + sh) * IW;                               \
            const int shift = pc->w0[r] + kw * DW;  /* input column of run column v: v*SW+shift */ \
            if (SW == 1 && len == NR && shift >= 0 && shift + NR <= IW) {                          \
                src += shift;                                                                      \
                for (int ci = ci0; ci < ci1; ++ci, o += KSIZE * NR, src += IN_SPATIAL) {           \
                    _Pragma("unroll") for (int q = 0; q < NR / VW; ++q)                            \
                        VSTORE(VLOAD(q, src), q, o);                                               \
                }                                                                                  \
                continue;                                                                          \
            }                                                                                      \
            if (PAD_MODE == PAD_ZEROS) {                                                           \
                /* zeros, then the columns [a, b) that read inside the row (a plain strided copy,  \
                   vectorised for stride 1), then zeros: no per-element test */                    \
                const int a = (shift >= 0) ? 0 : min(len, (SW - 1 - shift) / SW);                  \
                const int b = (shift > IW - 1) ? a : clamp((IW - 1 - shift) / SW + 1, a, len);     \
                src += shift;                                                                      \
                /* [a, bv) as vectors (bv: where a vector's last read stays inside the row) */     \
                const int bv = (SW == 2 && b > a && shift + 2 * b - 1 >= IW) ? b - 1 : b;          \
                for (int ci = ci0; ci < ci1; ++ci, o += KSIZE * NR, src += IN_SPATIAL) {           \
                    for (int v = 0; v < a; ++v) o[v] = (REAL)0;                                    \
                    COPY_RUN(o, src, a, bv)                                                        \
                    for (int v = bv; v < b; ++v) o[v] = src[v * SW];                               \
                    for (int v = b; v < len; ++v) o[v] = (REAL)0;                                  \
                }                                                                                  \
                continue;                                                                          \
            }                                                                                      \
            int idx[NR];                                                                           \
            for (int v = 0; v < len; ++v) idx[v] = source_coord(v * SW + shift, IW);               \
            for (int ci = ci0; ci < ci1; ++ci, o += KSIZE * NR, src += IN_SPATIAL)                 \
                for (int v = 0; v < len; ++v) o[v] = (idx[v] < 0) ? (REAL)0 : src[idx[v]];         \
        }                                                                                          \
        if (tail < NR) {  /* columns past the last one */                                          \
            AS REAL* o = rows;                                                                     \
            for (int ci = ci0; ci < ci1; ++ci, o += KSIZE * NR)                                    \
                for (int v = tail; v < NR; ++v) o[v] = (REAL)0;                                    \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_GATHER(gather_rows_global, __global, gather_offset_rows_global)
DEFINE_GATHER(gather_rows_local, __local, gather_offset_rows_local)

#ifndef IM2COL_PACKED_NO_KERNELS

__kernel void im2col_packed(__global const REAL* restrict x, const long x_off,
                            __global REAL* restrict bp, const long bp_off, const long col_start,
                            const long ncols, GEOMETRY_ARGS) {
    const int jp = get_global_id(0);
    const int p0 = get_global_id(1) * ROWS_PER_ITEM;
    const int g = get_global_id(2);
    const int p1 = min(p0 + ROWS_PER_ITEM, KG);
    const long panels = (ncols + NR - 1) / NR;
    panel_columns pc;
    decode_columns(GEO_PASS &pc, x_off, col_start, ncols, jp);
    __global REAL* dst = bp + bp_off + ((long)g * panels + jp) * KG * NR + (long)p0 * NR;
    gather_rows_global(GEO_PASS x, &pc, g, p0, p1, dst);
}

#endif  // IM2COL_PACKED_NO_KERNELS
