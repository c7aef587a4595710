"""clconv.torch.compile: whole networks (tests/models.py, written from their papers' tables) on the
device match torch's eval output, with nothing left on the host; one upload per input and one
download per output (counted at pyopencl's copy function); another batch size works; a node clconv
cannot run falls back to torch with one warning and the result stays right; intermediates are
freed (peak device memory below the sum of the activations). On the default device only; the
channel norm and a small network run on every device in test_compile_devices.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import models
from torch import nn
from torch.nn import functional as F

RTOL = 2e-3  # the contract: within 2e-3 relative to the output's scale


@pytest.fixture(scope="module")
def ct(clconv_mod):
    import clconv.torch as ct

    return ct


def _close(got, want):
    want = want.detach()
    scale = float(want.abs().max())
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=RTOL, atol=RTOL * scale)


class CopyCounter:
    """Counts host <-> device copies made through pyopencl.enqueue_copy (every upload and
    download of pyopencl arrays and of clconv goes through it)."""

    def __init__(self, monkeypatch):
        import pyopencl as cl

        self.uploads = self.downloads = 0
        real = cl.enqueue_copy

        def counting(queue, dest, src, **kwargs):
            if isinstance(src, np.ndarray) and not isinstance(dest, np.ndarray):
                self.uploads += 1
            elif isinstance(dest, np.ndarray):
                self.downloads += 1
            return real(queue, dest, src, **kwargs)
        monkeypatch.setattr(cl, "enqueue_copy", counting)


def _compile(ct, model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ct.FallbackWarning)  # a fallback fails these tests
        return ct.compile(model, x)


def _lowered_with(ct, model, x, op, count):
    """compile(model, x) with no fallback, `count` steps of clconv op `op`, torch's eval output."""
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    assert sum(s.op.startswith(op) for s in cm.steps) == count, [s.op for s in cm.steps]
    with torch.no_grad():
        _close(cm(x), model(x))
    return cm


def _check_lowered(ct, model, x):
    """`model` (eval mode) compiles without a host node and matches torch on x."""
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    with torch.no_grad():
        _close(cm(x), model(x))


@pytest.mark.parametrize("family", list(models.FAMILIES))
def test_family_matches_torch_on_the_device_alone(dev, ct, family, monkeypatch):
    make, shape = models.FAMILIES[family]
    torch.manual_seed(0)
    model = models.randomize(make(), seed=1).eval()
    x = torch.randn(2, *shape[1:])
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    counter = CopyCounter(monkeypatch)
    y = cm(x)
    assert (counter.uploads, counter.downloads) == (1, 1)
    assert (cm.stats.uploads, cm.stats.downloads) == (1, 1)
    with torch.no_grad():
        _close(y, model(x))
    assert cm.peak_bytes > 0
    # Another batch size: plans made on demand, same program.
    x1 = torch.randn(1, *shape[1:])
    with torch.no_grad():
        _close(cm(x1), model(x1))


def test_folding_and_fusion_leave_one_step_per_conv(dev, ct):
    model = models.randomize(models.resnet18(0.25)).eval()
    cm = ct.compile(model, torch.randn(1, 3, 32, 32))
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    device_steps = [s for s in cm.steps if not s.host]
    # each conv with its BatchNorm, residual add and ReLU is one step; + max pool, avg pool, fc
    # (the flatten is a reshape step, no device work)
    assert sum(s.op.startswith("clconv.conv2d") for s in device_steps) == convs
    assert any("+ residual" in s.op and "relu" in s.op for s in device_steps)
    assert not any(s.op in ("clconv.batch_norm", "clconv.relu", "clconv.add")
                   for s in device_steps)


def test_compiled_models_copy_and_pickle(dev, ct):
    """copy.deepcopy and pickle of a compiled model: the model (a copy) compiled again on the same
    device for the example's shapes, giving the same results; the copy follows its own model
    (they raised "cannot pickle 'CommandQueue' object")."""
    import copy
    import pickle

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = torch.randn(2, 3, 10, 10)
    compiled = ct.compile(model, x, device=dev, progress=False)
    for copied in (copy.deepcopy(compiled), pickle.loads(pickle.dumps(compiled))):
        assert copied.device is dev and copied._model is not model
        np.testing.assert_array_equal(copied(x).numpy(), compiled(x).numpy())
        with torch.no_grad():
            copied._model[5].bias.add_(1)  # the copy's own model
        np.testing.assert_allclose(copied(x).numpy(), compiled(x).numpy() + 1, rtol=1e-5,
                                   atol=1e-5)


def test_intermediates_are_freed(dev, ct):
    model = models.randomize(models.VGG(0.125)).eval()
    x = torch.randn(2, 3, 64, 64)
    cm = ct.compile(model, x)
    cm(x)
    total = sum(int(np.prod(n.meta["tensor_meta"].shape)) * 4 for n in cm.graph_module.graph.nodes
                if n.op == "call_module" and "tensor_meta" in n.meta)
    # the activations' part of the peak (less the column workspace, which an im2col layer of a
    # small model may make as large as half its activations: 0.9 of 2 MB on llvmpipe)
    workspace = dev.workspace.largest_request if dev.workspace is not None else 0
    assert 0 < cm.peak_bytes - workspace < total / 2


class WithPad(nn.Module):
    """conv -> torch.atan (no clconv lowering) -> conv -> cumsum (none either)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        y = torch.atan(torch.relu(self.a(x)))
        return self.b(y).cumsum(1)


def test_unlowerable_nodes_fall_back_with_one_report(dev, ct, monkeypatch):
    torch.manual_seed(0)
    model = WithPad().eval()
    x = torch.randn(2, 3, 12, 12)
    with pytest.warns(ct.FallbackWarning, match="atan") as record:
        cm = ct.compile(model, x)
    assert len(record) == 1
    ops = {f.op for f in cm.fallbacks}
    assert ops == {"atan", "Tensor.cumsum"}
    assert all(f.why and f.node for f in cm.fallbacks)
    counter = CopyCounter(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on later calls
        y = cm(x)
    # input and output, plus a download and an upload around each host node
    assert (counter.uploads, counter.downloads) == (3, 3)
    with torch.no_grad():
        _close(y, model(x))


class InPlace(nn.Module):
    """A forward that writes tensors in place and reads them afterwards through other names."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.c0, self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), \
            nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.bn(self.c0(x))
        if self.kind == "method":  # the result of the write is not used: y is
            y.mul_(2.0)
            y.add_(self.c2(y))
            return self.c2(y)
        if self.kind == "function":
            F.relu(y, inplace=True)
            return self.c2(y)
        if self.kind == "module-residual":  # ResNet's block with the residual read after the ReLU
            idt = y
            out = self.relu(y)
            out = self.c1(out)
            out += idt
            return self.relu(out)
        if self.kind == "after-read":  # a conv reads y before the write, the add after it
            out = self.c1(y)
            y.clamp_(-0.5, 0.5)
            return out + y
        if self.kind == "chain":
            y.relu_()
            y.sub_(0.25).mul_(3.0)
            return self.c2(y) + y
        if self.kind == "view":
            v = y.view(y.shape[0], -1)
            y.mul_(2.0)
            return v.sum(1)
        if self.kind == "parameter":
            self.c2.bias.mul_(1.0)
            return self.c2(y)
        if self.kind == "alias":  # `a` names y's tensor, which `+=` and `*=` write
            a = y
            y += self.c1(y)
            y *= 0.5
            return self.c2(a)
        if self.kind == "number":  # `n += 1` of a number makes a new one: m keeps the old
            n = x.size(0)
            m = n
            n += 1
            return self.c2(y) * m / n
        raise AssertionError(self.kind)


@pytest.mark.parametrize("kind", ["method", "function", "module-residual", "after-read", "chain",
                                  "alias", "number"])
def test_in_place_writes_are_read_where_torch_reads_them(dev, ct, kind):
    """The lowering follows values: a tensor written in place and read afterwards through the
    node that made it (or another name) reads the write, as torch's memory does."""
    torch.manual_seed(0)
    model = models.randomize(InPlace(kind)).eval()
    x = torch.randn(2, 3, 9, 10)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    for inputs in (x, torch.randn(3, 3, 9, 10)):  # the example's batch and another
        with torch.no_grad():
            want = model(inputs)
        _close(cm(inputs), want)


def _compile_with_fallbacks(ct, model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ct.FallbackWarning)
        return ct.compile(model, x)


def _matches(cm, model, *inputs):
    """cm gives the model's outputs (shape and values) for each input."""
    for x in inputs:
        with torch.no_grad():
            want = model(x)
        got = cm(x)
        assert got.shape == want.shape
        _close(got, want)


class ZeroFirstChannels(nn.Module):
    """Item assignment, which fx cannot trace: compile runs this module in torch."""

    def forward(self, x):
        x[:, :2] = 0
        return x


class HostWrites(nn.Module):
    """Writes that torch makes on the host, into a tensor the device also holds: a submodule
    compile runs in torch that writes its input, and torch.add(..., out=)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.sub = ZeroFirstChannels()

    def forward(self, x):
        y = self.c1(x)
        if self.kind == "submodule":
            z = self.sub(y)  # z is y, written
            return self.c2(z) + y
        torch.add(y, self.c2(y), out=y)
        return self.c2(y) + y


@pytest.mark.parametrize("kind", ["submodule", "out"])
def test_writes_made_on_the_host_reach_the_device_value(dev, ct, kind):
    """A node run in torch that writes one of its inputs in place (code fx cannot trace, or an
    out= argument): every later reader sees the write, as in torch, and the example input
    given to compile is left as it was."""
    torch.manual_seed(0)
    model = models.randomize(HostWrites(kind)).eval()
    x = torch.randn(2, 3, 8, 8)
    x0 = x.clone()
    cm = _compile_with_fallbacks(ct, model, x)
    assert torch.equal(x, x0)
    assert len(cm.fallbacks) == 1
    _matches(cm, model, x, torch.randn(3, 3, 8, 8))


@pytest.mark.parametrize("kind", ["submodule", "out"])
def test_host_nodes_run_under_inference_mode(dev, ct, kind):
    """Under torch.inference_mode, the nodes torch runs on the host (here writing their input in
    place) give torch's values, through compile() and the torch.compile backend: their inputs
    were inference tensors, whose missing version counter the write-back check read."""
    torch.manual_seed(0)
    model = models.randomize(HostWrites(kind)).eval()
    x = torch.randn(2, 3, 8, 8)
    cm = _compile_with_fallbacks(ct, model, x)
    assert len(cm.fallbacks) == 1
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ct.FallbackWarning)
        compiled = torch.compile(model, backend=ct.backend, dynamic=False)
        for inputs in (x, torch.randn(3, 3, 8, 8)):
            with torch.inference_mode():
                want = model(inputs)
                got, got_backend = cm(inputs), compiled(inputs)
            assert got.is_inference()
            _close(got, want)
            _close(got_backend, want)


def test_models_made_under_inference_mode_compile_and_follow_writes(dev, ct):
    """A model built (or loaded) under torch.inference_mode has inference tensors as parameters
    and buffers, which keep no version counter: compile() takes it, and an in-place write to
    them afterwards (inside inference mode, the only place torch allows one) is followed."""
    torch.manual_seed(0)
    with torch.inference_mode():
        model = models.randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
                                               nn.ReLU(), nn.Conv2d(4, 2, 1))).eval()
    x = torch.randn(2, 3, 8, 8)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    with torch.inference_mode():
        _close(cm(x), model(x))
        model[0].weight.mul_(-2.0)
        model[1].running_mean.add_(1.0)
        _close(cm(x), model(x))


class WritesInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        x += 1
        return self.c(x)


def test_compile_leaves_its_example_input_as_it_was(dev, ct):
    """compile runs the forward once on the example (shapes): a forward that writes its input in
    place writes a copy of it then."""
    model = models.randomize(WritesInput()).eval()
    x = torch.randn(1, 3, 6, 6)
    x0 = x.clone()
    cm = _compile(ct, model, x)
    assert torch.equal(x, x0)
    with torch.no_grad():
        want = model(x0.clone())
    _close(cm(x0.clone()), want)


class ExpandUses(nn.Module):
    """expand_as feeding what does not broadcast it to the full shape."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))

    def forward(self, x):
        y = self.c1(x)
        g = y.mean((2, 3), keepdim=True).expand_as(y)
        if self.kind == "number":
            return g + 1
        if self.kind == "parameter":
            return g * self.gamma
        if self.kind == "cat":
            return self.c2(torch.cat([y, g * self.gamma], 1))
        return g + y  # "full": broadcast by the add (no copy)


@pytest.mark.parametrize("kind", ["number", "parameter", "cat", "full"])
def test_expand_keeps_its_shape(dev, ct, kind):
    """expand_as read by an add/mul with an operand of the full shape is a view their
    broadcasting expands; read by anything else (a number, a smaller operand, cat), a broadcast
    copy on the device."""
    torch.manual_seed(0)
    model = models.randomize(ExpandUses(kind)).eval()
    x = torch.randn(2, 3, 8, 8)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    copies = [s for s in cm.steps if "(copy)" in s.op and "expand" in s.op]
    assert len(copies) == (kind != "full")
    _matches(cm, model, x, torch.randn(1, 3, 8, 10))


