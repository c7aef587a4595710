"""What clconv.torch's modules and convert()'s folded chains (clconv.torch_fold) share: tensors
to device operands and results back to tensors, the device copies of weights kept between inference
calls (fixed_operand), clconv's functions by dimension and the refusal of torch.jit.script."""

from __future__ import annotations

import functools
import sys
import threading
import weakref
from typing import Any, Callable

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import torch
from torch import nn

from .ops.conv import conv1d, conv2d, conv3d
from .ops.grad import (
    conv1d_input,
    conv1d_weight,
    conv2d_input,
    conv2d_weight,
    conv3d_input,
    conv3d_weight,
)
from .ops.plan import mark_constant
from .ops.transpose import conv_transpose1d, conv_transpose2d, conv_transpose3d
from .runtime import config
from .runtime.device import Device
from .runtime.memory import array_over

#: nd -> clconv's (forward, input gradient, weight gradient, transposed) functions.
OPS = {1: (conv1d, conv1d_input, conv1d_weight, conv_transpose1d),
        2: (conv2d, conv2d_input, conv2d_weight, conv_transpose2d),
        3: (conv3d, conv3d_input, conv3d_weight, conv_transpose3d)}


_FIRST_ORDER = (b"clconv.torch: differentiating the gradient of clconv's convolutions "
                b"(create_graph=True, then a backward through that gradient) is not supported: "
                b"their gradients are computed on the device and are not differentiable. Use "
                b"torch's modules for second-order gradients (gradient penalties, Hessians)")


def saved_tensors(ctx: Any) -> tuple[Any, ...]:
    """`ctx.saved_tensors`, unpacked once a backward call (kept on ctx until `first_order`'s
    wrapper ends it): torch.utils.checkpoint's non-reentrant mode recomputes them at the first
    unpack and refuses a second one."""
    saved = getattr(ctx, "clconv_saved", None)
    if saved is None:
        saved = ctx.clconv_saved = ctx.saved_tensors
    return saved


def first_order(backward: Any) -> Any:
    """An autograd Function's backward whose result is not differentiable, as torch's
    once_differentiable, but refusing a second differentiation whenever the gradient's graph is
    recorded (create_graph=True). torch's decorator does so only when the incoming gradient
    requires grad; a gradient penalty's incoming gradient is a constant (that of a sum), so the
    convolution's second-order terms, which come from its saved input and weight, were dropped
    without a word."""

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        try:
            with torch.no_grad():
                outputs = backward(ctx, *grads)
            if not torch.is_grad_enabled():  # a plain backward: nothing records the graph
                return outputs
            return _refusing_second_order(ctx, grads, outputs)
        finally:
            ctx.clconv_saved = None  # (the operands unpacked for this call: not held after it)
    return wrapper


def _refusing_second_order(ctx: Any, grads: tuple[Any, ...], outputs: Any) -> Any:
    """`outputs` through an error node that a differentiation of them reaches."""
    from torch._C import _functions

    outs = outputs if isinstance(outputs, tuple) else (outputs,)

    def delayed(t: Any) -> Any:  # an alias that requires grad, so the error node is reached
        if t is None:
            return None
        t = t.detach()
        t.requires_grad = True
        return t

    # The saved operands that require grad (input, weight) enter the error node too, so that
    # a gradient taken with respect to them (torch.autograd.grad(g, x)) reaches it: the
    # detached aliases alone left x out of g's graph (torch's "not used in the graph", or
    # None with allow_unused=True)
    saved = [t for t in saved_tensors(ctx) if t is not None and t.requires_grad]
    # and so does an incoming gradient that requires grad: torch.autograd.functional.jvp
    # differentiates the gradient with respect to it (it got zeros, the error node unseen)
    saved += [g for g in grads if isinstance(g, torch.Tensor) and g.requires_grad]
    wrapped = _functions.DelayedError(_FIRST_ORDER, len(outs) + len(saved))(
        *[delayed(t) for t in outs], *saved)
    wrapped = (wrapped if isinstance(wrapped, tuple) else (wrapped,))[:len(outs)]
    return wrapped if isinstance(outputs, tuple) else wrapped[0]


_OMP_PAUSE_SOFT = 1  # OpenMP 5.0's omp_pause_soft
_OPENMP_RUNTIMES = ("libgomp", "libiomp5", "libomp")  # GNU's (torch's Linux wheels), Intel's, LLVM's


