"""Version counters of device buffers, as torch's tensors have one: each write clconv makes into a
caller's device array (`out=`, `inplace=True`) counts on its buffer (views of one buffer share the
count, as torch's views share theirs), and clconv.nn's layers check at backward that what their
forward saved was not written since: the in-place error torch's autograd raises, instead of
gradients computed from the overwritten values."""

from __future__ import annotations

from typing import Any

import pyopencl.array as cla

#: The attribute holding the count on a pyopencl buffer object (they take attributes).
_ATTR = "_clconv_version"


def bump(a: Any) -> None:
    """Counts a write into the device array `a` (anything else: nothing to count)."""
    if isinstance(a, cla.Array) and a.base_data is not None:  # (an empty array has none)
        buf = a.base_data
        setattr(buf, _ATTR, getattr(buf, _ATTR, 0) + 1)


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
