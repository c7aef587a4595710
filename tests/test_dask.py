"""clconv.dask: convolutions of chunked dask arrays, on the threaded scheduler and on a
distributed.LocalCluster of 2 worker processes (1 thread each), against clconv's whole-array call
and the numpy float64 reference."""

from __future__ import annotations

import os
import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pytest
import reference as ref
from tolerance import assert_close, assert_exact, conv_magnitude, conv_reduction

import clconv
import clconv.dask as cd

MODES = ("zeros", "reflect", "replicate", "circular")


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % 2**32)


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _check(got, x, w, b=None, **kw):
    """got equals the float64 reference within tolerance and clconv's whole-array call."""
    nd = w.ndim - 2
    expect = ref.conv_nd(x, w, b, **kw)
    assert_close(got, expect, reduction=conv_reduction(w, kw.get("groups", 1)),
                 magnitude=conv_magnitude(x, w, b))
    whole = {1: clconv.conv1d, 2: clconv.conv2d, 3: clconv.conv3d}[nd](x, w, b, **kw)
    assert_close(got, whole.astype(np.float64), reduction=conv_reduction(w, kw.get("groups", 1)),
                 magnitude=conv_magnitude(x, w, b))


def test_import_clconv_does_not_import_dask():
    code = "import sys, clconv; sys.exit('dask' in sys.modules or 'clconv.dask' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- threaded scheduler ----------------------------------------------------------------------------
def test_batch_chunks_map_block_by_block(rng):
    x, w, b = _rand(rng, 7, 3, 6, 5), _rand(rng, 4, 3, 3, 3), _rand(rng, 4)
    y = cd.conv2d(da.from_array(x, chunks=(2, 3, 6, 5)), w, b, padding=1, algorithm="direct")
    assert y.chunks == ((2, 2, 2, 1), (4,), (6,), (5,))
    graph = dict(y.__dask_graph__())
    tasks = [k for k in graph if isinstance(k, tuple) and k[0] == y.name]
    assert len(tasks) == 4  # one task per batch chunk
    got = y.compute(scheduler="threads")
    assert_exact(got, clconv.conv2d(x, w, b, padding=1, algorithm="direct"))
    _check(got, x, w, b, padding=1)


def test_weights_are_one_key_in_the_graph(rng):
    x, w, b = _rand(rng, 6, 2, 9, 8), _rand(rng, 3, 2, 3, 3), _rand(rng, 3)
    y = cd.conv2d(da.from_array(x, chunks=(2, 2, 4, 3)), w, b, padding=1)
    graph = dict(y.__dask_graph__())
    holding = [k for k, v in graph.items() if isinstance(v, np.ndarray) and v.shape == w.shape]
    assert len(holding) == 1
    # output j of H starts at input j - 1: the chunks (4, 4, 1) give output blocks (5, 4)
    assert y.chunks == ((2, 2, 2), (3,), (5, 4), (4, 3, 1))
    assert len([k for k in graph if isinstance(k, tuple) and k[0] == y.name]) == 3 * 2 * 3


@pytest.mark.parametrize("stride,dilation,padding", [(2, 1, 1), (1, 2, 2), (2, 2, (2, 1)),
                                                     (3, 1, 0)])
def test_uneven_spatial_chunks_stride_and_dilation(rng, stride, dilation, padding):
    x, w, b = _rand(rng, 3, 4, 13, 11), _rand(rng, 5, 4, 3, 3), _rand(rng, 5)
    xd = da.from_array(x, chunks=(2, 4, (5, 3, 5), (2, 9)))
    y = cd.conv2d(xd, w, b, stride=stride, padding=padding, dilation=dilation)
    got = y.compute(scheduler="threads")
    assert y.shape == got.shape
    _check(got, x, w, b, stride=stride, padding=padding, dilation=dilation)


