"""Plans (clconv.ops.plan): made once, run many; the functional API's plan cache; what a run does
and does not do (no builds for a new batch size, no re-measuring within a batch bucket); out=;
errors for operands that do not match the plan; and the review fixes that came with plans."""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import pytest

import reference as ref
from helpers import import_torch
from tolerance import assert_close, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _r(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.fixture
def builds(clconv):
    """programs built on the current device since the fixture started: call it."""
    from clconv.runtime.program import programs

    cache = programs(clconv.current_device())
    start = cache.builds
    return lambda: cache.builds - start


@pytest.mark.parametrize("algorithm", ["im2col", "direct", "winograd", "auto"])
def test_plan_runs_many_times_and_equals_the_functional_call(clconv, rng, algorithm):
    x, w, b = _r(rng, (2, 4, 9, 8)), _r(rng, (6, 4, 3, 3)), _r(rng, (6,))
    plan = clconv.plan_conv2d(x.shape, w.shape, padding=1, algorithm=algorithm,
                              activation="relu")
    assert plan.algorithm in clconv.ALGORITHMS and plan.algorithm != "auto"
    want = np.maximum(ref.conv_nd(x, w, b, 1, 1), 0)
    for _ in range(3):
        assert_close(plan(x, w, b), want, np.float32, conv_reduction(w), conv_magnitude(x, w, b))
    np.testing.assert_array_equal(
        plan(x, w, b), clconv.conv2d(x, w, b, padding=1, algorithm=plan.algorithm,
                                     activation="relu"))
    # a plan made with a bias runs without one (adding zeros)
    assert_close(plan(x, w), np.maximum(ref.conv_nd(x, w, None, 1, 1), 0), np.float32,
                 conv_reduction(w), conv_magnitude(x, w))


def test_every_op_has_a_plan(clconv, rng):
    x, w, b = _r(rng, (2, 3, 7, 6)), _r(rng, (4, 3, 3, 3)), _r(rng, (4,))
    y = ref.conv_nd(x, w, b, 1, 1)
    g = _r(rng, y.shape)
    wt = _r(rng, (3, 2, 3, 3))
    cases = [
        (clconv.plan_conv1d((2, 3, 11), (4, 3, 3), padding=1), (x[:, :, 0, :].repeat(2, -1)[..., :11],
                                                                 w[:, :, 0], b)),
        (clconv.plan_conv3d((1, 3, 4, 5, 6), (2, 3, 2, 2, 2), bias=False),
         (_r(rng, (1, 3, 4, 5, 6)), _r(rng, (2, 3, 2, 2, 2)))),
        (clconv.plan_conv_transpose2d(x.shape, wt.shape, stride=2, padding=1),
         (x, wt, _r(rng, (2,)))),
        (clconv.plan_conv2d_input(x.shape, w.shape, padding=1), (w, g)),
        (clconv.plan_conv2d_weight(x.shape, w.shape, padding=1), (x, g)),
        (clconv.plan_im2col(x.shape, 3, padding=1), (x,)),
        (clconv.plan_col2im((2, 27, 42), (7, 6), 3, padding=1), (_r(rng, (2, 27, 42)),)),
    ]
    wants = [
        ref.conv_nd(*cases[0][1], 1, 1),
        ref.conv_nd(*cases[1][1]),
        ref.conv_transpose_nd(*cases[2][1], stride=2, padding=1),
        ref.conv_nd_input(x.shape, w, g, padding=1),
        ref.conv_nd_weight(x, w.shape, g, padding=1),
        ref.unfold(x, 3, padding=1),
        ref.fold(cases[6][1][0], (7, 6), 3, padding=1),
    ]
    for (plan, args), want in zip(cases, wants):
        got = plan(*args)
        assert isinstance(plan, clconv.Plan)
        assert_close(got, want, np.float32, reduction=100, magnitude=10.0)


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "implicit", "auto"])
def test_a_plan_takes_any_batch_size_of_its_layer(clconv, rng, algorithm):
    x, w, b = _r(rng, (4, 3, 7, 6)), _r(rng, (5, 3, 3, 3)), _r(rng, (5,))
    plan = clconv.plan_conv2d(x.shape, w.shape, stride=(2, 1), padding=1, algorithm=algorithm)
    for n in (2, 0, 5, 2):
        xn = _r(rng, (n, 3, 7, 6))
        got = plan(xn, w, b)
        assert got.shape == (n, 5, 4, 6)
        assert_close(got, ref.conv_nd(xn, w, b, (2, 1), 1), np.float32, conv_reduction(w),
                     conv_magnitude(xn, w, b))
    assert sorted(plan._siblings) == [0, 2, 5]  # made once per batch size, then kept
    assert_close(plan(x, w, b), ref.conv_nd(x, w, b, (2, 1), 1), np.float32, conv_reduction(w),
                 conv_magnitude(x, w, b))
    with pytest.raises(ValueError, match=r"input has shape \(2, 4, 7, 6\) but this plan was made "
                                         r"for \(4, 3, 7, 6\)"):
        plan(_r(rng, (2, 4, 7, 6)), _r(rng, (5, 4, 3, 3)), b)
    with pytest.raises(ValueError, match="out must have shape"):
        plan(x[:2], w, b, out=np.empty((4, 5, 4, 6), np.float32))


