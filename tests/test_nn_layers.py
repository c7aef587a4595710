"""clconv.nn's layers around the convolutions (Linear, pooling, BatchNorm, activations, Flatten,
Sequential, `activation=` on Conv and Linear) against torch.nn and its autograd: forward, backward
(input and parameter gradients), train()/eval(), running statistics, state_dict round trips with
torch.nn.Sequential, and that a Sequential keeps its activations on the device."""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import pytest
from helpers import import_torch, random_array
from tolerance import assert_close


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _dtype(dev):
    return np.float64 if dev.fp64 else np.float32


def _copy_params(ours, theirs, torch):
    """torch layer <- our layer's state (same keys)."""
    theirs.load_state_dict({k: torch.as_tensor(v) for k, v in ours.state_dict().items()})


def _check(ours, theirs, x, rng, dtype, torch, magnitude=10.0, reduction=64):
    """forward and backward of `ours` against `theirs` (torch, autograd) on x."""
    xt = torch.tensor(x, requires_grad=True)
    y = ours(x)
    yt = theirs(xt)
    assert isinstance(y, np.ndarray) and y.dtype == dtype
    assert_close(y, yt.detach().numpy(), dtype, reduction=reduction, magnitude=magnitude)
    g = random_array(rng, y.shape, dtype)
    gx = ours.backward(g)
    yt.backward(torch.from_numpy(g))
    assert_close(gx, xt.grad.numpy(), dtype, reduction=reduction, magnitude=magnitude)
    ours_grads = ours.grad_dict()
    for name, p in theirs.named_parameters():
        assert_close(ours_grads[name], p.grad.numpy(), dtype, reduction=reduction * 16,
                     magnitude=magnitude, err_msg=name)


def _check_activation(ours, conv, act, x, rng, dtype, torch, input_reduction):
    """`ours` (a layer built with activation=) against torch's Sequential(conv, act) given ours'
    parameters: the output and the gradients of x, the weight and the bias."""
    theirs = torch.nn.Sequential(conv, act).to(torch.float64 if dtype == np.float64
                                               else torch.float32)
    _copy_params(ours, conv, torch)
    xt = torch.tensor(x, requires_grad=True)
    y, yt = ours(x), theirs(xt)
    assert_close(y, yt.detach().numpy(), dtype, reduction=27, magnitude=10)
    g = random_array(rng, y.shape, dtype)
    gx = ours.backward(g)
    yt.backward(torch.from_numpy(g))
    assert_close(gx, xt.grad.numpy(), dtype, reduction=input_reduction, magnitude=10)
    grads = ours.grad_dict()
    for name in ("weight", "bias"):
        assert_close(grads[name], getattr(conv, name).grad.numpy(), dtype, reduction=200,
                     magnitude=10, err_msg=name)


