"""Memory budget and sizes: the column workspace stays under `workspace_limit` (results identical
however the call is split), `workspace_size` tells what a call needs, oversized requests and the
drivers' out-of-memory failures become MemoryError naming the sizes, and the 64-bit index path of the
kernels computes the same results as the 32-bit one."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import pytest
import reference as ref
from helpers import spy_im2col
from tolerance import assert_close, assert_exact, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv



@pytest.fixture
def im2col_launches(clconv, monkeypatch):
    """(batch, ncols) of every im2col launch of the convolution path."""
    from clconv.ops import conv_algorithms

    return spy_im2col(monkeypatch, conv_algorithms)


# (x shape, w shape, conv kwargs)
SPLIT_CASES = {
    "3x3-pad1": ((5, 6, 23, 19), (7, 6, 3, 3), {"padding": 1}),
    "strided-dilated": ((4, 4, 17, 21), (6, 4, 3, 2), {"stride": (2, 1), "dilation": (1, 2)}),
    "grouped": ((3, 6, 12, 12), (6, 2, 3, 3), {"groups": 3, "padding": 1}),
    "more-groups-than-images": ((2, 8, 9, 9), (8, 2, 3, 3), {"groups": 4}),
    "reflect": ((3, 3, 10, 11), (4, 3, 5, 3), {"padding": 2, "padding_mode": "reflect"}),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_split_results_are_identical(clconv, rng, case, column_allocations, im2col_launches):
    """Every limit, from the whole batch down to one column, gives bit-identical results, and no
    column buffer allocation exceeds the limit."""
    from clconv.runtime.memory import release_column_buffer

    x_shape, w_shape, kw = SPLIT_CASES[case]
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    need = clconv.workspace_size(x, w, algorithm="im2col", **kw)
    rows = x_shape[1] * int(np.prod(w_shape[2:]))
    assert need > 0 and need % (x_shape[0] * rows * 4) == 0
    full = clconv.conv2d(x, w, b, algorithm="im2col", activation="relu", **kw)
    want = np.maximum(ref.conv_nd(x, w, b, **kw), 0)
    assert_close(full, want, np.float32, conv_reduction(w), conv_magnitude(x, w, b))
    image = need // x_shape[0]
    for limit in (need, need - 1, image, image - 1, image // 3, rows * 4 * 2 + 3, rows * 4):
        release_column_buffer(clconv.current_device())  # so that this call allocates its own
        column_allocations.clear()
        im2col_launches.clear()
        got = clconv.conv2d(x, w, b, algorithm="im2col", activation="relu", workspace_limit=limit,
                            **kw)
        np.testing.assert_array_equal(got, full, err_msg=f"workspace_limit={limit}")
        assert column_allocations, "the column buffer cache was emptied, so one is allocated"
        assert max(column_allocations) <= limit, (limit, column_allocations)
        if limit < need:
            assert len(im2col_launches) > 1, f"workspace_limit={limit} < {need} must split the call"
        else:
            assert len(im2col_launches) == 1
        if limit < image:  # one image at a time, in ranges of output positions
            assert all(batch == 1 for batch, _ in im2col_launches)
            assert max(n for _, n in im2col_launches) <= limit // (rows * 4)


def test_limit_smaller_than_one_column_is_a_memory_error(clconv):
    x = np.ones((1, 4, 6, 6), np.float32)
    w = np.ones((2, 4, 3, 3), np.float32)
    with pytest.raises(MemoryError, match="workspace_limit=100 .*36 values = 144 bytes"):
        clconv.conv2d(x, w, algorithm="im2col", workspace_limit=100)
    # the direct path needs no workspace at all
    clconv.conv2d(x, w, algorithm="direct", workspace_limit=100)


@pytest.mark.parametrize("limit, exc", [(0, ValueError), (-5, ValueError), (1.5e6, TypeError),
                                        ("1MB", TypeError), (True, TypeError)])
def test_bad_workspace_limit(clconv, limit, exc):
    with pytest.raises(exc, match="workspace_limit"):
        clconv.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32),
                      workspace_limit=limit)


@pytest.mark.parametrize("algorithm, x_shape, w_shape, kw", [
    ("splitk", (1, 64, 7, 7), (64, 64, 3, 3), {"padding": 1}),
    ("pointwise", (1, 16, 14, 14), (24, 16, 1, 1), {"stride": 2}),
    ("im2col_packed", (1, 8, 9, 9), (6, 8, 3, 3), {"padding": 1}),
])
def test_workspace_size_is_the_plans(clconv, algorithm, x_shape, w_shape, kw):
    """workspace_size for the algorithms with their own workspace: what their plan takes."""
    plan = clconv.plan_conv2d(x_shape, w_shape, **kw, algorithm=algorithm)
    assert clconv.workspace_size(x_shape, w_shape, **kw, algorithm=algorithm) == \
        plan.workspace_bytes > 0


def test_pointwise_and_direct_need_no_workspace(clconv, column_allocations):
    x = np.ones((2, 8, 5, 5), np.float32)
    assert clconv.workspace_size(x, np.ones((4, 8, 1, 1), np.float32), algorithm="im2col") == 0
    assert clconv.workspace_size(x, np.ones((4, 8, 3, 3), np.float32), algorithm="direct") == 0
    clconv.conv2d(x, np.ones((4, 8, 1, 1), np.float32), algorithm="im2col", workspace_limit=1)
    assert column_allocations == []


def test_workspace_size_of_large_networks(clconv):
    """VGG's first blocks at batch 64 (shapes only: nothing runs)."""
    # conv1_1: 3 -> 64 channels; conv1_2: 64 -> 64 channels, 224 x 224, 3x3, padding 1
    assert clconv.workspace_size((64, 3, 224, 224), (64, 3, 3, 3), padding=1,
                                 algorithm="im2col") == 64 * 27 * 224 * 224 * 4
    size = clconv.workspace_size((64, 64, 224, 224), (64, 64, 3, 3), padding=1, algorithm="im2col")
    assert size == 64 * 576 * 224 * 224 * 4 > 2**32
    assert clconv.workspace_size((64, 64, 224, 224), (64, 64, 3, 3), padding=1, algorithm="im2col",
                                 dtype=np.float64) == 2 * size
    for bad in (np.int32, np.bool_):  # (it returned 0 for an integer dtype)
        with pytest.raises(TypeError, match="dtype"):
            clconv.workspace_size((1, 3, 8, 8), (4, 3, 3, 3), algorithm="im2col", dtype=bad)
    from clconv.ops.conv import plan_columns
    from clconv.ops.geometry import conv_geometry

    geo = conv_geometry(2, (64, 64, 224, 224), (64, 64, 3, 3), 1, 1, 1, 1)
    for limit in (2**20, 2**27, 2**30):
        plan = plan_columns(geo, 4, limit)
        assert 0 < plan.nbytes <= limit
        assert plan.batch_chunk * plan.col_chunk * 576 * 4 == plan.nbytes


