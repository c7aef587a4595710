"""clconv.torch.convert()'s fused training chains (clconv/torch_train.py): with autograd on, a
converted model runs its traced forward with each conv -> [BatchNorm] -> [+ residual] ->
[activation] run as one autograd Function computed on the device, forward and backward. Checked
against the torch model it came from: outputs, the input's and every parameter's gradient, the
running statistics and num_batches_tracked, and parameters after SGD steps (float32: rtol 1e-3 and
atol 1e-3 of the largest value of each compared tensor -- of the model's largest gradient for
gradients --: batch statistics over few values and three rounded reductions per layer; float64:
1e-9), with torch's own ops recorded to show what no
longer runs, and the cases that stay with torch's modules."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tests.test_convert_fused import Inverted, Plain, _Recorder  # noqa: E402
from clconv.tools.networks import BasicBlock  # noqa: E402


@pytest.fixture(scope="module")
def ct(clconv_mod):
    import clconv.torch as ct

    return ct


def _net(bn=nn.BatchNorm2d, act=nn.ReLU):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), bn(8), act(),
                          nn.MaxPool2d(3, 1, 1), BasicBlock(8, 8), BasicBlock(8, 16, 2),
                          Inverted(16), Plain(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 5))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model.train()


def _close(got, want, rtol=1e-3, scale=None):
    """rtol, and an absolute tolerance of rtol times `scale` (default: want's largest value)."""
    got, want = got.detach().double(), want.detach().double()
    scale = float(want.abs().max()) if scale is None else scale
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=rtol, atol=rtol * max(scale, 1e-30))


def _step(model, x, dev=None):
    """Forward and backward of sum(out * r), r fixed random weights (not sum(out^2): through a
    BatchNorm in train mode its gradient cancels to rounding noise); returns (out, x.grad)."""
    x = x.clone().requires_grad_()
    if dev is None:
        out = model(x)
    else:
        with dev:
            out = model(x)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    (out * r).sum().backward()
    return out, x.grad


def _compare(converted, model, rtol=1e-3):
    """Gradients against the model's largest (a conv bias before a BatchNorm in train mode gets
    a gradient that is zero but for rounding), buffers each against its own."""
    scale = max((float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None),
                default=0.0)
    for (name, a), b in zip(converted.named_parameters(), model.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if b.grad is not None:
            _close(a.grad, b.grad, rtol, scale)
    for (name, a), b in zip(converted.named_buffers(), model.buffers()):
        if a.dtype == torch.int64:
            assert int(a) == int(b), name
        else:
            _close(a, b, rtol)


def _steps_match(converted, model, x, dev, steps=2, between=None):
    """`steps` forward and backward steps of both (`between()` after each converted one) with
    torch's outputs and input gradients, then every gradient and buffer compared."""
    for _ in range(steps):
        want, want_grad = _step(model, x)
        got, got_grad = _step(converted, x, dev)
        if between is not None:
            between()
        _close(got, want)
        _close(got_grad, want_grad)
    _compare(converted, model)


def test_a_training_step_runs_the_chains_on_the_device(ct, dev):
    """Every conv of the network is one fused chain (its BatchNorm on batch statistics, the
    residual add and ReLU / ReLU6 / F.relu / clamp): torch runs no batch_norm, add, relu or clamp
    in the forward, and the output, every gradient and the running statistics are torch's."""
    model = _net()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 12, 10)
    # a first step of both (the converted model traces: the recorder would see fx's calls)
    _step(model, x)
    _step(converted, x, dev)
    for m in (model, converted):
        m.zero_grad()
    want, want_grad = _step(model, x)
    with _Recorder() as rec:
        got, got_grad = _step(converted, x, dev)
    assert converted.forward.fused_train == 10
    ran = set(rec.names)
    for name in ("batch_norm", "relu", "relu_", "relu6", "hardtanh", "add", "__add__",
                 "__iadd__", "clamp"):
        assert name not in ran, (name, sorted(ran))
    _close(got, want)
    _close(got_grad, want_grad)
    _compare(converted, model)


def test_sgd_steps_follow_torchs(ct, dev):
    """Three SGD steps with momentum: parameters and running statistics stay torch's."""
    model = _net()
    converted = ct.convert(copy.deepcopy(model))
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (model, converted)]
    torch.manual_seed(2)
    for _ in range(3):
        x = torch.randn(3, 3, 9, 9)
        for m, opt, d in ((model, opts[0], None), (converted, opts[1], dev)):
            opt.zero_grad()
            _step(m, x, d)
            opt.step()
    for a, b in zip(converted.parameters(), model.parameters()):
        _close(a, b)
    _compare(converted, model)


