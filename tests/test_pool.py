"""clconv's pooling ops (max, avg, adaptive; 1-3 d) against torch.nn.functional and the float64
oracle (reference_layers.py): strides, padding, dilation, ceil_mode, count_include_pad,
divisor_override, N = 0, unbatched input, NaN, device arrays, out=, plan reuse and bad arguments.

Max pooling and the adaptive windows move data (exact); averages sum a window (float tolerance).
"""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest
import reference_layers as ref
from helpers import as_kind, import_torch, random_array
from tolerance import assert_close, assert_exact

SIZES = {1: (11,), 2: (9, 10), 3: (5, 6, 7)}

# (kernel_size, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    (2, None, 0, 1, False), (3, 2, 1, 1, False), (3, 2, 1, 1, True), (2, 3, 1, 2, True),
    (3, 1, 0, 2, False), (4, 3, 2, 1, True), (1, 1, 0, 1, False),
]
# (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CASES = [
    (2, None, 0, False, True, None), (3, 2, 1, False, True, None), (3, 2, 1, True, False, None),
    (3, 2, 1, True, True, None), (4, 3, 2, True, False, None), (3, 2, 1, False, True, 5),
    (2, 1, 1, True, False, 3),
]
ADAPTIVE_SIZES = {1: [1, 4, 7], 2: [1, (3, 4), (5, None), (9, 10)], 3: [1, (2, 3, 4), (None, 4, 2)]}


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _dtypes(dev):
    return (np.float32, np.float64) if dev.fp64 else (np.float32,)


def _torch_call(torch, name, x, *args, **kwargs):
    return getattr(torch.nn.functional, name)(torch.from_numpy(np.ascontiguousarray(x)), *args,
                                              **kwargs).numpy()


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("case", MAX_CASES, ids=lambda c: "k{}-s{}-p{}-d{}-ceil{}".format(*c))
def test_max_pool(clconv, dev, rng, nd, case):
    k, s, p, d, ceil = case
    for dtype in _dtypes(dev):
        x = random_array(rng, (2, 3) + SIZES[nd], dtype)
        got = getattr(clconv, f"max_pool{nd}d")(x, k, s, p, d, ceil)
        assert got.dtype == dtype
        assert_exact(got, ref.max_pool(x.astype(np.float64), k, s, p, d, ceil).astype(dtype))
        torch = import_torch()
        assert_exact(got, _torch_call(torch, f"max_pool{nd}d", x, k, s, p, d, ceil))


@pytest.mark.parametrize("nd, case", [(nd, c) for nd in (1, 2, 3) for c in AVG_CASES
                                      if nd > 1 or c[5] is None],  # avg_pool1d: no divisor
                         ids=lambda v: str(v) if isinstance(v, int) else
                         "k{}-s{}-p{}-ceil{}-cip{}-div{}".format(*v))
def test_avg_pool(clconv, dev, rng, nd, case):
    k, s, p, ceil, cip, div = case
    extra = () if nd == 1 else (div,)
    for dtype in _dtypes(dev):
        x = random_array(rng, (2, 3) + SIZES[nd], dtype)
        got = getattr(clconv, f"avg_pool{nd}d")(x, k, s, p, ceil, cip, *extra)
        want = ref.avg_pool(x.astype(np.float64), k, s, p, ceil, cip, div)
        assert got.shape == want.shape and got.dtype == dtype
        assert_close(got, want, dtype, reduction=64, magnitude=np.abs(x).max())
        torch = import_torch()
        assert_close(got, _torch_call(torch, f"avg_pool{nd}d", x, k, s, p, ceil, cip, *extra),
                     dtype, reduction=64, magnitude=np.abs(x).max())


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_pool(clconv, dev, rng, nd, kind):
    for output_size in ADAPTIVE_SIZES[nd]:
        for dtype in _dtypes(dev):
            x = random_array(rng, (2, 3) + SIZES[nd], dtype)
            got = getattr(clconv, f"adaptive_{kind}_pool{nd}d")(x, output_size)
            reduce = np.mean if kind == "avg" else ref.adaptive_max
            want = ref.adaptive_pool(x.astype(np.float64), output_size, reduce)
            assert got.shape == want.shape, output_size
            if kind == "max":
                assert_exact(got, want.astype(dtype))
            else:
                assert_close(got, want, dtype, reduction=100, magnitude=np.abs(x).max())
            torch = import_torch()
            want_t = _torch_call(torch, f"adaptive_{kind}_pool{nd}d", x, output_size)
            assert_close(got, want_t, dtype, reduction=100, magnitude=np.abs(x).max())


