"""Fused epilogues: y = act(conv(x) + bias + residual) in the kernels' store, for every activation,
every algorithm, 1-3 d, the transposed convolutions, float32 and float64; NaN/Inf propagation; bad
activations and residual shapes; clconv.fold_batchnorm against torch's eval Conv + BatchNorm.

The reference is torch.nn.functional in float64 (conv, + residual, then F.<activation>), compared
with the tolerance policy of tests/conftest.py (the activations' slopes are at most 1.5, so the
magnitude gets that factor). Shapes are small and chosen so that the packed GEMM's stores take both
their full-tile vector path and their masked edge path (C_out not a multiple of MR, columns not a
multiple of NR), and 'direct' both its vector interior (conv_grouped.cl) and conv_direct.cl.
Kernel builds dominate the time (each activation is a define: a program per activation and
kernel), so the activation x algorithm product is not complete: every activation runs 'direct'
(conv_grouped.cl's vector interior and scalar edges, conv_direct.cl) and one of the two packed-GEMM
paths (their shared vector tile store, TILE_STORE), which between them apply it in every form the
kernels have (common.cl's ACT_APPLY on a scalar, a VACC vector and a tile row); the other
algorithms, whose kernels apply the same macros, take the activations in turn (each gets about a
sixth of them, parametrised ones included).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import as_kind, import_torch, random_array
from tolerance import assert_close, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


#: Every activation spec: the plain names and the parametrised tuples.
ACTIVATIONS = [None, "relu", "relu6", "silu", "gelu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
               "leaky_relu", "elu", ("leaky_relu", 0.2), ("elu", 0.7), ("gelu", "tanh"),
               ("gelu", "none"), ("clamp", -0.5, 0.8), ("clamp", None, 0.3), ("clamp", -0.2, None),
               "mish", "selu", "softplus", ("softplus", 2.0, 1.0), "celu", ("celu", 0.5),
               "logsigmoid", "softsign", "tanhshrink", "hardshrink", ("hardshrink", 0.2),
               "softshrink", ("softshrink", 0.3)]


def act_id(act) -> str:
    return "none" if act is None else act if isinstance(act, str) else "-".join(map(str, act))


def torch_act(t, act):
    """torch's activation `act` (clconv's spec) applied to tensor t."""
    import torch
    import torch.nn.functional as F

    if act is None:
        return t
    name, *params = (act,) if isinstance(act, str) else act
    if name == "gelu":
        return F.gelu(t, approximate=params[0] if params else "none")
    if name == "leaky_relu":
        return F.leaky_relu(t, *params)
    if name == "elu":
        return F.elu(t, *params)
    if name == "celu":
        return F.celu(t, *params)
    if name == "softplus":
        return F.softplus(t, *params)
    if name in ("hardshrink", "softshrink"):
        return getattr(F, name)(t, *params)
    if name == "clamp":
        return torch.clamp(t, *params)
    return {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "sigmoid": torch.sigmoid,
            "tanh": torch.tanh, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
            "mish": F.mish, "selu": F.selu, "logsigmoid": F.logsigmoid, "softsign": F.softsign,
            "tanhshrink": F.tanhshrink}[name](t)


def reference(x, w, b, r, act, transposed=False, **kw):
    """torch in float64: act(conv(x, w) + b + r)."""
    torch = import_torch()
    import torch.nn.functional as F

    nd = np.ndim(w) - 2
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float64))
    op = getattr(F, f"conv_transpose{nd}d" if transposed else f"conv{nd}d")
    y = op(t(x), t(w), t(b), **kw)
    if r is not None:
        y = y + t(r)
    return torch_act(y, act).numpy()


def check(got, x, w, b, r, want, dtype, err=""):
    mag = conv_magnitude(x, w, b)
    if r is not None:
        mag = max(mag, float(np.max(np.abs(r))))
    assert np.asarray(got).dtype == dtype
    assert_close(got, want, dtype, conv_reduction(w), 1.5 * mag, err_msg=err)


def conv_fn(clconv, nd, transposed=False):
    return getattr(clconv, f"conv_transpose{nd}d" if transposed else f"conv{nd}d")


def output_shape(x, w, transposed=False, **kw):
    return reference(x, w, None, None, None, transposed, **kw).shape


#: Shapes per (nd, kind): (x, w, kwargs). 'dense' takes the GEMM paths (C_out = 7: a full 6-row
#: tile and an edge row; 2 * 7 * 19 columns: full and partial NR panels), 'grouped' conv_grouped.cl's
#: vectors (and 'depthwise'), 'wide' (C_in/groups = 17) conv_direct.cl, 'pointwise' the 1x1 paths.
CASES = {
    (2, "dense"): ((2, 3, 7, 19), (7, 3, 3, 3), {"padding": 1}),
    (2, "grouped"): ((1, 4, 5, 21), (4, 1, 3, 3), {"padding": 1, "groups": 4}),
    (2, "wide"): ((1, 17, 4, 5), (3, 17, 3, 3), {"padding": 1}),
    (2, "pointwise"): ((2, 5, 4, 9), (7, 5, 1, 1), {}),
    (1, "dense"): ((2, 3, 23), (5, 3, 3), {"padding": 1, "stride": 2}),
    (1, "grouped"): ((2, 3, 23), (3, 1, 3), {"padding": 1, "groups": 3}),
    (1, "pointwise"): ((2, 5, 20), (6, 5, 1), {}),
    (3, "dense"): ((1, 2, 4, 5, 7), (7, 2, 3, 3, 3), {"padding": 1}),
    (3, "grouped"): ((1, 2, 4, 5, 11), (2, 1, 3, 3, 3), {"padding": 1, "groups": 2}),
    (3, "pointwise"): ((1, 3, 2, 3, 5), (7, 3, 1, 1, 1), {}),
}
#: 'direct' runs both its kernels; any other algorithm the first kind of KIND_ORDER it computes
#: (it refuses the others with a ValueError saying it "cannot compute" them).
ALGORITHM_KINDS = {"direct": ("grouped", "wide")}
KIND_ORDER = ("dense", "grouped", "pointwise")
PACKED = ("implicit", "im2col_packed")


def algorithm_names(clconv):
    """Every algorithm of clconv.ops.conv_select.ALGORITHMS but 'auto'; 'im2col' and 'winograd' only
    with CLBlast."""
    from clconv.blas import clblast

    return [a for a in clconv.ops.conv_select.ALGORITHMS
            if a != "auto" and (clblast.available() or a not in ("im2col", "winograd"))]


def other_packed(algorithm: str, turn: int) -> bool:
    """Whether `algorithm` is the packed path that sits out this turn: the two packed-GEMM paths
    share their store (TILE_STORE), so they take the activations in turn."""
    return algorithm in PACKED and PACKED[turn % 2] != algorithm


def algorithms_in_turn(clconv, turn: int) -> list[str]:
    """The algorithms that run activation number `turn`: 'direct', a packed path, and one of the
    others in turn (see the module doc)."""
    names = algorithm_names(clconv)
    rest = [a for a in names if a != "direct" and a not in PACKED]
    return ["direct", PACKED[turn % 2], rest[turn % len(rest)]]


def run_checked(clconv, rng, nd, algorithm, act, dtype=np.float32, with_bias=True,
                with_residual=True) -> bool:
    """act(conv + bias + residual) by `algorithm` on its case(s) of CASES, against torch. False
    when the algorithm computes none of them."""
    ran = False
    for kind in ALGORITHM_KINDS.get(algorithm, KIND_ORDER):
        if (nd, kind) not in CASES:
            continue
        x_shape, w_shape, kw = CASES[nd, kind]
        x, w = random_array(rng, x_shape, dtype), random_array(rng, w_shape, dtype)
        b = random_array(rng, (w_shape[0],), dtype) if with_bias else None
        r = random_array(rng, output_shape(x, w, **kw), dtype) if with_residual else None
        try:
            got = conv_fn(clconv, nd)(x, w, b, algorithm=algorithm, activation=act, residual=r,
                                      **kw)
        except ValueError as err:
            if "cannot compute" in str(err) and algorithm not in ALGORITHM_KINDS:
                continue
            raise
        check(got, x, w, b, r, reference(x, w, b, r, act, **kw), dtype,
              f"{algorithm} {nd}-d {kind} {act}")
        ran = True
        if algorithm not in ALGORITHM_KINDS:
            break
    return ran


@pytest.mark.parametrize("act", ACTIVATIONS, ids=act_id)
def test_every_activation_in_every_kernel_form(clconv, dev, rng, act):
    for algorithm in algorithms_in_turn(clconv, ACTIVATIONS.index(act)):
        assert run_checked(clconv, rng, 2, algorithm, act), f"{algorithm}: no 2-d case"


def test_every_algorithm_takes_activations_in_turn(clconv):
    """The turns leave no algorithm out and give each several activations, parametrised ones
    among them."""
    runs: dict[str, list] = {}
    for i, act in enumerate(ACTIVATIONS):
        for algorithm in algorithms_in_turn(clconv, i):
            runs.setdefault(algorithm, []).append(act)
    assert set(runs) == set(algorithm_names(clconv))
    assert all(len(acts) >= 5 and any(isinstance(a, tuple) for a in acts)
               for acts in runs.values()), runs


@pytest.mark.parametrize("with_bias, with_residual", [(False, True), (True, False), (False, False)])
def test_bias_and_residual_optional(clconv, dev, rng, with_bias, with_residual):
    for k, algorithm in enumerate(algorithm_names(clconv)):
        if not other_packed(algorithm, 2 * with_bias + with_residual):
            act = ACTIVATIONS[(3 * k + 1) % len(ACTIVATIONS)]
            assert run_checked(clconv, rng, 2, algorithm, act, with_bias=with_bias,
                               with_residual=with_residual)


@pytest.mark.parametrize("nd", [1, 3])
def test_1d_3d(clconv, dev, rng, dtype, nd):
    ran = []
    for k, algorithm in enumerate(algorithm_names(clconv)):
        if not other_packed(algorithm, nd // 2 + (dtype == np.float64)):
            act = ACTIVATIONS[(5 * k + nd) % len(ACTIVATIONS)]
            if run_checked(clconv, rng, nd, algorithm, act, dtype):
                ran.append(algorithm)
    assert "direct" in ran and any(a in ran for a in PACKED)


def test_float64_2d(clconv, dev, rng):
    if not dev.fp64:
        pytest.skip(f"{dev.name} has no float64 support")
    for k, algorithm in enumerate(algorithm_names(clconv)):
        act = ACTIVATIONS[(7 * k + 2) % len(ACTIVATIONS)]
        assert run_checked(clconv, rng, 2, algorithm, act, np.float64), algorithm


TRANSPOSED = {
    1: ((2, 4, 9), (4, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1}),
    2: ((1, 4, 5, 6), (4, 3, 3, 3), {"stride": 2, "groups": 2}),
    3: ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), {"stride": (1, 2, 1)}),
}


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("act", [("leaky_relu", 0.1), "silu", ("clamp", -0.3, 0.4)], ids=act_id)
def test_transposed(clconv, dev, rng, dtype, nd, act):
    x_shape, w_shape, kw = TRANSPOSED[nd]
    x, w = random_array(rng, x_shape, dtype), random_array(rng, w_shape, dtype)
    c_out = w_shape[1] * kw.get("groups", 1)
    for b, with_r in ((random_array(rng, (c_out,), dtype), True), (None, True),
                      (random_array(rng, (c_out,), dtype), False)):
        r = random_array(rng, output_shape(x, w, True, **kw), dtype) if with_r else None
        got = conv_fn(clconv, nd, True)(x, w, b, activation=act, residual=r, **kw)
        want = reference(x, w, b, r, act, True, **kw)
        mag = max(conv_magnitude(x, w, b), 0 if r is None else float(np.max(np.abs(r))))
        # col2im sums up to prod(kernel) * C_in/groups products per element
        assert_close(got, want, dtype, conv_reduction(w) * x_shape[1], 1.5 * mag)


def test_plans_and_device_arrays(clconv, dev, rng, queue):
    """A plan made with a residual takes one on every call (device arrays in, device out); the
    transposed plan as well; unbatched input with an unbatched residual."""
    x, w = random_array(rng, (3, 3, 6, 17)), random_array(rng, (7, 3, 3, 3))
    b = random_array(rng, (7,))
    r = random_array(rng, (3, 7, 6, 17))
    plan = clconv.plan_conv2d(x.shape, w.shape, padding=1, activation="hardswish", residual=True)
    assert plan.has_residual and plan.operand_shapes["residual"] == r.shape
    got = plan(as_kind(x, "cl", queue), as_kind(w, "cl", queue), as_kind(b, "cl", queue),
               residual=as_kind(r, "cl", queue))
    assert not isinstance(got, np.ndarray)
    check(got.get(), x, w, b, r, reference(x, w, b, r, "hardswish", padding=1), np.float32)
    with pytest.raises(ValueError, match="residual"):
        plan(x, w, b)  # made with one: required
    plain = clconv.plan_conv2d(x.shape, w.shape, padding=1, activation="relu")
    with pytest.raises(ValueError, match="residual"):
        plain(x, w, b, residual=r)  # made without one
    # unbatched
    got = clconv.conv2d(x[0], w, b, padding=1, activation="tanh", residual=r[0])
    check(got, x[:1], w, b, r[:1], reference(x[:1], w, b, r[:1], "tanh", padding=1)[0],
          np.float32)
    wt = random_array(rng, (3, 2, 2, 2))
    rt = random_array(rng, output_shape(x, wt, True, stride=2))
    tplan = clconv.plan_conv_transpose2d(x.shape, wt.shape, False, 2, activation="sigmoid",
                                         residual=True)
    check(tplan(x, wt, residual=rt), x, wt, None, rt,
          reference(x, wt, None, rt, "sigmoid", True, stride=2), np.float32)


def test_warmup_plans_the_fused_call(clconv, dev, rng):
    """warmup(..., activation=, residual=True) makes the very plan the functional call then uses."""
    from clconv.ops.plan import plans

    act = ("leaky_relu", 0.3)
    clconv.warmup((2, 3, 6, 7), (4, 3, 3, 3), False, padding=1, activation=act, residual=True,
                  algorithm="direct")
    cache = plans(dev)
    misses = cache.misses
    x, w, b = random_array(rng, (2, 3, 6, 7)), random_array(rng, (4, 3, 3, 3)), None
    r = random_array(rng, (2, 4, 6, 7))
    got = clconv.conv2d(x, w, padding=1, activation=act, residual=r, algorithm="direct")
    assert cache.misses == misses
    check(got, x, w, b, r, reference(x, w, b, r, act, padding=1), np.float32)


def test_out_may_be_the_residual(clconv, dev, rng, queue):
    """out=residual (device arrays, in place: y = act(conv(x) + y)): paths that write the output
    before their epilogue (a GEMM into it, col2im) must not read the residual back overwritten."""
    from clconv.blas import clblast

    # one image: 'im2col' then runs its GEMM straight into the output (no folded staging)
    x, w = random_array(rng, (1, 3, 5, 9)), random_array(rng, (4, 3, 3, 3))
    r = random_array(rng, (1, 4, 5, 9))
    want = reference(x, w, None, r, "relu", padding=1)
    for algorithm in ["implicit"] + (["im2col"] if clblast.available() else []):
        rd = as_kind(r, "cl", queue)
        got = clconv.conv2d(as_kind(x, "cl", queue), as_kind(w, "cl", queue), padding=1,
                            algorithm=algorithm, activation="relu", residual=rd, out=rd)
        assert got is rd
        check(rd.get(), x, w, None, r, want, np.float32, algorithm)
    wt = random_array(rng, (3, 2, 3, 3))
    rt = random_array(rng, output_shape(x, wt, True, stride=2))
    rd = as_kind(rt, "cl", queue)
    clconv.conv_transpose2d(as_kind(x, "cl", queue), as_kind(wt, "cl", queue), stride=2,
                            residual=rd, out=rd)
    check(rd.get(), x, wt, None, rt, reference(x, wt, None, rt, None, True, stride=2),
          np.float32)


@pytest.mark.parametrize("algorithm", ["direct", "implicit", "im2col_packed", "im2col"])
def test_nan_inf_propagate(clconv, dev, rng, algorithm):
    """NaN and +-Inf in the input, the bias and the residual reach the activations as in torch
    (relu keeps NaN, silu(-inf) and gelu(-inf) are NaN, tanh(+-inf) = +-1, clamp keeps NaN...)."""
    from clconv.blas import clblast

    if algorithm == "im2col" and not clblast.available():
        pytest.skip("CLBlast (pyclblast) is not installed")
    x, w = random_array(rng, (1, 3, 5, 18)), random_array(rng, (7, 3, 1, 1))
    x[0, 0, 1, 3] = np.nan
    x[0, 1, 2, 5] = np.inf
    x[0, 2, 3, 7] = -np.inf
    b = random_array(rng, (7,))
    r = random_array(rng, (1, 7, 5, 18))
    r[0, 1, 4, 9] = np.nan
    r[0, 2, 0, 11] = np.inf
    r[0, 3, 1, 13] = -np.inf
    acts = ["relu", "silu", "gelu", "tanh", "sigmoid", ("clamp", -1, 1), "elu", "hardswish",
            "mish", "softplus", "selu"]
    if algorithm in PACKED:  # the packed store is shared: two each (vector and masked lanes)
        acts = acts[0:2] if algorithm == "implicit" else acts[4:6]
    torch = import_torch()
    linear = torch.from_numpy(reference(x, w, b, r, None).astype(np.float32))
    for act in acts:
        got = clconv.conv2d(x, w, b, algorithm=algorithm, activation=act, residual=r)
        want = reference(x, w, b, r, act)
        if act != "gelu":  # torch's float32 gelu(+inf): NaN on AVX-512, +inf on AVX2 (clconv)
            # where torch's float32 activation makes NaN of a special value, so does clconv's
            want[np.isnan(torch_act(linear, act).numpy())] = np.nan
        assert np.array_equal(np.isnan(got), np.isnan(want)), (algorithm, act)
        assert np.array_equal(np.isposinf(got), np.isposinf(want)), (algorithm, act)
        assert np.array_equal(np.isneginf(got), np.isneginf(want)), (algorithm, act)
        assert np.isnan(want).any()
        check(got, x, w, b, r, want, np.float32, f"{algorithm} {act}")


@pytest.mark.parametrize("act", [("leaky_relu", math.nan), ("elu", math.nan), ("celu", math.nan),
                                 ("clamp", math.nan, 1.0), ("clamp", None, math.nan),
                                 ("softplus", math.nan, 20.0), ("softplus", 1.0, math.nan),
                                 ("hardshrink", math.nan)])
def test_nan_parameters_compute_as_torch(clconv, dev, act):
    """NaN parameters are torch's too (a clamp with a NaN bound is NaN everywhere, a NaN slope
    NaN below zero): the function and the fused store give torch's values."""
    torch = import_torch()
    F = torch.nn.functional
    name, *params = act
    x = np.array([1.5, -1.0, np.nan, np.inf, -np.inf, -0.0, 0.0, 30.0], np.float32)
    t = torch.from_numpy(x)
    want = {"clamp": lambda: torch.clamp(t, *params),
            "softplus": lambda: F.softplus(t, *params)}.get(
        name, lambda: getattr(F, name)(t, *params))().numpy()
    fn = {"clamp": lambda: clconv.clamp(x, *params),
          "softplus": lambda: clconv.softplus(x, *params)}.get(
        name, lambda: getattr(clconv, name)(x, *params))
    np.testing.assert_array_equal(fn(), want)
    y = clconv.conv2d(x.reshape(1, 1, 2, 4), np.ones((1, 1, 1, 1), np.float32), activation=act)
    np.testing.assert_array_equal(y.reshape(-1), want)


