"""The contextvars that carry the current task and the current call to guarded tools."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from .errors import CredentialError
from .numbers import finite_number

if TYPE_CHECKING:
    from .credentials import Credential
    from .engine import Permit
    from .task import TaskSession

__all__ = ["carry_task", "current_credential", "current_task", "report_cost"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

task_var: contextvars.ContextVar[TaskSession | None] = contextvars.ContextVar(
    "toolguard_task", default=None
)
permit_var: contextvars.ContextVar[Permit | None] = contextvars.ContextVar(
    "toolguard_permit", default=None
)


def current_task() -> TaskSession | None:
    """The task active in this context, if any."""
    return task_var.get()


def current_credential() -> Credential:
    """The credential of the guarded call running in this context.

    Raises :class:`CredentialError` outside a guarded call.
    """
    permit = permit_var.get()
    if permit is None:
        raise CredentialError(
            "no guarded tool call is running in this context; current_credential() works only "
            "inside a tool wrapped with toolguard.guard()"
        )
    return permit.credential


def report_cost(amount: float) -> None:
    """Report the actual cost of the running call; its budget is settled to it afterwards.

    Raises :class:`ValueError` (nothing is recorded) for a cost that is not a finite number
    from 0 to :data:`toolguard.numbers.MAX_COST`.
    """
    permit = permit_var.get()
    if permit is None:
        raise CredentialError("report_cost() works only inside a guarded tool call")
    permit.actual_cost = finite_number(amount, "the cost given to report_cost()")


def carry_task(fn: Callable[_P, _R], *, task: TaskSession | None = None) -> Callable[_P, _R]:
    """Wrap ``fn`` so it runs with the current (or given) task, e.g. in a ThreadPoolExecutor::

        pool.submit(tg.carry_task(worker), item)

    Plain ``ThreadPoolExecutor`` threads do not inherit contextvars; LangChain's own executors
    (``RunnableLambda.batch``, ``ToolNode``, sync tools under ``ainvoke``) do.
    """
    ctx = contextvars.copy_context()
    if task is not None:
        ctx.run(task_var.set, task)

    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return ctx.copy().run(fn, *args, **kwargs)

    return run
