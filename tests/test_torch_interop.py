"""clconv.torch against torch itself: the modules' constructor, parameters, state_dict keys and
initialisation are torch.nn's; forward and backward (clconv's ops and gradients) match torch's
own within the float32/float64 tolerances; convert() swaps a model's convolutions keeping their
weights; and the functional API's handling of torch tensors and Python lists."""

from __future__ import annotations

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