@pytest.mark.parametrize("variant", ["momentum_none", "no_running_stats", "no_affine",
                                     "frozen_affine", "eval_mode"])
def test_batchnorm_variants(ct, dev, variant):
    """BatchNorm as torch's forward decides: the cumulative average (momentum None), batch
    statistics without running ones, no affine parameters, affine parameters that need no
    gradient, and eval mode with grad on (running statistics; the input's gradient)."""
    bn = {"momentum_none": lambda c: nn.BatchNorm2d(c, momentum=None),
          "no_running_stats": lambda c: nn.BatchNorm2d(c, track_running_stats=False),
          "no_affine": lambda c: nn.BatchNorm2d(c, affine=False)}.get(variant, nn.BatchNorm2d)
    model = _net(bn=bn)
    if variant == "frozen_affine":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
    if variant == "eval_mode":
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.3, 0.3)
                    m.running_var.uniform_(0.5, 1.5)
        model.eval()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 12, 10)
    for _ in range(2):  # twice: momentum None averages over the calls
        want, want_grad = _step(model, x)
        got, got_grad = _step(converted, x, dev)
        _close(got, want)
        _close(got_grad, want_grad)
    assert converted.forward.fused_train == 10
    _compare(converted, model)


def test_activations_whose_gradient_needs_the_input_stay_with_torch(ct, dev):
    """SiLU's gradient needs its input: the chain ends before it (conv + BatchNorm fused, the
    SiLU module runs in torch); results are torch's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.SiLU(),
                          nn.Conv2d(6, 4, 1), nn.LeakyReLU(0.2), nn.Conv2d(4, 4, 3),
                          nn.Hardswish()).train()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 8, 8)
    want, want_grad = _step(model, x)
    got, got_grad = _step(converted, x, dev)  # (traces: the recorder would see fx's calls)
    _close(got, want)
    _close(got_grad, want_grad)
    for m in (model, converted):
        m.zero_grad()
    want, want_grad = _step(model, x)
    with _Recorder() as rec:
        got, got_grad = _step(converted, x, dev)
    assert converted.forward.fused_train == 2  # conv+bn, conv+leaky_relu; the last conv alone
    assert "silu" in set(rec.names) and "hardswish" in set(rec.names)
    _close(got, want)
    _close(got_grad, want_grad)
    _compare(converted, model)


def test_float64_channels_last_and_strided_grouped_convolutions(ct, dev):
    if not dev.fp64:
        pytest.skip(f"{dev.name} has no float64")  # float32 cases run everywhere above
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                          nn.BatchNorm2d(8), nn.Hardtanh(-1.0, 2.0)).double().train()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(3, 4, 11, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    want, want_grad = _step(model, x)
    got, got_grad = _step(converted, x, dev)
    assert converted.forward.fused_train == 2
    assert got.is_contiguous(memory_format=torch.channels_last)
    _close(got, want, 1e-9)
    _close(got_grad, want_grad, 1e-9)
    _compare(converted, model, 1e-9)


def test_conv1d_and_conv3d_chains(ct, dev):
    torch.manual_seed(0)
    for conv, bn, shape in ((nn.Conv1d, nn.BatchNorm1d, (2, 3, 17)),
                            (nn.Conv3d, nn.BatchNorm3d, (2, 3, 5, 6, 4))):
        model = nn.Sequential(conv(3, 5, 3, padding=1), bn(5), nn.ReLU(),
                              conv(5, 5, 3, padding=1, bias=False), bn(5), nn.Tanh()).train()
        converted = ct.convert(copy.deepcopy(model))
        x = torch.randn(*shape)
        want, want_grad = _step(model, x)
        got, got_grad = _step(converted, x, dev)
        assert converted.forward.fused_train == 2
        _close(got, want)
        _close(got_grad, want_grad)
        _compare(converted, model)


def test_what_torch_refuses_it_refuses(ct, dev):
    """Batch statistics of one value a channel, an unbatched input to BatchNorm2d: torch's own
    errors (the chain runs torch's modules); an unbatched conv + activation works as in torch."""
    model = _net()
    converted = ct.convert(copy.deepcopy(model))
    for x, match in ((torch.randn(1, 3, 1, 1), "more than 1 value per channel"),
                     (torch.randn(3, 6, 6), "expected 4D input")):
        with pytest.raises(ValueError, match=match):
            model(x)
        with pytest.raises(ValueError, match=match):
            with dev:
                converted(x)
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.Sigmoid())
    conv = ct.convert(copy.deepcopy(small))
    x = torch.randn(3, 6, 6)
    want, want_grad = _step(small, x)
    got, got_grad = _step(conv, x, dev)
    _close(got, want)
    _close(got_grad, want_grad)
    _compare(conv, small)


