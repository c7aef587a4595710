// fp16_probe.cl: checks that a device which reports cl_khr_fp16 really computes in float16 (a
// driver can report the extension and then fail to build, or compute wrong values). The host
// compares the results with numpy; every expected value is exactly representable, so the comparison
// is exact. NDRange: (elements,).

#pragma OPENCL EXTENSION cl_khr_fp16 : enable

__kernel void fp16_probe(__global const half* restrict a, __global const half* restrict b,
                         __global half* restrict fma_out, __global float* restrict widened,
                         __global half* restrict narrowed) {
    const int i = get_global_id(0);
    const half x = a[i];
    const half y = b[i];
    fma_out[i] = x * y + x;                      // half arithmetic, loads and stores
    widened[i] = vload_half(i, a);               // the conversions clconv's half paths use
    vstore_half((float)y * 0.5f, i, narrowed);
}
