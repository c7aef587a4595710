"""clconv.torch against torch itself: the modules' constructor, parameters, state_dict keys and
initialisation are torch.nn's; forward and backward (clconv's ops and gradients) match torch's
own within the float32/float64 tolerances; convert() swaps a model's convolutions keeping their
weights; and the functional API's handling of torch tensors and Python lists."""

from __future__ import annotations

import copy

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tolerance import ATOL, RTOL

CASES = [  # (name, nd, constructor kwargs, input shape)
    ("Conv1d", 1, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1,
                       dilation=2, groups=2), (2, 4, 17)),
    ("Conv2d", 2, dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(1, 2),
                       padding=1, groups=2), (2, 4, 9, 8)),
    ("Conv2d", 2, dict(in_channels=3, out_channels=5, kernel_size=3, padding="same",
                       padding_mode="reflect", bias=False), (2, 3, 7, 6)),
    ("Conv2d", 2, dict(in_channels=3, out_channels=4, kernel_size=3, padding=2,
                       padding_mode="circular", dilation=2), (1, 3, 8, 8)),
    ("Conv3d", 3, dict(in_channels=2, out_channels=4, kernel_size=3, padding=1, stride=2),
     (1, 2, 5, 6, 7)),
    ("ConvTranspose1d", 1, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2,
                                padding=1, output_padding=1, groups=2), (2, 4, 9)),
    ("ConvTranspose2d", 2, dict(in_channels=4, out_channels=3, kernel_size=(3, 2), stride=2,
                                padding=(1, 0), dilation=(1, 2)), (2, 4, 5, 6)),
    ("ConvTranspose3d", 3, dict(in_channels=2, out_channels=4, kernel_size=2, stride=2),
     (1, 2, 3, 4, 3)),
    # output_padding >= stride (legal below the dilation): the gradients' convolution of grad_y
    # has more positions than x
    ("ConvTranspose1d", 1, dict(in_channels=2, out_channels=3, kernel_size=2, stride=1,
                                dilation=3, output_padding=2), (2, 2, 6)),
    ("ConvTranspose2d", 2, dict(in_channels=4, out_channels=2, kernel_size=3, stride=(2, 1),
                                dilation=(3, 2), output_padding=(2, 1), groups=2), (1, 4, 4, 5)),
    ("ConvTranspose3d", 3, dict(in_channels=2, out_channels=2, kernel_size=2, stride=1,
                                dilation=2, output_padding=(1, 0, 1)), (1, 2, 3, 2, 3)),
]
IDS = [f"{name}-{i}" for i, (name, *_) in enumerate(CASES)]


@pytest.fixture(scope="module")
def ct(clconv_mod):
    import clconv.torch as ct

    return ct


def _pair(ct, name, kwargs, dtype, seed=0):
    """(clconv module, torch module) built after the same seed: the same initial weights."""
    torch.manual_seed(seed)
    mine = getattr(ct, name)(**kwargs, dtype=dtype)
    torch.manual_seed(seed)
    theirs = getattr(torch.nn, name)(**kwargs, dtype=dtype)
    return mine, theirs


def _close(got, want, dtype, reduction):
    scale = max(1.0, float(want.detach().abs().max())) * np.sqrt(reduction)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(),
                               rtol=RTOL[np.dtype(dtype)], atol=ATOL[np.dtype(dtype)] * scale)


@pytest.mark.parametrize("name, nd, kwargs, shape", CASES, ids=IDS)
def test_constructor_state_dict_and_initialisation_are_torchs(ct, name, nd, kwargs, shape):
    mine, theirs = _pair(ct, name, kwargs, torch.float32)
    assert isinstance(mine, getattr(torch.nn, name))
    assert list(mine.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(mine.state_dict()[key], value), key  # torch's reset_parameters
    assert repr(mine).split("(", 1)[1] == repr(theirs).split("(", 1)[1]


@pytest.mark.parametrize("name, nd, kwargs, shape", CASES, ids=IDS)
def test_forward_and_backward_match_torch(ct, dev, name, nd, kwargs, shape):
    dtype = torch.float64 if dev.fp64 else torch.float32
    np_dtype = np.float64 if dev.fp64 else np.float32
    mine, theirs = _pair(ct, name, kwargs, dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, dtype=dtype, generator=gen)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with dev:
        ya = mine(xa)
    yb = theirs(xb)
    reduction = int(np.prod(theirs.weight.shape[1:])) * (theirs.weight.shape[0]
                                                         if "Transpose" in name else 1)
    assert ya.shape == yb.shape and ya.dtype == dtype
    _close(ya, yb, np_dtype, reduction)
    g = torch.randn(yb.shape, dtype=dtype, generator=gen)
    with dev:
        ya.backward(g)
    yb.backward(g)
    _close(xa.grad, xb.grad, np_dtype, reduction)
    _close(mine.weight.grad, theirs.weight.grad, np_dtype, int(np.prod(yb.shape)) // shape[1])
    if theirs.bias is not None:
        _close(mine.bias.grad, theirs.bias.grad, np_dtype, int(np.prod(yb.shape)))


def test_gradcheck_in_float64(ct, dev):
    if not dev.fp64:
        pytest.skip(f"{dev.name} has no float64")
    torch.manual_seed(0)
    conv = ct.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1, groups=1, dtype=torch.float64)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    with dev:
        assert torch.autograd.gradcheck(conv, (x,), eps=1e-6, atol=1e-6)
    up = ct.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, dtype=torch.float64)
    with dev:
        assert torch.autograd.gradcheck(up, (x,), eps=1e-6, atol=1e-6)


