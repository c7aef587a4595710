"""Bad arguments raise ValueError / TypeError naming the offending argument.

The ``match`` patterns are deliberately lenient: a regex on the argument's
name only, never on the wording of the rest of the message.
"""

from __future__ import annotations

import re

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import pytest


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def f32(*shape):
    return np.ones(shape, np.float32)


X = f32(2, 4, 6, 6)  # (N, C, H, W)
W = f32(3, 4, 3, 3)  # (C_out, C_in, kh, kw)

# id -> (args, kwargs, exception, match)
CONV2D_ERRORS = {
    # shapes
    "input-2d": ((f32(6, 6), W), {}, ValueError, "input"),
    "input-5d": ((f32(1, 2, 4, 6, 6), W), {}, ValueError, "input"),
    "weight-3d": ((X, f32(3, 4, 3)), {}, ValueError, "weight"),
    "weight-5d": ((X, f32(3, 4, 3, 3, 1)), {}, ValueError, "weight"),
    "channel-mismatch": ((X, f32(3, 3, 3, 3)), {}, ValueError, "channel|input|weight"),
    "groups-not-dividing-input": ((f32(1, 3, 6, 6), f32(4, 1, 3, 3)), {"groups": 2}, ValueError, "groups"),
    "groups-not-dividing-output": ((X, f32(3, 2, 3, 3)), {"groups": 2}, ValueError, "groups"),
    "groups-zero": ((X, W), {"groups": 0}, ValueError, "groups"),
    "kernel-larger-than-input": ((f32(1, 4, 4, 4), f32(2, 4, 5, 5)), {}, ValueError, "kernel"),
    "dilated-kernel-larger-than-input": ((f32(1, 4, 4, 4), W), {"dilation": 2}, ValueError, "kernel"),
    "kernel-larger-than-padded-input-one-dim": ((f32(1, 4, 3, 9), f32(2, 4, 6, 3)), {"padding": 1}, ValueError, "kernel"),
    # bias
    "bias-too-long": ((X, W, f32(4)), {}, ValueError, "bias"),
    "bias-2d": ((X, W, f32(1, 3)), {}, ValueError, "bias"),
    # stride / dilation / padding values
    "stride-zero": ((X, W), {"stride": 0}, ValueError, "stride"),
    "stride-negative": ((X, W), {"stride": -1}, ValueError, "stride"),
    "stride-pair-zero": ((X, W), {"stride": (1, 0)}, ValueError, "stride"),
    "dilation-zero": ((X, W), {"dilation": 0}, ValueError, "dilation"),
    "dilation-pair-zero": ((X, W), {"dilation": (0, 1)}, ValueError, "dilation"),
    "padding-negative": ((X, W), {"padding": -1}, ValueError, "padding"),
    "padding-pair-negative": ((X, W), {"padding": (1, -1)}, ValueError, "padding"),
    "padding-same-stride2": ((X, W), {"padding": "same", "stride": 2}, ValueError, "padding"),
    "padding-same-stride-pair": ((X, W), {"padding": "same", "stride": (1, 2)}, ValueError, "padding"),
    "padding-bad-string": ((X, W), {"padding": "full"}, ValueError, "padding"),
    "padding-mode-unknown": ((X, W), {"padding": 1, "padding_mode": "mirror"}, ValueError, "padding_mode"),
    "algorithm-unknown": ((X, W), {"algorithm": "fft"}, ValueError, "algorithm"),
    "reflect-padding-too-large": ((f32(1, 4, 3, 6), W), {"padding": 3, "padding_mode": "reflect"}, ValueError, "padding"),
    "circular-padding-too-large": ((f32(1, 4, 3, 6), W), {"padding": 4, "padding_mode": "circular"}, ValueError, "padding"),
    # dtypes
    "input-int32": ((X.astype(np.int32), W), {}, TypeError, "dtype"),
    "weight-int64": ((X, W.astype(np.int64)), {}, TypeError, "dtype"),
    "input-bool": ((X.astype(bool), W), {}, TypeError, "dtype"),
    "mixed-f32-f64": ((X, W.astype(np.float64)), {}, TypeError, "dtype"),
    "mixed-f64-f32": ((X.astype(np.float64), W), {}, TypeError, "dtype"),
    "bias-f64-with-f32": ((X, W, np.ones(3, np.float64)), {}, TypeError, "dtype"),
}


