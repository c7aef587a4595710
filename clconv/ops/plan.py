"""Plans: an operation validated and configured once for fixed shapes and arguments, then run many times.

Every op of clconv (convolutions, transposed convolutions, gradients, im2col/col2im) is a `Plan`
subclass. Making a plan does everything that depends only on shapes and arguments: validation
(PyTorch's rules, messages naming the argument), the algorithm choice (and, for 'auto', its
measuring), kernel builds, the workspace split and the GEMM arguments. Running it (`plan(...)`) does
the one skeleton below, the same for every op:

    operands: checked against the plan (shape, dtype, context): cheap comparisons
    -> load: numpy uploaded asynchronously, device arrays used in place (strided ones gathered)
    -> result buffer: `out=` if given (checked), else from the device's memory pool
    -> enqueue: the plan's kernels and GEMMs, nothing else
    -> store: float16 results rounded once on the device; a marker event on the result
    -> deliver: numpy for numpy operands (the only host wait), else the device array.

The functional API (`clconv.conv2d(...)` etc.) goes through `cached_plan`: a bounded per-device LRU of
plans keyed by the call's shapes, dtype and arguments, so a repeated call is one dict lookup.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
from pyopencl.compyte.array import c_contiguous_strides

from ..runtime.device import Device
from ..runtime.errors import allocation_failure, device_memory_errors, sizes_text
from ..runtime.interop import host_operand, is_torch_tensor
from ..blas import clblast
from ..runtime import transfer, versions
from ..runtime.memory import empty, trim_idle
from ..runtime.transfer import ArrayLike, check_fits, deliver, element_offset, result_dtype
from .precision import check_precision, compute_dtype, load, plan_dtype, store

__all__ = ["Plan", "PlanCache", "cached_plan", "derived", "freeze", "is_constant", "mark_constant",
           "shape_of"]


#: Guards every plan's cache of siblings for other batch sizes (Plan._for_batch).
_SIBLINGS_LOCK = threading.Lock()


_CONSTANT = "_clconv_constant"  # the attribute mark_constant sets on an array (with its cache)


def mark_constant(a: cla.Array) -> cla.Array:
    """Declares that the device array `a` will never be written again (e.g. the weights a
    compiled model uploaded and owns), so that plans may keep what they derive from it (the
    packed filters of 'implicit' and 'im2col_packed': one launch less per call). Only for arrays
    the caller owns: an array's identity says nothing of its contents otherwise. Returns `a`."""
    setattr(a, _CONSTANT, {})
    return a


def is_constant(a: Any) -> bool:
    """Whether `a` was declared constant with mark_constant."""
    return hasattr(a, _CONSTANT)


def derived(a: Any, key: Hashable, make: Callable[[], Any]) -> Any:
    """`make()`'s value for the constant array `a` (see mark_constant), made once per `key` and
    kept with the array; for any other array `make()` each time."""
    cache = getattr(a, _CONSTANT, None)
    if cache is None:
        return make()
    found = cache.get(key)
    if found is None:
        found = cache[key] = make()
    return found


def shape_of(x: Any) -> tuple[int, ...]:
    """The shape of an operand (array or anything numpy can take)."""
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


_INT_ONLY = {int}