def test_unbatched_input_and_output_size(ct, dev):
    torch.manual_seed(0)
    conv = ct.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(3, 6, 6)
    with dev:
        y = conv(x)
    assert y.shape == (4, 6, 6)
    np.testing.assert_allclose(y.detach().numpy(), torch.nn.functional.conv2d(
        x, conv.weight, conv.bias, padding=1).detach().numpy(), rtol=1e-4, atol=1e-5 * 6)
    up = ct.ConvTranspose2d(4, 2, 3, stride=2, padding=1)
    with dev:
        z = up(y.unsqueeze(0), output_size=[12, 12])
    assert z.shape == (1, 2, 12, 12)
    with pytest.raises(ValueError, match="zeros"):
        ct.ConvTranspose2d(4, 2, 3, padding_mode="reflect")(y.unsqueeze(0))


def test_empty_outputs_give_zero_gradients_as_torch(ct, dev):
    """A batch of 0, and a transposed convolution whose padding leaves an output extent of 0:
    empty results, and the input, weight and bias gradients torch's (zeros)."""
    torch.manual_seed(1)
    for ours, theirs, shape, kw in ((ct.ConvTranspose1d, torch.nn.ConvTranspose1d, (2, 3, 4),
                                     {"padding": 3}),
                                    (ct.Conv2d, torch.nn.Conv2d, (0, 3, 5, 5), {"padding": 1})):
        m, ref = ours(3, 2, 3, **kw), theirs(3, 2, 3, **kw)
        ref.load_state_dict(m.state_dict())
        x = torch.randn(*shape, requires_grad=True)
        x2 = x.detach().clone().requires_grad_(True)
        with dev:
            y = m(x)
            y.sum().backward()
        want = ref(x2)
        want.sum().backward()
        assert y.shape == want.shape and 0 in y.shape
        for got, exp in ((x.grad, x2.grad), (m.weight.grad, ref.weight.grad),
                         (m.bias.grad, ref.bias.grad)):
            assert torch.equal(got, exp)


def test_convert_swaps_convolutions_and_keeps_weights(ct, dev):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 2, 2, stride=2)),
                                torch.nn.Identity())
    x = torch.randn(2, 1, 6, 6)
    want = model(x)
    converted = ct.convert(model)
    assert type(converted[0]) is ct.Conv2d and type(converted[2][0]) is ct.ConvTranspose2d
    assert type(model[0]) is torch.nn.Conv2d  # the original is left alone (a copy was made)
    assert list(converted.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value)
    with dev:
        got = converted(x)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-4,
                               atol=1e-5 * 12)
    same = ct.convert(model, inplace=True)
    assert same is model and type(model[0]) is ct.Conv2d


@pytest.mark.parametrize("model", ["conv", "transposed", "train-chain"])
@pytest.mark.parametrize("loss", ["square", "sum"])
def test_double_backward_raises_instead_of_dropping_terms(ct, dev, model, loss):
    """clconv's gradients are not themselves differentiable: differentiating a gradient taken
    with create_graph=True through a clconv.torch module raises, also where the gradient flowing
    into it is a constant (a sum: torch's once_differentiable then returned plain tensors, and a
    gradient penalty silently lost the convolution's second-order terms; jvp got zeros)."""
    torch.manual_seed(0)
    net = {"conv": lambda: torch.nn.Conv2d(2, 3, 3),
           "transposed": lambda: torch.nn.ConvTranspose2d(2, 3, 3, stride=2),
           "train-chain": lambda: torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3),
                                                      torch.nn.BatchNorm2d(3),
                                                      torch.nn.ReLU()).train()}[model]()
    converted = ct.convert(net)
    x = torch.randn(2, 2, 6, 6, requires_grad=True)
    with dev:
        y = converted(x)
        out = (y.square().sum() if loss == "square" else y.sum()) + x.pow(3).sum()
        gx, = torch.autograd.grad(out, x, create_graph=True)
        assert gx.requires_grad
        with pytest.raises(RuntimeError, match="not differentiable"):
            gx.square().sum().backward()
        # torch.autograd.grad with respect to x, where the gradient reaches x only through
        # clconv: it said x was not used in the graph (None with allow_unused=True)
        only, = torch.autograd.grad(converted(x).square().sum(), x, create_graph=True)
        for kwargs in ({}, {"allow_unused": True}):
            with pytest.raises(RuntimeError, match="not differentiable"):
                torch.autograd.grad(only.square().sum(), x, **kwargs)
        # torch.autograd.functional.jvp: the gradient differentiated with respect to the
        # incoming gradient (it returned zeros)
        with pytest.raises(RuntimeError, match="not differentiable"):
            torch.autograd.functional.jvp(converted, x.detach(), torch.ones_like(x))
        x.grad = None  # a plain backward (no graph of the gradient) is unaffected
        converted(x).sum().backward()
    want = torch.autograd.grad(net(x).sum(), x)[0]
    torch.testing.assert_close(x.grad, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_parametrized_weight_is_computed_once_a_call(ct, dev, mode, monkeypatch):
    """spectral_norm (torch.nn.utils.parametrizations) on a conv of a fused conv -> BatchNorm ->
    ReLU chain: its parametrization runs once a forward, as in torch (the fused forward read the
    weight five times in training: five power iterations, `_u` and so the weights drifting from
    torch's), and the training steps follow torch's."""
    from torch.nn.utils.parametrizations import _SpectralNorm, spectral_norm

    calls = []
    forward = _SpectralNorm.forward

    def counting(self, w):
        calls.append(1)
        return forward(self, w)

    monkeypatch.setattr(_SpectralNorm, "forward", counting)
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6),
                              torch.nn.ReLU(), torch.nn.Conv2d(6, 2, 1))
    spectral_norm(ref[0])
    converted = ct.convert(ref)
    x = torch.randn(2, 3, 8, 8)
    for model in (ref, converted):
        getattr(model, mode)()
    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in (ref, converted)]
    for step in range(2):
        counts = []
        for model, opt in zip((ref, converted), opts):
            calls.clear()
            with dev:
                if mode == "train":
                    opt.zero_grad()
                    model(x).tanh().sum().backward()
                    opt.step()
                else:
                    with torch.no_grad():
                        model(x)
            counts.append(len(calls))
        assert counts[0] == counts[1] == 1
    u = [m[0].parametrizations.weight[0]._u for m in (ref, converted)]
    torch.testing.assert_close(u[1], u[0], rtol=1e-5, atol=1e-6)
    with torch.no_grad(), dev:
        torch.testing.assert_close(converted.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-5)