@pytest.mark.parametrize("case", list(CONV2D_ERRORS))
def test_conv2d_rejects(clconv, case):
    args, kwargs, exc, match = CONV2D_ERRORS[case]
    with pytest.raises(exc, match=match):
        clconv.conv2d(*args, **kwargs)


# Tuples of the wrong length may be reported as ValueError or TypeError.
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stride": (1, 1, 1)}, "stride"),
        ({"dilation": (1, 2, 1)}, "dilation"),
        ({"padding": (1, 1, 1)}, "padding"),
        ({"stride": 1.5}, "stride"),
        ({"padding": 0.5}, "padding"),
    ],
    ids=["stride-len3", "dilation-len3", "padding-len3", "stride-float", "padding-float"],
)
def test_conv2d_rejects_malformed_tuples(clconv, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        clconv.conv2d(X, W, **kwargs)


def test_errors_are_raised_before_any_work(clconv):
    """Validation happens up front: a bad call with pyopencl inputs raises the same ValueError."""
    dev = clconv.current_device()
    x = cla.to_device(dev.queue, X)
    w = cla.to_device(dev.queue, W)
    with pytest.raises(ValueError, match="stride"):
        clconv.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="groups"):
        clconv.conv2d(x, w, groups=3)


def test_limits_are_accepted(clconv):
    """Boundary cases that must *not* raise: kernel == padded input, same with stride 1,
    reflect padding == size - 1, circular padding == size."""
    clconv.conv2d(f32(1, 4, 3, 3), f32(2, 4, 5, 5), padding=1)
    clconv.conv2d(f32(1, 4, 3, 3), W, padding="same", stride=1)
    clconv.conv2d(f32(1, 4, 3, 3), W, padding=2, padding_mode="reflect")
    clconv.conv2d(f32(1, 4, 3, 3), W, padding=3, padding_mode="circular")


def test_pyopencl_array_from_another_context(clconv):
    """A device array must live on the current device's context."""
    dev = clconv.current_device()
    other_ctx = cl.Context(dev.context.devices)
    other_q = cl.CommandQueue(other_ctx)
    x = cla.to_device(other_q, X)
    w = cla.to_device(other_q, W)
    with pytest.raises((ValueError, TypeError), match="input|context"):
        clconv.conv2d(x, w)


# ---------------------------------------------------------------------------
# precision support
# ---------------------------------------------------------------------------


def test_unsupported_error_is_runtime_error(clconv):
    assert issubclass(clconv.UnsupportedError, RuntimeError)


def test_float16_on_device_without_fp16(clconv):
    dev = clconv.current_device()
    if dev.fp16:
        pytest.skip(f"{dev.name} supports float16")
    x = X.astype(np.float16)
    w = W.astype(np.float16)
    with pytest.raises(clconv.UnsupportedError) as info:
        clconv.conv2d(x, w)
    message = str(info.value)
    assert "float16" in message or "half" in message
    assert dev.name in message
    with pytest.raises(clconv.UnsupportedError, match="float16|half"):
        clconv.im2col(x, 3)


def test_float64_on_device_without_fp64(clconv):
    dev = clconv.current_device()
    if dev.fp64:
        pytest.skip(f"{dev.name} supports float64")
    with pytest.raises(clconv.UnsupportedError, match="float64|double"):
        clconv.conv2d(X.astype(np.float64), W.astype(np.float64))


# ---------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------

IM = f32(2, 3, 5, 5)

IM2COL_ERRORS = {
    "input-2d": ((f32(5, 5), 3), {}, ValueError, "input"),
    "input-5d": ((f32(1, 2, 3, 5, 5), 3), {}, ValueError, "input"),
    "kernel-too-large": ((IM, 6), {}, ValueError, "kernel"),
    "dilated-kernel-too-large": ((IM, 3), {"dilation": 3}, ValueError, "kernel"),
    "kernel-zero": ((IM, 0), {}, ValueError, "kernel"),
    "stride-zero": ((IM, 3), {"stride": 0}, ValueError, "stride"),
    "dilation-zero": ((IM, 3), {"dilation": 0}, ValueError, "dilation"),
    "padding-negative": ((IM, 3), {"padding": -1}, ValueError, "padding"),
    "int-dtype": ((IM.astype(np.int32), 3), {}, TypeError, "dtype"),
}