def test_saved_output_modified_in_place_is_an_error_as_in_torch(ct, dev):
    """The chain keeps its output for the activation's gradient (as torch's ReLU does): writing
    it in place before backward, outside the model's forward, is torch's error, not a silently
    wrong gradient (in the forward, see the test after this one)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    with dev:
        y = converted(x)
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


class _InPlaceAfter(nn.Module):
    """conv -> BatchNorm -> `first`, then `second` writing that result in place, directly or
    through a view."""

    def __init__(self, first, second, view=False):
        super().__init__()
        self.conv, self.bn, self.first, self.second = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), \
            first, second
        self.view = view

    def forward(self, x):
        y = self.first(self.bn(self.conv(x)))
        if self.view:
            self.second(y.flatten(2))
            return y
        return self.second(y)


@pytest.mark.parametrize("first, second, view", [
    (nn.ReLU6(), nn.LeakyReLU(inplace=True), False),
    (nn.Hardtanh(-0.5, 0.5), nn.SiLU(inplace=True), False),
    (nn.LeakyReLU(0.1), nn.ReLU(inplace=True), False),
    (nn.ReLU6(), nn.ReLU(inplace=True), True),
    (nn.ReLU(), nn.ReLU(inplace=True), False),  # torch's own error: its ReLU keeps its output
    (nn.Sigmoid(), nn.Hardswish(inplace=True), True),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_a_chains_result_written_in_place_later_in_the_forward_as_torch(ct, dev, first, second,
                                                                        view):
    """ReLU6, Hardtanh and LeakyReLU keep their input in torch, so a later in-place write of
    their result trains there: such an activation then stays out of the chain (which would keep
    the result); after ReLU and Sigmoid, which keep their output in torch too, the write is
    torch's error in both."""
    torch.manual_seed(0)
    model = _InPlaceAfter(first, second, view).train()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 8, 8)
    try:
        want, want_grad = _step(model, x)
    except RuntimeError as err:
        assert "inplace operation" in str(err)
        with pytest.raises(RuntimeError, match="inplace operation"):
            _step(converted, x, dev)
        return
    got, got_grad = _step(converted, x, dev)
    _close(got, want)
    _close(got_grad, want_grad)
    _compare(converted, model)


class _ModeBranches(nn.Module):
    """A forward that reads self.training (dropout's flag, a branch) after a chain."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        y = F.dropout(y, 0.5, self.training)
        return y * 2 if self.training else y - 1


@pytest.mark.parametrize("converted_in", ["train", "eval"])
def test_a_forward_reading_the_training_flag_follows_the_mode(ct, dev, converted_in):
    """The traces hold the flag's value at the trace: each is made (and kept) for the modes it
    runs with, so switching train / eval after convert changes the forward as torch's."""
    torch.manual_seed(0)
    model = _ModeBranches()
    getattr(model, converted_in)()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 8, 8)
    for mode in ("eval", "train", "eval", "train"):
        getattr(model, mode)()
        getattr(converted, mode)()
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                torch.manual_seed(1)
                want = model(x)
                with dev:
                    torch.manual_seed(1)
                    got = converted(x)
            _close(got.detach(), want.detach())
    assert converted.forward.fused_train == 1 and converted.forward.fused == 1


def test_no_grad_in_train_mode_runs_the_models_own_forward(ct, dev):
    """Under no_grad in train mode nothing is fused (the inference trace wants eval mode, the
    training one autograd): torch's modules, the running statistics updated as torch's."""
    model = _net()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 12, 10)
    with torch.no_grad():
        want = model(x)
        with dev, _Recorder() as rec:
            got = converted(x)
    _close(got, want)
    # every BatchNorm by torch: no chain ran
    assert rec.names.count("batch_norm") == sum(isinstance(m, nn.BatchNorm2d)
                                                for m in model.modules())
    _compare(converted, model)
    F.relu(got)  # (the result is an ordinary tensor)