LAYERS = {  # name: (clconv layer, torch layer, input shape)
    "ReLU": (lambda nn, dt: nn.ReLU(), lambda tnn: tnn.ReLU(), (2, 3, 4, 5)),
    "ReLU6": (lambda nn, dt: nn.ReLU6(), lambda tnn: tnn.ReLU6(), (2, 3, 4, 5)),
    "SiLU": (lambda nn, dt: nn.SiLU(), lambda tnn: tnn.SiLU(), (2, 3, 4, 5)),
    "GELU": (lambda nn, dt: nn.GELU(), lambda tnn: tnn.GELU(), (2, 3, 4, 5)),
    "GELU-tanh": (lambda nn, dt: nn.GELU("tanh"), lambda tnn: tnn.GELU("tanh"), (4, 7)),
    "Sigmoid": (lambda nn, dt: nn.Sigmoid(), lambda tnn: tnn.Sigmoid(), (2, 3, 4, 5)),
    "Tanh": (lambda nn, dt: nn.Tanh(), lambda tnn: tnn.Tanh(), (2, 3, 4, 5)),
    "Hardswish": (lambda nn, dt: nn.Hardswish(), lambda tnn: tnn.Hardswish(), (2, 3, 4, 5)),
    "Hardsigmoid": (lambda nn, dt: nn.Hardsigmoid(), lambda tnn: tnn.Hardsigmoid(), (2, 3, 4, 5)),
    "LeakyReLU": (lambda nn, dt: nn.LeakyReLU(0.2), lambda tnn: tnn.LeakyReLU(0.2), (2, 3, 4, 5)),
    "ELU": (lambda nn, dt: nn.ELU(0.5), lambda tnn: tnn.ELU(0.5), (2, 3, 4, 5)),
    "CELU": (lambda nn, dt: nn.CELU(0.5), lambda tnn: tnn.CELU(0.5), (2, 3, 4, 5)),
    "SELU": (lambda nn, dt: nn.SELU(), lambda tnn: tnn.SELU(), (2, 3, 4, 5)),
    "Mish": (lambda nn, dt: nn.Mish(), lambda tnn: tnn.Mish(), (2, 3, 4, 5)),
    "Softplus": (lambda nn, dt: nn.Softplus(2.0, 1.0), lambda tnn: tnn.Softplus(2.0, 1.0),
                 (2, 3, 4, 5)),
    "Hardtanh": (lambda nn, dt: nn.Hardtanh(-0.5, 1.0), lambda tnn: tnn.Hardtanh(-0.5, 1.0),
                 (2, 3, 4, 5)),
    "MaxPool2d": (lambda nn, dt: nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                  lambda tnn: tnn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 9, 8)),
    "MaxPool2d-dilated": (lambda nn, dt: nn.MaxPool2d(2, 1, 1, dilation=2),
                          lambda tnn: tnn.MaxPool2d(2, 1, 1, dilation=2), (2, 3, 7, 6)),
    "MaxPool2d-unbatched": (lambda nn, dt: nn.MaxPool2d(2), lambda tnn: tnn.MaxPool2d(2),
                            (3, 6, 6)),
    "MaxPool1d": (lambda nn, dt: nn.MaxPool1d(3, 2), lambda tnn: tnn.MaxPool1d(3, 2), (2, 3, 11)),
    "MaxPool3d": (lambda nn, dt: nn.MaxPool3d(2, 1, 1), lambda tnn: tnn.MaxPool3d(2, 1, 1),
                  (1, 2, 4, 5, 3)),
    "AvgPool2d": (lambda nn, dt: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                  lambda tnn: tnn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                  (2, 3, 9, 8)),
    "AvgPool2d-divisor": (lambda nn, dt: nn.AvgPool2d(2, 1, 1, divisor_override=3),
                          lambda tnn: tnn.AvgPool2d(2, 1, 1, divisor_override=3), (2, 3, 5, 6)),
    "AvgPool1d": (lambda nn, dt: nn.AvgPool1d(4, 3, 2), lambda tnn: tnn.AvgPool1d(4, 3, 2),
                  (2, 3, 13)),
    "AvgPool3d": (lambda nn, dt: nn.AvgPool3d(2), lambda tnn: tnn.AvgPool3d(2), (1, 2, 4, 6, 4)),
    "AdaptiveAvgPool2d": (lambda nn, dt: nn.AdaptiveAvgPool2d((3, None)),
                          lambda tnn: tnn.AdaptiveAvgPool2d((3, None)), (2, 3, 7, 5)),
    "AdaptiveAvgPool2d-global": (lambda nn, dt: nn.AdaptiveAvgPool2d(1),
                                 lambda tnn: tnn.AdaptiveAvgPool2d(1), (2, 3, 7, 5)),
    "AdaptiveAvgPool1d": (lambda nn, dt: nn.AdaptiveAvgPool1d(4),
                          lambda tnn: tnn.AdaptiveAvgPool1d(4), (2, 3, 10)),
    "AdaptiveAvgPool3d": (lambda nn, dt: nn.AdaptiveAvgPool3d((2, 3, 2)),
                          lambda tnn: tnn.AdaptiveAvgPool3d((2, 3, 2)), (1, 2, 5, 7, 3)),
    "AdaptiveMaxPool2d": (lambda nn, dt: nn.AdaptiveMaxPool2d((3, 4)),
                          lambda tnn: tnn.AdaptiveMaxPool2d((3, 4)), (2, 3, 7, 9)),
    "AdaptiveMaxPool1d": (lambda nn, dt: nn.AdaptiveMaxPool1d(4),
                          lambda tnn: tnn.AdaptiveMaxPool1d(4), (2, 3, 10)),
    "AdaptiveMaxPool3d": (lambda nn, dt: nn.AdaptiveMaxPool3d((2, None, 2)),
                          lambda tnn: tnn.AdaptiveMaxPool3d((2, None, 2)), (1, 2, 5, 7, 3)),
    "Flatten": (lambda nn, dt: nn.Flatten(), lambda tnn: tnn.Flatten(), (2, 3, 4, 5)),
    "Flatten-range": (lambda nn, dt: nn.Flatten(0, 2), lambda tnn: tnn.Flatten(0, 2),
                      (2, 3, 4, 5)),
    "Linear": (lambda nn, dt: nn.Linear(20, 6, dtype=dt), lambda tnn: tnn.Linear(20, 6),
               (2, 3, 20)),
    "Linear-nobias": (lambda nn, dt: nn.Linear(20, 6, bias=False, dtype=dt),
                      lambda tnn: tnn.Linear(20, 6, bias=False), (5, 20)),
    "Linear-empty": (lambda nn, dt: nn.Linear(20, 6, dtype=dt), lambda tnn: tnn.Linear(20, 6),
                     (0, 20)),
    "BatchNorm2d": (lambda nn, dt: nn.BatchNorm2d(3, dtype=dt), lambda tnn: tnn.BatchNorm2d(3),
                    (4, 3, 5, 6)),
    "BatchNorm1d": (lambda nn, dt: nn.BatchNorm1d(3, momentum=None, dtype=dt),
                    lambda tnn: tnn.BatchNorm1d(3, momentum=None), (6, 3)),
    "BatchNorm3d-noaffine": (lambda nn, dt: nn.BatchNorm3d(2, affine=False, dtype=dt),
                             lambda tnn: tnn.BatchNorm3d(2, affine=False), (2, 2, 3, 4, 3)),
    "BatchNorm2d-nobias": (lambda nn, dt: nn.BatchNorm2d(3, dtype=dt, bias=False),
                           lambda tnn: tnn.BatchNorm2d(3, bias=False), (4, 3, 5, 6)),
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_layer_matches_torch(clconv, dev, rng, name, mode):
    torch = import_torch()
    dtype = _dtype(dev)
    make, make_torch, shape = LAYERS[name]
    ours = make(clconv.nn, dtype)
    theirs = make_torch(torch.nn).to(torch.float64 if dtype == np.float64 else torch.float32)
    if ours.state_dict():
        if "BatchNorm" in name:  # non-trivial statistics and affine parameters
            state = {k: (v if v.ndim == 0 else
                         (np.abs(random_array(rng, v.shape, dtype)) + 0.5 if "var" in k
                          else random_array(rng, v.shape, dtype)))
                     for k, v in ours.state_dict().items()}
            ours.load_state_dict(state)
        _copy_params(ours, theirs, torch)
    ours.train(mode == "train")
    theirs.train(mode == "train")
    x = random_array(rng, shape, dtype)
    for _ in range(2):  # twice: the running statistics move twice in training mode
        _check(ours, theirs, x, rng, dtype, torch)
        theirs.zero_grad()
    for key, value in theirs.state_dict().items():
        assert_close(ours.state_dict()[key], value.numpy(), dtype, magnitude=10, err_msg=key)


