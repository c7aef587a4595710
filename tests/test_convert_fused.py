"""clconv.torch.convert()'s fused inference forward (clconv/torch_fuse.py): in eval mode under
no_grad a converted model runs its traced forward with each conv -> [BatchNorm] -> [+ residual]
-> [activation] run as one clconv convolution. Checked against the torch model it came from
(float32: rtol 1e-4 and atol 1e-4 of the output's scale, the folding's rounding), with torch's
own ops recorded to show what no longer runs, and every case where the model's own forward must
run instead (training, grad, hooks, changed modules, tracing, residuals the kernel cannot add)."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
import torch.nn.functional as F  # noqa: E402


@pytest.fixture(scope="module")
def ct(clconv_mod):
    import clconv.torch as ct

    return ct


class _Recorder(TorchFunctionMode):
    """The names of the torch functions called inside it."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


# ResNet's BasicBlock as torchvision writes it: one ReLU(inplace=True) called twice, `out +=
# identity`, the downsample computed after the second BatchNorm.
from clconv.tools.networks import BasicBlock as Basic  # noqa: E402


class Inverted(nn.Module):
    """MobileNetV2's skip: x + Sequential(conv, bn, relu6, conv, bn)(x)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c),
                                  nn.ReLU6(), nn.Conv2d(2 * c, c, 1, bias=False),
                                  nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.conv(x)


class Plain(nn.Module):
    """No BatchNorm: conv -> F.relu, conv + residual via torch.add with the conv second, then a
    Tensor-method activation."""

    def __init__(self, c):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.a(x))
        return torch.add(x, self.b(y)).clamp(min=-0.5, max=0.5)


def _net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(3, 1, 1), Basic(8, 8), Basic(8, 16, 2), Inverted(16), Plain(16),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


def _close(got, want):
    want = want.detach()
    np.testing.assert_allclose(got.detach().numpy(), want.numpy(), rtol=1e-4,
                               atol=1e-4 * float(want.abs().max()))


def _input_grads_match(converted, model, x, dev):
    """The input's gradient of sum(model(x)^2) through `converted` (on dev) is torch's."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with dev:
        converted(xa).square().sum().backward()
    model(xb).square().sum().backward()
    np.testing.assert_allclose(xa.grad.numpy(), xb.grad.numpy(), rtol=1e-3,
                               atol=1e-3 * float(xb.grad.abs().max()))


def _run(model, x, dev=None):
    with torch.no_grad():
        if dev is None:
            return model(x)
        with dev:
            return model(x)


def test_residual_blocks_run_as_fused_convolutions(ct, dev):
    """Every conv of the network becomes one fused convolution (BatchNorm, the residual add and
    the ReLU / ReLU6 / clamp after it included): torch runs no batch_norm, add, relu or clamp."""
    model = _net()
    x = torch.randn(2, 3, 12, 10)
    want = _run(model, x)
    converted = ct.convert(model)
    _close(_run(converted, x, dev), want)  # the first call traces
    with _Recorder() as rec:
        got = _run(converted, x, dev)
    _close(got, want)
    assert converted.forward.fused == 10  # every conv: stem 1, blocks 2 + 3 + 2 + 2
    ran = set(rec.names)
    assert converted.forward.pools == 1 and converted.forward.gates == 1
    for name in ("batch_norm", "relu", "relu_", "relu6", "hardtanh", "add", "__add__",
                 "__iadd__", "clamp", "max_pool2d", "adaptive_avg_pool2d"):
        assert name not in ran, (name, sorted(ran))
    assert "linear" in ran  # the rest runs as written


def test_training_grad_and_hooks_run_the_models_own_forward(ct, dev):
    model = _net()
    converted = ct.convert(model)
    x = torch.randn(2, 3, 12, 10)
    # grad enabled in eval mode: gradients as torch's
    _input_grads_match(converted, model, x, dev)
    # a forward hook on a module the fusion would skip: it runs, and sees torch's values
    seen = []
    handle = converted[4].bn2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    _close(_run(converted, x, dev), _run(model, x))
    assert seen == [(2, 8, 12, 10)]
    handle.remove()
    # train mode: BatchNorm's batch statistics, running statistics updated as torch's
    model.train()
    converted.train()
    with torch.no_grad():
        want = model(x)
        with dev:
            got = converted(x)
    _close(got, want)
    for a, b in zip(converted.buffers(), model.buffers()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_changed_modules_are_traced_again(ct, dev):
    """A submodule replaced after convert (another class) makes a new trace; a replaced module
    of the same class is called where it now is."""
    model = _net()
    converted = ct.convert(model)
    x = torch.randn(1, 3, 12, 10)
    _run(converted, x, dev)
    for m in (model, converted):
        m[6] = nn.Identity()  # the Inverted block gone (a new module, in train mode)
    _close(_run(converted, x, dev), _run(model, x))
    assert converted.forward.fused == 8  # a new trace, the Identity's train mode no obstacle
    converted[6].eval()
    _close(_run(converted, x, dev), _run(model, x))
    assert converted.forward.fused == 8
    torch.manual_seed(5)
    head = nn.Linear(16, 5).eval()
    model[10] = head
    converted[10] = copy.deepcopy(head)
    _close(_run(converted, x, dev), _run(model, x))


def _chains_one_by_one(monkeypatch):
    """The chains the fused inference forward runs module by module (their convolutions)."""
    import clconv.torch_fuse as tf

    ran = []
    one_by_one = tf._one_by_one

    def spy(conv, *args):
        ran.append(conv)
        return one_by_one(conv, *args)

    monkeypatch.setattr(tf, "_one_by_one", spy)
    return ran


def test_modules_in_train_mode_keep_the_fused_inference_forward(ct, dev, monkeypatch):
    """Under no_grad, modules in train mode in an eval model (a head assigned after eval(),
    Monte Carlo dropout, a BatchNorm left training) no longer send the whole forward to the
    model's own code: the trace is made with their modes, the chains they do not touch run as
    one convolution each, dropout draws as torch's, and a chain whose BatchNorm trains runs
    module by module on the batch's statistics, its running statistics updated as torch's."""
    torch.manual_seed(3)
    model = _net()
    model[10] = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 5))  # in train mode
    model[8] = nn.AdaptiveAvgPool2d(1)  # in train mode too
    converted = ct.convert(copy.deepcopy(model))
    ran = _chains_one_by_one(monkeypatch)
    x = torch.randn(2, 3, 12, 10)
    _run(converted, x, dev)  # (the first call traces)
    for seed in (1, 2):
        torch.manual_seed(seed)
        want = _run(model, x)
        torch.manual_seed(seed)
        with _Recorder() as rec:
            got = _run(converted, x, dev)
        _close(got, want)
        # the trace's nodes ran (the model's own forward calls torch's pool, adds and ReLUs)
        assert not {"max_pool2d", "adaptive_avg_pool2d", "add", "__iadd__", "relu",
                    "relu_"} & set(rec.names), sorted(set(rec.names))
        assert "dropout" in rec.names
    assert converted.forward.fused == 10 and converted.forward.gates == 1 and ran == []
    # a BatchNorm of one chain trains: that chain alone runs module by module
    for m in (model, converted):
        m[4].bn1.train()
    torch.manual_seed(4)
    want = _run(model, x)
    torch.manual_seed(4)
    _close(_run(converted, x, dev), want)
    assert ran == [converted[4].conv1]
    for a, b in zip(converted.buffers(), model.buffers(), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_deferred_results_are_reused_by_later_forwards(ct, dev, monkeypatch):
    """The inference forward's deferred results (read only by its own clconv nodes) are made by
    its first call and written again by later ones; outputs the caller holds keep their values
    (they are new tensors each call)."""
    import clconv.torch_ops as to

    model = _net()
    converted = ct.convert(model)
    xs = [torch.randn(2, 3, 12, 10) for _ in range(3)]
    made = []
    result_operand = to.result_operand

    def counted(*args):
        made.append(args[0])
        return result_operand(*args)

    monkeypatch.setattr(to, "result_operand", counted)
    ys = [_run(converted, xs[0], dev)]
    first = len(made)
    with dev:
        on_host = to.uses_zero_copy(dev)
    # (the chains, pool and gate whose readers are all clconv nodes)
    assert first == (converted.forward.deferred if on_host else 0) and first >= (8 * on_host)
    made.clear()
    ys += [_run(converted, x, dev) for x in xs[1:]]
    assert made == []
    for x, y in zip(xs, ys, strict=True):
        _close(y, _run(model, x))


def test_result_pool_takes_only_what_nothing_else_holds(ct, dev, monkeypatch):
    """ResultPool gives a kept result again only when neither the tensor nor a view of its
    memory (a tensor view, a numpy array) is held elsewhere; results past its byte bounds are
    made anew."""
    import clconv.torch_ops as to

    pool, like, shape = to.ResultPool(), torch.empty(1), (2, 3, 4)
    with dev:
        r1 = pool.result(shape, like, dev)
        a = r1[0].data_ptr()
        r2 = pool.result(shape, like, dev)  # r1 is held
        b = r2[0].data_ptr()
        assert a != b and isinstance(r2[1], type(r1[1]))
        del r2
        r3 = pool.result(shape, like, dev)
        assert r3[0].data_ptr() == b
        view = r1[0][1:]  # only a view of the first one's memory held
        del r1
        r4 = pool.result(shape, like, dev)
        assert r4[0].data_ptr() not in (a, b)
        array = r3[0].numpy()  # only a numpy array over the second one's memory held
        del r3
        r5 = pool.result(shape, like, dev)
        assert r5[0].data_ptr() not in (a, b, r4[0].data_ptr())
        del view, array, r4, r5
        assert pool.result(shape, like, dev)[0].data_ptr() == a
        assert pool.result(shape, torch.empty(1, dtype=torch.float64), dev)[0].data_ptr() != a

        made = []
        result_operand = to.result_operand
        monkeypatch.setattr(to, "result_operand", lambda *args: made.append(args[0]) or
                            result_operand(*args))
        bounded = to.ResultPool()
        bounded.MAX_RESULT_BYTES, bounded.MAX_BYTES = 4 * 24 - 1, 100  # (float32: 4 bytes)
        for s in (shape, shape, (2, 3, 3), (2, 3, 3), (2, 3, 2), (2, 3, 2), (2, 3, 3)):
            bounded.result(s, like, dev)
        # 24 values: over the result bound, made each time; 18 kept; 12 more: past the pool's
        # bound, which starts again with them
        assert made == [shape, shape, (2, 3, 3), (2, 3, 2), (2, 3, 3)]


def test_nested_modules_replaced_by_their_class_are_fetched_where_they_now_are(ct, dev):
    """The fused forward fetches each module at every call (from the modules' tables, four
    Sequentials deep here): a conv and BatchNorm of a chain, and a module left to torch,
    replaced after convert by others of the same class (the same trace) compute with their own
    weights, in the inference and the autograd forward."""
    from clconv.tools.networks import randomize

    torch.manual_seed(0)

    def block(c):
        return nn.Sequential(nn.Sequential(nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())), nn.Dropout(0.0))

    model = nn.Sequential(block(4), block(4), nn.Sequential(nn.Flatten(), nn.Linear(4 * 36, 3)))
    model = randomize(model).eval()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 4, 6, 6)
    _close(_run(converted, x, dev), _run(model, x))
    traced = converted.forward.fused
    assert traced == 2
    torch.manual_seed(1)
    new = randomize(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4),
                                 nn.Linear(4 * 36, 3)), seed=1).eval()
    for m in (model, converted):  # (copies of each one's own modules: the converted classes)
        conv, bn, linear = (copy.deepcopy(m[1][0][0][0]), copy.deepcopy(m[1][0][0][1]),
                            copy.deepcopy(m[2][1]))
        for mine, theirs in zip((conv, bn, linear), new):
            mine.load_state_dict(theirs.state_dict())
        m[1][0][0][0], m[1][0][0][1], m[2][1] = conv, bn, linear
    _close(_run(converted, x, dev), _run(model, x))
    assert converted.forward.fused == traced
    _input_grads_match(converted, model, x, dev)


