"""Train a small CNN on scikit-learn's 8x8 digits with clconv's forward and backward convolutions.

    python examples/train_digits.py [--epochs 20] [--batch-size 16] [--out train_digits.png]

Network: conv 3x3 (1 -> 16, padding 1) -> ReLU -> max-pool 2 -> conv 3x3 (16 -> 32, padding 1)
-> ReLU -> max-pool 2 -> flatten -> linear (128 -> 10) -> softmax cross-entropy. The whole network
is one clconv.nn.Sequential on the OpenCL device (weights, activations, forward, backward and the
Adam update stay there); only the loss of the (batch, 10) logits is numpy. Adam with a cosine
learning-rate decay.
The data set ships with scikit-learn (no download). Runs on the default device (CLCONV_DEVICE to
choose); prints test accuracy and wall time and saves a PNG of the loss curve and some predictions
to --out (default: train_digits.png in the working folder; needs matplotlib, skipped with a note if
it is missing). The committed docs/train_digits.png is only rewritten when asked for by name.

`gradient_check` compares the model's analytic gradients with central finite differences (float64);
tests/test_train_digits.py runs it, and a shortened training.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl.array as cla
from pyopencl import clmath

# Runnable from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
import clconv


# --- the loss (on the host: a (batch, 10) array) -------------------------------------------------
def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean cross-entropy, its gradient w.r.t. the logits)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -float(log_p[np.arange(n), labels].mean())
    grad = np.exp(log_p)
    grad[np.arange(n), labels] -= 1
    return loss, grad / n


# --- the model -----------------------------------------------------------------------------------
class DigitsCNN:
    """conv(1->16)+relu, max-pool 2, conv(16->32)+relu, max-pool 2, flatten, linear(128->10): one
    clconv.nn.Sequential on the device (the ReLUs are the convolutions' `activation=`, fused into
    their store: relu's gradient follows from its output). A batch is uploaded once and its logits
    downloaded once."""

    def __init__(self, seed: int = 0, dtype: Any = np.float32) -> None:
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        nn = clconv.nn
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, rng=rng, dtype=dtype, activation="relu"),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, rng=rng, dtype=dtype, activation="relu"),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(128, 10, rng=rng, dtype=dtype),
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, 1, 8, 8) -> logits (N, 10); the layers keep what backward needs."""
        return self.net(np.asarray(x, self.dtype))

    def backward(self, grad_logits: Any) -> Any:
        """Fills every parameter gradient; returns the gradient w.r.t. the input (numpy for a
        numpy grad_logits, a device array for a device one)."""
        return self.net.backward(grad_logits)

    def loss_and_gradients(self, x: np.ndarray, labels: np.ndarray) -> float:
        loss, grad = softmax_cross_entropy(self.forward(x), labels)
        # uploaded as a device array so that the input gradient is not downloaded
        self.backward(cla.to_device(self.net.device.queue, grad.astype(self.dtype)))
        return loss

    def parameters(self) -> list[Any]:
        return self.net.parameters()

    def gradients(self) -> list[Any]:
        return self.net.gradients()

    def predict(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        """Class predictions in evaluation mode (activations fused into the convolutions)."""
        self.net.eval()
        try:
            return np.concatenate([self.forward(x[i:i + batch]).argmax(axis=1)
                                   for i in range(0, len(x), batch)])
        finally:
            self.net.train()


class Adam:
    """Adam on a list of numpy and pyopencl arrays, updated in place where they live."""

    def __init__(self, params: Sequence[Any], lr: float = 3e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = [p * 0 for p in self.params]
        self.v = [p * 0 for p in self.params]
        self.t = 0

    def step(self, grads: Sequence[Any]) -> None:
        self.t += 1
        step = self.lr * math.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            # Scalars in the arrays' dtype: pyopencl takes a Python float as a double, which a
            # device without fp64 (Mesa's llvmpipe) cannot build.
            s = m.dtype.type
            m *= s(self.b1)
            m += s(1 - self.b1) * g
            v *= s(self.b2)
            v += s(1 - self.b2) * (g * g)
            sqrt = clmath.sqrt(v) if isinstance(v, cla.Array) else np.sqrt(v)
            p -= s(step) * m / (sqrt + s(self.eps))


# --- checks --------------------------------------------------------------------------------------
def gradient_check(seed: int = 0, batch: int = 3, directions: int = 3,
                   eps: float = 1e-6) -> list[tuple[str, float, float]]:
    """(parameter, analytic, finite-difference) directional derivatives of the loss, in float64.

    Each parameter (and the input) is moved along random unit directions; the loss' central
    difference must match the dot product of the analytic gradient with the direction.
    """
    rng = np.random.default_rng(seed)
    model = DigitsCNN(seed, np.float64)
    x = rng.standard_normal((batch, 1, 8, 8))
    labels = rng.integers(0, 10, batch)
    model.loss_and_gradients(x, labels)
    analytic = [g.get() if isinstance(g, cla.Array) else g.copy() for g in model.gradients()]
    names = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"]
    params = model.parameters()
    results = []
    for name, param, grad in zip(names, params, analytic):
        host = param.get() if isinstance(param, cla.Array) else param
        base = host.copy()
        for _ in range(directions):
            d = rng.standard_normal(base.shape)
            d /= np.linalg.norm(d)

            def loss_at(values: np.ndarray, param: Any = param) -> float:
                if isinstance(param, cla.Array):
                    param.set(values)
                else:
                    param[...] = values
                return softmax_cross_entropy(model.forward(x), labels)[0]

            fd = (loss_at(base + eps * d) - loss_at(base - eps * d)) / (2 * eps)
            loss_at(base)
            results.append((name, float((grad * d).sum()), float(fd)))
    # the input gradient
    _, g = softmax_cross_entropy(model.forward(x), labels)
    gx = model.backward(g)
    for _ in range(directions):
        d = rng.standard_normal(x.shape)
        d /= np.linalg.norm(d)
        fd = (softmax_cross_entropy(model.forward(x + eps * d), labels)[0]
              - softmax_cross_entropy(model.forward(x - eps * d), labels)[0]) / (2 * eps)
        results.append(("input", float((gx * d).sum()), float(fd)))
    return results


# --- training ------------------------------------------------------------------------------------
def load_data(seed: int = 0) -> tuple[np.ndarray, ...]:
    """Digits scaled to [0, 1] as (N, 1, 8, 8) float32; a stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    return tuple(train_test_split(x, digits.target, test_size=0.2, random_state=seed,
                                  stratify=digits.target))


def progress(done: int, total: int, text: str, width: int = 30) -> None:
    """A one-line progress bar on stderr, redrawn in place."""
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {text}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def train(epochs: int = 20, batch_size: int = 16, lr: float = 5e-3, seed: int = 0,
          limit: int | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Trains DigitsCNN; returns the model, per-step losses, test accuracy per epoch, the data."""
    x_train, x_test, y_train, y_test = load_data(seed)
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    model = DigitsCNN(seed)
    opt = Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    steps = math.ceil(len(x_train) / batch_size)
    losses: list[float] = []
    accuracies: list[float] = []
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        for step in range(steps):
            # cosine learning-rate decay to zero over the run
            opt.lr = 0.5 * lr * (1 + math.cos(math.pi * (epoch * steps + step) / (epochs * steps)))
            idx = order[step * batch_size:(step + 1) * batch_size]
            losses.append(model.loss_and_gradients(x_train[idx], y_train[idx]))
            opt.step(model.gradients())
            if show_progress:
                progress(step + 1, steps, f"epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f}")
        accuracies.append(float((model.predict(x_test) == y_test).mean()))
        if show_progress:
            print(f"epoch {epoch + 1}: test accuracy {accuracies[-1]:.4f}", file=sys.stderr)
    return {"model": model, "losses": losses, "accuracies": accuracies, "x_test": x_test,
            "y_test": y_test,
                "steps_per_epoch": steps}


def save_png(path: str, result: dict[str, Any], title: str) -> bool:
    """Loss curve, test accuracy and 8 test digits with their predictions (False: no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    losses, steps = np.array(result["losses"]), result["steps_per_epoch"]
    x_test, y_test = result["x_test"], result["y_test"]
    pred = result["model"].predict(x_test[:8])
    fig = plt.figure(figsize=(10, 6.4))
    grid = fig.add_gridspec(2, 1, height_ratios=[2.2, 1.3], hspace=0.3)
    top = grid[0].subgridspec(1, 2, width_ratios=[5, 3], wspace=0.3)
    ax = fig.add_subplot(top[0])
    ax.plot(np.arange(len(losses)) / steps, losses, lw=0.6, alpha=0.5, label="per batch")
    window = max(1, steps // 2)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot((np.arange(len(smooth)) + window - 1) / steps, smooth, lw=1.5, label="running mean")
    ax.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="training loss")
    ax.legend()
    ax2 = fig.add_subplot(top[1])
    acc = result["accuracies"]
    ax2.plot(np.arange(1, len(acc) + 1), acc, "o-")
    ax2.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy",
            ylim=(max(0.0, min(acc) - 0.02), 1.0))
    digits = grid[1].subgridspec(1, 8, wspace=0.05)
    for i in range(8):
        a = fig.add_subplot(digits[0, i])
        a.imshow(x_test[i, 0], cmap="gray_r")
        ok = pred[i] == y_test[i]
        a.set_title(f"pred {pred[i]}" + ("" if ok else f" (true {y_test[i]})"),
                    color="green" if ok else "red", fontsize=9)
        a.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.02)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None,
                        help="train on the first LIMIT training images only (quick runs)")
    parser.add_argument("--out", default="train_digits.png",
                        help="PNG of the loss curve and predictions (default: %(default)s in the "
                             "working folder)")
    args = parser.parse_args(argv)
    dev = clconv.current_device()
    print(f"device: {dev.name} [{dev.platform_name}]")
    start = time.perf_counter()
    result = train(args.epochs, args.batch_size, args.lr, args.seed, args.limit)
    seconds = time.perf_counter() - start
    acc = result["accuracies"][-1]
    print(f"test accuracy {acc:.4f} ({len(result['y_test'])} images) after {args.epochs} epochs, "
          f"wall time {seconds:.1f} s")
    title = (f"clconv digits CNN on {dev.name}: test accuracy {acc:.3f}, {args.epochs} epochs, "
             f"{seconds:.0f} s")
    if save_png(args.out, result, title):
        print(f"saved {os.path.abspath(args.out)}")
    else:
        print("matplotlib is not installed: no PNG (pip install 'clconv[plot]')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
