"""Past-tense messages that workers post; widgets react to them on the UI thread."""

from __future__ import annotations

from textual.message import Message

from kmtui.core.keys.findings import Report
from kmtui.core.models import TokenInfo


class LoggedIn(Message):
    def __init__(self, info: TokenInfo) -> None:
        super().__init__()
        self.info = info


class LoginFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class Reconciled(Message):
    def __init__(self, report: Report) -> None:
        super().__init__()
        self.report = report


class WorkFailed(Message):
    """Bubbles up to the app, which tells the user; `fault` is set when kmtui itself failed (not
    a refusal or the token saying no), and the app then writes its frames to crash.log."""

    def __init__(self, what: str, error: str, fault: Exception | None = None) -> None:
        super().__init__()
        self.what = what
        self.error = error
        self.fault = fault
