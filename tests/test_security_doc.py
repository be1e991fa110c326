"""docs/security.md names a test for every promise: each named test exists (so a renamed or
deleted test cannot leave the page claiming a proof that is gone)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "security.md"

_REF = re.compile(r"`(tests/[\w/]+\.py)?(?:::)?(test_\w+)?(?:\[[^\]`]*\])?`")


def _references(text: str) -> list[tuple[str, str]]:
    """``(file, test)`` pairs: a bare ``::test_x`` refers to the last file named before it."""
    found: list[tuple[str, str]] = []
    current = ""
    for match in _REF.finditer(text):
        path, name = match.group(1), match.group(2)
        if path:
            current = path
        if name and current:
            found.append((current, name))
    return found


def test_security_page_names_only_tests_that_exist() -> None:
    text = PAGE.read_text(encoding="utf-8")
    references = _references(text)
    assert len(references) > 60
    missing = []
    for path, name in references:
        source = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).is_file() else ""
        if not re.search(rf"^(async )?def {name}\b", source, re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"


def test_security_page_has_a_section_per_promise() -> None:
    headings = re.findall(r"^## \d\. (.+)$", PAGE.read_text(encoding="utf-8"), re.MULTILINE)
    assert headings == [
        "Revocation at task end",
        "Fail closed: if the trail cannot be trusted, nothing runs",
        "Tamper evidence",
        "No secret at rest, no token to the model",
        "Bounded and well-formed input",
        "Incident commands and config",
        "Human approval bound to the exact action",
    ]