def test_work_group_reductions_as_on_gpus(ct, dev, monkeypatch):
    """BatchNorm's per-channel sums by a work-group per channel (local memory; what GPUs run for
    rows of 256 values and more), forced on this device: the same results as torch's."""
    from clconv.ops import channels

    monkeypatch.setattr(channels, "_is_cpu", lambda d: False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                          nn.Conv2d(5, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)).train()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 19, 23)  # rows of 437 values
    want, want_grad = _step(model, x)
    got, got_grad = _step(converted, x, dev)
    assert channels.reduction_group(dev, 19 * 23) > 1
    _close(got, want)
    _close(got_grad, want_grad)
    _compare(converted, model)


def test_retain_graph_and_a_second_backward_as_torch(ct, dev):
    """backward twice through a retained graph accumulates the same gradients as torch; without
    retain_graph the second backward is torch's error (the saved tensors are freed)."""
    model = _net()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 12, 10)
    outs = []
    for m, d in ((model, None), (converted, dev)):
        xx = x.clone().requires_grad_()
        if d is None:
            y = m(xx)
        else:
            with d:
                y = m(xx)
        loss = (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(3))).sum()
        loss.backward(retain_graph=True)
        loss.backward()
        outs.append(xx.grad)
        with pytest.raises(RuntimeError, match="second time|freed"):
            loss.backward()
    _close(outs[1], outs[0])
    _compare(converted, model)


class _DeferredThenTorch(nn.Module):
    """A chain whose result only the next chain reads (deferred: not waited for at its end),
    then a chain that runs module by module (its residual broadcasts, which the kernels do not):
    the deferred work is waited for before it, then its modules read the finished result."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv, self.bn = nn.Conv2d(16, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(self.a(x))) + x.mean((2, 3), keepdim=True))


def test_deferred_chains_are_finished_before_torch_reads_them(ct, dev):
    """Chains read only by chains are waited for with a later chain or at the forward's end:
    outputs, the running statistics after the forward and every gradient are torch's, and
    nothing is left pending after a forward."""
    from clconv import torch_train

    for model, x, deferred in ((_DeferredThenTorch(), torch.randn(4, 3, 48, 40), 1),
                               (_net(), torch.randn(2, 3, 12, 10), 8)):
        torch.manual_seed(0)
        model.train()
        converted = ct.convert(copy.deepcopy(model))

        def nothing_pending():
            assert torch_train._DEFERRED.results is None
        _steps_match(converted, model, x, dev, between=nothing_pending)
        assert converted.forward.deferred_train == deferred


def test_results_synced_by_maps_on_devices_that_may_not_write_host_memory(ct, dev, monkeypatch):
    """The chains' results made the tensors' by a map each (OpenCL's rule), as on a device that
    does not write a USE_HOST_PTR buffer's host memory itself: torch's outputs, gradients and
    running statistics over two steps."""
    from clconv import torch_ops

    monkeypatch.setitem(torch_ops._IN_PLACE, dev, False)
    model = _net()
    _steps_match(ct.convert(copy.deepcopy(model)), model, torch.randn(2, 3, 12, 10), dev)


class _TorchResidual(nn.Module):
    """A deferred chain whose residual is a torch op's result that nothing else holds (the
    trace drops it after the chain: the chain keeps it until its kernels are done), large
    enough to live in its own pages, then a chain reading the deferred result."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        a = F.relu(self.bn1(self.conv1(x)) + torch.tanh(x))
        return F.relu(self.bn2(self.conv2(a)))


def test_a_deferred_chains_operands_live_until_its_kernels_are_done(ct, dev):
    torch.manual_seed(0)
    model = _TorchResidual().train()
    converted = ct.convert(copy.deepcopy(model))
    _steps_match(converted, model, torch.randn(4, 8, 64, 64), dev, steps=3)
    assert converted.forward.fused_train == 2 and converted.forward.deferred_train == 1


class _SharedBatchNorm(nn.Module):
    """One BatchNorm in a chain (a deferred one: only the next chain reads it) and also called
    on its own, on a tensor that no chain made, between the two chains."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        a = F.relu(self.bn(self.conv1(x)))
        side = self.bn(x * 2.0)
        return F.relu(self.bn2(self.conv2(a))) + side


class _BatchNormInTwoChains(nn.Module):
    """One BatchNorm in two chains: the first deferred (only the second reads its result), the
    second not (a torch op reads its result)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.tanh(F.relu(self.bn(self.conv2(F.relu(self.bn(self.conv1(x)))))))


