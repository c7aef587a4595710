// im2col.cl: copies every receptive field of a batch of images into the columns of a matrix.
//
// Layout (torch.nn.functional.unfold's): col[n][row][l] with
//   row = c * KSIZE + (kd * KH + kh) * KW + kw      (C * KSIZE rows)
//   l   = (od * OH + oh) * OW + ow                  (OUT_SPATIAL columns)
// so that for each image the convolution is weight(C_out, C*KSIZE) x col(C*KSIZE, OUT_SPATIAL), and the
// rows of one group are contiguous. Positions in the padding read source_coord()'s mapping (PAD_MODE).
//
// A launch may write only the columns [l_start, l_start + ncols) (to bound the buffer for large
// images); the matrix written is then (C * KSIZE) x ncols per image.
// NDRange: (ncols, C * KSIZE, batch). One work-item per column element; consecutive work-items
// write consecutive addresses (l is the fastest dimension), which is what makes the writes coalesce.
// Uses the geometry defines of common.cl.

#include "common.cl"

__kernel void im2col(__global const REAL* restrict x, const long x_offset,
                     __global REAL* restrict col, const long col_offset,
                     const int l_start, const int ncols) {
    const int j = get_global_id(0);
    const int l = l_start + j;
    const int row = get_global_id(1);
    const int n = get_global_id(2);

    const int c = row / KSIZE;
    const int k = row % KSIZE;
    const int kd = k / (KH * KW);
    const int kh = (k / KW) % KH;
    const int kw = k % KW;
    const int od = l / (OH * OW);
    const int oh = (l / OW) % OH;
    const int ow = l % OW;

    const idx_t src = input_offset(c, od * SD - PD + kd * DD, oh * SH - PH + kh * DH,
                                   ow * SW - PW + kw * DW);
    const idx_t image = (idx_t)n * (C * IN_SPATIAL);
    const idx_t dst = ((idx_t)n * (C * KSIZE) + row) * ncols + j;
    col[col_offset + dst] = (src < 0) ? (REAL)0 : x[x_offset + image + src];
}
