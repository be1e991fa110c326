"""Shared helpers for the agent examples: a scripted chat model, a key-value service that
checks credentials, and a throw-away guard.

``ScriptedChatModel`` replies with predefined ``AIMessage`` objects, in order, so an agent runs
offline and deterministically: a turn with ``tool_calls`` makes the agent call tools, a turn with
plain text ends the run. It supports ``bind_tools`` (it ignores the tools: the script decides).

``KvService`` stands for a downstream service: every read and write presents the call's
just-in-time credential, which the service verifies (signature, expiry, revocation, and that it
covers this operation on this key) before it touches the data. ``kv_tools(service)`` makes the
LangChain tools ``kv_get`` / ``kv_set`` that call it with ``toolguard.current_credential()``.

``example_guard(workdir)`` loads ``examples/agents.yaml`` with its relative paths (audit database,
signing key) resolved in ``workdir``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolCall
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool, tool
from pydantic import PrivateAttr

import toolguard as tg

__all__ = ["KvService", "ScriptedChatModel", "answer", "call", "example_guard", "kv_tools", "turn"]

HERE = Path(__file__).resolve().parent


class ScriptedChatModel(BaseChatModel):
    """A chat model that answers with the next message of ``script`` (thread-safe).

    ``cycle=True`` starts the script again when it is used up (benchmarks); otherwise running
    past its end raises, which makes a wrong example fail loudly.
    """

    script: list[AIMessage]
    cycle: bool = False
    _position: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        """The script already knows which tools it calls."""
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._lock:
            if self._position >= len(self.script):
                if not self.cycle or not self.script:
                    raise RuntimeError("the scripted model has no reply left; extend its script")
                self._position = 0
            reply = self.script[self._position]
            self._position += 1
        return ChatResult(generations=[ChatGeneration(message=reply.model_copy(deep=True))])


def call(name: str, call_id: str, **args: Any) -> ToolCall:
    """One tool call of a scripted turn."""
    return ToolCall(name=name, args=args, id=call_id, type="tool_call")


def turn(*calls: ToolCall) -> AIMessage:
    """A model turn that calls tools (several calls run in parallel)."""
    return AIMessage(content="", tool_calls=list(calls))


def answer(text: str) -> AIMessage:
    """A final model turn: the run ends with this text."""
    return AIMessage(content=text)


def example_guard(workdir: str | Path) -> tg.Guard:
    """A guard on ``examples/agents.yaml`` whose files (audit database, signing key) live in
    ``workdir`` — a temporary directory in the examples, so every run starts clean."""
    config = tg.load_config(HERE / "agents.yaml").model_copy(update={"base_dir": str(workdir)})
    return tg.Guard(config)


class KvService:
    """An in-memory key-value store that accepts only valid, matching credentials."""

    def __init__(self, verifier: tg.Verifier, data: dict[str, str] | None = None) -> None:
        self.verifier = verifier
        self.data: dict[str, str] = dict(data or {})
        self.fail_on: set[str] = set()
        """Keys whose access crashes the service (to show a run that raises midway)."""
        self.tokens: list[str] = []
        """Every token presented, so an example can show it is useless once the task ended."""
        self.claims: list[dict[str, Any]] = []
        """The verified claims of every accepted token (``sub``, ``task_id``, ``act``, ...)."""

    def get(self, token: str, key: str) -> str:
        self._check(token, "read", key)
        return self.data.get(key, "")

    def set(self, token: str, key: str, value: str) -> str:
        self._check(token, "write", key)
        self.data[key] = value
        return "stored"

    def _check(self, token: str, operation: str, key: str) -> None:
        self.tokens.append(token)
        self.claims.append(self.verifier.verify(token, operation=operation, resource=key))
        if key in self.fail_on:
            raise RuntimeError(f"the key-value service crashed while handling {key}")


def kv_tools(service: KvService) -> list[BaseTool]:
    """The ``kv_get`` and ``kv_set`` tools of ``service``; each presents its call's credential."""

    @tool
    def kv_get(key: str) -> str:
        """Read the value stored under a key."""
        return service.get(tg.current_credential().token, key)

    @tool
    def kv_set(key: str, value: str) -> str:
        """Store a value under a key."""
        return service.set(tg.current_credential().token, key, value)

    return [kv_get, kv_set]
