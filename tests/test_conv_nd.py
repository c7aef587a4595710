"""clconv.conv1d and clconv.conv3d against the float64 oracle (``reference.conv_nd``).

The same argument set as conv2d (see test_conv2d.py), in small products: geometry (stride x padding
x dilation, per-dim tuples), groups x padding modes with bias, shapes, dtypes, input kinds,
unbatched and empty inputs, every bad argument, and torch when importable. Both algorithms each
time.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyopencl.array as cla
import pytest
import reference as ref
from helpers import as_kind, random_array
from tolerance import assert_close, conv_magnitude, conv_reduction

ALGORITHMS = ("im2col", "direct")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def run_and_check(clconv, rng, x_shape, w_shape, *, bias=False, dtype=np.float32, kind="numpy",
                  queue=None, **kwargs):
    nd = len(w_shape) - 2
    x = random_array(rng, x_shape, dtype)
    w = random_array(rng, w_shape, dtype)
    b = random_array(rng, (w_shape[0],), dtype) if bias else None
    got = getattr(clconv, f"conv{nd}d")(as_kind(x, kind, queue), as_kind(w, kind, queue),
                                        as_kind(b, "cl" if kind == "cl" else "numpy", queue),
                                        **kwargs)
    ref_kw = {k: v for k, v in kwargs.items() if k != "algorithm"}
    want = ref.conv_nd(x, w, b, **ref_kw)
    assert isinstance(got, cla.Array if kind == "cl" else np.ndarray)
    assert got.dtype == np.dtype(dtype)
    assert got.shape == want.shape
    assert_close(got, want, dtype, reduction=conv_reduction(w), magnitude=conv_magnitude(x, w, b))
    return got, want


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------

CASES_1D = [(s, p, d) for s, p, d in itertools.product([1, 2, 3], [0, 2, "same", "valid"], [1, 2])
            if not (p == "same" and s != 1)]
CASES_3D = [
    (1, 0, 1), (2, 1, 1), ((1, 2, 1), (0, 1, 2), (2, 1, 1)), (1, "same", (1, 2, 1)),
    (1, "valid", 2), ((2, 1, 3), 1, (1, 1, 2)),
]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("stride, padding, dilation", CASES_1D, ids=lambda v: str(v))
def test_geometry_1d(clconv, rng, stride, padding, dilation, algorithm):
    run_and_check(clconv, rng, (2, 3, 11), (2, 3, 4), stride=stride, padding=padding,
                  dilation=dilation, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("stride, padding, dilation", CASES_3D,
                         ids=lambda v: str(v).replace(" ", ""))
def test_geometry_3d(clconv, rng, stride, padding, dilation, algorithm):
    run_and_check(clconv, rng, (2, 2, 5, 6, 5), (3, 2, 2, 3, 2), stride=stride, padding=padding,
                  dilation=dilation, algorithm=algorithm)


# ---------------------------------------------------------------------------
# groups x padding modes (with bias)
# ---------------------------------------------------------------------------

GROUPINGS = {"g1": (4, 4, 1), "g2": (4, 6, 2), "depthwise": (4, 8, 4)}


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("grouping", list(GROUPINGS))
def test_groups_and_padding_modes(clconv, rng, nd, grouping, padding_mode, algorithm):
    cin, cout, groups = GROUPINGS[grouping]
    spatial, kernel, pad = {1: ((7,), (3,), 2), 3: ((3, 4, 3), (3, 2, 2), (1, 1, 2))}[nd]
    run_and_check(clconv, rng, (2, cin) + spatial, (cout, cin // groups) + kernel, bias=True,
                  padding=pad, groups=groups, padding_mode=padding_mode, algorithm=algorithm)


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_same_even_kernel_padding_modes(clconv, rng, nd, padding_mode):
    spatial, kernel = {1: ((6,), (4,)), 3: ((3, 4, 5), (2, 3, 4))}[nd]
    run_and_check(clconv, rng, (1, 2) + spatial, (2, 2) + kernel, padding="same",
                  padding_mode=padding_mode)


# ---------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------

SHAPE_CASES = {
    "1d-pointwise": ((4, 3, 7), (5, 3, 1), {"bias": True}),
    "1d-kernel-eq-input": ((2, 2, 5), (3, 2, 5), {}),
    "1d-length1": ((2, 3, 1), (2, 3, 1), {"bias": True}),
    "1d-stride-gt-kernel": ((1, 2, 10), (3, 2, 2), {"stride": 4, "padding": 1}),
    "3d-pointwise": ((2, 3, 2, 3, 4), (4, 3, 1, 1, 1), {"bias": True}),
    "3d-pointwise-stride2": ((1, 2, 3, 4, 5), (2, 2, 1, 1, 1), {"stride": 2}),
    "3d-kernel-eq-input": ((1, 2, 2, 3, 2), (3, 2, 2, 3, 2), {"bias": True}),
    "3d-depth1": ((2, 2, 1, 5, 5), (3, 2, 1, 3, 3), {"padding": (0, 1, 1)}),
    "3d-groups-n1": ((1, 6, 3, 3, 3), (6, 2, 2, 2, 2), {"groups": 3}),
}


@pytest.mark.parametrize("algorithm", ("auto",) + ALGORITHMS)
@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_shapes(clconv, rng, case, algorithm):
    x_shape, w_shape, kwargs = SHAPE_CASES[case]
    run_and_check(clconv, rng, x_shape, w_shape, algorithm=algorithm, **kwargs)


# ---------------------------------------------------------------------------
# dtypes, kinds, unbatched, empty
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_dtypes(clconv, rng, dtype, nd, algorithm):
    spatial, kernel = {1: ((9,), (3,)), 3: ((3, 5, 4), (2, 3, 2))}[nd]
    run_and_check(clconv, rng, (2, 4) + spatial, (4, 2) + kernel, bias=True, dtype=dtype, groups=2,
                  stride=2, padding=1, padding_mode="reflect", algorithm=algorithm)


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("kind", ["numpy", "strided", "transposed", "cl"])
def test_input_kinds(clconv, dev, rng, nd, kind):
    spatial, kernel = {1: ((9,), (3,)), 3: ((3, 5, 4), (2, 3, 2))}[nd]
    run_and_check(clconv, rng, (2, 3) + spatial, (4, 3) + kernel, bias=True, padding=1, kind=kind,
                  queue=dev.queue)


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", ["numpy", "cl"])
def test_unbatched(clconv, dev, rng, nd, algorithm, kind):
    spatial, kernel = {1: ((9,), (3,)), 3: ((3, 5, 4), (2, 3, 2))}[nd]
    got, _ = run_and_check(clconv, rng, (3,) + spatial, (2, 3) + kernel, bias=True, padding=1,
                           algorithm=algorithm, kind=kind, queue=dev.queue)
    assert got.ndim == nd + 1


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_batch(clconv, rng, nd, algorithm):
    spatial, kernel = {1: ((9,), (3,)), 3: ((3, 5, 4), (2, 3, 2))}[nd]
    x = np.zeros((0, 3) + spatial, np.float32)
    w = random_array(rng, (4, 3) + kernel)
    got = getattr(clconv, f"conv{nd}d")(x, w, stride=2, padding=1, algorithm=algorithm)
    assert got.shape == (0,) + ref.conv_nd(np.zeros((1, 3) + spatial), w, None, 2, 1).shape[1:]
    assert got.dtype == np.float32


# ---------------------------------------------------------------------------
# bad arguments: each message names the argument
# ---------------------------------------------------------------------------

BAD_1D = [
    ({"x": (1, 2, 3, 5)}, ValueError, "input must have 2 .* or 3"),
    ({"w": (3, 2, 3, 3)}, ValueError, "weight must have 3 dims"),
    ({"x": (1, 3, 8)}, ValueError, "channel"),
    ({"stride": (1, 1)}, ValueError, "stride"),
    ({"stride": 0}, ValueError, "stride"),
    ({"padding": (1, 1)}, ValueError, "padding"),
    ({"padding": -2}, ValueError, "padding"),
    ({"padding": "same", "stride": 2}, ValueError, "same"),
    ({"dilation": 0}, ValueError, "dilation"),
    ({"groups": 2}, ValueError, "groups|channel"),
    ({"groups": -1}, ValueError, "groups"),
    ({"padding_mode": "edge"}, ValueError, "padding_mode"),
    ({"padding": 8, "padding_mode": "reflect"}, ValueError, "reflect"),
    ({"padding": 9, "padding_mode": "circular"}, ValueError, "circular"),
    ({"dilation": 4}, ValueError, "kernel size"),
    ({"bias": (4,)}, ValueError, "bias"),
    ({"algorithm": "fft"}, ValueError, "algorithm"),
]


@pytest.mark.parametrize("case", range(len(BAD_1D)))
def test_bad_arguments_1d(clconv, case):
    o = dict(BAD_1D[case][0])
    x = np.zeros(o.pop("x", (1, 2, 8)), np.float32)
    w = np.zeros(o.pop("w", (3, 2, 3)), np.float32)
    b = o.pop("bias", None)
    with pytest.raises(BAD_1D[case][1], match=BAD_1D[case][2]):
        clconv.conv1d(x, w, None if b is None else np.zeros(b, np.float32), **o)


BAD_3D = [
    ({"x": (1, 2, 4)}, ValueError, "input must have 4 .* or 5"),
    ({"x": (1, 4, 4, 4)}, ValueError, "channel"),  # unbatched (C, D, H, W) with the wrong C
    ({"w": (3, 2, 2, 2)}, ValueError, "weight must have 5 dims"),
    ({"stride": (1, 2)}, ValueError, "stride"),
    ({"padding": (1, 2)}, ValueError, "padding"),
    ({"dilation": (1, 1, 0)}, ValueError, "dilation"),
    ({"groups": 1.5}, TypeError, "groups"),
    ({"w": (3, 2, 5, 2, 2)}, ValueError, "kernel size"),
]


@pytest.mark.parametrize("case", range(len(BAD_3D)))
def test_bad_arguments_3d(clconv, case):
    o = dict(BAD_3D[case][0])
    x = np.zeros(o.pop("x", (1, 2, 4, 4, 4)), np.float32)
    w = np.zeros(o.pop("w", (3, 2, 2, 2, 2)), np.float32)
    with pytest.raises(BAD_3D[case][1], match=BAD_3D[case][2]):
        clconv.conv3d(x, w, **o)


# ---------------------------------------------------------------------------
# optional cross-check against torch
# ---------------------------------------------------------------------------

TORCH_CASES = [
    ((2, 4, 9), 6, 3, {"stride": 2, "padding": 1, "groups": 2, "padding_mode": "reflect"}),
    ((1, 3, 10), 2, 4, {"padding": "same", "dilation": 2, "padding_mode": "circular"}),
    ((2, 2, 3, 4, 5), 4, (2, 3, 2),
     {"stride": (1, 2, 1), "padding": 1, "padding_mode": "replicate"}),
    ((1, 4, 3, 3, 3), 4, 2, {"groups": 4, "padding": "same"}),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case", range(len(TORCH_CASES)))
def test_matches_torch(clconv, rng, case):
    torch = pytest.importorskip("torch")
    x_shape, cout, k, kwargs = TORCH_CASES[case]
    nd = len(x_shape) - 2
    m = getattr(torch.nn, f"Conv{nd}d")(x_shape[1], cout, k, **kwargs)
    x = random_array(rng, x_shape)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    w = m.weight.detach().numpy()
    b = m.bias.detach().numpy()
    got = getattr(clconv, f"conv{nd}d")(x, w, b, stride=m.stride, padding=kwargs.get("padding", 0),
                                        dilation=m.dilation, groups=m.groups,
                                        padding_mode=m.padding_mode)
    assert_close(got, want.astype(np.float64), np.float32, reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w, b))