def test_a_plan_with_a_residual_takes_another_batch_size(clconv, rng):
    x, w, r = _r(rng, (4, 3, 6, 6)), _r(rng, (5, 3, 3, 3)), _r(rng, (4, 5, 6, 6))
    plan = clconv.plan_conv2d(x.shape, w.shape, bias=False, padding=1, residual=True)
    got = plan(x[:2], w, residual=r[:2])
    assert_close(got, ref.conv_nd(x[:2], w, None, 1, 1) + r[:2], np.float32, conv_reduction(w),
                 conv_magnitude(x, w) + float(np.abs(r).max()))
    with pytest.raises(ValueError, match="residual has batch size 3 but input has 2"):
        plan(x[:2], w, residual=r[:3])


def test_every_plan_takes_another_batch_size(clconv, rng):
    x, w, wt = _r(rng, (3, 2, 6, 5)), _r(rng, (4, 2, 3, 3)), _r(rng, (2, 3, 3, 3))
    x1 = x[:1]
    g1 = _r(rng, (1, 4, 6, 5))
    cases = [
        (clconv.plan_conv_transpose2d(x.shape, wt.shape, stride=2), (x1, wt),
         ref.conv_transpose_nd(x1, wt, None, stride=2)),
        (clconv.plan_conv2d_input(x.shape, w.shape, padding=1), (w, g1),
         ref.conv_nd_input(x1.shape, w, g1, padding=1)),
        (clconv.plan_conv2d_weight(x.shape, w.shape, padding=1), (x1, g1),
         ref.conv_nd_weight(x1, w.shape, g1, padding=1)),
        (clconv.plan_im2col(x.shape, 3, padding=1), (x1,), ref.unfold(x1, 3, padding=1)),
        (clconv.plan_conv1d((3, 2, 9), (4, 2, 3)), (x1[..., 0, :].repeat(2, -1)[..., :9],
                                                    w[..., 0]),
         ref.conv_nd(x1[..., 0, :].repeat(2, -1)[..., :9], w[..., 0], None)),
    ]
    for plan, args, want in cases:
        assert_close(plan(*args), want, np.float32, reduction=100, magnitude=10.0)


def test_empty_device_out(clconv, queue):
    """out= an empty device array (a batch of 0, no buffer behind it): the ops return it."""
    w = cla.to_device(queue, np.ones((2, 2, 3, 3), np.float32))
    x = cla.to_device(queue, np.ones((0, 2, 5, 5), np.float32))
    g = cla.to_device(queue, np.ones((0, 2, 3, 3), np.float32))
    for run, shape in [(lambda o: clconv.conv2d(x, w, out=o), (0, 2, 3, 3)),
                       (lambda o: clconv.conv2d_input((0, 2, 5, 5), w, g, out=o), (0, 2, 5, 5)),
                       (lambda o: clconv.conv_transpose2d(g, w, out=o), (0, 2, 5, 5)),
                       (lambda o: clconv.relu(x, out=o), (0, 2, 5, 5))]:
        out = cla.empty(queue, shape, np.float32)
        assert run(out) is out
    assert clconv.relu(x, inplace=True) is x