@pytest.mark.parametrize("case", list(IM2COL_ERRORS))
def test_im2col_rejects(clconv, case):
    args, kwargs, exc, match = IM2COL_ERRORS[case]
    with pytest.raises(exc, match=match):
        clconv.im2col(*args, **kwargs)


COLS = f32(2, 3 * 9, 9)  # 3 channels, 3x3 kernel, 5x5 output -> 3x3 blocks

COL2IM_ERRORS = {
    "input-1d": ((f32(9), (5, 5), 3), {}, ValueError, "input"),
    "input-4d": ((f32(1, 2, 27, 9), (5, 5), 3), {}, ValueError, "input"),
    "rows-not-divisible-by-kernel": ((f32(2, 26, 9), (5, 5), 3), {}, ValueError, "kernel|input"),
    "block-count-mismatch": ((f32(2, 27, 8), (5, 5), 3), {}, ValueError, "output_size|input|block"),
    "stride-zero": ((COLS, (5, 5), 3), {"stride": 0}, ValueError, "stride"),
    "padding-negative": ((COLS, (5, 5), 3), {"padding": -1}, ValueError, "padding"),
    "int-dtype": ((COLS.astype(np.int64), (5, 5), 3), {}, TypeError, "dtype"),
}


@pytest.mark.parametrize("case", list(COL2IM_ERRORS))
def test_col2im_rejects(clconv, case):
    args, kwargs, exc, match = COL2IM_ERRORS[case]
    with pytest.raises(exc, match=match):
        clconv.col2im(*args, **kwargs)


@pytest.mark.parametrize("nd, x_shape, w_shape, perm", [
    (2, (2, 6, 6, 4), (3, 4, 3, 3), "(0, 3, 1, 2)"),
    (1, (2, 9, 4), (3, 4, 3), "(0, 2, 1)"),
    (3, (1, 5, 5, 5, 4), (3, 4, 1, 1, 1), "(0, 4, 1, 2, 3)"),
])
def test_channels_last_input_is_told_the_layout(clconv, nd, x_shape, w_shape, perm):
    with pytest.raises(ValueError, match=r"channel mismatch.*looks channels-last.*"
                                         rf"x\.transpose{re.escape(perm)}"):
        getattr(clconv, f"conv{nd}d")(np.ones(x_shape, np.float32), np.ones(w_shape, np.float32))
    # a plain mismatch (the last dim is not C_in either) gets no layout hint
    with pytest.raises(ValueError, match="channel mismatch") as info:
        clconv.conv2d(f32(2, 5, 6, 6), W)
    assert "channels-last" not in str(info.value)




def test_clconv_nn_lists_its_layers_only(clconv):
    names = dir(clconv.nn)
    assert set(clconv.nn.__all__) <= set(names) and "Conv2d" in names
    assert not {"np", "math", "cla", "numbers", "annotations"} & set(names)
    assert all(isinstance(getattr(clconv.nn, name), type) for name in clconv.nn.__all__)


@pytest.mark.parametrize("lanes, want", [(4, {"VWM": 4, "VWN": 4, "COPY_VW": 4, "MWG": 128}),
                                         (8, {"VWM": 8, "VWN": 4, "COPY_VW": 8, "MWG": 128}),
                                         (None, {"VWM": 8, "VWN": 4, "COPY_VW": 8, "MWG": 128})])
def test_clblast_vector_widths_fit_the_cpus_registers(clconv, lanes, want):
    from clconv.blas.clblast import fit_vector_widths

    assert fit_vector_widths({"VWM": 8, "VWN": 4, "COPY_VW": 8, "MWG": 128}, lanes) == want


_FIRST_FLOAT64 = """
import numpy as np, clconv
dev = clconv.current_device()
if not dev.fp64:
    print("NO-FP64")
    raise SystemExit(0)
x = np.random.rand(2, 8, 12, 12); w = np.random.rand(8, 8, 3, 3)
for algorithm in ("direct", "implicit", "im2col_packed") + (
        ("im2col",) if clconv.blas.clblast.available() else ()):  # CLBlast's DGEMM builds too
    clconv.conv2d(x, w, np.ones(8), padding=1, algorithm=algorithm)
clconv.conv2d(x, np.random.rand(8, 1, 3, 3), padding=1, groups=8, stride=2)
print("DONE")
"""


