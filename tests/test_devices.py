"""Device discovery and selection: clconv.devices(), clconv.device(spec), current_device().

Only one OpenCL device may exist (PoCL on CPU in CI), so the tests that
check which device is *current* use ``CLCONV_DEVICE=nonsense``: without an
active ``with clconv.device(...)`` block, ``current_device()`` must then
raise, which makes "is a device current here?" observable even when every
spec resolves to the same device.
"""

from __future__ import annotations

import threading

import numpy as np
import pyopencl as cl
import pytest


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("CLCONV_DEVICE", raising=False)


@pytest.fixture
def bad_env(monkeypatch):
    monkeypatch.setenv("CLCONV_DEVICE", "nonsense-device-xyz")


def _key(d):
    return (d.platform_name, d.name)


def _cl_device(d) -> cl.Device:
    devs = d.context.devices
    assert len(devs) == 1
    return devs[0]


# ---------------------------------------------------------------------------
# devices()
# ---------------------------------------------------------------------------


def test_devices_lists_every_opencl_device(clconv):
    found = clconv.devices()
    assert isinstance(found, list) and found
    expected = [(p.name.strip(), d.name.strip()) for p in cl.get_platforms() for d in p.get_devices()]
    assert [(d.platform_name.strip(), d.name.strip()) for d in found] == expected


def test_device_attributes(clconv):
    for d in clconv.devices():
        assert isinstance(d.name, str) and d.name
        assert isinstance(d.platform_name, str) and d.platform_name
        assert isinstance(d.vendor, str)
        assert d.kind in ("cpu", "gpu", "accelerator")
        assert isinstance(d.fp16, bool) and isinstance(d.fp64, bool)
        assert isinstance(d.global_mem_bytes, int) and d.global_mem_bytes > 0
        assert isinstance(d.max_alloc_bytes, int) and 0 < d.max_alloc_bytes <= d.global_mem_bytes
        assert isinstance(d.usable, bool)
        if d.usable:
            assert d.unusable_reason is None
        else:
            assert isinstance(d.unusable_reason, str) and d.unusable_reason


def test_device_attributes_match_opencl(clconv):
    for d in clconv.devices():
        cd = _cl_device(d)
        assert cd.name.strip() == d.name.strip()
        ext = cd.extensions.split()
        assert d.fp16 == ("cl_khr_fp16" in ext)
        assert d.fp64 == ("cl_khr_fp64" in ext or bool(cd.double_fp_config))
        assert d.global_mem_bytes == cd.global_mem_size
        assert d.max_alloc_bytes == cd.max_mem_alloc_size
        kind = {cl.device_type.GPU: "gpu", cl.device_type.CPU: "cpu",
                cl.device_type.ACCELERATOR: "accelerator"}
        assert any(cd.type & t and d.kind == k for t, k in kind.items())


def test_context_and_queue(clconv):
    for d in clconv.devices():
        assert isinstance(d.context, cl.Context)
        assert isinstance(d.queue, cl.CommandQueue)
        assert d.queue.context == d.context
        # long-lived: the same objects every time
        assert d.context is d.context and d.queue is d.queue


def test_repr_is_readable(clconv):
    for d in clconv.devices():
        r = repr(d)
        assert d.name in r
        assert "object at 0x" not in r


def test_devices_is_stable(clconv):
    a, b = clconv.devices(), clconv.devices()
    assert [_key(d) for d in a] == [_key(d) for d in b]


def test_this_machine_has_a_usable_device(clconv):
    assert any(d.usable for d in clconv.devices())


# ---------------------------------------------------------------------------
# device(spec)
# ---------------------------------------------------------------------------


def test_default_is_first_gpu_else_first_cpu(clconv, no_env):
    devs = [d for d in clconv.devices() if d.usable]
    gpus = [d for d in devs if d.kind == "gpu"]
    cpus = [d for d in devs if d.kind == "cpu"]
    expected = (gpus or cpus)[0]
    assert _key(clconv.device()) == _key(expected)
    assert _key(clconv.device(None)) == _key(expected)
    assert _key(clconv.current_device()) == _key(expected)


