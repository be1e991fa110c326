"""toolguard: least privilege, budgets, audit and just-in-time credentials for agent tools.

The public API, in groups. LangChain and httpx are imported lazily (``guard``,
``GuardedTool``, ``ToolDenied``, ``CredentialAuth``) so the command line starts fast.
"""

import importlib
from typing import TYPE_CHECKING, Any

# The guard and its tasks
from .config import GuardConfig, load_config
from .context import carry_task, current_credential, current_task, report_cost
from .engine import Guard
from .task import TaskSession

# Credentials
from .credentials import Credential, Issuer, Verifier
from .keys import KeyRing, PublicKeys

# Audit trail
from .audit import AuditEvent, AuditLog
from .integrity import VerifyReport

# Errors
from .errors import (
    AuditError,
    BudgetExceeded,
    ConfigError,
    CredentialError,
    CredentialExpired,
    CredentialInvalid,
    CredentialRevoked,
    NoActiveTask,
    PolicyDenied,
    ScopeMismatch,
    ToolGuardError,
)

if TYPE_CHECKING:  # imported lazily, see __getattr__
    from .brokers import HttpTokenBroker, StaticSecretProvider
    from .httpauth import CredentialAuth
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
    "VerifyReport",
    # Errors
    "AuditError",
    "BudgetExceeded",
    "ConfigError",
    "CredentialError",
    "CredentialExpired",
    "CredentialInvalid",
    "CredentialRevoked",
    "NoActiveTask",
    "PolicyDenied",
    "ScopeMismatch",
    "ToolGuardError",
]

_LAZY = {
    "CredentialAuth": "httpauth",
    "HttpTokenBroker": "brokers",
    "StaticSecretProvider": "brokers",
    "GuardedTool": "tools",
    "ToolDenied": "tools",
    "guard": "tools",
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