def test_strided_device_views_of_many_dims(clconv, rng, queue):
    """Views of more than 5 dims are gathered and written as long as their strides collapse to
    5 (size-1 dims left out, dims that step over each other exactly merged); others are refused
    with a clear ValueError."""
    a = _r(rng, (2, 3, 2, 3, 2, 4, 5))
    d = cla.to_device(queue, a)
    for view, want in [(d[:, :, :, :, :, 1:3], a[:, :, :, :, :, 1:3]),
                       (d[:, 1:, :, 1:, :, ::2, 1:], a[:, 1:, :, 1:, :, ::2, 1:]),
                       (d[:1, :, :1], a[:1, :, :1])]:
        np.testing.assert_array_equal(clconv.relu(view).get(), np.maximum(want, 0))
    b = cla.to_device(queue, np.zeros(a.shape, np.float32))
    clconv.relu(d[:, :, :, :, :, 1:3], out=b[:, :, :, :, :, 2:4])
    np.testing.assert_array_equal(b.get()[:, :, :, :, :, 2:4], np.maximum(a[..., 1:3, :], 0))
    np.testing.assert_array_equal(b.get()[:, :, :, :, :, :2], 0)
    cube = cla.to_device(queue, _r(rng, (3,) * 7))
    with pytest.raises(ValueError, match="do not collapse to 5 dims"):
        clconv.relu(cube[(slice(1, None),) * 7])  # every dim 2 of 3: nothing merges


def test_a_strided_out_is_written_through_its_strides(clconv, rng, queue):
    """out= a strided view (numpy, or a device array: computed contiguous, then scattered), as
    torch writes a non-contiguous out; the elements outside the view stay as they were; in-place
    ops on a strided device view write the view. A view whose elements share memory is refused."""
    x, w = _r(rng, (2, 3, 6, 6)), _r(rng, (4, 3, 3, 3))
    want = clconv.conv2d(x, w, padding=1)
    base = np.full((4, 4, 6, 6), 7.0, np.float32)
    assert clconv.conv2d(x, w, padding=1, out=base[::2]) is not None
    np.testing.assert_array_equal(base[::2], want)
    np.testing.assert_array_equal(base[1::2], 7.0)
    based = cla.to_device(queue, np.full((2, 4, 6, 12), 7.0, np.float32))
    view = based[..., 3:9]
    assert clconv.conv2d(cla.to_device(queue, x), w, padding=1, out=view) is view
    got = based.get()
    np.testing.assert_array_equal(got[..., 3:9], want)
    np.testing.assert_array_equal(got[..., :3], 7.0)
    np.testing.assert_array_equal(got[..., 9:], 7.0)
    a = cla.to_device(queue, x)
    assert clconv.relu(a[:, 1:], inplace=True) is not None
    np.testing.assert_array_equal(a.get(), np.concatenate([x[:, :1], np.maximum(x[:, 1:], 0)], 1))
    from numpy.lib.stride_tricks import as_strided

    torch = import_torch()
    for spread in (as_strided(np.zeros(5, np.float32), (4, 5), (0, 4)),
                   torch.zeros(1, 5).expand(4, 5)):  # as torch refuses writing them
        with pytest.raises(ValueError, match="refers to a single memory location"):
            clconv.add(np.ones((4, 5), np.float32), 1.0, out=spread)
        with pytest.raises(ValueError, match="refers to a single memory location"):
            clconv.relu(spread, inplace=True)
    with pytest.raises(ValueError, match="refers to a single memory location"):
        from clconv.runtime.transfer import scatter
        spread = cla.Array(queue, (2, 3), np.float32, strides=(0, 4), data=a.base_data)
        scatter(cla.to_device(queue, np.ones((2, 3), np.float32)), spread, clconv.current_device())


