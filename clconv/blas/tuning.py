"""CLBlast tuning: search the GEMM kernels' parameters for a device, keep them, apply them at run time.

CLBlast ships tuned parameters for the devices its authors measured; everything else (PoCL on a
CPU, most integrated GPUs) gets generic defaults that can be several times slower. This module

- runs CLBlast's own tuners (`clblast_tuner_xgemm`, `..._xgemm_direct`, `..._copy_fast`,
  `..._copy_pad`, `..._transpose_fast`, `..._transpose_pad`, from the `clblast-utils` package) as
  subprocesses within a time budget, reading their result tables as they stream so that a run
  stopped at the budget still yields the best configuration seen (`tune`);
- saves the best parameters as JSON in `cache_dir()`, one file per device, keyed by platform,
  device, driver version and CLBlast version (`save_user`, `user_path`);
- on a device's first GEMM, loads that file, else the matching entry of the database shipped in
  `clconv/blas/tuning_db/`, and hands the parameters to CLBlast (`clblast.apply_tuning`, called
  by `clblast.gemm`). `CLCONV_TUNING=off` disables loading.

Parameters are data (a `{kernel: {NAME: value}}` dict per precision), exactly CLBlast's database
names: Xgemm, XgemmDirect, Copy, Pad, Transpose, Padtranspose, GemmRoutine. Tuning changes speed,
never results beyond float rounding: every configuration a tuner reports has been checked by it
against a reference run.

About `-fraction`: CLBlast's tuners explore `configurations / fraction` of their search space
(a divisor, not a fraction: `-fraction 100` samples 1 %), in a random order whenever it is not 1.
"""

from __future__ import annotations

import datetime as _dt
import os
import queue as _queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, TextIO

from ..runtime.device import Device

__all__ = ["ENV_VAR", "FORMAT", "KERNELS", "TuningState", "TunerJob", "JOBS", "enabled",
           "clblast_version", "device_key", "user_path", "load_entry", "save_user", "merge_entries",
           "shipped_entries", "find_entry", "apply_tuning", "tuning_state", "tuner_missing",
           "parse_row", "tune"]

from . import clblast as gemm
# The data and applying halves live below this module; their names stay reachable from here.
from .clblast import TuningState, apply_tuning, tuning_state  # noqa: F401
from .tuning_db import (ENV_VAR, FORMAT, KERNELS, PRECISION_NAMES,  # noqa: F401
                        clblast_version, device_key, enabled, find_entry, load_entry,
                        match_score, merge_entries, save_user, shipped_entries, user_path)


# --------------------------------------------------------------------------------------------------
# Running CLBlast's tuners

@dataclass(frozen=True)
class TunerJob:
    """One CLBlast tuner binary: which database kernel it tunes, its phases (the xgemm tuner runs
    four: GEMMK=0 fixed set, GEMMK=0 random sample, GEMMK=1 fixed, GEMMK=1 random), the number of
    configurations per phase seen on PoCL (to choose -fraction), the share of the budget per
    phase and the problem size it tunes at."""

    binary: str
    kernel: str
    phases: tuple[int, ...]
    configs: tuple[int, ...]
    weights: tuple[float, ...]
    args: tuple[str, ...] = ()
    seconds_per_config: float = 1.0
    default: bool = True  # run unless `kernels` names a subset


#: The tuners for the kernels a GEMM uses. GEMMK=1 (phases 3-4 of xgemm) targets GPUs with
#: sub-group shuffles and is not searched by default.
JOBS: tuple[TunerJob, ...] = (
    TunerJob("clblast_tuner_xgemm", "Xgemm", (1, 2), (578, 120800), (0.25, 0.35),
             ("-m", "512", "-n", "512", "-k", "512"), 2.0),
    TunerJob("clblast_tuner_xgemm_direct", "XgemmDirect", (1, 2), (46, 8420), (0.06, 0.14),
             ("-m", "256", "-n", "256", "-k", "256"), 1.0),
    TunerJob("clblast_tuner_copy_fast", "Copy", (1,), (144,), (0.05,), (), 0.5),
    TunerJob("clblast_tuner_copy_pad", "Pad", (1,), (81,), (0.05,), (), 0.5),
    TunerJob("clblast_tuner_transpose_fast", "Transpose", (1,), (92,), (0.05,), (), 0.5),
    TunerJob("clblast_tuner_transpose_pad", "Padtranspose", (1,), (36,), (0.05,), (), 0.5),
    TunerJob("clblast_tuner_xconvgemm", "Xconvgemm", (1,), (193,), (0.1,), (), 1.0, default=False),
)
_PRECISION_WEIGHT = {32: 1.0, 64: 0.4, 16: 0.4}