@pytest.mark.parametrize("mode", MODES)
def test_padding_modes_2d(rng, mode):
    x, w = _rand(rng, 2, 3, 10, 9), _rand(rng, 4, 3, 3, 5)
    y = cd.conv2d(da.from_array(x, chunks=(1, 1, (1, 6, 3), (4, 5))), w, stride=(1, 2),
                  padding=(1, 2), padding_mode=mode)
    _check(y.compute(scheduler="threads"), x, w, stride=(1, 2), padding=(1, 2), padding_mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_padding_modes_3d(rng, mode):
    x, w = _rand(rng, 2, 2, 7, 6, 8), _rand(rng, 3, 2, 3, 3, 3)
    y = cd.conv3d(da.from_array(x, chunks=(1, 2, (1, 2, 4), 6, (5, 1, 2))), w, padding=(2, 1, 2),
                  stride=(1, 2, 1), padding_mode=mode)
    _check(y.compute(scheduler="threads"), x, w, padding=(2, 1, 2), stride=(1, 2, 1),
           padding_mode=mode)


def test_chunks_smaller_than_the_halo(rng):
    # kernel 5 with dilation 2 reaches 8 neighbours; chunks of 1 and 2 take several chunks each
    x, w = _rand(rng, 2, 2, 12, 10), _rand(rng, 2, 2, 5, 5)
    xd = da.from_array(x, chunks=(2, 2, (1, 2, 1, 1, 3, 2, 2), 1))
    y = cd.conv2d(xd, w, padding=4, dilation=2, padding_mode="reflect")
    _check(y.compute(scheduler="threads"), x, w, padding=4, dilation=2, padding_mode="reflect")


def test_conv1d_same_padding_even_kernel_and_groups(rng):
    x, w, b = _rand(rng, 3, 4, 17), _rand(rng, 6, 2, 4), _rand(rng, 6)
    y = cd.conv1d(da.from_array(x, chunks=(3, 2, 17)), w, b, padding="same", groups=2)
    assert y.chunks[1] == (6,)  # the channel chunks were joined
    _check(y.compute(scheduler="threads"), x, w, b, padding="same", groups=2)


def test_unbatched_and_activation(rng):
    x, w = _rand(rng, 3, 8, 9), _rand(rng, 2, 3, 3, 3)
    y = cd.conv2d(da.from_array(x, chunks=(3, 4, 5)), w, padding=1, activation="relu")
    assert y.shape == (2, 8, 9)
    expect = np.maximum(ref.conv2d(x, w, padding=1), 0)
    assert_close(y.compute(scheduler="threads"), expect, reduction=27,
                 magnitude=conv_magnitude(x, w))


@pytest.mark.parametrize("nd,stride,padding,output_padding,dilation", [
    (1, 2, 1, 1, 1), (2, 3, 2, 2, 1), (2, 2, 0, 1, 2), (3, 2, 1, 1, 1)])
def test_conv_transpose_chunked(rng, nd, stride, padding, output_padding, dilation):
    size = {1: (9,), 2: (9, 10), 3: (5, 4, 6)}[nd]
    x, w, b = _rand(rng, 3, 4, *size), _rand(rng, 4, 3, *(3,) * nd), _rand(rng, 3)
    chunks = {1: ((1, 4, 4),), 2: ((1, 4, 4), (3, 1, 6)), 3: ((2, 3), (1, 3), (4, 2))}[nd]
    xd = da.from_array(x, chunks=(2, 2, *chunks))
    fn = {1: cd.conv_transpose1d, 2: cd.conv_transpose2d, 3: cd.conv_transpose3d}[nd]
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation)
    got = fn(xd, w, b, **kw).compute(scheduler="threads")
    expect = ref.conv_transpose_nd(x, w, b, **kw)
    assert_close(got, expect, reduction=4 * 3 ** nd, magnitude=conv_magnitude(x, w, b))
    whole = {1: clconv.conv_transpose1d, 2: clconv.conv_transpose2d,
             3: clconv.conv_transpose3d}[nd](x, w, b, **kw)
    assert_close(got, whole.astype(np.float64), reduction=4 * 3 ** nd,
                 magnitude=conv_magnitude(x, w, b))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_transpose_empty_output_on_a_chunked_axis(rng, nd):
    """An output extent of 0 (torch's empty result) on an axis cut into chunks: the empty
    array, as the whole-array call and a single chunk give."""
    x, w = _rand(rng, 2, 1, *(2,) * nd), _rand(rng, 1, 1, *(3,) * nd)
    want = {1: clconv.conv_transpose1d, 2: clconv.conv_transpose2d,
            3: clconv.conv_transpose3d}[nd](x, w, padding=2)
    assert want.shape == (2, 1, *(0,) * nd)
    fn = {1: cd.conv_transpose1d, 2: cd.conv_transpose2d, 3: cd.conv_transpose3d}[nd]
    for chunks in ((2, 1, *(2,) * nd), (1, 1, *(1,) * nd)):
        y = fn(da.from_array(x, chunks=chunks), w, padding=2)
        assert y.shape == want.shape
        assert y.compute(scheduler="threads").shape == want.shape


