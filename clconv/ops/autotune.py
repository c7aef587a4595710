"""algorithm='auto', measured: the first call of each (device, shape, dtype) times the algorithms
that can run it and remembers the fastest, in memory and in a JSON file in `cache_dir()`.

How algorithm='auto' chooses (`conv_select.choose_algorithm`, and `conv_select.configure` when
it measures):

1. A choice already made for the key is used: from this process's memory, else from
   `cache_dir()/algorithms.json` (written by earlier processes; read once per process).
   Failing that, the choice for the same layer at the nearest other batch size (by ratio), so that a
   planned layer met at a new batch size is not measured again.
2. Otherwise, unless $CLCONV_AUTO=rule, a cost model (`estimate`: flops at a per-algorithm rate,
   a fixed cost per call, the column traffic, the register tile's padding; its constants come from
   the bench's measurements on PoCL) ranks the applicable algorithms, and only those within
   `SHORTLIST_FACTOR` (1.25x) of the best estimate are built (`shortlist`): on a CPU most layers keep one ('implicit', or 'direct' for
   depthwise and tiny ones), which is then used without measuring; the second packed path is built
   only where the model finds it close; CLBlast's GEMM is not a candidate on PoCL's CPU devices
   (clconv.ops.conv_select: its first compilation there costs 10-20 s of CPU). Two or more are measured on scratch
   arrays of the plan's shapes: each runs once untimed (its kernels' first launch), then, after
   10 ms of idle, two interleaved timed rounds and, for layers under 20 ms a run, three more of
   those within 1.3x of the best, each keeping its fastest run: at most six runs of the layer per
   candidate beyond its builds. The fastest wins (the model's favourite unless another was 3%
   faster) and is written to memory and to the file. This happens once per key and process at most,
   whatever the number of calls: a failed file write only costs a warning, and the choice stays in
   memory.
3. With CLCONV_AUTO=rule (or when only one algorithm applies) nothing is measured or written: the
   cost model's best estimate runs (`conv_select.rule_choice`; one selector: the rule is the model's
   first). The test suite uses it to stay fast and deterministic.

The key: (platform, device name, driver version, nd, batch bucket (`batch_bucket`: the next power of
two, so nearby batch sizes share a choice), channels, groups, sizes, kernel,
stride, dilation, padding, padding_mode, dtype), plus CHOICES_VERSION, bumped when the kernels
change enough to make old measurements stale. The bias and the activation are not part of it (they
cost the same in every algorithm). `clconv.warmup(...)` makes the choice (and builds the kernels)
ahead of the first real call. The file may be shared by processes: writes merge into what is on
disk (read, update, write a temporary file, os.replace), so concurrent writers lose at most a
re-measurable entry.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyopencl as cl

from ..runtime import config
from ..runtime.cache import cache_dir, write_atomic
from ..runtime.device import Device
from .geometry import ConvGeometry
from .packed_conv import conv_tile, narrow_last
from .splitk import splitk_tile

__all__ = ["CHOICES_FILE", "CHOICES_VERSION", "ENV_VAR", "SHORTLIST_FACTOR", "estimate",
           "few_positions", "forget", "key", "lookup", "measure", "mode", "pass_seconds", "record",
           "shortlist"]

ENV_VAR = config.AUTO
MODES = config.AUTO_MODES
CHOICES_FILE = "algorithms.json"
# 2: winograd no longer a candidate; 3: batch buckets; 4: 'depthwise', 'pointwise', 'splitk'
CHOICES_VERSION = 4
_ROUNDS = 5  # timed rounds at most (after one untimed run each); past two for cheap layers only
_KEEP_WITHIN = 1.3  # candidates this close to the leader after the second round go on
_CHEAP = 0.02  # seconds a run of the leader at most for the rounds past the second
# Another candidate replaces the cost model's favourite only when it measured this much faster:
# a near tie is noise (ResNet-18's 256 -> 512 s2 @14 took 'splitk' in 2 of 6 bench runs, where
# 'implicit' runs 1.18x faster back to back).
_FAVOURITE_MARGIN = 1.03
# Seconds of idle before the timed rounds: another runtime's threads (torch's OpenMP workers spin
# a few ms after each call, in this process or another on the same cores) slow whatever runs
# next, and a first sight of a layer comes right after such a call in a network.
_SETTLE = 0.01
SHORTLIST_FACTOR = 1.25  # candidates whose estimate is within this of the best one are measured
_FILE_LOCK = threading.Lock()


def mode() -> str:
    """'measure' (the default) or 'rule', from $CLCONV_AUTO."""
    return config.auto_mode()


def key(dev: Device, geo: ConvGeometry, dtype: Any) -> str:
    """The JSON text naming one (device, geometry, dtype): the file's key."""
    geo = _canonical(geo)
    return json.dumps([CHOICES_VERSION, dev.platform_name, dev.name, dev.driver_version, geo.nd,
                       geo.batch, geo.in_channels, geo.out_channels, geo.groups, geo.in_size,
                       geo.kernel, geo.stride, geo.dilation, geo.pad_lo, geo.pad_hi,
                       geo.padding_mode, np.dtype(dtype).name], separators=(",", ":"))