@pytest.mark.parametrize("act, change", [
    (nn.LeakyReLU(0.1), lambda m: setattr(m, "negative_slope", 0.3)),
    (nn.Hardtanh(-1.0, 1.0), lambda m: setattr(m, "max_val", 0.25)),
    (nn.ELU(1.0), lambda m: setattr(m, "alpha", 2.0)),
    (nn.Softplus(1.0, 20.0), lambda m: setattr(m, "beta", 3.0)),
])
def test_an_activations_changed_parameter_makes_a_new_trace(ct, dev, act, change):
    """The fused chain's node holds the activation's spec, read when it was traced: a slope,
    bound or beta changed after the first call gives torch's new result."""
    torch.manual_seed(0)
    model = _ResidualAct(act).eval()
    converted = ct.convert(model)
    x = torch.randn(2, 6, 8, 8) * 2.0
    _close(_run(converted, x, dev), _run(model, x))
    assert converted.forward.fused == 1
    for m in (model.act, converted.act):
        change(m)
    _close(_run(converted, x, dev), _run(model, x))


class _ResidualAct(nn.Module):
    """act(bn(conv(x)) + x): the fused forward's chain (a residual: no module-level fold)."""

    def __init__(self, act):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), act

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) + x)


def _count_waits(monkeypatch):
    """The list that each wait of the deferred results (clconv.torch_train's
    make_host_visible of one or more arrays) appends its array count to."""
    import clconv.torch_train as tt

    waits = []
    real = tt.make_host_visible

    def counted(d, arrays):
        if arrays:
            waits.append(len(arrays))
        return real(d, arrays)

    monkeypatch.setattr(tt, "make_host_visible", counted)
    return waits


def test_inference_waits_once_for_what_only_clconv_reads(ct, dev, monkeypatch):
    """A fused convolution or pool whose every user is one too is not waited for: one wait a
    forward serves the network (the host enqueues the next convolutions while the device
    computes), and the results stay torch's."""
    from clconv.torch_ops import uses_zero_copy

    model = _net()
    converted = ct.convert(model)
    x = torch.randn(2, 3, 12, 10)
    want = _run(model, x)
    _close(_run(converted, x, dev), want)  # the first call traces
    # every fused node but the global pool, which torch's flatten reads
    assert converted.forward.deferred == 11
    waits = _count_waits(monkeypatch)
    for _ in range(2):
        _close(_run(converted, x, dev), want)
    # (a device whose memory is not the host's downloads each result instead)
    assert waits == ([12, 12] if uses_zero_copy(dev) else [])


def test_a_deferred_result_is_waited_for_before_torch_reads_it(ct, dev):
    """A chain whose only user is a fused node that then runs in torch (its residual
    broadcasts): the deferred result is complete before torch reads it."""

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.b, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.shift = nn.Parameter(torch.randn(1, 8, 1, 1))
            self.c = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())

        def forward(self, x):
            y = torch.relu(self.bn(self.b(self.a(x))) + self.shift)  # runs in torch
            return F.max_pool2d(self.c(y), 2)

    torch.manual_seed(3)
    model = Mixed().eval()
    converted = ct.convert(model)
    x = torch.randn(2, 3, 24, 20)
    want = _run(model, x)
    for _ in range(3):
        _close(_run(converted, x, dev), want)
    # a, b and c (read by fused nodes; b runs in torch, so is never deferred)
    assert converted.forward.fused == 3 and converted.forward.deferred == 3


def test_residuals_the_kernel_cannot_add_run_in_torch(ct, dev):
    """A residual that broadcasts, one of another dtype, an unbatched input, a BatchNorm without
    running statistics: the chain runs module by module, with torch's results."""

    class Broadcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.shift = nn.Parameter(torch.randn(1, 4, 1, 1))

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)) + self.shift)

    model = nn.Sequential(Broadcast()).eval()
    converted = ct.convert(model)
    x = torch.randn(2, 3, 6, 5)
    _close(_run(converted, x, dev), _run(model, x))
    assert converted.forward.fused == 1
    torch.manual_seed(2)
    plain = nn.Sequential(Plain(3)).eval()  # unbatched: a conv takes it, BatchNorm2d would not
    _close(_run(ct.convert(plain), x[0], dev), _run(plain, x[0]))

    class OtherDtype(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x, r):
            return torch.relu(self.conv(x) + r)

    m2 = OtherDtype().eval()
    c2 = ct.convert(m2)
    r64 = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        want = m2(x, r64)
        with dev:
            got = c2(x, r64)
    assert got.dtype == torch.float64
    _close(got, want)

    nostats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
                            nn.ReLU()).eval()
    _close(_run(ct.convert(nostats), x, dev), _run(nostats, x))


