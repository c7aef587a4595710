"""The per-dimension public functions (conv1d/2d/3d, the transposed convolutions, the gradients,
unfold/fold and their plan_* functions) made from one template each: `per_dimension` binds the
template's leading `nd` and gives the result its public name, docstring and signature (the
template's without `nd`), so that help(), inspect.signature and IDEs see the real parameters and
defaults, and one body serves the three dimensionalities.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from .device_group import splits_batch

__all__ = ["per_dimension", "per_dimensions"]


def per_dimension(template: Callable[..., Any], nd: int, name: str, doc: str, *,
                  batched: Sequence[str] = (), ndim: int | None = None,
                  sizes: Sequence[str] = (), reduce: str = "concat") -> Callable[..., Any]:
    """`template(nd, *args, **kwargs)` as the public function `name` with docstring `doc` and the
    template's signature less `nd` (its first parameter). batched (with sizes, reduce): the
    argument names `clconv.ops.device_group.splits_batch` splits under a DeviceGroup, arrays of
    `ndim` dims when batched (default nd + 2; col2im's columns: 3); empty for functions that do
    not split (plans)."""
    signature = inspect.signature(template)
    first, *params = signature.parameters.values()
    if first.name != "nd":
        raise TypeError(f"{template.__qualname__}'s first parameter must be nd, got {first.name}")

    public = signature.replace(parameters=params)

    @functools.wraps(template)
    def op(*args: Any, **kwargs: Any) -> Any:
        try:
            return template(nd, *args, **kwargs)
        except TypeError:
            try:  # a call that does not fit the signature: named as the public function
                public.bind(*args, **kwargs)
            except TypeError as bad:
                raise TypeError(f"{name}() {bad}") from None
            raise

    op.__name__ = op.__qualname__ = name
    op.__doc__ = doc
    op.__signature__ = public  # type: ignore[attr-defined]
    op.__annotations__ = {k: v for k, v in template.__annotations__.items() if k != "nd"}
    del op.__wrapped__  # help() and inspect show the signature above, not the template's
    if batched:
        return splits_batch(*batched, ndim=nd + 2 if ndim is None else ndim, sizes=sizes,
                            reduce=reduce)(op)
    return op


def per_dimensions(template: Callable[..., Any], names: Sequence[str], docs: Sequence[str],
                   **options: Any) -> tuple[Callable[..., Any], ...]:
    """The 1-d, 2-d and 3-d functions of `template`: `per_dimension(template, nd, names[nd - 1],
    docs[nd - 1], **options)` for nd = 1, 2, 3."""
    if len(names) != 3 or len(docs) != 3:
        raise ValueError("per_dimensions needs three names and three docstrings (1-d, 2-d, 3-d)")
    return tuple(per_dimension(template, nd, name, doc, **options)
                 for nd, name, doc in zip((1, 2, 3), names, docs))
