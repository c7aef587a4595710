"""Device groups (clconv.ops.device_group): one op's batch split across several devices.

The tests that need two devices run on PoCL + rusticl's llvmpipe (`apt-get install mesa-opencl-icd`,
`RUSTICL_ENABLE=llvmpipe`, as `make test` sets up); they skip only when the machine has a single
usable OpenCL device.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import pytest
import reference as ref
from tolerance import assert_close, assert_exact, conv_magnitude, conv_reduction

import clconv
from clconv.ops.device_group import DeviceGroup, Split, splits_batch

USABLE = [d for d in clconv.devices() if d.usable]
two_devices = pytest.mark.skipif(
    len(USABLE) < 2, reason="a second usable OpenCL device is absent (install mesa-opencl-icd and "
                            "set RUSTICL_ENABLE=llvmpipe for rusticl's llvmpipe beside PoCL)")


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % 2**32)


@pytest.fixture
def pair():
    """The first two usable devices, fixed weights 1:3 (a deterministic split, no calibration)."""
    return DeviceGroup(USABLE[:2], weights=[1.0, 3.0])


def _data(rng, n=6, c=3, hw=(7, 6), cout=4, k=3):
    x = rng.standard_normal((n, c, *hw)).astype(np.float32)
    w = rng.standard_normal((cout, c, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    return x, w, b


# -- groups, selection and context -----------------------------------------------------------------
def test_device_all_and_list_return_groups():
    group = clconv.device("all")
    assert isinstance(group, DeviceGroup)
    assert list(group) == USABLE
    assert clconv.device("all") is group  # the same group: its measurements are kept
    listed = clconv.device([USABLE[0].index])
    assert isinstance(listed, DeviceGroup) and listed.devices == (USABLE[0],)


def test_group_errors():
    with pytest.raises(ValueError, match="listed twice"):
        clconv.device([USABLE[0].index, USABLE[0].index])
    with pytest.raises(ValueError, match="at least one"):
        clconv.device([])
    with pytest.raises(TypeError, match="single devices"):
        clconv.device([["cpu"]])
    with pytest.raises(clconv.DeviceNotFoundError):
        clconv.device(["no-such-device-name"])
    with pytest.raises(ValueError, match="positive"):
        DeviceGroup(USABLE[:1], weights=[0.0])


def test_current_device_stays_a_device_under_a_group():
    from clconv.runtime.device import current_target

    group = DeviceGroup(USABLE[:1])
    outside = clconv.current_device()
    with group:
        assert clconv.current_device() is group.primary
        assert current_target() is group
        with USABLE[0] as d:
            assert current_target() is d and clconv.current_device() is d
        assert current_target() is group
    assert clconv.current_device() is outside


def test_split_is_proportional_and_drops_empty_parts():
    group = DeviceGroup(USABLE[:1] * 1)
    assert group.split(5) == [(USABLE[0], 0, 5)]
    assert group.split(0) == []
    with pytest.raises(ValueError, match="non-negative"):
        group.split(-1)


@two_devices
def test_split_rounding(pair):
    d0, d1 = pair.devices
    assert pair.split(8) == [(d0, 0, 2), (d1, 2, 8)]
    # 2.5 : 7.5 -> 2 : 7, and the last image to the device that finishes it first (8/3 < 3/1)
    assert pair.split(10) == [(d0, 0, 2), (d1, 2, 10)]
    assert pair.split(11) == [(d0, 0, 3), (d1, 3, 11)]  # 2.75 : 8.25 -> 2 : 8, then 3/1 = 9/3
    assert pair.split(1) == [(d1, 0, 1)]               # fewer images than devices: fewer devices
    assert pair.split(3, weights=[1, 0]) == [(d0, 0, 3)]


# -- the split hook itself (a fake op that records where and when it ran) --------------------------
@two_devices
def test_parts_run_concurrently_each_on_its_device(pair):
    barrier = threading.Barrier(2, timeout=20)  # breaks (and the op raises) if parts ran in turn
    seen = {}

    @splits_batch("x", ndim=2)
    def op(x, scale=1.0):
        seen[clconv.current_device().index] = (threading.current_thread().name, len(x))
        barrier.wait()
        return np.asarray(x) * scale

    x = np.arange(16, dtype=np.float32).reshape(8, 2)
    with pair:
        y = op(x, scale=2.0)
    assert_exact(y, x * 2)
    d0, d1 = pair.devices
    assert seen[d0.index][1] == 2 and seen[d1.index][1] == 6
    assert seen[d0.index][0] != seen[d1.index][0]


@two_devices
def test_records_are_each_callers_own(pair):
    """Threads splitting on one group at once each record only their own calls, and only inside
    their block; nothing stays on the group."""
    @splits_batch("x", ndim=2)
    def op(x):
        return np.asarray(x) + 1

    def caller(n):
        with pair, pair.record() as splits:
            for _ in range(3):
                op(np.zeros((n, 2), np.float32))
        op(np.zeros((n, 2), np.float32))  # outside the block (and the group): not recorded
        return splits

    with ThreadPoolExecutor(2) as pool:
        found = dict(zip((4, 8), pool.map(caller, (4, 8))))
    for n, splits in found.items():
        assert splits == [Split("op", tuple(pair.split(n)), s.seconds) for s in splits]
        assert len(splits) == 3 and all(len(s.seconds) == 2 for s in splits)
    with pair.record() as other, DeviceGroup(USABLE[:2]):  # another group's calls are not its
        op(np.zeros((4, 2), np.float32))
    assert other == []


@two_devices
def test_unbatched_runs_on_the_fastest_device(pair):
    where = []

    @splits_batch("x", ndim=2)
    def op(x):
        where.append(clconv.current_device())
        return np.asarray(x) + 1

    with pair:
        assert_exact(op(np.ones(3, np.float32)), np.full(3, 2, np.float32))
    assert where == [pair.devices[1]]  # weights 1:3


@two_devices
def test_calibration_measures_once_per_shape(rng):
    group = DeviceGroup(USABLE[:2])
    x, w, b = _data(rng, n=5)
    with group:
        clconv.conv2d(x, w, b, padding=1)
        first = dict(group.measured())
        clconv.conv2d(x, w, b, padding=1)  # no new calibration (a split call refines the speeds)
        assert group.measured().keys() == first.keys() and len(first) == 1
        clconv.conv2d(x[:, :, :5], w, b, padding=1)  # another shape: measured anew
        assert len(group.measured()) == 2
    speeds = next(iter(first.values()))
    assert len(speeds) == len(group) and all(s > 0 for s in speeds)


@two_devices
def test_split_calls_refine_the_speeds_from_their_parts(rng):
    group = DeviceGroup(USABLE[:2])
    x, w, b = _data(rng, n=16)
    with group, group.record() as splits:
        clconv.conv2d(x, w, b, padding=1)
        (measured,) = group.measured().values()
    (call,) = splits  # the calibration's probe runs are not split calls
    assert call.op == "conv2d" and len(call.seconds) == len(call.parts)
    for (d, a, z), t in zip(call.parts, call.seconds):  # each part's own rate replaced the probe's
        assert measured[group.devices.index(d)] == pytest.approx((z - a) / t)


# -- the real ops under a two-device group ---------------------------------------------------------
@two_devices
def test_conv2d_split_equals_reference_and_each_device(pair, rng):
    x, w, b = _data(rng, n=8)
    with pair, pair.record() as splits:
        y = clconv.conv2d(x, w, b, padding=1, algorithm="direct")
    parts = splits[-1].parts
    assert_close(y, ref.conv2d(x, w, b, padding=1), reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w, b))
    assert [(d, a, z) for d, a, z in parts] == pair.split(8)
    for d, a, z in parts:  # each part is bitwise that device's own call on the slice
        with d:
            assert_exact(y[a:z], clconv.conv2d(x[a:z], w, b, padding=1, algorithm="direct"))


@two_devices
def test_measured_group_conv_and_transpose(rng):
    group = DeviceGroup(USABLE[:2])
    x, w, b = _data(rng, n=9, hw=(6, 6))
    with group:
        y = clconv.conv2d(x, w, b, stride=2, padding=1, padding_mode="reflect")
        t = clconv.conv_transpose2d(x, w.transpose(1, 0, 2, 3).copy(), None, stride=2, padding=1,
                                    output_padding=1)
    assert_close(y, ref.conv2d(x, w, b, stride=2, padding=1, padding_mode="reflect"),
                 reduction=conv_reduction(w), magnitude=conv_magnitude(x, w, b))
    wt = w.transpose(1, 0, 2, 3).copy()
    assert_close(t, ref.conv_transpose_nd(x, wt, None, stride=2, padding=1, output_padding=1),
                 reduction=conv_reduction(w), magnitude=conv_magnitude(x, w))
    assert len(group.measured()) == 2


@two_devices
def test_gradients_split_and_weight_gradient_sums(pair, rng):
    x, w, _ = _data(rng, n=7)
    gy = rng.standard_normal((7, 4, 7, 6)).astype(np.float32)
    with pair:
        gx = clconv.conv2d_input(x.shape, w, gy, padding=1)
        gw = clconv.conv2d_weight(x, w.shape, gy, padding=1)
    assert_close(gx, ref.conv_nd_input(x.shape, w, gy, padding=1), reduction=4 * 9,
                 magnitude=conv_magnitude(gy, w))
    assert gw.shape == w.shape and gw.dtype == np.float32
    assert_close(gw, ref.conv_nd_weight(x, w.shape, gy, padding=1), reduction=7 * 42,
                 magnitude=conv_magnitude(x, gy))
    with pytest.raises(ValueError):  # batches that disagree: the op's own error, not a silent split
        with pair:
            clconv.conv2d_weight(x, w.shape, gy[:5], padding=1)


@two_devices
def test_out_and_torch_operands_of_split_calls(pair, rng):
    """out= (numpy or a torch tensor) gets the combined result of the parts (a weight gradient's
    sum too: each part had written its partial sum into the one out, which was then added to
    itself); torch tensors split as numpy arrays do."""
    torch = pytest.importorskip("torch")
    x, w, b = _data(rng, n=6)
    gy = rng.standard_normal((6, 4, 7, 6)).astype(np.float32)
    want_y = ref.conv2d(x, w, b, padding=1)
    want_gw = ref.conv_nd_weight(x, w.shape, gy, padding=1)
    with pair, pair.record() as splits:
        out = np.full(want_y.shape, np.nan, np.float32)
        assert clconv.conv2d(x, w, b, padding=1, out=out) is out
        gw = np.full(w.shape, np.nan, np.float32)
        assert clconv.conv2d_weight(x, w.shape, gy, padding=1, out=gw) is gw
        tensor = torch.full(want_y.shape, float("nan"))
        assert clconv.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                             padding=1, out=tensor) is tensor
        from_torch = clconv.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)
        with pytest.raises(ValueError, match=r"out must have shape \(6, 4, 7, 6\)"):
            clconv.conv2d(x, w, b, padding=1, out=np.empty((6, 4, 7, 5), np.float32))
    assert all(len(s.parts) == 2 for s in splits)  # every call was split
    magnitude = conv_magnitude(x, w, b)
    for got in (out, tensor.numpy()):
        assert_close(got, want_y, reduction=conv_reduction(w), magnitude=magnitude)
    assert_close(from_torch, ref.conv2d(x, w, padding=1), reduction=conv_reduction(w),
                 magnitude=magnitude)
    assert_close(gw, want_gw, reduction=6 * 42, magnitude=conv_magnitude(x, gy))


@two_devices
def test_im2col_col2im_split_exactly(pair, rng):
    x = rng.standard_normal((5, 2, 6, 5)).astype(np.float32)
    with pair:
        cols = clconv.im2col(x, 3, padding=1, stride=2)
        back = clconv.col2im(cols, (6, 5), 3, padding=1, stride=2)
    assert_exact(cols, ref.unfold(x, 3, padding=1, stride=2).astype(np.float32))
    assert_close(back, ref.fold(cols.astype(np.float64), (6, 5), 3, padding=1, stride=2),
                 reduction=9)


@two_devices
def test_small_and_empty_batches(pair, rng):
    x, w, b = _data(rng, n=1)
    with pair, pair.record() as splits:
        y1 = clconv.conv2d(x, w, b, padding=1)
        y0 = clconv.conv2d(x[:0], w, b, padding=1)
        g0 = clconv.conv2d_weight(x[:0], w.shape, np.zeros((0, 4, 7, 6), np.float32), padding=1)
        yu = clconv.conv2d(x[0], w, b, padding=1)  # unbatched: on the fastest device
    assert [s.parts for s in splits] == [((pair.devices[1], 0, 1),)]  # N = 0, unbatched: no split
    assert_close(y1, ref.conv2d(x, w, b, padding=1), reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w, b))
    assert y0.shape == (0, 4, 7, 6) and y0.dtype == np.float32
    assert_exact(g0, np.zeros(w.shape, np.float32))
    with pair.devices[1]:
        assert_exact(yu, clconv.conv2d(x[0], w, b, padding=1))


@two_devices
def test_float64_leaves_out_a_device_without_fp64(rng):
    fp64 = [d for d in USABLE if d.fp64]
    no64 = [d for d in USABLE if not d.fp64]
    if not fp64 or not no64:
        pytest.skip("needs one device with and one without fp64 (PoCL + llvmpipe)")
    group = DeviceGroup([no64[0], fp64[0]])
    x, w, b = (a.astype(np.float64) for a in _data(rng, n=4))
    with group, group.record() as splits:
        y = clconv.conv2d(x, w, b, padding=1)
    assert [s.parts for s in splits] == [((fp64[0], 0, 4),)]
    assert next(iter(group.measured().values()))[0] == 0.0
    assert_close(y, ref.conv2d(x, w, b, padding=1), reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w, b))
    with pytest.raises(clconv.UnsupportedError), DeviceGroup(no64):
        clconv.conv2d(x, w, b, padding=1)
    # an empty batch too (it ran on the group's first device whatever the dtype)
    with group:
        empty = clconv.conv2d(x[:0], w, b, padding=1)
        grad_w = clconv.conv2d_weight(x[:0], w.shape, np.zeros((0, *y.shape[1:])), padding=1)
    assert empty.shape == (0, *y.shape[1:]) and empty.dtype == np.float64
    assert grad_w.shape == w.shape and not grad_w.any()


# -- device arrays under a group -------------------------------------------------------------------
def test_device_arrays_run_on_their_own_device(rng):
    group = DeviceGroup(USABLE[:2] if len(USABLE) > 1 else USABLE[:1])
    owner = group.devices[-1]
    x, w, b = _data(rng, n=3)
    xd = cla.to_device(owner.queue, x)
    with group:
        y = clconv.conv2d(xd, w, b, padding=1)
    assert isinstance(y, cla.Array) and y.context == owner.context
    with owner:
        assert_exact(y.get(), clconv.conv2d(x, w, b, padding=1))


def test_device_arrays_of_another_context_are_refused(rng):
    x, w, _ = _data(rng, n=2)
    foreign = cl.Context([USABLE[0].cl_device])  # same device, but not the group's context
    xd = cla.to_device(cl.CommandQueue(foreign), x)
    with DeviceGroup(USABLE[:1]):
        with pytest.raises(ValueError, match="cannot be split across devices"):
            clconv.conv2d(xd, w)


def test_one_device_group_is_bitwise_that_device(rng):
    x, w, b = _data(rng, n=4)
    with USABLE[0]:
        expect = clconv.conv2d(x, w, b, padding=1)
    with DeviceGroup(USABLE[:1]):
        assert_exact(clconv.conv2d(x, w, b, padding=1), expect)
        with pytest.raises(ValueError, match="padding"):  # errors as the op's own
            clconv.conv2d(x, w, b, padding=-1)


@two_devices
def test_a_groups_refusals_are_the_ops_own(pair, rng):
    """What one device refuses a group refuses alike: an out= tensor that requires grad (a
    group wrote into it; refused before any work), an out= of another dtype (a TypeError; the
    plans' ValueError now, once the parts ran), and arguments a part refused with the part's
    sizes in the message (a residual of the wrong width named (1, 4, 7, 6)): the caller's."""
    torch = pytest.importorskip("torch")
    x, w, b = _data(rng, n=5)
    wide = np.ones((5, 4, 7, 5), np.float32)
    for ctx in (USABLE[0], pair, DeviceGroup(USABLE[:2])):
        with ctx:
            out = torch.zeros(5, 4, 7, 6, requires_grad=True)
            with pytest.raises(TypeError, match="out is a torch tensor that requires grad"):
                clconv.conv2d(x, w, b, padding=1, out=out)
            assert not out.detach().any()
            with pytest.raises(ValueError, match=r"out must have shape \(5, 4, 7, 6\) and dtype "
                                                 r"float32, got \(5, 4, 7, 6\) float64"):
                clconv.conv2d(x, w, b, padding=1, out=np.zeros((5, 4, 7, 6)))
            with pytest.raises(ValueError, match=r"residual must have the output's shape "
                                                 r"\(5, 4, 7, 6\), got \(5, 4, 7, 5\)"):
                clconv.conv2d(x, w, b, padding=1, residual=wide)
