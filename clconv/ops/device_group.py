"""Device groups: one op's batch split over several devices of a process, run concurrently.

    with clconv.device("all"):            # or clconv.device(["pocl", "llvmpipe"])
        y = clconv.conv2d(x, w, padding=1)  # x numpy (N, C, H, W): images spread over the devices

A `DeviceGroup` is a context manager like a `Device`. Under it, every public op (the convolutions,
transposed convolutions, gradients, im2col/col2im) follows these rules, applied by `splits_batch`:

- numpy inputs with a batch of N >= 1: the batch is cut into contiguous ranges in proportion to
  each device's measured speed (`split`), each range runs on its device in that device's own thread
  (its own queue; no device waits on another) and the parts are concatenated along the batch
  (summed, for the weight gradients, which sum over the batch). A batch smaller than the group
  uses fewer devices (at most one image per part; the faster devices first).
- speed (images/s): measured per (group, op, shapes without the batch, dtype, other arguments) by
  a short calibration on the first call's own data: each device in turn runs the op on the first
  p = min(N, max(2, N // (8 * devices))) images twice (the first run builds the kernels and makes
  algorithm='auto''s choice; the second is timed); speed = p / time. The devices are measured one
  after the other, so that they do not slow each other down. Every split call then replaces the
  speed of each device that took part by its part's own images / seconds, timed while the other
  parts ran (a small probe underrates a device that gains from large batches, and two drivers on
  one CPU slow each other: the next split accounts for both). A device that raises
  `UnsupportedError` (e.g. float64 on a device without fp64) gets speed 0 and no part; when every
  device does, that error is raised. Fixed `weights` given to `DeviceGroup` are used as they are.
- N = 0: the op runs on the group's first device that has the operands' dtype and returns its
  empty result (zeros for a weight gradient).
- unbatched inputs ((C, H, W) for conv2d): the whole call runs on the fastest device.
- pyopencl arrays: they live in one context, so the call runs, unsplit, on the group's device of
  that context; arrays of a context outside the group, or of two contexts, are a ValueError.
- results: equal to one device's call within rounding; each part is bitwise what its device returns
  for that slice alone, so where all devices run the same algorithm with the same rounding the
  result is bitwise one device's.

`current_device()` under a group is the group's first device (internal callers always get a single
`Device`); `runtime.device.current_target()` is the innermost Device or DeviceGroup.

What each split call chose is the caller's, not the group's: `with group.record() as splits:` lists
a `Split` (op, parts, seconds) for every call of that group in the block that split its batch.

This module sits in ops/, above runtime/: it knows the ops' calling conventions (batched arguments,
the weight gradient's sum) and makes `clconv.device`, which adds groups to `runtime.device.device`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyopencl.array as cla

from ..runtime import device as runtime_device
from ..runtime import stack
from ..runtime.device import Device, describe_devices, devices, usable_devices
from ..runtime.errors import DeviceNotFoundError, UnsupportedError
from ..runtime.interop import host_operand

__all__ = ["DeviceGroup", "Split", "device", "group_of", "run_on_group", "splits_batch"]

REDUCTIONS = ("concat", "sum")


@dataclass(frozen=True)
class Split:
    """One call that split its batch: the op's name, its parts ((device, start, stop), ...) over
    the batch and each part's seconds (timed in the part's own thread while the others ran; a
    one-part call in the caller's thread)."""

    op: str
    parts: tuple[tuple[Device, int, int], ...]
    seconds: tuple[float, ...]


# The open `DeviceGroup.record()` blocks of the caller's context: ((group, its list), ...).
_RECORDS: contextvars.ContextVar[tuple[tuple[Any, list[Split]], ...]] = contextvars.ContextVar(
    "clconv_group_records", default=())


