"""Broken environments: an unusable platform is skipped with a warning, a kernel that fails to build
raises KernelBuildError with its log and options, a missing pyclblast gives an actionable
UnsupportedError (and the direct path still works), and a bad CLCONV_DEVICE or no OpenCL platform at
all gives DeviceNotFoundError listing what exists."""

from __future__ import annotations

import warnings

import numpy as np
import pyopencl as cl
import pytest
import reference as ref
from tolerance import assert_close, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


@pytest.fixture
def device_module(clconv):
    import importlib

    return importlib.import_module("clconv.runtime.device")  # clconv.device is the function


@pytest.fixture
def fake_broken_gpu(clconv, device_module, monkeypatch):
    """A GPU listed before the real devices, whose probe kernel fails to build (as on a platform with
    a broken compiler). Made of the real device's cl.Device, so it must never be used."""
    real = clconv.devices()
    fake = device_module.Device(real[0].cl_device, 0, len({d.platform_index for d in real}), 0)
    fake.kind, fake.name, fake.platform_name = "gpu", "Broken Fake GPU", "Broken Fake Platform"
    fake.match_text = "broken fake gpu broken fake platform"
    real_probe = device_module._probe

    def probe(dev):
        if dev is fake:
            return "cannot build a trivial kernel: error: fake compiler crashed"
        return real_probe(dev)

    monkeypatch.setattr(device_module, "_probe", probe)
    monkeypatch.setattr(device_module, "_DEVICES", [fake, *real])
    monkeypatch.delenv("CLCONV_DEVICE", raising=False)
    return fake


def test_broken_platform_is_skipped_with_a_warning(clconv, fake_broken_gpu):
    with pytest.warns(RuntimeWarning, match="skipping OpenCL device 'Broken Fake GPU'.*fake compiler"):
        dev = clconv.current_device()
    assert dev is not fake_broken_gpu and dev.usable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per device, not on every call
        assert clconv.current_device() is dev
        x = np.ones((1, 1, 4, 4), np.float32)
        clconv.conv2d(x, np.ones((1, 1, 3, 3), np.float32), algorithm="direct")
    assert fake_broken_gpu in clconv.devices()  # still listed, with its reason
    assert fake_broken_gpu.unusable_reason.startswith("cannot build a trivial kernel")


def test_broken_platform_is_never_chosen_explicitly(clconv, fake_broken_gpu):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(clconv.DeviceNotFoundError) as info:
            clconv.device("gpu")
    message = str(info.value)
    assert "only unusable" in message and "fake compiler crashed" in message
    for d in clconv.devices():
        assert d.name in message


def test_probe_reports_a_kernel_that_does_not_build(clconv, device_module, monkeypatch):
    monkeypatch.setattr(device_module, "_PROBE_SOURCE", "__kernel void clconv_probe( { syntax error")
    fresh = device_module.Device(clconv.devices()[0].cl_device, 0, 0, 0)
    assert fresh.unusable_reason.startswith("cannot build a trivial kernel")
    assert not fresh.usable


def test_probe_survives_any_driver_exception(clconv, device_module, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("driver exploded\nsecond line")

    monkeypatch.setattr(device_module.cl, "Program", explode)
    fresh = device_module.Device(clconv.devices()[0].cl_device, 0, 0, 0)
    assert fresh.unusable_reason == "RuntimeError: driver exploded"


def test_no_opencl_platform_at_all(clconv, device_module, monkeypatch):
    def no_platforms():
        raise cl.LogicError(cl._cl._ErrorRecord("clGetPlatformIDs", -1001, "no platforms"))

    monkeypatch.setattr(device_module, "_DEVICES", None)
    monkeypatch.setattr(device_module.cl, "get_platforms", no_platforms)
    monkeypatch.delenv("CLCONV_DEVICE", raising=False)
    assert clconv.devices() == []
    with pytest.raises(clconv.DeviceNotFoundError, match="No OpenCL platform found.*pocl-opencl-icd"):
        clconv.current_device()
    with pytest.raises(clconv.DeviceNotFoundError, match="No OpenCL platform found"):
        clconv.device("cpu")


@pytest.mark.parametrize("value", ["nonsense", "999", "7:3", "gpu-that-is-not-there"])
def test_bad_env_var_lists_devices(clconv, monkeypatch, value):
    monkeypatch.setenv("CLCONV_DEVICE", value)
    with pytest.raises(clconv.DeviceNotFoundError) as info:
        clconv.conv2d(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 3, 3), np.float32))
    message = str(info.value)
    assert f"CLCONV_DEVICE={value!r}" in message
    assert "available OpenCL devices" in message
    for d in clconv.devices():
        assert d.name in message


