"""The pooling layers: MaxPool/AvgPool/AdaptiveAvgPool (1-3 d) and AdaptiveMaxPool2d, over
clconv.ops.pool's PoolPlan."""

from __future__ import annotations

from typing import Any

from ..ops.geometry import IntOrTuple
from ..ops.plan import cached_plan
from ..ops.pool import PoolPlan
from ..runtime.transfer import ArrayLike
from .module import Module, check_grad, enter, leave


class _Pool(Module):
    """A pooling layer over clconv.ops.pool's PoolPlan: (N, C, *spatial) or (C, *spatial)."""

    kind = "max"
    nd = 2

    def __init__(self, **args: Any) -> None:
        self.args = args
        self._saved: tuple[Any, ...] | None = None

    def forward(self, input: ArrayLike) -> ArrayLike:
        """input (N, C, *spatial) or unbatched (C, *spatial) -> pooled."""
        dev, x, dtype, host = enter(input, "input")
        shape = tuple(x.shape)
        unbatched = len(shape) == self.nd + 1
        xb = x.reshape((1, *shape)) if unbatched else x
        kind, nd, args = self.kind, self.nd, self.args
        plan = cached_plan(dev, ("pool", kind, nd, tuple(xb.shape), x.dtype,
                                 *sorted(args.items())),
                           lambda: PoolPlan(dev, kind, nd, tuple(xb.shape), x.dtype, **args))
        y, idx = plan.forward(xb, save=True)
        self._saved = (plan, idx, unbatched)
        # (an adaptive average pool to ones takes any rank: its planes are the leading dims)
        want = plan.output_shape[1:] if unbatched else plan.output_shape
        return leave(dev, y if y.shape == want else y.reshape(want), dtype, host)

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output (the latest forward's output shape) -> grad_input."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward call first")
        plan, idx, unbatched = self._saved
        with plan.device:
            dev, g, dtype, host = enter(grad_output, "grad_output")
            check_grad(g, plan.output_shape[1:] if unbatched else plan.output_shape,
                       plan.work)
            dx = plan.backward(g if g.shape == plan.batch_shape else g.reshape(plan.batch_shape),
                               idx)
            want = plan.input_shape[1:] if unbatched else plan.input_shape
            return leave(dev, dx if dx.shape == want else dx.reshape(want), dtype, host)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{type(self).__name__}({args})"


class _MaxPoolNd(_Pool):
    kind = "max"

    def __init__(self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, dilation: IntOrTuple = 1, return_indices: bool = False,
                 ceil_mode: bool = False) -> None:
        if return_indices:
            raise ValueError("return_indices=True is not supported (the layer keeps its indices "
                             "for backward)")
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding,
                         dilation=dilation, ceil_mode=ceil_mode)


class _AvgPoolNd(_Pool):
    kind = "avg"

    def __init__(self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:
        args: dict[str, Any] = {"kernel_size": kernel_size, "stride": stride, "padding": padding,
                                "ceil_mode": ceil_mode, "count_include_pad": count_include_pad}
        if self.nd != 1:
            args["divisor_override"] = divisor_override
        elif divisor_override is not None:
            raise TypeError("AvgPool1d takes no divisor_override (as torch's)")
        super().__init__(**args)


class _AdaptivePoolNd(_Pool):
    def __init__(self, output_size: Any) -> None:
        super().__init__(output_size=output_size)


class MaxPool1d(_MaxPoolNd):
    """torch.nn.MaxPool1d."""

    nd = 1


class MaxPool2d(_MaxPoolNd):
    """torch.nn.MaxPool2d: (N, C, H, W) -> (N, C, H_out, W_out); backward routes each gradient
    to its window's maximum (indices saved by forward)."""

    nd = 2


class MaxPool3d(_MaxPoolNd):
    """torch.nn.MaxPool3d."""

    nd = 3


class AvgPool1d(_AvgPoolNd):
    """torch.nn.AvgPool1d."""

    nd = 1

    def __init__(self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)


class AvgPool2d(_AvgPoolNd):
    """torch.nn.AvgPool2d."""

    nd = 2


class AvgPool3d(_AvgPoolNd):
    """torch.nn.AvgPool3d."""

    nd = 3


class AdaptiveAvgPool1d(_AdaptivePoolNd):
    """torch.nn.AdaptiveAvgPool1d."""

    kind, nd = "adaptive_avg", 1


class AdaptiveAvgPool2d(_AdaptivePoolNd):
    """torch.nn.AdaptiveAvgPool2d(output_size) (None entries keep the input's size)."""

    kind, nd = "adaptive_avg", 2


class AdaptiveAvgPool3d(_AdaptivePoolNd):
    """torch.nn.AdaptiveAvgPool3d."""

    kind, nd = "adaptive_avg", 3


class _AdaptiveMaxPoolNd(_AdaptivePoolNd):
    kind = "adaptive_max"

    def __init__(self, output_size: Any, return_indices: bool = False) -> None:
        if return_indices:
            raise ValueError("return_indices=True is not supported (the layer keeps its indices "
                             "for backward)")
        super().__init__(output_size)


class AdaptiveMaxPool1d(_AdaptiveMaxPoolNd):
    """torch.nn.AdaptiveMaxPool1d(output_size) (return_indices=False)."""

    nd = 1


class AdaptiveMaxPool2d(_AdaptiveMaxPoolNd):
    """torch.nn.AdaptiveMaxPool2d(output_size) (return_indices=False; None entries keep the
    input's size)."""

    nd = 2


class AdaptiveMaxPool3d(_AdaptiveMaxPoolNd):
    """torch.nn.AdaptiveMaxPool3d(output_size) (return_indices=False)."""

    nd = 3
