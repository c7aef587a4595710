"""Every registered convolution algorithm against the float64 oracle, through the public API.

One matrix: each case (1-3 d, every padding mode, (lo, hi) padding pairs, groups with depthwise and
a channel multiplier, dilation, strides, 1x1, unbatched, bias or not, a fused activation and
residual) runs with every name in clconv.ALGORITHMS but 'auto', in float32 and float64 (skipped
where the device lacks it).
An algorithm that validates the case (`clconv.ops.conv_select.algorithm_unsupported` says None) must
match `reference.conv_nd` within the tolerance policy of tests/conftest.py; one that rejects it
must raise ValueError naming itself (the call and `clconv.workspace_size`), so that no path ships
untested and no rejection is silent.

Kernel builds dominate the time: sizes are kernel arguments, so the cases share kernel sizes
(3 and 1), strides (1 and 2) and one activation, and differ in what only changes arguments.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference
from helpers import random_array
from tolerance import assert_close, conv_magnitude, conv_reduction

from clconv.ops.conv_select import ALGORITHMS

#: The fused epilogue of the cases that take one: act(conv + bias + residual).
ACTIVATION = ("leaky_relu", 0.1)

#: (id, nd, input shape, weight shape, keyword arguments, bias, epilogue (activation + residual)).
CASES = [
    ("2d-pad1-bias", 2, (2, 4, 9, 10), (6, 4, 3, 3), {"padding": 1}, True, False),
    ("2d-unbatched-valid", 2, (4, 9, 10), (6, 4, 3, 3), {"padding": "valid"}, False, True),
    ("2d-s2-d2-reflect", 2, (2, 4, 11, 12), (6, 4, 3, 3),
     {"stride": 2, "padding": (2, 1), "dilation": 2, "padding_mode": "reflect"}, False, True),
    ("2d-groups2-circular", 2, (2, 4, 8, 8), (6, 2, 3, 3),
     {"padding": 1, "groups": 2, "padding_mode": "circular"}, True, True),
    ("2d-depthwise-same-replicate", 2, (2, 4, 8, 9), (4, 1, 3, 3),
     {"padding": "same", "groups": 4, "padding_mode": "replicate"}, True, True),
    ("2d-multiplier-s2", 2, (1, 3, 9, 8), (6, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 3},
     False, False),
    ("2d-1x1", 2, (2, 8, 6, 7), (5, 8, 1, 1), {}, True, True),
    ("2d-1x1-s2", 2, (2, 8, 12, 14), (4, 8, 1, 1), {"stride": 2}, False, False),
    ("2d-1x1-pad1-groups2", 2, (1, 4, 5, 6), (6, 2, 1, 1), {"padding": 1, "groups": 2}, True,
     False),
    ("1d-d2", 1, (2, 4, 20), (6, 4, 3), {"padding": 2, "dilation": 2}, True, True),
    ("1d-s2-groups2-reflect", 1, (2, 4, 21), (4, 2, 3),
     {"stride": 2, "padding": 1, "groups": 2, "padding_mode": "reflect"}, False, False),
    ("3d-groups2-s121", 3, (1, 4, 5, 6, 7), (4, 2, 3, 3, 3),
     {"padding": 1, "stride": (1, 2, 1), "groups": 2}, True, True),
    ("3d-1x1", 3, (2, 3, 4, 5, 6), (5, 3, 1, 1, 1), {}, False, True),
    # (lo, hi) pairs: ONNX's asymmetric pads
    ("2d-pairs-s2-reflect", 2, (2, 4, 9, 10), (6, 4, 3, 3),
     {"padding": ((0, 2), (1, 0)), "stride": 2, "padding_mode": "reflect"}, True, True),
    ("2d-pairs-depthwise", 2, (1, 4, 7, 7), (4, 1, 3, 3),
     {"padding": ((0, 2), (2, 0)), "groups": 4}, True, True),
    ("1d-pairs-groups2", 1, (2, 4, 20), (4, 2, 3), {"padding": ((3, 0),), "groups": 2}, True,
     False),
    ("3d-pairs-circular", 3, (1, 2, 5, 6, 7), (3, 2, 3, 3, 3),
     {"padding": ((1, 0), (0, 2), (1, 1)), "padding_mode": "circular"}, False, True),
]
NAMES = [a for a in ALGORITHMS if a != "auto"]


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _geometry(nd, x_shape, w_shape, kw):
    from clconv.ops.geometry import conv_geometry

    batched = x_shape if len(x_shape) == nd + 2 else (1, *x_shape)
    return conv_geometry(nd, batched, w_shape, kw.get("stride", 1), kw.get("padding", 0),
                         kw.get("dilation", 1), kw.get("groups", 1), kw.get("padding_mode", "zeros"),
                         asymmetric=True)


def _oracle(x, w, b, r, kw):
    y = reference.conv_nd(x, w, b, **kw)
    if r is not None:
        y = y + r.astype(np.float64)
        y = np.where(y >= 0, y, ACTIVATION[1] * y)
    return y


@pytest.mark.parametrize("algorithm", NAMES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_algorithm_matches_oracle(clconv, dev, dtype, rng, to_cl, case, algorithm):
    from clconv.blas import clblast
    from clconv.ops.conv_select import algorithm_unsupported

    _, nd, x_shape, w_shape, kw, has_bias, epilogue = case
    if algorithm in ("im2col", "winograd") and not clblast.available():
        pytest.skip(f"algorithm={algorithm!r} needs CLBlast: {clblast.missing_reason()}")
    x = random_array(rng, x_shape, dtype)
    w = random_array(rng, w_shape, dtype)
    b = random_array(rng, (w_shape[0],), dtype) if has_bias else None
    geo = _geometry(nd, x_shape, w_shape, kw)
    out_shape = geo.output_shape if len(x_shape) == nd + 2 else geo.output_shape[1:]
    r = random_array(rng, out_shape, dtype) if epilogue else None
    conv = getattr(clconv, f"conv{nd}d")
    extra = {"activation": ACTIVATION, "residual": to_cl(r)} if epilogue else {}
    why = algorithm_unsupported(dev, geo, algorithm, dtype)
    if why is not None:
        with pytest.raises(ValueError, match=f"algorithm='{algorithm}' cannot compute"):
            conv(to_cl(x), to_cl(w), to_cl(b), algorithm=algorithm, **kw, **extra)
        with pytest.raises(ValueError, match=f"algorithm='{algorithm}' cannot compute"):
            clconv.workspace_size(x_shape, w_shape, algorithm=algorithm, dtype=dtype, **kw)
        return
    got = conv(to_cl(x), to_cl(w), to_cl(b), algorithm=algorithm, **kw, **extra)
    assert got.dtype == dtype
    magnitude = conv_magnitude(x, w, b) + (float(np.abs(r).max()) if r is not None else 0.0)
    assert_close(got, _oracle(x, w, b, r, kw), dtype, conv_reduction(w, kw.get("groups", 1)),
                 magnitude, err_msg=f"algorithm={algorithm!r}, case {case[0]}")


def test_every_algorithm_is_exercised(clconv, dev):
    """Each registered algorithm computes at least one case of the matrix in float32 on this device,
    and each shape-specific one also rejects one (so both branches above run)."""
    from clconv.ops.conv_select import ALGORITHM_CLASSES, algorithm_unsupported

    assert set(NAMES) == set(ALGORITHM_CLASSES)
    for name in NAMES:
        verdicts = [algorithm_unsupported(dev, _geometry(nd, xs, ws, kw), name, np.float32)
                    for _, nd, xs, ws, kw, _, _ in CASES]
        assert any(v is None for v in verdicts), f"no case of the matrix runs {name!r}"
        if name in ("winograd", "depthwise", "pointwise", "splitk"):
            assert any(v is not None for v in verdicts), f"no case of the matrix rejects {name!r}"


@pytest.mark.parametrize("algorithm", NAMES)
def test_an_empty_batch_through_every_algorithm(clconv, dev, algorithm):
    """An empty batch gives an empty result through every algorithm that takes the layer, called
    directly and through a plan made for another batch (splitk's grid divided by it)."""
    from clconv.blas import clblast
    from clconv.ops.conv_select import algorithm_unsupported

    if algorithm in ("im2col", "winograd") and not clblast.available():
        pytest.skip(f"algorithm={algorithm!r} needs CLBlast: {clblast.missing_reason()}")
    for w_shape, kw in (((8, 4, 3, 3), {"padding": 1}), ((8, 4, 1, 1), {}),
                        ((4, 1, 3, 3), {"padding": 1, "groups": 4})):
        x = np.ones((1, 4, 8, 8), np.float32)
        w = np.ones(w_shape, np.float32)
        if algorithm_unsupported(dev, _geometry(2, x.shape, w_shape, kw), algorithm,
                                 np.float32) is not None:
            continue
        want = (0, w_shape[0], 8, 8)
        assert clconv.conv2d(x[:0], w, algorithm=algorithm, **kw).shape == want
        plan = clconv.plan_conv2d(x.shape, w_shape, algorithm=algorithm, **kw)
        assert plan(x[:0], w).shape == want
        assert plan(x, w).shape == (1, *want[1:])
