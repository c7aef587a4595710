"""Argument handling found wanting by a differential fuzz against torch.nn.functional / torch.nn
(session 24): plan-cache keys that must tell -0.0 from 0.0, operands and parameters that are not
arrays, size arguments given as bytes or a range, pools with strides past 32 bits, BatchNorm's eps
in training, Sequential.insert's range. Each case is what torch does (or refuses), checked through
the public API; values against torch where it computes one."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import import_torch


@pytest.fixture
def clconv(clconv_mod, dev):
    return clconv_mod


def _signs(a) -> list[int]:
    return np.signbit(np.asarray(a)).ravel().astype(int).tolist()


def test_a_signed_zero_argument_gets_its_own_plan(clconv):
    """-0.0 == 0.0 (same hash): the functional API's plan cache reused the plan made for 0.0 for
    a later -0.0 (pad's value, clamp's bounds, a fused clamp), so the sign of zero followed the
    call before."""
    torch = import_torch()
    import torch.nn.functional as F

    x = np.array([[[-1.0, 2.0, -3.0, 0.2]]], np.float32)
    t = torch.from_numpy(x)
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        clconv.pad(x, (1, 1), value=first)
        assert _signs(clconv.pad(x, (1, 1), value=second)) == \
            _signs(F.pad(t, (1, 1), value=second))
        clconv.clamp(x, first, 1.0)
        assert _signs(clconv.clamp(x, second, 1.0)) == _signs(torch.clamp(t, second, 1.0))
        clconv.hardtanh(x, first, 1.0)
        assert _signs(clconv.hardtanh(x, second, 1.0)) == _signs(F.hardtanh(t, second, 1.0))
    w = np.ones((1, 1, 1), np.float32)
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):  # a fused ('clamp', lo, hi): an Activation
        clconv.conv1d(x, w, activation=("clamp", first, 1.0))
        got = clconv.conv1d(x, w, activation=("clamp", second, 1.0))
        assert _signs(got) == _signs(torch.clamp(F.conv1d(t, torch.from_numpy(w)), second, 1.0))


def test_every_nan_argument_is_one_plan(clconv):
    from clconv.ops.plan import plans

    x = np.arange(4, dtype=np.float32).reshape(1, 1, 4)
    cache = plans(clconv.current_device())
    clconv.pad(x, (1, 1), value=float("nan"))
    before = cache.misses
    got = clconv.pad(x, (1, 1), value=float("nan"))  # another NaN object: the same plan
    assert cache.misses == before and np.isnan(got[..., [0, -1]]).all()


@pytest.mark.parametrize("weight", [[0.25, 0.1, 0.2, 0.3], (0.1, 0.2), range(4), "ab", 0.25,
                                    None, object()])
def test_prelu_refuses_a_weight_that_is_not_an_array(clconv, weight):
    x = np.ones((2, 4, 3, 3), np.float32)
    with pytest.raises(TypeError, match="prelu: weight must be an array of slopes"):
        clconv.prelu(x, weight)
    with pytest.raises(TypeError, match="prelu: input must be an array"):
        clconv.prelu(None, np.ones(4, np.float32))


@pytest.mark.parametrize("value", ["a", b"ab", {"w": 1}, object()])
def test_operands_and_parameters_that_are_not_arrays_are_type_errors(clconv, value):
    """A str, bytes, a dict or an object as an operand or a layer's parameter: a TypeError naming
    the argument (an AttributeError or a shape error before; torch: "cannot assign ... as
    parameter" / "must be Tensor")."""
    nn = clconv.nn
    w = np.ones((2, 2, 3, 3), np.float32)
    with pytest.raises(TypeError, match="input must be a numpy or pyopencl array"):
        clconv.conv2d(value, w)
    with pytest.raises(TypeError, match="input must be a numpy or pyopencl array"):
        clconv.relu(value)
    with pytest.raises(TypeError, match="weight must be a numpy or pyopencl array"):
        nn.Conv2d(2, 3, 3).weight = value
    with pytest.raises(TypeError, match="bias must be a numpy or pyopencl array"):
        nn.Linear(4, 5).bias = value
    with pytest.raises(TypeError, match="weight must be a numpy or pyopencl array"):
        nn.BatchNorm2d(3).weight = value


def test_sizes_given_as_bytes_or_a_range_are_type_errors(clconv):
    """bytes are a sequence of ints: b"ab" was the padding (97, 98) (a silently huge result);
    torch refuses bytes and ranges wherever it takes an int or a tuple of ints."""
    x = np.ones((1, 2, 6, 6), np.float32)
    w = np.ones((2, 2, 3, 3), np.float32)
    calls = {
        "padding": lambda v: clconv.conv2d(x, w, padding=v),
        "stride": lambda v: clconv.conv_transpose2d(x, w, stride=v),
        "kernel_size": lambda v: clconv.max_pool2d(x, kernel_size=v),
        "dilation": lambda v: clconv.conv2d(x, w, dilation=v),
        "output_size": lambda v: clconv.fold(np.ones((1, 8, 4), np.float32), v, 2),
        "input_size": lambda v: clconv.conv2d_input(v, w, np.ones((1, 2, 4, 4), np.float32)),
        "input_shape": lambda v: clconv.plan_conv2d(v, w.shape),
        "normalized_shape": lambda v: clconv.layer_norm(x, v),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=name):
            call(b"\x01\x02\x06\x06" if name in ("input_size", "input_shape") else b"\x02\x02")
        if name not in ("input_size", "input_shape"):  # (shapes: any sequence of ints)
            with pytest.raises(TypeError, match=name):
                call(range(1, 3))
    with pytest.raises(TypeError, match="kernel_size"):
        clconv.nn.Conv2d(2, 2, b"\x03")
    # what torch takes stays taken: lists, 1-element lists, torch.Size
    torch = import_torch()
    assert clconv.conv2d(x, w, stride=[2]).shape == (1, 2, 2, 2)
    assert clconv.conv2d(x, w, stride=torch.Size([2, 2])).shape == (1, 2, 2, 2)
    assert clconv.layer_norm(x, [6, 6]).shape == x.shape


def test_integer_tensors_and_arrays_of_one_element_are_int_arguments(clconv, rng):
    """torch takes a one-element integer tensor wherever it takes an int (its __index__): a
    stride or padding computed as a tensor; float tensors and bools stay refused."""
    torch = import_torch()
    import torch.nn.functional as F

    x = rng.standard_normal((1, 2, 7, 7)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    want = F.conv2d(tx, tw, stride=2, padding=(1, 0)).numpy()
    for stride, padding in ((torch.tensor(2), (torch.tensor(1), 0)), (np.array(2), (1, np.int8(0))),
                            ([torch.tensor([2])], [np.array(1), torch.tensor(0)])):
        np.testing.assert_allclose(clconv.conv2d(x, w, stride=stride, padding=padding), want,
                                   rtol=1e-5, atol=1e-5)
    got = clconv.max_pool2d(x, torch.tensor(3), stride=np.array(2))
    np.testing.assert_array_equal(got, F.max_pool2d(tx, 3, 2).numpy())
    for bad in (torch.tensor(2.0), np.array(2.0), np.bool_(True), torch.tensor([2, 2])):
        with pytest.raises(TypeError, match="stride"):
            clconv.conv2d(x, w, stride=bad)
    with pytest.raises(TypeError, match="groups"):  # (an int only, as the kernels need)
        clconv.conv2d(x, w[:, :1], groups=np.array(2))


def test_return_indices_takes_an_int_truth_value_as_torch(clconv, rng):
    """torch's functional pools test return_indices in Python: 1 and 0 work as True and False."""
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    out, idx = clconv.max_pool2d(x, 2, return_indices=1)
    want, want_idx = clconv.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(idx, want_idx)
    assert isinstance(clconv.max_pool2d(x, 2, return_indices=0), np.ndarray)
    with pytest.raises(TypeError, match="return_indices"):
        clconv.max_pool2d(x, 2, return_indices="yes")


def test_a_pool_stride_past_32_bits_is_torchs(clconv, rng):
    """torch's max_pool1d takes any stride (2**40: one window along the dim; the kernels take
    32-bit ints and raised numpy's OverflowError); its other pools refuse values past int32
    ("cannot be converted to type int"), and so does clconv (ValueError)."""
    torch = import_torch()
    import torch.nn.functional as F

    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    t = torch.from_numpy(x)
    got = clconv.max_pool1d(x[0], 2, stride=2**40)
    np.testing.assert_array_equal(got, F.max_pool1d(t[0], 2, stride=2**40).numpy())
    for name, operand, args, kwargs in (
            ("avg_pool1d", 0, (3,), {"stride": 2**40, "padding": 1}),
            ("max_pool2d", None, ((2, 1),), {"stride": (2**35, 1), "dilation": (1, 2**33)})):
        with pytest.raises(RuntimeError, match="int"):
            getattr(F, name)(t if operand is None else t[operand], *args, **kwargs)
        with pytest.raises(ValueError, match="2\\*\\*31"):
            getattr(clconv, name)(x if operand is None else x[operand], *args, **kwargs)


def test_batchnorm_with_eps_zero_refuses_batch_statistics(clconv, rng):
    """torch's rule (and clconv.batch_norm's): eps must be positive during training; the layer
    returned NaN for a constant channel. With running statistics (eval) eps=0 is taken."""
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    x[:, 0] = 1.0
    layer = clconv.nn.BatchNorm2d(4, eps=0)
    with pytest.raises(ValueError, match="eps must be positive"):
        layer(x)
    with pytest.raises(ValueError, match="eps must be positive"):
        clconv.nn.BatchNorm2d(4, eps=0, track_running_stats=False).eval()(x)
    layer.eval()
    assert np.isfinite(layer(x)).all()


def test_sequential_insert_refuses_an_index_out_of_range(clconv):
    nn = clconv.nn
    seq = nn.Sequential(nn.ReLU(), nn.Tanh())
    for index in (3, -3, 5):
        with pytest.raises(IndexError, match="out of range"):
            seq.insert(index, nn.SiLU())
    with pytest.raises(TypeError, match="index must be an int"):
        seq.insert(1.0, nn.SiLU())
    seq.insert(-2, nn.SiLU()).insert(3, nn.Sigmoid())
    assert [type(m).__name__ for m in seq] == ["SiLU", "ReLU", "Tanh", "Sigmoid"]


def test_device_arrays_not_aligned_to_their_elements_are_refused(clconv):
    """A pyopencl array whose byte offset or strides are not whole elements (a float32 view of a
    byte buffer at an odd position, which pyopencl allows) was read and written at the element
    below (offset and strides divided down): garbage, silently. Refused, naming the operand."""
    import pyopencl.array as cla

    q = clconv.current_device().queue
    x = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    raw = np.zeros(x.nbytes + 4, np.uint8)
    raw[2:2 + x.nbytes] = x.view(np.uint8).ravel()
    shifted = cla.to_device(q, raw)[2:2 + x.nbytes].view(np.float32).reshape(3, 4)
    np.testing.assert_array_equal(shifted.get(), x)  # (pyopencl itself reads it right)
    buffer = cla.to_device(q, np.arange(64, dtype=np.float32)).base_data
    odd_rows = cla.Array(q, (3, 4), np.float32, data=buffer, strides=(18, 4))
    w = np.ones((1, 1, 2, 2), np.float32)
    for bad in (shifted, odd_rows):
        for call in (lambda a: clconv.relu(a), lambda a: clconv.add(a, a),
                     lambda a: clconv.linear(a, np.ones((2, 4), np.float32)),
                     lambda a: clconv.softmax(a, 1),
                     lambda a: clconv.conv2d(a.reshape(1, 1, 3, 4), w),
                     lambda a: clconv.plan_conv2d((1, 1, 3, 4), w.shape)(
                         a.reshape(1, 1, 3, 4), cla.to_device(q, w))):
            with pytest.raises(ValueError, match="not multiples of its item size"):
                call(bad)
    with pytest.raises(ValueError, match="out= is a pyopencl array whose byte offset"):
        clconv.relu(cla.to_device(q, x), out=shifted)
    aligned = cla.to_device(q, np.arange(16, dtype=np.float32))[4:].reshape(3, 4)
    np.testing.assert_array_equal(clconv.relu(aligned).get(), np.arange(4, 16).reshape(3, 4))


def test_a_zero_dim_operand_beside_an_array_is_a_scalar_as_torch(clconv, rng):
    """torch's type promotion takes a 0-d tensor beside a tensor of one or more dims as a scalar
    (float32 + a float64 0-d is float32; an int 0-d too): clconv refused them as mixed dtypes."""
    torch = import_torch()

    x = rng.standard_normal((2, 3)).astype(np.float32)
    t = torch.from_numpy(x)
    for s in (np.array(2.5), torch.tensor(2.5, dtype=torch.float64), torch.tensor(3),
              np.array(True)):
        for op in ("add", "mul", "sub", "maximum"):
            if op == "sub" and s.dtype in (np.bool_, torch.bool):
                continue  # (torch refuses subtracting a bool)
            want = getattr(torch, op)(t, torch.as_tensor(s))
            got = getattr(clconv, op)(x, s)
            assert got.dtype == np.float32 and want.dtype == torch.float32
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
            np.testing.assert_allclose(getattr(clconv, op)(s, x),
                                       getattr(torch, op)(torch.as_tensor(s), t).numpy(), rtol=1e-6)
    with pytest.raises(TypeError, match="mixed dtypes"):  # (two 0-d: torch promotes them to
        clconv.add(np.array(1.0, np.float32), np.array(2.0))  # float64; clconv refuses, documented)


def test_zero_dim_tensors_are_number_and_dim_arguments_as_torch(clconv, rng):
    """torch's Number and int parameters take a 0-d tensor as its value (alpha=, eps=, a slope,
    dim=); clconv raised TypeError / ValueError for them. 0-d numpy arrays likewise. A 1-d
    tensor, a tensor that needs a gradient, a float dim and a bool dim stay refused, as torch's."""
    torch = import_torch()
    import torch.nn.functional as F

    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    y = rng.standard_normal((2, 4, 3)).astype(np.float32)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    cases = [  # (clconv with the value v, torch with v)
        (lambda v: clconv.add(x, y, alpha=v), lambda v: torch.add(tx, ty, alpha=v), 2.5),
        (lambda v: clconv.sub(x, y, alpha=v), lambda v: torch.sub(tx, ty, alpha=v), 3),
        (lambda v: clconv.leaky_relu(x, v), lambda v: F.leaky_relu(tx, v), 0.2),
        (lambda v: clconv.elu(x, alpha=v), lambda v: F.elu(tx, alpha=v), 0.5),
        (lambda v: clconv.hardtanh(x, -v, v), lambda v: F.hardtanh(tx, -v, v), 0.5),
        (lambda v: clconv.threshold(x, v, 0.0), lambda v: F.threshold(tx, v, 0.0), 0.1),
        (lambda v: clconv.softmax(x, dim=v), lambda v: F.softmax(tx, dim=v), 1),
        (lambda v: clconv.log_softmax(x, dim=v), lambda v: F.log_softmax(tx, dim=v), -1),
        (lambda v: clconv.cat([x, y], dim=v), lambda v: torch.cat([tx, ty], dim=v), 2),
        (lambda v: clconv.stack([x, y], dim=v), lambda v: torch.stack([tx, ty], dim=v), 1),
        (lambda v: clconv.flatten(x, v), lambda v: torch.flatten(tx, v), 1),
        (lambda v: clconv.group_norm(x, v, eps=1e-3), lambda v: F.group_norm(tx, v, eps=1e-3), 2),
        (lambda v: clconv.batch_norm(x, rm, rv, eps=v),
         lambda v: F.batch_norm(tx, torch.from_numpy(rm), torch.from_numpy(rv), eps=v), 1e-3),
        (lambda v: clconv.local_response_norm(x, v), lambda v: F.local_response_norm(tx, v), 2),
    ]
    for ours, theirs, value in cases:
        want = theirs(value).numpy()
        for v in (torch.tensor(value), np.array(value)):
            np.testing.assert_allclose(ours(v), want, rtol=1e-5, atol=1e-6)
            if isinstance(v, torch.Tensor):
                np.testing.assert_allclose(theirs(v).numpy(), want, rtol=1e-5, atol=1e-6)
    for bad in (torch.tensor([2.0]), torch.tensor(2.0, requires_grad=True)):
        with pytest.raises(TypeError):
            torch.add(tx, ty, alpha=bad)
        with pytest.raises(TypeError, match="alpha"):
            clconv.add(x, y, alpha=bad)
    for bad in (torch.tensor(1.0), torch.tensor(True), torch.tensor([1])):
        with pytest.raises(TypeError):
            F.softmax(tx, dim=bad)
        with pytest.raises(TypeError, match="dim"):
            clconv.softmax(x, dim=bad)
