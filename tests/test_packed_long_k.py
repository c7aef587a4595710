"""Long-K layers on clconv's packed GEMM paths ('implicit', 'im2col_packed') against the float64
oracle, through the public API, on every device.

Mesa's llvmpipe ends every loop of a work-item once 65535 iterations have run in all (gallivm's
loop limiter, LP_MAX_TGSI_LOOP_ITERATIONS), silently: the micro-kernel's K loop (~27 iterations
of its loops a k step there) was cut after K ~ 2400 per work-item, and the outputs came out short
by ~100-300 (a (1, 960, 7, 7) x (160, 960, 1, 1) layer, a (1, 512, 7, 7) x (64, 512, 3, 3) one).
`Device.loop_limit` measures the cap and clconv.blas.packed.k_ranges then takes K in several
launches. The cases here need those launches on llvmpipe; the tests that force a small cap run
the same multi-launch path on every device (partial sums through the output, epilogue last).
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import reference
from helpers import random_array
from tolerance import assert_close, conv_magnitude, conv_reduction

#: (id, input shape, weight shape, keyword arguments, bias, fused epilogue (residual + relu)).
CASES = [
    ("1x1-k960", (1, 960, 7, 7), (160, 960, 1, 1), {}, True, False),
    ("3x3-k4608", (1, 512, 7, 7), (64, 512, 3, 3), {"padding": 1}, False, True),
    ("3x3-groups2-s2-batch2", (2, 256, 9, 9), (32, 128, 3, 3),
     {"padding": 1, "stride": 2, "groups": 2}, True, True),
]
ALGORITHMS = ["implicit", "im2col_packed"]


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _check(clconv, rng, to_cl, dtype, case, algorithm):
    _, x_shape, w_shape, kw, has_bias, epilogue = case
    x = random_array(rng, x_shape, dtype)
    w = random_array(rng, w_shape, dtype)
    b = random_array(rng, (w_shape[0],), dtype) if has_bias else None
    ref = reference.conv_nd(x, w, b, **kw)
    extra = {}
    r = None
    if epilogue:
        r = random_array(rng, ref.shape, dtype)
        ref = np.maximum(ref + r.astype(np.float64), 0.0)
        extra = {"activation": "relu", "residual": to_cl(r)}
    got = clconv.conv2d(to_cl(x), to_cl(w), to_cl(b), algorithm=algorithm, **kw, **extra)
    assert got.dtype == dtype
    magnitude = conv_magnitude(x, w, b) + (float(np.abs(r).max()) if r is not None else 0.0)
    assert_close(got, ref, dtype, conv_reduction(w), magnitude,
                 err_msg=f"algorithm={algorithm!r}, case {case[0]}")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_long_k_matches_oracle(clconv, dev, dtype, rng, to_cl, case, algorithm):
    _check(clconv, rng, to_cl, dtype, case, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", CASES[:2], ids=[c[0] for c in CASES[:2]])
def test_forced_loop_cap_matches_oracle(clconv, dev, rng, to_cl, monkeypatch, case, algorithm):
    """The K-split launches on any device: a cap of 20000 iterations makes ~25-80 launches."""
    monkeypatch.setattr(dev, "_loop_limit", 20000)
    monkeypatch.setattr(dev, "plans", None)  # plans of this test only, made under the cap
    _check(clconv, rng, to_cl, np.dtype(np.float32), case, algorithm)


def test_packed_gemm_long_k(dev, rng, to_cl):
    """clconv.blas.packed.gemm with a K of one work-item past llvmpipe's cap (one A panel)."""
    from clconv.blas import packed

    m, n, k = 6, 16, 3000
    a = random_array(rng, (m, k), np.float32)
    b = random_array(rng, (k, n), np.float32)
    c = to_cl(np.full((m, n), 1.0, np.float32))
    packed.gemm(dev, m, n, k, to_cl(a), 0, 0, to_cl(b), 0, 0, c, 0, 0, beta=0.5)
    ref = a.astype(np.float64) @ b + 0.5
    assert_close(c, ref, np.float32, k, float(np.abs(a).max() * np.abs(b).max()))


@pytest.mark.parametrize("limit", [None, 65535, 20000])
def test_k_ranges_cover_k_under_the_cap(limit):
    """k_ranges: K whole without a cap; else consecutive ranges that cover K, each within the cap
    by the micro-kernel's and the caller's loop counts, several for a long K."""
    from clconv.blas import packed

    fake = types.SimpleNamespace(loop_limit=limit)
    tile = packed.Tile(6, 16, 8)
    for k, row_loops, launch_loops, most in [(4608, 0, 0, None), (4608, 132, 900, 512),
                                             (7, 0, 0, None), (1, 132, 900, 512)]:
        ranges = packed.k_ranges(fake, tile, k, row_loops, launch_loops, most)
        if limit is None:
            assert ranges == [(0, k)]
            continue
        assert ranges[0][0] == 0 and ranges[-1][1] == k
        assert all(r0 < r1 for r0, r1 in ranges)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        for r0, r1 in ranges:
            loops = (r1 - r0) * (packed.k_step_loops(tile) + row_loops) + launch_loops
            assert loops <= limit
            assert most is None or r1 - r0 <= most
        if k > 1000:
            assert len(ranges) > 1