def test_default_limit_is_a_safe_fraction(clconv):
    from clconv.runtime.memory import default_workspace_limit

    dev = clconv.current_device()
    limit = default_workspace_limit(dev)
    assert 0 < limit <= dev.max_alloc_bytes
    assert limit <= max(dev.global_mem_bytes // 8, 1 << 20)


def test_output_beyond_max_alloc_is_a_memory_error(clconv):
    """Nothing is allocated or uploaded: the inputs are zero-copy broadcast views of one element."""
    dev = clconv.current_device()
    side = int((dev.max_alloc_bytes // 4) ** 0.5) + 2  # one float32 plane just over max_alloc
    x = np.broadcast_to(np.float32(1), (1, 1, side, side))
    with pytest.raises(MemoryError) as info:
        clconv.conv2d(x, np.ones((1, 1, 1, 1), np.float32))
    message = str(info.value)
    assert f"output (1, 1, {side}, {side})" in message and str(dev.max_alloc_bytes) in message
    with pytest.raises(MemoryError, match=r"output \(1, 9, \d+\)"):
        clconv.im2col(x, 3)
    with pytest.raises(MemoryError, match="output"):
        clconv.col2im(np.broadcast_to(np.float32(1), (1, 1, side * side)), (side, side), 1)


def _cl_error(cls, code, routine="clEnqueueNDRangeKernel"):
    return cls(cl._cl._ErrorRecord(routine, code, f"{routine} failed"))


DRIVER_FAILURES = {
    "mem-object-allocation": lambda: _cl_error(cl.MemoryError,
                                               cl.status_code.MEM_OBJECT_ALLOCATION_FAILURE),
    "out-of-resources": lambda: _cl_error(cl.RuntimeError, cl.status_code.OUT_OF_RESOURCES),
    "out-of-host-memory": lambda: _cl_error(cl.MemoryError, cl.status_code.OUT_OF_HOST_MEMORY),
    "invalid-buffer-size": lambda: _cl_error(cl.LogicError, cl.status_code.INVALID_BUFFER_SIZE,
                                             "clCreateBuffer"),
    "clblast-temp-buffer": lambda: RuntimeError(
        "PyCLBlast: 'CLBlastXgemm' failed: CLBlastTempBufferAllocFailure: "
        "CL_MEM_OBJECT_ALLOCATION_FAILURE"),
    "clblast-out-of-resources": lambda: RuntimeError(
        "PyCLBlast: 'CLBlastXgemmStridedBatched' failed: CLBlastOpenCLOutOfResources: "
        "CL_OUT_OF_RESOURCES"),
}


@pytest.mark.parametrize("failure", list(DRIVER_FAILURES))
@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
def test_driver_out_of_memory_becomes_memory_error(clconv, monkeypatch, failure, algorithm):
    from clconv.blas import clblast as gemm
    from clconv.ops import launch

    def fail(*args, **kwargs):
        raise DRIVER_FAILURES[failure]()

    monkeypatch.setattr(launch.DirectConv, "__call__", fail)
    monkeypatch.setattr(gemm, "gemm", fail)
    x = np.ones((2, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises(MemoryError) as info:
        clconv.conv2d(x, w, padding=1, algorithm=algorithm)
    message = str(info.value)
    for text in ("(2, 3, 8, 8)", "(4, 3, 3, 3)", "(2, 4, 8, 8)", "float32", "CL_", "device"):
        assert text in message, (text, message)
    if algorithm == "im2col":
        workspace = int(re.search(r"column workspace (\d+) bytes", message).group(1))
        assert workspace >= 2 * 27 * 64 * 4  # the columns (and whatever the plan stages beside)
    assert isinstance(info.value.__cause__, (cl.Error, RuntimeError))


def test_other_driver_errors_pass_unchanged(clconv, monkeypatch):
    from clconv.ops import launch

    error = _cl_error(cl.LogicError, cl.status_code.INVALID_KERNEL_ARGS)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(launch.DirectConv, "__call__", fail)
    with pytest.raises(cl.LogicError) as info:
        clconv.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32),
                      algorithm="direct")
    assert info.value is error


def test_im2col_driver_failure_becomes_memory_error(clconv, monkeypatch):
    from clconv.ops import launch

    def fail(*args, **kwargs):
        raise _cl_error(cl.MemoryError, cl.status_code.MEM_OBJECT_ALLOCATION_FAILURE)

    monkeypatch.setattr(launch.Im2col, "__call__", fail)
    monkeypatch.setattr(launch.Col2im, "__call__", fail)
    with pytest.raises(MemoryError, match=r"im2col of input \(1, 2, 5, 5\).*output \(1, 18, 9\)"):
        clconv.im2col(np.ones((1, 2, 5, 5), np.float32), 3)
    with pytest.raises(MemoryError, match=r"col2im of input \(1, 18, 9\).*output \(1, 2, 5, 5\)"):
        clconv.col2im(np.ones((1, 18, 9), np.float32), (5, 5), 3)


def test_real_oversized_allocation_becomes_memory_error(clconv):
    """A real driver failure (CL_INVALID_BUFFER_SIZE) through the translation."""
    from clconv.runtime.errors import device_memory_errors
    from clconv.runtime.memory import ColumnBuffer

    dev = clconv.current_device()
    holder = ColumnBuffer()
    with pytest.raises(MemoryError, match="CL_INVALID_BUFFER_SIZE.*columns of 123 bytes"), \
            device_memory_errors(dev, "columns of 123 bytes"):
        holder.get(dev, dev.max_alloc_bytes + 4096)
    assert holder.buffer is None and holder.nbytes == 0  # nothing half-made is kept


# ---------------------------------------------------------------------------
# 64-bit indexing
# ---------------------------------------------------------------------------


def test_index_type_selection(clconv):
    from clconv.runtime.transfer import index_type

    assert index_type() == "int"
    assert index_type(0, 2**31 - 1) == "int"
    assert index_type(2**31) == "long"
    assert index_type(5, 2**40, 7) == "long"


@pytest.fixture
def force_long(clconv, monkeypatch):
    from clconv.runtime import transfer as arrays

    from clconv.runtime.program import programs

    monkeypatch.setattr(arrays, "FORCE_INDEX_T", "long")
    dev = clconv.current_device()
    before = set(programs(dev).kernels)
    yield dev
    built = [k for k in programs(dev).kernels if k not in before]
    assert built and all("-DINDEX_T=long" in k[1] for k in built), built


@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_long_index_path_matches_reference(clconv, rng, force_long, algorithm, nd):
    """The kernels built with INDEX_T=long (used past 2**31 elements, which this device cannot
    allocate) compute the same results, including offsets into pyopencl views."""
    spatial = {1: (13,), 2: (9, 7), 3: (5, 6, 4)}[nd]
    x = rng.standard_normal((2, 4, *spatial)).astype(np.float32)
    w = rng.standard_normal((6, 2, *(3,) * nd)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    conv = getattr(clconv, f"conv{nd}d")
    kw = {"padding": 1, "stride": 2, "groups": 2}
    # input as an offset view inside a larger device buffer
    big = cla.to_device(force_long.queue, np.concatenate([np.zeros(5, np.float32), x.ravel()]))
    x_view = big[5:].reshape(x.shape)
    got = conv(x_view, w, b, algorithm=algorithm, activation="relu", **kw).get()
    want = np.maximum(ref.conv_nd(x, w, b, **kw), 0)
    assert_close(got, want, np.float32, conv_reduction(w), conv_magnitude(x, w, b))
    got = conv(x, w, b, algorithm=algorithm, padding_mode="reflect", padding=1, groups=2)
    assert_close(got, ref.conv_nd(x, w, b, padding=1, padding_mode="reflect", groups=2),
                 np.float32, conv_reduction(w), conv_magnitude(x, w, b))


def test_long_index_path_im2col_col2im_gather(clconv, rng, force_long):
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    assert_exact(clconv.im2col(x, (3, 2), dilation=(1, 2), padding=1, stride=(2, 1)),
                 ref.unfold(x, (3, 2), dilation=(1, 2), padding=1, stride=(2, 1)))
    cols = rng.standard_normal((2, 3 * 6, 4 * 8)).astype(np.float32)
    assert_close(clconv.col2im(cols, (7, 8), (3, 2), dilation=(1, 2), padding=1, stride=(2, 1)),
                 ref.fold(cols, (7, 8), (3, 2), dilation=(1, 2), padding=1, stride=(2, 1)),
                 np.float32, reduction=6)
    # a strided device view is gathered by cl/strided_copy.cl
    big = cla.to_device(force_long.queue, np.repeat(x, 2, axis=-1))
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    got = clconv.conv2d(big[..., ::2], w, algorithm="direct").get()
    assert_close(got, ref.conv_nd(x, w), np.float32, conv_reduction(w), conv_magnitude(x, w))


def test_im2col_positions_past_2_31(clconv):
    """A real 64-bit case on a tiny buffer: a 2x2 image padded by 50000 has 100002**2 > 2**31 output
    positions, so a column range starting past 2**31 (l_start beyond int32) selects INDEX_T=long and
    finds the image's pixels where they are."""
    from clconv.ops.unfold import enqueue_im2col
    from clconv.ops.geometry import conv_geometry

    dev = clconv.current_device()
    pad, ow = 50000, 100002
    geo = conv_geometry(2, (1, 1, 2, 2), (1, 1, 1, 1), 1, pad, 1, 1)
    assert geo.out_size == (ow, ow) and geo.out_spatial > 2**31
    x = cla.to_device(dev.queue, np.array([[[[1, 2], [3, 4]]]], np.float32))
    col = cla.empty(dev.queue, (8,), np.float32)
    for row, want in ((0, [0, 0, 0, 1, 2, 0, 0, 0]), (1, [0, 0, 0, 3, 4, 0, 0, 0])):
        l_start = (pad + row) * ow + pad - 3
        assert l_start > 2**31
        col.fill(np.float32(np.nan))
        with dev.lock:
            enqueue_im2col(dev, geo.defines(), 1, x, 0, col, 0, l_start, 8)
        np.testing.assert_array_equal(col.get(), np.array(want, np.float32))


def test_operand_deep_into_its_buffer_is_rebased(clconv, monkeypatch):
    """Kernels built for 32-bit offsets (from the plan's shapes) must never index past 2**31: a
    device operand ending beyond the limit into its buffer (here the limit is lowered to make a
    small view count) is copied to a buffer of its own first, with the same result."""
    from clconv.ops import plan as plan_module

    dev = clconv.current_device()
    w = np.arange(54, dtype=np.float32).reshape(2, 3, 3, 3) / 50
    x = np.ones((1, 3, 3, 3), np.float32)
    big = cla.to_device(dev.queue, np.concatenate([np.zeros(1000, np.float32), w.ravel()]))
    view = big[1000:].reshape(w.shape)
    want = clconv.conv2d(x, w, algorithm="direct")
    seen = []
    real = plan_module._rebased

    def spy(dev_, a):
        b = real(dev_, a)
        seen.append(b is not a)
        return b

    monkeypatch.setattr(plan_module, "_rebased", spy)
    monkeypatch.setattr(plan_module, "INDEX_LIMIT", 1020)
    got = clconv.conv2d(cla.to_device(dev.queue, x), view, algorithm="direct").get()
    np.testing.assert_array_equal(got, want)
    assert seen == [False, True]  # the input (offset 0) stays, the weight view is rebased


# Every module that launches a clconv kernel imports `kernel` from clconv.runtime.program.
_LAUNCHING_MODULES = ("ops.launch", "ops.precision", "runtime.transfer", "ops.packed_conv",
                      "ops.conv_algorithms", "blas.packed", "ops.pool", "ops.depthwise",
                      "ops.pointwise", "ops.splitk", "ops.unary", "ops.binary", "ops.channels",
                      "ops.shape", "ops.adjoint_paths", "ops.weight_grad_paths",
                      "ops.pad", "ops.interpolate", "ops.group_norm", "ops.softmax",
                      "ops.local_response_norm", "ops.squeeze_excitation", "ops.linear")


@pytest.fixture
def kernel_launches(clconv, monkeypatch):
    """(source, INDEX_T, dev.lock held) of every clconv kernel launched while the test runs."""
    from clconv.ops.plan import plans

    plans(clconv.current_device()).clear()  # plans fetch their kernels when they are made
    records: list[tuple[str, object, bool]] = []
    for name in _LAUNCHING_MODULES:
        module = importlib.import_module(f"clconv.{name}")

        def spy(dev, source, kernel_name, defines, _real=module.kernel):
            built = _real(dev, source, kernel_name, defines)

            def launch(*args, **kwargs):
                records.append((source, defines.get("INDEX_T"), dev.lock._is_owned()))
                return built(*args, **kwargs)

            return launch

        monkeypatch.setattr(module, "kernel", spy)
    return records


def _host(a):
    return a.get() if isinstance(a, cla.Array) else np.asarray(a)


def _case_direct(c, r, dev):
    # C_in / groups > GROUPED_MAX_CIN: cl/conv_direct.cl
    x, w, b = r((2, 20, 7, 6)), r((6, 20, 3, 3)), r(6)
    x3, w3 = r((1, 18, 4, 5, 4)), r((4, 18, 2, 3, 2))
    return [c.conv2d(x, w, b, padding=1, stride=(2, 1), algorithm="direct", activation="relu"),
            c.conv3d(x3, w3, padding=1, padding_mode="reflect", algorithm="direct")]


def _case_grouped(c, r, dev):
    return [c.conv1d(r((2, 4, 19)), r((6, 2, 3)), r(6), padding=2, dilation=2, groups=2,
                     algorithm="direct"),
            c.conv2d(r((2, 3, 9, 20)), r((3, 1, 3, 3)), stride=2, padding=1, groups=3,
                     padding_mode="circular", algorithm="direct", activation="relu"),
            c.conv3d(r((1, 4, 3, 5, 9)), r((4, 2, 2, 3, 3)), padding=(0, 1, 1), groups=2,
                     algorithm="direct")]


def _case_winograd(c, r, dev):
    x, w, b = r((2, 4, 9, 7)), r((5, 4, 3, 3)), r(5)
    filters = 16 * 5 * 4 * 4
    one_row = 16 * (4 + 5) * 4 * 4  # a row of 4 tiles of V and M, float32
    return [c.conv2d(x, w, b, padding=1, algorithm="winograd", activation="relu"),
            c.conv2d(x, w, b, padding=1, algorithm="winograd", workspace_limit=filters + one_row),
            c.conv2d(r((2, 4, 8, 8)), r((6, 2, 3, 3)), padding=1, groups=2,
                     padding_mode="replicate", algorithm="winograd")]


def _case_im2col_folded(c, r, dev):
    x, w, b = r((3, 4, 8, 7)), r((5, 4, 3, 3)), r(5)
    return [c.conv2d(x, w, b, padding=1, algorithm="im2col", activation="relu"),
            c.conv1d(r((3, 4, 17)), r((6, 2, 3)), r(6), groups=2, algorithm="im2col")]


def _case_im2col_ranges(c, r, dev):
    x, w, b = r((2, 4, 8, 7)), r((5, 4, 3, 3)), r(5)
    return [c.conv2d(x, w, b, padding=1, algorithm="im2col", workspace_limit=36 * 4 * 10),
            c.conv3d(r((2, 3, 4, 5, 6)), r((4, 3, 2, 2, 3)), r(4), padding=1, stride=(1, 2, 1),
                     algorithm="im2col", workspace_limit=3 * 12 * 4 * 7, activation="relu")]


def _case_unfold_fold(c, r, dev):
    x = r((2, 3, 7, 8))
    cols = r((2, 3 * 6, 4 * 8))
    return [c.im2col(x, (3, 2), dilation=(1, 2), padding=1, stride=(2, 1)),
            c.col2im(cols, (7, 8), (3, 2), dilation=(1, 2), padding=1, stride=(2, 1)),
            c.im2col1d(r((2, 3, 11)), 3, padding=1, stride=2),
            c.col2im3d(r((1, 2 * 8, 3 * 3 * 3)), (4, 4, 4), 2)]


def _case_transpose(c, r, dev):
    return [c.conv_transpose2d(r((2, 4, 5, 6)), r((4, 3, 3, 3)), r(3), stride=2, padding=1,
                               output_padding=1),
            c.conv_transpose3d(r((1, 4, 3, 2, 3)), r((4, 1, 2, 2, 2)), r(2), groups=2, stride=2),
            c.conv_transpose1d(r((2, 3, 7)), r((3, 5, 1)))]


def _case_grad_input(c, r, dev):
    w, g = r((4, 3, 3, 3)), r((2, 4, 6, 5))
    return [c.conv2d_input((2, 3, 6, 5), w, g, padding=1, padding_mode=mode)
            for mode in ("zeros", "reflect", "circular")]


def _case_grad_weight(c, r, dev):
    x, g = r((3, 4, 6, 5)), r((3, 6, 6, 5))
    return [c.conv2d_weight(x, (6, 4, 3, 3), g, padding=1),
            c.conv2d_weight(x, (6, 2, 3, 3), g, padding=1, groups=2, padding_mode="replicate"),
            c.conv2d_weight(x, (6, 4, 3, 3), g, padding=1, workspace_limit=36 * 4 * 7)]


def _case_layers(c, r, dev):
    x = r((2, 3, 6, 5))
    conv = c.nn.Conv2d(3, 4, 3, padding=1, rng=0)
    y = conv(x)
    gx = conv.backward(np.ones_like(y))
    up = c.nn.ConvTranspose2d(3, 2, 3, stride=2, rng=1)
    z = up(x)
    gz = up.backward(np.ones_like(z))
    return [y, gx, conv.weight_grad, conv.bias_grad, z, gz, up.weight_grad, up.bias_grad]


def _case_strided_copy(c, r, dev):
    x = r((2, 3, 7, 12))
    view = cla.to_device(dev.queue, x)[..., ::2]
    return [c.conv2d(view, r((2, 3, 3, 3)), algorithm="direct")]


def _case_convert(c, r, dev):
    from clconv.ops.precision import convert

    if not dev.fp64:
        pytest.skip("needs float64 for a float32 <-> float64 conversion")
    a = cla.to_device(dev.queue, r((3, 5, 7)))
    wide = convert(dev, a[1:], np.float64)  # an offset view
    return [wide, convert(dev, wide, np.float32)]


def _case_packed(c, r, dev):
    x, w, b = r((2, 5, 7, 6)), r((7, 5, 3, 3)), r(7)
    return [c.conv2d(x, w, b, padding=1, algorithm="implicit", activation="relu"),
            c.conv2d(x, w, b, padding=1, stride=2, algorithm="im2col_packed"),
            c.conv3d(r((1, 2, 4, 5, 3)), r((3, 2, 2, 2, 2)), padding=1, padding_mode="circular",
                     algorithm="implicit")]


def _case_depthwise(c, r, dev):
    # cl/conv_depthwise.cl: a wide plane (conv_depthwise) and tiny planes (conv_depthwise_small)
    return [c.conv2d(r((2, 3, 9, 40)), r((6, 1, 3, 3)), r(6), padding=1, groups=3,
                     algorithm="depthwise", activation="relu"),
            c.conv2d(r((1, 4, 7, 9)), r((4, 1, 3, 3)), stride=2, padding=1, groups=4,
                     algorithm="depthwise"),
            c.conv1d(r((2, 3, 17)), r((3, 1, 5)), padding=2, groups=3, algorithm="depthwise")]


def _case_pointwise(c, r, dev):
    # cl/conv_pointwise.cl: the GEMM, and the strided layer's subsample; cl/gemm_splitk.cl
    x, w, b = r((2, 6, 16, 18)), r((5, 6, 1, 1)), r(5)  # >= 64 positions: a register tile's width
    return [c.conv2d(x, w, b, algorithm="pointwise", activation="relu"),
            c.conv2d(x, w, stride=2, algorithm="pointwise"),
            c.conv2d(x, r((5, 6, 3, 3)), b, padding=1, algorithm="splitk")]


def _case_pooling(c, r, dev):
    x, x3 = r((2, 3, 7, 8)), r((1, 2, 4, 5, 6))
    layers = [c.nn.MaxPool2d(3, 2, 1, ceil_mode=True), c.nn.AvgPool2d(3, 2, 1),
              c.nn.AdaptiveAvgPool2d((3, 5)), c.nn.AdaptiveMaxPool2d((2, 3))]
    out = [c.max_pool3d(x3, 2, 1, dilation=2), c.avg_pool3d(x3, 3, 2, 1, True, False)]
    for layer in layers:
        y = layer(x)
        out += [y, layer.backward(r(_host(y).shape))]
    return out


def _case_elementwise(c, r, dev):
    x, gate = r((2, 3, 5)), r((2, 3, 1))
    relu = c.nn.ReLU()
    out = [c.silu(x), c.gelu(x), relu(x), relu.backward(r(x.shape)), c.mul(x, gate),
           c.add(x, gate, activation="relu"), c.cat([r((2, 1, 5)), x], 1)]
    a, w, b, res = r((5, 7)), r((3, 7)), r(3), r((5, 3))
    out.append(c.linear(a, w, b, activation="relu", residual=res))
    fc = c.nn.Linear(7, 3, rng=0)
    fc(a)
    fc.backward(r((5, 3)))
    out.append(fc.bias_grad)
    xb = r((3, 2, 2, 3))
    out.append(c.batch_norm(xb, r(2), np.abs(r(2)) + 0.5, r(2), r(2)))
    bn = c.nn.BatchNorm2d(2)
    out += [bn(xb), bn.backward(r(xb.shape))]
    return out


def _case_grad_paths(c, r, dev):
    # cl/conv_grad_paths.cl: the strided depthwise adjoint (dw_adjoint), the depthwise weight
    # gradient (dw_weight_grad), a strided adjoint's whole-image col2im (col2im_phase) and the dense
    # weight gradient on the packed GEMM (wg_pack_g, wg_pack_x)
    x, w, g = r((2, 4, 9, 10)), r((4, 1, 3, 3)), r((2, 4, 5, 5))
    xd, wd, gd = r((2, 3, 8, 7)), r((5, 3, 3, 3)), r((2, 5, 4, 4))
    return [c.conv2d_input(x.shape, w, g, stride=2, padding=1, groups=4),
            c.conv2d_weight(x, w.shape, g, stride=2, padding=1, groups=4),
            c.conv2d_input(xd.shape, wd, gd, stride=2, padding=1),
            c.conv2d_weight(xd, wd.shape, gd, stride=2, padding=1)]


def _case_network_ops(c, r, dev):
    # the other ops of a network's graph: pad.cl, interpolate.cl, group_norm.cl, softmax.cl,
    # local_response_norm.cl, squeeze_excitation.cl
    x = r((2, 4, 5, 6))
    return [c.pad(x, (1, 2, 0, 1), "reflect"), c.pad(x, (-1, 2, 1, 1), "circular"),
            c.interpolate(x, scale_factor=2, mode="bilinear"),
            c.interpolate(r((1, 2, 3, 4, 5)), size=(4, 6, 7)),
            c.group_norm(x, 2, r(4), r(4), activation="silu"),
            c.softmax(x, 1), c.log_softmax(x, -1), c.sub(x, r((4, 1, 1))), c.prelu(x, r(4)),
            c.local_response_norm(x, 3, 0.5, 0.75, 2.0),
            c.squeeze_excitation(x, r((3, 4, 1, 1)), r(3), r((4, 3, 1, 1)), None, gate="tanh"),
            c.linear(r((2, 11)), r((5, 11)), r(5), activation="gelu")]


# case: (function, the kernel sources it must launch)
LONG_INDEX_CASES = {
    "conv_direct": (_case_direct, {"conv_direct.cl"}),
    "conv_grouped": (_case_grouped, {"conv_grouped.cl"}),
    "winograd": (_case_winograd, {"winograd.cl"}),
    "im2col-folded": (_case_im2col_folded, {"im2col.cl", "batch_epilogue.cl"}),
    "im2col-ranges": (_case_im2col_ranges, {"im2col.cl", "epilogue.cl"}),
    "unfold-fold": (_case_unfold_fold, {"im2col.cl", "col2im.cl"}),
    "transposed": (_case_transpose, {"col2im.cl", "epilogue.cl"}),
    # gradients: GEMM + the whole-image col2im of cl/conv_grad_paths.cl (clconv.ops.grad_paths)
    "grad-input": (_case_grad_input, {"conv_grad_paths.cl", "pad_adjoint.cl"}),
    "grad-weight": (_case_grad_weight, {"im2col.cl"}),
    "layers": (_case_layers, {"conv_grad_paths.cl", "epilogue.cl"}),
    "strided_copy": (_case_strided_copy, {"strided_copy.cl"}),
    "convert": (_case_convert, {"convert.cl"}),
    "packed": (_case_packed, {"conv_implicit.cl", "im2col_packed.cl", "gemm_packed.cl",
                              "pack_a.cl"}),
    "depthwise": (_case_depthwise, {"conv_depthwise.cl"}),
    "pointwise-splitk": (_case_pointwise, {"conv_pointwise.cl", "gemm_splitk.cl", "im2col.cl",
                                           "splitk_reduce.cl"}),
    "pooling": (_case_pooling, {"pool.cl"}),
    "elementwise": (_case_elementwise, {"elementwise.cl"}),
    "grad-paths": (_case_grad_paths, {"conv_grad_paths.cl"}),
    "network-ops": (_case_network_ops, {"pad.cl", "interpolate.cl", "group_norm.cl",
                                        "softmax.cl", "elementwise.cl", "local_response_norm.cl",
                                        "squeeze_excitation.cl", "gemv.cl"}),
}


@pytest.mark.parametrize("case", list(LONG_INDEX_CASES))
def test_long_index_path_equals_int_path(clconv, monkeypatch, kernel_launches, case):
    """Each kernel built with INDEX_T=long (forced on small shapes: the sizes that select it pass
    2**31 elements) gives bit-identical results to its INDEX_T=int build, through every path that
    launches it; every launch holds dev.lock."""
    from clconv.runtime import transfer as arrays

    run, sources = LONG_INDEX_CASES[case]
    dev = clconv.current_device()
    results = {}
    for index_t in ("int", "long"):
        monkeypatch.setattr(arrays, "FORCE_INDEX_T", None if index_t == "int" else "long")
        rng = np.random.default_rng(7)

        def r(shape, rng=rng):
            return rng.standard_normal(shape).astype(np.float32)

        kernel_launches.clear()
        results[index_t] = [_host(a) for a in run(clconv, r, dev)]
        launched = {source for source, _, _ in kernel_launches}
        assert sources <= launched, (index_t, sorted(launched))
        # (kernels without INDEX_T, such as cl/gemm_packed.cl, index in 64 bits throughout)
        assert all(t in (index_t, None) for _, t, _ in kernel_launches), kernel_launches
        assert all(locked for _, _, locked in kernel_launches), kernel_launches
    for i, (a, b) in enumerate(zip(results["int"], results["long"])):
        np.testing.assert_array_equal(b, a, err_msg=f"{case} result {i}")


def test_long_index_cases_cover_every_kernel():
    """Every kernel file that takes INDEX_T is exercised by a case above."""
    from clconv.runtime.program import kernel_dir

    covered = set().union(*(sources for _, sources in LONG_INDEX_CASES.values()))
    with_index = {p.name for p in kernel_dir().glob("*.cl")
                  if "idx_t" in p.read_text() and p.name != "common.cl"}
    assert with_index <= covered, sorted(with_index - covered)


def test_padding_beyond_32_bit_coordinates_is_rejected(clconv):
    """Coordinates in the padded input are 32-bit in the kernels: padding that takes them past 2**31
    would wrap around (and read real data where zeros belong), so it is a ValueError."""
    x = np.arange(1, 26, dtype=np.float32).reshape(1, 1, 5, 5)
    w = np.ones((1, 1, 1, 1), np.float32)
    for kw in ({"padding": (0, 2**32), "stride": (1, 2**32 + 2)},
               {"padding": (0, 2**31), "stride": (1, 2**31), "padding_mode": "replicate"}):
        with pytest.raises(ValueError, match="padding"):
            clconv.conv2d(x, w, **kw)
    with pytest.raises(ValueError, match="padding"):
        clconv.im2col(x, 1, padding=2**40, stride=2**41)
    with pytest.raises(ValueError, match="padding"):
        clconv.col2im(np.ones((1, 1, 1), np.float32), (2, 2), 1, padding=2**31, stride=2**33)


@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
def test_huge_strides_are_exact(clconv, rng, algorithm):
    """A stride past the padded input (even past 2**31) leaves one output position per dim."""
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 2, 3)).astype(np.float32)
    want = ref.conv_nd(x, w, padding=1, stride=(100, 100))
    for stride in ((2**31, 2**40), (2**63 - 1, 7)):
        got = clconv.conv2d(x, w, padding=1, stride=stride, algorithm=algorithm)
        assert got.shape == want.shape == (2, 4, 1, 1)
        assert_close(got, want, np.float32, conv_reduction(w), conv_magnitude(x, w))


def _huge(*shape):
    return np.broadcast_to(np.float32(1), shape)  # no memory behind it


@pytest.mark.parametrize("op", ["conv_transpose2d", "conv2d_input", "conv2d_weight"])
def test_transpose_and_gradients_oversized_operand_is_memory_error(clconv, op):
    """Checked before anything is allocated or uploaded (the inputs are zero-copy views)."""
    if not hasattr(clconv, op):
        pytest.skip(f"clconv.{op} does not exist")
    dev = clconv.current_device()
    side = int((dev.max_alloc_bytes // 4) ** 0.5) + 2
    w = np.ones((1, 1, 2, 2), np.float32)
    call = {
        "conv_transpose2d": lambda: clconv.conv_transpose2d(_huge(1, 1, side, side), w),
        "conv2d_input": lambda: clconv.conv2d_input((1, 1, side + 1, side + 1), w,
                                                    _huge(1, 1, side, side)),
        "conv2d_weight": lambda: clconv.conv2d_weight(_huge(1, 1, side + 1, side + 1),
                                                      (1, 1, 2, 2), _huge(1, 1, side, side)),
    }[op]
    with pytest.raises(MemoryError, match=rf"{side}|{side + 1}"):
        call()


def test_release_column_buffer_takes_a_device_a_group_or_none(clconv_mod, dev):
    """release_column_buffer(dev): a Device, a device group (each member's) or None (the current
    device's); anything else is a TypeError (a spec string leaked an AttributeError)."""
    clconv_mod.im2col(np.ones((1, 2, 6, 6), np.float32), 3)  # (a call that may hold a buffer)
    assert clconv_mod.release_column_buffer(dev) >= 0
    with dev:
        assert clconv_mod.release_column_buffer() == 0  # released above
    from clconv.ops.device_group import DeviceGroup
    assert clconv_mod.release_column_buffer(DeviceGroup([dev])) == 0
    for bad in ("cpu", 0, [dev]):
        with pytest.raises(TypeError, match="Device"):
            clconv_mod.release_column_buffer(bad)


def test_the_pool_gives_back_what_sizes_met_before_left_idle(clconv, dev):
    """A stream of new shapes (a model fed many input sizes): each result's buffer goes back to
    the pool, which keeps it for its size class; a new plan gives the idle ones back once they
    exceed twice the active bytes plus IDLE_SLACK, so what is held stays bounded (it grew with
    every size: a compiled MobileNetV2 held 234 MB idle for 11 MB of activations)."""
    from clconv.runtime.memory import IDLE_SLACK, pool

    p = pool(dev)
    p.free_held()
    for i in range(24):  # sizes from 1 to 54 MB, each in a size class of its own, a new plan each
        x = cla.empty(dev.queue, (int(2 ** (18 + i / 4)) + 1,), np.float32)
        x.fill(-1.0)
        y = clconv.relu(x)
        assert float(y[-1].get()) == 0.0
        latest = 1.25 * x.nbytes  # (this call's buffer, held since, in its size class)
        del x, y
        assert p.managed_bytes - p.active_bytes <= 2 * p.active_bytes + IDLE_SLACK + latest
    dev.queue.finish()
