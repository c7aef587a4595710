"""OpenCL devices: discovery, selection and the current-device context manager.

A `Device` owns one context and one in-order queue for the whole process (CLBlast caches its compiled
programs per context, so contexts must live long). `device(spec)` only chooses which `Device` is
current; `with dev:` pushes it on `runtime.stack` (a `contextvars.ContextVar`), so blocks nest,
restore on exit and are independent per thread.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from typing import Any

import numpy as np
import pyopencl as cl

from . import config, stack
from .errors import DeviceNotFoundError

__all__ = ["Device", "devices", "device", "current_device", "current_target",
           "default_device_reason", "describe_devices", "usable_devices"]

ENV_VAR = config.DEVICE
_KINDS = ((cl.device_type.GPU, "gpu"), (cl.device_type.ACCELERATOR, "accelerator"),
          (cl.device_type.CPU, "cpu"))
_PROBE_SOURCE = "__kernel void clconv_probe(__global float* x) { x[get_global_id(0)] *= 2.0f; }"
_INSTALL_HINT = ("No OpenCL platform found. Install one, e.g. PoCL for the CPU on Debian/Ubuntu: "
                 "`sudo apt-get install pocl-opencl-icd ocl-icd-opencl-dev`, or your GPU vendor's "
                 "OpenCL driver.")


class Device:
    """One OpenCL device with its process-wide context, queue and caches.

    Attributes: name, platform_name, vendor, kind ('cpu' | 'gpu' | 'accelerator'), fp16, fp64,
    global_mem_bytes, max_alloc_bytes, index (position in `devices()`), platform_index,
    device_index, and the lazily created `context` and `queue`.
    """

    def __init__(self, cl_device: cl.Device, index: int, platform_index: int,
                 device_index: int, *, context: cl.Context | None = None,
                 queue: cl.CommandQueue | None = None) -> None:
        self.cl_device = cl_device
        self.index = index
        self.platform_index = platform_index
        self.device_index = device_index
        # Each driver query is guarded: one odd answer must not make `devices()` fail for every
        # device (the attribute then has a neutral value and the query's error is kept).
        self.query_errors: dict[str, str] = {}
        platform = _query(self, "platform", lambda: cl_device.platform, None)
        self.name: str = _query(self, "name", lambda: cl_device.name.strip(), "unknown device")
        self.platform_name: str = _query(self, "platform_name", lambda: platform.name.strip(),
                                         "unknown platform")
        # What a name spec is matched against: PoCL's platform is "Portable Computing Language" and
        # only its vendor/version say "pocl".
        self.match_text = (f"{self.name} {self.platform_name} "
                           f"{_query(self, 'platform_vendor', lambda: platform.vendor, '')} "
                           f"{_query(self, 'platform_version', lambda: platform.version, '')}"
                           ).lower()
        self.vendor: str = _query(self, "vendor", lambda: cl_device.vendor.strip(), "")
        self.kind: str = _query(self, "kind", lambda: next(
            (k for t, k in _KINDS if cl_device.type & t), "cpu"), "cpu")
        extensions = _query(self, "extensions", lambda: cl_device.extensions.split(), [])
        self.fp16: bool = "cl_khr_fp16" in extensions
        self.fp64: bool = "cl_khr_fp64" in extensions or bool(
            _query(self, "double_fp_config", lambda: cl_device.double_fp_config, 0))
        self.global_mem_bytes: int = _query(self, "global_mem_size",
                                            lambda: int(cl_device.global_mem_size), 0)
        self.max_alloc_bytes: int = _query(self, "max_mem_alloc_size",
                                           lambda: int(cl_device.max_mem_alloc_size),
                                           self.global_mem_bytes // 4)
        self.opencl_version: str = _query(self, "version", lambda: cl_device.version.strip(), "")
        self.driver_version: str = _query(self, "driver_version",
                                          lambda: cl_device.driver_version.strip(), "")
        # Serialises set-args + enqueue sequences that share kernels and the workspace.
        self.lock = threading.RLock()
        # Per-device state, each slot owned by one module (made there, lazily, under `lock`):
        self.programs: Any = None    # runtime.program.ProgramCache: built programs and kernels
        self.workspace: Any = None   # runtime.memory.ColumnBuffer: the column buffer
        self.pool: Any = None        # runtime.memory: pyopencl MemoryPool for outputs/temporaries
        self.plans: Any = None       # ops.plan.PlanCache: the functional API's plans (bounded LRU)
        self.choices: Any = None     # ops.autotune: algorithm='auto''s choices
        self.fp16_reason: Any = _UNSET  # ops.precision: None when the float16 probe passed
        self.blas_tuning: Any = None  # blas.clblast: what applying CLBlast's tuning did
        self.constants: dict[Any, Any] = {}  # ops: small constant device arrays (ones, numbers)
        self._probe_lock = threading.Lock()
        self._unusable_reason: str | None = None
        self._probed = False
        self._warned = False
        self._loop_limit: Any = _UNSET
        # Guards the one-time creation of the context and queue: two threads must never each make one
        # (functools.cached_property does not lock since Python 3.12).
        self._init_lock = threading.Lock()
        self._context: cl.Context | None = context
        self._queue: cl.CommandQueue | None = queue
        #: True for a Device made around the user's own queue or context (`device(queue)`).
        self.wraps_user_queue = queue is not None or context is not None

    def slot(self, name: str, make: Any) -> Any:
        """The per-device state `name` (one of the slots above), made by `make()` on first use,
        once even when threads race for it."""
        found = getattr(self, name)
        if found is None:
            with self.lock:
                found = getattr(self, name)
                if found is None:
                    found = make()
                    setattr(self, name, found)
        return found

    @property
    def context(self) -> cl.Context:
        if self._context is None:
            with self._init_lock:
                if self._context is None:
                    self._context = cl.Context([self.cl_device])
        return self._context

    @property
    def queue(self) -> cl.CommandQueue:
        if self._queue is None:
            context = self.context
            with self._init_lock:
                if self._queue is None:
                    self._queue = cl.CommandQueue(context)
        return self._queue

    @property
    def unusable_reason(self) -> str | None:
        """None if a trivial kernel builds and runs here, else the first line of what went wrong."""
        with self._probe_lock:
            if not self._probed:
                self._unusable_reason = _probe(self)
                self._probed = True
        return self._unusable_reason

    @property
    def usable(self) -> bool:
        return self.unusable_reason is None

    @property
    def loop_limit(self) -> int | None:
        """Loop iterations one work-item may run in all (every loop of the kernel counted), or None
        for no cap. Mesa's llvmpipe (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS, 65535 in Mesa 22)
        silently ends every loop of an invocation once that many iterations have run: a kernel
        with a longer K loop computes a wrong sum without any error. Measured once, by a probe
        kernel, on llvmpipe devices only (other drivers do not cap loops; the probe would cost
        them a build)."""
        with self._probe_lock:
            if self._loop_limit is _UNSET:
                self._loop_limit = (_probe_loop_limit(self) if "llvmpipe" in self.name.lower()
                                    else None)
        return self._loop_limit

    def __repr__(self) -> str:
        return (f"<clconv.Device {self.index}: {self.name!r} on {self.platform_name!r} "
                f"({self.kind}, {self.global_mem_bytes / 2**30:.1f} GiB, "
                f"fp64={'yes' if self.fp64 else 'no'}, fp16={'yes' if self.fp16 else 'no'})>")

    def __enter__(self) -> Device:
        stack.push(self)
        return self

    # One Device object per OpenCL device: a copy is the device itself, and a pickled Device is
    # found again by its platform and name where it is unpickled (a layer's or model's device).
    def __copy__(self) -> Device:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Device:
        return self

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.wraps_user_queue:
            raise TypeError(f"{self!r} wraps a pyopencl queue or context of the caller's, which "
                            f"cannot be pickled")
        return _unpickled_device, (self.platform_name, self.name, self.index)

    def __exit__(self, *exc: object) -> None:
        stack.pop(self)


_UNSET = object()


def _query(dev: Device, what: str, ask: Any, fallback: Any) -> Any:
    """`ask()`, or `fallback` when the driver's answer fails (recorded in dev.query_errors)."""
    try:
        return ask()
    except Exception as err:  # noqa: BLE001 (cl.Error, a decode error, a missing attribute)
        dev.query_errors[what] = f"{type(err).__name__}: {err}"
        return fallback


