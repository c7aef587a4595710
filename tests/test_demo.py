"""`clconv demo`'s chart and words tell the truth: every algorithm under its own label with all its
memory parts, a legend entry for every colour, the speed-up and FLOP rate on every bar, honest
words on a layer where the GEMM paths lose, and a measured reason when one call beats its stages.

The chart is checked through the matplotlib objects `demo_report.figure` returns, on measured
results of a small layer (measured once per module) and on results made up to cover the cases a
single run cannot choose (GEMM paths winning, and losing)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def demo(clconv_mod):
    from clconv.tools import demo

    return demo


@pytest.fixture(scope="module")
def demo_report(clconv_mod):
    from clconv.tools import demo_report

    return demo_report


def _layer(spec: str):
    from clconv.tools.layer_spec import parse_layer

    return parse_layer(spec)


def _made_up(demo, spec: str, direct: float, im2col: float, packed: float, implicit: float,
             stages=(1.0, 4.0, 0.5), chained: float | None = None):
    """StageTimes as `measure` fills them, with chosen times (ms)."""
    lay = _layer(spec)
    operands = {"input": lay.input_bytes, "weight": 4 * int(np.prod(lay.weight_shape)),
                "output": 4 * lay.n * lay.k_out * int(np.prod(lay.out_size))}
    return demo.StageTimes(
        lay, "a device [a platform]", "OpenCL profiling events", direct,
        stages_ms=dict(zip(("im2col", "GEMM", "epilogue"), stages)),
        chained_ms=sum(stages) * 0.6 if chained is None else chained,
        im2col_call_ms=im2col, packed_ms={"im2col_packed": packed, "implicit": implicit},
        memory={"direct": dict(operands),
                "im2col": dict(operands, columns=lay.column_bytes),
                "im2col_packed": dict(operands, **{"packed columns": lay.column_bytes + 512,
                                                   "packed filters": 4096}),
                "implicit": dict(operands, **{"packed filters": 4096})},
        scale=1.0)


def _texts(fig) -> list[str]:
    found = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        found += [t.get_text() for t in ax.texts]
        found += [t.get_text() for t in ax.get_yticklabels() + ax.get_xticklabels()]
        found += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        if legend is not None:
            found += [t.get_text() for t in legend.get_texts()]
    found.append(fig._suptitle.get_text() if fig._suptitle else "")
    return found


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check_chart(demo_report, r):
    """What every chart must hold, whatever the numbers."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    fig = demo_report.figure(r)
    try:
        ax_t, ax_m = fig.axes
        # time: one bar per path, each under its own label; the stages' bar on its own
        rows = [_one_line(t.get_text()) for t in ax_t.get_yticklabels()]
        assert len(rows) == len(set(rows)) == (len(r.paths()) + bool(r.stages_ms))
        for algo in r.paths():
            label = _one_line(demo_report.LABELS[algo])
            assert any(row.startswith(label) for row in rows), (algo, rows)
        # memory: one bar per algorithm, each under its own label, with all its parts
        columns = [_one_line(t.get_text()) for t in ax_m.get_xticklabels()]
        assert columns == [demo_report.LABELS[a] for a in r.memory]
        for i, (algo, parts) in enumerate(r.memory.items()):
            tops = [p.get_y() + p.get_height() for p in ax_m.patches
                    if abs(p.get_x() + p.get_width() / 2 - i) < 1e-9]
            unit = 2**20 if max(sum(p.values()) for p in r.memory.values()) >= 2**20 else 2**10
            assert max(tops) == pytest.approx(sum(parts.values()) / unit), algo
        # every bar part inside the time axis (a log axis starts below the shortest one)
        left = ax_t.get_xlim()[0]
        assert all(p.get_x() + p.get_width() > left for p in ax_t.patches)
        # a legend entry for every colour drawn, in each panel, and no colour with two meanings
        for ax in (ax_t, ax_m):
            drawn = {to_hex(p.get_facecolor()) for p in ax.patches}
            legend = ax.get_legend()
            keyed = {to_hex(h.get_facecolor()): t.get_text()
                     for h, t in zip(legend.legend_handles, legend.get_texts())}
            assert drawn <= set(keyed), (drawn - set(keyed))
        time_keys = {to_hex(h.get_facecolor()) for h in ax_t.get_legend().legend_handles}
        part_keys = {to_hex(h.get_facecolor()) for h in ax_m.get_legend().legend_handles}
        assert not time_keys & part_keys
        legend_m = [t.get_text() for t in ax_m.get_legend().get_texts()]
        for parts in r.memory.values():
            assert set(parts) <= set(legend_m)
        # every path's bar says its speed-up over the loops and its FLOP rate
        notes = [t.get_text() for t in ax_t.texts]
        for algo, ms in r.paths().items():
            # (two paths can round to the same time: any of the notes with it may be this one's)
            found = [n for n in notes if n.strip().startswith(demo_report.ms_text(ms) + " ms,")]
            assert found and all("FLOP/s" in n for n in found)
            if algo != "direct":
                speed = f"{demo_report._times(r.speedup(algo))} the loops' speed"
                assert any(speed in n for n in found), (algo, found)
        texts = _texts(fig)
        assert not any("0.000" in t or " 0.0 GFLOP" in t for t in texts), texts
        return fig, " ".join(_one_line(t) for t in texts)
    finally:
        plt.close(fig)


