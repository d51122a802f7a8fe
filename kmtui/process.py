"""The kmtui process keeps what it holds to itself: no core dumps, no same-user debugger."""

from __future__ import annotations

import ctypes
import os
import resource

from kmtui.core import errors

PR_SET_DUMPABLE = 4


def _not_dumpable() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def harden() -> None:
    """RLIMIT_CORE 0 and PR_SET_DUMPABLE 0 until exit, before anything secret is read: a crash
    leaves no core holding a PIN half or a seed, and another process of the same user can neither
    attach a debugger nor read /proc/<pid>/mem or environ (root still can: out of scope)."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _not_dumpable()
    except (OSError, ValueError, AttributeError) as exc:  # AttributeError: a libc without prctl
        raise errors.KmtuiError(
            f"Cannot protect the kmtui process from core dumps and debuggers: {exc}.",
            "kmtui runs only where it can (Linux).",
        ) from None
