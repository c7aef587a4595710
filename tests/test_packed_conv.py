"""The packed-GEMM paths: im2col into packed panels + packed GEMM (algorithm='im2col_packed') and
the fused implicit GEMM (algorithm='implicit'), through the public API, against the numpy float64
oracle (tests/reference.py) with PyTorch's semantics: every padding mode, stride, dilation, groups
(depthwise too), 1-d/2-d/3-d, bias and ReLU fused, NaN/Inf where torch puts them, offsets into
larger buffers, the workspace split and the implicit path's K chunks."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest
import reference as ref
from tolerance import assert_close, conv_magnitude, conv_reduction

from clconv.blas import packed
from clconv.ops import packed_conv
from clconv.ops.geometry import conv_geometry

PATHS = ("im2col_packed", "implicit")

# (input shape, weight shape, conv arguments)
CASES = [
    ((2, 4, 9, 11), (6, 4, 3, 3), {"padding": 1}),
    ((1, 3, 20, 19), (17, 3, 3, 3), {"padding": 1, "stride": 2}),
    ((1, 6, 7, 8), (6, 2, 3, 2), {"padding": (2, 1), "stride": (2, 1), "groups": 3,
                                      "padding_mode": "reflect"}),
    ((2, 5, 12, 9), (7, 5, 3, 3), {"padding": 2, "dilation": 2, "padding_mode": "replicate"}),
    ((2, 4, 8, 8), (5, 4, 3, 3), {"padding": 3, "padding_mode": "circular"}),
    ((1, 4, 10, 10), (4, 4, 4, 2), {"padding": "same"}),
    ((3, 8, 5, 5), (8, 1, 3, 3), {"padding": 1, "groups": 8}),  # depthwise
    # OW = 40, 35: whole panel rows inside one input row (the vector-copy gather), edges around them
    ((2, 3, 5, 40), (4, 3, 3, 3), {"padding": 1}),
    ((1, 20, 4, 35), (9, 20, 1, 3), {"padding": (0, 2), "padding_mode": "reflect"}),
    ((2, 70, 6, 6), (70, 70, 1, 1), {}),  # 1x1: N * L = 72 crosses images inside a panel
    # K = 288 >= 256 and C_out = 48, 80: the 16 x 16 tile on AVX-512 devices (float), edge panels
    # (of the K < 256 cases above, C_out = 7 and 70 get the 8 x 32 tile there)
    ((2, 32, 5, 7), (48, 32, 3, 3), {"padding": 1}),
    ((1, 32, 9, 10), (80, 32, 3, 3), {"padding": 1, "stride": 2}),
    ((2, 3, 10), (5, 3, 3), {"padding": 2, "dilation": 2, "padding_mode": "circular"}),  # 1-d
    ((1, 2, 30), (4, 1, 5),
     {"stride": 3, "groups": 2, "padding_mode": "reflect", "padding": 2}),  # 1-d
    ((1, 2, 4, 5, 6), (3, 2, 2, 3, 2), {"padding": 1, "padding_mode": "replicate"}),  # 3-d
    ((2, 4, 5, 4, 6), (4, 2, 3, 1, 3), {"stride": (1, 2, 2), "groups": 2, "padding": (1, 0, 2)}),
]


def _conv(dev, path, x, w, b, activation, kw, **extra):
    """clconv.conv{1,2,3}d(x, w, b, **kw) with algorithm=path on device arrays, as numpy."""
    import clconv

    q = dev.queue
    conv = getattr(clconv, f"conv{w.ndim - 2}d")
    return conv(cla.to_device(q, x), cla.to_device(q, w), None if b is None else
                cla.to_device(q, b), algorithm=path, activation=activation, **kw, **extra).get()


def _geometry(x, w, kw):
    return conv_geometry(w.ndim - 2, x.shape, w.shape, kw.get("stride", 1), kw.get("padding", 0),
                         kw.get("dilation", 1), kw.get("groups", 1),
                         kw.get("padding_mode", "zeros"))


def _expected(x, w, b, kw, activation):
    r = ref.conv_nd(x, w, b, **kw)
    return np.maximum(r, 0) if activation == "relu" else r  # np.maximum keeps NaN, as torch.relu


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("activation,bias", [(None, False), ("relu", True)])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_reference(dev, rng, dtype, path, activation, bias, case):
    xs, ws, kw = CASES[case]
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if bias else None
    got = _conv(dev, path, x, w, b, activation, kw)
    assert got.dtype == dtype
    assert_close(got, _expected(x, w, b, kw, activation), reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w, b))


# The gather's zero-padded runs copied as vectors (im2col_packed.cl's COPY_RUN): output lines of
# 3 (element by element), 4-7, 8-15, 16-31 and longer columns, stride 1 and 2, input widths whose
# last stride-2 read ends on the row's last element or one past it (the vector stops short there),
# padding 0-2: every tier, with its overlapping last vector, beside zeros on either side.
GATHER_RUNS = [(w, s, p) for w in (5, 8, 9, 14, 17, 23, 30, 33, 47, 64, 70) for s in (1, 2)
               for p in (0, 1, 2) if (w + 2 * p - 3) // s + 1 >= 3]


@pytest.mark.parametrize("path", PATHS)
def test_gather_runs_of_every_length(dev, rng, dtype, path):
    """A network's lines of 7-56 outputs: every run length, stride and padding above, both paths,
    against the oracle, every element."""
    for width, stride, pad in GATHER_RUNS:
        kw = {"padding": pad, "stride": stride}
        x = rng.standard_normal((1, 3, 4, width)).astype(dtype)
        w = rng.standard_normal((5, 3, 3, 3)).astype(dtype)
        b = rng.standard_normal(5).astype(dtype)
        got = _conv(dev, path, x, w, b, None, kw)
        assert_close(got, _expected(x, w, b, kw, None), reduction=conv_reduction(w),
                     magnitude=conv_magnitude(x, w, b), err_msg=f"width {width} {kw}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_nan_inf_where_torch_puts_them(dev, rng, dtype, path, padding_mode):
    """Inf and NaN in the input (next to the border, so the padding modes copy them or not), and a
    zero filter tap facing an Inf (0 * Inf = NaN): the pattern is the oracle's, after ReLU too, in
    the vector store of full tiles and the masked one of edge tiles and of panels across images."""
    x = rng.uniform(0.5, 1.5, (2, 3, 9, 10)).astype(dtype)
    w = rng.uniform(-1, 1, (7, 3, 3, 3)).astype(dtype)  # 7 = one full 6-row tile + an edge row
    b = rng.standard_normal(7).astype(dtype)
    x[0, 1, 0, 0] = np.inf
    x[1, 2, 4, 9] = -np.inf
    x[1, 0, 8, 3] = np.nan
    w[2, 1, 1, 1] = 0.0
    kw = {"padding": 1, "padding_mode": padding_mode}
    for activation in (None, "relu"):
        got = _conv(dev, path, x, w, b, activation, kw)
        expected = _expected(x, w, b, kw, activation)
        assert np.isnan(expected).any() and np.isinf(expected).any()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
        finite = np.isfinite(expected)
        assert_close(got[finite], expected[finite], reduction=conv_reduction(w),
                     magnitude=conv_magnitude(x, w, b))


@pytest.mark.parametrize("path", PATHS)
def test_offsets_into_larger_buffers(dev, rng, path):
    """x, out and bias at element offsets inside bigger buffers: nothing outside is written."""
    x = rng.standard_normal((2, 4, 7, 9)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    kw = {"padding": 1, "stride": (1, 2)}
    geo = _geometry(x, w, kw)
    q = dev.queue
    x_off, out_off, b_off = 5, 13, 3
    x_buf = np.concatenate([rng.standard_normal(x_off), x.ravel(), rng.standard_normal(4)])
    out_buf = rng.standard_normal(out_off + np.prod(geo.output_shape) + 7).astype(np.float32)
    b_buf = np.concatenate([rng.standard_normal(b_off), b]).astype(np.float32)
    d_out = cla.to_device(q, out_buf)
    n_out = int(np.prod(geo.output_shape))
    d_x = cla.to_device(q, x_buf.astype(np.float32))[x_off:x_off + x.size].reshape(x.shape)
    import clconv

    clconv.conv2d(d_x, cla.to_device(q, w), cla.to_device(q, b_buf)[b_off:], **kw,
                  algorithm=path, activation="relu",
                  out=d_out[out_off:out_off + n_out].reshape(geo.output_shape))
    got = d_out.get()
    assert_close(got[out_off:out_off + n_out].reshape(geo.output_shape),
                 _expected(x, w, b, kw, "relu"), reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w, b))
    np.testing.assert_array_equal(got[:out_off], out_buf[:out_off])
    np.testing.assert_array_equal(got[out_off + n_out:], out_buf[out_off + n_out:])


# The gather's whole-row vector loads (im2col_packed.cl's DEFINE_GATHER_ROWS): a load at a run's
# edge reads past it (the neighbouring line, image, or what lies before and after the array) into
# lanes that no run selects. Output lines of 1-20 columns (up to 4 runs a panel and more: the
# run-by-run copies), stride 1 and 2, dilation, padding 0-2, panels across three images, K below and
# above 256 (the 8 x 32 and 16 x 16 tiles on AVX-512), in a buffer that is NaN around the array.
VECTOR_ROWS = [(w, s, d, p, c) for w in (3, 5, 7, 14, 20) for s in (1, 2) for d in (1, 2)
               for p in (0, 1, 2) for c in (5, 32) if (w + 2 * p - 2 * d - 1) // s + 1 >= 1
               and (s, d, c) != (2, 2, 32)]


@pytest.mark.parametrize("path", PATHS)
def test_vector_rows_read_nothing_outside_their_runs(dev, rng, dtype, path):
    import clconv

    q = dev.queue
    for width, stride, dil, pad, cin in VECTOR_ROWS:
        kw = {"padding": pad, "stride": stride, "dilation": dil}
        x = rng.standard_normal((3, cin, 6, width)).astype(dtype)
        w = rng.standard_normal((9, cin, 3, 3)).astype(dtype)
        around = np.full(37, np.nan, dtype)
        buf = cla.to_device(q, np.concatenate([around, x.ravel(), around]))
        d_x = buf[around.size:around.size + x.size].reshape(x.shape)
        got = clconv.conv2d(d_x, cla.to_device(q, w), None, **kw, algorithm=path).get()
        expected = _expected(x, w, None, kw, None)
        assert np.isfinite(got).all(), f"width {width} {kw} C_in {cin}"
        assert_close(got, expected, reduction=conv_reduction(w),
                     magnitude=conv_magnitude(x, w), err_msg=f"width {width} {kw} C_in {cin}")


@pytest.mark.parametrize("columns", [1, 3 * 16, 110, 220],
                         ids=["1-panel", "48-columns", "1-image", "2-images"])
def test_workspace_limit_splits_without_changing_results(dev, rng, columns):
    """A limit of panels for at least `columns` of the 330 columns (whatever the device's panel
    width NR): 1 or 3 panels split each image's positions, one or two images' worth run whole
    images a launch; the results equal the unsplit call's bit for bit (the same sums in the same
    order)."""
    x = rng.standard_normal((3, 4, 10, 11)).astype(np.float32)
    w = rng.standard_normal((10, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    kw = {"padding": 1, "groups": 2}
    geo = _geometry(x, w, kw)
    tile = packed_conv.conv_tile(dev, geo, np.float32)
    panel = geo.groups * tile.packed_b_size(tile.nr, 2 * 9) * 4
    limit_panels = -(-columns // tile.nr)
    chunks = packed_conv.column_chunks(geo, tile, 4, limit_panels * panel)
    assert len(chunks) > 1 and sum(n for _, n in chunks) == 3 * 110
    whole = _conv(dev, "im2col_packed", x, w, b, "relu", kw)
    split = _conv(dev, "im2col_packed", x, w, b, "relu", kw,
                  workspace_limit=limit_panels * panel)
    np.testing.assert_array_equal(split, whole)
    assert_close(whole, _expected(x, w, b, kw, "relu"), reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w, b))
    with pytest.raises(MemoryError, match="cannot hold one packed column panel"):
        _conv(dev, "im2col_packed", x, w, b, None, kw, workspace_limit=panel - 1)


def test_workspace_bytes(dev, rng):
    """'implicit' needs none; 'im2col_packed' exactly the packed columns, which is what the device's
    packing scratch holds after one call from empty."""
    x = rng.standard_normal((2, 6, 9, 9)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    geo = _geometry(x, w, {"groups": 2})
    tile = packed_conv.conv_tile(dev, geo, np.float32)
    expected = 2 * (-(-2 * 49 // tile.nr)) * tile.nr * 27 * 4
    assert packed_conv.workspace_bytes(geo, np.float32, dev=dev) == expected
    assert packed_conv.workspace_bytes(geo, np.float32, "implicit", dev=dev) == 0
    packed.release_scratch(dev)
    _conv(dev, "implicit", x, w, None, None, {"groups": 2})
    assert packed.scratch_bytes(dev) == 0
    _conv(dev, "im2col_packed", x, w, None, None, {"groups": 2})
    assert packed.scratch_bytes(dev) == expected
    with pytest.raises(ValueError, match="algorithm must be"):
        packed_conv.workspace_bytes(geo, np.float32, "im2col", dev=dev)


def test_implicit_k_chunks(dev, rng, dtype, monkeypatch):
    """With a local-memory budget below the whole K x NR panel, K runs in chunks whose partial sums
    pass through the output; bias and ReLU only at the end (ReLU of a partial sum would be
    wrong)."""
    x = rng.standard_normal((2, 5, 8, 7)).astype(dtype)
    w = rng.standard_normal((7, 5, 3, 3)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype)
    kw = {"padding": 1}
    geo = _geometry(x, w, kw)
    tile = packed_conv.conv_tile(dev, geo, dtype)
    monkeypatch.setattr(packed_conv, "PANEL_BUDGET",  # KC = 7 of 45
                        7 * (tile.nr + packed_conv.TAIL_DOT) * dtype.itemsize)
    assert packed_conv.implicit_chunk(dev, 45, tile, dtype.itemsize) == 7
    import clconv

    # A plan of its own (the functional API's cached one may hold the whole-K chunk).
    plan = clconv.plan_conv2d(x.shape, w.shape, True, **kw, algorithm="implicit",
                              activation="relu", dtype=dtype)
    got = plan(x, w, b)
    assert_close(got, _expected(x, w, b, kw, "relu"), reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w, b))


@pytest.mark.parametrize("path", PATHS)
def test_rejects_mismatched_filters_and_activation(dev, rng, path):
    import clconv

    q = dev.queue
    x = cla.to_device(q, rng.standard_normal((1, 4, 6, 6)).astype(np.float32))
    w = cla.to_device(q, rng.standard_normal((6, 4, 3, 3)).astype(np.float32))
    geo = conv_geometry(2, x.shape, w.shape, 1, 1, 1, 1)
    other = conv_geometry(2, (1, 4, 6, 6), (6, 2, 3, 3), 1, 1, 1, 2)
    out = cla.empty(q, geo.output_shape, np.float32)
    wp = packed_conv.pack_conv_weights(dev, geo, w)
    with pytest.raises(ValueError, match="pack them with pack_conv_weights"):  # the launcher's check
        packed_conv.enqueue_im2col_packed_conv(dev, other, x, 0, wp, None, out, 0)
    with pytest.raises(ValueError, match="activation must be None, one of"):
        clconv.conv2d(x, w, padding=1, algorithm=path, activation="swish")


@pytest.mark.parametrize("path", PATHS)
def test_64_bit_index_build(dev, rng, monkeypatch, path):
    """INDEX_T=long (what buffers of 2**31 elements or more get) builds and computes the same."""
    from clconv.runtime import transfer

    monkeypatch.setattr(transfer, "FORCE_INDEX_T", "long")
    x = rng.standard_normal((2, 4, 6, 18)).astype(np.float32)
    w = rng.standard_normal((8, 2, 3, 3)).astype(np.float32)  # 4 per group: the 4 x 3VW tile
    b = rng.standard_normal(8).astype(np.float32)
    kw = {"padding": 1, "groups": 2, "padding_mode": "reflect"}
    got = _conv(dev, path, x, w, b, "relu", kw)
    assert_close(got, _expected(x, w, b, kw, "relu"), reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w, b))


def test_tail_split_evens_out_a_first_chunk(dev):
    """13 column panels on 2 compute units: panel 6 is split in two (PoCL's first thread takes the
    first 7 work-items: 6 panels and a half); a count the units divide, a batch of A panels split
    by `grid`, or one compute unit: nothing split."""
    from types import SimpleNamespace

    tile = packed.Tile(16, 16, 16)
    two = SimpleNamespace(cl_device=SimpleNamespace(max_compute_units=2), loop_limit=None)
    assert packed.tail_split(two, tile, 256, 196, 1, 1) == (6, 2, 8)
    assert packed.tail_split(two, tile, 250, 196, 1, 1) == (6, 2, 8)  # 16 A panels, the last short
    assert packed.tail_split(two, tile, 256, 192, 1, 1) == (12, 1, 16)
    assert packed.tail_split(two, tile, 256, 196, 1, 2) == (13, 1, 16)
    assert packed.tail_split(two, tile, 256, 196, 2, 1) == (13, 1, 16)
    one = SimpleNamespace(cl_device=SimpleNamespace(max_compute_units=1), loop_limit=None)
    assert packed.tail_split(one, tile, 256, 196, 1, 1) == (13, 1, 16)
    # a narrow last panel that runs first (conv_implicit.cl): the 12 full panels share evenly as
    # they are; 11 and a narrow one: panel 6 split (the first chunk: the narrow one, 5 and a half)
    assert packed.tail_split(two, tile, 256, 196, 1, 1, narrow_first=True) == (13, 1, 16)
    assert packed.tail_split(two, tile, 256, 180, 1, 1, narrow_first=True) == (6, 2, 8)


# The narrow last column panel (cl/conv_implicit.cl's tail_dot): 1-4 columns past the full panels
# (5: a full-width edge panel, for contrast), K below and above 256 (the 8 x 32 and 16 x 16 tiles
# on AVX-512), filter rows that do not fill the dot products' row blocks, bias, residual and
# ReLU, an Inf facing a zero filter tap in the narrow columns (0 * Inf = NaN, as torch), and K in
# chunks (partial sums through the output).
@pytest.mark.parametrize("extra", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("cin", [5, 100])
@pytest.mark.parametrize("chunked", [False, True])
def test_narrow_last_panel(dev, rng, dtype, monkeypatch, extra, cin, chunked):
    import clconv

    kw = {"padding": (0, 1)}
    probe = _geometry(np.empty((1, cin, 1, 64)), np.empty((37, cin, 1, 3)), kw)
    nr = packed_conv.conv_tile(dev, probe, dtype).nr
    width = 2 * nr + extra  # one image of one row: `width` columns
    x = rng.standard_normal((1, cin, 1, width)).astype(dtype)
    w = rng.standard_normal((37, cin, 1, 3)).astype(dtype)
    b = rng.standard_normal(37).astype(dtype)
    r = rng.standard_normal((1, 37, 1, width)).astype(dtype)
    x[0, 1, 0, width - 1] = np.inf
    w[3, 1, 0, 1] = 0.0
    assert packed_conv.narrow_last(packed_conv.conv_tile(dev, probe, dtype), width) == \
        (nr > packed_conv.TAIL_DOT and extra <= packed_conv.TAIL_DOT)
    if chunked:  # K = 3 * cin in chunks of 7 rows
        tile = packed_conv.conv_tile(dev, _geometry(x, w, kw), dtype)
        monkeypatch.setattr(packed_conv, "PANEL_BUDGET",
                            7 * (tile.nr + packed_conv.TAIL_DOT) * dtype.itemsize)
    plan = clconv.plan_conv2d(x.shape, w.shape, True, **kw, algorithm="implicit",
                              activation="relu", residual=True, dtype=dtype)
    got = plan(x, w, b, residual=r)
    expected = np.maximum(ref.conv_nd(x, w, b, **kw) + r, 0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
    finite = np.isfinite(expected)
    assert np.isnan(expected[0, 3, 0, width - 1]) and finite.sum() > expected.size // 2
    assert_close(got[finite], expected[finite], reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w, b) + np.abs(r).max())


@pytest.mark.parametrize("split_at,groups", [(0, 2), (2, 3), (4, 2)])
def test_implicit_split_panels_match_reference(dev, rng, dtype, monkeypatch, split_at, groups):
    """Every place and width of the split column panel (TASK_PANELS in cl/gemm_packed.cl), forced
    where `grid` leaves the A panels whole: the same result, edge rows and the partial last panel
    included."""
    import clconv

    x = rng.standard_normal((1, 6, 5, 31)).astype(dtype)  # 155 columns: 5-10 panels
    w = rng.standard_normal((45, 6, 3, 3)).astype(dtype)  # 45 rows: an edge A panel
    b = rng.standard_normal(45).astype(dtype)
    kw = {"padding": 1}
    geo = _geometry(x, w, kw)
    tile = packed_conv.conv_tile(dev, geo, dtype)
    m, panels = 45, tile.b_panels(155)
    grid = packed.grid
    monkeypatch.setattr(packed, "grid", lambda dev, tile, m, n, batch: (
        (1, tile.a_panels(m)) if dev.loop_limit is None else grid(dev, tile, m, n, batch)))
    per = -(-tile.a_panels(m) // groups)
    forced = (min(split_at, panels - 1), -(-tile.a_panels(m) // per), per)
    monkeypatch.setattr(packed, "tail_split", lambda dev, tile, m, n, batch, mgroups, narrow: (
        forced if mgroups == 1 else (tile.b_panels(n), 1, tile.a_panels(m))))
    plan = clconv.plan_conv2d(x.shape, w.shape, True, **kw, algorithm="implicit",
                              activation="relu", dtype=dtype)
    if dev.loop_limit is None:
        assert plan.impl.launches[0][0][0] == panels + forced[1] - 1
    got = plan(x, w, b)
    assert_close(got, _expected(x, w, b, kw, "relu"), reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w, b))
