"""A network's convolution kernels built ahead, in helper processes, for its first forward on a
cold cache (clconv.torch's converted models).

On PoCL every kernel is compiled twice by LLVM on its first use (the program at clBuildProgram,
the kernel's work-group function at its first launch), ~0.3-1 s each, and one at a time: PoCL
holds one compiler lock per process. A network met for the first time (empty caches: a new
machine, CI, a container) spent most of its first forward there (MobileNetV2 through `convert`:
7.6 s, of which 0.6 s with PoCL's cache warm). Compilation in other processes is not behind that
lock, and PoCL's disk cache (POCL_CACHE_DIR) is shared: a kernel another process compiled is
found there (written through a temporary file and a rename, so a half-written one is never read).

So the caller `Helpers.spawn`s helpers (their imports and OpenCL context overlap what follows),
lists the network's convolutions without building anything (`recording`: `cached_conv_plan`
records its arguments and raises `Recorded`, and the caller computes that layer some other way,
e.g. in torch), and `send`s the helpers those whose algorithm='auto' choice this device has never
made (`autotune.lookup`: a layer met before on this machine has its kernels in the disk cache
too), last layer first, while it runs the network from the first. A helper makes each layer's
plan, building and launching on zeros the shortlist that 'auto' would measure, measuring and
remembering nothing; the caller `stop`s them when its forward is done. Nothing computed depends
on them: a kernel the caller needs before a helper has it is built by the caller, as without
helpers.

Helpers run where they pay: on CPU devices (PoCL) of a process allowed two or more cores, for at
least MIN_LAYERS new layers; CLCONV_PREBUILD sets their number (0: none).

    python -m clconv.ops.prebuild     # a helper: reads (device, specs) pickled from stdin
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
from ..runtime.device import Device

__all__ = ["MIN_LAYERS", "NETWORKS_FILE", "Helpers", "Recorded", "helper_count", "is_recording",
           "known", "network_key", "record", "recording", "remember", "start"]

#: Fewer new layers than this are built by the caller alone (a helper's start, ~0.3 s of
#: imports and a context, is about one kernel's compilation).
MIN_LAYERS = 6
#: Most helpers started, whatever the cores.
MAX_HELPERS = 3
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


def _new(dev: Device, specs: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The distinct specs of algorithm='auto' whose choice `dev` never made (their kernels are
    likely not in the disk cache either), in the order met."""
    from . import autotune
    from .geometry import conv_geometry

    new, seen = [], set()
    for spec in specs:
        nd, x_shape, w_shape, _, dtype, stride, padding, dilation, groups, padding_mode, \
            algorithm = spec[:11]
        if algorithm != "auto":
            continue
        try:
            key = pickle.dumps(spec)
            if key in seen:
                continue
            seen.add(key)
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
            keys = set(data) if isinstance(data, list) else set()
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
            try:
                data = json.loads(path.read_text())
                keys.update(k for k in data if isinstance(k, str)) if isinstance(data, list) \
                    else None
            except (OSError, ValueError):
                pass
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(sorted(keys)))
            os.replace(tmp, path)
    except OSError:
        pass


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
                    [sys.executable, "-m", __name__], stdin=subprocess.PIPE,
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
        todo.reverse()  # the caller builds from the first layer: the helpers from the last
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
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            if p.stdin is not None and not p.stdin.closed:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:  # (left to the OS)
                pass
        self.procs = []


def start(dev: Any, specs: Sequence[tuple[Any, ...]], key: str) -> Helpers | None:
    """Helpers building the new ones of `specs` (known without a listing pass: compile()'s
    lowered convolutions), or None where none run or the network of `key` (`network_key`) was
    met in this cache folder before; `remember(key)` after the run that needed them."""
    if helper_count(dev) == 0 or known(key):
        return None
    helpers = Helpers.spawn(dev)
    return helpers if helpers is not None and helpers.send(dev, specs) else None


def _build(dev: Device, spec: tuple[Any, ...]) -> None:
    """The plan of one spec made and run once on zeros: its kernels (and, for 'auto', every
    shortlisted algorithm's: `autotune.trials_only`) built and launched."""
    import pyopencl.array as cla

    from .conv import cached_conv_plan

    _, x_shape, w_shape, b_shape, dtype = spec[:5]
    r_shape = spec[-1]
    plan = cached_conv_plan(dev, *spec)
    q = dev.queue
    x, w = cla.zeros(q, x_shape, dtype), cla.zeros(q, w_shape, dtype)
    b = None if b_shape is None else cla.zeros(q, b_shape, dtype)
    r = None if r_shape is None else cla.zeros(q, r_shape, dtype)
    plan.execute({"input": x, "weight": w, "bias": b, "residual": r}, None, check=False)
    q.finish()


def main() -> None:
    """A helper: (device, specs, parent pid) from stdin, each spec built in turn until done, the
    parent gone or HELPER_DEADLINE passed. Any error ends the spec it hit, not the helper."""
    from . import autotune, conv  # noqa: F401  (imported while the caller lists its layers)

    payload = sys.stdin.buffer.read()
    if not payload:  # (the caller found nothing new)
        return
    dev, specs, parent = pickle.loads(payload)
    autotune.trials_only(True)
    deadline = time.monotonic() + HELPER_DEADLINE
    for spec in specs:
        if os.getppid() != parent or time.monotonic() > deadline:
            break
        try:
            _build(dev, spec)
        except Exception:  # (the caller meets the same error itself, with its message)
            continue


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