@functools.cache
def _openmp_pause() -> Callable[[int], int] | None:
    """omp_pause_resource_all of the OpenMP runtime loaded in this process (Linux: found in
    /proc/self/maps), or None."""
    import ctypes
    import os

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/" in line
                            and os.path.basename(line.split()[-1]).startswith(_OPENMP_RUNTIMES)})
    except OSError:
        return None
    for path in paths:
        try:
            pause = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
        return pause
    return None


def pause_openmp(dev: Device) -> None:
    """Releases the calling thread's idle OpenMP team (torch's intra-op workers) before clconv
    enqueues work on `dev`, a device on the host's cores. After each parallel torch op those
    workers spin for milliseconds (libgomp's default wait policy) on the cores PoCL's threads
    need: in a converted ResNet-18's training step (batch 1, 2-core AMD EPYC) 18% of the
    process's samples were libgomp's spin loop. `omp_pause_resource_all(omp_pause_soft)` ends
    them (~35 us); torch's next parallel op starts new ones (~70 us). A no-op where none are
    left, on other devices, without an OpenMP runtime, or with CLCONV_TORCH_PAUSE_OPENMP=0."""
    if dev.kind != "cpu" or not config.torch_pause_openmp():
        return
    pause = _openmp_pause()
    if pause is not None:
        pause(_OMP_PAUSE_SOFT)


def host(t: torch.Tensor | None) -> np.ndarray | None:
    """A tensor's values as a numpy view (no copy; a copy of a lazily negated view's values);
    None stays None."""
    return None if t is None else t.detach().resolve_neg().numpy()


#: Device -> whether its memory is the host's (CL_DEVICE_HOST_UNIFIED_MEMORY).
_UNIFIED: dict[Device, bool] = {}


def uses_zero_copy(dev: Device) -> bool:
    """Whether forward operands reach `dev` as USE_HOST_PTR buffers over the tensors' own memory,
    and results are written into new tensors' memory, instead of being copied: on devices whose
    memory is the host's (CL_DEVICE_HOST_UNIFIED_MEMORY: PoCL's CPU devices) unless
    CLCONV_TORCH_ZERO_COPY=0. Converted ResNet-18 and MobileNetV2 forwards measured 5-11% faster
    so (docs/compile.md)."""
    if not config.torch_zero_copy():
        return False
    found = _UNIFIED.get(dev)
    if found is None:
        try:
            found = bool(dev.cl_device.host_unified_memory)
        except cl.Error:
            found = False
        _UNIFIED[dev] = found
    return found


#: Device -> whether its commands write a USE_HOST_PTR buffer's host memory itself (probed).
_IN_PLACE: dict[Device, bool] = {}


def writes_host_memory(dev: Device) -> bool:
    """Whether `dev` keeps a USE_HOST_PTR buffer in the host memory it was made over, so that what
    its commands write there is the tensor's once they are done, without the map for reading
    that OpenCL's rule asks for. PoCL's CPU devices only, whose drivers use that memory as the
    buffer's own, and checked once per device: fills of such buffers over an aligned and an
    unaligned pointer are seen in host memory after the queue finished, and maps of them return
    the host pointers. (rusticl's llvmpipe passes that check too, yet a convolution's result
    was missing from the host memory without the map in a longer test run: it keeps the maps.)
    Results then cost one wait, not a map and an unmap each (~20 us a result: a training chain
    has 3-6)."""
    found = _IN_PLACE.get(dev)
    if found is None:
        with dev.lock:
            found = _IN_PLACE[dev] = _is_pocl_cpu(dev) and _probe_in_place(dev)
    return found


def _is_pocl_cpu(dev: Device) -> bool:
    try:
        return dev.cl_device.platform.name == "Portable Computing Language" and \
            bool(dev.cl_device.type & cl.device_type.CPU)
    except cl.Error:
        return False


