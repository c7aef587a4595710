"""clconv.pixel_shuffle / pixel_unshuffle against torch.nn.functional's, through the public API:
numpy, CPU tensors and device arrays (contiguous and strided), leading dims, empty batches, and
torch's argument errors. A permutation: results are exact."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _same_on_every_kind(op, x, want, queue):
    """op of numpy x, of its CPU tensor and of a device copy (a device result) all equal `want`
    (a permutation: exact)."""
    import pyopencl.array as cla

    np.testing.assert_array_equal(op(x), want)
    np.testing.assert_array_equal(op(torch.from_numpy(x)), want)
    got = op(cla.to_device(queue, x))
    assert isinstance(got, cla.Array)
    np.testing.assert_array_equal(got.get(), want)


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


@pytest.mark.parametrize("shape, r", [((2, 8, 3, 5), 2), ((1, 18, 4, 4), 3), ((3, 4, 2, 2), 1),
                                      ((2, 3, 4, 6, 5), 2), ((4, 3, 2), 1), ((0, 4, 2, 3), 2)],
                         ids=["2", "3", "1", "5-d", "3-d", "empty"])
def test_shuffle_and_unshuffle_match_torch(clconv, rng, queue, shape, r):
    import pyopencl.array as cla

    x = rng.standard_normal(shape).astype(np.float32)
    if x.shape[-3] % (r * r) == 0:
        _same_on_every_kind(lambda a: clconv.pixel_shuffle(a, r), x,
                            F.pixel_shuffle(torch.from_numpy(x), r).numpy(), queue)
    up = rng.standard_normal((*shape[:-2], shape[-2] * r, shape[-1] * r)).astype(np.float32)
    want = F.pixel_unshuffle(torch.from_numpy(up), r).numpy()
    if up.size == 0:  # torch returns an empty input's own shape; clconv the unshuffled one
        want = np.zeros((*shape[:-3], shape[-3] * r * r, *shape[-2:]), np.float32)
    np.testing.assert_array_equal(clconv.pixel_unshuffle(up, r), want)
    np.testing.assert_array_equal(clconv.pixel_unshuffle(cla.to_device(queue, up), r).get(), want)


def test_strided_device_input_and_roundtrip(clconv, rng, queue):
    import pyopencl.array as cla

    x = rng.standard_normal((2, 8, 6, 10)).astype(np.float32)
    d = cla.to_device(queue, x)[:, :, :, ::2]  # a strided view
    want = F.pixel_shuffle(torch.from_numpy(np.ascontiguousarray(x[:, :, :, ::2])), 2).numpy()
    np.testing.assert_array_equal(clconv.pixel_shuffle(d, 2).get(), want)
    y = clconv.pixel_shuffle(cla.to_device(queue, x), 2)
    np.testing.assert_array_equal(clconv.pixel_unshuffle(y, 2).get(), x)


@pytest.mark.parametrize("fn, x_shape, r, error, match", [
    ("pixel_shuffle", (1, 6, 2, 2), 2, ValueError, "divisible by the square"),
    ("pixel_shuffle", (6, 2), 1, ValueError, "at least 3 dimensions"),
    ("pixel_shuffle", (1, 4, 2, 2), 0, ValueError, "positive"),
    ("pixel_shuffle", (1, 4, 2, 2), 2.0, TypeError, "int"),
    ("pixel_unshuffle", (1, 1, 3, 4), 2, ValueError, "divisible by downscale_factor"),
    ("pixel_unshuffle", (1, 1, 4, 4), True, TypeError, "int"),
])
def test_bad_arguments_as_torch(clconv, fn, x_shape, r, error, match):
    x = np.zeros(x_shape, np.float32)
    with pytest.raises(error, match=match):
        getattr(clconv, fn)(x, r)
    with pytest.raises((RuntimeError, TypeError, ValueError)):  # torch refuses them too
        getattr(F, fn)(torch.from_numpy(x), r)


@pytest.mark.parametrize("shape", [(2, 6, 4, 5), (1, 12, 7), (2, 6, 2, 3, 2), (0, 6, 3, 3)],
                         ids=["2-d", "1-d", "3-d", "empty"])
def test_channel_shuffle_matches_torch(clconv, rng, queue, shape):
    """clconv.channel_shuffle (ShuffleNet's permutation) = F.channel_shuffle on numpy, CPU
    tensors and device arrays (contiguous and a strided view), for every group count that
    divides the channels; torch's argument errors."""
    import pyopencl.array as cla

    x = rng.standard_normal(shape).astype(np.float32)
    for groups in (1, 2, 3, 6):
        _same_on_every_kind(lambda a: clconv.channel_shuffle(a, groups), x,
                            F.channel_shuffle(torch.from_numpy(x), groups).numpy(), queue)
    wide = np.concatenate([x, x], axis=1)
    view = cla.to_device(queue, wide)[:, ::2]  # a strided view
    np.testing.assert_array_equal(clconv.channel_shuffle(view, 3).get(), F.channel_shuffle(
        torch.from_numpy(wide[:, ::2].copy()), 3).numpy())
    with pytest.raises(ValueError, match="divisible by groups"):
        clconv.channel_shuffle(x, 5)
    with pytest.raises(ValueError, match="> 2 dims"):
        clconv.channel_shuffle(np.zeros(shape[:2], np.float32), 2)
    with pytest.raises(ValueError, match="positive"):
        clconv.channel_shuffle(x, 0)
    with pytest.raises(TypeError, match="groups"):
        clconv.channel_shuffle(x, 2.0)


@pytest.mark.parametrize("dim", [-4, -1, 0, 1, 3])
def test_stack_matches_torch(clconv, rng, queue, dim):
    """clconv.stack = torch.stack along every new dim, numpy and device arrays mixed (a device
    result); unequal shapes, an empty list and a dim out of range are torch's errors."""
    import pyopencl.array as cla

    a, b, c = (rng.standard_normal((2, 5, 3)).astype(np.float32) for _ in range(3))
    want = torch.stack([torch.from_numpy(v) for v in (a, b, c)], dim).numpy()
    np.testing.assert_array_equal(clconv.stack([a, b, c], dim), want)
    got = clconv.stack((a, cla.to_device(queue, b), c), dim)
    assert isinstance(got, cla.Array)
    np.testing.assert_array_equal(got.get(), want)
    with pytest.raises(ValueError, match="equal size"):
        clconv.stack([a, b[:, :4]], dim)
    with pytest.raises(ValueError, match="non-empty"):
        clconv.stack([], dim)
    with pytest.raises(IndexError, match="out of range"):
        clconv.stack([a, b], 4)