def test_weights_are_the_functional_ops_operands(rng):
    """Weights and biases as the functional ops take them: numpy, CPU torch tensors and pyopencl
    arrays; lists and tensors that require grad refused with their TypeErrors."""
    import pyopencl.array as cla

    x, w = _rand(rng, 2, 3, 6, 6), _rand(rng, 4, 3, 3, 3)
    xd = da.from_array(x, chunks=(1, 3, 3, 3))
    dev = clconv.current_device()
    _check(cd.conv2d(xd, cla.to_device(dev.queue, w), padding=1).compute(scheduler="threads"),
           x, w, padding=1)
    with pytest.raises(TypeError, match="weight is a Python list"):
        cd.conv2d(xd, w.tolist())
    with pytest.raises(TypeError, match="bias is a Python list"):
        cd.conv_transpose2d(xd, w.transpose(1, 0, 2, 3), [0.0] * 4)
    torch = pytest.importorskip("torch")
    _check(cd.conv2d(xd, torch.from_numpy(w), padding=1).compute(scheduler="threads"), x, w,
           padding=1)
    with pytest.raises(TypeError, match="requires grad.*clconv.torch"):
        cd.conv2d(xd, torch.from_numpy(w).requires_grad_())


def test_errors_are_the_whole_array_calls(rng):
    x, w = _rand(rng, 2, 3, 6, 6), _rand(rng, 4, 3, 3, 3)
    xd = da.from_array(x, chunks=(1, 3, 3, 3))
    with pytest.raises(TypeError, match="dask.array.Array"):
        cd.conv2d(x, w)
    with pytest.raises(ValueError, match="reflect"):
        cd.conv2d(xd, w, padding=6, padding_mode="reflect")
    with pytest.raises(ValueError, match="channel mismatch"):
        cd.conv2d(xd, w[:, :2])
    with pytest.raises(TypeError, match="mixed dtypes"):
        cd.conv2d(xd, w.astype(np.float64))
    with pytest.raises(ValueError, match="bias must have shape"):
        cd.conv2d(xd, w, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="algorithm"):
        cd.conv2d(xd, w, algorithm="fft")
    with pytest.raises(ValueError, match="output_padding"):
        cd.conv_transpose2d(xd, w.transpose(1, 0, 2, 3), stride=1, output_padding=1)


def test_an_algorithm_a_block_cannot_take_is_refused_when_the_graph_is_built(rng):
    """An explicit algorithm the whole array takes but a spatial block of its chunking does not
    ('splitk' needs 48 output positions an image) failed only at compute(), naming a block's
    sizes: now a ValueError naming the chunking when the graph is built; one the whole array
    cannot take says so without the chunking; the same chunking unsplit computes."""
    x, w = _rand(rng, 1, 4, 13, 11), _rand(rng, 4, 4, 3, 3)
    with pytest.raises(ValueError, match="splitk.*of this spatial chunking.*rechunk"):
        cd.conv2d(da.from_array(x, chunks=(1, 4, 5, 4)), w, padding=1, algorithm="splitk")
    with pytest.raises(ValueError, match=r"pointwise.*this convolution: it needs a 1x1"):
        cd.conv2d(da.from_array(x, chunks=(1, 4, 5, 4)), w, padding=1, algorithm="pointwise")
    got = cd.conv2d(da.from_array(x, chunks=(1, 4, 13, 11)), w, padding=1,
                    algorithm="splitk").compute()
    assert_exact(got, clconv.conv2d(x, w, padding=1, algorithm="splitk"))
    got = cd.conv2d(da.from_array(x, chunks=(1, 4, 5, 4)), w, padding=1,
                    algorithm="direct").compute()
    assert_exact(got, clconv.conv2d(x, w, padding=1, algorithm="direct"))


