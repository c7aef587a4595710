"""Many threads at once: conv2d from 8+ threads on one device, threads in different
`clconv.device()` blocks (two Device objects, so two contexts and queues), and the caches they share
(kernels and programs, the column buffer, the lazily made context and queue) under contention."""

from __future__ import annotations

import importlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyopencl.array as cla
import pytest
import reference as ref
from tolerance import assert_close, conv_magnitude, conv_reduction

THREADS = 8
CALLS = 50


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


@pytest.fixture(autouse=True)
def frequent_thread_switches():
    """Python hands the GIL over every 5 ms by default, which lets most of a call's set-args +
    enqueue sequence run without interleaving; switching every microsecond makes a missing lock
    show up (verified: with dev.lock replaced by a no-op these tests fail)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _configs(rng):
    """Small convolutions of different geometries and paths, with their float64 references."""
    specs = [
        ((2, 3, 9, 9), (4, 3, 3, 3), {"padding": 1}, "im2col"),
        ((3, 4, 8, 7), (6, 2, 3, 2), {"groups": 2, "stride": 2}, "im2col"),
        ((1, 4, 10, 10), (8, 4, 1, 1), {}, "im2col"),  # pointwise: no column buffer
        ((2, 3, 9, 9), (4, 3, 3, 3), {"padding": 1}, "direct"),
        ((2, 2, 7, 9), (3, 2, 3, 3), {"padding": 2, "padding_mode": "reflect", "dilation": 2},
         "auto"),
        ((4, 6, 12, 12), (6, 1, 3, 3), {"groups": 6, "padding": 1}, "auto"),  # depthwise
        ((3, 5, 16, 16), (7, 5, 5, 5), {"padding": 2, "stride": (1, 2)}, "im2col"),  # larger columns
    ]
    configs = []
    for x_shape, w_shape, kw, algorithm in specs:
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        b = rng.standard_normal(w_shape[0]).astype(np.float32)
        configs.append((x, w, b, kw, algorithm, ref.conv_nd(x, w, b, **kw)))
    return configs


def _check(got, config):
    x, w, b, kw, algorithm, want = config
    got = got.get() if isinstance(got, cla.Array) else got
    assert_close(got, want, np.float32, conv_reduction(w), conv_magnitude(x, w, b),
                 err_msg=f"{x.shape} {w.shape} {kw} {algorithm}")


def _run_threads(worker, n=THREADS):
    """Runs worker(i) in n threads started together; re-raises the first failure."""
    barrier = threading.Barrier(n)

    def start(i):
        barrier.wait()
        return worker(i)

    with ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(start, i) for i in range(n)]]


def test_many_threads_one_device(clconv, rng):
    """8 threads x 50 calls of mixed geometries, algorithms and input kinds, all checked."""
    configs = _configs(rng)
    dev = clconv.current_device()
    for config in configs:  # build the kernels first: this test is about running, not building
        _check(clconv.conv2d(*config[:3], algorithm=config[4], **config[3]), config)

    def worker(i):
        local = np.random.default_rng(i)
        for call in range(CALLS):
            config = configs[int(local.integers(len(configs)))]
            x, w, b, kw, algorithm, _ = config
            if call % 3 == 0:  # device arrays in, device array out
                x, w, b = (cla.to_device(dev.queue, a) for a in (x, w, b))
            _check(clconv.conv2d(x, w, b, algorithm=algorithm, **kw), config)
        return CALLS

    assert sum(_run_threads(worker)) == THREADS * CALLS


def test_threads_in_different_device_blocks(clconv, rng):
    """Half the threads compute inside `with clconv.device(0)`, half inside a block of a second
    Device (its own context, queue, lock and caches on the same OpenCL device); each thread sees its
    own block's device, and every result is right."""
    device_module = importlib.import_module("clconv.runtime.device")
    first = clconv.devices()[0]
    second = device_module.Device(first.cl_device, first.index, first.platform_index,
                                  first.device_index)
    configs = _configs(rng)[:4]

    def worker(i):
        local = np.random.default_rng(100 + i)
        with clconv.device(first) if i % 2 else second as dev:
            for call in range(CALLS):
                assert clconv.current_device() is dev
                config = configs[int(local.integers(len(configs)))]
                x, w, b, kw, algorithm, _ = config
                if call % 4 == 0:
                    x = cla.to_device(dev.queue, x)
                    got = clconv.conv2d(x, w, b, algorithm=algorithm, **kw)
                    assert got.context == dev.context
                else:
                    got = clconv.conv2d(x, w, b, algorithm=algorithm, **kw)
                _check(got, config)
        return dev

    used = _run_threads(worker)
    assert {id(d) for d in used} == {id(first), id(second)}
    assert second.context != first.context
    # an array of one block's context is refused (clearly) in the other's
    x = cla.to_device(second.queue, configs[0][0])
    with clconv.device(first), pytest.raises(ValueError, match="input.*another OpenCL context"):
        clconv.conv2d(x, configs[0][1])


def test_kernel_cache_builds_once_under_contention(clconv, monkeypatch):
    """8 threads asking at once for a kernel nobody has built get the same object, built once."""
    from clconv.runtime import program

    dev = clconv.current_device()
    builds = []
    real = program._program

    def counting(dev_, cache, source, options):
        if (source, options) not in cache.entries:
            builds.append(options)
        return real(dev_, cache, source, options)

    monkeypatch.setattr(program, "_program", counting)
    defines = {"REAL": "float", "UNUSED_DEFINE": 1234567, "INDEX_T": "int"}  # a fresh build
    kernels = _run_threads(lambda i: program.kernel(dev, "epilogue.cl", "epilogue", defines))
    assert len({id(k) for k in kernels}) == 1
    assert len(builds) == 1


def test_context_and_queue_are_made_once(clconv):
    device_module = importlib.import_module("clconv.runtime.device")
    first = clconv.devices()[0]
    fresh = device_module.Device(first.cl_device, first.index, first.platform_index,
                                 first.device_index)
    pairs = _run_threads(lambda i: (fresh.context, fresh.queue), n=16)
    assert len({id(c) for c, _ in pairs}) == 1
    assert len({id(q) for _, q in pairs}) == 1
    assert pairs[0][1].context == pairs[0][0]


def test_column_buffer_growth_and_release_under_contention(clconv, rng):
    """Threads whose calls need ever larger column buffers (so the shared buffer is replaced while
    others have work queued on the old one), and a thread releasing it meanwhile."""
    from clconv.runtime.memory import release_column_buffer

    dev = clconv.current_device()
    release_column_buffer(dev)
    sizes = [6, 9, 13, 18, 24]
    configs = []
    for h in sizes:
        x = rng.standard_normal((2, 3, h, h)).astype(np.float32)
        w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        configs.append((x, w, None, {"padding": 1}, "im2col", ref.conv_nd(x, w, padding=1)))
        clconv.conv2d(x, w, padding=1, algorithm="im2col")  # build
    stop = threading.Event()

    def worker(i):
        if i == 0:
            released = 0
            while not stop.is_set():
                release_column_buffer(dev)
                released += 1
                stop.wait(0.002)
            return released
        try:
            for repeat in range(10):
                for config in configs if i % 2 else configs[::-1]:
                    x, w, b, kw, algorithm, _ = config
                    limit = None if repeat % 2 else 27 * 4 * 64  # also split into column ranges
                    _check(clconv.conv2d(x, w, b, algorithm=algorithm, workspace_limit=limit, **kw),
                           config)
        finally:
            if i == 1:
                stop.set()
        return 0

    _run_threads(worker)