def test_out_argument(clconv, rng, queue):
    x, w = _r(rng, (2, 3, 6, 6)), _r(rng, (4, 3, 3, 3))
    want = clconv.conv2d(x, w, padding=1)
    out = np.full(want.shape, np.nan, np.float32)
    assert clconv.conv2d(x, w, padding=1, out=out) is out
    np.testing.assert_array_equal(out, want)
    xd, wd = cla.to_device(queue, x), cla.to_device(queue, w)
    outd = cla.empty(queue, want.shape, np.float32)
    assert clconv.conv2d(xd, wd, padding=1, out=outd) is outd
    np.testing.assert_array_equal(outd.get(), want)
    with pytest.raises(ValueError, match="out must have shape"):
        clconv.conv2d(x, w, padding=1, out=np.empty((2, 4, 6, 5), np.float32))
    with pytest.raises(ValueError, match="out must have shape .* and dtype float32"):
        clconv.conv2d(x, w, padding=1, out=np.empty(want.shape, np.float64))
    with pytest.raises(TypeError, match="out must be a numpy array"):
        clconv.conv2d(x, w, padding=1, out=outd)
    with pytest.raises(TypeError, match="out must be a pyopencl Array"):
        clconv.conv2d(xd, wd, padding=1, out=out)
    other = cl.CommandQueue(cl.Context([queue.device]))
    with pytest.raises(ValueError, match="another OpenCL context"):
        clconv.conv2d(xd, wd, padding=1, out=cla.empty(other, want.shape, np.float32))
    # the other ops take out= too
    cols = clconv.im2col(x, 3)
    got = np.empty(cols.shape, np.float32)
    clconv.im2col(x, 3, out=got)
    np.testing.assert_array_equal(got, cols)
    gx = np.empty(x.shape, np.float32)
    clconv.conv2d_input(x.shape, w, want, padding=1, out=gx)
    assert_close(gx, ref.conv_nd_input(x.shape, w, want, padding=1), np.float32, reduction=36,
                 magnitude=float(np.abs(want).max() * np.abs(w).max()))


@pytest.mark.parametrize("algorithm", ["direct", "implicit", "im2col_packed", "auto"])
def test_an_out_overlapping_an_operand_gets_the_right_result(clconv, rng, queue, algorithm):
    """out= in the memory of an operand (the operand itself, or a view shifted into its buffer):
    the kernels read operands while they write out, so such a call computes into a temporary and
    copies; the elementwise ops (inplace=True) write an operand that is out itself directly."""
    x, w, b = _r(rng, (2, 4, 8, 8)), _r(rng, (4, 4, 3, 3)), _r(rng, (4,))
    want = clconv.conv2d(x, w, b, padding=1, algorithm=algorithm)
    xd = cla.to_device(queue, x)
    got = clconv.conv2d(xd, w, b, padding=1, algorithm=algorithm, out=xd)
    assert got is xd
    np.testing.assert_array_equal(xd.get(), want)
    big = cla.to_device(queue, np.concatenate([x.reshape(-1), np.zeros(5, np.float32)]))
    src, dst = big[:x.size].reshape(x.shape), big[5:].reshape(x.shape)
    clconv.conv2d(src, w, b, padding=1, algorithm=algorithm, out=dst)
    np.testing.assert_array_equal(dst.get(), want)
    for op in (lambda a, out: clconv.max_pool2d(a, 3, 1, 1, out=out),
               lambda a, out: clconv.avg_pool2d(a, 3, 1, 1, out=out)):
        want = op(x, None)
        a = cla.to_device(queue, x)
        op(a, a)
        np.testing.assert_array_equal(a.get(), want)
    a = cla.to_device(queue, x)
    want = np.concatenate([x[1:], x[:1]])
    clconv.cat([a[1:], a[:1]], out=a)
    np.testing.assert_array_equal(a.get(), want)
    a = cla.to_device(queue, x)  # the operand itself: written in place
    assert clconv.relu(a, inplace=True) is a
    np.testing.assert_array_equal(a.get(), np.maximum(x, 0))
    big = cla.to_device(queue, np.concatenate([x.reshape(-1), np.zeros(1, np.float32)]))
    clconv.add(big[:x.size], 1.0, out=big[1:])  # shifted by one element: not elementwise-safe
    np.testing.assert_array_equal(big.get()[1:], x.reshape(-1) + 1)


def test_operands_must_match_the_plan(clconv, rng):
    x, w = _r(rng, (2, 3, 6, 6)), _r(rng, (4, 3, 3, 3))
    plan = clconv.plan_conv2d(x.shape, w.shape, bias=False)
    with pytest.raises(ValueError, match=r"input has shape \(2, 3, 6, 5\) but this plan was made "
                                         r"for \(2, 3, 6, 6\) \(any batch size: its dims after "
                                         r"the first must be \(3, 6, 6\)\)"):
        plan(x[..., :5], w)
    with pytest.raises(ValueError, match="made without bias"):
        plan(x, w, np.zeros(4, np.float32))
    other = np.float64 if clconv.current_device().fp64 else np.float16
    if other == np.float64 or clconv.current_device().fp16:  # a dtype the device has
        with pytest.raises(TypeError, match="plan was made for float32"):
            plan(x.astype(other), w.astype(other))
    with pytest.raises(TypeError, match="dtype int64"):
        plan(x.astype(np.int64), w)
    with pytest.raises(ValueError, match="channel mismatch"):
        clconv.plan_conv2d((2, 5, 6, 6), w.shape)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        clconv.plan_conv2d(x.shape, w.shape, algorithm="fastest")


