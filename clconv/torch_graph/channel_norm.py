"""The channel norm (clconv.ops.channels.ChannelNormPlan, cl/channel_norm.cl): LayerNorm over the
channels of a channels-first array, what ConvNeXt's permute -> LayerNorm -> permute is lowered
to."""

from __future__ import annotations

import pyopencl.array as cla

from ..ops.channels import channel_norm_plan
from ..runtime.device import current_device


def channel_norm(x: cla.Array, weight: cla.Array | None, bias: cla.Array | None,
                 eps: float) -> cla.Array:
    """LayerNorm over dim 1 of an (N, C, *spatial) device array (ConvNeXt's channels-first
    LayerNorm), on the current device; weight and bias (C,) or None."""
    dev = current_device()
    plan = channel_norm_plan(dev, tuple(x.shape), x.dtype, weight is not None,
                             bias is not None, eps)
    return plan.execute({"input": x, "weight": weight, "bias": bias})