def tuner_missing(jobs: Iterable[TunerJob] = JOBS) -> list[str]:
    """The tuner binaries not on PATH (Debian/Ubuntu: `apt-get install clblast-utils`)."""
    return [job.binary for job in jobs if shutil.which(job.binary) is None]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PHASE = re.compile(r"^\* Options given/available")  # each phase of a tuner starts with it
_PARAMS = re.compile(r"^\* Parameters explored: (.*)$")


def parse_row(line: str, names: list[str]) -> tuple[dict[str, int], float, float] | None:
    """(parameters, time in ms, GFLOPS or GB/s) from one row of a tuner's table whose results
    matched the reference, else None. Rows look like
    `|  12 |  578 |  0 16 32 ... | local | global | OK  90 ms |  56.49 ms |  4.7 | results match |`.
    """
    line = _ANSI.sub("", line).strip()
    if not line.startswith("|"):
        return None
    cells = [c.strip() for c in line.strip("|").split("|")]
    if len(cells) < 6 or not cells[0].isdigit() or "results match" not in cells[-1]:
        return None
    values = cells[2].split()
    if len(values) != len(names) or not all(v.isdigit() for v in values):
        return None
    try:
        time_ms = float(cells[-3].split()[0])
        metric = float(cells[-2])
    except (ValueError, IndexError):
        return None
    return dict(zip(names, map(int, values))), time_ms, metric


@dataclass
class _Best:
    params: dict[str, int]
    time_ms: float
    metric: float


@dataclass
class _PassResult:
    command: str
    seconds: float
    configs: int
    best: _Best | None
    stopped: str
    unit: str = ""


def _run_pass(cmd: list[str], phase: int, deadline: float, cwd: str,
              env: Mapping[str, str], on_row: Callable[[int, _Best | None], None]) -> _PassResult:
    """Runs one tuner process, collecting every matched row, until the row table of `phase` ends,
    the process exits, or `deadline` (time.monotonic()) passes; then stops it."""
    start = time.monotonic()
    # The tuners print with C stdio, block-buffered into a pipe: ask for line buffering, or the rows
    # arrive only in 4 KiB chunks and a pass stopped at its deadline loses the last ones.
    stdbuf = shutil.which("stdbuf")
    proc = subprocess.Popen([stdbuf, "-oL", *cmd] if stdbuf else cmd, cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
    lines: _queue.Queue[str | None] = _queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            lines.put(text)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    names: list[str] = []
    current = 0
    best: _Best | None = None
    count = 0
    unit = ""
    stopped = "finished"
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                stopped = "budget"
                break
            try:
                text = lines.get(timeout=min(left, 1.0))
            except _queue.Empty:
                continue
            if text is None:
                break
            text = _ANSI.sub("", text).rstrip("\n")
            if _PHASE.match(text):
                current += 1
                if current > phase:
                    break
                continue
            explored = _PARAMS.match(text)
            if explored:
                names = explored.group(1).split()
                continue
            if text.startswith("|   ID |"):  # the table header names the speed unit
                unit = text.strip().strip("|").split("|")[-2].strip()
                continue
            row = parse_row(text, names)
            if row is not None:
                count += 1
                params, time_ms, metric = row
                if best is None or time_ms < best.time_ms:
                    best = _Best(params, time_ms, metric)
                on_row(count, best)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return _PassResult(" ".join(cmd), time.monotonic() - start, count, best, stopped, unit)


def _fraction(configs: int, seconds: float, seconds_per_config: float) -> float:
    """-fraction (a divisor) that samples about what fits in `seconds`, in random order: never 1.0
    (which explores in a fixed order), never more than `configs` (which would explore none)."""
    wanted = max(seconds / seconds_per_config, 1.0)
    return max(1.0001, min(configs / wanted, float(max(configs, 1))))


#: GEMMs (m, n, k, batch) the conv path runs on the bench layers (AlexNet conv2, VGG16 conv3_2,
#: ResNet-50 3x3 / 1x1 / res4 b8, MobileNet depthwise as 32 groups of m=1) and on smaller layers:
#: the direct-vs-tiled threshold is chosen on them.
ROUTINE_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (256, 729, 2400, 1), (256, 3136, 2304, 1), (64, 3136, 576, 1), (64, 3136, 256, 1),
    (256, 196, 2304, 8), (1, 12544, 9, 32), (512, 49, 4608, 1), (128, 784, 1152, 1),
    (128, 196, 1152, 4), (64, 784, 576, 1), (32, 196, 288, 2), (16, 784, 72, 1), (16, 144, 72, 2),
    (32, 64, 144, 1), (8, 64, 27, 4), (64, 49, 64, 1), (4, 1024, 27, 1), (96, 100, 256, 1),
)
_FORCE_DIRECT = 1 << 16  # XGEMM_MIN_INDIRECT_SIZE whose cube no GEMM reaches