def _probe(dev: Device) -> str | None:
    """Builds and runs a trivial kernel; returns None on success, else a one-line reason."""
    try:
        prg = cl.Program(dev.context, _PROBE_SOURCE)
        try:
            prg.build()
        except cl.Error as err:
            log = ""
            try:
                log = prg.get_build_info(dev.cl_device, cl.program_build_info.LOG)
            except cl.Error:
                pass
            first = next((ln.strip() for ln in (log or str(err)).splitlines() if ln.strip()), "")
            return f"cannot build a trivial kernel: {first or err}"
        import numpy as np
        host = np.ones(4, np.float32)
        buf = cl.Buffer(dev.context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR,
                        hostbuf=host)
        prg.clconv_probe(dev.queue, (4,), None, buf)
        cl.enqueue_copy(dev.queue, host, buf)
        if not (host == 2).all():
            return "a trivial kernel ran but computed wrong results"
    except Exception as err:  # a broken driver can fail in many ways; none may escape as a crash
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


# A loop whose trip count only the run knows, each step reading memory (nothing to fold away).
_LOOP_PROBE_SOURCE = """__kernel void clconv_loop_probe(__global int* x, const int n) {
    int count = 0;
    for (int i = 0; i < n; ++i) count += x[1 + (i & 1)];
    x[0] = count;
}"""
_LOOP_PROBE_TRIPS = 1 << 20


