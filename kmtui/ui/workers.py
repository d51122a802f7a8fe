"""Run blocking work off the UI thread and turn any failure into a message, never a crash."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from textual.message_pump import MessagePump

from kmtui.core.errors import KmtuiError
from kmtui.ui.messages import WorkFailed

T = TypeVar("T")


def attempt(target: MessagePump, what: str, fn: Callable[[], T]) -> T | None:
    """Call fn; on error post WorkFailed to target (an internal error shows only its type)."""
    try:
        return fn()
    except KmtuiError as exc:
        target.post_message(WorkFailed(what, str(exc)))
    except Exception as exc:
        target.post_message(WorkFailed(what, f"internal error ({type(exc).__name__})"))
    return None