def test_device_plugin_numbers_workers_without_shared_state(monkeypatch, tmp_path):
    """A worker's number comes from its name, else its address, else its pid: no file anywhere."""
    from types import SimpleNamespace

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # a counter file would land here
    number = cd._worker_number
    assert number(SimpleNamespace(name="node7-3", address="tcp://10.0.0.1:4001")) == 3
    assert number(SimpleNamespace(name=0, address="tcp://10.0.0.1:4001")) == 0  # LocalCluster's
    assert number(SimpleNamespace(name="gpu-worker", address="tcp://10.0.0.1:4001")) == 4001
    assert number(SimpleNamespace(name="gpu-worker", address=None)) == os.getpid()
    assert list(tmp_path.iterdir()) == []
    plugin = cd.DevicePlugin()
    usable = [d for d in clconv.devices() if d.usable]
    # setup() sets CLCONV_DEVICE in this process: setenv first, so that the test restores it
    monkeypatch.setenv("CLCONV_DEVICE", os.environ.get("CLCONV_DEVICE", ""))
    plugin.setup(SimpleNamespace(name="w-5", address=None))  # round-robin: 5 mod len(usable)
    dev = usable[5 % len(usable)]
    assert plugin.chosen == os.environ["CLCONV_DEVICE"]
    assert plugin.chosen == f"{dev.platform_index}:{dev.device_index}"


# -- distributed.LocalCluster: 2 worker processes, 1 thread each ----------------------------------
@pytest.fixture(scope="module")
def client():
    import distributed  # installed with clconv[dask] and clconv[test]

    with dask.config.set({"distributed.scheduler.allowed-failures": 3}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=40)
        c = distributed.Client(cluster)
        c.register_plugin(cd.DevicePlugin())
        yield c
        c.close()
        cluster.close()


def test_local_cluster_each_worker_its_device(client, rng):
    chosen = client.run(lambda: os.environ.get("CLCONV_DEVICE"))
    usable = [f"{d.platform_index}:{d.device_index}" for d in clconv.devices() if d.usable]
    names = {addr: info["name"] for addr, info in client.scheduler_info()["workers"].items()}
    assert {chosen[a] for a in chosen} <= set(usable)
    for addr, spec in chosen.items():  # round-robin by worker number
        assert spec == usable[int(names[addr]) % len(usable)]

    x, w, b = _rand(rng, 8, 3, 12, 10), _rand(rng, 4, 3, 3, 3), _rand(rng, 4)
    xd = da.from_array(x, chunks=(2, 3, (5, 7), 10))
    y = cd.conv2d(xd, w, b, stride=2, padding=1, padding_mode="circular")
    _check(y.compute(), x, w, b, stride=2, padding=1, padding_mode="circular")


def test_local_cluster_killed_worker_is_rerun(client, rng, tmp_path):
    marker = str(tmp_path / "killed-once")

    def die_once(block):
        # The first task to get here kills its own worker process (as a crash would); Dask reruns
        # what that worker held or ran on the other worker and on the restarted one.
        from distributed import get_worker

        get_worker()  # raises outside a worker: never kill the test process
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return block

    x, w, b = _rand(rng, 8, 2, 9, 8), _rand(rng, 3, 2, 3, 3), _rand(rng, 3)
    y = cd.conv2d(da.from_array(x, chunks=(2, 2, (4, 5), 8)), w, b, padding=1,
                  padding_mode="replicate")
    got = y.map_blocks(die_once, meta=np.empty((0,) * 4, y.dtype)).compute()
    assert os.path.exists(marker)  # a worker did die
    _check(got, x, w, b, padding=1, padding_mode="replicate")