@pytest.mark.parametrize("activation, torch_act", [
    ("relu", "ReLU"), (("leaky_relu", 0.1), "LeakyReLU"), ("silu", "SiLU"), ("tanh", "Tanh"),
], ids=str)
@pytest.mark.parametrize("layer", ["Conv2d", "Linear"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_activation_argument(clconv, dev, rng, activation, torch_act, layer, mode):
    """`activation=` on Conv2d and Linear: act(layer(x)), fused in eval mode, and its gradient."""
    torch = import_torch()
    dtype = _dtype(dev)
    tact = getattr(torch.nn, torch_act)(*((0.1,) if torch_act == "LeakyReLU" else ()))
    if layer == "Conv2d":
        ours = clconv.nn.Conv2d(3, 4, 3, padding=1, dtype=dtype, activation=activation, rng=1)
        conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        x = random_array(rng, (2, 3, 6, 5), dtype)
    else:
        ours = clconv.nn.Linear(12, 5, dtype=dtype, activation=activation, rng=1)
        conv = torch.nn.Linear(12, 5)
        x = random_array(rng, (4, 12), dtype)
    ours.train(mode == "train")
    _check_activation(ours, conv, tact, x, rng, dtype, torch, input_reduction=27)


def _cnn(nn, dtype, rng):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, dtype=dtype, rng=rng), nn.BatchNorm2d(8, dtype=dtype),
        nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1, dtype=dtype, rng=rng,
                                              activation="relu"),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10, dtype=dtype, rng=rng),
        nn.Hardswish(), nn.Linear(10, 4, dtype=dtype, rng=rng))


def _torch_cnn(tnn):
    class ConvReLU(tnn.Conv2d):  # a Conv2d's keys, with the activation= of clconv's layer
        def forward(self, x):
            return tnn.functional.relu(super().forward(x))

    return tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU(), tnn.MaxPool2d(2),
        ConvReLU(8, 8, 3, padding=1), tnn.AdaptiveAvgPool2d(2), tnn.Flatten(),
        tnn.Linear(32, 10), tnn.Hardswish(), tnn.Linear(10, 4))


