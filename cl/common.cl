// common.cl: precision, index type, geometry defaults and padding-mode coordinate mapping shared by
// every clconv kernel. The host prepends nothing: it passes -D defines, and each define has a default
// here so that any kernel file compiles on its own (for tests and offline inspection).
//
// -D REAL       storage type: float (default), double or half
// -D ACC        accumulation type: defaults to REAL (float for half; see below)
// -D USE_FP64   enable cl_khr_fp64          -D USE_FP16  enable cl_khr_fp16
// -D INDEX_T    integer type of flat offsets: int (default) or long, chosen by the host from the sizes
// -D PAD_MODE   0 zeros, 1 reflect, 2 replicate, 3 circular
// -D ACT, ACT_A, ACT_B  the fused activation (see activate() below; default 0: none)
// -D HAS_BIAS   the epilogue adds bias[c]   -D HAS_RESIDUAL  it adds residual[the element's offset]
// -D BIAS_AT_RUN_TIME, RESIDUAL_AT_RUN_TIME  instead: each added when its buffer is not NULL
//
// Geometry is canonical 3-D: 1-D and 2-D problems are 3-D ones whose leading spatial dims are 1, so one
// kernel family serves conv1d/2d/3d. The kernel size, stride and dilation (KD..DW) are always
// compile-time constants (the inner loops unroll over them). The sizes (channels C, COUT, GROUPS;
// ID..IW, OD..OW; leading padding PD..PW) are compile-time defines too, unless the kernel file defines
// RUNTIME_SIZES before including this one: then they are kernel arguments, so that the layers of a
// network share one program per kernel size and stride. Such a kernel lists GEOMETRY_ARGS among its
// parameters (three int4: (C, ID, IH, IW), (COUT, OD, OH, OW), (GROUPS, PD, PH, PW)) and hands them on
// to helpers with GEO_PASS (helpers declare GEO_DECL); its hot loops divide by none of them (they
// step indices incrementally or use values worked out once per work-item).
// -D RUNTIME_SIZES (set by the kernel file, not the host)

#ifdef USE_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif
#ifdef USE_FP16
#pragma OPENCL EXTENSION cl_khr_fp16 : enable
#endif

#ifndef REAL
#define REAL float
#endif
#ifndef ACC
#define ACC REAL
#endif
#ifndef INDEX_T
#define INDEX_T int
#endif
typedef INDEX_T idx_t;

#ifdef RUNTIME_SIZES
#define GEOMETRY_ARGS const int4 geo_in, const int4 geo_out, const int4 geo_pad
#define GEO_DECL const int4 geo_in, const int4 geo_out, const int4 geo_pad,
#define GEO_PASS geo_in, geo_out, geo_pad,
// (a -D of one of these still fixes it: conv_grouped.cl's host fixes the W dim's sizes, which
// its vector tiling unrolls over)
#ifndef C
#define C (geo_in.s0)
#endif
#ifndef ID
#define ID (geo_in.s1)
#endif
#ifndef IH
#define IH (geo_in.s2)
#endif
#ifndef IW
#define IW (geo_in.s3)
#endif
#ifndef COUT
#define COUT (geo_out.s0)
#endif
#ifndef OD
#define OD (geo_out.s1)
#endif
#ifndef OH
#define OH (geo_out.s2)
#endif
#ifndef OW
#define OW (geo_out.s3)
#endif
#ifndef GROUPS
#define GROUPS (geo_pad.s0)
#endif
#ifndef PD
#define PD (geo_pad.s1)
#endif
#ifndef PH
#define PH (geo_pad.s2)
#endif
#ifndef PW
#define PW (geo_pad.s3)
#endif
#else
#define GEO_DECL
#define GEO_PASS
#endif

// Input geometry (per image): C channels of ID x IH x IW.
#ifndef C
#define C 1
#endif
#ifndef ID
#define ID 1
#endif
#ifndef IH
#define IH 1
#endif
#ifndef IW
#define IW 1
#endif
// Output spatial size.
#ifndef OD
#define OD 1
#endif
#ifndef OH
#define OH 1
#endif
#ifndef OW
#define OW 1
#endif
// Kernel size, stride, leading padding and dilation per spatial dim.
#ifndef KD
#define KD 1
#endif
#ifndef KH
#define KH 1
#endif
#ifndef KW
#define KW 1
#endif
#ifndef SD
#define SD 1
#endif
#ifndef SH
#define SH 1
#endif
#ifndef SW
#define SW 1
#endif
#ifndef PD
#define PD 0
#endif
#ifndef PH
#define PH 0
#endif
#ifndef PW
#define PW 0
#endif
#ifndef DD
#define DD 1
#endif
#ifndef DH
#define DH 1
#endif
#ifndef DW
#define DW 1
#endif

