// pad_adjoint.cl: the adjoint of non-zero padding (reflect / replicate / circular). Every element
// of a padded tensor is added back onto the stored element it was read from (common.cl's
// source_coord), so the input gradient of a padded convolution is the zero-padding adjoint on the
// padded grid folded back.
//
// -D QD, QH, QW  padded extent per dim (stored size + leading + trailing padding)
// C, ID, IH, IW (the stored input), PD, PH, PW (leading padding) and PAD_MODE as in common.cl.
// Gather formulation, one work-item per stored element: deterministic, no atomics. Each work-item
// scans the padded axes for the coordinates that map onto it: O(QD + QH + QW) steps times the few
// matches, small next to the convolution that produced the padded gradient.
// NDRange: (IW, IH, batch * C * ID).

#include "common.cl"

#ifndef QD  // (the host defines all three; unpadded by default)
#define QD ID
#define QH IH
#define QW IW
#endif

__kernel void pad_adjoint(__global const REAL* restrict padded, const long p_offset,
                          __global REAL* restrict x, const long x_offset) {
    const int w = get_global_id(0);
    const int h = get_global_id(1);
    const idx_t ncd = get_global_id(2);  // batch * C * ID may pass 2**31 when INDEX_T is long
    const int d = ncd % ID;
    const idx_t nc = ncd / ID;  // n * C + c

    ACC sum = 0;
    for (int qd = 0; qd < QD; ++qd) {
        if (source_coord(qd - PD, ID) != d) continue;
        for (int qh = 0; qh < QH; ++qh) {
            if (source_coord(qh - PH, IH) != h) continue;
            for (int qw = 0; qw < QW; ++qw) {
                if (source_coord(qw - PW, IW) != w) continue;
                sum += padded[p_offset + ((nc * QD + qd) * QH + qh) * QW + qw];
            }
        }
    }
    x[x_offset + ((nc * ID + d) * IH + h) * IW + w] = (REAL)sum;
}
