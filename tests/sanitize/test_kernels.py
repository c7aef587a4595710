"""Data movement and the kernels no convolution path reaches on Oclgrind's device, under Oclgrind:
im2col / col2im in 1-3 d, the float16 <-> float32 <-> float64 storage conversions (convert.cl),
clconv's packed GEMM called directly (gemm_packed.cl) and the bench's peak kernels (peak.cl)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref

import clconv

from .support import arr, case_id, expect, mag, need_dtype

pytestmark = pytest.mark.sanitize

F16, F32, F64 = np.float16, np.float32, np.float64


@pytest.mark.parametrize("unfold, fold, xs, k, kw", [pytest.param(*c, id=case_id(*c)) for c in [
    ("im2col1d", "col2im1d", (2, 3, 9), (3,), {"padding": 1, "stride": 2, "dilation": 2}),
    ("im2col", "col2im", (2, 2, 5, 6), (3, 2), {"padding": (1, 0), "stride": (1, 2)}),
    ("im2col", "col2im", (3, 4, 4), (2, 2), {"dilation": 2, "padding": 1}),  # unbatched
    ("im2col3d", "col2im3d", (1, 2, 3, 4, 3), (2, 2, 2), {"padding": 1, "stride": (1, 2, 1)}),
]])
@pytest.mark.parametrize("direction", ["unfold", "fold"])
def test_unfold_fold(rng, index_t, direction, unfold, fold, xs, k, kw):
    """im2col exactly (data movement); col2im, which sums overlapping windows, within tolerance."""
    x = arr(rng, xs)
    cols = ref.unfold(x, k, **kw)
    if direction == "unfold":
        expect(getattr(clconv, unfold)(x, k, **kw), cols, F32, 0, 1.0)
        return
    c = arr(rng, cols.shape)
    size = xs[-len(k):]
    expect(getattr(clconv, fold)(c, size, k, **kw), ref.fold(c, size, k, **kw), F32,
           math.prod(k), mag(c))


@pytest.mark.parametrize("src, dst", [pytest.param(s, d, id=case_id(s, "to", d)) for s, d in [
    (F32, F16), (F16, F32), (F32, F64), (F64, F32), (F64, F16)]])
def test_convert(device, rng, index_t, src, dst):
    """Storage conversions (vload_half/vstore_half are core OpenCL, no cl_khr_fp16 needed)."""
    import pyopencl.array as cla

    from clconv.ops.precision import convert

    need_dtype(device, src)
    need_dtype(device, dst)
    host = arr(rng, (37,)).astype(src)
    got = convert(device, cla.to_device(device.queue, host), np.dtype(dst))
    expect(got, host.astype(dst), dst, 0, 1.0)


@pytest.mark.parametrize("m, n, k, batch, a_transposed, b_transposed", [
    (7, 19, 5, 1, False, False), (13, 33, 9, 2, True, False), (4, 25, 3, 3, False, True),
    (1, 1, 1, 1, False, False),
    # A^T of whole panels (24 rows: 6- and 4-row tiles alike): read in place, not packed
    (24, 10, 7, 2, True, True)])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_packed_gemm(device, rng, dtype, m, n, k, batch, a_transposed, b_transposed):
    """clconv's packed GEMM: edge tiles (M, N, K not multiples of the tile), batches, transposes
    (A^T of whole panels read in place), alpha and beta."""
    import pyopencl.array as cla

    from clconv.blas import packed

    need_dtype(device, dtype)
    a = arr(rng, (batch, k, m) if a_transposed else (batch, m, k), dtype)
    b = arr(rng, (batch, n, k) if b_transposed else (batch, k, n), dtype)
    c0 = arr(rng, (batch, m, n), dtype)
    op_a = np.swapaxes(a, 1, 2) if a_transposed else a
    op_b = np.swapaxes(b, 1, 2) if b_transposed else b
    want = 0.5 * np.matmul(op_a.astype(np.float64), op_b) + 2.0 * c0
    ad, bd, cd = (cla.to_device(device.queue, v) for v in (a, b, c0))
    with device.lock:
        packed.gemm(device, m, n, k, ad, 0, m * k, bd, 0, n * k, cd, 0, m * n, batch,
                    a_transposed=a_transposed, b_transposed=b_transposed, alpha=0.5, beta=2.0)
    expect(cd, want, dtype, k, mag(a, b, c0) * 2)


@pytest.mark.parametrize("mr", [16, 8])
def test_pack_a_whole_runs(device, rng, mr):
    """pack_a.cl's whole-run copy for the AVX-512 tiles' panels (MR 16 and 8: one vector store a
    k), beside the general loop (a part-filled panel, a short run), against the layout."""
    import pyopencl.array as cla

    from clconv.blas import packed

    m, k = mr + 3, 40  # a whole panel and a part-filled one; a whole run of 32 k and a short one
    a = arr(rng, (m, k), F32)
    pa = packed.pack_a(device, m, k, cla.to_device(device.queue, a.ravel()), 0,
                       tile=packed.Tile(mr, 4, 4))
    want = np.zeros((2 * mr, k), F32)
    want[:m] = a
    got = pa.data.get()[:want.size].reshape(2, k, mr)
    np.testing.assert_array_equal(got, want.reshape(2, mr, k).transpose(0, 2, 1))


_VEC, _ITEMS = 4, 5


def test_peak_fma(device):
    """peak.cl's fma_peak on a few work-items: its fma chains against numpy's."""
    import pyopencl.array as cla

    from clconv.runtime.program import kernel, precision_defines

    iters = 3
    defines = precision_defines(np.dtype(F32))
    defines.update(VEC=_VEC, ITERS=iters)
    out = cla.empty(device.queue, (_ITEMS,), F32)
    with device.lock:
        kernel(device, "peak.cl", "fma_peak", defines)(device.queue, (_ITEMS,), None, out.data,
                                                       F32(0.5))
    a = np.arange(_ITEMS, dtype=np.float64)[:, None] + np.arange(12)
    for _ in range(iters):
        a = a * 0.5 + 0.5
    expect(out, a.sum(axis=1) * _VEC, F32, 12 * _VEC, 12.0)


def test_peak_copy(device, rng):
    """peak.cl's copy_peak on a few work-items."""
    import pyopencl.array as cla

    from clconv.runtime.program import kernel

    src = cla.to_device(device.queue, arr(rng, (_ITEMS * _VEC,)))
    dst = cla.empty(device.queue, (_ITEMS * _VEC,), F32)
    with device.lock:
        kernel(device, "peak.cl", "copy_peak", {"VEC": _VEC})(device.queue, (_ITEMS,), None,
                                                              src.data, dst.data)
    expect(dst, src.get().astype(np.float64), F32, 1, 1.0)
