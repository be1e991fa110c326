"""toolguard: least privilege, budgets, audit and just-in-time credentials for agent tools."""

# The guard and its tasks
# Audit trail
from .audit import AuditEvent, AuditLog
from .config import GuardConfig, load_config
from .context import carry_task, current_credential, current_task, report_cost

# Credentials
from .credentials import Credential, Issuer, Verifier
from .engine import Guard

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
from .httpauth import CredentialAuth
from .integrity import VerifyReport
from .keys import KeyRing, PublicKeys
from .task import TaskSession

# LangChain tools
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
    "Issuer",
    "KeyRing",
    "PublicKeys",
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
