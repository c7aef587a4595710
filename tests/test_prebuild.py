"""A converted network's first forward with helper processes building its kernels
(clconv/ops/prebuild.py, clconv/torch_prebuild.py): the listing pass records every convolution's
plan arguments and builds nothing, the helpers get the new layers and build them, and the
forward's results are torch's whatever the helpers do (float32: rtol and atol 1e-4 of the
output's scale, the folding's rounding); torch's random numbers are untouched; a network met
before lists nothing; CLCONV_PREBUILD is parsed and obeyed."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty clconv cache folder: no network listed, no 'auto' choice remembered."""
    monkeypatch.setenv("CLCONV_CACHE_DIR", str(tmp_path))
    return tmp_path


class Net(nn.Module):
    """Eight distinct conv -> BatchNorm -> ReLU chains (strided, 1x1, depthwise, residual adds)."""

    def __init__(self):
        super().__init__()
        chans = [3, 8, 12, 16, 16, 24, 24, 32, 32]
        layers = []
        for i, (a, b) in enumerate(zip(chans, chans[1:])):
            k, s, g = (1, 1, 1) if i % 3 == 1 else (3, 2 if i % 3 == 0 else 1, 1)
            if a == b and i % 3 == 2:
                g = a  # depthwise
            layers.append(nn.Sequential(nn.Conv2d(a, b, k, s, k // 2, groups=g, bias=False),
                                        nn.BatchNorm2d(b), nn.ReLU()))
        self.layers = nn.ModuleList(layers)
        self.skips = [a == b and layer[0].stride == (1, 1)
                      for a, b, layer in zip(chans, chans[1:], layers)]

    def forward(self, x):
        for skip, layer in zip(self.skips, self.layers):
            x = layer(x) + x if skip else layer(x)
        return x


def _model():
    torch.manual_seed(0)
    m = Net()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
    return m.eval()


def _close(got, want):
    scale = float(want.detach().abs().max()) or 1.0
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-4,
                               atol=1e-4 * scale)


def test_recording_lists_the_plan_arguments_and_builds_nothing(dev, clconv_mod):
    from clconv.ops import prebuild
    from clconv.runtime.program import programs

    x = np.ones((1, 4, 9, 9), np.float32)
    w = np.ones((6, 4, 3, 3), np.float32)
    builds = programs(dev).builds
    with prebuild.recording() as specs:
        with pytest.raises(prebuild.Recorded):
            clconv_mod.conv2d(x, w, np.zeros(6, np.float32), stride=2, padding=1,
                              activation="relu", algorithm="auto")
    assert programs(dev).builds == builds
    (spec,) = specs
    nd, x_shape, w_shape, b_shape, dtype, stride, padding = spec[:7]
    assert (nd, x_shape, w_shape, b_shape, np.dtype(dtype)) == (2, x.shape, w.shape, (6,),
                                                                np.float32)
    assert spec[10] == "auto" and spec[11] == "relu" and spec[-1] is None
    assert not prebuild.is_recording()  # (and the call computes again)
    y = clconv_mod.conv2d(x, w, stride=2, padding=1)
    assert y.shape == (1, 6, 5, 5)


def test_prebuild_setting(monkeypatch, dev, clconv_mod):
    from clconv.ops import prebuild
    from clconv.runtime import config

    monkeypatch.setenv("CLCONV_PREBUILD", "0")
    assert prebuild.helper_count(dev) == 0
    monkeypatch.setenv("CLCONV_PREBUILD", "2")
    assert prebuild.helper_count(dev) == 2
    monkeypatch.setenv("CLCONV_PREBUILD", "auto")
    cores = len(os.sched_getaffinity(0))
    want = max(0, min(cores - 1, prebuild.MAX_HELPERS)) if dev.kind == "cpu" else 0
    assert prebuild.helper_count(dev) == want
    for bad in ("-1", "two", "1.5"):
        monkeypatch.setenv("CLCONV_PREBUILD", bad)
        with pytest.raises(ValueError, match="CLCONV_PREBUILD"):
            config.prebuild_helpers()
    assert "CLCONV_PREBUILD" in config.VARIABLES


