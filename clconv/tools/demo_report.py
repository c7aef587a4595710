"""The `clconv demo` report: its text (times, speed-ups over the loops, FLOP rates, the verdict)
and its chart (time and memory per path), from demo.measure's StageTimes."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .layer_spec import Layer

if TYPE_CHECKING:
    from .demo import StageTimes

__all__ = ["LABELS", "figure", "flop_text", "ms_text", "plot", "rate_text", "report",
           "stages_sentence", "verdict"]

#: Each algorithm's name in the report and on the chart (one label each).
LABELS = {
    "direct": "direct loops",
    "im2col": "im2col + CLBlast GEMM",
    "im2col_packed": "im2col + packed GEMM (clconv's)",
    "implicit": "implicit GEMM (clconv's)",
}
#: The chart's colours: time panel (paths and the im2col stages), memory panel (parts). No colour
#: means two things.
TIME_COLOURS = {"direct": "#8c8c8c", "im2col stage": "#4c72b0", "GEMM stage": "#dd8452",
                "epilogue stage": "#55a868", "im2col": "#8172b3", "im2col_packed": "#c44e52",
                "implicit": "#da8bc3"}
PART_COLOURS = {"input": "#a6cee3", "weight": "#fb9a99", "output": "#b2df8a",
                "columns": "#fdbf6f", "staged GEMM result": "#cab2d6",
                "packed columns": "#ffff99", "packed filters": "#b15928"}


def flop_text(flops: float) -> str:
    """An amount of work in the unit that suits it: '4.72 MFLOP', '1.85 GFLOP'."""
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.0f} FLOP"


def rate_text(flops: float, ms: float) -> str:
    """A FLOP rate in the unit that suits it: '12.3 GFLOP/s', '450 MFLOP/s'."""
    return flop_text(flops / ms * 1e3) + "/s" if ms > 0 else "-"


def _times(x: float) -> str:
    """A speed-up with the digits that matter: '146.6x', '1.93x', '0.021x'."""
    return f"{x:.1f}x" if x >= 10 else f"{x:.2f}x" if x >= 0.1 else f"{x:.2g}x"


def ms_text(ms: float) -> str:
    """Milliseconds with the digits that matter: '326.8', '23.51', '0.0137'."""
    return f"{ms:.1f}" if ms >= 100 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3g}"


def _title(layer: Layer) -> str:
    return layer.name if layer.spec in layer.name else f"{layer.name} ({layer.spec})"


def stages_sentence(r: StageTimes) -> str | None:
    """Why one conv call beats its stages measured alone, from the measured numbers."""
    if not r.stages_ms or r.im2col_call_ms is None or r.chained_ms is None:
        return None
    alone = sum(r.stages_ms.values())
    if alone <= r.im2col_call_ms:
        return (f"In this run the one conv call ({ms_text(r.im2col_call_ms)} ms; its stages "
                f"back to back {ms_text(r.chained_ms)} ms) did not beat its stages timed one by "
                f"one ({ms_text(alone)} ms summed): single timings vary, most on a busy machine; "
                f"--repeat takes the median of more runs.")
    if alone < 1.1 * r.im2col_call_ms:
        return (f"The one conv call ({ms_text(r.im2col_call_ms)} ms) costs about what its stages "
                f"cost timed one by one ({ms_text(alone)} ms) on this device: the stages' own "
                f"work, not their launches, sets the time here.")
    if r.chained_ms >= alone:  # the explanation below would contradict the numbers
        return (f"The one conv call ({ms_text(r.im2col_call_ms)} ms) beat its stages timed one by "
                f"one ({ms_text(alone)} ms summed), though the same stages enqueued back to back "
                f"took {ms_text(r.chained_ms)} ms in their own measurement: single timings vary, "
                f"most on a busy machine; --repeat takes the median of more runs.")
    return (f"Why one conv call ({ms_text(r.im2col_call_ms)} ms) beats its stages timed one by "
            f"one ({ms_text(alone)} ms): timed alone, each stage starts on an idle queue, pays its "
            f"own launch and finds its input out of the caches; enqueued back to back, as the "
            f"call enqueues them, the same stages take {ms_text(r.chained_ms)} ms: the GEMM reads "
            f"the column matrix im2col has just written.")


def verdict(r: StageTimes) -> list[str]:
    """The answer in words: which path is fastest, and honest words for those that lose."""
    paths = r.paths()
    best = min(paths, key=paths.__getitem__)
    work = flop_text(r.layer.flops)
    losers = [a for a in paths if a != "direct" and r.speedup(a) < 1]
    lines = []
    if best == "direct":
        lines.append(f"On this layer the direct loops are the fastest: every GEMM path is slower "
                     f"({', '.join(f'{LABELS[a]} {_times(r.speedup(a))}' for a in losers)} the "
                     f"loops' speed).")
        if r.layer.flops < 1e8:
            lines.append(f"The layer is small ({work} a call): im2col's copy, the packing and "
                         f"the extra launches cost more than a GEMM saves on so little work. On "
                         f"real layers (the default, ResNet-50's 3x3 conv) the GEMM paths "
                         f"usually win: try it.")
        return lines
    lines.append(f"Fastest: {LABELS[best]}, {_times(r.speedup(best))} the speed of the direct "
                 f"loops ({ms_text(paths[best])} ms against {ms_text(r.direct_ms)} ms).")
    if best in ("implicit", "im2col_packed"):
        lines.append("clconv's own GEMM engine packs the operands into the tiles this device's "
                     "registers and caches hold, the shape GEMM is fast in (docs/why-im2col.md).")
    for a in losers:
        lines.append(f"{LABELS[a]} is slower than the loops here ({_times(r.speedup(a))} their "
                     f"speed).")
    return lines


def report(r: StageTimes, repeat: int) -> str:
    lay = r.layer
    flops = lay.flops
    lines = [(f"clconv demo: {_title(lay)}: input {lay.input_shape}, weight "
              f"{lay.weight_shape}, {flop_text(flops)} per call"),
             f"device: {r.device}; times: {r.clock}, median of {repeat} runs", ""]
    rows: list[tuple[str, float, str | None]] = [(LABELS["direct"], r.direct_ms, "direct")]
    rows += [(f"  im2col stage alone: {name}", ms, None) for name, ms in r.stages_ms.items()]
    if r.stages_ms:
        rows.append(("  the stages, sum of the above", sum(r.stages_ms.values()), None))
    if r.chained_ms is not None:
        rows.append(("  the stages back to back", r.chained_ms, None))
    if r.im2col_call_ms is not None:
        rows.append((LABELS["im2col"] + ", one call", r.im2col_call_ms, "im2col"))
    rows += [(LABELS[a], ms, a) for a, ms in r.packed_ms.items()]
    lines.append(f"{'':<36} {'ms':>9} {'FLOP/s':>14} {'vs loops':>9}")
    for name, ms, algo in rows:
        if algo is None:
            lines.append(f"{name:<36} {ms_text(ms):>9}")
        else:
            lines.append(f"{name:<36} {ms_text(ms):>9} {rate_text(flops, ms):>14} "
                         f"{_times(r.direct_ms / ms):>9}")
    if r.note:
        lines.append(r.note)
    lines.append("")
    lines += verdict(r)
    why = stages_sentence(r)
    if why:
        lines.append(f"{why} The GEMM is "
                     f"{100 * r.stages_ms['GEMM'] / sum(r.stages_ms.values()):.0f}% of the stages.")
    lines.append(f"results agree: max |each algorithm - direct| = {r.max_error:.2e} (output max "
                 f"{r.scale:.2f})")
    mem_in = r.memory["direct"]["input"]
    cols = r.memory.get("im2col", {}).get("columns", 0)
    unit, scale = _memory_unit(r)
    lines.append("")
    lines.append(f"memory on the device ({unit}):")
    for algo, parts in r.memory.items():
        listed = ", ".join(f"{p} {v / scale:.2f}" for p, v in parts.items())
        lines.append(f"  {LABELS[algo]:<32} {sum(parts.values()) / scale:>8.2f}  ({listed})")
    if cols:
        lines.append(f"the column buffer is {cols / mem_in:.1f}x the input: each input value is "
                     f"copied up to {math.prod(lay.kernel)} times (once per kernel tap).")
    elif "im2col" in r.memory:
        lines.append("this layer needs no column buffer (1x1, stride 1: the input is the matrix).")
    return "\n".join(lines)


def _plain_ticks() -> Any:
    """Tick labels with the digits each value needs ('0', '0.025'): matplotlib's own pad every
    label to the finest step's digits, '0.000' at the origin of a short axis."""
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(lambda value, _: f"{value:.6g}")