def test_sequential_state_dict_round_trip_with_torch(clconv, dev, rng):
    torch = import_torch()
    dtype = _dtype(dev)
    ours = _cnn(clconv.nn, dtype, 3)
    theirs = _torch_cnn(torch.nn).to(torch.float64 if dtype == np.float64 else torch.float32)
    ours_state = ours.state_dict()
    assert list(ours_state) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.as_tensor(v) for k, v in ours_state.items()})
    x = random_array(rng, (3, 3, 8, 8), dtype)
    for mode in ("train", "eval", "train"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        xt = torch.tensor(x, requires_grad=True)
        y, yt = ours(x), theirs(xt)
        assert_close(y, yt.detach().numpy(), dtype, reduction=200, magnitude=10, err_msg=mode)
        g = random_array(rng, y.shape, dtype)
        gx = ours.backward(g)
        yt.backward(torch.from_numpy(g))
        assert_close(gx, xt.grad.numpy(), dtype, reduction=200, magnitude=10, err_msg=mode)
        grads = ours.grad_dict()
        for name, p in theirs.named_parameters():
            assert_close(grads[name], p.grad.numpy(), dtype, reduction=2000, magnitude=10,
                         err_msg=f"{mode} {name}")
        theirs.zero_grad()
    # torch -> clconv: another network's state loads by the same keys
    other = _torch_cnn(torch.nn).to(torch.float64 if dtype == np.float64 else torch.float32)
    other(torch.from_numpy(x))  # moves its running statistics
    ours.load_state_dict(other.state_dict())
    ours.eval()
    other.eval()
    assert_close(ours(x), other(torch.from_numpy(x)).detach().numpy(), dtype, reduction=200,
                 magnitude=10)
    assert ours.state_dict()["1.num_batches_tracked"] == 1
    with pytest.raises(ValueError, match="missing keys"):
        ours.load_state_dict({k: v for k, v in ours_state.items() if k != "7.bias"})
    with pytest.raises(ValueError, match="unexpected"):
        ours.load_state_dict({**ours_state, "3.weight": ours_state["0.bias"]})


def test_sequential_keeps_activations_on_the_device(clconv, dev, rng, monkeypatch):
    """numpy in: one upload, the layers' results stay on the device, one download at the end;
    a device array in gives a device array out with no host transfer at all."""
    dtype = _dtype(dev)
    model = _cnn(clconv.nn, dtype, 1)
    x = random_array(rng, (2, 3, 8, 8), dtype)
    model(x)  # plans and kernels built
    model.backward(np.ones((2, 4), dtype))
    host_copies = []
    real = cl.enqueue_copy

    def counting(queue, dest, src, **kwargs):
        if isinstance(dest, np.ndarray) or isinstance(src, np.ndarray):
            host_copies.append("download" if isinstance(dest, np.ndarray) else "upload")
        return real(queue, dest, src, **kwargs)

    monkeypatch.setattr(cl, "enqueue_copy", counting)
    y = model(x)
    assert isinstance(y, np.ndarray) and y.shape == (2, 4)
    assert sorted(host_copies) == ["download", "upload"]
    host_copies.clear()
    xd = cla.to_device(dev.queue, x)
    host_copies.clear()
    yd = model(xd)
    gd = model.backward(cla.to_device(dev.queue, np.ones((2, 4), dtype)))
    host_copies.remove("upload")  # the grad_output made above
    assert isinstance(yd, cla.Array) and isinstance(gd, cla.Array)
    assert host_copies == []


def test_sequential_container(clconv):
    nn = clconv.nn
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.ReLU())
    assert len(model) == 2 and isinstance(model[0], nn.Linear)
    assert isinstance(model[:1], nn.Sequential) and len(model[:1]) == 1
    model.append(nn.Linear(3, 2, rng=0))
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear"]
    assert len(model.parameters()) == 4
    assert model.eval() is model and not model[0].training
    # torch.nn.Sequential's list methods, and named_parameters under torch's keys
    torch = import_torch()
    model.insert(1, nn.Tanh()).extend([nn.ReLU(), nn.Flatten()])
    model[2] = nn.Sequential(nn.ReLU(), nn.Linear(3, 3, rng=0, bias=False))
    assert isinstance(model.pop(), nn.Flatten)
    del model[-1]
    assert [type(m).__name__ for m in model] == ["Linear", "Tanh", "Sequential", "Linear"]
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Sequential(
        torch.nn.ReLU(), torch.nn.Linear(3, 3, bias=False)), torch.nn.Linear(3, 2))
    assert [k for k, _ in model.named_parameters()] == [k for k, _ in theirs.named_parameters()]
    assert all(p is q for (_, p), q in zip(model.named_parameters(), model.parameters()))
    with pytest.raises(TypeError, match="clconv.nn layer"):
        model.insert(0, torch.nn.ReLU())
    assert model.train() is model and model[2].training
    assert "Sequential(" in repr(model) and "Linear(in_features=4" in repr(model)
    with pytest.raises(TypeError, match="layer 1"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_sequential_slices_keep_torchs_keys(clconv):
    """A slice keeps each layer's key, as torch.nn.Sequential's (`model[1:]`'s first layer is
    '1'; a reversed slice '2', '1', '0'): its state_dict, named_parameters, load_state_dict and
    repr use them; append takes str(len) (replacing the layer a slice holds under that key, as
    torch's add_module); del / insert / pop number the layers again."""
    torch = import_torch()
    nn = clconv.nn
    ours = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.ReLU(),
                         nn.Conv2d(2, 3, 1))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(),
                                 torch.nn.Conv2d(2, 2, 1), torch.nn.ReLU(),
                                 torch.nn.Conv2d(2, 3, 1))
    for index in (slice(1, None), slice(None, None, -1), slice(2, 5), slice(0, 5, 2)):
        part, want = ours[index], theirs[index]
        assert list(part.state_dict()) == list(want.state_dict())
        assert [k for k, _ in part.named_parameters()] == [k for k, _ in want.named_parameters()]
        part.load_state_dict(want.state_dict())  # (strict: every key met)
        for key, value in want.state_dict().items():
            np.testing.assert_array_equal(part.state_dict()[key], value.numpy())
        assert [line.split(":")[0] for line in repr(part).splitlines()[1:-1]] == \
            [line.split(":")[0] for line in repr(want).splitlines()[1:-1]]
        assert part[:][0] is part[0] and list(part[:].state_dict()) == list(part.state_dict())
    for edit in (lambda m, t: m.append(t), lambda m, t: m.extend([t, t])):
        part, want = ours[2:], theirs[2:]
        edit(part, nn.ReLU()), edit(want, torch.nn.ReLU())
        assert len(part) == len(want) and list(part.state_dict()) == list(want.state_dict())
    # (torch's insert into a slice fails: a KeyError of the key before its first)
    for edit in (lambda m: m.__delitem__(0), lambda m: m.pop(0), lambda m: m.__delitem__(-1)):
        part, want = ours[2:], theirs[2:]
        edit(part), edit(want)
        assert list(part.state_dict()) == list(want.state_dict())
    part = ours[2:].insert(0, nn.ReLU())
    assert list(part.state_dict()) == ["1.weight", "1.bias", "3.weight", "3.bias"]


@pytest.mark.parametrize("name", ["ReLU", "ReLU6", "SiLU", "Sigmoid", "Tanh", "Hardswish",
                                  "Hardsigmoid", "Mish", "SELU"])
