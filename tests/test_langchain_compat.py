"""toolguard/_langchain_compat.py: the LangChain internals toolguard relies on, in one place.

Fails loudly when LangChain moves one of them, or when the installed LangChain is not the one
the names were last checked against (re-check them, then update ``CHECKED_AGAINST``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from langchain_core.tools import BaseTool

from toolguard import _langchain_compat as compat

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("distribution", sorted(compat.CHECKED_AGAINST))
def test_the_installed_langchain_is_the_one_the_names_were_checked_against(
    distribution: str,
) -> None:
    try:
        installed = version(distribution)
    except PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed")
    checked = compat.CHECKED_AGAINST[distribution]
    assert ".".join(installed.split(".")[:2]) == checked, (
        f"{distribution} {installed} is installed, but the LangChain internals in "
        f"toolguard/_langchain_compat.py were checked against {checked}.x: check every name of "
        "PRIVATE_NAMES and BASE_TOOL_PRIVATE_MEMBERS against the new release (signatures and "
        "behaviour), run the whole suite, then update CHECKED_AGAINST"
    )


@pytest.mark.parametrize("name", sorted(compat.PRIVATE_NAMES))
def test_every_internal_name_is_where_it_was(name: str) -> None:
    module_name, attribute = compat.PRIVATE_NAMES[name]
    module = importlib.import_module(module_name)
    assert hasattr(module, attribute), (
        f"{module_name}.{attribute} is gone from this LangChain: find its replacement and "
        "update toolguard/_langchain_compat.py"
    )
    assert getattr(compat, name) is getattr(module, attribute)


@pytest.mark.parametrize("member", compat.BASE_TOOL_PRIVATE_MEMBERS)
def test_base_tool_still_has_the_private_members_guarded_tool_uses(member: str) -> None:
    assert hasattr(BaseTool, member), (
        f"langchain_core.tools.BaseTool.{member} is gone: GuardedTool (toolguard/tools.py) "
        "calls or overrides it"
    )


def test_a_name_that_disappears_fails_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import langchain_core.tools.base as base

    monkeypatch.delattr(base, "_handle_tool_error")
    # a copy in the package (its relative imports resolve), not the module tools.py imported
    spec = importlib.util.spec_from_file_location("toolguard._compat_copy", compat.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError) as caught:
        spec.loader.exec_module(module)
    message = str(caught.value)
    assert "_handle_tool_error" in message
    assert f"checked against langchain-core {compat.CHECKED_AGAINST['langchain-core']}.x" in message
    assert "pip install 'langchain-core~=" in message


def test_is_invalid_resume_answers_for_any_exception() -> None:
    assert compat.is_invalid_resume(ValueError("x")) is False


@pytest.mark.slow
def test_no_other_module_imports_langchain_internals() -> None:
    found = []
    for base in ("toolguard", "integrations"):
        for path in (ROOT / base).rglob("*.py"):
            if path.name == "_langchain_compat.py" or "tests" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ImportFrom) or node.level:
                    continue
                module = node.module or ""
                if not module.startswith(("langchain", "langgraph")):
                    continue
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private or any(p.startswith("_") for p in module.split(".")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {module} {private}")
    assert not found, f"import these through toolguard/_langchain_compat.py: {found}"
