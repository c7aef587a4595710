"""Property-based tests (hypothesis) of every public op against the float64 numpy oracle.

For random argument combinations, valid ones must match ``reference.py`` (shape, dtype, kind of array
and values, NaN/Inf included), and invalid ones must raise ValueError/TypeError naming the argument:
never a driver error, a crash or a result of the wrong shape. Inputs come in every layout a user
may pass: C-contiguous, Fortran-ordered, strided and transposed views, read-only, offset and
unaligned views, byte-swapped, and pyopencl arrays (contiguous, offset inside a larger buffer,
strided, or of another context).

The examples are derandomized (the same ones every run, so the OpenCL driver's kernel cache makes
later runs fast) and kept few: each new geometry compiles new kernels.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import pytest
import reference as ref
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tolerance import assert_close, assert_exact, conv_magnitude, conv_reduction


def _settings(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


@pytest.fixture(scope="module")
def dev(clconv):
    return clconv.current_device()


@pytest.fixture(scope="module")
def other_queue(dev):
    """A queue of a second context on the same device (its arrays are foreign to clconv's)."""
    return cl.CommandQueue(cl.Context([dev.cl_device]))


# ---------------------------------------------------------------------------
# input layouts
# ---------------------------------------------------------------------------

HOST_KINDS = ("c", "fortran", "strided", "transposed", "readonly", "offset", "unaligned",
              "byteswapped")
DEVICE_KINDS = ("cl", "cl_offset", "cl_strided")
KINDS = HOST_KINDS + DEVICE_KINDS


def present(a: np.ndarray, kind: str, queue):
    """`a` as the array kind `kind` (equal values, different memory layout or place)."""
    if kind == "c":
        return np.ascontiguousarray(a)
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "strided":
        big = np.zeros((*a.shape[:-1], 2 * a.shape[-1]) if a.ndim else (), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if kind == "transposed":
        return np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2) if a.ndim >= 2 else a
    if kind == "readonly":
        view = np.array(a)
        view.flags.writeable = False
        return view
    if kind == "offset":
        big = np.zeros(a.size + 3, a.dtype)
        big[3:] = a.ravel()
        return big[3:].reshape(a.shape)
    if kind == "unaligned":
        raw = np.zeros(a.nbytes + 1, np.uint8)
        view = np.frombuffer(raw.data, a.dtype, a.size, offset=1).reshape(a.shape)
        view[...] = a
        return view
    if kind == "byteswapped":
        return a.astype(a.dtype.newbyteorder(">" if a.dtype.byteorder in "=<" else "<"))
    if kind == "cl":
        return cla.to_device(queue, np.ascontiguousarray(a))
    if kind == "cl_offset":
        big = cla.to_device(queue, np.concatenate([np.zeros(5, a.dtype), a.ravel()]))
        return big[5:].reshape(a.shape)
    if kind == "cl_strided":
        if a.ndim == 0 or a.size == 0:
            return cla.to_device(queue, np.ascontiguousarray(a))
        big = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
        big[..., 1::2] = a
        return cla.to_device(queue, big)[..., 1::2]
    raise ValueError(kind)


def host(a) -> np.ndarray:
    return a.get() if isinstance(a, cla.Array) else np.asarray(a)


def data(draw, shape, dtype, special: str):
    """Standard-normal values with, per `special`, a NaN or +-Inf planted somewhere."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(dtype)
    if special != "finite" and a.size:
        a.flat[int(rng.integers(a.size))] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[special]
    return a


def check_result(got, want, input_kind, dtype, reduction=1, magnitude=1.0, exact=False):
    assert isinstance(got, cla.Array if input_kind in DEVICE_KINDS else np.ndarray), type(got)
    assert got.dtype == dtype, (got.dtype, dtype)
    assert tuple(got.shape) == want.shape, (got.shape, want.shape)
    if exact:
        assert_exact(host(got), want)
    else:
        assert_close(host(got), want, dtype, reduction=reduction, magnitude=magnitude)


# ---------------------------------------------------------------------------
# convolutions: a random case, the rules that make it valid, and the oracle
# ---------------------------------------------------------------------------

MODES = ("zeros", "reflect", "replicate", "circular")
HUGE_STRIDE = 2**40  # past the padded input: one output position, whatever the 32-bit kernels do


@st.composite
def conv_cases(draw, nd: int, valid: bool | None = True):
    """A dict of conv{nd}d arguments and how to present them. valid=True draws until PyTorch's
    rules hold, False until one fails, None either."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin_g, cout_g = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    kmax, smax = (3, 7) if nd < 3 else (2, 5)
    kernel = tuple(draw(st.integers(1, kmax)) for _ in range(nd))
    size = tuple(draw(st.integers(1, smax)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    stride = tuple(draw(st.sampled_from([1, 1, 2, 3, HUGE_STRIDE])) for _ in range(nd))
    padding = draw(st.one_of(st.integers(0, 2), st.tuples(*[st.integers(0, 3)] * nd),
                             st.sampled_from(["same", "valid"])))
    mode = draw(st.sampled_from(MODES))
    case = {
        "x_shape": (draw(st.integers(0, 3)), cin_g * groups, *size),
        "w_shape": (cout_g * groups, cin_g, *kernel),
        "bias": draw(st.booleans()), "unbatched": draw(st.integers(0, 9)) == 0,
        "kw": {"stride": stride if draw(st.booleans()) else stride[0], "padding": padding,
               "dilation": dilation, "groups": groups, "padding_mode": mode},
        "algorithm": draw(st.sampled_from(["auto", "im2col", "direct"])),
        "activation": draw(st.sampled_from([None, None, "relu"])),
        "dtype": np.dtype(draw(st.sampled_from([np.float32, np.float32, np.float64]))),
        "x_kind": draw(st.sampled_from(KINDS)), "w_kind": draw(st.sampled_from(HOST_KINDS)),
        "special": draw(st.sampled_from(["finite", "finite", "nan", "inf", "-inf"])),
    }
    if not isinstance(case["kw"]["stride"], tuple):
        stride = (case["kw"]["stride"],) * nd
    broken = conv_rule_violations(size, kernel, stride, dilation, padding, mode)
    if valid is not None:
        assume(not broken if valid else bool(broken))
    case["broken"] = broken
    case["x"] = data(draw, case["x_shape"], case["dtype"], case["special"])
    # weights without NaN/Inf: a non-finite weight times a zero of the padding is NaN in the oracle
    # but skipped by the direct kernel, which never multiplies by the padding (PyTorch's paths
    # differ in the same way).
    case["w"] = data(draw, case["w_shape"], case["dtype"], "finite")
    case["b"] = data(draw, case["w_shape"][:1], case["dtype"], "finite") if case["bias"] else None
    return case


def conv_rule_violations(size, kernel, stride, dilation, padding, mode) -> set[str]:
    """The argument names PyTorch's rules reject this geometry for (empty: valid)."""
    broken = set()
    if padding == "same" and any(s != 1 for s in stride):
        return {"padding"}
    pads = ref.resolve_padding(padding, kernel, dilation)
    if any(d * (k - 1) + 1 > s + lo + hi for d, k, s, (lo, hi) in zip(dilation, kernel, size, pads)):
        broken.add("kernel")
    if mode == "reflect" and any(max(p) >= s for p, s in zip(pads, size)):
        broken.add("padding")
    if mode == "circular" and any(max(p) > s for p, s in zip(pads, size)):
        broken.add("padding")
    return broken


def on_device(dev, dtype) -> np.dtype:
    """`dtype`, or float32 where the device lacks it (a GPU without fp64, llvmpipe): the drawn
    case still runs, in the precision the device has."""
    dtype = np.dtype(dtype)
    if (dtype == np.float64 and not dev.fp64) or (dtype == np.float16 and not dev.fp16):
        return np.dtype(np.float32)
    return dtype


def fit_case(dev, case, *names):
    """The case's arrays `names` (and "dtype") in a dtype `dev` computes (see on_device)."""
    dtype = on_device(dev, case.get("dtype", case[names[0]].dtype))
    for name in names:
        if case[name] is not None:
            case[name] = case[name].astype(dtype)
    if "dtype" in case:
        case["dtype"] = dtype
    return case


def run_conv(clconv, nd, case, queue):
    x, w, b = case["x"], case["w"], case["b"]
    if case["unbatched"] and x.shape[0] >= 1:
        x = x[0]
    args = (present(x, case["x_kind"], queue), present(w, case["w_kind"], queue),
            None if b is None else present(b, case["w_kind"], queue))
    got = getattr(clconv, f"conv{nd}d")(*args, algorithm=case["algorithm"],
                                         activation=case["activation"], **case["kw"])
    kw = dict(case["kw"])
    if HUGE_STRIDE in np.atleast_1d(kw["stride"]):  # the oracle's windows: any stride past the input
        kw["stride"] = tuple(min(s, 99) for s in np.broadcast_to(kw["stride"], (nd,)))
    want = ref.conv_nd(x, w, b, **kw)
    if case["activation"] == "relu":
        want = np.where(want < 0, 0, want)  # keeps NaN, as torch.relu
    return got, want, x, w, b


def _conv_property(nd, examples):
    @_settings(examples)
    @given(case=conv_cases(nd, valid=True))
    def test(clconv, dev, case):
        case = fit_case(dev, case, "x", "w", "b")
        got, want, x, w, b = run_conv(clconv, nd, case, dev.queue)
        check_result(got, want, case["x_kind"], case["dtype"], conv_reduction(w),
                     conv_magnitude(x, w, b))

    return test


test_conv1d_valid_matches_reference = _conv_property(1, 25)
test_conv2d_valid_matches_reference = _conv_property(2, 50)
test_conv3d_valid_matches_reference = _conv_property(3, 15)


@_settings(60)
@given(nd=st.sampled_from([1, 2, 3]), case=st.data())
def test_conv_geometry_rule_violations_are_value_errors(clconv, dev, nd, case):
    """Kernel larger than the padded input, reflect/circular padding beyond the input, 'same' with a
    stride: ValueError naming the argument, before anything runs."""
    case = fit_case(dev, case.draw(conv_cases(nd, valid=False)), "x", "w", "b")
    pattern = "|".join(sorted(case["broken"]))
    with pytest.raises(ValueError, match=pattern):
        run_conv(clconv, nd, case, dev.queue)


# (mutation name) -> (function of (case, nd, queues) changing it in place, exception, pattern)
def _set(key, value):
    def mutate(case, nd, queues):
        case["kw"][key] = value(nd) if callable(value) else value
    return mutate


def _x(fn):
    def mutate(case, nd, queues):
        case["x"] = fn(case["x"], nd, queues)
        case["x_kind"] = "as-is"
    return mutate


def _w(fn):
    def mutate(case, nd, queues):
        case["w"] = fn(case["w"], nd)
        case["w_kind"] = "as-is"
    return mutate


def _top(key, value):
    def mutate(case, nd, queues):
        case[key] = value
    return mutate


def _bias(fn):
    def mutate(case, nd, queues):
        case["b"] = fn(case["w"])
        case["w_kind"] = "c"
    return mutate


MUTATIONS = {
    "stride-zero": (_set("stride", 0), ValueError, "stride"),
    "stride-negative": (_set("stride", lambda nd: (-1,) * nd), ValueError, "stride"),
    "stride-float": (_set("stride", 1.5), TypeError, "stride"),
    "stride-too-long": (_set("stride", lambda nd: (1,) * (nd + 1)), (ValueError, TypeError),
                        "stride"),
    "stride-string": (_set("stride", "1"), TypeError, "stride"),
    "dilation-zero": (_set("dilation", 0), ValueError, "dilation"),
    "dilation-none": (_set("dilation", None), TypeError, "dilation"),
    "padding-negative": (_set("padding", -1), ValueError, "padding"),
    "padding-word": (_set("padding", "full"), ValueError, "padding"),
    "padding-huge": (_set("padding", 2**31), ValueError, "padding"),
    "padding-float": (_set("padding", 0.5), TypeError, "padding"),
    "padding-mode": (_set("padding_mode", "mirror"), ValueError, "padding_mode"),
    "groups-zero": (_set("groups", 0), ValueError, "groups"),
    "groups-float": (_set("groups", 1.0), TypeError, "groups"),
    "groups-mismatch": (_set("groups", 7), ValueError, "groups|channel"),
    "algorithm": (_top("algorithm", "fft"), ValueError, "algorithm"),
    "activation": (_top("activation", "relu7"), ValueError, "activation"),
    "input-extra-dim": (_x(lambda x, nd, q: x[None, None]), ValueError, "input"),
    "input-too-few-dims": (_x(lambda x, nd, q: x.reshape(-1)), ValueError, "input"),
    "input-zero-spatial": (_x(lambda x, nd, q: x[..., :0]), ValueError, "input"),
    "input-channels": (_x(lambda x, nd, q: np.concatenate([x, x[:, :1]], axis=1)), ValueError,
                       "channel|input|weight"),
    "input-int": (_x(lambda x, nd, q: np.zeros(x.shape, np.int32)), TypeError,
                  "input.*dtype|dtype.*input"),
    "input-complex": (_x(lambda x, nd, q: x.astype(np.complex64)), TypeError, "input"),
    "input-none": (_x(lambda x, nd, q: None), TypeError, "input"),
    "input-string": (_x(lambda x, nd, q: "x"), TypeError, "input"),
    "input-other-context": (_x(lambda x, nd, q: cla.to_device(q, np.ascontiguousarray(x))),
                            ValueError, "input.*context"),
    "weight-extra-dim": (_w(lambda w, nd: w[None]), ValueError, "weight"),
    "weight-zero-kernel": (_w(lambda w, nd: w[..., :0]), ValueError, "weight"),
    "weight-mixed-dtype": (_w(lambda w, nd: w.astype(np.float64 if w.dtype == np.float32
                                                    else np.float32)), TypeError, "dtype"),
    "bias-length": (_bias(lambda w: np.ones(w.shape[0] + 1, w.dtype)), ValueError, "bias"),
    "bias-2d": (_bias(lambda w: np.ones((1, w.shape[0]), w.dtype)), ValueError, "bias"),
    "bias-int": (_bias(lambda w: np.ones(w.shape[0], np.int64)), TypeError, "dtype"),
    "workspace-limit": (_top("workspace_limit", 0), ValueError, "workspace_limit"),
}


@_settings(80)
@given(nd=st.sampled_from([1, 2, 3]), mutation=st.sampled_from(sorted(MUTATIONS)),
       case=st.data())
def test_conv_invalid_arguments_name_the_argument(clconv, dev, other_queue, nd, mutation, case):
    case = fit_case(dev, case.draw(conv_cases(nd, valid=True)), "x", "w", "b")
    assume(case["x"].shape[0] >= 1 or mutation != "input-channels")
    mutate, exc, pattern = MUTATIONS[mutation]
    case["x_kind"], case["w_kind"], case["unbatched"] = "c", "c", False
    mutate(case, nd, other_queue)
    kwargs = dict(case["kw"], algorithm=case["algorithm"], activation=case["activation"])
    if "workspace_limit" in case:
        kwargs["workspace_limit"] = case["workspace_limit"]
    with pytest.raises(exc, match=re.compile(pattern, re.DOTALL)):
        getattr(clconv, f"conv{nd}d")(case["x"], case["w"], case["b"], **kwargs)


ARG = st.one_of(st.none(), st.booleans(), st.integers(-3, 4), st.integers(2**31 - 2, 2**64),
                st.floats(allow_nan=True), st.text(max_size=3), st.sampled_from(["same", "valid"]),
                st.lists(st.integers(-2, 4), max_size=4).map(tuple),
                st.integers(0, 3).map(np.int64))
LEGAL = (ValueError, TypeError, MemoryError)


def _rejected_as_the_references_do(err: Exception, torch_call, oracle_call) -> None:
    """clconv refused a generated call: that is right only where the reference refuses it too.

    A MemoryError must name the bytes that do not fit (the arguments are huge paddings/strides,
    which no reference could allocate either). A ValueError/TypeError must be shared by torch
    (the semantics clconv follows) where it is importable, else by the numpy oracle."""
    if isinstance(err, MemoryError):
        assert "bytes" in str(err), err
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        torch_call = None
    if "2**31" in str(err) or "too large" in str(err):
        return  # 32-bit coordinates (clconv's own documented limit); references would allocate
    for call in (torch_call, oracle_call):
        if call is None:
            continue
        try:
            call()
        except Exception:  # noqa: BLE001 (any refusal by the reference agrees)
            return
        raise AssertionError(f"clconv refused a call ({type(err).__name__}: {err}) that "
                             f"{'torch' if call is torch_call else 'the oracle'} accepts")


def _torch_conv2d(x, w, stride, padding, dilation, groups, padding_mode):
    import torch
    import torch.nn.functional as F

    def call():
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        if padding_mode != "zeros":
            if not isinstance(padding_mode, str) or padding_mode not in ("reflect", "replicate",
                                                                          "circular"):
                raise ValueError(f"padding_mode {padding_mode!r}")
            conv = torch.nn.Conv2d(w.shape[1] * groups, w.shape[0], w.shape[2:], stride,
                                   padding, dilation, groups, bias=False,
                                   padding_mode=padding_mode)
            conv.weight.data = wt
            with torch.no_grad():
                return conv(xt)
        return F.conv2d(xt, wt, None, stride, padding, dilation, groups)
    return call


@_settings(60)
@given(x_dims=st.lists(st.integers(0, 4), min_size=0, max_size=6),
       w_dims=st.lists(st.integers(0, 3), min_size=0, max_size=6),
       stride=ARG, padding=ARG, dilation=ARG, groups=ARG, padding_mode=ARG, algorithm=ARG)
def test_conv2d_arbitrary_arguments_never_crash(clconv, x_dims, w_dims, stride, padding, dilation,
                                                groups, padding_mode, algorithm):
    """Anything at all: either the oracle's result or ValueError/TypeError/MemoryError."""
    x = np.random.default_rng(len(x_dims)).standard_normal(x_dims).astype(np.float32)
    w = np.random.default_rng(len(w_dims)).standard_normal(w_dims).astype(np.float32)
    try:
        got = clconv.conv2d(x, w, None, stride, padding, dilation, groups,
                            padding_mode=padding_mode, algorithm=algorithm)
    except LEGAL as err:
        if algorithm not in clconv.ALGORITHMS or (algorithm == "winograd" and "winograd" in str(err)):
            return  # clconv's own argument: no reference has it
        _rejected_as_the_references_do(
            err, _torch_conv2d(x, w, stride, padding, dilation, groups, padding_mode),
            lambda: ref.conv_nd(x, w, None, _oracle_stride(stride), padding, dilation, groups,
                                padding_mode))
        return
    want = ref.conv_nd(x, w, None, _oracle_stride(stride), padding, dilation, groups, padding_mode)
    check_result(got, want, "c", np.dtype(np.float32), conv_reduction(w), conv_magnitude(x, w))


def _oracle_stride(stride):
    """Strides past these tiny inputs give one output position; numpy slices need them < 2**63."""
    if isinstance(stride, tuple):
        return tuple(min(int(s), 99) for s in stride)
    return min(int(stride), 99)


# ---------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------


@st.composite
def unfold_cases(draw, nd: int = 2):
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    stride = tuple(draw(st.sampled_from([1, 2, 3, HUGE_STRIDE])) for _ in range(nd))
    size = tuple(draw(st.integers(1, 7)) for _ in range(nd))
    assume(all(d * (k - 1) + 1 <= s + 2 * p for d, k, s, p in zip(dilation, kernel, size, padding)))
    return {"n": draw(st.integers(0, 3)), "c": draw(st.integers(1, 3)), "size": size,
            "kw": {"kernel_size": kernel, "dilation": dilation, "padding": padding,
                   "stride": stride},
            "unbatched": draw(st.integers(0, 5)) == 0,
            "dtype": np.dtype(draw(st.sampled_from([np.float32, np.float64]))),
            "kind": draw(st.sampled_from(KINDS)), "special": draw(st.sampled_from(
                ["finite", "finite", "nan", "inf"])), "seed": draw(st.integers(0, 2**32 - 1))}


def _oracle_kw(kw):
    return dict(kw, stride=tuple(min(s, 99) for s in kw["stride"]))


@_settings(30)
@given(case=unfold_cases())
def test_im2col_valid_matches_reference(clconv, dev, case):
    case["dtype"] = on_device(dev, case["dtype"])
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["c"], *case["size"])).astype(case["dtype"])
    if case["special"] != "finite" and x.size:
        x.flat[int(rng.integers(x.size))] = np.nan if case["special"] == "nan" else np.inf
    if case["unbatched"] and case["n"]:
        x = x[0]
    kw = case["kw"]
    got = clconv.im2col(present(x, case["kind"], dev.queue), kw["kernel_size"], kw["dilation"],
                        kw["padding"], kw["stride"])
    want = ref.unfold(x, **_oracle_kw(kw))
    check_result(got, want, case["kind"], case["dtype"], exact=True)


@_settings(30)
@given(case=unfold_cases())
def test_col2im_valid_matches_reference(clconv, dev, case):
    case["dtype"] = on_device(dev, case["dtype"])
    kw = case["kw"]
    blocks = math.prod(ref.conv_output_size(s, k, st_, p, p, d) for s, k, st_, p, d in zip(
        case["size"], kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"]))
    rows = case["c"] * math.prod(kw["kernel_size"])
    rng = np.random.default_rng(case["seed"])
    cols = rng.standard_normal((case["n"], rows, blocks)).astype(case["dtype"])
    if case["unbatched"] and case["n"]:
        cols = cols[0]
    got = clconv.col2im(present(cols, case["kind"], dev.queue), case["size"], kw["kernel_size"],
                        kw["dilation"], kw["padding"], kw["stride"])
    want = ref.fold(cols, case["size"], **_oracle_kw(kw))
    check_result(got, want, case["kind"], case["dtype"], reduction=math.prod(kw["kernel_size"]),
                 magnitude=float(np.abs(cols).max(initial=1.0)))


UNFOLD_MUTATIONS = {
    "kernel-zero": ({"kernel_size": 0}, ValueError, "kernel_size"),
    "kernel-too-large": ({"kernel_size": 99}, ValueError, "kernel"),
    "kernel-float": ({"kernel_size": 2.0}, TypeError, "kernel_size"),
    "stride-zero": ({"stride": 0}, ValueError, "stride"),
    "stride-too-long": ({"stride": (1, 1, 1)}, (ValueError, TypeError), "stride"),
    "dilation-negative": ({"dilation": -1}, ValueError, "dilation"),
    "padding-negative": ({"padding": (0, -1)}, ValueError, "padding"),
    "padding-huge": ({"padding": 2**31}, ValueError, "padding"),
    "padding-string": ({"padding": "same"}, TypeError, "padding"),
}


@_settings(40)
@given(case=unfold_cases(), mutation=st.sampled_from(sorted(UNFOLD_MUTATIONS)),
       op=st.sampled_from(["im2col", "col2im"]))
def test_im2col_col2im_invalid_arguments(clconv, case, mutation, op):
    change, exc, pattern = UNFOLD_MUTATIONS[mutation]
    kw = dict(case["kw"], **change)
    x = np.ones((1, case["c"], *case["size"]), np.float32)
    with pytest.raises(exc, match=pattern):
        if op == "im2col":
            clconv.im2col(x, kw["kernel_size"], kw["dilation"], kw["padding"], kw["stride"])
        else:
            cols = clconv.im2col(x, **case["kw"])
            clconv.col2im(cols, case["size"], kw["kernel_size"], kw["dilation"], kw["padding"],
                          kw["stride"])


@_settings(40)
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=5),
       output_size=st.one_of(st.integers(-1, 6), st.tuples(st.integers(0, 6), st.integers(0, 6))),
       kernel_size=ARG, dilation=ARG, padding=ARG, stride=ARG, op=st.sampled_from(["im2col",
                                                                                 "col2im"]))
def test_im2col_col2im_arbitrary_arguments_never_crash(clconv, shape, output_size, kernel_size,
                                                       dilation, padding, stride, op):
    a = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    try:
        if op == "im2col":
            got = clconv.im2col(a, kernel_size, dilation, padding, stride)
        else:
            got = clconv.col2im(a, output_size, kernel_size, dilation, padding, stride)
    except LEGAL as err:
        def torch_call():
            import torch
            import torch.nn.functional as F

            at = torch.from_numpy(a)
            if op == "im2col":
                return F.unfold(at, kernel_size, dilation, padding, stride)
            return F.fold(at, output_size, kernel_size, dilation, padding, stride)

        def oracle_call():
            s = _oracle_stride(stride)
            if op == "im2col":
                return ref.unfold(a, kernel_size, dilation, padding, s)
            return ref.fold(a, output_size, kernel_size, dilation, padding, s)

        _rejected_as_the_references_do(err, torch_call, oracle_call)
        return
    stride = _oracle_stride(stride)
    if op == "im2col":
        want = ref.unfold(a, kernel_size, dilation, padding, stride)
        check_result(got, want, "c", np.dtype(np.float32), exact=True)
    else:
        want = ref.fold(a, output_size, kernel_size, dilation, padding, stride)
        check_result(got, want, "c", np.dtype(np.float32), reduction=100,
                     magnitude=float(np.abs(a).max(initial=1.0)))


# ---------------------------------------------------------------------------
# transposed convolutions and gradients (skipped with a reason where absent)
# ---------------------------------------------------------------------------


def _require(clconv, name):
    if not hasattr(clconv, name):
        pytest.skip(f"clconv.{name} does not exist (yet)")


@st.composite
def transpose_cases(draw, nd: int):
    groups = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    size = tuple(draw(st.integers(1, 5 if nd < 3 else 3)) for _ in range(nd))
    out = [(i - 1) * s - 2 * p + d * (k - 1) + op + 1
           for i, s, p, d, k, op in zip(size, stride, padding, dilation, kernel, output_padding)]
    assume(all(o >= 1 for o in out))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    cin = groups * draw(st.integers(1, 2))
    x = rng.standard_normal((draw(st.integers(0, 2)), cin, *size)).astype(dtype)
    w = rng.standard_normal((cin, draw(st.integers(1, 2)), *kernel)).astype(dtype)
    b = rng.standard_normal(w.shape[1] * groups).astype(dtype) if draw(st.booleans()) else None
    return {"x": x, "w": w, "b": b, "kind": draw(st.sampled_from(KINDS)),
            "kw": {"stride": stride, "padding": padding, "output_padding": output_padding,
                   "groups": groups, "dilation": dilation}}


@_settings(25)
@given(nd=st.sampled_from([1, 2, 2, 3]), case=st.data())
def test_conv_transpose_valid_matches_reference(clconv, dev, nd, case):
    _require(clconv, f"conv_transpose{nd}d")
    case = fit_case(dev, case.draw(transpose_cases(nd)), "x", "w", "b")
    x, w, b = case["x"], case["w"], case["b"]
    got = getattr(clconv, f"conv_transpose{nd}d")(present(x, case["kind"], dev.queue), w, b,
                                                  **case["kw"])
    want = ref.conv_transpose_nd(x, w, b, **case["kw"])
    check_result(got, want, case["kind"], x.dtype, reduction=math.prod(w.shape[1:]) * 4,
                 magnitude=conv_magnitude(x, w, b))


@_settings(30)
@given(nd=st.sampled_from([1, 2, 3]), case=st.data())
def test_conv_transpose_invalid_output_padding(clconv, dev, nd, case):
    _require(clconv, f"conv_transpose{nd}d")
    case = fit_case(dev, case.draw(transpose_cases(nd)), "x", "w", "b")
    kw = dict(case["kw"])
    kw["output_padding"] = tuple(max(s, d) for s, d in zip(kw["stride"], kw["dilation"]))
    op = getattr(clconv, f"conv_transpose{nd}d")
    if case["x"].shape[0] == 0:  # torch checks it only for a non-empty batch
        assert op(case["x"], case["w"], case["b"], **kw).shape[0] == 0
        return
    with pytest.raises(ValueError, match="output_padding"):
        op(case["x"], case["w"], case["b"], **kw)


@_settings(20)
@given(nd=st.sampled_from([1, 2, 3]), case=st.data(), which=st.sampled_from(["input", "weight"]))
def test_conv_gradients_match_reference(clconv, dev, nd, case, which):
    _require(clconv, f"conv{nd}d_{which}")
    case = fit_case(dev, case.draw(conv_cases(nd, valid=True)), "x", "w", "b")
    case["kw"]["padding_mode"] = "zeros"
    x, w = case["x"], case["w"]
    kw = {k: case["kw"][k] for k in ("stride", "padding", "dilation", "groups")}
    if HUGE_STRIDE in np.atleast_1d(kw["stride"]):
        kw["stride"] = 2
        assume(not conv_rule_violations(x.shape[2:], w.shape[2:], (2,) * nd, kw["dilation"],
                                        kw["padding"], "zeros"))
    y_shape = ref.conv_nd(x, w, None, **kw).shape
    g = np.random.default_rng(7).standard_normal(y_shape).astype(x.dtype)
    g_in = present(g, case["x_kind"], dev.queue)
    if which == "input":
        got = getattr(clconv, f"conv{nd}d_input")(x.shape, w, g_in, **kw)
        want = ref.conv_nd_input(x.shape, w, g, **kw)
        magnitude, reduction = conv_magnitude(g, w), g.shape[1] * math.prod(w.shape[2:])
    else:
        x_in = present(x, case["x_kind"], dev.queue)
        got = getattr(clconv, f"conv{nd}d_weight")(x_in, w.shape, g_in, **kw)
        want = ref.conv_nd_weight(x, w.shape, g, **kw)
        magnitude, reduction = conv_magnitude(x, g), max(1, g.shape[0] * math.prod(g.shape[2:]))
    check_result(got, want, case["x_kind"], x.dtype, reduction, magnitude)
