"""Several OpenCL implementations in one process (PoCL and Mesa's rusticl/llvmpipe here, a GPU
elsewhere): each device computes on its own context, results agree with the oracle on every device,
operands of one device are refused on another, threads may use different devices at once, float64
works exactly where the device has it, and the default device does not depend on the ICD loader's
platform order.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import reference as ref
from conftest import devices_under_test
from tolerance import assert_close, conv_magnitude, conv_reduction

X_SHAPE, W_SHAPE = (2, 3, 7, 6), (4, 3, 3, 3)


@pytest.fixture
def clconv():
    import clconv

    return clconv


@pytest.fixture
def two_devices(clconv):
    """Two distinct usable devices (of different contexts), those under test first."""
    found = list(devices_under_test()[0])
    found += [d for d in clconv.devices() if d.usable and d not in found]
    if len(found) < 2:
        pytest.skip("needs two usable OpenCL devices (e.g. RUSTICL_ENABLE=llvmpipe beside PoCL)")
    return found[:2]


def _problem(rng):
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    w = rng.standard_normal(W_SHAPE).astype(np.float32)
    b = rng.standard_normal(W_SHAPE[0]).astype(np.float32)
    return x, w, b, ref.conv2d(x, w, b, padding=1)


def _check(got, want, x, w, b):
    assert_close(got, want, np.float32, reduction=conv_reduction(w), magnitude=conv_magnitude(x, w, b))


@pytest.mark.parametrize("algorithm", ["im2col", "direct", "winograd"])
def test_every_device_in_nested_blocks(clconv, two_devices, rng, algorithm):
    """Alternating between two devices in nested `with` blocks: each call runs on the innermost
    device (its result lives in that device's context) and is right."""
    import pyopencl.array as cla

    x, w, b, want = _problem(rng)
    a, c = two_devices
    assert a.context != c.context
    with a:
        for inner in (c, a, c):
            with inner:
                got = clconv.conv2d(cla.to_device(inner.queue, x), cla.to_device(inner.queue, w),
                                    cla.to_device(inner.queue, b), padding=1, algorithm=algorithm)
                assert got.context == inner.context
                _check(got, want, x, w, b)
            got = clconv.conv2d(x, w, b, padding=1, algorithm=algorithm)  # numpy: on `a` again
            _check(got, want, x, w, b)
            assert clconv.current_device() is a


def test_operand_of_another_device_is_refused(clconv, two_devices, rng):
    """A pyopencl array of one device's context is named and refused on the other device, before
    anything is enqueued; the same array is accepted on its own device."""
    import pyopencl.array as cla

    x, w, b, want = _problem(rng)
    a, c = two_devices
    xa = cla.to_device(a.queue, x)
    with c:
        with pytest.raises(ValueError, match="input is a pyopencl array of another OpenCL context"):
            clconv.conv2d(xa, w, b, padding=1)
        with pytest.raises(ValueError, match="another OpenCL context"):
            clconv.im2col(xa, 3)
    with a:
        _check(clconv.conv2d(xa, w, b, padding=1), want, x, w, b)


def test_threads_on_different_devices_at_once(clconv, two_devices, rng):
    """One thread per device, each in its own `with` block, running at the same time."""
    x, w, b, want = _problem(rng)
    errors: list[BaseException] = []
    start = threading.Barrier(len(two_devices))

    def work(d):
        try:
            with d:
                start.wait(30)
                for algorithm in ("im2col", "direct", "im2col"):
                    assert clconv.current_device() is d
                    _check(clconv.conv2d(x, w, b, padding=1, algorithm=algorithm), want, x, w, b)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(d,)) for d in two_devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def test_float64_exactly_where_the_device_has_it(clconv, dev, rng):
    """float64 is computed where the device reports cl_khr_fp64 and refused with UnsupportedError
    naming the device everywhere else (rusticl's llvmpipe has none), for each operation family."""
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    g = rng.standard_normal((1, 3, 3, 3))
    calls = {
        "conv2d": lambda: clconv.conv2d(x, w),
        "conv_transpose2d": lambda: clconv.conv_transpose2d(g, w),
        "conv2d_input": lambda: clconv.conv2d_input(x.shape, w, g),
        "conv2d_weight": lambda: clconv.conv2d_weight(x, w.shape, g),
        "im2col": lambda: clconv.im2col(x, 3),
    }
    wants = {
        "conv2d": ref.conv2d(x, w),
        "conv_transpose2d": ref.conv_transpose_nd(g, w),
        "conv2d_input": ref.conv_nd_input(x.shape, w, g),
        "conv2d_weight": ref.conv_nd_weight(x, w.shape, g),
        "im2col": ref.unfold(x, 3),
    }
    for name, call in calls.items():
        if dev.fp64:
            got = call()
            assert got.dtype == np.float64, name
            assert_close(got, wants[name], np.float64, reduction=27, magnitude=10.0, err_msg=name)
        else:
            with pytest.raises(clconv.UnsupportedError, match="float64") as info:
                call()
            assert dev.name in str(info.value), name
    # float32 works on every device
    assert_close(clconv.conv2d(x.astype(np.float32), w.astype(np.float32)), wants["conv2d"],
                 np.float32, reduction=18, magnitude=conv_magnitude(x, w))