def test_parameterless_activation_signatures_match_torch(clconv, name):
    """The classes take what torch's take: `inplace` where torch's constructor has it (a bool),
    nothing for Sigmoid and Tanh; they are classes of clconv.nn that pickle and print as torch's."""
    import inspect
    import pickle

    torch = import_torch()
    ours, theirs = getattr(clconv.nn, name), getattr(torch.nn, name)
    torch_takes = "inplace" in inspect.signature(theirs.__init__).parameters
    assert ("inplace" in inspect.signature(ours.__init__).parameters) == torch_takes
    if torch_takes:
        assert ours(inplace=True).inplace is True
        with pytest.raises(TypeError, match="inplace must be a bool"):
            ours(inplace=1)
    else:
        with pytest.raises(TypeError, match=f"{name}.__init__"):
            ours(inplace=True)
    layer = ours()
    assert isinstance(layer, clconv.nn.Module) and type(layer).__module__ == "clconv.nn.activation"
    assert repr(layer) == f"{name}()" and repr(pickle.loads(pickle.dumps(layer))) == f"{name}()"


@pytest.mark.parametrize("kind", ["numpy", "torch", "device", "device view"])
@pytest.mark.parametrize("name, args", [("ReLU", ()), ("SiLU", ()), ("LeakyReLU", (0.2,)),
                                        ("ELU", (0.5,)), ("Hardtanh", (-0.5, 0.5))])
def test_inplace_activation_layers_write_their_input(clconv, dev, rng, kind, name, args):
    """`inplace=True` writes the result into the input itself and returns it (numpy arrays, CPU
    torch tensors, device arrays and strided views of them), as torch.nn's; backward is the
    gradient at the input as it was before the write."""
    torch = import_torch()
    ours = getattr(clconv.nn, name)(*args, inplace=True)
    theirs = getattr(torch.nn, name)(*args)
    assert repr(ours) == repr(getattr(torch.nn, name)(*args, inplace=True))
    x = random_array(rng, (2, 3, 4, 5), np.float32)
    xt = torch.tensor(x, requires_grad=True)
    want = theirs(xt)
    if kind == "numpy":
        given = x.copy()
    elif kind == "torch":
        given = torch.from_numpy(x.copy())
    else:
        whole = cla.to_device(dev.queue, np.concatenate([x, x], axis=-1) if kind == "device view"
                              else x)
        given = whole[..., :5] if kind == "device view" else whole
    got = ours(given)
    assert got is given
    written = whole.get()[..., :5] if kind.startswith("device") else np.asarray(given)
    assert_close(written, want.detach().numpy(), np.float32)
    if kind == "device view":  # the rest of the buffer is untouched
        np.testing.assert_array_equal(whole.get()[..., 5:], x)
    g = random_array(rng, x.shape, np.float32)
    want.backward(torch.from_numpy(g))
    assert_close(ours.backward(g), xt.grad.numpy(), np.float32)


@pytest.mark.parametrize("name, args", [
    ("ReLU", ()), ("ReLU6", ()), ("SiLU", ()), ("GELU", ()), ("GELU", ("tanh",)), ("Sigmoid", ()),
    ("Tanh", ()), ("Hardswish", ()), ("Hardsigmoid", ()), ("Mish", ()), ("SELU", ()),
    ("LeakyReLU", (0.2,)), ("ELU", (0.5,)), ("CELU", (0.5,)), ("Softplus", (2.0, 1.0)),
    ("Hardtanh", (-0.5, 0.5))])
def test_activation_gradients_at_special_values_as_torch(clconv, dev, name, args):
    """Each activation layer's forward and backward at NaN, +-inf, 0, -0 and every kink or
    boundary its formula has, against torch's autograd on a tensor of 128 elements (torch's
    vectorised CPU kernels: hardtanh's family gives 0 at NaN, the exponential ones NaN; its
    one-element tensors take scalar paths that differ)."""
    torch = import_torch()
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, -3.0, 3.0, 6.0, -0.5, 0.5, 1.0, -1.0, 20.0,
               -20.0, 1e-30, 100.0]
    for dtype in (np.float32, np.float64) if dev.fp64 else (np.float32,):
        x = np.resize(np.array(special, dtype), 128)
        ours = getattr(clconv.nn, name)(*args)
        t = torch.from_numpy(x.copy()).requires_grad_()
        y = getattr(torch.nn, name)(*args)(t)
        g = np.resize(np.array([1.0, -2.0, 0.5], dtype), 128)
        y.backward(torch.from_numpy(g))
        got_y, got_g = ours(x), ours.backward(g)
        keep = np.ones(x.shape, bool)
        if name == "GELU" and not args and dtype == np.float32:
            # torch's float32 gelu(+inf): NaN with its AVX-512 kernels, +inf with its AVX2 ones;
            # clconv's is +inf (as torch's float64), its gradient there NaN (inf * 0)
            keep = ~np.isposinf(x)
            assert np.isposinf(got_y[~keep]).all() and np.isnan(got_g[~keep]).all()
            got_y, got_g = got_y[keep], got_g[keep]
        for got, want in ((got_y, y.detach().numpy()[keep]), (got_g, t.grad.numpy()[keep])):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
            np.testing.assert_array_equal(np.isinf(got) * np.sign(got),
                                          np.isinf(want) * np.sign(want), err_msg=name)
            finite = np.isfinite(want)
            assert_close(got[finite], want[finite], dtype, magnitude=4)