def _spy(monkeypatch):
    """The specs each helper set was sent, and the first forwards' FirstForward objects."""
    from clconv.ops import prebuild

    sent = []
    send = prebuild.Helpers.send

    def spy(self, dev, specs):
        ok = send(self, dev, specs)
        sent.append((ok, self.layers, list(specs), [p.pid for p in self.procs]))
        return ok

    monkeypatch.setattr(prebuild.Helpers, "send", spy)
    return sent


def test_first_forward_with_helpers_is_torchs(cache, monkeypatch, dev, clconv_mod):
    import clconv.torch as ct
    from clconv.ops import prebuild

    monkeypatch.setenv("CLCONV_PREBUILD", "1")
    sent = _spy(monkeypatch)
    model = _model()
    x = torch.randn(3, 3, 20, 20)
    with torch.no_grad():
        want = model(x)
        converted = ct.convert(model)
        _close(converted(x), want)
    ((ok, layers, specs, pids),) = sent
    assert ok and layers == len(specs) == 8 and len(pids) == 1
    # listed on the first item, sent at the batch of three
    assert {s[1][0] for s in specs} == {3}
    assert specs[0][1] == (3, 3, 20, 20) and specs[0][11] == "relu"
    assert (cache / prebuild.NETWORKS_FILE).exists()
    with torch.no_grad():  # the same signature again: no listing
        _close(converted(x), want)
        assert len(sent) == 1
        converted(x[:2])  # a new signature of a network listed before: a new listing
    assert len(sent) == 2


def test_the_listing_pass_leaves_torchs_generator_as_it_was(cache, monkeypatch, dev,
                                                             clconv_mod):
    """A forward drawing random numbers (as a listing pass of it would): the user's draws after
    the first forward are those torch's forward leaves."""
    import clconv.torch as ct
    import clconv.torch_prebuild as tp

    monkeypatch.setenv("CLCONV_PREBUILD", "1")
    converted = ct.convert(_model())
    fused = converted.forward
    key = fused._structure(False)
    fn = fused._traced(False, key)
    draws = []

    def drawing(model, x):
        draws.append(torch.rand(2))
        return fn(model, x)

    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(7)
    with torch.no_grad():
        first = tp.first_forward(drawing, converted, (x,), key)
        y = drawing(converted, x)
    first.done(True)
    after = torch.rand(2)
    torch.manual_seed(7)
    want = (torch.rand(2), torch.rand(2))
    assert len(draws) == 2 and torch.equal(draws[1], want[0]) and torch.equal(after, want[1])
    _close(y, _model()(x))