class UnflattenBySizes(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        v = y.flatten(2)
        return (v.unflatten(2, y.shape[2:]) + torch.unflatten(v, 2, (y.shape[2], -1)) +
                v.unflatten(-1, (x.size(2), x.size(3))))


def _lowered_as_torch(ct, model, x, *others):
    """model compiled on x with nothing on the host, giving torch's outputs for x and
    `others`; the compiled model."""
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    _matches(cm, model, x, *others)
    return cm


def test_unflatten_by_sizes_computed_in_the_graph(dev, ct):
    """unflatten's sizes from the graph (`y.shape[2:]`, sizes of another tensor, with -1) are
    read on each call (they ran on the host)."""
    torch.manual_seed(0)
    _lowered_as_torch(ct, UnflattenBySizes().eval(), torch.randn(2, 3, 6, 5),
                      torch.randn(1, 3, 4, 7))


class Clones(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        z = y.clone()
        z.relu_()  # writes the clone only
        w = torch.clone(y, memory_format=torch.channels_last)
        w.mul_(2)
        return y + z + w


def test_clones_are_device_copies(dev, ct):
    """x.clone() / torch.clone: a copy on the device (it ran on the host), in-place writes to
    the copy leaving the original as torch's memory does."""
    torch.manual_seed(0)
    cm = _lowered_as_torch(ct, Clones().eval(), torch.randn(2, 3, 6, 5), torch.randn(1, 3, 4, 7))
    assert sum("clone (device copy)" in s.op for s in cm.steps) == 2


class Expands(nn.Module):
    """Tensor.expand's forms: new leading dims, -1, sizes read from the input, into a conv."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.c = nn.Conv2d(5, 4, 3, padding=1)
        self.coords = nn.Parameter(torch.randn(2, 1, 7))

    def forward(self, x):
        n, _, h, w = x.shape
        if self.kind == "leading":
            c = self.coords.expand(n, 2, h, w)
        elif self.kind == "minus-one":
            c = self.coords.unsqueeze(0).expand(n, -1, h, -1)
        else:  # "tuple"
            c = self.coords.expand((n, 2, h, 7))
        return self.c(torch.cat([x, c], 1))


@pytest.mark.parametrize("kind", ["leading", "minus-one", "tuple"])
def test_expand_copies_as_torch(dev, ct, kind):
    """Tensor.expand feeding a cat: a broadcast copy on the device, its sizes read on each call
    (and refused as torch refuses them: 7 columns expanded to 9)."""
    torch.manual_seed(0)
    model = Expands(kind).eval()
    cm = _lowered_as_torch(ct, model, torch.randn(2, 3, 5, 7), torch.randn(3, 3, 4, 7))
    if kind == "leading":
        bad = torch.randn(1, 3, 4, 9)
        with pytest.raises(RuntimeError, match="must match the existing size"):
            model(bad)
        with pytest.raises(RuntimeError, match="must match the existing size"):
            cm(bad)


class _Noise(nn.Module):
    def forward(self, y):
        return y + torch.rand(6)


class _Written(nn.Module):
    def forward(self, y):
        z = torch.zeros(6)
        z[0] = y.mean()
        return y * z


class Frozen(nn.Module):
    """Values fx would run once, at the trace: a random draw of no traced value, and a tensor
    made at the trace that traced values are written into."""

    def __init__(self, kind):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.tail = _Noise() if kind == "random" else _Written()

    def forward(self, x):
        return self.tail(self.c(x))


@pytest.mark.parametrize("kind", ["random", "written"])
def test_values_a_trace_would_freeze_run_in_torch(dev, ct, kind):
    """compile() kept `torch.rand(6)` as one draw (the same values every call) and a tensor
    made in forward and written from the input as a constant uploaded once (0.06-0.17 off):
    the module doing so runs in torch (a FallbackWarning), the model's values are torch's at
    the same seed; through the torch.compile backend too."""
    torch.manual_seed(0)
    model = Frozen(kind).eval()
    x = torch.randn(2, 3, 5, 6)
    cm = _compile_with_fallbacks(ct, model, x)
    assert [f.op for f in cm.fallbacks] == [type(model.tail).__name__]
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ct.FallbackWarning)
        backend = torch.compile(model, backend=ct.backend, dynamic=False)
        for fn in (cm, backend):
            for inputs in (x, torch.randn(1, 3, 5, 6)):
                with torch.no_grad():
                    torch.manual_seed(1)
                    want = model(inputs)
                    torch.manual_seed(1)
                    _close(fn(inputs), want)
    torch._dynamo.reset()


def test_a_root_forward_writing_a_tensor_made_at_the_trace_is_refused(dev, ct):
    model = _Written().eval()
    with pytest.raises(TypeError, match="made at the trace"):
        ct.compile(model, torch.randn(2, 6), progress=False)


class _KeepsFeature(nn.Module):
    def __init__(self):
        super().__init__()
        self.kept, self.seen = None, []

    def forward(self, y):
        self.kept = y
        self.seen.append(y.shape)
        return y


class WritesState(nn.Module):
    def __init__(self, where):
        super().__init__()
        self.where = where
        self.c, self.d = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.keep = _KeepsFeature()
        self.feats = []

    def forward(self, x):
        y = self.c(x)
        if self.where == "submodule":
            y = self.keep(y)
        else:
            self.feats.append(y)
        return self.d(y)


def test_a_module_writing_its_state_runs_in_torch(dev, ct):
    """fx records no write of a module's Python state: compile() left an fx proxy in the
    user's model (`self.kept`) and its list, written once at the trace. The module doing so
    now runs in torch (a FallbackWarning), writing on each call as torch's; a root forward
    doing so is refused, the model's state as it was."""
    torch.manual_seed(0)
    model = WritesState("submodule").eval()
    x = torch.randn(2, 3, 5, 6)
    cm = _compile_with_fallbacks(ct, model, x)
    assert [f.op for f in cm.fallbacks] == ["_KeepsFeature"]
    for inputs in (x, torch.randn(1, 3, 5, 6)):
        model.keep.seen.clear()
        got = cm(inputs)  # one write a call, of this call's values
        assert model.keep.seen == [(len(inputs), 4, 5, 6)]
        assert type(model.keep.kept) is torch.Tensor
        with torch.no_grad():
            _close(model.keep.kept, model.c(inputs))
            _close(got, model(inputs))
    root = WritesState("root").eval()
    with pytest.raises(TypeError, match="feats changed in the traced forward"):
        ct.compile(root, x, progress=False)
    assert root.feats == []


class FixedExpandProduct(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        return y * y.mean((2, 3), keepdim=True).expand(2, 4, 5, 6)


def test_expand_of_fixed_sizes_is_checked_on_each_call(dev, ct):
    """expand() to fixed sizes read by a product: at the example's batch the other operand has
    the expanded shape, at another it does not (torch broadcasts batch 1 up to 2 and refuses
    batch 3); it was an alias of its input, which gave (1, 4, 5, 6) and no error."""
    torch.manual_seed(0)
    model = FixedExpandProduct().eval()
    cm = _compile(ct, model, torch.randn(2, 3, 5, 6))
    _matches(cm, model, torch.randn(2, 3, 5, 6), torch.randn(1, 3, 5, 6))
    bad = torch.randn(3, 3, 5, 6)
    for fn in (model, cm):
        with torch.no_grad(), pytest.raises(RuntimeError, match="must match the existing size"):
            fn(bad)


class MaxOfPermuted(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        p = self.c(x).permute(0, 2, 3, 1)  # channels last
        return torch.max(p, self.dim)[0] + p.max(self.dim).values


@pytest.mark.parametrize("dim", [-1, 1, 3])
def test_max_values_of_a_channels_last_view(dev, ct, dim):
    """torch.max over a dim of a channels-last view reduces the view's dim (torch runs it: the
    lowering reduces stored dims)."""
    torch.manual_seed(0)
    model = models.randomize(MaxOfPermuted(dim)).eval()
    x = torch.randn(2, 3, 6, 7)
    cm = _compile_with_fallbacks(ct, model, x)
    _matches(cm, model, x, torch.randn(1, 3, 6, 9))


@pytest.mark.parametrize("kind, words", [("view", "shares its memory"),
                                         ("parameter", "parameter or buffer")])
def test_in_place_writes_values_cannot_follow_are_refused(dev, ct, kind, words):
    model = models.randomize(InPlace(kind)).eval()
    with pytest.raises(TypeError, match=words):
        ct.compile(model, torch.randn(2, 3, 9, 10))


class NamedResults(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        return (y.sort(dim=1).values + torch.max(y, 1, keepdim=True).indices.float()
                + y.topk(2, dim=1)[0].sum(1, keepdim=True))


def test_named_results_of_host_nodes_keep_their_fields(dev, ct):
    """A node run in torch that returns a named result (sort's, max's with indices) hands later
    nodes the same type, so that `.values` / `.indices` reach its fields."""
    torch.manual_seed(0)
    model = NamedResults().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(ct.FallbackWarning):
        cm = ct.compile(model, x)
    assert {"Tensor.sort", "max"} <= {f.op for f in cm.fallbacks}
    with torch.no_grad():
        _close(cm(x), model(x))


def test_an_op_failing_on_the_example_falls_back(dev, ct, monkeypatch):
    import clconv

    def broken(*args, **kwargs):
        raise ValueError("not today")
    # (its products are squeeze-excitation blocks', one step each, which falls back as its
    # first node, the pool: the block's other steps then run in clconv one by one)
    monkeypatch.setattr(clconv, "squeeze_excitation", broken)
    model = models.randomize(models.MobileNetV3Small(0.5)).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.warns(ct.FallbackWarning, match="not today"):
        cm = ct.compile(model, x)
    assert len(cm.fallbacks) == 9 and all(f.op == "AdaptiveAvgPool2d" for f in cm.fallbacks)
    assert not any(s.op.startswith("clconv.squeeze_excitation") for s in cm.steps)
    assert sum(s.op.startswith("clconv.mul") for s in cm.steps) == 9
    with torch.no_grad():
        _close(cm(x), model(x))


def test_a_failing_epilogue_is_unfused_not_hosted(dev, ct, monkeypatch):
    import clconv

    real = clconv.conv2d

    def no_residual(*args, residual=None, **kwargs):
        if residual is not None:
            raise ValueError("no residual here")
        return real(*args, **kwargs)
    monkeypatch.setattr(clconv, "conv2d", no_residual)
    model = models.randomize(models.resnet18(0.25)).eval()
    x = torch.randn(1, 3, 32, 32)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    assert not any("+ residual" in s.op for s in cm.steps)
    assert any(s.op.startswith("clconv.add") for s in cm.steps)
    with torch.no_grad():
        _close(cm(x), model(x))


def test_training_mode_is_refused(dev, ct):
    with pytest.raises(ValueError, match="eval"):
        ct.compile(models.resnet18(0.25), torch.randn(1, 3, 32, 32))


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1)
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x, scale):
        y = F.silu(self.bn(self.conv(x))) * scale
        return y, self.fc(y.mean(2))


def test_several_inputs_and_outputs(dev, ct, monkeypatch):
    model = models.randomize(TwoHeads()).eval()
    x, s = torch.randn(2, 4, 10), torch.rand(2, 6, 1)
    cm = _compile(ct, model, (x, s))
    counter = CopyCounter(monkeypatch)
    got = cm(x, s)
    assert (counter.uploads, counter.downloads) == (2, 2)
    with torch.no_grad():
        want = model(x, s)
    for g, w in zip(got, want):
        _close(g, w)


def test_warmup_and_channels_last_input(dev, ct):
    model = models.randomize(models.MobileNetV2(0.25)).eval()
    x = torch.randn(1, 3, 32, 32).to(memory_format=torch.channels_last)
    cm = ct.warmup(model, x)
    with torch.no_grad():
        _close(cm(x), model(x))


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class Idioms(nn.Module):
    """Idioms of other model zoos: a torchvision-style CNBlock (Permute modules, layer scale of
    shape (C, 1, 1)), an SE block written with view/expand_as, mean with keepdim, squeeze,
    every activation module and a few functional ones, a dropout with training=self.training."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(c, c, 7, padding=3, groups=c), Permute([0, 2, 3, 1]),
                                   nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c),
                                   nn.GELU(approximate="tanh"), nn.Linear(4 * c, c),
                                   Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.fc = nn.Sequential(nn.Linear(c, c // 2), nn.LeakyReLU(0.2), nn.Linear(c // 2, c),
                                nn.Sigmoid())
        self.acts = nn.Sequential(nn.ELU(0.7), nn.Hardtanh(-0.5, 2.0), nn.ReLU6(), nn.SiLU(),
                                  nn.Hardswish(), nn.Hardsigmoid(), nn.Tanh())
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.layer_scale * self.block(x)
        b, c, _, _ = x.size()
        s = self.fc(x.mean((2, 3), keepdim=True).view(b, c)).view(b, c, 1, 1)
        x = x * s.expand_as(x)
        x = F.dropout(x, 0.5, self.training)
        x = self.acts(self.bn(self.conv(x)))
        x = F.leaky_relu(x * 2.0 - 1.0, 0.1) + torch.clamp(x, min=0.25)
        return x.mean([-1, -2]).unsqueeze(-1).squeeze(-1)


def test_model_zoo_idioms_lower_without_host_nodes(dev, ct):
    torch.manual_seed(0)
    _check_lowered(ct, models.randomize(Idioms()).eval(), torch.randn(2, 3, 12, 12))


class PoolsAndSlices(nn.Module):
    """Pooling modules and F. functions (fx records their return_indices=False), basic slices
    with an Ellipsis and negative bounds, concatenated."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(2, 4, 3)
        self.p = nn.AdaptiveMaxPool1d(3)
        self.q = nn.AvgPool1d(2, ceil_mode=True)

    def forward(self, x):
        y = self.c(x)
        return torch.cat([self.p(y), F.adaptive_max_pool1d(self.q(y), 3),
                          F.max_pool1d(y, 2)[..., :3], y[:, 1:3, -3:], y[0:2, ..., 2:5]], 1)


def test_pools_and_slices(dev, ct):
    torch.manual_seed(0)
    _check_lowered(ct, PoolsAndSlices().eval(), torch.randn(2, 2, 11))


class NewAxes(nn.Module):
    """None in an index (a new unit dim): an SE block's gate `s[:, :, None, None]`, with an
    Ellipsis, in front, after an integer and with a slice, beside unsqueeze."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.c(x)
        s = torch.sigmoid(self.fc(y.mean((2, 3))))
        gated = y * s[:, :, None, None] + y * s[..., None, None] + y * s.unsqueeze(-1)[..., None]
        front = y[None][0] + y[:, None, 1][:, 0, None] + y[0, None, 1:2]
        return torch.cat([gated, front], 1)


def test_new_axes_in_indexing(dev, ct):
    torch.manual_seed(0)
    _check_lowered(ct, NewAxes().eval(), torch.randn(2, 3, 6, 6))


class SmallOps(nn.Module):
    """Ops of user code around convolutions: sums over the spatial dims, division by a number,
    negation, casts to the dtype the value has, instance norm (instance statistics, and running
    ones), sub-pixel upsampling (ESPCN) and its inverse."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.irun = nn.InstanceNorm1d(8, track_running_stats=True)
        self.shuffle = nn.PixelShuffle(2)
        self.unshuffle = nn.PixelUnshuffle(2)

    def forward(self, x):
        y = self.c(x).float()
        s = y.sum((2, 3), keepdim=True) / 36 + torch.sum(y, dim=[-1, -2])[:, :, None, None] / 3.0
        y = -(y.to(torch.float32) / 7) + s
        y = self.inorm(y) + self.irun(y.flatten(2)).view_as(y)
        up = self.shuffle(y)  # (N, 2, 12, 12)
        down = F.pixel_unshuffle(up, 2) + self.unshuffle(F.pixel_shuffle(y, 2))
        return torch.cat([down, y.div(2)], 1)


def test_small_ops_of_user_code(dev, ct):
    torch.manual_seed(0)
    model = SmallOps().eval()
    model.irun.running_mean.uniform_(-1, 1)
    model.irun.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 6, 6)
    _check_lowered(ct, model, x)
    cm = _compile(ct, model, x)
    with torch.no_grad():  # another batch size: the reshapes follow the input
        x3 = torch.randn(3, 3, 6, 6)
        _close(cm(x3), model(x3))


class AddsWithAlpha(nn.Module):
    """torch.add/sub and Tensor.add/sub_ with alpha, against nodes, constants and numbers, and
    on a channels-last (permuted) view."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 1)
        self.register_buffer("shift", torch.randn(1, 4, 1, 1))

    def forward(self, x):
        y = self.c(x)
        a = torch.add(y, y * y, alpha=0.3)
        b = torch.sub(a, self.shift, alpha=2.5)
        c = b.add(1.5, alpha=-3)
        d = c * 1.0
        d.sub_(y, alpha=0.25)
        p = d.permute(0, 2, 3, 1)
        q = p.add(p * 0.5, alpha=2).permute(0, 3, 1, 2)
        return torch.cat([a, b, c, d, q], 1)


def test_add_and_sub_with_alpha_are_lowered(dev, ct):
    """alpha runs on the device (clconv.add/sub's alpha, one rounding as torch's) instead of a
    host fallback; on a permuted view it is no longer dropped."""
    torch.manual_seed(0)
    model = AddsWithAlpha().eval()
    x = torch.randn(2, 3, 5, 5)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    assert sum("alpha=" in s.op for s in cm.steps) >= 4, [s.op for s in cm.steps]
    with torch.no_grad():
        _close(cm(x), model(x))


class SoftmaxWithDtype(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.c(x)
        return F.softmax(y, 1, dtype=torch.float64) + y.log_softmax(-1, dtype=torch.float64)


def test_softmax_with_dtype_is_lowered(dev, ct):
    """softmax / log_softmax with dtype=: the input cast on the device (on a device with that
    dtype), the result in it, as torch's."""
    if not dev.fp64:
        pytest.skip(f"{dev.name} has no float64")
    torch.manual_seed(0)
    model = SoftmaxWithDtype().eval()
    x = torch.randn(2, 3, 5, 5)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == [] and sum("dtype=" in s.op for s in cm.steps) == 2
    with torch.no_grad():
        got, want = cm(x), model(x)
    assert got.dtype == torch.float64
    _close(got, want)


class FoundByFuzzing(nn.Module):
    """torch.softmax's positional dtype, sums and variances over every dim (the count of each
    call's input), cat and stack of a slice of chunk's pieces (one node's tuple), dict and list
    outputs."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.c(x)
        s = torch.softmax(y, 1, torch.float64) + torch.log_softmax(y, 1, torch.float64)
        total = y.sum() + y.var() + torch.std(y) + y.sum(dim=(0, 1, 2, 3))
        return {"s": s, "t": total, "l": [torch.cat(y.chunk(2, 1)[::-1], 1), y.split(1, 1)[2:],
                                          torch.stack(y.split([1, 3], 1)[1:], -1)]}


def test_channels_last_values_reshaped_and_outputs_contiguous(dev, ct):
    """A permuted (channels-last) value: `.contiguous().view(...)`, reshape and flatten of it,
    and its shape / size(), are lowered (the value gathered into its logical order on the device;
    the view raised torch's view error at compile, the others ran on the host), and an output
    is contiguous as the docs say (ConvNeXt's channels-last LayerNorm -> Linear returned a
    strided view)."""

    class ViewAfterContiguous(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

        def forward(self, x):
            y = self.dw(x).permute(0, 2, 3, 1)
            return (y.contiguous().view(y.shape[0], -1), y.reshape(y.size(0), -1, y.size(3)),
                    torch.flatten(y, 2))

    class ChannelsLastHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw, self.ln, self.fc = nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.LayerNorm(8), \
                nn.Linear(8, 16)

        def forward(self, x):
            return self.fc(self.ln(self.dw(x).permute(0, 2, 3, 1)))

    torch.manual_seed(6)
    for model, x in ((ViewAfterContiguous().eval(), torch.randn(2, 8, 4, 4)),
                     (ChannelsLastHead().eval(), torch.randn(2, 8, 5, 6))):
        cm = ct.compile(model, x)
        assert cm.fallbacks == []
        for x in (x, torch.randn(1, 8, 3, 7)):
            with torch.no_grad():
                got, want = cm(x), model(x)
            for g, w in zip(*((v,) if isinstance(v, torch.Tensor) else v for v in (got, want))):
                assert g.is_contiguous()
                _close(g, w)


def test_max_values_with_unused_indices_are_lowered(dev, ct):
    """`values, _ = torch.max(x, dim=1, keepdim=True)` (CBAM's spatial gate) and
    `x.max(dim=1).values`: fx's getitem of the unused indices, or the attribute, no longer sends
    the max to the host."""

    class SpatialGate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gate = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(2, 1, 7, padding=3)

        def forward(self, x):
            x = self.conv(x)
            mx, _ = torch.max(x, dim=1, keepdim=True)
            pooled = torch.cat([mx - x.max(dim=1, keepdim=True).values,
                                torch.mean(x, 1, keepdim=True)], 1)
            return x * torch.sigmoid(self.gate(pooled))

    torch.manual_seed(7)
    model = SpatialGate().eval()
    x = torch.randn(2, 3, 8, 8)
    cm = ct.compile(model, x)
    assert cm.fallbacks == []
    with torch.no_grad():
        _close(cm(x), model(x))


def test_pools_of_sizes_computed_in_the_graph(dev, ct):
    """F.avg_pool2d(x, x.size()[2:]) (BiSeNet's global pool) and F.max_pool2d with the kernel
    and stride from x.size(2), x.size(3) (CBAM's channel gate): lowered, the sizes read on each
    call (another spatial size gives torch's result)."""

    class GlobalPools(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            f = self.conv(x)
            hw = (f.size(2), f.size(3))
            return F.avg_pool2d(f, f.size()[2:]) + F.max_pool2d(f, hw, stride=hw)

    torch.manual_seed(8)
    model = GlobalPools().eval()
    cm = ct.compile(model, torch.randn(2, 3, 8, 8))
    assert cm.fallbacks == []
    for x in (torch.randn(2, 3, 8, 8), torch.randn(1, 3, 6, 10)):
        with torch.no_grad():
            _close(cm(x), model(x))


def test_transposed_convolution_with_output_size(dev, ct):
    """A U-Net's `up(x, output_size=skip.size())` (and a fixed output_size list): lowered, with
    BatchNorm folded, the output_padding worked out on each call as torch's module does (odd
    and even sizes need different ones)."""

    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(8, 3, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(3)
            self.fixed = nn.ConvTranspose2d(3, 2, 2, stride=2)

        def forward(self, x):
            y = torch.relu(self.bn(self.up(self.down(x), output_size=x.size()))) + x
            return self.fixed(y, [2 * x.shape[2] + 1, 2 * x.shape[3] + 1])

    torch.manual_seed(9)
    model = Up().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    cm = ct.compile(model, torch.randn(2, 3, 9, 10))
    assert cm.fallbacks == []
    for shape in ((2, 3, 9, 10), (1, 3, 8, 8), (2, 3, 11, 7)):
        x = torch.randn(*shape)
        with torch.no_grad():
            _close(cm(x), model(x))


def test_numbers_computed_from_sizes_in_arithmetic(dev, ct):
    """A Python number computed from sizes beside a tensor (attention's `x * x.shape[-1] **
    -0.5`, a mean as `x.sum((2, 3)) / (H * W)`, `2 - C * x`): lowered, the number read on each
    call (another spatial size gives torch's result)."""

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            y = y * (y.shape[-1] ** -0.5)
            mean = y.sum((2, 3), keepdim=True) / (y.shape[2] * y.shape[3])
            return y - mean, 2.0 - y.shape[1] * y

    torch.manual_seed(10)
    model = Scaled().eval()
    cm = ct.compile(model, torch.randn(2, 3, 8, 8))
    assert cm.fallbacks == []
    for x in (torch.randn(2, 3, 8, 8), torch.randn(1, 3, 5, 9)):
        with torch.no_grad():
            for got, want in zip(cm(x), model(x)):
                _close(got, want)


def test_reductions_over_some_spatial_dims(dev, ct):
    """mean / amax / sum / std over some of the spatial dims (H alone, W alone, (H, W) of a
    5-d tensor, D alone): adaptive pooling to 1 along them, the other dims kept; lowered, and
    right at another size."""

    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv3d(3, 4, 1)

        def forward(self, x, v):
            y, z = self.c2(x), self.c3(v)
            return (y.mean(2, keepdim=True) + y.amax(-1, keepdim=True),
                    torch.std(y, dim=3, keepdim=True), z.mean((3, 4)), z.sum(2))

    torch.manual_seed(11)
    model = Partial().eval()
    cm = ct.compile(model, (torch.randn(2, 3, 6, 7), torch.randn(2, 3, 3, 4, 5)))
    assert cm.fallbacks == []
    for x, v in ((torch.randn(2, 3, 6, 7), torch.randn(2, 3, 3, 4, 5)),
                 (torch.randn(1, 3, 5, 9), torch.randn(1, 3, 2, 6, 3))):
        with torch.no_grad():
            for got, want in zip(cm(x, v), model(x, v)):
                _close(got, want)


def test_clamp_with_tensor_bounds(dev, ct):
    """torch.clamp / clip / Tensor.clamp with tensor bounds (a parameter, a buffer, a value
    computed in the graph) beside the number-bound activation: lowered to clconv.clamp with
    arrays."""

    class Bounded(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.lo = nn.Parameter(torch.randn(8, 1, 1) - 1)
            self.register_buffer("hi", torch.rand(1, 8, 1, 1) + 0.2)

        def forward(self, x):
            y = self.conv(x)
            mean = y.mean((2, 3), keepdim=True)
            return (torch.clamp(y, self.lo, self.hi), y.clamp(min=mean),
                    torch.clip(y, max=self.hi), torch.clamp(y, -0.5, 0.5))

    torch.manual_seed(12)
    model = Bounded().eval()
    x = torch.randn(2, 3, 6, 7)
    cm = ct.compile(model, x)
    assert cm.fallbacks == []
    with torch.no_grad():
        for got, want in zip(cm(x), model(x)):
            _close(got, want)


def test_an_input_of_another_rank_is_refused(dev, ct):
    """The trace fixes dims by number (cat along -3, flatten from 1): an input whose rank differs
    from the example's would be computed along other dims, so it is refused; other batch and
    spatial sizes run."""

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return torch.flatten(torch.cat([self.a(x), self.b(x)], -3), 1)

    torch.manual_seed(5)
    model = Cat().eval()
    cm = ct.compile(model, torch.randn(2, 3, 6, 6))
    x = torch.randn(5, 3, 7, 7)
    with torch.no_grad():
        _close(cm(x), model(x))
    with pytest.raises(ValueError, match="was 4-d in the example, got a 3-d"):
        cm(torch.randn(3, 6, 6))


def test_details_found_by_fuzzing_compile(dev, ct):
    torch.manual_seed(0)
    model = FoundByFuzzing().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ct.FallbackWarning)
        cm = ct.compile(model, torch.randn(2, 4, 8, 8))
    fallbacks = [f.op for f in cm.fallbacks]  # (no float64 on the device: the softmax)
    assert fallbacks == [] if dev.fp64 else "softmax" in fallbacks
    # the cat of a slice of chunk's pieces (one node's tuple) is lowered (it ran on the host)
    assert "cat" not in fallbacks and any(s.op == "clconv.cat" for s in cm.steps)
    for x in (torch.randn(2, 4, 8, 8), torch.randn(3, 4, 6, 6)):  # other batch and spatial sizes
        with torch.no_grad():
            got, want = cm(x), model(x)
        assert type(got) is dict and type(got["l"]) is list and type(got["l"][1]) is tuple
        assert got["s"].dtype == torch.float64
        for a, b in [(got["s"], want["s"]), (got["t"], want["t"]), (got["l"][0], want["l"][0]),
                     *zip(got["l"][1], want["l"][1]), (got["l"][2], want["l"][2])]:
            assert isinstance(a, torch.Tensor)
            _close(a, b)


class InPlaceFunctions(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        kept = y + 0  # read after the writes below: torch's value from before them
        F.leaky_relu_(y, 0.2)
        z = y * 3
        F.hardtanh_(z, -0.5, 0.5)
        w = kept * 1
        torch.sigmoid_(w)
        F.elu_(kept, 0.7)
        return torch.cat([y, z, w, kept], 1)


def test_in_place_activation_functions_are_lowered(dev, ct):
    """F.leaky_relu_ / hardtanh_ / elu_, torch.sigmoid_ (and the other in-place functions) run
    on the device, their writes seen by every later reader."""
    torch.manual_seed(0)
    model = InPlaceFunctions().eval()
    x = torch.randn(2, 3, 6, 6)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    with torch.no_grad():
        _close(cm(x), model(x))


class Focus(nn.Module):
    """YOLOv5's Focus: the four phases of a stride-2 space-to-depth by stepped slices."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(12, 4, 3, padding=1)

    def forward(self, x):
        return self.c(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2],
                                 x[:, :, 1::2, 1::2]], 1)) + x[:, :2, ::3, ::3].mean()


def test_stepped_slices_are_lowered(dev, ct):
    torch.manual_seed(0)
    model = Focus().eval()
    for shape in ((2, 3, 8, 8), (1, 3, 10, 6)):
        x = torch.randn(*shape)
        cm = _compile(ct, model, x)
        assert cm.fallbacks == []
        with torch.no_grad():
            _close(cm(x), model(x))


class Divisions(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.c(x)
        return torch.cat([y / (y * y + 1), y / 0.0, y / -0.0, 0 / y[:, :1]], 1)


def test_divisions_on_the_device_as_torchs(dev, ct):
    """Division by a tensor and by a number (0: +-inf by the zero's sign), 0 / y."""
    torch.manual_seed(0)
    model = Divisions().eval()
    x = torch.randn(1, 2, 4, 4)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    with torch.no_grad():
        got, want = cm(x).numpy(), model(x).numpy()
    assert np.isinf(want[:, 2:6]).all()
    np.testing.assert_allclose(got, want, rtol=RTOL)


class ChannelsFirstLayerNorm(nn.Module):
    """The official ConvNeXt repository's LayerNorm(data_format="channels_first") (its stem and
    downsampling layers), written with elementwise ops and channel means."""

    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c) + 0.1 * torch.randn(c))
        self.bias = nn.Parameter(0.1 * torch.randn(c))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ReductionsAndCBAM(nn.Module):
    """Channel reductions as CBAM's spatial attention takes them (mean and max over C, cat, a 7x7
    conv, sigmoid), the channels-first LayerNorm, sums, amax, square, division by tensors."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = ChannelsFirstLayerNorm(8)
        self.att = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        y = self.norm(self.c(x))
        pooled = torch.cat([torch.mean(y, dim=1, keepdim=True),
                            torch.max(y, dim=1, keepdim=True)[0]], dim=1)
        y = y * torch.sigmoid(self.att(pooled))
        z = y.sum(1) + y.amax(1) - torch.square(y).mean(1) / 3.0
        return torch.cat([y, (z / (y.max(1)[0] ** 2 + 1)).unsqueeze(1),
                          y * y.amax((2, 3), keepdim=True)], 1)


def test_channel_reductions_and_elementwise_math(dev, ct):
    torch.manual_seed(0)
    _check_lowered(ct, ReductionsAndCBAM().eval(), torch.randn(2, 3, 10, 10))


class SelectiveKernel(nn.Module):
    """SKNet's selective kernel unit: two branches stacked (torch.stack), summed over the branch
    dim, a channel attention (softmax over the branches) weighting them."""

    def __init__(self, c=8, r=2):
        super().__init__()
        self.b3 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.b5 = nn.Sequential(nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.BatchNorm2d(c),
                                nn.ReLU())
        self.fc = nn.Linear(c, c // r)
        self.fcs = nn.ModuleList([nn.Linear(c // r, c) for _ in range(2)])

    def forward(self, x):
        feats = torch.stack([self.b3(x), self.b5(x)], dim=1)  # (N, 2, C, H, W)
        z = F.relu(self.fc(feats.sum(dim=1).mean((2, 3))))
        att = F.softmax(torch.stack([fc(z) for fc in self.fcs], dim=1), dim=1)
        return (feats * att[..., None, None]).sum(dim=1)


def test_stacked_branches(dev, ct):
    torch.manual_seed(0)
    _check_lowered(ct, models.randomize(SelectiveKernel()).eval(), torch.randn(2, 8, 6, 6))


class DataDependent(nn.Module):
    """A block whose forward branches on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        return F.relu(y) if y.mean() > 0 else y * 0.5


class WithDataDependentBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.Sequential(DataDependent(), nn.Conv2d(4, 4, 1), DataDependent())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_a_block_fx_cannot_trace_runs_in_torch_and_the_rest_on_the_device(dev, ct):
    torch.manual_seed(0)
    model = models.randomize(WithDataDependentBlocks()).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(ct.FallbackWarning, match="blocks_0"):
        cm = ct.compile(model, x)
    assert [(f.node, f.op) for f in cm.fallbacks] == [("blocks_0", "DataDependent"),
                                                     ("blocks_2", "DataDependent")]
    assert all("torch.fx cannot trace its forward" in f.why and "control flow" in f.why
               for f in cm.fallbacks)
    assert sum(not s.host for s in cm.steps) >= 3  # stem, the 1x1 conv, mean and head lowered
    with torch.no_grad():
        _close(cm(x), model(x))


def test_a_forward_fx_cannot_trace_at_all_says_what_to_do(dev, ct):
    with pytest.raises(TypeError, match=r"cannot trace DataDependent's forward.*convert"):
        ct.compile(DataDependent().eval(), torch.randn(1, 4, 5, 5))


def test_float64_model(dev, ct):
    if not dev.fp64:
        pytest.skip("the device has no float64")
    torch.manual_seed(0)
    model = models.randomize(models.ConvNeXt(depths=(1, 1), dims=(8, 16))).eval().double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    cm = _compile(ct, model, x)
    y = cm(x)
    assert y.dtype == torch.float64
    with torch.no_grad():
        want = model(x)
    np.testing.assert_allclose(y.numpy(), want.numpy(), rtol=1e-9,
                               atol=1e-9 * float(want.abs().max()))


def stochastic_depth(input, p, mode, training=True):
    """torchvision.ops.stochastic_depth's signature (fx-wrapped there too); identity in eval."""
    if not training or p == 0.0:
        return input
    keep = torch.empty((input.shape[0],) + (1,) * (input.ndim - 1)).bernoulli_(1 - p)
    return input * keep / (1 - p)


torch.fx.wrap("stochastic_depth")


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: F.batch_norm on the module's buffers, then the activation."""

    def __init__(self, c):
        super().__init__(c)
        self.act = nn.SiLU()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, 0.1, self.eps)
        return self.act(x)


class Functional(nn.Module):
    """Layers written with F.conv2d / F.linear on parameters, timm's BN, a wrapped function."""

    def __init__(self, c=6):
        super().__init__()
        self.w = nn.Parameter(torch.randn(c, 3, 3, 3) * 0.3)
        self.b = nn.Parameter(torch.randn(c) * 0.1)
        self.bn = BatchNormAct2d(c)
        self.fc = nn.Parameter(torch.randn(4, c) * 0.3)

    def forward(self, x):
        y = self.bn(F.conv2d(x, self.w, self.b, 2, 1))
        y = y + stochastic_depth(y, 0.2, "row", self.training)
        return F.linear(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1), self.fc)


def test_functional_layers_and_wrapped_functions(dev, ct):
    torch.manual_seed(0)
    _check_lowered(ct, models.randomize(Functional()).eval(), torch.randn(2, 3, 10, 10))


class UpPad(nn.Module):
    """A U-Net decoder step as often written: upsample, F.pad to the skip's size, concatenate."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose3d(4, 4, 2, 2)
        self.conv = nn.Conv3d(8, 4, 3, padding=1)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        dz = x2.size()[2] - x1.size()[2]
        dy = x2.size()[3] - x1.size()[3]
        dx = x2.size()[4] - x1.size()[4]
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2, dz // 2, dz - dz // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


def test_padding_computed_from_sizes_is_lowered_for_every_call(dev, ct):
    """All-zero amounts on the example are nothing; other amounts on a later call (or on the
    example) run clconv.pad: no fallback, no warning."""
    torch.manual_seed(0)
    model = UpPad().eval()
    a, b = torch.randn(1, 4, 3, 3, 3), torch.randn(1, 4, 6, 6, 6)
    cm = _compile(ct, model, (a, b))
    assert cm.fallbacks == []
    odd = torch.randn(1, 4, 7, 7, 7)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", ct.FallbackWarning)
        _close(cm(a, b), model(a, b))
        _close(cm(a, odd), model(a, odd))
        cm2 = _compile(ct, model, (a, odd))
        assert cm2.fallbacks == []
        _close(cm2(a, odd), model(a, odd))


class ComputedPieces(nn.Module):
    """Split sizes, chunk counts and slice bounds computed from sizes: ShuffleNetV2's
    `torch.split(x, x.size(1) // 2, 1)` and the U-Net paper's centre crop of the skip
    (`x[:, :, dh:dh + h, dw:dw + w]`, dh from the two sizes), and a chunk count and a slice step
    from a size."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(8, 8, 3)
        self.d = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a, b = torch.split(x, x.size(1) // 2, 1)
        x = torch.cat([a, self.d(b)], 1)
        y = self.c(x)
        dh, dw = (x.size(2) - y.size(2)) // 2, (x.size(3) - y.size(3)) // 2
        crop = x[:, :, dh:dh + y.size(2), dw:dw + y.size(3)]
        pieces = torch.chunk(y, y.size(1) // 4, 1)  # 2 pieces of 4 channels
        return torch.cat([crop, pieces[1], pieces[0]], 1)[:, :, :, ::x.size(0)]


def test_pieces_and_slices_of_sizes_computed_in_the_graph(dev, ct):
    """Lowered (they went back to torch: a FallbackWarning and two host round trips a call) and
    read on each call: inputs of other sizes than the example's give torch's results."""
    torch.manual_seed(0)
    model = ComputedPieces().eval()
    x = torch.randn(1, 8, 12, 12)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", ct.FallbackWarning)
        for shape in ((1, 8, 12, 12), (2, 8, 15, 11), (1, 8, 9, 20)):
            x = torch.randn(shape)
            _close(cm(x), model(x))


class ComputedLayerNorm(nn.Module):
    """F.layer_norm over sizes taken from the input: `x.shape[1:]` (a torch.Size node), a tuple
    of size nodes, and one size node with a module's weight and bias."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.w = nn.Parameter(torch.randn(6))
        self.b = nn.Parameter(torch.randn(6))

    def forward(self, x):
        y = self.c(x)
        y = F.layer_norm(y, y.shape[1:])
        y = F.layer_norm(y, (y.size(2), y.size(3)), eps=1e-3)
        z = y.transpose(1, 3).contiguous()  # (N, W, H, C): C last
        z = F.layer_norm(z, (z.size(-1),), self.w, self.b)
        return z.transpose(1, 3)


def test_layer_norm_over_sizes_computed_in_the_graph(dev, ct):
    """Lowered (it went back to torch: "layer_norm arguments computed in the graph") and read on
    each call: inputs of other sizes than the example's give torch's results."""
    torch.manual_seed(0)
    model = ComputedLayerNorm().eval()
    cm = _compile(ct, model, torch.randn(1, 3, 10, 12))
    assert cm.fallbacks == []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", ct.FallbackWarning)
        for shape in ((1, 3, 10, 12), (2, 3, 7, 9)):
            x = torch.randn(shape)
            _close(cm(x), model(x))



def test_calls_after_the_weights_changed_use_the_new_weights(dev, ct):
    """The program folds and uploads the weights when it is lowered; a call after a parameter or
    buffer changed (an optimizer's in-place step, load_state_dict, a new Parameter, BatchNorm's
    running statistics from a train-mode call) lowers it again, as torch would use the new values
    (the outputs were the compile-time weights'); no change, no new lowering."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(4 * 36, 5)).eval()
    x = torch.randn(2, 3, 6, 6)
    cm = _compile(ct, model, x)
    steps = cm.steps
    with torch.no_grad():
        _close(cm(x), model(x))
        assert cm.steps is steps and not cm.weights_changed  # nothing changed: nothing redone
        changes = [
            lambda: model[0].weight.mul_(2.0),                     # an optimizer's in-place step
            lambda: model[1].running_var.mul_(3.0),                # BatchNorm's statistics
            lambda: model.load_state_dict({k: v + 0.5 for k, v in model.state_dict().items()
                                           if "num_batches" not in k}, strict=False),
            lambda: setattr(model[3], "weight", nn.Parameter(model[3].weight * -1.0)),
            lambda: model[5].bias.add_(1.0),                       # the Linear's
        ]
        for change in changes:
            change()
            assert cm.weights_changed
            _close(cm(x), model(x))
            assert not cm.weights_changed
    model.train()
    model(torch.randn(2, 3, 6, 6) * 3)  # running statistics updated
    model.eval()
    with torch.no_grad():
        _close(cm(x), model(x))
        model[3] = nn.Conv2d(6, 4, 1)  # a new submodule (the trace held the old one)
        _close(cm(x), model(x))
        model[3].weight.mul_(-2.0)  # and the new one is watched
        _close(cm(x), model(x))


@pytest.mark.parametrize("change", [
    lambda model: setattr(model[1], "eps", 0.5),                   # folded into the conv
    lambda model: setattr(model[2], "negative_slope", 0.5),        # the epilogue's
    lambda model: setattr(model[4], "padding", 0),                 # a pool's size argument
    lambda model: setattr(model[5], "negative_slope", -0.5),       # a standalone activation
])
def test_calls_after_a_modules_setting_changed_use_it(dev, ct, change):
    """The lowering writes module settings into the steps (eps into the folded weights, a slope
    into the epilogue, pool sizes): a call after one changed lowers again, as torch reads them on
    each call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.LeakyReLU(0.1),
                          nn.Conv2d(6, 6, 1), nn.MaxPool2d(3, 2, 1), nn.LeakyReLU(0.2)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.05, 0.2)  # eps matters against these
    x = torch.randn(2, 3, 8, 8) * 2.0
    cm = _compile(ct, model, x)
    with torch.no_grad():
        _close(cm(x), model(x))
        assert not cm.weights_changed
        change(model)
        assert cm.weights_changed
        _close(cm(x), model(x))
        assert not cm.weights_changed


def test_modules_in_train_mode(dev, ct):
    """A model put back in train mode refuses the call, as compile() refuses it; a dropout or
    BatchNorm left in train mode in an eval model (Monte Carlo dropout) runs in torch, as the
    model computes it (their train-mode forward was an identity / a running-statistics fold)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Dropout(0.5), nn.Conv2d(6, 4, 1)).eval()
    x = torch.randn(2, 3, 6, 6)
    cm = _compile(ct, model, x)
    with torch.no_grad():
        _close(cm(x), model(x))
        model.train()
        with pytest.raises(ValueError, match="model.eval"):
            cm(x)
        model.eval()
        _close(cm(x), model(x))
        model[1].train()  # batch statistics, as torch computes them
        _close(cm(x), model(x))
        model[1].eval()
        base = model(x)
        model[3].train()  # dropout: a mask torch draws; compare with the same seed
        torch.manual_seed(3)
        want = model(x)
        torch.manual_seed(3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ct.FallbackWarning)
            got = cm(x)
        _close(got, want)
        assert float((got - base).abs().max()) > 0.1  # the mask applied
    with pytest.raises(ValueError, match="model.eval"):
        ct.compile(model.train(), x)


class _RootWeights(nn.Module):
    """A functional convolution on a parameter and a buffer of the root module (fx copies what
    get_attr names into its GraphModule)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.register_buffer("scale", torch.ones(1, 4, 1, 1))

    def forward(self, x):
        return F.conv2d(x, self.w, padding=1) * self.scale


def test_new_tensors_on_the_root_module_reach_the_compiled_model(dev, ct):
    torch.manual_seed(0)
    model = _RootWeights().eval()
    x = torch.randn(2, 3, 6, 6)
    cm = _compile(ct, model, x[:1])
    with torch.no_grad():
        _close(cm(x), model(x))
        model.w = nn.Parameter(torch.randn(4, 3, 3, 3))
        _close(cm(x), model(x))
        model.scale = torch.full((1, 4, 1, 1), 3.0)
        _close(cm(x), model(x))
        model.w.mul_(0.5)
        _close(cm(x), model(x))

class Padded(nn.Module):
    """Every padding module and F.pad mode around convolutions (a CycleGAN-style generator's
    ReflectionPad2d(3) + 7x7 conv, TF-style asymmetric 'same' padding by ZeroPad2d, cropping)."""

    def __init__(self):
        super().__init__()
        self.reflect = nn.ReflectionPad2d(3)
        self.stem = nn.Conv2d(3, 8, 7)
        self.same = nn.ZeroPad2d((0, 1, 0, 1))
        self.down = nn.Conv2d(8, 8, 3, stride=2)
        self.replicate = nn.ReplicationPad2d((1, 2, 0, 1))
        self.constant = nn.ConstantPad2d(1, 0.5)
        self.out = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        y = torch.relu(self.stem(self.reflect(x)))
        y = self.replicate(self.down(self.same(y)))
        y = F.pad(self.constant(y), (1, 1, 0, 0), mode="circular")
        return F.pad(self.out(y), (-1, 0, 1, -1))


def test_padding_modules_and_modes_are_lowered(dev, ct):
    """The paddings a convolution reads alone are folded into it (its (lo, hi) pairs: no padded
    copy): ReflectionPad2d(3) before the 7x7, ZeroPad2d before the stride-2 conv, the circular
    F.pad before the last; the others run clconv.pad."""
    torch.manual_seed(0)
    model = Padded().eval()
    x = torch.randn(2, 3, 11, 10)
    cm = _lowered_with(ct, model, x, "clconv.pad", 3)
    folded = [s.op for s in cm.steps if "folded" in s.op]
    assert len(folded) == 3 and all(s.startswith("clconv.conv2d") for s in folded), folded
    assert [m in " ".join(folded) for m in ("reflect", "zeros", "circular")] == [True] * 3


class PaddedNotFoldable(nn.Module):
    """Paddings a convolution cannot take over: a non-zero constant, a reflection before a
    convolution padding itself, a padding read twice, the channel dim padded, and a 1-d zero
    padding added to the convolution's own (that one folds)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 3)
        self.d = nn.Conv2d(6, 4, 1)
        self.e = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.a(F.pad(x, (1, 1, 1, 1), value=0.25))
        y = self.b(F.pad(y, (1, 1, 1, 1), mode="reflect"))
        p = F.pad(y, (2, 0, 0, 2))
        y = self.c(p) + p[:, :, 1:-1, 1:-1]
        y = self.d(F.pad(y, (0, 0, 0, 0, 1, 1)))
        return self.e(F.pad(y.flatten(2), (0, 3)))


def test_paddings_that_cannot_fold_run_as_pads(dev, ct):
    torch.manual_seed(0)
    model = PaddedNotFoldable().eval()
    x = torch.randn(2, 3, 9, 8)
    cm = _lowered_with(ct, model, x, "clconv.pad", 4)
    folded = [s.op for s in cm.steps if "folded" in s.op]
    assert len(folded) == 1 and folded[0].startswith("clconv.conv1d"), folded
    assert "((1, 4),)" in folded[0]


class _PadsAndInstanceNorms(nn.Module):
    """What torch.compile's graphs hold for padding convs, F.pad and InstanceNorm:
    torch._C._nn.pad and F.instance_norm (compile()'s fx graphs hold modules and F.pad)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
        self.own = nn.InstanceNorm2d(4, affine=True)
        self.running = nn.InstanceNorm2d(4, track_running_stats=True)
        self.conv1d = nn.Conv1d(4, 3, 3, padding=2, padding_mode="circular")

    def forward(self, x):
        y = F.pad(self.running(self.own(self.conv(x))), (1, 2, 0, 1), mode="reflect")
        return self.conv1d(y.flatten(2))


def _backend_compiled(ct, model):
    """(the backend's compiled functions as dynamo makes them, torch.compile(model))."""
    made = []

    def spy(gm, example_inputs):
        fn = ct.backend(gm, example_inputs)
        made.append(fn)
        return fn
    torch._dynamo.reset()
    return made, torch.compile(model, backend=spy, dynamic=False)


def test_torch_compile_backend_lowers_pads_and_instance_norms(dev, ct):
    torch.manual_seed(0)
    model = _PadsAndInstanceNorms().eval()
    with torch.no_grad():
        model.running.running_mean.normal_()
        model.running.running_var.uniform_(0.5, 2)
        model.own.weight.normal_()
    x = torch.randn(2, 3, 8, 8)
    made, compiled = _backend_compiled(ct, model)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", ct.FallbackWarning)
            _close(compiled(x), model(x))
        assert made and all(fn.compiled_model.fallbacks == [] for fn in made)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("family", ["resnet18", "convnext"])
def test_torch_compile_backend(dev, ct, family):
    """torch.compile(model, backend=clconv.torch.backend): dynamo's graph (parameters lifted to
    inputs, functional convs and batch norms) lowers with BatchNorm folded and nothing on the host,
    and follows in-place changes of the weights; with grad enabled the graph runs in torch and
    gradients flow."""
    make, shape = models.FAMILIES[family]
    torch.manual_seed(0)
    model = models.randomize(make(), seed=1).eval()
    x = torch.randn(2, *shape[1:])
    made, compiled = _backend_compiled(ct, model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", ct.FallbackWarning)
        got = compiled(x)
        _close(got, model(x))
        _close(compiled(x[:1]), model(x[:1]))  # another batch size: dynamo recompiles
        for p in model.parameters():  # an optimizer's in-place step: the program lowered again
            p.mul_(0.75)
        _close(compiled(x), model(x))
    cms = [fn.compiled_model for fn in made]
    assert cms and all(cm.fallbacks == [] for cm in cms)
    if family == "resnet18":
        assert all(any("BN folded" in s.op and "+ residual" in s.op for s in cm.steps)
                   for cm in cms)
    xg = x.clone().requires_grad_()
    y = compiled(xg)
    y.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    torch._dynamo.reset()



def test_torch_compile_backend_follows_the_tensors_it_is_called_with(dev, ct):
    """Dynamo reuses a graph for another instance of the same model and after a new Parameter,
    passing the new tensors: the backend gave the first instance's outputs (the tensors it was
    made with). Each set of tensors now gets a compiled model of its own."""
    torch._dynamo.reset()

    def net():
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()

    torch.manual_seed(0)
    a, b = net(), net()
    with torch.no_grad():
        b[1].running_var.mul_(2.0)
    x = torch.randn(2, 3, 6, 6)
    fa = torch.compile(a, backend=ct.backend, dynamic=False)
    fb = torch.compile(b, backend=ct.backend, dynamic=False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", ct.FallbackWarning)
        for _ in range(2):  # alternating: each instance its own weights
            _close(fa(x), a(x))
            _close(fb(x), b(x))
        a[0].weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        _close(fa(x), a(x))
    torch._dynamo.reset()

def test_torch_compile_backend_with_dynamic_shapes(dev, ct):
    """dynamic=True: dynamo passes the sizes as SymInts and BatchNorm's eps and momentum as 0-d
    tensors read by .item(); the graph ran in torch with a FallbackWarning. The numbers are
    specialised by value: a new eps gives a compiled model of its own."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.LayerNorm([4, 5, 7])).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
    made = []

    def spy(gm, example_inputs):
        fn = ct.backend(gm, example_inputs)
        made.append(fn)
        return fn
    compiled = torch.compile(model, backend=spy, dynamic=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", ct.FallbackWarning)
            for n in (2, 3):
                x = torch.randn(n, 3, 7, 9)
                _close(compiled(x), model(x))
            model[1].eps = 0.5  # a number the compiled program holds as a constant
            _close(compiled(x), model(x))
        cms = [fn.compiled_model for fn in made]
        assert cms and all(cm.fallbacks == [] for cm in cms)
        assert any(any("BN folded" in s.op for s in cm.steps) for cm in cms)
    finally:
        torch._dynamo.reset()


class _UpToSkip(nn.Module):
    """A U-Net's decoder step: upsampling to the skip's size (`size=skip.shape[2:]`)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x, skip):
        return self.c(F.interpolate(x, size=skip.shape[2:], mode="bilinear")) + skip


def test_torch_compile_backend_with_dynamic_sizes_of_inputs(dev, ct):
    """dynamic=True passes an input's sizes as SymInt inputs and `skip.shape[2:]` as
    torch.Size([s, s]), which compile()'s trace refused (the whole graph ran in torch): each
    size is read from its tensor as `skip.size(2)`, and the torch.Size is their tuple."""
    torch.manual_seed(0)
    calls = [(torch.randn(n, 4, 4, 4), torch.randn(n, 4, size, size))
             for n, size in ((2, 8), (1, 10), (3, 7))]
    _dynamic_backend_matches(ct, _UpToSkip().eval(), calls)


def _dynamic_backend_matches(ct, model, calls, same_shape=False):
    """torch.compile(model, backend=clconv's, dynamic=True) on each call's inputs: torch's
    results (the output of the first input's shape where `same_shape`), no FallbackWarning."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=ct.backend, dynamic=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", ct.FallbackWarning)
            for inputs in calls:
                got = compiled(*inputs)
                if same_shape:
                    assert got.shape == inputs[0].shape
                _close(got, model(*inputs))
    finally:
        torch._dynamo.reset()


class _CheckpointedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self.block, x, use_reentrant=False)


def test_torch_compile_backend_after_a_checkpointing_convert(dev, ct):
    """After a converted model's training forward met torch.utils.checkpoint (its trace stops
    there), dynamo reached a module's buffers through `__dict__['_buffers']`: the backend took
    BatchNorm's running statistics for values computed in the graph and ran the graph in torch
    (so every backend test after test_convert_fused's checkpoint test, in one process)."""
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with dev, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ct.convert(_CheckpointedBlock().train())(x).sum().backward()
    model = models.randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    made, compiled = _backend_compiled(ct, model)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", ct.FallbackWarning)
            _close(compiled(x.detach()), model(x.detach()))
        assert made and all(fn.compiled_model.fallbacks == [] for fn in made)
    finally:
        torch._dynamo.reset()


class _WritesItsInput(nn.Module):
    def forward(self, x):
        x.mul_(2)
        return x[:, :, 1:] + 1


def test_torch_compile_backend_leaves_graphs_writing_their_input_to_torch(dev, ct):
    """A graph that writes its input in place runs in torch (a FallbackWarning says so), which
    writes the caller's tensor as torch.compile's own backends do; compiling it raised in
    dynamo's guard building (an IndexError: sizes of the input with no source)."""
    torch._dynamo.reset()
    try:
        compiled = torch.compile(_WritesItsInput(), backend=ct.backend, dynamic=False)
        x = torch.randn(2, 3, 5, 4)
        x0 = x.clone()
        with torch.no_grad(), pytest.warns(ct.FallbackWarning, match="writes its input"):
            got = compiled(x)
        _close(got, (2 * x0)[:, :, 1:] + 1)
        _close(x, 2 * x0)
    finally:
        torch._dynamo.reset()


class _FixedCoords(nn.Module):
    """CoordConv (Liu et al. 2018): coordinate channels of a fixed size, expanded to the batch."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(5, 4, 3, padding=1)

    def forward(self, x):
        gy, gx = torch.meshgrid(torch.linspace(-1, 1, 6), torch.linspace(-1, 1, 7), indexing="ij")
        coords = torch.stack([gx, gy]).unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        return self.c(torch.cat([x, coords], 1))


def test_torch_compile_backend_with_constants_expanded_to_dynamic_sizes(dev, ct):
    """dynamic=True: values computed from no input (the coordinates) expanded to a SymInt batch
    size; compile()'s trace of the graph ran them concretely and failed at `expand(s, ...)`, so
    the whole graph ran in torch. They are computed once, constants of the compiled graph."""
    torch.manual_seed(0)
    calls = [(torch.randn(n, 3, 6, 7),) for n in (2, 3, 1)]
    _dynamic_backend_matches(ct, _FixedCoords().eval(), calls)


class _DownUp(nn.Module):
    """A transposed convolution back to the input's size (`output_size=x.size()`)."""

    def __init__(self):
        super().__init__()
        self.d = nn.Conv2d(3, 6, 3, 2, 1)
        self.u = nn.ConvTranspose2d(6, 3, 3, 2, 1)

    def forward(self, x):
        return self.u(self.d(x), output_size=x.size())


def test_torch_compile_backend_with_dynamic_output_sizes(dev, ct):
    """dynamic=True: a ConvTranspose2d's `output_size=x.size()` reaches the graph as the output
    padding it implies, computed from the input's sizes; the raised module had those nodes as
    its output_padding and the whole graph ran in torch (a FallbackWarning and a traceback on
    stderr). It is called with the output size again, which compile() lowers."""
    torch.manual_seed(0)
    calls = [(torch.randn(*shape),) for shape in ((1, 3, 15, 16), (2, 3, 17, 14), (1, 3, 16, 16))]
    _dynamic_backend_matches(ct, _DownUp().eval(), calls, same_shape=True)


class _PoolsWithIndices(nn.Module):
    """SegNet's encoder pooling: max pools returning their indices (a module's, F's, the adaptive
    one's), one pair unpooled (MaxUnpool2d: in torch), one returned."""

    def __init__(self, nd):
        super().__init__()
        conv, pool, unpool = ((nn.Conv1d, nn.MaxPool1d, nn.MaxUnpool1d),
                              (nn.Conv2d, nn.MaxPool2d, nn.MaxUnpool2d))[nd - 1]
        self.nd = nd
        self.e = conv(3, 8, 3, padding=1)
        self.p = pool(2, return_indices=True)
        self.u = unpool(2)
        self.d = conv(8, 4, 3, padding=1)

    def forward(self, x):
        y, i = self.p(torch.relu(self.e(x)))
        pool = F.max_pool1d_with_indices if self.nd == 1 else F.max_pool2d
        z, j = pool(y, 3, 2, 1, return_indices=True)
        adaptive = F.adaptive_max_pool1d if self.nd == 1 else F.adaptive_max_pool2d
        a, _ = adaptive(z, 2, return_indices=True)
        return self.d(self.u(y, i)), j, a


@pytest.mark.parametrize("nd", [1, 2])
def test_max_pools_with_indices_lower(dev, ct, nd):
    """Max pooling with return_indices (modules, F.max_pool*d_with_indices and the adaptive
    one) runs on the device (it ran in torch on the host: "non-tensor call_function"): values and
    int64 indices as torch's, the unpooling of its pair (in torch) too."""
    torch.manual_seed(0)
    model = _PoolsWithIndices(nd).eval()
    x = torch.randn(2, 3, *(12, 10)[:nd])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ct.FallbackWarning)  # MaxUnpool runs in torch
        cm = ct.compile(model, x, device=dev, progress=False)
    assert [f.op for f in cm.fallbacks] == [f"MaxUnpool{nd}d"]
    assert sum("(values, indices)" in s.op and not s.host for s in cm.steps) == 3
    for n in (2, 1):
        xn = torch.randn(n, 3, *(12, 10)[:nd])
        got, want = cm(xn), model(xn)
        _close(got[0], want[0])
        assert got[1].dtype == torch.int64 and torch.equal(got[1], want[1])
        _close(got[2], want[2])


def test_forward_hooks_run_on_each_call(dev, ct):
    """Forward hooks and pre-hooks of the user's (on a conv, a BatchNorm, a block of several
    modules) are called on every call with the module's own values, as the model calls them:
    compile() dropped them (the result 1.8 off, no warning). Such a module runs in torch (a
    FallbackWarning names it); prune's weight-computing pre-hook does not count."""
    from torch.nn.utils import prune

    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), block,
                          nn.Conv2d(6, 4, 3)).eval()
    prune.l1_unstructured(model[0], "weight", 0.3)
    calls = []
    model[1].register_forward_hook(lambda m, args, out: out * 2)
    model[4].register_forward_pre_hook(lambda m, args: (args[0] + 1,))
    block.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    x = torch.randn(2, 3, 10, 10)
    with pytest.warns(ct.FallbackWarning, match="forward hooks"):
        cm = ct.compile(model, x, device=dev, progress=False)
    assert sorted(f.op for f in cm.fallbacks) == ["BatchNorm2d", "Conv2d", "Sequential"]
    calls.clear()
    for n in (2, 1):
        xn = torch.randn(n, 3, 10, 10)
        got = cm(xn)
        with torch.no_grad():
            want = model(xn)
        _close(got, want)
    assert calls == [(2, 6, 10, 10), (2, 6, 10, 10), (1, 6, 10, 10), (1, 6, 10, 10)]


class _ScaledWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.register_buffer("scale", torch.ones(4, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(x, self.w * self.scale)


@pytest.mark.parametrize("kind", ["scaled", "pruned"])
def test_weights_computed_from_constants_follow_their_changes(dev, ct, kind):
    """The backend (and compile()) with a conv weight computed from parameters and buffers (a
    scale, prune's weight_orig * weight_mask): folded when the program is lowered, on the
    device, and lowered again after an in-place change of what it reads. The backend's graphs
    held such a weight as a constant of their trace: a change of the scale or the mask left the
    old weight (9 off)."""
    from torch.nn.utils import prune

    torch._dynamo.reset()
    torch.manual_seed(0)
    if kind == "scaled":
        model = _ScaledWeight().eval()
    else:
        model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
        prune.l1_unstructured(model[0], "weight", 0.5)
    x = torch.randn(2, 3, 9, 9)
    made, compiled = _backend_compiled(ct, model)
    try:
        with torch.no_grad(), warnings.catch_warnings(), dev:
            warnings.simplefilter("error", ct.FallbackWarning)
            _close(compiled(x), model(x))
            if kind == "scaled":
                model.scale.mul_(0.5)
            else:
                model[0].weight_mask.zero_()
            _close(compiled(x), model(x))
        assert made and all(not s.host for fn in made for s in fn.compiled_model.steps)
    finally:
        torch._dynamo.reset()


class _StandardisedConv(nn.Conv2d):
    """NFNet's scaled weight standardisation (Brock et al. 2021): the weight normalised over its
    fan-in, `w[0].numel()`, each forward."""

    def forward(self, x):
        w = self.weight
        fan_in = w[0].numel()
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var * fan_in + 1e-4)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_numbers_computed_from_weights_are_folded(dev, ct):
    """A standardised weight's fan-in (`w[0].numel()`, a number of a constant) is folded with the
    weight: it ran on the host, a fallback per layer."""
    torch.manual_seed(0)
    model = nn.Sequential(_StandardisedConv(3, 8, 3, padding=1), nn.ReLU(),
                          _StandardisedConv(8, 4, 3, padding=1)).eval()
    x = torch.randn(2, 3, 8, 8)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    _matches(cm, model, x, torch.randn(1, 3, 6, 6))
    with torch.no_grad():
        model[0].weight.mul_(-1.5)  # lowered again: the fold follows the weight
    _matches(cm, model, x)


class _ConvBnConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), \
            nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv(x))))


def test_changes_to_what_the_forward_calls_raise_as_the_models(dev, ct):
    """A submodule the forward calls deleted (or set to None) after compile(): the model's own
    call raises, and so does the compiled model's (it ran the trace's old module: the old
    result, weights_changed then False). A bad example names the model's own error (it was
    ShapeProp's "ShapeProp error for: node=...", with a traceback on stderr)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    for change, error in (("del", AttributeError), ("none", TypeError)):
        model = _ConvBnConv().eval()
        cm = ct.compile(model, x, device=dev, progress=False)
        if change == "del":
            del model.bn
        else:
            model.bn = None
        with pytest.raises(error):
            model(x)
        with pytest.raises(error, match="'bn'"):
            cm(x)
    with pytest.raises(RuntimeError, match="fails on the example input.*3 channels"):
        ct.compile(_ConvBnConv().eval(), torch.randn(2, 4, 8, 8), device=dev, progress=False)


def test_modules_refuse_non_tensors_and_leave_meta_tensors_to_torch(dev, ct):
    """clconv.torch's modules and converted models: a non-tensor input is torch's TypeError (it
    was an AttributeError from inside), a meta tensor gets torch's shapes (shape inference; it
    was a TypeError blaming the dtype)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(),
                          nn.ConvTranspose2d(8, 4, 2, stride=2)).eval()
    converted = ct.convert(model)
    meta = torch.empty(2, 3, 8, 8, device="meta")
    assert tuple(model(meta).shape) == (2, 4, 12, 12)  # torch's own
    with dev:
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                for bad in (np.zeros((2, 3, 8, 8), np.float32), [1.0], None):
                    with pytest.raises(TypeError, match="must be a torch.Tensor"):
                        converted(bad)
                y = converted(meta)
                assert y.device.type == "meta" and tuple(y.shape) == (2, 4, 12, 12)


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x, scale=1.0, shift=0.0):
        return self.conv(x) * scale + shift


def test_forward_defaults_and_keyword_arguments(dev, ct):
    """A forward with optional arguments compiles from an example without them (it needed the
    example to give every one: "takes 3 input(s), got 1"), and the compiled model takes keyword
    arguments and applies the defaults as the model does; a wrong call is Python's TypeError."""
    torch.manual_seed(0)
    model = _Scaled().eval()
    x = torch.randn(2, 3, 8, 8)
    cm = ct.compile(model, x, device=dev, progress=False)
    with torch.no_grad():
        _close(cm(x), model(x))
        _close(cm(x=x), model(x))
        _close(cm(x, scale=2.0), model(x, scale=2.0))
        _close(cm(x, 0.5), model(x, 0.5))
        _close(cm(x, shift=-1.0), model(x, shift=-1.0))
    for args, kwargs, words in (((x,), {"bad": 1}, "unexpected keyword"),
                                ((x,), {"x": x}, "multiple values"),
                                ((), {}, "missing its input 'x'"),
                                ((x, 1.0, 0.0, 2), {}, "takes 3 input")):
        with pytest.raises(TypeError, match=words):
            cm(*args, **kwargs)


class _Differences(torch.nn.Module):
    """Subtractions of tensors computed in the graph (a - b, number - b, relu(a - b) fused)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        d = torch.relu(a - b)
        return torch.sub(1.5 - d, a.mean(dim=(2, 3), keepdim=True))


def test_subtractions_of_graph_tensors_are_lowered(dev, ct):
    model = _Differences().eval()
    x = torch.randn(2, 3, 9, 7)
    _lowered_with(ct, model, x, "clconv.sub", 3)


class Decoder(nn.Module):
    """A segmentation decoder's upsampling as written in the wild: nn.Upsample (nearest 2x),
    F.interpolate to a skip's size (bilinear), UpsamplingBilinear2d (align_corners=True)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.mix = nn.Conv2d(16, 8, 3, padding=1)
        self.up2 = nn.UpsamplingBilinear2d(scale_factor=2)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        skip = torch.relu(self.enc(x))
        y = self.up(F.max_pool2d(skip, 2))
        y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
        y = torch.relu(self.mix(torch.cat([y, skip], 1)))
        return self.head(self.up2(y))


def test_upsampling_is_lowered(dev, ct):
    torch.manual_seed(0)
    model = Decoder().eval()
    x = torch.randn(2, 3, 22, 18)  # odd sizes: the pooled path upsamples to 10x8, the skip is 11x9
    cm = _lowered_with(ct, model, x, "clconv.interpolate", 3)
    with torch.no_grad():
        other = torch.randn(1, 3, 30, 26)  # another size: the interpolation follows the skip's
        _close(cm(other), model(other))


class GroupNormBlock(nn.Module):
    """A diffusion U-Net's residual block: GroupNorm -> SiLU -> conv, twice, plus the skip."""

    def __init__(self, c=16):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(4, c), nn.Conv2d(c, c, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(8, c, affine=False), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(F.group_norm(h, 2, None, None, 1e-6) + self.n2(h)))
        return x + h


def test_group_norm_is_lowered(dev, ct):
    torch.manual_seed(0)
    model = GroupNormBlock().eval()
    with torch.no_grad():
        model.n1.weight.normal_()
        model.n1.bias.normal_()
    x = torch.randn(2, 16, 9, 7)
    _lowered_with(ct, model, x, "clconv.group_norm", 3)


class WithPReLU(nn.Module):
    """PReLU as a module (one slope per channel, and one for all) and as F.prelu."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act, self.act1 = nn.PReLU(6, init=0.1), nn.PReLU()
        self.w = nn.Parameter(torch.full((6,), -0.3))

    def forward(self, x):
        y = self.act(self.conv(x))
        return F.prelu(self.act1(y - 0.5), self.w)


def test_prelu_is_lowered(dev, ct):
    _lowered_with(ct, WithPReLU().eval(), torch.randn(2, 3, 7, 6), "clconv.prelu", 3)


class SmoothActivations(nn.Module):
    """Mish (YOLOv4's CSP blocks), SELU, CELU and Softplus: after a convolution (fused into its
    store), after a BatchNorm (folded), and standalone after an add (an elementwise pass)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                               nn.Mish())
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)
        self.d = nn.Conv2d(8, 8, 3, padding=1)
        self.soft = nn.Softplus(beta=2.0, threshold=1.5)
        self.celu = nn.CELU(0.5)

    def forward(self, x):
        y = self.a(x)
        z = F.selu(self.b(y)).clamp_min(-1.5) + torch.clamp_max(y, 0.5)
        w = self.celu(self.c(z)) + F.mish(y + z)
        return self.soft(self.d(w)) + F.softplus(w) + torch.selu(w) + F.celu(w, 2.0)


