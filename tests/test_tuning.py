"""CLBlast tuning: the saved/shipped JSON, the tuner-output parser, loading, and that tuned and untuned
CLBlast give the same convolutions (within float tolerance).

Nothing here times anything or runs a tuner; the tuned-vs-untuned comparison runs in subprocesses
because CLBlast's parameter overrides are process-wide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tolerance import ATOL, RTOL

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tuning(clconv_mod, tmp_path, monkeypatch):
    """clconv.tuning with CLCONV_CACHE_DIR pointing at an empty temporary folder."""
    monkeypatch.setenv("CLCONV_CACHE_DIR", str(tmp_path))
    import clconv.blas.tuning as tuning

    return tuning


def _fake_entry(tuning, dev, metric: float = 10.0, time_ms: float = 2.0) -> dict:
    params = {name: 8 for name in tuning.KERNELS["Copy"]}
    return {"format": tuning.FORMAT, "key": tuning.device_key(dev), "created": "2024-01-01T00:00:00Z",
            "command": "test", "parameters": {"32": {"Copy": params}},
            "measured": {"32": {"Copy": {"time_ms": time_ms, "metric": metric, "unit": "GB/s",
                                         "configs": 3, "size": "default"}}}}


def test_key_names_the_device_driver_and_clblast(tuning, dev):
    key = tuning.device_key(dev)
    assert set(key) == {"platform", "device", "device_version", "driver_version", "clblast_version"}
    assert key["device"] == dev.name and key["driver_version"] == dev.driver_version
    assert key["clblast_version"] == "unknown" or key["clblast_version"].count(".") == 2


def test_save_load_round_trip_in_cache_dir(tuning, dev, tmp_path):
    entry = _fake_entry(tuning, dev)
    path = tuning.save_user(dev, entry)
    assert path.parent == tmp_path and path == tuning.user_path(dev)
    loaded = tuning.load_entry(path)
    assert loaded["parameters"] == entry["parameters"]
    assert loaded["key"] == tuning.device_key(dev)
    found, source = tuning.find_entry(dev)
    assert found["parameters"] == entry["parameters"] and str(path) in source


def test_a_shorter_rerun_never_replaces_a_better_result(tuning, dev):
    good = _fake_entry(tuning, dev, metric=50.0, time_ms=1.0)
    tuning.save_user(dev, good)
    worse = _fake_entry(tuning, dev, metric=5.0, time_ms=10.0)
    worse["parameters"]["32"]["Copy"]["COPY_VW"] = 1
    path = tuning.save_user(dev, worse)
    assert tuning.load_entry(path)["parameters"] == good["parameters"]
    better = _fake_entry(tuning, dev, metric=80.0, time_ms=0.5)
    better["parameters"]["32"]["Copy"]["COPY_VW"] = 4
    assert tuning.load_entry(tuning.save_user(dev, better))["parameters"] == better["parameters"]


@pytest.mark.parametrize("breakage", ["missing parameter", "unknown kernel", "float value", "format"])
def test_malformed_entries_are_rejected(tuning, dev, tmp_path, breakage):
    entry = _fake_entry(tuning, dev)
    copy = entry["parameters"]["32"]["Copy"]
    if breakage == "missing parameter":
        copy.pop("COPY_VW")
    elif breakage == "unknown kernel":
        entry["parameters"]["32"]["Xnothing"] = {"A": 1}
    elif breakage == "float value":
        copy["COPY_VW"] = 1.5
    else:
        entry["format"] = 999
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(entry))
    with pytest.raises(ValueError):
        tuning.load_entry(path)


def test_an_unreadable_user_file_falls_back_to_the_shipped_database(tuning, dev):
    tuning.user_path(dev).write_text("{not json")
    _, source = tuning.find_entry(dev)
    assert "ignored unreadable" in source


def test_shipped_database_is_valid_and_covers_the_gemm_kernels(tuning):
    entries = tuning.shipped_entries()
    assert entries, "clconv/tuning_db/ holds no entry"
    for name, entry in entries:
        assert set(entry["key"]) >= {"platform", "device", "driver_version", "clblast_version"}
        assert entry["command"] and entry["created"]
        f32 = entry["parameters"]["32"]
        assert {"Xgemm", "XgemmDirect", "Copy", "Pad", "Transpose", "Padtranspose"} <= set(f32), name
        for kernel, params in f32.items():  # _check_entry already required every parameter
            assert set(params) == set(tuning.KERNELS[kernel])


def test_shipped_database_is_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    # a data folder declared as its own package (setuptools warns about undeclared ones)
    assert "clconv.blas.tuning_db" in conf["packages"]
    assert conf["package-data"]["clconv.blas.tuning_db"] == ["*.json"]
    assert list((ROOT / "clconv" / "blas" / "tuning_db").glob("*.json"))


def test_matching_needs_the_platform_and_the_device_or_its_code_generator(tuning, dev):
    key = tuning.device_key(dev)
    assert tuning.match_score(key, dict(key)) == 6
    assert tuning.match_score(key, dict(key, platform="Other")) == 0
    other_name = dict(key, device="pthread-other-CPU")
    expected = 4 if "HSTR" in key["device_version"] else 0  # 2 + same driver + same CLBlast
    assert tuning.match_score(key, other_name) == expected
    assert tuning.match_score(key, dict(other_name, device_version="elsewhere")) == 0
    if "HSTR" in key["device_version"]:  # PoCL on another CPU target: the nearest entry, last
        other_target = dict(other_name, device_version="OpenCL 3.0 PoCL HSTR: pthread-x86-other")
        assert tuning.match_score(key, other_target) == 1


ROW = ("|   66 |   578 |    0   16   64   32    8    8    8    8    2    2    4    0    0    1    1"
       "    1 |       8       8 |     256      64 |   \x1b[32mOK\x1b[0m     22 ms |      8.93 ms |"
       "   30.0 |     \x1b[32mresults match\x1b[0m |")
NAMES = "GEMMK MWG NWG KWG MDIMC NDIMC MDIMA NDIMB KWI VWM VWN STRM STRN SA SB KREG".split()


def test_parse_row_reads_parameters_time_and_speed(tuning):
    params, time_ms, metric = tuning.parse_row(ROW, NAMES)
    assert params["MWG"] == 16 and params["NWG"] == 64 and params["SA"] == 1 and params["KREG"] == 1
    assert set(params) == set(tuning.KERNELS["Xgemm"])
    assert (time_ms, metric) == (8.93, 30.0)


@pytest.mark.parametrize("line", [
    ROW.replace("results match", "L2 error 1.0e+00"),
    ("|  ref |     - |      - |       8       8 |    1024    1024 |   OK |  10908.00 ms |      - | "
     "reference OK |"),
    "* Found 578 configuration(s)",
    "",
])
def test_parse_row_skips_everything_but_matched_rows(tuning, line):
    assert tuning.parse_row(line, NAMES) is None
    assert tuning.parse_row(ROW, NAMES[:-1]) is None  # a row of another phase's parameter list


def test_fraction_is_a_divisor_that_always_shuffles(tuning):
    assert tuning._fraction(578, 1e9, 1.0) == pytest.approx(1.0001)  # everything, random order
    assert tuning._fraction(120800, 100, 1.0) == pytest.approx(1208)  # about 100 configurations
    assert tuning._fraction(10, 0.1, 1.0) == 10  # never fewer than one


def test_disabled_by_environment(tuning, monkeypatch):
    monkeypatch.setenv("CLCONV_TUNING", "off")
    assert not tuning.enabled()
    monkeypatch.setenv("CLCONV_TUNING", "on")
    assert tuning.enabled()


def test_rejected_parameters_are_recorded_not_raised(tuning, dev, clconv_mod):
    from clconv.blas import clblast as gemm

    if not gemm.available():
        pytest.skip("CLBlast not installed")
    before = dev.blas_tuning
    try:
        entry = {"parameters": {"32": {"Copy": {"COPY_DIMX": 8}}}}  # incomplete: CLBlast refuses
        state = tuning.apply_tuning(dev, entry, "test")
        assert state.applied == [] and state.errors and "Copy/32" in state.errors[0]
    finally:
        dev.blas_tuning = before


_SCRIPT = r"""
import json, sys
import numpy as np
import clconv
from clconv.blas import tuning
out = sys.argv[1]
results = {}
dev = clconv.current_device()
rng = np.random.default_rng(7)
dtypes = [np.float32] + ([np.float64] if dev.fp64 else [])
# A small GEMM (CLBlast's direct kernel) and a large one (its tiled Xgemm kernel with pad/transpose);
# batch 1, so that only CLBlast's GEMM routine is compiled (once per precision and parameter set).
for shape, wshape, pad in (((1, 8, 9, 9), (16, 8, 3, 3), 1), ((1, 128, 28, 28), (128, 128, 3, 3), 1)):
    x = rng.standard_normal(shape)
    w = rng.standard_normal(wshape) / np.sqrt(np.prod(wshape[1:]))
    for dt in dtypes:
        y = clconv.conv2d(x.astype(dt), w.astype(dt), padding=pad, algorithm="im2col")
        results[f"{shape}-{np.dtype(dt).name}"] = y