@pytest.mark.parametrize("act, match", [
    ("gelu_tanh", "activation"), ("swish", "activation"), (("leaky_relu",), "leaky_relu"),
    (("gelu", "fast"), "gelu"), (("clamp", None, None), "clamp"), (("clamp", 0.0), "clamp"),
    (3, "activation"), (("relu", 1.0), "activation"), (("celu", 0.0), "celu"),
    (("softplus", 1.0), "softplus"), (("softshrink", float("nan")), "softshrink"),
    (("mish", 1.0), "activation")])
def test_bad_activation(clconv, rng, act, match):
    x, w = random_array(rng, (1, 2, 5, 5)), random_array(rng, (3, 2, 3, 3))
    with pytest.raises(TypeError, match="leaky_relu's negative_slope"):  # a parameter's type
        clconv.conv2d(x, w, activation=("leaky_relu", "x"))
    with pytest.raises(TypeError, match="leaky_relu's negative_slope"):
        clconv.leaky_relu(x, "x")
    with pytest.raises(ValueError, match=match):
        clconv.conv2d(x, w, activation=act)
    with pytest.raises(ValueError, match=match):
        clconv.plan_conv1d((1, 2, 5), (3, 2, 3), activation=act)
    with pytest.raises(ValueError, match=match):
        clconv.conv_transpose2d(x, random_array(rng, (2, 3, 3, 3)), activation=act)