def test_spec_cpu(clconv):
    cpus = [d for d in clconv.devices() if d.kind == "cpu" and d.usable]
    if not cpus:
        pytest.skip("no CPU device")
    d = clconv.device("cpu")
    assert d.kind == "cpu"
    assert _key(d) == _key(cpus[0])


def test_spec_gpu(clconv):
    gpus = [d for d in clconv.devices() if d.kind == "gpu" and d.usable]
    if gpus:
        assert clconv.device("gpu").kind == "gpu"
    else:
        with pytest.raises(clconv.DeviceNotFoundError) as info:
            clconv.device("gpu")
        # the message lists the devices that do exist
        assert clconv.devices()[0].name in str(info.value)


@pytest.mark.parametrize("as_int", [False, True], ids=["str", "int"])
def test_spec_index(clconv, as_int):
    devs = clconv.devices()
    for i, expected in enumerate(devs):
        if not expected.usable:
            continue
        assert _key(clconv.device(i if as_int else str(i))) == _key(expected)


def test_unicode_digits_are_names_not_indices(clconv):
    """'²' passes str.isdigit but int() refuses it: a ValueError from int() instead of the
    documented DeviceNotFoundError listing the devices."""
    for spec in ("\u00b2", "0:\u00b9", "\u0661"):  # superscript 2, superscript 1, Arabic-Indic 1
        with pytest.raises(clconv.DeviceNotFoundError):
            clconv.device(spec)


def test_an_exit_leaves_its_own_entry(clconv, bad_env):
    """A generator that yields inside `with a:` shares its caller's context; closed later inside
    the caller's `with b:`, its exit popped b (the top), so a stayed current inside `with b:`.
    Each exit now removes its own entry; an exit without an entry changes nothing."""
    import gc

    a = clconv.device(0)
    b = clconv.device(cl.CommandQueue(a.context))  # another Device object
    assert b is not a

    def batches():
        with a:
            yield 1
            yield 2
    g = batches()
    next(g)
    assert clconv.current_device() is a  # (documented: the generator's block is open)
    with b:
        assert clconv.current_device() is b
        del g
        gc.collect()  # the generator closes: its `with a` exits
        assert clconv.current_device() is b
    with pytest.raises(clconv.DeviceNotFoundError):
        clconv.current_device()
    a.__exit__(None, None, None)  # an exit without its entry: nothing changes
    with b:
        a.__exit__(None, None, None)
        assert clconv.current_device() is b


def test_spec_platform_colon_device(clconv):
    for p_index, platform in enumerate(cl.get_platforms()):
        for d_index, cd in enumerate(platform.get_devices()):
            d = clconv.device(f"{p_index}:{d_index}")
            assert d.name.strip() == cd.name.strip()
            assert d.platform_name.strip() == platform.name.strip()


def test_spec_name_substring_is_case_insensitive(clconv):
    d0 = clconv.devices()[0]
    for spec in (d0.name[:6].upper(), d0.name[:6].lower(), d0.platform_name.split()[0].lower()):
        assert clconv.device(spec).name  # matches something
    assert _key(clconv.device(d0.name.swapcase())) == _key(d0)


def test_spec_pocl(clconv):
    """The documented example spec 'pocl' selects the PoCL platform when it is installed."""
    pocl = [
        p for p in cl.get_platforms()
        if "pocl" in (p.name + " " + p.vendor + " " + p.version).lower()
        or p.name.strip() == "Portable Computing Language"
    ]
    if not pocl:
        pytest.skip("no PoCL platform")
    d = clconv.device("pocl")
    assert d.platform_name.strip() == pocl[0].name.strip()


def test_device_not_found_error(clconv):
    assert issubclass(clconv.DeviceNotFoundError, LookupError)
    with pytest.raises(clconv.DeviceNotFoundError) as info:
        clconv.device("no-such-device-xyz")
    message = str(info.value)
    for d in clconv.devices():
        assert d.name in message


@pytest.mark.parametrize("spec", ["999", 999, "9:9", "0:99"])
def test_out_of_range_indices_are_not_found(clconv, spec):
    with pytest.raises(clconv.DeviceNotFoundError):
        clconv.device(spec)