def test_max_pool_propagates_nan_and_inf(clconv, rng):
    torch = import_torch()
    x = random_array(rng, (1, 2, 6, 6))
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 4, 4] = np.inf
    x[0, 1, 0, 0] = -np.inf
    for f, args in (("max_pool2d", (2,)), ("max_pool2d", (3, 1, 1)),
                    ("adaptive_max_pool2d", ((2, 3),)), ("avg_pool2d", (2,)),
                    ("adaptive_avg_pool2d", (2,))):
        got = getattr(clconv, f)(x, *args)
        want = _torch_call(torch, f, x, *args)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f)
        assert np.isnan(got).any()
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f)


def test_empty_batch_and_unbatched(clconv, rng):
    x = random_array(rng, (0, 3, 8, 8))
    for f, args in (("max_pool2d", (2,)), ("avg_pool2d", (3, 2, 1)), ("adaptive_avg_pool2d", (2,)),
                    ("adaptive_max_pool2d", (2,))):
        y = getattr(clconv, f)(x, *args)
        assert y.shape[:2] == (0, 3)
    x = random_array(rng, (3, 8, 8))
    torch = import_torch()
    for f, args in (("max_pool2d", (3, 2, 1, 1, True)), ("avg_pool2d", (3, 2, 1)),
                    ("adaptive_avg_pool2d", ((3, 2),))):
        got = getattr(clconv, f)(x, *args)
        want = _torch_call(torch, f, x, *args)
        assert got.shape == want.shape == (3,) + want.shape[1:]
        assert_close(got, want, np.float32, reduction=100, magnitude=np.abs(x).max())
    got = clconv.max_pool1d(random_array(rng, (4, 7)), 2)
    assert got.shape == (4, 3)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_pool_to_an_empty_output_as_torch(clconv, dev, rng, nd, kind):
    """An output size of 0 gives an empty result, as torch's (on a driver with a loop cap too,
    whose window check once divided by it)."""
    x = random_array(rng, (2, 3) + (5,) * nd)
    size = (0,) + (2,) * (nd - 1)
    got = getattr(clconv, f"adaptive_{kind}_pool{nd}d")(x, size)
    assert got.shape == (2, 3) + size and got.dtype == x.dtype


