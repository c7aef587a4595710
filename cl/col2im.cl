// col2im.cl: the adjoint of im2col (torch.nn.functional.fold): sums every column element back into the
// image position it was copied from. Zero padding only (positions in the padding are dropped).
//
// Gather formulation: one work-item per image element reads the (at most KSIZE) column entries that map
// onto it, so no atomics are needed and the result is deterministic.
// NDRange: (IW, IH, batch * C * ID). Column layout as in im2col.cl; common.cl's RUNTIME_SIZES geometry
// (kernel size, stride and dilation as -D, the sizes as GEOMETRY_ARGS).
// A launch may hold only the columns [l_start, l_start + ncols) of each image (a (C * KSIZE) x ncols
// matrix per image: the host splits one huge image's columns to bound the buffer); `accumulate` then
// adds the window's sums to x (every window after the first) instead of storing them.

#define RUNTIME_SIZES  // the sizes are arguments: one program per kernel size, stride, dilation
#include "common.cl"

__kernel void col2im(__global const REAL* restrict col, const long col_offset,
                     __global REAL* restrict x, const long x_offset, const long l_start_arg,
                     const long ncols_arg, const int accumulate, GEOMETRY_ARGS) {
    const idx_t l_start = l_start_arg;
    const idx_t ncols = ncols_arg;
    const int w = get_global_id(0);
    const int h = get_global_id(1);
    const idx_t ncd = get_global_id(2);  // batch * C * ID may pass 2**31 when INDEX_T is long
    const int d = ncd % ID;
    const idx_t nc = ncd / ID;  // n * C + c
    const int c = nc % C;
    const idx_t n = nc / C;

    ACC sum = 0;
    for (int kd = 0; kd < KD; ++kd) {
        const int pd = d + PD - kd * DD;  // padded coordinate minus the kernel offset
        if (pd < 0 || pd % SD != 0 || pd / SD >= OD) continue;
        for (int kh = 0; kh < KH; ++kh) {
            const int ph = h + PH - kh * DH;
            if (ph < 0 || ph % SH != 0 || ph / SH >= OH) continue;
            for (int kw = 0; kw < KW; ++kw) {
                const int pw = w + PW - kw * DW;
                if (pw < 0 || pw % SW != 0 || pw / SW >= OW) continue;
                const idx_t row = c * KSIZE + ((idx_t)kd * KH + kh) * KW + kw;
                const idx_t l = ((idx_t)(pd / SD) * OH + ph / SH) * OW + pw / SW - l_start;
                if (l >= 0 && l < ncols)
                    sum += col[col_offset + (n * ((idx_t)C * KSIZE) + row) * ncols + l];
            }
        }
    }
    const idx_t i = x_offset + ((nc * ID + d) * IH + h) * IW + w;
    x[i] = accumulate ? (REAL)((ACC)x[i] + sum) : (REAL)sum;
}