def test_the_listing_pass_leaves_training_batchnorms_statistics_as_torchs(cache, monkeypatch,
                                                                           dev, clconv_mod):
    """An eval network with a BatchNorm left in train mode, under no_grad: the listing pass of
    its first forward (whose chain of that BatchNorm runs module by module) puts the running
    statistics back, so that after the forward they are torch's."""
    import clconv.torch as ct

    monkeypatch.setenv("CLCONV_PREBUILD", "1")
    sent = _spy(monkeypatch)
    model = _model()
    model.layers[2][1].train()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
        with dev:
            _close(converted(x), want)
    assert len(sent) == 1
    for a, b in zip(converted.buffers(), model.buffers(), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_a_network_listed_before_lists_nothing(cache, monkeypatch, dev, clconv_mod):
    import clconv.torch as ct
    import clconv.torch_prebuild as tp

    monkeypatch.setenv("CLCONV_PREBUILD", "1")
    listed = []
    first = tp.first_forward

    def spy(*args):
        found = first(*args)
        listed.append(found)
        return found

    import clconv.torch_fuse as tf

    monkeypatch.setattr(tf, "first_forward", spy)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want = _model()(x)
        _close(ct.convert(_model())(x), want)
        _close(ct.convert(_model())(x), want)  # another conversion, as a new process's
    assert listed[0] is not None and listed[1] is None
    monkeypatch.setenv("CLCONV_PREBUILD", "0")  # none: no listing at a new signature either
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        _close(ct.convert(_model())(x), _model()(x))
    assert len(listed) == 3 and listed[2] is None


class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def test_no_listing_pass_where_a_module_writes_its_state(cache, monkeypatch, dev, clconv_mod):
    """A submodule that writes its Python state runs whole inside the fused forward (as
    written); the first forward then lists nothing, so that it sees one call, as in torch."""
    import clconv.torch as ct

    monkeypatch.setenv("CLCONV_PREBUILD", "1")
    sent = _spy(monkeypatch)
    model = _model()
    model.layers[3].append(_Counting())  # (a chain's end: the chain itself stays fused)
    x = torch.randn(2, 3, 20, 20)
    converted = ct.convert(model)
    with torch.no_grad():
        want = model(x)
        _close(converted(x), want)
    assert converted.forward.writers == 1 and converted.forward.fused >= 6
    assert model.layers[3][3].calls == 1 and converted.layers[3][3].calls == 1
    assert sent == []


def test_a_failing_listing_pass_changes_nothing(cache, monkeypatch, dev, clconv_mod):
    """A forward whose shape pass raises (here: it refuses the first item alone) runs as without
    helpers, its error (if any) its own."""
    import clconv.torch as ct

    monkeypatch.setenv("CLCONV_PREBUILD", "1")
    sent = _spy(monkeypatch)

    class Batched(Net):
        def forward(self, x):
            if x.shape[0] < 2:
                raise ValueError("batches of two or more")
            return super().forward(x)

    torch.manual_seed(0)
    model = Batched().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
        converted = ct.convert(model)
        _close(converted(x), want)
        with pytest.raises(ValueError, match="two or more"):
            converted(x[:1])
    assert sent == []


def test_helper_builds_the_specs(cache, dev, clconv_mod, tmp_path):
    """A helper process with a payload: exits by itself, having built every spec
    (PoCL's disk cache gets kernels where it is the device); an empty payload: exits at once."""
    from clconv.ops import prebuild

    with prebuild.recording() as specs:
        for k, s in ((3, 1), (1, 1), (3, 2)):
            with pytest.raises(prebuild.Recorded):
                clconv_mod.conv2d(np.ones((2, 8, 12, 12), np.float32),
                                  np.ones((8, 8, k, k), np.float32), None, stride=s,
                                  padding=k // 2, activation="relu6",
                                  residual=np.ones((2, 8, 12 // s, 12 // s), np.float32))
    specs.append(prebuild.linear_spec((2, 64), (16, 64), (16,), np.float32, "relu", None))
    conv, bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
    x = torch.zeros(2, 8, 12, 12)
    specs.append(prebuild.chain_spec(conv, bn, "relu", x, x))  # (a training chain)
    specs.append(prebuild.squeeze_excitation_spec((2, 8, 6, 6), (4, 8, 1, 1), (4,),
                                                  (8, 4, 1, 1), None, "silu", "sigmoid",
                                                  np.float32))
    pocl = tmp_path / "pocl"
    env = dict(os.environ, POCL_CACHE_DIR=str(pocl), PYOPENCL_NO_CACHE="1")
    for payload in (pickle.dumps((dev, specs, os.getpid())), b""):
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-c", prebuild.HELPER], input=payload,
                              env=env, capture_output=True, timeout=300)
        assert done.returncode == 0 and not done.stderr, done.stderr.decode()[-2000:]
        assert time.monotonic() - start < 300
    if "Portable Computing Language" in dev.platform_name:
        assert any(p.suffix == ".so" and p.parent.parent.name.startswith("conv_")
               for p in pocl.rglob("*"))


def test_build_runs_every_shortlisted_algorithm_without_remembering(cache, dev, clconv_mod,
                                                                    monkeypatch):
    """The helper's build of an 'auto' spec launches each candidate once and records no choice."""
    from clconv.ops import autotune, prebuild
    from clconv.ops.geometry import conv_geometry

    monkeypatch.setenv("CLCONV_AUTO", "measure")
    ran = []
    monkeypatch.setattr(autotune, "_TRIALS_ONLY", True)
    measure = autotune.measure

    def spy(dev_, geo, dtype, candidates, run):
        ran.append(list(candidates))
        return measure(dev_, geo, dtype, candidates, run)

    monkeypatch.setattr(autotune, "measure", spy)
    from clconv.ops.conv_select import applicable_algorithms

    shortlisted = 0
    for c, hw, s in ((64, 7, 1), (16, 7, 1), (256, 14, 2)):  # (two, two, one on PoCL's AVX-512)
        spec = (2, (1, c, hw, hw), (c, c, 3, 3), (c,), np.dtype(np.float32), s, 1, 1, 1,
                "zeros", "auto", None, None, None)
        geo = conv_geometry(2, (1, c, hw, hw), (c, c, 3, 3), s, 1, 1, 1, "zeros")
        short = autotune.shortlist(dev, geo, np.float32,
                                   applicable_algorithms(dev, geo, np.float32))[1]
        ran.clear()
        prebuild._build(dev, spec)
        assert autotune.lookup(dev, geo, np.float32) is None
        assert ran == ([short] if len(short) >= 2 else [])
        shortlisted += len(short) >= 2
    if "Portable Computing Language" in dev.platform_name:
        assert shortlisted


def _all_planned(monkeypatch, dev, specs):
    """Every spec's plan is the one the run made (the functional plan cache has it): what the
    helpers built is what the caller ran."""
    import clconv.ops.conv as oc

    def unplanned(*args, **kwargs):
        raise AssertionError(f"a spec the run did not plan: {args[1:4]}")

    with monkeypatch.context() as m:
        m.setattr(oc, "ConvPlan", unplanned)
        for spec in specs:
            oc.cached_conv_plan(dev, *spec)


def test_the_listed_specs_are_the_plans_the_forward_makes(cache, monkeypatch, dev, clconv_mod):
    import clconv.torch as ct

    monkeypatch.setenv("CLCONV_PREBUILD", "1")
    sent = _spy(monkeypatch)
    x = torch.randn(4, 3, 18, 18)
    with torch.no_grad():
        ct.convert(_model())(x)
    ((ok, layers, specs, _),) = sent
    assert ok and layers == 8
    _all_planned(monkeypatch, dev, specs)


class SENet(Net):
    """Net with a squeeze-excitation block after each of its last two chains, then a max pool
    and a global average pool."""

    def __init__(self):
        super().__init__()
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(1) for _ in range(2))
        self.fc1 = nn.ModuleList(nn.Conv2d(32, 8, 1) for _ in range(2))
        self.fc2 = nn.ModuleList(nn.Conv2d(8, 32, 1, bias=False) for _ in range(2))

    def forward(self, x):
        for i, (skip, layer) in enumerate(zip(self.skips, self.layers)):
            x = layer(x) + x if skip else layer(x)
            j = i - len(self.layers) + 2
            if j >= 0:
                s = self.fc2[j](torch.relu(self.fc1[j](self.pools[j](x))))
                x = x * torch.sigmoid(s)
        return F.adaptive_avg_pool2d(F.max_pool2d(x, 2, ceil_mode=True), 1)


def test_squeeze_excitation_blocks_and_pools_are_listed(cache, monkeypatch, dev, clconv_mod):
    """A squeeze-excitation block is listed as its own spec (the plan its forward makes), its
    two convolutions not, and so are the pools; the helpers build them; the first forward's
    results are torch's."""
    import clconv.torch as ct
    from clconv.ops import prebuild

    monkeypatch.setenv("CLCONV_PREBUILD", "1")
    sent = _spy(monkeypatch)
    torch.manual_seed(0)
    model = SENet().eval()
    x = torch.randn(2, 3, 18, 18)
    with torch.no_grad():
        want = model(x)
        _close(ct.convert(model)(x), want)
    ((ok, layers, specs, _),) = sent
    blocks = [s for s in specs if s[0] == "squeeze_excitation"]
    # (both blocks alike: one new layer)
    assert ok and len(specs) == 8 + 2 + 2 and layers == 8 + 1 + 2, specs
    assert specs[-2:] == [prebuild.pool_spec("max", 2, (2, 32, 3, 3), np.float32, {
        "kernel_size": 2, "stride": None, "padding": 0, "dilation": 1, "ceil_mode": True}),
        prebuild.pool_spec("adaptive_avg", 2, (2, 32, 2, 2), np.float32,
                           {"output_size": (1, 1)})]
    for spec in specs[-4:]:
        prebuild._build(dev, spec)  # (what a helper does)
    assert blocks == 2 * [prebuild.squeeze_excitation_spec(
        (2, 32, 3, 3), (8, 32, 1, 1), (8,), (32, 8, 1, 1), None, "relu", "sigmoid",
        np.float32)]


def test_compile_builds_its_convolutions_in_helpers(cache, monkeypatch, dev, clconv_mod):
    import clconv.torch as ct

    from clconv.ops import prebuild

    monkeypatch.setenv("CLCONV_PREBUILD", "1")
    sent = _spy(monkeypatch)
    torch.manual_seed(1)
    model = nn.Sequential(_model(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
                          nn.ReLU()).eval()
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        want = model(x)
        compiled = ct.compile(model, x, progress=False)
        _close(compiled(x), want)
    ((ok, layers, specs, pids),) = sent
    assert ok and layers == 9 and len(pids) == 1
    assert [s.plan_spec for s in compiled.steps if s.plan_spec is not None] == specs
    assert specs[-1] == prebuild.linear_spec((2, 32), (10, 32), (10,), np.float32, "relu", None)
    _all_planned(monkeypatch, dev, specs[:-1])
    with torch.no_grad():  # the same network compiled again (as in a new process): none
        _close(ct.compile(model, x, progress=False)(x), want)
    assert len(sent) == 1


class PreNormed(nn.Module):
    """Net behind a BatchNorm no chain takes (torch's own, in train mode: the listing pass of a
    training step must leave its running statistics and count as they were)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.pre = nn.BatchNorm2d(3)
        self.net = _model()

    def forward(self, x):
        return self.net(self.pre(x))


def test_a_first_training_step_with_helpers_is_torchs(cache, monkeypatch, dev, clconv_mod):
    """convert's autograd forward at its first step: the chains listed (whole batch, nothing
    run, BatchNorm's buffers untouched), the helpers sent each chain (forward and backward
    built), still building through the backward and stopped at the next call; the step's loss,
    gradients and buffers are torch's."""
    import copy

    import clconv.torch as ct

    monkeypatch.setenv("CLCONV_PREBUILD", "1")
    sent = _spy(monkeypatch)
    ref = PreNormed().train()
    converted = ct.convert(copy.deepcopy(ref))
    x = torch.randn(4, 3, 16, 16)
    for m in (ref, converted):
        m(x).square().mean().backward()
    ((ok, layers, specs, pids),) = sent
    assert ok and layers == 8 and all(s[0] == "chain" for s in specs)
    assert specs[0][2] == (4, 3, 16, 16) and specs[0][4][-1] is True  # (BatchNorm in train mode)
    building = converted.forward._building
    assert building is not None and building.helpers.procs
    for (name, a), b in zip(ref.named_parameters(), converted.parameters()):
        scale = float(a.grad.abs().max()) or 1.0
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=name)
    for (name, a), b in zip(ref.named_buffers(), converted.buffers()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    with torch.no_grad():
        converted(x)  # the next call stops them
    assert converted.forward._building is None and building.helpers.procs == []


def test_a_helper_whose_caller_is_gone_stops(cache, dev, clconv_mod, tmp_path):
    """A helper told of a parent that is not its own (its caller gone) builds nothing and exits
    at once: a helper never outlives the process it builds for."""
    from clconv.ops import prebuild

    spec = (2, (1, 8, 12, 12), (8, 8, 3, 3), None, np.dtype(np.float32), 1, 1, 1, 1, "zeros",
            "auto", None, None, None)
    pocl = tmp_path / "pocl"
    env = dict(os.environ, POCL_CACHE_DIR=str(pocl), PYOPENCL_NO_CACHE="1")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", prebuild.HELPER],
                          input=pickle.dumps((dev, [spec] * 50, os.getpid() + 10**6)), env=env,
                          capture_output=True, timeout=120)
    assert done.returncode == 0 and not done.stderr, done.stderr.decode()[-2000:]
    assert time.monotonic() - start < 60
    # (the device's own probe kernel may be there: no convolution's)
    assert not any(p.suffix == ".so" and p.parent.parent.name.startswith("conv_")
               for p in pocl.rglob("*"))