_GALLIVM_LOOP_LIMIT = 65535  # LP_MAX_TGSI_LOOP_ITERATIONS: assumed when the probe cannot run


def _probe_loop_limit(dev: Device) -> int | None:
    """The iterations a probe loop of _LOOP_PROBE_TRIPS trips completes on `dev` (None: all of
    them; gallivm's cap when the probe cannot run, so that no result is silently wrong)."""
    import numpy as np
    try:
        prg = cl.Program(dev.context, _LOOP_PROBE_SOURCE).build()
        host = np.array([0, 1, 1], np.int32)
        buf = cl.Buffer(dev.context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR,
                        hostbuf=host)
        prg.clconv_loop_probe(dev.queue, (1,), (1,), buf, np.int32(_LOOP_PROBE_TRIPS))
        cl.enqueue_copy(dev.queue, host, buf)
    except Exception:  # noqa: BLE001 (an unusable device says so elsewhere: unusable_reason)
        return _GALLIVM_LOOP_LIMIT
    done = int(host[0])
    return done if 0 < done < _LOOP_PROBE_TRIPS else None


_DEVICES: list[Device] | None = None
_DEVICES_LOCK = threading.Lock()


def devices() -> list[Device]:
    """Every OpenCL device on every platform, in platform order (the same objects on every call)."""
    global _DEVICES
    with _DEVICES_LOCK:
        if _DEVICES is None:
            found: list[Device] = []
            config.pin_pocl_threads()  # before PoCL starts: its threads pinned to their cores
            try:
                platforms = cl.get_platforms()
            except cl.Error:  # the ICD loader reports "no platforms" as an error
                platforms = []
            for p_index, platform in enumerate(platforms):
                try:
                    cl_devices = platform.get_devices()
                except cl.Error:
                    continue
                for d_index, cl_device in enumerate(cl_devices):
                    found.append(Device(cl_device, len(found), p_index, d_index))
            _DEVICES = found
        return list(_DEVICES)


def describe_devices(devs: list[Device]) -> str:
    """The lines that list `devs` in a DeviceNotFoundError (or how to install a platform)."""
    if not devs:
        return _INSTALL_HINT
    lines = []
    for d in devs:
        state = "" if d._probed is False or d.usable else f"  [unusable: {d.unusable_reason}]"
        lines.append(f"  {d.index} ({d.platform_index}:{d.device_index}) {d.kind}: {d.name} "
                     f"[{d.platform_name}]{state}")
    return "available OpenCL devices:\n" + "\n".join(lines)