def test_a_conv_is_not_moved_past_an_in_place_write_of_its_input(ct, dev):
    class Writes(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.other = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1)

        def forward(self, x):
            y = x * 1.0
            out = self.conv(y)
            r = self.other(x)
            y.mul_(-1.0)  # after the conv read y: moving the conv past this would change it
            return F.relu(out + r)

    model = Writes().eval()
    converted = ct.convert(model)
    x = torch.randn(2, 3, 6, 5)
    _close(_run(converted, x, dev), _run(model, x))


def test_nothing_is_deferred_where_torch_writes_in_place(ct, dev):
    """An in-place write left in the trace might write what a deferred kernel still reads: every
    fused node then waits for its kernels."""

    class WritesAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            y = x * 1.0
            h = F.relu(self.a(y))  # its only user is the next chain
            y.mul_(-1.0)  # after the conv read y
            return F.relu(self.b(h)) + y

    class WritesWithOut(WritesAfter):
        def forward(self, x):  # out= writes a tensor too
            y = x * 1.0
            h = F.relu(self.a(y))
            torch.add(y, 1.0, out=y)
            return F.relu(self.b(h)) + y

    torch.manual_seed(4)
    for make in (WritesAfter, WritesWithOut):
        model = make().eval()
        converted = ct.convert(model)
        x = torch.randn(2, 3, 16, 12)
        for _ in range(2):
            _close(_run(converted, x, dev), _run(model, x))
        assert converted.forward.fused == 2 and converted.forward.deferred == 0


def test_deepcopy_and_pickle_keep_the_fused_forward(ct, dev, monkeypatch):
    """A deep copy and a pickled copy keep the traces (their functions made again from the
    sources): their first calls trace nothing, since torch.fx's trace patches module calls
    process-wide and would break other threads' calls (convert() traces for that reason)."""
    import clconv.torch_fuse as tf

    model = _net()
    converted = ct.convert(model)
    x = torch.randn(1, 3, 12, 10)
    want = _run(model, x)
    _run(converted, x, dev)
    traces = []
    build = tf.FusedForward._build
    monkeypatch.setattr(tf.FusedForward, "_build", lambda self, training: traces.append(
        training) or build(self, training))
    twin = copy.deepcopy(converted)
    assert twin.forward.model is twin
    _close(_run(twin, x, dev), want)
    buf = io.BytesIO()
    torch.save(converted, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.forward.model is loaded
    _close(_run(loaded, x, dev), want)
    assert loaded.forward.fused == converted.forward.fused == twin.forward.fused == 10
    assert traces == []
    _input_grads_match(loaded, model, x, dev)  # (the autograd trace too)
    assert traces == []


def test_compile_traces_the_models_own_forward(ct, dev):
    """clconv.torch.compile traces a converted model, alone or inside another model, as written
    (the fused forward steps aside while torch.fx traces)."""
    model = _net()
    converted = ct.convert(model)
    x = torch.randn(1, 3, 12, 10)
    _run(converted, x, dev)
    outer = nn.Sequential(converted, nn.ReLU()).eval()
    want = torch.relu(_run(model, x))
    for m in (converted, outer):
        cm = ct.compile(m, x)
        assert cm.fallbacks == []
        got = cm(x) if m is outer else torch.relu(cm(x))
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-3,
                                   atol=2e-3 * float(want.abs().max()))


@pytest.mark.parametrize("nd, args", [
    (2, dict(kernel_size=3, stride=2, padding=1)),
    (2, dict(kernel_size=(2, 3), stride=(2, 1), dilation=(1, 2), ceil_mode=True)),
    (1, dict(kernel_size=2, ceil_mode=True)),
    (3, dict(kernel_size=2, stride=1, padding=1)),
])
def test_max_pooling_runs_in_clconv_as_torch(ct, dev, nd, args):
    """Max pooling (a module, and F.max_pool*d) after a fused conv runs in clconv with torch's
    values (NaN and -inf included); with return_indices it stays torch's."""
    conv = getattr(nn, f"Conv{nd}d")

    class Pools(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = conv(2, 3, 1), getattr(nn, f"MaxPool{nd}d")(**args)
            self.keep = getattr(nn, f"MaxPool{nd}d")(2, return_indices=True)

        def forward(self, x):
            y = self.pool(torch.relu(self.conv(x)))
            z = getattr(F, f"max_pool{nd}d")(x, **args)
            values, indices = self.keep(y)
            return y, z, values, indices

    model = Pools().eval()
    converted = ct.convert(model)
    x = torch.randn(2, 2, *(7, 8, 6)[:nd])
    x[0, 0].view(-1)[3] = float("nan")
    x[1, 1].view(-1)[:5] = float("-inf")
    with torch.no_grad():
        want = model(x)
        with dev:
            got = converted(x)
    assert converted.forward.pools == 2
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)


class _Gates(nn.Module):
    """Squeeze-excitation gates as networks write them (a pool module, F.adaptive_avg_pool2d
    with None, x * s, torch.mul(s, x), x.mul(s)), a spatial gate (N, 1, H, W), 1-d and 3-d
    pools, and a product torch keeps (a float64 operand)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.spatial = nn.Conv2d(8, 1, 3, padding=1)
        self.tail = nn.Conv2d(8, 4, 1)
        self.pool1, self.pool3 = nn.AdaptiveAvgPool1d(3), nn.AdaptiveAvgPool3d((1, 2, None))
        self.scale = nn.Parameter(torch.rand(1, 4, 1, 1, dtype=torch.float64))

    def forward(self, x):
        y = self.stem(x)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(y)))))
        y = y * s
        t = torch.sigmoid(self.fc2(torch.relu(self.fc1(F.adaptive_avg_pool2d(y, (1, None))))))
        y = torch.mul(t, y)
        y = y.mul(torch.sigmoid(self.spatial(y)))
        z = self.tail(y)
        return (z, self.pool1(z.flatten(2)), self.pool3(z.unsqueeze(2)), z * self.scale,
                F.adaptive_avg_pool2d(z, 1).flatten(1))


def test_squeeze_excitation_gates_run_in_clconv_as_torch(ct, dev):
    """Adaptive average pooling and products of two tensors between fused convolutions run in
    clconv (on a device whose memory is the host's), deferred like the convolutions: no wait
    and no torch op inside a squeeze-excitation block. Values, NaN and Inf as torch's."""
    from clconv.torch_ops import uses_zero_copy

    torch.manual_seed(0)
    model = _Gates().eval()
    converted = ct.convert(model)
    x = torch.randn(2, 3, 9, 7)
    x[0, 1, 2, 3], x[1, 0, 0, 0] = float("nan"), float("inf")
    for inputs in (x, torch.randn(3, 3, 5, 6)):
        want = _run(model, inputs)
        with _Recorder() as rec:
            got = _run(converted, inputs, dev)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)
    # the first block as one squeeze_excitation, the second's pool (1, None) and product, the
    # spatial gate's product, the 1-d and 3-d pools, and the last pool; the float64 product stays
    # torch's
    assert converted.forward.gates == 8
    if uses_zero_copy(dev):
        assert rec.names.count("mul") + rec.names.count("__mul__") == 1  # (the float64 one)
        assert "adaptive_avg_pool2d" not in rec.names


