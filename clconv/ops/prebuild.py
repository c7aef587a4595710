"""A network's convolution, Linear, pooling and squeeze-excitation kernels built ahead, in helper
processes, for its first forward (or first training step) on a cold cache (clconv.torch's
converted and compiled models).

On PoCL every kernel is compiled twice by LLVM on its first use (the program at clBuildProgram,
the kernel's work-group function at its first launch), 0.2-2 s each, and one at a time: PoCL
holds one compiler lock per process. A network met for the first time (empty caches: a new
machine, CI, a container) spent most of its first forward there (MobileNetV2 through `convert`:
7.6 s, 0.6 s with PoCL's cache warm). Compilation in other processes is not behind that lock,
and PoCL's disk cache (POCL_CACHE_DIR) is shared: a kernel another process compiled is found
there (written through a temporary file and a rename, so a half-written one is never read).

So the caller `Helpers.spawn`s helpers (their imports and OpenCL context overlap what follows),
lists the network's layers without building anything (`convert`: `recording`, in which
`cached_conv_plan` records its arguments and raises `Recorded`, or a training chain `note`s its
`chain_spec`, a pool its `pool_spec`, a squeeze-excitation block its `squeeze_excitation_spec`,
the caller computing that layer some other way; `compile`: its lowering) and
`send`s them the distinct ones, in `_helper_order`
(each kind of layer once, the kinds the caller meets last first, then the rest from the last),
while it runs the network from the first. A helper makes each layer's plan and runs it once on
zeros (weights marked constant, as the callers'), 'auto''s shortlist included (each candidate
run once, nothing measured or remembered: `autotune.trials_only`), or for a training chain its
modules and one forward and backward of clconv.torch_train.run_chain; the caller `stop`s them
when its forward is done (a training step's at its next call: they build its backward's
kernels meanwhile). Nothing computed depends on them: a kernel the caller needs before a helper
has it is built by the caller, as without helpers. A network whose first forward listed its
layers is named in NETWORKS_FILE in clconv's cache folder (`network_key`), and another process's
first forward lists nothing for it ('auto''s remembered choices are no such signal: a layer with
one candidate is never measured, so never remembered).

Helpers run where they pay: on CPU devices (PoCL) of a process allowed two or more cores, for at
least MIN_LAYERS layers; CLCONV_PREBUILD sets their number (0: none).

    python -c "from clconv.ops.prebuild import main; main()"   # a helper: (device, specs,
                                                                 # parent pid) pickled on stdin
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime import config
from ..runtime.cache import write_atomic
from ..runtime.device import Device

__all__ = ["MIN_LAYERS", "NETWORKS_FILE", "Helpers", "Recorded", "helper_count", "is_recording",
           "chain_spec", "known", "linear_spec", "network_key", "note", "record", "recording",
           "remember"]

#: Fewer new layers than this are built by the caller alone (a helper's start, ~0.3 s of
#: imports and a context, is about one kernel's compilation).
MIN_LAYERS = 6
#: Most helpers started, whatever the cores.
MAX_HELPERS = 3
#: A helper process's program (not `-m` of this module, which clconv.ops imports: runpy would
#: run a second copy of it).
HELPER = "from clconv.ops.prebuild import main; main()"
#: A helper gives up after this long (seconds), whatever is left.
HELPER_DEADLINE = 600.0

_state = threading.local()


class Recorded(Exception):
    """Raised by `record` within `recording()`: the convolution was listed, not planned; the
    caller computes it some other way."""


@contextmanager
def recording() -> Iterator[list[tuple[Any, ...]]]:
    """Within it, this thread's `cached_conv_plan` calls append their arguments (a spec: the
    tuple after `dev`) to the list it yields and raise `Recorded` instead of planning."""
    specs: list[tuple[Any, ...]] = []
    previous = getattr(_state, "specs", None)
    _state.specs = specs
    try:
        yield specs
    finally:
        _state.specs = previous


def is_recording() -> bool:
    return getattr(_state, "specs", None) is not None


def note(spec: tuple[Any, ...]) -> bool:
    """Within `recording()`: appends `spec` (a layer the caller then computes some other way)
    and returns True; otherwise False."""
    specs = getattr(_state, "specs", None)
    if specs is None:
        return False
    specs.append(spec)
    return True


def record(spec: tuple[Any, ...]) -> None:
    """Within `recording()`: appends `spec` and raises `Recorded`; otherwise nothing."""
    specs = getattr(_state, "specs", None)
    if specs is not None:
        specs.append(spec)
        raise Recorded


def helper_count(dev: Any) -> int:
    """How many helpers a first forward on `dev` gets: $CLCONV_PREBUILD, else (auto) one fewer
    than the cores this process may use, at most MAX_HELPERS, on CPU devices; none elsewhere
    (a GPU driver's compiler has its own caches and threads) and none for devices wrapping the
    caller's queue (a helper could not open it)."""
    if not isinstance(dev, Device) or dev.wraps_user_queue:
        return 0
    setting = config.prebuild_helpers()
    if setting is not None:
        return setting
    if dev.kind != "cpu":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (not on Linux)
        cores = os.cpu_count() or 1
    return max(0, min(cores - 1, MAX_HELPERS))


def linear_spec(x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                b_shape: tuple[int, ...] | None, dtype: Any, activation: Any,
                r_shape: tuple[int, ...] | None) -> tuple[Any, ...]:
    """A Linear's plan arguments as a spec (clconv.linear's plan: input, weight, bias and
    residual shapes, dtype, activation), told from a convolution's by its first item."""
    return ("linear", x_shape, w_shape, b_shape, np.dtype(dtype), activation, r_shape)


def squeeze_excitation_spec(x_shape: tuple[int, ...], w1_shape: tuple[int, ...],
                            b1_shape: tuple[int, ...] | None, w2_shape: tuple[int, ...],
                            b2_shape: tuple[int, ...] | None, activation: Any, gate: Any,
                            dtype: Any) -> tuple[Any, ...]:
    """A squeeze-excitation block's plan arguments as a spec (clconv.squeeze_excitation's
    plan), told from a convolution's by its first item."""
    return ("squeeze_excitation", x_shape, w1_shape, b1_shape, w2_shape, b2_shape, activation,
            gate, np.dtype(dtype))


def pool_spec(kind: str, nd: int, x_shape: tuple[int, ...], dtype: Any,
              args: dict[str, Any]) -> tuple[Any, ...]:
    """A pooling's plan arguments as a spec (clconv.ops.pool.pool_plan's: kind, dims, input
    shape, dtype and keyword arguments)."""
    return ("pool", kind, nd, x_shape, np.dtype(dtype), tuple(sorted(args.items())))


def _new(dev: Device, specs: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The distinct specs in the order met: Linears', and convolutions' of algorithm='auto'
    whose choice `dev` has not remembered (one that has was measured here, its kernels built)."""
    from . import autotune
    from .geometry import conv_geometry

    new, seen = [], set()
    for spec in specs:
        try:
            key = pickle.dumps(spec)
            if key in seen:
                continue
            seen.add(key)
            if spec[0] in ("linear", "chain", "squeeze_excitation", "pool"):
                # (no choice to remember: new with the network)
                new.append(spec)
                continue
            nd, x_shape, w_shape, _, dtype, stride, padding, dilation, groups, padding_mode, \
                algorithm = spec[:11]
            if algorithm != "auto":
                continue
            batch_shape = x_shape if len(x_shape) == nd + 2 else (1, *x_shape)
            geo = conv_geometry(nd, batch_shape, w_shape, stride, padding, dilation, groups,
                                padding_mode)
            if autotune.lookup(dev, geo, dtype) is None:
                new.append(spec)
        except Exception:  # (a spec the plan would refuse, or one that does not pickle)
            continue
    return new


#: The file in cache_dir() naming the networks (`network_key`) whose first forward listed its
#: layers here before: their kernels are in the disk caches, and another first forward of theirs
#: lists nothing.
NETWORKS_FILE = "prebuilt-networks.json"
_FILE_LOCK = threading.Lock()
_known: dict[str, set[str]] = {}  # cache folder -> the file's keys, read once a process


def network_key(dev: Device, *parts: Any) -> str:
    """A digest of `parts` (a model's structure, parameter shapes, input signature: their reprs)
    with the device, its driver and clconv's kernels' version."""
    from .. import __version__
    from .autotune import CHOICES_VERSION

    text = repr((dev.platform_name, dev.name, dev.driver_version, __version__, CHOICES_VERSION,
                 parts))
    return hashlib.sha256(text.encode()).hexdigest()


def _networks() -> tuple[Path, set[str]]:
    folder = config.cache_dir()
    keys = _known.get(str(folder))
    if keys is None:
        try:
            data = json.loads((folder / NETWORKS_FILE).read_text())
            keys = {k for k in data if isinstance(k, str)} if isinstance(data, list) else set()
        except (OSError, ValueError):
            keys = set()
        _known[str(folder)] = keys
    return folder / NETWORKS_FILE, keys


def known(key: str) -> bool:
    """Whether the network of `key` listed its layers in this cache folder before."""
    return key in _networks()[1]


def remember(key: str) -> None:
    """Adds `key` to the file (merged with what is there; a failed write is ignored: the next
    process lists the layers again)."""
    path, keys = _networks()
    if key in keys:
        return
    keys.add(key)
    try:
        with _FILE_LOCK:
            try:  # (other processes' additions kept)
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = []
            if isinstance(data, list):
                keys.update(k for k in data if isinstance(k, str))
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(sorted(keys)))
    except OSError:
        pass


def _kind(spec: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a layer's programs likely depend on beyond its sizes (kernel arguments: layers of
    one kind mostly share programs): kernel size, stride, padding, dilation, plain / grouped /
    depthwise, padding mode, dtype, activation, bias and residual."""
    if spec[0] == "linear":
        return spec[:3]
    if spec[0] == "pool":  # (the kind, dims, dtype and window: not the input's size)
        return (spec[0], spec[1], spec[2], str(spec[4]), repr(spec[5]))
    if spec[0] == "squeeze_excitation":  # (one program a pair of activations and dtype)
        return (spec[0], repr(spec[6]), repr(spec[7]), str(spec[8]))
    if spec[0] == "chain":  # (a training chain: its convolution's settings but the channels)
        _, nd, _, conv, bn, act, r_shape, dtype = spec
        return ("chain", nd, repr(conv[2:]), repr(bn and bn[1:]), repr(act), r_shape is None,
                str(dtype))
    nd, _, w_shape, b_shape, dtype, stride, padding, dilation, groups, padding_mode = spec[:10]
    grouping = "plain" if groups == 1 else "depthwise" if groups == w_shape[0] else "grouped"
    return (nd, tuple(w_shape[2:]), repr(stride), repr(padding), repr(dilation), grouping,
            padding_mode, str(dtype), repr(spec[11]), b_shape is None, spec[-1] is None)


def _helper_order(specs: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`specs` (the network's order) as the helpers take them: the caller builds from the first
    layer on, so the helpers begin with what it needs last. First one layer of each kind (its
    first), the kinds the caller meets last first: layers of a kind mostly share programs, and a
    helper on ResNet-18's last 3x3 layer would compile what the caller compiles for its second
    layer. Then the rest, from the last."""
    firsts: dict[tuple[Any, ...], int] = {}
    for i, spec in enumerate(specs):
        firsts.setdefault(_kind(spec), i)
    lead = sorted(firsts.values(), reverse=True)
    chosen = set(lead)
    return [specs[i] for i in lead] + [specs[i] for i in reversed(range(len(specs)))
                                       if i not in chosen]


class Helpers:
    """Helper processes: `spawn`ed first (their imports and context overlap the caller's listing
    of its layers), then `send` the specs; `stop()` ends them (idempotent)."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs, self.layers = procs, 0

    @classmethod
    def spawn(cls, dev: Any) -> Helpers | None:
        """`helper_count(dev)` helpers waiting for their specs, or None (none, or none could
        start: the caller then builds everything, as without them)."""
        count = helper_count(dev)
        if not count or not sys.executable:
            return None
        env = dict(os.environ)
        # (clconv importable there as here: a source checkout on sys.path included)
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
        # A helper's PoCL threads unpinned (pinned, they would share CPU i with the caller's
        # thread i), pyopencl's cache off (its lock would be shared with the caller's; PoCL's
        # cache is the one that matters), and no helpers of its own.
        env.update(POCL_AFFINITY="0", PYOPENCL_NO_CACHE="1", **{config.PREBUILD: "0"})
        procs = []
        for _ in range(count):
            try:
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", HELPER], stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
            except OSError:
                break
        return cls(procs) if procs else None

    def send(self, dev: Device, specs: Sequence[tuple[Any, ...]]) -> bool:
        """Gives the helpers the new ones of `specs` (`cached_conv_plan`'s arguments after
        `dev`, in the network's order), shared out from the last; False (and the helpers
        stopped) where fewer than MIN_LAYERS are new or they cannot be sent."""
        todo = _new(dev, specs)
        self.layers = len(todo)
        if len(todo) < MIN_LAYERS:
            self.stop()
            return False
        todo = _helper_order(todo)
        count, sent = len(self.procs), 0
        for i, p in enumerate(self.procs):
            assert p.stdin is not None
            try:
                p.stdin.write(pickle.dumps((dev, todo[i::count], os.getpid())))
                p.stdin.close()
                sent += 1
            except (OSError, pickle.PicklingError, TypeError, AttributeError):
                p.kill()  # (a spec that does not pickle, a helper gone: the caller builds)
        if not sent:
            self.stop()
        return sent > 0

    def stop(self) -> None:
        procs, self.procs = self.procs, []
        for p in procs:
            if p.poll() is None:
                p.kill()
            if p.stdin is not None and not p.stdin.closed:
                try:
                    p.stdin.close()
                except OSError:
                    pass
        if procs:  # (reaped aside: a killed helper's exit took ~65 ms, a training step's time)
            threading.Thread(target=_reap, args=(procs,), daemon=True).start()


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:  # (left to the OS)
            pass


def _build(dev: Device, spec: tuple[Any, ...]) -> None:
    """The plan of one spec made and run once on zeros: its kernels (and, for 'auto', every
    shortlisted algorithm's trial run: `autotune.trials_only`) built and launched."""
    import pyopencl.array as cla

    from .conv import cached_conv_plan
    from .linear import LinearPlan
    from .plan import mark_constant

    if spec[0] == "chain":
        _build_chain(spec)
        return
    q = dev.queue
    if spec[0] == "squeeze_excitation":
        from .squeeze_excitation import SqueezeExcitationPlan

        plan = SqueezeExcitationPlan(dev, *spec[1:])
        dtype = spec[8]
        plan.execute({n: None if s is None else cla.zeros(q, s, dtype) for n, s in zip(
            ("input", "weight1", "bias1", "weight2", "bias2"), spec[1:6])}, None, check=False)
        q.finish()
        return
    if spec[0] == "pool":
        from .pool import pool_plan

        _, kind, nd, x_shape, dtype, args = spec
        pool_plan(dev, kind, nd, x_shape, dtype, **dict(args)).execute(
            {"input": cla.zeros(q, x_shape, dtype)}, None, check=False)
        q.finish()
        return
    if spec[0] == "linear":
        _, x_shape, w_shape, b_shape, dtype, activation, r_shape = spec
        plan = LinearPlan(dev, x_shape, w_shape, b_shape, dtype, activation, r_shape)
    else:
        _, x_shape, w_shape, b_shape, dtype = spec[:5]
        r_shape = spec[-1]
        plan = cached_conv_plan(dev, *spec)
    # (constant weights, as both callers' are: plans then pack the filters once, with kernels
    # of their own)
    x, w = cla.zeros(q, x_shape, dtype), mark_constant(cla.zeros(q, w_shape, dtype))
    b = None if b_shape is None else cla.zeros(q, b_shape, dtype)
    r = None if r_shape is None else cla.zeros(q, r_shape, dtype)
    plan.execute({"input": x, "weight": w, "bias": b, "residual": r}, None, check=False)
    q.finish()


def chain_spec(conv: Any, bn: Any, act: Any, x: Any, residual: Any) -> tuple[Any, ...]:
    """A training chain's spec (clconv.torch_train.run_chain's arguments, as settings): the
    convolution's constructor arguments, the BatchNorm's (or None) with its mode, the activation,
    the residual's shape, the input's shape and dtype. The helper builds the chain's modules
    from it and runs one forward and backward."""
    nd = len(conv.kernel_size)
    conv_args = (conv.in_channels, conv.out_channels, tuple(conv.kernel_size), conv.stride,
                 conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                 conv.padding_mode, getattr(conv, "algorithm", "auto"))
    bn_args = None if bn is None else (bn.num_features, bn.eps, bn.momentum, bn.affine,
                                       bn.track_running_stats, bn.training)
    return ("chain", nd, tuple(x.shape), conv_args, bn_args, act,
            None if residual is None else tuple(residual.shape), str(x.dtype))


def _build_chain(spec: tuple[Any, ...]) -> None:
    """A training chain's kernels: its modules made from the spec, one forward and backward of
    clconv.torch_train.run_chain on zeros (a helper imports torch for it)."""
    import torch

    from .. import torch as clconv_torch
    from ..torch_train import run_chain

    _, nd, x_shape, conv_args, bn_args, act, r_shape, dtype = spec
    cin, cout, kernel, stride, padding, dilation, groups, bias, padding_mode, algorithm = \
        conv_args
    dt = getattr(torch, dtype.replace("torch.", ""))
    conv = getattr(clconv_torch, f"Conv{nd}d")(cin, cout, kernel, stride, padding, dilation,
                                               groups, bias, padding_mode).to(dt)
    conv.algorithm = algorithm
    bn = None
    if bn_args is not None:
        features, eps, momentum, affine, track, training = bn_args
        bn = getattr(torch.nn, f"BatchNorm{nd}d")(features, eps, momentum, affine, track)
        bn = bn.to(dt).train(training)
    x = torch.zeros(x_shape, dtype=dt, requires_grad=True)
    r = None if r_shape is None else torch.zeros(r_shape, dtype=dt, requires_grad=True)
    run_chain(conv, bn, act, x, r).sum().backward()


def main() -> None:
    """A helper: (device, specs, parent pid) from stdin, each spec built in turn until done, the
    parent gone or HELPER_DEADLINE passed (a watching thread ends the process then, whatever it
    is doing). An error ends the spec it hit (a line on stderr,
    which the caller's helpers send nowhere), not the helper."""
    from . import autotune, conv, linear  # noqa: F401  (imported while the caller lists)

    np.seterr(all="ignore")  # (zeros in, nothing read back)
    payload = sys.stdin.buffer.read()
    if not payload:  # (the caller found nothing new)
        return
    dev, specs, parent = pickle.loads(payload)
    autotune.trials_only(True)
    deadline = time.monotonic() + HELPER_DEADLINE

    def watch() -> None:  # (a build that never ends does not outlive its caller)
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    for spec in specs:
        if os.getppid() != parent or time.monotonic() > deadline:
            break
        try:
            _build(dev, spec)
        except Exception as err:  # (the caller meets the same error itself, with its message)
            print(f"clconv.ops.prebuild: {spec[:3]}: {type(err).__name__}: {err}",
                  file=sys.stderr)
