"""Past-tense messages that workers post; widgets react to them on the UI thread."""

from __future__ import annotations

from textual.message import Message

from kmtui.core.hsm import TokenInfo
from kmtui.core.reconcile import Report


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
    def __init__(self, what: str, error: str) -> None:
        super().__init__()
        self.what = what
        self.error = error