def _usable_or_warn(d: Device) -> bool:
    if d.usable:
        return True
    if not d._warned:  # once per device and process, not on every call that picks the default
        d._warned = True
        warnings.warn(f"clconv: skipping OpenCL device {d.name!r} on {d.platform_name!r}: "
                      f"{d.unusable_reason}", RuntimeWarning, stacklevel=3)
    return False


def usable_devices() -> list[Device]:
    """The usable devices of `devices()`, in order; each unusable one is warned about once."""
    return [d for d in devices() if _usable_or_warn(d)]


def _number(text: str) -> bool:
    """An index as the specs write it: ASCII digits ('²' and other Unicode digits are names)."""
    return text.isascii() and text.isdigit()


def _unpickled_device(platform_name: str, name: str, index: int) -> Device:
    """The device a pickled Device was: the usable one of that platform and name (the one at
    `index` first); DeviceNotFoundError, listing the devices, when there is none."""
    devs = devices()
    same = sorted((d for d in devs if d.platform_name == platform_name and d.name == name),
                  key=lambda d: d.index != index)
    for d in same:
        if _usable_or_warn(d):
            return d
    raise DeviceNotFoundError(f"an unpickled object was made on {name!r} ({platform_name}), "
                              f"which this machine lacks: load its state into one made here "
                              f"(load_state_dict); {describe_devices(devs)}")


def _select(spec: str) -> Device:
    devs = devices()
    if not devs:
        raise DeviceNotFoundError(_INSTALL_HINT)
    text = spec.strip()
    low = text.lower()
    if low in ("cpu", "gpu", "accelerator"):
        candidates = [d for d in devs if d.kind == low]
    elif _number(text):
        candidates = [d for d in devs if d.index == int(text)]
    elif ":" in text and all(_number(part.strip()) for part in text.split(":", 1)):
        p, q = (int(part) for part in text.split(":", 1))
        candidates = [d for d in devs if d.platform_index == p and d.device_index == q]
    else:
        candidates = [d for d in devs if low and low in d.match_text]
    usable = [d for d in candidates if _usable_or_warn(d)]
    if usable:
        return usable[0]
    why = "matches only unusable devices" if candidates else "matches no device"
    raise DeviceNotFoundError(f"device spec {spec!r} {why}; {describe_devices(devs)}")


# (CLCONV_DEVICE, the device list it was chosen from, device, reason)
_DEFAULT: tuple[str | None, Any, Device, str] | None = None


def _default() -> tuple[Device, str]:
    """The default device and why; chosen once per value of CLCONV_DEVICE (calls outside a `with`
    block only read the variable and compare)."""
    global _DEFAULT
    env = os.environ.get(ENV_VAR)  # as set (blank included): the memo's key
    memo = _DEFAULT
    if memo is not None and memo[0] == env and memo[1] is _DEVICES:
        return memo[2], memo[3]
    dev, reason = _choose_default(env)
    _DEFAULT = (env, _DEVICES, dev, reason)
    return dev, reason


def _choose_default(env: str | None) -> tuple[Device, str]:
    if env is not None and env.strip():
        try:
            return _select(env), f"{ENV_VAR}={env!r}"
        except DeviceNotFoundError as err:
            group = env.strip().lower() == "all" or "," in env
            raise DeviceNotFoundError(
                f"environment variable {ENV_VAR}={env!r} selects no usable device (set it to an "
                f"index, 'P:D', 'cpu'/'gpu' or a name below, or unset it"
                + ("; it names one device: a device group ('all', several devices) is made by "
                   "`with clconv.device('all')` or a list" if group else "")
                + f"): {err}") from None
    devs = devices()
    if not devs:
        raise DeviceNotFoundError(_INSTALL_HINT)
    for kind in ("gpu", "cpu", "accelerator"):
        for d in sorted(devs, key=lambda d: "rusticl" in d.match_text):  # Mesa's rusticl last
            if d.kind == kind and _usable_or_warn(d):
                return d, f"first usable {kind.upper()} ({ENV_VAR} not set)"
    raise DeviceNotFoundError(f"no usable OpenCL device; {describe_devices(devs)}")