def test_device_arrays_stay_on_the_device_and_out(clconv, dev, rng):
    x = random_array(rng, (2, 4, 8, 8))
    xd = cla.to_device(dev.queue, x)
    y = clconv.max_pool2d(xd, 2)
    assert isinstance(y, cla.Array) and y.shape == (2, 4, 4, 4)
    assert_exact(y.get(), clconv.max_pool2d(x, 2))
    out = cla.empty(dev.queue, (2, 4, 1, 1), np.float32)
    assert clconv.adaptive_avg_pool2d(xd, 1, out=out) is out
    assert_close(out.get(), x.mean(axis=(2, 3), keepdims=True, dtype=np.float64), np.float32,
                 reduction=100, magnitude=np.abs(x).max())
    host_out = np.empty((2, 4, 4, 4), np.float32)
    assert clconv.avg_pool2d(x, 2, out=host_out) is host_out
    with pytest.raises(ValueError, match="out must have shape"):
        clconv.avg_pool2d(x, 2, out=np.empty((2, 4, 3, 3), np.float32))


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_global_pools_of_a_networks_widths(clconv, dev, rng, kind, monkeypatch):
    """The global pools of EfficientNet's squeeze-excitations (one output a channel, 16 to 1152
    channels, batch 1 and 3): results as the float64 oracle's, and on CPU devices the local sizes
    launch.cpu_work_group's (PoCL builds a work-group function per local size at the first
    launch; left to it, each width was one)."""
    from clconv.blas.engine import cpu_shaped
    from clconv.ops import launch, pool
    from clconv.ops.plan import plans

    seen: list[tuple] = []
    build = pool.kernel

    def recording(*args, **kwargs):  # the plans' kernels, their launches recorded
        k = build(*args, **kwargs)
        if k.function_name != "adaptive_pool":
            return k

        def launch_(queue, global_size, local_size, *values):
            seen.append((tuple(global_size), local_size))
            return k(queue, global_size, local_size, *values)
        return launch_

    monkeypatch.setattr(pool, "kernel", recording)
    plans(dev).clear()  # every plan made anew, with the recording kernels
    for batch in (1, 3):
        for channels in (16, 96, 144, 240, 480, 672, 1152):
            x = random_array(rng, (batch, channels, 7, 5))
            got = getattr(clconv, f"adaptive_{kind}_pool2d")(x, 1)
            reduce = np.mean if kind == "avg" else ref.adaptive_max
            want = ref.adaptive_pool(x.astype(np.float64), 1, reduce)
            assert_close(got, want, np.float32, reduction=35, magnitude=np.abs(x).max())
    assert len(seen) == 14
    if cpu_shaped(dev):
        units = dev.cl_device.max_compute_units
        assert all(local == (launch.cpu_work_group(items, units),) for (items,), local in seen)
        assert len({local for _, local in seen}) <= 2
    plans(dev).clear()  # no plan with a recording kernel left for later tests


def test_pool_layers_share_one_program(clconv, dev, rng):
    """Sizes are kernel arguments: new shapes, strides and windows build nothing."""
    from clconv.runtime.program import programs

    clconv.max_pool2d(random_array(rng, (1, 2, 6, 6)), 2)
    clconv.avg_pool2d(random_array(rng, (1, 2, 6, 6)), 2)
    clconv.adaptive_avg_pool2d(random_array(rng, (1, 2, 6, 6)), 2)
    before = programs(dev).builds
    clconv.max_pool2d(random_array(rng, (3, 5, 13, 11)), 3, 2, 1, ceil_mode=True)
    clconv.max_pool3d(random_array(rng, (1, 2, 5, 6, 7)), 2)
    clconv.avg_pool1d(random_array(rng, (2, 3, 17)), 4, 3, 2)
    clconv.adaptive_max_pool2d(random_array(rng, (2, 3, 9, 9)), (2, 5))
    assert programs(dev).builds == before


BAD = [  # (function, args, kwargs, error, words in the message)
    ("max_pool2d", (2,), {"padding": 2}, ValueError, "padding"),
    ("max_pool2d", (0,), {}, ValueError, "kernel_size"),
    ("max_pool2d", (2,), {"stride": 0}, ValueError, "stride"),
    ("max_pool2d", (2,), {"dilation": 0}, ValueError, "dilation"),
    ("max_pool2d", ((2, 2, 2),), {}, ValueError, "kernel_size"),
    ("max_pool2d", (2.5,), {}, TypeError, "kernel_size"),
    ("max_pool2d", (20,), {}, ValueError, "output size"),
    ("avg_pool2d", (3,), {"padding": 2}, ValueError, "padding"),
    ("avg_pool2d", (2,), {"divisor_override": 0}, ValueError, "divisor_override"),
    ("avg_pool2d", (2,), {"divisor_override": 1.5}, TypeError, "divisor_override"),
    ("adaptive_avg_pool2d", ((2, 2, 2),), {}, ValueError, "output_size"),
    ("adaptive_avg_pool2d", (1.5,), {}, TypeError, "output_size"),
    ("adaptive_avg_pool2d", (-1,), {}, ValueError, "output_size"),
]


@pytest.mark.parametrize("name, args, kwargs, error, words", BAD,
                         ids=[f"{b[0]}-{b[4]}-{i}" for i, b in enumerate(BAD)])