def test_default_device_does_not_depend_on_the_icd_order(tmp_path):
    """The ICD loader lists platforms in the directory order of its vendors folder, which depends on
    the file system: with rusticl's ICD file listed before PoCL's, the default device is still
    PoCL's (rusticl is never preferred)."""
    vendors = "/etc/OpenCL/vendors"
    files = {name: os.path.join(vendors, name) for name in ("rusticl.icd", "pocl.icd")}
    if not all(os.path.exists(p) for p in files.values()):
        pytest.skip("needs both PoCL's and Mesa's rusticl ICD files (make test installs them)")
    # Created in this order, listed in this order by readdir on common file systems; the child
    # checks that rusticl really came first, so the test proves something.
    (tmp_path / "a-rusticl.icd").write_text(open(files["rusticl.icd"]).read())
    (tmp_path / "b-pocl.icd").write_text(open(files["pocl.icd"]).read())
    code = textwrap.dedent("""
        import clconv
        first = clconv.devices()[0]
        d = clconv.current_device()
        print(first.platform_name, "|", d.platform_name, "|", d.match_text)
    """)
    env = dict(os.environ, OCL_ICD_VENDORS=str(tmp_path), RUSTICL_ENABLE="llvmpipe")
    env.pop("CLCONV_DEVICE", None)
    env.pop("OCL_ICD_FILENAMES", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    first, chosen, text = (s.strip() for s in done.stdout.strip().splitlines()[-1].split("|"))
    if first != "rusticl":
        pytest.skip(f"this file system listed {first!r} first; the order could not be reproduced")
    assert "pocl" in text, f"default device is on {chosen!r}, not PoCL"


def test_a_result_waited_for_from_another_queue(clconv, dev, rng):
    """A device result's event waited for from a queue of the user's own: clconv flushes its
    queue after each result (rusticl keeps commands unsubmitted until a flush, and such a wait
    never ended; in a child process so that a hang fails the test instead of stalling it)."""
    code = ("import numpy as np, pyopencl as cl, pyopencl.array as cla, clconv\n"
            f"dev = clconv.device({dev.index})\n"
            "x = np.random.rand(2, 4, 16, 16).astype(np.float32)\n"
            "w = np.random.rand(8, 4, 3, 3).astype(np.float32)\n"
            "with dev:\n"
            "    xd = cla.to_device(dev.queue, x)\n"
            "    y = clconv.conv2d(xd, w, padding=1)\n"
            "mine = cl.CommandQueue(dev.context)\n"
            "z = (y.with_queue(mine) * 2).get()\n"
            "print(float(np.abs(z - 2 * y.get()).max()))\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the wait from another queue did not end")
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) == 0.0
