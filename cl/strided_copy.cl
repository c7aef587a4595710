// strided_copy.cl: gathers a strided (non-contiguous) view of up to 5 dims into a contiguous buffer, so
// that device arrays with any strides can enter the kernels, which all assume contiguous operands
// (strided_copy), and scatters a contiguous result into such a view, for `out=` and in-place writes
// (strided_store).
// Shape and strides are arguments (any view builds nothing new): s1..s4 the trailing four sizes (the
// leading one follows from the NDRange), t0..t4 the view's strides in elements, leading dims of size 1
// (stride 0) for fewer dims. NDRange: (total elements,).

#include "common.cl"

// The element offset in the view of its i-th element in C order.
inline idx_t strided_offset(idx_t i, const long s1, const long s2, const long s3, const long s4,
                            const long t0, const long t1, const long t2, const long t3,
                            const long t4) {
    const idx_t i4 = i % (idx_t)s4; i /= (idx_t)s4;
    const idx_t i3 = i % (idx_t)s3; i /= (idx_t)s3;
    const idx_t i2 = i % (idx_t)s2; i /= (idx_t)s2;
    const idx_t i1 = i % (idx_t)s1; i /= (idx_t)s1;
    return i * t0 + i1 * t1 + i2 * t2 + i3 * t3 + i4 * t4;
}

__kernel void strided_copy(__global const REAL* restrict src, const long src_offset,
                           __global REAL* restrict dst, const long s1, const long s2, const long s3,
                           const long s4, const long t0, const long t1, const long t2, const long t3,
                           const long t4) {
    const idx_t i = get_global_id(0);
    dst[i] = src[src_offset + strided_offset(i, s1, s2, s3, s4, t0, t1, t2, t3, t4)];
}

__kernel void strided_store(__global const REAL* restrict src, __global REAL* restrict dst,
                            const long dst_offset, const long s1, const long s2, const long s3,
                            const long s4, const long t0, const long t1, const long t2, const long t3,
                            const long t4) {
    const idx_t i = get_global_id(0);
    dst[dst_offset + strided_offset(i, s1, s2, s3, s4, t0, t1, t2, t3, t4)] = src[i];
}
