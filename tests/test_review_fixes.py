"""Review fixes: shared pyopencl kernels (fill) and CLBlast calls enqueued under dev.lock, a
workspace_limit above the device's largest allocation capped to it, a missing pyclblast refused
before anything is uploaded or allocated, and the weight gradient kept within workspace_limit (batch
chunks, then ranges of an image's output positions). The 64-bit index tests are in test_memory.py.
"""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import pytest
import reference as ref
from helpers import spy_im2col
from tolerance import assert_close, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv



def _r(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------
# thread safety: shared kernels and CLBlast calls under dev.lock
# ---------------------------------------------------------------------------


@pytest.fixture
def lock_checks(clconv, monkeypatch):
    """Records, for every Array.fill and gemm.gemm call, whether the device lock was held."""
    from clconv.blas import clblast as gemm

    dev = clconv.current_device()
    calls: list[tuple[str, bool]] = []
    real_fill, real_gemm = cla.Array.fill, gemm.gemm

    def fill(self, *args, **kwargs):
        calls.append(("fill", dev.lock._is_owned()))
        return real_fill(self, *args, **kwargs)

    def gemm_spy(d, *args, **kwargs):
        calls.append(("gemm", d.lock._is_owned()))
        return real_gemm(d, *args, **kwargs)

    monkeypatch.setattr(cla.Array, "fill", fill)
    monkeypatch.setattr(gemm, "gemm", gemm_spy)
    return calls


def test_empty_batch_fills_hold_the_lock(clconv, rng, lock_checks):
    """pyopencl's fill kernel is one per context, shared with every thread: the zeros of an empty
    batch's weight and bias gradients are enqueued holding dev.lock."""
    x = np.zeros((0, 3, 5, 5), np.float32)
    got = clconv.conv2d_weight(x, (4, 3, 3, 3), np.zeros((0, 4, 3, 3), np.float32))
    np.testing.assert_array_equal(got, np.zeros((4, 3, 3, 3), np.float32))
    layer = clconv.nn.Conv2d(3, 4, 3, rng=0)
    y = layer(x)
    layer.backward(np.zeros_like(y))
    np.testing.assert_array_equal(layer.weight_grad.get(), np.zeros((4, 3, 3, 3), np.float32))
    np.testing.assert_array_equal(layer.bias_grad.get(), np.zeros(4, np.float32))
    fills = [held for what, held in lock_checks if what == "fill"]
    assert len(fills) >= 3 and all(fills), lock_checks


def test_gemm_calls_hold_the_lock(clconv, rng, lock_checks):
    """Every CLBlast call (its tuned-parameter state and the shared column buffer) is made holding
    dev.lock, on every path that multiplies."""
    x, w, b = _r(rng, (2, 4, 6, 5)), _r(rng, (6, 4, 3, 3)), _r(rng, 6)
    y = clconv.conv2d(x, w, b, padding=1, algorithm="im2col")
    clconv.conv2d(x, w, b, padding=1, algorithm="im2col", workspace_limit=36 * 4 * 3)
    clconv.conv2d(x, w, b, padding=1, algorithm="winograd")
    clconv.conv_transpose2d(y, w, stride=2)
    clconv.conv2d_input(x.shape, w, y, padding=1, padding_mode="reflect")
    clconv.conv2d_weight(x, w.shape, y, padding=1)
    clconv.conv2d_weight(x, w.shape, y, padding=1, workspace_limit=36 * 4 * 5)
    layer = clconv.nn.Conv2d(4, 6, 3, padding=1, rng=0)
    layer.backward(np.ones_like(layer(x)))
    gemms = [held for what, held in lock_checks if what == "gemm"]
    assert len(gemms) >= 10 and all(gemms), lock_checks


# ---------------------------------------------------------------------------
# workspace_limit above the largest allocation
# ---------------------------------------------------------------------------


def test_workspace_limit_is_capped_at_the_largest_allocation(clconv, rng, monkeypatch,
                                                             column_allocations):
    """A limit larger than the device can allocate at once would plan a buffer the driver refuses:
    it is capped (here below one image's columns, so the call splits into column ranges)."""
    from clconv.ops import conv
    from clconv.runtime.memory import release_column_buffer

    dev = clconv.current_device()
    x, w, b = _r(rng, (2, 8, 16, 16)), _r(rng, (8, 8, 3, 3)), _r(rng, 8)
    full = clconv.conv2d(x, w, b, padding=1, algorithm="im2col")
    g = _r(rng, full.shape)
    want = clconv.conv2d_weight(x, w.shape, g, padding=1)
    cap = 40 * 1024  # holds the input and output (16 KiB each), not one image's columns (72 KiB)
    monkeypatch.setattr(dev, "max_alloc_bytes", cap)
    assert conv.resolve_workspace_limit(dev, 2**50) == cap
    assert conv.resolve_workspace_limit(dev, 1000) == 1000
    release_column_buffer(dev)
    column_allocations.clear()
    got = clconv.conv2d(x, w, b, padding=1, algorithm="im2col", workspace_limit=2**50)
    np.testing.assert_array_equal(got, full)
    assert column_allocations and max(column_allocations) <= cap, column_allocations
    release_column_buffer(dev)
    column_allocations.clear()
    got = clconv.conv2d_weight(x, w.shape, g, padding=1, workspace_limit=2**50)
    assert_close(got, want, np.float32, reduction=2 * 256, magnitude=conv_magnitude(g, x))
    assert column_allocations and max(column_allocations) <= cap, column_allocations


def test_conv_uses_the_shared_check_fits(clconv, monkeypatch):
    """One check (arrays.check_fits) for every op: same message, conv.py keeps no copy of it."""
    from clconv.ops import conv

    assert not hasattr(conv, "_check_fits")
    dev = clconv.current_device()
    monkeypatch.setattr(dev, "max_alloc_bytes", 1000)
    with pytest.raises(MemoryError, match=r"the input \(1, 1, 20, 20\) of float32 needs 1600 bytes"
                                          r".*split the batch"):
        clconv.conv2d(np.ones((1, 1, 20, 20), np.float32), np.ones((1, 1, 1, 1), np.float32),
                      stride=20, algorithm="direct")


# ---------------------------------------------------------------------------
# pyclblast missing: refused before any upload or allocation
# ---------------------------------------------------------------------------



@pytest.fixture
def refuse_device_work(monkeypatch):
    """Call it to make any upload or device allocation fail the test from then on."""
    def refuse(*args, **kwargs):
        raise AssertionError("uploaded or allocated before refusing the call")

    def start():
        for name in ("to_device", "empty", "zeros"):
            monkeypatch.setattr(cla, name, refuse)
        monkeypatch.setattr(cl, "Buffer", refuse)

    return start


def test_missing_pyclblast_refused_before_any_device_work(clconv, rng, no_pyclblast,
                                                          refuse_device_work):
    x, w = _r(rng, (2, 3, 6, 6)), _r(rng, (4, 3, 3, 3))
    g = _r(rng, (2, 4, 4, 4))
    dev = clconv.current_device()
    x_dev = cla.to_device(dev.queue, x)
    # the layers' parameters are uploaded at construction, and the direct forward needs no CLBlast
    layer_im2col = clconv.nn.Conv2d(3, 4, 3, algorithm="im2col", rng=0)
    layer_transposed = clconv.nn.ConvTranspose2d(4, 3, 3, rng=0)
    layer_direct = clconv.nn.Conv2d(3, 4, 3, algorithm="direct", rng=0)
    layer_direct(x)
    from clconv.blas import clblast
    from clconv.blas.engine import gemm_engine

    calls = {  # CLBlast's by name, on every device
        "conv2d im2col": lambda: clconv.conv2d(x, w, algorithm="im2col"),
        "conv2d im2col device": lambda: clconv.conv2d(x_dev, w, algorithm="im2col"),
        "conv2d im2col 1x1": lambda: clconv.conv2d(x, w[:, :, :1, :1], algorithm="im2col"),
        "conv1d im2col": lambda: clconv.conv1d(x[:, :, 0], w[:, :, 0], algorithm="im2col"),
        "conv2d winograd": lambda: clconv.conv2d(x, w, algorithm="winograd"),
        "nn.Conv2d im2col forward": lambda: layer_im2col(x),
    }
    engine_calls = {  # the GEMM engine of the device: CLBlast's on GPUs, clconv's packed on CPUs
        "conv_transpose2d": lambda: clconv.conv_transpose2d(g, w),
        "conv2d_input": lambda: clconv.conv2d_input(x.shape, w, g),
        "conv2d_weight": lambda: clconv.conv2d_weight(x, w.shape, g),
        "conv2d_weight empty": lambda: clconv.conv2d_weight(x[:0], w.shape, g[:0]),
        "nn.ConvTranspose2d forward": lambda: layer_transposed(g),
        "nn.Conv2d backward": lambda: layer_direct.backward(g),
    }
    if gemm_engine(dev) is clblast:
        calls.update(engine_calls)
    else:  # they need no CLBlast here: they run (and match the oracle elsewhere in the suite)
        for what, call in engine_calls.items():
            assert call() is not None, what
    refuse_device_work()
    for what, call in calls.items():
        with pytest.raises(clconv.UnsupportedError, match="pip install pyclblast") as info:
            call()
        assert "needs CLBlast's GEMM" in str(info.value), what


def test_missing_pyclblast_keeps_direct_and_auto(clconv, rng, no_pyclblast):
    x, w = _r(rng, (2, 3, 6, 6)), _r(rng, (4, 3, 3, 3))
    want = ref.conv_nd(x, w, padding=1)
    for algorithm in ("auto", "direct"):
        assert_close(clconv.conv2d(x, w, padding=1, algorithm=algorithm), want, np.float32,
                     conv_reduction(w), conv_magnitude(x, w))


# ---------------------------------------------------------------------------
# the weight gradient within workspace_limit
# ---------------------------------------------------------------------------


@pytest.fixture
def weight_grad_im2col(clconv, monkeypatch):
    """(batch, ncols) of every im2col launch of the weight gradient."""
    from clconv.ops import grad

    return spy_im2col(monkeypatch, grad)


# (x shape, weight shape, kwargs)
WEIGHT_GRAD_CASES = {
    "3x3-pad1": ((3, 4, 9, 8), (5, 4, 3, 3), {"padding": 1}),
    "grouped": ((2, 6, 7, 7), (6, 2, 3, 3), {"groups": 3, "stride": 2, "padding": 1}),
    "more-groups-than-images": ((2, 8, 6, 6), (8, 2, 3, 3), {"groups": 4}),
    "reflect-3d": ((2, 2, 4, 5, 6), (3, 2, 2, 3, 3), {"padding": 1, "padding_mode": "reflect"}),
}


@pytest.mark.parametrize("case", list(WEIGHT_GRAD_CASES))
def test_weight_grad_honours_workspace_limit(clconv, rng, case, column_allocations,
                                             weight_grad_im2col):
    """From the whole batch down to one column of one image, the column buffer never exceeds the
    limit and the gradient stays right (the split changes only the summation order)."""
    from clconv.blas import packed
    from clconv.blas.engine import gemm_engine
    from clconv.ops.geometry import conv_geometry
    from clconv.ops.grad import plan_weight_grad
    from clconv.ops.weight_grad_paths import weight_grad_route
    from clconv.runtime.memory import release_column_buffer

    x_shape, w_shape, kw = WEIGHT_GRAD_CASES[case]
    nd = len(w_shape) - 2
    x = _r(rng, x_shape)
    out_shape = ref.conv_nd(np.zeros(x_shape), np.zeros(w_shape), **kw).shape
    g = _r(rng, out_shape)
    mode = kw.pop("padding_mode", "zeros")
    weight = getattr(clconv, f"conv{nd}d_weight")
    want = ref_weight(x, w_shape, g, mode, kw)
    geo = conv_geometry(nd, x_shape, w_shape, kw.get("stride", 1), kw.get("padding", 0), 1,
                        kw.get("groups", 1), mode)
    column = geo.column_rows * 4
    image = column * geo.out_spatial
    partial = 4 * int(np.prod(w_shape))
    reduction = x_shape[0] * int(np.prod(out_shape[2:]))
    dev = clconv.current_device()
    floor = packed.gemm_scratch_bytes(dev, np.float32, w_shape[0] // kw.get("groups", 1),
                                      int(np.prod(w_shape[1:])), 1, kw.get("groups", 1)) \
        if gemm_engine(dev) is packed else 0
    for limit in (None, 2 * (image + partial), 2 * (image + partial) - 1, image, image - 1,
                  image // 3, column * 2 + 3, column):
        packed.release_scratch(dev)
        release_column_buffer(clconv.current_device())
        column_allocations.clear()
        weight_grad_im2col.clear()
        got = weight(x, w_shape, g, padding_mode=mode, workspace_limit=limit, **kw)
        assert_close(got, want, np.float32, reduction, conv_magnitude(g, x),
                     err_msg=f"workspace_limit={limit}")
        if limit is None:
            continue
        plan = plan_weight_grad(geo, 4, limit)
        assert plan.nbytes <= limit
        # Each buffer within the limit: the columns, and the packed GEMM's scratch down to its
        # floor, the packing of one column.
        bound = max(limit, floor)
        assert column_allocations and max(column_allocations) <= bound, (limit,
                                                                         column_allocations)
        if weight_grad_route(dev, geo, np.dtype(np.float32), limit) is not None:
            # a path of its own fits the limit (which one depends on the device's tiles: on
            # AVX2's the packed weight gradient's scratch is smaller): no columns at all
            assert weight_grad_im2col == []
            continue
        if limit < 2 * (image + partial):  # one image at a time
            assert all(batch == 1 for batch, _ in weight_grad_im2col)
        if limit < image:  # in ranges of output positions
            assert len(weight_grad_im2col) > x_shape[0]
            assert max(n for _, n in weight_grad_im2col) <= limit // column


def ref_weight(x, w_shape, g, mode, kw):
    import reference_extra as rx

    return rx.conv_nd_weight(x, w_shape, g, padding_mode=mode, **kw)


def test_weight_grad_limit_below_one_column_is_a_memory_error(clconv, rng, column_allocations):
    x, g = _r(rng, (2, 4, 6, 6)), _r(rng, (2, 2, 4, 4))
    with pytest.raises(MemoryError, match=r"workspace_limit=100 bytes .*36 values = 144 bytes.*"
                                          r"input \(2, 4, 6, 6\)"):
        clconv.conv2d_weight(x, (2, 4, 3, 3), g, workspace_limit=100)
    assert column_allocations == []
    with pytest.raises(ValueError, match="workspace_limit"):
        clconv.conv2d_weight(x, (2, 4, 3, 3), g, workspace_limit=0)


def test_pointwise_weight_grad_needs_no_columns(clconv, rng, column_allocations):
    """A 1x1 convolution's input is its column matrix: even a 1-byte limit works (one image at a
    time, no column buffer; the packed GEMM packs one output position at a time, its floor)."""
    from clconv.blas import packed
    from clconv.blas.engine import gemm_engine

    x, g = _r(rng, (3, 4, 5, 5)), _r(rng, (3, 6, 5, 5))
    got = clconv.conv2d_weight(x, (6, 4, 1, 1), g, workspace_limit=1)
    assert_close(got, ref.conv_nd_weight(x, (6, 4, 1, 1), g), np.float32, reduction=75,
                 magnitude=conv_magnitude(g, x))
    dev = clconv.current_device()
    floor = packed.gemm_scratch_bytes(dev, np.float32, 6, 4, 1) \
        if gemm_engine(dev) is packed else 0
    assert all(size <= floor for size in column_allocations), (floor, column_allocations)
