"""`python -m clconv bench` (the benchmarks package) on tiny layers: it runs, every peer agrees
with the float64 reference, the .txt/.csv/.json files say what ran, and `--layers` runs the
network layer sets by the fair method. Results are checked, never timings."""

from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import pytest

TINY = "tiny=2,6,9,9,8,3,1,1"
GROUPED = "grouped=1,4,8,8,4,3,2,1,4"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, clconv_mod):
    from benchmarks import bench
    from clconv.tools.layer_spec import parse_layer

    out = tmp_path_factory.mktemp("bench") / "b"
    layers = [parse_layer(TINY), parse_layer(GROUPED)]
    rc = bench.run_bench(None, layers, None, repeat=2, budget_s=0.05, out=str(out),
                         latency=False, plot=False, progress=False, command="pytest bench")
    return rc, out, layers


def test_bench_writes_text_csv_and_json(bench_run):
    rc, out, layers = bench_run
    assert rc == 0
    text = out.with_suffix(".txt").read_text()
    assert text.startswith("$ pytest bench") and "device:" in text and "## Memory" in text
    assert "\nmethod: " in text and "reference (errors): tests/reference.py" in text
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["command"] == "pytest bench"
    assert len(rows) == len(data["results"])
    from benchmarks.peers import default_peers

    for layer in layers:
        assert {r["peer"] for r in rows if r["layer"] == layer.name} == set(default_peers())


def test_every_peer_that_ran_matches_the_float64_reference(bench_run):
    _, out, _ = bench_run
    data = json.loads(out.with_suffix(".json").read_text())
    ran = [r for r in data["results"] if r["ms"] is not None]
    assert {r["peer"] for r in ran} >= {"direct", "im2col", "auto", "numpy"}
    for r in ran:
        assert r["rel_err"] < 1e-5, r  # float32 vs float64, short reductions
        assert r["gflops"] > 0 and r["runs"] >= 2
    for r in data["results"]:
        if r["ms"] is None:
            assert r["note"], r  # a peer that did not run says why


def test_memory_redundancy_of_the_layers(clconv_mod):
    from benchmarks.bench import LAYERS
    from clconv.tools.layer_spec import parse_layer

    vgg = next(lay for lay in LAYERS if lay.name == "VGG16 conv3_2")
    assert vgg.column_bytes / vgg.input_bytes == 9  # 3x3, stride 1, 'same' padding
    one = next(lay for lay in LAYERS if lay.name == "ResNet-50 1x1")
    assert one.pointwise and one.column_bytes == one.input_bytes
    assert parse_layer("1,3,10,10,4,3,2,0").out_hw == (4, 4)
    assert parse_layer("1,3,10,10,4,3,1,1").flops == 2 * 4 * 100 * 3 * 9


@pytest.mark.parametrize("bad", ["1,2,3", "1,3,10,10,4,3,0,0", "1,3,10,10,4,3,1,1,2", "a,b",
                                 "1,3,2,2,4,5,1,0"])
def test_bad_layer_specs_are_refused(clconv_mod, bad):
    from clconv.tools.layer_spec import parse_layer

    with pytest.raises(ValueError):
        parse_layer(bad)