def test_smooth_activations_are_lowered(dev, ct):
    """Each fused into the convolution before it or run as clconv's elementwise op."""
    model = models.randomize(SmoothActivations()).eval()
    x = torch.randn(2, 3, 9, 8) * 3
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    ops = [s.op for s in cm.steps]
    for fused in ("mish", "selu", "celu", "softplus"):
        assert any(op.startswith("clconv.conv2d") and fused in op for op in ops), (fused, ops)
    assert "clconv.add + mish" in ops  # mish(y + z): the add's store
    for alone in ("clconv.softplus", "clconv.selu", "clconv.celu"):
        assert alone in ops, (alone, ops)
    with torch.no_grad():
        _close(cm(x), model(x))


class MathAndShrinks(nn.Module):
    """The shrink activations (modules and functions), logsigmoid, softsign, threshold, the math
    functions abs / exp / log / rsqrt / erf (functions and methods), maximum / minimum, Softmax2d
    and the channel shuffle (module and function)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardshrink(0.3))
        self.b = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Softshrink(0.2))
        self.c = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.LogSigmoid())
        self.d = nn.Conv2d(8, 8, 1)
        self.e = nn.Conv2d(8, 8, 1)
        self.tanhshrink, self.softsign = nn.Tanhshrink(), nn.Softsign()
        self.threshold, self.shuffle, self.sm2d = nn.Threshold(0.1, 2.0), nn.ChannelShuffle(4), \
            nn.Softmax2d()

    def forward(self, x):
        y = self.b(self.a(x))
        z = self.c(y)
        w = torch.exp(self.d(z)) + self.e(y).abs().log() + torch.rsqrt(z.abs() + 1)
        v = torch.maximum(w, y) - torch.minimum(z, 0.5 * y).abs_()
        u = self.sm2d(self.shuffle(self.threshold(v))) + F.channel_shuffle(torch.erf(w), 2)
        return (self.tanhshrink(v) + self.softsign(w) + F.logsigmoid(v) + F.softsign(z)
                + F.hardshrink(v, 0.4) + torch.hardshrink(w) + F.softshrink(z, 0.1) + v.exp()
                + u + F.threshold(z, -0.2, 0.5))


def test_math_functions_and_shrinks_are_lowered(dev, ct):
    """Each fused into the convolution before it or run as clconv's elementwise op; nothing
    falls back to the host."""
    model = models.randomize(MathAndShrinks()).eval()
    x = torch.randn(2, 3, 9, 8)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    ops = [s.op for s in cm.steps]
    for fused in ("hardshrink", "softshrink", "logsigmoid", "exp"):
        assert any(op.startswith("clconv.conv2d") and fused in op for op in ops), (fused, ops)
    for alone in ("clconv.maximum", "clconv.minimum", "clconv.tanhshrink", "clconv.softsign",
                  "clconv.log", "clconv.add + rsqrt",  # (rsqrt(z.abs() + 1): the add's store)
                  "clconv.threshold", "clconv.erf", "channel shuffle", "clconv.softmax"):
        assert any(op.startswith(alone) for op in ops), (alone, ops)
    with torch.no_grad():
        _close(cm(x), model(x))


class Statistics(nn.Module):
    """Variance and standard deviation (old and new signatures), F.normalize, reductions over
    every dim, zeros_like / ones_like / full_like, F.glu / nn.GLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.glu = nn.GLU(dim=-1)

    def forward(self, x):
        y = self.conv(x)
        a = (y - y.mean((2, 3), keepdim=True)) / torch.sqrt(y.var((2, 3), keepdim=True) + 1e-5)
        b = y.std(dim=1, keepdim=True, unbiased=False) + torch.var(y, 1, keepdim=True,
                                                                    correction=0)
        c = F.normalize(y) + F.normalize(y, p=2.0, dim=1, eps=1e-3)
        d = y.mean() + y.sum() * 1e-3 + torch.amax(y) + y.var() + torch.std(y, True)
        e = torch.zeros_like(y) + torch.ones_like(y) * 2 + torch.full_like(y, -0.5)
        return (a + b + c + d + e, y.var(dim=(2, 3)), y.std((2, 3), correction=2),
                F.glu(y, dim=1), self.glu(y))


