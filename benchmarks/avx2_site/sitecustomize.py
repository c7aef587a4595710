"""Loaded by benchmarks/emulate_avx2.sh (through PYTHONPATH) in every Python process it starts:
pyopencl reports the vector widths PoCL reports on an AVX2 CPU (8 floats, 4 doubles), so that
clconv picks the tiles it picks there. PoCL on an AVX-512 host otherwise reports 16 and 8 even
when told to compile for haswell."""

try:
    import pyopencl as _cl

    _cl.Device.preferred_vector_width_float = property(lambda self: 8)
    _cl.Device.preferred_vector_width_double = property(lambda self: 4)
    _cl.Device.native_vector_width_float = property(lambda self: 8)
    _cl.Device.native_vector_width_double = property(lambda self: 4)
except Exception as _err:  # noqa: BLE001 (a process without pyopencl runs unchanged)
    import sys as _sys

    print(f"emulate_avx2: vector widths not set ({_err})", file=_sys.stderr)