def device(spec: Any = None) -> Device:
    """Selects a device; use as `with clconv.device("cpu") as dev:` to make it current in a block.

    spec: None (env CLCONV_DEVICE, else the first usable GPU, else the first usable CPU), 'cpu',
    'gpu', 'accelerator', an index into `devices()` ('N' or N), 'P:D' (platform:device indices, like
    PYOPENCL_CTX), or a case-insensitive substring of the device name or of the platform's name,
    vendor or version ('pocl', 'nvidia').
    Raises DeviceNotFoundError (listing the devices) when nothing usable matches.
    One device only: the public `clconv.device` also takes 'all' or a list of specs, for a device
    group (ops.device_group, the layer above).
    """
    if isinstance(spec, Device):
        return spec
    if spec is None:
        return _default()[0]
    if isinstance(spec, (cl.CommandQueue, cl.Context)):
        return _wrap(spec)
    if isinstance(spec, np.integer):
        spec = int(spec)  # (an index from numpy, as a plain int)
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        group = " (a list of specs makes a device group: clconv.device)" if isinstance(
            spec, (list, tuple)) else ""
        raise TypeError(f"device spec must be a str, int, Device, pyopencl CommandQueue or Context, "
                        f"or None, got {type(spec).__name__}{group}")
    return _select(str(spec))


# int_ptr of a user's queue or context -> its Device, while that Device is alive (it holds the
# handle, so the address is not reused meanwhile); a wrapper nothing holds any more goes, with its
# caches (a queue made and wrapped per request must not accumulate)
_WRAPPED: weakref.WeakValueDictionary[int, Device] = weakref.WeakValueDictionary()


def _wrap(handle: cl.CommandQueue | cl.Context) -> Device:
    """The Device around a user's own pyopencl queue (results come back on it) or context (clconv
    makes one in-order queue on it), the same object for the same handle."""
    listed = devices()  # before taking _DEVICES_LOCK, which devices() takes too
    with _DEVICES_LOCK:
        found = _WRAPPED.get(handle.int_ptr)
        if found is not None:
            return found
        if isinstance(handle, cl.CommandQueue):
            context, queue = handle.context, handle
            cl_device = handle.device
            if queue.properties & cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE:
                raise ValueError("clconv needs an in-order command queue (its kernels depend on "
                                 "each other through the queue's order); pass a queue made "
                                 "without OUT_OF_ORDER_EXEC_MODE_ENABLE")
        else:
            context, queue = handle, None
            if len(handle.devices) != 1:
                raise ValueError(f"a pyopencl Context passed to clconv.device must hold exactly one "
                                 f"device, this one holds {len(handle.devices)}; pass a "
                                 f"CommandQueue to say which")
            cl_device = handle.devices[0]
        known = next((d for d in listed if d.cl_device == cl_device), None)
        index, p_index, d_index = ((known.index, known.platform_index, known.device_index)
                                   if known else (-1, -1, -1))
        wrapped = Device(cl_device, index, p_index, d_index, context=context, queue=queue)
        _WRAPPED[handle.int_ptr] = wrapped
        return wrapped


def current_device() -> Device:
    """The device of the innermost active `with clconv.device(...)` block, else the default one.
    Under a device group: the group's first device (always a single Device)."""
    top = stack.top()
    if top is None:
        return _default()[0]
    return top if isinstance(top, Device) else top.primary  # a group's `primary`


def current_target() -> Any:
    """The innermost active Device or DeviceGroup (the ops' split hook asks), else the default."""
    top = stack.top()
    return _default()[0] if top is None else top


def default_device_reason() -> tuple[Device, str]:
    """The default device and why it was chosen (for `python -m clconv info`)."""
    return _default()
