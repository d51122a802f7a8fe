"""Past-tense messages that workers post; widgets react to them on the UI thread."""

from __future__ import annotations

from textual.message import Message

from kmtui.core.errors import KmtuiError
from kmtui.core.keys.reconcile import Report
from kmtui.core.models import TokenInfo
from kmtui.service import Workstation


class LoggedIn(Message):
    def __init__(self, info: TokenInfo) -> None:
        super().__init__()
        self.info = info


class LoginFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


def log_in(workstation: Workstation, pin: str) -> LoggedIn | LoginFailed:
    """The token log-in as the message a log-in worker posts (never an exception)."""
    try:
        return LoggedIn(workstation.login(pin))
    except KmtuiError as exc:
        return LoginFailed(str(exc))
    except Exception as exc:
        return LoginFailed(f"Internal error ({type(exc).__name__}).")


class Reconciled(Message):
    def __init__(self, report: Report) -> None:
        super().__init__()
        self.report = report


class WorkFailed(Message):
    def __init__(self, what: str, error: str) -> None:
        super().__init__()
        self.what = what
        self.error = error
