"""Self-tests of the numpy oracle in ``reference.py``.

Three layers:

1. tiny hand-computed cases (no dependencies),
2. algebraic identities between the oracle's functions (adjointness of
   conv / conv_input / conv_weight, conv == weight @ unfold, ...),
3. when ``torch`` is importable, a parametrized cross-check against
   ``torch.nn.functional`` / ``torch.nn.grad`` in float64.

None of these tests touch ``clconv``.
"""

import itertools

import numpy as np
import pytest
import reference as ref
from helpers import import_torch

# ---------------------------------------------------------------------------
# 1. hand-computed cases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("zeros", [0, 0, 1, 2, 3, 0, 0]),
        ("reflect", [3, 2, 1, 2, 3, 2, 1]),
        ("replicate", [1, 1, 1, 2, 3, 3, 3]),
        ("circular", [2, 3, 1, 2, 3, 1, 2]),
    ],
)
def test_pad_nd_1d_hand(mode, expected):
    x = np.array([[[1.0, 2.0, 3.0]]])
    np.testing.assert_array_equal(ref.pad_nd(x, [(2, 2)], mode)[0, 0], expected)


def test_pad_nd_asymmetric_2d():
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    got = ref.pad_nd(x, [(1, 0), (0, 2)], "replicate")[0, 0]
    np.testing.assert_array_equal(got, [[0, 1, 1, 1], [0, 1, 1, 1], [2, 3, 3, 3]])


def test_pad_nd_rejects_reflect_wider_than_input():
    with pytest.raises(ValueError):
        ref.pad_nd(np.zeros((1, 1, 3)), [(3, 0)], "reflect")


def test_conv1d_hand():
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    w = np.array([[[1.0, 0.0, -1.0]]])
    np.testing.assert_array_equal(ref.conv_nd(x, w)[0, 0], [-2, -2])
    np.testing.assert_array_equal(ref.conv_nd(x, w, padding=1)[0, 0], [-2, -2, -2, 3])
    np.testing.assert_array_equal(ref.conv_nd(x, w, padding=1, stride=2)[0, 0], [-2, -2])
    np.testing.assert_array_equal(ref.conv_nd(x, w, b=[10.0])[0, 0], [8, 8])


def test_conv1d_dilation_hand():
    x = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    w = np.array([[[1.0, 1.0]]])
    np.testing.assert_array_equal(ref.conv_nd(x, w, dilation=2)[0, 0], [4, 6, 8])


def test_conv1d_same_even_kernel_pads_high_side():
    """PyTorch 'same' with an even kernel: the extra zero goes on the right."""
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    w = np.array([[[1.0, 10.0]]])
    np.testing.assert_array_equal(ref.conv_nd(x, w, padding="same")[0, 0], [21, 32, 43, 4])
    assert ref.resolve_padding("same", (4,), (1,)) == [(1, 2)]
    assert ref.resolve_padding("same", (3, 2), (2, 3)) == [(2, 2), (1, 2)]
    assert ref.resolve_padding("valid", (3, 3), (1, 1)) == [(0, 0), (0, 0)]


def test_conv1d_circular_hand():
    x = np.array([[[1.0, 2.0, 3.0]]])
    w = np.array([[[1.0, 1.0, 1.0]]])
    # padded: [3, 1, 2, 3, 1]
    np.testing.assert_array_equal(
        ref.conv_nd(x, w, padding=1, padding_mode="circular")[0, 0], [6, 6, 6]
    )


def test_conv2d_hand():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(ref.conv_nd(x, w)[0, 0], [[8, 12], [20, 24]])


def test_conv2d_groups_hand():
    x = np.arange(8.0).reshape(1, 2, 2, 2)
    w = np.array([2.0, 3.0]).reshape(2, 1, 1, 1)
    got = ref.conv_nd(x, w, groups=2)
    np.testing.assert_array_equal(got[0, 0], 2 * x[0, 0])
    np.testing.assert_array_equal(got[0, 1], 3 * x[0, 1])


def test_conv2d_unbatched_matches_batched():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 6))
    w = rng.standard_normal((2, 3, 3, 2))
    np.testing.assert_allclose(ref.conv_nd(x, w, padding=1), ref.conv_nd(x[None], w, padding=1)[0])


