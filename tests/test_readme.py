"""Every ```python block of README.md runs as written, on whatever device this machine has.

The blocks run in order in one namespace (a later block may use an earlier one's names), in a
temporary working folder, each with a time limit so a slow example is noticed. A block whose first
line is `# requires: torch` (an optional extra) runs when that module is importable; otherwise it
is only compiled, so that its syntax is still checked."""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SECONDS_PER_BLOCK = 30.0
_REQUIRES = re.compile(r"^# requires: ([\w.]+)")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def test_the_block_finder():
    text = "a\n```python\nx = 1\n```\n```sh\nls\n```\n```python\ny = x + 1\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (8, "y = x + 1\n")]


def test_readme_python_blocks_run(clconv_mod, tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python block"
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for line, code in blocks:
        code_object = compile(code, f"README.md:{line}", "exec")
        needs = _REQUIRES.match(code)
        if needs and importlib.util.find_spec(needs.group(1)) is None:
            continue  # compiled above; the optional module is not installed here
        start = time.perf_counter()
        try:
            exec(code_object, namespace)
        except Exception as err:
            pytest.fail(f"the README's ```python block at line {line} fails: "
                        f"{type(err).__name__}: {err}")
        seconds = time.perf_counter() - start
        assert seconds < SECONDS_PER_BLOCK, f"the block at line {line} took {seconds:.1f} s"