class _TransposedWithSize(nn.Module):
    """A transposed convolution called with output_size, then a BatchNorm: the chain convert()
    folds runs unfolded (the call has an argument the fold does not take)."""

    def __init__(self):
        super().__init__()
        self.c = nn.ConvTranspose2d(1, 2, 1, stride=3)
        self.n = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.n(self.c(x, output_size=[7, 8]))

    @classmethod
    def made(cls):
        """An eval instance with running statistics far from the defaults (which would hide a
        skipped BatchNorm within 5e-6), and its input."""
        torch.manual_seed(0)
        m = cls().eval()
        with torch.no_grad():
            m.n.running_mean.copy_(torch.tensor([0.5, -1.0]))
            m.n.running_var.copy_(torch.tensor([4.0, 0.25]))
        return m, torch.randn(1, 1, 3, 3)


def test_fold_chains_found_by_fuzzing_against_torch(ct, dev):
    """A folded chain whose conv did not fold (an extra argument) runs its BatchNorm itself (it
    was skipped: 1.8 off); a Threshold after a conv in the fused inference forward (NameError);
    a one-channel channels_last input gives torch's channels_last result strides."""
    m, x = _TransposedWithSize.made()
    with torch.no_grad():
        want = m(x)
        got = ct.convert(copy.deepcopy(m))(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    t = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Threshold(0.1, -2.0)).eval()
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        np.testing.assert_allclose(ct.convert(copy.deepcopy(t))(x).numpy(), t(x).numpy(),
                                   rtol=1e-5, atol=1e-5)
    one = nn.Conv2d(1, 1, (2, 1), padding=(1, 2))
    x = torch.randn(1, 1, 6, 5).to(memory_format=torch.channels_last)
    assert ct.convert(copy.deepcopy(one))(x).stride() == one(x).stride() == (63, 1, 9, 1)


def _bn(channels, seed):
    """An eval BatchNorm with running statistics and affine parameters far from the defaults."""
    g = torch.Generator().manual_seed(seed)
    m = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        m.running_mean.copy_(torch.randn(channels, generator=g))
        m.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
        m.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        m.bias.copy_(torch.randn(channels, generator=g))
    return m


@pytest.mark.parametrize("change", [
    "bn->identity", "bn->another bn", "relu->sigmoid", "bn->another bn, relu->relu6", "eps"])
def test_a_module_replaced_after_convert_ends_its_chain(ct, dev, change):
    """A chain's BatchNorm or activation replaced after convert (or its eps changed) is what runs:
    the conv kept folding the old ones (0.37 off for an Identity, 3.4 for a slice of the model
    with another BatchNorm, 23 for eps), under no_grad, in the whole model and a slice of it."""
    def made():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8, 1), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()).eval()

    def apply(m):
        if change == "eps":
            m[1].eps = 1.0
            return
        m[1] = {"bn->identity": nn.Identity(), "relu->sigmoid": m[1]}.get(change, _bn(8, 2))
        if change == "relu->sigmoid":
            m[2] = nn.Sigmoid()
        if change.endswith("relu6"):
            m[4] = nn.ReLU6()

    model = made()
    converted = ct.convert(copy.deepcopy(model)).eval()
    x = torch.randn(1, 3, 12, 12)
    with dev, torch.no_grad():
        _close(converted(x), model(x))  # (the fused forward traced and the chain folded)
        apply(model), apply(converted)
        for _ in range(2):
            _close(converted(x), model(x))
            _close(converted[:3](x), model[:3](x))


class AliasedWrites(nn.Module):
    """`a += b` on a tensor another name holds, and on a number (fx's own tracer records both as
    out-of-place adds)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        n = x.size(0)
        m = n
        n += 1  # a new number: m keeps the old one
        y = F.relu(self.c1(x))
        z = self.bn(self.c2(y))
        a = z
        z += y  # writes a's tensor too
        z *= 0.5
        return F.relu(a) * m / n


def test_augmented_assignments_write_as_in_torch(ct, dev):
    """The fused traces record `z += y` as torch runs it, a write of z's tensor that every name
    bound to it sees, and `n += 1` of a number as a new number: eval under no_grad, eval with
    grad, and a training step (input and parameter gradients)."""
    torch.manual_seed(0)
    model = AliasedWrites()
    x = torch.randn(2, 3, 8, 8)
    converted = ct.convert(copy.deepcopy(model))
    model.eval(), converted.eval()
    with dev:
        for _ in range(2):
            _close(_run(converted, x, dev), _run(model, x))
            _close(converted(x), model(x))
        model.train(), converted.train()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        model(xa).square().sum().backward()
        converted(xb).square().sum().backward()
    _close(xb.grad, xa.grad)
    # (c2's bias, before a training-mode BatchNorm, has a gradient of zero up to rounding: the
    # tolerance is of the largest gradient's scale)
    scale = max(float(p.grad.abs().max()) for p in model.parameters())
    for p, q in zip(model.parameters(), converted.parameters()):
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("path", ["convert", "compile"])
def test_a_batchnorm_of_infinite_scale_is_not_folded(path):
    """gamma = Inf (or running_var + eps = 0) folded would multiply the weights by Inf: sums of
    Inf of both signs and the padding's 0 * Inf gave NaN where torch gives an Inf."""
    torch = pytest.importorskip("torch")
    import clconv.torch as ct

    m = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3),
                            torch.nn.ReLU()).eval()
    with torch.no_grad():
        m[1].weight[0] = float("inf")
        m[1].running_var[1] = 0.0
        m[1].eps = 0.0
        m[1].running_mean.fill_(-0.25)
    x = torch.randn(2, 2, 6, 7)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # (numpy's divide by zero: none leaks)
        warnings.simplefilter("ignore", ct.FallbackWarning)
        want = m(x)
        got = (ct.convert(m) if path == "convert" else ct.compile(m, x))(x)
    assert torch.isinf(want).any()
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-4, atol=1e-5)


class _Wrapped(nn.Module):
    """A chain inside a module of the user's own (its forward is not fused: the chain folds)."""

    def __init__(self, seq):
        super().__init__()
        self.seq = seq

    def forward(self, x):
        return self.seq(x) * 2


@pytest.mark.parametrize("wrapped", [False, True], ids=["sequential", "wrapped"])
@pytest.mark.parametrize("where", [0, 1, 2, "global"])
def test_hooks_added_after_convert_see_each_modules_values(ct, dev, where, wrapped):
    """A forward hook registered on a folded conv, its BatchNorm or its activation after
    convert() (or a global one) sees that module's own output, as in torch, not the folded
    chain's; the model's result is torch's either way."""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 2, 3))
    with torch.no_grad():
        seq[1].running_mean.normal_()
        seq[1].running_var.uniform_(0.5, 2)
    model = (_Wrapped(seq) if wrapped else seq).eval()
    converted = ct.convert(model)
    x = torch.randn(1, 3, 8, 8)
    seen = {"torch": [], "clconv": []}
    if where == "global":
        from torch.nn.modules.module import register_module_forward_hook
        record = {"torch": [], "clconv": []}
        side = ["torch"]
        handle = register_module_forward_hook(
            lambda m, i, o: record[side[0]].append(o.detach().clone()))
        try:
            want = _run(model, x)
            side[0] = "clconv"
            got = _run(converted, x, dev)
        finally:
            handle.remove()
        assert len(record["clconv"]) == len(record["torch"])
        for a, b in zip(record["clconv"], record["torch"]):
            _close(a, b)
    else:
        inner = converted.seq if wrapped else converted
        inner[where].register_forward_hook(lambda m, i, o: seen["clconv"].append(o.clone()))
        seq[where].register_forward_hook(lambda m, i, o: seen["torch"].append(o.clone()))
        want, got = _run(model, x), _run(converted, x, dev)
        _close(seen["clconv"][0], seen["torch"][0])
    _close(got, want)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x))) + x


# (where, kind, when): the module hooks on each module of the chain and on its block, registered
# before and after convert(); a global one (no module, registered after)
BACKWARD_HOOKS = [(where, kind, when) for where in ("conv", "bn", "relu", "block")
                  for kind in ("pre", "full", "old") for when in ("before", "after")] + \
    [("conv", "global", "after")]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("where, kind, when", BACKWARD_HOOKS)