def test_loop_limit_is_measured(dev):
    """Device.loop_limit: None, or the iterations after which this driver really stops a loop."""
    import pyopencl as cl

    limit = dev.loop_limit
    if "llvmpipe" in dev.name.lower():
        assert limit is not None and limit > 1000
    if limit is None:
        return
    src = ("__kernel void count(__global int* x, const int n) {"
           " int c = 0; for (int i = 0; i < n; ++i) c += x[1]; x[0] = c; }")
    prg = cl.Program(dev.context, src).build()
    host = np.array([0, 1], np.int32)
    buf = cl.Buffer(dev.context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR,
                    hostbuf=host)
    prg.count(dev.queue, (1,), (1,), buf, np.int32(limit + 100))
    cl.enqueue_copy(dev.queue, host, buf)
    assert host[0] == limit


@pytest.mark.parametrize("cin", [960, 4096])
def test_pointwise_long_k_right_or_refused(clconv, dev, rng, to_cl, cin):
    """algorithm='pointwise' cannot split K: past a loop-capped driver's cap it refuses (clconv.
    UnsupportedError naming the cap), otherwise it matches the oracle."""
    from clconv.blas import packed

    x = random_array(rng, (1, cin, 8, 8), np.float32)
    w = random_array(rng, (64, cin, 1, 1), np.float32)
    tile = packed.tile_for(dev, np.float32, 64, 16, cin)
    if len(packed.k_ranges(dev, tile, cin)) > 1:
        with pytest.raises(clconv.UnsupportedError, match="algorithm='pointwise'.*loop_limit"):
            clconv.conv2d(to_cl(x), to_cl(w), algorithm="pointwise")
        return
    got = clconv.conv2d(to_cl(x), to_cl(w), algorithm="pointwise")
    assert_close(got, reference.conv_nd(x, w), np.float32, cin, conv_magnitude(x, w))


def test_pointwise_refuses_past_a_forced_cap(clconv, dev, rng, to_cl, monkeypatch):
    monkeypatch.setattr(dev, "_loop_limit", 20000)
    monkeypatch.setattr(dev, "plans", None)
    x = random_array(rng, (1, 960, 8, 8), np.float32)
    w = random_array(rng, (16, 960, 1, 1), np.float32)
    with pytest.raises(clconv.UnsupportedError, match="Device.loop_limit = 20000"):
        clconv.conv2d(to_cl(x), to_cl(w), algorithm="pointwise")


@pytest.mark.parametrize("side", [64, 300])
def test_global_pool_right_or_refused(clconv, dev, rng, side):
    """A global average pool: one work-item's window loop; past a loop-capped driver's cap the
    plan refuses (it averaged a part of the plane on llvmpipe), otherwise it matches."""
    x = random_array(rng, (1, 2, side, side), np.float32)
    loops = side * (side + 1) + 2
    if dev.loop_limit is not None and 2 * loops > dev.loop_limit:
        with pytest.raises(clconv.UnsupportedError, match="loop_limit"):
            clconv.adaptive_avg_pool2d(x, 1)
        return
    got = clconv.adaptive_avg_pool2d(x, 1)
    assert_close(got, x.astype(np.float64).mean(axis=(2, 3), keepdims=True), np.float32,
                 side * side, 1.0)


def test_pool_refuses_past_a_forced_cap(clconv, dev, rng, monkeypatch):
    monkeypatch.setattr(dev, "_loop_limit", 1000)
    monkeypatch.setattr(dev, "plans", None)
    x = random_array(rng, (1, 2, 40, 40), np.float32)
    with pytest.raises(clconv.UnsupportedError, match="Device.loop_limit = 1000"):
        clconv.avg_pool2d(x, 30)
    got = clconv.avg_pool2d(x, 2)  # a small window still runs
    ref = x.astype(np.float64).reshape(1, 2, 20, 2, 20, 2).mean(axis=(3, 5))
    assert_close(got, ref, np.float32, 4, 1.0)


def test_training_reductions_split_or_refuse_past_a_forced_cap(clconv, dev, rng, monkeypatch):
    """BatchNorm's training statistics and gradient sums loop over the batch's rows: past a
    loop-capped driver's cap a work-group a channel splits the rows (the results right), and
    where even its work-items' loops would pass the cap they refuse instead of summing a part;
    Linear's bias gradient (a work-item a column) refuses."""
    from clconv import nn

    def batch_normalised(a):
        flat = a.astype(np.float64).transpose(1, 0, 2, 3).reshape(a.shape[1], -1)
        return ((a - flat.mean(1).reshape(1, -1, 1, 1))
                / np.sqrt(flat.var(1).reshape(1, -1, 1, 1) + 1e-5))

    bn = nn.BatchNorm2d(3)
    bn.train()
    monkeypatch.setattr(dev, "_loop_limit", 1000)
    x = random_array(rng, (4, 3, 16, 16), np.float32)  # 2 x 4 x 258 passes in one work-item
    assert_close(bn(x), batch_normalised(x), np.float32, 4 * 256, 1.0)
    big = random_array(rng, (4, 3, 64, 64), np.float32)  # 2 x 4 x 66 in each of a group's
    with pytest.raises(clconv.UnsupportedError, match="Device.loop_limit = 1000"):
        bn(big)
    lin = nn.Linear(5, 2)
    xl = random_array(rng, (900, 5), np.float32)
    y = lin(xl)
    with pytest.raises(clconv.UnsupportedError, match="bias gradient"):
        lin.backward(np.ones_like(y))
    monkeypatch.setattr(dev, "_loop_limit", None)
    small = random_array(rng, (2, 3, 4, 4), np.float32)
    assert_close(bn(small), batch_normalised(small), np.float32, 32, 1.0)  # torch's training BN
