"""toolguard for LangChain 1.x agents: ``GuardMiddleware`` for ``create_agent``.

::

    from toolguard_langchain import GuardMiddleware

    agent = create_agent(model, tools, middleware=[GuardMiddleware(guard, intent="process-job")])
    agent.invoke(inputs, config={"configurable": {"job_id": "42"}})   # one task per run
"""

from .middleware import STATE_KEY, GuardMiddleware, GuardState, RunInterrupted, RunScope

__all__ = ["STATE_KEY", "GuardMiddleware", "GuardState", "RunInterrupted", "RunScope"]
