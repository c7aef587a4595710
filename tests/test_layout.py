"""Channels-last operands through the functional convolutions (`layout='nlc'|'nhwc'|'ndhwc'`):
results equal the float64 oracle's, transposed; numpy in -> numpy out, device in -> contiguous
device out; unbatched inputs, the residual and out= in the same layout; bad layout names are
ValueErrors naming `layout`."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest

import reference as ref
from tolerance import assert_close, conv_magnitude, conv_reduction

LAST = {1: "nlc", 2: "nhwc", 3: "ndhwc"}
FIRST = {1: "ncl", 2: "nchw", 3: "ncdhw"}
SIZES = {1: (11,), 2: (7, 6), 3: (4, 5, 3)}


def _last(a: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) -> (N, *spatial, C)."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", ["numpy", "device"])
def test_channels_last_matches_the_oracle(clconv_mod, dev, rng, nd, kind):
    x = rng.standard_normal((2, 4, *SIZES[nd])).astype(np.float32)
    w = rng.standard_normal((6, 2, *(3,) * nd)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    want = _last(ref.conv_nd(x, w, b, 2, 1, 1, 2))  # stride 2, padding 1, groups 2
    xl = _last(x)
    arg = cla.to_device(dev.queue, xl) if kind == "device" else xl
    got = getattr(clconv_mod, f"conv{nd}d")(arg, w, b, 2, 1, 1, 2, layout=LAST[nd])
    if kind == "device":
        assert isinstance(got, cla.Array) and got.flags.c_contiguous
        got = got.get()
    assert isinstance(got, np.ndarray) and got.shape == want.shape
    assert_close(got, want, np.float32, conv_reduction(w), conv_magnitude(x, w, b))
    # the channels-first name is the default
    same = getattr(clconv_mod, f"conv{nd}d")(x, w, b, 2, 1, 1, 2, layout=FIRST[nd])
    np.testing.assert_array_equal(same, getattr(clconv_mod, f"conv{nd}d")(x, w, b, 2, 1, 1, 2))


def test_unbatched_residual_and_out_in_the_same_layout(clconv_mod, dev, rng):
    x = rng.standard_normal((1, 3, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    r = rng.standard_normal((1, 4, 6, 5)).astype(np.float32)
    want = np.maximum(ref.conv_nd(x, w, None, 1, 1) + r, 0)
    tol = (np.float32, conv_reduction(w), conv_magnitude(x, w) + float(np.abs(r).max()))
    got = clconv_mod.conv2d(_last(x)[0], w, padding=1, residual=_last(r)[0], activation="relu",
                            layout="nhwc")
    assert got.shape == (6, 5, 4)
    assert_close(got, _last(want)[0], *tol)
    out = np.full((1, 6, 5, 4), np.nan, np.float32)
    assert clconv_mod.conv2d(_last(x), w, padding=1, residual=_last(r), activation="relu",
                             layout="nhwc", out=out) is out
    assert_close(out, _last(want), *tol)
    outd = cla.empty(dev.queue, (1, 6, 5, 4), np.float32)
    xd, rd = cla.to_device(dev.queue, _last(x)), cla.to_device(dev.queue, _last(r))
    assert clconv_mod.conv2d(xd, w, padding=1, residual=rd, activation="relu", layout="nhwc",
                             out=outd) is outd
    assert_close(outd.get(), _last(want), *tol)
    wide = cla.to_device(dev.queue, np.full((1, 6, 5, 9), 7.0, np.float32))  # a strided view
    view = wide[..., 2:6]
    assert clconv_mod.conv2d(xd, w, padding=1, residual=rd, activation="relu", layout="nhwc",
                             out=view) is view
    assert_close(wide.get()[..., 2:6], _last(want), *tol)
    np.testing.assert_array_equal(wide.get()[..., :2], 7.0)
    np.testing.assert_array_equal(wide.get()[..., 6:], 7.0)
    with pytest.raises(ValueError, match=r"out must have shape \(1, 6, 5, 4\)"):
        clconv_mod.conv2d(_last(x), w, padding=1, layout="nhwc", out=np.empty((1, 4, 6, 5),
                                                                              np.float32))


@pytest.mark.parametrize("nd, layout", [(2, "NHWC"), (2, "nlc"), (1, "nhwc"), (3, "nhwc"),
                                        (2, "channels_last"), (2, 1)])
def test_a_layout_that_does_not_fit_is_named(clconv_mod, nd, layout):
    x = np.ones((1, 2, *SIZES[nd]), np.float32)
    w = np.ones((2, 2, *(1,) * nd), np.float32)
    with pytest.raises(ValueError, match=f"layout must be '{FIRST[nd]}'.*'{LAST[nd]}'"):
        getattr(clconv_mod, f"conv{nd}d")(x, w, layout=layout)


def test_channels_last_operands_are_checked_as_channels_first_ones(clconv_mod, dev, rng):
    """layout='nhwc' takes and refuses what the channels-first call does: lists and tensors
    that need grad are TypeErrors, a torch tensor may be out=, out's kind, context, memory and
    shape are checked before any work, messages in channels-last shapes."""
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((1, 5, 5, 3)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    want = clconv_mod.conv2d(x, w, padding=1, layout="nhwc")
    with pytest.raises(TypeError, match="input is a Python list"):
        clconv_mod.conv2d(x.tolist(), w, padding=1, layout="nhwc")
    with pytest.raises(TypeError, match="requires grad"):
        clconv_mod.conv2d(torch.from_numpy(x).requires_grad_(), w, padding=1, layout="nhwc")
    with pytest.raises(TypeError, match="residual is a Python list"):
        clconv_mod.conv2d(x, w, padding=1, layout="nhwc", residual=want.tolist())
    out = torch.full((1, 5, 5, 4), float("nan"))
    assert clconv_mod.conv2d(x, w, padding=1, layout="nhwc", out=out) is out
    np.testing.assert_array_equal(out.numpy(), want)
    with pytest.raises(TypeError, match="out is a Python list"):
        clconv_mod.conv2d(x, w, padding=1, layout="nhwc", out=want.tolist())
    ro = np.zeros((1, 5, 5, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        clconv_mod.conv2d(x, w, padding=1, layout="nhwc", out=ro)
    with pytest.raises(ValueError, match=r"out must have shape \(1, 5, 5, 4\)"):
        clconv_mod.conv2d(x, w, padding=1, layout="nhwc", out=np.zeros((1, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"input must have 3 or 4 dims \(nhwc"):
        clconv_mod.conv2d(x[None], w, padding=1, layout="nhwc")


def test_channels_last_out_of_another_context_is_refused(clconv_mod, dev, rng):
    """A device out= made on another context (a strided view of it used to crash the process)."""
    import pyopencl as cl

    x = cla.to_device(dev.queue, rng.standard_normal((1, 5, 5, 3)).astype(np.float32))
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    other = cl.CommandQueue(cl.Context([dev.cl_device]))
    for out in (cla.empty(other, (1, 5, 5, 4), np.float32),
                cla.empty(other, (1, 5, 5, 8), np.float32)[..., ::2]):
        with pytest.raises(ValueError, match="another OpenCL context"):
            clconv_mod.conv2d(x, w, padding=1, layout="nhwc", out=out)
    dev.queue.finish()


def test_channels_last_plans_speak_channels_last(clconv_mod, dev, rng):
    """A channels-last plan's shapes and messages are channels last, other batch sizes run, and
    it runs on its own device when called inside another device's block."""
    x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    plan = clconv_mod.plan_conv2d(x.shape, w.shape, False, padding=1, layout="nhwc")
    assert plan.input_shape == (2, 5, 7, 3) and plan.output_shape == (2, 5, 7, 4)
    want = clconv_mod.conv2d(x, w, padding=1, layout="nhwc")
    with pytest.raises(ValueError, match=r"input has shape \(2, 5, 6, 3\) but this plan was made "
                                         r"for \(2, 5, 7, 3\)"):
        plan(x[:, :, :6], w)
    assert_close(plan(x[:1], w), want[:1], np.float32, 27)  # another batch size
    xd = cla.to_device(dev.queue, x)
    others = [d for d in clconv_mod.devices() if d.context != dev.context]
    with clconv_mod.device(others[0] if others else dev):  # (both devices in make test)
        got = plan(xd, w)
    assert isinstance(got, cla.Array) and got.context == dev.context
    assert_close(got.get(), want, np.float32, 27)