def test_backward_hooks_are_called_as_torchs(ct, dev, mode, when, kind, where):
    """A backward hook on a module of a fused chain (or on the block holding one, or a global
    one), registered before or after convert(): called as often as torch calls it, and one that
    scales the gradient changes every gradient as in torch (the fused training forward called
    none of them: gradients 3x off, found by a fuzz; with register_backward_hook's on the block,
    convert() never returned: torch.fx's trace of it loops)."""
    from torch.nn.modules import module as mod

    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _Block(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        base[1].bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 6, 5)
    results = {}
    for side in ("torch", "clconv"):
        model = copy.deepcopy(base)
        calls = []

        def pre(m, grad_output):
            calls.append(1)
            return (grad_output[0] * 3,)

        def full(m, grad_input, grad_output):
            calls.append(1)
            return None if grad_input[0] is None else (grad_input[0] * 3,) + grad_input[1:]

        def register(net):
            module = getattr(net[1], where) if where != "block" else net[1]
            if kind == "pre":
                return module.register_full_backward_pre_hook(pre)
            if kind == "full":
                return module.register_full_backward_hook(full)
            if kind == "old":
                return module.register_backward_hook(full)
            return mod.register_module_full_backward_pre_hook(pre)

        if when == "before":
            register(model)
        if side == "clconv":
            model = ct.convert(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # register_backward_hook's own deprecation warning
            handle = register(model) if when == "after" else None
            getattr(model, mode)()
            xg = x.clone().requires_grad_()
            try:
                with dev:
                    model(xg).square().sum().backward()
            finally:
                if kind == "global":
                    handle.remove()
        results[side] = (len(calls), xg.grad, [p.grad for p in model.parameters()])
    assert results["clconv"][0] == results["torch"][0] > 0
    wants = [results["torch"][1], *results["torch"][2]]
    # (the block's conv bias before its BatchNorm has a gradient of rounding noise in train
    # mode: the tolerance is the gradients' overall scale)
    scale = max(float(w.abs().max()) for w in wants)
    for got, want in zip([results["clconv"][1], *results["clconv"][2]], wants):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-3, atol=1e-5 * scale)


