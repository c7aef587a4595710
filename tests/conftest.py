"""Shared fixtures for the clconv test suite.

Tolerance policy (see ``tolerance.py`` for the table and helpers): every
numeric result is compared with the float64 numpy oracle in ``reference.py``
via

    np.testing.assert_allclose(got, ref, rtol=RTOL[dtype], atol=ATOL[dtype] * scale)

    dtype     RTOL    ATOL    scale
    float32   1e-4    1e-5    sqrt(C_in/groups * prod(kernel)) * max|x| * max|w|
    float64   1e-10   1e-12   same
    (im2col / padding / data movement: exact equality)

``clconv`` is imported lazily inside the fixtures so that the oracle
self-tests (``test_reference.py``) run even when the package is broken.

Devices under test (in the manner of pyopencl's per-device parametrisation): every test that
uses the ``dev`` fixture, or the module-local ``clconv`` fixture outside the device-selection
modules, runs once per device, with that device *current* (entered as ``with dev:``), so the
functional API and ``clconv.current_device()`` inside the test use it. The devices are

- ``CLCONV_TEST_DEVICES`` unset: the default device (``clconv.current_device()``, which honours
  ``CLCONV_DEVICE``) runs every test; each other usable device runs the tests of
  ``EVERY_DEVICE_MODULES`` (every kernel, algorithm, dtype rule and error path; the whole suite
  twice would not fit ``make test``'s time on two cores).
- ``CLCONV_TEST_DEVICES=spec,spec,...`` (specs as ``clconv.device`` takes them: ``pocl``,
  ``llvmpipe``, ``1``, ``0:0``, ``gpu``): exactly those devices, each running every per-device
  test; the first one is also made the default (``CLCONV_DEVICE``) for the tests that run once,
  e.g. from several threads, which do not inherit the current device.

The pytest header names them in a line ``clconv devices: ...``.

``tests/`` is put on ``sys.path`` here as well as through pyproject's
``pythonpath = ["tests"]`` so ``import reference`` / ``from tolerance import
assert_close`` work however pytest is invoked.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import zlib

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# The suite never writes into the user's cache, and algorithm='auto' follows the fixed rule so runs
# are deterministic; tests/test_auto.py switches measuring on where it is the subject.
os.environ["CLCONV_CACHE_DIR"] = tempfile.mkdtemp(prefix="clconv-test-cache-")
atexit.register(shutil.rmtree, os.environ["CLCONV_CACHE_DIR"], ignore_errors=True)
os.environ["CLCONV_AUTO"] = "rule"
# No helper processes for converted networks' first forwards (their listing pass would add torch
# ops and parametrization calls that tests count); tests/test_prebuild.py turns them on.
os.environ.setdefault("CLCONV_PREBUILD", "0")

FLOAT_DTYPES = (np.float32, np.float64)


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's node id (reproducible per test)."""
    # The same data on every device: the device's id is taken out of the node id.
    nodeid = request.node.nodeid
    callspec = getattr(request.node, "callspec", None)
    d = callspec.params.get("_device_under_test") if callspec is not None else None
    if d is not None:
        did = device_id(d)
        nodeid = (nodeid.replace(f"[{did}]", "").replace(f"[{did}-", "[")
                  .replace(f"-{did}]", "]").replace(f"-{did}-", "-"))
    seed = zlib.crc32(nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(params=["packed", "clblast"])
def engine(request, monkeypatch, dev):
    """Each GEMM engine in turn (CLCONV_GEMM), for the GEMM-based ops' tests; the device's plans
    dropped so that the choice is made again."""
    from clconv.blas import clblast
    from clconv.ops.plan import plans

    if request.param == "clblast" and not clblast.available():
        pytest.skip("pyclblast is not installed")
    monkeypatch.setenv("CLCONV_GEMM", request.param)
    plans(dev).clear()
    yield request.param
    plans(dev).clear()


@pytest.fixture(scope="session")
def clconv_mod():
    """The clconv package (imported lazily)."""
    import clconv

    return clconv


# ---------------------------------------------------------------------------
# devices under test
# ---------------------------------------------------------------------------

DEVICES_ENV = "CLCONV_TEST_DEVICES"

#: Modules whose per-device tests also run on the devices after the first (unless the devices are
#: named in CLCONV_TEST_DEVICES, which runs every per-device test on each): together they launch
#: every kernel file in cl/ with every algorithm, padding mode, grouping, both dtypes where the
#: device has them, the transposed convolutions, both gradients, the im2col/col2im family and the
#: dtype/precision error paths (a device without fp64 or fp16 runs the tests that need one).
#: Left out: tuning, benchmarks, leak soaks, thread stress, hypothesis sweeps and training runs
#: (host-side logic or long, and device-independent in what they check).
EVERY_DEVICE_MODULES = frozenset({
    "test_conv2d", "test_conv1d3d", "test_conv_nd", "test_conv_transpose", "test_grad",
    "test_grouped_direct", "test_im2col", "test_im2col_nd", "test_im2col_layout", "test_winograd",
    "test_precision", "test_errors", "test_nn", "test_multi_device", "test_epilogue",
    "test_pool", "test_elementwise", "test_linear", "test_nn_layers", "test_depthwise",
    "test_pointwise", "test_program_sharing", "test_splitk", "test_compile_devices",
    "test_algorithms", "test_grad_paths", "test_packed_long_k", "test_call_costs", "test_pad",
    "test_interpolate", "test_group_norm", "test_softmax", "test_matmul",
})

#: Modules that test device selection and the current-device stack themselves: their tests that
#: take only the module's ``clconv`` fixture are not run inside a ``with dev:`` block.
DEVICE_SELECTION_MODULES = frozenset({"test_devices", "test_faults", "test_reference"})

_UNDER_TEST: tuple[list, bool] | BaseException | None = None


def devices_under_test() -> tuple[list, bool]:
    """(devices, named): the devices the per-device tests run on, and whether CLCONV_TEST_DEVICES
    named them (then every per-device test runs on each)."""
    global _UNDER_TEST
    if _UNDER_TEST is None:
        try:
            _UNDER_TEST = _find_devices_under_test()
        except BaseException as err:  # reported by the tests that need a device, not at collection
            _UNDER_TEST = err
    if isinstance(_UNDER_TEST, BaseException):
        raise _UNDER_TEST
    return _UNDER_TEST


def _find_devices_under_test() -> tuple[list, bool]:
    import clconv

    spec = os.environ.get(DEVICES_ENV, "").strip()
    if spec:
        found = []
        for part in spec.split(","):
            if part.strip():
                d = clconv.device(part.strip())  # DeviceNotFoundError names the devices there are
                if d not in found:
                    found.append(d)
        return found, True
    first = clconv.current_device()
    return [first] + [d for d in clconv.devices() if d is not first and d.usable], False


def device_id(d) -> str:
    """A short test id for a device: its implementation and kind, e.g. 'pocl-cpu', 'rusticl-cpu'."""
    text = d.match_text
    impl = next((k for k in ("pocl", "rusticl", "clover", "oclgrind", "nvidia", "amd", "intel")
                 if k in text), d.platform_name.split()[0].lower())
    return f"{impl}{d.index}-{d.kind}"


def pytest_configure(config):
    spec = os.environ.get(DEVICES_ENV, "").strip()
    if spec:
        # The tests that run once (threads, selection) use the default device: make it the first named.
        os.environ["CLCONV_DEVICE"] = spec.split(",")[0].strip()


def pytest_report_header(config):
    return _devices_line()


def pytest_sessionstart(session):
    # `pytest -q` (make test) prints no header: the devices line is written there all the same.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.get_verbosity() < 0:
        reporter.write_line(_devices_line())


def _devices_line() -> str:
    try:
        devs, named = devices_under_test()
    except BaseException as err:  # noqa: BLE001 - the header must not break collection
        return f"clconv devices: none ({type(err).__name__}: {err})"
    parts = []
    for i, d in enumerate(devs):
        scope = "all" if named or i == 0 else "subset"
        parts.append(f"{device_id(d)} = {d.name} [{d.platform_name}, {d.opencl_version}, "
                     f"fp64={'yes' if d.fp64 else 'no'}] ({scope})")
    how = (f"{DEVICES_ENV}={os.environ[DEVICES_ENV]!r}" if named else
           f"every usable device; set {DEVICES_ENV} to narrow")
    return f"clconv devices: {'; '.join(parts)}  ({how})"


def _per_device(metafunc) -> bool:
    names = metafunc.fixturenames
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    return "dev" in names or ("clconv" in names and module not in DEVICE_SELECTION_MODULES)


def pytest_generate_tests(metafunc):
    if not _per_device(metafunc):
        return
    try:
        devs, named = devices_under_test()
    except BaseException:  # noqa: BLE001 - the `dev` fixture re-raises it in each test
        metafunc.parametrize("_device_under_test", [None], ids=["no-device"], indirect=True)
        return
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if not named and module not in EVERY_DEVICE_MODULES:
        devs = devs[:1]
    metafunc.parametrize("_device_under_test", devs, ids=[device_id(d) for d in devs],
                         indirect=True)


@pytest.fixture
def _device_under_test(request):
    """The device this test instance runs on (None for tests that are not per-device)."""
    d = getattr(request, "param", None)
    if d is None and hasattr(request, "param"):
        devices_under_test()  # raises what went wrong finding the devices
    return d


@pytest.fixture(autouse=True)
def _current_device_under_test(_device_under_test):
    """Makes the test's device current for the whole test (functional calls run on it)."""
    if _device_under_test is None:
        yield None
    else:
        with _device_under_test:
            yield _device_under_test


@pytest.fixture
def dev(_current_device_under_test, clconv_mod):
    """The device the numeric tests run on (current while the test runs)."""
    return _current_device_under_test or clconv_mod.current_device()


@pytest.fixture
def queue(dev):
    return dev.queue


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request, dev):
    """float32 always; float64 only where the device supports it."""
    dt = np.dtype(request.param)
    if dt == np.float64 and not dev.fp64:
        pytest.skip(f"{dev.name} has no float64 support")
    return dt