class DeviceGroup:
    """Several distinct devices used together: the batch of each op is split across them.

    devices: the Devices (at least one, no repeats: each needs its own queue to run concurrently).
    weights: fixed relative speeds (one positive number per device) instead of measuring them.
    """

    def __init__(self, devices: Sequence[Device], weights: Sequence[float] | None = None) -> None:
        devs = tuple(devices)
        if not devs:
            raise ValueError("a device group needs at least one device")
        for d in devs:
            if not isinstance(d, Device):
                raise TypeError(f"a device group holds clconv Devices, got {type(d).__name__}")
        if len({id(d) for d in devs}) != len(devs):
            names = [d.name for d in devs]
            raise ValueError(f"a device is listed twice in the group {names}; each device runs its "
                             f"part on its own queue, so list each once")
        if weights is not None:
            weights = tuple(float(w) for w in weights)
            if len(weights) != len(devs) or not all(math.isfinite(w) and w > 0 for w in weights):
                raise ValueError(f"weights must be {len(devs)} positive finite numbers (one per "
                                 f"device), got {weights}")
        self.devices: tuple[Device, ...] = devs
        self.weights: tuple[float, ...] | None = weights
        self._speeds: dict[Any, tuple[float, ...]] = {}
        self._lock = threading.Lock()          # guards _speeds, _executors
        self._calibrating = threading.Lock()   # one calibration at a time: timings undisturbed
        self._executors: dict[int, ThreadPoolExecutor] = {}

    # -- context manager, like Device -----------------------------------------------------------
    def __enter__(self) -> DeviceGroup:
        stack.push(self)
        return self

    def __exit__(self, *exc: object) -> None:
        stack.pop(self)

    @contextlib.contextmanager
    def record(self) -> Iterator[list[Split]]:
        """`with group.record() as splits:` -> a list that gets a `Split` for each call of this
        group that splits its batch inside the block (unbatched, empty and device-array calls do
        not split), made by the caller's thread or asyncio task only: each caller sees its own
        calls, whatever other threads run on the group meanwhile."""
        found: list[Split] = []
        token = _RECORDS.set(_RECORDS.get() + ((self, found),))
        try:
            yield found
        finally:
            _RECORDS.reset(token)

    def __len__(self) -> int:
        return len(self.devices)

    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices)

    @property
    def primary(self) -> Device:
        """The first device: `current_device()` under the group, and where N = 0 calls run."""
        return self.devices[0]

    def __repr__(self) -> str:
        names = ", ".join(f"{d.index}: {d.name!r}" for d in self.devices)
        return f"<clconv.DeviceGroup [{names}]>"

    # -- splitting --------------------------------------------------------------------------------
    def split(self, n: int,
              weights: Sequence[float] | None = None) -> list[tuple[Device, int, int]]:
        """Contiguous batch ranges [(device, start, stop), ...] covering range(n), sizes
        proportional to `weights` (speeds; default: the fixed weights, else equal); devices with
        an empty range are left out, so n smaller than the group uses fewer devices. Each device
        first gets the whole part of its share; each remaining image goes to the device that would
        finish it first ((count + 1) / weight smallest; ties to the earlier device), so that a slow
        device is not given an image it would still be busy with after the others are done."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        w = tuple(weights) if weights is not None else (self.weights or (1.0,) * len(self))
        if len(w) != len(self) or any(x < 0 for x in w) or not sum(w) > 0:
            raise ValueError(f"weights must be {len(self)} non-negative numbers, not all 0; "
                             f"got {w}")
        total = float(sum(w))
        quotas = [n * x / total for x in w]
        counts = [math.floor(q) for q in quotas]
        for _ in range(n - sum(counts)):  # fewer than len(w) images
            best = min((i for i in range(len(w)) if w[i] > 0), key=lambda i: (counts[i] + 1) / w[i])
            counts[best] += 1
        ranges, start = [], 0
        for d, c in zip(self.devices, counts):
            if c:
                ranges.append((d, start, start + c))
                start += c
        return ranges

    def measured(self) -> dict[Any, tuple[float, ...]]:
        """The speeds measured so far: {calibration key: (speed per device, 1/s)}."""
        with self._lock:
            return dict(self._speeds)

    def speeds(self, key: Any, probe: Callable[[Device], object],
               images: int = 1) -> tuple[float, ...]:
        """Speed per device for `key` (images/s): the fixed weights, a remembered measurement, or a
        new one made by timing `probe(device)` (its second run, on `images` images) on each device
        in turn."""
        if self.weights is not None:
            return self.weights
        with self._lock:
            known = self._speeds.get(key)
        if known is not None:
            return known
        with self._calibrating:
            with self._lock:
                known = self._speeds.get(key)
            if known is not None:
                return known
            found: list[float] = []
            unsupported: UnsupportedError | None = None
            for d in self.devices:
                try:
                    probe(d)  # builds the kernels and settles 'auto': not part of the timing
                    t0 = time.perf_counter()
                    probe(d)
                    found.append(images / max(time.perf_counter() - t0, 1e-9))
                except UnsupportedError as err:  # e.g. float64 on a device without fp64
                    unsupported = unsupported or err
                    found.append(0.0)
            if not any(found):
                assert unsupported is not None
                raise unsupported
            result = tuple(found)
            with self._lock:
                self._speeds[key] = result
            return result

    # -- running ----------------------------------------------------------------------------------
    def _executor(self, dev: Device) -> ThreadPoolExecutor:
        """The one thread that runs this group's parts on `dev` (created on first use)."""
        with self._lock:
            ex = self._executors.get(id(dev))
            if ex is None:
                ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clconv-dev{dev.index}")
                self._executors[id(dev)] = ex
            return ex

    def refine(self, key: Any, observed: dict[int, float]) -> None:
        """Replaces the measured speeds of the devices in `observed` ({position: images/s} of a
        split call's parts, each timed in its own thread while the others ran: the conditions
        of the next call)."""
        if self.weights is not None:
            return
        with self._lock:
            old = self._speeds.get(key)
            if old is not None:
                self._speeds[key] = tuple(observed.get(i, s) for i, s in enumerate(old))

    def run_parts(self, parts: Sequence[tuple[Device, Callable[[], Any]]]
                  ) -> tuple[list[Any], list[float]]:
        """Runs each (device, thunk) in that device's thread with the device current; returns the
        results and each part's seconds, in order. Every part finishes before the first failure
        (in order) is raised."""
        def call(dev: Device, thunk: Callable[[], Any]) -> tuple[Any, float]:
            with dev:
                t0 = time.perf_counter()
                return thunk(), time.perf_counter() - t0

        futures: list[Future] = [self._executor(d).submit(call, d, f) for d, f in parts]
        results, times, first_error = [], [], None
        for fut in futures:
            try:
                result, seconds = fut.result()
                results.append(result)
                times.append(seconds)
            except BaseException as err:  # re-raised below, once all parts are done
                first_error = first_error or err
        if first_error is not None:
            raise first_error
        return results, times


