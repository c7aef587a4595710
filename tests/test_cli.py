"""The command line explains itself: bad options are usage errors (exit 2, a usage line, no
traceback), --version, defaults in help, the layer spec forms, --json -, demo --layer, cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    from clconv.tools.cli import main

    try:
        rc = main(list(argv))
    except SystemExit as stop:  # argparse's errors, --help and --version
        rc = stop.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, says", [
    (["bench", "--layer", "1,4,8,8"], "--layer"),
    (["bench", "--peers", "autoo"], "autoo"),
    (["bench", "--peers", ","], "--peers"),
    (["demo", "--repeat", "0"], "at least 1"),
    (["demo", "--repeat", "x"], "not an int"),
    (["bench", "--repeat", "-3"], "at least 1"),
    (["bench", "--time-per-peer", "0"], "positive"),
    (["bench", "--time-per-peer", "nan"], "positive"),
    (["bench", "--dtype", "int8"], "invalid choice"),
    (["bench", "--layer", "conv2d:C=4,H=9,W=9,K=4"], "missing k"),
    (["bench", "--layer", "conv2d:C=4,H=9,W=9,K=4,k=3x3x3"], "1 or 2 values"),
    (["bench", "--layer", "conv3d:C=4,D=2,H=9,W=9,K=4,k=3"], "larger than the padded input"),
    (["bench", "--layer", "conv1d:C=3,L=9,K=4,k=3,g=2"], "must divide by g=2"),
    (["bench", "--layer", "conv2d:C=4,H=9,W=9,K=4,k=3,q=1"], "'q=1'"),
    (["demo", "--layer", "1,3,2,2,4,5,1,0"], "larger than the padded input"),
    (["tune", "--precision", "8"], "16, 32, 64"),
    (["tune", "--kernels", "Xgemm,Nope"], "Nope"),
    (["tune", "--budget", "-1"], "positive"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
    (["bench", "--layer", "1,16,32,32,16,3,1,1,0"], "g=0 must be at least 1"),
    (["bench", "--layer", "conv2d:C=4,H=9,W=9,K=4,k=3,g=0"], "g=0 must be positive"),
    (["demo", "--out", "/nonexistent-clconv-dir/x.png"], "/nonexistent-clconv-dir"),
    (["demo", "--out", "/proc/nope/x.png"], "does not exist"),
    (["demo", "--out", "/"], "is a folder"),
    (["bench", "--json", "/nonexistent-clconv-dir/sub/x.json"], "does not exist"),
    (["bench", "--out", "/nonexistent-clconv-dir/sub/bench"], "does not exist"),
    (["bench", "--layr", "1,4,8,8,4,3,1,1"], "unrecognized arguments: --layr"),
    (["info", "--device", "no-such-device-xyz"], "no-such-device-xyz"),
    # clconv.device's groups split a batch; a command runs on one device
    (["info", "--device", "all"], "'all' names a device group"),
    (["bench", "--device", "0,1"], "'0,1' names a device group"),
    (["info", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_options_are_usage_errors(clconv_mod, capsys, argv, says):
    rc, out, err = run_main(capsys, *argv)
    assert rc == 2
    assert err.startswith("usage: ") and "error:" in err and says in err, err
    assert "Traceback" not in err and out == ""
    if argv and argv[0] in ("bench", "demo", "info", "tune"):  # the command's usage, not the top's
        assert err.startswith(f"usage: {argv[0]}") or f" {argv[0]} [-h]" in err.splitlines()[0]
    assert not os.path.exists("/nonexistent-clconv-dir")  # nothing made outside what was named


def test_a_typo_in_an_option_shows_the_commands_usage():
    done = subprocess.run([sys.executable, "-m", "clconv", "bench", "--layr", "1,4,8,8,4,3,1,1"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("usage: python -m clconv bench")
    assert "python -m clconv bench: error: unrecognized arguments: --layr" in done.stderr


def test_info_takes_a_device(clconv_mod, capsys):
    rc, out, _ = run_main(capsys, "info", "--device", "0")
    assert rc == 0
    name = clconv_mod.devices()[0].name
    assert f"selected device (--device 0): 0 {name}" in out
    if clconv_mod.blas.clblast.available():
        assert "CLBlast tuning: " in out  # which tuning each usable device would load


def test_the_bench_table_is_aligned_with_one_label_per_layer(clconv_mod):
    from benchmarks.report import Result, render
    from clconv.tools.layer_spec import parse_layer

    lay = parse_layer("1,4,8,8,4,3,1,1")
    peers = ["direct", "im2col_packed", "implicit"]
    results = [Result(lay.name, lay.spec, p, ms, 1.0, 1e-6, 1e-7, 3, ms) for p, ms in
               zip(peers, (2.0, 1.0, 0.5))]
    text = render(results, [lay], peers, [], None)
    rows = [line for line in text.splitlines() if line.strip().split(" ")[0] in peers]
    assert len(rows) == 3
    # every number column ends at the same place whatever the peer's name
    assert len({line.index(" ms") if " ms" in line else len(line.split("x ")[0])
                for line in rows}) == 1
    assert len({len(line.split("e-06")[0]) for line in rows}) == 1
    assert text.count(lay.spec) == 2  # the time table's label and the memory table's, once each
    assert "0.000 GFLOP" not in text


@pytest.mark.parametrize("start, end, busy", [(0.1, 1.9, False), (1.5, 2.0, True),
                                              (0.2, 3.5, True), (None, None, False)])
def test_bench_warns_when_the_machine_was_busy(clconv_mod, monkeypatch, start, end, busy):
    from clconv.tools import machine

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    line = machine.busy_warning(start, end, "torch 2.0 (2 threads), ")
    assert bool(line) is busy
    if busy:
        assert "busy" in line and "2 threads" in line and "on 2 CPUs" in line


def test_a_bad_option_from_the_shell_has_no_traceback_and_names_the_module():
    done = subprocess.run([sys.executable, "-m", "clconv", "bench", "--layer", "1,4,8,8"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: python -m clconv bench")
    assert "Traceback" not in done.stderr


def test_the_console_script_calls_itself_clconv(clconv_mod, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(Path(sys.executable).parent / "clconv"), "bench"])
    rc, _, err = run_main(capsys, "bench", "--peers", "nope")
    assert rc == 2 and err.startswith("usage: clconv bench")
    monkeypatch.setattr(sys, "argv", [str(REPO / "clconv" / "__main__.py")])
    rc, _, err = run_main(capsys, "demo", "--repeat", "0")
    assert rc == 2 and err.startswith("usage: python -m clconv demo")


def test_version(clconv_mod, capsys):
    rc, out, _ = run_main(capsys, "--version")
    assert rc == 0 and out.strip() == f"clconv {clconv_mod.__version__}"


def test_help_shows_defaults_and_the_layer_forms(clconv_mod, capsys):
    rc, out, _ = run_main(capsys, "bench", "--help")
    assert rc == 0
    assert "(default: 5)" in out and "(default: float32)" in out and "(default: 3.0)" in out
    flat = " ".join(out.split())
    assert flat.count("(default: all)") == 1 and "(default: None)" not in flat
    assert "(default: False)" not in flat and "(default: [])" not in flat
    assert flat.count("(default: $CLCONV_DEVICE") == 1
    assert "conv2d:N=1,C=64,H=56,W=56,K=64,k=3" in out and "N,C,H,W,K,k,s,p[,g]" in out
    assert "dilation" in out and "conv1d takes L" in out
    rc, out, _ = run_main(capsys, "demo", "--help")
    assert rc == 0 and "(default: clconv-demo.png)" in out


def test_layer_specs_cover_dilation_groups_non_square_and_nd(clconv_mod):
    from clconv.tools.layer_spec import parse_layer

    lay = parse_layer("mine=conv2d:N=2,C=4,H=9,W=7,K=6,k=3x1,s=1x2,p=1,d=2,g=2")
    assert lay.name == "mine" and lay.nd == 2 and lay.kernel == (3, 1)
    assert lay.strides == (1, 2) and lay.pads == (1, 1) and lay.dilations == (2, 2)
    assert lay.groups == 2 and lay.weight_shape == (6, 2, 3, 1)
    assert lay.out_size == ((9 + 2 - 4 - 1) // 1 + 1, (7 + 2 - 1) // 2 + 1)
    one = parse_layer("conv1d:C=3,L=20,K=5,k=4,s=2,p=1,d=3")
    assert one.input_shape == (1, 3, 20) and one.out_size == ((20 + 2 - 9 - 1) // 2 + 1,)
    three = parse_layer("conv3d:N=1,C=2,D=5,H=6,W=7,K=3,k=3,p=1x0x1")
    assert three.input_shape == (1, 2, 5, 6, 7) and three.out_size == (5, 4, 7)
    for lay in (one, three, parse_layer("2,6,9,9,8,3,1,1")):
        again = parse_layer(lay.spec)  # the spec round-trips (the isolated peers re-parse it)
        assert (again.input_shape, again.weight_shape, again.conv_args()) == \
               (lay.input_shape, lay.weight_shape, lay.conv_args())
    assert parse_layer("1,3,10,10,4,3,2,0").spec == "1,3,10,10,4,3,2,0"  # the old form stays


@pytest.mark.parametrize("spec", ["conv1d:N=2,C=3,L=17,K=4,k=3,s=2,p=1,d=2",
                                  "conv2d:N=1,C=4,H=9,W=8,K=6,k=3x1,p=1,d=2,g=2",
                                  "conv3d:N=1,C=2,D=4,H=5,W=6,K=3,k=3,p=1"])
def test_bench_json_to_stdout_matches_the_reference(clconv_mod, capsys, spec):
    rc, out, err = run_main(capsys, "bench", "--layer", spec, "--peers", "direct,im2col,numpy",
                            "--repeat", "2", "--time-per-peer", "0.01", "--out", "-", "--json",
                            "-", "--no-latency", "--no-gemm", "--no-plot", "--no-progress")
    assert rc == 0, err
    data = json.loads(out)  # stdout is the JSON alone; the report went to stderr
    assert "## Time and accuracy" in err and "Targets" not in err and "NOT met" not in err
    assert data["layers"][0]["spec"] and data["dtype"] == "float32"
    ran = {r["peer"]: r for r in data["results"]}
    assert set(ran) == {"direct", "im2col", "numpy"}
    for r in ran.values():
        assert r["ms"] is not None and r["rel_err"] < 1e-5, r
    tuning = next(line for line in data["header"] if line.startswith("CLBlast tuning"))
    assert len(tuning) < 120, tuning  # where the tuning came from, not every kernel's name


def test_bench_dtype(clconv_mod, capsys, dev):
    argv = ["bench", "--layer", "2,3,7,7,4,3,1,1", "--peers", "direct,numpy", "--dtype",
            "float64", "--repeat", "2", "--time-per-peer", "0.01", "--out", "-", "--json", "-",
            "--no-latency", "--no-gemm", "--no-plot", "--no-progress"]
    rc, out, err = run_main(capsys, *argv)
    if not dev.fp64:
        assert rc == 2 and "float64" in err and "Traceback" not in err
        return
    assert rc == 0, err
    data = json.loads(out)
    assert data["dtype"] == "float64" and "(float64;" in err
    for r in data["results"]:
        assert r["rel_err"] < 1e-12, r  # float64 against float64


def test_the_bench_report_has_no_targets_section(clconv_mod):
    from benchmarks import bench

    assert not hasattr(bench, "TARGETS")


def test_demo_with_a_layer_writes_its_chart(clconv_mod, capsys, tmp_path):
    png = tmp_path / "demo.png"
    rc, out, err = run_main(capsys, "demo", "--layer", "1,4,10,10,8,3,1,1", "--repeat", "2",
                            "--out", str(png), "--no-progress")
    assert rc == 0, out + err
    assert "im2col stage alone: GEMM" in out and "direct loops" in out
    assert "memory on the device" in out and "implicit GEMM (clconv's)" in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in out and not png.exists()
    else:
        assert f"wrote the chart to {png}" in out and png.read_bytes()[:4] == b"\x89PNG"


def test_demo_stages_add_up_to_the_convolution(clconv_mod):
    from clconv.tools import demo
    from clconv.tools.layer_spec import parse_layer

    r = demo.measure(None, parse_layer("conv2d:N=2,C=4,H=9,W=8,K=6,k=3x1,p=1,d=2,g=2"), 2)
    assert set(r.stages_ms) == {"im2col", "GEMM", "epilogue"}
    assert all(ms > 0 for ms in r.stages_ms.values()) and r.direct_ms > 0
    assert r.max_error <= 1e-5 * max(r.scale, 1.0)  # staged and one-call results agree with direct
    assert r.memory["im2col"]["columns"] == 4 * 2 * 4 * 3 * 7 * 10  # N C taps L, float32
    assert r.memory["direct"]["input"] == 4 * 2 * 4 * 9 * 8


def test_cache_lists_and_clears(clconv_mod, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CLCONV_CACHE_DIR", str(tmp_path))
    (tmp_path / "algorithms.json").write_text(json.dumps({"choices": {"a": "im2col",
                                                                      "b": "direct"}}))
    tuning = tmp_path / "clblast-tuning-dev-0123456789.json"
    tuning.write_text(json.dumps({"key": {"device": "my device"}, "parameters": {}}))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "prebuilt-networks.json").write_text(json.dumps(["ab", "cd", "ef"]))
    rc, out, _ = run_main(capsys, "cache")
    assert rc == 0 and str(tmp_path) in out
    assert "first-use list" in out and "3 networks listed" in out
    assert "CLBlast tuning" in out and "for my device" in out and tuning.name in out
    assert "'auto' choices" in out and "2 remembered choices" in out
    assert f"{tuning.stat().st_size} B" in out
    rc, out, _ = run_main(capsys, "cache", "--clear")
    assert rc == 0 and "removed 3 file(s)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    rc, out, _ = run_main(capsys, "cache")
    assert "'auto' choices" not in out and "notes.txt" in out
    assert "unreadable" not in out  # another program's file: listed, not read
    (tmp_path / "algorithms.json").write_text("{not json")
    rc, out, _ = run_main(capsys, "cache")
    assert "unreadable" in out


def test_cache_names_the_files_the_library_writes(clconv_mod):
    """`clconv cache` names its files without importing the ops: the names it holds are theirs."""
    from clconv.ops import autotune, prebuild
    from clconv.tools import cache_cmd

    assert cache_cmd.CHOICES_FILE == autotune.CHOICES_FILE
    assert cache_cmd.NETWORKS_FILE == prebuild.NETWORKS_FILE


def test_info_shows_the_cache_folder(clconv_mod, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CLCONV_CACHE_DIR", str(tmp_path))
    rc, out, _ = run_main(capsys, "info")
    assert rc == 0 and f"cache folder (CLBlast tuning, 'auto' choices): {tmp_path}" in out


def test_a_cache_folder_that_is_a_file_or_missing(clconv_mod, capsys, tmp_path, monkeypatch):
    """CLCONV_CACHE_DIR naming a file: `info` says so and `cache` is an error line (both were a
    FileExistsError traceback); a missing folder is listed as not made yet, and listing does not
    make it."""
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("CLCONV_CACHE_DIR", str(afile))
    rc, out, err = run_main(capsys, "info")
    assert rc == 0 and "not a folder" in out and "Traceback" not in err
    rc, out, err = run_main(capsys, "cache")
    assert rc == 1 and "is not a folder" in err and "Traceback" not in err
    missing = tmp_path / "missing"
    monkeypatch.setenv("CLCONV_CACHE_DIR", str(missing))
    rc, out, _ = run_main(capsys, "cache")
    assert rc == 0 and "not made yet" in out and not missing.exists()


def test_a_device_the_options_could_not_check_is_an_error_line(clconv_mod, capsys):
    rc, out, err = run_main(capsys, "demo", "--device", "no-such-device-xyz")
    assert rc == 2 and "no-such-device-xyz" in err and "Traceback" not in err


def test_figure_is_made_from_clconvs_im2col(clconv_mod, tmp_path):
    pytest.importorskip("matplotlib")
    from clconv.tools.figures import im2col_figure

    path = im2col_figure(tmp_path / "f.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    # What it draws: pixel numbers through clconv.im2col, as F.unfold's layout.
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4)
    cols = clconv_mod.im2col(x, 3)[0]
    assert cols.shape == (9, 4) and list(cols[:, 0]) == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    assert os.path.getsize(path) > 1000


def test_the_package_metadata_installs_clblast_and_says_its_license():
    """pyclblast is a dependency (CLBlast is the design's GEMM), the license an SPDX string (the
    TOML-table form is deprecated by setuptools), and the kernels are package data."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = conf["project"]
    assert any(dep.startswith("pyclblast") for dep in project["dependencies"])
    assert project["license"] == "MIT"
    assert int(conf["build-system"]["requires"][0].split(">=")[1]) >= 77  # SPDX needs it
    assert conf["tool"]["setuptools"]["package-data"]["clconv.cl"] == ["*.cl"]


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    """`clconv info | head -1`: the reader leaves, the command's next write fails: exit status 1
    and no traceback (Python's recipe), not a BrokenPipeError's."""
    env = dict(os.environ, CLCONV_CACHE_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "clconv", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # (before the child's first write: its imports take longer)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err
