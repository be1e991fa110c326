"""Every ```python block of README.md runs.

Conventions for README authors:

- Python blocks run in order in one namespace, in a fresh temporary working directory, as a
  reader would paste them into one session: block N runs after blocks 1 .. N-1.
- ``<!-- no-test -->`` on the line(s) just before a fence skips that block (e.g. a block that
  needs a real API key or shows a fragment).
- ``<!-- file: NAME -->`` just before any fenced block (```yaml, ```toml, ...) writes its
  content to ``NAME`` in the working directory before the Python blocks run, so a README can
  show ``toolguard.yaml`` and then ``Guard.from_config("toolguard.yaml")``.

With no README (or no Python block) yet, the test passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```([\w+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*(no-test|file:\s*(\S+))\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int
    skip: bool
    file: str | None


def parse(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text with the markers just before each."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    skip, file = False, None
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line.strip())
        fence = _FENCE.match(line.strip())
        if marker:
            if marker.group(1) == "no-test":
                skip = True
            else:
                file = marker.group(2)
        elif fence and line.startswith("```"):
            start = i + 1
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            code = "\n".join(lines[start:i]) + "\n"
            blocks.append(Block(fence.group(1).lower(), code, start, skip, file))
            skip, file = False, None
        elif line.strip():
            skip, file = False, None
        i += 1
    return blocks


def _blocks() -> list[Block]:
    if not README.exists():
        return []
    return parse(README.read_text(encoding="utf-8"))


def _python(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.language in ("python", "py") and not b.skip and not b.file]


_ALL = _blocks()


def test_parse_finds_blocks_and_markers() -> None:
    text = (
        "# Title\n\n<!-- file: toolguard.yaml -->\n```yaml\nstore: a.db\n```\n\n"
        "```python\nx = 1\n```\n\n<!-- no-test -->\n```python\nraise SystemExit\n```\n"
        "<!-- no-test -->\n\nsome text\n```python\ny = x + 1\n```\n"
    )
    blocks = parse(text)
    assert [(b.language, b.skip, b.file) for b in blocks] == [
        ("yaml", False, "toolguard.yaml"),
        ("python", False, None),
        ("python", True, None),
        ("python", False, None),
    ]
    assert blocks[1].code == "x = 1\n"
    assert blocks[1].line == 8


@pytest.mark.parametrize(
    "index",
    [pytest.param(i, id=f"line-{b.line}") for i, b in enumerate(_python(_ALL))]
    or [pytest.param(None, id="no-python-blocks-yet")],
)
def test_readme_python_block_runs(
    index: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if index is None:
        return
    monkeypatch.chdir(tmp_path)
    for block in _ALL:
        if block.file:
            target = tmp_path / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code, encoding="utf-8")
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    blocks = _python(_ALL)
    for block in blocks[: index + 1]:
        code = compile(block.code, f"README.md:{block.line}", "exec")
        exec(code, namespace)