def test_writing_what_a_forward_saved_is_torchs_inplace_error(clconv, dev, rng):
    """An in-place write (inplace=True, out=) into an array a layer's forward saved for backward
    (its output kept for the activation's gradient, its input) makes that backward raise torch's
    in-place RuntimeError instead of computing gradients from the new values; writes elsewhere,
    or before the forward, leave backward as it was."""
    torch = import_torch()
    nn = clconv.nn
    x = random_array(rng, (2, 3, 6, 6), np.float32)
    g = random_array(rng, (2, 4, 6, 6), np.float32)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, activation="tanh"),
                        nn.LeakyReLU(0.5, inplace=True))
    seq(x)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        seq.backward(g)
    tconv = torch.nn.Conv2d(3, 4, 3, padding=1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):  # torch's too
        y = torch.nn.LeakyReLU(0.5, inplace=True)(torch.tanh(tconv(torch.from_numpy(x))))
        y.backward(torch.from_numpy(g))
    for layer, shape in [(nn.Conv2d(3, 4, 3), (2, 4, 4, 4)), (nn.ReLU(), x.shape),
                         (nn.BatchNorm2d(3), x.shape)]:
        xd = cla.to_device(dev.queue, x)
        layer(xd)
        clconv.relu(xd[:, :1], inplace=True)  # a view of the saved input's memory
        with pytest.raises(RuntimeError, match=f"{type(layer).__name__}.backward"):
            layer.backward(np.ones(shape, np.float32))
        layer(xd)  # a new forward saves the written array as it is now
        layer.backward(np.ones(shape, np.float32))
    linear = nn.Linear(6, 2)
    xd = cla.to_device(dev.queue, x)
    linear(xd)
    clconv.add(xd, 1.0, out=xd)
    with pytest.raises(RuntimeError, match="Linear.backward"):
        linear.backward(np.ones((2, 3, 6, 2), np.float32))
    # the usual stack: conv -> BatchNorm -> ReLU(inplace) trains as torch's
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.Conv2d(4, 4, 3, padding=1))
    y = seq(x)
    assert seq.backward(np.ones(y.shape, np.float32)).shape == x.shape


def test_batchnorm_parameters_are_assignable(clconv, dev, rng):
    """BatchNorm's weight and bias take a new (C,) array (numpy, torch, device; a device array of
    the layer's dtype is used itself, so that in-place updates reach the layer), as torch's
    Parameters do; wrong shapes, dtypes and absent parameters are refused."""
    torch = import_torch()
    bn = clconv.nn.BatchNorm2d(3).eval()
    ref = torch.nn.BatchNorm2d(3).eval()
    w, b = random_array(rng, (3,), np.float32), random_array(rng, (3,), np.float32)
    bn.weight = torch.from_numpy(w)
    shared = cla.to_device(dev.queue, b)
    bn.bias = shared
    shared += 1  # an optimizer's step on the array given
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        ref.bias.copy_(torch.from_numpy(b + 1))
    x = random_array(rng, (2, 3, 4, 4), np.float32)
    assert_close(bn(x), ref(torch.from_numpy(x)).detach().numpy(), np.float32)
    np.testing.assert_array_equal(bn.state_dict()["bias"], b + 1)
    with pytest.raises(ValueError, match="shape"):
        bn.weight = np.ones(4, np.float32)
    with pytest.raises(TypeError, match="floating point"):
        bn.bias = np.ones(3, np.int64)
    bn.weight = torch.nn.Parameter(torch.from_numpy(w))  # torch's way: its values
    np.testing.assert_array_equal(np.asarray(bn.weight), w)
    np.testing.assert_array_equal(np.asarray(bn.running_mean), np.zeros(3))  # numpy converts
    assert torch.as_tensor(bn.running_var).shape == (3,)
    for layer, name, shape in [(clconv.nn.Conv2d(3, 4, 3), "weight", (4, 3, 3, 3)),
                               (clconv.nn.Linear(3, 2), "bias", (2,))]:
        value = random_array(rng, shape, np.float32)
        setattr(layer, name, torch.nn.Parameter(torch.from_numpy(value)))
        np.testing.assert_array_equal(np.asarray(getattr(layer, name)), value)
        for bad, error in [(np.ones(shape, np.int64), TypeError),
                           (np.ones(shape, np.complex64), TypeError),
                           (value.tolist(), TypeError), (None, (TypeError, ValueError)),
                           (np.ones((5,), np.float32), ValueError)]:
            with pytest.raises(error):
                setattr(layer, name, bad)
    with pytest.raises(ValueError, match="affine=True"):
        clconv.nn.BatchNorm2d(3, affine=False).weight = w
    with pytest.raises(ValueError, match="bias=True"):
        clconv.nn.BatchNorm2d(3, bias=False).bias = b


