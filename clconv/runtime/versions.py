"""Version counters of device buffers, as torch's tensors have one: each write clconv makes into a
caller's device array (`out=`, `inplace=True`) counts on its buffer (views of one buffer share the
count, as torch's views share theirs; a torch tensor's write counts on its own counter), and
clconv.nn's layers check at backward that what their forward saved was not written since: the
in-place error torch's autograd raises, instead of gradients computed from the overwritten
values."""

from __future__ import annotations

from typing import Any

import pyopencl.array as cla

from .interop import is_torch_tensor

#: The attribute holding the count on a pyopencl buffer object (they take attributes).
_ATTR = "_clconv_version"


def bump(a: Any) -> None:
    """Counts a write into the device array `a`; a torch tensor's own version counter is
    incremented, as torch's in-place ops do (so that autograd raises for a tensor it saved, and
    clconv.torch remakes the device copies of a weight written so), and an inference tensor
    outside inference mode is refused as torch refuses it (anything else: nothing to count)."""
    if isinstance(a, cla.Array):
        if a.base_data is not None:  # (an empty array has none)
            buf = a.base_data
            setattr(buf, _ATTR, getattr(buf, _ATTR, 0) + 1)
    elif is_torch_tensor(a):
        import torch

        if a.is_inference() and not torch.is_inference_mode_enabled():
            raise RuntimeError("Inplace update to inference tensor outside InferenceMode is not "
                               "allowed (torch's rule): write into a clone of it, or call "
                               "inside torch.inference_mode()")
        torch.autograd.graph.increment_version(a)


def version(a: Any) -> int:
    """The write count of the device array `a`'s buffer (0 for anything else)."""
    return getattr(a.base_data, _ATTR, 0) if isinstance(a, cla.Array) else 0


def stamp(*arrays: Any) -> tuple[int, ...]:
    """The versions of `arrays` now (what `check_unchanged` compares with)."""
    return tuple(version(a) for a in arrays)


def check_unchanged(what: str, arrays: tuple[Any, ...], stamps: tuple[int, ...]) -> None:
    """RuntimeError, as torch's autograd raises, when one of `arrays` was written (out=,
    inplace=True) since `stamps` was taken."""
    for a, was in zip(arrays, stamps):
        now = version(a)
        if now != was:
            raise RuntimeError(
                f"{what}: one of the arrays its forward saved for backward has been modified by "
                f"an inplace operation (out= or inplace=True on it, or on a view of its memory): "
                f"it is at version {now}; expected version {was} instead. Write a copy, or run "
                f"backward before the write (torch's autograd refuses the same)")