def test_statistics_are_lowered(dev, ct):
    model = models.randomize(Statistics()).eval()
    x = torch.randn(2, 3, 9, 8)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    ops = " | ".join(s.op for s in cm.steps)
    for part in ("var over the spatial dims", "std over the channels", "normalize over the "
                 "channels", "mean over every dim", "std over every dim", "fill", "glu"):
        assert part in ops, (part, ops)
    with torch.no_grad():
        for got, want in zip(cm(x), model(x)):
            assert got.shape == want.shape
            _close(got, want)
        odd = torch.randn(2, 3, 9, 7)  # nn.GLU's last dim odd: refused as torch refuses it
        with pytest.raises(RuntimeError, match="Halving dimension must be even"):
            model(odd)
        with pytest.raises(RuntimeError, match="Halving dimension must be even"):
            cm(odd)


class TrailingLayerNorms(nn.Module):
    """LayerNorm over the last dims of channels-first tensors: (C, H, W) with the elementwise
    affine parameters, (H, W) without, F.layer_norm over W, and weight without bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.chw = nn.LayerNorm([6, 9, 8])
        self.hw = nn.LayerNorm([9, 8], elementwise_affine=False, eps=1e-3)
        self.w_only = nn.LayerNorm(8, bias=False)
        self.gamma = nn.Parameter(torch.randn(8))

    def forward(self, x):
        y = self.conv(x)
        return (self.chw(y) + self.hw(y * 3 + 1) + F.layer_norm(y, (8,), self.gamma, None, 1e-4)
                + self.w_only(y))


def test_layer_norm_over_trailing_dims_is_lowered(dev, ct):
    model = models.randomize(TrailingLayerNorms()).eval()
    cm = _lowered_with(ct, model, torch.randn(2, 3, 9, 8), "clconv.layer_norm", 4)
    x1 = torch.randn(1, 3, 9, 8) * 5
    with torch.no_grad():
        _close(cm(x1), model(x1))


class AlexNetPaperStem(nn.Module):
    """The AlexNet paper's first two layers: 11x11 stride 4, ReLU, local response normalisation
    (size 5, alpha 1e-4, beta 0.75, k 2), overlapping max pooling, then a two-group 5x5 layer;
    the second LRN as F.local_response_norm."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 11, stride=4, padding=2)
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
        self.conv2 = nn.Conv2d(16, 24, 5, padding=2, groups=2)

    def forward(self, x):
        y = F.max_pool2d(self.lrn(F.relu(self.conv1(x))), 3, 2)
        y = F.relu(self.conv2(y))
        return F.max_pool2d(F.local_response_norm(y, 5, 1e-4, 0.75, 2.0), 3, 2)


