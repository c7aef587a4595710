"""The current-device stack: the Devices and device groups of the enclosing `with` blocks.

Held in a `contextvars.ContextVar`, not on the Device, so blocks nest, restore on exit and are
independent per thread and per asyncio task (one Device can be entered in many threads at once).
`runtime.device` and `ops.device_group` push and pop their targets here; the ops read `top()`.
"""

from __future__ import annotations

import contextvars
from typing import Any

__all__ = ["pop", "push", "top"]

# Innermost last. Entries are runtime.device.Device or ops.device_group.DeviceGroup objects: this
# module holds them without knowing either type.
_STACK: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar("clconv_devices",
                                                                        default=())


def push(target: Any) -> None:
    """Makes `target` (a Device or DeviceGroup) the innermost one of the caller's context."""
    _STACK.set(_STACK.get() + (target,))


def pop(target: Any) -> None:
    """Leaves `target`'s innermost entry in the caller's context (its `with` block's exit).

    Not blindly the top: a generator that yields inside `with dev:` shares its caller's context,
    so its block can end (when the generator is closed) inside a block its caller entered later,
    whose entry must stay. A target not on the stack (an exit without its entry) changes nothing.
    """
    stack = _STACK.get()
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is target:
            _STACK.set(stack[:i] + stack[i + 1:])
            return


def top() -> Any | None:
    """The innermost target of the caller's context, or None outside every `with` block."""
    stack = _STACK.get()
    return stack[-1] if stack else None