class _Store:
    """The choices of one device for one cache location: memory, backed by the file."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_geometry: dict[tuple[ConvGeometry, str], str] = {}
        self.from_file: dict[str, str] | None = None  # key text -> algorithm, read once
        # the measured choices (this process's and the file's) by layer: the key without the
        # batch and the input size -> [(batch, input size, algorithm)] (_nearest's index: a scan
        # of every key on each new shape's lookup took ~3 ms with a few thousand in the file)
        self.by_layer: dict[str, list[tuple[int, tuple[int, ...], str]]] = {}

    def index(self, text: str, algorithm: str) -> None:
        """Adds the choice under key `text` to by_layer (a key not of this version's form is left
        out). Call holding the lock."""
        try:
            parts = json.loads(text)
        except ValueError:
            return
        if not (isinstance(parts, list) and len(parts) == _KEY_LENGTH and
                isinstance(parts[_BATCH], int) and isinstance(parts[_SIZE], list)):
            return
        batch, size = parts[_BATCH], tuple(parts[_SIZE])
        entries = self.by_layer.setdefault(_layer_text(parts), [])
        entries[:] = [e for e in entries if e[:2] != (batch, size)] + [(batch, size, algorithm)]


# Where the batch and the input size sit in a key (`key`'s list), and its length.
_BATCH, _SIZE, _KEY_LENGTH = 5, 9, 17


def _layer_text(parts: list[Any]) -> str:
    """A key's list without its batch and input size: the layer, at whatever shape."""
    return json.dumps([p for i, p in enumerate(parts) if i not in (_BATCH, _SIZE)],
                      separators=(",", ":"))


def _location() -> tuple[str | None, str | None]:
    # What cache_dir() depends on, without creating the folder on every call.
    return str(config.cache_dir()), None


def _store(dev: Device) -> _Store:
    stores = dev.slot("choices", dict)
    location = _location()
    store = stores.get(location)
    if store is None:
        store = stores.setdefault(location, _Store())
    return store


def batch_bucket(batch: int) -> int:
    """The batch size a choice is kept under: the next power of two (0 and 1 stay). Batch sizes
    of one bucket share one measurement, so a planned layer met at a new, nearby batch size reuses
    the choice instead of measuring again (both algorithms' costs grow linearly with the batch)."""
    return batch if batch <= 1 else 1 << (batch - 1).bit_length()


def _canonical(geo: ConvGeometry) -> ConvGeometry:
    return dataclasses.replace(geo, batch=batch_bucket(geo.batch))


def _path() -> Path:
    return cache_dir() / CHOICES_FILE


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        warnings.warn(f"clconv: ignoring the algorithm choices in {path}: {err}", RuntimeWarning,
                      stacklevel=4)
        return {}
    choices = data.get("choices") if isinstance(data, dict) else None
    return choices if isinstance(choices, dict) else {}


