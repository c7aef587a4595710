// convert.cl: element-wise conversion between storage types, so that float16 operands can be
// computed in float32 (the GEMM and col2im paths of transpose.py / grad.py accumulate in float32
// for half).
//
// -D SRC, -D DST      storage types: SRC half, float, double or an integer type (char ...
//                     ulong; bool as uchar), DST half, float or double (default float -> float)
// -D SRC_HALF         set when SRC is half: read with vload_half
// -D DST_HALF         set when DST is half: written with vstore_half (round to nearest even)
// vload_half / vstore_half are core OpenCL: the conversion itself needs no cl_khr_fp16.
// -D USE_FP64 enables double as in common.cl. NDRange: (elements,).

#include "common.cl"

#ifndef SRC
#define SRC float
#endif
#ifndef DST
#define DST float
#endif

__kernel void convert(__global const SRC* restrict src, const long src_offset,
                      __global DST* restrict dst, const long dst_offset) {
    const idx_t i = get_global_id(0);
#ifdef SRC_HALF
    const float v = vload_half(src_offset + i, src);
#else
    const SRC v = src[src_offset + i];
#endif
#ifdef DST_HALF
    vstore_half(v, dst_offset + i, dst);  // the double overload rounds once
#else
    dst[dst_offset + i] = (DST)v;
#endif
}