def test_host_peers_match_the_reference(clconv_mod):
    from benchmarks.bench import reference_conv
    from benchmarks.peers import numpy_conv
    from clconv.tools.layer_spec import parse_layer

    rng = np.random.default_rng(3)
    layer = parse_layer(GROUPED)
    x = rng.standard_normal((layer.n, layer.c, layer.h, layer.w))
    w = rng.standard_normal((layer.k_out, layer.c // layer.groups, layer.ksize, layer.ksize))
    from reference import conv2d as oracle

    expected = oracle(x, w, stride=layer.stride, padding=layer.pad, groups=layer.groups)
    np.testing.assert_allclose(reference_conv(x, w, layer), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(numpy_conv(x, w, layer), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(numpy_conv(x.astype(np.float32), w.astype(np.float32), layer),
                               expected, rtol=1e-4, atol=1e-5)


def test_cli_bench_prints_the_table(clconv_mod, tmp_path, capsys):
    from clconv.tools.cli import main

    rc = main(["bench", "--layer", TINY, "--peers", "direct,im2col,numpy", "--repeat", "2",
               "--time-per-peer", "0.01", "--out", str(tmp_path / "c"), "--no-latency",
               "--no-plot", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "im2col" in text and "numpy" in text and "wrote" in text
    assert (tmp_path / "c.csv").exists()


def test_host_peers_run_in_a_fresh_interpreter_that_imports_the_real_torch():
    """The fresh interpreters put the folders holding clconv and benchmarks on PYTHONPATH, not the
    package folder (whose torch.py would shadow torch)."""
    import importlib.util

    from benchmarks import child_env
    from benchmarks.host_peer import time_isolated
    from clconv.tools.layer_spec import parse_layer

    roots = child_env()["PYTHONPATH"].split(os.pathsep)
    assert os.path.isdir(os.path.join(roots[0], "clconv"))
    assert any(os.path.isfile(os.path.join(r, "benchmarks", "__init__.py")) for r in roots)
    layer = parse_layer("1,2,5,5,3,3,1,1")
    x = np.ones(layer.input_shape, np.float32)
    w = np.ones(layer.weight_shape, np.float32)
    peers = ["numpy"] + (["torch"] if importlib.util.find_spec("torch") else [])
    for peer in peers:
        y, _first, times = time_isolated(peer, layer, x, w, 2, 0.1)
        assert y.shape == (1, 3, 5, 5) and y[0, 0, 2, 2] == 18 and times


def test_the_network_layer_sets_are_the_distinct_convolutions():
    from benchmarks.fair import select_layers

    resnet = select_layers("resnet18")
    assert len(resnet) == 11 and resnet[0][1] == (3, 224, 224, 64, 7, 2, 3, 1)
    mobile = select_layers("mobilenet_v2")
    assert len({dims for _, dims in mobile}) == len(mobile)  # distinct
    assert sum(g == c > 1 for _, (c, *_, g) in mobile) == sum("dw" in n for n, _ in mobile)
    both = select_layers("resnet18,mobilenet_v2", only="dw")
    assert both and all("dw" in name for name, _ in both)
    # ResNet-50's bottlenecks (the stride on the 3x3, four stages) and EfficientNet-B0's MBConv
    # blocks (3x3 and 5x5 depthwise layers, strided ones among them): each convolution once
    r50, eb0 = select_layers("resnet50"), select_layers("efficientnet_b0")
    for layers in (r50, eb0):
        assert len({dims for _, dims in layers}) == len(layers)
    assert len(r50) == 22 and ("r50.512 3x3 s2 @14", (512, 14, 14, 512, 3, 2, 1, 1)) in r50
    assert {(k, s) for _, (c, *_, k, s, p, g) in eb0 if g == c > 1} == {(3, 1), (3, 2), (5, 1),
                                                                          (5, 2)}
    assert all(p == k // 2 for _, (*_, k, s, p, g) in eb0)


def test_the_traced_layer_sets_are_the_networks_convolutions():
    """MobileNetV3-Small's, DenseNet-121's and ConvNeXt-T's sets: each convolution their forward
    calls once (ConvNeXt's channels-last Linears as 1x1 ones), none on one position."""
    pytest.importorskip("torch")
    from benchmarks.fair import select_layers

    mb3, cnx = select_layers("mobilenet_v3_small"), select_layers("convnext_t")
    d121 = select_layers("densenet121")
    for layers in (mb3, cnx, d121):
        assert len({dims for _, dims in layers}) == len(layers)
        assert all(h * w > 1 for _, (c, h, w, *_) in layers)
    assert mb3[0] == ("mb3s.stem 3-16 3x3 s2", (3, 224, 224, 16, 3, 2, 1, 1))
    assert {(k, s) for _, (c, *_, k, s, p, g) in mb3 if g == c > 1} == {(3, 1), (3, 2), (5, 1),
                                                                          (5, 2)}
    assert ("cnx.dw 384 7x7 @14", (384, 14, 14, 384, 7, 1, 3, 384)) in cnx
    assert ("cnx.pw 96-384 @56", (96, 56, 56, 384, 1, 1, 0, 1)) in cnx
    assert cnx[0][1] == (3, 224, 224, 96, 4, 4, 0, 1) and len(cnx) == 16
    assert sum(n.startswith("d121.128-32 3x3") for n, _ in d121) == 4  # (its 3x3 layers)


def test_the_classic_layer_set_keeps_each_layers_batch():
    """`--layers classic`: the classic table's six layers by the fair method, each at the batch
    size the table gives it (ResNet-50 res4 at 8), whatever --batch says."""
    from benchmarks.bench import LAYERS
    from benchmarks.fair import batched, select_layers

    named = select_layers("classic")
    assert [name for name, _ in named] == [f"classic.{layer.name}" for layer in LAYERS]
    for batch in (1, 4):
        dims = batched(named, batch)
        assert [d[0] for d in dims] == [layer.n for layer in LAYERS]
        assert all(d[1:] == (layer.c, layer.h, layer.w, layer.k_out, layer.ksize, layer.stride,
                             layer.pad, layer.groups) for d, layer in zip(dims, LAYERS))
    resnet = select_layers("resnet18")
    assert {d[0] for d in batched(resnet, 4)} == {4}


def test_cli_bench_layers_runs_the_fair_method(clconv_mod, capsys):
    """`bench --layers` on one layer, one round of one-call blocks: the header states the command,
    the device and the method; one ratio line and the geometric mean follow."""
    pytest.importorskip("torch")
    from clconv.tools.cli import main

    rc = main(["bench", "--layers", "resnet18", "--only", "r18.512 3x3", "--rounds", "1",
               "--block", "1", "--pause", "0.01"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("bench --layers resnet18 --only 'r18.512 3x3' --rounds 1 --block 1 "
                             "--pause 0.01")
    assert lines[1].startswith("device: ") and lines[2].startswith("method: the fair method")
    rows = [line for line in lines if line.startswith("r18.512 3x3 @7")]
    assert len(rows) == 1 and "torch " in rows[0] and "auto[" in rows[0] and "x)" in rows[0]
    summary = lines[-1]
    assert summary.startswith("geometric mean torch/clconv (auto): ") and "over 1 layers" in summary


def test_ctrl_c_ends_the_fair_bench_quietly(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group: `bench` and its two warm workers) while
    the fair bench runs: status 130, one line saying so, no traceback from it or its workers."""
    pytest.importorskip("torch")
    import signal
    import subprocess
    import time

    env = dict(os.environ, CLCONV_CACHE_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "clconv", "bench", "--layers", "resnet18",
                             "--only", "conv1", "--rounds", "100000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("method:"):  # both workers are up and blocks alternate
                break
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().endswith("bench: interrupted")


@pytest.mark.parametrize("argv, message", [
    (["--layers", "resnet18", "--layer", TINY], "exclude each other"),
    (["--layers", "vgg"], "unknown layer set"),
    (["--layers", "resnet18", "--algorithms", "nope"], "unknown algorithm"),
    # an option the chosen mode would not read: refused, not ignored
    (["--layers", "resnet18", "--json", "-", "--dtype", "float64"],
     "--dtype, --json: the classic bench's options, not read with --layers"),
    (["--only", "dw", "--batch", "4"], "--batch, --only: --layers's options, not read without"),
])
def test_cli_bench_layers_refuses_bad_options(clconv_mod, capsys, argv, message):
    from clconv.tools.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_cli_bench_says_when_the_benchmarks_package_is_missing(clconv_mod, capsys, monkeypatch):
    """An installation without benchmarks/: `bench` is a usage error that says what to do;
    `info`, `demo`, `cache` and `tune` do not need it."""
    from clconv.tools.cli import main

    for name in [m for m in sys.modules if m.startswith("benchmarks.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # import benchmarks: ModuleNotFoundError
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--layer", TINY, "--no-latency"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "needs the benchmarks package" in err
    assert main(["cache"]) == 0


def test_build_census_logs_first_builds_and_summarizes_them(tmp_path, monkeypatch, clconv_mod):
    """benchmarks/build_census.py: the plugin logs a program the first time a process builds it
    (not a cache hit), with the test that asked; the summary counts programs per device, source
    and module, programs built in several processes, and one source's defines."""
    import clconv.runtime.program as program
    from benchmarks import build_census

    monkeypatch.setenv(build_census.DIR_ENV, str(tmp_path))
    monkeypatch.setattr(program, "_program", program._program)  # restored after the test
    build_census.pytest_configure(None)
    dev = clconv_mod.current_device()
    cache = program.ProgramCache()
    opts = program.options({"REAL": "float"})
    for _ in range(2):  # the second call is a cache hit: not logged
        program._program(dev, cache, "elementwise.cl", opts)
    rows = [json.loads(line) for path in tmp_path.glob("*.jsonl") for line in open(path)]
    assert len(rows) == 1 and rows[0]["source"] == "elementwise.cl"
    assert rows[0]["device"] == dev.cl_device.name and rows[0]["options"] == list(opts)
    assert rows[0]["test"].endswith("test_build_census_logs_first_builds_and_summarizes_them")
    other = dict(rows[0], test="tests/test_x.py::t", options=["-DREAL=double", "-DVW=4"])
    with open(tmp_path / "programs.0.jsonl", "w") as f:  # another process: the same + one more
        f.write(json.dumps(rows[0]) + "\n" + json.dumps(other) + "\n")
    text = build_census.summarize(str(tmp_path), source="elementwise.cl")
    assert text.startswith("3 builds in 2 processes, 2 distinct programs, 1 built in more than one")
    assert "      2  elementwise.cl" in text and "test_x.py" in text and "test_bench.py" in text
    assert "REAL: double 1, float 1" in text and "VW: 4 1" in text
    assert "no census" in build_census.summarize(str(tmp_path / "none"))


def test_whole_networks_times_the_paths_each_network_has(tmp_path):
    """benchmarks.whole_networks on a network without a functional form (MobileNetV3-Small, tiny
    input, one block of one call): torch, convert and compile each timed in their own process,
    the ratios in the printed line and the JSON."""
    pytest.importorskip("torch")
    import subprocess

    import benchmarks

    out = tmp_path / "wn.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.whole_networks", "--models",
                           "mobilenet_v3_small", "--batch", "1", "--size", "32", "--blocks", "1",
                           "--reps", "1", "--pause", "0", "--json", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env=benchmarks.child_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(v for v in proc.stdout.splitlines() if "mobilenet_v3_small batch  1" in v)
    assert "convert" in line and "compile" in line and "functional" not in line
    (row,) = json.loads(out.read_text())
    assert row["model"] == "mobilenet_v3_small" and row["compile_fallbacks"] == 0
    assert {k for k in row if k.endswith("_speedup")} == {"convert_speedup", "compile_speedup"}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_functional_networks_match_torch(clconv_mod, name):
    """benchmarks.functional_networks (whole_networks' 'functional' path): the networks written
    with clconv's functional API (folded BatchNorm, fused activations and residuals, device
    arrays throughout) give torch's eval outputs."""
    torch = pytest.importorskip("torch")
    from benchmarks.functional_networks import functional_forward
    from clconv.tools import networks

    torch.manual_seed(0)
    model = networks.randomize({"resnet18": networks.resnet18,
                                "mobilenet_v2": networks.MobileNetV2}[name](0.25, 10)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    got = functional_forward(name, model)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    with pytest.raises(ValueError, match="no functional forward"):
        functional_forward("vgg", networks.resnet18(0.25, 10))