def test_local_response_norm_is_lowered(dev, ct):
    model = AlexNetPaperStem().eval()
    _lowered_with(ct, model, torch.randn(2, 3, 67, 67) * 4, "clconv.local_response_norm", 2)


class Heads(nn.Module):
    """Classifier heads that end in a softmax, in each spelling."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(8, 5))
        self.prob = nn.Softmax(dim=1)
        self.logp = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        z = self.body(x)
        return (self.prob(z) + self.logp(z) + F.softmax(z, dim=1) + z.log_softmax(-1)
                + torch.log_softmax(2 * z, 1))


def test_softmax_heads_are_lowered(dev, ct):
    cm = _lowered_with(ct, Heads().eval(), torch.randn(3, 3, 9, 8), "clconv.softmax", 2)
    assert sum(s.op == "clconv.log_softmax" for s in cm.steps) == 3


def _channel_shuffle(x, groups):
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's units (Ma et al. 2018, Fig. 3 c/d): channel split (chunk), a branch of
    1x1 -> depthwise 3x3 -> 1x1, concatenation and the channel shuffle (view, transpose, view);
    the downsampling unit's two strided branches; torch.split and a permute of plain data too."""

    def __init__(self, c=16):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(
            nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h),
            nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU())
        self.down1 = nn.Sequential(nn.Conv2d(c, c, 3, 2, 1, groups=c, bias=False),
                                   nn.Conv2d(c, c, 1, bias=False), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.ReLU(),
                                   nn.Conv2d(c, c, 3, 2, 1, groups=c, bias=False),
                                   nn.Conv2d(c, c, 1, bias=False), nn.ReLU())

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        x = _channel_shuffle(torch.cat((a, self.branch(b)), dim=1), 2)
        x = _channel_shuffle(torch.cat((self.down1(x), self.down2(x)), 1), 2)
        p, q, r = torch.split(x, [5, 11, 16], dim=1)
        return torch.cat([q, r.permute(0, 1, 3, 2), p], 1)