// The volumes are of type idx_t so that products with them (an image's offset n * C * IN_SPATIAL, a
// filter's offset co * C / GROUPS * KSIZE) are computed in 64 bits when INDEX_T is long; a plain int
// product of the constants would overflow for images or filters of 2**31 elements or more.
//
// Index rule of every kernel: a single coordinate (c, d, h, w, kd, kh, kw, an output position along
// one dim) fits in int (the host checks that padded extents stay below 2**31), so those stay int and
// the int path stays fast; anything that is a product or a flat count (get_global_id of a dim that
// spans batch * channels, an offset, a row of C * KSIZE, a position in OD * OH * OW) is idx_t. With
// INDEX_T=int (the host's choice while every buffer holds fewer than 2**31 elements) idx_t is int.
// Convolution channels: C_out and groups (C, the input channels, is above), per group.
#ifndef GROUPS
#define GROUPS 1
#endif
#ifndef COUT
#define COUT 1
#endif
#ifndef CIN_G  // (a kernel may fix these two)
#define CIN_G (C / GROUPS)
#endif
#ifndef COUT_G
#define COUT_G (COUT / GROUPS)
#endif

#define KSIZE ((idx_t)KD * KH * KW)
#define IN_SPATIAL ((idx_t)ID * IH * IW)
#define OUT_SPATIAL ((idx_t)OD * OH * OW)

#define PAD_ZEROS 0
#define PAD_REFLECT 1
#define PAD_REPLICATE 2
#define PAD_CIRCULAR 3
#ifndef PAD_MODE
#define PAD_MODE PAD_ZEROS
#endif

// 0 * v as IEEE and torch have it for a value v that meets zero padding: 0 for a finite v, NaN for
// an Inf or NaN. Written as a comparison, not as a product with a literal 0, which a compiler may
// fold to 0 (Mesa's llvmpipe does); fabs, not isfinite(), which PoCL 3.1 calls out of line (25 ns
// a value: a loop of them slowed a depthwise weight gradient 9x).
#define ZERO_TIMES(v) ((fabs(v) < (ACC)INFINITY) ? (ACC)0 : (ACC)NAN)

// Maps coordinate i of the padded input onto the stored input of extent n; -1 means "a zero".
// The host has validated the padding against the mode (reflect: pad < n, circular: pad <= n), so one
// reflection or one wrap is always enough.
inline int source_coord(int i, int n) {
#if PAD_MODE == PAD_ZEROS
    return (i >= 0 && i < n) ? i : -1;
#elif PAD_MODE == PAD_REFLECT
    if (i < 0) i = -i;
    if (i >= n) i = 2 * (n - 1) - i;
    return i;
#elif PAD_MODE == PAD_REPLICATE
    return clamp(i, 0, n - 1);
#elif PAD_MODE == PAD_CIRCULAR
    return (i % n + n) % n;
#else
#error "unknown PAD_MODE"
#endif
}

// Flat offset of input element (c, d, h, w) inside one image, or -1 when the padded position is a zero.
inline idx_t input_offset(GEO_DECL int c, int d, int h, int w) {
    const int sd = source_coord(d, ID);
    const int sh = source_coord(h, IH);
    const int sw = source_coord(w, IW);
    if (sd < 0 || sh < 0 || sw < 0) return -1;
    return ((idx_t)c * ID + sd) * ((idx_t)IH * IW) + (idx_t)sh * IW + sw;
}

// The offset inside one input channel plane of the line that kernel row (kd, kh) of output line
// (od, oh) reads, as line_at[kd * KH + kh] (-1: a line of padding, which adds nothing).
inline void input_lines(GEO_DECL const int od, const int oh, idx_t* line_at) {
#pragma unroll
    for (int kd = 0; kd < KD; ++kd) {
        const int sd = source_coord(od * SD - PD + kd * DD, ID);
#pragma unroll
        for (int kh = 0; kh < KH; ++kh) {
            const int sh = source_coord(oh * SH - PH + kh * DH, IH);
            line_at[kd * KH + kh] = (sd < 0 || sh < 0) ? -1 : ((idx_t)sd * IH + sh) * IW;
        }
    }
}