def test_env_var_whitespace_and_empty(clconv, monkeypatch):
    monkeypatch.setenv("CLCONV_DEVICE", "  cpu ")
    assert clconv.current_device().kind == "cpu"
    monkeypatch.setenv("CLCONV_DEVICE", "   ")  # empty means "not set"
    assert clconv.current_device().usable


# ---------------------------------------------------------------------------
# kernel build failures
# ---------------------------------------------------------------------------


@pytest.fixture
def restore_cache(clconv):
    """Drops what a test adds to the device cache (e.g. a remembered build failure)."""
    from clconv.runtime.program import programs

    dev = clconv.current_device()
    cache = programs(dev)
    before = set(cache.entries)
    yield dev
    for key in set(cache.entries) - before:
        del cache.entries[key]


def test_kernel_build_error_carries_log_and_options(clconv, restore_cache):
    import time

    from clconv.runtime import program

    with pytest.raises(clconv.KernelBuildError) as info:
        program.kernel(restore_cache, "epilogue.cl", "epilogue", {"REAL": "nonsense", "SPATIAL": 3})
    err = info.value
    assert isinstance(err, RuntimeError)
    assert "-DREAL=nonsense" in err.options and "-DSPATIAL=3" in err.options
    assert "nonsense" in err.log
    assert err.source.endswith("epilogue.cl")
    text = str(err)
    assert "epilogue.cl" in text and "-DREAL=nonsense" in text and "build log" in text
    assert restore_cache.name in text
    # the failure is remembered: retrying raises the same error without a new build
    start = time.perf_counter()
    with pytest.raises(clconv.KernelBuildError) as again:
        program.kernel(restore_cache, "epilogue.cl", "epilogue", {"REAL": "nonsense", "SPATIAL": 3})
    assert time.perf_counter() - start < 0.05
    assert again.value.log == err.log and again.value.options == err.options


def test_build_failure_in_a_public_op(clconv, monkeypatch, restore_cache):
    """A kernel that does not build on this driver surfaces from conv2d as KernelBuildError."""
    from clconv.runtime import program

    real_source = program._source

    def broken(name):
        text = real_source(name)
        broken_files = ("conv_direct.cl", "conv_grouped.cl")  # the direct path's kernels
        return text + "\n#error clconv test: this driver cannot build it\n" if name in broken_files \
            else text

    monkeypatch.setattr(program, "_source", broken)
    x = np.ones((1, 2, 13, 11), np.float32)  # a geometry no other test builds
    w = np.ones((3, 2, 5, 2), np.float32)
    with pytest.raises(clconv.KernelBuildError, match="conv_(direct|grouped).cl(.|\n)*clconv test"):
        clconv.conv2d(x, w, dilation=(2, 3), algorithm="direct")


# ---------------------------------------------------------------------------
# pyclblast missing
# ---------------------------------------------------------------------------



def test_missing_pyclblast_message(clconv, no_pyclblast, rng):
    assert not no_pyclblast.available()
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    with pytest.raises(clconv.UnsupportedError) as info:
        clconv.conv2d(x, w, algorithm="im2col")
    message = str(info.value)
    assert "pip install pyclblast" in message and "libclblast-dev" in message
    assert "algorithm='direct'" in message and "import failed" in message
    want = ref.conv_nd(x, w, padding=1)
    for algorithm in ("auto", "direct"):
        got = clconv.conv2d(x, w, padding=1, algorithm=algorithm)
        assert_close(got, want, np.float32, conv_reduction(w), conv_magnitude(x, w))


def test_missing_pyclblast_other_ops(clconv, no_pyclblast, rng):
    """Ops beyond conv*d either work without CLBlast or say how to install it."""
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(clconv.im2col(x, 3), ref.unfold(x, 3))
    calls = []
    if hasattr(clconv, "conv_transpose2d"):
        calls.append((lambda: clconv.conv_transpose2d(x, w),
                      lambda: ref.conv_transpose_nd(x, w), conv_magnitude(x, w)))
    if hasattr(clconv, "conv2d_input"):
        wc = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)  # (C_out, C_in, 3, 3)
        g = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
        calls.append((lambda: clconv.conv2d_input((2, 3, 6, 6), wc, g),
                      lambda: ref.conv_nd_input((2, 3, 6, 6), wc, g), conv_magnitude(g, wc)))
    for run, want, magnitude in calls:
        try:
            got = run()
        except clconv.UnsupportedError as err:
            assert "pip install pyclblast" in str(err)
        else:
            assert_close(got, want(), np.float32, reduction=36, magnitude=magnitude)