def shape_ints(value: Any, name: str) -> tuple[int, ...]:
    """A shape argument as a tuple of ints >= 0; TypeError naming `name` for anything else
    (floats included: a plan never truncates 5.7 to 5; bytes, whose items are ints, too),
    ValueError for a negative size."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}") from None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    shape = tuple(int(v) for v in items)
    if any(v < 0 for v in shape):
        raise ValueError(f"{name} {shape} has a negative size")
    return shape


def bias_flag(bias: Any, channels: int | None) -> bool:
    """A plan's `bias` argument: whether calls pass one; a bool, None (no bias) or the bias's
    shape (channels,) (the output channels, None where the shapes are too bad to say)."""
    if bias is None or isinstance(bias, (bool, np.bool_)):
        return bool(bias)
    if isinstance(bias, (tuple, list)) and all(isinstance(v, numbers.Integral) for v in bias):
        if channels is not None and tuple(bias) != (channels,):
            raise ValueError(f"bias shape {tuple(bias)} must be (C_out,) = ({channels},)")
        return True
    raise TypeError(f"bias must be a bool (whether calls pass one) or its shape (C_out,), got "
                    f"{bias!r}")


def freeze(value: Any) -> Hashable:
    """A hashable key for an argument value that keeps its type (1, 1.0 and True stay distinct, so
    a cached plan never accepts a value that validation would reject) and a float's bits: -0.0
    and 0.0 compare equal but are different values (a pad value, a clamp bound: torch keeps the
    sign), and every NaN is one key."""
    kind = type(value)
    # The common cases, as they are: an int, a str, None, a tuple of ints (shapes, strides). Any
    # other value (a bool, a float, a numpy int, a list) is wrapped with its type, so it can never
    # equal one of these.
    if kind is int or kind is str or value is None:
        return value
    if kind is tuple and set(map(type, value)) == _INT_ONLY:  # (a run's hot path: no generator)
        return value
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(freeze(v) for v in value))
    if isinstance(value, np.dtype):
        return ("dtype", value.str)
    if isinstance(value, (float, np.floating)):
        return (kind.__name__, float(value).hex())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # an Activation
        return (kind.__name__, tuple(freeze(getattr(value, f.name))
                                     for f in dataclasses.fields(value)))
    hash(value)  # TypeError for unhashable values: the caller then plans without the cache
    return (type(value).__name__, value)


class Plan:
    """Base of every op's plan: the run skeleton (see the module doc).

    Subclasses set, in their constructor (after validating):
      device, dtype (the operands' dtype), work (the dtype kernels compute in),
      operand_shapes: {name: shape the caller passes (None: that optional operand must be None)},
      output_shape (the caller's, unbatched when the input was), batch_shape (the kernels'),
      workspace_bytes, label (e.g. 'conv2d (im2col)'), result_follows (the operand whose kind,
      numpy or device array, decides the result's)
    and implement `enqueue(arrays, out)` on contiguous device arrays of `work` dtype.

    A plan called with another batch size of its layer (the batched operands' other dims equal)
    runs a sibling plan made once for that batch from the same constructor arguments (the same
    kernels: the batch is a kernel argument) and kept, the last 8 per plan.
    """

    device: Device
    dtype: np.dtype
    work: np.dtype
    operand_shapes: dict[str, tuple[int, ...] | None]
    output_shape: tuple[int, ...]
    batch_shape: tuple[int, ...]
    workspace_bytes: int = 0
    label: str = ""
    result_follows: str = "input"
    needs_gemm: bool = False  # checked on every run too: pyclblast can go missing (tests do that)
    _c_strides: dict[str, tuple[int, ...] | None] | None = None  # _ready's, made on first use
    #: Whether `out=` may be an operand itself (the same elements): each output element is
    #: computed from that operand's element alone (the elementwise ops: inplace=True). Any other
    #: overlap of out with an operand is computed into a temporary and copied (`_overlaps`).
    out_may_be_operand: bool = False

    def __copy__(self) -> Plan:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Plan:
        raise TypeError(f"a {type(self).__name__} cannot be copied: it holds its device's "
                        f"built kernels and buffers; make another plan with the same arguments "
                        f"(plans of equal arguments share their programs)")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"a {type(self).__name__} cannot be pickled: it holds its device's "
                        f"built kernels and buffers; pickle its arguments and make the plan again "
                        f"where it is loaded")

    #: The constructor arguments that hold the batch in their first dim, and the operands that do:
    #: a plan called with another batch size of its layer derives a sibling plan (`_for_batch`).
    _BATCH_ARGS = ("input_shape", "input_size", "grad_shape", "residual_shape")
    _BATCH_OPERANDS = ("input", "grad_output", "residual")

    def __new__(cls, *args: Any, **kwargs: Any) -> Plan:
        # The constructor's arguments, kept so that a sibling plan for another batch size can be
        # made from them (the batch is only a kernel argument: kernels are shared, not rebuilt).
        self = super().__new__(cls)
        self._init_args = (args, kwargs)
        self._siblings: OrderedDict[int, Plan] = OrderedDict()
        return self

    def _batched(self) -> bool:
        """Whether the operands' dim 0 is a batch (a plan made for an unbatched input has none:
        its kernels' batch_shape then adds one)."""
        return self.output_shape == self.batch_shape

    def _batch_of(self, values: dict[str, Any]) -> int | None:
        """The batch size of `values` when it differs from the plan's and nothing else does (the
        batched operands' other dims equal the plan's), else None."""
        if not self._batched():
            return None
        batch = planned = first = None
        for name in self._BATCH_OPERANDS:
            want = self.operand_shapes.get(name)
            x = values.get(name)
            if want is None or x is None:
                continue
            got = shape_of(x)
            if len(got) != len(want) or not got or got[1:] != want[1:]:
                return None  # (0-d operands have no batch)
            if batch is not None and got[0] != batch:
                raise ValueError(f"{name} has batch size {got[0]} but {first} has {batch}; the "
                                 f"batched operands must agree")
            batch, planned, first = got[0], want[0], name
        return None if batch == planned else batch

    def _for_batch(self, batch: int) -> Plan | None:
        """This plan for another batch size (made once, then kept: the last 8), or None when it
        cannot be derived (a plan made from an internal geometry)."""
        with _SIBLINGS_LOCK:
            sibling = self._siblings.get(batch)
            if sibling is not None:
                self._siblings.move_to_end(batch)
                return sibling
        args, kwargs = getattr(self, "_init_args", ((), {}))
        try:
            bound = inspect.signature(type(self)).bind(*args, **kwargs)
        except TypeError:
            return None
        named = bound.arguments
        if named.get("geometry") is not None or not any(n in named for n in self._BATCH_ARGS):
            return None
        for name in self._BATCH_ARGS:
            if named.get(name) is not None:
                named[name] = (batch, *tuple(named[name])[1:])
        sibling = type(self)(*bound.args, **bound.kwargs)  # validates and builds, unlocked
        with _SIBLINGS_LOCK:
            self._siblings[batch] = sibling
            while len(self._siblings) > 8:
                self._siblings.popitem(last=False)
        return sibling

    def _prepare(self, dev: Device, dtype: np.dtype, operand_shapes: dict[str, Any],
                 output_shape: tuple[int, ...], batch_shape: tuple[int, ...],
                 fits: dict[str, tuple[int, ...]], checked: tuple[str, ...] = ()) -> None:
        """Common plan-time set-up: precision checks and the single-buffer size checks (of
        `checked`, default every entry of `fits`, in order)."""
        for name, shape in operand_shapes.items():  # a plan's shapes come from its caller
            if shape is not None and any(d < 0 for d in shape):
                raise ValueError(f"{name} shape {tuple(shape)} has a negative size")
        if not isinstance(dev, Device):
            raise TypeError(f"a plan's device must be a clconv.Device (e.g. "
                            f"clconv.current_device()), got {type(dev).__name__}")
        self.device = dev
        self.dtype = plan_dtype(dtype)
        check_precision(dev, self.dtype)
        # float16 is stored as such but computed in float32 (rounded once at the end).
        self.work = compute_dtype(self.dtype)
        self.operand_shapes = operand_shapes
        self.output_shape = tuple(output_shape)
        self.batch_shape = tuple(batch_shape)
        self._sizes = dict(fits)  # in the order memory errors name them
        for what in checked or fits:  # each must fit one buffer (MemoryError before any work)
            check_fits(dev, what, fits[what], self.work)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        """Enqueues the op; returns the event of the last command it enqueued when that one
        wrote `out` last (the result then carries it), else None (a marker is enqueued)."""
        raise NotImplementedError

    def sizes_text(self) -> str:
        """The op, its shapes and workspace, for memory errors."""
        return sizes_text(self.label, self.dtype, self.workspace_bytes, **self._sizes)

    def _check_operands(self, values: dict[str, Any]) -> None:
        for name, want in self.operand_shapes.items():
            x = values[name]
            if want is None:
                if x is not None:
                    raise ValueError(f"this plan was made without {name}; pass {name}=None or make "
                                     f"a plan with one")
                continue
            if x is None:
                raise ValueError(f"this plan was made with {name} of shape {want}; got None")
            got = shape_of(x)
            if got != want:
                batched = f" (any batch size: its dims after the first must be {want[1:]})" \
                    if name in self._BATCH_OPERANDS and self._batched() else ""
                raise ValueError(f"{name} has shape {got} but this plan was made for {want}"
                                 f"{batched}; make a plan for this shape")
        dtype = result_dtype(self.device, **{n: v for n, v in values.items()
                                             if self.operand_shapes.get(n) is not None})
        if dtype != self.dtype:
            raise TypeError(f"operands have dtype {dtype} but this plan was made for {self.dtype}")
        if dtype == np.float16:
            check_precision(self.device, dtype)  # the probe's verdict (cheap once made)

    def _result_buffer(self, out: Any, host: bool) -> tuple[cla.Array, Any]:
        """The device array the kernels write (of `work` dtype, in batch_shape) and the caller's
        `out` to fill at the end (None when the kernels write into `out` itself)."""
        dev = self.device
        if out is None:
            return empty(dev, self.batch_shape, self.work), None
        kind, what = (np.ndarray, "a numpy array (or a CPU torch tensor) for host") if host \
            else (cla.Array, "a pyopencl Array for device")
        if host and is_torch_tensor(out):  # written through its numpy view (the same memory)
            out = host_operand(out, "out")
        if not isinstance(out, kind):
            raise TypeError(f"out must be {what} operands, got {type(out).__name__}")
        if out.shape != self.output_shape or out.dtype != self.dtype:
            raise ValueError(f"out must have shape {self.output_shape} and dtype {self.dtype}, got "
                             f"{out.shape} {out.dtype}")
        if host:
            if not out.flags.writeable:
                raise ValueError("out is read-only")
            transfer.check_distinct_elements(out)
            return empty(dev, self.batch_shape, self.work), out  # (a strided view: copied in)
        if out.context != dev.context:
            raise ValueError(f"out is a pyopencl array of another OpenCL context than the plan's "
                             f"device {dev.name!r}")
        if self.work != self.dtype or out.queue != dev.queue or not out.flags.c_contiguous:
            # (a strided view: computed contiguous, then scattered into it)
            return empty(dev, self.batch_shape, self.work), out
        return out.reshape(self.batch_shape), None

    def _ready(self, values: dict[str, Any]) -> bool:
        """Whether every operand is already what `enqueue` takes (so that `execute` may skip the
        loading): a C-contiguous device array on the device's own queue (so of its context),
        of the plan's shape and dtype, computed as stored (not float16), within INDEX_LIMIT of
        its buffer's start; and None exactly where the plan has no such operand."""
        if self.work != self.dtype:
            return False
        queue, dtype = self.device.queue, self.dtype
        strides = self._c_strides
        if strides is None:  # each operand's C-contiguous strides (pyopencl's flags cost ~10 us)
            strides = self._c_strides = {
                name: None if want is None else c_contiguous_strides(dtype.itemsize, want)
                for name, want in self.operand_shapes.items()}
        for name, want in self.operand_shapes.items():
            x = values[name]
            if want is None:
                if x is not None:
                    return False
            elif (type(x) is not cla.Array or x.queue is not queue or x.shape != want
                  or x.dtype != dtype or x.strides != strides[name]
                  or x.offset % dtype.itemsize
                  or x.offset // dtype.itemsize + x.size >= INDEX_LIMIT):
                return False
        return True

    def _ready_out(self, out: Any, values: dict[str, Any]) -> bool:
        """Whether `out=` (with ready operands) is what `enqueue` writes: a C-contiguous device
        array on the device's queue, of the batched result's shape and the plan's dtype, in a
        buffer of its own (no operand's: the kernels read them while they write it), or the
        operand itself where `out_may_be_operand` (an in-place elementwise op)."""
        want = self.batch_shape
        if (type(out) is not cla.Array or out.queue is not self.device.queue
                or out.shape != want or want != self.output_shape or out.dtype != self.dtype
                or out.offset or out.strides != c_contiguous_strides(out.dtype.itemsize, want)
                or out.size >= INDEX_LIMIT):
            return False
        buffer = out.base_data
        return not any(v is not None and v.base_data == buffer and not (
            self.out_may_be_operand and v.offset == 0 and v.shape == out.shape
            and v.strides == out.strides) for v in values.values())

    def _overlaps(self, out: cla.Array, values: dict[str, Any]) -> bool:
        """Whether the device `out` shares memory with an operand in a way the kernels cannot
        write it directly (they read operands while they write out): any overlap, except the
        operand itself where `out_may_be_operand`."""
        lo, hi = _byte_range(out)
        for v in values.values():
            if not isinstance(v, cla.Array) or v.base_data != out.base_data:
                continue
            same = (v.offset == out.offset and v.shape == out.shape and v.strides == out.strides)
            if same and self.out_may_be_operand:
                continue
            v_lo, v_hi = _byte_range(v)
            if v_lo < hi and lo < v_hi:
                return True
        return False

    def execute(self, values: dict[str, Any], out: Any = None, check: bool = True,
                events: bool = True) -> ArrayLike:
        """The run skeleton: check, load, result buffer, enqueue, store, deliver. `check=False`
        for the functional API, whose plan key already holds the operands' shapes and dtype;
        `events=False` for a caller that waits for the queue itself: a device result of ready
        operands then gets no completion event (no marker enqueued: ~15 us a run)."""
        if self.needs_gemm:
            clblast.require(self.label)
        ready = self._ready(values) and (out is None or self._ready_out(out, values))
        if check and not ready:
            batch = self._batch_of(values)
            sibling = None if batch is None else self._for_batch(batch)
            if sibling is not None:  # another batch size of the same layer (it counts the write)
                return sibling.execute(values, out)
            self._check_operands(values)
        elif self.dtype == np.float16 and not ready:
            check_precision(self.device, self.dtype)
        if out is not None:
            versions.bump(out)  # a write into the caller's array (clconv.nn's backward checks)
        dev = self.device
        host = not ready and not isinstance(values[self.result_follows], cla.Array)
        # Every run costs its Python too (a small layer's kernels take ~100 us): the common case
        # (no out=, float32) makes no object beyond the result, the operands' dict and its event;
        # the memory-error translation is a try, not a context manager.
        try:
            if ready:
                # The common case of a network's layer (device arrays of the plan's shapes and
                # dtype on its queue, no out=): the path below without its loading and checks,
                # which cannot fail here (~30 us of a small layer's ~45 us of Python a run; on
                # 2 cores that Python takes a core from the kernels).
                result = empty(dev, self.batch_shape, self.dtype) if out is None else out
                done = self.enqueue({n: values[n] for n in self.operand_shapes}, result) \
                    if result.size else None
                if events:
                    result.add_event(done if isinstance(done, cl.Event)
                                     else cl.enqueue_marker(dev.queue))
                dev.queue.flush()  # (see below)
                return result if result.shape == self.output_shape else \
                    result.reshape(self.output_shape)
            if out is None:
                result, fill = empty(dev, self.batch_shape, self.work), None
            else:
                result, fill = self._result_buffer(out, host)
                if fill is None and self._overlaps(out, values):
                    result, fill = empty(dev, self.batch_shape, self.work), out
            done = None
            if result.size:
                dtype = self.dtype
                arrays = {}
                for name, shape in self.operand_shapes.items():
                    arrays[name] = None if shape is None else \
                        _rebased(dev, load(dev, values[name], name, dtype))
                done = self.enqueue(arrays, result)
            final = result if result.dtype == self.dtype else store(dev, result, self.dtype)
            if final.shape != self.output_shape:  # unbatched
                final = final.reshape(self.output_shape)
            if not host:
                # The result carries its completion event (for other queues and for .events users):
                # the event of the last command that wrote it when `enqueue` returns it (the queue
                # is in-order; nothing was enqueued after it), else a marker. The queue is flushed:
                # a wait for that event from another queue never ends on rusticl otherwise (its
                # commands stay unsubmitted until a flush; ~0 us on PoCL).
                final.add_event(done if isinstance(done, cl.Event) and result.dtype == self.dtype
                                else cl.enqueue_marker(dev.queue))
                dev.queue.flush()
            if fill is not None:
                if host:
                    if fill.size and fill.flags.c_contiguous:
                        final.get(ary=fill)
                    elif fill.size:
                        fill[...] = final.get()
                    return out if fill is not out else fill  # the caller's tensor itself
                _copy_into(dev, final, fill)
                return fill
            if out is not None:  # the kernels wrote into the caller's array itself
                out.add_event(final.events[-1])
                return out
        except Exception as err:
            if allocation_failure(err) is None:
                raise
            with device_memory_errors(dev, self.sizes_text):  # a MemoryError naming the sizes
                raise
        return deliver(final, host)


#: Kernels built for 32-bit offsets (INDEX_T=int, chosen from the plan's shapes) index operands
#: from the start of their buffer: a device operand that ends this far into its buffer (a view deep
#: into a huge buffer) is copied to a buffer of its own first.
INDEX_LIMIT = 2**31


def _byte_range(a: cla.Array) -> tuple[int, int]:
    """[first, last + 1) bytes of `a`'s elements in its buffer (any strides)."""
    if a.size == 0:
        return a.offset, a.offset
    lo = hi = a.offset
    for n, st in zip(a.shape, a.strides):
        if st < 0:
            lo += (n - 1) * st
        else:
            hi += (n - 1) * st
    return lo, hi + a.dtype.itemsize


def _rebased(dev: Device, a: cla.Array) -> cla.Array:
    if element_offset(a) + a.size < INDEX_LIMIT:
        return a
    copy = empty(dev, a.shape, a.dtype)
    cl.enqueue_copy(dev.queue, copy.base_data, a.base_data, byte_count=a.nbytes,
                    src_offset=a.offset, dst_offset=copy.offset)
    return copy


def _copy_into(dev: Device, src: cla.Array, dst: cla.Array) -> None:
    """dst[...] = src on the device, converting the dtype if needed (for `out=`)."""
    from .precision import convert, convert_into

    if not dst.flags.c_contiguous and dst.size:
        if src.dtype != dst.dtype:
            src = convert(dev, src, dst.dtype)
        transfer.scatter(src, dst, dev)
    elif src.dtype == dst.dtype:
        if src.size:
            cl.enqueue_copy(dev.queue, dst.base_data, src.base_data, byte_count=src.nbytes,
                            src_offset=src.offset, dst_offset=dst.offset)
    else:
        convert_into(dev, src, dst)
    other_queue = dst.queue is not None and dst.queue != dev.queue
    if other_queue:
        cl.enqueue_marker(dst.queue, wait_for=[cl.enqueue_marker(dev.queue)])
    dst.add_event(cl.enqueue_marker(dev.queue))
    if other_queue:
        # dst's queue waits on these markers: the queue they are on must be flushed (OpenCL
        # leaves it to the caller; rusticl otherwise never submits them and the wait never ends).
        dev.queue.flush()


class PlanCache:
    """A device's plans for the functional API, least recently used first out (MAX_PLANS).

    The bound keeps memory in check (a plan holds its kernel objects: ~10-160 KB each on PoCL)
    and sits above what a model met at many input sizes cycles through: a converted or compiled
    ResNet-18 makes ~15 plans a (size, batch), and a stream of 80 of them (1,176 plans) made
    every call plan again (3x slower, for good) under the earlier 512."""

    MAX_PLANS = 2048

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[Hashable, Plan] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Plan | None:
        with self.lock:
            plan = self.entries.get(key)
            if plan is not None:
                self.entries.move_to_end(key)
                self.hits += 1
            return plan

    def put(self, key: Hashable, plan: Plan) -> None:
        with self.lock:
            self.misses += 1
            self.entries[key] = plan
            self.entries.move_to_end(key)
            while len(self.entries) > self.MAX_PLANS:
                self.entries.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


def plans(dev: Device) -> PlanCache:
    """The device's PlanCache (made on first use)."""
    return dev.slot("plans", PlanCache)


def cached_plan(dev: Device, key_parts: Sequence[Any], make: Callable[[], Plan]) -> Plan:
    """The plan for `key_parts` from the device's cache, else `make()` (cached when its key is
    hashable; a value that cannot be hashed goes straight to `make`, whose validation names it)."""
    try:
        # What the plan was made under is part of the key: the testing hook that forces 64-bit
        # kernel offsets (a plan keeps its kernels) and whether CLBlast is there ('auto' picks
        # 'direct' without it).
        key = (transfer.FORCE_INDEX_T, clblast.available(), *map(freeze, key_parts))
    except TypeError:
        return make()
    cache = plans(dev)
    plan = cache.get(key)
    if plan is None:
        plan = make()
        cache.put(key, plan)
        trim_idle(dev)  # (new shapes: what the pool holds for sizes met before may be stale)
    return plan