def _memory_unit(r: StageTimes) -> tuple[str, float]:
    most = max(sum(parts.values()) for parts in r.memory.values())
    return ("MiB", 2.0**20) if most >= 2**20 else ("KiB", 2.0**10)


# --------------------------------------------------------------------------------------------------
# The chart

def figure(r: StageTimes) -> Any:
    """The chart as a matplotlib Figure: device time per path (stages stacked), with the speed-up
    over the loops and the FLOP rate on each bar, and the memory each algorithm holds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(15, 5.8),
                                     gridspec_kw={"width_ratios": [1.9, 1]})
    flops = r.layer.flops
    bars: list[tuple[str, list[tuple[str, float]], str]] = []  # label, (colour key, ms), note
    bars.append((LABELS["direct"], [("direct", r.direct_ms)], _bar_note(r, "direct")))
    if r.stages_ms:
        alone = sum(r.stages_ms.values())
        each = ", ".join(f"{s} {ms_text(ms)}" for s, ms in r.stages_ms.items())
        note = f"{ms_text(alone)} ms summed\n ({each})"
        if r.chained_ms is not None:
            note += f"\n back to back: {ms_text(r.chained_ms)} ms"
        bars.append(("im2col + CLBlast GEMM:\nits stages, each timed alone",
                     [(f"{s} stage", ms) for s, ms in r.stages_ms.items()], note))
    if r.im2col_call_ms is not None:
        bars.append((LABELS["im2col"] + ":\none conv call", [("im2col", r.im2col_call_ms)],
                     _bar_note(r, "im2col")))
    for a in r.packed_ms:
        bars.append((LABELS[a].replace(" (", "\n("), [(a, r.packed_ms[a])], _bar_note(r, a)))
    totals = [sum(ms for _, ms in parts) for _, parts, _ in bars]
    log = max(totals) > 30 * min(totals)  # else the fast bars would be a few pixels wide
    seen: set[str] = set()
    for row, (_, parts, note) in enumerate(bars):
        left = 0.0
        for j, (key, ms) in enumerate(parts):
            legend = _legend_name(key)
            label = None if legend in seen else legend
            seen.add(legend)
            if log and len(parts) > 1:
                # Stacked parts would lie on a log axis: the stages side by side, each from 0.
                height = 0.8 / len(parts)
                ax_t.barh(row + (j - (len(parts) - 1) / 2) * height, ms, height=height * 0.9,
                          color=TIME_COLOURS[key], label=label)
                left = max(left, ms)
            else:
                ax_t.barh(row, ms, left=left, color=TIME_COLOURS[key], label=label)
                left += ms
        ax_t.text(left, row, f" {note}", va="center", fontsize=8)
    ax_t.set_yticks(range(len(bars)))
    ax_t.set_yticklabels([label for label, _, _ in bars], fontsize=8)
    ax_t.invert_yaxis()
    if log:
        ax_t.set_xscale("log")
        # from below the shortest part drawn (a stage too), so that every colour shows
        shortest = min(ms for _, parts, _ in bars for _, ms in parts)
        ax_t.set_xlim(shortest / 3, max(totals) * 200)
    else:
        ax_t.set_xlim(0, max(totals) * 1.9)
        ax_t.xaxis.set_major_formatter(_plain_ticks())
    ax_t.set_xlabel(f"device time, ms{', log scale' if log else ''} (lower is better; "
                    f"{r.clock})", fontsize=8)
    ax_t.legend(fontsize=7, title="time", title_fontsize=7, loc="upper left",
                bbox_to_anchor=(1.01, 1.0))
    ax_t.set_title(f"time per call ({flop_text(flops)} of work; speed-up over the loops, FLOP "
                   f"rate)", fontsize=9)

    unit, scale = _memory_unit(r)
    seen.clear()
    for i, (algo, sizes) in enumerate(r.memory.items()):
        bottom = 0.0
        for part, nbytes in sizes.items():
            if not nbytes:
                continue
            ax_m.bar(i, nbytes / scale, bottom=bottom, color=PART_COLOURS.get(part, "#dddddd"),
                     label=None if part in seen else part, edgecolor="white", linewidth=0.5)
            seen.add(part)
            bottom += nbytes / scale
        ax_m.text(i, bottom, f"{bottom:.2f} {unit}", ha="center", va="bottom", fontsize=8)
    ax_m.set_xticks(range(len(r.memory)))
    ax_m.set_xticklabels([textwrap.fill(LABELS[a], 14) for a in r.memory], fontsize=7)
    ax_m.set_ylabel(f"{unit} on the device", fontsize=8)
    ax_m.set_ylim(0, max(sum(p.values()) for p in r.memory.values()) / scale * 1.15)
    ax_m.yaxis.set_major_formatter(_plain_ticks())
    ax_m.legend(fontsize=7, title="memory", title_fontsize=7, loc="upper left",
                bbox_to_anchor=(1.01, 1.0))
    ax_m.set_title("memory each algorithm holds", fontsize=9)

    lines = verdict(r)
    why = stages_sentence(r)
    words = "\n".join(textwrap.fill(t, 190) for t in (lines[:2] + ([why] if why else [])))
    fig.suptitle(f"{_title(r.layer)} on {r.device}", fontsize=9)
    fig.text(0.01, 0.01, words, fontsize=8, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.03 + 0.028 * words.count("\n"), 1, 0.97))
    return fig


def _legend_name(key: str) -> str:
    return key if key.endswith("stage") else LABELS[key]


def _bar_note(r: StageTimes, algorithm: str) -> str:
    ms = r.paths()[algorithm]
    speed = "the reference" if algorithm == "direct" else \
        f"{_times(r.speedup(algorithm))} the loops' speed"
    return f"{ms_text(ms)} ms, {speed}, {rate_text(r.layer.flops, ms)}"


def plot(r: StageTimes, path: Path) -> str | None:
    """Writes `figure(r)` as a PNG to `path` (its folder must exist); None, or why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'clconv[plot]')"
    import matplotlib.pyplot as plt

    fig = figure(r)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