def test_shufflenet_units_are_lowered(dev, ct):
    torch.manual_seed(0)
    model = models.randomize(ShuffleUnit()).eval()
    x = torch.randn(2, 16, 10, 10)
    cm = _lowered_with(ct, model, x, "permute (copy)", 3)
    assert sum(s.op.endswith("(copies)") for s in cm.steps) == 2


def test_peak_counts_the_workspace_the_call_asked_for(dev, ct):
    """The peak counts the column workspace the call needed, not what earlier calls grew the
    device's shared one to."""
    model = models.randomize(models.VGG(0.125)).eval()
    x = torch.randn(2, 3, 64, 64)
    cm = ct.compile(model, x)
    cm(x)
    alone = cm.peak_bytes
    from clconv.runtime.memory import column_buffer

    with dev.lock:  # another call grows the device's column buffer to 64 MiB
        column_buffer(dev, (16 << 20,), np.float32)
    assert dev.workspace.nbytes > 2 * alone
    cm(x)
    assert cm.peak_bytes == alone


def test_groups_found_by_fuzzing_against_torch(ct, dev, monkeypatch):
    """A fused group whose head cannot lower (a transposed convolution with output_size did
    not, before output_size was lowered: made so here) runs each of its nodes (its BatchNorm was
    never computed: KeyError); a BatchNorm1d after an unbatched Conv1d normalises (C, L) as
    torch's (N, C), so it is not folded into the conv (2.0 off)."""
    from clconv.torch_graph.base import Unlowerable
    from clconv.torch_graph.lower_layers import LayerRules
    from tests.test_convert_fused import _TransposedWithSize

    m, x = _TransposedWithSize.made()
    cm = ct.compile(m, x)  # output_size lowered: the chain on the device, BatchNorm folded
    assert cm.fallbacks == []
    with torch.no_grad():
        _close(cm(x), m(x))
    fused = LayerRules.fused

    def refusing(self, group):
        if isinstance(self.modules.get(str(group[0].target)), nn.ConvTranspose2d):
            raise Unlowerable("made unlowerable by the test")
        return fused(self, group)

    monkeypatch.setattr(LayerRules, "fused", refusing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ct.FallbackWarning)
        cm = ct.compile(m, x)
    assert [f.node for f in cm.fallbacks] == ["c"]
    with torch.no_grad():
        _close(cm(x), m(x))
    monkeypatch.undo()
    u = nn.Sequential(nn.Conv1d(5, 5, 1), nn.BatchNorm1d(5)).eval()
    with torch.no_grad():
        u[1].running_mean.copy_(torch.randn(5))
        u[1].running_var.copy_(torch.rand(5) + 0.5)
    x = torch.randn(5, 5)  # unbatched (C, L)
    cm = _compile(ct, u, x)
    with torch.no_grad():
        _close(cm(x), u(x))