@pytest.fixture
def to_cl(queue):
    """Copy a numpy array to a pyopencl.array.Array on the current device."""
    import pyopencl.array as cla

    def _to_cl(a):
        return None if a is None else cla.to_device(queue, np.ascontiguousarray(a))

    return _to_cl


@pytest.fixture
def column_allocations(clconv_mod, monkeypatch, _current_device_under_test):
    """Sizes of every column buffer allocated while the test runs (the cache is emptied first)."""
    import types

    import pyopencl as cl

    from clconv.runtime import memory as workspace

    dev = clconv_mod.current_device()  # the device under test where there is one
    workspace.release_column_buffer(dev)
    sizes: list[int] = []

    def buffer(context, flags, size=0, hostbuf=None):
        sizes.append(size)
        return cl.Buffer(context, flags, size, hostbuf)

    monkeypatch.setattr(workspace, "cl", types.SimpleNamespace(Buffer=buffer, mem_flags=cl.mem_flags))
    yield sizes
    workspace.release_column_buffer(dev)  # no buffer made through the fake outlives the test


@pytest.fixture
def no_pyclblast(clconv_mod, monkeypatch):
    """pyclblast cannot be imported (as if not installed): `import pyclblast` raises ImportError."""
    from clconv.blas import clblast as gemm

    gemm._pyclblast.cache_clear()
    monkeypatch.setitem(sys.modules, "pyclblast", None)
    yield gemm
    monkeypatch.undo()
    gemm._pyclblast.cache_clear()
    assert gemm.available()
