"""clconv.runtime.config's driver setting: PoCL's worker threads pinned (POCL_AFFINITY=1) when the
user has not chosen, pinning cannot fail and PoCL's threads are not limited; set before PoCL
starts, and taking effect."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clconv.runtime import config


@pytest.fixture
def unset(monkeypatch):
    monkeypatch.delenv(config.POCL_AFFINITY, raising=False)
    return monkeypatch


@pytest.mark.parametrize("allowed, count, expected", [
    ({0, 1}, 2, "1"),              # every CPU: pinned
    ({0, 1, 2, 3}, 4, "1"),
    ({1}, 2, None),                # a cpuset without CPU 0: PoCL would abort pinning thread 0
    ({0, 1}, 4, None),             # fewer CPUs allowed than online
    ({0}, 1, None),                # one CPU: nothing to gain
])
def test_pinned_only_where_pinning_cannot_fail(unset, allowed, count, expected):
    unset.setattr(os, "sched_getaffinity", lambda pid: set(allowed), raising=False)
    unset.setattr(os, "cpu_count", lambda: count)
    assert config.pin_pocl_threads() is (expected is not None)
    assert os.environ.get(config.POCL_AFFINITY) == expected


@pytest.mark.parametrize("value", ["0", "1", ""])
def test_the_users_choice_is_kept(monkeypatch, value):
    monkeypatch.setenv(config.POCL_AFFINITY, value)
    assert config.pin_pocl_threads() is False
    assert os.environ[config.POCL_AFFINITY] == value


@pytest.mark.parametrize("limit", ["POCL_MAX_PTHREAD_COUNT", "POCL_CPU_MAX_CU_COUNT"])
def test_limited_threads_are_left_unpinned(unset, limit):
    """clconv.dask's CPU workers share the cores through PoCL's thread limit: pinned, every
    worker's threads would land on the first CPUs."""
    unset.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    unset.setattr(os, "cpu_count", lambda: 2)
    unset.setenv(limit, "1")
    assert config.pin_pocl_threads() is False
    assert config.POCL_AFFINITY not in os.environ


_CHILD = r"""
import json, os, sys
import numpy as np
import clconv
dev = clconv.current_device()
clconv.conv2d(np.ones((1, 2, 8, 8), np.float32), np.ones((2, 2, 3, 3), np.float32))
single = []
for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/status") as f:
        line = next(l for l in f if l.startswith("Cpus_allowed_list"))
    cpus = line.split(":")[1].strip()
    if cpus.isdigit():
        single.append(int(cpus))
print(json.dumps({"env": os.environ.get("POCL_AFFINITY"), "pocl": "Portable" in dev.platform_name,
                  "pinned": sorted(single)}))
"""


def _child(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("POCL_AFFINITY", "CLCONV_DEVICE", "POCL_MAX_PTHREAD_COUNT",
                        "POCL_CPU_MAX_CU_COUNT")}
    if env_value is not None:
        env["POCL_AFFINITY"] = env_value
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or not os.path.isdir("/proc/self/task"),
                    reason="Linux's CPU affinity and /proc are needed")
def test_a_fresh_process_pins_pocls_threads():
    """clconv's first device query in a fresh process sets the variable before PoCL starts, and
    PoCL's worker threads then run each on its own CPU; POCL_AFFINITY=0 leaves them unpinned."""
    count = os.cpu_count() or 0
    if count < 2 or os.sched_getaffinity(0) != set(range(count)):
        pytest.skip("this process may not run on every CPU: clconv leaves PoCL unpinned")
    pinned = _child(None)
    assert pinned["env"] == "1"
    if not pinned["pocl"]:
        pytest.skip("the default device is not PoCL's")
    assert set(range(count)) <= set(pinned["pinned"]), pinned
    assert _child("0") == {"env": "0", "pocl": True, "pinned": []}


@pytest.mark.parametrize("name, read, default", [
    (config.TUNING, config.tuning_enabled, True),
    (config.VERBOSE, config.verbose, False),
    (config.TORCH_ZERO_COPY, config.torch_zero_copy, True),
    (config.TORCH_PAUSE_OPENMP, config.torch_pause_openmp, True),
])
def test_switches_take_one_set_of_words_and_refuse_others(monkeypatch, name, read, default):
    """The on/off variables read 1/on/yes/true and 0/off/no/false alike (CLCONV_TORCH_ZERO_COPY
    took only 0 as off, CLCONV_VERBOSE only 1 as on); another value is a ValueError naming the
    variable (they were taken as on, or off, silently)."""
    monkeypatch.delenv(name, raising=False)
    assert read() is default
    monkeypatch.setenv(name, " ")
    assert read() is default
    for word in ("1", "on", "Yes", "TRUE"):
        monkeypatch.setenv(name, word)
        assert read() is True, word
    for word in ("0", "off", "No", "false "):
        monkeypatch.setenv(name, word)
        assert read() is False, word
    for bad in ("bogus", "of", "2"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            read()
