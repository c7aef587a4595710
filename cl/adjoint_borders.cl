// adjoint_borders.cl: the exact border outputs of a stride-1 adjoint run as a forward convolution
// (clconv.ops.adjoint_paths.ForwardAdjoint).
//
// The forward convolution of y with the flipped filters adds 0 * w for every tap that falls on
// its zero padding. 0 * w is 0 for a finite w, so the forward value is exact, but NaN for an Inf
// or NaN w, where torch's transposed convolutions and input gradients (which sum only the taps
// that exist) give a finite value or an Inf. So a forward value can only be wrong where it is NaN
// and its window reaches the padding: this kernel walks those border outputs, and recomputes the
// NaN ones with the taps that exist (then the epilogue: + bias, + residual, the activation, as
// the forward kernel's; each keeps NaN, so a NaN it made is seen here). With finite weights it
// only reads the border outputs. A rare path, so the loops are plain and the sizes are
// arguments: one program per dtype and epilogue serves every layer.
//
// Arguments: y (N, COUT, YD, YH, YW) from y_offset; w the LAYER's weight (COUT, CIN / G, KD, KH,
// KW) (the adjoint's flipped filter of output channel ci is w[g * COUT/G + co, ci % (CIN/G)]
// read backwards); bias (CIN), residual and out (N, CIN, OD, OH, OW); ysize = (COUT, YD, YH, YW),
// osize = (CIN, OD, OH, OW), ksize = (G, KD, KH, KW), dil = (0, DD, DH, DW), pad = (0, PD, PH,
// PW) the forward convolution's padding before each dim; batch; `channels` output channels a
// work-item. NDRange (ceil(CIN / channels)), local size 1.

#include "common.cl"

// The exact value of output (n, ci, od, oh, ow) with window corner (d0, h0, w0) in y.
inline ACC exact_output(__global const REAL* yg, __global const REAL* wc, const long ysp,
                        const long wco, const int4 ysize, const int4 ksize, const int4 dil,
                        const int cout_g, const int d0, const int h0, const int w0) {
    const int taps = ksize.s1 * ksize.s2 * ksize.s3;
    ACC sum = (ACC)0;
    for (int co = 0; co < cout_g; ++co) {
        __global const REAL* yc = yg + (long)co * ysp;
        __global const REAL* f = wc + (long)co * wco + (taps - 1);  // read backwards: flipped
        for (int kd = 0; kd < ksize.s1; ++kd) {
            const int sd = d0 + kd * dil.s1;
            if (sd < 0 || sd >= ysize.s1) continue;
            for (int kh = 0; kh < ksize.s2; ++kh) {
                const int sh = h0 + kh * dil.s2;
                if (sh < 0 || sh >= ysize.s2) continue;
                for (int kw = 0; kw < ksize.s3; ++kw) {
                    const int sw = w0 + kw * dil.s3;
                    if (sw < 0 || sw >= ysize.s3) continue;
                    sum += (ACC)f[-((kd * ksize.s2 + kh) * ksize.s3 + kw)] *
                           (ACC)yc[((long)sd * ysize.s2 + sh) * ysize.s3 + sw];
                }
            }
        }
    }
    return sum;
}

__kernel void adjoint_exact_borders(
    __global const REAL* restrict y, const long y_offset, __global const REAL* restrict w,
    const long w_offset, __global const REAL* bias, const long b_offset,
    __global const REAL* residual, const long r_offset, __global REAL* restrict out,
    const long out_offset, const int4 ysize, const int4 osize, const int4 ksize, const int4 dil,
    const int4 pad, const int batch, const int channels) {
    const int cin = osize.s0, cout = ysize.s0, groups = ksize.s0;
    const int cin_g = cin / groups, cout_g = cout / groups;
    const long taps = (long)ksize.s1 * ksize.s2 * ksize.s3;
    const long ysp = (long)ysize.s1 * ysize.s2 * ysize.s3;
    const long osp = (long)osize.s1 * osize.s2 * osize.s3;
    // Columns [w_lo, w_hi) of a row whose windows stay inside y along W.
    const int w_lo = min(pad.s3, osize.s3);
    const int w_hi = max(w_lo, min(osize.s3, ysize.s3 - (ksize.s3 - 1) * dil.s3 + pad.s3));
    const int c0 = get_global_id(0) * channels;
    const int c1 = min(c0 + channels, cin);
    for (int ci = c0; ci < c1; ++ci) {
        const int g = ci / cin_g;
        __global const REAL* wc = w + w_offset + ((long)g * cout_g * cin_g + ci % cin_g) * taps;
        for (int n = 0; n < batch; ++n) {
            __global const REAL* yg = y + y_offset + ((long)n * cout + (long)g * cout_g) * ysp;
            const long o0 = ((long)n * cin + ci) * osp;
            for (int od = 0; od < osize.s1; ++od) {
                const int d0 = od - pad.s1;
                const bool d_in = d0 >= 0 && d0 + (ksize.s1 - 1) * dil.s1 < ysize.s1;
                for (int oh = 0; oh < osize.s2; ++oh) {
                    const int h0 = oh - pad.s2;
                    const bool inner = d_in && h0 >= 0 && h0 + (ksize.s2 - 1) * dil.s2 < ysize.s2;
                    const long row = o0 + ((long)od * osize.s2 + oh) * osize.s3;
                    for (int ow = 0; ow < osize.s3; ++ow) {
                        if (inner && ow == w_lo) ow = w_hi;  // windows inside y: exact
                        if (ow >= osize.s3) break;
                        if (!isnan(out[out_offset + row + ow])) continue;
                        const ACC sum = exact_output(yg, wc, ysp, (long)cin_g * taps, ysize,
                                                     ksize, dil, cout_g, d0, h0, ow - pad.s3);
                        out[out_offset + row + ow] = (REAL)epilogue_residual(
                            sum, bias, b_offset, ci, residual, r_offset + row + ow);
                    }
                }
            }
        }
    }
}