def test_repeated_calls_are_cache_hits(clconv, rng):
    from clconv.ops.plan import plans

    dev = clconv.current_device()
    x, w = _r(rng, (1, 2, 5, 5)), _r(rng, (3, 2, 3, 3))
    clconv.conv2d(x, w, padding=(1, 2), algorithm="direct")
    cache = plans(dev)
    hits, misses = cache.hits, cache.misses
    for _ in range(5):
        clconv.conv2d(x, w, padding=(1, 2), algorithm="direct")
    assert (cache.hits - hits, cache.misses - misses) == (5, 0)
    clconv.conv2d(x, w, padding=[1, 2], algorithm="direct")  # a list: another key, same result
    # bools never share a key with ints (a cached plan must not accept what validation refuses)
    from clconv.ops.plan import freeze
    assert freeze(True) != freeze(1) and freeze((1, 2)) != freeze([1, 2])
    with pytest.raises(TypeError, match="groups must be an int"):
        clconv.conv2d(x, w, padding=(1, 2), groups=True, algorithm="direct")


def test_the_plan_cache_and_the_program_cache_are_bounded(clconv, rng, monkeypatch):
    from clconv.ops.plan import PlanCache, plans
    from clconv.runtime.program import ProgramCache, programs

    dev = clconv.current_device()
    monkeypatch.setattr(PlanCache, "MAX_PLANS", 3)
    monkeypatch.setattr(ProgramCache, "MAX_PROGRAMS", 4)
    w = _r(rng, (5, 3, 2, 3))  # shapes no other test builds: every step builds a program
    for size in range(23, 30):
        x = _r(rng, (1, 3, size, size + 1))
        assert_close(clconv.conv2d(x, w, algorithm="direct"), ref.conv_nd(x, w), np.float32,
                     conv_reduction(w), conv_magnitude(x, w))
        assert len(plans(dev).entries) <= 3 and len(programs(dev).entries) <= 4
    monkeypatch.undo()