def test_compile_traces_a_model_with_backward_hooks(ct, dev):
    """compile() of a model whose block has register_backward_hook's hook (fx's trace of it
    looped for ever) and a full one on its conv: traced, its result torch's, the hooks kept."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _Block(), nn.Conv2d(4, 2, 1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # register_backward_hook's deprecation warning
        model[1].register_backward_hook(lambda m, gi, go: None)
    model[1].conv.register_full_backward_hook(lambda m, gi, go: None)
    x = torch.randn(1, 3, 6, 5)
    with dev:
        compiled = ct.compile(model, x, progress=False)
        got = compiled(x)
    _close(got, _run(model, x))
    assert len(model[1]._backward_hooks) == len(model[1].conv._backward_hooks) == 1


class _Checkpointed(nn.Module):
    def __init__(self, reentrant, block="conv"):
        super().__init__()
        self.reentrant = reentrant
        first = nn.Conv2d(3, 8, 3, padding=1) if block == "conv" else \
            nn.ConvTranspose2d(3, 8, 3, stride=2, padding=1, output_padding=1)
        self.block = nn.Sequential(first, nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        return self.head(checkpoint(self.block, x, use_reentrant=self.reentrant))


@pytest.mark.parametrize("block", ["conv", "transposed"])
@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointed_blocks_are_recomputed_as_torchs(ct, dev, reentrant, block):
    """torch.utils.checkpoint in a converted model's forward: the block is recomputed in
    backward (its BatchNorm counts two batches, as torch's recomputation makes it), the
    gradients are torch's. The fused training trace went through it (no recomputation, the
    activations kept, one batch counted); a transposed convolution's backward read its saved
    tensors twice, which the non-reentrant checkpoint refuses (a CheckpointError)."""
    torch.manual_seed(0)
    model = _Checkpointed(reentrant, block).train()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    grads = []
    for net in (model, converted):
        xg = x.detach().clone().requires_grad_()
        with dev, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # checkpoint's own notes
            net(xg).square().sum().backward()
        grads.append([xg.grad] + [p.grad for p in net.parameters()])
    assert int(converted.block[1].num_batches_tracked) == int(model.block[1].num_batches_tracked) \
        == 2
    for a, b in zip(converted.buffers(), model.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    scale = max(float(g.abs().max()) for g in grads[0])
    for got, want in zip(*grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-3, atol=1e-5 * scale)


def test_a_float16_chain_names_the_missing_extension(ct, dev):
    """A folded chain of a dtype the device lacks raises its UnsupportedError (it raised
    KeyError: torch.float16)."""
    import clconv

    if dev.fp16:
        pytest.skip(f"{dev.name} has float16")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).half().eval()
    converted = ct.convert(model)
    with pytest.raises(clconv.UnsupportedError, match="float16"):
        _run(converted, torch.randn(1, 3, 8, 8).half(), dev)


@pytest.mark.parametrize("case", ["fresh", "traced again", "module by module"])
def test_calls_from_several_threads(ct, dev, case):
    """Three threads call one converted model at once (and a torch model meanwhile). The fused
    forward was traced at the first call, and torch.fx patches nn.Module calls process-wide while
    it traces: other threads' calls ran into the trace (proxies returned, TraceError, a trace
    holding their calls). convert() traces now; a trace made again after a module changed is
    made by the next call (here in this thread: torch.fx cannot trace while other threads call
    modules). Module by module (a forward hook: the model's own forward), a folded chain's
    BatchNorm passed through the latest folded result of any thread: another thread's conv
    result was normalised twice. Each thread has its own input: the fused forward's reused
    results (ResultPool) are never another running forward's."""
    import threading

    model = _net()
    xs = [torch.randn(2, 3, 12, 10) for _ in range(3)]
    converted = ct.convert(model)
    if case == "traced again":  # a new module class: the next call traces again
        model[2], converted[2] = nn.ReLU6().eval(), nn.ReLU6().eval()
        _run(converted, xs[0], dev)
    elif case == "module by module":  # a forward hook: the model's own forward
        converted[10].register_forward_hook(lambda m, i, o: None)
    wants = [_run(model, x) for x in xs]
    results, errors = [], []

    def call(i):
        try:
            for _ in range(4):
                results.append((i, _run(converted, xs[i], dev)))
                results.append((i, _run(model, xs[i])))  # a plain torch model meanwhile
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 24
    for i, got in results:
        _close(got, wants[i])
    assert converted.forward.fused == 10


def _random_batchnorms(model):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


def test_densenet_joins_norms_and_pools_run_in_clconv_without_a_wait(ct, dev, monkeypatch):
    """DenseNet (clconv.tools.networks): its joins (torch.cat of all the features before), the
    BatchNorm -> ReLU before each convolution (no fold reaches them: they follow a join), its
    transitions' average pools and its lone 3x3 convolutions run as clconv nodes, so that the
    forward waits once, at the global pool that torch's flatten reads; torch's cat, batch_norm,
    avg_pool2d and relu do not run, and the result is torch's."""
    from clconv.tools.networks import DenseNet
    from clconv.torch_ops import uses_zero_copy

    torch.manual_seed(0)
    model = _random_batchnorms(DenseNet((2, 3), 4, 8, 2, 5))
    converted = ct.convert(model)
    x = torch.randn(2, 3, 32, 28)
    want = _run(model, x)
    _close(_run(converted, x, dev), want)  # the first call traces
    fwd = converted.forward
    # convolutions: the stem, 2 a dense layer (5), the transition's; joins: 5 layers' + 2
    # blocks'; BatchNorms: a layer's first (its second folds into its 1x1 convolution), the
    # transition's, the last; 1 average pool
    assert fwd.fused == 1 + 2 * 5 + 1 and fwd.features == 7 + 5 + 1 + 1 + 1
    waits = _count_waits(monkeypatch)
    with _Recorder() as rec:
        got = _run(converted, x, dev)
    _close(got, want)
    ran = set(rec.names)
    if uses_zero_copy(dev):
        assert len(waits) == 1
        for name in ("cat", "batch_norm", "avg_pool2d", "relu", "relu_"):
            assert name not in ran, (name, sorted(ran))


class _Joins(nn.Module):
    """Joins as models write them: torch.cat with a keyword dim, a negative dim, torch.concat, a
    join starting with an earlier join's operands whose result is then written in place (it
    must not be reused), a BatchNorm without running statistics (batch statistics in eval too),
    one without affine parameters, average pools (module and functional, ceil_mode,
    count_include_pad, divisor_override)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Conv2d(3, 4, 3, padding=1) for _ in range(3))
        self.bn_batch = nn.BatchNorm2d(8, track_running_stats=False)
        self.bn_plain = nn.BatchNorm2d(12, affine=False)
        self.pool = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)

    def forward(self, x):
        a, b, c = torch.relu(self.a(x)), self.b(x), self.c(x)  # (a chain: a fused forward)
        j1 = torch.cat([a, b], dim=1)
        j2 = torch.cat((a, b, c), -3)
        j3 = torch.concat([a, b, c, a], 1)
        n1 = F.relu(self.bn_batch(j1))
        n2 = torch.sigmoid(self.bn_plain(j2))
        p = self.pool(n2) + F.avg_pool2d(n2, 2, divisor_override=3)[..., :4, :4].mean()
        j1.mul_(2)  # written after its reader: the joins after it must not start from it
        j4 = torch.cat([a, b, c], 1)
        k1 = torch.cat([b, c], 1)
        c.add_(1)  # an operand written between two joins: the second must not start from k1
        k2 = torch.cat([b, c, a], 1)
        v = a[:, :2]  # a view of a result written after the join that reads it
        k3 = torch.cat([v, b], 1)
        a.mul_(3)
        k4 = torch.cat([v, b, c], 1)
        return n1, p, j3, j4, j1, k1, k2, k3, k4


def test_joins_norms_and_pools_as_models_write_them(ct, dev):
    model = _random_batchnorms(_Joins())
    converted = ct.convert(model)
    x = torch.randn(2, 3, 9, 11)
    want = _run(model, x)
    for _ in range(2):  # traced, then run again
        got = _run(converted, x, dev)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            _close(g, w)
    assert converted.forward.features >= 5


class _UNet(nn.Module):
    """A U-Net (Ronneberger et al. 2015) in small: conv-BN-ReLU pairs, max pools, transposed
    convolutions (one 2x2 / 2, one 3x3 / 2 with output_padding and groups) joined to the skips."""

    def __init__(self, c=(4, 8, 16)):
        super().__init__()

        def pair(ci, co):
            return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1, bias=False), nn.BatchNorm2d(co),
                                 nn.ReLU(inplace=True), nn.Conv2d(co, co, 3, padding=1),
                                 nn.BatchNorm2d(co), nn.ReLU(inplace=True))

        self.enc = nn.ModuleList([pair(3, c[0]), pair(c[0], c[1]), pair(c[1], c[2])])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList([nn.ConvTranspose2d(c[2], c[1], 3, 2, 1, output_padding=1,
                                                    groups=2),
                                 nn.ConvTranspose2d(c[1], c[0], 2, 2)])
        self.dec = nn.ModuleList([pair(2 * c[1], c[1]), pair(2 * c[0], c[0])])
        self.head = nn.Conv2d(c[0], 2, 1)

    def forward(self, x):
        skips = []
        for i, e in enumerate(self.enc):
            x = e(x)
            if i < len(self.enc) - 1:
                skips.append(x)
                x = self.pool(x)
        for u, d in zip(self.up, self.dec):
            x = d(torch.cat([skips.pop(), u(x)], 1))
        return self.head(x)


def test_unet_transposed_convolutions_feed_their_joins_without_a_wait(ct, dev, monkeypatch):
    """A U-Net's transposed convolutions, read only by the joins with the skips, are fused nodes
    (output_padding and groups included): the forward waits once, for the head that torch's
    caller reads, and the result is torch's."""
    from clconv.torch_ops import uses_zero_copy

    torch.manual_seed(0)
    model = _random_batchnorms(_UNet())
    converted = ct.convert(model)
    x = torch.randn(2, 3, 16, 12)
    want = _run(model, x)
    _close(_run(converted, x, dev), want)  # the first call traces
    assert converted.forward.fused == 5 * 2 + 2  # the pairs' chains, the transposed ones
    waits = _count_waits(monkeypatch)
    _close(_run(converted, x, dev), want)
    if uses_zero_copy(dev):
        assert len(waits) == 1


class _WrittenJoins(nn.Module):
    """Joins whose earlier operands or results are written in place in ways the trace sees only
    as in-place ops (a fuzz's finds): through an in-place op's result (`b.relu_()`, an inplace
    module, F.relu(b, True) with the flag by position), `.data`, `.movedim`, a result's
    `.to(its dtype)` (itself), and F.relu(b, True) as the trace's only write."""

    def __init__(self, case):
        super().__init__()
        self.case, self.c, self.r = case, nn.Conv2d(3, 4, 1), nn.ReLU(inplace=True)

    def forward(self, x):
        a = F.relu(self.c(x))  # (a chain: a fused forward)
        b, c = x * 2, x * 3
        if self.case == "result-of-write":
            y = b.relu_()
        elif self.case == "inplace-module":
            y = self.r(b)
        elif self.case == "positional-inplace":
            y = F.relu(b, True)
        elif self.case == "data":
            y = b.data
        else:
            y = b.movedim(1, 1)
        if self.case == "result-alias":
            j1 = torch.cat([a, b], 1)
            j1.to(j1.dtype).mul_(2)
            return j1, torch.cat([a, b, x], 1)
        if self.case == "positional-write":  # the only write (fx passes the flag as inplace=)
            j1 = torch.cat([b, a], 1)
            F.relu(b, True)
            return j1, torch.cat([b, a, c], 1)
        j1 = torch.cat([y, a], 1)
        b.mul_(2)
        return j1, torch.cat([y, a, c], 1)


@pytest.mark.parametrize("case", ["result-of-write", "inplace-module", "positional-inplace",
                                  "data", "movedim", "result-alias", "positional-write"])
def test_a_join_does_not_start_from_one_whose_inputs_were_written(ct, dev, case):
    model = _WrittenJoins(case).eval()
    converted = ct.convert(model)
    x = torch.randn(2, 3, 5, 4)
    want = _run(model, x)
    for _ in range(2):
        for g, w in zip(_run(converted, x, dev), want):
            _close(g, w)


def _randomized(model):
    from clconv.tools.networks import randomize

    torch.manual_seed(0)
    return randomize(model).eval()


def test_convnext_blocks_run_in_clconv_without_a_wait(ct, dev, monkeypatch):
    """ConvNeXt (clconv.tools.networks, the paper's code): each block's permute -> LayerNorm ->
    Linear -> GELU -> Linear -> layer scale -> permute runs as clconv nodes of the channels-first
    data (channel norm, 1x1 convolutions with GELU in the store, a product with the scale), as
    do its residual adds and the stem's and downsamplings' channels-first LayerNorms, so that
    the forward waits once, at the head's mean; torch's permute, layer_norm, linear and gelu run
    only in the head (its LayerNorm and Linear on (N, C)), and the result is torch's."""
    from clconv.tools.networks import ConvNeXt
    from clconv.torch_ops import uses_zero_copy

    model = _randomized(ConvNeXt((1, 2, 1, 1), (8, 16, 24, 32), 5))
    converted = ct.convert(model)
    x = torch.randn(2, 3, 64, 48)
    want = _run(model, x)
    _close(_run(converted, x, dev), want)  # the first call traces
    fwd = converted.forward
    # convolutions: the stem, 5 depthwise, 3 downsamplings; channels-last steps: 5 blocks' 4,
    # 4 LayerNorm2d's; 5 residual adds
    assert fwd.fused == 1 + 5 + 3 and fwd.features == 5 * 4 + 4 + 5
    waits = _count_waits(monkeypatch)
    with _Recorder() as rec:
        got = _run(converted, x, dev)
    _close(got, want)
    if uses_zero_copy(dev):
        assert len(waits) == 1
        counts = {n: rec.names.count(n) for n in ("permute", "layer_norm", "linear", "gelu")}
        assert counts == {"permute": 0, "layer_norm": 1, "linear": 1, "gelu": 0}, counts


class _ChannelsLast(nn.Module):
    """Channels-last runs as models write them: torch.permute with a tuple, negative dims,
    F.layer_norm with a weight only, LayerNorm without bias, Linear without bias and an inplace
    ReLU after it, `y * scale`, a scale that is a buffer, and runs that must stay torch's (a
    LayerNorm over two dims, an intermediate read twice, a (1, 1, 1, C) scale, a run not
    ending in the permute back)."""

    def __init__(self, c=6):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.ln_w = nn.Parameter(torch.rand(c) + 0.5)
        self.norm = nn.LayerNorm(c, bias=False)
        self.fc1 = nn.Linear(c, 2 * c, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(2 * c, c)
        self.register_buffer("scale", torch.rand(c) * 2 - 1)
        self.register_buffer("scale4", torch.rand(1, 1, 1, c))
        self.wide = nn.LayerNorm((5, c))

    def forward(self, x):
        x = self.conv(x)
        y = torch.permute(x, (0, 2, 3, 1))
        y = F.layer_norm(y, (6,), self.ln_w, None, 1e-3)
        y = self.fc2(self.act(self.fc1(self.norm(y))))
        a = (y * self.scale).permute(0, -1, -3, -2)
        b = x.permute(0, -2, -1, 1)
        b = self.wide(b).permute(0, 3, 1, 2)  # a LayerNorm over (W, C): torch's
        c = x.permute(0, 2, 3, 1)
        n = self.norm(c)
        d = (n * self.scale4).permute(0, 3, 1, 2) + n.sum()  # read twice; a (1, 1, 1, C) scale
        e = self.fc2(self.fc1(x.permute(0, 2, 3, 1)))  # no permute back: torch's
        return a + x, b, d, e


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_channels_last_runs_as_models_write_them(ct, dev, dtype, layout):
    from clconv.torch_ops import uses_zero_copy

    if dtype == torch.float64 and not dev.fp64:
        pytest.skip(f"{dev.name} has no float64")
    model = _ChannelsLast().to(dtype).eval()
    converted = ct.convert(model)
    x = torch.randn(2, 3, 5, 5, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    want = _run(model, x)
    for _ in range(2):  # traced, then run again
        with _Recorder() as rec:
            got = _run(converted, x, dev)
        for g, w in zip(got, want):
            # (and torch's memory format: a LayerNorm's run gives channels_last memory, and so
            # do the sums whose first operand it is)
            assert g.shape == w.shape and g.dtype == w.dtype and g.stride() == w.stride()
            _close(g, w)
    # the first run's 5 steps (2 norms, 2 Linears, the scale) and its residual add (the wide
    # LayerNorm's run and the third, whose LayerNorm is read twice, are torch's)
    assert converted.forward.features == 5 + 1
    if uses_zero_copy(dev) and layout == "contiguous":
        # torch's: the wide LayerNorm and the third run's, the last run's two Linears
        assert rec.names.count("layer_norm") == 2 and rec.names.count("linear") == 2


class _RepoLayerNorm(nn.Module):
    """The ConvNeXt repository's LayerNorm: F.layer_norm for channels_last, written out over
    dim 1 for channels_first."""

    def __init__(self, c, data_format="channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.randn(c) * 0.1)
        self.eps, self.data_format, self.normalized_shape = 1e-6, data_format, (c,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class _RepoBlock(nn.Module):
    """The ConvNeXt repository's Block, its drop path of rate 0 an nn.Identity."""

    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = _RepoLayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) * 0.5)
        self.drop_path = nn.Identity()

    def forward(self, x):
        input = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return input + self.drop_path(x)


def test_convnext_blocks_as_its_repository_writes_them(ct, dev, monkeypatch):
    """The repository's blocks after its channels-first stem LayerNorm (written out: torch's
    ops, which read the stem convolution's result from its module's own forward): the drop
    path's nn.Identity is no barrier, and the residual adds, one operand torch's, run in
    clconv; the deferred results are waited for once, where torch's flatten reads the pool."""
    from clconv.torch_ops import uses_zero_copy

    model = nn.Sequential(nn.Conv2d(3, 8, 4, 4), _RepoLayerNorm(8, "channels_first"),
                          _RepoBlock(8), _RepoBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.eval()
    converted = ct.convert(model)
    x = torch.randn(2, 3, 32, 40)
    want = _run(model, x)
    _close(_run(converted, x, dev), want)
    # 4 steps and a residual add a block; the stem LayerNorm's closing `* w + b`: its product
    # is a gate op (fused_mul, as the head's pool), its sum one of the adds
    assert converted.forward.features == 2 * 4 + 2 + 1 and converted.forward.gates == 2
    waits = _count_waits(monkeypatch)
    with _Recorder() as rec:
        got = _run(converted, x, dev)
    _close(got, want)
    if uses_zero_copy(dev):
        assert len(waits) == 1 and "linear" not in rec.names and "permute" not in rec.names


class _Found(nn.Module):
    """What a fuzz of the converted forwards found: a conv's sum with a Python int (no residual
    the kernel adds), a numpy scalar argument in the trace, LayerNorm of a constant pixel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.one = nn.Conv2d(4, 8, 1, bias=False)  # 8 equal channels: each the same sum
        with torch.no_grad():
            self.one.weight.fill_(0.25)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        a = self.conv(x) + x.size(1)
        b = F.layer_norm(F.relu(self.conv(x)), (x.shape[-1],), eps=np.float64(0.1))
        c = self.norm(self.one(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return a, b, c


def test_what_a_fuzz_of_the_converted_forwards_found(ct, dev):
    model = _Found().eval()
    converted = ct.convert(model)
    x = torch.randn(2, 4, 5, 5) + 1000.1
    want = _run(model, x)
    for _ in range(2):
        got = _run(converted, x, dev)
        for g, w in zip(got, want):
            _close(g, w)
            assert g.stride() == w.stride()
    with pytest.raises(RuntimeError, match="view"):  # (channels_last memory, as torch's)
        got[2].view(2, -1)
    # every channel of a pixel the same: torch's LayerNorm gives 0 exactly
    assert float(want[2].abs().max()) == 0.0 and float(got[2].abs().max()) == 0.0


def test_a_layer_scale_of_another_size_raises_torchs_error(ct, dev):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.g = nn.Parameter(torch.ones(5))

        def forward(self, x):
            return (self.conv(x).permute(0, 2, 3, 1) * self.g).permute(0, 3, 1, 2)

    model = Scaled().eval()
    converted = ct.convert(model)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(RuntimeError) as want:
        _run(model, x)
    with pytest.raises(RuntimeError) as got:
        _run(converted, x, dev)
    assert str(got.value) == str(want.value)


class _LayoutsOut(nn.Module):
    """A LayerNorm's channels-last run (channels_last memory in torch) read by clconv's pools,
    BatchNorm, joins and sums, whose results torch code reads: each in torch's memory format."""

    def __init__(self, c=6):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.norm = nn.LayerNorm(c)
        self.bn = nn.BatchNorm2d(c)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.conv(x)
        y = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return (self.pool(y), F.avg_pool2d(y, 2), F.adaptive_avg_pool2d(y, 3), self.bn(y),
                torch.cat([y, y], 1), torch.cat([x, y], 1), x + y, y + x, y * x)


def test_clconv_results_of_channels_last_values_have_torchs_layout(ct, dev):
    model = _random_batchnorms(_LayoutsOut())
    converted = ct.convert(model)
    x = torch.randn(2, 3, 6, 8)
    want = _run(model, x)
    for _ in range(2):
        got = _run(converted, x, dev)
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w)
            assert g.stride() == w.stride(), (i, g.stride(), w.stride())


class _SEBlocks(nn.Module):
    """Two MobileNetV3-style blocks: expand, depthwise, a squeeze-excitation block (its gate
    written `s * x` in the first and `x * s` in the second, as torchvision and others write it),
    project."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16),
                                nn.ReLU())
        self.pool, self.fc1, self.fc2 = nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 8, 1), \
            nn.Conv2d(8, 16, 1)
        self.act, self.gate = nn.ReLU(), nn.Hardsigmoid()
        self.mid = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24),
                                 nn.Hardswish())
        self.fc3, self.fc4 = nn.Conv2d(24, 6, 1, bias=False), nn.Conv2d(6, 24, 1)
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))

    def forward(self, x):
        y = self.dw(self.stem(x))
        y = self.gate(self.fc2(self.act(self.fc1(self.pool(y))))) * y
        y = self.mid(y)
        y = y * torch.sigmoid(self.fc4(F.silu(self.fc3(F.adaptive_avg_pool2d(y, 1)))))
        return self.project(y)


def test_squeeze_excitation_blocks_run_as_one_launch(ct, dev):
    """Each squeeze-excitation block of the inference trace (pool -> 1x1 chain -> 1x1 chain ->
    product) runs as one clconv.squeeze_excitation launch where the device's memory is the
    host's, values and NaN as torch's, weights updated in place read again; the four steps as
    before where the block changed (a module replaced by one of 3x3) and torch's modules with
    hooks or autograd."""
    from clconv.ops import squeeze_excitation as se
    from clconv.torch_ops import uses_zero_copy

    torch.manual_seed(0)
    model = _SEBlocks().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    converted = ct.convert(model)
    x = torch.randn(2, 3, 14, 12)
    x[1, 2, 3, 4] = float("nan")  # (the block's mean spreads it over the whole sample)
    launches = []
    original = se.SqueezeExcitationPlan.enqueue

    def spy(plan, arrays, out):
        launches.append(plan.label)
        return original(plan, arrays, out)

    def check(inputs, blocks):
        launches.clear()
        with torch.no_grad():
            want = model(inputs)
            with dev:
                got = converted(inputs)
        np.testing.assert_array_equal(torch.isnan(got).numpy(), torch.isnan(want).numpy())
        finite = torch.isfinite(want)
        assert finite.any()
        _close(got[finite], want[finite])
        assert len(launches) == (blocks if uses_zero_copy(dev) else 0), launches

    se.SqueezeExcitationPlan.enqueue = spy
    try:
        check(x, 2)
        assert converted.forward.gates == 2
        check(torch.randn(3, 3, 9, 9), 2)  # another input size and batch
        with torch.no_grad():  # weights written in place (the converted copy's): read again
            for m in (model, converted):
                m.fc2.weight.mul_(-2.0)
                m.fc3.weight.add_(0.25)
        check(x, 2)
        seen = []
        handle = converted.fc1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        check(x, 0)  # a module with hooks: the model's own forward, each module its own
        assert seen == [(2, 8, 1, 1)]
        handle.remove()
        check(x, 2)
        launches.clear()
        with torch.enable_grad():
            _close(converted(x[:1]), model(x[:1]))
        assert not launches  # autograd: torch's modules
        # not a 1x1 convolution now (of the converted class: the same trace runs)
        model.fc3 = nn.Conv2d(24, 6, 3, padding=1, bias=False)
        converted.fc3 = type(converted.fc3)(24, 6, 3, padding=1, bias=False).eval()
        converted.fc3.load_state_dict(model.fc3.state_dict())
        check(x, 1)
    finally:
        se.SqueezeExcitationPlan.enqueue = original


class _Tap(nn.Module):
    """Keeps its input (a feature map for later use) and counts its calls."""

    def __init__(self):
        super().__init__()
        self.kept, self.calls = None, 0

    def forward(self, x):
        self.kept = x
        self.calls += 1
        return x


class _WritesState(nn.Module):
    """A network whose forward writes Python state: the root's attribute, a tap submodule's,
    and a list the root holds."""

    def __init__(self, where):
        super().__init__()
        self.where = where
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.tap = _Tap()
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.feat, self.feats = None, []

    def forward(self, x):
        y = self.a(x)
        if self.where == "tap":
            y = self.tap(y)
        elif self.where == "root":
            self.feat = y
        else:
            self.feats.append(y)
        return self.b(y)


@pytest.mark.parametrize("where", ["tap", "root", "list"])
def test_forwards_writing_their_state_write_it_on_every_call(ct, dev, where):
    """fx runs a forward once, at its trace, and records no write of a module's Python state:
    the converted model kept an fx proxy in `self.feat` (or its list, or the tap's attribute)
    and no call wrote it again. The module that writes now runs as written (a submodule whole
    inside the fused forward, whose other chains stay fused; the root: its own forward), in
    eval under no_grad, with grad and in train mode, each call writing once as torch's."""
    from torch.fx import Proxy

    torch.manual_seed(0)
    model = _WritesState(where).eval()
    converted = ct.convert(copy.deepcopy(model))
    for step, x in enumerate((torch.randn(2, 3, 6, 6), torch.randn(1, 3, 5, 7)), 1):
        want = _run(model, x)
        got = _run(converted, x, dev)
        _close(got, want)
        kept = {"tap": lambda m: m.tap.kept, "root": lambda m: m.feat,
                "list": lambda m: m.feats[-1]}[where]
        assert isinstance(kept(converted), torch.Tensor) and not isinstance(kept(converted),
                                                                             Proxy)
        _close(kept(converted), kept(model))
        assert converted.tap.calls == model.tap.calls
        assert len(converted.feats) == len(model.feats) == (step if where == "list" else 0)
    # the rest stays fused where only the tap writes
    assert converted.forward.fused == (2 if where == "tap" else 0)
    with dev:
        converted(x).sum().backward()  # the autograd trace as well
    assert not isinstance(kept(converted), Proxy)
    converted.train()
    with dev:
        converted(x).sum().backward()
    assert not isinstance(kept(converted), Proxy)
    from clconv.torch_graph.tracing import _MODULE_SETATTR

    assert nn.Module.__setattr__ is _MODULE_SETATTR  # (swapped only while a trace runs)


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_autocast_rounds_as_torchs(ct, dev, low):
    """Under torch.autocast a converted model's convolutions (and clconv.torch's modules) round
    their operands to autocast's dtype as torch's do, compute from those values in float32 and
    return autocast's dtype: a bfloat16 input made by an autocast Linear was refused, a float32
    one gave float32. Chains run module by module there (each as torch's under autocast), with
    grad too, gradients reaching the float32 parameters; float64 stays float64; a compiled model
    runs the model in torch there (a FallbackWarning)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.Unflatten(1, (2, 4, 4)),
                        nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.ConvTranspose2d(6, 3, 2, stride=2),
                        nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")).eval()
    converted = ct.convert(copy.deepcopy(net))
    x = torch.randn(2, 4)
    for grad in (False, True):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=low), dev:
            want, got = net(x), converted(x)
        assert got.dtype == want.dtype == low
        # (bfloat16: the same roundings; float16 keeps more bits, where the sums' order shows)
        np.testing.assert_allclose(got.detach().float().numpy(), want.detach().float().numpy(),
                                   rtol=0, atol=4e-3 * float(want.detach().float().abs().max()))
    converted.train(), net.train()
    with torch.autocast("cpu", dtype=low), dev:
        losses = [m(x).float().square().mean() for m in (net, converted)]
    for loss in losses:
        loss.backward()
    # (a scale over every gradient: the bias before a BatchNorm gets rounding noise only)
    scale = max(float(p.grad.abs().max()) for p in net.parameters())
    for (name, p), q in zip(net.named_parameters(), converted.parameters()):
        assert q.grad.dtype == torch.float32, name
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=0, atol=2e-2 * scale,
                                   err_msg=name)
    # clconv.torch's modules alone; float64 as autocast leaves it
    conv = ct.Conv2d(2, 3, 3).double()
    with torch.autocast("cpu", dtype=low), dev:
        y64 = conv(torch.randn(1, 2, 5, 5, dtype=torch.float64))
        y = ct.ConvTranspose1d(2, 3, 3)(torch.randn(1, 2, 5))
    assert y64.dtype == torch.float64 and y.dtype == low
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU()).eval()
    image = torch.randn(1, 2, 6, 6)
    with dev:
        compiled = ct.compile(model, image, progress=False)
    with torch.autocast("cpu", dtype=low), torch.no_grad():
        with pytest.warns(ct.FallbackWarning, match="autocast"):
            out = compiled(image)
        assert out.dtype == low and torch.equal(out, model(image))