def measure_gemm_routine(dev: Device, precision: int = 32,
                         shapes: Iterable[tuple[int, int, int, int]] = ROUTINE_SHAPES,
                         repeat: int = 3, with_default: bool = False) -> list[dict[str, float]]:
    """Times every shape with CLBlast's direct kernel and with its tiled (indirect) one, under the
    parameters applied now; returns [{m, n, k, batch, direct_ms, indirect_ms}] (best of at least
    `repeat` runs), with `default_ms` first (CLBlast's own choice) when `with_default`: only
    meaningful if GemmRoutine was never overridden in this process (an override cannot be undone).
    Leaves GemmRoutine forcing the tiled kernel; callers re-apply their choice."""
    import numpy as np
    import pyopencl.array as cla


    dtype = {16: np.float16, 32: np.float32, 64: np.float64}[precision]
    shapes = list(shapes)
    rows = [{"m": m, "n": n, "k": k, "batch": batch} for m, n, k, batch in shapes]
    # Each variant is timed on every shape before the next variant's override: CLBlast's own
    # choice first (no override can be undone), then forced direct, then forced tiled. (Timing the
    # variants shape by shape measured "the default" of the second shape onwards under the first
    # shape's last override.)
    variants = [("default_ms", None)] if with_default else []
    variants += [("direct_ms", _FORCE_DIRECT), ("indirect_ms", 1)]
    with dev.lock:
        operands = [(cla.to_device(dev.queue, np.ones(m * k, dtype) / k),
                     cla.to_device(dev.queue, np.ones(batch * k * n, dtype)),
                     cla.empty(dev.queue, batch * m * n, dtype)) for m, n, k, batch in shapes]
        for name, limit in variants:
            if limit is not None:
                gemm.override_parameters(dev, "GemmRoutine", precision,
                                         {"XGEMM_MIN_INDIRECT_SIZE": limit})
            for row, (m, n, k, batch), (a, b, c) in zip(rows, shapes, operands):
                times: list[float] = []
                # The first run compiles (once per routine variant); then at least `repeat` runs
                # and 0.1 s of them, best kept (the least disturbed on a shared machine).
                while len(times) < repeat + 1 or sum(times[1:]) < 0.1 and len(times) < 200:
                    t0 = time.perf_counter()
                    gemm.gemm(dev, m, n, k, a, 0, 0, b, 0, k * n, c, 0, m * n, batch)
                    dev.queue.finish()
                    times.append(time.perf_counter() - t0)
                row[name] = min(times[1:]) * 1e3
    return rows


def mean_slowdown(rows: list[Mapping[str, float]], key: str) -> float:
    """Mean over the shapes of rows[key] / the faster of direct and tiled (1.0 = always best)."""
    return sum(r[key] / min(r["direct_ms"], r["indirect_ms"]) for r in rows) / len(rows)


def choose_indirect_threshold(rows: list[Mapping[str, float]]) -> tuple[int, float]:
    """The XGEMM_MIN_INDIRECT_SIZE (CLBlast runs the tiled kernel when m*n*k >= size**3, the direct
    one below) that minimises the summed slowdown against each shape's faster kernel; returns it
    and that mean slowdown (1.0 = every shape on its faster kernel)."""
    volumes = sorted({round((r["m"] * r["n"] * r["k"]) ** (1 / 3)) for r in rows})
    candidates = sorted({1, _FORCE_DIRECT, *volumes, *(v + 1 for v in volumes)})
    best = (float("inf"), _FORCE_DIRECT)
    for size in candidates:
        cost = 0.0
        for r in rows:
            tiled = r["m"] * r["n"] * r["k"] >= size ** 3
            chosen = r["indirect_ms"] if tiled else r["direct_ms"]
            cost += chosen / min(r["direct_ms"], r["indirect_ms"])
        best = min(best, (cost / len(rows), size))
    return best[1], best[0]


