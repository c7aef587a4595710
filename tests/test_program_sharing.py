"""Layers share programs: the kernels 'auto' picks on CPUs take the sizes (channels, input and
output sizes, padding) as arguments (cl/common.cl's RUNTIME_SIZES), so a network's layers of one
kernel size and stride (and, for the packed GEMM's paths, one register tile: packed_conv.conv_tile
gives AVX-512 devices a 16 x 16 tile where K >= 256) build their programs once. Counted with the device's ProgramCache on
ResNet-18-like shapes (reduced sizes) through the functional API, results against the numpy
float64 oracle."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from tolerance import assert_close, conv_magnitude, conv_reduction

import clconv
from clconv.ops import launch
from clconv.ops.geometry import conv_geometry
from clconv.ops.packed_conv import conv_tile
from clconv.ops.plan import plans
from clconv.runtime.program import programs

# (input shape, weight shape, stride, padding): ResNet-18's stem and its 3x3 / 1x1 layers at
# stride 1 and 2, with other channel counts, sizes and paddings than ResNet-18's own (more than 16
# input channels after the stem: 'direct' runs cl/conv_direct.cl on them, conv_grouped.cl on it)
LAYERS = [
    ((1, 3, 32, 32), (16, 3, 7, 7), 2, 3),
    ((1, 24, 8, 8), (24, 24, 3, 3), 1, 1),
    ((1, 24, 8, 8), (32, 24, 3, 3), 2, 1),
    ((1, 32, 4, 4), (32, 32, 3, 3), 1, 1),
    ((1, 24, 8, 8), (32, 24, 1, 1), 2, 0),
    ((1, 32, 4, 4), (64, 32, 3, 3), 2, 1),
    ((1, 64, 2, 2), (64, 64, 3, 3), 1, 1),
    ((1, 32, 4, 4), (64, 32, 1, 1), 2, 0),
    ((2, 24, 6, 5), (40, 24, 3, 3), 1, 2),  # another batch, odd sizes, another padding
    ((1, 40, 6, 6), (48, 40, 3, 3), 2, 1),  # stride 2, K >= 256 (as (64, 32) above)
    ((1, 20, 8, 8), (24, 20, 3, 3), 2, 1),  # stride 2, K < 256 (as (32, 24) above)
]


@pytest.fixture
def empty_cache(dev):
    """The device's program cache, emptied for the test and restored after it: what a test counts
    does not depend on what earlier tests built (or on the cache's evictions once it is full)."""
    cache = programs(dev)
    saved = (dict(cache.entries), dict(cache.kernels))
    cache.entries.clear()
    cache.kernels.clear()
    plans(dev).clear()  # a cached plan of an earlier test would hold its kernels: none is built
    yield cache
    cache.entries.clear()
    cache.kernels.clear()
    cache.entries.update(saved[0])
    cache.kernels.update(saved[1])


def _kind(dev, algorithm: str, xs, ws, stride: int, padding: int) -> tuple:
    """What a layer's programs are per: kernel size, stride and, for the packed GEMM's paths, the
    register tile (one per kernel size and stride on devices whose tile does not depend on K and
    C_out)."""
    tile = None if algorithm == "direct" else conv_tile(
        dev, conv_geometry(2, xs, ws, stride, padding, 1, 1, "zeros"), np.float32)
    return ws[2:], stride, tile


@pytest.mark.parametrize("algorithm", ["implicit", "im2col_packed", "direct"])
def test_layers_of_one_kernel_size_and_stride_share_programs(dev, rng, algorithm, empty_cache):
    cache = empty_cache
    seen: set[tuple] = set()
    for xs, ws, stride, padding in LAYERS:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        before, keys = cache.builds, set(cache.entries)
        got = clconv.conv2d(x, w, None, stride=stride, padding=padding, algorithm=algorithm)
        built = cache.builds - before
        kind = _kind(dev, algorithm, xs, ws, stride, padding)
        tile = kind[2]
        if kind in seen:
            new = [(source, [o for o in opts if o.startswith("-D")])
                   for source, opts in set(cache.entries) - keys]
            assert built == 0, (f"{algorithm}: a {ws[2:]} stride-{stride} layer ({tile}) of "
                                f"another size ({xs} x {ws}) built {built} program(s): {new}")
        seen.add(kind)
        assert_close(got, ref.conv_nd(x, w, None, stride, padding), np.float32,
                     conv_reduction(w), conv_magnitude(x, w, None))
    assert len({k[:2] for k in seen}) == 4  # stem, 3x3 s1, 3x3 s2, 1x1 s2
    # every kind met more than once: each one's sharing was checked
    kinds = [_kind(dev, algorithm, *layer) for layer in LAYERS]
    assert all(kinds.count(k) >= 2 for k in set(kinds) if k[0] == (3, 3))


def test_a_resnet18_set_builds_few_programs(dev, empty_cache):
    """The whole set planned with algorithm='implicit' from an empty program cache: at most one
    convolution program per (kernel size, stride, register tile) plus the filter packing per
    tile (every size a -D, it was one per layer)."""
    before = empty_cache.builds
    for xs, ws, stride, padding in LAYERS:  # plans (not cached): each configures anew
        clconv.plan_conv2d(xs, ws, bias=False, stride=stride, padding=padding,
                           algorithm="implicit")
    kinds = {_kind(dev, "implicit", *layer) for layer in LAYERS}
    assert empty_cache.builds - before <= len(kinds) + len({k[2] for k in kinds})


# EfficientNet-B0's squeeze-excitation convolutions (1x1 at 1x1 output: 'auto' runs 'direct' on
# them), (C_in, C_out): the squeezes to 4-48 channels and the excitations back to 96-1152.
SQUEEZE_EXCITATION = [(96, 4), (144, 6), (240, 10), (480, 20), (672, 28), (1152, 48),
                      (20, 480), (28, 672), (48, 1152), (32, 96), (40, 144)]


@pytest.mark.parametrize("batch", [1, 3])
def test_single_position_convolutions_share_work_group_sizes(dev, rng, batch, monkeypatch):
    """'direct' on one output position an image takes its local size from
    launch.cpu_work_group on CPU devices (PoCL builds a work-group function per local size
    at the first launch: left to PoCL, the layers above met eleven), results exact to the
    float64 oracle's tolerance whatever the groups."""
    from clconv.blas.engine import cpu_shaped
    from clconv.runtime import program

    seen: list[tuple] = []
    enqueue = program.cl.enqueue_nd_range_kernel

    def recording(queue, kernel, global_size, local_size, *args, **kwargs):
        if kernel.function_name == "conv_direct":
            seen.append((tuple(global_size), local_size))
        return enqueue(queue, kernel, global_size, local_size, *args, **kwargs)

    monkeypatch.setattr(program.cl, "enqueue_nd_range_kernel", recording)
    for cin, cout in SQUEEZE_EXCITATION:
        x = rng.standard_normal((batch, cin, 1, 1)).astype(np.float32)
        w = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        got = clconv.conv2d(x, w, b, algorithm="direct", activation="silu")
        want = ref.conv_nd(x, w, b, 1, 0)
        assert_close(got, want * (1 / (1 + np.exp(-want))), np.float32, conv_reduction(w),
                     conv_magnitude(x, w, b))
    direct = [s for s in seen if s[0][:2] == (1, 1)]
    assert len(direct) == sum(cin > 16 for cin, _ in SQUEEZE_EXCITATION)  # conv_grouped below
    if cpu_shaped(dev):
        units = dev.cl_device.max_compute_units
        for (_, _, items), local in direct:
            assert local == (1, 1, launch.cpu_work_group(items, units))
        assert len({local for _, local in direct}) <= 2


def test_cpu_work_group_rule():
    """Groups of 16 only where they divide the work-items and leave >= 4 a compute unit."""
    assert launch.cpu_work_group(1152, 2) == 16
    assert launch.cpu_work_group(128, 2) == 16
    assert launch.cpu_work_group(112, 2) == 1  # 7 groups: unbalanced on 2
    assert launch.cpu_work_group(240, 16) == 1
    assert launch.cpu_work_group(10, 1) == 1


def test_first_use_networks_follow_the_papers():
    """benchmarks.first_use's networks (what the bench's --first-use times): ResNet-18 with 20
    convolutions and 1000 classes, MobileNetV2 with 52 (17 of them depthwise)."""
    torch = pytest.importorskip("torch")
    from benchmarks import first_use

    x = torch.randn(1, 3, 64, 64)
    for build, convs, depthwise in ((first_use.resnet18, 20, 0), (first_use.mobilenet_v2, 52, 17)):
        model = build().eval()
        found = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(found) == convs
        assert sum(m.groups == m.in_channels > 1 for m in found) == depthwise
        with torch.no_grad():
            assert model(x).shape == (1, 1000)