np.savez(out, **results)
state = tuning.tuning_state(dev)
print(json.dumps({"source": state.source, "applied": state.applied, "errors": state.errors}))
"""


def _run(tmp_path: Path, name: str, tuning_env: str) -> tuple[dict, dict]:
    env = dict(os.environ, CLCONV_TUNING=tuning_env, CLCONV_CACHE_DIR=str(tmp_path / "cache"),
               CLCONV_AUTO="rule")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    out = tmp_path / f"{name}.npz"
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(out) as data:
        return {k: data[k] for k in data.files}, state


def test_tuned_and_untuned_clblast_give_the_same_results(tuning, dev, tmp_path):
    from clconv.blas import clblast as gemm

    if not gemm.available():
        pytest.skip("CLBlast not installed")
    entry, source = tuning.find_entry(dev)
    if entry is None:
        pytest.skip(f"no shipped tuning matches {dev.name}: nothing to compare ({source})")
    off, state_off = _run(tmp_path, "off", "off")
    on, state_on = _run(tmp_path, "on", "on")
    assert "disabled" in state_off["source"] and not state_off["applied"]
    assert state_on["applied"] and not state_on["errors"], state_on
    assert "Xgemm/32" in state_on["applied"]
    assert off.keys() == on.keys()
    for name in off:
        dt = off[name].dtype
        scale = np.sqrt(128 * 9) * 4.0  # |x| <~ 4, |w| * sqrt(fan-in) ~ 1
        np.testing.assert_allclose(on[name], off[name], rtol=RTOL[dt], atol=ATOL[dt] * scale,
                                   err_msg=name)
