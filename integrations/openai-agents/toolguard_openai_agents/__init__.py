"""toolguard for the OpenAI Agents SDK: guarded ``FunctionTool``s and one task per run.

::

    from toolguard_openai_agents import GuardedRunner, guard_tools

    agent = Agent(name="worker", tools=guard_tools([kv_get, kv_set], guard))
    runner = GuardedRunner(guard, intent="process-job", params={"job_id": "42"})
    result = await runner.run(agent, "Process job 42")      # one task, ended however it ends
"""

from .runner import GuardedRunner
from .tools import GuardedInvoker, OnDeny, guard_tools, is_guarded, tool_credential

__all__ = [
    "GuardedInvoker",
    "GuardedRunner",
    "OnDeny",
    "guard_tools",
    "is_guarded",
    "tool_credential",
]
