"""clconv.nn layers: numpy access to parameters and gradients, state_dict / load_state_dict with
torch.nn's keys (numpy in and out, shapes and dtypes checked), against the float64 oracle."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest
import reference
from tolerance import assert_close


@pytest.fixture
def layer(clconv_mod, dev):
    return clconv_mod.nn.Conv2d(3, 4, 3, padding=1, device=dev, rng=0)


def test_parameters_convert_to_numpy(layer):
    w = np.asarray(layer.weight)
    assert w.dtype == np.float32 and w.shape == (4, 3, 3, 3)  # not an object array
    np.testing.assert_array_equal(w, layer.weight.get())
    np.testing.assert_array_equal(np.asarray(layer.bias, dtype=np.float64),
                                  layer.bias.get().astype(np.float64))
    assert isinstance(layer.weight, cla.Array)  # still the device array it was
    assert layer.parameters()[0] is layer.weight


def test_gradients_convert_to_numpy(layer, rng):
    assert layer.weight_grad is None and layer.grad_dict() == {"weight": None, "bias": None}
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    g = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    layer(x)
    layer.backward(g)
    w = layer.weight.get().astype(np.float64)
    want = reference.conv_nd_weight(x.astype(np.float64), w.shape, g.astype(np.float64),
                                    padding=1)
    mag = float(np.abs(x).max() * np.abs(g).max())
    assert_close(np.asarray(layer.weight_grad), want, np.float32, reduction=50, magnitude=mag)
    grads = layer.grad_dict()
    np.testing.assert_array_equal(grads["weight"], np.asarray(layer.weight_grad))
    assert_close(grads["bias"], g.astype(np.float64).sum(axis=(0, 2, 3)), np.float32,
                 reduction=50, magnitude=float(np.abs(g).max()))
    assert [np.asarray(a).dtype for a in layer.gradients()] == [np.float32, np.float32]


def test_state_dict_has_torch_keys_and_round_trips(clconv_mod, layer, dev, rng):
    state = layer.state_dict()
    assert list(state) == ["weight", "bias"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    other = clconv_mod.nn.Conv2d(3, 4, 3, padding=1, device=dev, rng=1)
    assert not np.array_equal(other.state_dict()["weight"], state["weight"])
    assert other.load_state_dict(state) == ([], [])
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(other(x), layer(x))
    state["weight"][...] = 0  # a copy: the layer is not changed through it
    assert np.abs(layer.state_dict()["weight"]).max() > 0


def test_load_state_dict_checks_and_is_all_or_nothing(clconv_mod, layer):
    before = layer.state_dict()
    good_w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"state\['bias'\] has shape \(5,\).*\(4,\)"):
        layer.load_state_dict({"weight": good_w, "bias": np.zeros(5, np.float32)})
    with pytest.raises(TypeError, match=r"state\['weight'\] has dtype int64"):
        layer.load_state_dict({"weight": good_w.astype(np.int64), "bias": np.zeros(4)})
    with pytest.raises(ValueError, match=r"missing keys \['bias'\]"):
        layer.load_state_dict({"weight": good_w})
    with pytest.raises(ValueError, match=r"unexpected keys \['running_mean'\]"):
        layer.load_state_dict({"weight": good_w, "bias": np.zeros(4), "running_mean": 0})
    with pytest.raises(TypeError, match="Python list"):
        layer.load_state_dict({"weight": good_w.tolist(), "bias": np.zeros(4, np.float32)})
    for key, value in layer.state_dict().items():  # nothing was replaced by the failed calls
        np.testing.assert_array_equal(value, before[key])
    missing, unexpected = layer.load_state_dict({"weight": good_w, "extra": 1}, strict=False)
    assert (missing, unexpected) == (["bias"], ["extra"])
    assert not layer.state_dict()["weight"].any()
    np.testing.assert_array_equal(layer.state_dict()["bias"], before["bias"])
    layer.load_state_dict({"weight": good_w.astype(np.float64) + 0.5, "bias": before["bias"]})
    assert layer.state_dict()["weight"].dtype == np.float32  # converted, as torch copies
    np.testing.assert_array_equal(layer.state_dict()["weight"], 0.5)


def test_bias_free_and_transposed_layers(clconv_mod, dev):
    plain = clconv_mod.nn.Conv1d(2, 3, 2, bias=False, device=dev, rng=0)
    assert list(plain.state_dict()) == ["weight"] and plain.grad_dict() == {"weight": None}
    with pytest.raises(ValueError, match=r"unexpected keys \['bias'\]"):
        plain.load_state_dict({"weight": np.zeros((3, 2, 2)), "bias": np.zeros(3)})
    up = clconv_mod.nn.ConvTranspose2d(4, 2, 3, stride=2, device=dev, rng=0)
    assert up.state_dict()["weight"].shape == (4, 2, 3, 3)  # torch's (C_in, C_out/groups, k, k)


def test_a_device_array_state_is_accepted(clconv_mod, layer, dev):
    w = cla.to_device(dev.queue, np.full((4, 3, 3, 3), 2.0, np.float32))
    layer.load_state_dict({"weight": w, "bias": np.ones(4, np.float32)})
    np.testing.assert_array_equal(np.asarray(layer.weight), 2.0)
    w64 = cla.to_device(dev.queue, np.full((4, 3, 3, 3), 3.0, np.float64)) if dev.fp64 else None
    if w64 is not None:
        layer.load_state_dict({"weight": w64, "bias": np.ones(4, np.float32)})
        np.testing.assert_array_equal(np.asarray(layer.weight), 3.0)


def test_torch_state_dicts_load_both_ways(clconv_mod, dev, rng):
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Conv2d(3, 4, 3, padding=1)
    mine = clconv_mod.nn.Conv2d(3, 4, 3, padding=1, device=dev, rng=0)
    mine.load_state_dict(theirs.state_dict())
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    want = theirs(torch.from_numpy(x)).detach().numpy()
    ref = reference.conv2d(x, theirs.weight.detach().numpy(), theirs.bias.detach().numpy(),
                           padding=1)
    mag = float(np.abs(x).max() * theirs.weight.detach().abs().max())
    assert_close(mine(x), ref, np.float32, reduction=27, magnitude=mag)
    assert_close(want, ref, np.float32, reduction=27, magnitude=mag)
    back = torch.nn.Conv2d(3, 4, 3, padding=1)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in mine.state_dict().items()})
    assert torch.equal(back.weight, theirs.weight)
    assert torch.equal(torch.as_tensor(mine.weight), theirs.weight.detach())


def test_torch_parameters_load_and_bad_states_are_type_errors(clconv_mod, dev):
    """A torch module's named_parameters() (Parameters that require grad) loads as torch's
    load_state_dict takes it; what is not a mapping is a TypeError for every layer kind."""
    torch = pytest.importorskip("torch")
    cnn = clconv_mod.nn
    for ours, theirs in ((cnn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)),
                         (cnn.Linear(3, 2), torch.nn.Linear(3, 2)),
                         (cnn.BatchNorm2d(3), torch.nn.BatchNorm2d(3))):
        ours.load_state_dict(dict(theirs.named_parameters()), strict=False)
        np.testing.assert_array_equal(np.asarray(ours.state_dict()["weight"]),
                                      theirs.weight.detach().numpy())
    for layer in (cnn.Sequential(), cnn.Conv2d(3, 4, 3), cnn.BatchNorm2d(3), cnn.ReLU()):
        for bad in (None, [], "weight"):
            with pytest.raises(TypeError, match="mapping"):
                layer.load_state_dict(bad)


def test_layers_copy_and_pickle(clconv_mod, dev, rng):
    """copy.deepcopy and pickle of a trained model (parameter layers, BatchNorm's statistics,
    activations, pooling, a Sequential): the copy computes the same forward and backward, on the
    same device, and shares no buffer with the original (a step on one leaves the other); they
    raised "cannot pickle 'Device' object"."""
    import copy
    import pickle

    cnn = clconv_mod.nn
    with dev:
        model = cnn.Sequential(cnn.Conv2d(3, 4, 3, padding=1, rng=0), cnn.BatchNorm2d(4),
                               cnn.ReLU(), cnn.MaxPool2d(2), cnn.Conv2d(4, 2, 1, rng=1,
                                                                        activation="relu"))
        x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
        g = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
        model(x)
        model.backward(g)  # running statistics and gradients set
        for copier in (copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))):
            copied = copier(model)  # (of the model as the last round left it)
            assert copied[0].device is model[0].device is dev
            for a, b in zip(copied[1].state_dict().values(), model[1].state_dict().values()):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(copied[0].grad_dict()["weight"],
                                          model[0].grad_dict()["weight"])
            np.testing.assert_array_equal(copied(x), model(x))
            np.testing.assert_array_equal(copied.backward(g), model.backward(g))
            copied[0].weight.fill(0)  # its own buffers
            assert np.abs(np.asarray(model[0].weight)).max() > 0
        model.eval()
        evaluated = copy.deepcopy(model)
        assert not evaluated.training and not evaluated[1].training
        np.testing.assert_array_equal(evaluated(x), model(x))


def test_bfloat16_states_load_as_torchs(clconv_mod, dev):
    """A bfloat16 state dict (a torch module in bfloat16) loads, converted to the layer's dtype,
    as torch's float32 module loads it (numpy cannot read bfloat16: it was a TypeError)."""
    torch = pytest.importorskip("torch")
    cnn = clconv_mod.nn
    for ours, theirs in ((cnn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)),
                         (cnn.BatchNorm2d(3), torch.nn.BatchNorm2d(3))):
        with torch.no_grad():
            for t in theirs.parameters():
                t.uniform_(-1, 1)
        state = theirs.to(torch.bfloat16).state_dict()
        ours.load_state_dict(state)
        theirs.float().load_state_dict(state)
        for key, value in theirs.state_dict().items():
            np.testing.assert_array_equal(np.asarray(ours.state_dict()[key]), value.numpy())


def test_backward_refuses_a_gradient_of_another_dtype(clconv_mod, dev):
    """grad_output in another dtype than the forward's is a TypeError for every layer kind (it
    was read as the forward's dtype: garbage)."""
    cnn = clconv_mod.nn
    # Layers made only where the device has their dtype (a float64 layer is an UnsupportedError
    # on a device without fp64).
    for make, x, shape in ((cnn.ReLU, np.ones(4, np.float32), (4,)),
                           (lambda: cnn.BatchNorm1d(2, dtype=np.float64),
                            np.arange(8.0).reshape(4, 2), (4, 2)),
                           (lambda: cnn.MaxPool2d(2), np.arange(16.0).reshape(1, 1, 4, 4),
                            (1, 1, 2, 2)),
                           (lambda: cnn.Linear(3, 2), np.ones((2, 3), np.float32), (2, 2))):
        if x.dtype == np.float64 and not dev.fp64:
            continue
        layer = make()
        layer(x)
        other = np.float64 if x.dtype == np.float32 else np.float32
        if other == np.float64 and not dev.fp64:
            continue
        with pytest.raises(TypeError, match="dtype"):
            layer.backward(np.ones(shape, other))
        assert layer.backward(np.ones(shape, x.dtype)).dtype == x.dtype