_GROUPS: dict[tuple[int, ...], DeviceGroup] = {}
_GROUPS_LOCK = threading.Lock()


def group_of(spec: str | Sequence[Any]) -> DeviceGroup:
    """`clconv.device("all")` / `clconv.device([spec, ...])`: the group of those devices, the same
    object for the same devices so that its speed measurements are kept for the process."""
    if isinstance(spec, str):  # "all"
        devs = usable_devices()
        if not devs:
            raise DeviceNotFoundError(f"device('all'): no usable OpenCL device; "
                                      f"{describe_devices(devices())}")
    else:
        specs = list(spec)
        if not specs:
            raise ValueError("device([...]) needs at least one device spec")
        devs = []
        for s in specs:
            if isinstance(s, (list, tuple, DeviceGroup)) or (isinstance(s, str)
                                                             and s.strip().lower() == "all"):
                raise TypeError(f"the specs of device([...]) name single devices, got {s!r}")
            devs.append(runtime_device.device(s))
    key = tuple(id(d) for d in devs)  # Devices live for the process
    with _GROUPS_LOCK:
        group = _GROUPS.get(key)
        if group is None:
            group = _GROUPS[key] = DeviceGroup(devs)
        return group


def device(spec: Any = None) -> Device | DeviceGroup:
    """Selects a device; use as `with clconv.device("cpu") as dev:` to make it current in a block.

    spec: None (env CLCONV_DEVICE, else the first usable GPU, else the first usable CPU), 'cpu',
    'gpu', 'accelerator', an index into `devices()` ('N' or N), 'P:D' (platform:device indices, like
    PYOPENCL_CTX), a case-insensitive substring of the device name or of the platform's name,
    vendor or version ('pocl', 'nvidia'), a Device, or a pyopencl CommandQueue or Context (a Device
    around it): see `runtime.device.device`. 'all' or a list of such specs: a `DeviceGroup` of
    those devices, which splits each op's batch across them (see this module).
    Raises DeviceNotFoundError (listing the devices) when nothing usable matches.
    """
    if (isinstance(spec, str) and spec.strip().lower() == "all") or isinstance(spec, (list, tuple)):
        return group_of(spec)
    return runtime_device.device(spec)


# -- the split hook of the public ops --------------------------------------------------------------
def _describe_arg(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("array", value.shape, value.dtype.str)
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_describe_arg(v) for v in value)
    return repr(value)


