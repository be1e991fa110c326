"""Every LangChain name toolguard uses that LangChain does not promise to keep.

:class:`~toolguard.tools.GuardedTool` subclasses ``BaseTool`` and must behave exactly like the
tool it wraps (injected arguments, error handling, run managers, configs), which LangChain
implements with private helpers. They are imported here and nowhere else, so that a LangChain
release that moves one breaks one module, with a message saying what to do, instead of an
``ImportError`` from deep inside ``toolguard.tools`` or the middleware.

:data:`CHECKED_AGAINST` records the releases these names were last checked against;
``tests/test_langchain_compat.py`` fails when the installed releases differ (re-check the names
below against the new release, then update it) or when a name is gone.

Private ``BaseTool`` members :class:`~toolguard.tools.GuardedTool` calls or overrides (checked by
the same test): ``_run``, ``_arun``, ``_parse_input``, ``_injected_args_keys``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ._extras import LANGCHAIN, raise_if_missing

__all__ = [
    "BASE_TOOL_PRIVATE_MEMBERS",
    "CHECKED_AGAINST",
    "PRIVATE_NAMES",
    "get_all_basemodel_annotations",
    "get_runnable_config_param",
    "graph_interrupt",
    "handle_tool_error",
    "in_resumable_graph",
    "is_injected_arg_type",
    "is_invalid_resume",
    "signature_parameters",
    "var_child_runnable_config",
]

CHECKED_AGAINST = {"langchain-core": "1.8", "langchain": "1.5", "langgraph": "1.2"}
"""Distribution -> the ``major.minor`` release the names of this module were checked against."""

PRIVATE_NAMES = {
    "signature_parameters": ("langchain_core.utils._signature", "_signature_parameters"),
    "get_runnable_config_param": ("langchain_core.tools.base", "_get_runnable_config_param"),
    "handle_tool_error": ("langchain_core.tools.base", "_handle_tool_error"),
    "is_injected_arg_type": ("langchain_core.tools.base", "_is_injected_arg_type"),
    "get_all_basemodel_annotations": ("langchain_core.tools.base", "get_all_basemodel_annotations"),
    "var_child_runnable_config": ("langchain_core.runnables.config", "var_child_runnable_config"),
}
"""Name here -> (module, name there) of every internal LangChain name toolguard imports."""

BASE_TOOL_PRIVATE_MEMBERS = ("_run", "_arun", "_parse_input", "_injected_args_keys")
"""Private members of ``langchain_core.tools.BaseTool`` that GuardedTool calls or overrides."""


def _missing(exc: ImportError) -> ImportError:
    """The error for a name this langchain-core no longer has: which, and what to do."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("langchain-core")
    except PackageNotFoundError:  # pragma: no cover - langchain-core is a dependency
        installed = "not installed"
    checked = CHECKED_AGAINST["langchain-core"]
    return ImportError(
        f"toolguard uses LangChain internals that langchain-core {installed} no longer "
        f"provides ({exc}); toolguard was checked against langchain-core {checked}.x. Install "
        f"that release (pip install 'langchain-core~={checked}.0') or a toolguard release that "
        "supports yours"
    )


try:
    from langchain_core.runnables.config import var_child_runnable_config
    from langchain_core.tools.base import _get_runnable_config_param as get_runnable_config_param
    from langchain_core.tools.base import _handle_tool_error as handle_tool_error
    from langchain_core.tools.base import _is_injected_arg_type as is_injected_arg_type
    from langchain_core.tools.base import get_all_basemodel_annotations
    from langchain_core.utils._signature import _signature_parameters as signature_parameters
except ImportError as exc:  # not installed (the core alone), or a name moved: say what to do
    raise_if_missing(LANGCHAIN, exc)
    raise _missing(exc) from exc


@functools.cache
def _invalid_resume() -> Callable[[BaseException], bool]:
    try:
        from langgraph.errors import is_invalid_resume as found
    except ImportError:  # langgraph before 1.2 (or none: the core) never marks resume errors
        return lambda error: False
    return found


def is_invalid_resume(error: BaseException) -> bool:
    """``langgraph.errors.is_invalid_resume`` where langgraph has it (1.2 and later; imported
    on first use, not with toolguard), else False."""
    return _invalid_resume()(error)


def in_resumable_graph() -> bool:
    """True inside a LangGraph run that can be interrupted and resumed: a node's config with a
    scratchpad and a checkpointer (langgraph's private config keys, read here and nowhere else;
    langgraph imported on first use, not with toolguard). False outside a run, without a
    checkpointer, or without langgraph."""
    try:
        from langgraph._internal._constants import CONFIG_KEY_CHECKPOINTER, CONFIG_KEY_SCRATCHPAD
        from langgraph.config import get_config
    except ImportError:
        return False
    try:
        conf = get_config().get("configurable", {})
    except RuntimeError:  # not inside a runnable
        return False
    return CONFIG_KEY_SCRATCHPAD in conf and conf.get(CONFIG_KEY_CHECKPOINTER) is not None


def graph_interrupt(value: object) -> object:
    """``langgraph.types.interrupt(value)``: the resume value, or ``GraphInterrupt`` raised."""
    from langgraph.types import interrupt

    return interrupt(value)
