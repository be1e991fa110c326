"""toolguard for PydanticAI: guarded toolsets and one task per agent run.

::

    from toolguard_pydantic_ai import GuardedAgent, guard_toolset

    agent = Agent(model, toolsets=[guard_toolset([kv_get, kv_set], guard)])
    guarded = GuardedAgent(agent, guard, intent="process-job", params={"job_id": "42"})
    result = await guarded.run("Process job 42")      # one task, ended however it ends
"""

from .agent import GuardedAgent, unguarded_tools
from .toolset import (
    CallDeferredOutcome,
    GuardedToolset,
    OnDeny,
    guard_toolset,
    is_guarded,
    tool_credential,
)

__all__ = [
    "CallDeferredOutcome",
    "GuardedAgent",
    "GuardedToolset",
    "OnDeny",
    "guard_toolset",
    "is_guarded",
    "tool_credential",
    "unguarded_tools",
]