def _dtype_key(value: Any) -> str:
    """A batched operand's dtype as a key: numpy's string, or the dtype's own (torch's)."""
    dt = getattr(value, "dtype", None)
    try:
        return (np.asarray(value).dtype if dt is None else np.dtype(dt)).str
    except TypeError:
        return str(dt)


def _into(out: Any, result: np.ndarray, name: str) -> Any:
    """The split call's combined `result` written into the caller's `out` (numpy or a torch
    tensor of the result's shape and dtype), which is returned; `result` when out is None."""
    if out is None:
        return result
    # (a torch tensor's numpy view shares its memory; the ops take no other host kind of out)
    host = out if isinstance(out, np.ndarray) else out.detach().numpy()
    if host.shape != result.shape or host.dtype != result.dtype:  # (as a plan's ValueError)
        raise ValueError(f"{name}: out must have shape {result.shape} and dtype {result.dtype}, "
                         f"got {host.shape} {host.dtype}")
    np.copyto(host, result)
    return out


def _calibration_key(op: Callable[..., Any], arguments: dict[str, Any], batched: Sequence[str],
                     ndim: int, sizes: Sequence[str]) -> Any:
    """What a speed measurement holds for: the op, its arguments without the batch (an unbatched
    input counts as a batch of one, so it shares the batched call's measurement)."""
    items = []
    for name, v in sorted(arguments.items()):
        if name in batched:
            s = np.shape(v)
            items.append((name, "batched", s[1:] if len(s) == ndim else s, _dtype_key(v)))
        elif name in sizes:
            items.append((name, "size", tuple(v)[1:]))
        elif name == "out":
            items.append((name, v is None))
        else:
            items.append((name, _describe_arg(v)))
    return (op.__module__, op.__qualname__, tuple(items))


def _record(group: DeviceGroup, op: Callable[..., Any], ranges: Sequence[tuple[Device, int, int]],
            times: Sequence[float]) -> None:
    """Adds the call's Split to the caller's open `record()` lists of `group`."""
    for owner, found in _RECORDS.get():
        if owner is group:
            found.append(Split(op.__name__, tuple(ranges), tuple(times)))


def _device_arrays(values: Any) -> list[cla.Array]:
    return [v for v in values if isinstance(v, cla.Array)]


