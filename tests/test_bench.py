"""`python -m clconv bench` on tiny layers: it runs, every peer agrees with the float64 reference,
and the .txt/.csv/.json files say what ran. Results are checked, never timings."""

from __future__ import annotations

import csv
import os
import json

import numpy as np
import pytest

TINY = "tiny=2,6,9,9,8,3,1,1"
GROUPED = "grouped=1,4,8,8,4,3,2,1,4"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, clconv_mod):
    from clconv.tools import bench

    out = tmp_path_factory.mktemp("bench") / "b"
    layers = [bench.parse_layer(TINY), bench.parse_layer(GROUPED)]
    rc = bench.run_bench(None, layers, None, repeat=2, budget_s=0.05, out=str(out),
                         latency=False, plot=False, progress=False, command="pytest bench")
    return rc, out, layers


def test_bench_writes_text_csv_and_json(bench_run):
    rc, out, layers = bench_run
    assert rc == 0
    text = out.with_suffix(".txt").read_text()
    assert text.startswith("$ pytest bench") and "device:" in text and "## Memory" in text
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["command"] == "pytest bench"
    assert len(rows) == len(data["results"])
    from clconv.tools.bench import default_peers

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
    from clconv.tools.bench import LAYERS, parse_layer

    vgg = next(lay for lay in LAYERS if lay.name == "VGG16 conv3_2")
    assert vgg.column_bytes / vgg.input_bytes == 9  # 3x3, stride 1, 'same' padding
    one = next(lay for lay in LAYERS if lay.name == "ResNet-50 1x1")
    assert one.pointwise and one.column_bytes == one.input_bytes
    assert parse_layer("1,3,10,10,4,3,2,0").out_hw == (4, 4)
    assert parse_layer("1,3,10,10,4,3,1,1").flops == 2 * 4 * 100 * 3 * 9


@pytest.mark.parametrize("bad", ["1,2,3", "1,3,10,10,4,3,0,0", "1,3,10,10,4,3,1,1,2", "a,b",
                                 "1,3,2,2,4,5,1,0"])
def test_bad_layer_specs_are_refused(clconv_mod, bad):
    from clconv.tools.bench import parse_layer

    with pytest.raises(ValueError):
        parse_layer(bad)


def test_host_peers_match_the_reference(clconv_mod):
    from clconv.tools.bench import numpy_conv2d, parse_layer, reference_conv2d

    rng = np.random.default_rng(3)
    layer = parse_layer(GROUPED)
    x = rng.standard_normal((layer.n, layer.c, layer.h, layer.w))
    w = rng.standard_normal((layer.k_out, layer.c // layer.groups, layer.ksize, layer.ksize))
    from reference import conv2d as oracle

    expected = oracle(x, w, stride=layer.stride, padding=layer.pad, groups=layer.groups)
    np.testing.assert_allclose(reference_conv2d(x, w, layer), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(numpy_conv2d(x.astype(np.float32), w.astype(np.float32), layer),
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
    """The fresh interpreters put the folder holding clconv on PYTHONPATH, not the package folder
    (whose torch.py would shadow torch)."""
    import importlib.util

    from clconv.tools.bench import _child_env, _time_isolated, parse_layer

    root = _child_env()["PYTHONPATH"].split(os.pathsep)[0]
    assert os.path.isdir(os.path.join(root, "clconv"))
    layer = parse_layer("1,2,5,5,3,3,1,1")
    x = np.ones(layer.input_shape, np.float32)
    w = np.ones(layer.weight_shape, np.float32)
    peers = ["numpy"] + (["torch"] if importlib.util.find_spec("torch") else [])
    for peer in peers:
        y, first, times = _time_isolated(peer, layer, x, w, 2, 0.1)
        assert y.shape == (1, 3, 5, 5) and y[0, 0, 2, 2] == 18 and times
