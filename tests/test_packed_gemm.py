"""clconv.blas.packed: the packed register-blocked GEMM against numpy float64.

Shapes cover every edge of the tile (M, N, K of 1, below, at and past MR/NR, non-multiples), the
strided-batched forms (shared A with stride 0, offsets, column blocks of wider matrices),
alpha/beta, transposed operands, reuse of a packed A, and IEEE semantics: Inf/NaN reach exactly the
elements they reach in an exact float64 product sum, and the zero padding of the packs creates none.
"""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest
from tolerance import assert_close

from clconv.blas import packed

SHAPES = [(1, 1, 1), (1, 5, 7), (5, 1, 7), (7, 5, 1), (6, 16, 3), (5, 17, 33), (17, 33, 5),
          (33, 7, 17), (13, 47, 64), (64, 100, 50), (100, 64, 129), (2, 200, 9)]


def _products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact IEEE float64 reference: sum over k of a[i, k] * b[k, j], no BLAS shortcut (a BLAS may
    skip zero multiplicands, which would hide 0 * Inf = NaN)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return (a64[:, :, None] * b64[None, :, :]).sum(axis=1)


def _run(dev, m, n, k, a, b, c, **kw):
    with dev.lock:
        packed.gemm(dev, m, n, k, a, 0, 0, b, 0, 0, c, 0, 0, **kw)
    return c.get()


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_matches_numpy(dev, rng, dtype, m, n, k):
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    q = dev.queue
    got = _run(dev, m, n, k, cla.to_device(q, a), cla.to_device(q, b), cla.empty(q, (m, n), dtype))
    assert got.dtype == dtype
    assert_close(got, a.astype(np.float64) @ b.astype(np.float64), reduction=k,
                 magnitude=np.abs(a).max() * np.abs(b).max())