def splits_batch(*batched: str, ndim: int, sizes: Sequence[str] = (),
                 reduce: str = "concat") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator of a public op: under a DeviceGroup, split its batch (see the module doc).

    batched: the argument names holding arrays batched along axis 0 (the first decides: ndim dims
    = batched, fewer = unbatched); ndim: the rank of a batched array; sizes: names of shape
    arguments whose first entry is the batch (conv*_input's input_size); reduce: 'concat' (results
    along axis 0) or 'sum' (weight gradients). Outside a group the op is called as is.
    """
    if not batched or reduce not in REDUCTIONS:
        raise ValueError(f"splits_batch needs argument names and reduce in {REDUCTIONS}")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            target = stack.top()
            if not isinstance(target, DeviceGroup):
                return fn(*args, **kwargs)  # the usual case costs one ContextVar read
            return run_on_group(target, fn, args, kwargs, batched=batched, ndim=ndim,
                                sizes=sizes, reduce=reduce, signature=signature)

        return wrapper

    return wrap


def run_on_group(group: DeviceGroup, op: Callable[..., Any], args: Sequence[Any],
                 kwargs: dict[str, Any], *, batched: Sequence[str], ndim: int,
                 sizes: Sequence[str] = (), reduce: str = "concat",
                 signature: inspect.Signature | None = None) -> Any:
    """Runs `op(*args, **kwargs)` on `group` by the rules of the module doc (see `splits_batch`)."""
    def on(dev: Device, a: Sequence[Any] = args, k: dict[str, Any] = kwargs) -> Any:
        with dev:
            return op(*a, **k)

    try:
        bound = (signature or inspect.signature(op)).bind(*args, **kwargs)
    except TypeError:
        return on(group.primary)  # the op raises its own error for wrong arguments

    arrays = _device_arrays(bound.arguments.values())
    if arrays:
        owners = [d for d in group.devices if all(a.context == d.context for a in arrays)]
        if not owners:
            one = len({a.context for a in arrays}) == 1
            where = ("a context of none of the group's devices" if one else
                     "several contexts (one call runs on one device: all its device arrays must "
                     "be on it)")
            raise ValueError(
                f"{op.__name__} under {group!r}: its pyopencl arrays live in {where}; a device "
                f"array cannot be split across devices. Pass numpy arrays to split the batch, or "
                f"compute inside `with clconv.device(...)` for the arrays' device")
        return on(owners[0])  # device arrays: unsplit, on their own device

    lead = bound.arguments[batched[0]]
    shape = np.shape(lead)
    key = _calibration_key(op, bound.arguments, batched, ndim, sizes)
    if len(shape) != ndim:  # unbatched (or a wrong rank, which the op reports)
        best = group.speeds(key, lambda d: on(d))
        return on(group.devices[int(np.argmax(best))])

    n = shape[0]
    # Batched arguments after the first may be optional (a conv's residual): absent or None ones
    # are left as they are.
    present = [name for name in batched if bound.arguments.get(name) is not None]
    consistent = all(len(np.shape(bound.arguments[name])) == ndim
                     and np.shape(bound.arguments[name])[0] == n for name in present) and all(
        np.ndim(bound.arguments.get(name, ())) == 1 and len(bound.arguments[name]) == ndim
        and bound.arguments[name][0] == n for name in sizes if name in bound.arguments)
    if n == 0 and consistent and len(group) > 1:
        # The empty result from the first device that has the operands' dtype (float64 beside
        # a device without it: that device is left out, as from a split).
        for dev in group.devices[:-1]:
            try:
                return on(dev)
            except UnsupportedError:
                continue
        return on(group.devices[-1])
    if n == 0 or len(group) == 1 or not consistent:
        # inconsistent batches: the op's own error message.
        return on(group.primary)

    # out= (numpy or a tensor): the parts compute their own results, the combined one is
    # written into it; what the op refuses of it (a tensor that requires grad, another kind)
    # is refused before any work, as on one device
    out = bound.arguments.get("out")
    if out is not None:
        host_operand(out, "out", written=True)

    def sliced(start: int, stop: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        part = bound.arguments.copy()
        for name in present:  # (numpy arrays and torch tensors slice alike)
            part[name] = part[name][start:stop]
        if out is not None:
            part["out"] = None
        for name in sizes:
            if name in part:
                part[name] = (stop - start, *tuple(part[name])[1:])
        b = inspect.BoundArguments(bound.signature, part)
        return b.args, b.kwargs

    def refused(err: Exception) -> Exception:
        """The op's error for the caller's own arguments where a part's refusal names the part's
        sizes (a residual of the wrong width: the part's batch in the message): the whole call
        on the primary device, which raises it before any work; else `err` itself."""
        try:
            on(group.primary)
        except (ValueError, TypeError) as whole:
            return whole
        except Exception:  # noqa: BLE001 - (the primary cannot run it at all: the part's error)
            return err
        return err

    probe_n = min(n, max(2, n // (8 * len(group))))
    probe_args, probe_kwargs = sliced(0, probe_n)
    try:
        speeds = group.speeds(key, lambda d: on(d, probe_args, probe_kwargs), probe_n)
    except (ValueError, TypeError) as err:
        raise refused(err) from None
    ranges = group.split(n, speeds)
    position = {id(d): i for i, d in enumerate(group.devices)}

    def observed(times: Sequence[float]) -> None:
        # Every part's own rate replaces the probe's, a whole batch on one device included (the
        # others were too slow to get an image): the probe ran on a few images, alone.
        _record(group, op, ranges, times)
        group.refine(key, {position[id(d)]: (stop - start) / max(t, 1e-9)
                           for (d, start, stop), t in zip(ranges, times)})

    if len(ranges) == 1:
        t0 = time.perf_counter()
        result = on(ranges[0][0])
        observed([time.perf_counter() - t0])
        return result
    jobs = []
    for dev, start, stop in ranges:
        a, k = sliced(start, stop)
        jobs.append((dev, functools.partial(op, *a, **k)))
    try:
        parts, times = group.run_parts(jobs)
    except (ValueError, TypeError) as err:
        raise refused(err) from None
    observed(times)
    if reduce == "sum":
        acc = np.promote_types(parts[0].dtype, np.float32)  # float16 parts add in float32
        total = parts[0].astype(acc)
        for p in parts[1:]:
            total += p
        return _into(out, total.astype(parts[0].dtype, copy=False), op.__name__)
    return _into(out, np.concatenate(parts, axis=0), op.__name__)