# ---------------------------------------------------------------------------
# CLCONV_DEVICE
# ---------------------------------------------------------------------------


def test_env_selects_device(clconv, monkeypatch):
    monkeypatch.setenv("CLCONV_DEVICE", "0")
    assert _key(clconv.current_device()) == _key(clconv.devices()[0])
    monkeypatch.setenv("CLCONV_DEVICE", "cpu")
    assert clconv.current_device().kind == "cpu"


def test_env_nonsense_raises(clconv, bad_env):
    with pytest.raises(clconv.DeviceNotFoundError):
        clconv.current_device()
    with pytest.raises(clconv.DeviceNotFoundError):
        clconv.device()


@pytest.mark.parametrize("value", ["all", "0,1"])
def test_env_naming_a_group_says_groups_are_made_in_code(clconv, monkeypatch, value):
    monkeypatch.setenv("CLCONV_DEVICE", value)
    with pytest.raises(clconv.DeviceNotFoundError, match=r"it names one device: a device group"):
        clconv.current_device()


def test_env_nonsense_does_not_break_explicit_specs(clconv, bad_env):
    assert clconv.device("0").name == clconv.devices()[0].name


# ---------------------------------------------------------------------------
# current device: context manager semantics
# ---------------------------------------------------------------------------


def test_with_block_makes_device_current(clconv, bad_env):
    with clconv.device(0) as d:
        assert _key(d) == _key(clconv.devices()[0])
        assert clconv.current_device() is d or _key(clconv.current_device()) == _key(d)
    with pytest.raises(clconv.DeviceNotFoundError):
        clconv.current_device()  # restored: no current device, and the env is nonsense


def test_with_blocks_nest_and_restore(clconv, bad_env):
    with clconv.device("0") as outer:
        with clconv.device("cpu") as inner:
            assert _key(clconv.current_device()) == _key(inner)
        # back to the outer block's device, not to "no device"
        assert _key(clconv.current_device()) == _key(outer)
    with pytest.raises(clconv.DeviceNotFoundError):
        clconv.current_device()


def test_with_block_restores_on_exception(clconv, bad_env):
    with pytest.raises(KeyError), clconv.device(0):
        raise KeyError("boom")
    with pytest.raises(clconv.DeviceNotFoundError):
        clconv.current_device()


def test_same_device_object_reentrant(clconv, bad_env):
    d = clconv.device(0)
    with d:
        with d:
            assert _key(clconv.current_device()) == _key(d)
        assert _key(clconv.current_device()) == _key(d)
    with pytest.raises(clconv.DeviceNotFoundError):
        clconv.current_device()


def _current_device_in_a_new_thread(clconv) -> str:
    """What clconv.current_device() does in a fresh thread: 'found' or 'DeviceNotFoundError'."""
    seen = []

    def probe():
        try:
            clconv.current_device()
            seen.append("found")
        except clconv.DeviceNotFoundError:
            seen.append("DeviceNotFoundError")

    t = threading.Thread(target=probe)
    t.start()
    t.join(10)
    return seen[0]


def test_current_device_is_per_thread(clconv, bad_env):
    """A block entered in one thread does not make the device current in another."""
    entered, release = threading.Event(), threading.Event()
    seen = {}

    def holder():
        with clconv.device(0) as d:
            seen["holder"] = _key(clconv.current_device()) == _key(d)
            entered.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert entered.wait(10)
        # this (main) thread has no block active
        with pytest.raises(clconv.DeviceNotFoundError):
            clconv.current_device()
        seen["other"] = _current_device_in_a_new_thread(clconv)
    finally:
        release.set()
        t.join(10)
    assert seen == {"holder": True, "other": "DeviceNotFoundError"}


def test_main_thread_block_not_visible_in_new_thread(clconv, bad_env):
    with clconv.device(0):
        assert _current_device_in_a_new_thread(clconv) == "DeviceNotFoundError"


def test_computation_uses_the_current_device(clconv, rng):
    with clconv.device(0) as d:
        x = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
        w = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
        import pyopencl.array as cla

        out = clconv.conv2d(cla.to_device(d.queue, x), cla.to_device(d.queue, w))
        assert out.context == d.context
