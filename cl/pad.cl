// pad.cl: torch.nn.functional.pad of the last three dims (fewer: leading sizes of 1) of a tensor
// viewed as (planes, D, H, W): every output element reads the input element that the padding mode
// maps it to (common.cl's source_coord: -D PAD_MODE 0 constant, 1 reflect, 2 replicate, 3 circular)
// or, outside the input in the constant mode, `value`. Negative padding crops (the coordinate
// shifts inside the input). The host has checked what torch checks (reflect: padding < size,
// circular: at most the size), so one reflection or one wrap is enough.
// Sizes are arguments: one program per padding mode and dtype.
// NDRange (OW, OH, planes * OD).

#include "common.cl"

#if PAD_MODE == PAD_CIRCULAR
// torch crops first and then wraps around within what is left: output i reads
// first + (i - lo) mod span, span = the size left after cropping, lo the positive leading padding
// (i - lo lies in [-span, 2 * span): one correction).
inline int wrapped(int i, int first, int span) {
    i = (i < 0) ? i + span : (i >= span) ? i - span : i;
    return first + i;
}
#define SOURCE(i, dim) wrapped((i) - lo.dim, first.dim, span.dim)
#else
#define SOURCE(i, dim) source_coord((i) - lo.dim, in_size.dim)
#endif

__kernel void pad(__global const REAL* restrict x, const long x_offset,
                  __global REAL* restrict y, const long y_offset,
                  const int4 in_size, const int4 out_size, const int4 lo, const int4 first,
                  const int4 span, const REAL value) {
    // (unused, D, H, W) of: the input's and the output's sizes, the leading padding (circular:
    // its positive part), the first input element left after cropping and how many are left
    // (circular only)
    GATHER_POSITION(out_size, y_offset)
    const int sd = SOURCE(d, s1);
    const int sh = SOURCE(h, s2);
    const int sw = SOURCE(w, s3);
    y[at] = (sd < 0 || sh < 0 || sw < 0)
                ? value
                : x[x_offset + ((plane * in_size.s1 + sd) * (idx_t)in_size.s2 + sh) * in_size.s3 +
                    sw];
}
