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

``tests/`` is put on ``sys.path`` here as well as through pyproject's
``pythonpath = ["tests"]`` so ``import reference`` / ``from tolerance import
assert_close`` work however pytest is invoked.
"""

from __future__ import annotations

import os
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
os.environ["CLCONV_AUTO"] = "rule"

FLOAT_DTYPES = (np.float32, np.float64)


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test's node id (reproducible per test)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def clconv_mod():
    """The clconv package (imported lazily)."""
    import clconv

    return clconv


@pytest.fixture(scope="session")
def dev(clconv_mod):
    """The device the numeric tests run on: ``clconv.current_device()``."""
    return clconv_mod.current_device()


@pytest.fixture(scope="session")
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
def column_allocations(clconv_mod, monkeypatch):
    """Sizes of every column buffer allocated while the test runs (the cache is emptied first)."""
    import types

    import pyopencl as cl

    from clconv.runtime import memory as workspace

    dev = clconv_mod.current_device()
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
