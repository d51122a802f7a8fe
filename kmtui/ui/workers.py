"""Run blocking work off the UI thread and turn any failure into a message, never a crash."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from textual.message_pump import MessagePump

from kmtui.core.control.pin import Credential
from kmtui.core.errors import KmtuiError
from kmtui.service import Workstation
from kmtui.ui.messages import LoggedIn, LoginFailed, WorkFailed

T = TypeVar("T")


def fault(target: MessagePump, what: str, error: Exception) -> str:
    """A fault in kmtui, not a refusal: the app logs its frames to crash.log and says so. Returns
    the words for a dialog that waited on the work (the type only: the text may hold a value)."""
    target.post_message(WorkFailed(what, f"internal error ({type(error).__name__})", error))
    return f"Internal error ({type(error).__name__})."


def attempt(target: MessagePump, what: str, fn: Callable[[], T]) -> T | None:
    """Call fn; on error post WorkFailed to target (a KmtuiError says why; anything else is a
    fault in kmtui)."""
    try:
        return fn()
    except KmtuiError as exc:
        target.post_message(WorkFailed(what, str(exc)))
    except Exception as exc:
        fault(target, what, exc)
    return None


def log_in(target: MessagePump, workstation: Workstation, credential: Credential) -> None:
    """The token log-in for a log-in worker: LoggedIn or LoginFailed, never an exception."""
    try:
        info = workstation.login(credential)
    except KmtuiError as exc:
        target.post_message(LoginFailed(str(exc)))
    except Exception as exc:
        target.post_message(LoginFailed(fault(target, "Logging in", exc)))
    else:
        target.post_message(LoggedIn(info))