def test_an_empty_out_with_zero_strides_is_written(clconv_mod, dev):
    """numpy gives some empty arrays strides of 0: no element shares memory there."""
    x = np.zeros((0, 3, 4, 4), np.float32)
    out = np.empty((0, 2, 4, 4), np.float32)
    assert clconv_mod.conv2d(x, np.ones((2, 3, 1, 1), np.float32), out=out) is out
    e = np.empty((0, 3, 4, 4), np.float32)
    assert clconv_mod.relu(x, out=e) is e


def test_a_channels_last_residual_is_checked_in_channels_last_shapes(clconv_mod, dev, rng):
    """The residual's shape errors name the channels-last shapes it must have (not the
    channels-first ones the kernels see), in plans and the functional ops, at any batch size."""
    x = rng.standard_normal((2, 9, 3)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3)).astype(np.float32)
    r = rng.standard_normal((2, 9, 4)).astype(np.float32)
    plan = clconv_mod.plan_conv1d(x.shape, w.shape, False, padding=1, layout="nlc", residual=True)
    with pytest.raises(ValueError, match=r"residual has shape \(2, 4, 9\) but must have the "
                                         r"output's shape \(2, 9, 4\) \(nlc"):
        plan(x, w, residual=np.ascontiguousarray(r.transpose(0, 2, 1)))
    with pytest.raises(ValueError, match=r"made with residual of shape \(2, 9, 4\) \(nlc"):
        plan(x, w)
    with pytest.raises(ValueError, match=r"residual has shape \(2, 9, 4\) but must have the "
                                         r"output's shape \(1, 9, 4\)"):
        plan(x[:1], w, residual=r)
    want = clconv_mod.conv1d(x, w, padding=1, residual=r, layout="nlc")
    assert_close(plan(x[:1], w, residual=r[:1]), want[:1], np.float32, 9)
    x2 = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"residual must have the output's shape \(2, 5, 6, 4\) "
                                         r"\(nhwc: channels last\), got \(2, 4, 5, 6\)"):
        clconv_mod.conv2d(x2, w2, padding=1, layout="nhwc",
                          residual=np.zeros((2, 4, 5, 6), np.float32))