def test_bad_residual(clconv, rng):
    x, w = random_array(rng, (2, 2, 5, 5)), random_array(rng, (3, 2, 3, 3))
    for shape in [(2, 3, 5, 5), (3, 3, 3), (1, 3, 3, 3), (2, 3, 3, 4)]:
        with pytest.raises(ValueError, match="residual"):
            clconv.conv2d(x, w, residual=random_array(rng, shape))
    with pytest.raises(ValueError, match="residual"):
        clconv.conv_transpose2d(x, random_array(rng, (2, 3, 3, 3)),
                                residual=random_array(rng, (2, 3, 5, 5)))
    with pytest.raises(TypeError, match="residual"):
        clconv.conv2d(x, w, residual=random_array(rng, (2, 3, 3, 3)).astype(np.float16))
    plan = clconv.plan_conv2d(x.shape, w.shape, residual=True)
    with pytest.raises(ValueError, match="residual"):
        plan(x, w, residual=random_array(rng, (2, 3, 3, 2)))
    with pytest.raises(TypeError, match="residual"):
        clconv.plan_conv2d(x.shape, w.shape, residual="yes")


# -- fold_batchnorm ---------------------------------------------------------------------------
def _bn(torch, nd, channels, affine=True):
    bn = getattr(torch.nn, f"BatchNorm{nd}d")(channels, affine=affine, eps=1e-3).double()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.3, 2)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    return bn.eval()