def test_the_first_float64_convolution_prints_no_compiler_output(clconv, tmp_path):
    """Fresh kernel caches (PoCL's, clconv's, CLBlast's tuning state): every build of the first
    float64 calls happens here, and none may reach the terminal ("N warnings generated.")."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, POCL_CACHE_DIR=str(tmp_path / "pocl"), XDG_CACHE_HOME=str(tmp_path),
               CLCONV_CACHE_DIR=str(tmp_path / "clconv"))
    env.pop("CLCONV_VERBOSE", None)
    env["CLCONV_DEVICE"] = env.get("CLCONV_DEVICE") or str(clconv.current_device().index)
    done = subprocess.run([sys.executable, "-c", _FIRST_FLOAT64], capture_output=True, text=True,
                          timeout=600, env=env, check=False)
    if "NO-FP64" in done.stdout:
        pytest.skip(f"{clconv.current_device().name} has no float64")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "DONE"
    assert "warning" not in done.stderr.lower() and "generated" not in done.stderr, done.stderr


def test_bad_inputs_found_by_fuzzing_against_torch(clconv):
    """Each case was accepted silently (or crashed) where torch raises, or raised where torch
    computes: torch's verdict, clconv's clear error or result."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    with pytest.raises(ValueError, match="input_shape .* negative"):
        clconv.plan_conv2d((-5, 3, 8, 8), (5, 3, 3, 3))
    with pytest.raises(TypeError, match="bias must be a bool"):
        clconv.plan_conv2d((1, 3, 8, 8), (5, 3, 3, 3), bias="yes")
    with pytest.raises(ValueError, match="bias shape"):
        clconv.plan_conv2d((1, 3, 8, 8), (5, 3, 3, 3), bias=(4,))
    assert not clconv.plan_conv2d((1, 3, 8, 8), (5, 3, 3, 3), bias=None).has_bias
    scalar = np.array(-3.0, np.float32)  # a 0-d plan: no batch to derive
    assert clconv.UnaryPlan(clconv.current_device(), "relu", (), np.float32)(scalar) == 0
    assert clconv.pad(np.array(1.5, np.float32), ()) == F.pad(torch.tensor(1.5), ()).item()
    x, c = f32(2, 3, 4), np.zeros(3, np.float32)
    with pytest.raises(ValueError):
        F.batch_norm(torch.from_numpy(x), torch.from_numpy(c), torch.ones(3), eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        clconv.batch_norm(x, c, c + 1, eps=-1.0)
    with pytest.raises(ValueError):
        F.batch_norm(torch.from_numpy(x), None, None, training=True, eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        clconv.batch_norm(x, None, None, training=True, eps=0.0)
    frozen = np.zeros(3, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean.*read-only"):
        clconv.batch_norm(x, frozen, c + 1, training=True)
    with pytest.raises(TypeError, match="weight"):
        clconv.prelu(x, 0.25)
    with pytest.raises(RuntimeError):
        F.adaptive_avg_pool2d(torch.from_numpy(X), (3,))
    with pytest.raises(ValueError, match="output_size"):
        clconv.adaptive_avg_pool2d(X, (3,))
    with pytest.raises(TypeError):
        F.interpolate(torch.from_numpy(X), scale_factor=2, mode="bilinear", align_corners=1)
    with pytest.raises(TypeError, match="align_corners"):
        clconv.interpolate(X, scale_factor=2, mode="bilinear", align_corners=1)
    v = np.array([-2.0, 0.0, 0.5, np.nan, np.inf], np.float32)
    for threshold, value in ((np.nan, 5.0), (0.0, np.nan)):
        want = F.threshold(torch.from_numpy(v), threshold, value).numpy()
        np.testing.assert_array_equal(clconv.threshold(v, threshold, value), want)


def test_bad_inputs_found_by_the_eighteenth_fuzz(clconv, dev):
    """Plans refuse a dtype that is not floating, None and a device that is not a Device (each
    was a KeyError, a float64 plan or an AttributeError); a CatPlan refuses another number of
    arrays (the extra ones were dropped); lists and None are no arrays for stack and
    channel_shuffle; error messages name what the caller passed."""
    torch = pytest.importorskip("torch")
    for make in (lambda d: clconv.plan_conv_transpose2d((1, 2, 4, 4), (2, 2, 3, 3), dtype=d),
                 lambda d: clconv.plan_conv2d_input((1, 2, 4, 4), (2, 2, 3, 3), dtype=d),
                 lambda d: clconv.SoftmaxPlan(dev, (3, 5), 1, d),
                 lambda d: clconv.LinearPlan(dev, (3, 4), (5, 4), None, d),
                 lambda d: clconv.UnaryPlan(dev, "relu", (3, 4), d)):
        for dtype in (np.int32, np.bool_, np.complex64, None):
            with pytest.raises(TypeError, match="floating dtype"):
                make(dtype)
    for bad in (None, "cpu"):
        with pytest.raises(TypeError, match="clconv.Device"):
            clconv.SoftmaxPlan(bad, (3, 5), 1, np.float32)
    a, b = f32(2, 3), f32(2, 4)
    plan = clconv.CatPlan(dev, [(2, 3), (2, 4)], 1, np.float32)
    assert plan([a, b]).shape == (2, 7)
    for tensors in ([a, b, b], [a]):
        with pytest.raises(ValueError, match="joins 2 arrays"):
            plan(tensors)
    for call in (lambda: clconv.stack([1.0, 2.0]), lambda: clconv.stack([None, a]),
                 lambda: clconv.channel_shuffle([[[1.0, 2.0]]], 1),
                 lambda: clconv.channel_shuffle(None, 1), lambda: clconv.flatten(None),
                 lambda: clconv.nn.Flatten()(None)):
        with pytest.raises(TypeError):
            call()
    # torch joins 1-d empty tensors whatever the dim
    for dim in (1, 5, -3):
        assert clconv.cat([np.zeros(0, np.float32)] * 2, dim).shape == tuple(
            torch.cat([torch.zeros(0)] * 2, dim).shape)
    # a plan with a bias called without one, with float64 operands: the operands' dtype named
    if dev.fp64:
        conv = clconv.plan_conv2d((1, 2, 5, 5), (3, 2, 3, 3))
        with pytest.raises(TypeError, match="operands have dtype float64") as err:
            conv(np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3, 3)))
        assert "bias" not in str(err.value)
    with pytest.raises(ValueError, match="at least 2 dims"):
        clconv.batch_norm(f32(5), np.zeros(5, np.float32), f32(5))
    with pytest.raises(ValueError, match="instance_norm: weight"):
        clconv.instance_norm(f32(2, 3, 4), weight=f32(4))
    with clconv.device(np.int64(dev.index)):  # an index from numpy, as an int
        assert clconv.current_device() is dev


@pytest.mark.parametrize("nd", [1, 2])
def test_plans_take_channels_last_layouts(clconv, dev, nd):
    """plan_conv*d(..., layout='nhwc'/'nlc'): the input shape and every call's input, residual,
    out and result channels last, as the functional op's layout=."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(nd)
    spatial = (7, 6)[:nd]
    x = rng.standard_normal((2, *spatial, 3)).astype(np.float32)  # channels last
    w = rng.standard_normal((5, 3) + (3,) * nd).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    name = {1: "nlc", 2: "nhwc"}[nd]
    perm_first = (0, nd + 1, *range(1, nd + 1))
    perm_last = (0, *range(2, nd + 2), 1)
    conv = getattr(F, f"conv{nd}d")
    want = conv(torch.from_numpy(x).permute(*perm_first), torch.from_numpy(w),
                torch.from_numpy(b), padding=1).permute(*perm_last).numpy()
    plan = getattr(clconv, f"plan_conv{nd}d")(x.shape, w.shape, padding=1, layout=name,
                                             residual=True)
    r = rng.standard_normal(want.shape).astype(np.float32)
    out = np.empty_like(want)
    got = plan(x, w, b, residual=r, out=out)
    assert got is out
    np.testing.assert_allclose(got, want + r, rtol=1e-4, atol=1e-4)
    xd = cla.to_device(dev.queue, x)
    got = plan(xd, w, b, residual=cla.to_device(dev.queue, r))
    assert isinstance(got, cla.Array)
    np.testing.assert_allclose(got.get(), want + r, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="layout"):
        getattr(clconv, f"plan_conv{nd}d")(x.shape, w.shape, layout="nchw_")


def test_bad_inputs_found_by_the_nineteenth_fuzz(clconv):
    """Calls that did not fit a per-dimension function named its template (_transpose()); plan
    dtype= of torch's; torch tensors numpy cannot view; in-place writes of read-only or
    byte-swapped inputs; mixed dtypes named as the argument; fold_batchnorm's operands."""
    torch = pytest.importorskip("torch")
    x = np.ones((1, 2, 4, 4), np.float32)
    w = np.ones((2, 2, 3, 3), np.float32)
    for call, name in ((lambda: clconv.conv_transpose2d(x, w, layout="nhwc"), "conv_transpose2d"),
                       (lambda: clconv.max_pool2d(x, 2, layout="nhwc"), "max_pool2d"),
                       (lambda: clconv.conv2d_input(x.shape, w, x, foo=1), "conv2d_input"),
                       (lambda: clconv.plan_conv3d(x.shape, w.shape, zz=1), "plan_conv3d")):
        with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword"):
            call()
    assert clconv.plan_conv2d(x.shape, w.shape, dtype=torch.float32).dtype == np.float32
    with pytest.raises(TypeError, match="dtype must be a floating dtype.*torch.int32"):
        clconv.plan_conv2d(x.shape, w.shape, dtype=torch.int32)
    with pytest.raises(TypeError, match=r"layout torch.sparse_coo.*input.to_dense\(\)"):
        clconv.relu(torch.ones(2, 3).to_sparse())
    with pytest.raises(TypeError, match=r"quantized.*input.dequantize\(\)"):
        clconv.relu(torch.quantize_per_tensor(torch.ones(2, 3), 0.1, 0, torch.quint8))
    ro = x.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="input is read-only, and inplace=True writes it"):
        clconv.relu(ro, inplace=True)
    with pytest.raises(ValueError, match="byte order"):
        clconv.relu(x.astype(">f4"), inplace=True)
    f64 = np.ones((1, 2, 1, 1))
    for call, name in ((lambda: clconv.prelu(x, np.ones(2)), "weight"),
                       (lambda: clconv.layer_norm(x, (4,), np.ones(4)), "weight"),
                       (lambda: clconv.layer_norm(x, (4,), None, np.ones(4)), "bias"),
                       (lambda: clconv.clamp(x, f64), "min"),
                       (lambda: clconv.clamp(x, None, f64), "max"),
                       (lambda: clconv.clamp(x, f64.astype(np.float32), f64), "max")):
        with pytest.raises(TypeError, match=rf"mixed dtypes \(input: float32, {name}: float64\)"):
            call()
    m, v = np.zeros(2, np.float32), np.ones(2, np.float32)
    with pytest.raises(TypeError, match="weight is a Python list"):
        clconv.fold_batchnorm(w.tolist(), None, m, v)
    with pytest.raises(TypeError, match="weight must be a floating array, got dtype int"):
        clconv.fold_batchnorm(w.astype(np.int32), None, m, v)
    with pytest.raises(TypeError, match="running_var is a Python list"):
        clconv.fold_batchnorm(w, None, m, [1.0, 1.0])
    with pytest.raises(TypeError, match="weight is a torch tensor that requires grad"):
        clconv.fold_batchnorm(torch.ones(2, 2, 3, 3, requires_grad=True), None, m, v)
    folded, _ = clconv.fold_batchnorm(torch.ones(2, 2, 3, 3), None, torch.zeros(2), torch.ones(2))
    assert isinstance(folded, np.ndarray) and folded.dtype == np.float32


def test_bad_inputs_found_by_the_thirty_second_fuzz(clconv):
    """A plan copied deeply or pickled: a TypeError saying why (pyopencl's "cannot pickle
    'Kernel'" before), a shallow copy shares it; 2**31 or more channels or groups: named (the
    kernels' 32-bit int4 sizes overflowed in numpy before), or the output's size where the device
    cannot allocate it at once (llvmpipe's 2 GiB)."""
    import copy
    import pickle

    plan = clconv.plan_conv2d((1, 2, 5, 5), (3, 2, 3, 3), padding=1)
    with pytest.raises(TypeError, match="ConvPlan cannot be copied: it holds its device's"):
        copy.deepcopy(plan)
    with pytest.raises(TypeError, match="ConvPlan cannot be pickled"):
        pickle.dumps(plan)
    x = np.random.default_rng(0).random((1, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    np.testing.assert_array_equal(copy.copy(plan)(x, w), plan(x, w))
    big = 2**31
    with pytest.raises((ValueError, MemoryError), match="channels 2147483648.*groups "
                       "2147483648.*below 2|output .1, 2147483648, 1, 1. of float32 needs"):
        clconv.plan_conv2d((1, big, 1, 1), (big, 1, 1, 1), groups=big)