def test_a_chains_batchnorm_called_elsewhere_keeps_torchs_update_order(ct, dev):
    """The running statistics of a BatchNorm that a chain and a torch call both update, or two
    chains (one deferred), follow torch's order of the updates (a chain whose BatchNorm torch
    also calls is waited for at its end)."""
    torch.manual_seed(0)
    model = _SharedBatchNorm().train()
    converted = ct.convert(copy.deepcopy(model))
    _steps_match(converted, model, torch.randn(2, 4, 9, 8), dev)
    assert converted.forward.fused_train == 2 and converted.forward.deferred_train == 0
    model = _BatchNormInTwoChains().train()
    converted = ct.convert(copy.deepcopy(model))
    _steps_match(converted, model, torch.randn(2, 4, 9, 8), dev)
    assert converted.forward.fused_train == 2 and converted.forward.deferred_train == 1


@pytest.mark.parametrize("act", [nn.SiLU, nn.Hardswish, nn.ELU])
def test_a_chain_before_an_in_place_activation_trains(ct, dev, act):
    """Conv -> BatchNorm -> an in-place activation torch runs (YOLOv5's SiLU(inplace=True),
    MobileNetV3's Hardswish): the chain keeps its result only where its backward reads it, so
    the activation may overwrite it, as torch's BatchNorm output; gradients as torch's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), act(inplace=True)).train()
    _steps_match(ct.convert(copy.deepcopy(model)), model, torch.randn(2, 2, 6, 6), dev)


@pytest.mark.parametrize("attr, value", [("stride", (2, 2)), ("padding", (0, 2)),
                                         ("dilation", (2, 2)), ("padding_mode", "circular")])
@pytest.mark.parametrize("chain", ["bn", "relu"])
def test_a_convs_changed_setting_makes_a_new_chain(ct, dev, chain, attr, value):
    """A training chain's plans were kept per input shape: a conv's stride, padding, dilation or
    padding mode changed after a step gave the old geometry's outputs (another shape, or wrong
    values); torch reads them on each call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                          nn.BatchNorm2d(4) if chain == "bn" else nn.ReLU()).train()
    converted = ct.convert(copy.deepcopy(model)).train()
    x = torch.randn(2, 3, 8, 8)
    _step(converted, x, dev)
    _step(model, x)
    for m in (model, converted):
        setattr(m[0], attr, value)
        m.zero_grad()
    want, want_grad = _step(model, x)
    got, got_grad = _step(converted, x, dev)
    assert got.shape == want.shape
    _close(got, want)
    _close(got_grad, want_grad)
    _compare(converted, model)


class _GradModeBlock(nn.Module):
    """A first block under `mode` (torch.no_grad(), ...) in the forward, a second after it."""

    def __init__(self, mode):
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        with self.mode():
            y = self.a(x)
            if self.mode is torch.enable_grad:
                return self.b(y)
        return self.b(y)


@pytest.mark.parametrize("mode", [torch.no_grad, lambda: torch.set_grad_enabled(False)],
                         ids=["no_grad", "set_grad_enabled"])
def test_a_forwards_grad_mode_blocks_hold_in_training(ct, dev, mode):
    """A block of the forward under no_grad in train mode: as torch, neither the input nor the
    block's parameters get gradients (the trace kept nothing of the switch: they did, and an
    optimizer then moved the frozen block); the mode outside is untouched. Under
    inference_mode, torch's error (its inference tensors cannot be saved for backward)."""
    x = torch.randn(2, 3, 9, 9)
    model = _GradModeBlock(torch.inference_mode).train()
    converted = ct.convert(copy.deepcopy(model))
    for m in (model, converted):
        with dev, pytest.raises(RuntimeError, match="Inference tensors"):
            m(x.clone().requires_grad_())
    model = _GradModeBlock(mode).train()
    converted = ct.convert(copy.deepcopy(model))
    assert torch.is_grad_enabled()
    want, want_grad = _step(model, x)
    got, got_grad = _step(converted, x, dev)
    _close(got, want)
    assert want_grad is None and got_grad is None
    _compare(converted, model)
    assert all(p.grad is None for p in converted.a.parameters())


def test_enable_grad_in_a_forward_under_no_grad_as_torch(ct, dev):
    """`with torch.enable_grad():` around an eval model's forward called under no_grad: its
    result requires grad as torch's (the inference trace dropped the switch)."""
    model = _GradModeBlock(torch.enable_grad).eval()
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = model(x)
        with dev:
            got = converted(x)
        assert not torch.is_grad_enabled()
    assert want.requires_grad and got.requires_grad
    _close(got, want)
    # (a no_grad block in an eval forward under no_grad changes nothing: still traced, fused)
    plain = ct.convert(_GradModeBlock(torch.no_grad).eval())
    assert plain.forward.fused == 2