def test_bad_arguments(clconv, rng, name, args, kwargs, error, words):
    x = random_array(rng, (1, 2, 6, 6))
    with pytest.raises(error, match=words):
        getattr(clconv, name)(x, *args, **kwargs)
    torch = import_torch()
    with pytest.raises((RuntimeError, ValueError, TypeError)):  # torch refuses it too
        getattr(torch.nn.functional, name)(torch.from_numpy(x), *args, **kwargs)


BAD_FOR_SHAPE = [  # (function, input shape, args, kwargs, error, words in the message)
    ("adaptive_avg_pool1d", (1, 2, 5), ((None,),), {}, TypeError, "output_size"),
    ("adaptive_max_pool1d", (1, 2, 5), ((None,),), {}, TypeError, "output_size"),
    ("adaptive_max_pool1d", (1, 2, 5), (None,), {}, TypeError, "output_size"),
    # torch's avg_pool3d alone wants the unpadded input at least as large as the window
    ("avg_pool3d", (1, 1, 2, 2, 2), (3,), {"padding": 1}, ValueError, "smaller than kernel_size"),
    ("avg_pool3d", (1, 1, 4, 2, 4), ((2, 3, 2),), {"padding": 1}, ValueError, "kernel_size"),
]


@pytest.mark.parametrize("name, shape, args, kwargs, error, words", BAD_FOR_SHAPE,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_FOR_SHAPE)])
def test_bad_arguments_for_the_input(clconv, rng, name, shape, args, kwargs, error, words):
    x = random_array(rng, shape)
    with pytest.raises(error, match=words):
        getattr(clconv, name)(x, *args, **kwargs)
    torch = import_torch()
    with pytest.raises((RuntimeError, ValueError, TypeError)):  # torch refuses it too
        getattr(torch.nn.functional, name)(torch.from_numpy(x), *args, **kwargs)


def test_padded_windows_larger_than_the_input_as_torch(clconv, rng):
    """The other pools accept an input smaller than the window when padding makes room (torch)."""
    torch = import_torch()
    for name, shape in (("max_pool3d", (1, 1, 2, 2, 2)), ("avg_pool2d", (1, 1, 2, 2)),
                        ("max_pool2d", (1, 1, 2, 2)), ("avg_pool1d", (1, 1, 2))):
        x = random_array(rng, shape)
        got = getattr(clconv, name)(x, 3, padding=1)
        want = getattr(torch.nn.functional, name)(torch.from_numpy(x), 3, padding=1).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("divisor", [2**31, 2**40 + 1, -2**31 - 1, 2**63 - 1, 7])
@pytest.mark.parametrize("nd", [2, 3])  # (torch's avg_pool1d has no divisor_override)
def test_avg_pool_divisor_override_past_int32_as_torch(clconv, dev, rng, nd, divisor):
    """torch takes any int64 divisor_override (the sum over it, as a float)."""
    torch = import_torch()
    x = random_array(rng, (2, 3, *SIZES[nd]))
    name = f"avg_pool{nd}d"
    got = getattr(clconv, name)(x, 2, divisor_override=divisor)
    want = getattr(torch.nn.functional, name)(torch.from_numpy(x), 2,
                                              divisor_override=divisor).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("nd, shape", [
    (2, (4, 5)), (2, (2, 0)), (2, (2, 3, 4, 5, 6)), (2, (0, 2, 3, 0)), (2, (2, 3, 4, 0)),
    (3, (3, 4, 5)), (3, (2, 1, 2, 3, 4, 5)), (3, (2, 3, 0, 4, 4)), (1, (3, 0)), (1, (2, 3, 0)),
])
@pytest.mark.parametrize("kind", ["numpy", "cl"])
def test_adaptive_avg_pool_to_ones_is_torchs_mean(clconv, dev, rng, nd, shape, kind):
    """torch pools to all ones as a mean over the pooled dims: any rank that has them (1-d:
    2 or 3 dims), NaN for empty planes; other sizes keep the (C, ...) / (N, C, ...) ranks."""
    torch = import_torch()
    x = random_array(rng, shape)
    f = getattr(torch.nn.functional, f"adaptive_avg_pool{nd}d")
    want = f(torch.from_numpy(x), 1).numpy()
    got = getattr(clconv, f"adaptive_avg_pool{nd}d")(as_kind(x, kind, dev.queue), 1)
    assert isinstance(got, cla.Array if kind == "cl" else np.ndarray)
    got = got.get() if kind == "cl" else got
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # (NaN where torch's is)
    if len(shape) not in (nd + 1, nd + 2):
        with pytest.raises(RuntimeError):
            f(torch.from_numpy(x), 2)
        with pytest.raises(ValueError, match="input"):
            getattr(clconv, f"adaptive_avg_pool{nd}d")(x, 2)


