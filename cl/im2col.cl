// im2col.cl: copies every receptive field of a batch of images into the columns of a matrix.
//
// Layout (torch.nn.functional.unfold's, per image): col[row][l] with
//   row = c * KSIZE + (kd * KH + kh) * KW + kw      (C * KSIZE rows)
//   l   = (od * OH + oh) * OW + ow                  (OUT_SPATIAL columns)
// so that for each image the convolution is weight(C_out, C*KSIZE) x col(C*KSIZE, OUT_SPATIAL), and the
// rows of one group are contiguous. Positions in the padding read source_coord()'s mapping (PAD_MODE).
// Element (n, row, l) goes to col[col_offset + n * batch_stride + row * ld + (l - l_start)]: the
// default (ld = ncols, batch_stride = C * KSIZE * ncols) is one matrix per image;
// ld = batch * ncols with batch_stride = ncols puts the images side by side in one wide matrix (the
// batch folded into the GEMM's N).
//
// lines_per_item (argument): output lines (od, oh) each work-item writes; the host picks enough
//                    for runs of a few dozen elements, so that short lines (OW = 7, 14) do not cost
//                    one work-item each.
// Geometry: common.cl's RUNTIME_SIZES (kernel size, stride, dilation and padding mode as -D; the
// sizes as GEOMETRY_ARGS: the layers of a network share the program; the divisions by them are
// per work-item or per line, never per element).
//
// A launch may write only the columns [l_start, l_start + ncols) (to bound the buffer for large
// images). The window touches `lines` output lines, from line l_start / OW on.
// NDRange: (C * KSIZE * ceil(lines / lines_per_item), batch), the line group varying fastest. Each
// work-item writes, for one row, the parts of lines_per_item consecutive output lines that lie in
// the window: contiguous runs, adjacent to its neighbours' runs. The row's kernel offset and the
// interior range of each line are worked out once (the divisions hoisted out of the element loops),
// and each line is split into left padding, interior and right padding, so the interior is a plain
// strided copy (a vectorisable memcpy for stride 1) without per-element bounds checks.

#define RUNTIME_SIZES  // the sizes are arguments: one program per kernel size, stride, dilation
#include "common.cl"

__kernel void im2col(__global const REAL* restrict x, const long x_offset,
                     __global REAL* restrict col, const long col_offset,
                     const long l_start_arg, const long ncols_arg, const long ld,
                     const long batch_stride, const int lines_per_item, GEOMETRY_ARGS) {
    // Positions l and line numbers count through OD * OH * OW, which may pass 2**31 when INDEX_T is
    // long (the host then passes l_start/ncols beyond int); a position inside a line is an int.
    const idx_t l_start = l_start_arg;
    const idx_t ncols = ncols_arg;
    const idx_t first_line = l_start / OW;
    const idx_t lines = (l_start + ncols - 1) / OW - first_line + 1;
    const idx_t groups = (lines + lines_per_item - 1) / lines_per_item;
    const idx_t gid = get_global_id(0);
    const idx_t row = gid / groups;
    const idx_t line0 = first_line + (gid % groups) * lines_per_item;
    const idx_t n = get_global_id(1);

    const int c = row / KSIZE;
    const int k = row % KSIZE;
    const int kd = k / (KH * KW);
    const int kh = (k / KW) % KH;
    const int kw = k % KW;
    // iw = ow * SW + shift lies inside [0, IW) exactly for ow in [lo, hi) (the quotients are
    // taken of non-negative numbers only: C division truncates towards zero).
    const int shift = kw * DW - PW;
    const int lo = (shift >= 0) ? 0 : min((SW - 1 - shift) / SW, OW);
    const int hi = (shift > IW - 1) ? lo : clamp((IW - 1 - shift) / SW + 1, lo, OW);

    __global const REAL* image = x + x_offset + n * (C * IN_SPATIAL) + (idx_t)c * IN_SPATIAL;
    __global REAL* out = col + col_offset + n * batch_stride + row * ld - l_start;
    const idx_t line_end = min(line0 + lines_per_item, first_line + lines);
    for (idx_t line = line0; line < line_end; ++line) {
        const idx_t line_l = line * OW;  // l of the line's first element
        const int begin = (l_start > line_l) ? (int)(l_start - line_l) : 0;
        const int end = (l_start + ncols - line_l < OW) ? (int)(l_start + ncols - line_l) : OW;
        __global REAL* dst = out + line_l;
        const int sd = source_coord((int)(line / OH) * SD - PD + kd * DD, ID);
        const int sh = source_coord((int)(line % OH) * SH - PH + kh * DH, IH);
        if (sd < 0 || sh < 0) {  // the whole line reads zero padding
            for (int ow = begin; ow < end; ++ow) dst[ow] = (REAL)0;
            continue;
        }
        __global const REAL* src = image + (idx_t)sd * ((idx_t)IH * IW) + (idx_t)sh * IW;
        const int a = clamp(lo, begin, end);
        const int b = clamp(hi, a, end);
        int ow = begin;
        for (; ow < a; ++ow) {
            const int sw = source_coord(ow * SW + shift, IW);
            dst[ow] = (sw < 0) ? (REAL)0 : src[sw];
        }
#ifdef __clang__  // short runs (OW = 7, 14): 4-wide vectors, not the default 16 x 4 that never run
#pragma clang loop vectorize_width(4) interleave_count(1)
#endif
        for (; ow < b; ++ow) dst[ow] = src[ow * SW + shift];
        for (; ow < end; ++ow) {
            const int sw = source_coord(ow * SW + shift, IW);
            dst[ow] = (sw < 0) ? (REAL)0 : src[sw];
        }
    }
}
