"""The sanitize tests (marker `sanitize`, left out of the ordinary run by pyproject's addopts):
every kernel file in cl/ on tiny shapes under Oclgrind, checked for invalid memory accesses, data
races and wrong results. `make sanitize` runs them:

    oclgrind --data-races --check-api --build-options -cl-opt-disable \\
        .venv/bin/python -m pytest -m sanitize tests/sanitize

Each test runs clconv's public API (or, for kernels with no path on Oclgrind's device, the internal
function that launches them) on the Oclgrind device and compares the result with the numpy float64
oracle (tests/reference*.py) within tests/tolerance.py's tolerances (exactly for data movement).
Here:

- every test fails when Oclgrind reports anything while it runs (its stderr is captured per test);
- launches are counted per cl/ file; the summary prints them, and every file that defines a
  kernel must have one (unless it cannot run on the device: listed with the reason), so a new
  kernel file fails the run until a test covers it (checked when the whole set ran);
- the run ends with a line `sanitize: clean` or `sanitize: FAILED`.

Known Oclgrind limits: its --uninitialized plugin aborts on LLVM's `freeze` (left off); it has no
cl_khr_fp16 and aborts on half arithmetic (cl/fp16_probe.cl is not run); a process that used
CLBlast aborts at exit (CLBlast's program cache is torn down after the runtime), so the run ends
with os._exit once pytest has reported and returned its exit status.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from .oclgrind import (
    LaunchCounter,
    Stderr,
    diagnostics,
    kernel_files,
    missing_options,
    not_applicable,
    under_oclgrind,
    without_benign,
)

_HERE = Path(__file__).resolve().parent
_STATE = pytest.StashKey[dict]()


def _state(config: pytest.Config) -> dict:
    """What the hooks below share: the device, launch counter, checks run, whether a part ran."""
    return config.stash.setdefault(_STATE, {"checks": 0, "partial": False})


def _is_sanitize(item: pytest.Item) -> bool:
    return item.get_closest_marker("sanitize") is not None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionstart(session: pytest.Session):
    """Leaves out Oclgrind's benign API reports of the device queries behind the devices line."""
    if not under_oclgrind():
        return (yield)
    with Stderr() as err:
        result = yield
    sys.stderr.write(without_benign(err.text) + "\n" if without_benign(err.text) else "")
    return result


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.option.collectonly or not any(_is_sanitize(item) for item in items):
        return
    if not under_oclgrind():
        raise pytest.UsageError("the sanitize tests run under Oclgrind: `make sanitize` (or "
                                "`oclgrind --data-races --check-api --build-options "
                                "-cl-opt-disable python -m pytest -m sanitize tests/sanitize`)")
    if missing_options():
        raise pytest.UsageError(f"Oclgrind runs without {', '.join(missing_options())}: start it "
                                "with --data-races --check-api --build-options -cl-opt-disable")
    state = _state(config)
    # The coverage of cl/ is judged only on the whole set: no file or test named, none deselected.
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if "::" in arg or not (path == _HERE or path in _HERE.parents):
            state["partial"] = True


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items and any(_is_sanitize(item) for item in items):
        _state(items[0].config)["partial"] = True


@pytest.fixture(scope="session")
def oclgrind_device(request: pytest.FixtureRequest):
    """The Oclgrind device, with every kernel launch counted per cl/ file while the tests run."""
    import clconv

    dev = clconv.device("oclgrind")
    files = kernel_files()
    counter = LaunchCounter(files)
    state = _state(request.config)
    state.update(dev=dev, files=files, counter=counter, t0=time.perf_counter())
    with pytest.MonkeyPatch.context() as mp:
        counter.install(mp)
        yield dev


@pytest.fixture
def device(oclgrind_device):
    """The Oclgrind device, current while the test runs (the functional API uses it). (Not named
    `dev`: tests/conftest.py would run a test that asks for `dev` on every device under test.)"""
    with oclgrind_device:
        yield oclgrind_device


@pytest.fixture(autouse=True)
def _on_oclgrind(device):
    """Every sanitize test runs on the Oclgrind device, whether or not it asks for `device`."""
    return device


@pytest.fixture(params=["int", "long"])
def index_t(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The kernels' flat offsets: 'int' (as these sizes choose) or 'long' (the 64-bit index path of
    every kernel that has one, forced through clconv's testing hook)."""
    from clconv.runtime import transfer

    if request.param == "long":
        monkeypatch.setattr(transfer, "FORCE_INDEX_T", "long")
    return request.param


@pytest.hookimpl(wrapper=True, trylast=True)  # inside pytest's own capture: fd 2 is ours here
def pytest_runtest_call(item: pytest.Item):
    if not _is_sanitize(item):
        return (yield)
    _state(item.config)["checks"] += 1
    error: BaseException | None = None
    with Stderr() as err:
        try:
            result = yield
        except BaseException as exc:  # noqa: BLE001 - re-raised below, Oclgrind's report first
            error = exc
        item.funcargs["device"].queue.finish()  # every launch of the test has run by now
    found = diagnostics(err.text)
    if found:  # the whole report, in the test's captured stderr
        sys.stderr.write(without_benign(err.text) + "\n")
    if error is not None:
        raise error
    if found:
        pytest.fail(f"Oclgrind reported {len(found)} problem(s), first: {found[0]}", pytrace=False)
    return result


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = _state(session.config)
    if "counter" not in state:  # no sanitize test ran
        return
    lines, uncovered = state["counter"].table(state["files"], not_applicable(state["dev"]),
                                              whole=not state["partial"])
    state.update(session=session, lines=lines, uncovered=uncovered,
                 seconds=time.perf_counter() - state["t0"])
    if state["uncovered"] and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    state = _state(config)
    if "lines" not in state:
        return
    tr = terminalreporter
    tr.section("sanitize: Oclgrind " + " ".join(f"{k}={os.environ.get(k, '')}"
                                                for k in ("OCLGRIND_DATA_RACES",
                                                          "OCLGRIND_CHECK_API",
                                                          "OCLGRIND_BUILD_OPTIONS")))
    tr.write_line(f"device: {state['dev'].name} [{state['dev'].platform_name}]")
    for line in state["lines"]:
        tr.write_line(line)
    if state["partial"]:
        tr.write_line("(a part of the tests ran: kernel files without a launch are not judged)")
    tr.write_line(f"{state['checks']} checks, {sum(state['counter'].counts.values())} launches "
                  f"in {state['seconds']:.0f} s")
    for file in state["uncovered"]:
        tr.write_line(f"FAIL {file}: defines kernels but no test launched one")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    state = _state(config)
    if "session" not in state:
        return
    status = int(state["session"].exitstatus)
    print("sanitize: " + ("clean" if status == 0 else "FAILED"), flush=True)
    sys.stderr.flush()
    if under_oclgrind():
        # CLBlast's static program cache is torn down after the OpenCL runtime under Oclgrind and
        # aborts the process at exit: leave with pytest's status, without the exit handlers (the
        # suite's temporary cache folder, which one of them removes, goes first).
        cache = os.environ.get("CLCONV_CACHE_DIR", "")
        if os.path.basename(cache).startswith("clconv-test-cache-"):
            shutil.rmtree(cache, ignore_errors=True)
        os._exit(status)
