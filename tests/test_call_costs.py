"""What a run spares itself (issue 20's per-call costs) without changing results: launchers' own
kernel objects with the fixed arguments set once (clconv.runtime.program.BoundKernel: a run sets
only the operands'), the last kernel's event on the result instead of a marker, and filters packed
once for weights declared constant (clconv.ops.plan.mark_constant, as the compiled path's)."""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import pytest

import reference as ref
from tolerance import assert_close, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _r(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def _view(queue, a, pad):
    """`a` on the device as a view `pad` elements into a larger buffer (a non-zero offset)."""
    flat = cla.to_device(queue, np.concatenate([np.full(pad, np.nan, np.float32), a.ravel()]))
    return flat[pad:].reshape(a.shape)


@pytest.mark.parametrize("algorithm", ["direct", "implicit", "im2col_packed", "auto"])
def test_runs_with_other_operands_each_time(clconv, rng, queue, algorithm):
    """One plan run on different input, weight, bias and residual buffers, at other offsets, in
    turn: each result is its own operands' (no argument left over from the run before)."""
    plan = clconv.plan_conv2d((2, 5, 7, 6), (4, 5, 3, 3), padding=1, algorithm=algorithm,
                              activation="relu", residual=True)
    for pad in (0, 3, 0, 17):
        x, w, b, r = _r(rng, (2, 5, 7, 6)), _r(rng, (4, 5, 3, 3)), _r(rng, (4,)), \
            _r(rng, (2, 4, 7, 6))
        got = plan(*(_view(queue, a, pad) for a in (x, w, b)), residual=_view(queue, r, pad))
        want = np.maximum(ref.conv_nd(x, w, b, 1, 1) + r, 0)
        assert_close(got, want, np.float32, conv_reduction(w) + 1, conv_magnitude(x, w, b) + 10)


@pytest.mark.parametrize("algorithm, weight_shape, padding, groups", [
    ("direct", (4, 3, 3, 3), 1, 1), ("implicit", (4, 3, 3, 3), 1, 1),
    ("pointwise", (4, 3, 1, 1), 0, 1), ("depthwise", (3, 1, 3, 3), 1, 3),
    ("splitk", (4, 3, 3, 3), 1, 1)])
def test_result_carries_its_last_kernels_event(clconv, rng, queue, algorithm, weight_shape,
                                               padding, groups):
    """The paths that return their last kernel's event put it on the result (no marker)."""
    x = cla.to_device(queue, _r(rng, (1, 3, 8, 8)))
    w = cla.to_device(queue, _r(rng, weight_shape))
    y = clconv.conv2d(x, w, padding=padding, groups=groups, algorithm=algorithm)
    assert y.events[-1].command_type == cl.command_type.NDRANGE_KERNEL
    cl.wait_for_events(y.events)
    assert_close(y, ref.conv_nd(x.get(), w.get(), None, 1, padding, groups=groups), np.float32,
                 conv_reduction(w.get()), conv_magnitude(x.get(), w.get()))


def test_one_kernel_ops_put_their_kernels_event_on_the_result(clconv, rng, queue, monkeypatch):
    """The elementwise ops, pools, softmax, pad, batch_norm, group_norm and local_response_norm
    on device arrays: the result carries the event of the kernel that wrote it (no marker, one
    command less a call); an in-place op on a device array of the plan's shape goes straight to
    its kernel (Plan._ready_out takes the operand itself where the op allows it); a Python number
    beside a device array is uploaded once and kept (no upload a call)."""
    from clconv.ops import plan as plan_mod

    x = _r(rng, (2, 4, 6, 6))
    d = cla.to_device(queue, x)
    ones, zeros = cla.to_device(queue, np.ones(4, np.float32)), \
        cla.to_device(queue, np.zeros(4, np.float32))
    cases = [
        (lambda: clconv.relu(d), np.maximum(x, 0)),
        (lambda: clconv.add(d, d), x + x),
        (lambda: clconv.mul(d, 2.0), x * 2),
        (lambda: clconv.max_pool2d(d, 2), x.reshape(2, 4, 3, 2, 3, 2).max(axis=(3, 5))),
        (lambda: clconv.avg_pool2d(d, 2), x.reshape(2, 4, 3, 2, 3, 2).mean(axis=(3, 5))),
        (lambda: clconv.adaptive_avg_pool2d(d, 1), x.mean(axis=(2, 3), keepdims=True)),
        (lambda: clconv.softmax(d, 1), np.exp(x) / np.exp(x).sum(1, keepdims=True)),
        (lambda: clconv.pad(d, (1, 1)), np.pad(x, ((0, 0), (0, 0), (0, 0), (1, 1)))),
        (lambda: clconv.batch_norm(d, zeros, ones, eps=0.0), x),
        (lambda: clconv.group_norm(d, 1, eps=0.0), (x - x.mean((1, 2, 3), keepdims=True))
         / x.std((1, 2, 3), keepdims=True)),
        (lambda: clconv.local_response_norm(d, 1, alpha=0.0, k=1.0), x),
    ]
    for run, want in cases:
        y = run()
        assert y.events[-1].command_type == cl.command_type.NDRANGE_KERNEL
        assert_close(y.get(), want, np.float32, 64, 4.0)
    loads = []
    real_load = plan_mod.load
    monkeypatch.setattr(plan_mod, "load", lambda *a: loads.append(a[2]) or real_load(*a))
    a = cla.to_device(queue, x)
    assert clconv.relu(a, inplace=True) is a and loads == []
    assert clconv.add(a, d, out=a) is a and loads == []
    np.testing.assert_array_equal(a.get(), np.maximum(x, 0) + x)
    monkeypatch.undo()
    from clconv.ops import binary

    kept = [clconv.add(d, 3.5) for _ in range(3)]
    assert all(np.array_equal(k.get(), x + np.float32(3.5)) for k in kept)
    key = ("scalar", np.dtype(np.float32).str, np.float32(3.5).tobytes())
    scalar = clconv.current_device().constants[key]
    clconv.add(d, 3.5)
    assert clconv.current_device().constants[key] is scalar  # the same device number, reused
    for v in range(binary.SCALARS_KEPT + 5):  # bounded: the oldest numbers go
        clconv.add(d, float(v))
    kept = [k for k in clconv.current_device().constants if k[0] == "scalar"]
    assert len(kept) == binary.SCALARS_KEPT and key not in kept


def test_device_operands_of_the_plan_skip_the_loading(clconv, rng, queue, monkeypatch):
    """A plan run on device arrays of its shapes and dtype on the device's queue (a network's
    layer), with or without an `out=` array of its own of the result's shape there (convert's
    results written into tensors' memory), goes straight to its kernels (no operand loading:
    Plan._ready, Plan._ready_out); anything else (numpy, a strided view, another queue, out= on
    another queue or over an operand's buffer) takes the checked path, with the same results
    (and does not hang: a queue that waits on another's marker needs that one flushed, which
    rusticl does not do by itself)."""
    from clconv.ops import plan as plan_mod

    loads = []
    real_load = plan_mod.load
    monkeypatch.setattr(plan_mod, "load", lambda *a: loads.append(a[2]) or real_load(*a))
    x, w, b, r = _r(rng, (2, 5, 7, 6)), _r(rng, (4, 5, 3, 3)), _r(rng, (4,)), _r(rng, (2, 4, 7, 6))
    want = np.maximum(ref.conv_nd(x, w, b, 1, 1) + r, 0)
    tol = (np.float32, conv_reduction(w) + 1, conv_magnitude(x, w, b) + 10)
    plan = clconv.plan_conv2d((2, 5, 7, 6), (4, 5, 3, 3), padding=1, activation="relu",
                              residual=True)
    dx, dw, db, dr = (cla.to_device(queue, a) for a in (x, w, b, r))
    got = plan(dx, dw, db, residual=dr)
    assert loads == [] and got.queue is queue
    assert_close(got, want, *tol)
    out = cla.empty(queue, r.shape, np.float32)
    assert plan(dx, dw, db, residual=dr, out=out) is out and loads == []
    assert_close(out, want, *tol)
    other = cl.CommandQueue(queue.context)
    wide = cla.to_device(queue, np.concatenate([x, x], axis=3))  # x as a strided view
    for args, kw in [((x, w, b), {"residual": r}),  # numpy: uploaded, result downloaded
                     ((dx, dw, db), {"residual": cla.to_device(other, r)}),
                     ((wide[:, :, :, :6], dw, db), {"residual": dr}),
                     ((dx, dw, db), {"residual": dr, "out": cla.empty(other, r.shape,
                                                                      np.float32)}),
                     ((dx, dw, db), {"residual": cla.to_device(queue, r), "out": "residual"})]:
        if isinstance(kw.get("out"), str):  # the result over the residual it reads: one buffer
            kw["out"] = kw["residual"]
        loads.clear()
        assert_close(plan(*args, **kw), want, *tol)
        assert loads == ["input", "weight", "bias", "residual"]
    loads.clear()
    with pytest.raises(ValueError, match="shape"):  # still checked
        plan(dx[:1], dw, db, residual=dr[:1].reshape(2, 4, 7, 3))
    with pytest.raises(TypeError, match="dtype"):
        plan(dx, dw, cla.to_device(queue, b.astype(np.float64)), residual=dr)


@pytest.mark.parametrize("algorithm", ["implicit", "im2col_packed"])
@pytest.mark.parametrize("groups", [1, 2])
def test_constant_weights_are_packed_once(clconv, rng, queue, monkeypatch, algorithm, groups):
    """'im2col_packed' packs a weight declared constant once; 'implicit' reads any weight where it
    is and packs none."""
    from clconv.ops import packed_conv
    from clconv.ops.plan import mark_constant

    packs = []
    real = packed_conv.pack_conv_weights
    monkeypatch.setattr(packed_conv, "pack_conv_weights",
                        lambda *a, **k: packs.append(1) or real(*a, **k))
    x, w, b = _r(rng, (2, 8, 9, 7)), _r(rng, (6, 8 // groups, 3, 3)), _r(rng, (6,))
    wd = mark_constant(cla.to_device(queue, w))
    assert mark_constant(wd) is wd
    xd, bd = cla.to_device(queue, x), cla.to_device(queue, b)
    want = ref.conv_nd(x, w, b, 2, 1, 1, groups)
    for _ in range(3):
        got = clconv.conv2d(xd, wd, bd, stride=2, padding=1, groups=groups, algorithm=algorithm)
        assert_close(got, want, np.float32, conv_reduction(w, groups), conv_magnitude(x, w, b))
    assert len(packs) == (0 if algorithm == "implicit" else 1)
    # the same values in an array not declared constant: packed on every run, the same result
    plain = cla.to_device(queue, w)
    again = clconv.conv2d(xd, plain, bd, stride=2, padding=1, groups=groups, algorithm=algorithm)
    np.testing.assert_array_equal(again.get(), got.get())


@pytest.mark.parametrize("activation", [None, "relu"])
def test_constant_linear_weights_are_packed_once(clconv, rng, queue, monkeypatch, activation):
    """linear on the packed engine packs a weight declared constant once (a compiled model's
    classifier), and any other weight on every call, with the same results."""
    from clconv.blas import packed
    from clconv.blas.engine import gemm_engine
    from clconv.ops.plan import mark_constant

    if gemm_engine(clconv.current_device()) is not packed:
        pytest.skip("the packed GEMM engine is not this device's")
    packs = []
    real = packed.enqueue_pack_a
    monkeypatch.setattr(packed, "enqueue_pack_a", lambda *a, **k: packs.append(1) or real(*a, **k))
    from clconv.ops.linear import GEMV_ROWS

    # (more rows than cl/gemv.cl takes: the GEMM's)
    x, w, b = _r(rng, (GEMV_ROWS + 2, 37)), _r(rng, (21, 37)), _r(rng, (21,))
    want = x.astype(np.float64) @ w.T.astype(np.float64) + b
    if activation == "relu":
        want = np.maximum(want, 0)
    wd = mark_constant(cla.to_device(queue, w))
    xd, bd = cla.to_device(queue, x), cla.to_device(queue, b)
    for _ in range(3):
        got = clconv.linear(xd, wd, bd, activation=activation)
        assert_close(got, want, np.float32, 37, float(np.abs(x).max() * np.abs(w).max()))
    assert len(packs) == 1
    plain = cla.to_device(queue, w)
    for _ in range(2):
        again = clconv.linear(xd, plain, bd, activation=activation)
        np.testing.assert_array_equal(again.get(), got.get())
    assert len(packs) == 3