def tune(dev: Device, budget: float = 600.0, precisions: Iterable[int] | None = None,
         kernels: Iterable[str] | None = None, *, save: bool = True, out: TextIO | None = None,
         progress: bool = True, command: str | None = None,
         jobs: Iterable[TunerJob] = JOBS) -> dict[str, Any]:
    """Runs CLBlast's tuners for `dev` within about `budget` seconds and returns the tuning entry
    (saved to `user_path(dev)` and applied to the device when `save`). Then, unless `kernels`
    leaves out 'GemmRoutine', chooses the size from which CLBlast uses its tiled GEMM kernel
    instead of the direct one, by timing both on conv-like shapes (a few minutes more; kept only
    when it beats CLBlast's own choice).

    precisions: CLBlast precision codes (32, 64, 16); default: 32, plus 64 and 16 where the device
    has them. kernels: a subset of the jobs' kernels (default: all the GEMM path uses; 'Xconvgemm',
    CLBlast's own convolution that `bench` compares against, only when named).
    """
    from ..runtime.progress import Progress

    out = out or sys.stdout
    routine = kernels is None or "GemmRoutine" in kernels
    kernels = None if kernels is None else [k for k in kernels if k != "GemmRoutine"] or []
    precisions = list(precisions) if precisions is not None else (
        [32] + ([64] if dev.fp64 else []) + ([16] if dev.fp16 else []))
    for p in precisions:
        if p not in PRECISION_NAMES:
            raise ValueError(f"precision must be one of {sorted(PRECISION_NAMES)}, got {p}")
    wanted = set(kernels) if kernels is not None else None
    chosen = [j for j in jobs if (j.default if wanted is None else j.kernel in wanted)]
    if not chosen and not routine:
        raise ValueError(f"no tuner for kernels {sorted(wanted or ())}; known: "
                         f"{[j.kernel for j in jobs]}")
    missing = tuner_missing(chosen)
    if missing:
        raise FileNotFoundError(f"CLBlast's tuners {missing} are not installed; on Debian/Ubuntu: "
                                f"`sudo apt-get install clblast-utils`")
    passes = [(p, job, i) for p in precisions for job in chosen for i in range(len(job.phases))]
    weights = [_PRECISION_WEIGHT[p] * job.weights[i] for p, job, i in passes]
    env = dict(os.environ)
    if "portable computing language" in dev.platform_name.lower():
        env["POCL_KERNEL_CACHE"] = "0"  # thousands of one-off kernels: keep PoCL's cache clean
    start = time.monotonic()
    deadline = start + budget
    bar = Progress(budget, "tune", enabled=progress)
    results: dict[tuple[int, str], _Best] = {}
    counts: dict[tuple[int, str], int] = {}
    units: dict[tuple[int, str], str] = {}
    log: list[dict[str, Any]] = []
    print(f"tuning CLBlast for {dev.name} [{dev.platform_name}] (platform {dev.platform_index}, "
          f"device {dev.device_index}), budget {budget:.0f} s, precisions "
          f"{', '.join(PRECISION_NAMES[p] for p in precisions)}", file=out)
    with tempfile.TemporaryDirectory(prefix="clconv-tune-") as work:
        for n, ((precision, job, i), weight) in enumerate(zip(passes, weights)):
            left = deadline - time.monotonic()
            if left < 2:
                break
            share = left * weight / sum(weights[n:])
            phase = job.phases[i]
            fraction = _fraction(job.configs[i], share, job.seconds_per_config)
            cmd = [job.binary, "-platform", str(dev.platform_index), "-device",
                   str(dev.device_index), "-precision", str(precision), *job.args,
                   "-fraction", f"{fraction:.4f}", "-runs", "2"]
            key = (precision, job.kernel)
            pass_start = time.monotonic()

            def on_row(count: int, best: _Best | None, key: tuple[int, str] = key,
                       label: str = f"{job.kernel} {PRECISION_NAMES[precision]} phase {phase}",
                       pass_start: float = pass_start) -> None:
                so_far = results.get(key)
                shown = best if so_far is None or (best and best.time_ms < so_far.time_ms) else so_far
                bar.update(time.monotonic() - start,
                           f"{label}: {count} configs, best {shown.metric if shown else 0:.1f}")

            bar.update(pass_start - start, f"{job.kernel} {PRECISION_NAMES[precision]} "
                                           f"phase {phase}: starting")
            result = _run_pass(cmd, phase, min(pass_start + share, deadline), work, env, on_row)
            counts[key] = counts.get(key, 0) + result.configs
            if result.best and (key not in results or result.best.time_ms < results[key].time_ms):
                results[key] = result.best
            if result.unit:
                units[key] = result.unit
            log.append({"command": result.command, "seconds": round(result.seconds, 1),
                        "configs": result.configs, "stopped": result.stopped,
                        "best_time_ms": result.best.time_ms if result.best else None})
    bar.close(f"{sum(counts.values())} configurations")
    sizes = {j.kernel: " ".join(j.args) or "default" for j in chosen}
    entry: dict[str, Any] = {
        "format": FORMAT,
        "key": device_key(dev),
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command or f"python -m clconv tune --budget {budget:g}",
        "budget_s": budget,
        "elapsed_s": round(time.monotonic() - start, 1),
        "parameters": {},
        "measured": {},
        "passes": log,
    }
    for (precision, kernel), best in sorted(results.items()):
        entry["parameters"].setdefault(str(precision), {})[kernel] = best.params
        unit = units.get((precision, kernel)) or ("GFLOPS" if "gemm" in kernel else "GB/s")
        entry["measured"].setdefault(str(precision), {})[kernel] = {
            "time_ms": best.time_ms, "metric": best.metric, "unit": unit,
            "configs": counts[(precision, kernel)], "size": sizes[kernel]}
    for precision in precisions:
        for job in chosen:
            key = (precision, job.kernel)
            if key in results:
                b = results[key]
                print(f"  {job.kernel:<13} {PRECISION_NAMES[precision]}: {counts[key]:>4} configs, "
                      f"best {b.metric:7.1f} {entry['measured'][str(precision)][job.kernel]['unit']}"
                      f" ({b.time_ms:.2f} ms at {sizes[job.kernel]})", file=out)
            else:
                print(f"  {job.kernel:<13} {PRECISION_NAMES[precision]}: no configuration "
                      f"measured (budget too small?)", file=out)
    if routine:
        _tune_routine(dev, entry, precisions, out, bar if progress else None)
    if save and (entry["parameters"] or entry["measured"]):
        path = save_user(dev, entry)
        print(f"saved {path}", file=out)
        state = apply_tuning(dev, load_entry(path), f"user tuning {path}")
        if state.errors:
            print("CLBlast rejected: " + "; ".join(state.errors), file=out)
    return entry