@pytest.mark.parametrize("nd, shape", [
    (2, (4, 5)), (2, (2, 3, 4, 5, 6)), (2, (2, 3, 4, 0)), (3, (2, 1, 2, 3, 4, 5)), (1, (3, 0))])
def test_adaptive_avg_pool_layer_to_ones_is_torchs_mean(clconv, dev, rng, nd, shape):
    """clconv.nn.AdaptiveAvgPool{nd}d(1) on those ranks: torch's output and shape, and its
    gradient (torch's autograd of the mean: 1 / the plane's size, none for empty planes)."""
    torch = import_torch()
    import clconv.nn as cnn

    x = random_array(rng, shape)
    t = torch.from_numpy(x).requires_grad_()
    want = getattr(torch.nn, f"AdaptiveAvgPool{nd}d")(1)(t)
    g = random_array(rng, tuple(want.shape))
    want.backward(torch.from_numpy(g))
    layer = getattr(cnn, f"AdaptiveAvgPool{nd}d")(1)
    got = layer.forward(x)
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6)
    dx = layer.backward(g)
    assert dx.shape == shape
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-5, atol=1e-6)


HUGE = [  # (function, input shape, kwargs): a value past int32 that torch refuses
    ("max_pool2d", (1, 1, 5, 5), {"kernel_size": 2, "stride": 2**33}),
    ("max_pool2d", (1, 1, 5, 5), {"kernel_size": 1, "dilation": 2**31}),
    ("max_pool3d", (1, 1, 1, 5, 5), {"kernel_size": 1, "dilation": 2**33}),
    ("avg_pool1d", (1, 1, 5), {"kernel_size": 2, "stride": 2**31}),
    ("avg_pool2d", (1, 1, 5, 5), {"kernel_size": 2, "stride": (2**63 - 1, 1)}),
    ("avg_pool3d", (1, 1, 2, 5, 5), {"kernel_size": 2, "stride": 2**40}),
]


@pytest.mark.parametrize("name, shape, kwargs", HUGE, ids=[f"{h[0]}-{i}" for i, h in
                                                           enumerate(HUGE)])
def test_window_values_past_int32_refused_as_torch(clconv, rng, name, shape, kwargs):
    """torch converts these pools' window arguments to int and refuses larger values even where
    the output would be one window; max_pool1d alone takes 64-bit strides."""
    torch = import_torch()
    x = random_array(rng, shape)
    with pytest.raises(RuntimeError, match="int"):
        getattr(torch.nn.functional, name)(torch.from_numpy(x), **kwargs)
    arg = next(k for k in kwargs if k != "kernel_size")
    with pytest.raises(ValueError, match=arg):
        getattr(clconv, name)(x, **kwargs)
    x1 = random_array(rng, (1, 1, 5))  # max_pool1d takes the huge stride (one output)
    want = torch.nn.functional.max_pool1d(torch.from_numpy(x1), 2, stride=2**40).numpy()
    assert_exact(clconv.max_pool1d(x1, 2, stride=2**40), want)


@pytest.mark.parametrize("kwargs", [{"kernel_size": 2**32, "padding": 2**31 - 1},
                                    {"kernel_size": 2, "dilation": 2**33},
                                    {"kernel_size": 2**31}])
def test_max_pool1d_window_past_int32_refused(clconv, rng, kwargs):
    """max_pool1d's kernel_size, padding and dilation past int32, which torch truncates (wrong
    windows, or a loop that runs for minutes): a ValueError naming one (numpy's OverflowError
    leaked for the first)."""
    with pytest.raises(ValueError, match="must be below 2\\*\\*31|too small"):
        clconv.max_pool1d(random_array(rng, (1, 1, 5)), **kwargs)


