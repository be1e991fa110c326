"""toolguard: least privilege, budgets, audit and just-in-time credentials for agent tools.

The public API, in groups. Every name is imported on first use (PEP 562), so the command line
and downstream verifiers load only what they need (no LangChain, no pydantic unless used).
With ``agent-toolguard-core`` alone (no LangChain, no command line: see toolguard/_extras.py),
the LangChain names (``guard``, ``GuardedTool``, ``ToolDenied``) raise
:class:`MissingDependency` saying what to install.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # every name is imported on first use, see __getattr__
    from .audit import AuditEvent, AuditLog
    from .brokers import HttpTokenBroker, StaticSecretProvider
    from .config import GuardConfig, load_config
    from .context import carry_task, current_credential, current_task, report_cost
    from .credentials import Credential, Issuer, Verifier
    from .engine import Guard
    from .incident import Enablement, Revocation
    from .errors import (
        ApprovalDenied,
        AuditError,
        BudgetExceeded,
        ConfigError,
        CredentialError,
        CredentialExpired,
        CredentialInvalid,
        CredentialRevoked,
        MissingDependency,
        NoActiveTask,
        PolicyDenied,
        ScopeMismatch,
        ToolGuardError,
        UnknownTarget,
    )
    from .httpauth import CredentialAuth
    from .integrity import VerifyReport
    from .keys import KeyRing, PublicKeys
    from .task import TaskSession
    from .tools import GuardedTool, ToolDenied, guard

__version__ = "0.1.0"

__all__ = [
    # The guard and its tasks
    "Guard",
    "GuardConfig",
    "TaskSession",
    "carry_task",
    "current_credential",
    "current_task",
    "load_config",
    "report_cost",
    # LangChain tools
    "GuardedTool",
    "ToolDenied",
    "guard",
    # Credentials
    "Credential",
    "CredentialAuth",
    "HttpTokenBroker",
    "Issuer",
    "KeyRing",
    "PublicKeys",
    "StaticSecretProvider",
    "Verifier",
    # Audit trail
    "AuditEvent",
    "AuditLog",
    "Enablement",
    "Revocation",
    "VerifyReport",
    # Errors
    "ApprovalDenied",
    "AuditError",
    "BudgetExceeded",
    "ConfigError",
    "CredentialError",
    "CredentialExpired",
    "CredentialInvalid",
    "CredentialRevoked",
    "MissingDependency",
    "NoActiveTask",
    "PolicyDenied",
    "ScopeMismatch",
    "ToolGuardError",
    "UnknownTarget",
]

_LAZY = {
    # The guard and its tasks
    "Guard": "engine",
    "GuardConfig": "config",
    "TaskSession": "task",
    "carry_task": "context",
    "current_credential": "context",
    "current_task": "context",
    "load_config": "config",
    "report_cost": "context",
    # LangChain tools
    "GuardedTool": "tools",
    "ToolDenied": "tools",
    "guard": "tools",
    # Credentials
    "Credential": "credentials",
    "CredentialAuth": "httpauth",
    "HttpTokenBroker": "brokers",
    "Issuer": "credentials",
    "KeyRing": "keys",
    "PublicKeys": "keys",
    "StaticSecretProvider": "brokers",
    "Verifier": "credentials",
    # Audit trail
    "AuditEvent": "audit",
    "AuditLog": "audit",
    "Enablement": "incident",
    "Revocation": "incident",
    "VerifyReport": "integrity",
    # Errors
    **dict.fromkeys(
        [
            "ApprovalDenied",
            "AuditError",
            "BudgetExceeded",
            "ConfigError",
            "CredentialError",
            "CredentialExpired",
            "CredentialInvalid",
            "CredentialRevoked",
            "MissingDependency",
            "NoActiveTask",
            "PolicyDenied",
            "ScopeMismatch",
            "ToolGuardError",
            "UnknownTarget",
        ],
        "errors",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'toolguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
