"""Where the operator sits: recorded with every event and checked against console-only rules."""

from __future__ import annotations

import os


def session_context() -> dict[str, str]:
    """SSH or the local console, the tty and the OS user."""
    via = "ssh" if os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_TTY") else "console"
    try:
        tty = os.ttyname(0)
    except OSError:
        tty = ""
    return {"via": via, "tty": tty, "user": os.environ.get("USER", "")}
