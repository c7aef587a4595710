"""A whole torch model on the OpenCL device: `clconv.torch.compile(model, example_input)`.

    cm = clconv.torch.compile(model.eval(), torch.randn(1, 3, 224, 224))
    y = cm(x)                      # torch tensors in and out; cm.fallbacks == [] when all lowered

How (docs/compile.md has the whole story):
1. **Trace** with `torch.fx.symbolic_trace`: its `call_module` nodes keep the nn.Module structure
   (a `Conv2d` node carries its module, hence weights and arguments), which makes the patterns below
   simple to match; the CNNs meant here have no data-dependent control flow, so torch.export's
   ATen-level graph (every op decomposed, many more ops to cover) is not needed. Shapes and dtypes
   of the example input are propagated through the graph (fx's ShapeProp) for the checks below.
2. **Fuse**: a convolution (or transposed convolution) followed by eval-mode BatchNorm gets the
   BatchNorm folded into its weight and bias (clconv.fold_batchnorm: host arithmetic, once, in
   float64); a following residual add (a tensor of the same shape) and activation go into the
   epilogue of the convolution, or of a Linear
   (`clconv.conv2d(..., residual=r, activation=spec)`).
3. **Lower** every other node to a clconv op (pooling, linear, batch_norm, activations, add/mul with
   channel broadcast, cat, flatten/view as a free reshape, mean over the spatial dims as adaptive
   average pooling, ConvNeXt's permute -> LayerNorm -> permute as a channel norm
   (cl/channel_norm.cl), Linear on a channels-last view as a 1x1 convolution, Dropout/Identity as
   nothing).
4. **Run** with activations as pyopencl arrays on the device: one upload per input, one download per
   output, each intermediate dropped after its last reader (its buffer goes back to the device's
   memory pool, which the next result reuses). Plans come from clconv's per-device plan cache, keyed
   by shape: another batch size makes new plans on first sight, builds no new program.

A node that cannot be lowered (no clconv op, an argument clconv refuses, or an op that fails on the
example input at compile time) runs in torch on the host (download its inputs, upload its result);
compile() warns once with the list (node, op, why), also in `cm.fallbacks`. The result stays right.

Inference only: the model must be in eval mode (BatchNorm's running statistics, no dropout), and no
autograd graph is recorded. Weights are folded and uploaded when the program is lowered; a call
after a parameter or buffer changed (torch's version counter, a new tensor) lowers it again.
Training keeps `clconv.torch.convert`'s per-module autograd.

The package, by job: base.py (what compile() reports, shared helpers), activations.py (torch's
activations as clconv's), tracing.py (fx trace with shapes), program.py (Step, RunStats and the
runtime), lowering.py with lowering_base.py, lower_layers.py, lower_math.py and lower_shapes.py (fx
nodes -> steps),
channel_norm.py (the channel norm kernel), compiled.py (CompiledModel: lower, try, fall back),
api.py (compile, warmup) and backend.py (the torch.compile backend).
"""

from __future__ import annotations

from .activations import activation_module
from .api import compile, warmup
from .backend import backend
from .base import Fallback, FallbackWarning, Unlowerable
from .channel_norm import channel_norm
from .compiled import CompiledModel
from .program import RunStats, Step

__all__ = ["CompiledModel", "Fallback", "FallbackWarning", "RunStats", "Step", "Unlowerable",
           "activation_module", "backend", "channel_norm", "compile", "warmup"]
