"""No compiler output reaches the user: conv_grouped.cl builds without the AVX ABI warning, and
clconv.runtime.program.QuietBuild holds back pyopencl's CompilerWarning and what the driver
writes to stderr, keeping it for KernelBuildError and CLCONV_VERBOSE=1."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pyopencl as cl
import pytest

REPO = Path(__file__).resolve().parent.parent

# A kernel that warns on every compiler (an unused variable), and one that does not build.
_WARNS = "__kernel void k(__global float* x) { int unused_variable; x[0] = 1.0f; }"
_BROKEN = "__kernel void k(__global float* x) { x[0] = not_declared; }"

_FRESH_BUILD = r"""
import numpy as np, clconv
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64) if clconv.current_device().fp64 else (np.float32,):
    for stride in (1, 2):
        x = rng.standard_normal((1, 8, 40, 40)).astype(dtype)
        w = rng.standard_normal((8, 1, 3, 3)).astype(dtype)
        clconv.conv2d(x, w, stride=stride, padding=1, groups=8, algorithm="direct")
print("done")
"""


def test_grouped_kernels_build_silently_from_an_empty_cache(clconv_mod):
    """The vector widths of conv_grouped.cl (float8, double4 at most) pass no 512-bit vector
    through a builtin, which AVX2 CPUs warn about; nothing else is printed either."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, POCL_CACHE_DIR=cache, XDG_CACHE_HOME=cache,
                   PYOPENCL_COMPILER_OUTPUT="1", CLCONV_VERBOSE="1")
        done = subprocess.run([sys.executable, "-c", _FRESH_BUILD], capture_output=True,
                              text=True, timeout=300, cwd=REPO, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    # Verbose mode prints every build's log: none may mention the ABI warning.
    assert "changes the ABI" not in done.stderr and "conv_grouped.cl" in done.stderr


def _fresh_program(dev, source):
    return cl.Program(dev.context, source)


def test_quiet_build_holds_back_warnings(clconv_mod, dev, capfd, monkeypatch):
    from clconv.runtime.program import QuietBuild

    monkeypatch.delenv("CLCONV_VERBOSE", raising=False)
    prg = _fresh_program(dev, _WARNS + f"// {os.getpid()} quiet")  # new text: no cached binary
    with warnings.catch_warnings(record=True) as seen, dev.lock:
        warnings.simplefilter("always")
        with QuietBuild(prg, dev, "test.cl", ("-DTEST",)):
            prg.build(devices=[dev.cl_device])
    out, err = capfd.readouterr()
    assert not [w for w in seen if issubclass(w.category, cl.CompilerWarning)]
    assert "warning generated" not in err and "warning generated" not in out
    assert "unused" not in err


def test_verbose_mode_prints_build_time_and_log(clconv_mod, dev, capfd, monkeypatch):
    from clconv.runtime.program import QuietBuild

    monkeypatch.setenv("CLCONV_VERBOSE", "1")
    prg = _fresh_program(dev, _WARNS + f"// {os.getpid()} verbose")
    with dev.lock, QuietBuild(prg, dev, "test.cl", ("-DTEST",)):
        prg.build(devices=[dev.cl_device])
    err = capfd.readouterr().err
    assert f"clconv: built test.cl -DTEST for {dev.name!r} in " in err and " ms" in err


def test_a_failed_build_keeps_the_compiler_output(clconv_mod, dev, capfd, monkeypatch):
    from clconv.runtime.program import QuietBuild

    monkeypatch.delenv("CLCONV_VERBOSE", raising=False)
    prg = _fresh_program(dev, _BROKEN + f"// {os.getpid()}")
    quiet = QuietBuild(prg, dev, "broken.cl", ())
    with pytest.raises(cl.Error) as failed, dev.lock, quiet:
        prg.build(devices=[dev.cl_device])
    log = prg.get_build_info(dev.cl_device, cl.program_build_info.LOG)
    # what KernelBuildError.log is made of (rusticl's driver log is empty after a failed build:
    # pyopencl's error text carries the compiler's messages)
    assert "not_declared" in log + quiet.output + str(failed.value)
    err = capfd.readouterr().err
    assert "generated." not in err