def _np(t):
    return None if t is None else t.detach().numpy()


@pytest.mark.parametrize("nd, groups, transposed, bias, affine", [
    (2, 1, False, True, True), (1, 1, False, False, True), (3, 1, False, True, False),
    (2, 2, False, True, True), (2, 1, True, True, True), (1, 2, True, False, True),
    (3, 2, True, True, False)])
def test_fold_batchnorm(clconv, rng, queue, nd, groups, transposed, bias, affine):
    torch = import_torch()
    torch.manual_seed(nd * 10 + groups)
    kind = "ConvTranspose" if transposed else "Conv"
    conv = getattr(torch.nn, f"{kind}{nd}d")(4, 6, 3, groups=groups, bias=bias).double().eval()
    bn = _bn(torch, nd, 6, affine)
    x = torch.from_numpy(random_array(rng, (2, 4) + (5,) * nd, np.float64))
    want = bn(conv(x)).detach().numpy()
    args = (_np(conv.weight), _np(conv.bias), _np(bn.running_mean), _np(bn.running_var),
            _np(bn.weight), _np(bn.bias), bn.eps)
    w, b = clconv.fold_batchnorm(*args, transposed=transposed, groups=groups)
    assert isinstance(w, np.ndarray) and w.shape == conv.weight.shape and b.shape == (6,)
    got = conv_fn(clconv, nd, transposed)(x.numpy().astype(np.float32), w.astype(np.float32),
                                          b.astype(np.float32), groups=groups)
    assert_close(got, want, np.float32, 4 * 27, max(1.0, float(np.abs(want).max())))
    # device arrays in (computed there): the same values, device arrays out
    wd, bd = clconv.fold_batchnorm(as_kind(args[0].astype(np.float32), "cl", queue),
                                   *[None if a is None else a.astype(np.float32)
                                     for a in args[1:6]], bn.eps, transposed=transposed,
                                   groups=groups)
    assert not isinstance(wd, np.ndarray)
    np.testing.assert_allclose(wd.get(), w.astype(np.float32), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bd.get(), b.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_fused_block(clconv, rng):
    """A ResNet block's tail in one call: relu(bn(conv(x)) + skip) == conv with the folded weights,
    residual=skip, activation='relu'."""
    torch = import_torch()
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False).double().eval()
    bn = _bn(torch, 2, 4)
    x = torch.from_numpy(random_array(rng, (2, 4, 6, 6), np.float64))
    skip = random_array(rng, (2, 4, 6, 6), np.float64)
    want = torch.relu(bn(conv(x)) + torch.from_numpy(skip)).detach().numpy()
    w, b = clconv.fold_batchnorm(_np(conv.weight), None, _np(bn.running_mean),
                                 _np(bn.running_var), _np(bn.weight), _np(bn.bias), bn.eps)
    got = clconv.conv2d(x.numpy().astype(np.float32), w.astype(np.float32), b.astype(np.float32),
                        padding=1, activation="relu", residual=skip.astype(np.float32))
    assert_close(got, want, np.float32, 36, max(1.0, float(np.abs(want).max())))


