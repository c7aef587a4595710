"""Lowering of the arithmetic ops without weights: add/sub/mul/div/pow (with channel broadcast and
constants), clamp, activations, softmax and GLU, the reductions (mean, sum, amax, var / std,
normalisation), pooling (modules and functions) and the *_like fills. The ops that move data
(reshapes, slicing, cat, padding, interpolation) are lower_shapes.py's."""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from ..ops.activation import Activation
from ..runtime.memory import empty
from ..runtime.transfer import to_device
from .activations import activation_op_name, activation_spec, apply_activation
from .base import Unlowerable, attr, bind, clconv_op, is_tensor, leaves, meta, shape
from .lowering_base import POOL_MODULES, LoweringBase, reshape_view
from .program import Step


class MathRules(LoweringBase):
    """The rules for arithmetic, reductions and pooling (mixed into Lowering)."""

    def binary(self, node: fx.Node, name: str, a: Any, b: Any,
               act: Activation | None = None, alpha: Any = 1,
               rounding_mode: str | None = None) -> Step:
        """clconv.add / clconv.mul (numpy broadcasting, as torch's), optionally with a fused
        activation; add/sub take torch's `alpha` (a + alpha * b, one rounding as torch's), div
        its `rounding_mode`. Constants (get_attr tensors, Python numbers) are uploaded once."""
        # x - c (a constant) is x + (-c): the same IEEE result (and the add's fusions); a tensor
        # computed in the graph is subtracted by clconv.sub.
        negate = name == "sub" and not (isinstance(b, fx.Node) and b.op != "get_attr")
        fn = clconv_op("add" if negate else name)
        cm = self.cm
        out = shape(node)
        node_meta = meta(node)
        layouts = [self.layout.get(v.name) for v in (a, b) if isinstance(v, fx.Node) and
                   v.op != "get_attr"]
        layout = next((p for p in layouts if p is not None), None)
        operands: list[tuple[str, Any]] = []
        for i, v in enumerate((a, b)):
            if isinstance(v, fx.Node) and v.op == "get_attr":
                v = attr(cm.graph_module, v.target)
            if isinstance(v, fx.Node):
                if not is_tensor(v):  # a number computed from sizes (`x.shape[-1] ** -0.5`)
                    operands.append(("number", v.name))
                    continue
                if self.layout.get(v.name) != layout:
                    raise Unlowerable(f"{name} of tensors in different layouts")
                if layout is not None and shape(v) != out:
                    raise Unlowerable(f"{name} broadcasting a channels-last view")
                operands.append(("node", v.name))
                continue
            if isinstance(v, bool) or not isinstance(v, (torch.Tensor, int, float)):
                raise Unlowerable(f"{name} with an operand of type {type(v).__name__}")
            t = torch.as_tensor(v, dtype=node_meta.dtype)
            if negate:
                t = -t
            if t.numel() == 1:
                # one value: of the operand's own rank (a number is 0-d), so that the result's
                # shape is torch's (a 0-d tensor times 2 is 0-d)
                t = t.reshape((1,) * t.dim())
            elif layout is not None:
                # On a channels-last view only a per-channel constant (a layer scale) is lowered:
                # it becomes (1, C, 1, ...) against the stored channels-first data.
                c = _channel_vector(t, out, layout)
                if c is None:
                    raise Unlowerable(f"{name} broadcasting a constant of shape "
                                      f"{tuple(t.shape)} against a channels-last view")
                t = c.reshape(1, -1, *(1,) * (len(out) - 2))
            operands.append(("const", cm.constant(("const", node.name, i), t)))
        spec = activation_spec(act) if act is not None else None
        (ka, va), (kb, vb) = operands
        if "node" not in (ka, kb):
            raise Unlowerable(f"{name} of two numbers")
        inputs = tuple(v for k, v in operands if k != "const")

        kw: dict[str, Any] = {} if alpha == 1 else {"alpha": alpha}
        if spec is not None:
            kw["activation"] = spec
        if rounding_mode is not None:
            kw["rounding_mode"] = rounding_mode

        def run(env: dict[str, Any]) -> Any:
            x = va if ka == "const" else env[va]
            y = vb if kb == "const" else env[vb]
            return fn(x, y, **kw)
        op = f"clconv.{name}" + (f" + {act}" if act is not None else "") + \
            (f" (alpha={alpha})" if alpha != 1 else "") + \
            (f" (rounding_mode={rounding_mode!r})" if rounding_mode is not None else "")
        return self.value(node, run, op, inputs, layout)

    def matmul(self, node: fx.Node, a: Any, b: Any) -> Step:
        """torch.matmul / mm / bmm / `@` of tensors computed in the graph or parameters and
        buffers (a head's `x @ self.w`, attention's `q @ k`): clconv.matmul (one batched GEMM;
        constants uploaded once)."""
        cm, fn = self.cm, clconv_op("matmul")
        operands: list[tuple[str, Any]] = []
        for i, v in enumerate((a, b)):
            if isinstance(v, fx.Node) and v.op == "get_attr":
                t = attr(cm.graph_module, v.target)
                if not isinstance(t, torch.Tensor):
                    raise Unlowerable(f"matmul with an operand of type {type(t).__name__}")
                operands.append(("const", cm.constant(("matmul", node.name, i), t)))
            elif isinstance(v, fx.Node) and is_tensor(v):
                if self.layout.get(v.name) is not None:
                    raise Unlowerable("matmul of a permuted (channels-last) view")
                operands.append(("node", v.name))
            else:
                raise Unlowerable(f"matmul with an operand of type {type(v).__name__}")
        (ka, va), (kb, vb) = operands

        def run(env: dict[str, Any]) -> Any:
            return fn(va if ka == "const" else env[va], vb if kb == "const" else env[vb])
        return self.value(node, run, "clconv.matmul",
                          tuple(v for k, v in operands if k == "node"))

    def mirrored(self, node: fx.Node, name: str) -> Step:
        """A torch.nn.functional pooling function run by clconv's of the same name. Sizes computed
        in the graph (`F.avg_pool2d(x, x.size()[2:])`: a global pool) are read on each call."""
        fn = clconv_op(name)
        x = node.args[0] if node.args else node.kwargs.get("input")
        if not isinstance(x, fx.Node):
            raise Unlowerable("unexpected arguments")
        args, kwargs = node.args[1:], {k: v for k, v in node.kwargs.items() if k != "input"}
        computed = [v for v in leaves((args, tuple(kwargs.values()))) if isinstance(v, fx.Node)]
        if any(is_tensor(v) for v in computed):
            raise Unlowerable("pooling arguments that are tensors")
        # fx records torch's dispatch flag return_indices=False; clconv's pools return values only
        if kwargs.pop("return_indices", False) or (name.startswith("max") and len(args) >= 6
                                                    and args[5]):
            raise Unlowerable("return_indices=True")
        xn = x.name

        def run(env: dict[str, Any]) -> Any:
            a, k = fx.node.map_arg((args, kwargs), lambda n: env[n.name])
            return fn(env[xn], *a, **k)
        return self.value(node, run, f"clconv.{name}", (xn, *(v.name for v in computed)))

    def pool(self, node: fx.Node, m: nn.Module) -> Step:
        name = POOL_MODULES[type(m)]
        fn = clconv_op(name)
        if getattr(m, "return_indices", False):
            if is_tensor(node):
                raise Unlowerable("return_indices=True of a single value")
            kwargs = {"output_size": m.output_size} if name.startswith("adaptive") else {
                "kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                "dilation": m.dilation, "ceil_mode": m.ceil_mode}
            return self.pool_with_indices(node, name, node.args[0], kwargs)
        if name.startswith("adaptive"):
            kwargs: dict[str, Any] = {"output_size": m.output_size}
        elif name.startswith("max"):
            kwargs = {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                      "dilation": m.dilation, "ceil_mode": m.ceil_mode}
        else:
            kwargs = {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                      "ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad}
            if getattr(m, "divisor_override", None) is not None:
                kwargs["divisor_override"] = m.divisor_override
        x = node.args[0].name
        return self.value(node, lambda env: fn(env[x], **kwargs), f"clconv.{name}", (x,))

    def pool_with_indices(self, node: fx.Node, name: str, x: Any,
                          kwargs: dict[str, Any]) -> Step:
        """Max pooling with return_indices (a module's, or F.max_pool2d_with_indices'): the
        (values, indices) pair of device arrays clconv's op returns (indices int64, flat in each
        plane, as torch's), for the getitems that follow (SegNet's max_unpool2d, run in torch,
        reads them)."""
        if not is_tensor(x) or self.layout.get(x.name) is not None:
            raise Unlowerable(f"{name} with indices of a non-tensor or a permuted view")
        fn, xn = clconv_op(name), x.name
        return self.value(node, lambda env: tuple(fn(env[xn], **kwargs, return_indices=True)),
                          f"clconv.{name} (values, indices)", (xn,))

    def _reducer(self, sh: tuple[int, ...] | None, dim: Any,
                 reduction: str) -> tuple[Callable[[Any], Any], str, list[int]]:
        """(f, where, dims): f(a) is the mean / amax of device array `a` (logical shape `sh`) over
        `dim` with the reduced dims kept as 1: spatial dims (adaptive pooling to 1 along them, the
        others kept: every one, or some, as a mean over H alone), the channels (dim 1: the (N, C,
        S) value gathered as (N, S, C), pooled over C), or every dim (dim None; spatial first,
        then the N * C results as one row: equal groups, so the mean of their means is the
        mean)."""
        if sh is None:
            raise Unlowerable(f"{reduction} of a value of unknown shape")
        nd = len(sh)
        if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
            dims = list(range(nd))
        else:
            dims = sorted({d % nd for d in ((dim,) if isinstance(dim, int) else dim)})
        kind = "max" if reduction == "amax" else "avg"
        every = dims == list(range(nd)) and nd >= 1
        spatial = bool(dims) and all(d >= 2 for d in dims) and nd - 2 in (1, 2, 3)
        if not (every or spatial or (dims == [1] and nd >= 2)):
            raise Unlowerable(f"{reduction} over dims {dim} (clconv lowers the {reduction} over "
                              f"spatial dims, over the channels or over every dim)")
        # (adaptive pooling's output size: 1 along the reduced dims, None keeps the others)
        kept = tuple(1 if d in dims else None for d in range(2, nd))
        pool_nd = {n: clconv_op(f"adaptive_{kind}_pool{n}d") for n in (1, 2, 3)}
        dev = self.cm.device

        def reduce(a: Any) -> Any:
            n, c, rest = (a.shape[0], a.shape[1], tuple(a.shape[2:])) if a.ndim >= 2 else \
                (1, 1, tuple(a.shape))
            if every:
                if a.ndim >= 3 and a.ndim - 2 <= 3:
                    a = pool_nd[a.ndim - 2](a, 1)  # (N, C, 1, ...)
                y = pool_nd[1](reshape_view(a, (1, 1, int(np.prod(a.shape)))), 1)
                return reshape_view(y, (1,) * nd)
            if spatial:
                return pool_nd[nd - 2](a, kept)
            s = int(np.prod(rest))  # each position's C values contiguous, as rows of a 1-d pool
            rows = to_device(reshape_view(a, (n, c, s)).transpose((0, 2, 1)), dev, "input",
                             a.dtype)
            return reshape_view(pool_nd[1](reshape_view(rows, (n * s, 1, c)), 1), (n, 1, *rest))
        where = "every dim" if every else "the channels" if not spatial else \
            "the spatial dims" if len(dims) == nd - 2 else f"spatial dims {dims}"
        return reduce, where, dims

    def mean(self, node: fx.Node, reduction: str = "mean") -> Step:
        """torch.mean / sum / amax (functions and methods) over every spatial dim, over the
        channels (dim 1: CBAM's attention, ConvNeXt's channels-first LayerNorm) or over every
        dim (`_reducer`). A sum is that mean times the count (one rounding more than torch's sum:
        within a few ulp)."""
        x, dim, keepdim = bind(node, _mean_args)
        sh = shape(x)
        reduce, where, dims = self._reducer(sh, dim, reduction)
        xn = x.name
        mul = clconv_op("mul")

        def run(env: dict[str, Any]) -> Any:
            a = env[xn]
            y = reduce(a)
            if reduction == "sum":  # the count of this call's input (the batch may differ)
                y = mul(y, float(_count(a.shape, dims)))
            return y if keepdim else reshape_view(y, tuple(d for i, d in enumerate(y.shape)
                                                           if i not in dims))
        return self.value(node, run, f"{reduction} over {where} (clconv pooling)", (xn,))

    def variance(self, node: fx.Node, name: str) -> Step:
        """torch.var / std (functions and methods; `correction` or `unbiased`) over what `mean`
        reduces: mean((x - mean(x))^2) * n / (n - correction), two passes as torch's, then sqrt
        for std."""
        x, dim, correction, keepdim = bind(node, _var_args)
        sh = shape(x)
        reduce, where, dims = self._reducer(sh, dim, "mean")
        xn = x.name
        sub, mul, sqrt = clconv_op("sub"), clconv_op("mul"), clconv_op("sqrt")
        dtype = meta(node).dtype

        def run(env: dict[str, Any]) -> Any:
            a = env[xn]
            count = float(_count(a.shape, dims))  # this call's (the batch may differ)
            scale = count / (count - correction) if count > correction else math.inf
            d = sub(a, reduce(a))
            # (the factor rounded to the dtype first, as torch's constant would be)
            y = mul(reduce(mul(d, d)), float(torch.tensor(scale, dtype=dtype)))
            if name == "std":
                y = sqrt(y)
            return y if keepdim else reshape_view(y, tuple(v for i, v in enumerate(y.shape)
                                                           if i not in dims))
        return self.value(node, run, f"{name} over {where} (clconv pooling, two passes)", (xn,))

    def normalize(self, node: fx.Node) -> Step:
        """F.normalize with p=2: x / max(sqrt(sum(x^2)), eps) over `dim` (one `_reducer` dim
        set: the channels by default)."""
        x, p, dim, eps = bind(node, lambda input, p=2.0, dim=1, eps=1e-12, out=None: (
            input, p, dim, eps))
        if p != 2 or isinstance(eps, fx.Node):
            raise Unlowerable(f"normalize with p={p!r} (clconv lowers p=2)")
        sh = shape(x)
        reduce, where, dims = self._reducer(sh, dim, "mean")
        xn = x.name
        mul, sqrt, div = clconv_op("mul"), clconv_op("sqrt"), clconv_op("div")
        clamp = clconv_op("clamp")

        def run(env: dict[str, Any]) -> Any:
            a = env[xn]
            norm = sqrt(mul(reduce(mul(a, a)), float(_count(a.shape, dims))))
            return div(a, clamp(norm, float(eps)))
        return self.value(node, run, f"normalize over {where} (clconv)", (xn,))

    def filled_like(self, node: fx.Node, value: float | None) -> Step:
        """torch.zeros_like / ones_like / full_like(x, v) (no dtype or layout arguments): a
        device array of x's shape and dtype filled on the device."""
        if value is None:
            x, v = bind(node, lambda input, fill_value, **kw: (input, fill_value) if not kw
                        else (None, None))
        else:
            x, v = bind(node, lambda input, **kw: (input, value) if not kw else (None, None))
        if x is None or not is_tensor(x) or isinstance(v, fx.Node) or isinstance(v, bool) or \
                not isinstance(v, (int, float)):
            raise Unlowerable("a *_like with keyword arguments or a computed value")
        xn = self.plain_tensor(x, "a *_like")
        dev = self.cm.device

        def run(env: dict[str, Any]) -> Any:
            a = env[xn]
            y = empty(dev, tuple(a.shape), a.dtype)
            y.fill(float(v), queue=dev.queue)
            return y
        return self.value(node, run, f"fill {v!r} (device)", (xn,))

    def max_values(self, node: fx.Node, name: str = "max") -> Step:
        """torch.max(x, dim, keepdim) / x.max(dim) whose users take only the values (`[0]`): the
        amax, as a (values, None) pair. The indices are not computed. torch.min / x.min(dim):
        -amax(-x) (exact: negation only flips the sign bit)."""
        if len(node.args) < 2 and "dim" not in node.kwargs:
            raise Unlowerable(f"{name} over every element")
        # (`values, _ = torch.max(...)`: fx makes a getitem of the indices that nothing reads)
        def values_only(u: fx.Node) -> bool:
            if u.op != "call_function" or u.target not in (operator.getitem, getattr):
                return False
            return u.args[1] in (0, "values") or not u.users
        if not node.users or not all(values_only(u) for u in node.users):
            raise Unlowerable(f"{name} with its indices used (clconv computes only the values)")
        step = self.mean(node, "amax")
        inner, xn, mul = step.run, node.args[0].name, clconv_op("mul")

        def run(env: dict[str, Any]) -> Any:
            if name == "min":
                return (mul(inner({**env, xn: mul(env[xn], -1.0)}), -1.0), None)
            return (inner(env), None)
        return Step(step.node, step.nodes, f"{name} values: " + step.op, step.inputs, run)

    def extreme(self, node: fx.Node, minimum: bool) -> Step:
        """torch.amax / amin (functions and methods) over what `mean` reduces, and x.max() /
        x.min() over every element: amax's reduction; the minimum as -amax(-x) (exact: negation
        only flips the sign bit)."""
        step = self.mean(node, "amax")
        if not minimum:
            return step
        inner, xn, mul = step.run, node.args[0].name, clconv_op("mul")

        def run(env: dict[str, Any]) -> Any:
            return mul(inner({**env, xn: mul(env[xn], -1.0)}), -1.0)
        return Step(step.node, step.nodes, "amin: -amax(-x), " + step.op, step.inputs, run)

    def clamp_tensors(self, node: fx.Node) -> Step:
        """torch.clamp / clip with tensor bounds (computed, or parameters and buffers):
        clconv.clamp with arrays (its maximum, then minimum, broadcasting)."""
        x, lo, hi = bind(node, lambda input, min=None, max=None: (input, min, max))
        if not is_tensor(x) or any(v is not None and not (
                isinstance(v, fx.Node) and (v.op == "get_attr" or is_tensor(v))) for v in (lo, hi)):
            raise Unlowerable("clamp with bounds that are neither tensors nor numbers")
        if self.layout.get(x.name) is not None or any(
                isinstance(v, fx.Node) and self.layout.get(v.name) is not None for v in (lo, hi)):
            raise Unlowerable("clamp of a permuted (channels-last) view")
        cm, fn = self.cm, clconv_op("clamp")
        bounds: list[tuple[str, Any]] = []
        for i, v in enumerate((lo, hi)):
            if v is None:
                bounds.append(("none", None))
            elif v.op == "get_attr":
                bounds.append(("const", cm.constant(("clamp", node.name, i),
                                                    attr(cm.graph_module, v.target))))
            else:
                bounds.append(("node", v.name))
        xn = x.name

        def run(env: dict[str, Any]) -> Any:
            a, b = ((env[v] if k == "node" else v) for k, v in bounds)
            return fn(env[xn], a, b)
        return self.value(node, run, "clconv.clamp (array bounds)",
                          (xn, *(v for k, v in bounds if k == "node")))

    def divide(self, node: fx.Node, x: Any, divisor: Any) -> Step:
        """x / y (torch.div, Tensor.div, `/`): clconv.div (broadcasting; rounding_mode 'trunc'
        and 'floor' too); by a Python number, clconv.mul by 1 / c (rounded once more than torch's
        division: within an ulp)."""
        mode = bind(node, lambda input, other, *, rounding_mode=None: rounding_mode)
        if mode is not None:
            if mode not in ("trunc", "floor"):
                raise Unlowerable(f"division with rounding_mode {mode!r}")
            return self.binary(node, "div", x, divisor, rounding_mode=mode)
        if is_tensor(divisor) or is_tensor(x):
            return self.binary(node, "div", x, divisor)
        if isinstance(divisor, bool) or not isinstance(divisor, (int, float)):
            raise Unlowerable(f"division by a {type(divisor).__name__}")
        # x / 0 is +-inf (nan for x = 0) as x * +-inf; the sign of a zero divisor counts.
        reciprocal = 1.0 / divisor if divisor != 0 else math.copysign(math.inf, float(divisor))
        return self.binary(node, "mul", x, reciprocal)

    def power(self, node: fx.Node, name: str) -> Step:
        """torch.sqrt, torch.square and x ** 2 / pow(x, 2): clconv.sqrt, clconv.mul(x, x)
        (exactly torch's square); pow(x, 0.5) is sqrt, pow(x, 1) the value. Other exponents are
        not lowered."""
        if name == "pow":
            x, exponent = bind(node, lambda input, exponent: (input, exponent))
        else:
            x, exponent = node.args[0], {"sqrt": 0.5, "square": 2}[name]
        if not is_tensor(x) or isinstance(exponent, bool) or exponent not in (0.5, 1, 2):
            raise Unlowerable(f"{name} with exponent {exponent!r} (clconv lowers 0.5, 1 and 2)")
        if exponent == 2:
            return self.binary(node, "mul", x, x)
        if exponent == 1:
            return self.alias(node, x, "pow 1")
        xn, fn = self.plain_tensor(x, name), clconv_op("sqrt")
        return self.value(node, lambda env: fn(env[xn]), "clconv.sqrt", (xn,))

    def same_dtype(self, node: fx.Node, name: str) -> Step:
        """A cast (Tensor.float/double/half/to/type_as) to the dtype the value has: nothing."""
        x = node.args[0]
        if not is_tensor(x) or meta(x).dtype != meta(node).dtype or \
                (name == "to" and any(isinstance(a, torch.device) or
                                      (isinstance(a, str) and a not in ("float32", "float64"))
                                      for a in (*node.args[1:], *node.kwargs.values()))):
            raise Unlowerable(f"Tensor.{name} changing the dtype or device")
        return self.alias(node, x, f"{name} (same dtype)")

    def activation(self, node: fx.Node, act: Activation, src: fx.Node,
                   layout: tuple[int, ...] | None = None) -> Step:
        clconv_op(activation_op_name(act))  # Unlowerable now when clconv lacks it
        x = src.name
        return self.value(node, lambda env: apply_activation(env[x], act),
                          f"clconv.{activation_op_name(act)}", (x,), layout)

    # -- shapes: free reshapes of the device array, and slices ----------------------------------

    def softmax(self, node: fx.Node, x: Any, dim: Any, log: bool, dtype: Any = None) -> Step:
        """softmax / log_softmax along a fixed dim (functions, methods, nn.Softmax/LogSoftmax)."""
        name = "log_softmax" if log else "softmax"
        if dtype is not None:  # the input cast first, on the device, when it has the dtype
            dev = self.cm.device
            if dtype not in (torch.float16, torch.float32, torch.float64) \
                    or (dtype == torch.float64 and not dev.fp64) \
                    or (dtype == torch.float16 and not dev.fp16):
                raise Unlowerable(f"{name} with dtype={dtype} on {dev.name}")
        xn = self.plain_tensor(x, name)
        if dim is None or isinstance(dim, fx.Node):
            raise Unlowerable(f"{name} without a fixed dim")
        op = clconv_op(name)
        if dtype is None:
            return self.value(node, lambda env: op(env[xn], dim), f"clconv.{name}", (xn,))
        return self.value(node, lambda env: op(env[xn], dim, dtype=dtype),
                          f"clconv.{name} (dtype={dtype})", (xn,))

    def glu(self, node: fx.Node, x: Any, dim: Any) -> Step:
        """F.glu / nn.GLU: the first half of `dim` times the sigmoid of the second (each half's
        strided view gathered on the device, then clconv.sigmoid and clconv.mul)."""
        xn, sh = self.plain_tensor(x, "glu"), shape(x) or ()
        if type(dim) is not int or not sh or sh[dim % len(sh)] % 2:
            raise Unlowerable("glu along a dim of odd or unknown size")
        dev, mul, sigmoid = self.cm.device, clconv_op("mul"), clconv_op("sigmoid")

        def run(env: dict[str, Any]) -> Any:
            a = env[xn]
            d = dim % a.ndim
            if a.shape[d] % 2:  # (another call's sizes: torch's check)
                raise RuntimeError(f"Halving dimension must be even, but dimension {d} is size "
                                   f"{a.shape[d]}")
            h = a.shape[d] // 2
            first, second = (to_device(a[(slice(None),) * d + (slice(lo, lo + h),)], dev,
                                       "input", a.dtype) for lo in (0, h))
            return mul(first, sigmoid(second))
        return self.value(node, run, "glu (halves gathered, clconv.sigmoid, clconv.mul)", (xn,))


def _mean_args(input: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Any:
    if dtype is not None:
        raise Unlowerable("a reduction with dtype= (mean, sum)")
    return input, dim, keepdim


def _var_args(input: Any, dim: Any = None, unbiased: Any = None, keepdim: bool = False, *,
              correction: Any = None) -> Any:
    """(input, dim, correction, keepdim) of torch.var / std: `unbiased` (bool, also the second
    positional in the old signature) or `correction`; default 1."""
    if isinstance(dim, bool):  # var(x, unbiased)
        dim, unbiased = None, dim
    if correction is not None and unbiased is not None:
        raise Unlowerable("var with both unbiased and correction")
    c = correction if correction is not None else (1 if unbiased in (None, True) else 0)
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise Unlowerable(f"var with correction {c!r}")
    return input, dim, float(c), keepdim


def _channel_vector(t: torch.Tensor, out: tuple[int, ...],
                    layout: tuple[int, ...] | None) -> torch.Tensor | None:
    """`t` as a (C,) vector when, broadcast against a result of logical shape `out`, it varies only
    along the channels (dim 1, or the last dim of a channels-last view); else None."""
    c_dim = len(out) - 1 if layout is not None else 1
    c = out[c_dim]
    sh = (1,) * (len(out) - t.dim()) + tuple(t.shape)
    if len(sh) != len(out):
        return None
    if all(s == 1 for i, s in enumerate(sh) if i != c_dim) and sh[c_dim] in (1, c):
        return t.reshape(-1).expand(c).contiguous() if sh[c_dim] == 1 else t.reshape(c)
    return None


def _count(shape: tuple[int, ...], dims: Any) -> int:
    """How many elements a reduction over `dims` of `shape` sums."""
    return math.prod(int(shape[d]) for d in dims)