def _weight_normed_model(kind):
    from torch.nn.utils import parametrizations, weight_norm

    wrap = {"weight_norm": weight_norm, "parametrized weight_norm": parametrizations.weight_norm,
            "spectral_norm": parametrizations.spectral_norm}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old weight_norm is deprecated
        return torch.nn.Sequential(wrap(torch.nn.Conv1d(3, 6, 3, padding=2, dilation=2)),
                                   torch.nn.ReLU(),
                                   wrap(torch.nn.ConvTranspose1d(6, 4, 2, stride=2)))


@pytest.mark.parametrize("kind", ["weight_norm", "parametrized weight_norm", "spectral_norm"])
def test_weight_normed_convolutions_run_on_the_device(ct, dev, kind):
    """torch.nn.utils.weight_norm (whose computed weight deepcopy refuses before a no-grad
    forward) and the parametrizations (weight_norm, spectral_norm: a class of their own):
    convert runs them through clconv with gradients reaching the parametrization's tensors,
    compile lowers them."""
    torch.manual_seed(0)
    model = _weight_normed_model(kind)
    x = torch.randn(2, 3, 9)
    converted = ct.convert(model)
    assert all(type(m).__module__ == "clconv.torch" for m in (converted[0], converted[2]))
    if kind == "spectral_norm":  # its power iteration updates state in train mode
        model.eval(), converted.eval()
    with dev:
        got = converted(x)
        got.square().sum().backward()
    want = model(x)
    want.square().sum().backward()
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-4,
                               atol=1e-4)
    grads = [(n, p.grad) for n, p in model.named_parameters()]
    for (name, g), (name2, p) in zip(grads, converted.named_parameters()):
        assert name == name2
        np.testing.assert_allclose(p.grad.numpy(), g.numpy(), rtol=1e-3, atol=1e-3)
    model.eval()
    with dev, torch.no_grad():
        cm = ct.compile(model, x)
        assert cm.fallbacks == []
        np.testing.assert_allclose(cm(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_torch_tensors_in_the_functional_api(clconv_mod, dev):
    from clconv.runtime.interop import host_operand

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 2, 6, 6, generator=gen), torch.randn(3, 2, 3, 3, generator=gen)
    with dev:
        y = clconv_mod.conv2d(x, w, padding=1)  # detached: read as numpy views, numpy back
        y2 = clconv_mod.conv2d(x.numpy(), w.numpy(), padding=1)
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, y2)
    view = host_operand(x[:, :, ::2], "input")  # no copy, strides kept
    assert np.shares_memory(view, x.numpy())
    with dev, pytest.raises(TypeError, match=r"requires grad.*clconv\.torch"):
        clconv_mod.conv2d(x.clone().requires_grad_(True), w)
    with dev, pytest.raises(TypeError, match=r"requires grad.*clconv\.torch"):
        clconv_mod.conv2d(x, torch.nn.Parameter(w))  # a weight tensor too
    with dev, pytest.raises(TypeError, match="numpy cannot read"):
        clconv_mod.conv2d(x.to(torch.bfloat16), w.to(torch.bfloat16))
    # a lazily negated view (its memory holds the values un-negated) is read with its sign
    neg = torch.complex(torch.zeros_like(x), x).conj().imag
    assert neg.is_neg()
    with dev:
        got = clconv_mod.conv2d(neg, w, padding=1)
        np.testing.assert_array_equal(clconv_mod.relu(neg), torch.relu(-x).numpy())
        with pytest.raises(TypeError, match="negative"):
            clconv_mod.relu(x, out=neg)
    np.testing.assert_allclose(got, torch.nn.functional.conv2d(-x, w, padding=1).numpy(),
                               rtol=1e-5, atol=1e-5)
    import clconv.torch as ct

    converted = ct.convert(torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:]).bfloat16())
    with dev, pytest.raises(TypeError, match=r"dtype torch\.bfloat16.*float32, float64"):
        converted(x.to(torch.bfloat16))