def _tune_routine(dev: Device, entry: dict[str, Any], precisions: Iterable[int], out: TextIO,
                  bar: Any) -> None:
    """Adds GemmRoutine (the direct/tiled threshold) to `entry`, measured in this process under the
    entry's kernel parameters merged over what is saved for the device."""
    old = None
    if user_path(dev).exists():
        try:
            old = load_entry(user_path(dev))
        except (OSError, ValueError):
            old = None
    merged = merge_entries(old, entry)
    # CLBlast's own threshold is measured first, so GemmRoutine must not be overridden before.
    for kernels in merged["parameters"].values():
        kernels.pop("GemmRoutine", None)
    for kernels in entry["parameters"].values():
        kernels.pop("GemmRoutine", None)
    apply_tuning(dev, merged, "tuning in progress")
    for precision in precisions:
        if {"Xgemm", "XgemmDirect"} - set(merged["parameters"].get(str(precision), {})):
            print(f"  GemmRoutine   {PRECISION_NAMES[precision]}: skipped (Xgemm and XgemmDirect "
                  f"must be tuned first)", file=out)
            continue
        if bar is not None:
            bar.update(bar.total, f"GemmRoutine {PRECISION_NAMES[precision]}: direct vs tiled")
        t0 = time.monotonic()
        rows = measure_gemm_routine(dev, precision, with_default=True)
        size, slowdown = choose_indirect_threshold(rows)
        default = mean_slowdown(rows, "default_ms")
        # A threshold is kept only when it beats CLBlast's own choice by more than the noise.
        keep = slowdown < 0.95 * default
        params = {"XGEMM_MIN_INDIRECT_SIZE": int(size)}

        if keep:
            gemm.override_parameters(dev, "GemmRoutine", precision, params)
            entry["parameters"].setdefault(str(precision), {})["GemmRoutine"] = params
        entry["measured"].setdefault(str(precision), {})["GemmRoutine"] = {
            "threshold": int(size), "kept": keep, "mean_slowdown": round(slowdown, 3),
            "clblast_default_mean_slowdown": round(default, 3),
            "seconds": round(time.monotonic() - t0, 1),
            "shapes": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                       for r in rows]}
        wins = sum(r["indirect_ms"] < r["direct_ms"] for r in rows)
        verdict = "kept" if keep else "not kept: CLBlast's own choice is as good"
        print(f"  GemmRoutine   {PRECISION_NAMES[precision]}: tiled kernel from m*n*k >= {size}^3 "
              f"(tiled faster on {wins} of {len(rows)} shapes; mean slowdown vs the per-shape "
              f"best {slowdown:.2f}x, CLBlast's default threshold {default:.2f}x): {verdict}",
              file=out)