// A gather kernel's output element (cl/pad.cl, cl/interpolate.cl; NDRange (OW, OH, planes * OD)
// over a tensor viewed as (planes, OD, OH, OW)): its w, h, d, plane and flat offset from y_offset.
#define GATHER_POSITION(out_size, y_offset)                                                  \
    const int w = get_global_id(0);                                                          \
    const int h = get_global_id(1);                                                          \
    const idx_t z_ = get_global_id(2);                                                       \
    const int od = (out_size).s1;                                                            \
    const int d = (od == 1) ? 0 : (int)(z_ % od);                                            \
    const idx_t plane = (od == 1) ? z_ : z_ / od;                                            \
    const idx_t at = (y_offset) + ((plane * od + d) * (idx_t)(out_size).s2 + h) * (out_size).s3 + w;

// The output plane ncd = (n * COUT + co) * OD + od of a direct kernel's work-item (its
// get_global_id(2), which may pass 2**31 when INDEX_T is long), as od, nco = n * COUT + co, n and
// co. A division pair at most (the z of a work-group is uniform): none for OD when it is 1, none
// for the image in the first one.
inline void output_plane(GEO_DECL const idx_t ncd, int* od, idx_t* nco, idx_t* n, int* co) {
    *od = (OD == 1) ? 0 : (int)(ncd % OD);
    *nco = (OD == 1) ? ncd : ncd / OD;
    *n = (*nco < COUT) ? 0 : *nco / COUT;
    *co = (int)(*nco - *n * COUT);
}

#include "activation.cl"

inline ACC activate(ACC v) {
    return ACT_APPLY(ACC, v);
}

// The tail of every kernel that writes a convolution's result: adds bias[b_offset + c] (-D HAS_BIAS)
// and applies the activation (-D ACT, see activate()). fmax would turn NaN into 0; PyTorch's relu keeps
// NaN, and so does this comparison (NaN < 0 is false).
inline ACC epilogue_value(ACC v, __global const REAL* bias, const long b_offset, const int c) {
#if defined(HAS_BIAS)
    v += (ACC)bias[b_offset + c];
#elif defined(BIAS_AT_RUN_TIME)
    if (bias) v += (ACC)bias[b_offset + c];
#endif
    return activate(v);
}

// The same with a residual (-D HAS_RESIDUAL): act(v + bias[b_offset + c] + residual[r_index]), in
// torch's order (conv + bias, + residual, then the activation). The residual has the output's shape:
// a kernel passes the element's own offset within it. Without HAS_RESIDUAL it is epilogue_value
// (residual is not read). Kernels built with HAS_RESIDUAL must store through this one.
// -D RESIDUAL_AT_RUN_TIME instead: the residual is added when the pointer is not NULL (the host
// passes a NULL buffer for none), so that one program serves a layer with and without it (the
// GEMM kernels, where the test costs nothing next to the K loop; a network with residual adds
// then builds and compiles each of them once, not twice). BIAS_AT_RUN_TIME: the same for the
// bias (gemm_packed.cl's GEMM).
inline ACC epilogue_residual(ACC v, __global const REAL* bias, const long b_offset, const int c,
                             __global const REAL* residual, const long r_index) {
#if defined(HAS_BIAS)
    v += (ACC)bias[b_offset + c];
#elif defined(BIAS_AT_RUN_TIME)
    if (bias) v += (ACC)bias[b_offset + c];
#endif
#if defined(HAS_RESIDUAL)
    v += (ACC)residual[r_index];
#elif defined(RESIDUAL_AT_RUN_TIME)
    if (residual) v += (ACC)residual[r_index];
#endif
    return activate(v);
}

// The residual's element e from `residual` (NULL stays NULL under RESIDUAL_AT_RUN_TIME: no
// residual; pointer arithmetic on NULL would make it look present).
#ifdef RESIDUAL_AT_RUN_TIME
#define RESIDUAL_AT(residual, e) ((residual) ? (residual) + (e) : (__global const REAL*)0)
#else
#define RESIDUAL_AT(residual, e) ((residual) + (e))
#endif
