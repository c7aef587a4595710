"""examples/train_digits.py: its gradients (finite differences, and torch when importable), a
shortened training run, and the command line (one epoch, PNG written).

The gradient checks need no data set; the training tests need scikit-learn (the digits ship with it:
pip install '.[examples]')."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pyopencl.array as cla
import pytest

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples",
                     "train_digits.py")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_digits", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gradients_match_finite_differences(example, dev):
    """Each parameter's (and the input's) directional derivative: analytic vs central difference."""
    if not dev.fp64:
        pytest.skip("finite differences need float64")
    results = example.gradient_check(seed=3, batch=3, directions=2)
    assert {name for name, _, _ in results} == {"conv1.weight", "conv1.bias", "conv2.weight",
                                                "conv2.bias", "fc.weight", "fc.bias", "input"}
    for name, analytic, fd in results:
        assert abs(analytic - fd) <= 1e-6 * max(abs(fd), 1e-3), (name, analytic, fd)


def test_gradients_match_torch(example, dev):
    """The same network in torch (same parameters, float64) gives the same loss and gradients."""
    torch = pytest.importorskip("torch")
    if not dev.fp64:
        pytest.skip("needs float64")
    F = torch.nn.functional
    model = example.DigitsCNN(seed=5, dtype=np.float64)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 1, 8, 8))
    labels = rng.integers(0, 10, 4)
    loss = model.loss_and_gradients(x, labels)

    params = [torch.tensor(p.get() if isinstance(p, cla.Array) else p, requires_grad=True)
              for p in model.parameters()]
    w1, b1, w2, b2, fw, fb = params
    h = F.max_pool2d(F.relu(F.conv2d(torch.tensor(x), w1, b1, padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, w2, b2, padding=1)), 2)
    t_loss = F.cross_entropy(h.reshape(4, -1) @ fw.T + fb, torch.tensor(labels))
    t_loss.backward()
    assert abs(loss - t_loss.item()) < 1e-10
    for p, g in zip(params, model.gradients()):
        got = g.get() if isinstance(g, cla.Array) else g
        np.testing.assert_allclose(got, p.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_pooling_routes_the_gradient_to_the_first_maximum(example):
    import clconv

    pool = clconv.nn.MaxPool2d(2)
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]], np.float32)
    assert pool(x).item() == 3.0
    np.testing.assert_array_equal(pool.backward(np.ones((1, 1, 1, 1), np.float32)),
                                  [[[[0.0, 1.0], [0.0, 0.0]]]])


def test_the_whole_network_is_clconv_nn(example):
    """conv, pool, flatten and linear are clconv.nn layers of one Sequential, parameters on the
    device."""
    import clconv

    model = example.DigitsCNN(seed=1)
    kinds = [type(layer).__name__ for layer in model.net]
    assert kinds == ["Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear"]
    assert all(isinstance(p, cla.Array) for p in model.parameters())
    assert isinstance(model.net, clconv.nn.Sequential)


def test_short_training_learns(example):
    """One epoch: the loss falls and the test accuracy is far above chance (10%)."""
    pytest.importorskip("sklearn", reason="the digits data set ships with scikit-learn")
    result = example.train(epochs=1, batch_size=16, show_progress=False)
    losses = result["losses"]
    assert len(losses) == result["steps_per_epoch"] == 90
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert result["accuracies"][-1] > 0.6


def test_command_line(example, tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the digits data set ships with scikit-learn")
    out = tmp_path / "digits.png"
    assert example.main(["--epochs", "1", "--limit", "64", "--out", str(out)]) == 0
    text = capsys.readouterr()
    assert "test accuracy" in text.out and "wall time" in text.out
    assert "1/" in text.err  # the progress bar
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "saved" in text.out
    else:
        assert "matplotlib is not installed" in text.out