class _Flattens(nn.Module):
    """A classifier head and every flatten form (the flattened size from the sizes, not -1)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        y = torch.relu(self.c(x))
        return self.head(y), y.flatten(1), torch.flatten(y, 2), y.flatten(0, 1), y.flatten()


def test_an_empty_batch_through_flatten_keeps_torchs_shapes(dev, ct):
    """N = 0: flatten reshaped to -1, which an empty array resolves to 0 (the Linear after it
    then refused 0 features); torch keeps the flattened size."""
    torch.manual_seed(0)
    model = _Flattens().eval()
    cm = _compile(ct, model, torch.randn(2, 3, 8, 8))
    with torch.no_grad():
        for n in (0, 3):
            x = torch.randn(n, 3, 8, 8)
            for got, want in zip(cm(x), model(x)):
                assert got.shape == want.shape
                if n:
                    _close(got, want)


def test_threads_calling_after_the_weights_changed(dev, ct):
    """Three threads call the compiled model after an in-place weight change: one lowers the
    program again, the others wait for it (they ran the program being replaced, with the old
    weights, while the first one lowered)."""
    import threading

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(2, 3, 10, 10)
    cm = _compile(ct, model, x)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.mul_(1.1)
            want = model(x)
        results = []

        def call():
            for _ in range(3):
                with torch.no_grad():
                    results.append(cm(x))
        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 9
        for got in results:
            _close(got, want)


class _RoundedDivisions(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.c(x) * 3
        return (torch.div(y, 0.7, rounding_mode="floor"),
                y.div(torch.full((4, 1, 1), -0.9), rounding_mode="trunc"),
                torch.div(y, y.abs() + 0.5, rounding_mode="floor"))


def test_divisions_with_a_rounding_mode_are_lowered(dev, ct):
    """torch.div(..., rounding_mode='trunc' / 'floor') ran in torch on the host (a download and
    an upload each); clconv.div takes the mode."""
    torch.manual_seed(0)
    model = _RoundedDivisions().eval()
    x = torch.randn(2, 3, 6, 6)
    cm = _compile(ct, model, x)  # (a fallback fails the test)
    with torch.no_grad():
        for got, want in zip(cm(x), model(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


class _MinMaxReciprocalUnfold(nn.Module):
    """torch.max / min of two tensors, min values over a dim, reciprocal, F.unfold / F.fold:
    each ran in torch on the host (a download and an upload)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        s = torch.sigmoid(y)
        cols = F.unfold(y, (3, 2), dilation=(1, 2), padding=1, stride=(2, 1))
        return (torch.max(y, s), torch.min(y, s), y.max(s * 0.5), y.min(-y),
                torch.min(y, 1)[0], y.min(dim=3, keepdim=True).values,
                torch.reciprocal(y.abs() + 1), (s + 1).reciprocal(), cols,
                F.fold(F.unfold(y, 3, padding=1), (6, 7), 3, padding=1))