def test_a_stream_of_many_shapes_plans_each_once(clconv, rng):
    """The plan cache holds what a network met at many input sizes cycles through (ResNet-18:
    ~15 plans a (size, batch), 80 of them 1,176 plans): 1,200 shapes in turn, then again, plan
    once each (the earlier bound, 512, made every call of such a stream plan again)."""
    from clconv.ops.plan import plans

    cache = plans(clconv.current_device())
    cache.clear()
    xs = [np.zeros((1, 1 + i % 3, 7 + i // 3), np.float32) for i in range(1200)]
    for x in xs:
        clconv.relu(x)
    misses = cache.misses
    for x in xs:
        clconv.relu(x)
    assert cache.misses == misses


@pytest.mark.parametrize("algorithm", ["im2col", "direct", "winograd"])
def test_a_new_batch_size_builds_nothing(clconv, rng, builds, algorithm):
    """Batch sizes are arguments of every kernel: a planned layer met at another batch size (a new
    plan) reuses the programs of the first."""
    w = _r(rng, (8, 6, 3, 3))
    clconv.conv2d(_r(rng, (1, 6, 10, 9)), w, padding=1, algorithm=algorithm)
    before = builds()
    for n in (3, 2, 5):
        x = _r(rng, (n, 6, 10, 9))
        got = clconv.conv2d(x, w, padding=1, algorithm=algorithm)
        assert_close(got, ref.conv_nd(x, w, None, 1, 1), np.float32, conv_reduction(w),
                     conv_magnitude(x, w))
    assert builds() == before


def test_auto_reuses_the_choice_of_a_nearby_batch_size(clconv, rng, tmp_path, monkeypatch):
    from clconv.ops import autotune

    monkeypatch.setenv("CLCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CLCONV_AUTO", raising=False)
    monkeypatch.setattr(autotune, "SHORTLIST_FACTOR", float("inf"))  # measure these small layers
    autotune.forget()
    measured = []
    real = autotune.measure

    def measure(*args, **kwargs):
        measured.append(args[1].batch)
        return real(*args, **kwargs)

    monkeypatch.setattr(autotune, "measure", measure)
    try:
        w = _r(rng, (6, 5, 3, 3))
        for n in (3, 4, 3, 5, 1):  # buckets 4, 4, 4, 8, 1: the later ones reuse the nearest
            clconv.conv2d(_r(rng, (n, 5, 7, 7)), w, padding=1)
        assert measured == [3]
        assert autotune.batch_bucket(3) == 4 and autotune.batch_bucket(1) == 1
        # another layer is measured
        clconv.conv2d(_r(rng, (2, 5, 7, 7)), _r(rng, (6, 5, 1, 1)))
        assert measured == [3, 2]
    finally:
        autotune.forget()


def test_auto_leaves_out_candidates_that_do_not_fit_the_workspace(clconv, rng):
    """A workspace limit too small for any im2col column: 'auto' runs one that needs no workspace
    ('direct' or 'implicit') instead of failing; an explicit 'im2col' is a MemoryError."""
    x, w = _r(rng, (2, 4, 6, 6)), _r(rng, (3, 4, 3, 3))
    got = clconv.conv2d(x, w, padding=1, workspace_limit=16)
    assert_close(got, ref.conv_nd(x, w, None, 1, 1), np.float32, conv_reduction(w),
                 conv_magnitude(x, w))
    assert clconv.plan_conv2d(x.shape, w.shape, padding=1, workspace_limit=16).algorithm in \
        ("direct", "implicit")
    with pytest.raises(MemoryError, match="one column"):
        clconv.conv2d(x, w, padding=1, workspace_limit=16, algorithm="im2col")


def test_device_results_carry_their_event(clconv, rng, queue):
    x = cla.to_device(queue, _r(rng, (1, 2, 6, 6)))
    w = cla.to_device(queue, _r(rng, (2, 2, 3, 3)))
    y = clconv.conv2d(x, w)
    assert y.events and all(isinstance(e, cl.Event) for e in y.events)
    cl.wait_for_events(y.events)


def test_numpy_inputs_are_uploaded_without_blocking(clconv, rng, monkeypatch):
    """numpy operands go up with non-blocking copies (the only host wait is the result's
    download)."""
    import clconv.runtime.transfer as transfer

    blocking = []
    real = transfer.cl.enqueue_copy

    def spy(queue, dst, src, **kwargs):
        if isinstance(src, np.ndarray):
            blocking.append(kwargs.get("is_blocking", True))
        return real(queue, dst, src, **kwargs)

    monkeypatch.setattr(transfer.cl, "enqueue_copy", spy)
    x, w = _r(rng, (1, 2, 6, 6)), _r(rng, (2, 2, 3, 3))
    clconv.conv2d(x, w, algorithm="direct")
    assert blocking == [False, False]


def test_layer_forward_and_backward_translate_memory_errors(clconv, rng, monkeypatch):
    from clconv.ops import launch

    def fail(*args, **kwargs):
        raise cl.MemoryError(cl._cl._ErrorRecord("clEnqueueNDRangeKernel",
                                                 cl.status_code.MEM_OBJECT_ALLOCATION_FAILURE,
                                                 "clEnqueueNDRangeKernel failed"))

    layer = clconv.nn.Conv2d(3, 4, 3, padding=1, algorithm="direct", rng=0)
    x = _r(rng, (2, 3, 5, 5))
    layer(x)
    monkeypatch.setattr(launch.DirectConv, "__call__", fail)
    with pytest.raises(MemoryError, match=r"conv2d \(direct\) of input \(2, 3, 5, 5\)"):
        layer(x)


def test_one_failing_driver_query_does_not_hide_the_device(clconv):
    from clconv.runtime.device import Device

    real = clconv.devices()[0].cl_device

    class Odd:
        def __getattr__(self, name):
            if name == "max_mem_alloc_size":
                raise cl.LogicError("clGetDeviceInfo failed: INVALID_VALUE")
            return getattr(real, name)

    dev = Device(Odd(), 0, 0, 0)
    assert dev.name == real.name.strip()
    assert "max_mem_alloc_size" in dev.query_errors
    assert dev.max_alloc_bytes == dev.global_mem_bytes // 4


def test_device_wraps_a_users_queue(clconv, rng):
    ctx = cl.Context([clconv.current_device().cl_device])
    queue = cl.CommandQueue(ctx)
    dev = clconv.device(queue)
    assert dev.queue is queue and dev.context == ctx and clconv.device(queue) is dev
    x, w = _r(rng, (1, 2, 6, 6)), _r(rng, (3, 2, 3, 3))
    with dev:
        y = clconv.conv2d(cla.to_device(queue, x), cla.to_device(queue, w), padding=1)
    assert y.queue is queue
    assert_close(y.get(), ref.conv_nd(x, w, None, 1, 1), np.float32, conv_reduction(w),
                 conv_magnitude(x, w))
    assert clconv.device(ctx).context == ctx
    with pytest.raises(TypeError, match="device spec"):
        clconv.device(3.5)


def test_elementwise_pad_and_linear_plans_take_other_batch_sizes(clconv, dev, rng):
    """Every plan whose operands have a batch re-plans for another batch size (as the
    convolutions do): unary, pad, binary (both operands batched, or the other broadcast) and
    linear of more than 2 dims."""
    f32 = np.float32
    x = _r(rng, (3, 3, 5))
    relu = clconv.UnaryPlan(dev, "relu", (2, 3, 5), f32)
    np.testing.assert_array_equal(relu(x), np.maximum(x, 0))
    pad = clconv.PadPlan(dev, (2, 3, 5), (1, 2), "replicate", None, f32)
    np.testing.assert_array_equal(pad(x[:1]), np.pad(x[:1], ((0, 0), (0, 0), (1, 2)), "edge"))
    y = _r(rng, (3, 3, 5))
    add = clconv.BinaryPlan(dev, "add", (2, 3, 5), (2, 3, 5), f32)
    np.testing.assert_array_equal(add(x, y), x + y)
    with pytest.raises(ValueError, match="batch size 1 but input has 3"):
        add(x, y[:1])
    scale = clconv.BinaryPlan(dev, "mul", (2, 3, 5), (1, 3, 5), f32)  # other broadcast
    np.testing.assert_array_equal(scale(x, y[:1]), x * y[:1])
    w = _r(rng, (4, 5))
    linear = clconv.LinearPlan(dev, (2, 3, 5), (4, 5), None, f32)
    assert_close(linear(x, w), x @ w.T, f32, 5)


@pytest.mark.parametrize("make", [
    lambda c, d: c.UnaryPlan(d, "relu", (2, 3.7), np.float32),
    lambda c, d: c.PadPlan(d, (2.0, 3), (1, 1), "constant", 0, np.float32),
    lambda c, d: c.SoftmaxPlan(d, (2, 3.0), 1, np.float32),
    lambda c, d: c.PoolPlan(d, "max", 2, (1, 2, 5.5, 5), np.float32, 2),
    lambda c, d: c.plan_conv_transpose2d((1, 3, 5.7, 5), (3, 2, 3, 3)),
    lambda c, d: c.plan_im2col((1, 2, 5, 5.5), 3),
    lambda c, d: c.plan_conv2d((1, 2, 5, 5), (3, 2, 3, 3.0)),
], ids=["unary", "pad", "softmax", "pool", "transpose", "im2col", "conv"])
def test_plan_shapes_are_ints(clconv, dev, make):
    """A float in a shape is refused, never truncated."""
    with pytest.raises(TypeError, match="must be a sequence of ints"):
        make(clconv, dev)


def test_plan_arguments_are_checked(clconv, dev):
    with pytest.raises(ValueError, match=r"input_shape \(2, -4, 9, 7\) has a negative size"):
        clconv.plan_conv2d((2, -4, 9, 7), (3, 4, 3, 3))
    with pytest.raises(ValueError, match=r"bias shape \(7,\) must be \(C_out,\) = \(4,\)"):
        clconv.plan_conv_transpose2d((1, 2, 5, 5), (2, 2, 3, 3), bias=(7,), groups=2)
    with pytest.raises(TypeError, match="bias must be a bool"):
        clconv.plan_conv_transpose2d((1, 3, 5, 5), (3, 2, 3, 3), bias="yes")
    assert clconv.plan_conv_transpose2d((1, 3, 5, 5), (3, 2, 3, 3), bias=(2,)).operand_shapes[
        "bias"] == (2,)
    for nd in (4, 0, 1.5, "2", True):
        with pytest.raises(ValueError, match="nd must be 1, 2 or 3"):
            clconv.PoolPlan(dev, "max", nd, (1, 2, 5, 5), np.float32, 2)