def test_bad_inputs(clconv, rng):
    with pytest.raises(ValueError, match="input"):
        clconv.max_pool2d(random_array(rng, (2, 3, 4, 4, 4)), 2)
    with pytest.raises(ValueError, match="non-zero"):
        clconv.max_pool2d(random_array(rng, (2, 3, 0, 4)), 2)
    with pytest.raises(TypeError, match="input"):
        clconv.max_pool2d(np.ones((1, 1, 4, 4), np.int32), 2)
    with pytest.raises(TypeError, match="ceil_mode"):
        clconv.max_pool2d(random_array(rng, (1, 1, 4, 4)), 2, ceil_mode="yes")


@pytest.mark.parametrize("name, args", [
    ("max_pool2d", (3, 2, 1, 1, True)), ("max_pool1d", (2,)), ("max_pool3d", (2, 1, 1)),
    ("adaptive_max_pool2d", ((3, 2),)), ("adaptive_max_pool1d", (4,)),
], ids=lambda v: v if isinstance(v, str) else None)
def test_return_indices(clconv, dev, rng, name, args):
    """return_indices=True: (output, torch's int64 flat index of each maximum in its plane),
    of the input's kind."""
    torch = import_torch()
    nd = int(name[-2])
    x = random_array(rng, (2, 3) + SIZES[nd])
    got, idx = getattr(clconv, name)(x, *args, return_indices=True)
    want, want_idx = getattr(torch.nn.functional, name)(torch.from_numpy(x), *args,
                                                        return_indices=True)
    assert_exact(got, want.numpy())
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, want_idx.numpy())
    got_d, idx_d = getattr(clconv, name)(cla.to_device(dev.queue, x[0]), *args,
                                         return_indices=True)  # unbatched, on the device
    assert isinstance(got_d, cla.Array) and isinstance(idx_d, cla.Array)
    np.testing.assert_array_equal(idx_d.get(), want_idx.numpy()[0])
    assert_exact(got_d.get(), want.numpy()[0])


def test_max_pool_gradient_is_torchs_bitwise(clconv, dev, rng):
    """clconv.nn's max pools' backward (indices from max_pool_rows_indices, the row-wise gather
    max_pool_backward_rows) against torch's autograd on random windows in 1-3 d (overlapping,
    strided, dilated, padded, ceil_mode) with many ties and some NaN: bitwise equal (each input
    sums its outputs' gradients in torch's order)."""
    torch = import_torch()
    cases = 0
    while cases < 24:
        nd = int(rng.integers(1, 4))
        k = tuple(int(v) for v in rng.integers(1, 4, nd))
        s = tuple(int(v) for v in rng.integers(1, 4, nd))
        d = tuple(int(v) for v in rng.integers(1, 3, nd))
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        size = tuple(int(v) for v in rng.integers(3, 9, nd))
        ceil = bool(rng.integers(0, 2))
        x = (rng.integers(0, 4, (2, 3, *size)) * 0.5).astype(np.float32)  # ties
        if cases % 3 == 0:
            x.reshape(-1)[rng.integers(0, x.size, 3)] = np.nan
        theirs = getattr(torch.nn, f"MaxPool{nd}d")(k, s, p, d, ceil_mode=ceil)
        xt = torch.from_numpy(x).requires_grad_(True)
        try:
            want = theirs(xt)
        except RuntimeError:  # an output size torch refuses
            continue
        ours = getattr(clconv.nn, f"MaxPool{nd}d")(k, s, p, d, ceil_mode=ceil)
        got = ours(cla.to_device(dev.queue, x) if cases % 2 else x)
        got = got.get() if isinstance(got, cla.Array) else got
        gy = rng.standard_normal(got.shape).astype(np.float32)
        want.backward(torch.from_numpy(gy))
        np.testing.assert_array_equal(got, want.detach().numpy())
        np.testing.assert_array_equal(np.asarray(ours.backward(gy)), xt.grad.numpy())
        cases += 1