def test_fold_batchnorm_errors(clconv, rng):
    w, c = random_array(rng, (6, 2, 3, 3)), np.ones(6, np.float32)
    with pytest.raises(ValueError, match="running_mean"):
        clconv.fold_batchnorm(w, None, np.ones(5), c, None, None)
    with pytest.raises(ValueError, match="running_var"):
        clconv.fold_batchnorm(w, None, c, None, None, None)
    with pytest.raises(ValueError, match="gamma"):
        clconv.fold_batchnorm(w, None, c, c, np.ones(3), None)
    with pytest.raises(ValueError, match="bias"):
        clconv.fold_batchnorm(w, np.ones(2), c, c, None, None)
    with pytest.raises(ValueError, match="eps"):
        clconv.fold_batchnorm(w, None, c, c, None, None, eps=-1.0)
    with pytest.raises(ValueError, match="groups"):
        clconv.fold_batchnorm(random_array(rng, (5, 3, 3)), None, np.ones(6), np.ones(6), None,
                              None, transposed=True, groups=2)
    with pytest.raises(ValueError, match="weight"):
        clconv.fold_batchnorm(np.ones(6), None, c, c, None, None)


@pytest.mark.parametrize("bounds", [(1.0, -1.0), (0.5, 0.5)])
def test_clamp_with_min_above_max_is_max_as_torch(clconv, dev, rng, bounds):
    """torch.clamp(v, lo, hi) is min(max(v, lo), hi): hi everywhere when lo > hi; the fused
    clamp (which tests v < lo first) and the standalone one agree."""
    torch = import_torch()
    x, w = random_array(rng, (2, 4, 5, 5)), random_array(rng, (3, 4, 3, 3))
    want = torch.clamp(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w)),
                       *bounds).numpy()
    np.testing.assert_array_equal(clconv.conv2d(x, w, activation=("clamp", *bounds)), want)
    np.testing.assert_array_equal(clconv.linear(x.reshape(2, -1)[:, :36], w.reshape(3, 36),
                                                activation=("clamp", *bounds)),
                                  np.full((2, 3), bounds[1], np.float32))
    np.testing.assert_array_equal(clconv.clamp(x, *bounds), torch.clamp(
        torch.from_numpy(x), *bounds).numpy())
