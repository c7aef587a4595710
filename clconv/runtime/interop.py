"""Operands besides numpy and pyopencl arrays, normalised before the ops see them.

- A torch tensor on the CPU, detached or not needing grad, is read as a numpy array that shares its
  memory (`Tensor.numpy()`, or DLPack where `.numpy()` cannot: no copy either way); the result is
  numpy, as for a numpy input. A tensor that requires grad is refused: the functional ops do not
  record autograd, and `clconv.torch` (Conv2d & co., a torch.autograd.Function) does.
- Python lists, tuples and scalars are refused with a TypeError that says how to convert them:
  `np.asarray(x)` would make float64 of them and fail later as "mixed dtypes".

torch is never imported here: a tensor is recognised by its type's module.

The other way, `host_convertible(a)` makes a pyopencl array (a layer's weight) convertible by
`np.asarray(a)` and `torch.as_tensor(a)`, which otherwise see an object array or fail.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pyopencl.array as cla

__all__ = ["HostConvertibleArray", "host_convertible", "host_operand", "is_torch_tensor",
           "supported_dtypes"]


def is_torch_tensor(x: object) -> bool:
    """True for a torch.Tensor (or subclass, e.g. a Parameter), without importing torch."""
    return any(c.__module__.split(".", 1)[0] == "torch" and c.__name__ == "Tensor"
               for c in type(x).__mro__)


def host_operand(x: Any, name: str, written: bool = False) -> Any:
    """`x` unchanged (None too), or a torch tensor as a numpy view; TypeError for lists, tuples,
    scalars, anything else that is not an array (a str, a dict, an object), and tensors that need
    grad, on another device than the CPU, or of a dtype numpy lacks (bfloat16). `written`: `x` is
    to be written (a negated view, whose memory does not hold its values, is refused)."""
    if isinstance(x, (np.ndarray, cla.Array)):  # the usual operands, first: every call asks
        return x
    if is_torch_tensor(x):
        return _from_torch(x, name, written or name == "out")
    if isinstance(x, (list, tuple)):
        raise TypeError(f"{name} is a Python {type(x).__name__}; clconv takes numpy or pyopencl "
                        f"arrays: pass a numpy array, e.g. np.asarray({name}, dtype=np.float32)")
    if isinstance(x, (numbers.Number, np.generic)) and not isinstance(x, np.ndarray):
        raise TypeError(f"{name} is a scalar ({type(x).__name__}); clconv takes numpy or pyopencl "
                        f"arrays: pass a numpy array, e.g. np.asarray({name}, dtype=np.float32) "
                        f"with the dims the operation needs")
    if x is not None and not hasattr(x, "__array__") and not hasattr(x, "__array_interface__"):
        # (a str, bytes, a dict, a range, an object: nothing numpy reads as an array of numbers)
        raise TypeError(f"{name} must be a numpy or pyopencl array (or a torch tensor), got "
                        f"{type(x).__name__}")
    return x


def numpy_dtype(dtype: Any) -> np.dtype:
    """A dtype argument as numpy's: numpy dtypes and their names, and torch's floating dtypes
    (torch.float64, ...); TypeError for a torch dtype without a clconv counterpart."""
    if type(dtype).__module__ == "torch" and type(dtype).__name__ == "dtype":
        name = str(dtype).removeprefix("torch.")
        if name not in ("float16", "float32", "float64"):
            raise TypeError(f"dtype {dtype} has no clconv counterpart (float16, float32 or "
                            f"float64)")
        return np.dtype(name)
    return np.dtype(dtype)


def _from_torch(t: Any, name: str, written: bool = False) -> np.ndarray:
    if getattr(t, "requires_grad", False):
        raise TypeError(f"{name} is a torch tensor that requires grad; clconv's functions do not "
                        f"record autograd: use the modules of clconv.torch (clconv.torch.Conv2d, "
                        f"clconv.torch.convert(model)) for gradients through clconv, or pass "
                        f"{name}.detach() for the values alone")
    if t.device.type != "cpu":
        raise TypeError(f"{name} is a torch tensor on {t.device}; clconv reads host memory: pass "
                        f"{name}.cpu() (or compute with torch there)")
    if t.is_quantized:
        raise TypeError(f"{name} is a quantized torch tensor ({t.dtype}); clconv computes in "
                        f"floating point: pass {name}.dequantize()")
    if str(t.layout) != "torch.strided":  # sparse, mkldnn: no memory numpy can view
        raise TypeError(f"{name} is a torch tensor with layout {t.layout}; clconv reads dense "
                        f"memory: pass {name}.to_dense()")
    if t.is_neg() or t.is_conj():
        # a lazily negated view (e.g. x.conj().imag): its memory holds the values un-negated
        if written:
            raise TypeError(f"{name} is a torch tensor with its negative (or conjugate) bit set, "
                            f"to be written in place: its memory does not hold its values; pass "
                            f"a plain tensor ({name}.resolve_neg())")
        t = t.resolve_neg().resolve_conj()
    try:
        return t.numpy()  # shares the tensor's memory; any strides
    except (TypeError, RuntimeError):
        pass
    try:
        return np.from_dlpack(t)  # also shares memory (numpy >= 1.22)
    except (TypeError, RuntimeError, BufferError, AttributeError) as err:
        raise TypeError(f"{name} is a torch tensor of dtype {t.dtype}, which numpy cannot read; "
                        f"convert it, e.g. {name}.float()") from err


def supported_dtypes(dev: Any) -> str:
    """'float16, float32 or float64' as far as `dev` has them (for error messages)."""
    names = [n for n, ok in (("float16", dev.fp16), ("float32", True), ("float64", dev.fp64)) if ok]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


class HostConvertibleArray(cla.Array):
    """A pyopencl Array that numpy and torch can convert: `np.asarray(a)`, `torch.as_tensor(a)`
    and `np.from_dlpack(a)` download a copy (blocking); everything else is pyopencl's Array."""

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        host = self.get()
        return host if dtype is None else host.astype(dtype, copy=False)

    def __dlpack__(self, **kwargs: Any) -> Any:  # the host copy's capsule keeps it alive
        return self.get().__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU: the capsule describes the downloaded copy

    def numpy(self) -> np.ndarray:
        """A numpy copy (as `.get()`)."""
        return self.get()


def host_convertible(a: Any) -> Any:
    """`a` itself, made a HostConvertibleArray when it is a plain pyopencl Array (in place: no
    copy, and every other reference to it sees the same object); anything else unchanged."""
    if type(a) is cla.Array:
        a.__class__ = HostConvertibleArray
    return a