@pytest.mark.parametrize("a_t,b_t", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,n,k", [(7, 19, 13), (30, 33, 40)])
def test_transposed_operands(dev, rng, dtype, a_t, b_t, m, n, k):
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    q = dev.queue
    da = cla.to_device(q, np.ascontiguousarray(a.T) if a_t else a)
    db = cla.to_device(q, np.ascontiguousarray(b.T) if b_t else b)
    got = _run(dev, m, n, k, da, db, cla.empty(q, (m, n), dtype), a_transposed=a_t,
               b_transposed=b_t)
    assert_close(got, a.astype(np.float64) @ b.astype(np.float64), reduction=k,
                 magnitude=np.abs(a).max() * np.abs(b).max())


@pytest.mark.parametrize("shared_a", [True, False])
def test_strided_batched_with_offsets_and_leading_dims(dev, rng, dtype, shared_a):
    """batch 3 of (9 x 21) @ (21 x 26): A shared (stride 0) or strided, B and C column blocks of
    wider matrices (ldb, ldc), every matrix at an element offset; C outside the blocks untouched."""
    m, n, k, batch = 9, 26, 21, 3
    lda, ldb, ldc = k + 2, n + 5, n + 3
    a_off, b_off, c_off = 3, 7, 11
    a_stride = 0 if shared_a else m * lda + 4
    b_stride, c_stride = k * ldb + 2, m * ldc + 1
    a_buf = rng.standard_normal(a_off + (batch - 1) * a_stride + m * lda).astype(dtype)
    b_buf = rng.standard_normal(b_off + (batch - 1) * b_stride + k * ldb).astype(dtype)
    c_buf = rng.standard_normal(c_off + (batch - 1) * c_stride + m * ldc).astype(dtype)
    q = dev.queue
    dc = cla.to_device(q, c_buf)
    with dev.lock:
        packed.gemm(dev, m, n, k, cla.to_device(q, a_buf), a_off, a_stride, cla.to_device(q, b_buf),
                    b_off, b_stride, dc, c_off, c_stride, batch, lda=lda, ldb=ldb, ldc=ldc)
    got = dc.get()
    expected = c_buf.astype(np.float64)
    for z in range(batch):
        am = a_buf[a_off + z * a_stride:][:m * lda].reshape(m, lda)[:, :k].astype(np.float64)
        bm = b_buf[b_off + z * b_stride:][:k * ldb].reshape(k, ldb)[:, :n].astype(np.float64)
        view = expected[c_off + z * c_stride:][:m * ldc].reshape(m, ldc)
        view[:, :n] = am @ bm
    assert_close(got, expected, reduction=k, magnitude=np.abs(a_buf).max() * np.abs(b_buf).max())
    outside = np.ones(c_buf.shape, bool)
    for z in range(batch):
        outside[c_off + z * c_stride:][:m * ldc].reshape(m, ldc)[:, :n] = False
    np.testing.assert_array_equal(got[outside], c_buf[outside])


@pytest.mark.parametrize("shared_a", [True, False])
def test_transposed_a_read_in_place(dev, rng, dtype, shared_a, monkeypatch):
    """A stored transposed (k x m, leading dim lda > m) with m a multiple of the tile's MR: the
    micro-kernel reads it where it is (no pack_a launch), batch 3 at element offsets, A shared or
    strided, alpha and beta."""
    m, n, k, batch = 2 * packed.tile_for(dev, dtype, 12, 26, 21).mr, 26, 21, 3
    lda, a_off, b_off = m + 3, 5, 2
    a_stride = 0 if shared_a else k * lda + 4
    a_buf = rng.standard_normal(a_off + (batch - 1) * a_stride + k * lda).astype(dtype)
    b = rng.standard_normal((batch, k, n)).astype(dtype)
    c = rng.standard_normal((batch, m, n)).astype(dtype)
    q = dev.queue

    def no_packing(*args, **kwargs):
        raise AssertionError("A was packed")

    monkeypatch.setattr(packed, "enqueue_pack_a", no_packing)
    dc = cla.to_device(q, c)
    padded_b = cla.to_device(q, np.concatenate([np.zeros(b_off, dtype), b.ravel()]))
    with dev.lock:
        packed.gemm(dev, m, n, k, cla.to_device(q, a_buf), a_off, a_stride, padded_b, b_off,
                    k * n, dc, 0, m * n, batch, a_transposed=True, lda=lda, alpha=1.5, beta=0.5)
    expected = np.empty((batch, m, n))
    for z in range(batch):
        at = a_buf[a_off + z * a_stride:][:k * lda].reshape(k, lda)[:, :m].astype(np.float64)
        expected[z] = 1.5 * at.T @ b[z].astype(np.float64) + 0.5 * c[z]
    assert_close(dc.get(), expected, reduction=k,
                 magnitude=np.abs(a_buf).max() * np.abs(b).max())


@pytest.mark.parametrize("alpha,beta", [(2.5, 0.0), (1.0, 1.0), (-0.5, 0.25), (0.0, 2.0)])
def test_alpha_beta(dev, rng, dtype, alpha, beta):
    m, n, k = 11, 37, 19
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    q = dev.queue
    got = _run(dev, m, n, k, cla.to_device(q, a), cla.to_device(q, b), cla.to_device(q, c0),
               alpha=alpha, beta=beta)
    ref = alpha * (a.astype(np.float64) @ b.astype(np.float64)) + beta * c0.astype(np.float64)
    assert_close(got, ref, reduction=k, magnitude=np.abs(a).max() * np.abs(b).max() + abs(beta))


def test_beta_zero_ignores_nan_in_c(dev, rng, dtype):
    """As BLAS: with beta = 0 the old C is not read (NaN there must not come through)."""
    m, n, k = 8, 20, 5
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    q = dev.queue
    got = _run(dev, m, n, k, cla.to_device(q, a), cla.to_device(q, b),
               cla.to_device(q, np.full((m, n), np.nan, dtype)))
    assert np.isfinite(got).all()
    assert_close(got, a.astype(np.float64) @ b.astype(np.float64), reduction=k,
                 magnitude=np.abs(a).max() * np.abs(b).max())


def test_k_zero_gives_beta_c(dev, rng, dtype):
    c0 = rng.standard_normal((4, 9)).astype(dtype)
    q = dev.queue
    got = _run(dev, 4, 9, 0, cla.empty(q, (1,), dtype), cla.empty(q, (1,), dtype),
               cla.to_device(q, c0), beta=0.5)
    np.testing.assert_array_equal(got, (0.5 * c0.astype(np.float64)).astype(dtype))


@pytest.mark.parametrize("m,n,k", [(7, 19, 5), (13, 33, 17), (6, 16, 4)])
def test_inf_nan_propagate_exactly(dev, rng, dtype, m, n, k):
    """Inf in A's last row and B's last column (inside the edge tiles, whose padding is zero: a
    padded row times an Inf of B is NaN, and must never be stored), NaN in one element of A, and a
    zero in A facing an Inf of B (0 * Inf = NaN): the NaN/Inf pattern is the exact float64 one."""
    a = rng.uniform(0.5, 1.5, (m, k)).astype(dtype)
    b = rng.uniform(0.5, 1.5, (k, n)).astype(dtype)
    a[m - 1, 0] = np.inf
    b[1, n - 1] = -np.inf
    b[2, 0] = np.inf
    a[0, 2] = 0.0  # 0 * Inf in C[0, 0]
    if m > 2:
        a[1, 1] = np.nan
    q = dev.queue
    got = _run(dev, m, n, k, cla.to_device(q, a), cla.to_device(q, b), cla.empty(q, (m, n), dtype))
    ref = _products(a, b)
    assert np.isnan(ref[0, 0]) and np.isinf(ref[m - 1, 1])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    finite = np.isfinite(ref)
    assert_close(got[finite], ref[finite], reduction=k, magnitude=2.25)


def test_packed_a_is_reused(dev, rng, dtype):
    """One pack_a serves several GEMMs (batched with a shared A too); a later change of the source
    does not reach the packed copy; a packed A of other sizes is refused."""
    m, n, k = 10, 23, 15
    a = rng.standard_normal((m, k)).astype(dtype)
    q = dev.queue
    da = cla.to_device(q, a)
    pa = packed.pack_a(dev, m, k, da, 0, n_hint=n)
    assert (pa.m, pa.k, pa.stride) == (m, k, 0)
    da.fill(0)  # the packed copy is independent of its source
    for trial in range(2):
        b = rng.standard_normal((2, k, n)).astype(dtype)
        dc = cla.empty(q, (2, m, n), dtype)
        with dev.lock:
            packed.gemm(dev, m, n, k, None, 0, 0, cla.to_device(q, b), 0, k * n, dc, 0, m * n, 2,
                        packed_a=pa)
        ref = np.einsum("ik,zkn->zin", a.astype(np.float64), b.astype(np.float64))
        assert_close(dc.get(), ref, reduction=k, magnitude=np.abs(a).max() * np.abs(b).max())
    with pytest.raises(ValueError, match="packed_a holds"):
        packed.gemm(dev, m + 1, n, k, None, 0, 0, cla.empty(q, (k * n,), dtype), 0, 0,
                    cla.empty(q, ((m + 1) * n,), dtype), 0, 0, packed_a=pa)


@pytest.mark.parametrize("mr", [16, 8, 6])
@pytest.mark.parametrize("transposed", [False, True], ids=["A", "A^T"])
def test_pack_a_layout(dev, rng, dtype, mr, transposed):
    """pack_a's panels [ceil(m / mr)][k][mr] element by element, rows past m zero: m = 37 (two
    whole panels of 16, a part-filled one), k = 70 (two whole runs of 32 k and a short one), A at
    an offset with a leading dimension past k (or m)."""
    m, k, off = 37, 70, 5
    a = rng.standard_normal((m, k)).astype(dtype)
    stored = a.T if transposed else a  # A^T is stored k x m
    lda = stored.shape[1] + 3
    flat = np.zeros(off + stored.shape[0] * lda, dtype)
    flat[off:].reshape(stored.shape[0], lda)[:, :stored.shape[1]] = stored
    vw = packed.vector_width(dev, np.dtype(dtype))
    pa = packed.pack_a(dev, m, k, cla.to_device(dev.queue, flat), off, lda=lda,
                       transposed=transposed, tile=packed.Tile(mr, vw, vw))
    panels = -(-m // mr)
    want = np.zeros((panels * mr, k), dtype)
    want[:m] = a
    want = want.reshape(panels, mr, k).transpose(0, 2, 1)  # [panel][k][row]
    np.testing.assert_array_equal(pa.data.get()[:want.size].reshape(want.shape), want)



def test_batched_packed_a(dev, rng, dtype):
    """pack_a of a strided batch (one packed matrix per entry, as a convolution's groups)."""
    m, n, k, batch = 7, 18, 9, 3
    a = rng.standard_normal((batch, m, k)).astype(dtype)
    b = rng.standard_normal((batch, k, n)).astype(dtype)
    q = dev.queue
    pa = packed.pack_a(dev, m, k, cla.to_device(q, a), 0, m * k, batch)
    assert pa.stride == pa.tile.packed_a_size(m, k)
    dc = cla.empty(q, (batch, m, n), dtype)
    with dev.lock:
        packed.gemm(dev, m, n, k, None, 0, 0, cla.to_device(q, b), 0, k * n, dc, 0, m * n, batch,
                    packed_a=pa)
    ref = np.einsum("zik,zkn->zin", a.astype(np.float64), b.astype(np.float64))
    assert_close(dc.get(), ref, reduction=k, magnitude=np.abs(a).max() * np.abs(b).max())


def test_scratch_is_reused(dev, rng):
    """After the first call of a size, later calls of that size or smaller allocate nothing."""
    q = dev.queue
    a = cla.to_device(q, rng.standard_normal((40, 30)).astype(np.float32))
    b = cla.to_device(q, rng.standard_normal((30, 50)).astype(np.float32))
    c = cla.empty(q, (40, 50), np.float32)
    packed.release_scratch(dev)
    _run(dev, 40, 50, 30, a, b, c)
    held = packed.scratch_bytes(dev)
    tile = packed.tile_for(dev, np.float32, 40, 50, 30)
    assert held == 4 * (tile.packed_a_size(40, 30) + tile.packed_b_size(50, 30))
    buffer = packed._SCRATCH[dev].buffer
    _run(dev, 40, 50, 30, a, b, c)
    _run(dev, 20, 25, 30, a, b, c)
    assert packed._SCRATCH[dev].buffer is buffer and packed.scratch_bytes(dev) == held
    assert packed.release_scratch(dev) == held and packed.scratch_bytes(dev) == 0


def test_tile_rule(dev):
    f32 = packed.tile_for(dev, np.float32, 64, 3136, 576)
    f64 = packed.tile_for(dev, np.float64, 64, 3136, 576)
    assert (f32.mr, f32.nr % f32.vw, f64.mr) == (6, 0, 6)
    if dev.fp64:  # no-fp64 devices (llvmpipe) report no double width: the fallback 4 lanes
        assert f64.vw * 2 == f32.vw  # same register bytes: half the lanes
    small = packed.tile_for(dev, np.float32, 3, 100, 10)
    assert small.mr == 4 and small.nr == 3 * small.vw


def test_rejects_other_and_mixed_dtypes(dev):
    q = dev.queue
    x = cla.zeros(q, (4,), np.int32)
    with pytest.raises(TypeError, match="float32 and float64"):
        packed.gemm(dev, 2, 2, 2, x, 0, 0, x, 0, 0, x, 0, 0)
    f32, f64 = cla.zeros(q, (4,), np.float32), cla.zeros(q, (4,), np.float64)
    with pytest.raises(TypeError, match="b is float64 but c is float32"):
        packed.gemm(dev, 2, 2, 1, f32, 0, 0, f64, 0, 0, f32, 0, 0)
    with pytest.raises(ValueError, match="below 2\\*\\*31"):
        packed.gemm(dev, 2**31, 2, 1, f32, 0, 0, f32, 0, 0, f32, 0, 0)
    with pytest.raises(TypeError, match="a is float32 but c is float64"):
        packed.gemm(dev, 2, 2, 1, None, 0, 0, f64, 0, 0, f64, 0, 0,
                    packed_a=packed.pack_a(dev, 2, 1, f32, 0))