def test_batchnorm_running_statistics_are_assignable(clconv, dev, rng):
    """running_mean / running_var take a (C,) array as torch's buffers do (checked and uploaded;
    a device array of the compute dtype used itself); a bad num_batches_tracked entry is a
    ValueError naming it, and a float one is truncated as torch's int64 copy does."""
    torch = import_torch()
    bn = clconv.nn.BatchNorm2d(3).eval()
    ref = torch.nn.BatchNorm2d(3).eval()
    mean = random_array(rng, (3,), np.float64)
    var = np.abs(random_array(rng, (3,), np.float32)) + 0.5
    bn.running_mean = mean  # float64 numpy: converted to the layer's dtype
    shared = cla.to_device(dev.queue, var)
    bn.running_var = shared
    assert bn.running_var.data == shared.data  # used itself
    ref.running_mean = torch.from_numpy(mean.astype(np.float32))
    ref.running_var = torch.from_numpy(var)
    x = random_array(rng, (2, 3, 4, 4), np.float32)
    assert_close(bn(x), ref(torch.from_numpy(x)).detach().numpy(), np.float32)
    assert bn.state_dict()["running_mean"].dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        bn.running_mean = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="floating point"):
        bn.running_var = np.ones(3, np.int64)
    with pytest.raises(ValueError, match="track_running_stats=True"):
        clconv.nn.BatchNorm2d(3, track_running_stats=False).running_mean = mean
    state = bn.state_dict()
    with pytest.raises(ValueError, match="num_batches_tracked"):
        bn.load_state_dict({**state, "num_batches_tracked": np.array([1, 2])})
    bn.load_state_dict({**state, "num_batches_tracked": np.array(5.7)})
    assert bn.state_dict()["num_batches_tracked"] == 5


def test_sequential_load_state_dict_is_all_or_nothing(clconv, dev):
    """A bad entry of a later layer leaves the earlier layers as they were (as one layer's load)."""
    model = clconv.nn.Sequential(clconv.nn.Linear(3, 2, rng=0), clconv.nn.BatchNorm1d(2))
    before = model.state_dict()
    state = {**before, "0.weight": np.ones((2, 3), np.float32),
             "1.running_mean": np.zeros(5, np.float32)}
    with pytest.raises(ValueError, match=r"state\['1.running_mean'\]"):  # the Sequential's key
        model.load_state_dict(state)
    after = model.state_dict()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_sequential_with_a_layer_at_several_positions(clconv, dev, rng):
    """One activation (or pooling, Flatten) object used at several positions, as torch code
    shares a ReLU: each position's backward reads its own forward's arrays, as torch's autograd;
    a shared layer with parameters is refused at backward (torch sums its gradients)."""
    torch = import_torch()
    dtype = _dtype(dev)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    act, block = torch.nn.Tanh(), torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sigmoid())
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 4), act, block, torch.nn.Linear(4, 4), act,
                                 block).to(tdtype)
    cact = clconv.nn.Tanh()
    cblock = clconv.nn.Sequential(clconv.nn.Linear(4, 4, dtype=dtype), clconv.nn.Sigmoid())
    ours = clconv.nn.Sequential(clconv.nn.Linear(4, 4, dtype=dtype), cact, cblock,
                                clconv.nn.Linear(4, 4, dtype=dtype), cact, cblock)
    ours.load_state_dict(theirs.state_dict())
    x = random_array(rng, (3, 4), dtype)
    xt = torch.tensor(x, requires_grad=True)
    y, yt = ours(x), theirs(xt)
    assert_close(y, yt.detach().numpy(), dtype, reduction=20)
    with pytest.raises(ValueError, match="several positions"):  # cblock's Linear is shared
        ours.backward(np.ones_like(y))
    ours[2] = clconv.nn.Sequential(clconv.nn.Linear(4, 4, dtype=dtype), cblock[1])
    ours[5] = clconv.nn.Sequential(clconv.nn.Linear(4, 4, dtype=dtype), cblock[1])
    theirs[2] = torch.nn.Sequential(torch.nn.Linear(4, 4), block[1]).to(tdtype)
    theirs[5] = torch.nn.Sequential(torch.nn.Linear(4, 4), block[1]).to(tdtype)
    ours.load_state_dict(theirs.state_dict())
    y, yt = ours(x), theirs(xt)
    g = random_array(rng, y.shape, dtype)
    gx = ours.backward(g)
    yt.backward(torch.from_numpy(g))
    assert_close(y, yt.detach().numpy(), dtype, reduction=20)
    assert_close(gx, xt.grad.numpy(), dtype, reduction=20)
    grads = ours.grad_dict()
    for name, p in theirs.named_parameters():
        assert_close(grads[name], p.grad.numpy(), dtype, reduction=20, err_msg=name)