def test_conv2d_nan_propagates_only_to_covering_windows():
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 0, 0] = np.nan
    w = np.ones((1, 1, 3, 3))
    out = ref.conv_nd(x, w, padding=1)[0, 0]
    expected = np.zeros((5, 5), bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(np.isnan(out), expected)


def test_unfold_hand():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    cols = ref.unfold(x, 2)
    np.testing.assert_array_equal(
        cols[0], [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    )


def test_unfold_channel_major_order():
    x = np.stack([np.zeros((2, 2)), np.ones((2, 2))])[None]  # (1, 2, 2, 2)
    cols = ref.unfold(x, (1, 2))
    assert cols.shape == (1, 4, 2)
    np.testing.assert_array_equal(cols[0, :2], 0)
    np.testing.assert_array_equal(cols[0, 2:], 1)


def test_fold_overlap_count_hand():
    ones = np.ones((1, 1, 3, 3))
    counts = ref.fold(ref.unfold(ones, 2), (3, 3), 2)
    np.testing.assert_array_equal(counts[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


def test_fold_with_padding_drops_border_contributions():
    ones = np.ones((1, 1, 2, 2))
    counts = ref.fold(ref.unfold(ones, 3, padding=1), (2, 2), 3, padding=1)
    np.testing.assert_array_equal(counts[0, 0], [[4, 4], [4, 4]])


def test_fold_unbatched():
    cols = np.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(ref.fold(cols, (3, 3), 2), ref.fold(cols[None], (3, 3), 2)[0])


def test_conv_transpose1d_hand():
    x = np.array([[[1.0, 2.0]]])
    w = np.array([[[1.0, 1.0, 1.0]]])
    np.testing.assert_array_equal(ref.conv_transpose_nd(x, w, stride=2)[0, 0], [1, 1, 3, 2, 2])
    np.testing.assert_array_equal(
        ref.conv_transpose_nd(x, w, stride=2, padding=1)[0, 0], [1, 3, 2]
    )
    np.testing.assert_array_equal(
        ref.conv_transpose_nd(x, w, stride=2, output_padding=1)[0, 0], [1, 1, 3, 2, 2, 0]
    )
    np.testing.assert_array_equal(
        ref.conv_transpose_nd(x, w, stride=2, b=[1.0])[0, 0], [2, 2, 4, 3, 3]
    )


def test_conv1d_grads_hand():
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    w = np.array([[[1.0, 0.0, -1.0]]])
    g = np.array([[[1.0, 10.0]]])
    # d/dx sum(g * conv(x, w)): x[i] receives g[p] * w[i - p]
    np.testing.assert_array_equal(
        ref.conv_nd_input(x.shape, w, g)[0, 0], [1, 10, -1, -10]
    )
    # d/dw: gw[k] = sum_p g[p] * x[p + k]
    np.testing.assert_array_equal(ref.conv_nd_weight(x, w.shape, g)[0, 0], [21, 32, 43])


# ---------------------------------------------------------------------------
# 2. identities between oracle functions
# ---------------------------------------------------------------------------

GRAD_CASES = [
    # (nsp, N, Cin, Cout, spatial, kernel, stride, padding, dilation, groups)
    (1, 2, 2, 3, (7,), (3,), 2, 1, 1, 1),
    (2, 1, 4, 2, (6, 5), (3, 2), (2, 1), (1, 0), (1, 2), 2),
    (2, 2, 3, 3, (5, 5), (3, 3), 1, "same", 2, 3),
    (3, 1, 2, 4, (4, 5, 3), (2, 3, 2), (1, 2, 1), 1, 1, 2),
]


def _grad_operands(case, seed: int):
    """(x, w, y = conv_nd(x, w), g standard normal of y's shape) of a GRAD_CASES-style case."""
    _nsp, N, Cin, Cout, sp, k, stride, padding, dilation, groups = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, Cin) + sp)
    w = rng.standard_normal((Cout, Cin // groups) + k)
    y = ref.conv_nd(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x, w, y, rng.standard_normal(y.shape)


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"{c[0]}d")
def test_conv_input_and_weight_are_adjoint(case):
    """<conv(x, w), g> == <x, conv_input(g, w)> == <w, conv_weight(x, g)>."""
    *_, stride, padding, dilation, groups = case
    x, w, y, g = _grad_operands(case, seed=1)
    gx = ref.conv_nd_input(x.shape, w, g, stride, padding, dilation, groups)
    gw = ref.conv_nd_weight(x, w.shape, g, stride, padding, dilation, groups)
    assert gx.shape == x.shape and gw.shape == w.shape
    lhs = np.vdot(y, g)
    np.testing.assert_allclose(np.vdot(x, gx), lhs, rtol=1e-12)
    np.testing.assert_allclose(np.vdot(w, gw), lhs, rtol=1e-12)


@pytest.mark.parametrize("case", GRAD_CASES[:2] + GRAD_CASES[3:], ids=lambda c: f"{c[0]}d")
def test_conv_transpose_equals_conv_input(case):
    """conv_transpose with the conv weight is the input gradient of conv."""
    nsp, N, Cin, Cout, sp, k, stride, padding, dilation, groups = case
    stride = ref.ntuple(stride, nsp)
    padding = ref.ntuple(padding, nsp)
    dilation = ref.ntuple(dilation, nsp)
    rng = np.random.default_rng(2)
    w = rng.standard_normal((Cout, Cin // groups) + k)
    out_sp = tuple(
        ref.conv_output_size(s, kk, st, p, p, d)
        for s, kk, st, p, d in zip(sp, k, stride, padding, dilation)
    )
    g = rng.standard_normal((N, Cout) + out_sp)
    # output_padding recovers the input size lost to the floor in conv's formula
    op = tuple(
        s - ((o - 1) * st - 2 * p + d * (kk - 1) + 1)
        for s, o, st, p, d, kk in zip(sp, out_sp, stride, padding, dilation, k)
    )
    got = ref.conv_transpose_nd(g, w, None, stride, padding, op, groups, dilation)
    want = ref.conv_nd_input((N, Cin) + sp, w, g, stride, padding, dilation, groups)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride, padding, dilation", [(1, 0, 1), (2, 1, 1), ((2, 1), (1, 2), (2, 1))])
def test_conv2d_equals_weight_matmul_unfold(stride, padding, dilation):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    y = ref.conv_nd(x, w, stride=stride, padding=padding, dilation=dilation)
    cols = ref.unfold(x, (3, 2), dilation, padding, stride)
    np.testing.assert_allclose((w.reshape(4, -1) @ cols).reshape(y.shape), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_mode_equals_pad_then_valid(mode):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 5, 6))
    w = rng.standard_normal((3, 2, 3, 3))
    got = ref.conv_nd(x, w, padding=(1, 2), padding_mode=mode)
    want = ref.conv_nd(ref.pad_nd(x, [(1, 1), (2, 2)], mode), w)
    np.testing.assert_array_equal(got, want)


def test_fold_is_adjoint_of_unfold():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 6, 5))
    args = {"kernel_size": (3, 2), "dilation": (1, 2), "padding": (1, 1), "stride": (2, 1)}
    cols = ref.unfold(x, **args)
    c = rng.standard_normal(cols.shape)
    np.testing.assert_allclose(np.vdot(cols, c), np.vdot(x, ref.fold(c, (6, 5), **args)), rtol=1e-12)


def test_unfold_fold_3d():
    x = np.arange(2 * 4 * 3 * 5, dtype=float).reshape(1, 2, 4, 3, 5)
    cols = ref.unfold(x, (2, 2, 3))
    assert cols.shape == (1, 2 * 12, 3 * 2 * 3)
    # the first row is the (0, 0, 0) kernel offset of channel 0
    np.testing.assert_array_equal(cols[0, 0], x[0, 0, :3, :2, :3].ravel())
    counts = ref.fold(ref.unfold(np.ones_like(x), (2, 2, 3)), (4, 3, 5), (2, 2, 3))
    assert counts.shape == x.shape
    assert counts[0, 0, 1, 1, 2] == 2 * 2 * 3


# ---------------------------------------------------------------------------
# 3. cross-check against torch (optional)
# ---------------------------------------------------------------------------


def _torch():
    return import_torch()


def _conv_cases():
    """(nsp, N, Cin, Cout, spatial, kernel, stride, padding, dilation, groups, mode, bias)."""
    cases = []
    geoms = {
        1: [((9,), (3,)), ((6,), (2,)), ((5,), (5,))],
        2: [((7, 6), (3, 3)), ((5, 8), (2, 3)), ((4, 4), (1, 1))],
        3: [((5, 4, 6), (3, 2, 3)), ((3, 3, 3), (1, 3, 2))],
    }
    for nsp, glist in geoms.items():
        for (sp, k), (stride, padding, dilation), groups, mode in itertools.product(
            glist,
            [(1, 0, 1), (1, 1, 1), (2, 1, 1), (1, "same", 1), (1, "same", 2), (1, "valid", 1), (2, 0, 2)],
            [1, 2],
            ["zeros", "reflect", "replicate", "circular"],
        ):
            if (padding == 0 or padding == "valid") and mode != "zeros":
                continue  # no padding: the mode is irrelevant
            extent = [dilation * (kk - 1) + 1 for kk in k]
            pad_each = [sum(p) for p in ref.resolve_padding(padding, k, ref.ntuple(dilation, nsp))]
            if any(e > s + p for e, s, p in zip(extent, sp, pad_each)):
                continue
            if mode == "reflect" and any(max(p) >= s for p, s in zip(ref.resolve_padding(padding, k, ref.ntuple(dilation, nsp)), sp)):
                continue
            cases.append((nsp, 2, 2 * groups, 2 * groups, sp, k, stride, padding, dilation, groups, mode, groups == 1))
    return cases


CONV_CASES = _conv_cases()


def _case_id(c):
    nsp, _N, _Cin, _Cout, sp, k, stride, padding, dilation, groups, mode, bias = c
    return f"{nsp}d-s{sp}-k{k}-st{stride}-p{padding}-d{dilation}-g{groups}-{mode}-b{int(bias)}"


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", CONV_CASES, ids=_case_id)
def test_conv_nd_matches_torch(case):
    torch = _torch()
    nsp, N, Cin, Cout, sp, k, stride, padding, dilation, groups, mode, bias = case
    rng = np.random.default_rng(6)
    x = rng.standard_normal((N, Cin) + sp)
    w = rng.standard_normal((Cout, Cin // groups) + k)
    b = rng.standard_normal(Cout) if bias else None
    cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[nsp]
    m = cls(Cin, Cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups,
            bias=bias, padding_mode=mode).double()
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(w))
        if bias:
            m.bias.copy_(torch.from_numpy(b))
        want = m(torch.from_numpy(x)).numpy()
    got = ref.conv_nd(x, w, b, stride, padding, dilation, groups, mode)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("pads", [[(1, 2)], [(2, 0), (1, 1)], [(1, 1), (0, 2), (2, 1)]])
def test_pad_nd_matches_torch(mode, pads):
    torch = _torch()
    nsp = len(pads)
    x = np.random.default_rng(7).standard_normal((1, 2) + (3, 4, 5)[:nsp])
    flat = [v for lo_hi in reversed(pads) for v in lo_hi]  # F.pad wants last dim first
    want = torch.nn.functional.pad(torch.from_numpy(x), flat, mode=mode).numpy()
    np.testing.assert_array_equal(ref.pad_nd(x, pads, mode), want)


FOLD_CASES = [
    # (C, H, W, kernel, dilation, padding, stride)
    (1, 3, 3, 2, 1, 0, 1),
    (2, 5, 6, (2, 3), 1, 0, 1),
    (3, 6, 5, 3, 1, 1, 2),
    (2, 7, 7, (3, 2), (2, 1), (1, 2), (2, 1)),
    (1, 4, 5, 1, 1, 0, (1, 2)),
    (2, 5, 5, 5, 1, 0, 1),
    (2, 6, 6, 2, 2, 1, 3),
]


@pytest.mark.parametrize("case", FOLD_CASES, ids=str)
def test_unfold_fold_match_torch(case):
    torch = _torch()
    F = torch.nn.functional
    C, H, W, k, d, p, s = case
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, C, H, W))
    want = F.unfold(torch.from_numpy(x), k, dilation=d, padding=p, stride=s).numpy()
    got = ref.unfold(x, k, d, p, s)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ref.unfold(x[0], k, d, p, s), want[0])
    cols = rng.standard_normal(want.shape)
    want_f = F.fold(torch.from_numpy(cols), (H, W), k, dilation=d, padding=p, stride=s).numpy()
    np.testing.assert_allclose(ref.fold(cols, (H, W), k, d, p, s), want_f, rtol=1e-12, atol=1e-12)
    want_f1 = F.fold(torch.from_numpy(cols[0]), (H, W), k, dilation=d, padding=p, stride=s).numpy()
    np.testing.assert_allclose(ref.fold(cols[0], (H, W), k, d, p, s), want_f1, rtol=1e-12, atol=1e-12)


TRANSPOSE_CASES = [
    # (nsp, Cin, Cout, spatial, kernel, stride, padding, output_padding, groups, dilation)
    (1, 2, 3, (5,), (3,), 2, 1, 1, 1, 1),
    (2, 2, 2, (4, 3), (3, 2), 1, 0, 0, 1, 1),
    (2, 4, 6, (3, 4), (3, 3), (2, 1), (1, 0), (1, 0), 2, (1, 2)),
    (2, 3, 3, (3, 3), (2, 2), 3, 1, 2, 3, 1),
    (2, 2, 4, (4, 4), (3, 3), 2, 2, 0, 1, 2),
    (3, 2, 2, (3, 2, 3), (2, 2, 3), (1, 2, 2), (0, 1, 1), (0, 1, 0), 1, 1),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv_transpose_matches_torch(case):
    torch = _torch()
    nsp, Cin, Cout, sp, k, stride, padding, op, groups, dilation = case
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, Cin) + sp)
    w = rng.standard_normal((Cin, Cout // groups) + k)
    b = rng.standard_normal(Cout)
    fn = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d,
          3: torch.nn.functional.conv_transpose3d}[nsp]
    want = fn(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=stride,
              padding=padding, output_padding=op, groups=groups, dilation=dilation).numpy()
    got = ref.conv_transpose_nd(x, w, b, stride, padding, op, groups, dilation)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


GRAD_TORCH_CASES = [
    # (nsp, N, Cin, Cout, spatial, kernel, stride, padding, dilation, groups)
    (2, 2, 2, 3, (5, 6), (3, 3), 1, 1, 1, 1),
    (2, 1, 4, 4, (7, 6), (3, 2), (2, 1), (1, 0), (1, 2), 2),
    (2, 2, 3, 6, (6, 6), (2, 2), 2, 0, 1, 3),   # stride drops the last row/col
    (2, 1, 2, 2, (5, 5), (3, 3), 1, 2, 2, 1),
    (1, 2, 2, 2, (8,), (3,), 3, 1, 1, 2),
    (3, 1, 2, 2, (4, 4, 3), (2, 3, 2), (2, 1, 1), (1, 1, 0), 1, 1),
]


@pytest.mark.parametrize("case", GRAD_TORCH_CASES, ids=str)
def test_conv_grads_match_torch_nn_grad(case):
    torch = _torch()
    nsp, *_, stride, padding, dilation, groups = case
    x, w, _, g = _grad_operands(case, seed=10)
    grad = torch.nn.grad
    fin = {1: grad.conv1d_input, 2: grad.conv2d_input, 3: grad.conv3d_input}[nsp]
    fw = {1: grad.conv1d_weight, 2: grad.conv2d_weight, 3: grad.conv3d_weight}[nsp]
    tx, tw, tg = (torch.from_numpy(a) for a in (x, w, g))
    want_x = fin(x.shape, tw, tg, stride, padding, dilation, groups).numpy()
    want_w = fw(tx, w.shape, tg, stride, padding, dilation, groups).numpy()
    got_x = ref.conv_nd_input(x.shape, w, g, stride, padding, dilation, groups)
    got_w = ref.conv_nd_weight(x, w.shape, g, stride, padding, dilation, groups)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_w, want_w, rtol=1e-10, atol=1e-10)
