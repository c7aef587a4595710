"""The per-dimension public functions made by clconv.ops.dims.per_dimension: each shows its real
parameters (no *args / **kwargs) and a docstring of its own, pickles by name, and splits its batch
under a DeviceGroup as the written-out functions did (tests/test_device_group.py runs that)."""

from __future__ import annotations

import inspect
import pickle

import pytest

#: (base name pattern, dimensions) of the generated public functions.
NAMES = ([f"conv{d}d" for d in (1, 2, 3)] + [f"plan_conv{d}d" for d in (1, 2, 3)]
         + [f"conv_transpose{d}d" for d in (1, 2, 3)] + [f"plan_conv_transpose{d}d" for d in (1, 2, 3)]
         + [f"conv{d}d_{k}" for d in (1, 2, 3) for k in ("input", "weight")]
         + [f"plan_conv{d}d_{k}" for d in (1, 2, 3) for k in ("input", "weight")]
         + [f"{b}{s}" for b in ("im2col", "col2im", "plan_im2col", "plan_col2im")
            for s in ("", "1d", "3d")])
MODULES = ("clconv.ops.conv", "clconv.ops.transpose", "clconv.ops.grad", "clconv.ops.unfold")


def _find(name):
    import importlib

    for module in MODULES:
        fn = getattr(importlib.import_module(module), name, None)
        if fn is not None:
            return fn
    raise AssertionError(f"{name} is in none of {MODULES}")


@pytest.mark.parametrize("name", NAMES)
def test_generated_function_shows_its_parameters(name):
    fn = _find(name)
    assert fn.__name__ == name and fn.__qualname__ == name
    params = inspect.signature(fn).parameters
    assert "nd" not in params
    assert all(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()), params
    assert fn.__doc__ and fn.__doc__.strip(), f"{name} has no docstring"
    assert pickle.loads(pickle.dumps(fn)) is fn


def test_public_names_and_defaults_as_documented():
    import clconv

    sig = inspect.signature(clconv.conv2d)
    assert list(sig.parameters)[:7] == ["input", "weight", "bias", "stride", "padding", "dilation",
                                        "groups"]
    assert sig.parameters["algorithm"].default == "auto"
    assert sig.parameters["out"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "torch.nn.functional.conv2d" in clconv.conv2d.__doc__
    assert inspect.signature(clconv.plan_conv3d).parameters["dtype"].default is not None
    assert list(inspect.signature(clconv.col2im1d).parameters)[:3] == ["input", "output_size",
                                                                        "kernel_size"]


def test_per_dimension_needs_nd_first():
    from clconv.ops.dims import per_dimension

    def template(x, nd):
        return x

    with pytest.raises(TypeError, match="first parameter must be nd"):
        per_dimension(template, 2, "f", "doc")