def test_the_chart_of_a_layer_where_the_gemm_paths_win(demo, demo_report):
    r = _made_up(demo, "1,64,56,56,64,3,1,1", direct=300.0, im2col=12.0, packed=2.0,
                 implicit=5.0, stages=(0.6, 24.0, 1.5), chained=13.0)
    _, words = _check_chart(demo_report, r)
    assert "Fastest: im2col + packed GEMM (clconv's), 150.0x" in words
    assert "Why one conv call (12.00 ms) beats its stages timed one by one (26.10 ms)" in words
    assert "back to back, as the call enqueues them, the same stages take 13.00 ms" in words
    assert "log scale" in words  # 150x apart: the fast bars stay visible


def test_the_chart_of_a_tiny_layer_says_the_loops_win(demo, demo_report):
    r = _made_up(demo, "1,4,8,8,4,3,1,1", direct=0.01, im2col=0.5, packed=0.9, implicit=0.3,
                 stages=(0.2, 0.15, 0.04), chained=0.3)
    _, words = _check_chart(demo_report, r)
    assert "18.4 kFLOP" in words and "MFLOP/s" in words
    assert "the direct loops are the fastest: every GEMM path is slower" in words
    assert "registers and caches" not in words  # no praise for a path that loses
    assert "KiB on the device" in words
    text = demo_report.report(r, 3)
    assert "0.000" not in text and "18.4 kFLOP per call" in text
    assert "the direct loops are the fastest" in text and "registers and caches" not in text
    assert text.count("layer 1,4,8,8,4,3,1,1") == 1  # one label, not the spec twice


@pytest.mark.parametrize("top", [0.1, 0.06, 0.011])
def test_a_linear_time_axis_of_small_times_has_no_zero_padded_ticks(demo, top, demo_report):
    # Times within 30x of each other draw a linear axis; matplotlib's own tick labels would say
    # '0.000' at its origin for a 0.19 ms range (a flaky CI failure when a run timed so).
    r = _made_up(demo, "1,4,8,8,4,3,1,1", direct=top, im2col=top * 0.8, packed=top * 0.6,
                 implicit=top * 0.5, stages=(top * 0.3, top * 0.3, top * 0.1))
    _, words = _check_chart(demo_report, r)
    assert "log scale" not in words


def test_a_loser_among_winners_is_named(demo, demo_report):
    r = _made_up(demo, "1,16,32,32,16,3,1,1", direct=4.0, im2col=8.0, packed=2.0, implicit=1.0)
    text = demo_report.report(r, 3)
    assert "Fastest: implicit GEMM (clconv's), 4.00x" in text
    assert "im2col + CLBlast GEMM is slower than the loops here (0.50x their speed)" in text


@pytest.mark.parametrize("flops, text", [(18432, "18.4 kFLOP"), (2.31e8, "231 MFLOP"),
                                         (3.7e9, "3.7 GFLOP"), (12, "12 FLOP")])


def test_work_and_rates_in_the_unit_that_suits_them(demo, flops, text, demo_report):
    assert demo_report.flop_text(flops) == text
    assert demo_report.rate_text(flops, 1000.0) == text + "/s"


def test_without_clblast_the_chart_shows_clconvs_own_paths(demo, no_pyclblast, demo_report):
    r = demo.measure(None, _layer("1,4,8,8,4,3,1,1"), 1)
    assert r.im2col_call_ms is None and not r.stages_ms and "im2col" not in r.memory
    assert "no im2col + CLBlast GEMM here" in r.note
    _check_chart(demo_report, r)
    assert "no im2col + CLBlast GEMM here" in demo_report.report(r, 1)


def test_a_measured_small_layer(demo, tmp_path, demo_report):
    """measure() on a real device: every algorithm, its memory parts, agreeing results, a chart."""
    import clconv

    r = demo.measure(None, _layer("1,8,12,12,8,3,1,1"), 2)
    assert r.direct_ms > 0 and all(ms > 0 for ms in r.packed_ms.values())
    assert set(r.packed_ms) == {"im2col_packed", "implicit"}
    assert "packed columns" in r.memory["im2col_packed"]
    if clconv.blas.clblast.available():
        assert list(r.memory) == ["direct", "im2col", "im2col_packed", "implicit"]
        assert r.chained_ms > 0 and r.im2col_call_ms > 0
        assert r.memory["im2col"]["columns"] == _layer("1,8,12,12,8,3,1,1").column_bytes
    assert r.max_error <= 1e-5 * max(r.scale, 1.0)
    _check_chart(demo_report, r)
    assert demo_report.plot(r, tmp_path / "d.png") is None
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_progress_while_measuring(demo, capsys):
    demo.measure(None, _layer("1,4,6,6,4,3,1,1"), 1, progress=True)
    err = capsys.readouterr().err
    assert "demo [" in err and "direct loops" in err and "100%" in err


def test_the_stages_sentence_follows_the_numbers(demo, demo_report):
    r = _made_up(demo, "1,16,32,32,16,3,1,1", direct=4.0, im2col=3.0, packed=2.0, implicit=1.0,
                 stages=(0.5, 1.0, 0.2), chained=1.5)
    assert "did not beat its stages" in demo_report.stages_sentence(r)
    r = dataclasses.replace(r, im2col_call_ms=1.65)  # within 10%: no claim either way
    assert "costs about what its stages cost" in demo_report.stages_sentence(r)
    r = dataclasses.replace(r, im2col_call_ms=1.0)  # beaten, and back to back was faster
    assert "the GEMM reads the column matrix" in demo_report.stages_sentence(r)
    r = dataclasses.replace(r, chained_ms=1.8)  # beaten, but back to back was no faster
    sentence = demo_report.stages_sentence(r)
    assert "single timings vary" in sentence and "the GEMM reads" not in sentence
    assert demo_report.stages_sentence(dataclasses.replace(r, stages_ms={})) is None
