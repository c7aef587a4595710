"""The channel norm (cl/channel_norm.cl): LayerNorm over the channels of a channels-first array,
what ConvNeXt's permute -> LayerNorm -> permute is lowered to."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla

from ..runtime.device import current_device
from ..runtime.memory import empty
from ..runtime.program import kernel, precision_defines
from ..runtime.transfer import to_device


def channel_norm(x: cla.Array, weight: cla.Array | None, bias: cla.Array | None,
                 eps: float) -> cla.Array:
    """LayerNorm over dim 1 of a contiguous (N, C, *spatial) device array (ConvNeXt's channels-first
    LayerNorm), on the current device; weight and bias (C,) or both None."""
    dev = current_device()
    x = to_device(x, dev, "input", x.dtype)
    # The kernel indexes from the buffer's start: a view into a larger buffer is copied.
    if x.offset:
        x = x.copy()
    n, c = x.shape[0], x.shape[1]
    spatial = int(np.prod(x.shape[2:], dtype=np.int64))
    out = empty(dev, x.shape, x.dtype)
    positions = n * spatial
    if positions == 0:
        return out
    defines = precision_defines(x.dtype)
    defines["HAS_AFFINE"] = int(weight is not None)
    k = kernel(dev, "channel_norm.cl", "channel_norm", defines)
    dummy = x.base_data
    with dev.lock:
        k(dev.queue, (positions,), None, x.base_data, out.data,
          weight.data if weight is not None else dummy, bias.data if bias is not None else dummy,
          np.int64(c), np.int64(spatial), np.int64(positions),
          # eps in the kernel's accumulation type (ACC: double for double)
          (np.float64 if x.dtype == np.float64 else np.float32)(eps))
    return out