def test_writes_into_tensors_count_on_their_version_counters(clconv_mod, dev):
    """out=, inplace=True and batch_norm's running statistics written into torch tensors
    increment their version counters as torch's in-place ops do: autograd raises for a tensor
    it saved (backward used the written values silently), a converted model remakes the device
    copy of a weight written so (it kept the old one), and an inference tensor is refused
    outside inference mode, as torch refuses it. A negated view is refused as a written
    operand, naming it."""
    import clconv.torch as ct

    gen = torch.Generator().manual_seed(0)
    for write in ("inplace", "out", "running"):
        a = torch.randn(3, requires_grad=True)
        t = torch.randn(3, generator=gen)
        before = t._version
        y = (a * t).sum()  # autograd saves t
        with dev:
            if write == "inplace":
                clconv_mod.relu(t, inplace=True)
            elif write == "out":
                clconv_mod.add(torch.ones(3), torch.ones(3), out=t)
            else:
                clconv_mod.batch_norm(torch.randn(4, 3, 2, generator=gen), t, torch.ones(3),
                                      training=True)
        assert t._version > before, write
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.backward()
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    model = ct.convert(torch.nn.Sequential(conv)).eval()
    x = torch.randn(1, 4, 6, 6, generator=gen)
    with torch.no_grad(), dev:
        model(x)  # the device copy of the weight made
        one = model[0].weight.detach()[1:2, 2:3, 0:1, 0:1]  # a view: the weight's counter
        clconv_mod.mul(one, torch.full((1, 1, 1, 1), 100.0), out=one)
        got = model(x)
    want = torch.nn.functional.conv2d(x, model[0].weight.detach(), model[0].bias.detach(),
                                      padding=1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        frozen = torch.zeros(2, 3)
    with dev, pytest.raises(RuntimeError, match="inference tensor outside InferenceMode"):
        clconv_mod.add(torch.ones(2, 3), torch.ones(2, 3), out=frozen)
    with dev, torch.inference_mode():
        clconv_mod.add(torch.ones(2, 3), torch.ones(2, 3), out=frozen)  # allowed there
    assert (frozen == 2).all()
    neg = torch.complex(torch.zeros(3), torch.randn(3, generator=gen)).conj().imag
    with dev, pytest.raises(TypeError, match="input is a torch tensor with its negative"):
        clconv_mod.relu(neg, inplace=True)
    with dev, pytest.raises(TypeError, match="running_mean is a torch tensor with its negative"):
        clconv_mod.batch_norm(torch.randn(4, 3, 2), neg, torch.ones(3), training=True)


def test_modules_read_negated_views(ct, dev):
    """A lazily negated input (x.conj().imag: its memory holds -values) through clconv.torch's
    modules and a converted model, with and without grad (numpy() refused it: torch's raw
    error)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.BatchNorm2d(6),
                            torch.nn.ReLU()).eval()
    x = torch.randn(2, 4, 8, 9)
    neg = torch.complex(torch.zeros_like(x), -x).conj().imag  # the values of x, negated lazily
    assert neg.is_neg()
    conv = ct.Conv2d(4, 6, 3, padding=1)
    conv.load_state_dict(m[0].state_dict())
    converted = ct.convert(m)
    with dev:
        with torch.no_grad():
            _close_t(conv(neg), m[0](x))
            _close_t(converted(neg), m(x))
        leaf = neg.detach().requires_grad_()  # (a negated leaf keeps its bit)
        y = conv(leaf)
    _close_t(y, m[0](x))


def _close_t(got, want):
    want = want.detach()
    np.testing.assert_allclose(got.detach().numpy(), want.numpy(), rtol=1e-4,
                               atol=1e-4 * float(want.abs().max()))


def test_lists_and_scalars_are_clear_type_errors(clconv_mod, dev):
    w = np.ones((1, 1, 1, 1), np.float32)
    with dev, pytest.raises(TypeError,
                            match=r"Python list.*np\.asarray\(input, dtype=np\.float32\)"):
        clconv_mod.conv2d([[[[1.0]]]], w)
    with dev, pytest.raises(TypeError, match=r"Python tuple.*np\.asarray\(weight"):
        clconv_mod.conv2d(np.ones((1, 1, 2, 2), np.float32), ((((1.0,),),),))
    with dev, pytest.raises(TypeError, match="scalar"):
        clconv_mod.conv2d(np.ones((1, 1, 2, 2), np.float32), 2.0)


def test_the_int_dtype_error_lists_what_the_device_has(clconv_mod, dev):
    with dev, pytest.raises(TypeError) as err:
        clconv_mod.conv2d(np.ones((1, 1, 3, 3), np.int32), np.ones((1, 1, 1, 1), np.int32))
    text = str(err.value)
    assert "int32" in text and "float32" in text
    assert ("float16" in text) == dev.fp16 and ("float64" in text) == dev.fp64


@pytest.mark.parametrize("name, shape, fmt", [
    ("Conv2d", (2, 3, 7, 6), "channels_last"),
    ("ConvTranspose2d", (2, 3, 5, 4), "channels_last"),
    ("Conv3d", (1, 3, 4, 5, 3), "channels_last_3d")])
def test_channels_last_in_channels_last_out(ct, dev, name, shape, fmt):
    """As torch's convolutions: a channels_last input gives a channels_last result for 2-d
    convolutions (torch's CPU Conv3d returns channels_last_3d inputs' results contiguous, and so
    does clconv.torch); values and gradients as torch's; a contiguous input a contiguous one."""
    mine, theirs = _pair(ct, name, dict(in_channels=3, out_channels=4, kernel_size=3, padding=1),
                         torch.float32)
    memory_format = getattr(torch, fmt)
    x = torch.randn(*shape).to(memory_format=memory_format).requires_grad_()
    got, want = mine(x), theirs(x)
    assert want.is_contiguous(memory_format=memory_format) == (len(shape) == 4)
    assert got.is_contiguous(memory_format=memory_format) == (len(shape) == 4)
    assert got.is_contiguous() == want.is_contiguous()
    _close(got, want, np.float32, 27)
    (gx,) = torch.autograd.grad(got.square().sum(), x)
    (wx,) = torch.autograd.grad(want.square().sum(), x)
    _close(gx, wx, np.float32, 27 * 4)
    assert mine(x.detach().contiguous()).is_contiguous()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torch_jit_script_is_refused_clearly(ct):
    model = ct.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()))
    with pytest.raises(RuntimeError, match="torch.jit.script does not support "
                                           "clconv.torch.Conv2d.*clconv.torch.compile"):
        torch.jit.script(model)
    with pytest.raises(RuntimeError, match="ConvTranspose1d"):
        torch.jit.script(ct.ConvTranspose1d(2, 2, 3))
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))  # torch's own still script