def test_layer_details_found_by_fuzzing_against_torch(clconv, dev, rng):
    """BatchNorm's gradients convert as the other layers' do; Hardswish's gradient at exactly
    -3 and 3 is torch's (0 and g); a 0-d input keeps its shape through an activation layer;
    BatchNorm with batch statistics in eval (track_running_stats=False) needs more than one value
    per channel, as torch's; torch dtypes are layer dtypes."""
    torch = import_torch()
    nn = clconv.nn
    bn = nn.BatchNorm2d(3)
    x = random_array(rng, (2, 3, 4, 4))
    bn(x)
    bn.backward(x)
    for g in (bn.weight_grad, bn.bias_grad):
        assert np.asarray(g).dtype == np.float32 and torch.as_tensor(g).shape == (3,)
    hs = nn.Hardswish()
    edges = np.array([-3.0, 3.0, -2.5, 2.5], np.float32)
    hs(edges)
    xt = torch.tensor(edges, requires_grad=True)
    torch.nn.functional.hardswish(xt).backward(torch.ones(4))
    np.testing.assert_array_equal(hs.backward(np.ones(4, np.float32)), xt.grad.numpy())
    relu = nn.ReLU()
    assert relu(np.array(-0.5, np.float32)).shape == ()
    assert relu.backward(np.array(1.0, np.float32)).shape == ()
    free = nn.BatchNorm1d(2, track_running_stats=False).eval()
    with pytest.raises(ValueError):
        torch.nn.BatchNorm1d(2, track_running_stats=False).eval()(torch.ones(1, 2))
    with pytest.raises(ValueError, match="more than 1 value"):
        free(random_array(rng, (1, 2)))
    wide, want = (torch.float64, np.float64) if dev.fp64 else (torch.float32, np.float32)
    for make in (nn.Conv2d, nn.BatchNorm2d, nn.Linear):
        layer = make(2, 3, 3, dtype=wide) if make is nn.Conv2d else make(3, dtype=wide) \
            if make is nn.BatchNorm2d else make(2, 3, dtype=wide)
        assert layer.dtype == want
    with pytest.raises(TypeError, match="torch.int64"):
        nn.Linear(2, 3, dtype=torch.int64)


def test_layer_errors(clconv, dev, rng):
    nn = clconv.nn
    with pytest.raises(RuntimeError, match="forward"):
        nn.MaxPool2d(2).backward(np.ones((1, 1, 1, 1), np.float32))
    with pytest.raises(RuntimeError, match="forward"):
        nn.Linear(3, 2).backward(np.ones((1, 2), np.float32))
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match="more than 1 value"):
        bn(random_array(rng, (1, 3, 1, 1)))
    with pytest.raises(ValueError, match="channels"):
        bn(random_array(rng, (2, 4, 3, 3)))
    with pytest.raises(ValueError, match="4"):
        bn(random_array(rng, (2, 3, 3)))
    with pytest.raises(ValueError, match="in_features|shape"):
        nn.Linear(3, 2)(random_array(rng, (4, 5)))
    relu = nn.ReLU()
    relu(random_array(rng, (2, 3)))
    with pytest.raises(ValueError, match="grad_output"):
        relu.backward(random_array(rng, (3, 2)))
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")
    with pytest.raises(ValueError, match="activation"):
        nn.Conv2d(1, 1, 3, activation="swish")
    with pytest.raises(ValueError, match="padding"):
        nn.MaxPool2d(2, padding=2)(random_array(rng, (1, 1, 6, 6)))
    # torch.nn.Hardtanh refuses max_val <= min_val (equal bounds too; a NaN one passes there)
    for lo, hi in ((0.5, 0.5), (-0.0, 0.0), (2.0, 1.0)):
        with pytest.raises(ValueError, match="must be greater than min_val"):
            nn.Hardtanh(lo, hi)
    with pytest.warns(FutureWarning, match="min_value"):
        assert nn.Hardtanh(min_value=-2.0).min_val == -2.0  # torch's deprecated spelling


def test_linear_weight_grad_of_an_empty_batch_is_zero(clconv, dev):
    layer = clconv.nn.Linear(5, 3, rng=0)
    layer(np.zeros((0, 5), np.float32))
    gx = layer.backward(np.zeros((0, 3), np.float32))
    assert gx.shape == (0, 5)
    np.testing.assert_array_equal(layer.grad_dict()["weight"], np.zeros((3, 5)))
    np.testing.assert_array_equal(layer.grad_dict()["bias"], np.zeros(3))


@pytest.mark.parametrize("activation, torch_act", [("relu", "ReLU"), ("gelu", "GELU")], ids=str)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_activation_on_transposed_convolutions(clconv, dev, rng, activation, torch_act, mode):
    torch = import_torch()
    dtype = _dtype(dev)
    ours = clconv.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1, dtype=dtype,
                                     activation=activation, rng=2)
    conv = torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
    ours.train(mode == "train")
    x = random_array(rng, (2, 3, 4, 5), dtype)
    _check_activation(ours, conv, getattr(torch.nn, torch_act)(), x, rng, dtype, torch,
                      input_reduction=36)


def test_batchnorm_statistics_split_rows_past_a_loop_cap(clconv, dev, rng, monkeypatch):
    """Where one work-item a channel would loop past the driver's loop cap (llvmpipe's; forced
    small here on every device), BatchNorm's training statistics and gradient sums take a
    work-group a channel, which splits the rows, and still match torch's (they were refused)."""
    from clconv.ops.channels import reduction_group

    torch = import_torch()
    monkeypatch.setattr(dev, "_loop_limit", 20000)
    monkeypatch.setattr(dev, "plans", None)
    assert reduction_group(dev, 60 * 60, 2) > 1
    dtype = _dtype(dev)
    ours = clconv.nn.BatchNorm2d(3, dtype=dtype)
    theirs = torch.nn.BatchNorm2d(3).to(torch.float64 if dtype == np.float64 else torch.float32)
    _copy_params(ours, theirs, torch)
    x = random_array(rng, (2, 3, 60, 60), dtype)
    for _ in range(2):
        _check(ours, theirs, x, rng, dtype, torch)
        theirs.zero_grad()
    for key, value in theirs.state_dict().items():
        assert_close(ours.state_dict()[key], value.numpy(), dtype, magnitude=10, err_msg=key)
