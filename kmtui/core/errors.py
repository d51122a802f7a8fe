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


class DuplicateObject(HsmError):
    """Two objects kmtui would believe carry one CKA_ID: it never picks one silently."""


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


class ForwardError(KmtuiError):
    """The collector did not confirm a batch; the cursor stayed where it was."""

    def __init__(self, message: str, hint: str = "", *, cursor: int = 0) -> None:
        super().__init__(message, hint)
        self.cursor = cursor
        self.forwarded = 0
        """Events confirmed by the same send_pending call before it failed."""


class ForwardCursorAhead(KmtuiError):
    """The collector was sent events this trail no longer holds: retrying cannot help."""


# --- policy and dual control -------------------------------------------------------------------


class PolicyRefused(KmtuiError):
    """The key's policy or state does not allow the operation."""


class ApprovalRefused(KmtuiError):
    """The approvals given do not satisfy dual control for this operation."""


class OperatorLocked(ApprovalRefused):
    pass


REFUSAL_REASONS = {
    "wrong": "wrong code",
    "replayed": "code already used",
    "malformed": "not six digits",
    "locked": "locked",
    "inactive": "not active",
    "unknown": "not an enrolled operator",
    "duplicate": "counted twice",
    "excluded": "may not approve this operation",
    "role": "role may not approve this operation",
    "unsealable": "seed failed its integrity check",
}
"""Why one approver was refused, in the words a refusal message and the approval dialog use."""


class SeedInUse(ApprovalRefused):
    """The new seed is already held by another operator: one person, one name."""


class ApproversRefused(ApprovalRefused):
    """Some approvers were refused; `refusals` pairs each name with its reason, never a code."""

    def __init__(self, message: str, hint: str, refusals: tuple[tuple[str, str], ...]) -> None:
        super().__init__(message, hint)
        self.refusals = refusals


class ApproversLocked(ApproversRefused, OperatorLocked):
    """At least one approver is locked, or was locked by this attempt."""


class ApprovalUnusable(ApprovalRefused):
    """An approval cannot be spent: `reason` is unknown, wrong-operation, spent, expired, ..."""

    def __init__(self, message: str, hint: str, reason: str) -> None:
        super().__init__(message, hint)
        self.reason = reason


class AuditTampered(AuditError):
    """The trail on disk disagrees with what the token or a signed checkpoint recorded."""

    exit_code = 3


class RegistryChanged(AuditTampered):
    """A row that decides who may do what is not as kmtui last wrote and sealed it."""

    def __init__(self, message: str, hint: str, subjects: tuple[str, ...]) -> None:
        super().__init__(message, hint)
        self.subjects = subjects
