"""Which tests build which OpenCL programs: a census of the suite's compilation work (issue 15's
cold `make test`).

    CLCONV_CENSUS_DIR=/tmp/census python -m pytest -n 2 -p benchmarks.build_census tests
    python -m benchmarks.build_census /tmp/census [--source conv_grouped.cl]

As a pytest plugin (`-p benchmarks.build_census`, loaded by every xdist worker) it records each
program a process builds for the first time (clconv.runtime.program's cache missed: the device,
cl/ source, build options, the test that asked, clBuildProgram's seconds) as one JSON line in
$CLCONV_CENSUS_DIR/programs.<pid>.jsonl. PoCL's larger cost, the work-group function it compiles at
a kernel's first launch, is not in those seconds: run the suite on empty caches
(XDG_CACHE_HOME, POCL_CACHE_DIR) and take the tests' times (`--durations=0`) for that.
As a script it summarises a census directory: programs per device and source, per test module,
the same program built in several processes, and with --source which defines vary among that
source's programs.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import time
from typing import Any

__all__ = ["main", "summarize"]

DIR_ENV = "CLCONV_CENSUS_DIR"


def _install() -> None:
    """Wrap clconv.runtime.program._program (the cache lookup and build) to log first builds."""
    import clconv.runtime.program as program

    build = program._program
    out = open(os.path.join(os.environ[DIR_ENV], f"programs.{os.getpid()}.jsonl"), "a")

    def logged(dev: Any, cache: Any, source: str, opts: tuple[str, ...]) -> Any:
        if (source, opts) in cache.entries:
            return build(dev, cache, source, opts)
        start = time.perf_counter()
        prg = build(dev, cache, source, opts)
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        out.write(json.dumps({"device": dev.cl_device.name, "source": source, "options": opts,
                              "test": test, "build_s": time.perf_counter() - start}) + "\n")
        out.flush()
        return prg

    program._program = logged


def pytest_configure(config: Any) -> None:
    if os.environ.get(DIR_ENV):
        os.makedirs(os.environ[DIR_ENV], exist_ok=True)
        _install()


def _rows(directory: str) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(glob.glob(os.path.join(directory, "*.jsonl")))
            for line in open(path)]


def summarize(directory: str, source: str = "", top: int = 25) -> str:
    """The census in `directory` as text (see the module's docstring)."""
    rows = _rows(directory)
    if not rows:
        return f"no census in {directory} (set {DIR_ENV} and run pytest with -p benchmarks.build_census)"
    keys = collections.Counter((r["device"], r["source"], tuple(r["options"])) for r in rows)
    lines = [f"{len(rows)} builds in {len(glob.glob(os.path.join(directory, '*.jsonl')))} "
             f"processes, {len(keys)} distinct programs, {sum(1 for n in keys.values() if n > 1)} "
             f"built in more than one process; clBuildProgram "
             f"{sum(r['build_s'] for r in rows):.0f} s in all", "", "distinct programs per device:"]
    for dev, n in collections.Counter(k[0] for k in keys).most_common():
        lines.append(f"  {n:5d}  {dev}")
    lines += ["", "distinct programs per source (all devices):"]
    for src, n in collections.Counter(k[1] for k in keys).most_common(top):
        lines.append(f"  {n:5d}  {src}")
    per_module: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for r in rows:
        module = r["test"].split("::")[0].rsplit("/", 1)[-1] or "(outside a test)"
        per_module[module][0] += 1
        per_module[module][1] += r["build_s"]
    lines += ["", "builds per test module (count, clBuildProgram seconds):"]
    for module, (n, s) in sorted(per_module.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"  {n:5d} {s:7.1f} s  {module}")
    if source:
        opts = {k[2] for k in keys if k[1] == source}
        values: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for o in opts:
            for d in o:
                name, _, value = d[2:].partition("=")
                values[name][value] += 1
        lines += ["", f"{source}: {len(opts)} distinct option sets; programs per define value:"]
        for name, counts in values.items():
            common = sorted(counts.items(), key=lambda vn: (-vn[1], vn[0]))[:8]  # ties by value
            lines.append(f"  {name}: " + ", ".join(f"{v or '(set)'} {n}" for v, n in common))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--source", default="", help="a cl/ file whose defines to break down")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(summarize(args.directory, args.source, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