@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*` is deprecated:DeprecationWarning")
def test_torch_jit_trace_is_refused_clearly(ct):
    """A trace would record numpy calls ("Graphs differed", or a shape of tensors)."""
    x = torch.randn(1, 3, 8, 8)
    for model in (ct.convert(torch.nn.Conv2d(3, 4, 3)),
                  ct.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3),
                                                 torch.nn.BatchNorm2d(4)).eval())):
        with pytest.raises(RuntimeError, match="torch.jit.trace does not support "
                                               "clconv.torch.Conv2d.*clconv.torch.compile"):
            torch.jit.trace(model, x)
    assert model(x).shape == (1, 4, 6, 6)  # (and runs as before afterwards)


@pytest.mark.parametrize("zero_copy", ["0", "1"])
def test_zero_copy_operands_give_the_same_results(ct, dev, zero_copy, monkeypatch):
    """CLCONV_TORCH_ZERO_COPY=1: operands as USE_HOST_PTR buffers over the tensors (on devices
    whose memory is the host's), the same values as the copying path and torch."""
    monkeypatch.setenv("CLCONV_TORCH_ZERO_COPY", zero_copy)
    mine, theirs = _pair(ct, "Conv2d", {"in_channels": 3, "out_channels": 5, "kernel_size": 3,
                                        "padding": 1}, torch.float32)
    tmine, ttheirs = _pair(ct, "ConvTranspose2d", {"in_channels": 5, "out_channels": 2,
                                                   "kernel_size": 2, "stride": 2}, torch.float32)
    x = torch.randn(2, 3, 9, 7)
    with torch.no_grad():
        _close(tmine(mine(x)), ttheirs(theirs(x)), np.float32, 27 * 20)
        _close(mine(x[:, :, 1:]), theirs(x[:, :, 1:]), np.float32, 27)  # a strided view


@pytest.mark.parametrize("setting", ["0", None])
def test_results_are_written_into_the_tensors_memory(ct, dev, setting, monkeypatch):
    """On a device whose memory is the host's, a converted model's inference forward reads its
    operands from the tensors' memory and writes each result into the returned tensor's: no
    upload or download on a warm call (its weights stay on the device); CLCONV_TORCH_ZERO_COPY=0
    copies both ways. The same results either way."""
    import pyopencl as cl
    from torch import nn

    if not dev.cl_device.host_unified_memory:
        pytest.skip(f"{dev.name}'s memory is not the host's")
    if setting is None:
        monkeypatch.delenv("CLCONV_TORCH_ZERO_COPY", raising=False)
    else:
        monkeypatch.setenv("CLCONV_TORCH_ZERO_COPY", setting)
    torch.manual_seed(0)
    model = _randomise_batchnorm(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=3),
        nn.ConvTranspose2d(6, 4, 2, stride=2), nn.Conv2d(4, 4, 1))).eval()
    x = torch.randn(2, 3, 10, 8)
    twin = copy.deepcopy(model).train()  # torch's own, for the training step below
    with torch.no_grad():
        want = model(x)
        converted = ct.convert(model)
        converted(x)  # the weights go to the device once
        copies = []
        real = cl.enqueue_copy
        monkeypatch.setattr(cl, "enqueue_copy", lambda *a, **k: copies.append(1) or real(*a, **k))
        got = converted(x)
    _close(got, want, np.float32, 54 * 6)
    assert (len(copies) >= 8) if setting == "0" else copies == []
    # a training step: forward and backward (gradients as operands and results) alike
    assert not any(type(m).__module__.startswith("clconv") for m in twin.modules())
    converted.train()
    x.requires_grad_(True)
    converted(x).square().sum().backward()  # the backward's plans
    for p in converted.parameters():
        p.grad = None
    x.grad = None
    copies.clear()
    converted(x).square().sum().backward()
    gx = x.grad
    x.grad = None
    twin(x).square().sum().backward()
    _close(gx, x.grad, np.float32, 54 * 36)
    for (name, p), q in zip(converted.named_parameters(), twin.parameters()):
        _close(p.grad, q.grad, np.float32, 2 * 80 * 36)
    assert (len(copies) >= 8) if setting == "0" else copies == []


def test_results_over_tensors_memory_are_the_tensors_after_one_wait(ct, dev):
    """Where clconv found that the device writes a USE_HOST_PTR buffer's host memory itself
    (`writes_host_memory`: results then become the tensors' with one wait of the queue, no map
    and unmap each), a convolution's result over a new tensor's memory is in that memory once the
    queue finished, before any map; elsewhere the map makes it so. Either way torch's values."""
    import pyopencl.array as cla

    import clconv
    from clconv.torch_ops import operand, result_operand, synced, writes_host_memory

    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 17, 13), torch.randn(5, 3, 3, 3)
    want = torch.nn.functional.conv2d(x, w, padding=1)
    with dev:
        made = result_operand(tuple(want.shape), x, dev, True)
        clconv.conv2d(operand(x, dev, True), cla.to_device(dev.queue, w.numpy()), padding=1,
                      out=made[1])
        if writes_host_memory(dev):
            dev.queue.finish()
            got = made[0]  # read with no map
        else:
            got = synced(made, dev)
    _close(got, want, np.float32, 27)


def _bn_chain_model():
    """nn.Sequentials of Conv -> BatchNorm -> activation chains (forward and transposed, grouped,
    1-d, no activation, a shared activation) with random BatchNorm statistics."""
    from torch import nn

    torch.manual_seed(0)
    shared = nn.ReLU()
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.GELU(approximate="tanh"),
        nn.Sequential(nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2), nn.BatchNorm2d(4),
                      nn.LeakyReLU(0.2)),
        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), shared,
        nn.Conv2d(4, 5, 3, stride=2), nn.BatchNorm2d(5), shared,
        nn.Flatten(2), nn.Conv1d(5, 3, 3, padding=1), nn.BatchNorm1d(3))
    return _randomise_batchnorm(model)


def _randomise_batchnorm(model):
    """`model` with random BatchNorm statistics and affine parameters (so that folding shows)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
    return model


def _folded(ct, module):
    return getattr(module, "_clconv_fold", None)


def test_a_folded_conv_copied_alone_folds_nothing(ct, dev):
    """torch's fuse_conv_bn_eval on a converted chain deep-copies the folded conv alone and
    replaces the BatchNorm by an Identity: the copy folded its own copy of the BatchNorm, which
    then ran again (1.6 off under no_grad). A lone copy folds nothing now; a copy of the whole
    model still folds its chains."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6),
                                torch.nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
    converted = ct.convert(model)
    whole = copy.deepcopy(converted)
    assert "folds=" in repr(whole[0])
    converted[0] = fuse_conv_bn_eval(converted[0], converted[1])
    converted[1] = torch.nn.Identity()
    assert "folds=" not in repr(converted[0])
    with torch.no_grad(), dev:
        for net in (converted, whole):
            np.testing.assert_allclose(net(x).numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
    xg = x.clone().requires_grad_()
    with dev:
        got = converted(xg)
    np.testing.assert_allclose(got.detach().numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_convert_folds_conv_bn_activation_in_eval_mode(ct, dev, monkeypatch):
    """In eval mode under no_grad, each chain is one clconv convolution (torch's BatchNorm and
    activations do not run) and the result is torch's; state_dict keys and values unchanged."""
    import copy

    model = _bn_chain_model().eval()
    converted = ct.convert(model)
    assert list(converted.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    folds = {id(_folded(ct, m)) for m in converted.modules() if _folded(ct, m) is not None}
    assert len(folds) == 6
    assert _folded(ct, converted[2]).act is converted[2] and _folded(ct, converted[6][2])
    assert _folded(ct, converted[9]) is None  # a ReLU used twice stays a module of its own
    assert _folded(ct, converted[8]).act is None and _folded(ct, converted[8]).bn is converted[8]
    assert "folds=BatchNorm2d+ReLU" in repr(converted) and "(1): BatchNorm2d(8" in repr(converted)
    x = torch.randn(2, 3, 7, 6)
    with torch.no_grad():
        want = model(x)
        calls = []
        real = torch.nn.functional.batch_norm
        monkeypatch.setattr(torch.nn.functional, "batch_norm",
                            lambda *a, **k: calls.append(1) or real(*a, **k))
        with dev:
            got = converted(x)
        assert calls == []  # every BatchNorm was folded
        monkeypatch.undo()
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4,
                               atol=1e-4 * float(want.abs().max()))
    # A changed running statistic or weight is folded again on the next call.
    with torch.no_grad():
        for m in (model, converted):
            m[1].running_var.mul_(3.0)
            m[0].weight.mul_(-1.0)
        with dev:
            got = converted(x)
        want = model(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4,
                               atol=1e-4 * float(want.abs().max()))
    # A deep copy keeps its chains to its own modules.
    twin = copy.deepcopy(converted)
    assert _folded(ct, twin[0]).bn is twin[1]


def test_convert_folded_model_trains_as_torch(ct, dev):
    """train(): BatchNorm's batch statistics and running-stat updates, gradients to every
    parameter as torch's; eval() with grad enabled: gradients as torch's too; torch's state_dict
    loads into the converted model and back."""
    # float64 where the device has it: gradients through BatchNorm's batch statistics cancel, so
    # float32 rounding shows at the small values
    dtype = torch.float64 if dev.fp64 else torch.float32
    tol = 1e-9 if dev.fp64 else 2e-3
    model = _bn_chain_model().to(dtype)
    converted = ct.convert(model)
    converted.load_state_dict(model.state_dict())
    model.load_state_dict(converted.state_dict())
    x = torch.randn(2, 3, 7, 6, dtype=dtype)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        converted.train(mode == "train")
        model.zero_grad()
        converted.zero_grad()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        with dev:
            ya = converted(xa)
            ya.square().sum().backward()
        yb = model(xb)
        yb.square().sum().backward()
        scale = float(yb.detach().abs().max())
        np.testing.assert_allclose(ya.detach().numpy(), yb.detach().numpy(), rtol=tol,
                                   atol=tol * scale)
        np.testing.assert_allclose(xa.grad.numpy(), xb.grad.numpy(), rtol=tol,
                                   atol=tol * float(xb.grad.abs().max()))
        # one scale for all (a conv bias before a training BatchNorm has a zero gradient)
        gscale = max(float(p.grad.abs().max()) for p in model.parameters())
        for (name, pa), pb in zip(converted.named_parameters(), model.parameters()):
            np.testing.assert_allclose(pa.grad.numpy(), pb.grad.numpy(), rtol=tol,
                                       atol=tol * gscale, err_msg=name)
        for (name, ba), bb in zip(converted.named_buffers(), model.buffers()):
            np.testing.assert_allclose(ba.numpy(), bb.numpy(), rtol=tol, atol=tol,
                                       err_msg=name)  # running stats updated alike (train)


def test_convert_folds_chains_by_their_traced_data_flow(ct, dev):
    """Custom forwards fold where torch.fx's trace (train and eval mode) shows each module's
    output going to the next one only; a conv whose output is used twice, a shared activation,
    hooked modules and untraceable forwards stay unfolded; results match torch."""
    from torch import nn

    class Block(nn.Module):  # conv -> bn -> act: folds whole
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), \
                nn.ReLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Reused(nn.Module):  # conv's output read twice; a shared activation
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
            self.conv2, self.bn2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
            self.act = nn.ReLU()

        def forward(self, x):
            y = self.conv1(x)
            z = self.act(self.bn2(self.conv2(self.act(self.bn1(y)))))
            return z + y

    class Untraceable(nn.Module):  # data-dependent control flow: fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > -1e9 else x

    hooked = nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
    seen = []
    hooked[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model = nn.Sequential(Block(), Reused(), hooked)
    _randomise_batchnorm(model)
    model.eval()
    converted = ct.convert(model)
    block, reused = converted[0], converted[1]
    assert _folded(ct, block.conv) is _folded(ct, block.bn) is _folded(ct, block.act)
    assert _folded(ct, block.conv).act is block.act
    assert _folded(ct, reused.conv1) is None and _folded(ct, reused.bn1) is None
    assert _folded(ct, reused.conv2) is not None and _folded(ct, reused.conv2).act is None
    assert not any(_folded(ct, m) for m in converted[2].modules())
    assert not any(_folded(ct, m) for m in ct.convert(model, fold=False).modules())
    assert converted.training is False and all(not m.training for m in converted.modules())
    x = torch.randn(2, 2, 6, 5)
    with torch.no_grad(), dev:
        got = converted(x)
    with torch.no_grad():
        want = model(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    assert seen == [(2, 3, 4, 3)] * 2
    # An untraceable forward: only nn.Sequential runs fold (none here).
    untraceable = ct.convert(nn.Sequential(Untraceable()).eval())
    assert not any(_folded(ct, m) for m in untraceable.modules())
    with torch.no_grad(), dev:
        got = untraceable(x[:, :1].expand(2, 3, 6, 5).contiguous())


def test_compile_takes_a_converted_folded_model(ct, dev):
    model = _bn_chain_model().eval()
    x = torch.randn(2, 3, 7, 6)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", ct.FallbackWarning)
        cm = ct.compile(ct.convert(model), x)
    assert cm.fallbacks == []
    assert sum("BN folded" in s.op for s in cm.steps) == 6
    with torch.no_grad():
        want = model(x)
    np.testing.assert_allclose(cm(x).numpy(), want.numpy(), rtol=2e-3,
                               atol=2e-3 * float(want.abs().max()))


@pytest.mark.parametrize("family", ["mobilenet_v2", "efficientnet_b0", "dcgan", "unet3d"])
def test_convert_folds_the_families_chains(ct, dev, family):
    """The test networks (tests/models.py) converted: their Sequential chains fold, and the eval
    output under no_grad is torch's."""
    import models

    make, shape = models.FAMILIES[family]
    torch.manual_seed(0)
    model = models.randomize(make(), seed=1).eval()
    converted = ct.convert(model)
    assert any(_folded(ct, m) is not None for m in converted.modules())
    x = torch.randn(*shape)
    with torch.no_grad():
        want = model(x)
        with dev:
            got = converted(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-3,
                               atol=2e-3 * float(want.abs().max()))


@pytest.mark.parametrize("folded", [False, True])
def test_inference_keeps_device_weights_until_they_change(ct, dev, folded):
    """Under no_grad, weights stay on the device between calls (and their packing with them) and
    are uploaded again after any change: in-place ops (version counter), load_state_dict, an
    optimizer step, and writes through `.data` (which bypass the counter; a sample notices them)."""
    import gc

    from torch import nn

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()) \
        if folded else nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    model.eval()
    converted = ct.convert(model)
    assert (_folded(ct, converted[0]) is not None) == folded
    x = torch.randn(2, 3, 6, 5)
    w = converted[0].weight

    def check():
        with torch.no_grad():
            want = model(x)
            with dev:
                got = converted(x)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)

    def mirror():  # the reference gets the same weights
        model.load_state_dict(converted.state_dict())

    check()
    check()
    with torch.no_grad():
        w.mul_(-1.5)
    mirror()
    check()
    w.data[0, 0, 0, 0] = 7.0  # bypasses the version counter; the sample includes element 0
    mirror()
    check()
    w.data.copy_(torch.randn_like(w))
    mirror()
    check()
    w.data = torch.randn_like(w)  # new storage under the same Parameter (its version unchanged)
    mirror()
    check()
    w.data[0, 0, 0, 0] = -3.0  # and a write into that one
    mirror()
    check()
    # A weight that is not contiguous (no view of its memory to sample: sampled anew each call)
    converted[0].weight = nn.Parameter(torch.randn(3, 4, 3, 3).transpose(0, 1))
    w = converted[0].weight
    mirror()
    check()
    w.data[0, 0, 0, 0] = 5.0
    mirror()
    check()
    converted.load_state_dict({k: v * 0.5 for k, v in converted.state_dict().items()})
    mirror()
    check()
    opt = torch.optim.SGD(converted.parameters(), lr=0.1)
    converted.train()
    with dev:
        converted(x).square().sum().backward()
    opt.step()
    converted.eval()
    mirror()
    check()
    if not folded:
        from clconv.torch_ops import DEVICE_COPIES

        before = len(DEVICE_COPIES)
        del converted, opt, w
        gc.collect()
        assert len(DEVICE_COPIES) < before  # the copies go with their tensors


@pytest.mark.parametrize("padding, changed", [(1, (2, 0)), ("same", 0)])
def test_padding_modes_pad_by_the_amounts_cached_at_construction(ct, dev, padding, changed):
    """torch's ConvNd with a padding_mode other than 'zeros' pads by the amounts cached at
    construction (F.pad by `_reversed_padding_repeated_twice`), so a `.padding` assigned later is
    not seen, where 'zeros' reads it: the clconv.torch module, convert()'s inference chains and
    training steps, and compile() pad as torch does (they read `.padding`)."""
    torch.manual_seed(0)

    def model():
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, (2, 3) if padding == "same" else 3, padding=padding,
                            padding_mode="reflect"),
            torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3, padding=1))
    ref = model()
    ref[0].padding = changed if isinstance(changed, tuple) else (changed, changed)
    ref[3].padding = (0, 2)  # 'zeros': read on each call, by torch too
    x = torch.randn(2, 3, 8, 9)
    want = ref.eval()(x)
    fast = ct.convert(ref)
    with torch.no_grad():
        got = [fast.eval()(x), ct.compile(ref.eval(), x)(x)]
    for out in got:
        assert out.shape == want.shape
        _close(out, want, np.float32, reduction=100)
    fast.train()
    ref.train()
    xr = x.clone().requires_grad_()
    xf = x.clone().requires_grad_()
    ref(xr).square().sum().backward()
    out = fast(xf)
    out.square().sum().backward()
    assert out.shape == want.shape
    _close(xf.grad, xr.grad, np.float32, reduction=1000)
    conv = ct.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
    conv.padding = (0, 0)
    theirs = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
    theirs.load_state_dict(conv.state_dict())
    theirs.padding = (0, 0)
    with torch.no_grad():
        assert conv(x).shape == theirs(x).shape == (2, 4, 8, 9)


def test_convert_and_compile_refuse_what_is_not_a_module_or_a_tensor(ct):
    """convert(a function) leaked an AttributeError and compile(model, a numpy example) torch.fx's
    shape-propagation RuntimeError: both are TypeErrors saying what to pass."""
    model = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ct.convert(lambda x: x)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ct.compile(lambda x: x, torch.randn(1, 3, 5, 5))
    with pytest.raises(TypeError, match="numpy array"):
        ct.compile(model.eval(), np.ones((1, 3, 5, 5), np.float32))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_a_padding_modes_result_layout_as_torchs(ct, dev, padding_mode):
    """A channels_last input's result: channels_last as torch's, but contiguous with circular
    padding (torch pads it with F.pad into a new contiguous tensor first), through the module,
    a converted chain in training and the fused inference forward."""
    import copy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=1, padding_mode=padding_mode),
                                torch.nn.BatchNorm2d(6), torch.nn.ReLU())
    converted = ct.convert(copy.deepcopy(model))
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    with dev:
        pairs = [(converted[0](x), model[0](x)), (converted(x), model(x))]
        model.eval()
        converted.eval()
        with torch.no_grad():
            pairs.append((converted(x), model(x)))
    for got, want in pairs:
        assert got.is_contiguous() == want.is_contiguous()
        assert got.is_contiguous(memory_format=torch.channels_last) == \
            want.is_contiguous(memory_format=torch.channels_last)
        _close(got, want, np.float32, 36)


def test_pause_openmp_releases_torchs_idle_workers(monkeypatch):
    """clconv.torch_ops.pause_openmp on a CPU device ends the calling thread's idle OpenMP team
    (torch's intra-op workers, which spin after each parallel op on the cores PoCL's threads
    need); torch's next parallel op starts it again with the same results. A no-op with
    CLCONV_TORCH_PAUSE_OPENMP=0 and on other devices."""
    import os
    from types import SimpleNamespace

    from clconv import torch_ops

    assert torch_ops._openmp_pause() is not None  # torch's Linux wheels load libgomp

    def tasks() -> int:
        return len(os.listdir("/proc/self/task"))

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.arange(4_000_000, dtype=torch.float32)
        want = (a * 2).sum().item()  # a parallel region: the team of 2 exists now
        team = tasks()
        torch_ops.pause_openmp(SimpleNamespace(kind="gpu"))
        assert tasks() == team
        monkeypatch.setenv("CLCONV_TORCH_PAUSE_OPENMP", "0")
        torch_ops.pause_openmp(SimpleNamespace(kind="cpu"))
        assert tasks() == team
        monkeypatch.delenv("CLCONV_TORCH_PAUSE_OPENMP")
        torch_ops.pause_openmp(SimpleNamespace(kind="cpu"))
        assert tasks() == team - 1  # its worker ended
        assert (a * 2).sum().item() == want  # a new team, the same result
        assert tasks() == team
    finally:
        torch.set_num_threads(threads)