def lookup(dev: Device, geo: ConvGeometry, dtype: Any) -> str | None:
    """The remembered choice for this key (memory, then the file), or None."""
    store = _store(dev)
    mem_key = (_canonical(geo), np.dtype(dtype).name)
    found = store.by_geometry.get(mem_key)
    if found is not None:
        return found
    with store.lock:
        if store.from_file is None:
            try:
                entries = _read_file(_path())
            except OSError:  # no usable cache folder: memory only
                entries = {}
            store.from_file = {k: v["algorithm"] for k, v in entries.items()
                               if isinstance(v, dict) and isinstance(v.get("algorithm"), str)}
            for text, algorithm in store.from_file.items():
                store.index(text, algorithm)
        found = store.from_file.get(key(dev, geo, dtype))
        if found is None:
            found = _nearest(store, dev, geo, dtype)
        if found is not None:
            store.by_geometry[mem_key] = found  # memory only: the file keeps measured choices
    return found


#: How far (a factor in batch x input positions) another input size's measured choice of a layer
#: is taken for a new one instead of measuring; the same input size at another batch: any.
_NEAREST_SIZE_FACTOR = 2.0


def _nearest(store: _Store, dev: Device, geo: ConvGeometry, dtype: Any) -> str | None:
    """The choice measured for the same layer at the nearest other shape, or None: the same input
    size at another batch size (by ratio), else another input size within _NEAREST_SIZE_FACTOR
    of the work (batch x input positions). So a planned layer met at a new batch size, or a
    network at a nearby input size (a detector's images), is not measured again: ~0.3 s a new
    size of a small network, ~40x its forward. Call holding store.lock."""
    mine = json.loads(key(dev, geo, dtype))
    batch, size = max(mine[_BATCH], 1), tuple(mine[_SIZE])
    positions = batch * math.prod(size)
    if not positions:  # (an empty input: validation refuses it before any choice)
        return None
    best: tuple[bool, float, str] | None = None
    for other_batch, other_size, algorithm in store.by_layer.get(_layer_text(mine), ()):
        if not other_batch or not all(other_size):
            continue
        same_size = other_size == size
        distance = abs(math.log2(other_batch * math.prod(other_size) / positions))
        if not same_size and distance > math.log2(_NEAREST_SIZE_FACTOR):
            continue
        rank = (not same_size, distance, algorithm)
        if best is None or rank[:2] < best[:2]:
            best = rank
    return None if best is None else best[2]


