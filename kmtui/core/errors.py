"""One exception tree whose messages tell a custodian what to do next."""

from __future__ import annotations


class KmtuiError(Exception):
    """Base of every error kmtui reports to a person; `str()` is safe to show."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class UsageError(KmtuiError):
    exit_code = 2


class ConfigError(KmtuiError):
    """The configuration file is missing a value or holds a wrong one."""


# --- token -----------------------------------------------------------------------------------


class HsmError(KmtuiError):
    """Something the PKCS#11 module or the token refused."""


class ModuleNotFound(HsmError):
    pass


class TokenNotFound(HsmError):
    pass


class PinIncorrect(HsmError):
    pass


class PinLocked(HsmError):
    pass


class NotLoggedIn(HsmError):
    pass


class TokenRemoved(HsmError):
    pass


class MechanismNotSupported(HsmError):
    pass


class ObjectGone(HsmError):
    pass


class TemplateMismatch(HsmError):
    """A key read back from the token does not carry the attributes it was created with."""

    def __init__(self, message: str, hint: str, differences: dict[str, tuple[object, object]]):
        super().__init__(message, hint)
        self.differences = differences


# --- store -----------------------------------------------------------------------------------


class StoreError(KmtuiError):
    pass


class DatabaseCorrupt(StoreError):
    pass


class DatabaseLocked(StoreError):
    pass


class DatabaseMode(StoreError):
    """The database is not in the durable mode kmtui requires (WAL, synchronous=FULL)."""


class DiskFull(StoreError):
    pass


class SchemaTooNew(StoreError):
    pass


# --- audit -----------------------------------------------------------------------------------


class AuditError(KmtuiError):
    """The audit trail could not be written; the operation it guards did not run."""


# --- policy and dual control -------------------------------------------------------------------


class PolicyRefused(KmtuiError):
    """The key's policy or state does not allow the operation."""


class ApprovalRefused(KmtuiError):
    """The approvals given do not satisfy dual control for this operation."""


class OperatorLocked(ApprovalRefused):
    pass


class AuditTampered(AuditError):
    """The trail on disk disagrees with what the token or a signed checkpoint recorded."""

    exit_code = 3