def test_min_max_of_two_tensors_reciprocal_and_unfold_are_lowered(dev, ct):
    torch.manual_seed(0)
    model = _MinMaxReciprocalUnfold().eval()
    x = torch.randn(2, 3, 6, 7)
    x[0, 0, 2, 3] = float("nan")  # (propagates as torch's: max / min / unfold keep it)
    cm = _compile(ct, model, x)  # (a fallback fails the test)
    for inp in (x, torch.randn(3, 3, 6, 7)):  # another batch too
        with torch.no_grad():
            for got, want in zip(cm(inp), model(inp)):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


class _Products(nn.Module):
    """Matrix products a CNN meets: a head `x @ w` with a parameter, torch.mm, a non-local
    block's attention (bmm of two computed tensors, softmax, a second product), a product with a
    buffer as a method, and a vector. Each ran in torch on the host."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.w = nn.Parameter(torch.randn(16, 5))
        self.register_buffer("v", torch.randn(20, 6))

    def forward(self, x):
        y = self.c(x)
        f = y.flatten(2)  # (N, 4, 20)
        att = torch.softmax(torch.bmm(f.transpose(1, 2), f), -1)  # (N, 20, 20)
        head = F.adaptive_avg_pool2d(y, 2).flatten(1)
        return (head @ self.w, torch.mm(head, self.w), torch.matmul(f, att), f.matmul(self.v),
                f @ self.v[:, 0])


def test_matrix_products_are_lowered(dev, ct):
    torch.manual_seed(0)
    model = _Products().eval()
    x = torch.randn(2, 3, 4, 5)
    cm = _compile(ct, model, x)  # (a fallback fails the test)
    assert sum(s.op == "clconv.matmul" for s in cm.steps) == 6
    for inp in (x, torch.randn(3, 3, 4, 5)):
        with torch.no_grad():
            for got, want in zip(cm(inp), model(inp)):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        model.w.mul_(-2)  # a changed parameter is followed
        torch.testing.assert_close(cm(x)[0], model(x)[0], rtol=1e-4, atol=1e-4)


class _SlicesNumbersResiduals(nn.Module):
    """Slices whose stop lies before their start (empty, as torch's), 0-d values with numbers and
    0-d buffers (0-d results), and a fused residual add that broadcasts on a later call."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(5, 5)
        self.register_buffer("s", torch.tensor(3.0))

    def forward(self, x, r):
        m = x.mean()
        return (x[:, :, 4:2], x[:, :, -1:-3], x[..., 5:1:2], x[:, :, 3:-3], x[:, 1:, 1::2, -4:-1:2],
                m * 2, 1 - m, -x.amax(), m * self.s, x[0, 0, 0, 0] * 2,
                F.relu(self.c(x) + r), self.fc(x) + r)


def test_empty_slices_zero_d_values_and_broadcast_residuals_as_torch(dev, ct):
    """Found by fuzzing compile(): `x[:, :, 4:2]` gave 2 rows (pyopencl's slicing), `x.mean() * 2`
    a (1,) result (a number's constant uploaded 1-d), and a residual fused on the example's same
    shape raised on a later call where it broadcasts (it is added by clconv.add after the layer
    then)."""
    torch.manual_seed(0)
    model = _SlicesNumbersResiduals().eval()
    example = (torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5))
    cm = _compile(ct, model, example)
    assert cm.fallbacks == []
    assert any("+ residual" in s.op for s in cm.steps)
    for x, r in (example, (torch.randn(2, 3, 5, 5), torch.randn(2, 3, 1, 1)),
                 (torch.randn(1, 3, 7, 5), torch.randn(1, 3, 1, 5))):
        with torch.no_grad():
            got, want = cm(x, r), model(x, r)
        for a, b in zip(got, want):
            assert a.shape == b.shape
            if b.numel():
                _close(a, b)


class _Extremes(nn.Module):
    def forward(self, x):
        return (x.max(), x.min(), torch.max(x), torch.min(x), torch.amin(x, (2, 3)), x.amin(),
                torch.amin(x, 1, keepdim=True), x.amax((2, 3), True))


def test_max_and_min_over_every_element_and_amin_are_lowered(dev, ct):
    """x.max() / x.min() without a dim and torch.amin (they ran on the host): amax's reduction,
    the minimum as -amax(-x); exact, NaN where torch's is."""
    torch.manual_seed(0)
    model = _Extremes().eval()
    x = torch.randn(2, 3, 5, 4)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    nan = x.clone()
    nan[0, 1, 2, 3] = float("nan")
    for inp in (x, torch.randn(1, 3, 2, 7), nan):
        with torch.no_grad():
            for got, want in zip(cm(inp), model(inp)):
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


class _FloorDivisions(nn.Module):
    def __init__(self):
        super().__init__()
        self.u = nn.Unflatten(1, (3, 1))

    def forward(self, x):
        return x // 0.3, 7 // x, torch.floor_divide(x, x * 0.5 + 2), \
            x.view(x.size(0), x.size(1) // 1, -1) // 2, self.u(x), x.unflatten(-1, (2, -1))


def test_floor_division_and_unflatten_are_lowered(dev, ct):
    """`//` and torch.floor_divide of tensors (they ran on the host): clconv.div's 'floor'
    rounding, bitwise torch's; `//` of sizes stays Python. Unflatten (module and method) is a
    reshape."""
    torch.manual_seed(0)
    model = _FloorDivisions().eval()
    x = torch.randn(2, 3, 5, 4) * 10
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    with torch.no_grad():
        for got, want in zip(cm(x), model(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


class _EnableGradBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.b = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        with torch.enable_grad():
            y = self.a(x)
        return self.b(y), y


def test_torch_compile_backend_on_an_enable_grad_block_under_no_grad(dev, ct):
    """A forward's `with torch.enable_grad():` block, called under no_grad: dynamo keeps the
    switches as nodes of the graph, which compile() ran as no-ops (the block's result did not
    require grad where torch's does); such a graph runs in torch."""
    torch.manual_seed(0)
    model = _EnableGradBlock().eval()
    x = torch.randn(2, 3, 9, 9)
    made, compiled = _backend_compiled(ct, model)
    with torch.no_grad():
        want = model(x)
        got = compiled(x)
    assert want[1].requires_grad and got[1].requires_grad and not got[0].requires_grad
    for g, w in zip(got, want):
        _close(g.detach(), w)
    torch._dynamo.reset()


class _SqueezeExcitations(nn.Module):
    """Squeeze-excitation blocks as networks write them: pool module -> conv -> ReLU module ->
    conv -> Hardsigmoid -> `s * x` (MobileNetV3), F.adaptive_avg_pool2d(x, 1) -> conv -> F.silu
    -> conv -> torch.sigmoid -> `x * s` without biases (EfficientNet), one of a single gate for
    every channel and one whose gate is also an output (both kept as four steps)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1), nn.BatchNorm2d(12), nn.ReLU())
        self.pool, self.fc1, self.fc2 = nn.AdaptiveAvgPool2d(1), nn.Conv2d(12, 4, 1), \
            nn.Conv2d(4, 12, 1)
        self.act, self.gate = nn.ReLU(), nn.Hardsigmoid()
        self.fc3, self.fc4 = nn.Conv2d(12, 6, 1, bias=False), nn.Conv2d(6, 12, 1, bias=False)
        self.fc5, self.fc6 = nn.Conv2d(12, 3, 1), nn.Conv2d(3, 12, 1)
        self.fc7, self.fc8 = nn.Conv2d(12, 3, 1), nn.Conv2d(3, 1, 1)

    def forward(self, x):
        y = self.stem(x)
        y = self.gate(self.fc2(self.act(self.fc1(self.pool(y))))) * y
        y = y * torch.sigmoid(self.fc4(F.silu(self.fc3(F.adaptive_avg_pool2d(y, 1)))))
        # (one gate for every channel: broadcast, no such block)
        y = y * torch.sigmoid(self.fc8(torch.relu(self.fc7(F.adaptive_avg_pool2d(y, 1)))))
        s = torch.sigmoid(self.fc6(torch.relu(self.fc5(F.adaptive_avg_pool2d(y, 1)))))
        return y * s, s


def test_squeeze_excitation_blocks_are_one_step(ct, dev):
    """Each squeeze-excitation block whose values only the block reads is one
    clconv.squeeze_excitation step (one launch); values as torch's."""
    torch.manual_seed(0)
    model = models.randomize(_SqueezeExcitations(), seed=3).eval()
    x = torch.randn(2, 3, 15, 13)
    cm = _compile(ct, model, x)
    assert cm.fallbacks == []
    ops = [s.op for s in cm.steps]
    assert sum(op.startswith("clconv.squeeze_excitation") for op in ops) == 2, ops
    assert sum(op.startswith("clconv.adaptive_avg_pool2d") for op in ops) == 2, ops
    for inputs in (x, torch.randn(3, 3, 15, 13)):
        with torch.no_grad():
            got, want = cm(inputs), model(inputs)
        for g, w in zip(got, want):
            _close(g, w)


class _StarArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)

    def forward(self, *xs):
        return self.a(xs[0])


class _Listed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)

    def forward(self, xs):
        return self.a(xs[0]) + self.a(xs[1])


class _OptionalScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)

    def forward(self, x, scale=None):
        y = self.a(x)
        return y if scale is None else y * scale


def test_inputs_the_program_cannot_bind_are_refused(dev, ct):
    """What a fuzz of compile found: a forward of `*xs` bound the tensor itself to xs (xs[0]
    was its first item: a result of the wrong shape, no error), a list or dict input's tensors
    reached no upload (numpy results, or a torch op failing on numpy); each now a TypeError
    saying what to do. An argument left to its default None is traced as an input (`if scale is
    None` then fails): the error says so; one given as a tensor in the example and then left out
    is named, where the program's error named none."""
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(TypeError, match=r"takes \*xs"):
        ct.compile(_StarArgs().eval(), x, progress=False)
    for inputs in (([x, x],), ((x, x),), ({"img": x},)):
        with pytest.raises(TypeError, match="example input 0 is a"):
            ct.compile(_Listed().eval(), inputs, progress=False)
    with pytest.raises(TypeError, match="leaves scale=None to the default"):
        ct.compile(_OptionalScale().eval(), x, progress=False)
    model = _OptionalScale().eval()
    cm = ct.compile(model, (x, torch.tensor(2.0)), progress=False)
    _close(cm(x, torch.tensor(3.0)), _run_model(model, x, torch.tensor(3.0)))
    with pytest.raises(TypeError, match="input 'scale' was a tensor in the example"):
        cm(x)


def _run_model(model, *inputs):
    with torch.no_grad():
        return model(*inputs)