def record(dev: Device, geo: ConvGeometry, dtype: Any, algorithm: str,
           seconds: dict[str, float] | None = None) -> None:
    """Remembers `algorithm` for the key in memory and merges it into the file."""
    store = _store(dev)
    store.by_geometry[(_canonical(geo), np.dtype(dtype).name)] = algorithm
    text = key(dev, geo, dtype)
    with store.lock:
        if store.from_file is not None:
            store.from_file[text] = algorithm
        store.index(text, algorithm)
    entry = {"algorithm": algorithm, "seconds": seconds or {},
             "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        path = _path()
        with _FILE_LOCK:
            choices = _read_file(path)
            choices[text] = entry
            # one choice a line, each by json's C encoder (indent= takes its Python one: ~50 ms
            # a write for a file of a few thousand choices, several writes a new input size)
            encode = json.JSONEncoder(sort_keys=True).encode
            lines = ",\n".join(f"{encode(k)}: {encode(v)}" for k, v in sorted(choices.items()))
            write_atomic(path, f'{{"version": {CHOICES_VERSION}, "choices": {{\n{lines}\n}}}}\n')
    except OSError as err:
        warnings.warn(f"clconv: could not save the algorithm choice to the cache folder ({err}); "
                      f"it is kept in memory for this process", RuntimeWarning, stacklevel=3)


def forget(dev: Device | None = None) -> None:
    """Drops the in-memory choices (of `dev`, or of every device seen), and the functional API's
    cached plans made with them; the file stays."""
    from ..runtime.device import devices

    for d in [dev] if dev is not None else devices():
        d.choices = None
        if d.plans is not None:  # plans hold the algorithm they were made with
            d.plans.clear()


# The cost model's constants, from the bench's layers on PoCL (2-core Zen, AVX2; docs/bench.txt and
# the rule's measurements): the packed GEMM sustains ~120 GFLOP/s on large layers and costs ~1 ms a
# call on small ones (packing, few work-items; CLBlast's too); the direct loops a few GFLOP/s on small
# layers, a launch ~20 us: the packed GEMM wins from a few hundred kFLOP on (CLCONV_AUTO=rule takes
# the model's best estimate too). CLBlast's GEMM on a CPU reaches ~1/4.5 of the packed one, the second
# packed path ~1/1.25 plus its column traffic (~10 GB/s each way). Only ratios matter for the
# shortlist; the absolute figures only set where the fixed costs weigh.
_PACKED_RATE = 1.2e11
# Remeasured after the per-call work (typed, bound launches; AVX-512 PoCL 3.1, 2026-12-02): an
# 'implicit' call on a small layer costs ~0.1 ms beyond its flops, and the direct loops reach only
# 1-13 GFLOP/s on the small layers of a CNN ((1,16,32,32) 3x3: 'direct' 330-360 us of kernel time,
# 'implicit' ~90 us; 32->32 3x3 stride 2: 'direct' 2-5 ms, 'implicit' 0.16-0.22 ms).
_GEMM_CALL = 1e-4
# A packed GEMM over a few output positions (batch 1 at 7x7: 2-4 column panels): each panel's
# work-items walk the whole filter matrix, so past ~64 MB of it streamed in all (the filters'
# bytes times the full panels) DRAM's bandwidth bounds them, and 'splitk' (K sliced: the filters
# read once) wins. Measured (alternating blocks, 2026-12-06, 'implicit' with its narrow last
# panel as dot products): ResNet-18's 512 @7 at batch 1 (9.4 MB of filters, 28 MB streamed)
# 'implicit' 1.58 ms against 'splitk''s 2.20 on AVX-512, 1.62-1.79 against 2.16-2.32 on AVX2
# (emulated); 1024 @7 (37.7 MB) 10.5-11.5 against 6.9-7.1 on AVX-512 (3 full panels of 16: 113
# MB), 7.5-7.7 against 8.9-9.2 on AVX2 (2 of 24: 75 MB). (The rule before: a penalty for a K x NR
# panel past PANEL_BUDGET, calibrated on 6 x 32 tiles, which kept 'implicit' off AVX2's shortlist
# at 512 @7.) Both paths count the columns their tiles compute (49 -> 64 for NR = 16 or 32),
# except 'implicit''s narrow last panel (its own columns).
_FEW_POSITIONS = 64
_A_STREAM_BYTES = 64 * 2**20
# On a 1x1 layer the packed paths' gather (and im2col_packed's columns) is pure overhead that
# 'pointwise' (a plain GEMM on the input) does not have: over the 22 distinct 1x1 layers of
# ResNet-18 and MobileNetV2 (batch 1, PoCL AVX-512, benchmarks.network_layers, 2026-12-03)
# 'implicit' took 0.93-1.80x 'pointwise''s time, median 1.29x; it was faster on two (16->96 and
# 32->16 at 112x112, by 3% and 8%), where measuring it cost ~1.5 s of builds on the first call.
_GATHER_ON_POINTWISE = 1.29
_DIRECT_RATE = 5e9
_GROUPED_RATE = 1.0e10
# 'depthwise': 1.1-1.4x 'direct' on MobileNetV2's 56x56-112x112 depthwise layers, ~2x on the
# 7x7-28x28 ones (PoCL, AVX-512): beyond the shortlist's 1.5x, so 'direct' is not measured there
_DEPTHWISE_RATE = 1.6e10
_LAUNCH = 2e-5
_BYTES_RATE = 1e10
_CLBLAST_ON_CPU = 4.5  # slower than the packed GEMM on PoCL
_PACKED_ON_GPU = 20.0  # the CPU-shaped kernels on llvmpipe and GPUs (local size 1)


def _gemm_shape_efficiency(m: int, k: int) -> float:
    """How much of a tiled GEMM's rate an (m x k) @ (k x n) keeps: tiles of ~32 rows and a K loop
    of ~32 steps before the fixed costs vanish (depthwise: m = 1, k = 9 keeps ~1 %)."""
    return min(1.0, m / 32) * min(1.0, k / 32)


def few_positions(geo: ConvGeometry) -> bool:
    """Whether the GEMM of `geo` has at most _FEW_POSITIONS columns (batch 1 at 7x7)."""
    return geo.batch * geo.out_spatial <= _FEW_POSITIONS


def pass_seconds(elements: int, dtype: Any) -> float:
    """The cost model's seconds for a pass that reads and writes `elements` values."""
    return 2 * elements * np.dtype(dtype).itemsize / _BYTES_RATE


def estimate(dev: Device, geo: ConvGeometry, dtype: Any, algorithm: str) -> float:
    """The cost model's seconds for one run of `algorithm` on `geo` (see the module doc): only its
    ratios between algorithms are used (`shortlist`)."""
    from ..blas.engine import cpu_shaped
    from .launch import GROUPED_MAX_CIN

    cpu = cpu_shaped(dev)
    itemsize = np.dtype(dtype).itemsize
    flops = max(geo.flops, 1)
    m, k = geo.cout_per_group, geo.cin_per_group * geo.ksize
    columns = geo.groups * k * geo.batch * geo.out_spatial * itemsize  # bytes of the column matrix
    if algorithm == "splitk":  # im2col + cl/gemm_splitk.cl + the reduction: 3 launches
        n = max(geo.out_spatial, 1)  # a tile's columns never span two images
        padded = n / splitk_tile(dev, geo, dtype).packed_b_size(n, 1)
        seconds = flops / (_PACKED_RATE * padded) + 2 * columns / _BYTES_RATE + 3 * _LAUNCH
        return seconds * (1.0 if cpu else _PACKED_ON_GPU)
    if algorithm == "pointwise":  # cl/conv_pointwise.cl: the packed rate, no packing or gather
        return (flops / _PACKED_RATE + _LAUNCH) * (1.0 if cpu else _PACKED_ON_GPU)
    if algorithm == "depthwise":  # cl/conv_depthwise.cl, CPU-shaped (local size 1)
        return (flops / _DEPTHWISE_RATE + _LAUNCH) * (1.0 if cpu else _PACKED_ON_GPU)
    if algorithm == "direct":
        if geo.groups > 1 and geo.cin_per_group <= GROUPED_MAX_CIN:
            return flops / _GROUPED_RATE + _LAUNCH
        return flops / _DIRECT_RATE + _LAUNCH
    if algorithm in ("implicit", "im2col_packed"):
        n = max(geo.batch * geo.out_spatial, 1)
        tile = conv_tile(dev, geo, np.float32 if np.dtype(dtype) == np.float16 else dtype)
        # 'implicit' runs a last panel of <= TAIL_DOT columns as dot products: ~their own cost
        cols = n if algorithm == "implicit" and narrow_last(tile, n) else tile.packed_b_size(n, 1)
        padded = max(m, 1) / tile.packed_a_size(max(m, 1), 1) * n / cols
        seconds = flops / (_PACKED_RATE * padded) + _GEMM_CALL
        if few_positions(geo):  # the filters streamed once per full column panel
            streamed = geo.groups * m * k * itemsize * max(1, n // tile.nr)
            seconds *= max(1.0, streamed / _A_STREAM_BYTES)
        if algorithm == "im2col_packed":
            seconds = 1.25 * seconds + 2 * columns / _BYTES_RATE + _LAUNCH
        if geo.is_pointwise:
            seconds *= _GATHER_ON_POINTWISE
        return seconds * (1.0 if cpu else _PACKED_ON_GPU)
    if algorithm == "im2col":
        rate = _PACKED_RATE / (_CLBLAST_ON_CPU if cpu else 1.0)
        traffic = 0 if geo.is_pointwise else 2 * columns / _BYTES_RATE
        return flops / (rate * _gemm_shape_efficiency(m, k)) + traffic + _GEMM_CALL
    if algorithm == "winograd":
        return math.inf  # never measured by 'auto'
    raise ValueError(f"unknown algorithm {algorithm!r}")


def shortlist(dev: Device, geo: ConvGeometry, dtype: Any,
              candidates: Sequence[str]) -> tuple[list[str], list[str]]:
    """(`candidates` ranked by `estimate`, best first; the ones within SHORTLIST_FACTOR of the best,
    which 'auto' builds and measures). The others are only configured when the shortlisted ones
    cannot be (their workspace does not fit the limit)."""
    costs = {name: estimate(dev, geo, dtype, name) for name in candidates}
    ranked = sorted(candidates, key=costs.__getitem__)
    if not ranked:
        return [], []
    best = costs[ranked[0]]
    short = [name for name in ranked if costs[name] <= SHORTLIST_FACTOR * best]
    return ranked, short


def _time_once(dev: Device, run: Callable[[str], None], algorithm: str) -> float:
    start = time.perf_counter()
    run(algorithm)
    dev.queue.finish()
    return time.perf_counter() - start


_TRIALS_ONLY = False


def trials_only(on: bool) -> None:
    """For clconv.ops.prebuild's helper processes: `measure` runs each candidate once (building
    and launching its kernels), records nothing and returns the cost model's favourite."""
    global _TRIALS_ONLY
    _TRIALS_ONLY = on


def measure(dev: Device, geo: ConvGeometry, dtype: Any, candidates: Sequence[str],
            run: Callable[[str], None]) -> str:
    """Times `run(algorithm)` for each candidate, records the fastest and returns it.

    Each candidate runs once untimed (its kernels' first launch, CLBlast's compilation, caches),
    then, after a pause of `_SETTLE` (10 ms: torch's spinning threads go idle), in two rounds that
    interleave the candidates (so that a slow spell of a shared machine hits them alike; a slow
    first round drops none: measured, ResNet-18's 256 -> 512 s2 @14 chosen right after a torch call
    took 'splitk', 1.4x slower than 'implicit' there), and in three more for those still within
    1.3x of the best where the best runs under `_CHEAP` (20 ms), each round in the reverse order
    of the one before; a candidate's time is its fastest run, and the cost model's favourite (the
    first candidate) keeps its place unless another measured `_FAVOURITE_MARGIN` (3%) faster. So
    a layer costs at most six of its own runs per candidate beyond the builds. Holds
    dev.lock throughout, so other threads' work does not disturb the timings (and a thread that
    waited finds the choice made). A candidate that raises
    (its workspace does not fit, its kernel does not build here) is skipped with a warning (none
    for MemoryError); if all do, the last error propagates.
    """
    if _TRIALS_ONLY:
        for algorithm in candidates:
            run(algorithm)
        dev.queue.finish()
        return candidates[0]
    with dev.lock:
        done = lookup(dev, geo, dtype)
        # (a choice another thread made meanwhile; not one remembered for another batch size
        # that does not compute this one, as 'splitk' past its output size)
        if done is not None and done in candidates:
            return done
        dev.queue.finish()
        best: dict[str, float] = {}
        error: BaseException | None = None
        alive = []
        for algorithm in candidates:
            try:
                _time_once(dev, run, algorithm)  # builds kernels, warms caches
            except (MemoryError, RuntimeError, cl.Error) as err:
                error = err
                if not isinstance(err, MemoryError):
                    warnings.warn(f"clconv: algorithm={algorithm!r} failed while measuring "
                                  f"algorithm='auto' ({type(err).__name__}: {err}); choosing "
                                  f"among the others", RuntimeWarning, stacklevel=4)
                continue
            alive.append(algorithm)
        if not alive:
            assert error is not None
            raise error
        time.sleep(_SETTLE)
        for round_ in range(_ROUNDS):
            if round_ == 2 and min(best.values()) > _CHEAP:
                break
            for algorithm in alive if round_ % 2 == 0 else alive[::-1]:
                seconds = _time_once(dev, run, algorithm)
                best[algorithm] = min(best.get(algorithm, seconds), seconds)
            if round_ >= 1:
                leader = min(best.values())
                alive = [a for a in alive if best[a] <= _KEEP_WITHIN * leader]
            if len(alive) < 2:
                break
        winner = min(best, key=best.__getitem__)
        favourite = candidates[0]
        if favourite in best and best[winner] * _FAVOURITE_MARGIN > best[favourite]:
            winner = favourite
        record(dev, geo, dtype, winner, best)
        return winner