def _probe_in_place(dev: Device) -> bool:
    queue = dev.queue
    block = np.zeros(2 * 4096 // 4, np.float32)
    start = (-block.ctypes.data % 4096) // 4  # the first page-aligned element
    try:
        for offset in (start, start + 1):
            host = block[offset:offset + 256]
            buf = cl.Buffer(dev.context, cl.mem_flags.WRITE_ONLY | cl.mem_flags.USE_HOST_PTR,
                            hostbuf=host)
            cl.enqueue_fill_buffer(queue, buf, np.float32(7.0), 0, host.nbytes)
            queue.finish()
            seen = bool((host == 7.0).all())
            mapped, _ = cl.enqueue_map_buffer(queue, buf, cl.map_flags.READ, 0, host.shape,
                                              host.dtype, is_blocking=True)
            same = mapped.ctypes.data == host.ctypes.data
            mapped.base.release()
            queue.finish()
            if not (seen and same):
                return False
        return True
    except cl.Error:
        return False


def operand(t: torch.Tensor | None, dev: Device, zero_copy: bool) -> Any:
    """A forward operand: a device array over the tensor's memory (zero_copy, for contiguous
    tensors), else its numpy view (uploaded by the op)."""
    if t is None:
        return None
    t = t.detach()
    if t.is_neg():  # a lazily negated view (x.conj().imag): its memory holds -values
        t = t.resolve_neg()
    try:
        a = t.numpy()
    except TypeError:  # a dtype numpy lacks (bfloat16, float8): its error names no remedy
        raise TypeError(f"clconv.torch: a tensor of dtype {t.dtype}; clconv computes in float32, "
                        f"float64 or float16 (where the device has them): convert the model and "
                        f"its input, e.g. with .float()") from None
    if not zero_copy or not a.flags.c_contiguous or a.size == 0 or not a.flags.aligned:
        return a
    buf = cl.Buffer(dev.context, cl.mem_flags.READ_ONLY | cl.mem_flags.USE_HOST_PTR, hostbuf=a)
    return array_over(dev, buf, a.shape, a.dtype)


def result_operand(shape: tuple[int, ...], like: torch.Tensor, dev: Device,
                   zero_copy: bool) -> tuple[torch.Tensor, cla.Array] | None:
    """(a new tensor of `shape` and `like`'s dtype, a device array over its memory) for a
    forward's result to be written in place (zero_copy: the device's memory is the host's), or
    None (then the result is downloaded). `synced` makes its contents the tensor's."""
    if not zero_copy or like.dtype not in (torch.float32, torch.float64) or \
            min(shape, default=0) <= 0:
        return None
    t = torch.empty(shape, dtype=like.dtype)
    a = t.numpy()
    buf = cl.Buffer(dev.context, cl.mem_flags.WRITE_ONLY | cl.mem_flags.USE_HOST_PTR, hostbuf=a)
    return t, array_over(dev, buf, a.shape, a.dtype)


#: torch's count of the references to a tensor's memory (its views, numpy arrays over it), where
#: this torch has it: without it no result is reused (`ResultPool`).
_STORAGE_USES = getattr(torch._C, "_storage_Use_Count", None)


def _storage_uses(t: torch.Tensor) -> int:
    return _STORAGE_USES(t.untyped_storage()._cdata)


class ResultPool:
    """The result tensors of a converted model's inference forward that only its own clconv
    nodes read (the trace's deferred results), kept and written again by its later forwards:
    a new tensor each call costs its allocation, numpy view and USE_HOST_PTR buffer (~10 us of
    host work a result) and cold memory; MobileNetV3-Small's converted forward at batch 1 ran
    1.20x faster reusing them (docs/performance.md). A kept tensor is taken again only while
    nothing but the pool holds it: neither the tensor object (Python references) nor its memory
    (views, numpy arrays: the storage's use count) is referenced beyond the counts it had when
    made, checked under a lock, and the taker's reference makes it busy before the lock is left.
    Kernels of the earlier forward that still read it are enqueued before the new writer on the
    device's in-order queue. Results over MAX_RESULT_BYTES are not kept; past MAX_BYTES the
    pool starts again (a model met at other input sizes)."""

    MAX_BYTES = 128 << 20
    MAX_RESULT_BYTES = 8 << 20

    def __reduce__(self) -> tuple[Any, ...]:
        return ResultPool, ()  # (a copied or pickled model's pool starts empty)

    def __init__(self) -> None:
        self._kept: dict[tuple[Any, ...], list[tuple[tuple[torch.Tensor, cla.Array], int, int]]]
        self._kept = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def result(self, shape: tuple[int, ...], like: torch.Tensor,
               dev: Device) -> tuple[torch.Tensor, cla.Array] | None:
        """`result_operand(shape, like, dev, True)`: a kept one that nothing else holds, or a
        new one (kept where it fits)."""
        key = (dev, shape, like.dtype)
        with self._lock:
            for made, refs, uses in self._kept.get(key, ()):
                if sys.getrefcount(made[0]) == refs and _storage_uses(made[0]) == uses:
                    return made[0], made[1]  # (a new tuple: the tensor is referenced, busy)
            made = result_operand(shape, like, dev, True)
            if made is None or _STORAGE_USES is None:
                return made
            nbytes = made[0].numel() * made[0].element_size()
            if nbytes <= self.MAX_RESULT_BYTES:
                if self._bytes + nbytes > self.MAX_BYTES:
                    self._kept, self._bytes = {}, 0
                # (the counts with only `made` holding the tensor, as when the loop above asks)
                entry = (made, sys.getrefcount(made[0]), _storage_uses(made[0]))
                self._kept.setdefault(key, []).append(entry)
                self._bytes += nbytes
            return made[0], made[1]


def make_host_visible(dev: Device, arrays: list[cla.Array]) -> None:
    """Makes the contents of `arrays` (USE_HOST_PTR buffers over tensors' memory, written by
    kernels enqueued on dev.queue) the tensors': a map for reading of each (OpenCL's rule; no copy
    where the device uses that memory), enqueued together and waited for once (one wake-up of the
    driver's threads, not one an array), then unmapped; where the device writes that memory
    itself (`writes_host_memory`), one wait of the queue alone."""
    if not arrays:
        return
    queue = dev.queue
    if writes_host_memory(dev):
        queue.finish()
        return
    maps = [cl.enqueue_map_buffer(queue, a.base_data, cl.map_flags.READ, 0, a.shape, a.dtype,
                                  is_blocking=False) for a in arrays]
    maps[-1][1].wait()  # an in-order queue: every map before it is done too
    for mapped, _ in maps:
        mapped.base.release()


def synced(result: tuple[torch.Tensor, cla.Array], dev: Device) -> torch.Tensor:
    """The tensor of `result_operand` once the kernels that write its device array are done
    (`make_host_visible`)."""
    make_host_visible(dev, [result[1]])
    return result[0]


def nd_tuple(v: Any, nd: int) -> tuple[int, ...]:
    """A torch size argument (an int, or one per dim) as nd ints."""
    return tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (int(v),) * nd


def module_padding(conv: nn.Module) -> Any:
    """The padding torch's ConvNd.forward applies: `conv.padding`, except with a padding_mode other
    than 'zeros', where torch pads by the amounts cached at construction
    (`_reversed_padding_repeated_twice`, then F.pad), so that a `.padding` assigned later is not
    seen: those amounts as one int per dim, or 'same' where they are uneven (only 'same' with an
    even kernel span makes them so)."""
    cached = getattr(conv, "_reversed_padding_repeated_twice", None)
    if getattr(conv, "padding_mode", "zeros") == "zeros" or cached is None:
        return conv.padding
    pairs = [(int(cached[2 * i]), int(cached[2 * i + 1]))
             for i in reversed(range(len(cached) // 2))]
    if any(lo != hi for lo, hi in pairs):
        return "same"
    return tuple(lo for lo, _ in pairs)


def refuse_pairs(padding: Any, nd: int) -> None:
    """TypeError for a padding of (lo, hi) pairs, which torch's convolutions do not take (the
    functional API and its plans do: clconv.torch's must not compute what torch refuses)."""
    if isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding):
        raise TypeError(f"padding {padding!r}: (lo, hi) pairs are taken by clconv.conv1d/2d/3d "
                        f"and their plans only; torch's convolution modules and functions (and "
                        f"clconv.torch's) take an int or one per dim (or 'same' / 'valid'): pad "
                        f"with F.pad or nn.ZeroPad{nd}d first for asymmetric padding")


def conv_result_shape(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Any,
                      padding: Any, dilation: Any, groups: int = 1,
                      output_padding: Any = None) -> tuple[int, ...]:
    """The result shape of a batched convolution with torch's arguments (transposed when
    `output_padding` is given), for `result_operand`; the op checks it against its own."""
    nd = len(w_shape) - 2
    refuse_pairs(padding, nd)
    k, s, d = w_shape[2:], nd_tuple(stride, nd), nd_tuple(dilation, nd)
    if output_padding is not None:
        p, o = nd_tuple(padding, nd), nd_tuple(output_padding, nd)
        size = tuple((i - 1) * s_ - 2 * p_ + d_ * (k_ - 1) + o_ + 1
                     for i, s_, p_, d_, k_, o_ in zip(x_shape[2:], s, p, d, k, o))
        return (x_shape[0], w_shape[1] * groups, *size)
    if padding == "same":
        return (x_shape[0], w_shape[0], *x_shape[2:])
    p = (0,) * nd if padding == "valid" else nd_tuple(padding, nd)
    size = tuple((i + 2 * p_ - d_ * (k_ - 1) - 1) // s_ + 1
                 for i, s_, p_, d_, k_ in zip(x_shape[2:], s, p, d, k))
    return (x_shape[0], w_shape[0], *size)


#: id(tensor) -> (key, device copy, sample, sample view or None): the device copies of weights
#: (see fixed_operand); an entry goes with its tensor.
DEVICE_COPIES: dict[int, tuple[tuple[Any, ...], cla.Array, bytes, np.ndarray | None]] = {}
#: Elements compared on each call to notice writes that bypass the version counter (`.data`).
_SAMPLE = 64


def sample_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of up to _SAMPLE evenly spaced elements of `t` (no copy when `t` is contiguous:
    then valid while `t`'s storage is, and it keeps `t` alive)."""
    flat = t.detach().numpy().reshape(-1)
    return flat[::max(1, flat.size // _SAMPLE)]


def sample_of(t: torch.Tensor) -> bytes:
    """Up to _SAMPLE evenly spaced elements of `t`, as bytes (compared bitwise: a NaN equals
    itself, so unchanged NaN weights are not uploaded again)."""
    return sample_view(t).tobytes()


def fixed_operand(t: torch.Tensor | None, dev: Device) -> Any:
    """A weight or bias that does not change from call to call (inference: no autograd through
    it), as a device copy kept with the tensor and reused while the tensor is unchanged: its
    storage, shape, in-place version counter (bumped by optimizers, load_state_dict and any
    in-place op) and a sample of its values (writes through `.data` bypass the counter) all the
    same. The copy is marked constant, so that plans keep what they derive from it (the packed
    filters): no upload and no packing per call. Inference tensors (no version counter) and
    empty ones go as numpy, uploaded by the op each call."""
    if t is None:
        return None
    version = version_of(t)
    if version is None or t.numel() == 0:
        return host(t)
    key = (dev, t.data_ptr(), version, t.dtype, t.shape, t.stride())
    found = DEVICE_COPIES.get(id(t))
    if found is not None and found[0] == key:
        # The kept view reads the values where they are (~1 us, not a new view's ~6 us): the
        # same storage (the view keeps it alive, so no other tensor takes its address).
        view = found[3]
        if (view.tobytes() if view is not None else sample_of(t)) == found[2]:
            return found[1]
    copy_ = upload_constant(host(t), dev)
    if found is None:
        weakref.finalize(t, DEVICE_COPIES.pop, id(t), None)
    view = sample_view(t) if t.is_contiguous() else None  # (else a copy: sampled anew each call)
    DEVICE_COPIES[id(t)] = (key, copy_, sample_of(t) if view is None else view.tobytes(), view)
    return copy_


def upload_constant(a: np.ndarray, dev: Device) -> cla.Array:
    """`a` uploaded into a buffer of its own, marked constant (clconv.ops.plan.mark_constant)."""
    return mark_constant(cla.to_device(dev.queue, np.ascontiguousarray(a)))


def host_result(y: Any) -> np.ndarray:
    """A forward's result as numpy (a device result is downloaded; that waits for the kernels,
    after which the operands' host memory is free again)."""
    return y.get() if isinstance(y, cla.Array) else y


def to_tensor(a: np.ndarray | torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """A result as a tensor; in channels-last memory when the input `like` was (as torch's convs
    return a channels_last result for a channels_last input)."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    fmt = _channels_last_format(like) if like is not None else None
    if fmt is None or _channels_last_strides(tuple(t.shape), t.stride()):
        return t
    # (not t.contiguous(memory_format=fmt): with one channel that keeps t's own strides, which
    # count as channels-last contiguous too, where torch's convolution gives channels-last ones)
    return torch.empty(t.shape, dtype=t.dtype, memory_format=fmt).copy_(t)


def layout_source(x: torch.Tensor, padding_mode: str) -> torch.Tensor | None:
    """The tensor whose memory format a convolution's result takes (`to_tensor`'s `like`): the
    input, but none with circular padding, which torch pads with F.pad into a new contiguous
    tensor first (its convolution of a channels_last input then returns a contiguous result)."""
    return None if padding_mode == "circular" else x


def _channels_last_format(x: torch.Tensor) -> torch.memory_format | None:
    """torch.channels_last when torch's convolution of a 4-d `x` returns channels_last memory:
    x's suggested memory format (its strides decide, also for a single channel or pixel, where
    both layouts are contiguous), else None. torch's CPU convolutions keep channels_last for 2-d
    convolutions only (a channels_last_3d input to Conv3d gives a contiguous result), and so
    does clconv.torch."""
    if x.dim() == 4 and _channels_last_strides(tuple(x.shape), x.stride()):
        return torch.channels_last
    return None


def _channels_last_strides(sizes: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """c10's is_channels_last_strides_2d (what Tensor.suggest_memory_format asks): the dims'
    strides ascend in the order C, W, H, N, ambiguous N11W / N1H1 cases counting as
    contiguous."""
    if strides[1] == 0:
        return False
    low = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < low:
            return False
        if d == 0 and low == strides[1]:
            return False
        low = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def version_of(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter; None for inference tensors (made under
    torch.inference_mode), which have none: nothing derived from them can be kept (their device
    copies are uploaded, their folded chains folded, on every call)."""
    try:
        return t._version
    except RuntimeError:
        return None


def torch_runs(input: Any, what: str) -> bool:
    """Whether a clconv.torch module leaves `input` to torch's own forward: a meta tensor (shape
    inference: torch computes no values). TypeError, as torch's, for what is not a tensor."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{what}: the input must be a torch.Tensor, got {type(input).__name__}")
    return input.device.type == "meta"


def autocast_dtype(input: torch.Tensor | str) -> torch.dtype | None:
    """The lower-precision dtype torch.autocast gives convolutions on `input`'s device type (or
    that device type) now (float16 / bfloat16), or None where autocast is off there."""
    kind = input if isinstance(input, str) else input.device.type
    try:
        if not torch.is_autocast_enabled(kind):
            return None
        dtype = torch.get_autocast_dtype(kind)
    except (AttributeError, RuntimeError, TypeError):  # (an unknown device type; older torch)
        return None
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


def autocast_run(dtype: torch.dtype, run: Callable[..., torch.Tensor],
                 *operands: torch.Tensor | None) -> torch.Tensor:
    """A convolution under torch.autocast, as torch's: its floating operands other than float64
    rounded to `dtype` (torch's autocast casts them so), computed from those values in float32
    (clconv computes no float16 / bfloat16 convolution on CPUs), the result in `dtype`; float64
    operands run as they are (autocast leaves them). `run(*operands)` computes; autograd sees the
    casts, so gradients reach the float32 parameters as through torch's."""
    def rounded(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or not t.is_floating_point() or t.dtype == torch.float64:
            return t
        return t.to(dtype).float()
    with torch.autocast(operands[0].device.type, enabled=False):
        if any(t is not None and t.dtype == torch.float64 for t in operands):
            return run(*operands)  # (torch's autocast runs those as they are too)
        return run(*[rounded(t) for t in operands]).to(dtype)


def batched(x: torch.Tensor, nd: int) -> tuple[torch.Tensor, bool]:
    """(x with a batch dim, whether it had none): unbatched inputs work as in torch."""
    if x.dim() == nd + 1:
        return x.unsqueeze(0), True
    return x, False


class NotScriptable:
    """torch.jit.script and torch.jit.trace refuse clconv.torch modules with a clear error
    (TorchScript cannot call the Python and OpenCL code their forward runs); torch.jit.script
    calls `__prepare_scriptable__` on every module it compiles, submodules included."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.jit.is_tracing():  # (its trace would hold numpy calls: wrong or failing)
            raise RuntimeError(
                f"torch.jit.trace does not support clconv.torch.{self._get_name()}: its "
                f"forward runs clconv's OpenCL kernels from Python, which a trace cannot record. "
                f"Trace the model before clconv.torch.convert (it then runs in torch), or for "
                f"inference use clconv.torch.compile(model, example_input).")
        return super().__call__(*args, **kwargs)

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(
            f"torch.jit.script does not support clconv.torch.{type(self).__name__}: its forward "
            f"runs clconv's OpenCL kernels from Python, which TorchScript cannot call. Script the "
            f"model before clconv.torch.convert (it then runs in torch), or for inference use "
            f"clconv.torch.compile(model, example_input).")
